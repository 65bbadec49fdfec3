//! Istio Gateway fields -> the ingress gateway's Envoy resources, table-driven: each case is a
//! Gateway (and the VirtualService `front` bound to it) and what the gateway gets, or which
//! problem is reported for an invalid or unsupported value (the rest still translates).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::certs::{test_cert, unix_now};
use common::*;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use traffic_translate::model::{MeshModel, TlsSecret};
use traffic_translate::snapshot::{LISTENER, ROUTE, SECRET};
use traffic_translate::translate::{Options, TlsDelivery, Translation, INGRESS_NODE_ID};

/// `web` (port 80 named http) + a Secret `cert` (valid for `*.example.com`) + `garbage`, and the
/// Gateway `gw` with `servers` (YAML block list, indented 6) and VirtualService `front` for
/// `hosts`.
fn model(servers: &str, hosts: &str) -> MeshModel {
    model_with(
        &format!("{{istio: ingressgateway}}\n      servers:\n{servers}"),
        hosts,
    )
}

fn model_with(selector_and_servers: &str, hosts: &str) -> MeshModel {
    let yaml = format!(
        r#"
services:
- {{name: web, clusterIPs: [10.96.0.50], ports: [{{name: http, port: 80, targetPort: 8080}}], selector: {{app: web}}}}
pods:
- {{name: web-1, ip: 172.17.0.50, labels: {{app: web}}}}
istio:
  gateways:
  - metadata: {{name: gw}}
    spec:
      selector: {selector_and_servers}
  virtualServices:
  - metadata: {{name: front}}
    spec:
      hosts: {hosts}
      gateways: [gw]
      http: [{{route: [{{destination: {{host: web}}}}]}}]
"#
    );
    let mut m = MeshModel::from_yaml_str(&yaml).unwrap();
    let now = unix_now();
    let (cert_pem, key_pem) = test_cert(&["*.example.com"], now - 3600, now + 90 * 24 * 3600);
    m.secrets.push(TlsSecret {
        namespace: "default".into(),
        name: "cert".into(),
        cert_pem,
        key_pem,
    });
    m.secrets.push(TlsSecret {
        namespace: "default".into(),
        name: "garbage".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into(),
        key_pem: "nope".into(),
    });
    m
}

fn gw(t: &Translation) -> traffic_translate::snapshot::NodeResources {
    sidecar(t, INGRESS_NODE_ID)
}

/// (route configuration, domain, require_tls) of every virtual host of the gateway.
fn vhosts(t: &Translation) -> Vec<(String, String, bool)> {
    let view = gw(t);
    let mut out = Vec::new();
    for name in names(&view, ROUTE) {
        for v in route_config(&view, &name).virtual_hosts {
            out.push((
                name.clone(),
                v.domains[0].clone(),
                v.require_tls == TlsRequirementType::All as i32,
            ));
        }
    }
    out
}

fn problems(t: &Translation) -> Vec<String> {
    t.problems.iter().map(ToString::to_string).collect()
}

fn has_problem(t: &Translation, text: &str) -> bool {
    problems(t).iter().any(|p| p.contains(text))
}

fn vh(rc: &str, domain: &str, redirect: bool) -> (String, String, bool) {
    (rc.to_string(), domain.to_string(), redirect)
}

const HTTP80: &str =
    "      - port: {number: 80, name: http, protocol: HTTP}\n        hosts: [\"*.example.com\"]\n";
const HTTPS443: &str = "      - port: {number: 443, name: https, protocol: HTTPS}\n        hosts: [a.example.com, b.example.com]\n        tls: {mode: SIMPLE, credentialName: cert}\n";
const HTTPS_RC: &str = "https.443.default/gw/servers[0]";

#[test]
fn gateway_fields_become_listeners_virtual_hosts_and_filter_chains() {
    // (case, servers, VirtualService hosts, expected virtual hosts, expected problem)
    type Case = (
        &'static str,
        String,
        &'static str,
        Vec<(String, String, bool)>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "HTTP on 80 serves the VirtualService hosts the server accepts",
            HTTP80.into(),
            "[a.example.com, other.org]",
            vec![vh("ingress", "a.example.com", false)],
            None,
        ),
        (
            "a VirtualService host * under a server host gives the server host",
            "      - port: {number: 80, name: http, protocol: HTTP}\n        hosts: [a.example.com]\n".into(),
            "[\"*\"]",
            vec![vh("ingress", "a.example.com", false)],
            None,
        ),
        (
            "a wildcard VirtualService host inside a wildcard server host stays",
            HTTP80.into(),
            "[\"*.shop.example.com\"]",
            vec![vh("ingress", "*.shop.example.com", false)],
            None,
        ),
        (
            "ns/host binds only VirtualServices of that namespace",
            "      - port: {number: 80, name: http, protocol: HTTP}\n        hosts: [\"other/*\", \"./b.example.com\"]\n".into(),
            "[a.example.com, b.example.com]",
            vec![vh("ingress", "b.example.com", false)],
            None,
        ),
        (
            "httpsRedirect requires TLS on every virtual host (301)",
            "      - port: {number: 80, name: http, protocol: HTTP}\n        hosts: [a.example.com]\n        tls: {httpsRedirect: true}\n".into(),
            "[a.example.com]",
            vec![vh("ingress", "a.example.com", true)],
            None,
        ),
        (
            "a port >= 1024 is a listener and route configuration of its own",
            "      - port: {number: 9090, name: http, protocol: HTTP}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![vh("gateway_9090", "a.example.com", false)],
            None,
        ),
        (
            "HTTPS SIMPLE gets a route configuration per server",
            HTTPS443.into(),
            "[a.example.com, c.example.com]",
            vec![vh(HTTPS_RC, "a.example.com", false)],
            None,
        ),
        (
            "HTTP and HTTPS servers together",
            format!("{HTTPS443}{HTTP80}"),
            "[a.example.com]",
            vec![vh(HTTPS_RC, "a.example.com", false), vh("ingress", "a.example.com", false)],
            None,
        ),
        (
            "a privileged port other than 80/443 is reported",
            "      - port: {number: 81, name: http, protocol: HTTP}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![],
            Some("runs unprivileged"),
        ),
        (
            "the stats port is reported",
            "      - port: {number: 8900, name: http, protocol: HTTP}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![],
            Some("stats port"),
        ),
        (
            "a missing Secret drops only its server",
            format!("      - port: {{number: 443, name: https, protocol: HTTPS}}\n        hosts: [a.example.com]\n        tls: {{mode: SIMPLE, credentialName: nope}}\n{HTTP80}"),
            "[a.example.com]",
            vec![vh("ingress", "a.example.com", false)],
            Some("TLS Secret nope not found"),
        ),
        (
            "a garbage Secret drops only its server",
            format!("      - port: {{number: 443, name: https, protocol: HTTPS}}\n        hosts: [a.example.com]\n        tls: {{mode: SIMPLE, credentialName: garbage}}\n{HTTP80}"),
            "[a.example.com]",
            vec![vh("ingress", "a.example.com", false)],
            Some("TLS Secret garbage is not usable"),
        ),
        (
            "MUTUAL is not supported yet",
            "      - port: {number: 443, name: https, protocol: HTTPS}\n        hosts: [a.example.com]\n        tls: {mode: MUTUAL, credentialName: cert}\n".into(),
            "[a.example.com]",
            vec![],
            Some("tls.mode MUTUAL is not supported"),
        ),
        (
            "PASSTHROUGH is rejected by validation",
            "      - port: {number: 443, name: https, protocol: HTTPS}\n        hosts: [a.example.com]\n        tls: {mode: PASSTHROUGH}\n".into(),
            "[a.example.com]",
            vec![],
            Some("TM4001"),
        ),
        (
            "HTTPS without tls is rejected by validation",
            "      - port: {number: 443, name: https, protocol: HTTPS}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![],
            Some("TM4001"),
        ),
        (
            "TCP servers are not served",
            "      - port: {number: 9000, name: tcp, protocol: TCP}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![],
            Some("protocol \"TCP\" is not served"),
        ),
        (
            "an unknown protocol is rejected by validation",
            "      - port: {number: 9000, name: x, protocol: QUIC}\n        hosts: [a.example.com]\n".into(),
            "[a.example.com]",
            vec![],
            Some("TM1013"),
        ),
        (
            "HTTPS on port 80 (the HTTP listener) is reported",
            "      - port: {number: 80, name: https, protocol: HTTPS}\n        hosts: [a.example.com]\n        tls: {mode: SIMPLE, credentialName: cert}\n".into(),
            "[a.example.com]",
            vec![],
            Some("already an HTTP listener"),
        ),
        (
            "a host claimed by an earlier HTTPS server is reported",
            format!("{HTTPS443}      - port: {{number: 443, name: https2, protocol: HTTPS}}\n        hosts: [b.example.com]\n        tls: {{mode: SIMPLE, credentialName: cert}}\n"),
            "[b.example.com]",
            vec![vh(HTTPS_RC, "b.example.com", false)],
            Some("TLS host \"b.example.com\" is already served on port 443"),
        ),
        (
            "a server without hosts is rejected by validation",
            "      - port: {number: 80, name: http, protocol: HTTP}\n".into(),
            "[a.example.com]",
            vec![],
            Some("TM4002"),
        ),
    ];
    for (case, servers, hosts, want, problem) in cases {
        let t = run(&model(&servers, hosts));
        assert_eq!(vhosts(&t), want, "{case}: {:#?}", problems(&t));
        if let Some(p) = problem {
            assert!(has_problem(&t, p), "{case}: no {p:?} in {:#?}", problems(&t));
        }
        assert!(
            t.snapshot.validate().is_ok(),
            "{case}: {:?}",
            t.snapshot.validate()
        );
    }
}

#[test]
fn an_https_server_is_a_filter_chain_whose_sni_names_are_its_hosts() {
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let opts = Options {
            ingress_tls: tls,
            ..Options::default()
        };
        let star = "      - port: {number: 443, name: any, protocol: HTTPS}\n        hosts: [\"*\"]\n        tls: {mode: SIMPLE, credentialName: cert}\n";
        let t = run_with(&model(&format!("{HTTPS443}{star}"), "[a.example.com]"), &opts);
        let l: Listener = listener(&gw(&t), traffic_translate::translate::INGRESS_HTTPS_LISTENER);
        let sni: Vec<Vec<String>> = l
            .filter_chains
            .iter()
            .map(|c| c.filter_chain_match.clone().unwrap_or_default().server_names)
            .collect();
        assert_eq!(
            sni,
            [vec!["a.example.com".to_string(), "b.example.com".into()], vec![]],
            "{tls:?}: `*` is any SNI name"
        );
        assert_eq!(l.address.unwrap(), envoy_address(opts.ingress_https_port));
        let secrets = names(&gw(&t), SECRET);
        match tls {
            TlsDelivery::Sds => assert_eq!(secrets, ["default/cert"]),
            TlsDelivery::Inline => assert!(secrets.is_empty()),
        }
        // Sidecars never get the secret.
        assert!(names(&sidecar(&t, "x.default"), SECRET).is_empty());
    }
}

fn envoy_address(port: u16) -> envoy_types::pb::envoy::config::core::v3::Address {
    traffic_translate::envoy::socket_address("0.0.0.0", port)
}

#[test]
fn the_selector_picks_the_gateway_by_its_pod_labels() {
    let servers = format!("\n      servers:\n{HTTP80}");
    for (selector, applies) in [
        ("{istio: ingressgateway}", true),
        ("{app: traffic-ingress}", true),
        ("{app: traffic-ingress, istio: ingressgateway}", true),
        ("{istio: eastwestgateway}", false),
        ("{app: traffic-ingress, tier: edge}", false),
    ] {
        let t = run(&model_with(&format!("{selector}{servers}"), "[a.example.com]"));
        assert_eq!(!vhosts(&t).is_empty(), applies, "{selector}");
        assert_eq!(
            has_problem(&t, "selects no gateway proxy"),
            !applies,
            "{selector}"
        );
    }
    // Other labels (a gateway Deployment of the chart with its own labels) select by those.
    let opts = Options {
        ingress_labels: [("istio".to_string(), "eastwestgateway".to_string())].into(),
        ..Options::default()
    };
    let t = run_with(
        &model_with(&format!("{{istio: eastwestgateway}}{servers}"), "[a.example.com]"),
        &opts,
    );
    assert_eq!(vhosts(&t), [vh("ingress", "a.example.com", false)]);
}

#[test]
fn a_listener_of_its_own_is_only_made_for_ports_with_servers() {
    let t = run(&model(
        "      - port: {number: 9443, name: https, protocol: HTTPS}\n        hosts: [a.example.com]\n        tls: {mode: SIMPLE, credentialName: cert}\n",
        "[a.example.com]",
    ));
    let ls = names(&gw(&t), LISTENER);
    assert!(ls.contains(&"gateway_9443".to_string()), "{ls:?}");
    assert!(
        !ls.contains(&traffic_translate::translate::INGRESS_HTTPS_LISTENER.to_string()),
        "{ls:?}"
    );
    assert_eq!(
        vhosts(&t),
        [vh("https.9443.default/gw/servers[0]", "a.example.com", false)]
    );
}
