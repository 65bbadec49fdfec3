//! Time the translation of a synthetic mesh: `cargo run -p traffic-translate --example scale --
//! [services] [pods per service] [share of pods with their own traffic labels, %]`.
use std::time::Instant;

use traffic_translate::model::{MeshModel, OwnerRef, Pod, Service, ServicePort, Workload, WorkloadKind};
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options};

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let services = args.first().copied().unwrap_or(200);
    let per = args.get(1).copied().unwrap_or(10);
    let labelled_pct = args.get(2).copied().unwrap_or(1);
    let mut m = MeshModel::default();
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut n = 0usize;
    for s in 0..services {
        let name = format!("svc-{s}");
        m.services.push(std::sync::Arc::new(Service {
            namespace: "default".into(),
            name: name.clone(),
            cluster_ips: vec![format!("10.96.{}.{}", s / 250, s % 250 + 1).parse()?],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                target_port: None,
                protocol: Default::default(),
            }],
            selector: labels(&[("app", &name)]),
            labels: labels(&[("traffic.port.8080", "http"), ("traffic.request.timeout", "5s")]),
        }));
        m.workloads.push(Workload {
            kind: WorkloadKind::Deployment,
            namespace: "default".into(),
            name: name.clone(),
            labels: labels(&[("traffic.envoy.enabled", "true")]),
        });
        for p in 0..per {
            n += 1;
            let mut l: std::collections::BTreeMap<String, String> = labels(&[("app", &name)]);
            if labelled_pct > 0 && n.is_multiple_of(100 / labelled_pct.min(100)) {
                l.insert("traffic.request.timeout".into(), "1s".into());
            }
            m.pods.push(std::sync::Arc::new(Pod {
                namespace: "default".into(),
                name: format!("{name}-{p}"),
                uid: String::new(),
                ip: Some(format!("172.{}.{}.{}", 16 + n / 65000, (n / 250) % 256, n % 250 + 1).parse()?),
                node: Some(format!("node-{}", n % 20)),
                zone: None,
                labels: l,
                owner: Some(OwnerRef {
                    kind: WorkloadKind::Deployment,
                    name: name.clone(),
                }),
                ready: true,
                named_ports: Default::default(),
            }));
        }
    }
    let opts = Options::default();
    let _ = translate(&m, &opts); // warm up
    let runs = 3;
    let start = Instant::now();
    let mut t = translate(&m, &opts);
    for _ in 1..runs {
        t = translate(&m, &opts);
    }
    let per_translate = start.elapsed() / runs;
    let view = t.snapshot.for_node("svc-0-0.default");
    let bytes: usize = view
        .by_type
        .values()
        .flat_map(|r| r.values())
        .map(|r| r.body.value.len())
        .sum();
    let count: usize = view.by_type.values().map(|r| r.len()).sum();
    let start = Instant::now();
    for p in &m.pods {
        std::hint::black_box(t.snapshot.for_node(&p.node_id()));
    }
    let for_node = start.elapsed() / m.pods.len() as u32;
    println!(
        "services={services} pods={} overridden_nodes={} translate={per_translate:?} \
         node_view: {count} resources {bytes} bytes, for_node={for_node:?}",
        m.pods.len(),
        t.snapshot.overridden_nodes().count()
    );
    Ok(())
}
