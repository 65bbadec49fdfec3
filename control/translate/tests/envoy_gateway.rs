//! Real Envoy as the ingress gateway (`traffic-ingress`), on the translated config folded into a
//! static bootstrap: Ingress host/path rules over HTTP, HTTPS with the Ingress's certificate
//! chosen by SNI (checked by curl against that certificate), no fault injection at the gateway.
//!
//! Needs an Envoy binary (see `envoy_accepts.rs`) and curl; skips without them unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::live::*;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options, TlsDelivery, INGRESS_NODE_ID};

fn host_get(addr: SocketAddr, host: &str, path: &str) -> Option<String> {
    // `http_get` sends `host: test`; a second host header would be ambiguous, so build it here.
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

#[test]
fn the_gateway_serves_ingress_rules_over_http_and_https_without_faults() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    if Command::new("curl").arg("--version").output().is_err() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true but no curl");
        eprintln!("skipping: no curl");
        return;
    }
    let (http, https, admin, app) = (free_port(), free_port(), free_port(), free_port());
    backend("127.0.0.12", app);

    let bookinfo = common::bookinfo();
    let secret = bookinfo.secrets[0].clone();
    let mut model = MeshModel::from_yaml_str(&format!(
        r#"
services:
- name: productpage
  clusterIPs: [10.96.0.30]
  ports: [{{name: http, port: 9080, targetPort: {app}}}]
  selector: {{app: productpage}}
  labels: {{traffic.fault.abort.status: "505", traffic.fault.abort.percentage: "100"}}
pods:
- {{name: productpage-1, ip: 127.0.0.12, labels: {{app: productpage}}}}
ingresses:
- name: bookinfo
  rules:
  - host: bookinfo.example.com
    paths:
    - {{path: /productpage, pathType: Exact, backend: {{service: productpage, port: http}}}}
    - {{path: /static/, pathType: Prefix, backend: {{service: productpage, port: 9080}}}}
  tls:
  - {{hosts: [bookinfo.example.com], secretName: bookinfo-tls}}
"#
    ))
    .unwrap();
    model.secrets.push(secret.clone());

    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let opts = Options {
            ingress_http_port: http,
            ingress_https_port: https,
            admin_port: admin,
            stats_port: None,
            ingress_tls: tls,
            ..Options::default()
        };
        let t = translate(&model, &opts);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let bootstrap =
            static_bootstrap(INGRESS_NODE_ID, &t.snapshot.for_node(INGRESS_NODE_ID), admin).unwrap();
        let envoy = start_envoy(&envoy_bin, &bootstrap, admin);

        let addr: SocketAddr = ([127, 0, 0, 1], http).into();
        let get = |host: &str, path: &str| status(&host_get(addr, host, path).unwrap());
        assert_eq!(
            get("bookinfo.example.com", "/productpage"),
            200,
            "no fault at the gateway"
        );
        assert_eq!(
            get("bookinfo.example.com:80", "/productpage"),
            200,
            "port in Host ignored"
        );
        assert_eq!(get("bookinfo.example.com", "/productpage/x"), 404, "Exact");
        assert_eq!(
            get("bookinfo.example.com", "/static"),
            200,
            "Prefix ignores the trailing slash"
        );
        assert_eq!(get("bookinfo.example.com", "/static/css/a.css"), 200);
        assert_eq!(
            get("bookinfo.example.com", "/staticx"),
            404,
            "Prefix matches whole path elements"
        );
        assert_eq!(get("other.example.com", "/productpage"), 404, "unknown host");

        let dir = TempDir(std::env::temp_dir().join(format!("translate-gw-{}-{tls:?}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let ca = dir.0.join("ca.pem");
        std::fs::write(&ca, &secret.cert_pem).unwrap();
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "10",
                "--cacert",
            ])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("bookinfo.example.com:{https}:127.0.0.1"))
            .arg(format!("https://bookinfo.example.com:{https}/productpage"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.ends_with("\n200") && stdout.contains("hello from 127.0.0.12"),
            "{tls:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(envoy);
    }
}
