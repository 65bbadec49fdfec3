//! The benchmark's synthetic mesh: N services of M pods each, as model-file YAML.
//!
//! With `istio`, every service also has what an Istio user writes for a versioned app: pods
//! labelled `version: v1|v2|v3` (round robin), a DestinationRule with those three subsets and a
//! VirtualService of three rules: `end-user: jason` (header exact) -> v2, `x-canary` (header
//! prefix) -> v3, everything else 75/25 over v1/v2. Each service then has four clusters and four
//! endpoint assignments instead of one.

use anyhow::Context;
use traffic_translate::model::MeshModel;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub services: usize,
    pub pods_per_service: usize,
    pub istio: bool,
}

impl Shape {
    /// The mesh with one pod of service 0 moved to another IP `bump` times (0: not moved): each
    /// bump is one endpoint change (of the service and, with `istio`, of subset v1).
    pub fn model(&self, bump: usize) -> anyhow::Result<MeshModel> {
        MeshModel::from_yaml_str(&self.yaml(bump)).context("synthetic model")
    }

    fn yaml(&self, bump: usize) -> String {
        let (services, pods) = (self.services, self.pods_per_service);
        let mut y = String::from("services:\n");
        for s in 0..services {
            y.push_str(&format!(
                "- name: svc{s}\n  clusterIPs: [10.96.{}.{}]\n  ports: [{{name: http, port: 9080}}]\n  selector: {{app: svc{s}}}\n  labels: {{traffic.port.9080: http}}\n",
                s / 250,
                s % 250 + 1
            ));
        }
        y.push_str("pods:\n");
        for s in 0..services {
            for p in 0..pods {
                let n = s * pods + p;
                let last = if s == 0 && p == 0 {
                    200 + bump % 50
                } else {
                    n % 250 + 1
                };
                let version = if self.istio {
                    format!(", version: v{}", p % 3 + 1)
                } else {
                    String::new()
                };
                y.push_str(&format!(
                    "- {{name: svc{s}-{p}, ip: 10.{}.{}.{last}, labels: {{app: svc{s}{version}}}}}\n",
                    1 + n / 62500,
                    (n / 250) % 250
                ));
            }
        }
        if self.istio {
            y.push_str(&istio_yaml(services));
        }
        y
    }
}

/// A VirtualService and a DestinationRule per service (see the module doc).
fn istio_yaml(services: usize) -> String {
    let mut y = String::from("istio:\n  virtualServices:\n");
    for s in 0..services {
        y.push_str(&format!(
            r#"  - metadata: {{name: svc{s}}}
    spec:
      hosts: [svc{s}]
      http:
      - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
        route: [{{destination: {{host: svc{s}, subset: v2}}}}]
      - match: [{{headers: {{x-canary: {{prefix: "yes"}}}}}}]
        route: [{{destination: {{host: svc{s}, subset: v3}}}}]
      - route:
        - {{destination: {{host: svc{s}, subset: v1}}, weight: 75}}
        - {{destination: {{host: svc{s}, subset: v2}}, weight: 25}}
"#
        ));
    }
    y.push_str("  destinationRules:\n");
    for s in 0..services {
        y.push_str(&format!(
            r#"  - metadata: {{name: svc{s}}}
    spec:
      host: svc{s}
      subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
      - {{name: v3, labels: {{version: v3}}}}
"#
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic_translate::snapshot::{MeshSnapshot, CLUSTER, ENDPOINT};
    use traffic_translate::translate::{translate, Options};

    #[test]
    fn the_istio_shape_gives_every_service_three_subset_clusters_and_no_problems() {
        let shape = Shape {
            services: 3,
            pods_per_service: 6,
            istio: true,
        };
        let m = shape.model(0).expect("model");
        assert_eq!(m.istio.virtual_services.len(), 3);
        assert_eq!(m.istio.destination_rules.len(), 3);
        let t = translate(&m, &Options::default());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let view = t.snapshot.for_node("bench0.default");
        let count = |ty: &str| view.get(ty).map(|r| r.len()).unwrap_or(0);
        // 3 services x (1 + 3 subsets); the sidecar view adds its own clusters (passthrough, ...).
        assert_eq!(count(ENDPOINT), 12);
        assert!(count(CLUSTER) >= 12);
    }

    #[test]
    fn a_bump_moves_exactly_one_pod() {
        let shape = Shape {
            services: 2,
            pods_per_service: 3,
            istio: true,
        };
        let (a, b) = (shape.model(0).expect("model"), shape.model(1).expect("moved"));
        let moved = a.pods.iter().zip(&b.pods).filter(|(x, y)| x != y).count();
        assert_eq!(moved, 1);
        assert_eq!(a.istio, b.istio);
    }
}
