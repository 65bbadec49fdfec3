//! The loop that rebuilds the model from the stores after each (debounced) change and publishes
//! it when it differs from the last one.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use traffic_translate::model::MeshModel;

use super::{SourceConfig, SourceMetrics, Stores, Watched};
use crate::convert::{build_model, Inputs};
use crate::events::{EventSink, EventType};
use crate::problems::{label_problems, INVALID_LABEL_REASON};

pub(super) fn report_label_problems(
    model: &MeshModel,
    sink: Option<&dyn EventSink>,
    metrics: &SourceMetrics,
) {
    for problem in label_problems(model) {
        metrics.label_errors.inc();
        debug!(
            kind = %problem.object.kind,
            namespace = %problem.object.namespace,
            name = %problem.object.name,
            label = %problem.error.label,
            "invalid label"
        );
        if let Some(sink) = sink {
            sink.report(
                &problem.object,
                EventType::Warning,
                INVALID_LABEL_REASON,
                &problem.message(),
            );
        }
    }
}

/// When the earliest node-controller grace among the pods of `inputs` ends, as a Tokio instant
/// (a little after it, so the rebuild then sees it ended).
fn grace_expiry(inputs: &Inputs) -> Option<tokio::time::Instant> {
    let now = inputs.now?;
    let at = crate::readiness::next_expiry(inputs.pods.iter().map(|p| &**p), now)?;
    let wait = at.duration_since(now).unwrap_or_default() + Duration::from_millis(100);
    Some(tokio::time::Instant::now() + wait)
}

/// Rebuild and publish models until `pokes` closes (all watches ended) or every receiver of
/// `tx` is gone. Each poke (of any resource) means "something changed"; pokes arriving within
/// `debounce` of each other (up to `max_delay` in total) give one rebuild.
pub async fn run_model_loop(
    stores: Stores,
    mut pokes: mpsc::Receiver<Watched>,
    tx: watch::Sender<Arc<MeshModel>>,
    config: SourceConfig,
    metrics: SourceMetrics,
    label_events: Option<Arc<dyn EventSink>>,
) {
    // When a pod's node-controller grace (crate::readiness) ends, the model changes although no
    // watch event comes: rebuild then.
    let mut expiry: Option<tokio::time::Instant> = None;
    loop {
        let first = match expiry {
            Some(at) => tokio::select! {
                poke = pokes.recv() => poke,
                () = tokio::time::sleep_until(at) => Some(Watched::Pods),
            },
            None => pokes.recv().await,
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + config.max_delay;
        let mut burst = 1usize;
        loop {
            let quiet = tokio::time::Instant::now() + config.debounce;
            match tokio::time::timeout_at(quiet.min(deadline), pokes.recv()).await {
                Ok(Some(_)) => burst += 1,
                Ok(None) | Err(_) => break,
            }
        }
        let inputs = stores.inputs();
        let mut model = build_model(&inputs);
        // Unchanged Services and pods: the published model's allocations (compared by pointer
        // below and by the translation's endpoint-change shortcut).
        model.share_unchanged(&tx.borrow());
        expiry = grace_expiry(&inputs);
        if **tx.borrow() == model {
            metrics.unchanged_models.inc();
            debug!(first = first.as_str(), burst, "model unchanged");
            continue;
        }
        report_label_problems(&model, label_events.as_deref(), &metrics);
        metrics.models.inc();
        debug!(
            first = first.as_str(),
            burst,
            services = model.services.len(),
            pods = model.pods.len(),
            "model published"
        );
        if tx.send(Arc::new(model)).is_err() {
            info!("no model receivers left, stopping");
            return;
        }
    }
    warn!("all watches ended, model loop stops");
}
