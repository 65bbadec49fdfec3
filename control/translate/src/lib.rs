//! The mesh model and its pure translation into Envoy v3 resources (no I/O).
//!
//! - [`model`]: Services, Pods, workloads, Ingresses and TLS Secrets (+ a YAML loader).
//! - [`translate`]: model + [`translate::Options`] -> [`translate::Snapshot`] (shared `Arc`
//!   resources, per-node overrides only where a pod's labels change something).
//! - [`routing`]: the one routing model front ends lower into (host -> ordered rules ->
//!   weighted destinations + per-destination policy); [`label_lower`] lowers the `traffic.*`
//!   labels into it, [`istio_lower`] Istio objects, and [`routing::merge`] decides between them.
//! - [`snapshot`]: the seam the xDS server consumes.
//! - [`consistency`]: every referenced route/cluster/endpoint/secret name exists.
//! - [`render`]: a static Envoy bootstrap of a node's resources, and a readable text dump.
//! - [`tls`], [`ingress_check`]: TLS Secrets, Ingress hosts and paths checked against what
//!   Envoy accepts, so one bad object costs only its own hosts, never the shared listeners.
pub mod consistency;
pub mod envoy;
pub mod ingress_check;
pub mod istio_lower;
pub mod label_lower;
pub mod model;
pub mod render;
pub mod routing;
pub mod snapshot;
pub mod tls;
pub mod translate;
