//! Gateway validation. Unit left out on an error: one server.

use super::checks;
use super::problem::{Code, Problem, Sink};
use super::service_entry::{is_protocol, PROTOCOLS};
use crate::gateway::{Gateway, TlsMode};

/// The object with invalid servers removed (`None` when the object itself is unusable), and its
/// problems.
pub fn validate_gateway(gw: &Gateway) -> (Option<Gateway>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut top = Sink::default();
    if gw.metadata.name.is_empty() {
        top.push(Code::MissingName, "metadata.name", "name is empty");
    }
    if gw.spec.servers.is_empty() {
        top.push(
            Code::MissingRequired,
            "spec.servers",
            "at least one server is required",
        );
    }
    if gw.spec.selector.is_empty() {
        top.push(
            Code::EmptySelector,
            "spec.selector",
            "empty selector: applies to every gateway proxy",
        );
    }
    let object_ok = !top.has_errors();
    top.finish(None, &mut problems);
    if !object_ok {
        return (None, problems);
    }
    let mut out = gw.clone();
    out.spec.servers.clear();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        let mut sink = Sink::default();
        checks::port(&mut sink, &format!("{path}.port.number"), server.port.number);
        let protocol = server.port.protocol.as_deref().unwrap_or("");
        if !is_protocol(protocol) {
            sink.push(
                Code::UnknownValue,
                format!("{path}.port.protocol"),
                format!("unknown protocol {protocol:?} (known: {})", PROTOCOLS.join(", ")),
            );
        }
        if server.hosts.is_empty() {
            sink.push(
                Code::MissingServerHosts,
                format!("{path}.hosts"),
                "a server needs hosts",
            );
        }
        for (j, h) in server.hosts.iter().enumerate() {
            let host = h.split_once('/').map_or(h.as_str(), |(_, host)| host);
            if host.is_empty() {
                sink.push(
                    Code::MissingServerHosts,
                    format!("{path}.hosts[{j}]"),
                    "empty host",
                );
            }
        }
        let https = protocol.eq_ignore_ascii_case("HTTPS");
        match &server.tls {
            None if https => sink.push(
                Code::InvalidServerTls,
                format!("{path}.tls"),
                "an HTTPS server needs tls",
            ),
            None => {}
            Some(tls) => {
                let tp = format!("{path}.tls");
                match &tls.mode {
                    None if https => sink.push(
                        Code::InvalidServerTls,
                        format!("{tp}.mode"),
                        "an HTTPS server needs tls.mode",
                    ),
                    Some(TlsMode::Simple) | Some(TlsMode::Mutual)
                        if tls.credential_name.as_deref().unwrap_or("").is_empty() =>
                    {
                        let msg = if tls.server_certificate.is_some() {
                            "certificates from file paths (serverCertificate/privateKey) are not supported; use credentialName"
                        } else {
                            "SIMPLE and MUTUAL need credentialName (a kubernetes.io/tls Secret)"
                        };
                        sink.push(Code::InvalidServerTls, format!("{tp}.credentialName"), msg);
                    }
                    Some(TlsMode::Simple) | Some(TlsMode::Mutual) => {}
                    Some(TlsMode::Other(v)) => sink.push(
                        Code::UnknownValue,
                        format!("{tp}.mode"),
                        format!("unknown value {v:?} (known: {})", TlsMode::KNOWN.join(", ")),
                    ),
                    Some(other) => sink.push(
                        Code::InvalidServerTls,
                        format!("{tp}.mode"),
                        format!(
                            "tls.mode {} is not supported (SIMPLE and MUTUAL are)",
                            other.as_str()
                        ),
                    ),
                    None => {}
                }
            }
        }
        let ok = !sink.has_errors();
        sink.finish(Some(&path), &mut problems);
        if ok {
            out.spec.servers.push(server.clone());
        }
    }
    (Some(out), problems)
}
