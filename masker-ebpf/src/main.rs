//! masker's eBPF programs. All are attached to one cgroup v2 directory (the
//! root by default) and so run for every socket created below it.
//!
//! | program              | hook                  | does                                                    |
//! |----------------------|-----------------------|---------------------------------------------------------|
//! | `masker_connect4/6`  | `cgroup/connect4/6`   | redirects tagged TCP connects to targets to the agent   |
//! | `masker_sock_ops`    | `sockops`             | re-keys the record by the client's local address        |
//! | `masker_getpeer4/6`  | `cgroup/getpeername4/6` | shows the original destination to the client          |
//!
//! Kernel: cgroup `connect4/6` 4.17, `sockops` 4.13, `getpeername4/6` 5.8,
//! `bpf_get_current_ancestor_cgroup_id` in sock_addr programs 5.7, bpf links
//! for cgroups 5.7 (needed to pin attachments). Tested on 6.18.
//!
//! Everything that is not a TCP connect from a tagged cgroup to a target
//! returns 1 (allow) without touching the context. Every context field is read
//! with its own volatile load: otherwise the compiler may merge two field reads
//! behind a branch into one computed offset, which the verifier rejects
//! ("dereference of modified ctx ptr").
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
        bpf_sock_addr, bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
};
use masker_common::{
    AF_INET, AF_INET6, AgentConfig, CgroupTag, Endpoint, MASKER_SOCKET_MARK, MAX_CGROUP_DEPTH, OrigDst, mapped_v4,
};

/// Let the operation proceed (with whatever the program rewrote).
const ALLOW: i32 = 1;
/// Refuse the `connect()` with `EPERM`: used when a tagged connection to a
/// target cannot be redirected (agent not configured), never to let it through.
const DENY: i32 = 0;
const SOCK_STREAM: u32 = 1;

/// Tagged cgroups. Key: cgroup v2 id (`u64`, the directory's inode number).
/// Value: [`CgroupTag`] (identity name). Written by the agent (`tag`/`untag`),
/// read by the connect programs (presence only) and by the agent (identity of
/// a redirected connection). Pinned so tags survive an agent restart.
/// `BPF_MAP_TYPE_HASH`, kernel 3.19+.
#[map(name = "MASKER_TAGS")]
static TAGS: HashMap<u64, CgroupTag> = HashMap::with_max_entries(4096, 0);

/// Destinations to intercept. Key: [`Endpoint`] (IPv4 stored mapped, port host
/// order). Value: `u32`, always 1. Written by the agent (`set_targets`), read by
/// the connect programs. `BPF_MAP_TYPE_HASH`, kernel 3.19+.
#[map(name = "MASKER_TARGETS")]
static TARGETS: HashMap<Endpoint, u32> = HashMap::with_max_entries(1024, 0);

/// The agent's listeners. Key: `u32` 0. Value: [`AgentConfig`]. Written by the
/// agent at start, read by the connect programs. A zero port means "no
/// listener yet": intercepted connections are then refused.
/// `BPF_MAP_TYPE_ARRAY`, kernel 3.19+.
#[map(name = "MASKER_CONFIG")]
static CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

/// Redirected sockets by socket cookie. Key: `u64` cookie. Value: [`OrigDst`].
/// Written by the connect programs; read by `sock_ops` (to re-key) and by the
/// getpeername programs; deleted by `sock_ops` when the socket closes. LRU so
/// it never fills up with sockets that never reached ESTABLISHED.
/// `BPF_MAP_TYPE_LRU_HASH`, kernel 4.10+.
#[map(name = "MASKER_BY_COOK")]
static BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65536, 0);

/// Redirected connections by the client's local address, as the agent sees it
/// as the peer of its accepted socket. Key: [`Endpoint`] (local ip in 16-byte
/// form, local port host order). Value: [`OrigDst`]. Written by `sock_ops` at
/// `ACTIVE_ESTABLISHED` (before the client's final ACK, so before the agent's
/// `accept()` returns); read and deleted by the agent. LRU so entries the agent
/// never collected (agent restarted) age out. `BPF_MAP_TYPE_LRU_HASH`, kernel
/// 4.10+.
#[map(name = "MASKER_BY_PEER")]
static BY_PEER: LruHashMap<Endpoint, OrigDst> = LruHashMap::with_max_entries(65536, 0);

#[cgroup_sock_addr(connect4)]
pub fn masker_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel-provided context; each read is one aligned
    // 4-byte load of a field readable in connect4.
    let (ty, ip4, port) =
        unsafe { (read_volatile(addr_of!((*sa).type_)), read_volatile(addr_of!((*sa).user_ip4)), read_port(sa)) };
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let dst = Endpoint::from_v4(ip4.to_ne_bytes(), port);
    if TARGETS.get_ptr(dst).is_none() || agent_socket(sa) {
        return ALLOW;
    }
    let Some(tag_cgroup_id) = tagged_cgroup() else {
        return ALLOW;
    };
    let Some(cfg) = CONFIG.get(0) else {
        return DENY;
    };
    if cfg.listen_port4 == 0 {
        return DENY;
    }
    record(&ctx, &dst, AF_INET, tag_cgroup_id);
    // SAFETY: user_ip4/user_port are writable in connect4 with 4-byte stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(cfg.listen_ip4));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(cfg.listen_port4.to_be()));
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn masker_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4; user_ip6 is readable word by word in connect6.
    let (ty, ip6, port) = unsafe { (read_volatile(addr_of!((*sa).type_)), read_ip6(sa), read_port(sa)) };
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let dst = Endpoint::new(ip6, port);
    if TARGETS.get_ptr(dst).is_none() || agent_socket(sa) {
        return ALLOW;
    }
    let Some(tag_cgroup_id) = tagged_cgroup() else {
        return ALLOW;
    };
    let Some(cfg) = CONFIG.get(0) else {
        return DENY;
    };
    // An IPv4-mapped destination goes to the IPv4 listener (as ::ffff:a.b.c.d);
    // so does any destination when the agent has no IPv6 listener, which works
    // for dual-stack sockets and fails (closed) for IPV6_V6ONLY ones.
    let mapped = is_v4_mapped(&ip6);
    let (addr, new_port) = if !mapped && cfg.listen_port6 != 0 {
        (cfg.listen_ip6, cfg.listen_port6)
    } else {
        (mapped_v4(cfg.listen_ip4), cfg.listen_port4)
    };
    if new_port == 0 {
        return DENY;
    }
    record(&ctx, &dst, AF_INET6, tag_cgroup_id);
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
    let key = Endpoint::new(addr, local_port);
    // SAFETY: the pointer comes from a successful lookup of a map value.
    let orig = unsafe { *orig };
    let _ = BY_PEER.insert(key, orig, 0);
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// The cgroup id of the nearest tagged cgroup among the current task's cgroup
/// and its ancestors (up to [`MAX_CGROUP_DEPTH`] levels), if any.
///
/// Walks from the deepest level up and returns at the first hit: keeping a
/// "found so far" value across iterations makes the compiler OR map value
/// pointers together, which the verifier rejects.
#[inline(always)]
fn tagged_cgroup() -> Option<u64> {
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        // SAFETY: helper without memory arguments; returns 0 for levels below
        // the task's own cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id != 0 && TAGS.get_ptr(id).is_some() {
            return Some(id);
        }
    }
    None
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
fn record(ctx: &SockAddrContext, dst: &Endpoint, family: u16, tag_cgroup_id: u64) {
    let orig = OrigDst {
        addr: dst.addr,
        port: dst.port,
        family,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        // SAFETY: helper without memory arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tag_cgroup_id,
    };
    let _ = BY_COOKIE.insert(cookie(ctx), orig, 0);
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
