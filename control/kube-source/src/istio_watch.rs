//! Watches of the four `networking.istio.io` kinds (VirtualService, DestinationRule,
//! ServiceEntry, Gateway) into reflector stores of `DynamicObject`s, read into the model's
//! [`IstioConfig`] with `traffic_istio`'s parser.
//!
//! The CRDs may be missing (the chart installed with `crds.install=false` on a cluster without
//! Istio, or Istio installed later): a kind's watch then fails; that is logged once at warn (later
//! failures at debug) and retried with kube's backoff, so objects appear once the CRD does. The
//! model never waits for these stores: the first model is published without them if they have not
//! listed within [`ISTIO_SYNC_WAIT`].
//!
//! The watched version is `v1beta1`: Istio serves it from 1.8 on (v1 only since 1.22), and our
//! CRDs serve it too, so one version fits both `crds.install` settings.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};
use traffic_istio::object::{parse_object, Kind, GROUP};
use traffic_istio::IstioConfig;

use crate::watch::{ResourceLabels, SourceMetrics, Watched};

/// The version read.
pub const WATCHED_VERSION: &str = "v1beta1";

/// How long the first model waits for the Istio stores' initial lists.
pub const ISTIO_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The watched resource of `kind`.
pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, WATCHED_VERSION, kind.as_str()),
        kind.plural(),
    )
}

/// Readers of the four stores.
#[derive(Clone)]
pub struct IstioStores {
    pub stores: Vec<(Kind, Store<DynamicObject>)>,
}

/// Writing halves matching [`IstioStores`].
pub struct IstioWriters {
    pub writers: Vec<(Kind, reflector::store::Writer<DynamicObject>)>,
}

/// Fresh, empty stores.
pub fn istio_stores() -> (IstioStores, IstioWriters) {
    let mut stores = Vec::new();
    let mut writers = Vec::new();
    for kind in Kind::ALL {
        let w = reflector::store::Writer::new(api_resource(kind));
        stores.push((kind, w.as_reader()));
        writers.push((kind, w));
    }
    (IstioStores { stores }, IstioWriters { writers })
}

impl IstioStores {
    /// The objects now in the stores. An object that does not read (it passed the API server's
    /// schema, so only with CRDs other than ours) is skipped with a debug log; validation
    /// reports the rest.
    pub fn config(&self) -> IstioConfig {
        let mut c = IstioConfig::default();
        for (_, store) in &self.stores {
            let mut objects = store.state();
            // Stores return objects in no particular order; models compare equal by content.
            objects.sort_by_key(|o| (o.namespace(), o.name_any()));
            for o in objects {
                c.push_value(&o);
            }
        }
        c
    }

    /// Waits (at most `max`) until every store has listed; false when one has not (its CRD is
    /// probably missing).
    pub async fn wait_until_ready(&self, max: Duration) -> bool {
        let all = async {
            for (_, s) in &self.stores {
                if s.wait_until_ready().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(max, all).await.unwrap_or(false)
    }
}

/// Adding a `DynamicObject` to an [`IstioConfig`].
trait PushValue {
    fn push_value(&mut self, o: &DynamicObject);
}

impl PushValue for IstioConfig {
    fn push_value(&mut self, o: &DynamicObject) {
        let value = match serde_json::to_value(o) {
            Ok(v) => v,
            Err(error) => {
                debug!(%error, name = o.name_any(), "istio object not serializable");
                return;
            }
        };
        match parse_object(&value) {
            Ok(parsed) => self.push(parsed.object),
            Err(error) => debug!(%error, name = o.name_any(), "istio object does not read; skipped"),
        }
    }
}

/// Starts the four watches; each pokes `poke` on every change.
pub fn spawn_istio_watches(
    client: &Client,
    namespace: Option<&str>,
    writers: IstioWriters,
    poke: &mpsc::Sender<Watched>,
    metrics: &SourceMetrics,
) -> Vec<JoinHandle<()>> {
    writers
        .writers
        .into_iter()
        .map(|(kind, writer)| {
            let ar = api_resource(kind);
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let labels = ResourceLabels {
                resource: kind.plural(),
            };
            let events = metrics.watch_events.get_or_create(&labels).clone();
            let errors = metrics.watch_errors.get_or_create(&labels).clone();
            let poke = poke.clone();
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear())
                .reflect(writer);
            let task = async move {
                let mut stream = std::pin::pin!(stream);
                let mut failures = 0u64;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                        Ok(watcher::Event::InitDone) => {
                            if failures > 0 {
                                warn!(failures, "watch recovered (the CRD is there now)");
                            }
                            failures = 0;
                        }
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                            events.inc();
                        }
                        Err(error) => {
                            errors.inc();
                            failures += 1;
                            if failures == 1 {
                                warn!(
                                    %error,
                                    "cannot watch {}.{GROUP} ({WATCHED_VERSION}); is its CRD installed? \
                                     retrying with backoff (logged once)",
                                    kind.plural()
                                );
                            } else {
                                debug!(%error, failures, "watch still failing");
                            }
                            continue;
                        }
                    }
                    let _ = poke.try_send(Watched::Istio);
                }
                warn!("watch stream ended");
            };
            tokio::spawn(task.instrument(tracing::info_span!("kube_watch", resource = kind.plural())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(yaml: &str) -> DynamicObject {
        serde_yaml::from_str(yaml).expect("object")
    }

    #[test]
    fn stored_objects_become_the_istio_config_in_name_order() {
        let (stores, mut writers) = istio_stores();
        let vs = |name: &str| {
            dynamic(&format!(
                "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n\
                 metadata: {{name: {name}, namespace: default, generation: 2}}\n\
                 spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]}}\n"
            ))
        };
        let (_, w) = &mut writers.writers[0];
        for o in [vs("b"), vs("a")] {
            w.apply_watcher_event(&watcher::Event::Apply(o));
        }
        let c = stores.config();
        let names: Vec<_> = c
            .virtual_services
            .iter()
            .map(|v| v.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.virtual_services[0].metadata.generation, Some(2));
        assert_eq!(
            c.virtual_services[0].spec.http[0].route[0]
                .destination
                .subset
                .as_deref(),
            Some("v1")
        );
        assert!(c.destination_rules.is_empty());
    }

    #[test]
    fn the_watched_resources_are_the_plural_kinds_of_v1beta1() {
        let ar = api_resource(Kind::DestinationRule);
        assert_eq!(ar.api_version, "networking.istio.io/v1beta1");
        assert_eq!(ar.plural, "destinationrules");
        assert_eq!(ar.kind, "DestinationRule");
    }
}
