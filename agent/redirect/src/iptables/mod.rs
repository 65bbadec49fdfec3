//! The iptables fallback: a nat `OUTPUT` chain in the pod's network namespace.
//!
//! The rules are computed first ([`rules`], pure and unit-tested), then applied with one atomic
//! `iptables-restore --noflush` commit per family, inside the pod netns (the child process `setns`es
//! between fork and exec: that is this module's only `unsafe`). What is applied is recorded in a
//! JSON file per pod under a state directory, so a restarted agent can `list` and `disable` pods it
//! did not enable itself. Works with `iptables-nft` and `iptables-legacy`, IPv4 and IPv6.
pub mod rules;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{Mode, PodKey, PodRedirect, RedirectError, Redirected, Redirector, Settings};
use rules::{Desired, Family, Observed};

/// Where pod state is recorded by default (tmpfs: it must not outlive the node's netns anyway).
pub const DEFAULT_STATE_DIR: &str = "/run/traffic-manager/iptables";

/// `statfs` magic of nsfs, the filesystem of `/proc/<pid>/ns/*` and of `ip netns` bind mounts.
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

/// Which iptables backend drives the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// `iptables-nft`: the iptables syntax on nf_tables.
    Nft,
    /// `iptables-legacy`: x_tables.
    Legacy,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Nft, Flavour::Legacy];

    /// The `iptables` command of this flavour and family (e.g. `ip6tables-legacy`).
    pub fn command(self, family: Family) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            Flavour::Nft => format!("{base}-nft"),
            Flavour::Legacy => format!("{base}-legacy"),
        }
    }
    pub fn save_command(self, family: Family) -> String {
        format!("{}-save", self.command(family))
    }
    pub fn restore_command(self, family: Family) -> String {
        format!("{}-restore", self.command(family))
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavour::Nft => "iptables-nft",
            Flavour::Legacy => "iptables-legacy",
        })
    }
}

/// Errors of the iptables datapath.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{program} not found in PATH, /usr/sbin or /sbin: install the iptables package")]
    BinaryMissing { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed in netns {netns}: {stderr}")]
    CommandFailed {
        program: String,
        netns: PathBuf,
        stderr: String,
    },
    #[error("{path} is not a network namespace (not on nsfs)")]
    NotANetns { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netns {netns} is already redirected for pod(s) {owners:?}; refusing to take it over for {key}")]
    OwnedByOtherPod {
        netns: PathBuf,
        key: PodKey,
        owners: Vec<String>,
    },
    #[error("invalid settings for {key}: {reason}")]
    InvalidSettings { key: PodKey, reason: String },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    StateCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{error}; rolling back also failed, netns {netns} may be half-applied: {rollback}")]
    RollbackFailed {
        netns: PathBuf,
        error: Box<RedirectError>,
        rollback: Box<RedirectError>,
    },
}

/// What is recorded per pod: enough to remove it exactly after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodState {
    pub key: PodKey,
    pub netns: PathBuf,
    pub flavour: Flavour,
    pub settings: Settings,
}

/// The iptables implementation of [`Redirector`].
pub struct IptablesRedirector {
    flavour: Flavour,
    state_dir: PathBuf,
    /// Serializes enable/disable within this process (read-modify-write of a netns).
    lock: Mutex<()>,
}

impl IptablesRedirector {
    /// `state_dir` is created if missing ([`DEFAULT_STATE_DIR`] in the agent; a temp dir in tests).
    pub fn new(flavour: Flavour, state_dir: impl Into<PathBuf>) -> Result<Self, IptablesError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(&state_dir).map_err(|source| IptablesError::State {
            path: state_dir.clone(),
            source,
        })?;
        for family in Family::ALL {
            resolve(&flavour.save_command(family))?;
            resolve(&flavour.restore_command(family))?;
        }
        Ok(Self {
            flavour,
            state_dir,
            lock: Mutex::new(()),
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Our chain and jumps in `netns` as `iptables-save` shows them.
    pub fn observe(&self, netns: &Path, family: Family) -> Result<Observed, RedirectError> {
        let ns = open_netns(netns)?;
        observe(&ns, netns, self.flavour, family)
    }

    fn state_path(&self, key: &PodKey) -> PathBuf {
        self.state_dir.join(format!("{key}.json"))
    }

    fn read_state(&self, key: &PodKey) -> Result<Option<PodState>, IptablesError> {
        read_state_file(&self.state_path(key))
    }

    fn write_state(&self, state: &PodState) -> Result<(), IptablesError> {
        let path = self.state_path(&state.key);
        let tmp = path.with_extension("json.tmp");
        let err = |source| IptablesError::State {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(state).map_err(|source| IptablesError::StateCorrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&json).and_then(|()| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn remove_state(&self, key: &PodKey) -> Result<(), IptablesError> {
        let path = self.state_path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(IptablesError::State { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Removes our chain and jumps from a netns (both families). A gone netns has nothing left.
    fn remove_from(&self, netns: &Path, flavour: Flavour) -> Result<(), RedirectError> {
        let ns = match open_netns(netns) {
            Ok(ns) => ns,
            Err(RedirectError::NetnsGone { .. })
            | Err(RedirectError::Iptables(IptablesError::NotANetns { .. })) => {
                tracing::info!(netns = %netns.display(), "netns gone: nothing to remove");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for family in Family::ALL {
            let observed = observe(&ns, netns, flavour, family)?;
            if let Some(payload) = rules::restore_payload(&observed, &Desired::Absent) {
                restore(&ns, netns, flavour, family, &payload)?;
            }
        }
        Ok(())
    }

    fn apply(&self, pod: &PodRedirect) -> Result<(), RedirectError> {
        let ns = open_netns(&pod.netns)?;
        // Look before touching anything: all checks happen before the first change.
        let mut before = Vec::new();
        for family in Family::ALL {
            let observed = observe(&ns, &pod.netns, self.flavour, family)?;
            let owners = observed.owners();
            if owners.iter().any(|o| o != pod.key.as_str()) {
                return Err(IptablesError::OwnedByOtherPod {
                    netns: pod.netns.clone(),
                    key: pod.key.clone(),
                    owners,
                }
                .into());
            }
            before.push((family, observed));
        }
        let mut applied: Vec<(Family, &Observed)> = Vec::new();
        for (family, observed) in &before {
            let desired = Desired::Present {
                key: pod.key.clone(),
                rules: rules::chain_rules(&pod.key, &pod.settings, *family),
            };
            let result = match rules::restore_payload(observed, &desired) {
                Some(payload) => restore(&ns, &pod.netns, self.flavour, *family, &payload),
                None => Ok(()),
            };
            if let Err(error) = result {
                return Err(self.roll_back(&ns, pod, &applied, error));
            }
            applied.push((*family, observed));
        }
        let state = PodState {
            key: pod.key.clone(),
            netns: pod.netns.clone(),
            flavour: self.flavour,
            settings: pod.settings.clone(),
        };
        if let Err(error) = self.write_state(&state) {
            return Err(self.roll_back(&ns, pod, &applied, error.into()));
        }
        Ok(())
    }

    /// Puts every family already changed back the way it was observed before `enable`.
    fn roll_back(
        &self,
        ns: &File,
        pod: &PodRedirect,
        applied: &[(Family, &Observed)],
        error: RedirectError,
    ) -> RedirectError {
        tracing::warn!(pod = %pod.key, netns = %pod.netns.display(), %error, "enable failed, rolling back");
        for (family, previous) in applied.iter().rev() {
            let desired = if previous.chain_exists {
                Desired::Present {
                    key: pod.key.clone(),
                    rules: previous.chain_rules.clone(),
                }
            } else {
                Desired::Absent
            };
            let undo = observe(ns, &pod.netns, self.flavour, *family).and_then(|now| {
                match rules::restore_payload(&now, &desired) {
                    Some(payload) => restore(ns, &pod.netns, self.flavour, *family, &payload),
                    None => Ok(()),
                }
            });
            if let Err(rollback) = undo {
                return IptablesError::RollbackFailed {
                    netns: pod.netns.clone(),
                    error: Box::new(error),
                    rollback: Box::new(rollback),
                }
                .into();
            }
        }
        error
    }
}

impl Redirector for IptablesRedirector {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    #[tracing::instrument(name = "iptables_enable", skip_all, fields(pod = %pod.key, netns = %pod.netns.display(), flavour = %self.flavour))]
    fn enable(&self, pod: &PodRedirect) -> Result<(), RedirectError> {
        if pod.settings.proxy_port == 0 {
            return Err(IptablesError::InvalidSettings {
                key: pod.key.clone(),
                reason: "proxy_port is 0".into(),
            }
            .into());
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // The pod moved to another netns (sandbox recreated) or we changed flavour: clean the old place.
        if let Some(old) = self.read_state(&pod.key)? {
            if old.netns != pod.netns || old.flavour != self.flavour {
                self.remove_from(&old.netns, old.flavour)?;
                self.remove_state(&pod.key)?;
            }
        }
        self.apply(pod)?;
        tracing::info!(proxy_port = pod.settings.proxy_port, direct_ports = ?pod.settings.direct_ports, "redirect enabled");
        Ok(())
    }

    #[tracing::instrument(name = "iptables_disable", skip_all, fields(pod = %key))]
    fn disable(&self, key: &PodKey) -> Result<(), RedirectError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = self.read_state(key)? else {
            return Ok(());
        };
        self.remove_from(&state.netns, state.flavour)?;
        self.remove_state(key)?;
        tracing::info!(netns = %state.netns.display(), "redirect disabled");
        Ok(())
    }

    fn list(&self) -> Result<Vec<Redirected>, RedirectError> {
        let dir = std::fs::read_dir(&self.state_dir).map_err(|source| IptablesError::State {
            path: self.state_dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|source| IptablesError::State {
                path: self.state_dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            if let Some(state) = read_state_file(&path)? {
                out.push(Redirected {
                    key: state.key,
                    mode: Mode::Iptables,
                    settings: state.settings,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn read_state_file(path: &Path) -> Result<Option<PodState>, IptablesError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| IptablesError::StateCorrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IptablesError::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Opens a netns handle; holding it keeps the namespace alive while we work in it.
pub fn open_netns(path: &Path) -> Result<File, RedirectError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => RedirectError::NetnsGone {
            path: path.to_path_buf(),
            source,
        },
        _ => IptablesError::OpenNetns {
            path: path.to_path_buf(),
            source,
        }
        .into(),
    })?;
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| IptablesError::OpenNetns {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(IptablesError::NotANetns {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(file)
}

/// Finds an iptables binary in PATH, then in the sbin directories a daemon's PATH may lack.
pub fn resolve(program: &str) -> Result<PathBuf, IptablesError> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found.ok_or_else(|| IptablesError::BinaryMissing {
        program: program.to_string(),
    })
}

/// Runs `program args` inside the netns `ns` (with `stdin`), returning stdout.
fn run_in_netns(
    ns: &File,
    ns_path: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, IptablesError> {
    let binary = resolve(program)?;
    let mut cmd = Command::new(&binary);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec the child only calls setns(2), which is async-signal-safe, on a
    // descriptor the parent keeps open until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawn_err = |source| IptablesError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(IptablesError::CommandFailed {
            program: format!("{program} {}", args.join(" ")),
            netns: ns_path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn observe(ns: &File, ns_path: &Path, flavour: Flavour, family: Family) -> Result<Observed, RedirectError> {
    let save = run_in_netns(ns, ns_path, &flavour.save_command(family), &["-t", "nat"], None)?;
    Ok(Observed::parse(&save))
}

fn restore(
    ns: &File,
    ns_path: &Path,
    flavour: Flavour,
    family: Family,
    payload: &str,
) -> Result<(), RedirectError> {
    tracing::debug!(netns = %ns_path.display(), %flavour, ?family, payload, "iptables-restore");
    // -w: wait for the xtables lock (legacy) instead of failing when another tool holds it.
    run_in_netns(
        ns,
        ns_path,
        &flavour.restore_command(family),
        &["-w", "--noflush"],
        Some(payload),
    )?;
    Ok(())
}
