//! One `prepare`/`start` at a time per pod uid, for every runtime: a concurrent one would see the
//! other's freshly created, not yet started container (or task) as stale and remove it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Per-pod async locks; an entry lives only while someone holds or waits for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl PodLocks {
    /// Runs `work` while holding `pod_uid`'s lock.
    pub(crate) async fn run<T>(&self, pod_uid: &str, work: impl Future<Output = T>) -> T {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(pod_uid.to_string()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            work.await
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and we hold it: nobody else is starting this pod.
        if Arc::strong_count(&lock) == 2 {
            map.remove(pod_uid);
        }
        result
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_for_one_pod_runs_one_at_a_time_and_the_entry_goes_away_after() {
        let locks = PodLocks::default();
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = (0..4).map(|_| {
            let (locks, inside) = (locks.clone(), inside.clone());
            tokio::spawn(async move {
                locks
                    .run("uid-1", async {
                        let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        now
                    })
                    .await
            })
        });
        for run in runs {
            assert_eq!(run.await.ok(), Some(0), "nobody else was inside");
        }
        assert_eq!(locks.len(), 0);
    }
}
