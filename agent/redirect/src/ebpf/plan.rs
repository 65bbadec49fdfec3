//! Pure planning: what the maps and links of one pod must hold, and how to get there from what
//! they hold now. No kernel access here; `mod.rs` applies the plan.
use std::collections::{BTreeMap, BTreeSet};

use traffic_ebpf_common::{PodRecord, PodSettings, PortFlags, PortKey, ProxyCgroupKey};

use crate::Settings;

/// Everything the maps hold for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodEntries {
    /// `TM_SETTINGS`: netns cookie -> settings.
    pub settings: BTreeMap<u64, PodSettings>,
    /// `TM_PORTS`.
    pub ports: BTreeMap<PortKey, u32>,
    /// `TM_PROXY_CG`.
    pub proxy_cgroups: BTreeSet<ProxyCgroupKey>,
}

/// The identity of a pod as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIds {
    pub netns_cookie: u64,
    pub cgroup_id: u64,
}

/// Where the pod's proxies run relative to the pod cgroup (the pod-side programs run for every
/// socket created at or below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyPlacement {
    /// Every proxy cgroup lies outside the pod cgroup: connect4/6 need not ask whether the caller
    /// is the proxy (`PodSettings::PROXY_OUTSIDE`).
    Outside,
    /// A proxy cgroup is the pod cgroup's descendant, or it could not be told.
    MaybeNested,
}

impl ProxyPlacement {
    /// From each proxy cgroup's ancestors' cgroup ids (nearest first; an ancestor whose id could
    /// not be read is `None`, which counts as possibly the pod cgroup).
    pub fn of(pod_cgroup_id: u64, proxy_ancestor_ids: &[Vec<Option<u64>>]) -> Self {
        let nested = proxy_ancestor_ids
            .iter()
            .any(|ancestors| ancestors.iter().any(|id| id.is_none_or(|id| id == pod_cgroup_id)));
        if nested {
            Self::MaybeNested
        } else {
            Self::Outside
        }
    }
}

/// The map entries a pod with these settings needs.
pub fn desired_entries(
    ids: PodIds,
    settings: &Settings,
    proxy_cgroup_ids: &[u64],
    placement: ProxyPlacement,
) -> PodEntries {
    let netns = ids.netns_cookie;
    let mut ports: BTreeMap<PortKey, u32> = BTreeMap::new();
    for p in &settings.direct_ports {
        *ports.entry(PortKey::new(netns, *p)).or_default() |= PortFlags::DIRECT;
    }
    for p in &settings.guarded_ports {
        *ports.entry(PortKey::new(netns, *p)).or_default() |= PortFlags::GUARDED;
    }
    PodEntries {
        settings: [(
            netns,
            PodSettings {
                proxy_port: settings.proxy_port,
                _pad0: 0,
                flags: if settings.direct_ports.is_empty() {
                    PodSettings::NO_DIRECT_PORTS
                } else {
                    0
                } | if placement == ProxyPlacement::Outside {
                    PodSettings::PROXY_OUTSIDE
                } else {
                    0
                },
            },
        )]
        .into_iter()
        .collect(),
        ports,
        proxy_cgroups: proxy_cgroup_ids
            .iter()
            .map(|cgroup_id| ProxyCgroupKey {
                netns_cookie: netns,
                cgroup_id: *cgroup_id,
            })
            .collect(),
    }
}

/// The record `TM_PODS` keeps so that a restarted agent can list, update and remove the pod.
pub fn record(ids: PodIds, settings: &Settings) -> PodRecord {
    PodRecord {
        netns_cookie: ids.netns_cookie,
        cgroup_id: ids.cgroup_id,
        proxy_uid: settings.proxy_uid,
        proxy_gid: settings.proxy_gid,
        proxy_port: settings.proxy_port,
        _pad0: 0,
        _pad1: 0,
    }
}

/// Rebuilds the user-facing settings from a record and the pod's port entries.
pub fn settings_from(record: &PodRecord, ports: &BTreeMap<PortKey, u32>) -> Settings {
    let mut s = Settings {
        proxy_port: record.proxy_port,
        direct_ports: BTreeSet::new(),
        proxy_uid: record.proxy_uid,
        proxy_gid: record.proxy_gid,
        guarded_ports: BTreeSet::new(),
    };
    for (k, bits) in ports
        .iter()
        .filter(|(k, _)| k.netns_cookie == record.netns_cookie)
    {
        let flags = PortFlags { bits: *bits };
        if flags.has(PortFlags::DIRECT) {
            s.direct_ports.insert(k.port);
        }
        if flags.has(PortFlags::GUARDED) {
            s.guarded_ports.insert(k.port);
        }
    }
    s
}

/// One map write; `apply` turns `current` into `desired` with upserts first, deletes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<K, V> {
    Upsert(K, V),
    Delete(K),
}

/// The writes that turn `current` into `desired` (unchanged entries are not rewritten).
pub fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Vec<Write<K, V>> {
    let mut out = Vec::new();
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            out.push(Write::Upsert(*k, *v));
        }
    }
    for k in current.keys() {
        if !desired.contains_key(k) {
            out.push(Write::Delete(*k));
        }
    }
    out
}

/// A link of a pod: which program, attached to which cgroup. Its pin file name encodes both, so a
/// pod whose cgroup changed gets fresh links and the stale ones are recognised by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkSpec {
    pub program: ProgramKind,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProgramKind {
    Connect4,
    Connect6,
    SockOps,
    Bind4,
    Bind6,
    GetSockopt,
}

impl ProgramKind {
    pub const ALL: [ProgramKind; 6] = [
        ProgramKind::Connect4,
        ProgramKind::Connect6,
        ProgramKind::SockOps,
        ProgramKind::Bind4,
        ProgramKind::Bind6,
        ProgramKind::GetSockopt,
    ];

    /// The function name in the eBPF object.
    pub fn program_name(self) -> &'static str {
        use traffic_ebpf_common::program_names as n;
        match self {
            ProgramKind::Connect4 => n::CONNECT4,
            ProgramKind::Connect6 => n::CONNECT6,
            ProgramKind::SockOps => n::SOCKOPS,
            ProgramKind::Bind4 => n::BIND4,
            ProgramKind::Bind6 => n::BIND6,
            ProgramKind::GetSockopt => n::GETSOCKOPT,
        }
    }

    /// The kernel's `enum bpf_attach_type` value for this program.
    pub fn attach_type(self) -> u32 {
        match self {
            ProgramKind::SockOps => 3,     // BPF_CGROUP_SOCK_OPS
            ProgramKind::Bind4 => 8,       // BPF_CGROUP_INET4_BIND
            ProgramKind::Bind6 => 9,       // BPF_CGROUP_INET6_BIND
            ProgramKind::Connect4 => 10,   // BPF_CGROUP_INET4_CONNECT
            ProgramKind::Connect6 => 11,   // BPF_CGROUP_INET6_CONNECT
            ProgramKind::GetSockopt => 21, // BPF_CGROUP_GETSOCKOPT
        }
    }

    fn short(self) -> &'static str {
        match self {
            ProgramKind::Connect4 => "connect4",
            ProgramKind::Connect6 => "connect6",
            ProgramKind::SockOps => "sockops",
            ProgramKind::Bind4 => "bind4",
            ProgramKind::Bind6 => "bind6",
            ProgramKind::GetSockopt => "getsockopt",
        }
    }
}

impl LinkSpec {
    /// The pin file name: `<program>@<cgroup id>`.
    pub fn file_name(&self) -> String {
        format!("{}@{}", self.program.short(), self.cgroup_id)
    }

    pub fn parse(name: &str) -> Option<Self> {
        let (prog, id) = name.split_once('@')?;
        let program = ProgramKind::ALL.into_iter().find(|p| p.short() == prog)?;
        Some(Self {
            program,
            cgroup_id: id.parse().ok()?,
        })
    }
}

/// The links a pod needs: the pod-side programs on the pod cgroup, getsockopt on each proxy cgroup.
pub fn desired_links(pod_cgroup_id: u64, proxy_cgroup_ids: &[u64]) -> BTreeSet<LinkSpec> {
    let pod_side = [
        ProgramKind::Connect4,
        ProgramKind::Connect6,
        ProgramKind::SockOps,
        ProgramKind::Bind4,
        ProgramKind::Bind6,
    ];
    let mut links: BTreeSet<LinkSpec> = pod_side
        .into_iter()
        .map(|program| LinkSpec {
            program,
            cgroup_id: pod_cgroup_id,
        })
        .collect();
    links.extend(proxy_cgroup_ids.iter().map(|id| LinkSpec {
        program: ProgramKind::GetSockopt,
        cgroup_id: *id,
    }));
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(direct: &[u16], guarded: &[u16]) -> Settings {
        Settings {
            proxy_port: 15001,
            direct_ports: direct.iter().copied().collect(),
            proxy_uid: 1337,
            proxy_gid: 1337,
            guarded_ports: guarded.iter().copied().collect(),
        }
    }

    const IDS: PodIds = PodIds {
        netns_cookie: 42,
        cgroup_id: 7,
    };

    #[test]
    fn a_port_both_direct_and_guarded_gets_both_flags_in_one_entry() {
        let e = desired_entries(
            IDS,
            &settings(&[15000, 3306], &[15000]),
            &[9],
            ProxyPlacement::Outside,
        );
        assert_eq!(
            e.ports.get(&PortKey::new(42, 15000)),
            Some(&(PortFlags::DIRECT | PortFlags::GUARDED))
        );
        assert_eq!(e.ports.get(&PortKey::new(42, 3306)), Some(&PortFlags::DIRECT));
        assert_eq!(e.ports.len(), 2);
        assert!(e.proxy_cgroups.contains(&ProxyCgroupKey {
            netns_cookie: 42,
            cgroup_id: 9
        }));
        assert_eq!(e.settings.get(&42).map(|s| s.proxy_port), Some(15001));
    }

    #[test]
    fn only_a_pod_without_direct_ports_lets_connect_skip_the_port_lookup() {
        let flags = |direct: &[u16]| {
            desired_entries(IDS, &settings(direct, &[15001]), &[], ProxyPlacement::Outside)
                .settings
                .get(&42)
                .map(|s| s.has(PodSettings::NO_DIRECT_PORTS))
        };
        assert_eq!(flags(&[]), Some(true));
        assert_eq!(flags(&[3306]), Some(false));
    }

    #[test]
    fn only_proxies_provably_outside_the_pod_cgroup_let_connect_skip_the_proxy_lookup() {
        let pod = IDS.cgroup_id;
        let placement = |ancestors: &[Vec<Option<u64>>]| ProxyPlacement::of(pod, ancestors);
        // Siblings of the pod cgroup under a common parent 3 and the root 1.
        assert_eq!(placement(&[vec![Some(3), Some(1)]]), ProxyPlacement::Outside);
        assert_eq!(placement(&[]), ProxyPlacement::Outside);
        // One of two proxies nested below the pod cgroup.
        assert_eq!(
            placement(&[vec![Some(3), Some(1)], vec![Some(11), Some(pod), Some(3)]]),
            ProxyPlacement::MaybeNested
        );
        // An unreadable ancestor might be the pod cgroup.
        assert_eq!(placement(&[vec![None, Some(1)]]), ProxyPlacement::MaybeNested);
        let flag = |placement| {
            desired_entries(IDS, &settings(&[], &[]), &[9], placement)
                .settings
                .get(&42)
                .map(|s| s.has(PodSettings::PROXY_OUTSIDE))
        };
        assert_eq!(flag(ProxyPlacement::Outside), Some(true));
        assert_eq!(flag(ProxyPlacement::MaybeNested), Some(false));
    }

    #[test]
    fn settings_rebuilt_from_maps_equal_the_settings_that_were_applied() {
        let s = settings(&[3306, 15000], &[15000, 15001, 8900]);
        let e = desired_entries(IDS, &s, &[], ProxyPlacement::MaybeNested);
        let mut ports = e.ports.clone();
        ports.insert(PortKey::new(99, 1), PortFlags::DIRECT); // another pod's entry is ignored
        assert_eq!(settings_from(&record(IDS, &s), &ports), s);
    }

    #[test]
    fn an_update_rewrites_only_changed_entries_and_deletes_the_rest() {
        let cur: BTreeMap<u32, u32> = [(1, 1), (2, 2), (3, 3)].into_iter().collect();
        let want: BTreeMap<u32, u32> = [(1, 1), (2, 5), (4, 4)].into_iter().collect();
        assert_eq!(
            diff_map(&cur, &want),
            vec![Write::Upsert(2, 5), Write::Upsert(4, 4), Write::Delete(3)]
        );
        assert!(diff_map(&want, &want).is_empty());
    }

    #[test]
    fn link_file_names_round_trip_and_foreign_names_are_rejected() {
        for l in desired_links(7, &[8, 9]) {
            assert_eq!(LinkSpec::parse(&l.file_name()), Some(l));
        }
        assert_eq!(desired_links(7, &[8, 9]).len(), 7);
        assert_eq!(LinkSpec::parse("connect4"), None);
        assert_eq!(LinkSpec::parse("other@1"), None);
        assert_eq!(LinkSpec::parse("bind4@x"), None);
    }
}
