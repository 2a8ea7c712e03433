//! The daemons: `masker agent` ([`agent`]: eBPF interception, tags, the
//! admin socket) and `masker proxy` ([`proxy`]: one fixed upstream).
//!
//! Both start the same way ([`start`]): one [`SessionContext`] with its
//! services (audit trail, metrics, approvals, the registry of live
//! sessions), then the same accept loop ([`accept`]) with a router of their
//! own.
//! [`signals`] ends and reloads them ([`drain`] the sessions on stop,
//! [`reload`] the policy), [`admin`] is the agent's socket for operators,
//! [`config`] its configuration file and [`limits`] its `[limits]` (the
//! proxy's flags of the same names), [`metrics`] the Prometheus endpoint
//! and [`registry`] the list of live sessions.

pub mod accept;
pub mod admin;
pub mod agent;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod signals;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

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
    /// The thread that works in containers' network namespaces cannot start.
    #[error("starting the network namespace thread: {0}")]
    Netns(std::io::Error),
    /// A timeout or memory limit cannot be used.
    #[error(transparent)]
    Limits(#[from] limits::LimitsError),
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

/// How long after the drain deadline the daemon waits for sessions to
/// write their 57P01 and close.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Stops a daemon's sessions (the accept loops end with it): every session
/// whose statements are all answered gets 57P01 at once, the others when
/// their running statement is answered or at the drain deadline
/// (`drain_secs`). A second SIGINT/SIGTERM moves the deadline to now.
/// Returns once no session is left, or shortly after the deadline.
pub async fn drain(ctx: &SessionContext) {
    let deadline = Instant::now() + ctx.limits.drain;
    ctx.shutdown.begin(deadline);
    let live = ctx.registry.live();
    if live > 0 {
        info!(
            sessions = live,
            drain_secs = ctx.limits.drain.as_secs(),
            "stopping: sessions end as their statements finish"
        );
    }
    let mut give_up = tokio::time::Instant::from_std(deadline) + DRAIN_GRACE;
    let again = signals::shutdown_signal();
    tokio::pin!(again);
    let mut hurried = false;
    while ctx.registry.live() > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = &mut again, if !hurried => {
                hurried = true;
                info!("second stop signal: ending every session now");
                ctx.shutdown.begin(Instant::now());
                give_up = tokio::time::Instant::now() + DRAIN_GRACE;
            }
            () = tokio::time::sleep_until(give_up) => {
                warn!(sessions = ctx.registry.live(), "sessions still open after the drain; closing them");
                return;
            }
        }
    }
}

/// Loads the policy at `path` (if any), failing with its precise error.
/// Identities in observe mode are named loudly in the log: nothing is
/// masked for them.
pub fn load_policy(path: Option<&Path>) -> Result<Option<Arc<Policy>>, PolicyError> {
    let policy = path.map(|p| Policy::from_file(p).map(Arc::new)).transpose()?;
    if let Some(observing) = policy.as_ref().map(|p| p.observing()).filter(|o| !o.is_empty()) {
        tracing::warn!(
            identities = %observing.join(", "),
            "OBSERVE MODE for these [[identity]] blocks: their sessions are relayed UNMASKED; what masker would mask \
             or refuse is only recorded (audit trail, metrics)"
        );
    }
    Ok(policy)
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
        tagged_cgroups: ctx.metrics.tagged_cgroups(),
        live,
        identities: ctx.metrics.identities(),
        latency: ctx.metrics.latency_snapshot(),
        kernel_refusals: ctx.metrics.kernel_refusals(),
        memory: memory(ctx),
        revoked_refusals: ctx.metrics.revoked_refusals(),
    }
}

/// Memory held by partial messages, and the process's RSS and fds.
pub fn memory(ctx: &SessionContext) -> metrics::MemoryStatus {
    let b = &ctx.budget;
    metrics::MemoryStatus {
        buffered_bytes: b.used() as u64,
        budget_bytes: b.limit() as u64,
        session_cap_bytes: b.session_cap() as u64,
        sessions_refused: b.refused_sessions(),
        rss_bytes: metrics::MemoryStatus::rss_bytes(),
        open_fds: metrics::MemoryStatus::open_fds(),
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
    fn renders_kernel_refusals_per_cgroup() {
        let s = metrics::Snapshot {
            kernel_refusals: vec![(
                42,
                "ci-job".into(),
                crate::interception::RefusedCounts { no_listener: 2, egress: 5 },
            )],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains("masker_kernel_refused_total{cgroup_id=\"42\",identity=\"ci-job\",reason=\"no_listener\"} 2"),
            "{text}"
        );
        assert!(text.contains("masker_kernel_refused_total{cgroup_id=\"42\",identity=\"ci-job\",reason=\"egress\"} 5"));
    }

    #[test]
    fn counts_refusals_of_revoked_tags_until_the_entry_goes() {
        let ctx = SessionContext::new(ContextSettings::default());
        ctx.metrics.revoked_refusal(42, "ci-job");
        ctx.metrics.revoked_refusal(42, "ci-job");
        ctx.metrics.revoked_refusal(7, "ci-\"other\"");
        let text = render(&snapshot(&ctx));
        assert!(text.contains("masker_revoked_refused_total{cgroup_id=\"42\",identity=\"ci-job\"} 2"), "{text}");
        assert!(
            text.contains("masker_revoked_refused_total{cgroup_id=\"7\",identity=\"ci-\\\"other\\\"\"} 1"),
            "{text}"
        );
        ctx.metrics.forget_revoked(42);
        let text = render(&snapshot(&ctx));
        assert!(!text.contains("cgroup_id=\"42\""), "{text}");
        assert!(text.contains("# TYPE masker_revoked_refused_total counter"), "{text}");
    }

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
        assert!(text.contains("# TYPE masker_tagged_cgroups gauge\nmasker_tagged_cgroups 0\n"), "{text}");
        r.metrics.set_tagged_cgroups(3);
        assert!(render(&snapshot(&r)).contains("masker_tagged_cgroups 3\n"));
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
            netns: None,
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
