//! The `networking.istio.io` front end of the control plane: VirtualService, DestinationRule,
//! ServiceEntry and Gateway as users write them (camelCase YAML, served as v1alpha3, v1beta1 and
//! v1 with one schema), including the deprecated and removed fields 2018-era examples still carry
//! (`fault.abort.percent`, `fault.delay.percent`, `mirrorPercent`, `LEAST_CONN`,
//! `outlierDetection.consecutiveErrors`, `appendHeaders`, ...).
//!
//! Pure: no I/O. The Kubernetes source and the manifest loader hand values in; the translator
//! consumes the typed objects. Values that can be wrong without making the YAML unreadable
//! (durations, enums, numbers out of range) are kept as written, so that validation can reject
//! only the rule carrying them rather than the whole object.
//!
//! See `../shared/docs/istio-api.md` (in the project docs) for how each field maps onto Envoy.

pub mod destination_rule;
pub mod gateway;
pub mod meta;
pub mod object;
pub mod service_entry;
pub mod virtual_service;

pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use meta::{IstioDuration, ObjectMeta, Percent};
pub use object::{parse_object, parse_yaml_documents, IstioConfig, IstioObject, Kind, Parsed};
pub use service_entry::ServiceEntry;
pub use virtual_service::VirtualService;

#[cfg(test)]
mod tests;
