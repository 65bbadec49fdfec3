//! The reflector stores the model is built from: readers ([`Stores`]) and writers ([`Writers`]).
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};

use super::SourceError;
use crate::convert::Inputs;
use crate::istio_watch::{istio_stores, IstioStores, IstioWriters};

/// Readers of the reflector stores the model is built from.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub ingresses: Store<Ingress>,
    pub secrets: Store<Secret>,
    /// Not waited for by [`Stores::wait_until_ready`] (the CRDs may be missing).
    pub istio: IstioStores,
}

/// The writing halves matching [`Stores`].
pub struct Writers {
    pub services: reflector::store::Writer<Service>,
    pub pods: reflector::store::Writer<Pod>,
    pub replica_sets: reflector::store::Writer<ReplicaSet>,
    pub deployments: reflector::store::Writer<Deployment>,
    pub stateful_sets: reflector::store::Writer<StatefulSet>,
    pub daemon_sets: reflector::store::Writer<DaemonSet>,
    pub ingresses: reflector::store::Writer<Ingress>,
    pub secrets: reflector::store::Writer<Secret>,
    pub istio: IstioWriters,
}

/// Fresh, empty (not yet ready) stores.
pub fn stores() -> (Stores, Writers) {
    let (services, services_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let (replica_sets, replica_sets_w) = reflector::store();
    let (deployments, deployments_w) = reflector::store();
    let (stateful_sets, stateful_sets_w) = reflector::store();
    let (daemon_sets, daemon_sets_w) = reflector::store();
    let (ingresses, ingresses_w) = reflector::store();
    let (secrets, secrets_w) = reflector::store();
    let (istio, istio_w) = istio_stores();
    (
        Stores {
            services,
            pods,
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
            ingresses,
            secrets,
            istio,
        },
        Writers {
            services: services_w,
            pods: pods_w,
            replica_sets: replica_sets_w,
            deployments: deployments_w,
            stateful_sets: stateful_sets_w,
            daemon_sets: daemon_sets_w,
            ingresses: ingresses_w,
            secrets: secrets_w,
            istio: istio_w,
        },
    )
}

impl Stores {
    /// A consistent-enough copy of everything (each store is read once).
    pub fn inputs(&self) -> Inputs {
        Inputs {
            services: self.services.state(),
            pods: self.pods.state(),
            replica_sets: self.replica_sets.state(),
            deployments: self.deployments.state(),
            stateful_sets: self.stateful_sets.state(),
            daemon_sets: self.daemon_sets.state(),
            ingresses: self.ingresses.state(),
            secrets: self.secrets.state(),
            now: Some(std::time::SystemTime::now()),
            istio: self.istio.config(),
        }
    }

    /// Resolves once every store has completed its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), SourceError> {
        let dropped = |_| SourceError::WatchEnded;
        self.services.wait_until_ready().await.map_err(dropped)?;
        self.pods.wait_until_ready().await.map_err(dropped)?;
        self.replica_sets.wait_until_ready().await.map_err(dropped)?;
        self.deployments.wait_until_ready().await.map_err(dropped)?;
        self.stateful_sets.wait_until_ready().await.map_err(dropped)?;
        self.daemon_sets.wait_until_ready().await.map_err(dropped)?;
        self.ingresses.wait_until_ready().await.map_err(dropped)?;
        self.secrets.wait_until_ready().await.map_err(dropped)?;
        Ok(())
    }
}
