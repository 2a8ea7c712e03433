//! What the sessions of an agent or proxy share ([`SessionContext`]) and what
//! the two directions of one session share ([`Session`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::auth::Credentials;
use super::budget::MemoryBudget;
use super::drain::Shutdown;
use super::relay::Outbox;
use super::tls::SessionTls;
use crate::addr::TargetAddr;
use crate::approvals::Approvals;
use crate::audit::Audit;
use crate::audit::trail::SessionTrail;
use crate::daemon::metrics::Metrics;
use crate::daemon::registry::{Registry, SessionEntry};
use crate::plan::catalog::{Catalog, CatalogAccess};
use crate::policy::Policy;

/// Limits that protect the agent from its peers: timeouts for every step a
/// peer could stall, and the memory that partial messages may hold. The
/// daemons take them from `[limits]` of the agent configuration or the
/// proxy's `--*-secs`/`--*-mib` flags ([`crate::daemon::limits`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message a client may send (PostgreSQL's own limit is 1 GiB).
    pub max_client_message: usize,
    /// Largest server message the agent buffers when it must see it whole.
    pub max_server_message: usize,
    /// How long the client may take to send its startup packet (from
    /// accept, SSLRequest and TLS included).
    pub startup_timeout: Duration,
    /// How long connecting to the server may take.
    pub connect_timeout: Duration,
    /// How long a TLS handshake may take, with the client or the server.
    pub tls_timeout: Duration,
    /// How long the login may take: from the startup packet sent to the
    /// server to its first ReadyForQuery (relayed or injected login).
    pub auth_timeout: Duration,
    /// How long a client may leave a message half sent (after login). A
    /// session idle between messages has no timeout: that is its right.
    pub partial_message_timeout: Duration,
    /// How long one catalog look-up may take (the agent's own connection).
    pub catalog_timeout: Duration,
    /// On SIGTERM: how long running statements may take to finish before
    /// their sessions are ended with 57P01.
    pub drain: Duration,
    /// All sessions' partial messages together (both directions), bytes.
    pub memory_budget: usize,
    /// One session's partial messages (both directions), bytes.
    pub session_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_message: 64 << 20,
            max_server_message: 1 << 30,
            startup_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(60),
            partial_message_timeout: Duration::from_secs(30),
            catalog_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(30),
            memory_budget: 256 << 20,
            session_buffer: 64 << 20,
        }
    }
}

/// What a [`SessionContext`] is made of (the rest starts empty).
#[derive(Default)]
pub struct ContextSettings {
    /// The policy in force (`None`: relay without masking).
    pub policy: Option<Arc<Policy>>,
    /// How the agent logs in for catalog look-ups (`None`: every table
    /// column is masked, fail closed).
    pub catalog: Option<CatalogAccess>,
    /// TLS towards clients and towards each target's server.
    pub tls: SessionTls,
    /// Credentials the agent logs in with, by configured target name.
    pub credentials: Credentials,
    /// `SO_MARK` of upstream sockets (agent mode).
    pub socket_mark: Option<u32>,
    /// Timeouts and memory limits.
    pub limits: Limits,
}

/// What every session of an agent or proxy shares: its settings and the
/// services sessions report to. Built once per daemon
/// ([`crate::daemon::start`]).
pub struct SessionContext {
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// Audit trail (disabled unless started).
    pub audit: Arc<Audit>,
    /// Connection counters, per-identity counters and the latency histogram.
    pub metrics: Arc<Metrics>,
    /// Statements waiting for an operator, and standing approvals.
    pub approvals: Arc<Approvals>,
    pub limits: Limits,
    /// Memory held by partial messages of all sessions.
    pub budget: Arc<MemoryBudget>,
    /// Set when the daemon stops: sessions drain, then end with 57P01.
    pub shutdown: Shutdown,
    /// `SO_MARK` put on upstream sockets so the eBPF programs never redirect
    /// the agent's own connections (a second guard besides the agent running
    /// outside tagged cgroups). `None` in proxy mode.
    pub socket_mark: Option<u32>,
    /// The policy in force; replaced whole on reload. Sessions keep the one
    /// they started with. `None`: relay without masking.
    pub policy: RwLock<Option<Arc<Policy>>>,
    pub catalog: Arc<Catalog>,
    /// TLS towards clients (masker's CA) and towards each target's server.
    pub tls: SessionTls,
    /// Credentials the agent logs in with, by configured target name.
    pub credentials: Credentials,
    /// The configured target name (`db.internal:5432`) of each destination
    /// address a route names (`10.0.0.5:5432`); kept up to date by the
    /// agent's target refresh. Destinations not listed are their own name.
    pub target_names: RwLock<HashMap<TargetAddr, TargetAddr>>,
}

impl SessionContext {
    /// The context of a daemon: `settings` and fresh
    /// services (the audit trail not started, approvals not decidable).
    pub fn new(settings: ContextSettings) -> SessionContext {
        SessionContext {
            registry: Arc::default(),
            audit: Arc::default(),
            metrics: Arc::default(),
            approvals: Arc::default(),
            budget: Arc::new(MemoryBudget::new(settings.limits.memory_budget, settings.limits.session_buffer)),
            shutdown: Shutdown::default(),
            socket_mark: settings.socket_mark,
            policy: RwLock::new(settings.policy),
            catalog: Arc::new(Catalog::new(settings.catalog).with_timeout(settings.limits.catalog_timeout)),
            limits: settings.limits,
            tls: settings.tls,
            credentials: settings.credentials,
            target_names: RwLock::new(HashMap::new()),
        }
    }

    /// The policy new sessions start with.
    pub fn current_policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configured name of the target `destination` belongs to.
    pub fn target_name(&self, destination: &TargetAddr) -> TargetAddr {
        let names = self.target_names.read().unwrap_or_else(|p| p.into_inner());
        names.get(destination).cloned().unwrap_or_else(|| destination.clone())
    }
}

/// Where an accepted connection goes, or why it may not go anywhere.
#[derive(Debug, Clone)]
pub enum Route {
    /// Relay to this server.
    To(TargetAddr),
    /// Refuse after the startup packet with this SQLSTATE and message (no
    /// data values in it). With `denial`, the refusal is a decision about
    /// the workload (not a failure): audited as a `denial` of class
    /// `connect` under that rule name and counted in the identity's denials.
    Refuse { code: &'static str, message: String, denial: Option<&'static str> },
}

/// One session: its entry in the registry, the context it runs in, and what
/// its two directions share.
pub struct Session {
    /// The daemon's shared context (policy, catalog, services).
    pub ctx: Arc<SessionContext>,
    /// The session as the registry lists it (counters, kill switch).
    pub entry: Arc<SessionEntry>,
    /// When requests left, for statement durations and the relay latency.
    pub trail: Arc<SessionTrail>,
    /// Notified when the client hangs up while one of its messages is being
    /// decided on (a statement held for approval is then withdrawn).
    pub client_hangup: Arc<tokio::sync::Notify>,
    /// Messages of the agent's own for the client (a notice that a
    /// statement waits for approval), written between relayed messages.
    pub to_client: Arc<Outbox>,
    /// Whether `session_start` was recorded (a connection that never
    /// started, such as a port probe, is not a session).
    pub(super) started: AtomicBool,
}

impl Session {
    /// The session of `entry` in `ctx`.
    pub fn new(ctx: Arc<SessionContext>, entry: Arc<SessionEntry>) -> Session {
        Session {
            ctx,
            entry,
            trail: Arc::default(),
            client_hangup: Arc::default(),
            to_client: Arc::default(),
            started: AtomicBool::new(false),
        }
    }

    /// The session's id, as `masker sessions` shows it.
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// The workload identity, if any.
    pub fn identity(&self) -> Option<&str> {
        self.entry.origin.identity.as_deref()
    }
}
