//! Object metadata and the small value types every kind shares (durations, percentages,
//! lenient enums).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Labels, selectors and other string maps.
pub type StringMap = BTreeMap<String, String>;

fn default_namespace() -> String {
    "default".to_string()
}

/// The part of `metadata` the control plane looks at. Everything else `kubectl get -o yaml` prints
/// (`resourceVersion`, `managedFields`, ...) is ignored without a warning: it is the API server's,
/// not the user's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `default` when a manifest leaves it out, as `kubectl apply` does in the default context.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339, as the API server writes it (`2024-05-01T10:00:00Z`); it orders several
    /// VirtualServices for one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: StringMap,
}

/// A duration as Istio writes it: Go's `time.ParseDuration` syntax (`2s`, `0.5s`, `100ms`, `1h`,
/// `1m30s`), which includes protobuf JSON's `1.5s`. Kept as written so that a bad value rejects
/// only the rule carrying it (see [`crate::validate`]), not the whole object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioDuration(pub String);

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?} (expected e.g. \"2s\", \"0.5s\", \"100ms\", \"1h\")")]
    Syntax(String),
    #[error("negative duration {0:?}")]
    Negative(String),
    #[error("duration {0:?} out of range")]
    Overflow(String),
}

impl IstioDuration {
    pub fn new(s: impl Into<String>) -> Self {
        IstioDuration(s.into())
    }

    /// The parsed value; negative values are an error (no Istio duration may be negative).
    pub fn to_std(&self) -> Result<Duration, DurationError> {
        parse_go_duration(&self.0)
    }
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A bare number (`timeout: 10`) is kept and rejected by validation (no unit), not here.
        Ok(IstioDuration(scalar_to_string(serde_json::Value::deserialize(
            d,
        )?)))
    }
}

fn scalar_to_string(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Go's duration grammar: `[+-]?(<decimal><unit>)+` or a bare `0`.
fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax(text.to_string());
    let (negative, mut rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(syntax)?;
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(syntax());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(syntax()),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| DurationError::Overflow(text.to_string()))?
        };
        let mut nanos = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        // The fraction, to nanosecond precision (more digits are truncated, as Go does).
        let mut scale = unit_nanos;
        for digit in frac_part.bytes().take(30) {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
        rest = next;
    }
    if negative && total_nanos > 0 {
        return Err(DurationError::Negative(text.to_string()));
    }
    let secs =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow(text.to_string()))?;
    // The remainder of a division by 10^9 always fits.
    let sub = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// `{value: 12.5}`: a percentage as a double (Istio's `Percent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

// Objects are compared whole (is the new model different from the last one?), and models derive
// `Eq`. A NaN percentage cannot come through JSON (serde_json turns it into null); from YAML
// directly it would only make one model compare unequal to itself, costing one extra push.
impl Eq for Percent {}

/// Declares a string enum that keeps values it does not know (`Other`), so that an unknown value
/// rejects only the rule that carries it, at validation time.
macro_rules! lenient_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $variant,)+
            /// A value this version does not know, as written.
            Other(String),
        }

        impl $name {
            /// Every known value, as written in YAML.
            pub const KNOWN: &'static [&'static str] = &[$($text),+];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(s) => s,
                }
            }

            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                Ok(match v {
                    serde_json::Value::String(s) => $name::parse(&s),
                    other => $name::Other(other.to_string()),
                })
            }
        }
    };
}
pub(crate) use lenient_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_istio_writes_them() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("2s", Ok(ms(2000))),
            ("0.5s", Ok(ms(500))),
            ("100ms", Ok(ms(100))),
            ("1h", Ok(ms(3_600_000))),
            ("1m30s", Ok(ms(90_000))),
            ("1.5s", Ok(ms(1500))),
            ("0", Ok(Duration::ZERO)),
            ("0s", Ok(Duration::ZERO)),
            ("-0s", Ok(Duration::ZERO)),
            ("250us", Ok(Duration::from_micros(250))),
            ("10", Err(DurationError::Syntax("10".into()))),
            ("", Err(DurationError::Empty)),
            ("2 s", Err(DurationError::Syntax("2 s".into()))),
            ("s", Err(DurationError::Syntax("s".into()))),
            ("1d", Err(DurationError::Syntax("1d".into()))),
            ("1..5s", Err(DurationError::Syntax("1..5s".into()))),
            ("-1s", Err(DurationError::Negative("-1s".into()))),
        ] {
            assert_eq!(IstioDuration::new(text).to_std(), want, "{text:?}");
        }
    }

    #[test]
    fn a_number_where_a_duration_belongs_is_kept_for_validation() {
        let d: IstioDuration = serde_json::from_str("10").expect("number");
        assert_eq!(d.0, "10");
        assert!(d.to_std().is_err());
    }
}
