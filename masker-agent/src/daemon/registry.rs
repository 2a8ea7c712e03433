//! Live sessions: what `masker sessions` and `masker status` list, and how
//! an operator ends one.
//!
//! The registry only tracks sessions: the services a session reports to
//! (audit trail, metrics, approvals) are reached through its
//! [`crate::session::context::SessionContext`]. Sessions update their own
//! atomics on the relay path (no lock); the registry lock is taken only when
//! a session starts or ends and when the admin API takes a snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::addr::TargetAddr;
use crate::interception::cgroup::{CgroupId, Pid};
use crate::masking::RowStats;

/// Who is on the other end of a session and where it was going.
#[derive(Debug, Clone, Serialize)]
pub struct SessionOrigin {
    /// Workload identity (from the cgroup tag), or `None` in proxy mode
    /// without one.
    pub identity: Option<String>,
    /// The identity record of the tag (agent mode): its verified token
    /// claims, matched by policy rules with `claims` and recorded in audit
    /// `session_start` events.
    #[serde(skip)]
    pub verified: Option<Arc<crate::identity::Identity>>,
    /// Client socket address as the agent saw it.
    pub client: SocketAddr,
    /// The destination the client asked for (original destination in agent
    /// mode, the configured upstream in proxy mode); `None` when the agent
    /// could not learn it (the connection is refused).
    pub destination: Option<TargetAddr>,
    /// cgroup v2 id of the connecting task (agent mode).
    pub cgroup_id: Option<CgroupId>,
    /// Process id of the connecting task (agent mode).
    pub pid: Option<Pid>,
    /// The client's network namespace when it is not the agent's (a
    /// container): its upstream connection is made from there too.
    #[serde(skip)]
    pub netns: Option<crate::interception::netns::NetnsOrigin>,
}

impl SessionOrigin {
    /// The claims of a verified token behind the session's identity.
    pub fn verified_claims(&self) -> Option<&crate::identity::Claims> {
        self.verified.as_deref().and_then(|v| v.verified_claims())
    }
}

/// Counters of one session, updated by its relay.
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub rows: AtomicU64,
    pub masked_cells: AtomicU64,
    pub statements: AtomicU64,
    /// Bytes the session's partial messages hold now (both directions; see
    /// [`crate::session::budget`]).
    pub buffered_bytes: AtomicU64,
    /// Masked cells of finished statements, per action.
    masked: Mutex<RowStats>,
}

impl SessionCounters {
    /// Adds a finished statement's masked cells per action.
    pub fn add_masked(&self, stats: &RowStats) {
        if stats.total() > 0 || stats.fallback_null > 0 {
            self.masked.lock().unwrap_or_else(|p| p.into_inner()).add(stats);
        }
    }

    /// Masked cells of the session's finished statements, per action.
    pub fn masked(&self) -> RowStats {
        *self.masked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A live session as registered.
#[derive(Debug)]
pub struct SessionEntry {
    pub id: u64,
    pub origin: SessionOrigin,
    pub started: Instant,
    pub started_unix: u64,
    /// Database user and database from the startup packet, once known.
    pub startup: Mutex<Option<(String, String)>>,
    /// TLS towards the client and towards the server, once set up.
    pub tls_client: std::sync::atomic::AtomicBool,
    pub tls_server: std::sync::atomic::AtomicBool,
    pub counters: SessionCounters,
    /// Ends the session when an operator asks (`masker sessions kill`).
    pub kill: KillSwitch,
    /// The identity's policy block says `mode = "observe"`: the session is
    /// relayed unchanged; what enforcing would do is only recorded.
    pub observe: std::sync::atomic::AtomicBool,
}

/// Set once by an operator; the session's relay watches it.
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl KillSwitch {
    /// Asks the session to end.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Whether [`KillSwitch::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Resolves once the session is killed (at once if it already was).
    pub async fn killed(&self) {
        while !self.is_killed() {
            self.notify.notified().await;
        }
    }
}

/// Rows and masked cells of the sessions that ended.
#[derive(Debug, Default)]
struct Finished {
    rows: AtomicU64,
    masked_cells: AtomicU64,
}

/// The set of live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<SessionEntry>>>,
    finished: Finished,
}

/// Removes its session from the registry when dropped (however the session
/// ended) and folds its rows and masked cells into the finished sessions'.
pub struct SessionGuard {
    registry: Arc<Registry>,
    pub entry: Arc<SessionEntry>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.registry.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(&self.entry.id);
        let (mine, agent) = (&self.entry.counters, &self.registry.finished);
        agent.rows.fetch_add(mine.rows.load(Ordering::Relaxed), Ordering::Relaxed);
        agent.masked_cells.fetch_add(mine.masked_cells.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Registry {
    /// Registers a new session.
    pub fn open(self: &Arc<Self>, origin: SessionOrigin) -> SessionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let entry = Arc::new(SessionEntry {
            id,
            origin,
            started: Instant::now(),
            started_unix,
            startup: Mutex::new(None),
            tls_client: Default::default(),
            tls_server: Default::default(),
            counters: SessionCounters::default(),
            kill: KillSwitch::default(),
            observe: Default::default(),
        });
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entry.clone());
        SessionGuard { registry: self.clone(), entry }
    }

    /// Asks live session `id` to end; false when there is none.
    pub fn kill(&self, id: u64) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&id) {
            Some(e) => {
                e.kill.kill();
                true
            }
            None => false,
        }
    }

    /// A consistent copy of the live sessions for display.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.values().map(|e| SessionSnapshot::of(e)).collect()
    }

    /// How many sessions are live (accepted and not yet ended).
    pub fn live(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Rows and masked cells of all sessions since start (finished and
    /// live).
    pub fn totals(&self) -> (u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut rows, mut masked) = (get(&self.finished.rows), get(&self.finished.masked_cells));
        for e in self.sessions.lock().unwrap_or_else(|p| p.into_inner()).values() {
            rows += get(&e.counters.rows);
            masked += get(&e.counters.masked_cells);
        }
        (rows, masked)
    }
}

/// One live session as `masker status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    pub id: u64,
    pub identity: Option<String>,
    pub client: String,
    pub destination: String,
    pub cgroup_id: Option<CgroupId>,
    pub pid: Option<Pid>,
    /// The client's network namespace (`net:[INODE]`) when it is not the
    /// agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The container the client runs in, when its cgroup names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub started_unix: u64,
    pub age_secs: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub rows: u64,
    pub masked_cells: u64,
    pub statements: u64,
    /// Masked cells of finished statements, per action.
    #[serde(default)]
    pub masked: BTreeMap<String, u64>,
    /// Bytes its partial messages hold now.
    #[serde(default)]
    pub buffered_bytes: u64,
    /// Observe mode: relayed unchanged, nothing masked or refused.
    #[serde(default)]
    pub observe: bool,
}

impl SessionSnapshot {
    fn of(e: &SessionEntry) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let startup = e.startup.lock().unwrap_or_else(|p| p.into_inner()).clone();
        SessionSnapshot {
            id: e.id,
            identity: e.origin.identity.clone(),
            client: e.origin.client.to_string(),
            destination: e.origin.destination.as_ref().map_or_else(String::new, ToString::to_string),
            cgroup_id: e.origin.cgroup_id,
            pid: e.origin.pid,
            netns: e.origin.netns.as_ref().map(|n| n.ns.to_string()),
            container: e.origin.netns.as_ref().and_then(|n| n.container.clone()),
            user: startup.as_ref().map(|s| s.0.clone()),
            database: startup.map(|s| s.1),
            started_unix: e.started_unix,
            age_secs: e.started.elapsed().as_secs(),
            bytes_from_client: get(&e.counters.bytes_from_client),
            bytes_to_client: get(&e.counters.bytes_to_client),
            rows: get(&e.counters.rows),
            masked_cells: get(&e.counters.masked_cells),
            statements: get(&e.counters.statements),
            masked: e.counters.masked().iter().map(|(k, n)| (k.as_str().to_string(), n)).collect(),
            buffered_bytes: get(&e.counters.buffered_bytes),
            observe: e.observe.load(Ordering::Relaxed),
        }
    }
}
