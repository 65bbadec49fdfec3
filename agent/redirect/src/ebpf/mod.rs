//! The eBPF redirector: cgroup programs on the pod's cgroup v2 directory, state pinned in bpffs.
//!
//! Layout under the pin root (default `/sys/fs/bpf/traffic-manager`):
//! - `maps/TM_*`: the maps (shared by every program instance; reused when the agent restarts),
//! - `progs/<program>`: the programs of the newest load (for inspection with bpftool),
//! - `pods/<pod key>/<program>@<cgroup id>`: one pinned link per attachment. A link keeps its
//!   program attached while the agent is down; a restarted agent keeps existing links as they are
//!   and only attaches what is missing, so enabling a pod again never attaches twice.
//!
//! `TM_PODS` records every managed pod (netns cookie, cgroup id, proxy uid and port): bpffs holds no
//! regular files, and keeping the record next to the state it describes means the kernel is the
//! single source of truth after a restart.
//!
//! getsockopt is attached to the proxy cgroups rather than to the pod cgroup (the proxy normally
//! lives outside it) or the root cgroup (it would run on every getsockopt of the node).
mod log_pump;
mod maps;
mod plan;
mod programs;
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::MapError;
use aya::{Ebpf, EbpfLoader};
use traffic_ebpf_common::{
    PodName, PodRecord, PodSettings, PortFlags, PortKey, ProxyCgroupKey, PROXY_CGROUP_PRESENT,
};

use crate::{Mode, PodKey, PodRedirect, RedirectError, Redirected, Redirector};
use log_pump::LogPump;
use maps::{get_opt, key_of, map_err, restore, write, Maps};
use plan::{PodIds, ProgramKind, Write};
use programs::{attach_and_pin, load_and_pin, pinned_links, update_link};

pub use sys::BPFFS_MOUNT;
pub use traffic_ebpf_common::map_names;

/// The object `cargo xtask build-ebpf` produced (an empty stub when it was not built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traffic-ebpf.o"));

/// Whether this build embeds the eBPF object (false for stable-only builds without
/// `cargo xtask build-ebpf`; [`EbpfRedirector::new`] then fails with [`EbpfError::ObjectNotBuilt`]).
pub fn object_embedded() -> bool {
    !OBJECT.is_empty()
}

/// The oldest kernel (major, minor) this datapath works on: `bpf_get_netns_cookie` in sock_ops
/// and cgroup sockopt programs and `SO_NETNS_COOKIE` arrived in 5.14/5.15; cgroup bpf_links (5.7),
/// `BPF_LINK_UPDATE` (5.7) and `BPF_LINK_DETACH` (5.9) are older.
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// The default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/traffic-manager";

/// Errors specific to the eBPF datapath.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("this agent was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild")]
    ObjectNotBuilt,
    #[error("no cgroup v2 mount in /proc/mounts: eBPF redirection needs cgroup v2 (use iptables mode)")]
    NoCgroup2,
    #[error("cannot use bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pin root {path} is not on a bpffs (mount -t bpf bpf <dir>)")]
    NotBpffs { path: PathBuf },
    #[error("cannot load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {program} is missing from the object or cannot be loaded")]
    Program {
        program: &'static str,
        #[source]
        source: Option<aya::programs::ProgramError>,
    },
    #[error("map {map} is missing from the object or has another layout than this agent expects")]
    MapLayout {
        map: &'static str,
        #[source]
        source: Option<MapError>,
    },
    #[error("map {map} is full ({capacity} entries): raise its size or remove pods")]
    MapFull { map: &'static str, capacity: u32 },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot attach {program} to cgroup {cgroup}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pin path {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy cgroup {path} is the pod cgroup itself: the proxy needs its own cgroup")]
    ProxyCgroupIsPodCgroup { path: PathBuf },
    #[error("network namespace of pod {key} is already redirected for pod {other}")]
    NetnsInUse { key: PodKey, other: String },
}

impl From<EbpfError> for RedirectError {
    fn from(e: EbpfError) -> Self {
        RedirectError::Ebpf(Box::new(e))
    }
}

/// Construction options.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// Where maps, programs and links are pinned; must be on a bpffs.
    pub pin_root: PathBuf,
    /// Capacity overrides by map name (`traffic_ebpf_common::map_names`). Applies only when the
    /// map is created, not when a pinned one is reused.
    pub max_entries: BTreeMap<&'static str, u32>,
    /// Forward the programs' aya-log messages to `tracing`.
    pub forward_logs: bool,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            max_entries: BTreeMap::new(),
            forward_logs: true,
        }
    }
}

/// How full one map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u32,
    pub capacity: u32,
}

/// The eBPF implementation of [`Redirector`].
pub struct EbpfRedirector {
    pin_root: PathBuf,
    cgroup2: PathBuf,
    inner: Mutex<Inner>,
    log_pump: Option<LogPump>,
}

struct Inner {
    ebpf: Ebpf,
    maps: Maps,
}

impl EbpfRedirector {
    /// Loads the programs (once per process) and opens or creates the pinned maps under
    /// `config.pin_root`, mounting bpffs on `/sys/fs/bpf` when needed.
    pub fn new(config: EbpfConfig) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::ObjectNotBuilt);
        }
        let cgroup2 = sys::cgroup2_mount()
            .map_err(|source| EbpfError::Bpffs {
                path: "/proc/mounts".into(),
                source,
            })?
            .ok_or(EbpfError::NoCgroup2)?;
        let root = config.pin_root.clone();
        sys::ensure_bpffs(&root)?;
        for dir in [root.join("maps"), root.join("progs"), root.join("pods")] {
            std::fs::create_dir_all(&dir).map_err(|source| EbpfError::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(root.join("maps"));
        for (name, n) in &config.max_entries {
            loader.map_max_entries(name, *n);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| EbpfError::Load(Box::new(e)))?;
        let log_pump = if config.forward_logs {
            LogPump::start(&mut ebpf)
        } else {
            None
        };
        for kind in ProgramKind::ALL {
            load_and_pin(&mut ebpf, kind, &root.join("progs"))?;
        }
        let maps = Maps::take(&mut ebpf)?;
        tracing::info!(pin_root = %root.display(), cgroup2 = %cgroup2.display(), "eBPF redirector loaded");
        Ok(Self {
            pin_root: root,
            cgroup2,
            inner: Mutex::new(Inner { ebpf, maps }),
            log_pump,
        })
    }

    /// With the default configuration (`/sys/fs/bpf/traffic-manager`).
    pub fn with_defaults() -> Result<Self, EbpfError> {
        Self::new(EbpfConfig::default())
    }

    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// The cgroup v2 mount point detected at construction.
    pub fn cgroup2_mount(&self) -> &Path {
        &self.cgroup2
    }

    /// The directory holding the pinned links of one pod.
    pub fn pod_pin_dir(&self, key: &PodKey) -> PathBuf {
        self.pin_root.join("pods").join(key.as_str())
    }

    /// Fill level of every map (walks the maps; cheap at the sizes used here).
    pub fn map_usage(&self) -> Result<Vec<MapUsage>, EbpfError> {
        self.lock().maps.usage()
    }

    /// Removes everything under a pin root: detaches every pod's links, then unpins programs and
    /// maps. For uninstalling the agent from a node and for tests; the redirector must be dropped.
    pub fn purge_pin_root(pin_root: &Path) -> std::io::Result<()> {
        let pods = pin_root.join("pods");
        if let Ok(rd) = std::fs::read_dir(&pods) {
            for pod in rd.flatten() {
                for link in std::fs::read_dir(pod.path())?.flatten() {
                    sys::detach_and_unpin(&link.path())?;
                }
            }
        }
        match std::fs::remove_dir_all(pin_root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock may leave one pod half-applied; the next enable or
        // disable of that pod reconciles it (the record is written first), so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enable_locked(&self, inner: &mut Inner, pod: &PodRedirect) -> Result<(), RedirectError> {
        let name = pod_name(&pod.key);
        let cgroup_id = sys::cgroup_id(&pod.cgroup)?;
        let mut proxy_ids = Vec::new();
        let mut cgroup_paths: BTreeMap<u64, &Path> = [(cgroup_id, pod.cgroup.as_path())].into();
        for p in &pod.proxy_cgroups {
            let id = sys::cgroup_id(p)?;
            if id == cgroup_id {
                // Exempting the pod cgroup itself would silently disable redirection.
                return Err(EbpfError::ProxyCgroupIsPodCgroup { path: p.clone() }.into());
            }
            proxy_ids.push(id);
            cgroup_paths.insert(id, p);
        }
        let netns_cookie = sys::netns_cookie(&pod.netns)?;
        let ids = PodIds {
            netns_cookie,
            cgroup_id,
        };

        let old = get_opt(&inner.maps.pods, map_names::PODS, &name)?;
        for item in inner.maps.pods.iter() {
            let (other, rec) = item.map_err(|source| map_err(map_names::PODS, "iterate", source))?;
            if rec.netns_cookie == netns_cookie && other != name {
                return Err(EbpfError::NetnsInUse {
                    key: pod.key.clone(),
                    other: String::from_utf8_lossy(other.as_bytes()).into_owned(),
                }
                .into());
            }
        }
        let current = match old {
            Some(rec) => inner.maps.entries_of(rec.netns_cookie)?,
            None => plan::PodEntries::default(),
        };
        let placement = plan::ProxyPlacement::of(cgroup_id, &proxy_ancestor_ids(&pod.proxy_cgroups));
        let desired = plan::desired_entries(ids, &pod.settings, &proxy_ids, placement);
        let record = plan::record(ids, &pod.settings);

        let dir = self.pod_pin_dir(&pod.key);
        let mut journal = Journal::default();
        let result = apply(
            inner,
            &mut journal,
            &current,
            &desired,
            &name,
            record,
            &dir,
            &cgroup_paths,
            &proxy_ids,
        );
        match result {
            Ok(stale_links) => {
                for path in stale_links {
                    if let Err(error) = sys::detach_and_unpin(&path) {
                        tracing::warn!(pod = %pod.key, link = %path.display(), %error, "cannot remove stale link");
                    }
                }
                if let Some(rec) = old.filter(|r| r.netns_cookie != netns_cookie) {
                    inner.maps.purge_connections(rec.netns_cookie);
                }
                tracing::info!(pod = %pod.key, netns_cookie, cgroup_id, proxy_port = pod.settings.proxy_port, "eBPF redirect enabled");
                Ok(())
            }
            Err(e) => {
                journal.roll_back(inner, &pod.key);
                tracing::warn!(pod = %pod.key, error = %e, "eBPF redirect not enabled; rolled back");
                Err(e.into())
            }
        }
    }
}

/// Applies a pod's map entries and links, journalling every step; returns the stale links to remove.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the fields"
)]
fn apply(
    inner: &mut Inner,
    journal: &mut Journal,
    current: &plan::PodEntries,
    desired: &plan::PodEntries,
    name: &PodName,
    record: PodRecord,
    dir: &Path,
    cgroup_paths: &BTreeMap<u64, &Path>,
    proxy_ids: &[u64],
) -> Result<Vec<PathBuf>, EbpfError> {
    let maps = &mut inner.maps;
    // The record first: should the agent die half-way, `list` still shows the pod and `disable`
    // removes whatever was written.
    let prev = write(&mut maps.pods, map_names::PODS, &Write::Upsert(*name, record))?;
    journal.0.push(Undo::Pod(*name, prev));
    for w in plan::diff_map(&current.settings, &desired.settings) {
        let prev = write(&mut maps.settings, map_names::SETTINGS, &w)?;
        journal.0.push(Undo::Settings(key_of(&w), prev));
    }
    let flags = |m: &BTreeMap<PortKey, u32>| -> BTreeMap<PortKey, PortFlags> {
        m.iter().map(|(k, v)| (*k, PortFlags { bits: *v })).collect()
    };
    for w in plan::diff_map(&flags(&current.ports), &flags(&desired.ports)) {
        let prev = write(&mut maps.ports, map_names::PORTS, &w)?;
        journal.0.push(Undo::Ports(key_of(&w), prev));
    }
    let set = |s: &BTreeSet<ProxyCgroupKey>| -> BTreeMap<ProxyCgroupKey, u32> {
        s.iter().map(|k| (*k, PROXY_CGROUP_PRESENT)).collect()
    };
    for w in plan::diff_map(&set(&current.proxy_cgroups), &set(&desired.proxy_cgroups)) {
        let prev = write(&mut maps.proxy_cg, map_names::PROXY_CGROUPS, &w)?;
        journal.0.push(Undo::ProxyCg(key_of(&w), prev));
    }

    // Links: keep what is pinned and still wanted, attach what is missing.
    if !dir.exists() {
        std::fs::create_dir(dir).map_err(|source| EbpfError::Pin {
            path: dir.to_path_buf(),
            source,
        })?;
        journal.0.push(Undo::Dir(dir.to_path_buf()));
    }
    let existing = pinned_links(dir)?;
    let wanted = plan::desired_links(record.cgroup_id, proxy_ids);
    for spec in wanted.iter().filter(|s| !existing.contains_key(*s)) {
        let cgroup = cgroup_paths
            .get(&spec.cgroup_id)
            .copied()
            .unwrap_or(Path::new("?"));
        let path = dir.join(spec.file_name());
        attach_and_pin(&inner.ebpf, spec.program, cgroup, &path)?;
        journal.0.push(Undo::Link(path));
    }
    // Links pinned by an earlier agent run the program instance it loaded: switch them atomically
    // to this agent's instance, so an upgraded agent's code serves every pod without a detach.
    for (spec, path) in existing.iter().filter(|(s, _)| wanted.contains(*s)) {
        if let Err(error) = update_link(&inner.ebpf, spec.program, path) {
            tracing::warn!(link = %path.display(), %error, "pinned link keeps its previous program");
        }
    }
    Ok(existing
        .into_iter()
        .filter(|(spec, _)| !wanted.contains(spec))
        .map(|(_, path)| path)
        .collect())
}

/// Undo steps, in the order they were done.
#[derive(Default)]
struct Journal(Vec<Undo>);

enum Undo {
    Settings(u64, Option<PodSettings>),
    Ports(PortKey, Option<PortFlags>),
    ProxyCg(ProxyCgroupKey, Option<u32>),
    Pod(PodName, Option<PodRecord>),
    Link(PathBuf),
    Dir(PathBuf),
}

impl Journal {
    fn roll_back(self, inner: &mut Inner, key: &PodKey) {
        let m = &mut inner.maps;
        for step in self.0.into_iter().rev() {
            let r = match step {
                Undo::Settings(k, prev) => restore(&mut m.settings, map_names::SETTINGS, k, prev),
                Undo::Ports(k, prev) => restore(&mut m.ports, map_names::PORTS, k, prev),
                Undo::ProxyCg(k, prev) => restore(&mut m.proxy_cg, map_names::PROXY_CGROUPS, k, prev),
                Undo::Pod(k, prev) => restore(&mut m.pods, map_names::PODS, k, prev),
                Undo::Link(path) => sys::detach_and_unpin(&path).map_err(|source| EbpfError::Pin {
                    path: path.clone(),
                    source,
                }),
                Undo::Dir(path) => std::fs::remove_dir(&path).map_err(|source| EbpfError::Pin {
                    path: path.clone(),
                    source,
                }),
            };
            if let Err(error) = r {
                tracing::error!(pod = %key, %error, "rollback step failed");
            }
        }
    }
}

/// For each proxy cgroup, its ancestors' cgroup ids (see `plan::ProxyPlacement::of`).
fn proxy_ancestor_ids(proxy_cgroups: &[PathBuf]) -> Vec<Vec<Option<u64>>> {
    proxy_cgroups
        .iter()
        .map(|p| sys::cgroup_ancestor_ids(p))
        .collect()
}

fn pod_name(key: &PodKey) -> PodName {
    // PodKey guarantees 1..=128 bytes from [A-Za-z0-9._-].
    PodName::new(key.as_str().as_bytes()).unwrap_or(PodName {
        bytes: [0; traffic_ebpf_common::POD_NAME_LEN],
    })
}

impl Redirector for EbpfRedirector {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn enable(&self, pod: &PodRedirect) -> Result<(), RedirectError> {
        let mut inner = self.lock();
        self.enable_locked(&mut inner, pod)
    }

    fn disable(&self, key: &PodKey) -> Result<(), RedirectError> {
        let mut inner = self.lock();
        let name = pod_name(key);
        let dir = self.pod_pin_dir(key);
        // Links first, so the programs stop before their configuration disappears.
        if dir.exists() {
            let rd = std::fs::read_dir(&dir).map_err(|source| EbpfError::Pin {
                path: dir.clone(),
                source,
            })?;
            for entry in rd.flatten() {
                let path = entry.path();
                sys::detach_and_unpin(&path).map_err(|source| EbpfError::Pin {
                    path: path.clone(),
                    source,
                })?;
            }
            std::fs::remove_dir(&dir).map_err(|source| EbpfError::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        let Some(rec) = get_opt(&inner.maps.pods, map_names::PODS, &name)? else {
            return Ok(());
        };
        let entries = inner.maps.entries_of(rec.netns_cookie)?;
        let m = &mut inner.maps;
        for k in entries.settings.keys() {
            write(&mut m.settings, map_names::SETTINGS, &Write::Delete(*k))?;
        }
        for k in entries.ports.keys() {
            write(&mut m.ports, map_names::PORTS, &Write::Delete(*k))?;
        }
        for k in &entries.proxy_cgroups {
            write(&mut m.proxy_cg, map_names::PROXY_CGROUPS, &Write::Delete(*k))?;
        }
        m.purge_connections(rec.netns_cookie);
        write(&mut m.pods, map_names::PODS, &Write::Delete(name))?;
        tracing::info!(pod = %key, "eBPF redirect disabled");
        Ok(())
    }

    fn list(&self) -> Result<Vec<Redirected>, RedirectError> {
        let inner = self.lock();
        let mut ports = BTreeMap::new();
        for item in inner.maps.ports.iter() {
            let (k, v) = item.map_err(|source| map_err(map_names::PORTS, "iterate", source))?;
            ports.insert(k, v.bits);
        }
        let mut out = Vec::new();
        for item in inner.maps.pods.iter() {
            let (name, rec) = item.map_err(|source| map_err(map_names::PODS, "iterate", source))?;
            let key = match PodKey::new(String::from_utf8_lossy(name.as_bytes()).into_owned()) {
                Ok(k) => k,
                Err(error) => {
                    tracing::warn!(%error, "ignoring a pod record with an invalid key");
                    continue;
                }
            };
            out.push(Redirected {
                key,
                mode: Mode::Ebpf,
                settings: plan::settings_from(&rec, &ports),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

impl Drop for EbpfRedirector {
    fn drop(&mut self) {
        // Stop the log thread before the maps go; pinned state stays.
        self.log_pump.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_the_object_says_how_to_build_it() {
        if object_embedded() {
            return; // the stub path only exists in stable-only builds
        }
        let e = EbpfRedirector::new(EbpfConfig::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some(EbpfError::ObjectNotBuilt.to_string().as_str()));
        assert!(EbpfError::ObjectNotBuilt
            .to_string()
            .contains("cargo xtask build-ebpf"));
    }
}
