//! The agent's listeners inside other network namespaces (container jobs):
//! which namespaces the tagged cgroups' processes live in, a listener in
//! each, and its entry in the kernel's listeners map.
//!
//! [`Namespaces::reconcile`] brings the listeners in line with the
//! processes: it runs when a cgroup is tagged or untagged, when the agent
//! starts (an agent restart re-discovers the namespaces of running
//! containers), when the Docker watcher sees a container start or stop, and
//! every [`RESCAN`] for containers started under an already tagged cgroup.
//! A namespace in which no process of a tagged cgroup is left loses its
//! listener and map entry; nothing of masker keeps it alive afterwards.
//!
//! Revoked tags (`masker untag`) get no listener: their containers' connects
//! to targets are refused in the kernel. The same scans delete a revoked
//! tag's entry once its cgroup directory is gone (within one [`RESCAN`]),
//! so a stale entry never applies to a new cgroup that gets the same id
//! (inode number).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Agent;
use crate::daemon::admin::NamespaceStatus;
use crate::interception::cgroup::CgroupId;
use crate::interception::netns::{self, NetnsOrigin, NetnsWorker, NsHandle, NsId};

/// How often the tagged cgroups are scanned for new or vanished namespaces
/// between the events that trigger a scan at once.
pub const RESCAN: Duration = Duration::from_millis(500);

/// A namespace with the agent's listener inside.
struct Served {
    handle: Arc<NsHandle>,
    cookie: u64,
    listen: Vec<SocketAddr>,
    tagged: CgroupId,
    container: Option<String>,
    since_unix: u64,
    /// The accept loops; aborting them drops (closes) the listeners.
    accept: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.accept {
            task.abort();
        }
    }
}

/// The served namespaces and the thread that works inside them.
pub struct Namespaces {
    worker: NetnsWorker,
    own: NsId,
    /// The tagged cgroup directories, for [`watch_cgroups`].
    pub(super) watched: Arc<Mutex<Vec<std::path::PathBuf>>>,
    /// Wakes the scan loop ([`Namespaces::run`]).
    pub(super) wake: Arc<tokio::sync::Notify>,
    served: Mutex<HashMap<NsId, Served>>,
    /// One reconcile at a time (they open sockets and write the map); holds
    /// the directories of the tagged cgroups found so far (looking one up
    /// walks the cgroup tree, so it is done once per tag).
    running: tokio::sync::Mutex<TagDirs>,
}

/// Directories of tagged cgroups, and when a tag's directory was last
/// looked for in vain (a tag outliving its cgroup is looked for again only
/// every [`MISSING_RETRY`]).
#[derive(Default)]
struct TagDirs {
    found: HashMap<CgroupId, std::path::PathBuf>,
    missing: HashMap<CgroupId, std::time::Instant>,
}

const MISSING_RETRY: Duration = Duration::from_secs(30);

/// What a reconcile changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub opened: usize,
    pub closed: usize,
}

impl Namespaces {
    /// Starts the namespace thread (from the agent's own namespace).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            worker: NetnsWorker::start()?,
            own: netns::own_ns()?,
            watched: Arc::new(Mutex::new(Vec::new())),
            wake: Arc::new(tokio::sync::Notify::new()),
            served: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(TagDirs::default()),
        })
    }

    /// The namespaces served now.
    pub fn status(&self) -> Vec<NamespaceStatus> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<NamespaceStatus> = served
            .iter()
            .map(|(id, s)| NamespaceStatus {
                netns: id.to_string(),
                cookie: s.cookie,
                cgroup_id: s.tagged.0,
                container: s.container.clone(),
                listen: s.listen.iter().map(|a| a.to_string()).collect(),
                since_unix: s.since_unix,
            })
            .collect();
        out.sort_by(|a, b| a.netns.cmp(&b.netns));
        out
    }

    /// The origin of a session accepted on the listener in `ns`.
    fn origin(&self, ns: NsId) -> Option<NetnsOrigin> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.get(&ns).map(|s| NetnsOrigin::new(self.worker.clone(), s.handle.clone(), s.cookie, s.container.clone()))
    }

    /// Opens listeners in the namespaces the tagged cgroups' processes live
    /// in and closes those no such process is left in.
    pub async fn reconcile(&self, agent: &Arc<Agent>) -> Reconciled {
        let mut dirs = self.running.lock().await;
        let (tagged, vanished): (Vec<(CgroupId, std::path::PathBuf)>, Vec<CgroupId>) = {
            let guard = agent.interception.read().await;
            let Some(i) = guard.as_ref() else { return Reconciled::default() };
            let ids = match i.tag_ids() {
                Ok(ids) => ids,
                Err(e) => {
                    warn!("namespaces: reading the tags: {e}");
                    return Reconciled::default();
                }
            };
            let revoked = |id: &CgroupId| ids.iter().any(|t| t.cgroup == *id && t.revoked);
            // Revoked tags whose cgroup may be gone: deleted below once a
            // walk of the tree confirms it.
            let mut vanished = Vec::new();
            let TagDirs { found, missing } = &mut *dirs;
            found.retain(|id, path| {
                if !ids.iter().any(|t| t.cgroup == *id) {
                    return false;
                }
                let there = crate::interception::cgroup::id_of(path).is_ok_and(|now| now == *id);
                if !there && revoked(id) {
                    vanished.push(*id);
                }
                there
            });
            missing.retain(|id, _| ids.iter().any(|t| t.cgroup == *id));
            for t in &ids {
                let id = &t.cgroup;
                if found.contains_key(id)
                    || vanished.contains(id)
                    || (!t.revoked && missing.get(id).is_some_and(|at| at.elapsed() < MISSING_RETRY))
                {
                    continue;
                }
                match i.find_cgroup(*id) {
                    Some(path) => {
                        missing.remove(id);
                        found.insert(*id, path);
                    }
                    None if t.revoked => vanished.push(*id),
                    None => {
                        missing.insert(*id, std::time::Instant::now());
                    }
                }
            }
            // Only active tags get listeners.
            let active = found.iter().filter(|(id, _)| !revoked(id)).map(|(id, p)| (*id, p.clone())).collect();
            (active, vanished)
        };
        if !vanished.is_empty() {
            self.forget_vanished(agent, &vanished, &mut dirs).await;
        }
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = tagged.iter().map(|(_, p)| p.clone()).collect();
        let own = self.own;
        let seen = match tokio::task::spawn_blocking(move || netns::scan(&tagged, own)).await {
            Ok(seen) => seen,
            Err(e) => {
                warn!("namespaces: scan failed: {e}");
                return Reconciled::default();
            }
        };
        let mut done = Reconciled::default();

        // Gone first: their map entries go before anything else happens.
        let gone: Vec<NsId> = {
            let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
            served.keys().filter(|id| !seen.contains_key(id)).copied().collect()
        };
        for id in gone {
            let cookie = self.served.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|s| s.cookie);
            if let Some(cookie) = cookie {
                if let Some(i) = agent.interception.write().await.as_mut()
                    && let Err(e) = i.remove_listener(cookie)
                {
                    warn!(netns = %id, "removing the listener entry: {e}");
                }
                let removed = self.served.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                // Its catalog connections would keep the namespace alive.
                agent.ctx.catalog.forget_netns(cookie).await;
                if let Some(s) = removed {
                    info!(netns = %id, cookie, container = s.container.as_deref().unwrap_or("-"), "namespace listener closed");
                }
                done.closed += 1;
            }
        }

        for (id, seen) in seen {
            let known = self.served.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id);
            if known {
                continue;
            }
            match self.open(agent, id, &seen).await {
                Ok(()) => done.opened += 1,
                // The process may have exited meanwhile; the next scan tells.
                Err(e) => warn!(netns = %id, pid = seen.pid, "cannot serve the namespace: {e}"),
            }
        }
        done
    }

    /// Deletes the entries of revoked tags whose cgroup is gone (checked
    /// again under the write lock, so a tag given meanwhile is never
    /// touched).
    async fn forget_vanished(&self, agent: &Arc<Agent>, ids: &[CgroupId], dirs: &mut TagDirs) {
        let mut forgotten = Vec::new();
        {
            let mut guard = agent.interception.write().await;
            let Some(i) = guard.as_mut() else { return };
            for id in ids {
                match i.forget_if_gone(*id) {
                    Ok(true) => forgotten.push(*id),
                    Ok(false) => {}
                    Err(e) => warn!(cgroup_id = %id, "deleting the revoked tag of a removed cgroup: {e}"),
                }
            }
        }
        for id in forgotten {
            dirs.found.remove(&id);
            dirs.missing.remove(&id);
            agent.ctx.metrics.forget_revoked(id.0);
            info!(cgroup_id = %id, "revoked tag deleted: its cgroup is gone");
        }
    }

    async fn open(&self, agent: &Arc<Agent>, id: NsId, seen: &netns::Seen) -> std::io::Result<()> {
        let handle = Arc::new(NsHandle::open(seen.pid, id)?);
        let opened = self.worker.listen(handle.clone()).await?;
        let v4 = TcpListener::from_std(opened.v4)?;
        let v6 = opened.v6.map(TcpListener::from_std).transpose()?;
        let addr4 = match v4.local_addr()? {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        };
        let addr6 = match v6.as_ref().map(|l| l.local_addr()).transpose()? {
            Some(SocketAddr::V6(a)) => Some(a),
            _ => None,
        };
        let container = netns::container_id(&seen.cgroup_dir);
        let mut listen = vec![v4.local_addr()?];
        listen.extend(v6.as_ref().and_then(|l| l.local_addr().ok()));
        let mut accept = Vec::new();
        for l in std::iter::once(v4).chain(v6) {
            let router = Arc::new(super::InNamespace { agent: agent.clone(), ns: id });
            accept.push(tokio::spawn(crate::daemon::accept::serve(
                l,
                router,
                agent.ctx.clone(),
                std::future::pending(),
            )));
        }
        let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.served.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Served {
                handle,
                cookie: opened.cookie,
                listen,
                tagged: seen.tagged,
                container: container.clone(),
                since_unix,
                accept,
            },
        );
        // The listener exists before the kernel sends anyone to it.
        let written = match agent.interception.write().await.as_mut() {
            Some(i) => i.set_listener(opened.cookie, addr4, addr6).map_err(|e| std::io::Error::other(e.to_string())),
            None => Err(std::io::Error::other("the agent is shutting down")),
        };
        if let Err(e) = written {
            self.served.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(e);
        }
        info!(
            netns = %id,
            cookie = opened.cookie,
            cgroup_id = seen.tagged.0,
            container = container.as_deref().unwrap_or("-"),
            listen_v4 = ?addr4,
            listen_v6 = ?addr6,
            "namespace listener opened"
        );
        Ok(())
    }

    /// Scans every [`RESCAN`], and at once when woken (a cgroup event, a
    /// Docker event); after a wake-up a few more times in quick succession,
    /// since a container runtime puts its first process in the cgroup before
    /// that process has its own network namespace.
    pub async fn run(&self, agent: &Arc<Agent>) {
        loop {
            let woken = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(RESCAN) => false,
            };
            self.reconcile(agent).await;
            agent.refresh_kernel_metrics().await;
            if woken {
                for pause in [5u64, 10, 20, 40, 80, 160] {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    }
                    self.reconcile(agent).await;
                }
            }
        }
    }

    /// Closes every listener and removes their map entries (agent shutdown).
    pub async fn close_all(&self, agent: &Agent) {
        let served: Vec<(NsId, Served)> = self.served.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        if let Some(i) = agent.interception.write().await.as_mut() {
            for (_, s) in &served {
                let _ = i.remove_listener(s.cookie);
            }
        }
        drop(served);
    }

    /// Session origin for a connection accepted in `ns` (see
    /// [`Agent::accept_loop_in`]).
    pub(super) fn session_origin(&self, ns: NsId) -> Option<NetnsOrigin> {
        self.origin(ns)
    }
}

/// Wakes the namespace scan at once when a cgroup appears in, or a cgroup's
/// population changes under, one of the tagged cgroups (inotify on the
/// directories and their `cgroup.events`): a container started under a
/// tagged cgroup gets its listener within milliseconds, not at the next
/// [`RESCAN`]. Runs on a thread of its own; the watch list follows `dirs`.
pub fn watch_cgroups(dirs: Arc<Mutex<Vec<std::path::PathBuf>>>, wake: Arc<tokio::sync::Notify>) -> std::io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    std::thread::Builder::new().name("masker-cgroup-watch".into()).spawn(move || {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            // (Re)watch every directory of the tagged trees; adding a watch
            // that exists is a no-op. Watches of removed directories go away
            // by themselves.
            let roots = dirs.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for root in roots {
                let mut stack = vec![(root, 0usize)];
                while let Some((dir, depth)) = stack.pop() {
                    let flags = inotify::WatchFlags::CREATE | inotify::WatchFlags::ONLYDIR;
                    if inotify::add_watch(&fd, &dir, flags).is_err() {
                        continue;
                    }
                    let _ = inotify::add_watch(&fd, dir.join("cgroup.events"), inotify::WatchFlags::MODIFY);
                    if depth < 32
                        && let Ok(entries) = std::fs::read_dir(&dir)
                    {
                        stack.extend(
                            entries
                                .flatten()
                                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                                .map(|e| (e.path(), depth + 1)),
                        );
                    }
                }
            }
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    warn!("cgroup watch: {e}; new containers are found by the periodic scan only");
                    return;
                }
            }
            let mut reader = inotify::Reader::new(&fd, &mut buf);
            let mut any = false;
            while reader.next().is_ok() {
                any = true;
            }
            if any {
                wake.notify_one();
            }
        }
    })?;
    Ok(())
}
