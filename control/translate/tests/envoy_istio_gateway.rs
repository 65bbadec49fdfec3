//! An Istio Gateway through a real gateway Envoy on loopback: HTTP on port 80 (the gateway's
//! HTTP listener), HTTPS on 443 with two hosts and two self-signed certificates (the client's
//! SNI chooses the certificate: trusting only the other host's certificate fails), a third
//! HTTPS server whose Secret is missing (only it is dropped, reported), an `httpsRedirect`
//! server on a port of its own (301 to https), an unknown host (404), and a Gateway whose
//! selector matches no gateway (reported, not applied). Inline and SDS certificates.
//!
//! Envoy refuses to start on a static configuration it rejects, so a started Envoy is the
//! "0 NACKs" check. Needs an Envoy binary and curl (see `envoy_gateway.rs`); skips without them
//! unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::certs::{test_cert, unix_now};
use common::live::*;
use traffic_translate::model::{MeshModel, TlsSecret};
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options, Problem, TlsDelivery, INGRESS_NODE_ID};

const DAY: u64 = 24 * 3600;

/// Two Services (`a` on 127.0.0.21, `b` on 127.0.0.22), a Gateway with five servers, a Gateway
/// selecting nothing, and VirtualServices binding `a.example.com` and `b.example.com` (+ the
/// redirecting `r.example.com`).
fn model(app: u16, redirect_port: u16) -> MeshModel {
    let yaml = format!(
        r#"
services:
- {{name: a, clusterIPs: [10.96.0.41], ports: [{{name: http, port: 80, targetPort: {app}}}], selector: {{app: a}}}}
- {{name: b, clusterIPs: [10.96.0.42], ports: [{{name: http, port: 80, targetPort: {app}}}], selector: {{app: b}}}}
pods:
- {{name: a-1, ip: 127.0.0.21, labels: {{app: a}}}}
- {{name: b-1, ip: 127.0.0.22, labels: {{app: b}}}}
istio:
  gateways:
  - metadata: {{name: web}}
    spec:
      selector: {{istio: ingressgateway}}
      servers:
      - port: {{number: 80, name: http, protocol: HTTP}}
        hosts: [a.example.com, b.example.com]
      - port: {{number: 443, name: https-a, protocol: HTTPS}}
        hosts: [a.example.com]
        tls: {{mode: SIMPLE, credentialName: a-cert}}
      - port: {{number: 443, name: https-b, protocol: HTTPS}}
        hosts: [b.example.com]
        tls: {{mode: SIMPLE, credentialName: b-cert}}
      - port: {{number: 443, name: https-c, protocol: HTTPS}}
        hosts: [c.example.com]
        tls: {{mode: SIMPLE, credentialName: missing-cert}}
      - port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}
        hosts: [r.example.com]
        tls: {{httpsRedirect: true}}
  - metadata: {{name: elsewhere}}
    spec:
      selector: {{app: some-other-gateway}}
      servers:
      - port: {{number: 80, name: http, protocol: HTTP}}
        hosts: [z.example.com]
  virtualServices:
  - metadata: {{name: a}}
    spec:
      hosts: [a.example.com]
      gateways: [web]
      http: [{{route: [{{destination: {{host: a}}}}]}}]
  - metadata: {{name: b}}
    spec:
      hosts: [b.example.com, c.example.com, r.example.com]
      gateways: [web]
      http: [{{route: [{{destination: {{host: b}}}}]}}]
  - metadata: {{name: z}}
    spec:
      hosts: [z.example.com]
      gateways: [elsewhere]
      http: [{{route: [{{destination: {{host: a}}}}]}}]
"#
    );
    let mut model = MeshModel::from_yaml_str(&yaml).unwrap();
    for name in ["a", "b"] {
        model.secrets.push(secret(name));
    }
    model
}

fn secret(name: &str) -> TlsSecret {
    let now = unix_now();
    let (cert_pem, key_pem) = test_cert(&[&format!("{name}.example.com")], now - DAY, now + 90 * DAY);
    TlsSecret {
        namespace: "default".into(),
        name: format!("{name}-cert"),
        cert_pem,
        key_pem,
    }
}

/// `curl https://<host>:<port>/` trusting only `cert_pem`: Some((status, body)), None when TLS
/// fails (the server showed another certificate, or none).
fn curl_https(host: &str, port: u16, cert_pem: &str, dir: &std::path::Path) -> Option<(u16, String)> {
    let ca = dir.join(format!("{host}-{}.pem", cert_pem.len()));
    std::fs::write(&ca, cert_pem).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (out.status.success() && code != 0).then(|| (code, body.to_string()))
}

/// `GET /` with `host` (`http_get` sends `host: test` itself).
fn host_get(addr: SocketAddr, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn gateway_http_and_https_servers_serve_with_the_certificate_sni_chooses() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    if Command::new("curl").arg("--version").output().is_err() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true but no curl");
        eprintln!("skipping: no curl");
        return;
    }
    let (http, https, redirect, admin, app) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    backend("127.0.0.21", app);
    backend("127.0.0.22", app);
    let m = model(app, redirect);
    let cert = |name: &str| {
        m.secrets
            .iter()
            .find(|s| s.name == format!("{name}-cert"))
            .unwrap()
            .cert_pem
            .clone()
    };
    let dir = std::env::temp_dir().join(format!("translate-istio-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let opts = Options {
            ingress_http_port: http,
            ingress_https_port: https,
            admin_port: admin,
            stats_port: None,
            ingress_tls: tls,
            ..Options::default()
        };
        let t = translate(&m, &opts);
        let reported = |kind: &str, name: &str, what: &str| {
            t.problems
                .iter()
                .any(|p| p.object().kind == kind && p.object().name == name && p.to_string().contains(what))
        };
        assert!(
            t.problems
                .iter()
                .any(|p| matches!(p, Problem::MissingSecret { ingress, secret }
                if ingress.kind == "Gateway" && secret == "missing-cert")),
            "{:?}",
            t.problems
        );
        assert!(
            reported("Gateway", "elsewhere", "selects no gateway proxy"),
            "{:?}",
            t.problems
        );
        let bootstrap =
            static_bootstrap(INGRESS_NODE_ID, &t.snapshot.for_node(INGRESS_NODE_ID), admin).unwrap();
        let envoy = start_envoy(&envoy_bin, &bootstrap, admin);

        let addr: SocketAddr = ([127, 0, 0, 1], http).into();
        for (host, ip) in [("a.example.com", "127.0.0.21"), ("b.example.com", "127.0.0.22")] {
            let resp = host_get(addr, host);
            assert_eq!(status(&resp), 200, "{tls:?}: HTTP {host}: {resp}");
            assert_eq!(body(&resp), format!("hello from {ip}"));
        }
        for host in ["unknown.example.com", "z.example.com", "r.example.com"] {
            let resp = host_get(addr, host);
            assert_eq!(
                status(&resp),
                404,
                "{tls:?}: HTTP {host} is on no server of port 80: {resp}"
            );
        }

        // SNI chooses the certificate: each host verifies only with its own.
        for (host, ip) in [("a", "127.0.0.21"), ("b", "127.0.0.22")] {
            let h = format!("{host}.example.com");
            let got = curl_https(&h, https, &cert(host), &dir);
            assert_eq!(got, Some((200, format!("hello from {ip}"))), "{tls:?}: HTTPS {h}");
            let other = if host == "a" { cert("b") } else { cert("a") };
            assert_eq!(
                curl_https(&h, https, &other, &dir),
                None,
                "{tls:?}: {h} showed the other certificate"
            );
        }
        // The server whose Secret is missing is dropped alone.
        assert_eq!(curl_https("c.example.com", https, &cert("a"), &dir), None);

        let resp = host_get(([127, 0, 0, 1], redirect).into(), "r.example.com");
        assert_eq!(status(&resp), 301, "{tls:?}: httpsRedirect: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("location: https://r.example.com"),
            "{resp}"
        );
        drop(envoy);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
