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
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Agent;
use crate::admin::NamespaceStatus;
use crate::cgroup::CgroupId;
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
    served: Mutex<HashMap<NsId, Served>>,
    /// One reconcile at a time (they open sockets and write the map).
    running: tokio::sync::Mutex<()>,
}

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
            served: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
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
        let _one = self.running.lock().await;
        let tagged: Vec<(CgroupId, std::path::PathBuf)> = {
            let guard = agent.interception.read().await;
            let Some(i) = guard.as_ref() else { return Reconciled::default() };
            match i.tags() {
                Ok(tags) => tags.into_iter().filter_map(|t| Some((t.cgroup, t.path?))).collect(),
                Err(e) => {
                    warn!("namespaces: reading the tags: {e}");
                    return Reconciled::default();
                }
            }
        };
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
            let agent = agent.clone();
            accept.push(tokio::spawn(async move { agent.accept_loop_in(l, id).await }));
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
