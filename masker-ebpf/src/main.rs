//! masker's eBPF programs. All are attached to one cgroup v2 directory (the
//! root by default) and so run for every socket created below it.
//!
//! | program              | hook                    | does                                                      |
//! |----------------------|-------------------------|-----------------------------------------------------------|
//! | `masker_connect4/6`  | `cgroup/connect4/6`     | redirects tagged TCP connects to targets to the listener of the socket's network namespace; refuses what the egress lock forbids |
//! | `masker_sendmsg4/6`  | `cgroup/sendmsg4/6`     | refuses unconnected UDP sends the egress lock forbids     |
//! | `masker_sock_ops`    | `sockops`               | re-keys the record by the client's namespace and address  |
//! | `masker_getpeer4/6`  | `cgroup/getpeername4/6` | shows the original destination to the client              |
//!
//! Kernel: cgroup `connect4/6` 4.17, `sendmsg4/6` 4.18, `sockops` 4.13,
//! `getpeername4/6` 5.8, `bpf_get_current_ancestor_cgroup_id` in sock_addr
//! programs 5.7, `bpf_get_netns_cookie` in sock_addr programs 5.7, bpf links
//! for cgroups 5.7 (needed to pin attachments), ring buffers 5.8 (aya-log).
//! The agent reads namespace cookies with `SO_NETNS_COOKIE` (5.14). Tested on
//! 6.18.
//!
//! Decisions for a socket of a tagged cgroup (the task's cgroup or an
//! ancestor is in `MASKER_TAGS`), in order:
//!
//! 1. a socket carrying the agent's mark: allowed untouched;
//! 2. TCP to a target: rewritten to the listener the agent opened in the
//!    socket's network namespace; no listener there: refused (`EPERM`) and
//!    counted, never let through;
//! 3. anything else: allowed, unless the tag has the egress lock and the
//!    destination is not in the tag's allowlist: refused (`EPERM`), counted.
//!
//! A revoked tag (`TAG_REVOKED`: `masker untag` on a cgroup that lives on)
//! gets the same decisions: its connections to targets still go to the
//! agent, which answers them with an error instead of relaying them (or are
//! refused here where the namespace has no listener, as the agent closes a
//! revoked tag's container listeners), and its egress lock stays in force.
//! Removing a tag never lets a cgroup's connections go around masker; only
//! deleting the entry does, which the agent does once the cgroup is gone.
//!
//! Each decision is reported through aya-log at debug level (the agent
//! lowers the level in `AYA_LOG_LEVEL` when it does not want them).
//! Untagged sockets return 1 (allow) without a log or a map write. Every
//! context field is read with its own volatile load: otherwise the compiler
//! may merge two field reads behind a branch into one computed offset, which
//! the verifier rejects ("dereference of modified ctx ptr").
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock_addr, bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        },
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuHashMap, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use masker_common::{
    AF_INET, AF_INET6, CgroupTag, EGRESS_PREFIX_BASE, EgressNet, Listener, MASKER_SOCKET_MARK, MAX_CGROUP_DEPTH,
    OrigDst, PeerKey, Refusals, TAG_EGRESS_LOCKED, TAG_REVOKED, TARGET_PREFIX_BASE, TargetNet, mapped_v4,
};

/// Let the operation proceed (with whatever the program rewrote).
const ALLOW: i32 = 1;
/// Refuse the operation with `EPERM`: a tagged connection to a target that
/// cannot be redirected, or one the egress lock forbids; never let through.
const DENY: i32 = 0;
const SOCK_STREAM: u32 = 1;
/// Prefix length of a full 16-byte address.
const ADDR_BITS: u32 = 128;

/// Tagged cgroups. Key: cgroup v2 id (`u64`, the directory's inode number).
/// Value: [`CgroupTag`] (identity name, egress lock and revoked flags).
/// Written by the agent (`tag`/`untag`, policy reload, deleted when a
/// revoked tag's cgroup is gone), read by the connect and sendmsg
/// programs and by the agent (identity of a redirected connection). Pinned so
/// tags survive an agent restart. `BPF_MAP_TYPE_HASH`, kernel 3.19+.
#[map(name = "MASKER_TAGS")]
static TAGS: HashMap<u64, CgroupTag> = HashMap::with_max_entries(4096, 0);

/// Destinations to intercept. Key: prefix length and [`TargetNet`] (port,
/// then address; IPv4 stored mapped): a resolved `host:port` target is a full
/// 160-bit prefix, `net/len:port` and `*:port` shorter ones. Value: `u32`,
/// always 1. Written by the agent (`set_targets`), read by the connect
/// programs. `BPF_MAP_TYPE_LPM_TRIE`, kernel 4.11+.
#[map(name = "MASKER_TGT_NETS")]
static TARGETS: LpmTrie<TargetNet, u32> = LpmTrie::with_max_entries(1024, 0);

/// The agent's listeners, one per network namespace it serves. Key: `u64`
/// namespace cookie. Value: [`Listener`]. Written by the agent when it opens
/// (or closes) a listener in a namespace, its own included; read by the
/// connect programs. A namespace without an entry, or an entry with a zero
/// port, means intercepted connections from it are refused.
/// `BPF_MAP_TYPE_HASH`, kernel 3.19+.
#[map(name = "MASKER_LISTEN")]
static LISTENERS: HashMap<u64, Listener> = HashMap::with_max_entries(4096, 0);

/// Redirected sockets by socket cookie. Key: `u64` cookie. Value: [`OrigDst`].
/// Written by the connect programs; read by `sock_ops` (to re-key) and by the
/// getpeername programs; deleted by `sock_ops` when the socket closes. LRU so
/// it never fills up with sockets that never reached ESTABLISHED.
/// `BPF_MAP_TYPE_LRU_HASH`, kernel 4.10+.
#[map(name = "MASKER_BY_COOK")]
static BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65536, 0);

/// Redirected connections by the client's network namespace and local
/// address, as the agent sees it as the peer of the socket it accepted on its
/// listener in that namespace. Key: [`PeerKey`]. Value: [`OrigDst`]. Written
/// by `sock_ops` at `ACTIVE_ESTABLISHED` (before the client's final ACK, so
/// before the agent's `accept()` returns); read and deleted by the agent. LRU
/// so entries the agent never collected (agent restarted) age out.
/// `BPF_MAP_TYPE_LRU_HASH`, kernel 4.10+.
#[map(name = "MASKER_BY_PEER2")]
static BY_PEER: LruHashMap<PeerKey, OrigDst> = LruHashMap::with_max_entries(65536, 0);

/// Where an egress-locked tag may go besides its targets. Key: prefix length
/// and [`EgressNet`] (tagged cgroup, port or 0 for every port, address).
/// Value: `u32`, always 1. Written by the agent from the identity's
/// `allow_egress` when it tags a cgroup or reloads the policy; read by the
/// connect and sendmsg programs. `BPF_MAP_TYPE_LPM_TRIE`, kernel 4.11+.
#[map(name = "MASKER_EGRESS")]
static EGRESS: LpmTrie<EgressNet, u32> = LpmTrie::with_max_entries(16384, 0);

/// Refused connects per tagged cgroup. Key: `u64` tagged cgroup id. Value:
/// [`Refusals`], one per CPU (no atomics needed; the agent adds them up).
/// Written by the connect and sendmsg programs; read by the agent (`masker
/// status`, metrics) and deleted when the tag is removed.
/// `BPF_MAP_TYPE_PERCPU_HASH`, kernel 4.6+.
#[map(name = "MASKER_REFUSED")]
static REFUSED: PerCpuHashMap<u64, Refusals> = PerCpuHashMap::with_max_entries(4096, 0);

#[cgroup_sock_addr(connect4)]
pub fn masker_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel-provided context; each read is one aligned
    // 4-byte load of a field readable in connect4.
    let (ty, ip4, port) =
        unsafe { (read_volatile(addr_of!((*sa).type_)), read_volatile(addr_of!((*sa).user_ip4)), read_port(sa)) };
    let Some(tagged) = tagged_cgroup(sa) else {
        return ALLOW;
    };
    let dst = mapped_v4(ip4.to_ne_bytes());
    if ty != SOCK_STREAM || !is_target(&dst, port) {
        return pass(&ctx, &tagged, &dst, port);
    }
    let netns = netns_cookie(&ctx);
    let listener = match LISTENERS.get_ptr(netns) {
        // SAFETY: the pointer comes from a successful lookup of a map value.
        Some(l) => unsafe { *l },
        None => Listener::default(),
    };
    if listener.listen_port4 == 0 {
        return no_listener(&ctx, &tagged, netns, &dst, port);
    }
    record(&ctx, &dst, port, AF_INET, tagged.id, netns);
    log_redirect(&ctx, &tagged, &dst, port, netns, listener.listen_port4);
    // SAFETY: user_ip4/user_port are writable in connect4 with 4-byte stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(listener.listen_ip4));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(listener.listen_port4.to_be()));
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn masker_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4; user_ip6 is readable word by word in connect6.
    let (ty, dst, port) = unsafe { (read_volatile(addr_of!((*sa).type_)), read_ip6(sa), read_port(sa)) };
    let Some(tagged) = tagged_cgroup(sa) else {
        return ALLOW;
    };
    if ty != SOCK_STREAM || !is_target(&dst, port) {
        return pass(&ctx, &tagged, &dst, port);
    }
    let netns = netns_cookie(&ctx);
    let listener = match LISTENERS.get_ptr(netns) {
        // SAFETY: the pointer comes from a successful lookup of a map value.
        Some(l) => unsafe { *l },
        None => Listener::default(),
    };
    // An IPv4-mapped destination goes to the IPv4 listener (as ::ffff:a.b.c.d);
    // so does any destination when the namespace has no IPv6 listener, which
    // works for dual-stack sockets and fails (closed) for IPV6_V6ONLY ones.
    let (addr, new_port) = if !is_v4_mapped(&dst) && listener.listen_port6 != 0 {
        (listener.listen_ip6, listener.listen_port6)
    } else {
        (mapped_v4(listener.listen_ip4), listener.listen_port4)
    };
    if new_port == 0 {
        return no_listener(&ctx, &tagged, netns, &dst, port);
    }
    record(&ctx, &dst, port, AF_INET6, tagged.id, netns);
    log_redirect(&ctx, &tagged, &dst, port, netns, new_port);
    // SAFETY: user_ip6 words and user_port are writable in connect6.
    unsafe {
        let ip = addr_of_mut!((*sa).user_ip6);
        write_volatile(addr_of_mut!((*ip)[0]), word(&addr, 0));
        write_volatile(addr_of_mut!((*ip)[1]), word(&addr, 4));
        write_volatile(addr_of_mut!((*ip)[2]), word(&addr, 8));
        write_volatile(addr_of_mut!((*ip)[3]), word(&addr, 12));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(new_port.to_be()));
    }
    ALLOW
}

/// Unconnected UDP (`sendto` with an address): only the egress lock applies.
#[cgroup_sock_addr(sendmsg4)]
pub fn masker_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: single 4-byte loads of fields readable in sendmsg4.
    let (ip4, port) = unsafe { (read_volatile(addr_of!((*sa).user_ip4)), read_port(sa)) };
    let Some(tagged) = tagged_cgroup(sa) else {
        return ALLOW;
    };
    pass(&ctx, &tagged, &mapped_v4(ip4.to_ne_bytes()), port)
}

/// Unconnected UDP over IPv6: only the egress lock applies.
#[cgroup_sock_addr(sendmsg6)]
pub fn masker_sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6 words and user_port are readable in sendmsg6.
    let (dst, port) = unsafe { (read_ip6(sa), read_port(sa)) };
    let Some(tagged) = tagged_cgroup(sa) else {
        return ALLOW;
    };
    pass(&ctx, &tagged, &dst, port)
}

#[sock_ops]
pub fn masker_sock_ops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: one 4-byte load of `op`, readable in every sock_ops callback.
    let op = unsafe { read_volatile(addr_of!((*ops).op)) };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        on_established(&ctx, ops);
    } else if op == BPF_SOCK_OPS_STATE_CB {
        // SAFETY: args[1] (new state) is readable in STATE_CB.
        let new_state = unsafe { read_volatile(addr_of!((*ops).__bindgen_anon_1.args[1])) };
        if new_state == BPF_TCP_CLOSE {
            let _ = BY_COOKIE.remove(cookie(&ctx));
        }
    }
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn masker_getpeer4(ctx: SockAddrContext) -> i32 {
    let Some(orig) = BY_COOKIE.get_ptr(cookie(&ctx)) else {
        return ALLOW;
    };
    // SAFETY: the pointer comes from a successful lookup of a map value.
    let orig = unsafe { *orig };
    if orig.family == AF_INET {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip4/user_port are writable in getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), word(&orig.addr, 12));
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn masker_getpeer6(ctx: SockAddrContext) -> i32 {
    let Some(orig) = BY_COOKIE.get_ptr(cookie(&ctx)) else {
        return ALLOW;
    };
    // SAFETY: the pointer comes from a successful lookup of a map value.
    let orig = unsafe { *orig };
    if orig.family == AF_INET6 {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip6 words and user_port are writable in getpeername6.
        unsafe {
            let ip = addr_of_mut!((*sa).user_ip6);
            write_volatile(addr_of_mut!((*ip)[0]), word(&orig.addr, 0));
            write_volatile(addr_of_mut!((*ip)[1]), word(&orig.addr, 4));
            write_volatile(addr_of_mut!((*ip)[2]), word(&orig.addr, 8));
            write_volatile(addr_of_mut!((*ip)[3]), word(&orig.addr, 12));
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
        }
    }
    ALLOW
}

/// Client side of a redirected connection is established: publish its record
/// under the client's local address and ask for a callback when it closes.
#[inline(always)]
fn on_established(ctx: &SockOpsContext, ops: *mut bpf_sock_ops) {
    let Some(orig) = BY_COOKIE.get_ptr(cookie(ctx)) else {
        return;
    };
    // SAFETY: single 4-byte loads of fields readable in ACTIVE_ESTABLISHED.
    // All are read unconditionally, then chosen: reading behind the family
    // branch lets the compiler compute the field offset, which the verifier
    // rejects.
    let (family, local_port, ip4, ip6) = unsafe {
        let ip = addr_of!((*ops).local_ip6);
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_port)) as u16,
            read_volatile(addr_of!((*ops).local_ip4)),
            [
                read_volatile(addr_of!((*ip)[0])),
                read_volatile(addr_of!((*ip)[1])),
                read_volatile(addr_of!((*ip)[2])),
                read_volatile(addr_of!((*ip)[3])),
            ],
        )
    };
    let addr = if family == u32::from(AF_INET) { mapped_v4(ip4.to_ne_bytes()) } else { words_to_bytes(ip6) };
    // SAFETY: the pointer comes from a successful lookup of a map value.
    let orig = unsafe { *orig };
    // The namespace recorded at connect time: the client's, which is also the
    // one of the agent's listener that accepts the connection.
    let key = PeerKey { netns_cookie: orig.netns_cookie, addr, port: local_port, _pad: 0, _pad2: 0 };
    let _ = BY_PEER.insert(key, orig, 0);
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// The tagged cgroup that covers the current task.
struct Tagged {
    /// Its id (the task's own cgroup or the nearest tagged ancestor).
    id: u64,
    /// Its [`CgroupTag::flags`].
    flags: u32,
}

/// The nearest tagged cgroup among the current task's cgroup and its
/// ancestors (up to [`MAX_CGROUP_DEPTH`] levels), if any, for a socket that
/// is not the agent's own.
///
/// Walks from the deepest level up and returns at the first hit: keeping a
/// "found so far" value across iterations makes the compiler OR map value
/// pointers together, which the verifier rejects.
#[inline(always)]
fn tagged_cgroup(sa: *mut bpf_sock_addr) -> Option<Tagged> {
    if agent_socket(sa) {
        return None;
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        // SAFETY: helper without memory arguments; returns 0 for levels below
        // the task's own cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            continue;
        }
        if let Some(tag) = TAGS.get_ptr(id) {
            // SAFETY: the pointer comes from a successful lookup of a map value.
            let flags = unsafe { read_volatile(addr_of!((*tag).flags)) };
            return Some(Tagged { id, flags });
        }
    }
    None
}

/// Whether TCP to `addr:port` is intercepted.
#[inline(always)]
fn is_target(addr: &[u8; 16], port: u16) -> bool {
    let key = Key::new(TARGET_PREFIX_BASE + ADDR_BITS, TargetNet { port, _pad: 0, addr: *addr });
    TARGETS.get(&key).is_some()
}

/// A tagged socket that is not redirected: allowed, unless the egress lock
/// forbids the destination.
#[inline(always)]
fn pass(ctx: &SockAddrContext, tagged: &Tagged, dst: &[u8; 16], port: u16) -> i32 {
    if tagged.flags & TAG_EGRESS_LOCKED == 0 || egress_allowed(tagged.id, dst, port) {
        debug!(ctx, "masker: cgroup {} to [{:i}]:{} not a target; allowed", tagged.id, *dst, port);
        return ALLOW;
    }
    count_egress(tagged.id);
    debug!(ctx, "masker: cgroup {} to [{:i}]:{} refused by the egress lock", tagged.id, *dst, port);
    DENY
}

/// A tagged connect to a target from a namespace without a listener.
#[inline(always)]
fn no_listener(ctx: &SockAddrContext, tagged: &Tagged, netns: u64, dst: &[u8; 16], port: u16) -> i32 {
    count_no_listener(tagged.id);
    if tagged.flags & TAG_REVOKED != 0 {
        debug!(
            ctx,
            "masker: cgroup {} (tag revoked) to [{:i}]:{} refused: no listener in netns {}",
            tagged.id,
            *dst,
            port,
            netns
        );
    } else {
        debug!(ctx, "masker: cgroup {} to [{:i}]:{} refused: no listener in netns {}", tagged.id, *dst, port, netns);
    }
    DENY
}

/// Reports a redirect; a revoked tag's is marked as such (the agent refuses
/// the connection it receives).
#[inline(always)]
fn log_redirect(ctx: &SockAddrContext, tagged: &Tagged, dst: &[u8; 16], port: u16, netns: u64, to_port: u16) {
    if tagged.flags & TAG_REVOKED != 0 {
        debug!(
            ctx,
            "masker: cgroup {} (tag revoked) to [{:i}]:{} redirected to netns {} port {}",
            tagged.id,
            *dst,
            port,
            netns,
            to_port
        );
    } else {
        debug!(
            ctx,
            "masker: cgroup {} to [{:i}]:{} redirected to netns {} port {}", tagged.id, *dst, port, netns, to_port
        );
    }
}

/// Whether the egress allowlist of tagged cgroup `id` has `addr` on `port`
/// or on every port.
#[inline(always)]
fn egress_allowed(id: u64, addr: &[u8; 16], port: u16) -> bool {
    let cgroup = id.to_ne_bytes();
    let exact = Key::new(EGRESS_PREFIX_BASE + ADDR_BITS, EgressNet { cgroup, port, _pad: 0, addr: *addr });
    if EGRESS.get(&exact).is_some() {
        return true;
    }
    let any_port = Key::new(EGRESS_PREFIX_BASE + ADDR_BITS, EgressNet { cgroup, port: 0, _pad: 0, addr: *addr });
    EGRESS.get(&any_port).is_some()
}

#[inline(always)]
fn count_no_listener(id: u64) {
    match REFUSED.get_ptr_mut(id) {
        // SAFETY: this CPU's value of a successful lookup; no other CPU
        // writes it.
        Some(r) => unsafe { (*r).no_listener += 1 },
        None => {
            let _ = REFUSED.insert(id, Refusals { no_listener: 1, egress: 0 }, u64::from(BPF_NOEXIST));
        }
    }
}

#[inline(always)]
fn count_egress(id: u64) {
    match REFUSED.get_ptr_mut(id) {
        // SAFETY: as in `count_no_listener`.
        Some(r) => unsafe { (*r).egress += 1 },
        None => {
            let _ = REFUSED.insert(id, Refusals { no_listener: 0, egress: 1 }, u64::from(BPF_NOEXIST));
        }
    }
}

/// Whether the socket carries the agent's `SO_MARK`.
#[inline(always)]
fn agent_socket(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sk` is a non-null PTR_TO_SOCKET in sock_addr programs and
    // `mark` is readable with a 4-byte load.
    unsafe {
        let sk = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        read_volatile(addr_of!((*sk).mark)) == MASKER_SOCKET_MARK
    }
}

#[inline(always)]
fn record(ctx: &SockAddrContext, dst: &[u8; 16], port: u16, family: u16, tag_cgroup_id: u64, netns_cookie: u64) {
    let orig = OrigDst {
        addr: *dst,
        port,
        family,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        // SAFETY: helper without memory arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tag_cgroup_id,
        netns_cookie,
    };
    let _ = BY_COOKIE.insert(cookie(ctx), orig, 0);
}

#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper only reads the context pointer the kernel gave us.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the context pointer the kernel gave us.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Destination port (host order); `user_port` holds it in network order in its
/// low 16 bits.
///
/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_port(sa: *mut bpf_sock_addr) -> u16 {
    u16::from_be(unsafe { read_volatile(addr_of!((*sa).user_port)) } as u16)
}

/// # Safety
/// `sa` must be the context of a `*6` program.
#[inline(always)]
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> [u8; 16] {
    unsafe {
        let ip = addr_of!((*sa).user_ip6);
        words_to_bytes([
            read_volatile(addr_of!((*ip)[0])),
            read_volatile(addr_of!((*ip)[1])),
            read_volatile(addr_of!((*ip)[2])),
            read_volatile(addr_of!((*ip)[3])),
        ])
    }
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// Four bytes of a network-order address as the `u32` the context expects.
#[inline(always)]
fn word(addr: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]])
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0 && a[10] == 0xff && a[11] == 0xff
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
