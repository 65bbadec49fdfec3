//! traffic-control: the xDS control plane.
//!
//! `model` (Kubernetes objects or a static YAML file) -> `translate` (pure) -> `snapshot` -> `xds` (tonic ADS).
pub mod snapshot;
