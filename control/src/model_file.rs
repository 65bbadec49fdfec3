//! A static model file as a model source: loaded at start (an error then is fatal) and re-read
//! when its modification time, size or content changes; an unreadable or invalid revision is logged
//! and the last good model kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};
use traffic_translate::model::{MeshModel, ModelError};

/// What identifies a revision of the file cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Loads `path` and watches it; the returned receiver always holds the last good model.
pub fn watch_model_file(
    path: PathBuf,
    poll: Duration,
) -> Result<(watch::Receiver<Arc<MeshModel>>, tokio::task::JoinHandle<()>), ModelError> {
    let mut last_stamp = stamp(&path);
    let model = MeshModel::from_yaml_file(&path)?;
    let (tx, rx) = watch::channel(Arc::new(model));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = stamp(&path);
            if now == last_stamp {
                continue;
            }
            last_stamp = now;
            match MeshModel::from_yaml_file(&path) {
                Ok(model) => {
                    if **tx.borrow() != model {
                        info!(path = %path.display(), "model file changed");
                        tx.send_replace(Arc::new(model));
                    }
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "model file invalid; keeping the last good model")
                }
            }
        }
    });
    Ok((rx, task))
}
