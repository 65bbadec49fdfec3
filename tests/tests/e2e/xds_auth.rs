//! Issue 10 on the real cluster: the agent's sidecars authenticate to the control plane with
//! their pod's ServiceAccount token (TokenRequest, renewed by the agent, read by Envoy from a
//! file it re-reads), over TLS. `cargo xtask e2e` runs the control plane with `--xds-auth
//! --xds-tls` and the agent renewing every token every 30 s.
//!
//! Proves: a real sidecar keeps its configuration across a token renewal and a control-plane
//! restart (the restarted control plane has no cached review: it reviews the renewed token); an
//! Envoy in pod A's sidecar, with pod A's token, asking as pod B or as the gateway gets nothing
//! (and the control plane counts the refusals), while the same Envoy asking as pod A is served;
//! no sidecar's config_dump holds a Secret, even with a TLS Ingress in the namespace.
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use traffic_tests::e2e::{wait_until, E2e, TestNamespace};
use traffic_tests::e2e_faults::prometheus_value;
use traffic_tests::e2e_parse::stat;

use super::{enabled_client, wait_membership};

/// Admin port of the probing Envoy started inside a sidecar (beside the sidecar's 15000).
const PROBE_ADMIN: u16 = 15999;

fn token_updates(e2e: &E2e, sidecar: &str) -> u64 {
    let s = e2e
        .envoy_admin(sidecar, "/stats?filter=sds.xds-token.update_success")
        .unwrap_or_default();
    stat(&s, "sds.xds-token.update_success").unwrap_or(0)
}

fn connected(e2e: &E2e, sidecar: &str) -> bool {
    e2e.envoy_admin(sidecar, "/stats?filter=control_plane.connected_state")
        .ok()
        .and_then(|s| stat(&s, "control_plane.connected_state"))
        == Some(1)
}

/// The sidecar's own bootstrap (from its config_dump) with another node id and admin port.
fn probe_bootstrap(e2e: &E2e, sidecar: &str, node_id: &str) -> String {
    let dump: Value = serde_json::from_str(&e2e.envoy_admin(sidecar, "/config_dump").expect("config_dump"))
        .expect("config_dump json");
    let mut b = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("BootstrapConfigDump"))
            })
        })
        .map(|c| c["bootstrap"].clone())
        .expect("bootstrap in config_dump");
    b["node"]["id"] = Value::from(node_id);
    b["admin"]["address"]["socket_address"]["port_value"] = Value::from(PROBE_ADMIN);
    // config_dump shows the inline CA; the token file path is the sidecar's own mount.
    b.to_string()
}

/// Runs a second Envoy inside the sidecar (same pod IP, same token file) as `node_id` for a few
/// seconds; returns (CDS updates, LDS updates) it got.
fn probe(e2e: &E2e, sidecar: &str, node_id: &str) -> (u64, u64) {
    let bootstrap = probe_bootstrap(e2e, sidecar, node_id);
    let script = format!(
        "envoy --config-yaml \"$1\" --disable-hot-restart --base-id 7 -l error >/dev/null 2>&1 & P=$!; \
         sleep 8; wget -qO- -T 3 'http://127.0.0.1:{PROBE_ADMIN}/stats?filter=\\.update_success'; kill $P; wait $P"
    );
    let out = e2e
        .runtime
        .exec_sidecar(sidecar, &["sh", "-c", &script, "sh", &bootstrap])
        .unwrap_or_else(|e| panic!("probe envoy as {node_id}: {e:#}"));
    (
        stat(&out, "cluster_manager.cds.update_success").unwrap_or(0),
        stat(&out, "listener_manager.lds.update_success").unwrap_or(0),
    )
}

fn control_metric(e2e: &E2e, name: &str) -> f64 {
    let Some(addr) = e2e.control.as_ref().and_then(|c| c.arg("--http-addr")) else {
        return 0.0;
    };
    traffic_tests::e2e::http_get(addr, "/metrics")
        .ok()
        .and_then(|m| prometheus_value(&m, name))
        .unwrap_or(0.0)
}

/// A kubernetes.io/tls Secret and an Ingress using it, so that the control plane has a
/// certificate and key to hand out (to the gateway only).
fn tls_ingress(ns: &TestNamespace) {
    let dir = std::env::temp_dir().join(format!("e2e-xds-auth-{}", ns.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=shop.example", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl made no certificate");
    ns.tls_secret("shop-tls", &crt, &key).expect("tls secret");
    let _ = std::fs::remove_dir_all(&dir);
    let ingress = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: shop, namespace: {ns}}}\n\
         spec:\n  tls: [{{hosts: [shop.example], secretName: shop-tls}}]\n  rules:\n  - host: shop.example\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {{service: {{name: reviews, port: {{number: 9080}}}}}}\n",
        ns = ns.name
    );
    let file = std::env::temp_dir().join(format!("e2e-ingress-{}.yaml", ns.name));
    std::fs::write(&file, ingress).expect("ingress file");
    ns.e2e
        .kubectl(&["apply", "-f", &file.to_string_lossy()])
        .expect("ingress");
    let _ = std::fs::remove_file(&file);
}

pub fn sidecar_authenticates_renews_and_survives_a_control_plane_restart(e2e: &E2e) {
    let Some(control) = e2e.control.clone() else {
        eprintln!("skipping: the control plane is not run by cargo xtask e2e");
        return;
    };
    if control.arg("--xds-auth") != Some("true") {
        eprintln!("skipping: the suite runs without xDS authentication (--insecure-xds)");
        return;
    }
    let (ns, client, _ip) = enabled_client(e2e, "xds-auth");
    let reviews = ns.pod("app=reviews,version=v1").expect("a reviews pod");

    // A renewal: the agent replaces the token file, the sidecar's Envoy re-reads it.
    let first = token_updates(e2e, &client.sidecar);
    assert!(
        first >= 1,
        "the sidecar read its token (sds.xds-token.update_success={first})"
    );
    wait_until(
        "the sidecar to read a renewed token",
        Duration::from_secs(75),
        Duration::from_secs(1),
        || Ok((token_updates(e2e, &client.sidecar) > first).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        connected(e2e, &client.sidecar),
        "still connected after the renewal"
    );

    // Pod A's token, from pod A's IP: served as pod A, refused as pod B and as the gateway.
    let own = format!("{}.{}", client.pod.name, ns.name);
    let (cds, lds) = probe(e2e, &client.sidecar, &own);
    assert!(
        cds >= 1 && lds >= 1,
        "a second Envoy with the pod's own identity is served: cds={cds} lds={lds}"
    );
    let refusals = |e2e: &E2e| {
        control_metric(e2e, "xds_auth_refusals_total{reason=\"node_mismatch\"}")
            + control_metric(e2e, "xds_auth_refusals_total{reason=\"not_gateway\"}")
    };
    let refused_before = refusals(e2e);
    let other = format!("{}.{}", reviews.name, ns.name);
    assert_eq!(
        probe(e2e, &client.sidecar, &other),
        (0, 0),
        "pod A's token asking as {other} gets nothing"
    );
    assert_eq!(
        probe(e2e, &client.sidecar, "traffic-ingress"),
        (0, 0),
        "a sidecar's token asking as the gateway gets nothing"
    );
    let refused = refusals(e2e) - refused_before;
    assert!(
        refused >= 2.0,
        "the control plane counted both refusals (node_mismatch + not_gateway: +{refused})"
    );

    // No Secret ever reaches a sidecar, even with a TLS Ingress in the namespace.
    tls_ingress(&ns);
    std::thread::sleep(Duration::from_secs(3));
    let dump = e2e
        .envoy_admin(&client.sidecar, "/config_dump?include_eds")
        .expect("config_dump");
    // The only secret a sidecar holds is its own token, read from its file (not over ADS).
    let parsed: Value = serde_json::from_str(&dump).expect("config_dump json");
    let secrets: Vec<String> = parsed["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("SecretsConfigDump"))
        })
        .flat_map(|c| {
            [
                "static_secrets",
                "dynamic_active_secrets",
                "dynamic_warming_secrets",
            ]
            .into_iter()
            .flat_map(move |k| c[k].as_array().cloned().unwrap_or_default())
        })
        .map(|s| s["name"].as_str().unwrap_or("?").to_string())
        .collect();
    assert!(
        secrets.iter().all(|n| n == "xds-token"),
        "a sidecar holds secrets besides its token: {secrets:?}"
    );
    assert!(
        !dump.contains("private_key") && !dump.contains("shop-tls") && !dump.contains("BEGIN PRIVATE KEY"),
        "a sidecar's config_dump holds a TLS key"
    );

    // The control plane restarts (no cached review): the sidecar reconnects with its renewed
    // token and keeps receiving configuration.
    control.kill9().expect("kill -9 the control plane");
    wait_until(
        "the sidecar to notice the control plane is gone",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || Ok((!connected(e2e, &client.sidecar)).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    control.restart().expect("restart the control plane");
    wait_until(
        "the sidecar reconnected to the restarted control plane",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok(connected(e2e, &client.sidecar).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for (d, w) in [("reviews-v1", 100), ("reviews-v2", 10), ("reviews-v3", 0)] {
        ns.label(
            &format!("deployment/{d}"),
            &[&format!("traffic.endpoint.weight={w}")],
        )
        .expect("label");
    }
    wait_membership(&ns, &client.sidecar, 2);
    assert!(
        control_metric(e2e, "xds_auth_admissions_total") >= 1.0,
        "the restarted control plane admitted the sidecar"
    );
}
