//! The e2e suites' view of the node's container runtime: our sidecars (list, state, kill, exec,
//! remove) and the pods' sandboxes and app containers, through Docker (`docker`, dockershim mode)
//! or containerd (`ctr`, the kit's containerd mode), whichever the cluster runs
//! (`TRAFFIC_E2E_RUNTIME` of the kit's env.sh; `docker` when unset).
//!
//! Sidecars live in Docker (dockershim) or in containerd namespace [`SIDECAR_NAMESPACE`]; pods in
//! Docker or in containerd namespace [`CRI_NAMESPACE`]. The CLIs print what the parsers below
//! read (pure, unit-tested); commands run with a deadline.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::e2e::{random_suffix, run_timeout};

/// Label on every sidecar container the agent starts: the pod uid.
pub const LABEL_POD_UID: &str = "traffic.envoy.pod-uid";
/// Label with the sidecar's pod namespace.
pub const LABEL_POD_NAMESPACE: &str = "traffic.envoy.pod-namespace";
/// The agent's containerd namespace (its default).
pub const SIDECAR_NAMESPACE: &str = "traffic-manager";
/// The CRI plugin's containerd namespace (pods).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The kit's containerd socket.
pub const DEFAULT_CONTAINERD_SOCK: &str = "/run/traffic-e2e/containerd.sock";
/// The environment variable naming the runtime (the kit's env.sh exports it).
pub const ENV_RUNTIME: &str = "TRAFFIC_E2E_RUNTIME";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Docker,
    Containerd,
}

impl RuntimeKind {
    /// `docker` | `containerd`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "docker" => Ok(RuntimeKind::Docker),
            "containerd" => Ok(RuntimeKind::Containerd),
            other => bail!("unknown runtime {other:?} (docker or containerd)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Containerd => "containerd",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sidecar container as the runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarInfo {
    pub id: String,
    /// `running`, `created` or `exited` (Docker's words; containerd's task states map to them,
    /// a container without a task is `exited`).
    pub state: String,
}

/// `ctr tasks ls` output: `(id, pid, status)` per task (header skipped).
pub fn parse_ctr_tasks(out: &str) -> Vec<(String, u32, String)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (id, pid, status) = (f.next()?, f.next()?, f.next()?);
            let pid = pid.parse().ok()?;
            Some((id.to_string(), pid, status.to_string()))
        })
        .collect()
}

/// Docker's state word for a containerd task status (`None`: no task).
pub fn state_word(task_status: Option<&str>) -> &'static str {
    match task_status {
        Some("RUNNING") => "running",
        Some("CREATED") => "created",
        Some("PAUSED" | "PAUSING") => "paused",
        Some(_) | None => "exited",
    }
}

/// A containerd filter value in double quotes (`"` and `\` escaped).
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The node's runtime, driven through its CLI with the cluster's environment.
#[derive(Debug, Clone)]
pub struct NodeRuntime {
    pub kind: RuntimeKind,
    env: Vec<(String, String)>,
    containerd_sock: String,
}

impl NodeRuntime {
    /// From `TRAFFIC_E2E_RUNTIME` (and `TRAFFIC_E2E_CONTAINERD_SOCK`) as `lookup` finds them;
    /// `env` is given to every command (the cluster's variables, when not in this process').
    pub fn new(env: Vec<(String, String)>, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let kind = match lookup(ENV_RUNTIME) {
            Some(v) if !v.is_empty() => RuntimeKind::parse(&v)?,
            _ => RuntimeKind::Docker,
        };
        Ok(NodeRuntime {
            kind,
            env,
            containerd_sock: lookup("TRAFFIC_E2E_CONTAINERD_SOCK")
                .unwrap_or_else(|| DEFAULT_CONTAINERD_SOCK.to_string()),
        })
    }

    /// From this process' environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::new(Vec::new(), |k| std::env::var(k).ok())
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `docker <args>`; fails on a non-zero exit.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run_timeout(self.command("docker").args(args), Duration::from_secs(60))?;
        anyhow::ensure!(out.ok, "docker {} failed: {}", args.join(" "), out.stderr.trim());
        Ok(out.stdout)
    }

    /// `ctr --address <kit socket> -n <ns> <args>`; fails on a non-zero exit.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = run_timeout(
            self.command("ctr")
                .args(["--address", &self.containerd_sock, "-n", ns])
                .args(args),
            Duration::from_secs(60),
        )?;
        anyhow::ensure!(
            out.ok,
            "ctr -n {ns} {} failed: {}",
            args.join(" "),
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    /// The runtime answers.
    pub fn check(&self) -> anyhow::Result<String> {
        match self.kind {
            RuntimeKind::Docker => self.docker(&["version", "--format", "{{.Server.Version}}"]),
            RuntimeKind::Containerd => self.ctr(SIDECAR_NAMESPACE, &["version"]),
        }
    }

    /// containerd tasks of namespace `ns`: id -> (pid, status).
    fn tasks(&self, ns: &str) -> anyhow::Result<std::collections::HashMap<String, (u32, String)>> {
        Ok(parse_ctr_tasks(&self.ctr(ns, &["tasks", "ls"])?)
            .into_iter()
            .map(|(id, pid, st)| (id, (pid, st)))
            .collect())
    }

    /// Container ids of namespace `ns` matching the containerd `filter`.
    fn containers(&self, ns: &str, filter: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .ctr(ns, &["containers", "ls", "-q", filter])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Sidecars (any state) of one pod, or of every pod whose namespace starts with
    /// `namespace_prefix`, or all of ours.
    pub fn sidecars(
        &self,
        pod_uid: Option<&str>,
        namespace_prefix: Option<&str>,
    ) -> anyhow::Result<Vec<SidecarInfo>> {
        match self.kind {
            RuntimeKind::Docker => {
                let label = match pod_uid {
                    Some(uid) => format!("label={LABEL_POD_UID}={uid}"),
                    None => format!("label={LABEL_POD_UID}"),
                };
                let out = self.docker(&[
                    "ps",
                    "-a",
                    "--filter",
                    &label,
                    "--format",
                    &format!("{{{{.ID}}}} {{{{.State}}}} {{{{.Label \"{LABEL_POD_NAMESPACE}\"}}}}"),
                ])?;
                Ok(out
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split(' ');
                        Some((f.next()?, f.next()?, f.next().unwrap_or("")))
                    })
                    .filter(|(_, _, ns)| namespace_prefix.is_none_or(|p| ns.starts_with(p)))
                    .map(|(id, st, _)| SidecarInfo {
                        id: id.to_string(),
                        state: st.to_string(),
                    })
                    .collect())
            }
            RuntimeKind::Containerd => {
                let mut filter = format!("labels.{}", quoted(LABEL_POD_UID));
                if let Some(uid) = pod_uid {
                    filter.push_str(&format!("=={}", quoted(uid)));
                }
                if let Some(p) = namespace_prefix {
                    let re = format!("^{}", regex_escape(p));
                    filter.push_str(&format!(
                        ",labels.{}~={}",
                        quoted(LABEL_POD_NAMESPACE),
                        quoted(&re)
                    ));
                }
                let ids = self.containers(SIDECAR_NAMESPACE, &filter)?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let tasks = self.tasks(SIDECAR_NAMESPACE)?;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let state = state_word(tasks.get(&id).map(|(_, st)| st.as_str()));
                        SidecarInfo {
                            id,
                            state: state.to_string(),
                        }
                    })
                    .collect())
            }
        }
    }

    /// SIGKILL a sidecar's process.
    pub fn kill_sidecar(&self, id: &str) -> anyhow::Result<()> {
        match self.kind {
            RuntimeKind::Docker => self.docker(&["kill", id]).map(drop),
            RuntimeKind::Containerd => self
                .ctr(SIDECAR_NAMESPACE, &["tasks", "kill", "-s", "SIGKILL", id])
                .map(drop),
        }
    }

    /// Removes sidecars the agent left (task, container and snapshot), by force.
    pub fn remove_sidecars(&self, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match self.kind {
            RuntimeKind::Docker => {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                self.docker(&args).map(drop)
            }
            RuntimeKind::Containerd => {
                for id in ids {
                    let _ = self.ctr(SIDECAR_NAMESPACE, &["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                    for _ in 0..50 {
                        if self.ctr(SIDECAR_NAMESPACE, &["tasks", "delete", id]).is_ok()
                            || !self.tasks(SIDECAR_NAMESPACE)?.contains_key(id)
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    // Also removes its snapshot.
                    self.ctr(SIDECAR_NAMESPACE, &["containers", "delete", id])?;
                }
                Ok(())
            }
        }
    }

    /// Runs `cmd` in a sidecar (as its user) and returns its stdout.
    pub fn exec_sidecar(&self, id: &str, cmd: &[&str]) -> anyhow::Result<String> {
        self.exec(SIDECAR_NAMESPACE, id, cmd, false)
    }

    /// `docker exec` / `ctr tasks exec` in container `id` (containerd namespace `ns`).
    fn exec(&self, ns: &str, id: &str, cmd: &[&str], detach: bool) -> anyhow::Result<String> {
        match self.kind {
            RuntimeKind::Docker => {
                let mut args = vec!["exec"];
                if detach {
                    args.push("-d");
                }
                args.push(id);
                args.extend(cmd);
                self.docker(&args)
            }
            RuntimeKind::Containerd => {
                let exec_id = format!("e2e-{}", random_suffix());
                let mut args = vec!["tasks", "exec", "--exec-id", &exec_id];
                if detach {
                    args.push("--detach");
                }
                args.push(id);
                args.extend(cmd);
                self.ctr(ns, &args)
            }
        }
    }

    /// Runs `cmd` in a pod's app container; `detach`: in the background (its output is lost).
    pub fn exec_app(&self, container_id: &str, cmd: &[&str], detach: bool) -> anyhow::Result<String> {
        self.exec(CRI_NAMESPACE, container_id, cmd, detach)
    }

    /// Host pid of a pod's running sandbox (pause) container: `/proc/<pid>/ns/net` is the pod netns.
    pub fn sandbox_pid(&self, pod_uid: &str) -> anyhow::Result<Option<u32>> {
        match self.kind {
            RuntimeKind::Docker => {
                let ids = self.docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=io.kubernetes.pod.uid={pod_uid}"),
                    "--filter",
                    "label=io.kubernetes.docker.type=podsandbox",
                ])?;
                let Some(id) = ids.lines().next() else {
                    return Ok(None);
                };
                let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", id])?;
                Ok(pid.trim().parse().ok().filter(|p| *p > 0))
            }
            RuntimeKind::Containerd => {
                let filter = format!(
                    "labels.\"io.cri-containerd.kind\"==\"sandbox\",labels.\"io.kubernetes.pod.uid\"=={}",
                    quoted(pod_uid)
                );
                self.running_task_of(CRI_NAMESPACE, &filter)
                    .map(|found| found.map(|(_, pid)| pid))
            }
        }
    }

    /// The first container matching `filter` in `ns` whose task runs: `(id, pid)`.
    fn running_task_of(&self, ns: &str, filter: &str) -> anyhow::Result<Option<(String, u32)>> {
        let ids = self.containers(ns, filter)?;
        if ids.is_empty() {
            return Ok(None);
        }
        let tasks = self.tasks(ns)?;
        Ok(ids.into_iter().find_map(|id| {
            let (pid, st) = tasks.get(&id)?;
            (st == "RUNNING" && *pid > 0).then(|| (id.clone(), *pid))
        }))
    }

    /// The id of a pod's running app container `container`.
    pub fn app_container(&self, pod_uid: &str, container: &str) -> anyhow::Result<String> {
        let found = match self.kind {
            RuntimeKind::Docker => self
                .docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=io.kubernetes.pod.uid={pod_uid}"),
                    "--filter",
                    &format!("label=io.kubernetes.container.name={container}"),
                ])?
                .lines()
                .next()
                .map(str::to_string),
            RuntimeKind::Containerd => {
                let filter = format!(
                    "labels.\"io.cri-containerd.kind\"==\"container\",labels.\"io.kubernetes.pod.uid\"=={},labels.\"io.kubernetes.container.name\"=={}",
                    quoted(pod_uid),
                    quoted(container)
                );
                self.running_task_of(CRI_NAMESPACE, &filter)?.map(|(id, _)| id)
            }
        };
        found.with_context(|| format!("no running container {container} in pod {pod_uid}"))
    }

    /// Copies a host file into a pod's app container, mode kept (`docker cp`; containerd: through
    /// the container's root as its init process sees it, `/proc/<pid>/root`).
    pub fn copy_into_app(&self, container_id: &str, src: &Path, dst: &str) -> anyhow::Result<()> {
        match self.kind {
            RuntimeKind::Docker => self
                .docker(&["cp", &src.to_string_lossy(), &format!("{container_id}:{dst}")])
                .map(drop),
            RuntimeKind::Containerd => {
                let pid = self
                    .tasks(CRI_NAMESPACE)?
                    .get(container_id)
                    .map(|(pid, _)| *pid)
                    .with_context(|| format!("container {container_id} has no task"))?;
                let target = Path::new(&format!("/proc/{pid}/root")).join(dst.trim_start_matches('/'));
                std::fs::copy(src, &target)
                    .with_context(|| format!("copy {} to {}", src.display(), target.display()))?;
                Ok(())
            }
        }
    }
}

impl NodeRuntime {
    /// What of ours the runtime holds, one line each: our containers (label
    /// `traffic.envoy.managed-by`, any state) and, on containerd, every task, active snapshot
    /// (a container's rootfs or an unpack in progress) and lease in [`SIDECAR_NAMESPACE`]. The
    /// image and its committed layer snapshots stay, as Docker keeps its images.
    pub fn ours(&self) -> anyhow::Result<Vec<String>> {
        match self.kind {
            RuntimeKind::Docker => Ok(self
                .docker(&[
                    "ps",
                    "-a",
                    "--filter",
                    "label=traffic.envoy.managed-by",
                    "--format",
                    "{{.ID}} {{.Names}}",
                ])?
                .lines()
                .map(str::to_string)
                .collect()),
            RuntimeKind::Containerd => {
                let ns = SIDECAR_NAMESPACE;
                let mut left: Vec<String> = self
                    .containers(ns, "labels.\"traffic.envoy.managed-by\"")?
                    .into_iter()
                    .map(|id| format!("container {id}"))
                    .collect();
                left.extend(
                    self.tasks(ns)?
                        .into_iter()
                        .map(|(id, (pid, st))| format!("task {id} (pid {pid}, {st})")),
                );
                left.extend(
                    active_snapshots(&self.ctr(ns, &["snapshots", "ls"])?)
                        .into_iter()
                        .map(|k| format!("active snapshot {k}")),
                );
                left.extend(
                    self.ctr(ns, &["leases", "ls", "-q"])?
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| format!("lease {l}")),
                );
                Ok(left)
            }
        }
    }

    /// Every running pod sandbox: `(pid, "<namespace>/<name>")`.
    pub fn sandboxes(&self) -> anyhow::Result<Vec<(u32, String)>> {
        let mut out = Vec::new();
        match self.kind {
            RuntimeKind::Docker => {
                let ids = self.docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    "label=io.kubernetes.docker.type=podsandbox",
                ])?;
                for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    // A sandbox removed since `ps` (a pod going away) has nothing left to check.
                    let Ok(info) = self.docker(&[
                        "inspect",
                        "-f",
                        "{{.State.Pid}} {{index .Config.Labels \"io.kubernetes.pod.namespace\"}}/{{index .Config.Labels \"io.kubernetes.pod.name\"}}",
                        id,
                    ]) else {
                        continue;
                    };
                    if let Some((pid, pod)) = info.trim().split_once(' ') {
                        if let Ok(pid) = pid.parse::<u32>() {
                            if pid > 0 {
                                out.push((pid, pod.to_string()));
                            }
                        }
                    }
                }
            }
            RuntimeKind::Containerd => {
                let ids = self.containers(CRI_NAMESPACE, "labels.\"io.cri-containerd.kind\"==\"sandbox\"")?;
                let tasks = self.tasks(CRI_NAMESPACE)?;
                for id in ids {
                    let Some((pid, st)) = tasks.get(&id) else { continue };
                    if st != "RUNNING" || *pid == 0 {
                        continue;
                    }
                    // A sandbox removed since the listing has nothing left to check.
                    let Ok(text) = self.ctr(CRI_NAMESPACE, &["containers", "info", &id]) else {
                        continue;
                    };
                    let info: serde_json::Value =
                        serde_json::from_str(&text).with_context(|| format!("ctr containers info {id}"))?;
                    let label = |k: &str| info["Labels"][k].as_str().unwrap_or("?").to_string();
                    out.push((
                        *pid,
                        format!(
                            "{}/{}",
                            label("io.kubernetes.pod.namespace"),
                            label("io.kubernetes.pod.name")
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Keys of the active snapshots in a `ctr snapshots ls` listing (`KEY PARENT KIND`; an active
/// snapshot may have no parent).
pub fn active_snapshots(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.last() == Some(&"Active")).then(|| f.first().map(|k| k.to_string()))?
        })
        .collect()
}

/// `s` with the regular-expression metacharacters escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn ctr_task_listings_parse_and_map_to_docker_states() {
        let out = "TASK      PID      STATUS    \nabc       4242     RUNNING\ndef       0        STOPPED\nghi       77       CREATED\n";
        let t = parse_ctr_tasks(out);
        assert_eq!(
            t,
            vec![
                ("abc".into(), 4242, "RUNNING".into()),
                ("def".into(), 0, "STOPPED".into()),
                ("ghi".into(), 77, "CREATED".into()),
            ]
        );
        assert_eq!(state_word(Some("RUNNING")), "running");
        assert_eq!(state_word(Some("CREATED")), "created");
        assert_eq!(state_word(Some("STOPPED")), "exited");
        assert_eq!(state_word(None), "exited");
    }

    #[test]
    fn the_runtime_comes_from_the_environment_and_defaults_to_docker() {
        let rt = NodeRuntime::new(Vec::new(), |_| None).unwrap();
        assert_eq!(rt.kind, RuntimeKind::Docker);
        let rt = NodeRuntime::new(Vec::new(), |k| (k == ENV_RUNTIME).then(|| "containerd".into())).unwrap();
        assert_eq!(rt.kind, RuntimeKind::Containerd);
        assert_eq!(rt.containerd_sock, DEFAULT_CONTAINERD_SOCK);
        assert!(NodeRuntime::new(Vec::new(), |_| Some("cri-o".into())).is_err());
    }

    #[test]
    fn only_active_snapshots_count_as_leftovers() {
        let out = "KEY                                                                     PARENT                                                                  KIND      \n\
sha256:aaa                                                                                                                                      Committed \n\
sha256:bbb                                                              sha256:aaa                                                              Committed \n\
0123abcd                                                                sha256:bbb                                                              Active    \n";
        assert_eq!(active_snapshots(out), vec!["0123abcd".to_string()]);
    }

    #[test]
    fn filter_values_are_quoted_and_prefixes_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(regex_escape("e2e-a.b"), r"e2e-a\.b");
    }
}
