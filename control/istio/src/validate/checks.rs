//! Field checks every kind shares: durations, percentages, regexes, header names, ports.

use std::time::Duration;

use super::problem::{Code, Sink};
use crate::meta::{IstioDuration, Percent};
use crate::virtual_service::StringMatch;

/// Whether a duration may be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    Allowed,
    /// Envoy requires > 0 (`connect_timeout`, outlier `interval`, fault `fixed_delay`, ...).
    Rejected,
}

/// Checks a duration; returns it when valid.
pub(crate) fn duration(sink: &mut Sink, path: &str, d: &IstioDuration, zero: Zero) -> Option<Duration> {
    match d.to_std() {
        Ok(v) if v.is_zero() && zero == Zero::Rejected => {
            sink.push(Code::ZeroDuration, path, format!("{d:?} must be greater than 0"));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            sink.push(Code::InvalidDuration, path, e.to_string());
            None
        }
    }
}

pub(crate) fn opt_duration(sink: &mut Sink, path: &str, d: &Option<IstioDuration>, zero: Zero) {
    if let Some(d) = d {
        duration(sink, path, d, zero);
    }
}

/// A double percentage in 0-100.
pub(crate) fn percent(sink: &mut Sink, path: &str, p: &Percent) {
    if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
        sink.push(
            Code::InvalidPercentage,
            format!("{path}.value"),
            format!("{} is outside 0-100", p.value),
        );
    }
}

/// An integer percentage in 0-100.
pub(crate) fn int_percent(sink: &mut Sink, path: &str, p: i64) {
    if !(0..=100).contains(&p) {
        sink.push(Code::InvalidPercentage, path, format!("{p} is outside 0-100"));
    }
}

pub(crate) fn non_negative(sink: &mut Sink, path: &str, n: Option<i64>) {
    if let Some(n) = n.filter(|n| *n < 0) {
        sink.push(Code::InvalidCount, path, format!("{n} is negative"));
    }
}

pub(crate) fn port(sink: &mut Sink, path: &str, n: i64) -> bool {
    if (1..=65535).contains(&n) {
        return true;
    }
    sink.push(Code::InvalidPort, path, format!("{n} is outside 1-65535"));
    false
}

/// A regular expression as Envoy's RE2 reads it. The `regex` crate accepts a subset of RE2's
/// syntax close to all of it, and refuses what RE2 refuses (look-around, back-references).
pub(crate) fn regex(sink: &mut Sink, path: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        // The error's first line names the problem; the rest draws the position.
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or("").trim();
        let last = last.strip_prefix("error: ").unwrap_or(last);
        sink.push(
            Code::InvalidRegex,
            path,
            format!("{re:?} is not a valid RE2 regex: {last}"),
        );
    }
}

/// An HTTP header name: an RFC 9110 token, optionally a `:` pseudo-header (`:authority`).
pub(crate) fn is_header_name(name: &str) -> bool {
    let token = name.strip_prefix(':').unwrap_or(name);
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn header_name(sink: &mut Sink, path: &str, name: &str) {
    if !is_header_name(name) {
        sink.push(
            Code::InvalidHeaderName,
            path,
            format!("{name:?} is not a valid HTTP header name"),
        );
    }
}

/// A string match: exactly one of `exact`, `prefix`, `regex` (or none where `presence` says an
/// empty match means "present").
pub(crate) fn string_match(sink: &mut Sink, path: &str, m: &StringMatch, presence: bool) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 || (set == 0 && !presence) {
        sink.push(
            Code::InvalidStringMatch,
            path,
            "exactly one of exact, prefix, regex must be set",
        );
    }
    if let Some(re) = &m.regex {
        regex(sink, &format!("{path}.regex"), re);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_http_tokens() {
        for (name, ok) in [
            ("end-user", true),
            ("x-b3-traceid", true),
            ("Cookie", true),
            (":authority", true),
            ("", false),
            (":", false),
            ("end user", false),
            ("a:b", false),
            ("naïve", false),
            ("x\n", false),
        ] {
            assert_eq!(is_header_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn regexes_follow_re2() {
        for (re, ok) in [
            ("^(.*?;)?(user=jason)(;.*)?$", true),
            ("/api/v[0-9]+/.*", true),
            ("(?i)abc", true),
            ("a(?=b)", false),
            ("(a)\\1", false),
            ("[", false),
        ] {
            let mut sink = Sink::default();
            regex(&mut sink, "p", re);
            assert_eq!(sink.problems.is_empty(), ok, "{re:?}: {:?}", sink.problems);
        }
    }
}
