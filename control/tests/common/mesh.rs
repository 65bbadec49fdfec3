//! A small mesh on loopback for data-path tests: per Service a cluster IP 127.0.10.<n> and pods
//! 127.<20+n>.0.<k> running [`Backend`]s, translated and served by an in-process ADS server to a
//! real Envoy whose outbound listener port is also every Service's port (see envoy_xds.rs for
//! why that exercises the per-service filter chains).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Collector, Options};

use super::ads::TestServer;
use super::envoy::{envoy_binary, free_port, Ads, Backend, Envoy, Zipkin};

pub struct Svc {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    /// Pod name suffix and its pod labels.
    pub pods: Vec<(&'static str, Vec<(&'static str, String)>)>,
}

impl Svc {
    pub fn new(name: &'static str, labels: &[(&'static str, &str)], pods: &[&'static str]) -> Svc {
        Svc {
            name,
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            pods: pods.iter().map(|p| (*p, vec![])).collect(),
        }
    }

    pub fn pod_label(mut self, pod: &str, key: &'static str, value: &str) -> Svc {
        for (p, labels) in &mut self.pods {
            if *p == pod {
                labels.push((key, value.to_string()));
            }
        }
        self
    }
}

pub struct Mesh {
    pub port: u16,
    pub server: TestServer,
    pub envoy: Envoy,
    /// `<svc>-<pod>` -> backend
    pub backends: Vec<Backend>,
    pub zipkin: Zipkin,
    names: Vec<&'static str>,
}

impl Mesh {
    /// None when Envoy is unavailable (test skipped).
    pub async fn start(services: Vec<Svc>) -> Option<Mesh> {
        let bin = envoy_binary()?;
        let port = free_port();
        let zipkin = Zipkin::start().await;
        let mut yaml = String::from("services:\n");
        let mut pods_yaml = String::from("pods:\n");
        let mut backends = Vec::new();
        let mut names = Vec::new();
        for (i, s) in services.iter().enumerate() {
            let n = i as u8 + 1;
            let mut target = 0;
            for (k, (pod, labels)) in s.pods.iter().enumerate() {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 20 + n, 0, k as u8 + 1));
                let b = Backend::start(&format!("{}-{pod}", s.name), ip, target).await;
                target = b.addr.port();
                let mut l = format!("app: {}", s.name);
                for (key, v) in labels {
                    l.push_str(&format!(", {key}: \"{v}\""));
                }
                pods_yaml.push_str(&format!(
                    "- {{name: {}-{pod}, ip: {ip}, labels: {{{l}}}}}\n",
                    s.name
                ));
                backends.push(b);
            }
            let mut l = format!("traffic.port.{port}: http");
            for (k, v) in &s.labels {
                l.push_str(&format!(", {k}: \"{v}\""));
            }
            yaml.push_str(&format!(
                "- name: {}\n  clusterIPs: [127.0.10.{n}]\n  ports: [{{name: http, port: {port}, targetPort: {target}}}]\n  selector: {{app: {}}}\n  labels: {{{l}}}\n",
                s.name, s.name
            ));
            names.push(s.name);
        }
        yaml.push_str(&pods_yaml);
        let model = MeshModel::from_yaml_str(&yaml).expect("model");
        let opts = Options {
            outbound_port: port,
            stats_port: None,
            zipkin: Some(Collector {
                host: "127.0.0.1".into(),
                port: zipkin.addr.port(),
            }),
            ..Options::default()
        };
        let t = translate(&model, &opts);
        assert!(t.label_errors.is_empty(), "{:?}", t.label_errors);
        let snapshot: Arc<dyn MeshSnapshot> = Arc::new(t.snapshot);
        let server = TestServer::start_with(snapshot).await;
        let envoy = Envoy::start(&bin, "client.default", server.addr, Ads::Sotw).await;
        let mesh = Mesh {
            port,
            server,
            envoy,
            backends,
            zipkin,
            names,
        };
        let last = format!("127.{}.0.1", 20 + services.len());
        mesh.envoy
            .wait_config("all endpoints", |d| {
                d.contains(&last) && d.contains("\"outbound\"")
            })
            .await;
        // The listener warms until its routes arrive (RDS, pushed after it): wait for that and
        // for the routes' ACK rather than for a fixed time.
        mesh.envoy.wait_listeners_active(1).await;
        mesh.server.wait_acked("sotw", &["route"]).await;
        Some(mesh)
    }

    /// Where a client of Service `name` connects.
    pub fn addr(&self, name: &str) -> SocketAddr {
        let i = self.names.iter().position(|n| *n == name).expect("service") as u8 + 1;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 10, i)), self.port)
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.name == name).expect("backend")
    }

    pub fn cluster(&self, name: &str) -> String {
        format!("{}|default|{name}", self.port)
    }

    /// A cluster stat, e.g. `upstream_rq_pending_overflow`.
    pub async fn cluster_stat(&self, svc: &str, stat: &str) -> u64 {
        // The stat prefix may carry the cluster's alt_stat_name (`<cluster>.outbound`).
        let prefix = format!("cluster.{}.", self.cluster(svc));
        let suffix = format!(".{stat}");
        self.envoy
            .stats(stat)
            .await
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.starts_with(&prefix) && k.ends_with(&suffix))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `yaml` translated for an Envoy whose outbound listener is on `port` (no stats listener),
/// after checking that translation found nothing wrong with it.
pub fn translated(yaml: &str, port: u16) -> Arc<dyn MeshSnapshot> {
    let model = MeshModel::from_yaml_str(yaml).expect("model");
    let opts = Options {
        outbound_port: port,
        stats_port: None,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(
        t.label_errors.is_empty() && t.problems.is_empty(),
        "{:?} {:?}",
        t.label_errors,
        t.problems
    );
    t.snapshot.validate().expect("consistent snapshot");
    Arc::new(t.snapshot)
}
