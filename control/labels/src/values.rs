//! Parsers for one label value each, with the limits Envoy puts on the field the value ends up in.
//!
//! The limits come from the `validate.rules` (protoc-gen-validate) annotations of Envoy's API and
//! from what Envoy checks when it loads a config (see `control/translate/descriptors/pgv_rules.py`
//! for a dump of the annotations). A value that passes here must never make Envoy reject the
//! config it ends up in: in state-of-the-world xDS one rejected Cluster fails the whole CDS
//! update, for every pod (issue 9). Where we are stricter than Envoy, the doc says why.
//!
//! | label | Envoy field: rule | here |
//! |---|---|---|
//! | `connection.timeout` | `Cluster.connect_timeout`: `gt 0s` | [`parse_positive_duration`] |
//! | `request.timeout`, `hash.cookie.ttl` | `RouteAction.timeout`, `Cookie.ttl`: a valid Duration | [`parse_duration`], at most [`MAX_DURATION_MS`] |
//! | `fault.delay.time` | `FaultDelay.fixed_delay`: `gt 0s` | [`parse_duration`]; 0 = no delay, not emitted |
//! | `fault.abort.status` | `FaultAbort.http_status`: `gte 200, lt 600` | 0 (none) or 200..=599 |
//! | `rate.limit` | `BandwidthLimit.limit_kbps`: `gte 1` | 0..=u32::MAX; 0 = no limit, not emitted |
//! | `endpoint.weight` | `LbEndpoint.load_balancing_weight`: `gte 1` | 0..=128; 0 = endpoint left out |
//! | `*.percentage`, `tracing.sampling` | `FractionalPercent`: numerator over a defined denominator | [`parse_percent`], 0..=100 |
//! | `hash.header.name` | `HashPolicy.Header.header_name`: `min_len 1`, no NUL/CR/LF | [`parse_token`] |
//! | `hash.cookie.name` | `HashPolicy.Cookie.name`: `min_len 1` | [`parse_token`] |
//! | `retries.*`, `*.max` | `UInt32Value`s without rules | any u32; 0 = unset |

use std::time::Duration;

use crate::{LbPolicy, Percent, PortProtocol, Reason};

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

pub(crate) fn parse_bounded(v: &str, min: u64, max: u64) -> Result<u64, Reason> {
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

pub(crate) fn parse_u32(v: &str) -> Result<u32, Reason> {
    let n = parse_bounded(v, 0, u64::from(u32::MAX))?;
    u32::try_from(n).map_err(|_| Reason::NotAnInteger)
}

/// An HTTP header or cookie name: an RFC 7230 `token` (`!#$%&'*+-.^_`|~`, digits, letters).
///
/// Envoy's own rule for a hash policy header name is looser (`min_len: 1` and
/// `well_known_regex: HTTP_HEADER_NAME, strict: false`, i.e. no NUL, CR or LF) and a cookie name
/// only needs `min_len: 1`; but a name outside the token grammar can never match a real request
/// header or cookie, and a cookie name with `;` or `=` would corrupt the `set-cookie` Envoy
/// generates. Every Kubernetes label value is a token, so this only bites model files.
pub fn parse_token(v: &str) -> Result<String, Reason> {
    if v.is_empty() {
        return Err(Reason::Empty);
    }
    if v.len() > MAX_NAME_BYTES {
        return Err(Reason::TooLong { max: MAX_NAME_BYTES });
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if v.bytes().all(tchar) {
        Ok(v.to_string())
    } else {
        Err(Reason::NotAToken)
    }
}

/// Longest header or cookie name accepted (Envoy's cookie attributes stop at 16 KiB; a request
/// header name longer than this would not pass Envoy's default 60 KiB header limit in practice).
pub const MAX_NAME_BYTES: usize = 256;

pub(crate) fn parse_protocol(v: &str) -> Result<PortProtocol, Reason> {
    match v.to_ascii_lowercase().as_str() {
        "http" => Ok(PortProtocol::Http),
        "tcp" => Ok(PortProtocol::Tcp),
        "direct" => Ok(PortProtocol::Direct),
        _ => Err(Reason::UnknownProtocol),
    }
}

pub(crate) fn parse_lb_policy(v: &str) -> Result<LbPolicy, Reason> {
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
    if !ms.is_finite() {
        return Err(Reason::NotADuration);
    }
    // Protobuf Durations top out at 10,000 years and Envoy converts many of them to int64
    // milliseconds; a label needs far less.
    if ms > MAX_DURATION_MS as f64 {
        return Err(Reason::DurationTooLong {
            max_ms: MAX_DURATION_MS,
        });
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Longest duration accepted, ~31.7 years.
pub const MAX_DURATION_MS: u64 = 1_000_000_000_000;

/// A duration Envoy requires to be `> 0` (`validate.rules.duration.gt: {}`, e.g.
/// `Cluster.connect_timeout`): also rejects values that round to 0 ms, such as `0.4`.
pub fn parse_positive_duration(v: &str, plain_unit: Unit) -> Result<Duration, Reason> {
    let d = parse_duration(v, plain_unit)?;
    if d.is_zero() {
        Err(Reason::NotPositive)
    } else {
        Ok(d)
    }
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
mod tests {
    use super::*;

    #[test]
    fn a_positive_duration_rejects_zero_and_what_rounds_to_zero() {
        for v in ["0", "0ms", "0s", "0.4", "0.0001s", "0.000001m"] {
            assert_eq!(
                parse_positive_duration(v, Unit::Millis),
                Err(Reason::NotPositive),
                "{v}"
            );
        }
        for (v, ms) in [("1", 1), ("0.5", 1), ("1ms", 1), ("2s", 2000), ("1h", 3_600_000)] {
            assert_eq!(
                parse_positive_duration(v, Unit::Millis),
                Ok(Duration::from_millis(ms)),
                "{v}"
            );
        }
    }

    #[test]
    fn durations_longer_than_31_years_are_out_of_range_not_malformed() {
        let max = Reason::DurationTooLong {
            max_ms: MAX_DURATION_MS,
        };
        assert_eq!(
            parse_duration("1000000000000", Unit::Millis),
            Ok(Duration::from_millis(MAX_DURATION_MS))
        );
        assert_eq!(parse_duration("1000000000001", Unit::Millis), Err(max.clone()));
        assert_eq!(parse_duration("999999999h", Unit::Millis), Err(max.clone()));
        assert_eq!(
            parse_duration("1000000000s", Unit::Seconds),
            Ok(Duration::from_secs(1_000_000_000))
        );
        assert_eq!(parse_duration("1000000001", Unit::Seconds), Err(max));
        let huge = "9".repeat(400);
        assert!(parse_duration(&huge, Unit::Millis).is_err());
    }

    #[test]
    fn header_and_cookie_names_are_http_tokens() {
        for ok in [
            "x-user",
            "X_User.1",
            "mycookie",
            "a",
            "!#$%&'*+-.^_`|~",
            &"a".repeat(MAX_NAME_BYTES),
        ] {
            assert_eq!(parse_token(ok).as_deref(), Ok(ok), "{ok}");
        }
        for (bad, why) in [
            ("", Reason::Empty),
            ("a b", Reason::NotAToken),
            ("a;b", Reason::NotAToken),
            ("a=b", Reason::NotAToken),
            (":authority", Reason::NotAToken),
            ("x\r\nx", Reason::NotAToken),
            ("a\0", Reason::NotAToken),
            ("ü", Reason::NotAToken),
            (
                &"a".repeat(MAX_NAME_BYTES + 1),
                Reason::TooLong { max: MAX_NAME_BYTES },
            ),
        ] {
            assert_eq!(parse_token(bad), Err(why), "{bad:?}");
        }
    }
}
