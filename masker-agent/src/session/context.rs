//! What the sessions of an agent or proxy share ([`SessionContext`]) and what
//! the two directions of one session share ([`Session`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::auth::Credentials;
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

/// Limits that protect the agent from its peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message a client may send (PostgreSQL's own limit is 1 GiB).
    pub max_client_message: usize,
    /// Largest server message the agent buffers when it must see it whole.
    pub max_server_message: usize,
    /// How long the client may take to send its startup packet.
    pub startup_timeout: Duration,
    /// How long connecting to the server may take.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_message: 64 << 20,
            max_server_message: 1 << 30,
            startup_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
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
    /// The context of a daemon: `settings`, default limits, and fresh
    /// services (the audit trail not started, approvals not decidable).
    pub fn new(settings: ContextSettings) -> SessionContext {
        SessionContext {
            registry: Arc::default(),
            audit: Arc::default(),
            metrics: Arc::default(),
            approvals: Arc::default(),
            limits: Limits::default(),
            socket_mark: settings.socket_mark,
            policy: RwLock::new(settings.policy),
            catalog: Arc::new(Catalog::new(settings.catalog)),
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
    /// data values in it).
    Refuse { code: &'static str, message: String },
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
