//! Istio ServiceEntry -> routing model -> Envoy fields, table-driven: each case is a small
//! ServiceEntry (plus VirtualService / DestinationRule where the case needs one) and what the
//! sidecar's clusters, endpoints, outbound filter chains and route configurations hold. Invalid
//! and boundary values leave out only their object (or port / endpoint) and are reported.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily;
use envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{CLUSTER, ENDPOINT, ROUTE};
use traffic_translate::translate::{Options, OutboundPolicy, Problem, Translation};

/// One Service `reviews` (10.96.0.10:9080, no protocol label) and the ServiceEntries (YAML list
/// items, indented for `serviceEntries:`) plus `extra` Istio sections.
fn model(entries: &str, extra: &str) -> MeshModel {
    let yaml = format!(
        "services:\n- name: reviews\n  clusterIPs: [10.96.0.10]\n  ports: [{{port: 9080}}]\n  selector: {{app: reviews}}\n\
         pods:\n- {{name: reviews-v1, ip: 172.17.0.2, labels: {{app: reviews}}}}\n\
         istio:\n  serviceEntries:\n{entries}{extra}"
    );
    MeshModel::from_yaml_str(&yaml).unwrap()
}

/// A ServiceEntry list item named `name` with the flow-mapping `spec`.
fn se(name: &str, spec: &str) -> String {
    format!(
        "  - metadata: {{name: {name}, creationTimestamp: \"2024-01-0{}T00:00:00Z\"}}\n    spec: {spec}\n",
        name.len() % 9 + 1
    )
}

/// The discovery type; Envoy's DNS cluster extension reads as STRICT_DNS, or LOGICAL_DNS with
/// `all_addresses_in_single_endpoint`.
fn kind(c: &Cluster) -> cluster::DiscoveryType {
    match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t).unwrap(),
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            if dns_config(c).unwrap().all_addresses_in_single_endpoint {
                cluster::DiscoveryType::LogicalDns
            } else {
                cluster::DiscoveryType::StrictDns
            }
        }
        None => panic!("no discovery type"),
    }
}

fn dns_config(c: &Cluster) -> Option<DnsCluster> {
    match &c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::ClusterType(t)) => {
            assert_eq!(t.name, "envoy.clusters.dns");
            Some(decode(t.typed_config.as_ref().unwrap()))
        }
        _ => None,
    }
}

fn outbound(t: &Translation) -> Listener {
    listener(&sidecar(t, "x.default"), "outbound")
}

fn chain<'l>(l: &'l Listener, name: &str) -> &'l FilterChain {
    l.filter_chains
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no chain {name}: {:?}",
                l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>()
            )
        })
}

fn prefixes(c: &FilterChain) -> Vec<(String, u32)> {
    c.filter_chain_match
        .as_ref()
        .unwrap()
        .prefix_ranges
        .iter()
        .map(|p| {
            (
                p.address_prefix.clone(),
                p.prefix_len.map(|l| l.value).unwrap_or(0),
            )
        })
        .collect()
}

fn rc(t: &Translation, name: &str) -> RouteConfiguration {
    route_config(&sidecar(t, "x.default"), name)
}

fn messages(t: &Translation) -> Vec<String> {
    t.problems.iter().map(ToString::to_string).collect()
}

const HTTPBIN: &str = "{hosts: [httpbin.org], location: MESH_EXTERNAL, resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}";

/// (spec, cluster kind, EDS assignment?, (address, port, weight) of the endpoints in the cluster
/// or the assignment)
type ResolutionCase = (
    &'static str,
    cluster::DiscoveryType,
    bool,
    &'static [(&'static str, u32, u32)],
);

#[test]
fn resolution_picks_the_cluster_kind() {
    let cases: &[ResolutionCase] = &[
        (
            "{hosts: [a.example], resolution: NONE, ports: [{number: 5000, name: tcp, protocol: TCP}]}",
            cluster::DiscoveryType::OriginalDst,
            false,
            &[],
        ),
        (
            "{hosts: [a.example], ports: [{number: 5000, name: tcp, protocol: TCP}]}",
            cluster::DiscoveryType::OriginalDst,
            false,
            &[],
        ),
        (
            "{hosts: [a.example], resolution: STATIC, ports: [{number: 5000, name: tcp, protocol: TCP, targetPort: 6000}], \
             endpoints: [{address: 10.1.0.1, ports: {tcp: 7000}, weight: 3}, {address: 10.1.0.2}, {address: 10.1.0.3, ports: {other: 1}}]}",
            cluster::DiscoveryType::Eds,
            true,
            &[("10.1.0.1", 7000, 3), ("10.1.0.2", 6000, 0), ("10.1.0.3", 6000, 0)],
        ),
        (
            "{hosts: [a.example], resolution: STATIC, ports: [{number: 5000, name: tcp, protocol: TCP}], endpoints: [{address: 10.1.0.1}]}",
            cluster::DiscoveryType::Eds,
            true,
            &[("10.1.0.1", 5000, 0)],
        ),
        (
            "{hosts: [a.example], resolution: DNS, ports: [{number: 5000, name: tcp, protocol: TCP}]}",
            cluster::DiscoveryType::StrictDns,
            false,
            &[("a.example", 5000, 0)],
        ),
        (
            "{hosts: [a.example], resolution: DNS, ports: [{number: 5000, name: tcp, protocol: TCP}], \
             endpoints: [{address: a1.example}, {address: a2.example, ports: {tcp: 5001}, weight: 2}]}",
            cluster::DiscoveryType::StrictDns,
            false,
            &[("a1.example", 5000, 0), ("a2.example", 5001, 2)],
        ),
        (
            "{hosts: [a.example], resolution: DNS_ROUND_ROBIN, ports: [{number: 5000, name: tcp, protocol: TCP}]}",
            cluster::DiscoveryType::LogicalDns,
            false,
            &[("a.example", 5000, 0)],
        ),
        (
            "{hosts: [a.example], resolution: DNS_ROUND_ROBIN, ports: [{number: 5000, name: tcp, protocol: TCP}], endpoints: [{address: lb.example}]}",
            cluster::DiscoveryType::LogicalDns,
            false,
            &[("lb.example", 5000, 0)],
        ),
    ];
    for (spec, want_kind, eds, eps) in cases {
        let t = run(&model(&se("a", spec), ""));
        assert!(t.problems.is_empty(), "{spec}: {:?}", t.problems);
        let view = sidecar(&t, "x.default");
        let name = "5000|default|a.example";
        let c = cluster(&view, name);
        assert_eq!(kind(&c), *want_kind, "{spec}");
        assert_eq!(names(&view, ENDPOINT).contains(&name.to_string()), *eds, "{spec}");
        let got: Vec<(String, u32, u32)> = match (eds, &c.load_assignment) {
            (true, _) => endpoints(&cla(&view, name)),
            (false, Some(l)) => endpoints(l),
            (false, None) => Vec::new(),
        }
        .into_iter()
        .map(|(a, p, w, _)| (a, p, w))
        .collect();
        let want: Vec<(String, u32, u32)> = eps.iter().map(|(a, p, w)| (a.to_string(), *p, *w)).collect();
        assert_eq!(got, want, "{spec}");
        if let Some((lb, dns)) = want_kind_checks(*want_kind) {
            assert_eq!(c.lb_policy, lb as i32, "{spec}");
            assert_eq!(dns_config(&c).is_some(), dns, "{spec}");
            if let Some(d) = dns_config(&c) {
                assert!(d.respect_dns_ttl, "{spec}");
                assert_eq!(d.dns_lookup_family, DnsLookupFamily::V4Preferred as i32, "{spec}");
            }
        }
    }
}

/// (lb policy, DNS cluster) expected of a cluster kind.
fn want_kind_checks(k: cluster::DiscoveryType) -> Option<(cluster::LbPolicy, bool)> {
    match k {
        cluster::DiscoveryType::OriginalDst => Some((cluster::LbPolicy::ClusterProvided, false)),
        cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns => {
            Some((cluster::LbPolicy::RoundRobin, true))
        }
        _ => None,
    }
}

#[test]
fn static_endpoints_keep_their_locality_and_labels_pick_subsets() {
    let spec = "{hosts: [db.example], resolution: STATIC, ports: [{number: 5432, name: pg, protocol: TCP}], endpoints: [\
                {address: 10.1.0.1, labels: {version: v1}, locality: us-east/a}, \
                {address: 10.1.0.2, labels: {version: v2}, locality: us-east/b/rack1, weight: 4}]}";
    let dr = "  destinationRules:\n  - metadata: {name: db}\n    spec: {host: db.example, trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}, \
              subsets: [{name: v2, labels: {version: v2}}]}\n";
    let t = run(&model(&se("db", spec), dr));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let view = sidecar(&t, "x.default");
    let all = cla(&view, "5432|default|db.example");
    let localities: Vec<(String, String, String, u32)> = all
        .endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.clone().unwrap();
            (
                loc.region,
                loc.zone,
                loc.sub_zone,
                l.load_balancing_weight.unwrap().value,
            )
        })
        .collect();
    assert_eq!(
        localities,
        [
            ("us-east".into(), "a".into(), String::new(), 1),
            ("us-east".into(), "b".into(), "rack1".into(), 4)
        ]
    );
    let c = cluster(&view, "5432|default|db.example");
    assert_eq!(
        c.circuit_breakers.unwrap().thresholds[0]
            .max_connections
            .unwrap()
            .value,
        7,
        "the DestinationRule's policy applies to the ServiceEntry host"
    );
    let sub = cla(&view, "5432|default|db.example|v2");
    assert_eq!(endpoints(&sub), [("10.1.0.2".to_string(), 5432, 4, 4)]);
    assert_eq!(
        kind(&cluster(&view, "5432|default|db.example|v2")),
        cluster::DiscoveryType::Eds
    );
}

#[test]
fn ports_pick_the_filter_chain_and_addresses_its_match() {
    let entries = [
        se(
            "httpbin",
            "{hosts: [httpbin.org], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]}",
        ),
        se(
            "vip",
            "{hosts: [api.internal], addresses: [240.0.0.1, 10.20.0.0/16], location: MESH_INTERNAL, resolution: STATIC, \
             ports: [{number: 8080, name: http, protocol: http}, {number: 9000, name: tcp, protocol: TCP}], endpoints: [{address: 10.20.0.5}]}",
        ),
        se("mongo", "{hosts: [mongo.example], resolution: DNS, ports: [{number: 27017, name: mongo, protocol: MONGO}]}"),
        se("grpc", "{hosts: [grpc.example], resolution: DNS, ports: [{number: 80, name: grpc, protocol: GRPC}]}"),
    ]
    .concat();
    let t = run(&model(&entries, ""));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let l = outbound(&t);

    // HTTP without addresses: one chain for port 80, any address, HCM + RDS "80".
    let c = chain(&l, "80|http");
    assert!(prefixes(c).is_empty());
    assert_eq!(
        c.filter_chain_match
            .as_ref()
            .unwrap()
            .destination_port
            .unwrap()
            .value,
        80
    );
    let hcm = hcm_of(&c.filters[0]);
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(rds)) =
        hcm.route_specifier
    else {
        panic!("rds")
    };
    assert_eq!(rds.route_config_name, "80");
    // Both HTTP hosts of port 80 (HTTP and GRPC) are virtual hosts of it, then the policy's.
    let r = rc(&t, "80");
    let domains: Vec<Vec<String>> = r.virtual_hosts.iter().map(|v| v.domains.clone()).collect();
    assert_eq!(
        domains,
        [
            vec!["grpc.example".to_string(), "grpc.example:80".into()],
            vec!["httpbin.org".into(), "httpbin.org:80".into()],
            vec!["*".into()],
        ]
    );

    // HTTPS without addresses: by SNI, tls_inspector on port 443 only.
    let c = chain(&l, "443|default|httpbin.org");
    assert_eq!(
        c.filter_chain_match.as_ref().unwrap().server_names,
        ["httpbin.org"]
    );
    assert_eq!(tcp_cluster(c), "443|default|httpbin.org");
    let inspector = l
        .listener_filters
        .iter()
        .find(|f| f.name == "envoy.filters.listener.tls_inspector")
        .expect("tls_inspector");
    let disabled = format!("{:?}", inspector.filter_disabled);
    assert!(
        disabled.contains("NotMatch") && disabled.contains("start: 443, end: 444"),
        "{disabled}"
    );

    // Addresses: VIP /32 and the CIDR as written; HTTP with addresses shares RDS "8080".
    let c = chain(&l, "8080|http|8080|default|api.internal");
    assert_eq!(
        prefixes(c),
        [("10.20.0.0".to_string(), 16), ("240.0.0.1".to_string(), 32)]
    );
    let c = chain(&l, "9000|default|api.internal");
    assert_eq!(
        prefixes(c),
        [("10.20.0.0".to_string(), 16), ("240.0.0.1".to_string(), 32)]
    );
    assert_eq!(tcp_cluster(c), "9000|default|api.internal");

    // MONGO is opaque TCP; without addresses the chain takes the port at any address.
    let c = chain(&l, "27017|default|mongo.example");
    assert!(prefixes(c).is_empty());
    assert_eq!(tcp_cluster(c), "27017|default|mongo.example");
}

fn tcp_cluster(c: &FilterChain) -> String {
    match tcp_of(&c.filters[0]).cluster_specifier {
        Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_outbound_policy_decides_unknown_http_hosts_and_other_destinations() {
    let m = model(&se("httpbin", HTTPBIN), "");
    for (policy, vhost, default_cluster) in [
        (OutboundPolicy::Block, "block_all", "blackhole"),
        (OutboundPolicy::Passthrough, "allow_any", "passthrough"),
    ] {
        let t = run_with(
            &m,
            &Options {
                outbound_policy: policy,
                ..Options::default()
            },
        );
        let last = rc(&t, "80").virtual_hosts.last().cloned().unwrap();
        assert_eq!(
            (last.name.as_str(), last.domains.as_slice()),
            (vhost, &["*".to_string()][..])
        );
        match (&last.routes[0].action, policy) {
            (Some(route::Action::DirectResponse(d)), OutboundPolicy::Block) => assert_eq!(d.status, 502),
            (Some(route::Action::Route(a)), OutboundPolicy::Passthrough) => assert_eq!(
                a.cluster_specifier,
                Some(route_action::ClusterSpecifier::Cluster("passthrough".into()))
            ),
            other => panic!("{policy:?}: {other:?}"),
        }
        let l = outbound(&t);
        let d = l.default_filter_chain.unwrap();
        assert_eq!(tcp_cluster(&d), default_cluster);
        let clusters = names(&sidecar(&t, "x.default"), CLUSTER);
        assert!(clusters.contains(&default_cluster.to_string()));
        let passthrough = cluster(&sidecar(&t, "x.default"), "passthrough");
        assert_eq!(kind(&passthrough), cluster::DiscoveryType::OriginalDst);
    }

    // The model file's Istio-style field wins over the option.
    for (mode, default_cluster, opt) in [
        ("REGISTRY_ONLY", "blackhole", OutboundPolicy::Passthrough),
        ("ALLOW_ANY", "passthrough", OutboundPolicy::Block),
    ] {
        let mut m = model(&se("httpbin", HTTPBIN), "");
        let with: MeshModel =
            MeshModel::from_yaml_str(&format!("outboundTrafficPolicy: {{mode: {mode}}}\n")).unwrap();
        m.outbound_traffic_policy = with.outbound_traffic_policy;
        let t = run_with(
            &m,
            &Options {
                outbound_policy: opt,
                ..Options::default()
            },
        );
        assert_eq!(
            tcp_cluster(&outbound(&t).default_filter_chain.unwrap()),
            default_cluster,
            "{mode}"
        );
    }
    assert!(MeshModel::from_yaml_str("outboundTrafficPolicy: {mode: SOMETIMES}\n").is_err());

    // No ServiceEntry: nothing new (the label-driven output is unchanged).
    let t = run(&model("    []\n", ""));
    assert!(!names(&sidecar(&t, "x.default"), ROUTE).contains(&"80".to_string()));
    let l = outbound(&t);
    assert!(l.filter_chains.is_empty(), "{:?}", l.filter_chains);
    assert_eq!(l.listener_filters.len(), 1, "original_dst only");
}

#[test]
fn virtual_services_and_destination_rules_apply_to_service_entry_hosts() {
    // The classic walk-through: a ServiceEntry for httpbin.org and a VirtualService timeout 3 s.
    let vs = "  virtualServices:\n  - metadata: {name: httpbin}\n    spec:\n      hosts: [httpbin.org]\n      http:\n      - timeout: 3s\n        route:\n        - destination: {host: httpbin.org}\n          weight: 100\n";
    let t = run(&model(&se("httpbin", HTTPBIN), vs));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let r = rc(&t, "80");
    let vh = &r.virtual_hosts[0];
    assert_eq!(vh.domains[0], "httpbin.org");
    assert_eq!(
        vh.routes.len(),
        1,
        "the rule matches every request: no fallback route"
    );
    let Some(route::Action::Route(a)) = &vh.routes[0].action else {
        panic!("{:?}", vh.routes[0])
    };
    assert_eq!(a.timeout.unwrap().seconds, 3);
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "80|default|httpbin.org".into()
        ))
    );

    // From another namespace, by the same name (ServiceEntries are visible everywhere), to a
    // subset a DestinationRule defines on the host.
    let extra = "  virtualServices:\n  - metadata: {name: httpbin, namespace: other}\n    spec: {hosts: [httpbin.org], http: [{route: [{destination: {host: httpbin.org, subset: a}}]}]}\n\
                 \x20 destinationRules:\n  - metadata: {name: httpbin, namespace: other}\n    spec: {host: httpbin.org, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: a, labels: {}}]}\n";
    let t = run(&model(&se("httpbin", HTTPBIN), extra));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let view = sidecar(&t, "x.default");
    let c = cluster(&view, "80|default|httpbin.org");
    assert_eq!(c.lb_policy, cluster::LbPolicy::Random as i32);
    assert_eq!(kind(&c), cluster::DiscoveryType::StrictDns);
    let sub = cluster(&view, "80|default|httpbin.org|a");
    assert_eq!(kind(&sub), cluster::DiscoveryType::StrictDns);
    let Some(route::Action::Route(a)) = &rc(&t, "80").virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "80|default|httpbin.org|a".into()
        ))
    );

    // A host that is neither a Service nor a ServiceEntry host stays unemitted and reported.
    let vs = "  virtualServices:\n  - metadata: {name: other}\n    spec: {hosts: [httpbin.org], http: [{route: [{destination: {host: nope.example}}]}]}\n";
    let t = run(&model(&se("httpbin", HTTPBIN), vs));
    let m = messages(&t);
    assert!(
        m.iter()
            .any(|p| p.contains("\"nope.example\" is not a Service or ServiceEntry host")),
        "{m:?}"
    );
    let r = rc(&t, "80");
    let Some(route::Action::Route(a)) = &r.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "80|default|httpbin.org".into()
        )),
        "the host keeps its own route"
    );
}

#[test]
fn invalid_service_entries_leave_out_only_themselves() {
    let good = se("good", HTTPBIN);
    // (spec, problem text, whether a cluster of host bad.example still exists)
    let cases: &[(&str, &str, bool)] = &[
        ("{hosts: [bad.example], resolution: STATIC, ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3001", false),
        ("{hosts: [bad.example], addresses: [10.0.0.0/8], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3001", false),
        ("{hosts: [bad.example], addresses: [10.0.0.1/32], resolution: DNS, ports: [{number: 81, name: http, protocol: HTTP}]}", "", true),
        ("{hosts: [\"*.bad.example\"], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3001", false),
        ("{hosts: [bad.example], resolution: DNS_ROUND_ROBIN, ports: [{number: 80, name: http, protocol: HTTP}], endpoints: [{address: a.example}, {address: b.example}]}", "TM3001", false),
        ("{hosts: [bad.example], resolution: NONE, ports: [{number: 80, name: http, protocol: HTTP}], endpoints: [{address: 10.0.0.1}]}", "TM3001", true),
        ("{hosts: [\"*\"], ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3003", false),
        ("{hosts: [ns/bad.example], ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3003", false),
        ("{hosts: [bad..example], ports: [{number: 80, name: http, protocol: HTTP}]}", "TM3003", false),
        ("{hosts: [bad.example], ports: []}", "TM0004", false),
        ("{hosts: [], ports: [{number: 80, name: http, protocol: HTTP}]}", "TM0004", false),
        ("{hosts: [bad.example], addresses: [300.1.1.1], ports: [{number: 80, name: http, protocol: HTTP}]}", "TM1013", false),
        ("{hosts: [bad.example], resolution: MAGIC, ports: [{number: 80, name: http, protocol: HTTP}]}", "TM1013", false),
        ("{hosts: [bad.example], location: MESH_NEARBY, ports: [{number: 80, name: http, protocol: HTTP}]}", "TM1013", false),
        // Port-level problems drop the port; a port 1 / 65535 is fine.
        ("{hosts: [bad.example], ports: [{number: 80, name: q, protocol: QUIC}, {number: 81, name: ok, protocol: TCP}]}", "TM1013", true),
        ("{hosts: [bad.example], ports: [{number: 0, name: zero, protocol: TCP}, {number: 65536, name: big, protocol: TCP}, {number: 1, name: one, protocol: TCP}]}", "TM1011", true),
        ("{hosts: [bad.example], ports: [{number: 65535, name: top, protocol: TCP}]}", "", true),
        ("{hosts: [bad.example], resolution: STATIC, ports: [{number: 81, name: tcp, protocol: TCP}], endpoints: [{address: 10.0.0.1, weight: -1}, {address: 10.0.0.2}]}", "TM1014", true),
        ("{hosts: [bad.example], resolution: STATIC, ports: [{number: 81, name: tcp, protocol: TCP}], endpoints: [{address: 10.0.0.1, ports: {tcp: 70000}}, {address: 10.0.0.2}]}", "TM1011", true),
    ];
    for (spec, code, kept) in cases {
        let t = run(&model(&format!("{good}{}", se("bad", spec)), ""));
        let m = messages(&t);
        if code.is_empty() {
            assert!(m.is_empty(), "{spec}: {m:?}");
        } else {
            assert!(
                m.iter()
                    .any(|p| p.contains("ServiceEntry default/bad") && p.contains(code)),
                "{spec}: {m:?}"
            );
        }
        let view = sidecar(&t, "x.default");
        let clusters = names(&view, CLUSTER);
        assert!(
            clusters.contains(&"80|default|httpbin.org".to_string()),
            "{spec}: the good entry stays"
        );
        let bad = clusters.iter().any(|c| c.contains("bad.example"));
        assert_eq!(bad, *kept, "{spec}: {clusters:?}");
        assert!(
            m.iter().all(|p| !p.contains("ServiceEntry default/good")),
            "{spec}: {m:?}"
        );
    }
}

#[test]
fn conflicting_entries_keep_the_first_and_report_the_rest() {
    let entries = [
        se("a", "{hosts: [db.example], resolution: DNS, ports: [{number: 5432, name: pg, protocol: TCP}]}"),
        // Same host, later: ignored.
        se("bb", "{hosts: [DB.example.], resolution: DNS, ports: [{number: 5433, name: pg, protocol: TCP}]}"),
        // Another host on the same opaque TCP port at any address: that port is ignored.
        se("ccc", "{hosts: [db2.example], resolution: DNS, ports: [{number: 5432, name: pg, protocol: TCP}, {number: 80, name: http, protocol: HTTP}]}"),
        // A Kubernetes Service's name: stays the Service's.
        se("dddd", "{hosts: [reviews.default.svc.cluster.local], resolution: DNS, ports: [{number: 9080, name: http, protocol: HTTP}]}"),
    ]
    .concat();
    let t = run(&model(&entries, ""));
    let m = messages(&t);
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(
        m[0].contains("ServiceEntry default/bb")
            && m[0].contains("earlier ServiceEntry")
            && m[0].contains("(by ServiceEntry default/a)"),
        "{m:?}"
    );
    assert!(
        m[1].contains("ServiceEntry default/ccc") && m[1].contains("port 5432"),
        "{m:?}"
    );
    assert!(
        m[2].contains("ServiceEntry default/dddd") && m[2].contains("Kubernetes Service default/reviews"),
        "{m:?}"
    );
    let clusters = names(&sidecar(&t, "x.default"), CLUSTER);
    assert!(clusters.contains(&"5432|default|db.example".to_string()));
    assert!(!clusters.iter().any(|c| c.starts_with("5433|")));
    assert!(!clusters.contains(&"5432|default|db2.example".to_string()));
    assert!(clusters.contains(&"80|default|db2.example".to_string()));
    assert!(matches!(t.problems[0], Problem::IstioConflict { .. }));
}

#[test]
fn a_destination_without_port_takes_the_port_of_the_request_and_http_rules_only_http_ports() {
    // httpbin.org on 80 (HTTP) and 443 (HTTPS): the VirtualService names no port, as the
    // walk-throughs do; its HTTP rule lands on port 80 only, routed to port 80.
    let entry = se(
        "httpbin",
        "{hosts: [httpbin.org], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]}",
    );
    let vs = "  virtualServices:\n  - metadata: {name: httpbin}\n    spec: {hosts: [httpbin.org], http: [{timeout: 3s, route: [{destination: {host: httpbin.org}}]}]}\n";
    let t = run(&model(&entry, vs));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let Some(route::Action::Route(a)) = &rc(&t, "80").virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "80|default|httpbin.org".into()
        ))
    );
    assert!(!names(&sidecar(&t, "x.default"), ROUTE).contains(&"443".to_string()));
    let l = outbound(&t);
    assert_eq!(
        tcp_cluster(chain(&l, "443|default|httpbin.org")),
        "443|default|httpbin.org"
    );

    // To another multi-port host without a port: that host must have the request's port.
    let other = se(
        "mirror",
        "{hosts: [mirror.example], resolution: DNS, ports: [{number: 81, name: http, protocol: HTTP}, {number: 82, name: http2, protocol: HTTP}]}",
    );
    let vs = "  virtualServices:\n  - metadata: {name: httpbin}\n    spec: {hosts: [httpbin.org], http: [{route: [{destination: {host: mirror.example}}]}]}\n";
    let t = run(&model(&format!("{entry}{other}"), vs));
    let m = messages(&t);
    assert!(
        m.iter()
            .any(|p| p.contains("mirror.example") && p.contains("no TCP port 80")),
        "{m:?}"
    );
}
