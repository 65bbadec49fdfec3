//! In-memory fakes for the agent's unit tests: a [`ContainerRuntime`] (sandboxes you declare,
//! sidecars that "run" as soon as they are started, injectable failures, a record of calls) and a
//! [`ProxyAdmin`] (Envoy admin answers scripted per pod netns).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use futures_util::future::BoxFuture;

use crate::admin::ProxyAdmin;
use crate::netns::{NetnsError, Response};
use crate::{ContainerRuntime, RuntimeError, Sandbox, Sidecar, SidecarSpec, SidecarState};

/// A call the fake received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Sandbox { pod_uid: String },
    Sidecars,
    Prepare { pod_uid: String },
    Start { pod_uid: String },
    Remove { container_id: String },
}

/// A failure to inject into `start` for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// `start` fails with [`RuntimeError::Runtime`]; nothing is created.
    Fails,
    /// `start` fails with [`RuntimeError::NotReady`]; nothing is left behind (like the real one).
    NotReady,
}

#[derive(Debug, Default)]
struct Inner {
    sandboxes: HashMap<String, Sandbox>,
    sidecars: BTreeMap<String, Sidecar>,
    start_failures: HashMap<String, StartFailure>,
    /// Every method fails with `RuntimeError::Runtime` while set (runtime down).
    down: bool,
    calls: Vec<Call>,
    next_id: u64,
    specs: Vec<SidecarSpec>,
}

/// See the module docs. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide its own failure behind ours.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declares a running sandbox for `pod_uid` and returns it.
    pub fn add_sandbox(&self, pod_uid: &str) -> Sandbox {
        let mut g = self.lock();
        g.next_id += 1;
        let n = g.next_id;
        let sandbox = Sandbox {
            container_id: format!("{n:0>64x}"),
            pid: 10_000 + u32::try_from(n).unwrap_or(0),
            pod_cgroup: PathBuf::from(format!("/sys/fs/cgroup/kubepods/besteffort/pod{pod_uid}")),
        };
        g.sandboxes.insert(pod_uid.to_string(), sandbox.clone());
        sandbox
    }

    /// The pod's sandbox goes away (`sandbox()` answers `None`, `start` fails with `NoSandbox`).
    pub fn remove_sandbox(&self, pod_uid: &str) {
        self.lock().sandboxes.remove(pod_uid);
    }

    /// Makes every later `start` for `pod_uid` fail this way (`None` clears it).
    pub fn fail_start(&self, pod_uid: &str, failure: Option<StartFailure>) {
        let mut g = self.lock();
        match failure {
            Some(f) => g.start_failures.insert(pod_uid.to_string(), f),
            None => g.start_failures.remove(pod_uid),
        };
    }

    /// While `true`, every call fails with [`RuntimeError::Runtime`] (after being recorded).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The sidecar exits on its own (crash): state `Exited`, no cgroup.
    pub fn crash(&self, container_id: &str) {
        if let Some(s) = self.lock().sidecars.get_mut(container_id) {
            s.state = SidecarState::Exited;
            s.status = "Exited (1) 1 second ago".into();
            s.cgroup = None;
        }
    }

    /// Adds a sidecar as if an earlier agent run had started it (e.g. an orphan to clean up).
    pub fn insert_sidecar(&self, sidecar: Sidecar) {
        self.lock().sidecars.insert(sidecar.container_id.clone(), sidecar);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The specs of every successful or attempted `start`, in order.
    pub fn started_specs(&self) -> Vec<SidecarSpec> {
        self.lock().specs.clone()
    }

    /// The current sidecars (any state).
    pub fn current(&self) -> Vec<Sidecar> {
        self.lock().sidecars.values().cloned().collect()
    }

    fn record(&self, call: Call) -> Result<MutexGuard<'_, Inner>, RuntimeError> {
        let mut g = self.lock();
        g.calls.push(call);
        if g.down {
            return Err(RuntimeError::Runtime("fake runtime is down".into()));
        }
        Ok(g)
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        let g = self.record(Call::Sandbox {
            pod_uid: pod_uid.to_string(),
        })?;
        Ok(g.sandboxes.get(pod_uid).cloned())
    }

    async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
        let g = self.record(Call::Sidecars)?;
        Ok(g.sidecars.values().cloned().collect())
    }

    async fn prepare(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Sidecar>, RuntimeError> {
        let uid = &spec.pod.uid;
        let mut g = self.record(Call::Prepare { pod_uid: uid.clone() })?;
        if g.sandboxes.get(uid).map(|s| &s.container_id) != Some(&sandbox.container_id) {
            return Err(RuntimeError::NoSandbox { pod_uid: uid.clone() });
        }
        if let Some(s) = g
            .sidecars
            .values()
            .find(|s| &s.pod.uid == uid && matches!(s.state, SidecarState::Running | SidecarState::Created))
        {
            return Ok(Some(s.clone()));
        }
        g.sidecars
            .retain(|_, s| !(&s.pod.uid == uid && s.state != SidecarState::Running));
        g.next_id += 1;
        let id = format!("{:0>64x}", 0xfeed_0000_0000u64 + g.next_id);
        let sidecar = Sidecar {
            container_id: id.clone(),
            pod: spec.pod.clone(),
            state: SidecarState::Created,
            status: "Created".into(),
            cgroup: Some(sandbox.pod_cgroup.join(&id)),
        };
        g.sidecars.insert(id, sidecar.clone());
        Ok(Some(sidecar))
    }

    async fn start(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Sidecar, RuntimeError> {
        let uid = &spec.pod.uid;
        let mut g = self.record(Call::Start { pod_uid: uid.clone() })?;
        g.specs.push(spec.clone());
        if g.sandboxes.get(uid).map(|s| &s.container_id) != Some(&sandbox.container_id) {
            return Err(RuntimeError::NoSandbox { pod_uid: uid.clone() });
        }
        if let Some(running) = g
            .sidecars
            .values()
            .find(|s| &s.pod.uid == uid && s.state == SidecarState::Running)
        {
            return Ok(running.clone());
        }
        let failure = g.start_failures.get(uid).copied();
        if let Some(prepared) = g
            .sidecars
            .values_mut()
            .find(|s| &s.pod.uid == uid && s.state == SidecarState::Created)
        {
            if failure.is_none() {
                // A prepared container starts in the cgroup it was prepared with.
                prepared.state = SidecarState::Running;
                prepared.status = "Up 1 second".into();
                return Ok(prepared.clone());
            }
            // A failed start removes the prepared container, as the real runtime does.
            let id = prepared.container_id.clone();
            g.sidecars.remove(&id);
        }
        match g.start_failures.get(uid) {
            Some(StartFailure::Fails) => {
                return Err(RuntimeError::Runtime(format!(
                    "injected start failure for pod {uid}"
                )))
            }
            Some(StartFailure::NotReady) => {
                return Err(RuntimeError::NotReady {
                    container_id: "fake-not-ready".into(),
                    seconds: 0,
                    detail: "injected".into(),
                })
            }
            None => {}
        }
        // A new container replaces exited ones of the pod (the real runtime reuses the name).
        g.sidecars
            .retain(|_, s| !(&s.pod.uid == uid && s.state != SidecarState::Running));
        g.next_id += 1;
        let id = format!("{:0>64x}", 0xfeed_0000_0000u64 + g.next_id);
        let sidecar = Sidecar {
            container_id: id.clone(),
            pod: spec.pod.clone(),
            state: SidecarState::Running,
            status: "Up 1 second".into(),
            cgroup: Some(sandbox.pod_cgroup.join(&id)),
        };
        g.sidecars.insert(id, sidecar.clone());
        Ok(sidecar)
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut g = self.record(Call::Remove {
            container_id: container_id.to_string(),
        })?;
        g.sidecars.remove(container_id);
        Ok(())
    }
}

/// What the fake Envoy admin of one pod netns answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    /// Envoy runs with active listeners on these ports (answered as Envoy's `/listeners` JSON).
    Listeners(Vec<u16>),
    /// Nothing listens on the admin port (connection refused).
    Down,
    /// Any other HTTP answer.
    Status(u16, String),
}

#[derive(Debug, Default)]
struct AdminInner {
    scripts: HashMap<PathBuf, Vec<AdminAnswer>>,
    calls: Vec<(PathBuf, u16, String)>,
}

/// A [`ProxyAdmin`] whose answers are scripted per netns path: each GET takes the next answer of
/// the script, the last one repeats. An unscripted netns has a configured Envoy (listeners on
/// 8900 and 15001).
#[derive(Debug, Default)]
pub struct FakeAdmin {
    inner: Mutex<AdminInner>,
}

impl FakeAdmin {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, AdminInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answers for `netns` from now on (an empty script restores the default).
    pub fn script(&self, netns: &Path, answers: Vec<AdminAnswer>) {
        self.lock().scripts.insert(netns.to_path_buf(), answers);
    }

    /// Every GET so far: (netns, port, path).
    pub fn calls(&self) -> Vec<(PathBuf, u16, String)> {
        self.lock().calls.clone()
    }

    fn answer(&self, netns: &Path, port: u16, path: &str) -> AdminAnswer {
        let mut g = self.lock();
        g.calls.push((netns.to_path_buf(), port, path.to_string()));
        match g.scripts.get_mut(netns) {
            Some(script) if script.len() > 1 => script.remove(0),
            Some(script) if script.len() == 1 => script[0].clone(),
            _ => AdminAnswer::Listeners(vec![8900, 15001]),
        }
    }
}

/// Envoy's `/listeners?format=json` body for listeners on `ports`.
fn listeners_json(ports: &[u16]) -> String {
    let statuses: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": format!("listener_{p}"),
                "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": p}},
            })
        })
        .collect();
    if statuses.is_empty() {
        "{}".into()
    } else {
        serde_json::json!({ "listener_statuses": statuses }).to_string()
    }
}

impl ProxyAdmin for FakeAdmin {
    fn get<'a>(
        &'a self,
        netns: &'a Path,
        port: u16,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Response, NetnsError>> {
        let answer = self.answer(netns, port, path);
        Box::pin(async move {
            match answer {
                AdminAnswer::Listeners(ports) => Ok(Response {
                    status: 200,
                    body: listeners_json(&ports),
                }),
                AdminAnswer::Status(status, body) => Ok(Response { status, body }),
                AdminAnswer::Down => Err(NetnsError::Io {
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    path: path.to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                }),
            }
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::PodRef;

    fn spec(uid: &str) -> SidecarSpec {
        SidecarSpec {
            pod: PodRef {
                uid: uid.into(),
                namespace: "shop".into(),
                name: format!("pod-{uid}"),
            },
            image: "envoy".into(),
            bootstrap: "{}".into(),
            uid: 1337,
            admin_port: 15000,
            token_dir: None,
        }
    }

    #[tokio::test]
    async fn a_started_sidecar_runs_once_per_pod_and_is_removed_on_request() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        assert_eq!(rt.sandbox("u1").await.unwrap(), Some(sb.clone()));
        let a = rt.start(&spec("u1"), &sb).await.unwrap();
        let b = rt.start(&spec("u1"), &sb).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.state, SidecarState::Running);
        assert!(a.cgroup.as_ref().unwrap().starts_with(&sb.pod_cgroup));
        assert_eq!(rt.sidecars().await.unwrap().len(), 1);
        rt.remove(&a.container_id).await.unwrap();
        rt.remove(&a.container_id).await.unwrap();
        assert!(rt.sidecars().await.unwrap().is_empty());
        assert_eq!(
            rt.calls(),
            vec![
                Call::Sandbox { pod_uid: "u1".into() },
                Call::Start { pod_uid: "u1".into() },
                Call::Start { pod_uid: "u1".into() },
                Call::Sidecars,
                Call::Remove {
                    container_id: a.container_id.clone()
                },
                Call::Remove {
                    container_id: a.container_id.clone()
                },
                Call::Sidecars,
            ]
        );
    }

    #[tokio::test]
    async fn injected_failures_leave_nothing_behind() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        rt.fail_start("u1", Some(StartFailure::NotReady));
        assert!(matches!(
            rt.start(&spec("u1"), &sb).await,
            Err(RuntimeError::NotReady { .. })
        ));
        rt.fail_start("u1", Some(StartFailure::Fails));
        assert!(matches!(
            rt.start(&spec("u1"), &sb).await,
            Err(RuntimeError::Runtime(_))
        ));
        assert!(rt.current().is_empty());
        rt.fail_start("u1", None);
        rt.start(&spec("u1"), &sb).await.unwrap();
        assert_eq!(rt.current().len(), 1);
    }

    #[tokio::test]
    async fn a_missing_sandbox_is_none_and_start_refuses() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        rt.remove_sandbox("u1");
        assert_eq!(rt.sandbox("u1").await.unwrap(), None);
        assert!(matches!(
            rt.start(&spec("u1"), &sb).await,
            Err(RuntimeError::NoSandbox { .. })
        ));
    }

    #[tokio::test]
    async fn a_crashed_sidecar_is_replaced_by_the_next_start() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        let a = rt.start(&spec("u1"), &sb).await.unwrap();
        rt.crash(&a.container_id);
        assert_eq!(rt.sidecars().await.unwrap()[0].state, SidecarState::Exited);
        let b = rt.start(&spec("u1"), &sb).await.unwrap();
        assert_ne!(a.container_id, b.container_id);
        assert_eq!(rt.current(), vec![b]);
    }

    #[tokio::test]
    async fn a_prepared_sidecar_keeps_its_id_and_cgroup_when_it_starts() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        let prepared = rt.prepare(&spec("u1"), &sb).await.unwrap().unwrap();
        assert_eq!(prepared.state, SidecarState::Created);
        assert!(prepared.cgroup.as_ref().unwrap().starts_with(&sb.pod_cgroup));
        assert_eq!(
            rt.prepare(&spec("u1"), &sb).await.unwrap(),
            Some(prepared.clone())
        );
        let started = rt.start(&spec("u1"), &sb).await.unwrap();
        assert_eq!(
            (&started.container_id, &started.cgroup, started.state),
            (&prepared.container_id, &prepared.cgroup, SidecarState::Running)
        );
        assert_eq!(rt.current().len(), 1);
    }

    #[tokio::test]
    async fn a_prepared_sidecar_that_fails_to_start_is_gone() {
        let rt = FakeRuntime::new();
        let sb = rt.add_sandbox("u1");
        rt.prepare(&spec("u1"), &sb).await.unwrap();
        rt.fail_start("u1", Some(StartFailure::NotReady));
        assert!(rt.start(&spec("u1"), &sb).await.is_err());
        assert!(rt.current().is_empty());
    }

    #[tokio::test]
    async fn the_fake_admin_answers_its_script_and_then_repeats_the_last_answer() {
        let admin = FakeAdmin::new();
        let ns = Path::new("/proc/1/ns/net");
        let get = || admin.get(ns, 15000, "/listeners?format=json");
        assert!(get().await.unwrap().body.contains("15001"), "default: configured");
        admin.script(ns, vec![AdminAnswer::Down, AdminAnswer::Listeners(vec![])]);
        assert!(get().await.is_err());
        assert_eq!(get().await.unwrap().body, "{}");
        assert_eq!(get().await.unwrap().body, "{}");
        admin.script(ns, vec![AdminAnswer::Status(503, "x".into())]);
        assert_eq!(get().await.unwrap().status, 503);
        assert_eq!(admin.calls().len(), 5);
    }

    #[tokio::test]
    async fn a_down_runtime_fails_every_call_but_records_it() {
        let rt = FakeRuntime::new();
        rt.set_down(true);
        assert!(rt.sidecars().await.is_err());
        assert!(rt.sandbox("u1").await.is_err());
        assert_eq!(rt.calls().len(), 2);
    }
}
