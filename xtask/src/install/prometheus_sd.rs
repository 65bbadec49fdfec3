//! Kubernetes pod discovery for Debian's Prometheus: the rendered configuration's
//! `kubernetes_sd_configs` become `http_sd_configs` served by the xtask.
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::output_within;

/// Debian builds Prometheus without Kubernetes service discovery ("removed, due to the insane
/// amount of dependencies", NEWS.Debian 1.5.0), and no other Prometheus build is reachable here.
/// The chart's scrape jobs are kept as rendered (their relabel rules, the keep rule on the
/// sidecar annotation, the stats port rewrite) and only their `kubernetes_sd_configs` (role pod)
/// become `http_sd_configs` served by the xtask ([`serve_pod_sd`]), which lists pods with kubectl and
/// labels each target with the `__meta_kubernetes_pod_*` labels Kubernetes SD would set.
fn emulate_kubernetes_sd(config: &str, sd_url: &str) -> anyhow::Result<String> {
    let lines: Vec<&str> = config.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut replaced = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() != "kubernetes_sd_configs:" {
            out.push(line.to_string());
            i += 1;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = Vec::new();
        i += 1;
        while i < lines.len() && (lines[i].len() - lines[i].trim_start().len()) > indent {
            block.push(lines[i].trim());
            i += 1;
        }
        anyhow::ensure!(
            block.first() == Some(&"- role: pod"),
            "only kubernetes_sd_configs with one role: pod entry are emulated, got {block:?}"
        );
        let mut url = sd_url.to_string();
        match block.get(1..).unwrap_or_default() {
            [] => {}
            ["namespaces:", names] => {
                let list = names
                    .strip_prefix("names:")
                    .map(str::trim)
                    .and_then(|l| l.strip_prefix('['))
                    .and_then(|l| l.strip_suffix(']'))
                    .with_context(|| format!("namespaces {names:?}"))?;
                let ns: Vec<&str> = list.split(',').map(|n| n.trim().trim_matches('"')).collect();
                url = format!("{url}?namespaces={}", ns.join(","));
            }
            other => bail!("unexpected kubernetes_sd_configs fields {other:?}"),
        }
        let pad = " ".repeat(indent);
        out.push(format!("{pad}http_sd_configs:"));
        out.push(format!("{pad}  - url: {url}"));
        out.push(format!("{pad}    refresh_interval: 5s"));
        replaced += 1;
    }
    anyhow::ensure!(
        replaced > 0,
        "no kubernetes_sd_configs in the Prometheus configuration"
    );
    Ok(out.join("\n") + "\n")
}

/// Prometheus' label name for a Kubernetes label or annotation key.
fn sanitize_label(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Kubernetes SD `role: pod` targets of a pod list, as an HTTP SD answer: one target per declared
/// container port (`<ip>:<port>`), one per container without ports (`<ip>`), with the
/// `__meta_kubernetes_*` labels of that role. Pods without an IP are left out.
fn pod_targets(pods: &Value, namespaces: Option<&[&str]>) -> Value {
    let mut groups = Vec::new();
    for pod in pods.get("items").and_then(Value::as_array).into_iter().flatten() {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let ns = s("/metadata/namespace");
        if namespaces.is_some_and(|list| !list.contains(&ns.as_str())) {
            continue;
        }
        let ip = s("/status/podIP");
        if ip.is_empty() {
            continue;
        }
        let mut base = serde_json::Map::new();
        base.insert("__meta_kubernetes_namespace".into(), json!(ns));
        base.insert("__meta_kubernetes_pod_name".into(), json!(s("/metadata/name")));
        base.insert("__meta_kubernetes_pod_ip".into(), json!(ip));
        base.insert("__meta_kubernetes_pod_uid".into(), json!(s("/metadata/uid")));
        base.insert(
            "__meta_kubernetes_pod_node_name".into(),
            json!(s("/spec/nodeName")),
        );
        base.insert("__meta_kubernetes_pod_phase".into(), json!(s("/status/phase")));
        for (what, key) in [
            ("label", "/metadata/labels"),
            ("annotation", "/metadata/annotations"),
        ] {
            for (k, v) in pod.pointer(key).and_then(Value::as_object).into_iter().flatten() {
                let name = sanitize_label(k);
                base.insert(
                    format!("__meta_kubernetes_pod_{what}_{name}"),
                    json!(v.as_str().unwrap_or("")),
                );
                base.insert(
                    format!("__meta_kubernetes_pod_{what}present_{name}"),
                    json!("true"),
                );
            }
        }
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
            let ports = c
                .get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut push = |target: String, port: Option<&Value>| {
                let mut labels = base.clone();
                labels.insert("__meta_kubernetes_pod_container_name".into(), json!(cname));
                if let Some(p) = port {
                    let f = |k: &str| {
                        p.get(k)
                            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                    };
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_name".into(),
                        json!(f("name").unwrap_or_default()),
                    );
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_number".into(),
                        json!(f("containerPort").unwrap_or_default()),
                    );
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_protocol".into(),
                        json!(f("protocol").unwrap_or_else(|| "TCP".into())),
                    );
                }
                groups.push(json!({"targets": [target], "labels": labels}));
            };
            if ports.is_empty() {
                push(ip.clone(), None);
            }
            for p in &ports {
                let port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                push(format!("{ip}:{port}"), Some(p));
            }
        }
    }
    Value::Array(groups)
}

/// Serves [`pod_targets`] over HTTP on `addr` for the life of the process (`GET
/// /pods[?namespaces=a,b]`), listing pods with kubectl at each request.
pub(super) fn serve_pod_sd(addr: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    // `cargo xtask test` runs the install once per runtime in one process: the server of the first
    // run is still there (it reads the cluster through kubectl, whichever cluster is up).
    static SERVING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut serving = SERVING.lock().unwrap_or_else(|p| p.into_inner());
    if serving.iter().any(|a| a == addr) {
        return Ok(());
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    serving.push(addr.to_string());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request_line = String::new();
            let mut reader = BufReader::new(&conn);
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let namespaces: Option<Vec<String>> = path
                .split_once("?namespaces=")
                .map(|(_, l)| l.split(',').map(str::to_string).collect());
            let listed = output_within(
                Command::new("kubectl").args(["get", "pods", "-A", "-o", "json"]),
                Duration::from_secs(20),
            )
            .and_then(|text| Ok(serde_json::from_str::<Value>(&text)?));
            let (status, body) = match listed {
                Ok(pods) => {
                    let ns: Option<Vec<&str>> = namespaces
                        .as_ref()
                        .map(|v| v.iter().map(String::as_str).collect());
                    ("200 OK", pod_targets(&pods, ns.as_deref()).to_string())
                }
                Err(e) => ("500 Internal Server Error", format!("{e:#}")),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

/// Rewrites the rendered Prometheus ConfigMap for [`emulate_kubernetes_sd`].
pub(super) fn patch_prometheus_config(objs: &mut [Value], sd_url: &str) -> anyhow::Result<()> {
    let cm = objs
        .iter_mut()
        .find(|o| {
            o.get("kind").and_then(Value::as_str) == Some("ConfigMap")
                && o.pointer("/data/prometheus.yml").is_some()
        })
        .context("no Prometheus ConfigMap rendered")?;
    let text = cm
        .pointer("/data/prometheus.yml")
        .and_then(Value::as_str)
        .context("prometheus.yml is not a string")?;
    let patched = emulate_kubernetes_sd(text, sd_url)?;
    cm["data"]["prometheus.yml"] = json!(patched);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "scrape_configs:
  - job_name: envoy
    metrics_path: /stats/prometheus
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
  - job_name: traffic-manager
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names: [\"traffic-install\"]
    relabel_configs: []
";

    #[test]
    fn kubernetes_pod_discovery_becomes_http_discovery_with_the_namespace_filter() {
        let out = emulate_kubernetes_sd(RENDERED, "http://10.0.0.1:1/pods").expect("emulated");
        assert!(!out.contains("kubernetes_sd_configs"), "{out}");
        assert!(out.contains("    http_sd_configs:\n      - url: http://10.0.0.1:1/pods\n        refresh_interval: 5s\n    relabel_configs:\n      - source_labels"), "{out}");
        assert!(
            out.contains("url: http://10.0.0.1:1/pods?namespaces=traffic-install\n"),
            "{out}"
        );
        assert!(out.contains("    relabel_configs: []\n"), "{out}");
    }

    #[test]
    fn other_kubernetes_discovery_roles_are_refused() {
        let cfg = "scrape_configs:\n  - job_name: x\n    kubernetes_sd_configs:\n      - role: endpoints\n";
        assert!(emulate_kubernetes_sd(cfg, "http://x/pods").is_err());
        assert!(emulate_kubernetes_sd("scrape_configs: []\n", "http://x/pods").is_err());
    }

    #[test]
    fn pod_targets_carry_the_kubernetes_pod_meta_labels_per_container_port() {
        let pods = json!({"items": [
            {"metadata": {"namespace": "a", "name": "p", "uid": "u",
                          "labels": {"app.kubernetes.io/component": "control"},
                          "annotations": {"traffic.envoy.proxy": "abc"}},
             "spec": {"nodeName": "n", "containers": [
                 {"name": "c", "ports": [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]},
                 {"name": "d"}]},
             "status": {"podIP": "172.17.0.9", "phase": "Running"}},
            {"metadata": {"namespace": "b", "name": "pending"}, "spec": {"containers": [{"name": "c"}]}, "status": {}},
        ]});
        let t = pod_targets(&pods, None);
        let groups = t.as_array().expect("array");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["targets"][0], "172.17.0.9:9090");
        let l = &groups[0]["labels"];
        assert_eq!(l["__meta_kubernetes_pod_annotation_traffic_envoy_proxy"], "abc");
        assert_eq!(
            l["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "control"
        );
        assert_eq!(l["__meta_kubernetes_pod_container_port_name"], "http");
        assert_eq!(l["__meta_kubernetes_pod_container_port_number"], "9090");
        assert_eq!(l["__meta_kubernetes_pod_phase"], "Running");
        assert_eq!(l["__meta_kubernetes_namespace"], "a");
        assert_eq!(groups[1]["targets"][0], "172.17.0.9");
        assert!(pod_targets(&pods, Some(&["b"]))
            .as_array()
            .expect("array")
            .is_empty());
    }
}
