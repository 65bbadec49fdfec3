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
mod plan;
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError};
use aya::programs::{CgroupSockAddr, CgroupSockopt, SockOps};
use aya::{Ebpf, EbpfLoader, Pod};
use traffic_ebpf_common::{
    CookieEntry, OrigDst, PodName, PodRecord, PodSettings, PortFlags, PortKey, ProxyCgroupKey, TupleKey,
    PROXY_CGROUP_PRESENT,
};

use crate::{Mode, PodKey, PodRedirect, RedirectError, Redirected, Redirector};
use plan::{LinkSpec, PodIds, ProgramKind, Write};

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

struct Maps {
    settings: BpfHashMap<MapData, u64, PodSettings>,
    ports: BpfHashMap<MapData, PortKey, PortFlags>,
    proxy_cg: BpfHashMap<MapData, ProxyCgroupKey, u32>,
    orig_cookie: BpfHashMap<MapData, u64, CookieEntry>,
    orig_tuple: BpfHashMap<MapData, TupleKey, OrigDst>,
    pods: BpfHashMap<MapData, PodName, PodRecord>,
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
        let maps = Maps {
            settings: take_map(&mut ebpf, map_names::SETTINGS)?,
            ports: take_map(&mut ebpf, map_names::PORTS)?,
            proxy_cg: take_map(&mut ebpf, map_names::PROXY_CGROUPS)?,
            orig_cookie: take_map(&mut ebpf, map_names::ORIG_BY_COOKIE)?,
            orig_tuple: take_map(&mut ebpf, map_names::ORIG_BY_TUPLE)?,
            pods: take_map(&mut ebpf, map_names::PODS)?,
        };
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
        let inner = self.lock();
        let m = &inner.maps;
        Ok(vec![
            usage(map_names::SETTINGS, &m.settings)?,
            usage(map_names::PORTS, &m.ports)?,
            usage(map_names::PROXY_CGROUPS, &m.proxy_cg)?,
            usage(map_names::ORIG_BY_COOKIE, &m.orig_cookie)?,
            usage(map_names::ORIG_BY_TUPLE, &m.orig_tuple)?,
            usage(map_names::PODS, &m.pods)?,
        ])
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

fn key_of<K: Copy, V>(w: &Write<K, V>) -> K {
    match w {
        Write::Upsert(k, _) | Write::Delete(k) => *k,
    }
}

/// The links pinned in a pod directory (foreign names are ignored).
fn pinned_links(dir: &Path) -> Result<BTreeMap<LinkSpec, PathBuf>, EbpfError> {
    let rd = std::fs::read_dir(dir).map_err(|source| EbpfError::Pin {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in rd.flatten() {
        if let Some(spec) = entry.file_name().to_str().and_then(LinkSpec::parse) {
            out.insert(spec, entry.path());
        }
    }
    Ok(out)
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

fn restore<K: Pod, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    name: &'static str,
    key: K,
    prev: Option<V>,
) -> Result<(), EbpfError> {
    let w = match prev {
        Some(v) => Write::Upsert(key, v),
        None => Write::Delete(key),
    };
    write(map, name, &w).map(|_| ())
}

/// Performs one write; returns the value it replaced.
fn write<K: Pod, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    name: &'static str,
    w: &Write<K, V>,
) -> Result<Option<V>, EbpfError> {
    let prev = get_opt(map, name, &key_of(w))?;
    match w {
        Write::Upsert(k, v) => map.insert(k, v, 0).map_err(|source| {
            if is_errno(&source, libc::E2BIG) {
                let capacity = map.map().info().map(|i| i.max_entries()).unwrap_or(0);
                EbpfError::MapFull { map: name, capacity }
            } else {
                map_err(name, "insert", source)
            }
        })?,
        Write::Delete(k) => match map.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) | Err(MapError::ElementNotFound) => {}
            Err(e) if is_errno(&e, libc::ENOENT) => {}
            Err(e) => return Err(map_err(name, "remove", e)),
        },
    }
    Ok(prev)
}

fn get_opt<K: Pod, V: Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>, EbpfError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) | Err(MapError::ElementNotFound) => Ok(None),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(None),
        Err(e) => Err(map_err(name, "lookup", e)),
    }
}

fn is_errno(e: &MapError, errno: i32) -> bool {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(errno),
        MapError::IoError(io) => io.raw_os_error() == Some(errno),
        _ => false,
    }
}

fn map_err(map: &'static str, op: &'static str, source: MapError) -> EbpfError {
    EbpfError::Map { map, op, source }
}

fn usage<K: Pod, V: Pod>(name: &'static str, map: &BpfHashMap<MapData, K, V>) -> Result<MapUsage, EbpfError> {
    let entries = map.keys().filter(|k| k.is_ok()).count() as u32;
    let capacity = map
        .map()
        .info()
        .map_err(|source| map_err(name, "info", source))?
        .max_entries();
    Ok(MapUsage {
        name,
        entries,
        capacity,
    })
}

impl Maps {
    /// Every configuration entry keyed by this netns cookie.
    fn entries_of(&self, netns: u64) -> Result<plan::PodEntries, EbpfError> {
        let mut e = plan::PodEntries::default();
        if let Some(s) = get_opt(&self.settings, map_names::SETTINGS, &netns)? {
            e.settings.insert(netns, s);
        }
        for item in self.ports.iter() {
            let (k, v) = item.map_err(|source| map_err(map_names::PORTS, "iterate", source))?;
            if k.netns_cookie == netns {
                e.ports.insert(k, v.bits);
            }
        }
        for item in self.proxy_cg.keys() {
            let k = item.map_err(|source| map_err(map_names::PROXY_CGROUPS, "iterate", source))?;
            if k.netns_cookie == netns {
                e.proxy_cgroups.insert(k);
            }
        }
        Ok(e)
    }

    /// Removes the per-connection entries of a netns (best effort: they are LRU anyway).
    fn purge_connections(&mut self, netns: u64) {
        let cookies: Vec<u64> = self
            .orig_cookie
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.netns_cookie == netns)
            .map(|(k, _)| k)
            .collect();
        for k in cookies {
            let _ = self.orig_cookie.remove(&k);
        }
        let tuples: Vec<TupleKey> = self
            .orig_tuple
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie == netns)
            .collect();
        for k in tuples {
            let _ = self.orig_tuple.remove(&k);
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

fn take_map<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, EbpfError> {
    let map = ebpf.take_map(name).ok_or(EbpfError::MapLayout {
        map: name,
        source: None,
    })?;
    let map: BpfHashMap<MapData, K, V> = map.try_into().map_err(|e| EbpfError::MapLayout {
        map: name,
        source: Some(e),
    })?;
    // A map pinned by an older agent may have another layout: refuse it rather than misread it.
    let info = map.map().info().map_err(|e| EbpfError::MapLayout {
        map: name,
        source: Some(e),
    })?;
    if info.key_size() as usize != std::mem::size_of::<K>()
        || info.value_size() as usize != std::mem::size_of::<V>()
    {
        return Err(EbpfError::MapLayout {
            map: name,
            source: None,
        });
    }
    Ok(map)
}

fn load_and_pin(ebpf: &mut Ebpf, kind: ProgramKind, progs_dir: &Path) -> Result<(), EbpfError> {
    let name = kind.program_name();
    let err = |source| EbpfError::Program {
        program: name,
        source: Some(source),
    };
    let prog = ebpf.program_mut(name).ok_or(EbpfError::Program {
        program: name,
        source: None,
    })?;
    match kind {
        ProgramKind::SockOps => {
            let p: &mut SockOps = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
        ProgramKind::GetSockopt => {
            let p: &mut CgroupSockopt = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
        _ => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
    }
    // Pin the newest instance for inspection; older pinned instances stay alive through their links.
    let path = progs_dir.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(EbpfError::Pin { path, source: e });
        }
        _ => {}
    }
    prog.pin(&path).map_err(|e| EbpfError::Pin {
        path: path.clone(),
        source: std::io::Error::other(e),
    })
}

/// Attaches one program to a cgroup with a bpf_link and pins the link at `path`.
///
/// The link is created with our own `BPF_LINK_CREATE` rather than aya's `attach`: aya 0.14 cannot
/// turn a cgroup sockopt link into a pinnable `FdLink`, and one code path for all six is simpler.
fn attach_and_pin(ebpf: &Ebpf, kind: ProgramKind, cgroup: &Path, path: &Path) -> Result<(), EbpfError> {
    let program = kind.program_name();
    let fail = |source: std::io::Error| EbpfError::Attach {
        program,
        cgroup: cgroup.to_path_buf(),
        source,
    };
    let cgroup_file = File::open(cgroup).map_err(fail)?;
    let prog = ebpf.program(program).ok_or(EbpfError::Program {
        program,
        source: None,
    })?;
    let prog_fd = prog.fd().map_err(|e| EbpfError::Program {
        program,
        source: Some(e),
    })?;
    let link = sys::link_create(prog_fd.as_fd(), cgroup_file.as_fd(), kind.attach_type()).map_err(fail)?;
    sys::obj_pin(link.as_fd(), path).map_err(|source| EbpfError::Pin {
        path: path.to_path_buf(),
        source,
    })
    // `link` closes here; the pin keeps the attachment.
}

/// Points a pinned link at this process's instance of its program (no-op when it already does).
fn update_link(ebpf: &Ebpf, kind: ProgramKind, path: &Path) -> Result<(), EbpfError> {
    let program = kind.program_name();
    let prog = ebpf.program(program).ok_or(EbpfError::Program {
        program,
        source: None,
    })?;
    let prog_fd = prog.fd().map_err(|e| EbpfError::Program {
        program,
        source: Some(e),
    })?;
    let pin = |source| EbpfError::Pin {
        path: path.to_path_buf(),
        source,
    };
    let link = sys::obj_get(path).map_err(pin)?;
    sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(pin)
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

/// Forwards aya-log records from the programs to `tracing` on a small thread.
struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match aya_log::EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "eBPF logs will not be forwarded");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the result only decides when to flush.
                    let _ = unsafe { libc::poll(&mut pfd, 1, 200) };
                    logger.flush();
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EbpfRedirector {
    fn drop(&mut self) {
        // Stop the log thread before the maps go; pinned state stays.
        self.log_pump.take();
    }
}

struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "traffic_ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "traffic_ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "traffic_ebpf", "{msg}"),
            _ => tracing::debug!(target: "traffic_ebpf", "{msg}"),
        }
    }
    fn flush(&self) {}
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
