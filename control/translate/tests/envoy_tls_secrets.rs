//! One Ingress with a bad TLS Secret (garbage PEM, a key of another certificate, an expired
//! certificate) costs only its own HTTPS host: the other Ingresses keep serving HTTP and HTTPS
//! through a real gateway Envoy, and the bad Secrets are problems (Events, see kube-source's
//! `problems::problem_events`). So are an Ingress host and path Envoy would reject.
//!
//! Issue 9: a Secret whose PEM did not parse made the gateway reject its listeners, and then it
//! served nothing, not even plain HTTP for every other Ingress.
//!
//! Needs an Envoy binary and curl (see `envoy_gateway.rs`); skips without them unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::certs::{test_cert, unix_now};
use common::live::*;
use traffic_translate::model::{MeshModel, TlsSecret};
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::tls::TlsError;
use traffic_translate::translate::{translate, Options, Problem, TlsDelivery, INGRESS_NODE_ID};

const DAY: u64 = 24 * 3600;

/// Hosts with a usable certificate; `soon` expires in 7 days (served, with a warning).
const SERVED_TLS: [&str; 2] = ["good", "soon"];
/// Hosts whose Secret is unusable.
const BAD_TLS: [&str; 3] = ["garbage", "mismatch", "expired"];

fn host(name: &str) -> String {
    format!("{name}.example.com")
}

struct Fixture {
    model: MeshModel,
    /// host -> certificate PEM (for curl's --cacert)
    certs: Vec<(String, String)>,
}

/// One backend Service, one Ingress per TLS case plus `plain` (HTTP only, with a path and a
/// host Envoy would reject next to a good path).
fn fixture(app_port: u16) -> Fixture {
    let now = unix_now();
    let mut yaml = format!(
        "services:\n- name: web\n  clusterIPs: [10.96.0.30]\n  ports: [{{name: http, port: 80, targetPort: {app_port}}}]\n  selector: {{app: web}}\npods:\n- {{name: web-1, ip: 127.0.0.12, labels: {{app: web}}}}\ningresses:\n- name: plain\n  rules:\n  - host: plain.example.com\n    paths:\n    - {{path: /, backend: {{service: web, port: 80}}}}\n    - {{path: /a?b, pathType: Prefix, backend: {{service: web, port: 80}}}}\n  - host: Not_A.Host\n    paths: [{{path: /, backend: {{service: web, port: 80}}}}]\n"
    );
    for name in SERVED_TLS.iter().chain(&BAD_TLS) {
        yaml.push_str(&format!(
            "- name: {name}\n  rules: [{{host: {h}, paths: [{{path: /, backend: {{service: web, port: 80}}}}]}}]\n  tls: [{{hosts: [{h}], secretName: {name}-tls}}]\n",
            h = host(name)
        ));
    }
    let mut model = MeshModel::from_yaml_str(&yaml).unwrap();
    let mut certs = Vec::new();
    for name in SERVED_TLS.iter().chain(&BAD_TLS) {
        let h = host(name);
        let (mut cert_pem, mut key_pem) = match *name {
            "soon" => test_cert(&[&h], now - DAY, now + 7 * DAY),
            "expired" => test_cert(&[&h], now - 90 * DAY, now - DAY),
            _ => test_cert(&[&h], now - DAY, now + 90 * DAY),
        };
        match *name {
            "garbage" => {
                cert_pem =
                    "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".into()
            }
            "mismatch" => key_pem = test_cert(&[&h], now - DAY, now + 90 * DAY).1,
            _ => {}
        }
        certs.push((h, cert_pem.clone()));
        model.secrets.push(TlsSecret {
            namespace: "default".into(),
            name: format!("{name}-tls"),
            cert_pem,
            key_pem,
        });
    }
    Fixture { model, certs }
}

#[test]
fn bad_tls_secrets_hosts_and_paths_are_problems_of_their_own_ingress_only() {
    let f = fixture(8080);
    let t = translate(&f.model, &Options::default());
    t.snapshot.validate().unwrap();
    let mut seen: Vec<(String, &'static str)> = t
        .problems
        .iter()
        .map(|p| {
            let what = match p {
                Problem::InvalidTlsSecret {
                    error: TlsError::BadCertificate { .. },
                    ..
                } => "bad certificate",
                Problem::InvalidTlsSecret {
                    error: TlsError::KeyMismatch,
                    ..
                } => "key mismatch",
                Problem::InvalidTlsSecret {
                    error: TlsError::Expired { .. },
                    ..
                } => "expired",
                Problem::TlsSecretExpiringSoon { .. } => "expiring soon",
                Problem::InvalidPath { .. } => "invalid path",
                Problem::InvalidHost { .. } => "invalid host",
                other => panic!("unexpected problem {other}"),
            };
            (p.object().name.clone(), what)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("expired".to_string(), "expired"),
            ("garbage".to_string(), "bad certificate"),
            ("mismatch".to_string(), "key mismatch"),
            ("plain".to_string(), "invalid host"),
            ("plain".to_string(), "invalid path"),
            ("soon".to_string(), "expiring soon"),
        ]
    );
    for p in &t.problems {
        if matches!(
            p,
            Problem::InvalidTlsSecret { .. } | Problem::TlsSecretExpiringSoon { .. }
        ) {
            let secret = p.secret().unwrap();
            assert_eq!(
                (secret.kind.as_str(), secret.name),
                ("Secret", format!("{}-tls", p.object().name))
            );
        }
    }
}

fn host_get(addr: SocketAddr, host: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `curl https://<host>:<port>/` trusting `cert_pem`: Some(status) or None when TLS fails.
fn curl_https(host: &str, port: u16, cert_pem: &str, dir: &std::path::Path) -> Option<u16> {
    let ca = dir.join(format!("{host}.pem"));
    std::fs::write(&ca, cert_pem).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn the_gateway_keeps_serving_every_other_ingress_over_http_and_https_next_to_bad_secrets() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    if Command::new("curl").arg("--version").output().is_err() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true but no curl");
        eprintln!("skipping: no curl");
        return;
    }
    let (http, https, admin, app) = (free_port(), free_port(), free_port(), free_port());
    backend("127.0.0.12", app);
    let f = fixture(app);
    let dir = TempDir(std::env::temp_dir().join(format!("translate-tls-secrets-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let opts = Options {
            ingress_http_port: http,
            ingress_https_port: https,
            admin_port: admin,
            stats_port: None,
            ingress_tls: tls,
            ..Options::default()
        };
        let t = translate(&f.model, &opts);
        let bootstrap =
            static_bootstrap(INGRESS_NODE_ID, &t.snapshot.for_node(INGRESS_NODE_ID), admin).unwrap();
        // Envoy refuses to start on a config it rejects, so starting is the first check.
        let envoy = start_envoy(&envoy_bin, &bootstrap, admin);
        let addr: SocketAddr = ([127, 0, 0, 1], http).into();
        for name in ["plain"].iter().chain(&SERVED_TLS).chain(&BAD_TLS) {
            let resp = host_get(addr, &host(name), "/").unwrap();
            assert_eq!(status(&resp), 200, "{tls:?}: HTTP {name}: {resp}");
            assert_eq!(body(&resp), "hello from 127.0.0.12");
        }
        let resp = host_get(addr, "plain.example.com", "/a").unwrap();
        assert_eq!(status(&resp), 200, "the catch-all `/` still serves /a");
        for (h, cert) in &f.certs {
            let got = curl_https(h, https, cert, &dir.0);
            let served = SERVED_TLS.iter().any(|n| host(n) == *h);
            assert_eq!(got, served.then_some(200), "{tls:?}: HTTPS {h}");
        }
        drop(envoy);
    }
}
