//! VirtualService validation: each `http[i]` / `tcp[i]` rule is kept or left out on its own.
//!
//! The validated form is normalized so the translator reads one spelling of each setting:
//! deprecated fields are moved onto their replacements (`fault.*.percent` → `percentage`,
//! `mirrorPercent` → `mirrorPercentage`, `appendHeaders` & co. → `headers`), and `mirror` (with
//! its percentage) becomes the first entry of `mirrors[]`.

use super::checks::{self, Zero};
use super::problem::{Code, Problem, Sink};
use crate::meta::Percent;
use crate::virtual_service::{
    Destination, HeaderOperations, Headers, HttpMirrorPolicy, HttpRoute, TcpRoute, VirtualService,
};

/// Envoy `retry_on` values (HTTP and gRPC) Istio's `retryOn` passes through.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The object with invalid rules removed and deprecated fields normalized (`None` when the object
/// itself is unusable), and its problems.
pub fn validate_virtual_service(vs: &VirtualService) -> (Option<VirtualService>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut top = Sink::default();
    if vs.metadata.name.is_empty() {
        top.push(Code::MissingName, "metadata.name", "name is empty");
    }
    if vs.spec.hosts.is_empty() {
        top.push(
            Code::MissingRequired,
            "spec.hosts",
            "at least one host is required",
        );
    }
    for (i, h) in vs.spec.hosts.iter().enumerate() {
        if h.trim().is_empty() {
            top.push(Code::MissingRequired, format!("spec.hosts[{i}]"), "empty host");
        }
    }
    if !vs.spec.tls.is_empty() {
        top.push(
            Code::Unsupported,
            "spec.tls",
            "TLS (SNI) routes are not translated; ignored",
        );
    }
    let object_ok = !top.has_errors();
    top.finish(None, &mut problems);
    if !object_ok {
        return (None, problems);
    }
    let mut out = vs.clone();
    out.spec.tls.clear();
    out.spec.http.clear();
    for (i, rule) in vs.spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        let mut sink = Sink::default();
        let rule = http_rule(&mut sink, &path, rule);
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.http.push(rule);
        }
    }
    out.spec.tcp.clear();
    for (i, rule) in vs.spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        let mut sink = Sink::default();
        tcp_rule(&mut sink, &path, rule);
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.tcp.push(rule.clone());
        }
    }
    (Some(out), problems)
}

fn destination(sink: &mut Sink, path: &str, d: &Destination) {
    if d.host.trim().is_empty() {
        sink.push(
            Code::MissingDestinationHost,
            format!("{path}.host"),
            "destination host is empty",
        );
    }
    if let Some(n) = d.port.and_then(|p| p.number) {
        checks::port(sink, &format!("{path}.port.number"), n);
    }
}

fn weights(sink: &mut Sink, path: &str, weights: &[Option<i64>]) {
    for (k, w) in weights.iter().enumerate() {
        if let Some(w) = w.filter(|w| *w < 0) {
            sink.push(
                Code::InvalidWeight,
                format!("{path}[{k}].weight"),
                format!("{w} is negative"),
            );
        }
    }
    let sum: i64 = weights.iter().map(|w| w.unwrap_or(0).max(0)).sum();
    if weights.len() > 1 && sum == 0 {
        sink.push(
            Code::InvalidWeight,
            path,
            "the weights of the destinations sum to 0",
        );
    }
}

fn header_ops(sink: &mut Sink, path: &str, headers: &Option<Headers>) {
    let Some(h) = headers else { return };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (verb, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for name in names {
                checks::header_name(sink, &format!("{path}.{side}.{verb}.{name}"), name);
            }
        }
    }
}

fn deprecated_header_field(sink: &mut Sink, path: &str, field: &str, replacement: &str) {
    sink.push(
        Code::Deprecated,
        format!("{path}.{field}"),
        format!("{field} was removed in Istio 1.5; read as {replacement}"),
    );
}

fn ops(headers: &mut Option<Headers>, response: bool) -> &mut HeaderOperations {
    let h = headers.get_or_insert_with(Headers::default);
    let side = if response { &mut h.response } else { &mut h.request };
    side.get_or_insert_with(HeaderOperations::default)
}

/// Checks one `http[]` rule; returns it normalized.
fn http_rule(sink: &mut Sink, path: &str, rule: &HttpRoute) -> HttpRoute {
    let mut r = rule.clone();
    // Removed header fields → headers.
    if let Some(add) = r.append_headers.take() {
        deprecated_header_field(sink, path, "appendHeaders", "headers.request.add");
        ops(&mut r.headers, false).add.extend(add);
    }
    if let Some(add) = r.append_request_headers.take() {
        deprecated_header_field(sink, path, "appendRequestHeaders", "headers.request.add");
        ops(&mut r.headers, false).add.extend(add);
    }
    if let Some(remove) = r.remove_request_headers.take() {
        deprecated_header_field(sink, path, "removeRequestHeaders", "headers.request.remove");
        ops(&mut r.headers, false).remove.extend(remove);
    }
    if let Some(add) = r.append_response_headers.take() {
        deprecated_header_field(sink, path, "appendResponseHeaders", "headers.response.add");
        ops(&mut r.headers, true).add.extend(add);
    }
    if let Some(remove) = r.remove_response_headers.take() {
        deprecated_header_field(sink, path, "removeResponseHeaders", "headers.response.remove");
        ops(&mut r.headers, true).remove.extend(remove);
    }
    if r.websocket_upgrade.take().is_some() {
        sink.push(
            Code::Deprecated,
            format!("{path}.websocketUpgrade"),
            "websocketUpgrade was removed in Istio 1.5; ignored",
        );
    }
    header_ops(sink, &format!("{path}.headers"), &r.headers);

    // Matches.
    for (j, m) in r.matches.iter_mut().enumerate() {
        let mp = format!("{path}.match[{j}]");
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                checks::string_match(sink, &format!("{mp}.{field}"), sm, false);
            }
        }
        for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
            for (name, sm) in map {
                let hp = format!("{mp}.{field}.{name}");
                checks::header_name(sink, &hp, name);
                checks::string_match(sink, &hp, sm, true);
            }
        }
        for (name, sm) in &m.query_params {
            checks::string_match(sink, &format!("{mp}.queryParams.{name}"), sm, true);
        }
        if let Some(p) = m.port {
            checks::port(sink, &format!("{mp}.port"), p);
        }
        if m.source_subnet.take().is_some() {
            sink.push(
                Code::Unsupported,
                format!("{mp}.sourceSubnet"),
                "sourceSubnet was removed in Istio 1.5; not evaluated (the match is broader)",
            );
        }
    }

    // The action.
    if r.delegate.is_some() {
        sink.push(
            Code::Unsupported,
            format!("{path}.delegate"),
            "delegation is not supported",
        );
    }
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        1 => {}
        0 => sink.push(
            Code::InvalidAction,
            path,
            "a rule needs one of route, redirect, directResponse",
        ),
        _ => sink.push(
            Code::InvalidAction,
            path,
            "only one of route, redirect, directResponse may be set",
        ),
    }
    for (k, d) in r.route.iter().enumerate() {
        let dp = format!("{path}.route[{k}]");
        destination(sink, &format!("{dp}.destination"), &d.destination);
        header_ops(sink, &format!("{dp}.headers"), &d.headers);
    }
    let ws: Vec<_> = r.route.iter().map(|d| d.weight).collect();
    weights(sink, &format!("{path}.route"), &ws);
    if let Some(red) = &r.redirect {
        let rp = format!("{path}.redirect");
        if let Some(code) = red.redirect_code.filter(|c| !(300..=399).contains(c)) {
            sink.push(
                Code::InvalidStatus,
                format!("{rp}.redirectCode"),
                format!("{code} is outside 300-399"),
            );
        }
        if let Some(p) = red.port {
            checks::port(sink, &format!("{rp}.port"), p);
        }
        if let Some(d) = red
            .derive_port
            .as_deref()
            .filter(|d| !["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"].contains(d))
        {
            sink.push(
                Code::UnknownValue,
                format!("{rp}.derivePort"),
                format!("unknown value {d:?}"),
            );
        }
    }
    if let Some(dr) = &r.direct_response {
        if !(200..=599).contains(&dr.status) {
            sink.push(
                Code::InvalidStatus,
                format!("{path}.directResponse.status"),
                format!("{} is outside 200-599", dr.status),
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            checks::regex(
                sink,
                &format!("{path}.rewrite.uriRegexRewrite.match"),
                &rr.pattern,
            );
            if rw.uri.is_some() {
                sink.push(
                    Code::InvalidAction,
                    format!("{path}.rewrite"),
                    "only one of uri, uriRegexRewrite may be set",
                );
            }
        }
    }
    if let Some(t) = &r.timeout {
        // 0 = no timeout (Istio's meaning; Envoy's own 15 s default is not used).
        checks::duration(sink, &format!("{path}.timeout"), t, Zero::Allowed);
    }
    if let Some(rt) = &r.retries {
        let rp = format!("{path}.retries");
        if let Some(a) = rt.attempts.filter(|a| *a < 0) {
            sink.push(
                Code::InvalidRetry,
                format!("{rp}.attempts"),
                format!("{a} is negative"),
            );
        }
        checks::opt_duration(
            sink,
            &format!("{rp}.perTryTimeout"),
            &rt.per_try_timeout,
            Zero::Rejected,
        );
        checks::opt_duration(sink, &format!("{rp}.backoff"), &rt.backoff, Zero::Rejected);
        for on in rt.retry_on.iter().flat_map(|s| s.split(',')).map(str::trim) {
            let numeric = on.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !numeric && !RETRY_ON.contains(&on) {
                sink.push(
                    Code::InvalidRetry,
                    format!("{rp}.retryOn"),
                    format!("unknown retry condition {on:?}"),
                );
            }
        }
    }
    fault(sink, path, &mut r);
    if let Some(c) = &r.cors_policy {
        let _ = c;
        sink.push(
            Code::Unsupported,
            format!("{path}.corsPolicy"),
            "corsPolicy is not translated; ignored",
        );
    }
    mirrors(sink, path, &mut r);
    r
}

fn percent_from_int(
    sink: &mut Sink,
    path: &str,
    field: &str,
    int: Option<i64>,
    percentage: &mut Option<Percent>,
    note: &str,
) {
    let Some(p) = int else { return };
    checks::int_percent(sink, &format!("{path}.{field}"), p);
    if !(0..=100).contains(&p) {
        sink.push(
            Code::Deprecated,
            format!("{path}.{field}"),
            format!("{field} {note}"),
        );
    } else if percentage.is_some() {
        sink.push(
            Code::Deprecated,
            format!("{path}.{field}"),
            format!("{field} {note}; ignored because the percentage is also set"),
        );
    } else {
        sink.push(
            Code::Deprecated,
            format!("{path}.{field}"),
            format!("{field} {note}; read as {p}%"),
        );
        *percentage = Some(Percent { value: p as f64 });
    }
}

fn fault(sink: &mut Sink, path: &str, r: &mut HttpRoute) {
    let Some(f) = &mut r.fault else { return };
    let fp = format!("{path}.fault");
    if f.delay.is_none() && f.abort.is_none() {
        sink.push(Code::InvalidFault, &fp, "a fault needs delay or abort");
    }
    if let Some(d) = &mut f.delay {
        let dp = format!("{fp}.delay");
        if d.exponential_delay.is_some() {
            sink.push(
                Code::Unsupported,
                format!("{dp}.exponentialDelay"),
                "exponentialDelay is not supported",
            );
        }
        match &d.fixed_delay {
            Some(fd) => {
                checks::duration(sink, &format!("{dp}.fixedDelay"), fd, Zero::Rejected);
            }
            None => sink.push(
                Code::InvalidFault,
                format!("{dp}.fixedDelay"),
                "a delay needs fixedDelay",
            ),
        }
        let pct = d.percent.take();
        percent_from_int(
            sink,
            &dp,
            "percent",
            pct,
            &mut d.percentage,
            "(integer) is deprecated",
        );
        if let Some(p) = &d.percentage {
            checks::percent(sink, &format!("{dp}.percentage"), p);
        }
    }
    if let Some(a) = &mut f.abort {
        let ap = format!("{fp}.abort");
        match a.http_status {
            Some(s) if !(200..=599).contains(&s) => {
                sink.push(
                    Code::InvalidStatus,
                    format!("{ap}.httpStatus"),
                    format!("{s} is outside 200-599"),
                );
            }
            Some(_) => {}
            None => {
                if a.grpc_status.is_some() || a.http2_error.is_some() {
                    sink.push(
                        Code::Unsupported,
                        &ap,
                        "grpcStatus and http2Error aborts are not supported",
                    );
                }
                sink.push(
                    Code::InvalidFault,
                    format!("{ap}.httpStatus"),
                    "an abort needs httpStatus",
                );
            }
        }
        let pct = a.percent.take();
        percent_from_int(
            sink,
            &ap,
            "percent",
            pct,
            &mut a.percentage,
            "(integer) was removed in Istio 1.5 (which then aborts nothing)",
        );
        if let Some(p) = &a.percentage {
            checks::percent(sink, &format!("{ap}.percentage"), p);
        }
    }
}

fn mirrors(sink: &mut Sink, path: &str, r: &mut HttpRoute) {
    let pct = r.mirror_percent.take();
    percent_from_int(
        sink,
        path,
        "mirrorPercent",
        pct,
        &mut r.mirror_percentage,
        "(integer) is deprecated",
    );
    if let Some(p) = &r.mirror_percentage {
        checks::percent(sink, &format!("{path}.mirrorPercentage"), p);
    }
    if let Some(m) = r.mirror.take() {
        destination(sink, &format!("{path}.mirror"), &m);
        r.mirrors.insert(
            0,
            HttpMirrorPolicy {
                destination: m,
                percentage: r.mirror_percentage.take(),
            },
        );
        // Entries of `mirrors` written by the user are numbered from 1 now.
        for (k, m) in r.mirrors.iter().enumerate().skip(1) {
            let mp = format!("{path}.mirrors[{}]", k - 1);
            mirror_entry(sink, &mp, m);
        }
    } else {
        if r.mirror_percentage.take().is_some() {
            sink.push(
                Code::Unsupported,
                format!("{path}.mirrorPercentage"),
                "mirrorPercentage without mirror; ignored",
            );
        }
        for (k, m) in r.mirrors.iter().enumerate() {
            mirror_entry(sink, &format!("{path}.mirrors[{k}]"), m);
        }
    }
}

fn mirror_entry(sink: &mut Sink, path: &str, m: &HttpMirrorPolicy) {
    destination(sink, &format!("{path}.destination"), &m.destination);
    if let Some(p) = &m.percentage {
        checks::percent(sink, &format!("{path}.percentage"), p);
    }
}

fn tcp_rule(sink: &mut Sink, path: &str, rule: &TcpRoute) {
    for (j, m) in rule.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if let Some(p) = m.port {
            checks::port(sink, &format!("{mp}.port"), p);
        }
        if m.source_subnet.is_some() {
            sink.push(
                Code::Unsupported,
                format!("{mp}.sourceSubnet"),
                "sourceSubnet is not evaluated",
            );
        }
    }
    if rule.route.is_empty() {
        sink.push(
            Code::InvalidAction,
            format!("{path}.route"),
            "a TCP rule needs a route",
        );
    }
    for (k, d) in rule.route.iter().enumerate() {
        destination(sink, &format!("{path}.route[{k}].destination"), &d.destination);
    }
    let ws: Vec<_> = rule.route.iter().map(|d| d.weight).collect();
    weights(sink, &format!("{path}.route"), &ws);
}
