//! The chart's values for this cluster and its rendering with the Helm SDK (pure helpers over
//! the rendered objects included).
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::{json, Value};
use traffic_tests::node_runtime::RuntimeKind;

use super::images::Images;
use super::{env, RELEASE};
use crate::{cmd, setup};

/// Mount propagation for bpffs the chart README asks for: Bidirectional on a shared host mount,
/// None on a private one. `mountinfo` is `/proc/self/mountinfo`.
pub(super) fn bpffs_propagation(mountinfo: &str, bpffs: &str) -> &'static str {
    let shared = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // id parent major:minor root mountpoint options [optional fields...] - fstype ...
        f.len() > 6
            && f[4] == bpffs
            && f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
    });
    if shared {
        "Bidirectional"
    } else {
        "None"
    }
}

fn image_value((repository, tag): &(String, String)) -> Value {
    json!({"repository": repository, "tag": tag})
}

/// `agent.runtime` and `agent.hostPaths` of the node's runtime.
fn runtime_values(runtime: RuntimeKind) -> anyhow::Result<(Value, Value)> {
    Ok(match runtime {
        RuntimeKind::Docker => (
            json!("docker"),
            json!({
                "cgroup2": env("TRAFFIC_E2E_CGROUP2_MOUNT")?,
                "dockerSocket": env("TRAFFIC_E2E_DOCKER_SOCK")?,
            }),
        ),
        RuntimeKind::Containerd => (
            json!("containerd"),
            json!({
                "cgroup2": env("TRAFFIC_E2E_CGROUP2_MOUNT")?,
                "containerdSocket": env("TRAFFIC_E2E_CONTAINERD_SOCK")?,
                "criRoot": format!("{}/containerd/io.containerd.grpc.v1.cri", env("TRAFFIC_E2E_CACHE")?),
            }),
        ),
    })
}

pub(super) fn values(
    images: &Images,
    propagation: &str,
    mode: &str,
    runtime: RuntimeKind,
) -> anyhow::Result<Value> {
    let (runtime, host_paths) = runtime_values(runtime)?;
    Ok(json!({
        "imagePullPolicy": "Never",
        "agent": {
            "image": image_value(&images.agent),
            "redirectMode": mode,
            "bpffsMountPropagation": propagation,
            "runtime": runtime,
            "hostPaths": host_paths,
            "uninstall": {"timeoutSeconds": 120},
        },
        "control": {"image": image_value(&images.control)},
        // The shortest lifetime the API allows, so that the gateway's token renews within a pass.
        "xds": {"gatewayTokenSeconds": traffic_tests::install::GATEWAY_TOKEN_SECONDS},
        "envoy": {"image": image_value(&images.envoy)},
        "monitor": {
            "enabled": true,
            "prometheus": {"image": image_value(&images.prometheus), "scrapeInterval": "5s"},
            "zipkin": {"image": image_value(&images.zipkin)},
        },
    }))
}

/// Renders the chart with the Helm SDK; prints `{"main": [...], "hooks": [...]}` in Helm's
/// install order (hooks by weight).
const RENDER_PY: &str = r#"
import json, sys
import helm_python as helm
import yaml
chart_dir, values, release, namespace = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
         "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
         "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
         "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
         "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
         "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
         "IngressClass", "Ingress", "APIService"]
rank = lambda o: ORDER.index(o["kind"]) if o["kind"] in ORDER else len(ORDER)
with helm.Chart.load(chart_dir) as chart:
    chart.validate_schema(values)
    manifests = chart.render(values=values, name=release, namespace=namespace, is_install=True)
main, hooks = [], []
for template, text in sorted(manifests.items()):
    if template.endswith("NOTES.txt") or not text.strip():
        continue
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        ann = (doc.get("metadata") or {}).get("annotations") or {}
        if "helm.sh/hook" in ann:
            hooks.append((int(ann.get("helm.sh/hook-weight", "0")), rank(doc), doc))
        else:
            main.append((rank(doc), doc))
main.sort(key=lambda x: x[0])
hooks.sort(key=lambda x: (x[0], x[1]))
json.dump({"main": [d for _, d in main], "hooks": [d for _, _, d in hooks]}, sys.stdout)
"#;

pub(super) struct Rendered {
    pub(super) main: Vec<Value>,
    pub(super) hooks: Vec<Value>,
}

/// Renders the chart with the venv's Helm SDK (`setup::python_venv` must have run).
pub(super) fn render(values: &Value, namespace: &str) -> anyhow::Result<Rendered> {
    let out = cmd::output(
        Command::new(setup::venv_dir().join("bin/python"))
            .args(["-c", RENDER_PY])
            .arg(cmd::workspace_root().join("helm/traffic-manager"))
            .arg(values.to_string())
            .args([RELEASE, namespace]),
    )
    .context("rendering the chart with the Helm SDK")?;
    let v: Value = serde_json::from_str(&out).context("renderer output")?;
    let list = |k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let r = Rendered {
        main: list("main"),
        hooks: list("hooks"),
    };
    anyhow::ensure!(!r.main.is_empty(), "the chart rendered no objects");
    Ok(r)
}

/// `kind/name` of the rendered workloads, for `kubectl rollout status`.
pub(super) fn workloads(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .filter_map(|o| {
            let kind = o.get("kind")?.as_str()?;
            let name = o.pointer("/metadata/name")?.as_str()?;
            matches!(kind, "Deployment" | "DaemonSet")
                .then(|| format!("{}/{name}", kind.to_ascii_lowercase()))
        })
        .collect()
}

pub(super) fn object_name(objs: &[Value], kind: &str, component: &str) -> Option<String> {
    objs.iter()
        .find(|o| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && o.pointer("/metadata/labels/app.kubernetes.io~1component")
                    .and_then(Value::as_str)
                    == Some(component)
        })
        .and_then(|o| o.pointer("/metadata/name")?.as_str().map(str::to_string))
}

pub(super) fn write_list(path: &Path, items: &[Value]) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec_pretty(&list)?)
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpffs_propagation_follows_the_host_mount() {
        let shared = "35 24 0:30 / /sys/fs/bpf rw,nosuid shared:12 - bpf bpf rw,mode=700\n";
        let private = "35 24 0:30 / /sys/fs/bpf rw,nosuid - bpf bpf rw,mode=700\n";
        assert_eq!(bpffs_propagation(shared, "/sys/fs/bpf"), "Bidirectional");
        assert_eq!(bpffs_propagation(private, "/sys/fs/bpf"), "None");
        assert_eq!(bpffs_propagation("", "/sys/fs/bpf"), "None");
    }

    #[test]
    fn workloads_are_the_deployments_and_daemonsets() {
        let objs = vec![
            json!({"kind": "Service", "metadata": {"name": "s"}}),
            json!({"kind": "DaemonSet", "metadata": {"name": "a"}}),
            json!({"kind": "Deployment", "metadata": {"name": "c"}}),
        ];
        assert_eq!(workloads(&objs), vec!["daemonset/a", "deployment/c"]);
    }

    #[test]
    fn objects_are_found_by_kind_and_component() {
        let objs = vec![
            json!({"kind": "Service", "metadata": {"name": "p", "labels": {"app.kubernetes.io/component": "prometheus"}}}),
        ];
        assert_eq!(object_name(&objs, "Service", "prometheus").as_deref(), Some("p"));
        assert_eq!(object_name(&objs, "Service", "zipkin"), None);
    }
}
