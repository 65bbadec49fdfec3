//! xDS tokens of the sidecars: per enabled pod, a ServiceAccount token of audience
//! `traffic-control` bound to the pod (TokenRequest API), written into a host directory that the
//! pod's sidecar mounts read-only, and renewed before it expires.
//!
//! - [`schedule`] (pure): renewal at 80 % of the lifetime (or a forced shorter period), backoff.
//! - [`source`]: the [`source::TokenSource`] seam, [`source::KubeTokenSource`] and a fake.
//! - [`files`]: the token files (atomic replace, owner the sidecar's uid).
//!
//! The sidecar's bootstrap reads the token through a file-based SDS secret that Envoy re-reads
//! when the file is replaced (`traffic_sidecar::bootstrap::XdsAuth`), so a renewal needs no
//! restart. A pod without a token gets no sidecar (the start step fails with an Event and the
//! next round retries, after a backoff); a pod whose sidecar is being replaced keeps its
//! redirect meanwhile (fail-closed). A token is removed when its pod is no longer enabled.

pub mod files;
pub mod schedule;
pub mod source;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};
use traffic_kube_source::events::{EventSink, EventType};
use traffic_sidecar::PodRef;
use traffic_translate::snapshot::ObjectRef;

use files::{FilesError, TokenFiles};
use source::{SourceError, TokenSource};

/// `Event` reason when a pod's token cannot be had.
pub const EVENT_REASON: &str = "XdsTokenFailed";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write the token: {0}")]
    Files(#[from] FilesError),
    #[error("no token yet for pod {0} (its service account is not known)")]
    Unknown(String),
    #[error("no token for pod {pod_uid}: retrying in {}s after {failures} failure(s)", retry_in.as_secs())]
    Backoff {
        pod_uid: String,
        failures: u32,
        retry_in: Duration,
    },
}

/// How tokens are requested and renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// Requested lifetime (at least the API's 600 s).
    pub lifetime: Duration,
    /// Renew after this long even if the token is young (tests force renewals with it).
    pub renew_every: Option<Duration>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            lifetime: Duration::from_secs(3600),
            renew_every: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    pod: PodRef,
    service_account: String,
    /// A token is on disk and valid until then.
    valid_until: Option<Instant>,
    /// Next renewal (or retry) is due then.
    due: Instant,
    failures: u32,
}

/// See the module docs.
pub struct TokenManager {
    source: Arc<dyn TokenSource>,
    files: TokenFiles,
    config: TokenConfig,
    events: Arc<dyn EventSink>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Only this namespace's token directories are pruned (tests sharing a node).
    namespace: Option<String>,
}

impl TokenManager {
    pub fn new(
        source: Arc<dyn TokenSource>,
        files: TokenFiles,
        config: TokenConfig,
        events: Arc<dyn EventSink>,
        namespace: Option<String>,
    ) -> Self {
        TokenManager {
            source,
            files,
            config,
            events,
            entries: Mutex::new(HashMap::new()),
            namespace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods that should have a token (the enabled ones, with their service account): those
    /// new get one now (concurrently), those gone lose theirs, on disk too. Call each round
    /// before applying plans.
    pub async fn sync(&self, pods: &[(PodRef, String)]) {
        let keep: BTreeSet<&str> = pods.iter().map(|(p, _)| p.uid.as_str()).collect();
        let gone: Vec<PodRef> = {
            let mut entries = self.lock();
            let gone = entries
                .values()
                .filter(|e| !keep.contains(e.pod.uid.as_str()))
                .map(|e| e.pod.clone())
                .collect();
            entries.retain(|uid, _| keep.contains(uid.as_str()));
            for (pod, sa) in pods {
                let e = entries.entry(pod.uid.clone()).or_insert_with(|| Entry {
                    pod: pod.clone(),
                    service_account: sa.clone(),
                    valid_until: None,
                    due: Instant::now(),
                    failures: 0,
                });
                if e.service_account != *sa {
                    // A pod's service account cannot change, but a recreated object could reuse
                    // nothing else: be safe and renew now.
                    e.service_account = sa.clone();
                    e.due = Instant::now();
                }
            }
            gone
        };
        for pod in gone {
            self.remove_files(&pod);
        }
        self.prune_orphans(&keep);
        self.renew_due().await;
    }

    fn remove_files(&self, pod: &PodRef) {
        match self.files.remove(pod) {
            Ok(()) => debug!(pod_uid = %pod.uid, "xds token removed"),
            Err(error) => warn!(pod_uid = %pod.uid, %error, "cannot remove an xds token"),
        }
    }

    /// Directories of pods this agent does not know (left by a previous agent).
    fn prune_orphans(&self, keep: &BTreeSet<&str>) {
        let namespaces = match &self.namespace {
            Some(ns) => vec![ns.clone()],
            None => self.files.namespaces(),
        };
        for ns in namespaces {
            for uid in self.files.pods_in(&ns) {
                if !keep.contains(uid.as_str()) {
                    self.remove_files(&PodRef {
                        uid,
                        namespace: ns.clone(),
                        name: String::new(),
                    });
                }
            }
        }
    }

    /// The pod's token directory for its sidecar, once it holds a valid token; otherwise the
    /// reason (requested now unless a backoff says to wait).
    pub async fn ensure(&self, pod: &PodRef) -> Result<PathBuf, TokenError> {
        let entry = self.lock().get(&pod.uid).cloned();
        let Some(entry) = entry else {
            return Err(TokenError::Unknown(pod.uid.clone()));
        };
        let now = Instant::now();
        if entry.valid_until.is_some_and(|v| v > now) {
            return Ok(self.files.dir(pod)?);
        }
        if entry.failures > 0 && entry.due > now {
            return Err(TokenError::Backoff {
                pod_uid: pod.uid.clone(),
                failures: entry.failures,
                retry_in: entry.due - now,
            });
        }
        self.renew(&entry).await
    }

    /// Renews every token that is due; returns when the next one is.
    pub async fn renew_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<Entry> = self.lock().values().filter(|e| e.due <= now).cloned().collect();
        for e in due {
            // Failures are recorded and reported by `renew`.
            let _ = self.renew(&e).await;
        }
        self.lock().values().map(|e| e.due).min()
    }

    async fn renew(&self, entry: &Entry) -> Result<PathBuf, TokenError> {
        let pod = &entry.pod;
        let seconds = schedule::requested_seconds(self.config.lifetime);
        let result = match self.source.request(pod, &entry.service_account, seconds).await {
            Ok(issued) => self
                .files
                .write(pod, &issued.token)
                .map(|dir| (dir, issued.lifetime))
                .map_err(TokenError::from),
            Err(e) => Err(e.into()),
        };
        let now = Instant::now();
        let mut entries = self.lock();
        // Removed meanwhile (pod gone): forget the token again.
        let Some(e) = entries.get_mut(&pod.uid) else {
            drop(entries);
            if result.is_ok() {
                self.remove_files(pod);
            }
            return Err(TokenError::Unknown(pod.uid.clone()));
        };
        match result {
            Ok((dir, lifetime)) => {
                let after = schedule::renew_after(lifetime, self.config.renew_every);
                let renewal = e.valid_until.is_some();
                e.valid_until = Some(now + lifetime);
                e.due = now + after;
                e.failures = 0;
                info!(pod_uid = %pod.uid, namespace = %pod.namespace, name = %pod.name,
                    lifetime_s = lifetime.as_secs(), renew_in_s = after.as_secs(), renewal, "xds token written");
                Ok(dir)
            }
            Err(error) => {
                e.failures = e.failures.saturating_add(1);
                let wait = schedule::backoff(e.failures);
                e.due = now + wait;
                let failures = e.failures;
                drop(entries);
                warn!(pod_uid = %pod.uid, namespace = %pod.namespace, name = %pod.name,
                    failures, retry_in_s = wait.as_secs(), %error, "cannot get an xds token");
                self.events.report(
                    &ObjectRef {
                        kind: "Pod".into(),
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                    },
                    EventType::Warning,
                    EVENT_REASON,
                    &format!("cannot get a token for the control plane (retrying): {error}"),
                );
                Err(error)
            }
        }
    }

    /// Renews tokens as they fall due, until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.renew_due().await;
            // New pods are handled by `sync`; wake at least every few seconds for them anyway.
            let cap = Instant::now() + Duration::from_secs(5);
            let wake = next.map(|n| n.min(cap)).unwrap_or(cap);
            tokio::time::sleep_until(wake).await;
        }
    }
}

#[cfg(test)]
mod tests;
