//! Kubernetes as the source of truth for the mesh model, and Kubernetes Events as the place
//! where users see what went wrong with their labels or with the configuration Envoy received.
//!
//! - [`watch`]: list+watch of Services, Pods, ReplicaSets, Deployments, StatefulSets, DaemonSets,
//!   Ingresses (networking.k8s.io/v1) and `kubernetes.io/tls` Secrets into reflector stores;
//!   [`KubeSource::start`] publishes a complete [`MeshModel`] on a `tokio::sync::watch` channel
//!   after each (debounced) change. Works on Kubernetes 1.20 and later: no EndpointSlices (the
//!   model computes endpoints from selectors and pod IPs), no watch-list.
//! - [`convert`]: the pure conversion from API objects to the model (owner chain resolution,
//!   readiness, TLS secrets referenced by Ingresses), unit-tested on recorded objects.
//! - [`events`]: a deduplicating [`EventSink`] writing `core/v1` Events; [`problems`] finds
//!   invalid `traffic.*` labels; [`nack`] adapts the sink to the xDS server's `RejectionSink`.
//! - [`istio_status`]: translation problems -> `status.conditions` of Istio objects (pure);
//!   [`istio_status_writer`] writes them through the status subresource.
//!
//! [`MeshModel`]: traffic_translate::model::MeshModel

pub mod convert;
pub mod events;
pub mod istio_status;
pub mod istio_status_writer;
pub mod istio_watch;
pub mod nack;
pub mod problems;
pub mod readiness;
pub mod watch;

pub use events::{EventMetrics, EventSink, EventType, EventsConfig, KubeEvents};
pub use nack::{rejection_sink, NackEvents};
pub use watch::{KubeSource, SourceConfig, SourceError, SourceMetrics};
