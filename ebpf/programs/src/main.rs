//! The traffic-manager datapath: cgroup eBPF programs attached to a pod's cgroup v2 directory
//! (connect4/6, sockops, bind4/6) and to its proxy's cgroup (getsockopt).
//!
//! - `connect4/6` rewrite an application's TCP `connect()` to the pod's proxy on loopback and
//!   remember the original destination by socket cookie.
//! - `sockops` moves that record to a 4-tuple key as soon as the local port is known
//!   (`TCP_CONNECT_CB`), i.e. before the proxy can accept the connection.
//! - `getsockopt` answers the proxy's `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` from the 4-tuple,
//!   in the form netfilter conntrack answers it, and then removes the record: the original
//!   destination of a connection can be read once (Envoy reads it once per accepted connection).
//! - `bind4/6` stop the pod's applications from binding the proxy's ports.
//!
//! Every program is keyed by the network namespace cookie: `bpf_get_current_cgroup_id()` is the
//! container's own cgroup, not the pod cgroup the program is attached to.
//!
//! `unsafe` is needed for the kernel context pointers and helpers; every access is a plain load or
//! store the verifier checks.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_sock, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, cgroup_sockopt, map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext, SockoptContext},
};
use aya_log_ebpf::warn;
use traffic_ebpf_common::{
    capacity, is_v4_mapped, v4_mapped, CookieEntry, OrigDst, PodName, PodRecord, PodSettings, PortFlags,
    PortKey, ProxyCgroupKey, TupleKey, AF_INET, AF_INET6, SOCK_STREAM, SOL_IP, SOL_IPV6, SO_ORIGINAL_DST,
};

#[map]
static TM_SETTINGS: HashMap<u64, PodSettings> = HashMap::pinned(capacity::SETTINGS, 0);
#[map]
static TM_PORTS: HashMap<PortKey, PortFlags> = HashMap::pinned(capacity::PORTS, 0);
#[map]
static TM_PROXY_CG: HashMap<ProxyCgroupKey, u32> = HashMap::pinned(capacity::PROXY_CGROUPS, 0);
/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists. An entry lives from connect4/6 to sockops's
/// `TCP_CONNECT_CB` in the same `connect()` call, on the same CPU, so per-CPU lists never run dry
/// and inserts take no lock shared between CPUs.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Keyed by socket cookie rather than kept in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`,
/// written by connect4/6 and read by sockops on the same socket, no delete): measured in
/// `cargo xtask bench redirect` (notes/bench/ebpfcpu2-*), the storage makes sockops cheaper
/// (~560 -> ~450 ns per connection) but connect4 dearer (~420 -> ~470-610 ns: two allocations per
/// socket) and its free at close lands outside the programs: ebpf/limit by CPU fell from
/// 0.981-0.982 to 0.974-0.978.
#[map]
static TM_ORIG_COOKIE: LruHashMap<u64, CookieEntry> =
    LruHashMap::pinned(capacity::ORIG_BY_COOKIE, BPF_F_NO_COMMON_LRU);
#[map]
static TM_ORIG_TUPLE: LruHashMap<TupleKey, OrigDst> = LruHashMap::pinned(capacity::ORIG_BY_TUPLE, 0);
/// Written and read by the agent only (its record of managed pods, so it survives restarts).
#[map]
static TM_PODS: HashMap<PodName, PodRecord> = HashMap::pinned(capacity::PODS, 0);

/// Cgroup sock_addr and sockopt programs: 1 lets the syscall proceed, 0 fails it with EPERM.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// One volatile load of a context field (see `record_tuple`).
#[inline(always)]
unsafe fn rd<T: Copy>(field: *const T) -> T {
    core::ptr::read_volatile(field)
}

/// One volatile store to a context field.
#[inline(always)]
unsafe fn wr<T: Copy>(field: *mut T, v: T) {
    core::ptr::write_volatile(field, v)
}

#[inline(always)]
fn is_loopback4(addr_be: u32) -> bool {
    addr_be.to_ne_bytes()[0] == 127
}

/// Whether the task calling into the program runs in one of the pod's proxy cgroups.
#[inline(always)]
fn from_proxy(netns_cookie: u64) -> bool {
    // SAFETY: helper without arguments, available to every cgroup program type used here.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let key = ProxyCgroupKey {
        netns_cookie,
        cgroup_id,
    };
    TM_PROXY_CG.get_ptr(&key).is_some()
}

#[inline(always)]
fn port_flags(netns_cookie: u64, port: u16) -> PortFlags {
    match TM_PORTS.get_ptr(&PortKey::new(netns_cookie, port)) {
        // SAFETY: the pointer comes from a successful lookup of a 4-byte value.
        Some(p) => unsafe { *p },
        None => PortFlags::default(),
    }
}

/// What connect4/6 decided: the pod's proxy port (host order) to redirect to, if any.
#[inline(always)]
fn redirect_port(ctx: &SockAddrContext, dst_port_be: u16) -> Option<(u64, u16)> {
    // SAFETY: ctx is the kernel's bpf_sock_addr for this program.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: the pointer comes from a successful lookup of an 8-byte value.
    let settings = unsafe { *TM_SETTINGS.get_ptr(&netns)? };
    if !settings.has(PodSettings::NO_DIRECT_PORTS)
        && port_flags(netns, u16::from_be(dst_port_be)).has(PortFlags::DIRECT)
    {
        return None;
    }
    if !settings.has(PodSettings::PROXY_OUTSIDE) && from_proxy(netns) {
        return None;
    }
    Some((netns, settings.proxy_port))
}

/// Remembers the original destination of this socket; false when the map refused it (then the
/// connection is not redirected: a proxy that cannot learn the destination would drop it).
#[inline(always)]
fn remember(ctx: &SockAddrContext, netns_cookie: u64, dst: OrigDst) -> bool {
    // SAFETY: ctx is the kernel's bpf_sock_addr for this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let entry = CookieEntry { netns_cookie, dst };
    if TM_ORIG_COOKIE.insert(&cookie, &entry, 0).is_err() {
        warn!(
            ctx,
            "traffic-manager: cannot record original destination, not redirecting"
        );
        return false;
    }
    true
}

#[cgroup_sock_addr(connect4)]
pub fn tm_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: plain context loads/stores the verifier checks for this attach type.
    unsafe {
        if rd(&(*sa).type_) != SOCK_STREAM {
            return ALLOW;
        }
        let dst = rd(&(*sa).user_ip4);
        if dst == 0 || is_loopback4(dst) {
            return ALLOW;
        }
        let port_be = rd(&(*sa).user_port) as u16;
        let Some((netns, proxy_port)) = redirect_port(&ctx, port_be) else {
            return ALLOW;
        };
        let orig = OrigDst {
            addr: v4_mapped(dst),
            port: port_be,
            family: AF_INET,
            _pad0: 0,
        };
        if !remember(&ctx, netns, orig) {
            return ALLOW;
        }
        wr(&mut (*sa).user_ip4, LOOPBACK4);
        wr(&mut (*sa).user_port, u32::from(proxy_port.to_be()));
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn tm_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: plain context loads/stores the verifier checks for this attach type.
    unsafe {
        if rd(&(*sa).type_) != SOCK_STREAM {
            return ALLOW;
        }
        // user_ip6 only allows 4-byte accesses: read the words one by one.
        let dst = [
            rd(&(*sa).user_ip6[0]),
            rd(&(*sa).user_ip6[1]),
            rd(&(*sa).user_ip6[2]),
            rd(&(*sa).user_ip6[3]),
        ];
        let mapped = is_v4_mapped(&dst);
        if mapped {
            if dst[3] == 0 || is_loopback4(dst[3]) {
                return ALLOW;
            }
        } else if dst == LOOPBACK6 || dst == [0; 4] {
            return ALLOW;
        }
        let port_be = rd(&(*sa).user_port) as u16;
        let Some((netns, proxy_port)) = redirect_port(&ctx, port_be) else {
            return ALLOW;
        };
        let family = if mapped { AF_INET } else { AF_INET6 };
        let orig = OrigDst {
            addr: dst,
            port: port_be,
            family,
            _pad0: 0,
        };
        if !remember(&ctx, netns, orig) {
            return ALLOW;
        }
        // A v4-mapped destination goes to the proxy's IPv4 loopback listener through the same
        // dual-stack socket; a real IPv6 destination goes to ::1.
        let to = if mapped { v4_mapped(LOOPBACK4) } else { LOOPBACK6 };
        wr(&mut (*sa).user_ip6[0], to[0]);
        wr(&mut (*sa).user_ip6[1], to[1]);
        wr(&mut (*sa).user_ip6[2], to[2]);
        wr(&mut (*sa).user_ip6[3], to[3]);
        wr(&mut (*sa).user_port, u32::from(proxy_port.to_be()));
    }
    ALLOW
}

/// The socket's callback flag that marks "the tuple could not be stored at `TCP_CONNECT_CB`, try
/// again at `ACTIVE_ESTABLISHED_CB`". `RTO_CB` because its only side effect is a callback on a
/// retransmission timeout, which this program ignores (the flag is never cleared: another
/// program may have set it too).
const RETRY_FLAG: u32 = BPF_SOCK_OPS_RTO_CB_FLAG;

#[sock_ops]
pub fn tm_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        if record_tuple(&ctx) == Recorded::Failed {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | RETRY_FLAG) as i32);
        }
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ctx.cb_flags() & RETRY_FLAG != 0 {
        // Only a socket whose first attempt failed (or that another program flagged) pays for
        // the cookie and the lookup again: the other 4 callbacks of a connection return here.
        record_tuple(&ctx);
    }
    1
}

#[derive(PartialEq, Eq)]
enum Recorded {
    /// Not a redirected socket (or already recorded).
    Nothing,
    Stored,
    Failed,
}

/// Moves the original destination of a redirected socket to its 4-tuple key: at `TCP_CONNECT_CB`
/// (local port known, SYN not sent yet), and again at `ACTIVE_ESTABLISHED_CB` only if that first
/// attempt could not store the tuple (flagged with `RETRY_FLAG`, so the other sockets' second
/// callback costs a context load instead of a cookie and a lookup).
#[inline(always)]
fn record_tuple(ctx: &SockOpsContext) -> Recorded {
    // SAFETY: ctx is the kernel's bpf_sock_ops for this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    let Some(entry) = TM_ORIG_COOKIE.get_ptr(&cookie) else {
        return Recorded::Nothing;
    };
    // SAFETY: the pointer comes from a successful lookup.
    let entry = unsafe { *entry };
    let ops = ctx.ops;
    // SAFETY: ctx field loads. Each one is a volatile read of exactly one field so that LLVM
    // cannot fold the offsets into a modified context pointer, which the verifier rejects.
    // Every field is loaded unconditionally and the values are selected afterwards: loads in
    // both arms of a branch get merged into one load from `ctx + variable offset` otherwise.
    let (client_addr, proxy_addr, local_port, remote) = unsafe {
        let family = rd(&(*ops).family);
        let l4 = rd(&(*ops).local_ip4);
        let r4 = rd(&(*ops).remote_ip4);
        let l6 = [
            rd(&(*ops).local_ip6[0]),
            rd(&(*ops).local_ip6[1]),
            rd(&(*ops).local_ip6[2]),
            rd(&(*ops).local_ip6[3]),
        ];
        let r6 = [
            rd(&(*ops).remote_ip6[0]),
            rd(&(*ops).remote_ip6[1]),
            rd(&(*ops).remote_ip6[2]),
            rd(&(*ops).remote_ip6[3]),
        ];
        let lport = rd(&(*ops).local_port);
        let rport = rd(&(*ops).remote_port);
        if family == u32::from(AF_INET) {
            (v4_mapped(l4), v4_mapped(r4), lport, rport)
        } else {
            (l6, r6, lport, rport)
        }
    };
    // local_port is host order; remote_port is the network-order port, which little-endian
    // kernels shift into the upper half of the word.
    let proxy_port = if remote >> 16 != 0 {
        (remote >> 16) as u16
    } else {
        remote as u16
    };
    let key = TupleKey {
        netns_cookie: entry.netns_cookie,
        client_addr,
        proxy_addr,
        client_port: (local_port as u16).to_be(),
        proxy_port,
        _pad0: 0,
    };
    if TM_ORIG_TUPLE.insert(&key, &entry.dst, 0).is_err() {
        warn!(ctx, "traffic-manager: cannot record connection tuple");
        return Recorded::Failed;
    }
    // The tuple is recorded: the cookie entry has done its job (a later connect() on the same
    // socket records a new one).
    let _ = TM_ORIG_COOKIE.remove(&cookie);
    Recorded::Stored
}

/// `struct sockaddr_in` as `SO_ORIGINAL_DST` returns it.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6` as `IP6T_SO_ORIGINAL_DST` returns it.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

#[cgroup_sockopt(getsockopt)]
pub fn tm_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: plain context loads/stores the verifier checks for this attach type; the optval
    // writes are bounds-checked against optval_end.
    unsafe { answer_original_dst(&ctx) };
    ALLOW
}

#[inline(always)]
unsafe fn answer_original_dst(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    let level = rd(&(*so).level);
    if rd(&(*so).optname) != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    let sk: *mut bpf_sock = rd(&(*so).__bindgen_anon_1.sk);
    if sk.is_null() {
        return;
    }
    // The proxy's accepted socket: local = the proxy's listener, peer = the app's socket.
    // Loaded unconditionally, selected afterwards (see `record_tuple`).
    let family = rd(&(*sk).family);
    let d4 = rd(&(*sk).dst_ip4);
    let s4 = rd(&(*sk).src_ip4);
    let d6 = [
        rd(&(*sk).dst_ip6[0]),
        rd(&(*sk).dst_ip6[1]),
        rd(&(*sk).dst_ip6[2]),
        rd(&(*sk).dst_ip6[3]),
    ];
    let s6 = [
        rd(&(*sk).src_ip6[0]),
        rd(&(*sk).src_ip6[1]),
        rd(&(*sk).src_ip6[2]),
        rd(&(*sk).src_ip6[3]),
    ];
    let (client_addr, proxy_addr) = if family == u32::from(AF_INET) {
        (v4_mapped(d4), v4_mapped(s4))
    } else {
        (d6, s6)
    };
    let key = TupleKey {
        netns_cookie: bpf_get_netns_cookie(so as *mut c_void),
        client_addr,
        proxy_addr,
        client_port: rd(&(*sk).dst_port) as u16,
        proxy_port: (rd(&(*sk).src_port) as u16).to_be(),
        _pad0: 0,
    };
    let Some(orig) = TM_ORIG_TUPLE.get_ptr(&key) else {
        return;
    };
    let orig = *orig;
    let optval = rd(&(*so).__bindgen_anon_2.optval) as *mut u8;
    let optval_end = rd(&(*so).__bindgen_anon_3.optval_end) as *mut u8;
    if level == SOL_IP {
        if orig.family != AF_INET {
            return; // an IPv6 destination has no sockaddr_in form; conntrack would fail too
        }
        let len = core::mem::size_of::<SockaddrIn>();
        if optval.is_null() || optval.add(len) > optval_end {
            return;
        }
        let out = SockaddrIn {
            family: AF_INET,
            port_be: orig.port,
            addr_be: orig.addr[3],
            zero: [0; 8],
        };
        core::ptr::write_unaligned(optval as *mut SockaddrIn, out);
        wr(&mut (*so).optlen, len as i32);
    } else {
        let len = core::mem::size_of::<SockaddrIn6>();
        if optval.is_null() || optval.add(len) > optval_end {
            return;
        }
        let out = SockaddrIn6 {
            family: AF_INET6,
            port_be: orig.port,
            flowinfo: 0,
            addr: orig.addr,
            scope_id: 0,
        };
        core::ptr::write_unaligned(optval as *mut SockaddrIn6, out);
        wr(&mut (*so).optlen, len as i32);
    }
    wr(&mut (*so).retval, 0);
    // Answered: the entry has done its job. Removing it keeps the map nearly empty, so the
    // next insert in sockops neither evicts nor walks a full LRU (measured: sockops 315 -> 149
    // ns per run, getsockopt 165 -> 274). A second query on the same connection then fails as
    // it would for a connection that was not redirected; Envoy asks once per connection.
    let _ = TM_ORIG_TUPLE.remove(&key);
}

#[inline(always)]
fn bind_verdict(ctx: &SockAddrContext) -> i32 {
    // SAFETY: plain context load; user_port allows 4-byte reads.
    let port = u16::from_be(unsafe { rd(&(*ctx.sock_addr).user_port) } as u16);
    if port == 0 {
        return ALLOW;
    }
    // SAFETY: ctx is the kernel's bpf_sock_addr for this program.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut c_void) };
    if port_flags(netns, port).has(PortFlags::GUARDED) && !from_proxy(netns) {
        // Rare and worth an operator's attention (an app squatting on the proxy's port).
        warn!(ctx, "traffic-manager: denied bind to guarded port {}", port);
        return DENY;
    }
    ALLOW
}

#[cgroup_sock_addr(bind4)]
pub fn tm_bind4(ctx: SockAddrContext) -> i32 {
    bind_verdict(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn tm_bind6(ctx: SockAddrContext) -> i32 {
    bind_verdict(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
