//! Debounced re-translation: one translation per quiet period after model changes, published to
//! every ADS stream at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use traffic_kube_source::events::EventSink;
use traffic_kube_source::istio_status::desired_statuses;
use traffic_kube_source::istio_status_writer::StatusWriter;
use traffic_kube_source::problems::problem_events;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, translate_endpoint_change, Options, Translation};

/// Translation metrics, under `translate_`.
#[derive(Debug, Clone)]
pub struct RebuildMetrics {
    pub rebuilds: Counter,
    pub duration: Histogram,
    pub label_errors: Counter,
    pub problems: Counter,
}

impl RebuildMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RebuildMetrics {
            rebuilds: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            label_errors: Counter::default(),
            problems: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("translate");
        r.register("rebuilds", "Translations of the mesh model", m.rebuilds.clone());
        r.register(
            "duration_seconds",
            "Time to translate the whole mesh model",
            m.duration.clone(),
        );
        r.register(
            "label_errors",
            "Invalid traffic.* labels found by translations",
            m.label_errors.clone(),
        );
        r.register(
            "problems",
            "Untranslatable objects found by translations",
            m.problems.clone(),
        );
        m
    }
}

/// Translates `model`, logging what could not be translated.
pub fn translate_logged(model: &MeshModel, options: &Options) -> Translation {
    let t = translate(model, options);
    log_translation(&t);
    if let Err(inconsistencies) = t.snapshot.validate() {
        for i in inconsistencies {
            warn!(inconsistency = ?i, "translated snapshot refers to a missing resource");
        }
    }
    t
}

fn log_translation(t: &Translation) {
    for e in &t.label_errors {
        warn!(kind = %e.object.kind, namespace = %e.object.namespace, name = %e.object.name, error = %e.error, "invalid label ignored");
    }
    for p in &t.problems {
        warn!(problem = %p, "not translated");
    }
}

/// The last translation, kept to translate the next model incrementally.
struct Previous {
    model: Arc<MeshModel>,
    translation: Translation,
    published: Arc<crate::grpc::WithApiListeners>,
}

/// Translates `model`: only its endpoint assignments when it differs from `prev`'s model only in
/// where pods are ([`translate_endpoint_change`]), otherwise whole. Returns the translation, the
/// snapshot to publish, whether the shortcut applied, and `prev` itself: the caller drops it
/// after publishing (freeing the previous model and snapshot is CPU work no proxy should wait for).
fn translate_next(
    prev: Option<Previous>,
    model: Arc<MeshModel>,
    options: &Options,
) -> (Previous, bool, Option<Previous>) {
    if let Some(prev) = prev {
        if let Some(t) = translate_endpoint_change(&prev.model, &prev.translation, &model, options) {
            log_translation(&t);
            let published = Arc::new(crate::grpc::WithApiListeners::from_translation_reusing(
                t.snapshot.clone(),
                &prev.published,
            ));
            return (
                Previous {
                    model,
                    translation: t,
                    published,
                },
                true,
                Some(prev),
            );
        }
        return (translate_whole(model, options), false, Some(prev));
    }
    (translate_whole(model, options), false, None)
}

fn translate_whole(model: Arc<MeshModel>, options: &Options) -> Previous {
    let t = translate_logged(&model, options);
    let published = Arc::new(crate::grpc::WithApiListeners::from_translation(
        t.snapshot.clone(),
    ));
    Previous {
        model,
        translation: t,
        published,
    }
}

/// Waits for a change of `models`, then for `quiet` without further change (at most `max_wait`
/// after the first one). Returns false when the source is gone.
pub async fn debounced_change<T>(
    models: &mut watch::Receiver<T>,
    quiet: Duration,
    max_wait: Duration,
) -> bool {
    if models.changed().await.is_err() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    loop {
        let wake = (tokio::time::Instant::now() + quiet).min(deadline);
        tokio::select! {
            changed = models.changed() => {
                if changed.is_err() {
                    return true;
                }
            }
            _ = tokio::time::sleep_until(wake) => return true,
        }
        if tokio::time::Instant::now() >= deadline {
            return true;
        }
    }
}

/// How long a replaced model, translation and snapshot are kept before they are freed: longer
/// than pushing a change to 1,000 streams takes (~100 ms on two cores), so freeing them does not
/// slow the pushes down.
const RETIRE_AFTER: Duration = Duration::from_millis(500);

/// What the last rebuild replaced, freed [`RETIRE_AFTER`] later on a blocking thread. At most
/// one generation waits: retiring the next frees the one before at once (a burst of changes
/// does not pile models up in memory).
#[derive(Default)]
struct Retired(
    Arc<std::sync::Mutex<Option<Waiting>>>,
    Arc<std::sync::atomic::AtomicU64>,
);

/// A retired generation's number and contents.
type Waiting = (u64, Box<dyn Send>);

impl Retired {
    fn retire(&self, what: impl Send + 'static) {
        let id = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let before = self
            .0
            .lock()
            .ok()
            .and_then(|mut slot| slot.replace((id, Box::new(what))));
        if let Some(before) = before {
            tokio::task::spawn_blocking(move || drop(before));
        }
        let slot = self.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_AFTER).await;
            let mine = slot
                .lock()
                .ok()
                .and_then(|mut s| s.take_if(|(waiting, _)| *waiting == id));
            if let Some(mine) = mine {
                tokio::task::spawn_blocking(move || drop(mine));
            }
        });
    }
}

/// How often the model is translated again without any change, so that a TLS certificate that
/// expires (or comes within 14 days of it) while nothing else changes is taken off the gateway and
/// reported.
pub const RECHECK: Duration = Duration::from_secs(3600);

/// Writes an Event for every problem of `t` (an Ingress backend, host or path that is not
/// served, a TLS Secret that is not usable or expires soon). The sink deduplicates repeats.
pub fn report_problems(t: &Translation, events: &dyn EventSink) {
    for p in &t.problems {
        for e in problem_events(p) {
            events.report(&e.object, e.type_, e.reason, &e.message);
        }
    }
}

/// Translates the current model now and then after every debounced change, publishing each
/// snapshot on `out` and reporting problems to `events`. Returns when `models` closes.
pub async fn run(
    mut models: watch::Receiver<Arc<MeshModel>>,
    options: Options,
    quiet: Duration,
    out: watch::Sender<Arc<dyn MeshSnapshot>>,
    metrics: RebuildMetrics,
    events: Option<Arc<dyn EventSink>>,
    status: Option<Arc<dyn StatusWriter>>,
) {
    let max_wait = (quiet * 10).max(Duration::from_secs(1));
    let mut prev: Option<Previous> = None;
    let retired = Retired::default();
    let mut recheck = false;
    loop {
        let model = models.borrow_and_update().clone();
        let current = model.clone();
        let opts = options.clone();
        let started = Instant::now();
        // A recheck translates in full: the incremental path would reuse the previous verdicts.
        let last = prev.take().filter(|_| !recheck);
        let joined = tokio::task::spawn_blocking(move || translate_next(last, model, &opts)).await;
        match joined {
            Ok((next, incremental, replaced)) => {
                let took = started.elapsed();
                let t = &next.translation;
                metrics.rebuilds.inc();
                metrics.duration.observe(took.as_secs_f64());
                metrics.label_errors.inc_by(t.label_errors.len() as u64);
                metrics.problems.inc_by(t.problems.len() as u64);
                if let Some(events) = &events {
                    report_problems(t, events.as_ref());
                }
                if let Some(status) = &status {
                    status.write(desired_statuses(&current, &t.problems));
                }
                info!(
                    took_ms = took.as_millis() as u64,
                    incremental,
                    overridden_nodes = t.snapshot.overridden_nodes().count(),
                    "translated model"
                );
                let published: Arc<dyn MeshSnapshot> = next.published.clone();
                let was = out.send_replace(published);
                prev = Some(next);
                // The replaced model, translation and snapshot are freed once the streams have
                // had time to get the new one (off the runtime's workers: dropping them takes
                // milliseconds of CPU that would otherwise compete with the pushes).
                retired.retire((replaced, was));
            }
            Err(error) => warn!(%error, "translation panicked; keeping the previous snapshot"),
        }
        let changed = tokio::select! {
            changed = debounced_change(&mut models, quiet, max_wait) => Some(changed),
            _ = tokio::time::sleep(RECHECK) => None,
        };
        recheck = changed.is_none();
        if changed == Some(false) {
            debug!("model source closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops.
    struct Dropped(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn drops_after(count: &Arc<std::sync::atomic::AtomicUsize>, n: usize) -> bool {
        for _ in 0..100 {
            if count.load(std::sync::atomic::Ordering::SeqCst) == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_replaced_generation_is_freed_later_and_only_one_waits() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let retired = Retired::default();
        retired.retire(Dropped(count.clone()));
        tokio::time::sleep(RETIRE_AFTER / 2).await;
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "freed too early"
        );
        // A second one frees the first at once, and waits itself.
        retired.retire(Dropped(count.clone()));
        assert!(drops_after(&count, 1).await, "the first one waits on");
        tokio::time::sleep(RETIRE_AFTER / 4).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(RETIRE_AFTER).await;
        assert!(drops_after(&count, 2).await, "the second one is never freed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_rebuild_after_the_quiet_period() {
        let (tx, mut rx) = watch::channel(0u32);
        let waiter = tokio::spawn(async move {
            let ok = debounced_change(&mut rx, Duration::from_millis(100), Duration::from_secs(1)).await;
            (ok, tokio::time::Instant::now(), *rx.borrow())
        });
        let start = tokio::time::Instant::now();
        for i in 1..=5 {
            tx.send_replace(i);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (ok, at, value) = waiter.await.expect("join");
        assert!(ok);
        assert_eq!(value, 5);
        // last change at ~200 ms, then 100 ms quiet
        let waited = at - start;
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(400),
            "{waited:?}"
        );
    }

    /// Waits (in paused time) until `metrics` counted `n` rebuilds.
    async fn rebuilds_reach(metrics: &RebuildMetrics, n: u64) {
        for _ in 0..100_000 {
            if metrics.rebuilds.get() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} rebuilds, not {n}", metrics.rebuilds.get());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_model_is_translated_again_after_the_recheck_interval() {
        let (_models_tx, models) = watch::channel(Arc::new(MeshModel::default()));
        let empty: Arc<dyn MeshSnapshot> = Arc::new(traffic_xds::StaticSnapshot::default());
        let (out, _snapshots) = watch::channel(empty);
        let metrics = RebuildMetrics::register(&mut Registry::default());
        let task = tokio::spawn(run(
            models,
            Options::default(),
            Duration::from_millis(10),
            out,
            metrics.clone(),
            None,
            None,
        ));
        rebuilds_reach(&metrics, 1).await;
        tokio::time::sleep(RECHECK / 2).await;
        assert_eq!(metrics.rebuilds.get(), 1, "nothing changed yet");
        tokio::time::sleep(RECHECK).await;
        rebuilds_reach(&metrics, 2).await;
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn every_translation_gives_the_istio_objects_their_conditions() {
        use traffic_kube_source::istio_status_writer::RecordingStatusWriter;
        let yaml = r#"
services:
- {name: reviews, clusterIPs: [10.96.0.10], ports: [{name: http, port: 9080, targetPort: 9080}], selector: {app: reviews}}
istio:
  virtualServices:
  - metadata: {name: reviews, generation: 4}
    spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v9}}]}]}
"#;
        let model = Arc::new(MeshModel::from_yaml_str(yaml).expect("model"));
        let (_models_tx, models) = watch::channel(model);
        let empty: Arc<dyn MeshSnapshot> = Arc::new(traffic_xds::StaticSnapshot::default());
        let (out, _snapshots) = watch::channel(empty);
        let metrics = RebuildMetrics::register(&mut Registry::default());
        let recorder = RecordingStatusWriter::default();
        let task = tokio::spawn(run(
            models,
            Options::default(),
            Duration::from_millis(10),
            out,
            metrics.clone(),
            None,
            Some(Arc::new(recorder.clone())),
        ));
        rebuilds_reach(&metrics, 1).await;
        task.abort();
        let written = recorder.written.lock().expect("lock").clone();
        let status = &written[0][0];
        assert_eq!(
            (status.kind.as_str(), status.name.as_str()),
            ("VirtualService", "reviews")
        );
        let refs = &status.conditions[1];
        assert_eq!(
            (refs.type_, refs.status, refs.reason.as_str()),
            ("ResolvedRefs", false, "BackendNotFound")
        );
        assert_eq!(refs.observed_generation, Some(4));
        assert!(refs.message.contains("\"v9\""), "{}", refs.message);
    }

    #[tokio::test(start_paused = true)]
    async fn a_constant_stream_of_changes_still_rebuilds_after_max_wait() {
        let (tx, mut rx) = watch::channel(0u32);
        let waiter = tokio::spawn(async move {
            debounced_change(&mut rx, Duration::from_millis(100), Duration::from_millis(500)).await;
            tokio::time::Instant::now()
        });
        let start = tokio::time::Instant::now();
        let feeder = tokio::spawn(async move {
            for i in 1..100 {
                tx.send_replace(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let at = waiter.await.expect("join");
        feeder.abort();
        assert!(at - start <= Duration::from_millis(600), "{:?}", at - start);
    }
}
