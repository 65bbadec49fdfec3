//! The traffic-manager node agent as a library: what each pod on this node should look like
//! (`desired`), the pure plan that gets it there (`reconcile`), and the I/O that applies the plan
//! and watches Kubernetes (`apply`, `watch`), and node-wide cleanup for mode switches and
//! uninstall (`drain`), and the sidecars' xDS tokens (`xds_token`). The `traffic-agent` binary wires them together.

pub mod apply;
pub mod desired;
pub mod drain;
pub mod metrics;
pub mod reconcile;
pub mod watch;
pub mod xds_token;
