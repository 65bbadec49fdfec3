//! The label-only golden mesh (`fixtures/labels_golden.yaml`: every `traffic.*` label, pod-level
//! overrides, an Ingress) translates to exactly the pinned resource versions (content hashes) in
//! `fixtures/labels_golden.versions`, with and without a Zipkin collector. Versions are what
//! Envoys see change: a refactor of the translator (for example the labels' lowering into the
//! routing model) must leave them alone. A deliberate change of the output updates the pins:
//! `UPDATE_GOLDEN=1 cargo test -p traffic-translate --test labels_golden`, and the diff of the
//! `.versions` file shows which resources changed.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;

use common::*;
use traffic_translate::model::MeshModel;
use traffic_translate::translate::Options;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn versions(model: &MeshModel) -> String {
    let mut out = String::new();
    let zipkin = Options {
        zipkin: Some("zipkin:9411".parse().unwrap()),
        ..Options::default()
    };
    for (label, opts) in [("default", Options::default()), ("zipkin", zipkin)] {
        let t = run_with(model, &opts);
        assert!(t.label_errors.is_empty(), "{:?}", t.label_errors);
        for (node, res) in t.snapshot.views() {
            for (type_url, resources) in &res.by_type {
                let kind = type_url.rsplit('.').next().unwrap_or(type_url);
                for (name, r) in resources.iter() {
                    let origin = r
                        .origin
                        .as_ref()
                        .map(|o| format!("{} {}/{}", o.kind, o.namespace, o.name))
                        .unwrap_or_default();
                    writeln!(out, "{label} {node} {kind} {name} {} {origin}", r.version).unwrap();
                }
            }
        }
    }
    out
}

#[test]
fn the_label_only_golden_mesh_keeps_its_resource_versions() {
    let model = MeshModel::from_yaml_file(fixture("labels_golden.yaml")).unwrap();
    let got = versions(&model);
    let pinned = fixture("labels_golden.versions");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&pinned, &got).unwrap();
    }
    let want = std::fs::read_to_string(&pinned).unwrap();
    assert!(
        got == want,
        "the translation of the label-only golden mesh changed; if on purpose, update the pins \
         (UPDATE_GOLDEN=1) and say why. Now:\n{got}"
    );
    // Every per-pod view the fixture is there for still exists.
    for node in ["client-b.default", "client-c.default", "web-v1-a.default"] {
        assert!(
            got.contains(&format!("default {node} ")),
            "{node} has its own view"
        );
    }
}
