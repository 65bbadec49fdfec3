//! Real Envoy (`envoy --mode validate`) accepts every node view we generate, folded into a static
//! bootstrap (RDS inlined, EDS clusters made static, SDS secrets static): the same messages the
//! xDS server sends, checked by Envoy's own config loading.
//!
//! Needs an Envoy binary: `ENVOY_BIN=$(../shared/e2e/envoy-bin.sh)` or `envoy` on PATH. Without
//! one the test prints why and passes, except under `CI=true` where it fails.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};
use common::*;
use prost::Message;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{
    translate, Collector, Options, OutboundPolicy, TlsDelivery, INGRESS_NODE_ID,
};

fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

fn envoy_or_skip() -> Option<PathBuf> {
    match envoy_bin() {
        Some(p) => Some(p),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but no Envoy: set ENVOY_BIN (../shared/e2e/envoy-bin.sh prints it)")
        }
        None => {
            eprintln!("skipping: no Envoy binary (set ENVOY_BIN or put envoy on PATH)");
            None
        }
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn validate(
    envoy: &PathBuf,
    node: &str,
    res: &traffic_translate::snapshot::NodeResources,
) -> anyhow::Result<()> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = TempDir(std::env::temp_dir().join(format!(
        "translate-envoy-{}-{seq}-{}",
        std::process::id(),
        node.replace(['/', '.'], "_")
    )));
    std::fs::create_dir_all(&dir.0)?;
    let bootstrap = static_bootstrap(node, res, 0).context("fold into bootstrap")?;
    let path = dir.0.join("bootstrap.pb");
    std::fs::write(&path, bootstrap.encode_to_vec())?;
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "--base-id-path"])
        .arg(dir.0.join("base-id"))
        .arg("-c")
        .arg(&path)
        .output()
        .context("run envoy")?;
    if !out.status.success() {
        bail!(
            "envoy rejected node {node}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Adds `pairs` to the labels of the first item `which` picks (copied on write).
fn label<T: Clone>(
    items: &mut [Arc<T>],
    which: impl Fn(&T) -> bool,
    labels: impl Fn(&mut T) -> &mut std::collections::BTreeMap<String, String>,
    pairs: &[(&str, &str)],
) {
    let item = items.iter_mut().find(|i| which(i)).map(Arc::make_mut).unwrap();
    for (k, v) in pairs {
        labels(item).insert(k.to_string(), v.to_string());
    }
}

/// A model that sets every label somewhere, plus an Ingress with and without host.
fn everything() -> MeshModel {
    let mut m = bookinfo();
    label(
        &mut m.services,
        |s| s.name == "reviews",
        |s| &mut s.labels,
        &[
            ("traffic.hash.cookie.name", "mycookie"),
            ("traffic.hash.cookie.ttl", "3600"),
            ("traffic.connection.timeout", "2s"),
            ("traffic.request.timeout", "5000"),
            ("traffic.retries.max", "3"),
            ("traffic.retries.5xx", "2"),
            ("traffic.retries.connect-failure", "1"),
            ("traffic.retries.gateway-error", "1"),
            ("traffic.connection.max", "100"),
            ("traffic.request.max-pending", "10"),
            ("traffic.request.max", "1000"),
            ("traffic.tracing.enabled", "true"),
            ("traffic.tracing.sampling", "50"),
        ],
    );
    label(
        &mut m.services,
        |s| s.name == "ratings",
        |s| &mut s.labels,
        &[
            ("traffic.fault.delay.time", "3000"),
            ("traffic.fault.delay.percentage", "12.5"),
            ("traffic.fault.abort.status", "505"),
            ("traffic.fault.abort.percentage", "0.0001"),
            ("traffic.rate.limit", "64"),
            ("traffic.hash.header.name", "x-user"),
            ("traffic.lb.policy", "maglev"),
        ],
    );
    label(
        &mut m.services,
        |s| s.name == "details",
        |s| &mut s.labels,
        &[
            ("traffic.port.9080", "tcp"),
            ("traffic.lb.policy", "least_request"),
        ],
    );
    label(
        &mut m.pods,
        |p| p.name.starts_with("productpage"),
        |p| &mut p.labels,
        &[("traffic.request.timeout", "1s"), ("traffic.port.9080", "http")],
    );
    label(
        &mut m.pods,
        |p| p.name.starts_with("reviews-v1"),
        |p| &mut p.labels,
        &[("traffic.port.9080", "direct")],
    );
    m.ingresses.push(
        serde_yaml::from_str(
            "{name: catchall, defaultBackend: {service: productpage, port: 9080}, \
             rules: [{paths: [{path: /reviews/, backend: {service: reviews, port: 9080}}]}], \
             tls: [{secretName: bookinfo-tls}]}",
        )
        .unwrap(),
    );
    m
}

fn check_all(envoy: &PathBuf, model: &MeshModel, opts: &Options) {
    let t = translate(model, opts);
    t.snapshot.validate().unwrap();
    let mut nodes = vec![INGRESS_NODE_ID.to_string(), "unknown-pod.default".to_string()];
    nodes.extend(t.snapshot.overridden_nodes().map(str::to_string));
    for node in nodes {
        let res = t.snapshot.for_node(&node);
        if let Err(e) = validate(envoy, &node, &res) {
            panic!("{e:#}");
        }
    }
}

#[test]
fn real_envoy_accepts_the_bookinfo_config() {
    let Some(envoy) = envoy_or_skip() else { return };
    check_all(&envoy, &bookinfo(), &Options::default());
}

#[test]
fn real_envoy_accepts_a_mesh_where_no_service_has_a_protocol_yet() {
    let Some(envoy) = envoy_or_skip() else { return };
    let m = MeshModel::from_yaml_str(
        "services: [{name: web, clusterIPs: [10.96.0.9], ports: [{port: 80}], selector: {app: web}}]",
    )
    .unwrap();
    check_all(&envoy, &m, &Options::default());
    check_all(&envoy, &MeshModel::default(), &Options::default());
}

#[test]
fn real_envoy_accepts_every_label_passthrough_zipkin_and_sds() {
    let Some(envoy) = envoy_or_skip() else { return };
    let opts = Options {
        outbound_policy: OutboundPolicy::Passthrough,
        zipkin: Some(
            "zipkin.istio-system.svc.cluster.local:9411"
                .parse::<Collector>()
                .unwrap(),
        ),
        ingress_tls: TlsDelivery::Sds,
        local_endpoint_via_loopback: true,
        ..Options::default()
    };
    let t = translate(&everything(), &opts);
    assert!(t.label_errors.is_empty(), "{:?}", t.label_errors);
    assert!(t.snapshot.overridden_nodes().count() >= 1);
    check_all(&envoy, &everything(), &opts);
    check_all(&envoy, &everything(), &Options::default());
}

#[test]
fn envoy_validate_does_reject_a_broken_config_so_these_tests_mean_something() {
    let Some(envoy) = envoy_or_skip() else { return };
    let t = translate(&bookinfo(), &Options::default());
    let res = t.snapshot.for_node("p.default");
    let mut b = static_bootstrap("p.default", &res, 0).unwrap();
    let statics = b.static_resources.as_mut().unwrap();
    let outbound = statics
        .listeners
        .iter_mut()
        .find(|l| l.name == "outbound")
        .unwrap();
    let mut dup = outbound.filter_chains[0].clone();
    dup.name = "duplicate".into();
    outbound.filter_chains.push(dup);
    let dir = TempDir(std::env::temp_dir().join(format!("translate-envoy-broken-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("bootstrap.pb");
    std::fs::write(&path, b.encode_to_vec()).unwrap();
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has the same matching rules"), "{stderr}");
}
