//! A small mesh whose labels, Ingress hosts, paths and TLS Secret texts are arbitrary:
//! translation never panics and its snapshot is consistent (every referenced route, cluster,
//! endpoint assignment and secret exists). Whether Envoy takes it is the property test's job
//! (control/tests/envoy_label_properties.rs), which needs a real Envoy per case.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use traffic_labels::names;
use traffic_translate::model::MeshModel;
use traffic_translate::translate::{translate, Options, TlsDelivery};

fn labels(u: &mut Unstructured<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while let Ok(true) = bool::arbitrary(u) {
        let key = if bool::arbitrary(u).unwrap_or(false) {
            format!("{}80", names::PORT_PREFIX)
        } else {
            u.choose(&names::ALL).map(|k| k.to_string()).unwrap_or_default()
        };
        let Ok(value) = String::arbitrary(u) else { break };
        out.insert(key, value);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let base = r#"
services:
- {name: a, clusterIPs: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: a}}
- {name: b, clusterIPs: [10.96.0.2], ports: [{port: 80}], selector: {app: b}}
pods:
- {name: a-1, ip: 10.0.0.1, labels: {app: a}, owner: {kind: Deployment, name: a}}
- {name: b-1, ip: 10.0.0.2, labels: {app: b}}
- {name: client, ip: 10.0.0.3, labels: {app: c, traffic.envoy.enabled: "true"}}
workloads:
- {kind: Deployment, name: a}
ingresses:
- {name: i, rules: [{host: h, paths: [{path: /, backend: {service: a, port: 80}}]}], tls: [{hosts: [h], secretName: s}]}
secrets:
- {name: s, certPem: x, keyPem: x}
"#;
    let Ok(mut m) = MeshModel::from_yaml_str(base) else {
        return;
    };
    std::sync::Arc::make_mut(&mut m.services[0]).labels = labels(&mut u);
    std::sync::Arc::make_mut(&mut m.services[1]).labels = labels(&mut u);
    std::sync::Arc::make_mut(&mut m.pods[0]).labels.extend(labels(&mut u));
    std::sync::Arc::make_mut(&mut m.pods[2]).labels.extend(labels(&mut u));
    m.workloads[0].labels = labels(&mut u);
    let (Ok(host), Ok(path), Ok(cert), Ok(key)) = (
        String::arbitrary(&mut u),
        String::arbitrary(&mut u),
        String::arbitrary(&mut u),
        String::arbitrary(&mut u),
    ) else {
        return;
    };
    m.ingresses[0].rules[0].host = Some(host.clone());
    m.ingresses[0].rules[0].paths[0].path = path;
    m.ingresses[0].tls[0].hosts = vec![host];
    m.secrets[0].cert_pem = cert;
    m.secrets[0].key_pem = key;
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let opts = Options {
            ingress_tls: tls,
            ..Options::default()
        };
        let t = translate(&m, &opts);
        if let Err(e) = t.snapshot.validate() {
            panic!("inconsistent snapshot: {e:?}");
        }
    }
});
