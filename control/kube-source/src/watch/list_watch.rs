//! One list+watch into a reflector store on its own task, retried with [`WatchBackoff`].
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector;
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

/// What a reflector task saw (see [`spawn_reflector`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The initial list, or a relist after the watch expired, is complete: the store holds it.
    Listed,
    /// An object was created, changed or deleted; the store already has it.
    Object,
    /// The watch failed; it is retried with backoff.
    Failed,
}

/// Delays between retries of a failed watch: 0.5 s, doubling to at most 4 s, back to 0.5 s after
/// any successful event. kube's `DefaultBackoff` (client-go's: 0.8 s doubling to 30 s, reset only
/// 120 s after the last delay) left the control plane and the agent about 40 s behind after a 40 s
/// API server outage (issue 9, fault (c)): the first retry after the server was back came up to
/// 26 s late. A few watches per process retrying every 4 s cost an API server nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    /// Never `None`: a watch is retried for as long as the process runs.
    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A list+watch of `api` feeding the reflector store of `writer` on its own task (managedFields
/// dropped: nobody reads them and they are a large share of each object's memory). `on_change`
/// hears every completed list, object change and failure; changes and failures are also logged,
/// under `resource`.
pub fn spawn_reflector<K, F>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    resource: &'static str,
    mut on_change: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    F: FnMut(Change) + Send + 'static,
{
    let stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // Pages of a (re)list: the store swaps in the new state at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    debug!("list complete");
                    on_change(Change::Listed);
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    debug!(
                        namespace = o.namespace().unwrap_or_default(),
                        name = o.name_any(),
                        "changed"
                    );
                    on_change(Change::Object);
                }
                Err(error) => {
                    warn!(%error, "watch failed, retrying with backoff");
                    on_change(Change::Failed);
                }
            }
        }
        warn!("watch stream ended");
    };
    tokio::spawn(task.instrument(tracing::info_span!("kube_watch", resource)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_double_from_half_a_second_to_four_and_start_over_after_a_success() {
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
