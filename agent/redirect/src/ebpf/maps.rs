//! The agent's handles on the pinned maps, and the typed reads and writes it makes through them.
use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError};
use aya::{Ebpf, Pod};
use traffic_ebpf_common::{
    map_names, CookieEntry, OrigDst, PodName, PodRecord, PodSettings, PortFlags, PortKey, ProxyCgroupKey,
    TupleKey,
};

use super::plan::{self, Write};
use super::{EbpfError, MapUsage};

/// The maps the agent reads and writes.
pub(super) struct Maps {
    pub(super) settings: BpfHashMap<MapData, u64, PodSettings>,
    pub(super) ports: BpfHashMap<MapData, PortKey, PortFlags>,
    pub(super) proxy_cg: BpfHashMap<MapData, ProxyCgroupKey, u32>,
    pub(super) orig_cookie: BpfHashMap<MapData, u64, CookieEntry>,
    pub(super) orig_tuple: BpfHashMap<MapData, TupleKey, OrigDst>,
    pub(super) pods: BpfHashMap<MapData, PodName, PodRecord>,
}

impl Maps {
    /// Takes the maps out of a loaded object, refusing any whose layout is not this agent's.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            settings: take_map(ebpf, map_names::SETTINGS)?,
            ports: take_map(ebpf, map_names::PORTS)?,
            proxy_cg: take_map(ebpf, map_names::PROXY_CGROUPS)?,
            orig_cookie: take_map(ebpf, map_names::ORIG_BY_COOKIE)?,
            orig_tuple: take_map(ebpf, map_names::ORIG_BY_TUPLE)?,
            pods: take_map(ebpf, map_names::PODS)?,
        })
    }

    /// Fill level of every map (walks the maps; cheap at the sizes used here).
    pub(super) fn usage(&self) -> Result<Vec<MapUsage>, EbpfError> {
        Ok(vec![
            usage(map_names::SETTINGS, &self.settings)?,
            usage(map_names::PORTS, &self.ports)?,
            usage(map_names::PROXY_CGROUPS, &self.proxy_cg)?,
            usage(map_names::ORIG_BY_COOKIE, &self.orig_cookie)?,
            usage(map_names::ORIG_BY_TUPLE, &self.orig_tuple)?,
            usage(map_names::PODS, &self.pods)?,
        ])
    }

    /// Every configuration entry keyed by this netns cookie.
    pub(super) fn entries_of(&self, netns: u64) -> Result<plan::PodEntries, EbpfError> {
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
    pub(super) fn purge_connections(&mut self, netns: u64) {
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

pub(super) fn restore<K: Pod, V: Pod>(
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
pub(super) fn write<K: Pod, V: Pod>(
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

pub(super) fn get_opt<K: Pod, V: Pod>(
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

pub(super) fn is_errno(e: &MapError, errno: i32) -> bool {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(errno),
        MapError::IoError(io) => io.raw_os_error() == Some(errno),
        _ => false,
    }
}

pub(super) fn map_err(map: &'static str, op: &'static str, source: MapError) -> EbpfError {
    EbpfError::Map { map, op, source }
}

pub(super) fn usage<K: Pod, V: Pod>(
    name: &'static str,
    map: &BpfHashMap<MapData, K, V>,
) -> Result<MapUsage, EbpfError> {
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

pub(super) fn take_map<K: Pod, V: Pod>(
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

pub(super) fn key_of<K: Copy, V>(w: &Write<K, V>) -> K {
    match w {
        Write::Upsert(k, _) | Write::Delete(k) => *k,
    }
}
