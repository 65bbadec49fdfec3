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
//! # Validation and message codes
//!
//! [`validate()`] turns each object into its problems and a validated form: the object with invalid
//! parts left out and deprecated fields mapped onto their replacements. An invalid rule is left
//! out alone (`http[i]` / `tcp[i]`, a subset, a `portLevelSettings[]` entry or one top-level
//! setting of a DestinationRule, a ServiceEntry port or endpoint, a Gateway server), never the rest
//! of the object. Codes are stable; `traffic-control analyze` prints
//! `<code> <severity> <kind>/<ns>/<name> <field path>: <message>`.
//!
//! | code | severity | what is left out | meaning |
//! |---|---|---|---|
//! | `TM0001` | error | object | the object does not read (a field of the wrong type) |
//! | `TM0002` | warning | - | unknown field, ignored |
//! | `TM0003` | error | object | `metadata.name` is empty |
//! | `TM0004` | error | object | a required field is empty (`hosts`, `host`, `ports`, `servers`) |
//! | `TM1001` | error | rule | a `regex` RE2 does not accept (look-around, back-references, syntax) |
//! | `TM1002` | error | rule | destination weights sum to 0, or a weight is negative |
//! | `TM1003` | error | rule | a duration that does not parse or is negative |
//! | `TM1004` | error | rule | a duration of 0 where Envoy needs > 0 (`fixedDelay`, `perTryTimeout`, `connectTimeout`, outlier `interval` / `baseEjectionTime`) |
//! | `TM1005` | error | rule | a percentage outside 0-100 |
//! | `TM1006` | error | rule | an HTTP status out of range (abort / direct response 200-599, redirect 300-399) |
//! | `TM1007` | error | rule | a header name that is not an HTTP token |
//! | `TM1008` | error | rule | a string match with none or several of `exact`, `prefix`, `regex` |
//! | `TM1009` | error | rule | a rule with none or several of `route`, `redirect`, `directResponse` |
//! | `TM1010` | error | rule | a destination without `host` |
//! | `TM1011` | error | rule | a port number outside 1-65535 (or missing where required) |
//! | `TM1012` | error | rule | a `retryOn` condition Envoy does not know, or negative `attempts` |
//! | `TM1013` | error | rule / object | a value outside the field's known values (enum, protocol) |
//! | `TM1014` | error | rule | a negative count or size |
//! | `TM1015` | warning | - | a deprecated or removed field, mapped as the message says |
//! | `TM1016` | warning | - | a field that is read but not acted on |
//! | `TM1017` | error | rule | a fault with neither delay nor abort, a delay without `fixedDelay`, an abort without `httpStatus` |
//! | `TM2001` | error | subset | a subset without name, or a name defined twice |
//! | `TM2002` | error | setting | `simple` with `consistentHash`, or a hash with none or several keys |
//! | `TM3001` | error | endpoint / object | `STATIC` with a non-IP endpoint or no endpoints, `DNS` with a wildcard host or a CIDR address, `DNS_ROUND_ROBIN` with several endpoints, endpoints with `NONE` |
//! | `TM3002` | error | port | a ServiceEntry port number listed twice |
//! | `TM3003` | error | object | a ServiceEntry host that is `*`, has a `namespace/` prefix or is not a DNS name |
//! | `TM4001` | error | server | TLS that cannot be served: HTTPS without `tls`, `SIMPLE`/`MUTUAL` without `credentialName`, an unsupported mode |
//! | `TM4002` | error | server | a Gateway server without hosts |
//! | `TM4003` | warning | - | a Gateway with an empty selector (every gateway proxy) |
//!
//! # Deprecated fields and their mapping (`TM1015`)
//!
//! | field | read as |
//! |---|---|
//! | `fault.delay.percent` (integer) | `fault.delay.percentage.value` |
//! | `fault.abort.percent` (integer; removed in Istio 1.5, which then aborts nothing) | `fault.abort.percentage.value` |
//! | `mirrorPercent` (integer) | `mirrorPercentage.value` |
//! | `appendHeaders`, `appendRequestHeaders` / `removeRequestHeaders` | `headers.request.add` / `.remove` |
//! | `appendResponseHeaders` / `removeResponseHeaders` | `headers.response.add` / `.remove` |
//! | `websocketUpgrade` | ignored |
//! | `LEAST_CONN` | `LEAST_REQUEST` |
//! | `outlierDetection.consecutiveErrors` | `consecutiveGatewayErrors` (502, 503, 504 and connection failures), as Istio ≤ 1.6 did; Istio ≥ 1.7 ignores the field. Ignored when `consecutiveGatewayErrors` is set. |
//! | `consistentHash.minimumRingSize` | `consistentHash.ringHash.minimumRingSize` |
//!
//! The validated form also moves `mirror` (+ `mirrorPercentage`) into the first entry of
//! `mirrors[]`, so the translator reads one list (no percentage = 100%).
//!
//! See `../shared/docs/istio-api.md` (in the project docs) for how each field maps onto Envoy.

pub mod crd;
pub mod destination_rule;
pub mod gateway;
pub mod meta;
pub mod object;
pub mod service_entry;
pub mod validate;
pub mod virtual_service;

pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use meta::{IstioDuration, ObjectMeta, Percent};
pub use object::{parse_object, parse_yaml_documents, IstioConfig, IstioObject, Kind, Parsed};
pub use service_entry::ServiceEntry;
pub use validate::{validate, validate_config, Code, Problem, Severity, Validated, ValidatedConfig};
pub use virtual_service::VirtualService;

#[cfg(test)]
mod tests;
