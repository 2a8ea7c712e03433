//! The daemons: `masker agent` ([`agent`]: eBPF interception, tags, the
//! admin socket) and `masker proxy` ([`proxy`]: one fixed upstream).
//!
//! Both start the same way ([`start`]): one [`SessionContext`] with its
//! services (audit trail, metrics, approvals, the registry of live
//! sessions), then the same accept loop ([`accept`]) with a router of their
//! own; sessions run on [`shards`], one single-threaded runtime per CPU.
//! [`signals`] ends and reloads them, [`admin`] is the agent's socket
//! for operators, [`config`] its configuration file, [`metrics`] the
//! Prometheus endpoint and [`registry`] the list of live sessions.

pub mod accept;
pub mod admin;
pub mod agent;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod shards;
pub mod signals;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::audit::{AuditError, AuditSettings};
use crate::identity::VerifierError;
use crate::interception::InterceptionError;
use crate::policy::{Policy, PolicyError};
use crate::session::auth::CredentialError;
use crate::session::context::{ContextSettings, SessionContext};
use crate::session::tls::TlsError;
use metrics::{CountersSnapshot, MetricsError};

/// What a daemon starts with, besides its listeners.
pub struct DaemonSettings {
    /// Policy, catalog access, TLS, credentials and socket mark.
    pub context: ContextSettings,
    /// Audit sinks (none: no audit trail).
    pub audit: AuditSettings,
    /// The Prometheus endpoint's address, if any.
    pub metrics_listen: Option<SocketAddr>,
}

/// Why a daemon could not start (or, for the agent, keep its targets up to
/// date). Every message names the file, address or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The agent configuration cannot be used.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The policy file cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A listener cannot be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    /// The eBPF programs cannot be loaded, attached or updated.
    #[error(transparent)]
    Interception(#[from] InterceptionError),
    /// masker's CA or a target's TLS settings cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An `[[issuer]]`'s key source cannot be set up.
    #[error(transparent)]
    Issuer(#[from] VerifierError),
    /// The proxy's injected credential cannot be used.
    #[error("--credential-user {user}: {source}")]
    Credential { user: String, source: CredentialError },
    /// The audit trail's file cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Builds the context every session of a daemon runs in and starts its
/// services (the audit writer, the metrics endpoint). The one way both
/// daemons start.
pub async fn start(settings: DaemonSettings) -> Result<Arc<SessionContext>, DaemonError> {
    let ctx = Arc::new(SessionContext::new(settings.context));
    ctx.audit.start(&settings.audit)?;
    if let Some(addr) = settings.metrics_listen {
        let of = ctx.clone();
        metrics::start(addr, Arc::new(move || snapshot(&of))).await?;
    }
    Ok(ctx)
}

/// Loads the policy at `path` (if any), failing with its precise error.
pub fn load_policy(path: Option<&Path>) -> Result<Option<Arc<Policy>>, PolicyError> {
    path.map(|p| Policy::from_file(p).map(Arc::new)).transpose()
}

/// The agent-wide counters, with the rows and masked cells of all sessions.
pub fn counters(ctx: &SessionContext) -> CountersSnapshot {
    ctx.metrics.counters_snapshot(ctx.registry.totals())
}

/// What the metrics endpoint shows now.
pub fn snapshot(ctx: &SessionContext) -> metrics::Snapshot {
    let counters = counters(ctx);
    let mut live = std::collections::BTreeMap::new();
    for s in ctx.registry.snapshot() {
        *live.entry(s.identity.unwrap_or_default()).or_default() += 1;
    }
    metrics::Snapshot {
        counters,
        sessions_killed: ctx.metrics.sessions_killed.load(Ordering::Relaxed),
        audit_events: ctx.audit.written.load(Ordering::Relaxed),
        audit_events_dropped: ctx.audit.dropped.load(Ordering::Relaxed),
        approvals_pending: ctx.approvals.pending_count(),
        live,
        identities: ctx.metrics.identities(),
        latency: ctx.metrics.latency_snapshot(),
    }
}

/// Ends live session `id` (`masker sessions kill`) and counts it; false
/// when there is none.
pub fn kill_session(ctx: &SessionContext, id: u64) -> bool {
    let killed = ctx.registry.kill(id);
    if killed {
        ctx.metrics.sessions_killed.fetch_add(1, Ordering::Relaxed);
    }
    killed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::masking::RowStats;
    use metrics::render;

    #[test]
    fn renders_histogram_and_identities() {
        let r = SessionContext::new(ContextSettings::default());
        r.metrics.latency(Duration::from_millis(3));
        r.metrics.session("ci");
        r.metrics.statement("ci", &RowStats::default(), 4, false);
        let text = render(&snapshot(&r));
        assert!(text.contains("masker_relay_latency_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("masker_relay_latency_seconds_count 1"));
        assert!(text.contains("masker_statements_total{identity=\"ci\",outcome=\"ok\"} 1"));
        assert!(text.contains("masker_rows_total{identity=\"ci\"} 4"));
        assert!(text.contains("masker_approvals_pending 0"), "{text}");
        let ticket = r.approvals.request(1, Some("ci"), "r", "x".into(), None, Duration::from_secs(5));
        assert!(render(&snapshot(&r)).contains("masker_approvals_pending 1"));
        drop(ticket);
        r.metrics.approval("ci", "abandoned");
        assert!(render(&snapshot(&r)).contains("masker_approvals_total{identity=\"ci\",decision=\"abandoned\"} 1"));
    }

    #[tokio::test]
    async fn kill_reaches_a_live_session_only() {
        let ctx = SessionContext::new(ContextSettings::default());
        let origin = registry::SessionOrigin {
            identity: Some("ci".into()),
            verified: None,
            client: "127.0.0.1:1".parse().unwrap(),
            destination: Some("db:5432".parse().unwrap()),
            cgroup_id: None,
            pid: None,
        };
        let guard = ctx.registry.open(origin);
        let id = guard.entry.id;
        let entry = guard.entry.clone();
        let waiter = tokio::spawn(async move { entry.kill.killed().await });
        tokio::task::yield_now().await;
        assert!(kill_session(&ctx, id));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        drop(guard);
        assert!(!kill_session(&ctx, id), "a finished session cannot be killed");
        assert_eq!(ctx.metrics.sessions_killed.load(Ordering::Relaxed), 1);
    }
}
