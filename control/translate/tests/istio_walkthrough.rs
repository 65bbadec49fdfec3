//! The bookinfo traffic-management walk-through as users copy it (the YAML files in
//! `control/istio/tests/fixtures/bookinfo`, applied with `destination-rule-all.yaml`) against the
//! bookinfo model: each translates without errors into a consistent snapshot, and a real Envoy
//! starts on the resulting sidecar config (it refuses a config it would NACK).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::live::*;
use traffic_istio::{parse_yaml_documents, IstioConfig};
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options, Problem};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../istio/tests/fixtures/bookinfo");

fn read(config: &mut IstioConfig, file: &str) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    for parsed in parse_yaml_documents(&text) {
        config.push(parsed.unwrap().object);
    }
}

#[test]
fn every_bookinfo_virtual_service_translates_and_envoy_takes_it() {
    let envoy_bin = envoy_or_skip();
    let mut files: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("virtual-service-"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let mut model = common::bookinfo();
        // The mirroring task's httpbin v1/v2 with its subsets, as the task deploys them.
        let httpbin = traffic_translate::model::MeshModel::from_yaml_str(
            r#"
services:
- {name: httpbin, clusterIPs: [10.96.0.80], ports: [{name: http, port: 8000, targetPort: 80}], selector: {app: httpbin}}
pods:
- {name: httpbin-v1, ip: 172.17.0.80, labels: {app: httpbin, version: v1}}
- {name: httpbin-v2, ip: 172.17.0.81, labels: {app: httpbin, version: v2}}
istio:
  destinationRules:
  - metadata: {name: httpbin}
    spec: {host: httpbin, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
"#,
        )
        .unwrap();
        model.services.extend(httpbin.services);
        model.pods.extend(httpbin.pods);
        let istio = std::sync::Arc::make_mut(&mut model.istio);
        istio
            .destination_rules
            .extend(httpbin.istio.destination_rules.iter().cloned());
        read(istio, "destination-rule-all.yaml");
        read(istio, file);
        let (outbound, admin) = (free_port(), free_port());
        let opts = Options {
            outbound_port: outbound,
            stats_port: None,
            admin_port: admin,
            ..Options::default()
        };
        let t = translate(&model, &opts);
        // Deprecated fields (the 2018 `percent`) are warnings; nothing may be left out.
        let errors: Vec<&Problem> = t
            .problems
            .iter()
            .filter(|p| !p.to_string().contains(" warning "))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
        t.snapshot.validate().unwrap_or_else(|e| panic!("{file}: {e:?}"));
        let view = t.snapshot.for_node("productpage-v1-6b746f74dc-x7k2p.default");
        let routes = common::names(&view, traffic_translate::snapshot::ROUTE).join(" ");
        assert!(routes.contains("|default|"), "{file}: {routes}");
        if let Some(bin) = &envoy_bin {
            let bootstrap = static_bootstrap("productpage.default", &view, admin).unwrap();
            let _envoy = start_envoy(bin, &bootstrap, admin);
        }
    }
}
