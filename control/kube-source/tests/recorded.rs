//! Conversion of API objects recorded from a real Kubernetes 1.20 cluster (tests/fixtures/*.json,
//! made by tests/manifests/record.sh from tests/manifests/bookinfo.yaml) into the mesh model.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::de::DeserializeOwned;
use traffic_kube_source::convert::{build_model, Inputs};
use traffic_kube_source::problems::label_problems;
use traffic_labels::{effective_enabled, effective_weight, parse, ObjectKind, Reason};
use traffic_translate::model::{MeshModel, OwnerRef, PathType, Pod, TargetPort, WorkloadKind};

fn load<K: DeserializeOwned>(file: &str) -> Vec<Arc<K>> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{path} has no items");
    items
        .iter()
        .map(|i| Arc::new(serde_json::from_value(i.clone()).unwrap_or_else(|e| panic!("{path}: {e}"))))
        .collect()
}

fn recorded() -> Inputs {
    Inputs {
        services: load("services.json"),
        pods: load("pods.json"),
        replica_sets: load("replicasets.json"),
        deployments: load("deployments.json"),
        stateful_sets: load("statefulsets.json"),
        daemon_sets: load("daemonsets.json"),
        ingresses: load("ingresses.json"),
        secrets: load("secrets.json"),
        now: None,
        istio: Default::default(),
    }
}

fn pod<'m>(m: &'m MeshModel, prefix: &str) -> &'m Pod {
    m.pods
        .iter()
        .find(|p| p.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no pod {prefix}*"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Weight and enabled of a pod as translation will compute them (pod label over owner label).
fn effective(m: &MeshModel, p: &Pod) -> (bool, u8) {
    let own = parse(ObjectKind::Pod, &p.labels).settings;
    let owner = m
        .owner_of(p)
        .map(|w| parse(ObjectKind::Workload, &w.labels).settings);
    (
        effective_enabled(&own, owner.as_ref()),
        effective_weight(&own, owner.as_ref()),
    )
}

#[test]
fn service_endpoints_are_the_selected_ready_pods_ips_with_named_target_ports_resolved() {
    let m = build_model(&recorded());
    let reviews = m.service("kube-rec", "reviews").unwrap();
    assert_eq!(reviews.cluster_ips.len(), 1);
    assert_eq!(reviews.ports[0].port, 9080);
    assert_eq!(
        reviews.ports[0].target_port,
        Some(TargetPort::Name("http".into()))
    );
    let eps = m.endpoints(reviews, &reviews.ports[0]);
    let got: Vec<(&str, IpAddr, u16)> = eps.iter().map(|e| (&e.pod.name[..10], e.ip, e.port)).collect();
    assert_eq!(
        got,
        vec![
            ("reviews-v1", pod(&m, "reviews-v1").ip.unwrap(), 9080),
            ("reviews-v2", pod(&m, "reviews-v2").ip.unwrap(), 9080),
            ("reviews-v3", pod(&m, "reviews-v3").ip.unwrap(), 9080),
        ]
    );
    // Pod IPs come from the docker0 bridge of the e2e cluster.
    assert!(eps.iter().all(|e| e.ip.to_string().starts_with("172.17.")));
    assert!(m
        .pods
        .iter()
        .all(|p| p.ready && p.node.as_deref() == Some("traffic-e2e-node")));
    assert_eq!(pod(&m, "reviews-v1").named_ports["http"], 9080);
}

#[test]
fn a_headless_service_has_no_cluster_ip_but_still_has_endpoints() {
    let m = build_model(&recorded());
    let details = m.service("kube-rec", "details").unwrap();
    assert!(details.cluster_ips.is_empty());
    let eps = m.endpoints(details, &details.ports[0]);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].pod.name, "details-0");
    assert_eq!(eps[0].ip, pod(&m, "details-0").ip.unwrap());
}

#[test]
fn pods_resolve_their_owner_chain_through_replicasets_to_deployments() {
    let m = build_model(&recorded());
    let owner = |prefix| pod(&m, prefix).owner.clone().unwrap();
    assert_eq!(
        owner("reviews-v1"),
        OwnerRef {
            kind: WorkloadKind::Deployment,
            name: "reviews-v1".into()
        }
    );
    assert_eq!(owner("details-0").kind, WorkloadKind::StatefulSet);
    assert_eq!(
        owner("ratings"),
        OwnerRef {
            kind: WorkloadKind::DaemonSet,
            name: "ratings".into()
        }
    );
    // ReplicaSets owned by a Deployment are not workloads of their own.
    let kinds: Vec<(WorkloadKind, &str)> = m.workloads.iter().map(|w| (w.kind, w.name.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (WorkloadKind::StatefulSet, "details"),
            (WorkloadKind::DaemonSet, "ratings"),
            (WorkloadKind::Deployment, "reviews-v1"),
            (WorkloadKind::Deployment, "reviews-v2"),
            (WorkloadKind::Deployment, "reviews-v3"),
        ]
    );
    assert!(m.pods.iter().all(|p| m.owner_of(p).is_some()));
}

#[test]
fn owner_labels_give_weights_and_enablement_and_the_pods_own_label_wins() {
    let m = build_model(&recorded());
    assert_eq!(effective(&m, pod(&m, "reviews-v1")), (true, 100));
    assert_eq!(effective(&m, pod(&m, "reviews-v2")), (true, 10));
    // The Deployment says enabled, its pod template says `traffic.envoy.enabled: "false"`.
    assert_eq!(
        m.owner_of(pod(&m, "reviews-v3")).unwrap().labels["traffic.envoy.enabled"],
        "true"
    );
    assert_eq!(effective(&m, pod(&m, "reviews-v3")), (false, 0));
    assert_eq!(effective(&m, pod(&m, "details-0")), (true, 100));
    assert_eq!(effective(&m, pod(&m, "ratings")), (true, 50));
    // Weight 0 removes reviews-v3 from rotation: membership of 9080|kube-rec|reviews is 2.
    let reviews = m.service("kube-rec", "reviews").unwrap();
    let members = m
        .endpoints(reviews, &reviews.ports[0])
        .iter()
        .filter(|e| effective(&m, e.pod).1 > 0)
        .count();
    assert_eq!(members, 2);
}

#[test]
fn the_ingress_keeps_hosts_paths_backends_and_only_its_referenced_tls_secret_is_in_the_model() {
    let m = build_model(&recorded());
    assert_eq!(m.ingresses.len(), 1);
    let ing = &m.ingresses[0];
    assert_eq!(ing.tls[0].secret_name, "bookinfo-tls");
    assert_eq!(ing.tls[0].hosts, vec!["bookinfo.example.com".to_string()]);
    let db = ing.default_backend.as_ref().unwrap();
    assert_eq!(
        (db.service.as_str(), &db.port),
        ("details", &TargetPort::Number(9080))
    );
    let rule = &ing.rules[0];
    assert_eq!(rule.host.as_deref(), Some("bookinfo.example.com"));
    let paths: Vec<(&str, PathType, &str, &TargetPort)> = rule
        .paths
        .iter()
        .map(|p| {
            (
                p.path.as_str(),
                p.path_type,
                p.backend.service.as_str(),
                &p.backend.port,
            )
        })
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "/reviews",
                PathType::Prefix,
                "reviews",
                &TargetPort::Name("http".into())
            ),
            ("/ratings", PathType::Exact, "ratings", &TargetPort::Number(9080)),
        ]
    );
    // `unused-tls` is a TLS Secret too, but no Ingress names it.
    assert_eq!(m.secrets.len(), 1);
    let s = m.secret("kube-rec", "bookinfo-tls").unwrap();
    assert!(s.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(s.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!format!("{s:?}").contains("PRIVATE KEY"));
}

#[test]
fn an_invalid_label_is_one_problem_on_its_object_and_the_objects_other_labels_still_parse() {
    let m = build_model(&recorded());
    let problems = label_problems(&m);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(
        (
            p.object.kind.as_str(),
            p.object.namespace.as_str(),
            p.object.name.as_str()
        ),
        ("Service", "kube-rec", "ratings")
    );
    assert_eq!(p.error.label, "traffic.request.timeout");
    assert_eq!(p.error.value, "abc");
    assert_eq!(p.error.reason, Reason::NotADuration);
    assert!(p.message().contains("traffic.request.timeout"));
    let ratings = parse(
        ObjectKind::Service,
        &m.service("kube-rec", "ratings").unwrap().labels,
    );
    assert_eq!(ratings.settings.ports.len(), 1);
    assert_eq!(ratings.settings.traffic.request_timeout, None);
}

#[test]
fn the_model_does_not_depend_on_the_order_the_stores_return_objects() {
    let mut inputs = recorded();
    let m = build_model(&inputs);
    inputs.pods.reverse();
    inputs.services.reverse();
    inputs.replica_sets.reverse();
    inputs.deployments.reverse();
    assert_eq!(build_model(&inputs), m);
}

#[test]
fn a_pod_whose_replicaset_is_not_known_yet_is_owned_by_the_replicaset() {
    let mut inputs = recorded();
    inputs.replica_sets.clear();
    let m = build_model(&inputs);
    let owner = pod(&m, "reviews-v1").owner.clone().unwrap();
    assert_eq!(owner.kind, WorkloadKind::ReplicaSet);
    assert!(owner.name.starts_with("reviews-v1-"));
}

#[test]
fn a_replicaset_without_a_deployment_is_a_workload_of_its_own() {
    let mut inputs = recorded();
    let mut rs = (*inputs.replica_sets[0]).clone();
    rs.metadata.owner_references = None;
    let rs_name = rs.metadata.name.clone().unwrap();
    inputs.replica_sets[0] = Arc::new(rs);
    let m = build_model(&inputs);
    assert!(m
        .workloads
        .iter()
        .any(|w| w.kind == WorkloadKind::ReplicaSet && w.name == rs_name));
    let p = m.pods.iter().find(|p| p.name.starts_with(&rs_name)).unwrap();
    assert_eq!(p.owner.as_ref().unwrap().kind, WorkloadKind::ReplicaSet);
}

#[test]
fn terminating_pods_are_not_ready_and_finished_pods_are_left_out() {
    let mut inputs = recorded();
    let mut terminating = (*inputs.pods[0]).clone();
    terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let terminating_name = terminating.metadata.name.clone().unwrap();
    let mut finished = (*inputs.pods[1]).clone();
    finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let finished_name = finished.metadata.name.clone().unwrap();
    inputs.pods[0] = Arc::new(terminating);
    inputs.pods[1] = Arc::new(finished);
    let m = build_model(&inputs);
    assert!(!m.pod("kube-rec", &terminating_name).unwrap().ready);
    assert!(m.pod("kube-rec", &finished_name).is_none());
}

#[test]
fn a_referenced_secret_that_is_not_of_type_tls_is_not_in_the_model() {
    let mut inputs = recorded();
    let mut opaque: Secret = (*inputs.secrets[0]).clone();
    assert_eq!(opaque.metadata.name.as_deref(), Some("bookinfo-tls"));
    opaque.type_ = Some("Opaque".into());
    inputs.secrets = vec![Arc::new(opaque)];
    assert!(build_model(&inputs).secrets.is_empty());
}

#[test]
fn recorded_cluster_ips_are_in_the_service_cidr() {
    let m = build_model(&recorded());
    let reviews = m.service("kube-rec", "reviews").unwrap();
    assert!(reviews.cluster_ips[0].to_string().starts_with("10.96."));
    assert_ne!(reviews.cluster_ips[0], ip("10.96.0.1"));
}

/// 1000 Services x 10 pods (each pod through a ReplicaSet and a Deployment), cloned from the
/// recorded objects: the full rebuild each debounced change costs must stay small.
#[test]
fn building_a_model_of_ten_thousand_pods_takes_well_under_a_second() {
    let base = recorded();
    let mut inputs = Inputs::default();
    for s in 0..1000 {
        let app = format!("app{s}");
        let mut svc = (*base.services[2]).clone(); // reviews
        svc.metadata.name = Some(app.clone());
        svc.spec.as_mut().unwrap().selector = Some([("app".to_string(), app.clone())].into());
        inputs.services.push(Arc::new(svc));
        let mut deploy = (*base.deployments[0]).clone();
        deploy.metadata.name = Some(app.clone());
        inputs.deployments.push(Arc::new(deploy));
        let mut rs = (*base.replica_sets[0]).clone();
        rs.metadata.name = Some(format!("{app}-rs"));
        rs.metadata.owner_references.as_mut().unwrap()[0].name = app.clone();
        inputs.replica_sets.push(Arc::new(rs));
        for p in 0..10 {
            let mut pod = (*base.pods[2]).clone(); // reviews-v1
            pod.metadata.name = Some(format!("{app}-rs-{p}"));
            pod.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("app".into(), app.clone());
            pod.metadata.owner_references.as_mut().unwrap()[0].name = format!("{app}-rs");
            pod.status.as_mut().unwrap().pod_ip = Some(format!("10.{}.{}.{}", s / 250, s % 250, p + 1));
            inputs.pods.push(Arc::new(pod));
        }
    }
    let start = std::time::Instant::now();
    let m = build_model(&inputs);
    let build = start.elapsed();
    let start = std::time::Instant::now();
    assert_eq!(build_model(&inputs), m);
    let compare = start.elapsed();
    eprintln!("build_model 1000 services / 10000 pods: {build:?}; rebuild + compare: {compare:?}");
    assert_eq!(m.pods.len(), 10_000);
    assert!(m
        .pods
        .iter()
        .all(|p| p.owner.as_ref().unwrap().kind == WorkloadKind::Deployment));
    assert!(build < std::time::Duration::from_secs(2), "{build:?}");
}
