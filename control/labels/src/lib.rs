//! The `traffic.*` label contract (`docs/labels.md`): typed, pure parsing.
//!
//! Users configure the mesh with Kubernetes labels only. [`parse`] turns one object's labels into
//! [`Settings`] plus one [`LabelError`] per invalid value; an invalid value only drops that one
//! setting, never the rest of the object's configuration. Layering rules (a pod's own label wins
//! over its owner's; pod-level traffic settings override the Service's) live in
//! [`Settings::overlay`], [`effective_enabled`] and [`effective_weight`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

mod values;

pub use values::{
    parse_bool, parse_duration, parse_percent, parse_positive_duration, parse_token, Unit, MAX_DURATION_MS,
    MAX_NAME_BYTES,
};
use values::{parse_bounded, parse_lb_policy, parse_protocol, parse_u32};

/// Every label name of the contract, exactly as users write it.
pub mod names {
    pub const ENVOY_ENABLED: &str = "traffic.envoy.enabled";
    pub const LOCAL_USE_PODIP: &str = "traffic.envoy.local.use_podip";
    /// Followed by the port number: `traffic.port.9080`.
    pub const PORT_PREFIX: &str = "traffic.port.";
    pub const ENDPOINT_WEIGHT: &str = "traffic.endpoint.weight";
    pub const LB_POLICY: &str = "traffic.lb.policy";
    pub const HASH_COOKIE_NAME: &str = "traffic.hash.cookie.name";
    pub const HASH_COOKIE_TTL: &str = "traffic.hash.cookie.ttl";
    pub const HASH_HEADER_NAME: &str = "traffic.hash.header.name";
    pub const CONNECTION_TIMEOUT: &str = "traffic.connection.timeout";
    pub const REQUEST_TIMEOUT: &str = "traffic.request.timeout";
    pub const RETRIES_MAX: &str = "traffic.retries.max";
    pub const RETRIES_5XX: &str = "traffic.retries.5xx";
    pub const RETRIES_CONNECT_FAILURE: &str = "traffic.retries.connect-failure";
    pub const RETRIES_GATEWAY_ERROR: &str = "traffic.retries.gateway-error";
    pub const CONNECTION_MAX: &str = "traffic.connection.max";
    pub const REQUEST_MAX_PENDING: &str = "traffic.request.max-pending";
    pub const REQUEST_MAX: &str = "traffic.request.max";
    pub const FAULT_DELAY_TIME: &str = "traffic.fault.delay.time";
    pub const FAULT_DELAY_PERCENTAGE: &str = "traffic.fault.delay.percentage";
    pub const FAULT_ABORT_STATUS: &str = "traffic.fault.abort.status";
    pub const FAULT_ABORT_PERCENTAGE: &str = "traffic.fault.abort.percentage";
    pub const RATE_LIMIT: &str = "traffic.rate.limit";
    pub const TRACING_ENABLED: &str = "traffic.tracing.enabled";
    pub const TRACING_SAMPLING: &str = "traffic.tracing.sampling";

    /// Every label with a fixed name (all but `traffic.port.<N>`), for tests and fuzzers that
    /// must cover the whole contract.
    pub const ALL: [&str; 23] = [
        ENVOY_ENABLED,
        LOCAL_USE_PODIP,
        ENDPOINT_WEIGHT,
        LB_POLICY,
        HASH_COOKIE_NAME,
        HASH_COOKIE_TTL,
        HASH_HEADER_NAME,
        CONNECTION_TIMEOUT,
        REQUEST_TIMEOUT,
        RETRIES_MAX,
        RETRIES_5XX,
        RETRIES_CONNECT_FAILURE,
        RETRIES_GATEWAY_ERROR,
        CONNECTION_MAX,
        REQUEST_MAX_PENDING,
        REQUEST_MAX,
        FAULT_DELAY_TIME,
        FAULT_DELAY_PERCENTAGE,
        FAULT_ABORT_STATUS,
        FAULT_ABORT_PERCENTAGE,
        RATE_LIMIT,
        TRACING_ENABLED,
        TRACING_SAMPLING,
    ];
}

/// Prefix shared by every label of the contract.
pub const PREFIX: &str = "traffic.";

/// Defaults from `docs/labels.md`.
pub mod defaults {
    use std::time::Duration;
    pub const ENDPOINT_WEIGHT: u8 = 100;
    pub const MAX_ENDPOINT_WEIGHT: u8 = 128;
    pub const CONNECTION_TIMEOUT: Duration = Duration::from_millis(60_000);
    pub const TRACING_SAMPLING: super::Percent = super::Percent::HUNDRED;
}

/// The kind of object a label sits on; decides which labels are allowed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Pod,
    /// Deployment, StatefulSet, DaemonSet (or an ownerless ReplicaSet).
    Workload,
    Service,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Pod => "Pod",
            ObjectKind::Workload => "Deployment/StatefulSet/DaemonSet",
            ObjectKind::Service => "Service",
        })
    }
}

/// Protocol of a port (`traffic.port.<N>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    Http,
    Tcp,
    /// Not redirected at all: the application talks to the destination directly.
    Direct,
}

/// `traffic.lb.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

/// A percentage 0..=100 with fractions, kept exactly as parts per million (so it is `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent {
    ppm: u32,
}

impl Percent {
    pub const ZERO: Percent = Percent { ppm: 0 };
    pub const HUNDRED: Percent = Percent { ppm: 1_000_000 };

    /// From parts per million of the whole (100% = 1_000_000); `None` above 100%.
    pub fn from_ppm(ppm: u32) -> Option<Percent> {
        (ppm <= 1_000_000).then_some(Percent { ppm })
    }
    /// Parts per million of the whole: 50% -> 500_000.
    pub fn ppm(self) -> u32 {
        self.ppm
    }
    /// As a float percentage: 50% -> 50.0.
    pub fn as_f64(self) -> f64 {
        f64::from(self.ppm) / 10_000.0
    }
    /// Whole percent when there is no fraction: 50% -> Some(50), 0.5% -> None.
    pub fn whole(self) -> Option<u32> {
        self.ppm.is_multiple_of(10_000).then_some(self.ppm / 10_000)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.as_f64())
    }
}

/// Why a label value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("expected true or false")]
    NotABool,
    #[error("expected a non-negative integer")]
    NotAnInteger,
    #[error("must be between {min} and {max}")]
    OutOfRange { min: u64, max: u64 },
    #[error("expected milliseconds (3000) or a number with unit ms, s, m or h (3s, 250ms, 1m)")]
    NotADuration,
    #[error("expected a percentage from 0 to 100 (fractions allowed)")]
    NotAPercentage,
    #[error("expected http, tcp or direct")]
    UnknownProtocol,
    #[error("expected round_robin, least_request, random, ring_hash or maglev")]
    UnknownLbPolicy,
    #[error("`{0}` is not a port number 1..65535")]
    BadPort(String),
    #[error("must not be empty")]
    Empty,
    #[error(
        "must be greater than 0 (after rounding to whole milliseconds): Envoy rejects a zero value here"
    )]
    NotPositive,
    #[error("must be at most {max_ms} ms")]
    DurationTooLong { max_ms: u64 },
    #[error("expected an HTTP token: letters, digits and !#$%&'*+-.^_`|~")]
    NotAToken,
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
    #[error("only applies to {allowed}, not to a {kind}")]
    WrongKind { kind: ObjectKind, allowed: &'static str },
    #[error("unknown traffic.* label (see docs/labels.md)")]
    UnknownLabel,
}

/// One rejected label: the setting is ignored, everything else applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {label}={value:?} ignored: {reason}")]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub reason: Reason,
}

/// Retry counts per condition (`traffic.retries.*`, Pod or Service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retries {
    pub on_5xx: Option<u32>,
    pub on_connect_failure: Option<u32>,
    pub on_gateway_error: Option<u32>,
}

/// `traffic.fault.*` (Pod or Service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay_time: Option<Duration>,
    pub delay_percentage: Option<Percent>,
    pub abort_status: Option<u16>,
    pub abort_percentage: Option<Percent>,
}

/// Per-request behaviour that a pod's labels may override over its Service's (labels.md marks
/// these "Pod, Service").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub request_timeout: Option<Duration>,
    pub retries: Retries,
    pub fault: Fault,
    /// `traffic.rate.limit`, Kbps as the contract says (Envoy's `limit_kbps`, KiB/s).
    pub rate_limit_kbps: Option<u64>,
    pub tracing_enabled: Option<bool>,
    pub tracing_sampling: Option<Percent>,
}

/// Service-only cluster settings (circuit breakers, balancing, connect timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub lb_policy: Option<LbPolicy>,
    pub hash_cookie_name: Option<String>,
    /// `traffic.hash.cookie.ttl`, seconds by default.
    pub hash_cookie_ttl: Option<Duration>,
    pub hash_header_name: Option<String>,
    pub connection_timeout: Option<Duration>,
    pub retries_max: Option<u32>,
    pub connection_max: Option<u32>,
    pub request_max_pending: Option<u32>,
    pub request_max: Option<u32>,
}

/// Everything the labels of one object say. `None` = label absent (or invalid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub enabled: Option<bool>,
    pub use_podip: Option<bool>,
    pub weight: Option<u8>,
    /// `traffic.port.<N>` -> protocol.
    pub ports: BTreeMap<u16, PortProtocol>,
    pub cluster: ClusterPolicy,
    pub traffic: TrafficPolicy,
}

/// The result of parsing one object's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub settings: Settings,
    pub errors: Vec<LabelError>,
}

fn pick<T: Clone>(top: &Option<T>, base: &Option<T>) -> Option<T> {
    top.clone().or_else(|| base.clone())
}

impl TrafficPolicy {
    /// `self` (the pod's) wins field by field over `base` (the Service's).
    pub fn overlay(&self, base: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            request_timeout: pick(&self.request_timeout, &base.request_timeout),
            retries: Retries {
                on_5xx: pick(&self.retries.on_5xx, &base.retries.on_5xx),
                on_connect_failure: pick(&self.retries.on_connect_failure, &base.retries.on_connect_failure),
                on_gateway_error: pick(&self.retries.on_gateway_error, &base.retries.on_gateway_error),
            },
            fault: Fault {
                delay_time: pick(&self.fault.delay_time, &base.fault.delay_time),
                delay_percentage: pick(&self.fault.delay_percentage, &base.fault.delay_percentage),
                abort_status: pick(&self.fault.abort_status, &base.fault.abort_status),
                abort_percentage: pick(&self.fault.abort_percentage, &base.fault.abort_percentage),
            },
            rate_limit_kbps: pick(&self.rate_limit_kbps, &base.rate_limit_kbps),
            tracing_enabled: pick(&self.tracing_enabled, &base.tracing_enabled),
            tracing_sampling: pick(&self.tracing_sampling, &base.tracing_sampling),
        }
    }

    /// True when no field is set (so a pod with such labels needs no per-node override).
    pub fn is_empty(&self) -> bool {
        *self == TrafficPolicy::default()
    }
}

impl Settings {
    /// Pod settings layered over a Service's: ports and traffic policy from `self` win, the
    /// cluster policy (Service-only) comes from `base`.
    pub fn overlay(&self, base: &Settings) -> Settings {
        let mut ports = base.ports.clone();
        ports.extend(self.ports.iter().map(|(k, v)| (*k, *v)));
        Settings {
            enabled: pick(&self.enabled, &base.enabled),
            use_podip: pick(&self.use_podip, &base.use_podip),
            weight: pick(&self.weight, &base.weight),
            ports,
            cluster: base.cluster.clone(),
            traffic: self.traffic.overlay(&base.traffic),
        }
    }
}

impl Settings {
    /// Whether `label`'s value landed in its field. With [`parse`]'s errors this makes the
    /// contract checkable: every `traffic.*` label of an object is either applied or reported.
    pub fn holds(&self, label: &str) -> bool {
        use names::*;
        let c = &self.cluster;
        let t = &self.traffic;
        match label {
            ENVOY_ENABLED => self.enabled.is_some(),
            LOCAL_USE_PODIP => self.use_podip.is_some(),
            ENDPOINT_WEIGHT => self.weight.is_some(),
            LB_POLICY => c.lb_policy.is_some(),
            HASH_COOKIE_NAME => c.hash_cookie_name.is_some(),
            HASH_COOKIE_TTL => c.hash_cookie_ttl.is_some(),
            HASH_HEADER_NAME => c.hash_header_name.is_some(),
            CONNECTION_TIMEOUT => c.connection_timeout.is_some(),
            RETRIES_MAX => c.retries_max.is_some(),
            CONNECTION_MAX => c.connection_max.is_some(),
            REQUEST_MAX_PENDING => c.request_max_pending.is_some(),
            REQUEST_MAX => c.request_max.is_some(),
            REQUEST_TIMEOUT => t.request_timeout.is_some(),
            RETRIES_5XX => t.retries.on_5xx.is_some(),
            RETRIES_CONNECT_FAILURE => t.retries.on_connect_failure.is_some(),
            RETRIES_GATEWAY_ERROR => t.retries.on_gateway_error.is_some(),
            FAULT_DELAY_TIME => t.fault.delay_time.is_some(),
            FAULT_DELAY_PERCENTAGE => t.fault.delay_percentage.is_some(),
            FAULT_ABORT_STATUS => t.fault.abort_status.is_some(),
            FAULT_ABORT_PERCENTAGE => t.fault.abort_percentage.is_some(),
            RATE_LIMIT => t.rate_limit_kbps.is_some(),
            TRACING_ENABLED => t.tracing_enabled.is_some(),
            TRACING_SAMPLING => t.tracing_sampling.is_some(),
            other => other
                .strip_prefix(PORT_PREFIX)
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| self.ports.contains_key(&p)),
        }
    }
}

/// `traffic.envoy.enabled` of a pod: its own label wins over its owner's; default false.
pub fn effective_enabled(pod: &Settings, owner: Option<&Settings>) -> bool {
    pod.enabled
        .or_else(|| owner.and_then(|o| o.enabled))
        .unwrap_or(false)
}

/// `traffic.endpoint.weight` of a pod: its own label wins over its owner's; default 100.
pub fn effective_weight(pod: &Settings, owner: Option<&Settings>) -> u8 {
    pod.weight
        .or_else(|| owner.and_then(|o| o.weight))
        .unwrap_or(defaults::ENDPOINT_WEIGHT)
}

/// Where a label may appear.
#[derive(Clone, Copy)]
enum Scope {
    PodWorkload,
    Pod,
    PodService,
    Service,
}

impl Scope {
    fn allows(self, kind: ObjectKind) -> bool {
        matches!(
            (self, kind),
            (Scope::PodWorkload, ObjectKind::Pod | ObjectKind::Workload)
                | (Scope::Pod, ObjectKind::Pod)
                | (Scope::PodService, ObjectKind::Pod | ObjectKind::Service)
                | (Scope::Service, ObjectKind::Service)
        )
    }
    fn describe(self) -> &'static str {
        match self {
            Scope::PodWorkload => "Pods, Deployments, StatefulSets and DaemonSets",
            Scope::Pod => "Pods",
            Scope::PodService => "Pods and Services",
            Scope::Service => "Services",
        }
    }
}

fn scope_of(label: &str) -> Option<Scope> {
    use names::*;
    Some(match label {
        ENVOY_ENABLED | ENDPOINT_WEIGHT => Scope::PodWorkload,
        LOCAL_USE_PODIP => Scope::Pod,
        LB_POLICY | HASH_COOKIE_NAME | HASH_COOKIE_TTL | HASH_HEADER_NAME | CONNECTION_TIMEOUT
        | RETRIES_MAX | CONNECTION_MAX | REQUEST_MAX_PENDING | REQUEST_MAX => Scope::Service,
        REQUEST_TIMEOUT
        | RETRIES_5XX
        | RETRIES_CONNECT_FAILURE
        | RETRIES_GATEWAY_ERROR
        | FAULT_DELAY_TIME
        | FAULT_DELAY_PERCENTAGE
        | FAULT_ABORT_STATUS
        | FAULT_ABORT_PERCENTAGE
        | RATE_LIMIT
        | TRACING_ENABLED
        | TRACING_SAMPLING => Scope::PodService,
        l if l.starts_with(PORT_PREFIX) => Scope::PodService,
        _ => return None,
    })
}

/// Parse every `traffic.*` label of one object. Labels outside the `traffic.` prefix are ignored;
/// unknown `traffic.*` labels, labels on the wrong kind of object and invalid values are reported
/// and skipped.
pub fn parse(kind: ObjectKind, labels: &BTreeMap<String, String>) -> Parsed {
    let mut parsed = Parsed::default();
    for (label, value) in
        labels.range::<str, _>((std::ops::Bound::Included(PREFIX), std::ops::Bound::Unbounded))
    {
        if !label.starts_with(PREFIX) {
            break;
        }
        let fail = |reason| LabelError {
            label: label.clone(),
            value: value.clone(),
            reason,
        };
        let Some(scope) = scope_of(label) else {
            parsed.errors.push(fail(Reason::UnknownLabel));
            continue;
        };
        if !scope.allows(kind) {
            parsed.errors.push(fail(Reason::WrongKind {
                kind,
                allowed: scope.describe(),
            }));
            continue;
        }
        if let Err(reason) = apply(&mut parsed.settings, label, value) {
            parsed.errors.push(fail(reason));
        }
    }
    parsed
}

fn apply(s: &mut Settings, label: &str, value: &str) -> Result<(), Reason> {
    use names::*;
    let v = value.trim();
    match label {
        ENVOY_ENABLED => s.enabled = Some(parse_bool(v)?),
        LOCAL_USE_PODIP => s.use_podip = Some(parse_bool(v)?),
        ENDPOINT_WEIGHT => {
            let w = parse_bounded(v, 0, u64::from(defaults::MAX_ENDPOINT_WEIGHT))?;
            s.weight = Some(u8::try_from(w).map_err(|_| Reason::NotAnInteger)?);
        }
        LB_POLICY => s.cluster.lb_policy = Some(parse_lb_policy(v)?),
        HASH_COOKIE_NAME => s.cluster.hash_cookie_name = Some(parse_token(v)?),
        HASH_COOKIE_TTL => s.cluster.hash_cookie_ttl = Some(parse_duration(v, Unit::Seconds)?),
        HASH_HEADER_NAME => s.cluster.hash_header_name = Some(parse_token(v)?.to_ascii_lowercase()),
        // `Cluster.connect_timeout` is `gt: 0s`: a zero would make Envoy reject every cluster.
        CONNECTION_TIMEOUT => s.cluster.connection_timeout = Some(parse_positive_duration(v, Unit::Millis)?),
        RETRIES_MAX => s.cluster.retries_max = Some(parse_u32(v)?),
        CONNECTION_MAX => s.cluster.connection_max = Some(parse_u32(v)?),
        REQUEST_MAX_PENDING => s.cluster.request_max_pending = Some(parse_u32(v)?),
        REQUEST_MAX => s.cluster.request_max = Some(parse_u32(v)?),
        REQUEST_TIMEOUT => s.traffic.request_timeout = Some(parse_duration(v, Unit::Millis)?),
        RETRIES_5XX => s.traffic.retries.on_5xx = Some(parse_u32(v)?),
        RETRIES_CONNECT_FAILURE => s.traffic.retries.on_connect_failure = Some(parse_u32(v)?),
        RETRIES_GATEWAY_ERROR => s.traffic.retries.on_gateway_error = Some(parse_u32(v)?),
        FAULT_DELAY_TIME => s.traffic.fault.delay_time = Some(parse_duration(v, Unit::Millis)?),
        FAULT_DELAY_PERCENTAGE => s.traffic.fault.delay_percentage = Some(parse_percent(v)?),
        FAULT_ABORT_STATUS => {
            // 0 means "no abort" (the default); otherwise Envoy accepts [200, 600).
            let status = parse_bounded(v, 0, 599)?;
            if status != 0 && status < 200 {
                return Err(Reason::OutOfRange { min: 200, max: 599 });
            }
            s.traffic.fault.abort_status = Some(u16::try_from(status).map_err(|_| Reason::NotAnInteger)?);
        }
        FAULT_ABORT_PERCENTAGE => s.traffic.fault.abort_percentage = Some(parse_percent(v)?),
        RATE_LIMIT => s.traffic.rate_limit_kbps = Some(parse_bounded(v, 0, u64::from(u32::MAX))?),
        TRACING_ENABLED => s.traffic.tracing_enabled = Some(parse_bool(v)?),
        TRACING_SAMPLING => s.traffic.tracing_sampling = Some(parse_percent(v)?),
        _ => {
            let port = label.strip_prefix(PORT_PREFIX).ok_or(Reason::UnknownLabel)?;
            let port_number = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Reason::BadPort(port.to_string()))?;
            s.ports.insert(port_number, parse_protocol(v)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
