//! Types that cross the kernel boundary between masker's eBPF programs
//! (`masker-ebpf`) and the agent (`masker-agent`). Every type here is
//! `#[repr(C)]` with explicit padding so both sides agree on its layout.
//!
//! Conventions shared by every map:
//!
//! - Addresses are 16 bytes in network byte order. IPv4 addresses are stored
//!   in their IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) so that one entry
//!   matches a `connect()` from an `AF_INET` socket (seen by `cgroup/connect4`)
//!   and one from a dual-stack `AF_INET6` socket to `::ffff:a.b.c.d` (seen only
//!   by `cgroup/connect6`).
//! - Ports are in host byte order.
//! - Padding is explicit and must be zero: hash map keys are compared as raw
//!   bytes by the kernel.
#![no_std]
// `deny` rather than `forbid`: the `user` feature needs `unsafe impl aya::Pod`,
// allowed in that one module only.
#![deny(unsafe_code)]

#[cfg(feature = "user")]
extern crate std;

/// `SO_MARK` the agent sets on its own upstream sockets. The connect programs
/// never redirect a socket carrying this mark, so the agent's connection to the
/// real server cannot loop back into itself even if it ran in a tagged cgroup.
/// ("mskr" in ASCII.)
pub const MASKER_SOCKET_MARK: u32 = 0x6d73_6b72;

/// Maximum length in bytes of a tag's identity name ([`CgroupTag::identity`]).
pub const IDENTITY_MAX: usize = 64;

/// How many cgroup levels (counted from the root, which is level 0) the
/// connect programs inspect when looking for a tagged ancestor. Cgroups deeper
/// than this are matched only through an ancestor within the first levels.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// `AF_INET` as recorded in [`OrigDst::family`].
pub const AF_INET: u16 = 2;
/// `AF_INET6` as recorded in [`OrigDst::family`].
pub const AF_INET6: u16 = 10;

/// Names of the maps in the eBPF object. They double as the file names under
/// the agent's pin directory. (The kernel keeps at most 15 characters.)
pub mod map_names {
    /// `u64 cgroup id -> CgroupTag` (active and revoked tags).
    pub const TAGS: &str = "MASKER_TAGS";
    /// LPM trie `Key<TargetNet> -> u32 (1)`: destinations to intercept.
    pub const TARGETS: &str = "MASKER_TGT_NETS";
    /// `u64 network namespace cookie -> Listener`.
    pub const LISTENERS: &str = "MASKER_LISTEN";
    /// `u64 socket cookie -> OrigDst`.
    pub const BY_COOKIE: &str = "MASKER_BY_COOK";
    /// `PeerKey (netns + client local address) -> OrigDst`.
    pub const BY_PEER: &str = "MASKER_BY_PEER2";
    /// LPM trie `Key<EgressNet> -> u32 (1)`: what an egress-locked tag may
    /// reach besides the targets.
    pub const EGRESS: &str = "MASKER_EGRESS";
    /// Per-CPU `u64 tagged cgroup id -> Refusals`.
    pub const REFUSED: &str = "MASKER_REFUSED";
    /// Every map, in load order.
    pub const ALL: [&str; 7] = [TAGS, TARGETS, LISTENERS, BY_COOKIE, BY_PEER, EGRESS, REFUSED];
    /// Names earlier versions pinned (removed by `masker uninstall` and
    /// replaced at start).
    pub const LEGACY: [&str; 3] = ["MASKER_TARGETS", "MASKER_CONFIG", "MASKER_BY_PEER"];
}

/// Names of the programs in the eBPF object (function names; the kernel shows
/// the first 15 characters).
pub mod program_names {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "masker_connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "masker_connect6";
    /// `sockops`.
    pub const SOCK_OPS: &str = "masker_sock_ops";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "masker_getpeer4";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "masker_getpeer6";
    /// `cgroup/sendmsg4` (egress lock for unconnected UDP).
    pub const SENDMSG4: &str = "masker_sendmsg4";
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: &str = "masker_sendmsg6";
    /// Every program, in attach order.
    pub const ALL: [&str; 7] = [CONNECT4, CONNECT6, SOCK_OPS, GETPEERNAME4, GETPEERNAME6, SENDMSG4, SENDMSG6];
}

/// [`CgroupTag::flags`] bit: the tagged cgroup (and its descendants) may
/// connect only to targets and to the entries of the egress map for this tag
/// (`egress = "targets-only"` on the identity); every other TCP or UDP
/// connect, and every unconnected UDP send elsewhere, is refused with `EPERM`.
pub const TAG_EGRESS_LOCKED: u32 = 1;

/// [`CgroupTag::flags`] bit: the tag was removed (`masker untag`) while its
/// cgroup lives on. Removal fails closed: the connect programs treat a
/// revoked tag like any other (its connections to targets go to the agent's
/// listener of the socket's namespace, or are refused where there is none;
/// the egress lock, if set, stays in force) and the agent answers the
/// redirected connections with an error (SQLSTATE 28000) instead of relaying
/// them. Tagging the cgroup again replaces the entry (clearing the bit); the
/// agent deletes the entry once the cgroup directory is gone (cgroup ids are
/// inode numbers, which the kernel reuses).
pub const TAG_REVOKED: u32 = 2;

/// Length in bits of the fixed part of a [`TargetNet`] key (port and padding)
/// before the address: a key for `a.b.c.d/n` has prefix length
/// `TARGET_PREFIX_BASE + 96 + n`.
pub const TARGET_PREFIX_BASE: u32 = 32;
/// Length in bits of the fixed part of an [`EgressNet`] key (tagged cgroup,
/// port, padding) before the address.
pub const EGRESS_PREFIX_BASE: u32 = 96;

/// Value of the tags map: the workload identity bound to a cgroup (and, by the
/// ancestor walk in the connect programs, to all its descendants).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupTag {
    /// Number of meaningful bytes in `identity`.
    pub identity_len: u32,
    /// [`TAG_EGRESS_LOCKED`], [`TAG_REVOKED`]; other bits zero.
    pub flags: u32,
    /// UTF-8 identity name, zero-filled after `identity_len` bytes.
    pub identity: [u8; IDENTITY_MAX],
}

impl CgroupTag {
    /// A tag for `identity`, cut at [`IDENTITY_MAX`] bytes (on a character
    /// boundary, so the stored name stays valid UTF-8).
    pub fn new(identity: &str) -> Self {
        let mut len = identity.len().min(IDENTITY_MAX);
        while !identity.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; IDENTITY_MAX];
        bytes[..len].copy_from_slice(&identity.as_bytes()[..len]);
        Self { identity_len: len as u32, flags: 0, identity: bytes }
    }

    /// The identity name (empty if the stored bytes are not UTF-8).
    pub fn identity(&self) -> &str {
        let len = (self.identity_len as usize).min(IDENTITY_MAX);
        core::str::from_utf8(&self.identity[..len]).unwrap_or("")
    }

    /// Whether the tag was removed ([`TAG_REVOKED`]).
    pub fn revoked(&self) -> bool {
        self.flags & TAG_REVOKED != 0
    }

    /// Whether the egress lock is set ([`TAG_EGRESS_LOCKED`]).
    pub fn egress_locked(&self) -> bool {
        self.flags & TAG_EGRESS_LOCKED != 0
    }
}

/// An (address, port) pair: key of the targets map (a destination to
/// intercept) and of the by-peer map (a redirected client's local address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// Explicit padding, zero.
    pub _pad: u16,
}

impl Endpoint {
    /// An endpoint from a 16-byte address and a host-order port.
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, _pad: 0 }
    }

    /// An endpoint from an IPv4 address (network-order octets), stored mapped.
    pub const fn from_v4(octets: [u8; 4], port: u16) -> Self {
        Self::new(mapped_v4(octets), port)
    }
}

/// `::ffff:a.b.c.d` for the IPv4 address `a.b.c.d`.
pub const fn mapped_v4(o: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]]
}

/// The IPv4 address inside `::ffff:a.b.c.d`, if `addr` is IPv4-mapped.
pub fn unmapped_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// Data part of a key of the targets LPM trie: a destination port and an
/// address prefix. Exact targets (`10.0.0.5:5432`) have a full-length prefix;
/// network targets (`172.16.0.0/12:5432`, `*:5432`) a shorter one. The port
/// comes first so that it is always part of the matched prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TargetNet {
    /// Port, host byte order (never 0 in a stored key).
    pub port: u16,
    /// Explicit padding, zero.
    pub _pad: u16,
    /// IPv6 or IPv4-mapped address, network byte order; bits past the
    /// prefix are zero.
    pub addr: [u8; 16],
}

/// Data part of a key of the egress allowlist LPM trie: the tagged cgroup
/// whose identity allows it, a port (0 = any port) and an address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EgressNet {
    /// Tagged cgroup id in native byte order (as bytes so that the key has
    /// no alignment padding).
    pub cgroup: [u8; 8],
    /// Port, host byte order; 0 in a stored key means every port.
    pub port: u16,
    /// Explicit padding, zero.
    pub _pad: u16,
    /// IPv6 or IPv4-mapped address, network byte order.
    pub addr: [u8; 16],
}

/// Key of the by-peer map: a redirected client's local address within its
/// network namespace (two containers may both use `127.0.0.1:40000`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerKey {
    /// Cookie of the client's network namespace (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
    /// Client's local address (16-byte form, network byte order).
    pub addr: [u8; 16],
    /// Client's local port, host byte order.
    pub port: u16,
    /// Explicit padding, zero.
    pub _pad: u16,
    /// Explicit padding, zero.
    pub _pad2: u32,
}

/// Refused connects of one tagged cgroup (value of the per-CPU refusal
/// counters; the agent adds up the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Refusals {
    /// Connects to a target from a network namespace in which the agent has
    /// no listener (or before the agent set any up).
    pub no_listener: u64,
    /// Connects and unconnected UDP sends refused by the egress lock.
    pub egress: u64,
}

/// Value of the listeners map, one entry per network namespace the agent
/// serves (key: that namespace's cookie), written by the agent when it opens
/// a listener there: where redirected connections from that namespace go.
/// The agent's own namespace has an entry too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Listener {
    /// Agent's IPv4 listener address, network byte order.
    pub listen_ip4: [u8; 4],
    /// Agent's IPv4 listener port, host byte order. 0 = none: the connect
    /// programs then refuse intercepted connections (fail closed).
    pub listen_port4: u16,
    /// Agent's IPv6 listener port, host byte order (0 = no IPv6 listener).
    pub listen_port6: u16,
    /// Agent's IPv6 listener address, network byte order.
    pub listen_ip6: [u8; 16],
    /// Reserved, zero.
    pub flags: u32,
}

/// What the connect programs record about a redirected connection: value of
/// the by-cookie and by-peer maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// Original destination address (16-byte form, network byte order).
    pub addr: [u8; 16],
    /// Original destination port, host byte order.
    pub port: u16,
    /// Family of the client's socket: [`AF_INET`] (connect4) or [`AF_INET6`]
    /// (connect6, which includes IPv4-mapped destinations).
    pub family: u16,
    /// Thread group id (process id in the initial pid namespace) of the task
    /// that called `connect()`.
    pub pid: u32,
    /// cgroup v2 id (directory inode number) of that task.
    pub cgroup_id: u64,
    /// cgroup id of the tagged cgroup that matched (the task's own cgroup or
    /// the nearest tagged ancestor): the key to look up in the tags map.
    pub tag_cgroup_id: u64,
    /// Cookie of the network namespace of the client's socket (the agent's
    /// listener that receives the connection lives there).
    pub netns_cookie: u64,
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY (all of them): `#[repr(C)]`, only integer and byte-array fields,
    // padding made explicit, so every bit pattern is a valid value and there
    // are no uninitialised bytes.
    unsafe impl aya::Pod for super::CgroupTag {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Listener {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::TargetNet {}
    unsafe impl aya::Pod for super::EgressNet {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::Refusals {}
}

/// The cookie of the network namespace a socket lives in, as the eBPF
/// programs see it with `bpf_get_netns_cookie` (`SO_NETNS_COOKIE`, kernel
/// 5.14). The key of the listeners map.
#[cfg(feature = "user")]
#[allow(unsafe_code)]
pub fn netns_cookie(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // Not in libc for every target yet; the value is the same on all Linux
    // architectures.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = core::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `socket` is an open descriptor for the duration of the call;
    // `cookie` and `len` are valid for writes and `len` is the size of
    // `cookie`, so the kernel writes at most 8 bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != core::mem::size_of::<u64>() {
        return Err(std::io::Error::other("SO_NETNS_COOKIE returned an unexpected length"));
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{align_of, offset_of, size_of};
    use std::string::String;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CgroupTag>(), 8 + IDENTITY_MAX);
        assert_eq!(offset_of!(CgroupTag, identity), 8);

        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(offset_of!(Endpoint, port), 16);
        assert_eq!(offset_of!(Endpoint, _pad), 18);

        assert_eq!(size_of::<Listener>(), 28);
        assert_eq!(offset_of!(Listener, listen_port4), 4);
        assert_eq!(offset_of!(Listener, listen_port6), 6);
        assert_eq!(offset_of!(Listener, listen_ip6), 8);
        assert_eq!(offset_of!(Listener, flags), 24);

        assert_eq!(size_of::<TargetNet>(), 20);
        assert_eq!(offset_of!(TargetNet, addr), 4);
        assert_eq!(size_of::<EgressNet>(), 28);
        assert_eq!(align_of::<EgressNet>(), 2);
        assert_eq!(offset_of!(EgressNet, port), 8);
        assert_eq!(offset_of!(EgressNet, addr), 12);
        assert_eq!(TARGET_PREFIX_BASE as usize, offset_of!(TargetNet, addr) * 8);
        assert_eq!(EGRESS_PREFIX_BASE as usize, offset_of!(EgressNet, addr) * 8);

        assert_eq!(size_of::<PeerKey>(), 32);
        assert_eq!(offset_of!(PeerKey, addr), 8);
        assert_eq!(offset_of!(PeerKey, port), 24);
        assert_eq!(size_of::<Refusals>(), 16);

        assert_eq!(size_of::<OrigDst>(), 48);
        assert_eq!(align_of::<OrigDst>(), 8);
        assert_eq!(offset_of!(OrigDst, port), 16);
        assert_eq!(offset_of!(OrigDst, family), 18);
        assert_eq!(offset_of!(OrigDst, pid), 20);
        assert_eq!(offset_of!(OrigDst, cgroup_id), 24);
        assert_eq!(offset_of!(OrigDst, tag_cgroup_id), 32);
        assert_eq!(offset_of!(OrigDst, netns_cookie), 40);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let m = mapped_v4([10, 1, 2, 3]);
        assert_eq!(unmapped_v4(&m), Some([10, 1, 2, 3]));
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        assert_eq!(unmapped_v4(&loopback6), None);
        assert_eq!(Endpoint::from_v4([127, 0, 0, 1], 5432), Endpoint::new(mapped_v4([127, 0, 0, 1]), 5432));
    }

    #[test]
    fn flag_bits_are_distinct() {
        assert_eq!(TAG_EGRESS_LOCKED & TAG_REVOKED, 0);
        let mut tag = CgroupTag::new("ci-job");
        assert!(!tag.revoked() && !tag.egress_locked());
        tag.flags |= TAG_REVOKED;
        assert!(tag.revoked() && !tag.egress_locked());
        tag.flags |= TAG_EGRESS_LOCKED;
        assert!(tag.revoked() && tag.egress_locked());
        assert_eq!(tag.identity(), "ci-job");
    }

    #[test]
    fn identity_is_cut_on_a_char_boundary() {
        assert_eq!(CgroupTag::new("ci-job").identity(), "ci-job");
        let long: String = "é".repeat(40); // 80 bytes
        let tag = CgroupTag::new(&long);
        assert_eq!(tag.identity_len, 64);
        assert_eq!(tag.identity(), "é".repeat(32));
        // 63 ASCII bytes then a 2-byte character: byte 64 is mid-character.
        let odd = "a".repeat(63) + "é";
        assert_eq!(CgroupTag::new(&odd).identity(), "a".repeat(63));
    }
}
