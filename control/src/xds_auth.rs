//! Authentication of xDS clients, wired: the Kubernetes TokenReview reviewer (cached), the pods of
//! the mesh model as the pod directory, and the chart's gateway service accounts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use traffic_translate::model::MeshModel;
use traffic_xds::Admit;
use traffic_xds_auth::{
    Authenticator, CachingReviewer, KubeTokenReviewer, PodDirectory, PodFacts, Policy, ServiceAccountRef,
};

/// The pods of the latest mesh model (the control plane's own watch of the cluster).
pub struct ModelPods(pub watch::Receiver<Arc<MeshModel>>);

impl PodDirectory for ModelPods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let model = self.0.borrow().clone();
        model
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| PodFacts {
                uid: p.uid.clone(),
                ip: p.ip,
            })
    }
}

/// The admission hook: every ADS stream presents a pod-bound token of audience
/// `traffic-control`, reviewed by the API server (answers cached until the token expires, at most
/// `cache_max_age`).
pub fn authenticator(
    client: kube::Client,
    models: watch::Receiver<Arc<MeshModel>>,
    gateway_service_accounts: Vec<ServiceAccountRef>,
    check_peer: bool,
    cache_max_age: Duration,
) -> Arc<dyn Admit> {
    let reviewer = CachingReviewer::new(KubeTokenReviewer::new(client), cache_max_age);
    Arc::new(Authenticator::new(
        Arc::new(reviewer),
        Arc::new(ModelPods(models)),
        Policy {
            gateway_service_accounts,
            check_peer,
        },
    ))
}
