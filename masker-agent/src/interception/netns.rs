//! Serving workloads in other network namespaces (container jobs, sandboxes),
//! the way Istio's ztunnel serves pods: the agent opens its listener *inside*
//! the workload's namespace and connects upstream from that namespace too.
//!
//! - [`NetnsWorker`]: one dedicated thread that enters a namespace
//!   (`setns(CLONE_NEWNET)`), creates sockets there and returns to the
//!   agent's own namespace before it takes the next job. A socket stays in
//!   the namespace it was created in, whichever thread uses it later, so the
//!   listeners are accepted from and the upstream sockets connected from the
//!   agent's normal runtime.
//! - [`scan`]: which namespaces the processes of the tagged cgroups live in
//!   (discovery at tag time, on cgroup changes, after an agent restart).
//!
//! A socket holds a reference to its namespace, and so does an open
//! `/proc/PID/ns/net` file: the agent drops both as soon as no process of a
//! tagged cgroup is left in the namespace, so it never keeps a namespace
//! alive on its own.
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::interception::cgroup::CgroupId;

/// A network namespace, by the identity of its nsfs inode (what
/// `readlink /proc/PID/ns/net` shows as `net:[INODE]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    /// Device of the nsfs mount.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

impl NsId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino() }
    }
}

/// The network namespace of process `pid`.
pub fn ns_of_pid(pid: u32) -> io::Result<NsId> {
    Ok(NsId::of(&std::fs::metadata(format!("/proc/{pid}/ns/net"))?))
}

/// The agent's own network namespace.
pub fn own_ns() -> io::Result<NsId> {
    Ok(NsId::of(&std::fs::metadata("/proc/self/ns/net")?))
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`
/// of a fresh socket): the key of the listeners map.
pub fn own_cookie() -> io::Result<u64> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    masker_common::netns_cookie(probe.as_fd())
}

/// An open handle on a namespace (keeps it alive while held), with its id.
#[derive(Debug)]
pub struct NsHandle {
    file: File,
    id: NsId,
}

impl NsHandle {
    /// Opens the namespace of `pid`, checking that it is `expected` (the pid
    /// may have exited and been reused since it was seen there).
    pub fn open(pid: u32, expected: NsId) -> io::Result<Self> {
        let file = File::open(format!("/proc/{pid}/ns/net"))?;
        let id = NsId::of(&file.metadata()?);
        if id != expected {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} is no longer in network namespace {expected}"),
            ));
        }
        Ok(Self { file, id })
    }

    /// Opens a namespace by path (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub fn open_path(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let id = NsId::of(&file.metadata()?);
        Ok(Self { file, id })
    }

    /// Its id.
    pub fn id(&self) -> NsId {
        self.id
    }
}

/// The network namespace a session's client is in, when it is not the
/// agent's: what status and audit show, and where the upstream connection is
/// made from.
#[derive(Clone, Debug)]
pub struct NetnsOrigin {
    /// The namespace.
    pub ns: NsId,
    /// Its cookie.
    pub cookie: u64,
    /// The container its client runs in, when the cgroup names one.
    pub container: Option<String>,
    worker: NetnsWorker,
    handle: Arc<NsHandle>,
}

impl NetnsOrigin {
    /// The origin for namespace `handle` (cookie `cookie`), served by `worker`.
    pub fn new(worker: NetnsWorker, handle: Arc<NsHandle>, cookie: u64, container: Option<String>) -> Self {
        Self { ns: handle.id, cookie, container, worker, handle }
    }

    /// Connects to `to` from a socket created in the namespace.
    pub async fn connect(&self, to: SocketAddr, mark: Option<u32>) -> io::Result<tokio::net::TcpStream> {
        let socket = self.worker.upstream_socket(self.handle.clone(), to, mark).await?;
        tokio::net::TcpSocket::from_std_stream(socket).connect(to).await
    }
}

/// What the agent opened inside a namespace.
#[derive(Debug)]
pub struct NsListeners {
    /// Cookie of the namespace (key of the listeners map).
    pub cookie: u64,
    /// `127.0.0.1:<port>` inside it.
    pub v4: TcpListener,
    /// `[::1]:<port>` inside it, unless IPv6 is off there.
    pub v6: Option<TcpListener>,
}

type Job = Box<dyn FnOnce(&mut dyn FnMut(&NsHandle) -> io::Result<()>) + Send>;

/// The thread that works inside other namespaces; see the module
/// documentation. Cloning shares the thread.
#[derive(Clone, Debug)]
pub struct NetnsWorker {
    jobs: mpsc::Sender<Job>,
}

impl NetnsWorker {
    /// Starts the thread. It remembers the namespace it starts in (the
    /// caller's: start it from the agent's own namespace) and returns there
    /// after every job.
    pub fn start() -> io::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("masker-netns".into()).spawn(move || worker(home, rx))?;
        Ok(Self { jobs })
    }

    /// Runs `f` inside namespace `ns` on the worker thread and returns its
    /// result. The worker is back in the agent's namespace before it runs
    /// anything else; if it cannot get back, it stops and every later call
    /// fails (nothing ever runs in the wrong namespace).
    pub async fn run_in<T: Send + 'static>(
        &self,
        ns: Arc<NsHandle>,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |enter| {
            let result = enter(&ns).and_then(|()| f());
            let _ = tx.send(result);
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Opens the listeners inside `ns`: `127.0.0.1:0` and, where the
    /// namespace has IPv6 loopback, `[::1]:0` (ports chosen by the kernel,
    /// so they never collide with the workload's own).
    pub async fn listen(&self, ns: Arc<NsHandle>) -> io::Result<NsListeners> {
        self.run_in(ns, || {
            let v4 = listen_on(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))?;
            let v6 = listen_on(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))).ok();
            let cookie = masker_common::netns_cookie(v4.as_fd())?;
            Ok(NsListeners { cookie, v4, v6 })
        })
        .await
    }

    /// A TCP socket created inside `ns`, marked with `mark` (never
    /// redirected), non-blocking and not yet connected: the agent's upstream
    /// connection for a workload in that namespace, so it reaches what the
    /// workload would have reached.
    pub async fn upstream_socket(&self, ns: Arc<NsHandle>, to: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
        self.run_in(ns, move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.set_nonblocking(true)?;
            socket.set_tcp_nodelay(true)?;
            Ok(socket.into())
        })
        .await
    }

    /// The cookie of namespace `ns`.
    pub async fn cookie(&self, ns: Arc<NsHandle>) -> io::Result<u64> {
        self.run_in(ns, own_cookie).await
    }
}

fn stopped() -> io::Error {
    io::Error::other("the namespace worker thread has stopped (it could not return to the agent's namespace)")
}

fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker(home: File, jobs: mpsc::Receiver<Job>) {
    let home_id = home.metadata().map(|m| NsId::of(&m)).ok();
    for job in jobs {
        let mut entered = false;
        job(&mut |ns: &NsHandle| {
            move_into_link_name_space(ns.file.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|e| io::Error::other(format!("entering network namespace {}: {e}", ns.id)))?;
            entered = true;
            Ok(())
        });
        if entered && let Err(e) = move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network)) {
            tracing::error!(
                "the namespace worker cannot return to the agent's network namespace {:?}: {e}; it stops",
                home_id
            );
            return;
        }
    }
}

/// A namespace some process of a tagged cgroup lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// One process in it (to open the namespace from).
    pub pid: u32,
    /// The tagged cgroup that covers that process.
    pub tagged: CgroupId,
    /// That process's own cgroup directory (for the container id).
    pub cgroup_dir: PathBuf,
}

/// The namespaces other than `own` that processes of the tagged cgroups
/// `tagged` (id and directory; descendants included) live in. Processes that
/// exit while they are looked at are skipped.
pub fn scan(tagged: &[(CgroupId, PathBuf)], own: NsId) -> BTreeMap<NsId, Seen> {
    let mut found = BTreeMap::new();
    for (id, dir) in tagged {
        let mut stack = vec![(dir.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    let Ok(ns) = ns_of_pid(pid) else { continue };
                    if ns != own {
                        found.entry(ns).or_insert_with(|| Seen { pid, tagged: *id, cgroup_dir: dir.clone() });
                    }
                }
            }
            if depth >= 32 {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((entry.path(), depth + 1));
                    }
                }
            }
        }
    }
    found
}

/// The container id in a cgroup directory's name, as Docker (cgroupfs:
/// `.../docker/<64 hex>`, `--cgroup-parent X` gives `X/<64 hex>`; systemd:
/// `docker-<64 hex>.scope`), containerd/CRI (`cri-containerd-<64 hex>.scope`,
/// `.../<64 hex>` under a pod's cgroup) and Podman (`libpod-<64 hex>.scope`)
/// name them. The nearest matching component wins.
pub fn container_id(cgroup_dir: &Path) -> Option<String> {
    cgroup_dir.components().rev().find_map(|c| {
        let name = c.as_os_str().to_str()?;
        let name = name.strip_suffix(".scope").unwrap_or(name);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    #[test]
    fn container_ids_of_the_usual_cgroup_layouts() {
        for dir in [
            format!("/sys/fs/cgroup/unified/docker/{ID}"),
            format!("/sys/fs/cgroup/ci/job-42/{ID}"),
            format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope"),
            format!("/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/sys/fs/cgroup/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(container_id(Path::new(&dir)).as_deref(), Some(ID), "{dir}");
        }
        assert_eq!(container_id(Path::new("/sys/fs/cgroup/unified/masker/run-1")), None);
        assert_eq!(container_id(Path::new(&format!("/x/{}", &ID[..12]))), None, "short ids are not taken");
    }

    #[test]
    fn own_namespace_is_readable() {
        let own = own_ns().expect("/proc/self/ns/net");
        assert_eq!(ns_of_pid(std::process::id()).unwrap(), own);
        assert!(own.to_string().starts_with("net:["));
    }
}
