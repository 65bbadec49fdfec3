#![expect(clippy::unwrap_used, reason = "tests")]
use super::*;
use crate::reconcile::Annotations;
use std::collections::BTreeMap;
use std::sync::Mutex;
use traffic_redirect::{Redirected, Settings};
use traffic_sidecar::fake::{AdminAnswer, FakeAdmin, FakeRuntime, StartFailure};
use traffic_sidecar::Sandbox;

type Log = Arc<Mutex<Vec<String>>>;

/// The fake runtime, logging into the shared log so the order across seams is visible.
struct Logged {
    inner: FakeRuntime,
    log: Log,
    /// Answer `prepare` with `None`, as a runtime without that ability does.
    cannot_prepare: std::sync::atomic::AtomicBool,
}

impl ContainerRuntime for Logged {
    async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        self.inner.sandbox(pod_uid).await
    }
    async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
        self.inner.sidecars().await
    }
    async fn prepare(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Sidecar>, RuntimeError> {
        self.log.lock().unwrap().push(format!("prepare {}", spec.pod.uid));
        if self.cannot_prepare.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.prepare(spec, sandbox).await
    }
    async fn start(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Sidecar, RuntimeError> {
        let r = self.inner.start(spec, sandbox).await;
        self.log.lock().unwrap().push(format!(
            "start {}{}",
            spec.pod.uid,
            if r.is_ok() { "" } else { " failed" }
        ));
        r
    }
    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let pod = self
            .inner
            .current()
            .into_iter()
            .find(|s| s.container_id == container_id)
            .map(|s| s.pod.uid);
        self.log
            .lock()
            .unwrap()
            .push(format!("remove {}", pod.unwrap_or_default()));
        self.inner.remove(container_id).await
    }
}

#[derive(Default)]
struct FakeRedirector {
    pods: Mutex<BTreeMap<PodKey, PodRedirect>>,
    log: Log,
}

impl Redirector for FakeRedirector {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }
    fn enable(&self, pod: &PodRedirect) -> Result<(), RedirectError> {
        self.log.lock().unwrap().push(format!("enable {}", pod.key));
        self.pods.lock().unwrap().insert(pod.key.clone(), pod.clone());
        Ok(())
    }
    fn disable(&self, key: &PodKey) -> Result<(), RedirectError> {
        self.log.lock().unwrap().push(format!("disable {key}"));
        self.pods.lock().unwrap().remove(key);
        Ok(())
    }
    fn list(&self) -> Result<Vec<Redirected>, RedirectError> {
        Ok(self
            .pods
            .lock()
            .unwrap()
            .values()
            .map(|p| Redirected {
                key: p.key.clone(),
                mode: Mode::Ebpf,
                settings: p.settings.clone(),
            })
            .collect())
    }
}

#[derive(Default)]
struct FakeAnnotator {
    pods: Mutex<BTreeMap<String, Annotations>>,
    log: Log,
}

impl Annotator for FakeAnnotator {
    fn annotate<'a>(
        &'a self,
        pod: &'a PodRef,
        proxy: &'a str,
        mode: Option<Mode>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        self.log.lock().unwrap().push(format!(
            "{} {}",
            if proxy.is_empty() { "clear" } else { "annotate" },
            pod.uid
        ));
        self.pods.lock().unwrap().insert(
            pod.uid.clone(),
            Annotations {
                proxy: Some(proxy.to_string()),
                mode: mode.map(|m| m.to_string()),
            },
        );
        Box::pin(async { Ok(()) })
    }
}

#[derive(Default)]
struct FakeEvents(Mutex<Vec<(String, String)>>);

impl EventSink for FakeEvents {
    fn report(&self, object: &ObjectRef, _: EventType, reason: &str, _: &str) {
        self.0
            .lock()
            .unwrap()
            .push((object.name.clone(), reason.to_string()));
    }
}

struct World {
    admin: Arc<LoggedAdmin>,
    applier: Applier<Logged>,
    redirector: Arc<FakeRedirector>,
    annotator: Arc<FakeAnnotator>,
    events: Arc<FakeEvents>,
    log: Log,
}

/// The fake admin, logging `admin` into the shared log on every GET.
struct LoggedAdmin {
    inner: FakeAdmin,
    log: Log,
}

impl ProxyAdmin for LoggedAdmin {
    fn get<'a>(
        &'a self,
        netns: &'a std::path::Path,
        port: u16,
        path: &'a str,
    ) -> BoxFuture<'a, Result<traffic_sidecar::netns::Response, traffic_sidecar::netns::NetnsError>> {
        self.log.lock().unwrap().push("admin".into());
        self.inner.get(netns, port, path)
    }
}

fn world() -> World {
    let log: Log = Arc::default();
    let admin = Arc::new(LoggedAdmin {
        inner: FakeAdmin::new(),
        log: log.clone(),
    });
    let runtime = Arc::new(Logged {
        inner: FakeRuntime::new(),
        log: log.clone(),
        cannot_prepare: Default::default(),
    });
    let redirector = Arc::new(FakeRedirector {
        log: log.clone(),
        ..Default::default()
    });
    let annotator = Arc::new(FakeAnnotator {
        log: log.clone(),
        ..Default::default()
    });
    let events = Arc::new(FakeEvents::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let applier = Applier {
        runtime,
        redirector: redirector.clone(),
        annotator: annotator.clone(),
        events: events.clone(),
        metrics: AgentMetrics::register(&mut registry),
        template: SidecarTemplate {
            image: "envoy:test".into(),
            bootstrap: BootstrapOptions::new("10.201.0.1:18000"),
            xds_ca_file: None,
        },
        admin: admin.clone(),
        listener_wait: ListenerWait {
            timeout: std::time::Duration::from_millis(200),
            every: std::time::Duration::from_millis(10),
            ..ListenerWait::default()
        },
        sidecar_failure: SidecarFailure::Closed,
        concurrency: 4,
        namespace: None,
        tokens: None,
    };
    World {
        applier,
        redirector,
        annotator,
        events,
        admin,
        log,
    }
}

fn want(uid: &str, enabled: bool) -> DesiredPod {
    DesiredPod {
        pod: PodRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("pod-{uid}"),
        },
        service_account: "default".into(),
        enabled,
        settings: Settings::default(),
        problems: vec![],
        ineligible: None,
    }
}

impl World {
    async fn round(&self, desired: &[DesiredPod]) -> Vec<String> {
        self.log.lock().unwrap().clear();
        let ann = self.annotator.pods.lock().unwrap().clone();
        self.applier.round(desired, ann).await.unwrap();
        self.log.lock().unwrap().clone()
    }
    fn runtime(&self) -> &FakeRuntime {
        &self.applier.runtime.inner
    }
    fn sidecar_of(&self, uid: &str) -> Option<Sidecar> {
        self.runtime().current().into_iter().find(|s| s.pod.uid == uid)
    }
}

#[tokio::test]
async fn enabling_starts_waits_for_listeners_then_redirects_then_annotates_and_a_second_round_does_nothing() {
    let w = world();
    w.runtime().add_sandbox("a");
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["start a", "admin", "enable a", "annotate a"]
    );
    let sidecar = w.sidecar_of("a").unwrap();
    let ann = w.annotator.pods.lock().unwrap()["a"].clone();
    assert_eq!(ann.proxy.as_deref(), Some(sidecar.container_id.as_str()));
    assert_eq!(ann.mode.as_deref(), Some("ebpf"));
    let redirect = w.redirector.pods.lock().unwrap()[&PodKey::new("a").unwrap()].clone();
    assert_eq!(redirect.proxy_cgroups, vec![sidecar.cgroup.clone().unwrap()]);
    assert!(redirect.cgroup.ends_with("poda"));
    let spec = &w.runtime().started_specs()[0];
    assert_eq!((spec.uid, spec.image.as_str()), (1337, "envoy:test"));
    assert!(spec.bootstrap.contains("pod-a.default"), "node id in bootstrap");
    assert!(w.round(&[want("a", true)]).await.is_empty());
}

#[tokio::test]
async fn a_sidecar_is_redirected_to_only_once_its_outbound_listener_is_active() {
    let w = world();
    let sandbox = w.runtime().add_sandbox("a");
    w.admin.inner.script(
        &sandbox.netns(),
        vec![
            AdminAnswer::Listeners(vec![]),
            AdminAnswer::Listeners(vec![8900]),
            AdminAnswer::Listeners(vec![8900, 15001]),
        ],
    );
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["start a", "admin", "admin", "admin", "enable a", "annotate a"]
    );
    assert_eq!(w.applier.metrics.listener_wait_failures.get(), 0);
}

#[tokio::test]
async fn listeners_that_never_arrive_leave_the_pod_unredirected_with_an_event_and_a_later_round_redirects() {
    let w = world();
    let sandbox = w.runtime().add_sandbox("a");
    w.admin
        .inner
        .script(&sandbox.netns(), vec![AdminAnswer::Listeners(vec![8900])]);
    let log = w.round(&[want("a", true)]).await;
    assert_eq!(log.first().map(String::as_str), Some("start a"));
    assert!(!log.iter().any(|l| l.starts_with("enable")), "{log:?}");
    assert!(
        w.redirector.pods.lock().unwrap().is_empty(),
        "never redirected to an unconfigured sidecar"
    );
    assert!(
        w.sidecar_of("a").is_some(),
        "the sidecar keeps running (its config may still come)"
    );
    assert!(w
        .events
        .0
        .lock()
        .unwrap()
        .contains(&("pod-a".into(), "SidecarNotConfigured".into())));
    assert_eq!(w.applier.metrics.listener_wait_failures.get(), 1);
    // The control plane answers: the next round redirects to the same sidecar.
    w.admin.inner.script(&sandbox.netns(), vec![]);
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["admin", "enable a", "annotate a"]
    );
}

#[tokio::test]
async fn a_crashed_sidecar_is_replaced_while_the_redirect_stays_pointing_its_exclusion_at_the_replacement() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.round(&[want("a", true)]).await;
    let old = w.sidecar_of("a").unwrap();
    w.runtime().crash(&old.container_id);
    let log = w.round(&[want("a", true)]).await;
    assert_eq!(
        log,
        [
            "remove a",
            "prepare a",
            "enable a",
            "start a",
            "admin",
            "enable a",
            "annotate a"
        ]
    );
    assert!(
        !log.iter().any(|l| l.starts_with("disable")),
        "fail-closed: the redirect never goes"
    );
    let new = w.sidecar_of("a").unwrap();
    assert_ne!(new.container_id, old.container_id);
    let redirect = w.redirector.pods.lock().unwrap()[&PodKey::new("a").unwrap()].clone();
    assert_eq!(redirect.proxy_cgroups, vec![new.cgroup.clone().unwrap()]);
    assert_eq!(
        w.annotator.pods.lock().unwrap()["a"].proxy.as_deref(),
        Some(new.container_id.as_str())
    );
    assert_eq!(w.applier.metrics.sidecar_restarts.get(), 1);
}

#[tokio::test]
async fn a_failed_fail_closed_restart_keeps_the_redirect_and_reports_an_event() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.round(&[want("a", true)]).await;
    w.runtime().crash(&w.sidecar_of("a").unwrap().container_id);
    w.runtime().fail_start("a", Some(StartFailure::NotReady));
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["remove a", "prepare a", "enable a", "start a failed", "clear a"]
    );
    assert_eq!(
        w.redirector.pods.lock().unwrap().len(),
        1,
        "connections stay refused rather than bypass the proxy"
    );
    assert!(w.runtime().current().is_empty(), "the failed replacement is gone");
    assert!(w
        .events
        .0
        .lock()
        .unwrap()
        .contains(&("pod-a".into(), "SidecarStartFailed".into())));
    // Once starting works again, the next round converges.
    w.runtime().fail_start("a", None);
    assert_eq!(
        w.round(&[want("a", true)]).await,
        [
            "prepare a",
            "enable a",
            "start a",
            "admin",
            "enable a",
            "annotate a"
        ]
    );
}

#[tokio::test]
async fn a_runtime_that_cannot_prepare_a_sidecar_gets_a_fail_open_restart() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.round(&[want("a", true)]).await;
    w.applier
        .runtime
        .cannot_prepare
        .store(true, std::sync::atomic::Ordering::SeqCst);
    w.runtime().crash(&w.sidecar_of("a").unwrap().container_id);
    assert_eq!(
        w.round(&[want("a", true)]).await,
        [
            "remove a",
            "prepare a",
            "disable a",
            "start a",
            "admin",
            "enable a",
            "annotate a"
        ]
    );
    let new = w.sidecar_of("a").unwrap();
    let redirect = w.redirector.pods.lock().unwrap()[&PodKey::new("a").unwrap()].clone();
    assert_eq!(redirect.proxy_cgroups, vec![new.cgroup.clone().unwrap()]);
}

#[tokio::test]
async fn fail_open_takes_the_redirect_away_for_the_restart_and_a_failed_restart_leaves_it_off() {
    let mut w = world();
    w.applier.sidecar_failure = SidecarFailure::Open;
    w.runtime().add_sandbox("a");
    w.round(&[want("a", true)]).await;
    w.runtime().crash(&w.sidecar_of("a").unwrap().container_id);
    assert_eq!(
        w.round(&[want("a", true)]).await,
        [
            "disable a",
            "remove a",
            "start a",
            "admin",
            "enable a",
            "annotate a"
        ]
    );
    w.runtime().crash(&w.sidecar_of("a").unwrap().container_id);
    w.runtime().fail_start("a", Some(StartFailure::NotReady));
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["disable a", "remove a", "start a failed", "clear a"]
    );
    assert!(w.redirector.pods.lock().unwrap().is_empty());
}

#[tokio::test]
async fn one_failing_pod_does_not_block_the_others() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.runtime().add_sandbox("b");
    w.runtime().fail_start("a", Some(StartFailure::Fails));
    let mut log = w.round(&[want("a", true), want("b", true)]).await;
    log.sort();
    assert_eq!(
        log,
        ["admin", "annotate b", "enable b", "start a failed", "start b"]
    );
    assert_eq!(w.applier.metrics.sidecar_errors.get(), 1);
}

#[tokio::test]
async fn a_pod_without_sandbox_waits_quietly() {
    let w = world();
    assert!(w.round(&[want("a", true)]).await.is_empty());
    assert!(w.events.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_restarted_agent_adopts_what_it_finds_and_removes_orphans() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.runtime().add_sandbox("gone");
    w.round(&[want("a", true), want("gone", true)]).await;
    // A new agent (same node state, fresh memory): "gone" was deleted while it was down.
    let log = w.round(&[want("a", true)]).await;
    assert_eq!(log, ["disable gone", "remove gone"]);
    assert!(w.sidecar_of("a").is_some());
}

#[tokio::test]
async fn a_down_runtime_skips_the_round_without_touching_anything() {
    let w = world();
    w.runtime().add_sandbox("a");
    w.round(&[want("a", true)]).await;
    w.runtime().set_down(true);
    let ann = w.annotator.pods.lock().unwrap().clone();
    assert!(w.applier.round(&[want("a", false)], ann).await.is_err());
    assert_eq!(w.redirector.pods.lock().unwrap().len(), 1);
    assert_eq!(w.applier.metrics.observe_errors.get(), 1);
}

#[test]
fn the_annotation_patch_sets_or_clears_both_annotations() {
    assert_eq!(
        annotation_patch("abc", Some(Mode::Iptables)),
        serde_json::json!({"metadata": {"annotations": {"traffic.envoy.proxy": "abc", "traffic.redirect.mode": "iptables"}}})
    );
    assert_eq!(
        annotation_patch("", None),
        serde_json::json!({"metadata": {"annotations": {"traffic.envoy.proxy": "", "traffic.redirect.mode": null}}})
    );
}

/// The applier with a token manager on the fake TokenRequest source.
fn world_with_tokens(
    name: &str,
) -> (
    World,
    Arc<crate::xds_token::source::FakeTokenSource>,
    std::path::PathBuf,
) {
    use crate::xds_token::{files::TokenFiles, TokenConfig, TokenManager};
    let mut w = world();
    let root = std::env::temp_dir().join(format!("apply-tokens-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let source = Arc::new(crate::xds_token::source::FakeTokenSource::default());
    w.applier.tokens = Some(Arc::new(TokenManager::new(
        source.clone(),
        TokenFiles {
            root: root.clone(),
            owner: None,
        },
        TokenConfig::default(),
        w.events.clone(),
        None,
    )));
    (w, source, root)
}

#[tokio::test]
async fn with_tokens_a_sidecar_starts_only_with_its_pods_token_directory_mounted() {
    let (w, _source, root) = world_with_tokens("mount");
    w.runtime().add_sandbox("a");
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["start a", "admin", "enable a", "annotate a"]
    );
    let spec = &w.runtime().started_specs()[0];
    let dir = spec.token_dir.clone().unwrap();
    assert_eq!(dir, root.join("default/a"));
    let token = std::fs::read_to_string(dir.join("xds-token.yaml")).unwrap();
    assert!(token.contains("Bearer fake-1-default-pod-a"), "{token}");
    // Disabled: the sidecar goes, and so does its token.
    w.round(&[want("a", false)]).await;
    assert!(!dir.exists(), "the token is removed with the sidecar");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn without_a_token_no_sidecar_starts_an_event_says_why_and_a_later_round_starts_it() {
    let (w, source, root) = world_with_tokens("fail");
    w.runtime().add_sandbox("a");
    source.fail(true);
    let log = w.round(&[want("a", true)]).await;
    assert!(log.is_empty(), "no sidecar, no redirect: {log:?}");
    assert!(w.sidecar_of("a").is_none());
    let events = w.events.0.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|(pod, reason)| pod == "pod-a" && reason == "XdsTokenFailed"),
        "{events:?}"
    );
    source.fail(false);
    // The backoff (1 s) has to pass before the next attempt.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        w.round(&[want("a", true)]).await,
        ["start a", "admin", "enable a", "annotate a"]
    );
    let _ = std::fs::remove_dir_all(&root);
}
