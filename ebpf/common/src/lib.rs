//! Map keys and values shared by the eBPF programs (`ebpf/programs`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, explicitly padded (padding fields must be zero: the
//! kernel hashes every key byte), and size-asserted, so both sides agree on the layout without
//! "keep in sync" comments. The `user` feature implements `aya::Pod` for the agent.
//!
//! Byte order: addresses and the ports of [`OrigDst`] and [`TupleKey`] are in network byte order
//! (as the kernel hands them to the programs and as `sockaddr_in` wants them); ports used as map
//! keys for configuration ([`PortKey`]) and [`PodSettings::proxy_port`] are in host byte order.
#![no_std]

/// Map names. The agent finds (and pins) the maps by these names.
pub mod map_names {
    // Kernel object names hold at most 15 characters.
    pub const SETTINGS: &str = "TM_SETTINGS";
    pub const PORTS: &str = "TM_PORTS";
    pub const PROXY_CGROUPS: &str = "TM_PROXY_CG";
    pub const ORIG_BY_COOKIE: &str = "TM_ORIG_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "TM_ORIG_TUPLE";
    pub const PODS: &str = "TM_PODS";
}

/// Default capacities (the agent may override them at load time).
pub mod capacity {
    pub const SETTINGS: u32 = 4096;
    pub const PORTS: u32 = 65536;
    pub const PROXY_CGROUPS: u32 = 8192;
    /// An entry lives only from connect4/6 to sockops's `TCP_CONNECT_CB` within one `connect()`
    /// call, so in-flight entries are at most the connect() calls running at once; leftovers of
    /// connects that failed before sending a SYN are evicted (LRU). Small on purpose: its bucket
    /// array stays in cache (measured with 65536: connect4 ~700 ns per run, with 8192: ~560).
    pub const ORIG_BY_COOKIE: u32 = 8192;
    /// An entry lives from the SYN until the proxy asks for the original destination (then
    /// getsockopt removes it), i.e. while the connection waits in the proxy's accept queue:
    /// sized for every queued connection of the node, not for the cache.
    pub const ORIG_BY_TUPLE: u32 = 65536;
    pub const PODS: u32 = 4096;
}

/// Program names (the function names in `ebpf/programs`).
pub mod program_names {
    pub const CONNECT4: &str = "tm_connect4";
    pub const CONNECT6: &str = "tm_connect6";
    pub const SOCKOPS: &str = "tm_sockops";
    pub const GETSOCKOPT: &str = "tm_getsockopt";
    pub const BIND4: &str = "tm_bind4";
    pub const BIND6: &str = "tm_bind6";
}

/// Value of `TM_SETTINGS`, keyed by the pod's network namespace cookie (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodSettings {
    /// The proxy's outbound listener, host byte order.
    pub proxy_port: u16,
    pub _pad0: u16,
    /// A bit set of the `PodSettings::*` flag constants.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PodSettings>() == 8);

impl PodSettings {
    /// The pod has no `direct` port in `TM_PORTS`: connect4/6 skip looking the destination port
    /// up (one hash lookup less per connection). Negative on purpose: a record written without it
    /// (an older agent) keeps the lookup, so the flag can only save work, never skip a direct port.
    pub const NO_DIRECT_PORTS: u32 = 1;
    /// No proxy cgroup of the pod lies at or below the pod cgroup, so the pod-side programs never
    /// run for the proxy's own sockets and connect4/6 skip asking whether the caller is the proxy
    /// (one helper call and one hash lookup less per connection). Negative on purpose, like
    /// `NO_DIRECT_PORTS`: a record without it (an older agent, a nested proxy) keeps the check.
    pub const PROXY_OUTSIDE: u32 = 2;

    pub const fn has(self, bit: u32) -> bool {
        self.flags & bit != 0
    }
}

/// Key of `TM_PORTS`: (pod netns cookie, port in host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub _pad0: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 16);

impl PortKey {
    pub const fn new(netns_cookie: u64, port: u16) -> Self {
        Self {
            netns_cookie,
            port,
            _pad0: [0; 6],
        }
    }
}

/// Value of `TM_PORTS`: a bit set of [`PortFlags`] constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortFlags {
    pub bits: u32,
}
const _: () = assert!(core::mem::size_of::<PortFlags>() == 4);

impl PortFlags {
    /// Connections to this destination port bypass the proxy.
    pub const DIRECT: u32 = 1;
    /// Only the proxy may bind this port in the pod's netns.
    pub const GUARDED: u32 = 2;

    pub const fn has(self, bit: u32) -> bool {
        self.bits & bit != 0
    }
}

/// Key of `TM_PROXY_CG`: (pod netns cookie, cgroup v2 id of a proxy cgroup). Sockets created
/// by a task whose own cgroup is listed are never redirected nor bind-guarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ProxyCgroupKey {
    pub netns_cookie: u64,
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<ProxyCgroupKey>() == 16);

/// Value of `TM_PROXY_CG` (presence is what counts).
pub const PROXY_CGROUP_PRESENT: u32 = 1;

/// An original destination, as the application asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// IPv6 address, network byte order; IPv4 is stored v4-mapped (`::ffff:a.b.c.d`).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// `AF_INET` (2) if the application connected to an IPv4 or v4-mapped address, else `AF_INET6` (10).
    pub family: u16,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);

/// Value of `TM_ORIG_COOKIE` (keyed by the app socket's cookie, `u64`): written by connect4/6,
/// moved to `TM_ORIG_TUPLE` by sockops once the local port is known. Carries the netns cookie so
/// the agent can remove a pod's entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CookieEntry {
    pub netns_cookie: u64,
    pub dst: OrigDst,
}
const _: () = assert!(core::mem::size_of::<CookieEntry>() == 32);

/// Key of `TM_ORIG_TUPLE`: the redirected connection seen from the proxy's accepted socket
/// (client = the app's socket, proxy = the proxy's listener address), plus the netns cookie.
/// Addresses v4-mapped when IPv4, network byte order; ports network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TupleKey {
    pub netns_cookie: u64,
    pub client_addr: [u32; 4],
    pub proxy_addr: [u32; 4],
    pub client_port: u16,
    pub proxy_port: u16,
    pub _pad0: u32,
}
const _: () = assert!(core::mem::size_of::<TupleKey>() == 48);

/// Key of `TM_PODS` (used by the agent only): the pod key bytes, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodName {
    pub bytes: [u8; POD_NAME_LEN],
}
pub const POD_NAME_LEN: usize = 128;
const _: () = assert!(core::mem::size_of::<PodName>() == POD_NAME_LEN);

impl PodName {
    /// `None` when `name` is longer than [`POD_NAME_LEN`].
    pub fn new(name: &[u8]) -> Option<Self> {
        if name.len() > POD_NAME_LEN {
            return None;
        }
        let mut bytes = [0u8; POD_NAME_LEN];
        bytes[..name.len()].copy_from_slice(name);
        Some(Self { bytes })
    }

    /// The name without its zero padding.
    pub fn as_bytes(&self) -> &[u8] {
        let len = self.bytes.iter().position(|b| *b == 0).unwrap_or(POD_NAME_LEN);
        &self.bytes[..len]
    }
}

/// Value of `TM_PODS`: what the agent needs to list, update and remove a pod after a restart
/// (bpffs holds no regular files, so this record lives next to the state it describes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodRecord {
    pub netns_cookie: u64,
    /// cgroup v2 id of the pod cgroup the programs are attached to.
    pub cgroup_id: u64,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub proxy_port: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}
const _: () = assert!(core::mem::size_of::<PodRecord>() == 32);

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` (both 80), as netfilter defines them.
pub const SO_ORIGINAL_DST: i32 = 80;
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: u32 = 1;

/// The v4-mapped form (`::ffff:a.b.c.d`) of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(addr_be: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr_be]
}

/// Whether an IPv6 address (network byte order words) is v4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: every type is repr(C), Copy, has no implicit padding (sizes asserted above, padding
    // is explicit) and is valid for any bit pattern.
    unsafe impl aya::Pod for PodSettings {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortFlags {}
    unsafe impl aya::Pod for ProxyCgroupKey {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for CookieEntry {}
    unsafe impl aya::Pod for TupleKey {}
    unsafe impl aya::Pod for PodName {}
    unsafe impl aya::Pod for PodRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v4_mapped_address_is_recognised_and_keeps_the_ipv4_word() {
        let a = u32::from_ne_bytes([10, 96, 0, 7]);
        let m = v4_mapped(a);
        assert!(is_v4_mapped(&m));
        assert_eq!(m[3], a);
        assert!(!is_v4_mapped(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]));
    }

    #[test]
    fn a_pod_name_round_trips_without_its_padding() {
        let n = PodName::new(b"pod-1").expect("short name");
        assert_eq!(n.as_bytes(), b"pod-1");
        assert!(PodName::new(&[b'a'; POD_NAME_LEN + 1]).is_none());
    }
}
