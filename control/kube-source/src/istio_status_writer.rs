//! Writes the conditions of [`crate::istio_status`] to the objects' status subresource
//! (`patch_status`, a JSON merge patch of `status.conditions`), only where they changed from
//! what the watched object carries.

use std::sync::{Arc, Mutex};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::istio_status::{status_patch, ObjectStatus};
use crate::istio_watch::{api_resource, IstioStores};

/// Where the desired conditions of every Istio object go after each translation.
pub trait StatusWriter: Send + Sync + 'static {
    /// Makes the objects' `status.conditions` say `statuses` (unchanged ones are not written).
    fn write(&self, statuses: Vec<ObjectStatus>);
}

/// Records what it is given (tests).
#[derive(Debug, Default, Clone)]
pub struct RecordingStatusWriter {
    pub written: Arc<Mutex<Vec<Vec<ObjectStatus>>>>,
}

impl StatusWriter for RecordingStatusWriter {
    fn write(&self, statuses: Vec<ObjectStatus>) {
        if let Ok(mut w) = self.written.lock() {
            w.push(statuses);
        }
    }
}

/// The [`StatusWriter`] patching the API server from a background task: only the latest set of
/// statuses is written (a newer one replaces one not yet written).
#[derive(Debug, Clone)]
pub struct KubeStatusWriter {
    tx: watch::Sender<Arc<Vec<ObjectStatus>>>,
}

impl KubeStatusWriter {
    /// Starts the writer; `stores` are the watched Istio objects (their current status).
    pub fn spawn(client: Client, stores: IstioStores) -> (Self, JoinHandle<()>) {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let task = tokio::spawn(run(client, stores, rx).instrument(tracing::info_span!("istio_status")));
        (KubeStatusWriter { tx }, task)
    }
}

impl StatusWriter for KubeStatusWriter {
    fn write(&self, statuses: Vec<ObjectStatus>) {
        self.tx.send_replace(Arc::new(statuses));
    }
}

/// RFC 3339 in whole seconds, as Kubernetes writes times.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn run(client: Client, stores: IstioStores, mut rx: watch::Receiver<Arc<Vec<ObjectStatus>>>) {
    while rx.changed().await.is_ok() {
        let statuses = rx.borrow_and_update().clone();
        for s in statuses.iter() {
            let Some((_, store)) = stores.stores.iter().find(|(k, _)| *k == s.kind) else {
                continue;
            };
            let ar = api_resource(s.kind);
            let key = ObjectRef::<DynamicObject>::new_with(&s.name, ar.clone()).within(&s.namespace);
            // Not in the store (yet): the object came from elsewhere or was just deleted.
            let Some(current) = store.get(&key) else {
                continue;
            };
            let Some(patch) = status_patch(current.data.get("status"), &s.conditions, &now()) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &s.namespace, &ar);
            match api
                .patch_status(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => info!(
                    kind = s.kind.as_str(),
                    namespace = %s.namespace,
                    name = %s.name,
                    "status conditions written"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    debug!(name = %s.name, "object gone before its status was written")
                }
                Err(error) => warn!(
                    %error,
                    kind = s.kind.as_str(),
                    namespace = %s.namespace,
                    name = %s.name,
                    "cannot write status conditions"
                ),
            }
        }
    }
}
