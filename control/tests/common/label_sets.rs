//! Random meshes for the label property test: Services, pods and workloads carrying random
//! `traffic.*` label sets (every key of the contract; values valid, on a boundary, or junk
//! within the Kubernetes label value grammar), an Ingress over them, TLS Secrets good and bad.

use std::collections::BTreeMap;

use proptest::prelude::*;
use traffic_labels::{names, ObjectKind};
use traffic_translate::model::{
    Ingress, IngressBackend, IngressPath, IngressRule, IngressTls, MeshModel, OwnerRef, PathType, Pod,
    Service, ServicePort, TargetPort, TlsSecret, Workload, WorkloadKind,
};

/// Values on the edges of what some label accepts (or just past them), all Kubernetes-valid.
const BOUNDARY: &[&str] = &[
    "0",
    "1",
    "00",
    "007",
    "0.0",
    "0.4",
    "0.5",
    "1.5",
    "99.9999",
    "100",
    "100.0",
    "100.0001",
    "101",
    "127",
    "128",
    "129",
    "199",
    "200",
    "599",
    "600",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "1000000000000",
    "1000000000001",
    "999999999h",
    "1e3",
    "0x10",
    "5.",
    "1..2",
    "true",
    "false",
    "TRUE",
    "ms",
    "s",
    "0ms",
    "0s",
    "0.0001s",
    "3s",
    "1m",
    "1h",
    "60000",
    "http",
    "tcp",
    "direct",
    "HTTP",
    "round_robin",
    "ring_hash",
    "maglev",
    "least_request",
    "random",
    "x-user",
    "my.cookie",
    "a",
    "A_b-c.d",
];

/// Plausible values for one label.
fn valid_values(label: &str) -> &'static [&'static str] {
    use names::*;
    match label {
        ENVOY_ENABLED | LOCAL_USE_PODIP | TRACING_ENABLED => &["true", "false", "True"],
        ENDPOINT_WEIGHT => &["0", "1", "10", "100", "128"],
        LB_POLICY => &["round_robin", "least_request", "random", "ring_hash", "maglev"],
        HASH_COOKIE_NAME | HASH_HEADER_NAME => &["mycookie", "x-user", "session.id", "X-Forwarded-For"],
        HASH_COOKIE_TTL => &["0", "1", "3600", "30s", "1h"],
        CONNECTION_TIMEOUT | REQUEST_TIMEOUT | FAULT_DELAY_TIME => {
            &["1", "250", "3000", "250ms", "3s", "1.5s", "1m"]
        }
        FAULT_DELAY_PERCENTAGE | FAULT_ABORT_PERCENTAGE | TRACING_SAMPLING => {
            &["0", "0.0001", "12.5", "50", "100"]
        }
        FAULT_ABORT_STATUS => &["0", "200", "404", "503", "505", "599"],
        RATE_LIMIT => &["0", "1", "64", "1024"],
        _ => &["0", "1", "3", "100", "1000"],
    }
}

/// A Kubernetes label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends, or empty.
pub fn junk() -> impl Strategy<Value = String> {
    "([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?"
}

/// A value for `label`: valid, boundary or junk.
pub fn value_for(label: &'static str) -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(valid_values(label)).prop_map(String::from),
        3 => proptest::sample::select(BOUNDARY).prop_map(String::from),
        3 => junk(),
    ]
    .boxed()
}

/// Random `traffic.*` labels over every key of the contract (each present with probability 1/3),
/// plus `traffic.port.<port>` with a protocol-ish value.
pub fn label_set(port: u16) -> BoxedStrategy<BTreeMap<String, String>> {
    let fixed: Vec<BoxedStrategy<Option<(String, String)>>> = names::ALL
        .iter()
        .map(|label| {
            proptest::option::weighted(0.33, value_for(label))
                .prop_map(move |v| v.map(|v| (label.to_string(), v)))
                .boxed()
        })
        .collect();
    let port_value = prop_oneof![
        3 => proptest::sample::select(&["http", "tcp", "direct", "HTTP"][..]).prop_map(String::from),
        1 => junk(),
    ];
    (fixed, proptest::option::weighted(0.8, port_value), junk())
        .prop_map(move |(fixed, port_value, junk_port)| {
            let mut labels: BTreeMap<String, String> = fixed.into_iter().flatten().collect();
            if let Some(v) = port_value {
                labels.insert(format!("{}{port}", names::PORT_PREFIX), v);
            }
            // A port label naming no port of the Service, or no port at all.
            labels.insert(format!("{}{junk_port}", names::PORT_PREFIX), "http".into());
            labels
        })
        .boxed()
}

/// One Service's worth of random objects: its labels, its pods' and their workloads' labels.
#[derive(Debug, Clone)]
pub struct ServiceCase {
    pub service: BTreeMap<String, String>,
    pub pods: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>,
}

pub fn service_case(port: u16) -> impl Strategy<Value = ServiceCase> {
    (
        label_set(port),
        proptest::collection::vec((label_set(port), label_set(port)), 1..3),
    )
        .prop_map(|(service, pods)| ServiceCase { service, pods })
}

/// Which certificate a TLS Secret of the random Ingress gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCase {
    Good,
    ExpiringSoon,
    Expired,
    Garbage,
    WrongKey,
}

pub fn cert_case() -> impl Strategy<Value = CertCase> {
    proptest::sample::select(
        &[
            CertCase::Good,
            CertCase::ExpiringSoon,
            CertCase::Expired,
            CertCase::Garbage,
            CertCase::WrongKey,
        ][..],
    )
}

/// Ingress paths: fine ones and ones Envoy would reject in a `path_separated_prefix`.
pub fn ingress_path() -> impl Strategy<Value = (String, PathType)> {
    (
        proptest::sample::select(&["/", "/a", "/a/", "/a/b", "/a?b", "/a#b", "rel", "/x y", "/%2F"][..]),
        proptest::sample::select(
            &[
                PathType::Prefix,
                PathType::Exact,
                PathType::ImplementationSpecific,
            ][..],
        ),
    )
        .prop_map(|(p, t)| (p.to_string(), t))
}

/// Everything random about one mesh.
#[derive(Debug, Clone)]
pub struct MeshCase {
    pub services: Vec<ServiceCase>,
    pub client: BTreeMap<String, String>,
    pub paths: Vec<(String, PathType)>,
    pub certs: Vec<CertCase>,
}

pub fn mesh_case(port: u16, services: usize) -> impl Strategy<Value = MeshCase> {
    (
        proptest::collection::vec(service_case(port), services),
        label_set(port),
        proptest::collection::vec(ingress_path(), services),
        proptest::collection::vec(cert_case(), services),
    )
        .prop_map(|(services, client, paths, certs)| MeshCase {
            services,
            client,
            paths,
            certs,
        })
}

fn service(name: &str, n: usize, port: u16, labels: BTreeMap<String, String>) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![format!("127.0.10.{}", n + 1).parse().expect("ip")],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port,
            target_port: Some(TargetPort::Number(8080)),
            protocol: Default::default(),
        }],
        selector: BTreeMap::from([("app".to_string(), name.to_string())]),
        labels,
    }
}

fn pod(name: &str, app: &str, ip: String, mut labels: BTreeMap<String, String>) -> Pod {
    labels.insert("app".into(), app.into());
    Pod {
        namespace: "default".into(),
        name: name.into(),
        uid: String::new(),
        ip: Some(ip.parse().expect("ip")),
        node: Some("n1".into()),
        zone: None,
        labels,
        owner: Some(OwnerRef {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        }),
        ready: true,
        named_ports: BTreeMap::new(),
    }
}

/// The model of `case`, plus a plain marker Service `gen-<generation>` (labelled `http`, in the
/// Ingress) whose arrival in a proxy's config shows the whole update was taken.
/// `cert(case, host)` makes the (certificate, key) PEM of a TLS Secret.
pub fn model(
    case: &MeshCase,
    port: u16,
    generation: usize,
    cert: &mut dyn FnMut(CertCase, &str) -> (String, String),
) -> MeshModel {
    let mut m = MeshModel::default();
    let marker = format!("gen-{generation}");
    let mut ingress = Ingress {
        namespace: "default".into(),
        name: "random".into(),
        labels: BTreeMap::new(),
        default_backend: None,
        rules: Vec::new(),
        tls: Vec::new(),
    };
    let backend = |svc: &str| IngressBackend {
        service: svc.to_string(),
        port: TargetPort::Number(port),
    };
    for (n, s) in case.services.iter().enumerate() {
        let name = format!("svc-{n}");
        m.services.push(service(&name, n, port, s.service.clone()).into());
        for (k, (pod_labels, workload_labels)) in s.pods.iter().enumerate() {
            let pod_name = format!("{name}-{k}");
            m.pods.push(
                pod(
                    &pod_name,
                    &name,
                    format!("127.{}.0.{}", 20 + n, k + 1),
                    pod_labels.clone(),
                )
                .into(),
            );
            m.workloads.push(Workload {
                kind: WorkloadKind::Deployment,
                namespace: "default".into(),
                name: pod_name,
                labels: workload_labels.clone(),
            });
        }
        let host = format!("{name}.example.com");
        let (path, path_type) = case.paths[n].clone();
        ingress.rules.push(IngressRule {
            host: Some(host.clone()),
            paths: vec![
                IngressPath {
                    path,
                    path_type,
                    backend: backend(&name),
                },
                IngressPath {
                    path: "/".into(),
                    path_type: PathType::Prefix,
                    backend: backend(&name),
                },
            ],
        });
        let secret_name = format!("{name}-tls");
        let (cert_pem, key_pem) = cert(case.certs[n], &host);
        m.secrets.push(TlsSecret {
            namespace: "default".into(),
            name: secret_name.clone(),
            cert_pem,
            key_pem,
        });
        ingress.tls.push(IngressTls {
            hosts: vec![host],
            secret_name,
        });
    }
    let n = case.services.len();
    let mut marker_labels = BTreeMap::new();
    marker_labels.insert(format!("{}{port}", names::PORT_PREFIX), "http".to_string());
    m.services.push(service(&marker, n, port, marker_labels).into());
    m.pods.push(
        pod(
            &format!("{marker}-0"),
            &marker,
            format!("127.{}.0.1", 20 + n),
            BTreeMap::new(),
        )
        .into(),
    );
    ingress.rules.push(IngressRule {
        host: Some(format!("{marker}.example.com")),
        paths: vec![IngressPath {
            path: "/".into(),
            path_type: PathType::Prefix,
            backend: backend(&marker),
        }],
    });
    m.ingresses.push(ingress);
    // The sidecar under test: an enabled pod with random pod labels of its own.
    let mut client = case.client.clone();
    client.insert(names::ENVOY_ENABLED.into(), "true".into());
    let mut client_pod = pod("client", "client", "127.0.30.1".into(), client);
    client_pod.owner = None;
    m.pods.push(client_pod.into());
    m
}

/// Every `traffic.*` label of every object in `model` that was neither applied nor reported.
pub fn silently_dropped(model: &MeshModel) -> Vec<String> {
    let objects = model
        .services
        .iter()
        .map(|s| (ObjectKind::Service, &s.name, &s.labels))
        .chain(model.pods.iter().map(|p| (ObjectKind::Pod, &p.name, &p.labels)))
        .chain(
            model
                .workloads
                .iter()
                .map(|w| (ObjectKind::Workload, &w.name, &w.labels)),
        );
    let mut out = Vec::new();
    for (kind, name, labels) in objects {
        let parsed = traffic_labels::parse(kind, labels);
        for (label, value) in labels
            .iter()
            .filter(|(l, _)| l.starts_with(traffic_labels::PREFIX))
        {
            let reported = parsed.errors.iter().any(|e| &e.label == label);
            // A later `traffic.port.<N>` spelling of the same port (`007` and `7`) may win.
            if !reported && !parsed.settings.holds(label) {
                out.push(format!("{kind} {name}: {label}={value:?}"));
            }
        }
    }
    out
}
