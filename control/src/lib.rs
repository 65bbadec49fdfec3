//! traffic-control: wires a model source (a YAML file, or Kubernetes), translation and the xDS
//! server together, and serves `/metrics` and `/healthz`.
//!
//! - [`cli`]: the command line (clap derive; every flag also readable from a `TRAFFIC_CONTROL_*`
//!   environment variable).
//! - [`model_file`]: a static model file, re-read when it changes.
//! - [`manifests`]: plain Kubernetes manifests (files or directories) as the model.
//! - [`analyze`]: `traffic-control analyze`, the Istio objects' validation offline.
//! - [`rebuild`]: debounces model changes and translates once per quiet period; all ADS streams
//!   share the result.
//! - the metrics and health endpoints come from `traffic_metrics_http`.
//! - [`node_config`]: what one node receives, for `traffic-control config`.
//! - [`grpc`]: API listeners for proxyless gRPC clients (`xds:///` targets).
//! - [`xds_auth`]: who may open an ADS stream (TokenReview, node bound to the token's pod).
//! - [`xds_tls`]: the xDS port's CA (kept in a Secret, published in a ConfigMap) and certificate.

pub mod analyze;
pub mod cli;
pub mod grpc;
pub mod manifests;
pub mod model_file;
pub mod node_config;
pub mod rebuild;
pub mod xds_auth;
pub mod xds_tls;
