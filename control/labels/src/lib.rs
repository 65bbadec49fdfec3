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
        HASH_COOKIE_NAME => s.cluster.hash_cookie_name = Some(parse_name(v)?),
        HASH_COOKIE_TTL => s.cluster.hash_cookie_ttl = Some(parse_duration(v, Unit::Seconds)?),
        HASH_HEADER_NAME => s.cluster.hash_header_name = Some(parse_name(v)?.to_ascii_lowercase()),
        CONNECTION_TIMEOUT => s.cluster.connection_timeout = Some(parse_duration(v, Unit::Millis)?),
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

/// `true`/`false`, case-insensitive.
pub fn parse_bool(v: &str) -> Result<bool, Reason> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(Reason::NotABool)
    }
}

fn parse_u64(v: &str) -> Result<u64, Reason> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::NotAnInteger);
    }
    v.parse::<u64>().map_err(|_| Reason::OutOfRange {
        min: 0,
        max: u64::MAX,
    })
}

fn parse_bounded(v: &str, min: u64, max: u64) -> Result<u64, Reason> {
    let n = parse_u64(v).map_err(|e| match (e, v.strip_prefix('-')) {
        // "-1" is a number, just out of range: say so.
        (Reason::NotAnInteger, Some(rest)) if parse_u64(rest).is_ok() => Reason::OutOfRange { min, max },
        (Reason::OutOfRange { .. }, _) => Reason::OutOfRange { min, max },
        (e, _) => e,
    })?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(Reason::OutOfRange { min, max })
    }
}

fn parse_u32(v: &str) -> Result<u32, Reason> {
    let n = parse_bounded(v, 0, u64::from(u32::MAX))?;
    u32::try_from(n).map_err(|_| Reason::NotAnInteger)
}

fn parse_name(v: &str) -> Result<String, Reason> {
    if v.is_empty() {
        Err(Reason::Empty)
    } else {
        Ok(v.to_string())
    }
}

fn parse_protocol(v: &str) -> Result<PortProtocol, Reason> {
    match v.to_ascii_lowercase().as_str() {
        "http" => Ok(PortProtocol::Http),
        "tcp" => Ok(PortProtocol::Tcp),
        "direct" => Ok(PortProtocol::Direct),
        _ => Err(Reason::UnknownProtocol),
    }
}

fn parse_lb_policy(v: &str) -> Result<LbPolicy, Reason> {
    match v.to_ascii_lowercase().as_str() {
        "round_robin" => Ok(LbPolicy::RoundRobin),
        "least_request" => Ok(LbPolicy::LeastRequest),
        "random" => Ok(LbPolicy::Random),
        "ring_hash" => Ok(LbPolicy::RingHash),
        "maglev" => Ok(LbPolicy::Maglev),
        _ => Err(Reason::UnknownLbPolicy),
    }
}

/// The unit of a duration written as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Seconds,
}

/// A duration: a plain non-negative number in `plain_unit`, or a number with unit `ms`, `s`, `m`
/// or `h` (`3s`, `250ms`, `1m`, `1.5s`). Rounded to whole milliseconds.
pub fn parse_duration(v: &str, plain_unit: Unit) -> Result<Duration, Reason> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let ms_per_unit: f64 = match (unit, plain_unit) {
        ("", Unit::Millis) | ("ms", _) => 1.0,
        ("", Unit::Seconds) | ("s", _) => 1_000.0,
        ("m", _) => 60_000.0,
        ("h", _) => 3_600_000.0,
        _ => return Err(Reason::NotADuration),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(Reason::NotADuration);
    }
    let n: f64 = number.parse().map_err(|_| Reason::NotADuration)?;
    let ms = (n * ms_per_unit).round();
    // Protobuf Durations top out at 10,000 years; a label needs far less. Cap at ~31 years.
    if !ms.is_finite() || ms > 1e12 {
        return Err(Reason::NotADuration);
    }
    Ok(Duration::from_millis(ms as u64))
}

/// A percentage 0..=100 with up to four decimals kept exactly (finer ones are rounded).
pub fn parse_percent(v: &str) -> Result<Percent, Reason> {
    let number = v.strip_suffix('%').unwrap_or(v);
    let valid_chars = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !valid_chars {
        return Err(Reason::NotAPercentage);
    }
    let p: f64 = number.parse().map_err(|_| Reason::NotAPercentage)?;
    if !(0.0..=100.0).contains(&p) {
        return Err(Reason::OutOfRange { min: 0, max: 100 });
    }
    Percent::from_ppm((p * 10_000.0).round() as u32).ok_or(Reason::OutOfRange { min: 0, max: 100 })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(kind: ObjectKind, label: &str, value: &str) -> Parsed {
        parse(kind, &labels(&[(label, value)]))
    }

    #[test]
    fn endpoint_weight_accepts_0_to_128_and_rejects_the_rest() {
        use names::ENDPOINT_WEIGHT as W;
        let table: &[(&str, Result<u8, Reason>)] = &[
            ("0", Ok(0)),
            ("1", Ok(1)),
            ("100", Ok(100)),
            ("128", Ok(128)),
            ("129", Err(Reason::OutOfRange { min: 0, max: 128 })),
            ("-1", Err(Reason::OutOfRange { min: 0, max: 128 })),
            ("abc", Err(Reason::NotAnInteger)),
            ("", Err(Reason::NotAnInteger)),
            ("1.5", Err(Reason::NotAnInteger)),
            (
                "99999999999999999999999",
                Err(Reason::OutOfRange { min: 0, max: 128 }),
            ),
        ];
        for (value, want) in table {
            let p = one(ObjectKind::Workload, W, value);
            match want {
                Ok(w) => {
                    assert_eq!(p.settings.weight, Some(*w), "{value}");
                    assert!(p.errors.is_empty(), "{value}");
                }
                Err(reason) => {
                    assert_eq!(p.settings.weight, None, "{value}");
                    assert_eq!(
                        p.errors,
                        vec![LabelError {
                            label: W.into(),
                            value: value.to_string(),
                            reason: reason.clone()
                        }],
                        "{value}"
                    );
                }
            }
        }
    }

    #[test]
    fn durations_are_milliseconds_or_carry_a_unit() {
        let table: &[(&str, Option<u64>)] = &[
            ("3000", Some(3000)),
            ("0", Some(0)),
            ("3s", Some(3000)),
            ("250ms", Some(250)),
            ("1m", Some(60_000)),
            ("1h", Some(3_600_000)),
            ("1.5s", Some(1500)),
            ("abc", None),
            ("-5", None),
            ("5x", None),
            ("", None),
            ("s", None),
            (".5s", None),
            ("3 s", None),
        ];
        for (value, want) in table {
            let got = parse_duration(value, Unit::Millis)
                .ok()
                .map(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "{value:?}");
            let p = one(ObjectKind::Service, names::REQUEST_TIMEOUT, value);
            assert_eq!(
                p.settings.traffic.request_timeout.map(|d| d.as_millis() as u64),
                *want
            );
            assert_eq!(p.errors.len(), usize::from(want.is_none()), "{value:?}");
        }
    }

    #[test]
    fn cookie_ttl_plain_numbers_are_seconds() {
        let p = one(ObjectKind::Service, names::HASH_COOKIE_TTL, "30");
        assert_eq!(p.settings.cluster.hash_cookie_ttl, Some(Duration::from_secs(30)));
        let p = one(ObjectKind::Service, names::HASH_COOKIE_TTL, "1m");
        assert_eq!(p.settings.cluster.hash_cookie_ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn percentages_are_0_to_100_and_may_be_fractional() {
        let table: &[(&str, Option<u32>)] = &[
            ("0", Some(0)),
            ("100", Some(1_000_000)),
            ("50", Some(500_000)),
            ("0.5", Some(5_000)),
            ("33.3333", Some(333_333)),
            ("99.9999", Some(999_999)),
            ("100.0", Some(1_000_000)),
            ("100.5", None),
            ("101", None),
            ("-1", None),
            ("abc", None),
            ("nan", None),
            ("inf", None),
            ("1e2", None),
            ("", None),
        ];
        for label in [
            names::FAULT_DELAY_PERCENTAGE,
            names::FAULT_ABORT_PERCENTAGE,
            names::TRACING_SAMPLING,
        ] {
            for (value, want) in table {
                let p = one(ObjectKind::Service, label, value);
                let t = &p.settings.traffic;
                let got = match label {
                    names::FAULT_DELAY_PERCENTAGE => t.fault.delay_percentage,
                    names::FAULT_ABORT_PERCENTAGE => t.fault.abort_percentage,
                    _ => t.tracing_sampling,
                };
                assert_eq!(got.map(Percent::ppm), *want, "{label}={value:?}");
                assert_eq!(p.errors.len(), usize::from(want.is_none()), "{label}={value:?}");
            }
        }
    }

    #[test]
    fn percent_reports_whole_numbers_and_floats() {
        let p = parse_percent("50").unwrap();
        assert_eq!(p.whole(), Some(50));
        assert_eq!(p.as_f64(), 50.0);
        let p = parse_percent("12.5").unwrap();
        assert_eq!(p.whole(), None);
        assert_eq!(p.as_f64(), 12.5);
    }

    #[test]
    fn every_label_lands_in_its_own_field() {
        use names::*;
        let svc = parse(
            ObjectKind::Service,
            &labels(&[
                ("traffic.port.9080", "http"),
                ("traffic.port.3306", "TCP"),
                ("traffic.port.22", "direct"),
                (LB_POLICY, "least_request"),
                (HASH_COOKIE_NAME, "mycookie"),
                (HASH_COOKIE_TTL, "3600"),
                (HASH_HEADER_NAME, "X-User"),
                (CONNECTION_TIMEOUT, "2s"),
                (REQUEST_TIMEOUT, "1500"),
                (RETRIES_MAX, "5"),
                (RETRIES_5XX, "3"),
                (RETRIES_CONNECT_FAILURE, "2"),
                (RETRIES_GATEWAY_ERROR, "1"),
                (CONNECTION_MAX, "100"),
                (REQUEST_MAX_PENDING, "10"),
                (REQUEST_MAX, "1000"),
                (FAULT_DELAY_TIME, "3000"),
                (FAULT_DELAY_PERCENTAGE, "100"),
                (FAULT_ABORT_STATUS, "505"),
                (FAULT_ABORT_PERCENTAGE, "12.5"),
                (RATE_LIMIT, "64"),
                (TRACING_ENABLED, "true"),
                (TRACING_SAMPLING, "50"),
                ("app", "reviews"),
            ]),
        );
        assert_eq!(svc.errors, vec![]);
        let s = svc.settings;
        assert_eq!(
            s.ports,
            BTreeMap::from([
                (9080, PortProtocol::Http),
                (3306, PortProtocol::Tcp),
                (22, PortProtocol::Direct)
            ])
        );
        let c = &s.cluster;
        assert_eq!(c.lb_policy, Some(LbPolicy::LeastRequest));
        assert_eq!(c.hash_cookie_name.as_deref(), Some("mycookie"));
        assert_eq!(c.hash_cookie_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.hash_header_name.as_deref(), Some("x-user"));
        assert_eq!(c.connection_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.retries_max, Some(5));
        assert_eq!(c.connection_max, Some(100));
        assert_eq!(c.request_max_pending, Some(10));
        assert_eq!(c.request_max, Some(1000));
        let t = &s.traffic;
        assert_eq!(t.request_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(t.retries.on_5xx, Some(3));
        assert_eq!(t.retries.on_connect_failure, Some(2));
        assert_eq!(t.retries.on_gateway_error, Some(1));
        assert_eq!(t.fault.delay_time, Some(Duration::from_secs(3)));
        assert_eq!(t.fault.delay_percentage, Some(Percent::HUNDRED));
        assert_eq!(t.fault.abort_status, Some(505));
        assert_eq!(t.fault.abort_percentage, Percent::from_ppm(125_000));
        assert_eq!(t.rate_limit_kbps, Some(64));
        assert_eq!(t.tracing_enabled, Some(true));
        assert_eq!(t.tracing_sampling, Percent::from_ppm(500_000));

        let pod = parse(
            ObjectKind::Pod,
            &labels(&[
                (ENVOY_ENABLED, "TRUE"),
                (LOCAL_USE_PODIP, "true"),
                (ENDPOINT_WEIGHT, "10"),
            ]),
        );
        assert_eq!(pod.errors, vec![]);
        assert_eq!(pod.settings.enabled, Some(true));
        assert_eq!(pod.settings.use_podip, Some(true));
        assert_eq!(pod.settings.weight, Some(10));
    }

    #[test]
    fn an_invalid_value_drops_only_that_setting() {
        let p = parse(
            ObjectKind::Service,
            &labels(&[
                (names::FAULT_DELAY_TIME, "soon"),
                (names::FAULT_DELAY_PERCENTAGE, "100"),
                (names::LB_POLICY, "fastest"),
                ("traffic.port.9080", "grpc"),
                ("traffic.port.http", "http"),
                ("traffic.port.0", "http"),
                ("traffic.port.8080", "http"),
            ]),
        );
        assert_eq!(p.settings.traffic.fault.delay_time, None);
        assert_eq!(p.settings.traffic.fault.delay_percentage, Some(Percent::HUNDRED));
        assert_eq!(p.settings.cluster.lb_policy, None);
        assert_eq!(p.settings.ports, BTreeMap::from([(8080, PortProtocol::Http)]));
        let reasons: Vec<_> = p.errors.iter().map(|e| e.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![
                Reason::NotADuration,
                Reason::UnknownLbPolicy,
                Reason::BadPort("0".into()),
                Reason::UnknownProtocol,
                Reason::BadPort("http".into()),
            ]
        );
        assert_eq!(
            p.errors[0].to_string(),
            "label traffic.fault.delay.time=\"soon\" ignored: expected milliseconds (3000) or a \
             number with unit ms, s, m or h (3s, 250ms, 1m)"
        );
    }

    #[test]
    fn abort_status_must_be_an_http_status_or_zero() {
        for (value, ok) in [
            ("0", true),
            ("200", true),
            ("505", true),
            ("599", true),
            ("600", false),
            ("99", false),
            ("abc", false),
        ] {
            let p = one(ObjectKind::Pod, names::FAULT_ABORT_STATUS, value);
            assert_eq!(p.errors.is_empty(), ok, "{value}");
        }
    }

    #[test]
    fn booleans_reject_anything_but_true_and_false() {
        for (value, want) in [
            ("true", Some(true)),
            ("False", Some(false)),
            ("yes", None),
            ("1", None),
            ("", None),
        ] {
            let p = one(ObjectKind::Pod, names::ENVOY_ENABLED, value);
            assert_eq!(p.settings.enabled, want, "{value}");
        }
    }

    #[test]
    fn labels_on_the_wrong_kind_and_unknown_labels_are_reported() {
        let p = parse(
            ObjectKind::Pod,
            &labels(&[(names::LB_POLICY, "random"), ("traffic.retries.5xxx", "3")]),
        );
        assert_eq!(p.settings, Settings::default());
        assert!(matches!(
            p.errors[0].reason,
            Reason::WrongKind {
                kind: ObjectKind::Pod,
                ..
            }
        ));
        assert_eq!(p.errors[1].reason, Reason::UnknownLabel);
        let p = one(ObjectKind::Service, names::ENVOY_ENABLED, "true");
        assert!(matches!(p.errors[0].reason, Reason::WrongKind { .. }));
        let p = one(ObjectKind::Workload, names::REQUEST_TIMEOUT, "5");
        assert!(matches!(p.errors[0].reason, Reason::WrongKind { .. }));
    }

    #[test]
    fn a_pods_own_label_wins_over_its_owners() {
        let owner = one(ObjectKind::Workload, names::ENVOY_ENABLED, "true").settings;
        let pod_off = one(ObjectKind::Pod, names::ENVOY_ENABLED, "false").settings;
        let pod_unset = Settings::default();
        assert!(effective_enabled(&pod_unset, Some(&owner)));
        assert!(!effective_enabled(&pod_off, Some(&owner)));
        assert!(!effective_enabled(&pod_unset, None));

        let owner_w = one(ObjectKind::Workload, names::ENDPOINT_WEIGHT, "10").settings;
        let pod_w = one(ObjectKind::Pod, names::ENDPOINT_WEIGHT, "0").settings;
        assert_eq!(effective_weight(&pod_unset, Some(&owner_w)), 10);
        assert_eq!(effective_weight(&pod_w, Some(&owner_w)), 0);
        assert_eq!(effective_weight(&pod_unset, None), 100);
    }

    #[test]
    fn pod_traffic_settings_override_the_services_field_by_field() {
        let svc = parse(
            ObjectKind::Service,
            &labels(&[
                (names::REQUEST_TIMEOUT, "1000"),
                (names::RETRIES_5XX, "3"),
                ("traffic.port.9080", "http"),
                (names::CONNECTION_MAX, "7"),
            ]),
        )
        .settings;
        let pod = parse(
            ObjectKind::Pod,
            &labels(&[(names::REQUEST_TIMEOUT, "2s"), ("traffic.port.9080", "tcp")]),
        )
        .settings;
        let eff = pod.overlay(&svc);
        assert_eq!(eff.traffic.request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(eff.traffic.retries.on_5xx, Some(3));
        assert_eq!(eff.ports[&9080], PortProtocol::Tcp);
        assert_eq!(eff.cluster.connection_max, Some(7));
    }
}
