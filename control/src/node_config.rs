//! `traffic-control config --node-id <pod>.<ns>`: what that node would receive, translated from a
//! model file, as proto3 JSON in the shape of Envoy's config dump (nested `Any`s decoded with their
//! `@type`, private keys redacted), or as YAML.

use traffic_translate::render::{render_json, RenderError};
use traffic_translate::snapshot::NodeResources;
use traffic_xds::type_name;

/// Output format of `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Yaml,
}

/// Renders `resources` (optionally one type, by short name such as `cluster`).
pub fn render(
    node_id: &str,
    resources: &NodeResources,
    only: Option<&str>,
    format: Format,
) -> Result<String, RenderError> {
    let mut selected = NodeResources::default();
    for (type_url, items) in &resources.by_type {
        if only.is_none_or(|o| o == type_name(type_url)) {
            selected.by_type.insert(type_url, items.clone());
        }
    }
    let doc = serde_json::json!({ "node": node_id, "resources": render_json(&selected)? });
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&doc).unwrap_or_default(),
        Format::Yaml => serde_yaml::to_string(&doc).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic_translate::model::MeshModel;
    use traffic_translate::snapshot::MeshSnapshot;
    use traffic_translate::translate::{translate, Options};

    #[test]
    fn the_bookinfo_reviews_cluster_is_shown_with_its_origin() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/translate/examples/bookinfo.yaml");
        let model = MeshModel::from_yaml_file(path).expect("model");
        let t = translate(&model, &Options::default());
        let text = render(
            "x.default",
            &t.snapshot.for_node("x.default"),
            Some("cluster"),
            Format::Json,
        )
        .expect("render");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(doc["node"], "x.default");
        let types: Vec<&String> = doc["resources"].as_object().expect("by type").keys().collect();
        assert_eq!(types, ["Cluster"], "only clusters: {text}");
        assert!(text.contains("9080|default|reviews"), "{text}");
        assert!(text.contains("Service default/reviews"), "{text}");
    }
}
