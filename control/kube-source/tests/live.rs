//! Against a real API server (runs only when `KUBECONFIG` is set, e.g. after
//! `. /run/traffic-e2e/env.sh`; see /work/shared/e2e/README.md). Each test uses its own
//! namespace, deleted on drop even when the test fails.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Event, Namespace, Pod, PodSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use traffic_kube_source::{
    EventMetrics, EventSink, EventsConfig, KubeEvents, KubeSource, SourceConfig, SourceMetrics,
};
use traffic_translate::model::MeshModel;

/// How long a watch event, an Event or a status write may take to show on a loaded machine
/// (the API server shares it with the test); the measured times are printed.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// `None` (test skipped, reason printed) without a cluster; panics without one under `CI=true`
/// only if `TRAFFIC_E2E_REQUIRED=true`, since CI normally has no cluster.
fn cluster() -> Option<()> {
    if std::env::var_os("KUBECONFIG").is_some() {
        return Some(());
    }
    if std::env::var("TRAFFIC_E2E_REQUIRED").as_deref() == Ok("true") {
        panic!("KUBECONFIG is not set but TRAFFIC_E2E_REQUIRED=true");
    }
    eprintln!("skipped: KUBECONFIG not set (source /run/traffic-e2e/env.sh after cluster-up.sh)");
    None
}

/// A fresh namespace, deleted (without waiting) on drop.
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{nanos:x}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime does the delete.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = Client::try_default().await?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("warning: could not delete test namespace {}", self.name);
        }
    }
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn web_service(ns: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(ns, "web", labels),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 9080,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn web_pod(ns: &str) -> Pod {
    Pod {
        metadata: meta(ns, "web-1", &[("app", "web"), ("traffic.endpoint.weight", "20")]),
        spec: Some(PodSpec {
            termination_grace_period_seconds: Some(1),
            containers: vec![Container {
                name: "app".into(),
                image: Some("traffic-e2e/busybox:1.37.0".into()),
                image_pull_policy: Some("Never".into()),
                command: Some(vec!["httpd".into(), "-f".into(), "-p".into(), "9080".into()]),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 9080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Wait until the published model satisfies `ok`; returns how long it took.
async fn wait_model(
    models: &mut watch::Receiver<Arc<MeshModel>>,
    timeout: Duration,
    ok: impl Fn(&MeshModel) -> bool,
) -> Duration {
    let start = Instant::now();
    let found = tokio::time::timeout(timeout, models.wait_for(|m| ok(m))).await;
    assert!(
        matches!(found, Ok(Ok(_))),
        "model condition not met within {timeout:?}"
    );
    start.elapsed()
}

async fn start(client: &Client, ns: &str) -> (KubeSource, KubeEvents) {
    let (events, _worker) = KubeEvents::spawn(
        client.clone(),
        EventsConfig {
            instance: "kube-source-live-test".into(),
            ..Default::default()
        },
        EventMetrics::default(),
    );
    let sink: Arc<dyn EventSink> = Arc::new(events.clone());
    let source = KubeSource::start(
        client.clone(),
        SourceConfig {
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        SourceMetrics::default(),
        Some(sink),
    )
    .await
    .unwrap();
    (source, events)
}

#[tokio::test]
async fn the_watcher_publishes_service_and_pod_changes_within_seconds() {
    let Some(()) = cluster() else { return };
    let client = Client::try_default().await.unwrap();
    let ns = TestNamespace::create(&client, "kube-live").await;
    let (source, _events) = start(&client, &ns.name).await;
    let mut models = source.subscribe();
    assert!(
        models.borrow().services.is_empty(),
        "a fresh namespace starts empty"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &web_service(&ns.name, &[("traffic.port.9080", "http")]),
        )
        .await
        .unwrap();
    let took = wait_model(&mut models, CLUSTER_WAIT, |m| {
        m.service(&ns.name, "web").is_some()
    })
    .await;
    eprintln!("service created -> model: {took:?}");
    let svc = models.borrow().service(&ns.name, "web").cloned().unwrap();
    assert_eq!(svc.cluster_ips.len(), 1);

    // A label change on the Service.
    let patch = serde_json::json!({"metadata": {"labels": {"traffic.lb.policy": "random"}}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let took = wait_model(&mut models, CLUSTER_WAIT, |m| {
        m.service(&ns.name, "web")
            .is_some_and(|s| s.labels.get("traffic.lb.policy").map(String::as_str) == Some("random"))
    })
    .await;
    eprintln!("service label patched -> model: {took:?}");

    // A pod: seen at once (no IP yet), then as an endpoint once running and ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &web_pod(&ns.name))
        .await
        .unwrap();
    let took = wait_model(&mut models, CLUSTER_WAIT, |m| m.pod(&ns.name, "web-1").is_some()).await;
    eprintln!("pod created -> model: {took:?}");
    let took = wait_model(&mut models, Duration::from_secs(60), |m| {
        m.pod(&ns.name, "web-1")
            .is_some_and(|p| p.ready && p.ip.is_some())
    })
    .await;
    eprintln!("pod created -> ready endpoint in model: {took:?}");
    let model = models.borrow().clone();
    let svc = model.service(&ns.name, "web").unwrap();
    let eps = model.endpoints(svc, &svc.ports[0]);
    assert_eq!(eps.len(), 1);
    let running = pods.get("web-1").await.unwrap();
    let pod_ip = running.status.unwrap().pod_ip.unwrap();
    assert_eq!(eps[0].ip.to_string(), pod_ip);
    assert_eq!(eps[0].port, 9080);
    assert_eq!(eps[0].pod.labels["traffic.endpoint.weight"], "20");

    // Deletion removes it again.
    pods.delete("web-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let took = wait_model(&mut models, Duration::from_secs(30), |m| {
        m.pod(&ns.name, "web-1").is_none()
    })
    .await;
    eprintln!("pod deleted -> gone from model: {took:?}");
}

#[tokio::test]
async fn an_invalid_label_becomes_one_warning_event_on_the_labelled_object() {
    let Some(()) = cluster() else { return };
    let client = Client::try_default().await.unwrap();
    let ns = TestNamespace::create(&client, "kube-events").await;
    let (source, _events) = start(&client, &ns.name).await;
    let mut models = source.subscribe();

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &web_service(
                &ns.name,
                &[("traffic.request.timeout", "abc"), ("traffic.port.9080", "http")],
            ),
        )
        .await
        .unwrap();
    wait_model(&mut models, CLUSTER_WAIT, |m| {
        m.service(&ns.name, "web").is_some()
    })
    .await;
    // More model changes re-report the same problem; the sink must not write it again.
    for i in 0..3 {
        let patch = serde_json::json!({"metadata": {"labels": {"round": i.to_string()}}});
        services
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let want = i.to_string();
        wait_model(&mut models, CLUSTER_WAIT, |m| {
            m.service(&ns.name, "web")
                .is_some_and(|s| s.labels.get("round") == Some(&want))
        })
        .await;
    }

    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let uid = services.get("web").await.unwrap().metadata.uid.unwrap();
    let start = Instant::now();
    let found = loop {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=web,reason=InvalidTrafficLabel"))
            .await
            .unwrap();
        if !list.items.is_empty() || start.elapsed() > CLUSTER_WAIT {
            break list.items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("events found after {:?}: {}", start.elapsed(), found.len());
    // Give a duplicate write (if the dedup were broken) time to land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found = events
        .list(&ListParams::default().fields("involvedObject.name=web,reason=InvalidTrafficLabel"))
        .await
        .unwrap()
        .items;
    assert_eq!(found.len(), 1, "{found:#?}");
    let e = &found[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.count, Some(1));
    assert_eq!(e.involved_object.kind.as_deref(), Some("Service"));
    assert_eq!(e.involved_object.api_version.as_deref(), Some("v1"));
    assert_eq!(e.involved_object.uid.as_deref(), Some(uid.as_str()));
    let message = e.message.as_deref().unwrap();
    assert!(
        message.contains("traffic.request.timeout") && message.contains("abc"),
        "{message}"
    );
    assert_eq!(
        e.source.as_ref().unwrap().component.as_deref(),
        Some("traffic-control")
    );
}

#[tokio::test]
async fn a_repeat_after_the_dedup_window_bumps_the_count_and_a_nack_lands_on_a_deployment() {
    let Some(()) = cluster() else { return };
    let client = Client::try_default().await.unwrap();
    let ns = TestNamespace::create(&client, "kube-nack").await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "reviews-v1", "namespace": ns.name, "labels": {"traffic.envoy.enabled": "true"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "reviews"}},
                 "template": {"metadata": {"labels": {"app": "reviews"}},
                              "spec": {"containers": [{"name": "app", "image": "traffic-e2e/busybox:1.37.0"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let (events, _worker) = KubeEvents::spawn(
        client.clone(),
        EventsConfig {
            dedup_window: Duration::from_millis(500),
            ..Default::default()
        },
        EventMetrics::default(),
    );
    let sink = traffic_kube_source::rejection_sink(events.clone());
    let origin = traffic_translate::snapshot::ObjectRef {
        kind: "Deployment".into(),
        namespace: ns.name.clone(),
        name: "reviews-v1".into(),
    };
    let type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    let rejected = [std::sync::Arc::new(traffic_translate::snapshot::Resource {
        name: "9080|default|reviews".into(),
        body: Default::default(),
        version: "1".into(),
        origin: Some(origin.clone()),
    })];
    // Many proxies reject the same push at once: one Event.
    for node in ["a.default", "b.default", "c.default"] {
        sink.rejected(node, type_url, &rejected, "invalid cluster");
    }
    let api: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let list = |api: Api<Event>| async move {
        api.list(&ListParams::default().fields("involvedObject.name=reviews-v1,reason=ProxyRejectedConfig"))
            .await
            .unwrap()
            .items
    };
    let deadline = Instant::now() + CLUSTER_WAIT;
    while list(api.clone()).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = list(api.clone()).await;
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].involved_object.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(first[0].count, Some(1));

    // After the window, the same rejection bumps the existing Event.
    tokio::time::sleep(Duration::from_millis(700)).await;
    sink.rejected("a.default", type_url, &rejected, "invalid cluster");
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let now = list(api.clone()).await;
        assert_eq!(now.len(), 1, "{now:#?}");
        if now[0].count == Some(2) {
            assert!(now[0].last_timestamp.as_ref().unwrap().0 >= first[0].last_timestamp.as_ref().unwrap().0);
            break;
        }
        assert!(Instant::now() < deadline, "count never reached 2: {now:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cluster_wide_source_sees_the_kube_dns_service() {
    let Some(()) = cluster() else { return };
    let client = Client::try_default().await.unwrap();
    let started = Instant::now();
    let source = KubeSource::start(client, SourceConfig::default(), SourceMetrics::default(), None)
        .await
        .unwrap();
    eprintln!("cluster-wide initial sync: {:?}", started.elapsed());
    let model = source.subscribe().borrow().clone();
    assert!(model.service("kube-system", "kube-dns").is_some());
    assert!(model.service("default", "kubernetes").is_some());
}

#[tokio::test]
async fn the_rbac_rules_are_enough_for_the_watches_and_the_events() {
    let Some(()) = cluster() else { return };
    let admin = Client::try_default().await.unwrap();
    let ns = TestNamespace::create(&admin, "kube-rbac").await;
    let role_name = format!("traffic-control-test-{}", ns.name);

    // The ClusterRole from rbac.yaml, under a per-test name, bound to a fresh ServiceAccount.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.yaml")).unwrap();
    let mut role: k8s_openapi::api::rbac::v1::ClusterRole = serde_yaml::from_str(&text).unwrap();
    role.metadata.name = Some(role_name.clone());
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    /// Deletes the ClusterRole and ClusterRoleBinding named `.0` on drop (with its own client:
    /// the test's client is bound to the test's runtime, which is blocked while this runs).
    struct DeleteRole(String);
    impl Drop for DeleteRole {
        fn drop(&mut self) {
            let name = self.0.clone();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let client = Client::try_default().await.unwrap();
                        let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
                        let _ = roles.delete(&name, &DeleteParams::default()).await;
                        let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client);
                        let _ = bindings.delete(&name, &DeleteParams::default()).await;
                    })
            })
            .join();
        }
    }
    let _cleanup = DeleteRole(role_name.clone());
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "traffic-control", "namespace": ns.name}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "traffic-control", "namespace": ns.name}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The same server, as that ServiceAccount.
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:traffic-control", ns.name));
    let client = Client::try_from(config).unwrap();
    // Without the binding the SA can list nothing; with it, a cluster-wide start succeeds.
    let source = KubeSource::start(
        client.clone(),
        SourceConfig {
            sync_timeout: Duration::from_secs(15),
            ..Default::default()
        },
        SourceMetrics::default(),
        // Not reporting labels cluster-wide: that would write Events into other tests' namespaces.
        None,
    )
    .await
    .unwrap();
    let mut models = source.subscribe();
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &web_service(&ns.name, &[("traffic.port.9080", "http")]),
        )
        .await
        .unwrap();
    wait_model(&mut models, CLUSTER_WAIT, |m| {
        m.service(&ns.name, "web").is_some()
    })
    .await;
    // An Event written as the ServiceAccount.
    let (sink, _worker) = KubeEvents::spawn(client.clone(), EventsConfig::default(), EventMetrics::default());
    let web = traffic_translate::snapshot::ObjectRef {
        kind: "Service".into(),
        namespace: ns.name.clone(),
        name: "web".into(),
    };
    sink.report(
        &web,
        traffic_kube_source::EventType::Warning,
        "InvalidTrafficLabel",
        "written as the ServiceAccount",
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let found = events
            .list(&ListParams::default().fields("involvedObject.name=web,reason=InvalidTrafficLabel"))
            .await
            .unwrap()
            .items;
        if let Some(e) = found.first() {
            // The uid lookup (get) was allowed too.
            assert!(e.involved_object.uid.is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Event written as the ServiceAccount"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
