//! A snapshot as the ADS streams see it: numbered, timestamped, and its per-node views computed
//! once and shared (reusing the previous snapshot's type views where nothing changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use traffic_translate::snapshot::MeshSnapshot;

use crate::{View, SECRET};

/// A snapshot as the streams see it: numbered and timestamped when the server received it.
#[derive(Clone)]
pub(crate) struct Published {
    pub(crate) snapshot: Arc<dyn MeshSnapshot>,
    pub(crate) generation: u64,
    pub(crate) at: Instant,
    /// view key -> resources, computed by the first stream that needs them.
    views: Views,
    /// The views of the snapshot before: a type whose resources did not change keeps its type
    /// view (version, encodings) from there instead of hashing and encoding them again.
    previous: Views,
}

type Views = Arc<Mutex<HashMap<String, Arc<View>>>>;

impl Published {
    pub(crate) fn new(
        snapshot: Arc<dyn MeshSnapshot>,
        generation: u64,
        previous: Option<&Published>,
    ) -> Self {
        Published {
            snapshot,
            generation,
            at: Instant::now(),
            views: Arc::default(),
            previous: previous.map(|p| p.views.clone()).unwrap_or_default(),
        }
    }

    /// The resources of `node`, shared with every node of the same view; without secrets unless
    /// `secrets` (a stream that may not receive secrets never sees one, whatever the snapshot
    /// holds for its node).
    pub(crate) fn view(&self, node: &str, secrets: bool) -> Arc<View> {
        let mut key = self.snapshot.view_key(node);
        if !secrets {
            key.push_str("\0no-secrets");
        }
        let build = |key: &str| {
            let mut resources = self.snapshot.for_node(node);
            if !secrets {
                resources.by_type.remove(SECRET);
            }
            let prev = self
                .previous
                .lock()
                .ok()
                .and_then(|views| views.get(key).cloned());
            Arc::new(View::reusing(resources, prev.as_deref()))
        };
        let Ok(mut views) = self.views.lock() else {
            return build(&key);
        };
        if let Some(view) = views.get(&key) {
            return view.clone();
        }
        let view = build(&key);
        views.insert(key, view.clone());
        view
    }
}
