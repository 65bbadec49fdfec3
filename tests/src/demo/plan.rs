//! Pure: what the demo builds and expects, read from the mesh model file.
//!
//! - the client: the one pod whose own or owner's `traffic.envoy.enabled` is `true` (it gets the
//!   Envoy sidecar and the redirect);
//! - the backends: every other pod with an IP; each serves HTTP on the Service's target port and
//!   answers with its Deployment's name (its pod name without an owner);
//! - the target: the first Service's first cluster IP and port;
//! - the expected split: the backends' `traffic.endpoint.weight` (default 100), by name.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use traffic_translate::model::{MeshModel, Pod};

/// Labels read here (the public contract, docs/labels.md).
pub const ENABLED: &str = "traffic.envoy.enabled";
pub const WEIGHT: &str = "traffic.endpoint.weight";
pub const DEFAULT_WEIGHT: u32 = 100;

/// A pod of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPod {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    /// What its HTTP server answers (backends only): the Deployment name.
    pub body: String,
    pub weight: u32,
}

impl DemoPod {
    /// `<pod>.<namespace>`: the Envoy node id.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPlan {
    pub client: DemoPod,
    pub backends: Vec<DemoPod>,
    /// The Service `name.namespace` and its `clusterIP:port`.
    pub service: String,
    pub target: SocketAddr,
    /// The port the backends listen on (the Service port's target port).
    pub backend_port: u16,
}

impl DemoPlan {
    pub fn from_model(model: &MeshModel) -> anyhow::Result<Self> {
        let service = model.services.first().context("the model has no Service")?;
        let port = service.ports.first().context("the Service has no port")?;
        let cluster_ip = *service
            .cluster_ips
            .first()
            .context("the Service has no clusterIP")?;
        let mut clients = Vec::new();
        let mut backends = Vec::new();
        for pod in &model.pods {
            let Some(ip) = pod.ip else { continue };
            let owner = model.owner_of(pod);
            let label = |key: &str| {
                pod.labels
                    .get(key)
                    .or_else(|| owner.and_then(|w| w.labels.get(key)))
                    .map(String::as_str)
            };
            let weight = match label(WEIGHT) {
                None => DEFAULT_WEIGHT,
                Some(v) => v
                    .parse()
                    .with_context(|| format!("pod {}: bad {WEIGHT} {v:?}", pod.name))?,
            };
            let demo = DemoPod {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                ip,
                body: owner_name(pod).unwrap_or(&pod.name).to_string(),
                weight,
            };
            if label(ENABLED) == Some("true") {
                clients.push(demo);
            } else {
                backends.push(demo);
            }
        }
        let client = match clients.len() {
            1 => clients.remove(0),
            n => anyhow::bail!("the model needs exactly one pod with {ENABLED}=true, found {n}"),
        };
        anyhow::ensure!(!backends.is_empty(), "the model has no backend pod with an IP");
        let backend_port = backends
            .iter()
            .filter_map(|b| model.pod(&b.namespace, &b.name))
            .find_map(|p| p.resolve_target_port(port))
            .unwrap_or(port.port);
        Ok(Self {
            client,
            backends,
            service: format!("{}.{}", service.name, service.namespace),
            target: SocketAddr::new(cluster_ip, port.port),
            backend_port,
        })
    }

    /// Backend name -> weight, summed over pods of the same Deployment; weight 0 is left out.
    pub fn expected_split(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for b in self.backends.iter().filter(|b| b.weight > 0) {
            *out.entry(b.body.clone()).or_default() += b.weight;
        }
        out
    }
}

fn owner_name(pod: &Pod) -> Option<&str> {
    pod.owner.as_ref().map(|o| o.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = include_str!("../../../xtask/demo/model.yaml");

    #[test]
    fn the_shipped_demo_model_has_one_client_and_an_80_20_split() {
        let model = MeshModel::from_yaml_str(MODEL).expect("model");
        let plan = DemoPlan::from_model(&model).expect("plan");
        assert_eq!(plan.client.node_id(), "client.default");
        assert_eq!(plan.target, "10.96.0.50:9080".parse().expect("addr"));
        assert_eq!(plan.backend_port, 9080);
        let split: Vec<_> = plan.expected_split().into_iter().collect();
        assert_eq!(
            split,
            [("reviews-v1".to_string(), 80), ("reviews-v2".to_string(), 20)]
        );
    }

    #[test]
    fn a_model_without_exactly_one_enabled_pod_is_refused() {
        let none = "services: [{name: s, clusterIPs: [10.96.0.1], ports: [{port: 80}]}]\n\
                    pods: [{name: a, ip: 10.0.0.1}]\n";
        let err =
            DemoPlan::from_model(&MeshModel::from_yaml_str(none).expect("model")).expect_err("must fail");
        assert!(err.to_string().contains("exactly one pod"), "{err}");
    }

    #[test]
    fn weights_come_from_the_owner_unless_the_pod_sets_its_own() {
        let text = "services: [{name: s, clusterIPs: [10.96.0.1], ports: [{port: 80, targetPort: 8080}]}]\n\
                    workloads: [{kind: Deployment, name: d, labels: {traffic.endpoint.weight: 7}},\n\
                                {kind: Deployment, name: c, labels: {traffic.envoy.enabled: true}}]\n\
                    pods:\n\
                    - {name: c1, ip: 10.0.0.9, owner: {kind: Deployment, name: c}}\n\
                    - {name: d1, ip: 10.0.0.1, owner: {kind: Deployment, name: d}}\n\
                    - {name: d2, ip: 10.0.0.2, owner: {kind: Deployment, name: d}, labels: {traffic.endpoint.weight: 0}}\n\
                    - {name: solo, ip: 10.0.0.3}\n";
        let plan = DemoPlan::from_model(&MeshModel::from_yaml_str(text).expect("model")).expect("plan");
        assert_eq!(plan.client.name, "c1");
        assert_eq!(plan.backend_port, 8080);
        let split: Vec<_> = plan.expected_split().into_iter().collect();
        assert_eq!(split, [("d".to_string(), 7), ("solo".to_string(), 100)]);
    }
}
