//! Test fixtures on the real kernel: "pods" (a network namespace + a cgroup v2 directory), a backend
//! network namespace that answers on every service address, a real transparent proxy and a client.
//!
//! Used by the integration tests in `tests/tests/`, by `cargo xtask bench redirect` and by demos.
//! Everything a fixture creates (namespaces, cgroups, processes) is removed by RAII guards on drop,
//! also when a test panics. `unsafe` is needed for `pre_exec` (entering a netns and a cgroup between
//! fork and exec).

pub mod bins;
pub mod demo;
pub mod e2e;
pub mod e2e_apiserver;
pub mod e2e_faults;
pub mod e2e_parse;
pub mod external_host;
pub mod install;
pub mod install_leftovers;
pub mod install_pods;
pub mod istio_e2e;
pub mod node_runtime;
pub mod pin_root;
pub mod pod;
pub mod privileged;
pub mod scratch;
pub mod wire;

pub use pod::{Placement, TestPod};
pub use privileged::{cgroup2_mount, require_privileged};
pub use scratch::ScratchDir;
