//! The mesh model and its pure translation into Envoy v3 resources (no I/O).
//!
//! - [`model`]: Services, Pods, workloads, Ingresses and TLS Secrets (+ a YAML loader).
//! - [`translate`]: model + [`translate::Options`] -> [`translate::Snapshot`] (shared `Arc`
//!   resources, per-node overrides only where a pod's labels change something).
//! - [`snapshot`]: the seam the xDS server consumes.
//! - [`consistency`]: every referenced route/cluster/endpoint/secret name exists.
//! - [`render`]: a static Envoy bootstrap of a node's resources, and a readable text dump.
pub mod consistency;
pub mod envoy;
pub mod model;
pub mod render;
pub mod snapshot;
pub mod translate;
