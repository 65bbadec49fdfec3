//! What the e2e tests of the Istio front end share: the chart's networking.istio.io CRDs
//! (installed when the cluster has none, removed again only then) and an object's status
//! conditions as the control plane writes them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::e2e::{random_suffix, E2e};

/// The four kinds the chart defines, as `kubectl` resource names.
pub const KINDS: [&str; 4] = [
    "virtualservices",
    "destinationrules",
    "serviceentries",
    "gateways",
];

/// The CRDs as the chart renders them with `crds.install=true` (the template without its guard).
pub fn crds_yaml() -> anyhow::Result<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/traffic-manager/templates/istio-crds.yaml");
    let template =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(template
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// The CRDs, present for as long as this lives: installed (and waited for) when the cluster had
/// none, and then deleted on drop, also when the test fails; left alone when they were there.
pub struct IstioCrds<'a> {
    e2e: &'a E2e,
    /// The applied file, when this guard installed the CRDs.
    installed: Option<PathBuf>,
}

impl<'a> IstioCrds<'a> {
    pub fn ensure(e2e: &'a E2e) -> anyhow::Result<Self> {
        if e2e
            .kubectl(&["get", "crd", "virtualservices.networking.istio.io"])
            .is_ok()
        {
            return Ok(IstioCrds { e2e, installed: None });
        }
        let file = std::env::temp_dir().join(format!("istio-crds-{}.yaml", random_suffix()));
        std::fs::write(&file, crds_yaml()?)?;
        let guard = IstioCrds {
            e2e,
            installed: Some(file.clone()),
        };
        e2e.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
        for kind in KINDS {
            e2e.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{kind}.networking.istio.io"),
            ])?;
        }
        Ok(guard)
    }

    /// Whether this guard installed them (and will delete them).
    pub fn installed_here(&self) -> bool {
        self.installed.is_some()
    }
}

impl Drop for IstioCrds<'_> {
    fn drop(&mut self) {
        if let Some(file) = &self.installed {
            let _ = self
                .e2e
                .kubectl(&["delete", "-f", &file.to_string_lossy(), "--wait=false"]);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// One entry of `status.conditions`, with the object's generation beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
    pub generation: i64,
}

impl Condition {
    /// `status: "True"` for the object's current generation.
    pub fn is_true_now(&self) -> bool {
        self.status == "True" && self.observed_generation == self.generation
    }
}

/// Condition `type_` of `resource` (e.g. `serviceentry/httpbin-ext`) in `ns`, if written yet.
pub fn condition(e2e: &E2e, ns: &str, resource: &str, type_: &str) -> Option<Condition> {
    let o = e2e.kubectl_json(&["get", "-n", ns, resource]).ok()?;
    condition_of(&o, type_)
}

/// Condition `type_` of an object as `kubectl get -o json` prints it.
pub fn condition_of(o: &Value, type_: &str) -> Option<Condition> {
    let generation = o["metadata"]["generation"].as_i64()?;
    let c = o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some(Condition {
        status: s("status"),
        reason: s("reason"),
        message: s("message"),
        observed_generation: c["observedGeneration"].as_i64().unwrap_or(-1),
        generation,
    })
}

/// `kubectl apply -n ns` of a YAML text (through a temp file).
pub fn apply_yaml(e2e: &E2e, ns: &str, yaml: &str) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("istio-e2e-{}.yaml", random_suffix()));
    std::fs::write(&file, yaml)?;
    let out = e2e.kubectl(&["apply", "-n", ns, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    out.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_read_with_its_generation() {
        let o: Value = serde_json::json!({
            "metadata": {"generation": 3},
            "status": {"conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 3},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                 "message": "subset v9", "observedGeneration": 2}
            ]}
        });
        let a = condition_of(&o, "Accepted").expect("accepted");
        assert!(a.is_true_now());
        let r = condition_of(&o, "ResolvedRefs").expect("resolved");
        assert_eq!(r.reason, "BackendNotFound");
        assert_eq!(r.message, "subset v9");
        assert!(!r.is_true_now());
        assert!(condition_of(&o, "Ready").is_none());
        assert!(condition_of(&serde_json::json!({"metadata": {}}), "Accepted").is_none());
    }

    #[test]
    fn the_crds_come_from_the_chart_without_its_guard() {
        let y = crds_yaml().expect("chart template");
        assert!(!y.contains("{{"));
        for kind in KINDS {
            assert!(y.contains(&format!("name: {kind}.networking.istio.io")), "{kind}");
        }
    }
}
