//! eBPF interception: loading and attaching the programs, the target and tag
//! maps, and the original destination of each redirected connection.
//!
//! The programs (`masker-ebpf`, embedded in the binary by `build.rs`) are
//! attached to a cgroup v2 directory, the root by default:
//!
//! - `cgroup/connect4`, `cgroup/connect6`: a TCP `connect()` from a tagged
//!   cgroup (or a descendant) to a target is rewritten to the agent's listener
//!   in the socket's network namespace (the agent's own, or one it opened
//!   inside a container's namespace: [`netns`]), and the original
//!   destination, cgroup, pid and namespace are recorded. No listener in that
//!   namespace: refused (`EPERM`), counted per tagged cgroup
//!   ([`Interception::refusals`]).
//! - `cgroup/connect4/6` and `cgroup/sendmsg4/6`: for a tag with the egress
//!   lock, every other TCP or UDP destination not in the tag's allowlist is
//!   refused (`EPERM`) and counted.
//! - `sockops`: when a redirected connection is established, the record is
//!   re-keyed by the client's namespace and local address, which the agent
//!   sees as its peer ([`Interception::original_destination`]).
//! - `cgroup/getpeername4/6`: the client sees the original destination.
//!
//! # Removed tags
//!
//! `masker untag` revokes a tag ([`Interception::revoke`]) rather than
//! deleting it: the entry stays, marked [`TAG_REVOKED`], so the kernel keeps
//! sending the cgroup's connections to targets to the agent, which refuses
//! them ([`Redirected::revoked`]); the egress lock stays as it was. Only
//! [`Interception::forget`] deletes an entry (and its allowlist and
//! counters): for a cgroup whose processes are gone (`masker run`, a
//! container that died), and for a revoked tag whose directory no longer
//! exists ([`Interception::forget_if_gone`]: cgroup ids are inode numbers,
//! which the kernel hands out again).
//!
//! The programs report each decision for a tagged cgroup through aya-log;
//! [`Interception::take_kernel_log`] hands the reader to the agent, which
//! forwards the records to `tracing` at debug level ([`kernel_log`]).
//!
//! Kernel 5.14 or later (bpf links for cgroups, getpeername hooks, network
//! namespace cookies from user space).
//!
//! # Fail closed
//!
//! Attachments are bpf links pinned under the pin directory (default
//! `/sys/fs/bpf/masker`), next to the pinned maps. They do not depend on the
//! agent process: while the agent is down, tagged workloads' connections to
//! targets still go to the (closed) agent port and are refused, or, from a
//! namespace the agent had no listener in, are refused by the program
//! (`EPERM`); they never reach the database directly. The egress lock stays
//! in force too. [`Interception::shutdown`] removes everything
//! only when no cgroup is tagged; `masker uninstall` ([`uninstall`]) removes
//! the pins (and so detaches the programs) unconditionally. A new agent
//! started on the same pin directory takes the pins over: it reuses the maps
//! (tags and targets survive) and atomically replaces the pinned links with
//! its own programs.
pub mod cgroup;
pub mod docker;
mod error;
pub mod kernel_log;
pub mod netns;
pub mod netport;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError, MapInfo, MapType, PerCpuHashMap};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use masker_common::{
    AF_INET, CgroupTag, EGRESS_PREFIX_BASE, EgressNet, IDENTITY_MAX, Listener, OrigDst, PeerKey, Refusals,
    TAG_EGRESS_LOCKED, TAG_REVOKED, TARGET_PREFIX_BASE, TargetNet, map_names, program_names, unmapped_v4,
};

use cgroup::CgroupId;
pub use error::{ErrorKind, InterceptionError};
pub use netport::{NetPort, NetPortError};

/// Default directory for the pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/masker";

/// How long [`Interception::original_destination`] waits for the `sock_ops`
/// program to publish a record (it normally is there before `accept()`
/// returns).
const RECORD_WAIT: Duration = Duration::from_millis(100);

/// File-name prefix of the pinned links.
const LINK_PREFIX: &str = "link_";
/// Suffix of a link pinned but not yet moved into place (bpffs refuses
/// names with a dot).
const NEW_SUFFIX: &str = "_new";

/// The eBPF object built by `build.rs`.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("MASKER_EBPF_OBJECT"))
}

/// Expected `(name, type, key size, value size, max entries)` of each map; a
/// pinned map that differs (left by another version) is replaced.
const MAP_SHAPES: [(&str, MapType, usize, usize, u32); 7] = [
    (map_names::TAGS, MapType::Hash, 8, size_of::<CgroupTag>(), 4096),
    (map_names::TARGETS, MapType::LpmTrie, 4 + size_of::<TargetNet>(), 4, 1024),
    (map_names::LISTENERS, MapType::Hash, 8, size_of::<Listener>(), 4096),
    (map_names::BY_COOKIE, MapType::LruHash, 8, size_of::<OrigDst>(), 65536),
    (map_names::BY_PEER, MapType::LruHash, size_of::<PeerKey>(), size_of::<OrigDst>(), 65536),
    (map_names::EGRESS, MapType::LpmTrie, 4 + size_of::<EgressNet>(), 4, 16384),
    (map_names::REFUSED, MapType::PerCpuHash, 8, size_of::<Refusals>(), 4096),
];

/// Where and how to intercept.
#[derive(Clone, Debug)]
pub struct InterceptionConfig {
    /// The agent's IPv4 listener: redirected IPv4 (and IPv4-mapped)
    /// connections go there. An unspecified address means 127.0.0.1.
    pub listen_v4: SocketAddrV4,
    /// The agent's IPv6 listener. Without one, IPv6 connections are sent to
    /// `::ffff:<listen_v4>` (works for dual-stack client sockets; `IPV6_V6ONLY`
    /// ones fail, which is still closed).
    pub listen_v6: Option<SocketAddrV6>,
    /// Directory on bpffs for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Mount point of the cgroup v2 hierarchy; discovered when `None`.
    pub cgroup_root: Option<PathBuf>,
    /// cgroup whose subtree is intercepted; the whole hierarchy when `None`.
    /// (Tests attach to a cgroup of their own.)
    pub attach_cgroup: Option<PathBuf>,
}

impl InterceptionConfig {
    /// Defaults for an agent listening on `listen_v4`.
    pub fn new(listen_v4: SocketAddrV4) -> Self {
        Self {
            listen_v4,
            listen_v6: None,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            cgroup_root: None,
            attach_cgroup: None,
        }
    }
}

/// A tagged cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEntry {
    /// Its id.
    pub cgroup: CgroupId,
    /// Its directory, if it still exists.
    pub path: Option<PathBuf>,
    /// The identity bound to it.
    pub identity: String,
    /// Whether the tag was removed (`masker untag`): its connections are
    /// refused.
    pub revoked: bool,
}

/// An entry of the tags map, without its directory (see
/// [`Interception::tag_ids`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRef {
    /// The tagged cgroup.
    pub cgroup: CgroupId,
    /// The identity bound to it.
    pub identity: String,
    /// Whether the tag was removed: its connections are refused.
    pub revoked: bool,
}

/// The egress lock of a tag: the tagged workload may connect only to the
/// targets and to `allow` (`egress = "targets-only"`, `allow_egress` of its
/// identity).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressLock {
    /// Destinations allowed besides the targets (port 0 = every port).
    pub allow: Vec<NetPort>,
}

/// Connects the kernel refused for one tagged cgroup (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedCounts {
    /// Connects to a target from a network namespace without a listener.
    pub no_listener: u64,
    /// Connects and UDP sends the egress lock refused.
    pub egress: u64,
}

/// Where a redirected connection was going, and who opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirected {
    /// The destination the client asked for (IPv4-mapped destinations are
    /// given as IPv4).
    pub original: SocketAddr,
    /// cgroup of the task that called `connect()`.
    pub cgroup: CgroupId,
    /// The tagged cgroup that matched: `cgroup` itself or an ancestor.
    pub tagged_cgroup: CgroupId,
    /// Process id (tgid, initial pid namespace) that called `connect()`.
    pub pid: u32,
    /// Identity of `tagged_cgroup`; `None` if its entry was deleted since
    /// the connect (the connection must be refused).
    pub identity: Option<String>,
    /// Whether the tag of `tagged_cgroup` is revoked (`masker untag`): the
    /// connection must be refused.
    pub revoked: bool,
    /// Cookie of the client's network namespace.
    pub netns_cookie: u64,
}

/// What [`Interception::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Programs detached, pins removed.
    Removed,
    /// Left attached and pinned because this many cgroups are tagged
    /// (revoked tags included: their connections stay refused).
    LeftAttached {
        /// Number of tagged cgroups.
        tagged: usize,
    },
}

/// What [`Interception::revoke`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The tag was active and is revoked now.
    Now,
    /// It was revoked before.
    Already,
    /// The cgroup was not tagged: nothing to revoke.
    NotTagged,
}

/// The loaded and attached programs and their maps.
///
/// Dropping it leaves the programs attached (as a crash would: fail closed);
/// call [`Interception::shutdown`] or [`uninstall`] to remove them.
pub struct Interception {
    tags: HashMap<MapData, u64, CgroupTag>,
    targets: LpmTrie<MapData, TargetNet, u32>,
    listeners: HashMap<MapData, u64, Listener>,
    egress: LpmTrie<MapData, EgressNet, u32>,
    refused: PerCpuHashMap<MapData, u64, Refusals>,
    /// Behind a mutex so `original_destination` can take `&self`; held only
    /// for single map operations, never across an await.
    by_peer: Mutex<HashMap<MapData, PeerKey, OrigDst>>,
    /// Cookie of the agent's own network namespace (its host listeners).
    own_netns: u64,
    /// The aya-log reader, until the agent takes it.
    kernel_log: Option<kernel_log::KernelLog>,
    pin_dir: PathBuf,
    cgroup_root: PathBuf,
    attach_dir: PathBuf,
    /// Keeps the loaded programs; the attachments themselves live in the pins.
    _ebpf: Ebpf,
}

impl Interception {
    /// Loads the embedded programs, attaches them to the cgroup (root by
    /// default) and pins maps and links under `cfg.pin_dir`, taking over what
    /// a previous agent left there. Targets and tags already in the pinned
    /// maps stay in force.
    pub fn start(cfg: &InterceptionConfig) -> Result<Self, InterceptionError> {
        check_privileges()?;
        let cgroup_root = match &cfg.cgroup_root {
            Some(root) => root.clone(),
            None => cgroup::v2_root()?,
        };
        let attach_dir = match &cfg.attach_cgroup {
            Some(dir) => cgroup::resolve(&cgroup_root, dir)?,
            None => cgroup_root.clone(),
        };
        ensure_bpffs(&cfg.pin_dir)?;
        prepare_pin_dir(&cfg.pin_dir)?;

        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, cfg.pin_dir.join(name));
        }
        // Decisions are logged at debug level: below that the programs skip
        // the ring buffer write altogether.
        let level = kernel_log::level_for_programs();
        loader.override_global(kernel_log::LEVEL_GLOBAL, &level, true);
        let mut ebpf = loader.load(object()).map_err(|e| InterceptionError::bpf("loading the eBPF object", e))?;
        let kernel_log = match kernel_log::KernelLog::new(&mut ebpf) {
            Ok(log) => Some(log),
            Err(e) => {
                tracing::warn!("kernel-side decisions will not be logged: {e}");
                None
            }
        };

        let own_netns = netns::own_cookie()
            .map_err(|e| InterceptionError::io("reading the agent's network namespace cookie (kernel < 5.14?)", e))?;
        let mut listeners: HashMap<_, u64, Listener> = HashMap::try_from(take_map(&mut ebpf, map_names::LISTENERS)?)
            .map_err(|e| InterceptionError::bpf("opening the listeners map", e))?;
        // Entries a previous agent left for other namespaces name listeners
        // that died with it; this agent opens its own (`netns`).
        let stale: Vec<u64> = listeners.keys().filter_map(Result::ok).filter(|c| *c != own_netns).collect();
        for cookie in stale {
            let _ = remove_key(&mut listeners, &cookie);
        }
        listeners
            .insert(own_netns, host_listener(cfg), 0)
            .map_err(|e| InterceptionError::bpf("writing the agent's address to the listeners map", e))?;
        let tags = HashMap::try_from(take_map(&mut ebpf, map_names::TAGS)?)
            .map_err(|e| InterceptionError::bpf("opening the tags map", e))?;
        let targets = LpmTrie::try_from(take_map(&mut ebpf, map_names::TARGETS)?)
            .map_err(|e| InterceptionError::bpf("opening the targets map", e))?;
        let by_peer = HashMap::try_from(take_map(&mut ebpf, map_names::BY_PEER)?)
            .map_err(|e| InterceptionError::bpf("opening the redirect map", e))?;
        let egress = LpmTrie::try_from(take_map(&mut ebpf, map_names::EGRESS)?)
            .map_err(|e| InterceptionError::bpf("opening the egress map", e))?;
        let refused = PerCpuHashMap::try_from(take_map(&mut ebpf, map_names::REFUSED)?)
            .map_err(|e| InterceptionError::bpf("opening the refusals map", e))?;

        attach_all(&mut ebpf, &attach_dir, &cfg.pin_dir)?;
        tracing::info!(
            cgroup = %attach_dir.display(),
            pins = %cfg.pin_dir.display(),
            listen_v4 = %cfg.listen_v4,
            "eBPF interception attached"
        );
        Ok(Self {
            tags,
            targets,
            listeners,
            egress,
            refused,
            by_peer: Mutex::new(by_peer),
            own_netns,
            kernel_log,
            pin_dir: cfg.pin_dir.clone(),
            cgroup_root,
            attach_dir,
            _ebpf: ebpf,
        })
    }

    /// The directory holding the pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The cgroup v2 mount point in use.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Cookie of the agent's own network namespace.
    pub fn own_netns(&self) -> u64 {
        self.own_netns
    }

    /// The reader of the programs' aya-log records, once (see [`kernel_log`]).
    pub fn take_kernel_log(&mut self) -> Option<kernel_log::KernelLog> {
        self.kernel_log.take()
    }

    /// Replaces the set of intercepted destinations: resolved addresses and
    /// networks on a port. New entries are added before old ones are removed,
    /// so a destination in both sets is never briefly unintercepted.
    pub fn set_targets(&mut self, targets: &[NetPort]) -> Result<(), InterceptionError> {
        let wanted: Vec<Key<TargetNet>> = targets.iter().filter(|t| !t.any_port()).map(target_key).collect();
        let wanted_set: HashSet<(u32, TargetNet)> = wanted.iter().map(|k| (k.prefix_len(), k.data())).collect();
        for key in &wanted {
            self.targets.insert(key, 1, 0).map_err(|e| InterceptionError::bpf("adding a target", e))?;
        }
        let current: Vec<Key<TargetNet>> =
            self.targets.keys().collect::<Result<_, _>>().map_err(|e| InterceptionError::bpf("listing targets", e))?;
        for key in current.iter().filter(|k| !wanted_set.contains(&(k.prefix_len(), k.data()))) {
            match self.targets.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(InterceptionError::bpf("removing a target", e)),
            }
        }
        Ok(())
    }

    /// Opens (or replaces) the listener entry of network namespace `cookie`:
    /// redirected connections from it go to `v4` (and `v6` for IPv6
    /// destinations) inside it.
    pub fn set_listener(
        &mut self,
        cookie: u64,
        v4: Option<std::net::SocketAddrV4>,
        v6: Option<std::net::SocketAddrV6>,
    ) -> Result<(), InterceptionError> {
        let entry = Listener {
            listen_ip4: v4.map_or([127, 0, 0, 1], |a| a.ip().octets()),
            listen_port4: v4.map_or(0, |a| a.port()),
            listen_port6: v6.map_or(0, |a| a.port()),
            listen_ip6: v6.map_or(Ipv6Addr::LOCALHOST.octets(), |a| a.ip().octets()),
            flags: 0,
        };
        self.listeners.insert(cookie, entry, 0).map_err(|e| InterceptionError::bpf("writing the listeners map", e))
    }

    /// Removes the listener entry of namespace `cookie` (never the agent's
    /// own): connections from there to targets are refused from now on.
    pub fn remove_listener(&mut self, cookie: u64) -> Result<(), InterceptionError> {
        if cookie == self.own_netns {
            return Ok(());
        }
        remove_key(&mut self.listeners, &cookie)
            .map(|_| ())
            .map_err(|e| InterceptionError::bpf("writing the listeners map", e))
    }

    /// Namespace cookies with a listener entry (the agent's own included).
    pub fn listener_cookies(&self) -> Result<Vec<u64>, InterceptionError> {
        self.listeners
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| InterceptionError::bpf("reading the listeners map", e))
    }

    /// Refused connects per tagged cgroup, summed over the CPUs.
    pub fn refusals(&self) -> Result<BTreeMap<CgroupId, RefusedCounts>, InterceptionError> {
        let mut out = BTreeMap::new();
        for entry in self.refused.iter() {
            let (id, per_cpu) = entry.map_err(|e| InterceptionError::bpf("reading the refusals map", e))?;
            let mut sum = RefusedCounts::default();
            for r in per_cpu.iter() {
                sum.no_listener += r.no_listener;
                sum.egress += r.egress;
            }
            out.insert(CgroupId(id), sum);
        }
        Ok(out)
    }

    /// Tags the cgroup `cgroup_dir` (absolute, `/proc/<pid>/cgroup` style, or
    /// relative to the v2 root) and its descendants with `identity` (at most
    /// 64 bytes), with the egress lock `egress` if any. Re-tagging replaces
    /// the identity and the lock.
    pub fn tag(
        &mut self,
        cgroup_dir: &Path,
        identity: &str,
        egress: Option<&EgressLock>,
    ) -> Result<CgroupId, InterceptionError> {
        if identity.is_empty() || identity.len() > IDENTITY_MAX {
            return Err(InterceptionError::new(
                ErrorKind::InvalidInput,
                format!("identity {identity:?} must be 1 to {IDENTITY_MAX} bytes long"),
            ));
        }
        let dir = cgroup::resolve(&self.cgroup_root, cgroup_dir)?;
        if !dir.starts_with(&self.attach_dir) {
            return Err(InterceptionError::new(
                ErrorKind::CgroupMissing,
                format!("cgroup {} is outside the intercepted subtree {}", dir.display(), self.attach_dir.display()),
            ));
        }
        let id = cgroup::id_of(&dir)?;
        // The allowlist is in place before the lock takes effect. A revoked
        // entry is replaced as a whole, its allowlist included.
        self.write_allowlist(id, egress)?;
        let mut tag = CgroupTag::new(identity);
        if egress.is_some() {
            tag.flags |= TAG_EGRESS_LOCKED;
        }
        self.tags.insert(id.0, tag, 0).map_err(|e| InterceptionError::bpf("writing the tags map", e))?;
        tracing::info!(cgroup = %dir.display(), cgroup_id = %id, identity, egress_lock = egress.is_some(), "cgroup tagged");
        Ok(id)
    }

    /// Sets the egress lock of the tag of `id`: `None` lifts it. Used when a
    /// policy reload changes an identity's `egress`. A revoked tag keeps the
    /// lock it had (no policy speaks for it any more, and lifting the lock
    /// would open more than the tag allowed): unchanged, `Ok(())`.
    pub fn set_egress(&mut self, id: CgroupId, egress: Option<&EgressLock>) -> Result<(), InterceptionError> {
        let current = match self.tags.get(&id.0, 0) {
            Ok(tag) => Some(tag),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(InterceptionError::bpf("reading the tags map", e)),
        };
        if current.is_some_and(|t| t.revoked()) {
            return Ok(());
        }
        self.write_allowlist(id, egress)?;
        if let Some(mut tag) = current {
            let flags = if egress.is_some() { tag.flags | TAG_EGRESS_LOCKED } else { tag.flags & !TAG_EGRESS_LOCKED };
            if flags != tag.flags {
                tag.flags = flags;
                // BPF_EXIST: never re-create an entry deleted meanwhile.
                self.tags
                    .insert(id.0, tag, BPF_EXIST)
                    .map_err(|e| InterceptionError::bpf("writing the tags map", e))?;
            }
        }
        Ok(())
    }

    /// Makes the allowlist of `id` exactly `egress`'s (empty for `None`):
    /// new entries first, then the ones no longer wanted.
    fn write_allowlist(&mut self, id: CgroupId, egress: Option<&EgressLock>) -> Result<(), InterceptionError> {
        let wanted: Vec<Key<EgressNet>> =
            egress.map(|lock| lock.allow.iter().map(|n| egress_key(id, n)).collect()).unwrap_or_default();
        for key in &wanted {
            self.egress.insert(key, 1, 0).map_err(|e| InterceptionError::bpf("writing the egress map", e))?;
        }
        let keep: HashSet<(u32, EgressNet)> = wanted.iter().map(|k| (k.prefix_len(), k.data())).collect();
        self.remove_egress_where(|k| {
            k.data().cgroup == id.0.to_ne_bytes() && !keep.contains(&(k.prefix_len(), k.data()))
        })
    }

    /// Whether the tag of `id` has the egress lock.
    pub fn egress_locked(&self, id: CgroupId) -> bool {
        self.tags.get(&id.0, 0).is_ok_and(|t| t.egress_locked())
    }

    fn remove_egress_where(&mut self, drop: impl Fn(&Key<EgressNet>) -> bool) -> Result<(), InterceptionError> {
        let current: Vec<Key<EgressNet>> = self
            .egress
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| InterceptionError::bpf("reading the egress map", e))?;
        for key in current.iter().filter(|k| drop(k)) {
            match self.egress.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(InterceptionError::bpf("writing the egress map", e)),
            }
        }
        Ok(())
    }

    /// Revokes the tag of cgroup `id` (`masker untag`): the entry stays,
    /// marked [`TAG_REVOKED`], so the cgroup's connections to targets keep
    /// coming to the agent, which refuses them. Its egress lock, allowlist
    /// and refusal counters stay too. Tagging the cgroup again
    /// ([`Interception::tag`]) replaces the entry.
    pub fn revoke(&mut self, id: CgroupId) -> Result<Revoked, InterceptionError> {
        let mut tag = match self.tags.get(&id.0, 0) {
            Ok(tag) => tag,
            Err(MapError::KeyNotFound) => return Ok(Revoked::NotTagged),
            Err(e) => return Err(InterceptionError::bpf("reading the tags map", e)),
        };
        if tag.revoked() {
            return Ok(Revoked::Already);
        }
        tag.flags |= TAG_REVOKED;
        // BPF_EXIST: a revocation never creates an entry.
        match self.tags.insert(id.0, tag, BPF_EXIST) {
            Ok(()) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(Revoked::NotTagged);
            }
            Err(e) => return Err(InterceptionError::bpf("writing the tags map", e)),
        }
        tracing::info!(cgroup_id = %id, identity = tag.identity(), "tag revoked: the cgroup's connections are refused");
        Ok(Revoked::Now)
    }

    /// Deletes the entry of cgroup `id`, active or revoked, with its
    /// allowlist and counters: the cgroup's connections are no longer
    /// intercepted at all. Only for a cgroup whose processes are gone (its
    /// directory may already be removed). Returns whether there was one.
    pub fn forget(&mut self, id: CgroupId) -> Result<bool, InterceptionError> {
        let removed =
            remove_key(&mut self.tags, &id.0).map_err(|e| InterceptionError::bpf("writing the tags map", e))?;
        // The tag is gone, so neither its allowlist nor its counters apply.
        let cgroup = id.0.to_ne_bytes();
        self.remove_egress_where(|k| k.data().cgroup == cgroup)?;
        match self.refused.remove(&id.0) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(InterceptionError::bpf("writing the refusals map", e)),
        }
        if removed {
            tracing::info!(cgroup_id = %id, "tag entry deleted");
        }
        Ok(removed)
    }

    /// Deletes the entry of `id` if it is revoked and no cgroup with that id
    /// exists in the intercepted subtree any more (a walk of the subtree:
    /// call it for a tag whose known directory vanished). Returns whether
    /// it did. An active tag is never deleted here.
    pub fn forget_if_gone(&mut self, id: CgroupId) -> Result<bool, InterceptionError> {
        match self.tags.get(&id.0, 0) {
            Ok(tag) if tag.revoked() => {}
            Ok(_) | Err(MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(InterceptionError::bpf("reading the tags map", e)),
        }
        if self.find_cgroup(id).is_some() {
            return Ok(false);
        }
        self.forget(id)
    }

    /// The id of the cgroup at `cgroup_dir` (absolute, `/proc/<pid>/cgroup`
    /// style, or relative to the v2 root), which must exist.
    pub fn cgroup_id(&self, cgroup_dir: &Path) -> Result<CgroupId, InterceptionError> {
        Ok(cgroup::id_of(&cgroup::resolve(&self.cgroup_root, cgroup_dir)?)?)
    }

    /// The tags map's entries (active and revoked), without looking for
    /// their directories (cheap; see [`Interception::tags`]).
    pub fn tag_ids(&self) -> Result<Vec<TagRef>, InterceptionError> {
        self.tags
            .iter()
            .map(|e| {
                e.map(|(id, tag)| TagRef {
                    cgroup: CgroupId(id),
                    identity: tag.identity().to_owned(),
                    revoked: tag.revoked(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| InterceptionError::bpf("reading the tags map", e))
    }

    /// The directory of tagged cgroup `id` (a walk of the intercepted
    /// subtree), if it still exists.
    pub fn find_cgroup(&self, id: CgroupId) -> Option<PathBuf> {
        cgroup::find_all_by_id(&self.attach_dir, &[id]).into_iter().next().map(|(_, p)| p)
    }

    /// The tagged cgroups, with their directories where they still exist.
    pub fn tags(&self) -> Result<Vec<TagEntry>, InterceptionError> {
        let entries: Vec<(u64, CgroupTag)> = self
            .tags
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| InterceptionError::bpf("reading the tags map", e))?;
        let ids: Vec<CgroupId> = entries.iter().map(|(id, _)| CgroupId(*id)).collect();
        let paths = cgroup::find_all_by_id(&self.attach_dir, &ids);
        Ok(entries
            .into_iter()
            .map(|(id, tag)| TagEntry {
                cgroup: CgroupId(id),
                path: paths.iter().find(|(found, _)| found.0 == id).map(|(_, p)| p.clone()),
                identity: tag.identity().to_owned(),
                revoked: tag.revoked(),
            })
            .collect())
    }

    /// Where the connection accepted from `peer` on the listener in network
    /// namespace `netns_cookie` was going. Takes the record (a second call
    /// for the same peer fails). Waits up to 100 ms for the record to appear;
    /// [`ErrorKind::NotRedirected`] after that.
    pub async fn original_destination(
        &self,
        peer: SocketAddr,
        netns_cookie: u64,
    ) -> Result<Redirected, InterceptionError> {
        let end = endpoint(peer);
        let key = PeerKey { netns_cookie, addr: end.0, port: end.1, _pad: 0, _pad2: 0 };
        let deadline = Instant::now() + RECORD_WAIT;
        let mut pause = Duration::from_millis(1);
        let orig = loop {
            if let Some(orig) = self.take_record(&key)? {
                break orig;
            }
            if Instant::now() >= deadline {
                return Err(InterceptionError::new(
                    ErrorKind::NotRedirected,
                    format!("no redirect record for peer {peer}: the connection was not redirected by masker"),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        let (identity, revoked) = match self.tags.get(&orig.tag_cgroup_id, 0) {
            Ok(tag) => (Some(tag.identity().to_owned()), tag.revoked()),
            Err(MapError::KeyNotFound) => (None, false),
            Err(e) => return Err(InterceptionError::bpf("reading the tags map", e)),
        };
        Ok(Redirected {
            original: original_addr(&orig),
            cgroup: CgroupId(orig.cgroup_id),
            tagged_cgroup: CgroupId(orig.tag_cgroup_id),
            pid: orig.pid,
            identity,
            revoked,
            netns_cookie: orig.netns_cookie,
        })
    }

    fn take_record(&self, key: &PeerKey) -> Result<Option<OrigDst>, InterceptionError> {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match by_peer.get(key, 0) {
            Ok(orig) => {
                // Already gone is fine: it is ours now either way.
                let _ = remove_key(&mut by_peer, key);
                Ok(Some(orig))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(InterceptionError::bpf("reading the redirect map", e)),
        }
    }

    /// Stops intercepting. With `keep_if_tagged` and at least one tagged
    /// cgroup (a revoked tag counts: its cgroup must not reach the targets
    /// around masker either), leaves programs and pins in place so tagged
    /// workloads stay unable to reach targets while the agent is down (fail
    /// closed); otherwise removes everything. Revoked tags whose cgroup is
    /// gone are deleted first.
    pub fn shutdown(mut self, keep_if_tagged: bool) -> Result<Shutdown, InterceptionError> {
        let revoked: Vec<CgroupId> =
            self.tag_ids().unwrap_or_default().into_iter().filter(|t| t.revoked).map(|t| t.cgroup).collect();
        if !revoked.is_empty() {
            let present: HashSet<CgroupId> =
                cgroup::find_all_by_id(&self.attach_dir, &revoked).into_iter().map(|(id, _)| id).collect();
            for id in revoked.into_iter().filter(|id| !present.contains(id)) {
                if let Err(e) = self.forget(id) {
                    tracing::warn!(cgroup_id = %id, "cannot delete the revoked tag of a removed cgroup: {e}");
                }
            }
        }
        let tagged = self.tags.keys().filter(|k| k.is_ok()).count();
        let pin_dir = self.pin_dir.clone();
        drop(self);
        if keep_if_tagged && tagged > 0 {
            tracing::warn!(
                tagged,
                pins = %pin_dir.display(),
                "leaving eBPF programs attached while cgroups are tagged (fail closed): their connections to \
                 targets are refused until the agent is back; `masker uninstall` removes them"
            );
            return Ok(Shutdown::LeftAttached { tagged });
        }
        uninstall(&pin_dir)?;
        Ok(Shutdown::Removed)
    }
}

/// Removes masker's pins from `pin_dir` and the directory itself: the
/// programs are detached (once no running agent holds them) and the maps,
/// including all tags, are freed. Nothing to do if `pin_dir` does not exist.
/// Only masker's own file names are removed; the directory is left if
/// something else is in it.
pub fn uninstall(pin_dir: &Path) -> Result<(), InterceptionError> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(InterceptionError::io(format!("reading {}", pin_dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| InterceptionError::io(format!("reading {}", pin_dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_masker_pin(&name) {
            fs::remove_file(entry.path())
                .map_err(|e| InterceptionError::io(format!("removing {}", entry.path().display()), e))?;
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InterceptionError::io(
            format!("removing {} (does it hold files that are not masker's?)", pin_dir.display()),
            e,
        )),
    }
}

fn is_masker_pin(name: &str) -> bool {
    let base = name.strip_suffix(NEW_SUFFIX).unwrap_or(name);
    map_names::ALL.contains(&base) || map_names::LEGACY.contains(&base) || base.starts_with(LINK_PREFIX)
}

enum ProgKind {
    SockAddr,
    SockOps,
}

const PROGRAMS: [(&str, ProgKind); 7] = [
    (program_names::CONNECT4, ProgKind::SockAddr),
    (program_names::CONNECT6, ProgKind::SockAddr),
    (program_names::SOCK_OPS, ProgKind::SockOps),
    (program_names::GETPEERNAME4, ProgKind::SockAddr),
    (program_names::GETPEERNAME6, ProgKind::SockAddr),
    (program_names::SENDMSG4, ProgKind::SockAddr),
    (program_names::SENDMSG6, ProgKind::SockAddr),
];

/// Attach flags for `bpf_link_create` on a cgroup: must be 0 (the kernel
/// rejects any flag with EINVAL); a cgroup link always attaches in
/// multi-program mode, so ours coexist with other programs on the cgroup.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Loads each program, attaches it to `cgroup_dir` through a bpf link, pins the link as
/// `<pin_dir>/link_<program>_new`, then renames it over `link_<program>`: a
/// link left by a previous agent is replaced in one step, so there is no
/// moment without an interception program attached.
fn attach_all(ebpf: &mut Ebpf, cgroup_dir: &Path, pin_dir: &Path) -> Result<(), InterceptionError> {
    let cgroup =
        File::open(cgroup_dir).map_err(|e| InterceptionError::io(format!("opening {}", cgroup_dir.display()), e))?;
    for (name, kind) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or_else(|| {
            InterceptionError::new(ErrorKind::Bpf, format!("program {name} missing from the embedded eBPF object"))
        })?;
        // The same steps for both program types (aya gives them no common trait).
        macro_rules! load_and_attach {
            ($ty:ty) => {{
                let prog: &mut $ty =
                    program.try_into().map_err(|e| InterceptionError::bpf(format!("program {name}"), e))?;
                prog.load().map_err(|e| InterceptionError::bpf(format!("loading {name}"), e))?;
                let id = prog
                    .attach(&cgroup, LINK_MODE)
                    .map_err(|e| InterceptionError::bpf(format!("attaching {name} to {}", cgroup_dir.display()), e))?;
                let link = prog.take_link(id).map_err(|e| InterceptionError::bpf(format!("link of {name}"), e))?;
                link.try_into().map_err(|e| InterceptionError::bpf(format!("link of {name} (kernel < 5.7?)"), e))?
            }};
        }
        let link: FdLink = match kind {
            ProgKind::SockAddr => load_and_attach!(CgroupSockAddr),
            ProgKind::SockOps => load_and_attach!(SockOps),
        };
        let final_path = pin_dir.join(format!("{LINK_PREFIX}{name}"));
        let new_path = pin_dir.join(format!("{LINK_PREFIX}{name}{NEW_SUFFIX}"));
        let pinned = link.pin(&new_path).map_err(|e| InterceptionError::bpf(format!("pinning {name}"), e))?;
        fs::rename(&new_path, &final_path)
            .map_err(|e| InterceptionError::io(format!("moving the pin of {name} into place"), e))?;
        // The pin keeps the attachment; our file descriptor is not needed.
        drop(pinned);
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, InterceptionError> {
    ebpf.take_map(name).ok_or_else(|| {
        InterceptionError::new(ErrorKind::Bpf, format!("map {name} missing from the embedded eBPF object"))
    })
}

/// `BPF_EXIST` for map updates: only replace an existing entry.
const BPF_EXIST: u64 = 2;

/// Removes `key`; `Ok(false)` if it was not there.
fn remove_key<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, key: &K) -> Result<bool, MapError> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn host_listener(cfg: &InterceptionConfig) -> Listener {
    let ip4 = if cfg.listen_v4.ip().is_unspecified() { Ipv4Addr::LOCALHOST } else { *cfg.listen_v4.ip() };
    let (ip6, port6) = match cfg.listen_v6 {
        Some(v6) if v6.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, v6.port()),
        Some(v6) => (*v6.ip(), v6.port()),
        None => (Ipv6Addr::UNSPECIFIED, 0),
    };
    Listener {
        listen_ip4: ip4.octets(),
        listen_port4: cfg.listen_v4.port(),
        listen_port6: port6,
        listen_ip6: ip6.octets(),
        flags: 0,
    }
}

/// An address as the maps store it: 16 bytes (IPv4 mapped) and the port.
fn endpoint(addr: SocketAddr) -> ([u8; 16], u16) {
    match addr {
        SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), a.port()),
        SocketAddr::V6(a) => (a.ip().octets(), a.port()),
    }
}

fn target_key(t: &NetPort) -> Key<TargetNet> {
    Key::new(TARGET_PREFIX_BASE + u32::from(t.prefix()), TargetNet { port: t.port(), _pad: 0, addr: t.addr_bytes() })
}

fn egress_key(id: CgroupId, n: &NetPort) -> Key<EgressNet> {
    Key::new(
        EGRESS_PREFIX_BASE + u32::from(n.prefix()),
        EgressNet { cgroup: id.0.to_ne_bytes(), port: n.port(), _pad: 0, addr: n.addr_bytes() },
    )
}

fn original_addr(orig: &OrigDst) -> SocketAddr {
    match unmapped_v4(&orig.addr) {
        Some(v4) => SocketAddr::from((v4, orig.port)),
        None if orig.family == AF_INET => SocketAddr::from(([0, 0, 0, 0], orig.port)),
        None => SocketAddr::from((Ipv6Addr::from(orig.addr), orig.port)),
    }
}

/// Fails early, with what to do, if this process cannot load and attach
/// cgroup programs: it needs CAP_SYS_ADMIN, or CAP_BPF and CAP_NET_ADMIN.
fn check_privileges() -> Result<(), InterceptionError> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return Ok(()); // Cannot tell: let the kernel decide.
    };
    let Some(caps) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return Ok(());
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        return Ok(());
    }
    let root = crate::own_uid() == Some(0);
    let message = if root {
        "root, but without the capabilities to attach eBPF programs: masker needs CAP_BPF and CAP_NET_ADMIN \
         (or CAP_SYS_ADMIN)"
    } else {
        "not running as root: attaching masker's eBPF programs needs root (CAP_BPF and CAP_NET_ADMIN, or \
         CAP_SYS_ADMIN); run the agent as root, or use `masker proxy` where that is not possible"
    };
    Err(InterceptionError::new(ErrorKind::NotPermitted, message))
}

/// Where bpffs is conventionally mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// The pin directory must be on a bpf filesystem. If it is under
/// `/sys/fs/bpf` and nothing is mounted there (systemd normally does it, but
/// minimal hosts and containers do not), mounts bpffs there, as bpftool and
/// other agents do.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), InterceptionError> {
    if check_bpffs(pin_dir).is_ok() || !pin_dir.starts_with(BPFFS) {
        return check_bpffs(pin_dir);
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => tracing::info!("mounted bpffs at {BPFFS}"),
        _ => tracing::warn!("could not mount bpffs at {BPFFS}"),
    }
    check_bpffs(pin_dir)
}

fn check_bpffs(pin_dir: &Path) -> Result<(), InterceptionError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| InterceptionError::io("reading /proc/self/mountinfo", e))?;
    let on_bpffs = mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "bpf" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    });
    // The deepest mount containing pin_dir decides.
    let deepest_bpf = on_bpffs.filter(|m| pin_dir.starts_with(m)).map(|m| m.components().count()).max();
    let deepest_any = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|m| pin_dir.starts_with(m))
        .map(|m| m.components().count())
        .max();
    match deepest_bpf {
        Some(depth) if Some(depth) == deepest_any => Ok(()),
        _ => Err(InterceptionError::new(
            ErrorKind::BpffsMissing,
            format!(
                "{} is not on a bpf filesystem; mount it with `mount -t bpf bpf /sys/fs/bpf` (masker pins its \
                 programs and maps there so tagged workloads stay intercepted while the agent restarts)",
                pin_dir.display()
            ),
        )),
    }
}

/// Creates the pin directory, removes half-done link pins from a crashed
/// start, and removes pinned maps whose shape does not match this build (they
/// are recreated empty: tags from an incompatible version are lost).
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), InterceptionError> {
    fs::create_dir_all(pin_dir).map_err(|e| InterceptionError::io(format!("creating {}", pin_dir.display()), e))?;
    for (name, _) in PROGRAMS {
        let _ = fs::remove_file(pin_dir.join(format!("{LINK_PREFIX}{name}{NEW_SUFFIX}")));
    }
    for name in map_names::LEGACY {
        // Maps of an earlier layout that this version no longer uses.
        let _ = fs::remove_file(pin_dir.join(name));
    }
    for (name, map_type, key_size, value_size, max_entries) in MAP_SHAPES {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let fits = MapInfo::from_pin(&path).is_ok_and(|info| {
            info.map_type().is_ok_and(|t| t == map_type)
                && info.key_size() as usize == key_size
                && info.value_size() as usize == value_size
                && info.max_entries() == max_entries
        });
        if !fits {
            tracing::warn!(map = %path.display(), "pinned map has another layout (older masker?); recreating it");
            fs::remove_file(&path).map_err(|e| InterceptionError::io(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_ipv4() {
        let v4: SocketAddr = "10.0.0.5:5432".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:5432".parse().unwrap();
        assert_eq!(endpoint(v4), endpoint(mapped));
        assert_eq!(endpoint(v4).1, 5432);
        let orig = OrigDst { addr: endpoint(mapped).0, port: 5432, family: 10, ..Default::default() };
        assert_eq!(original_addr(&orig), v4);
        let v6: SocketAddr = "[::1]:6543".parse().unwrap();
        let orig = OrigDst { addr: endpoint(v6).0, port: 6543, family: 10, ..Default::default() };
        assert_eq!(original_addr(&orig), v6);
    }

    #[test]
    fn lpm_keys_put_the_port_before_the_address() {
        let exact = target_key(&NetPort::exact("10.0.0.5:5432".parse().unwrap()));
        assert_eq!(exact.prefix_len(), 32 + 128);
        assert_eq!(exact.data().port, 5432);
        let net = target_key(&"172.16.0.0/12:5432".parse().unwrap());
        assert_eq!(net.prefix_len(), 32 + 96 + 12);
        let any = target_key(&"*:5432".parse().unwrap());
        assert_eq!((any.prefix_len(), any.data().addr), (32, [0; 16]));
        let allow = egress_key(CgroupId(7), &"10.0.0.53/32:53".parse().unwrap());
        assert_eq!(allow.prefix_len(), 96 + 128);
        assert_eq!(allow.data().cgroup, 7u64.to_ne_bytes());
    }

    #[test]
    fn interception_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Interception>();
    }

    #[test]
    fn only_masker_pins_are_removed() {
        assert!(is_masker_pin("MASKER_TAGS"));
        assert!(is_masker_pin("link_masker_connect4"));
        assert!(is_masker_pin("link_masker_connect4_new"));
        assert!(!is_masker_pin("cilium_calls"));
    }

    #[test]
    fn unspecified_listener_means_loopback() {
        let cfg = InterceptionConfig::new("0.0.0.0:7000".parse().unwrap());
        let c = host_listener(&cfg);
        assert_eq!((c.listen_ip4, c.listen_port4, c.listen_port6), ([127, 0, 0, 1], 7000, 0));
    }
}
