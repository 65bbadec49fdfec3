//! The CustomResourceDefinitions of the four kinds: `apiextensions.k8s.io/v1` with structural
//! schemas and no CEL rules, so they install on Kubernetes 1.20 as on current clusters (Istio's own
//! CRDs carry CEL and need ≥ 1.32). v1alpha3, v1beta1 and v1 are served with one schema; v1 is
//! stored (one schema means no conversion is needed). The status subresource carries
//! `conditions[]`.
//!
//! The schemas list every field the types in this crate read, deprecated and removed ones
//! included, so the API server keeps them (a structural schema prunes what it does not list: a
//! 2018 `fault.abort.percent` would otherwise vanish on `kubectl apply`, as it does with Istio's
//! CRDs). `x-kubernetes-preserve-unknown-fields` appears only where Istio's schema is open too:
//! `status`.
//!
//! The chart's `templates/istio-crds.yaml` is [`crds_yaml`]'s output; a test keeps them equal.

use serde_json::{json, Value};

use crate::object::{Kind, GROUP, VERSIONS};

mod schema;

pub use schema::spec_schema;
use schema::{array, integer, object, string};

/// `status`: the conditions this control plane writes. Open beyond them, as Istio's status is (its
/// own controllers write `validationMessages` and more there).
fn status() -> Value {
    let condition = object(&[
        ("type", string()),
        ("status", string()),
        ("reason", string()),
        ("message", string()),
        ("observedGeneration", integer()),
        (
            "lastTransitionTime",
            json!({"type": "string", "format": "date-time"}),
        ),
    ]);
    let mut s = object(&[
        ("conditions", array(condition)),
        ("observedGeneration", integer()),
    ]);
    if let Some(o) = s.as_object_mut() {
        o.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    s
}

fn columns(kind: Kind) -> Value {
    let col = |name: &str, ty: &str, path: &str, d: &str| json!({"name": name, "type": ty, "jsonPath": path, "description": d});
    let age = col(
        "Age",
        "date",
        ".metadata.creationTimestamp",
        "Time since creation.",
    );
    let accepted = col(
        "Accepted",
        "string",
        ".status.conditions[?(@.type==\"Accepted\")].status",
        "Whether the control plane uses the object.",
    );
    let mut cols = match kind {
        Kind::VirtualService => vec![
            col(
                "Gateways",
                "string",
                ".spec.gateways",
                "The gateways this applies to.",
            ),
            col("Hosts", "string", ".spec.hosts", "The destination hosts."),
        ],
        Kind::DestinationRule => vec![col("Host", "string", ".spec.host", "The destination host.")],
        Kind::ServiceEntry => vec![
            col("Hosts", "string", ".spec.hosts", "The hosts."),
            col(
                "Location",
                "string",
                ".spec.location",
                "MESH_EXTERNAL or MESH_INTERNAL.",
            ),
            col(
                "Resolution",
                "string",
                ".spec.resolution",
                "How endpoints are found.",
            ),
        ],
        Kind::Gateway => vec![],
    };
    cols.push(accepted);
    cols.push(age);
    Value::Array(cols)
}

fn short_name(kind: Kind) -> &'static str {
    match kind {
        Kind::VirtualService => "vs",
        Kind::DestinationRule => "dr",
        Kind::ServiceEntry => "se",
        Kind::Gateway => "gw",
    }
}

/// The CRD of one kind.
pub fn crd(kind: Kind) -> Value {
    let schema = object(&[
        ("apiVersion", string()),
        ("kind", string()),
        ("metadata", json!({"type": "object"})),
        ("spec", spec_schema(kind)),
        ("status", status()),
    ]);
    let versions: Vec<Value> = VERSIONS
        .iter()
        .map(|v| {
            json!({
                "name": v,
                "served": true,
                "storage": *v == "v1",
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns(kind),
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", kind.plural()),
            "labels": {"app.kubernetes.io/part-of": "traffic-manager"},
            // Deleting a CRD deletes every object of its kind: `helm uninstall` keeps them.
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": kind.plural(),
                "singular": kind.as_str().to_ascii_lowercase(),
                "shortNames": [short_name(kind)],
                "categories": ["istio-io", "networking-istio-io"],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// All four CRDs as one multi-document YAML text (the chart's `templates/istio-crds.yaml` holds it
/// between its `crds.install` guard).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for kind in Kind::ALL {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd(kind))?);
    }
    Ok(out)
}

/// The chart template holding the CRDs: [`crds_yaml`] inside the `crds.install` guard.
pub fn chart_template() -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "{{{{- /* Generated by traffic-istio's crd::chart_template (UPDATE_CRDS=1 cargo test -p traffic-istio crd); do not edit. */ -}}}}\n\
         {{{{- if .Values.crds.install }}}}\n{}{{{{- end }}}}\n",
        crds_yaml()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a structural schema would prune from `value`: paths it does not list.
    fn pruned(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return;
        }
        match value {
            Value::Object(o) => {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (k, v) in o {
                        match props.get(k) {
                            Some(s) => pruned(v, s, &format!("{path}.{k}"), out),
                            None => out.push(format!("{path}.{k}")),
                        }
                    }
                } else if let Some(values) = schema.get("additionalProperties") {
                    for (k, v) in o {
                        pruned(v, values, &format!("{path}.{k}"), out);
                    }
                } else if !o.is_empty() {
                    out.push(format!("{path} (object without properties)"));
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    pruned(v, &schema["items"], &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    fn fixtures() -> Vec<(String, Value)> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut files = vec![format!("{root}/all-fields.yaml")];
        for e in std::fs::read_dir(format!("{root}/bookinfo")).expect("fixtures") {
            files.push(e.expect("entry").path().display().to_string());
        }
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).expect("yaml");
                out.push((f.clone(), v));
            }
        }
        out
    }

    #[test]
    fn the_schema_keeps_every_field_of_the_fixtures_including_deprecated_ones() {
        let all = fixtures();
        assert!(all.len() > 15);
        for (file, doc) in all {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| doc["kind"] == k.as_str())
                .expect("kind");
            let crd = crd(kind);
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut out = Vec::new();
            // metadata is the API server's own (ObjectMeta); only spec is pruned by our schema.
            pruned(&doc["spec"], &schema["properties"]["spec"], "spec", &mut out);
            assert!(out.is_empty(), "{file}: the schema would prune {out:?}");
        }
    }

    /// A value with every field the schema lists.
    fn synthesize(schema: &Value) -> Value {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            return Value::Object(props.iter().map(|(k, s)| (k.clone(), synthesize(s))).collect());
        }
        if let Some(values) = schema.get("additionalProperties") {
            return json!({"k": synthesize(values)});
        }
        match schema["type"].as_str() {
            Some("array") => json!([synthesize(&schema["items"])]),
            Some("integer") => json!(1),
            Some("number") => json!(1.5),
            Some("boolean") => json!(true),
            _ => json!("x"),
        }
    }

    #[test]
    fn every_field_the_schema_lists_is_a_field_the_types_read() {
        for kind in Kind::ALL {
            let doc = json!({
                "apiVersion": format!("{GROUP}/v1"),
                "kind": kind.as_str(),
                "metadata": {"name": "n"},
                "spec": synthesize(&spec_schema(kind)),
            });
            let parsed = crate::object::parse_object(&doc).expect("parses");
            assert!(
                parsed.unknown_fields.is_empty(),
                "{kind}: {:?}",
                parsed.unknown_fields
            );
        }
    }

    #[test]
    fn every_version_is_served_with_one_schema_and_v1_is_stored() {
        for kind in Kind::ALL {
            let c = crd(kind);
            let versions = c["spec"]["versions"].as_array().expect("versions");
            let names: Vec<_> = versions
                .iter()
                .map(|v| v["name"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(names, VERSIONS);
            let stored: Vec<_> = versions.iter().filter(|v| v["storage"] == true).collect();
            assert_eq!(stored.len(), 1);
            assert_eq!(stored[0]["name"], "v1");
            assert!(versions.iter().all(|v| v["schema"] == versions[0]["schema"]));
            assert!(versions.iter().all(|v| v["subresources"]["status"].is_object()));
            let text = serde_json::to_string(&c).expect("json");
            assert!(!text.contains("x-kubernetes-validations"), "no CEL");
        }
    }

    #[test]
    fn the_chart_template_is_the_generated_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../helm/traffic-manager/templates/istio-crds.yaml"
        );
        let want = chart_template().expect("yaml");
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(path, &want).expect("write");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: run UPDATE_CRDS=1 cargo test -p traffic-istio crd"
        );
    }
}
