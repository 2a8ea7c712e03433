//! Counters for Prometheus and for `masker status`'s per-identity view, and
//! the metrics endpoint (off by default).
//!
//! Sessions update these once per statement and once per request cycle (not
//! per row). The endpoint is a minimal HTTP/1.1 responder: `GET /metrics`
//! answers the text exposition format, anything else 404; one request per
//! connection.
//!
//! | metric | type | labels |
//! |--------|------|--------|
//! | `masker_connections_total` | counter | |
//! | `masker_sessions_refused_total`, `masker_protocol_errors_total`, `masker_upstream_errors_total` | counter | |
//! | `masker_sessions` | gauge | `identity` |
//! | `masker_sessions_total` | counter | `identity` |
//! | `masker_statements_total` | counter | `identity`, `outcome` |
//! | `masker_rows_total` | counter | `identity` |
//! | `masker_masked_cells_total` | counter | `identity`, `action` |
//! | `masker_denials_total` | counter | `identity` |
//! | `masker_observe_masked_cells_total` | counter | `identity`, `action`: cells an identity in observe mode would have had masked |
//! | `masker_observe_denials_total` | counter | `identity`: its statements and sessions that would have been refused or held |
//! | `masker_approvals_total` | counter | `identity`, `decision` (`approved`, `denied`, `timeout`, `granted`, `abandoned`) |
//! | `masker_approvals_pending` | gauge | |
//! | `masker_tagged_cgroups` | gauge | |
//! | `masker_sessions_killed_total` | counter | |
//! | `masker_audit_events_total`, `masker_audit_events_dropped_total` | counter | |
//! | `masker_kernel_refused_total` | counter | `cgroup_id`, `identity`, `reason` (`no_listener`, `egress`) |
//! | `masker_revoked_refused_total` | counter | `cgroup_id`, `identity` |
//! | `masker_relay_latency_seconds` | histogram | |
//! | `masker_buffered_bytes`, `masker_buffer_budget_bytes` | gauge | |
//! | `masker_sessions_refused_memory_total` | counter | |
//! | `process_resident_memory_bytes`, `process_open_fds` | gauge | |
//!
//! `masker_revoked_refused_total` counts the connections of a revoked tag
//! (`masker untag`, cgroup still there) that reached the agent and were
//! refused; a revoked container's connections are refused in the kernel
//! instead (its namespace listener is closed) and counted as `no_listener`.
//! Both series go away with the tag's entry (the cgroup removed, or tagged
//! again for the revoked one).
//!
//! The relay latency is the time from a client's Query or Sync to the
//! server's ReadyForQuery answering it, as the agent sees it.
//!
//! `masker_tagged_cgroups` is the number of cgroups in the agent's tag map
//! that are not revoked (0 for `masker proxy`; an untagged cgroup's entry
//! stays, revoked, and is not counted), updated on every tag and untag and with each
//! target refresh. Tags outlive the agent: while it is down with tags in
//! place, tagged workloads cannot reach their targets (fail closed), which
//! is what the example alert in `packaging/prometheus/` watches for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::masking::{ActionKind, RowStats};

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What one identity did since the agent started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityCounters {
    pub sessions: u64,
    pub statements: u64,
    pub statement_errors: u64,
    pub rows: u64,
    pub masked_cells: u64,
    /// Masked cells per action name.
    pub masked: BTreeMap<String, u64>,
    pub denials: u64,
    /// Approval decisions by name (`approved`, `denied`, `timeout`, `granted`).
    pub approvals: BTreeMap<String, u64>,
    /// Observe mode: cells enforcing would have masked (nothing was).
    #[serde(default)]
    pub observe_masked_cells: u64,
    /// Observe mode: those cells per action name.
    #[serde(default)]
    pub observe_masked: BTreeMap<String, u64>,
    /// Observe mode: statements (and sessions) enforcing would have refused
    /// or held (they ran).
    #[serde(default)]
    pub observe_denials: u64,
}

/// Agent-wide counters since start.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub connections: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub cancel_requests: AtomicU64,
}

/// Agent-wide counters as plain numbers (what `masker status` shows).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CountersSnapshot {
    pub connections: u64,
    pub sessions_refused: u64,
    pub protocol_errors: u64,
    pub upstream_errors: u64,
    /// Rows of all sessions since start (finished and live).
    pub rows: u64,
    /// Masked cells of all sessions since start (finished and live).
    pub masked_cells: u64,
    pub cancel_requests: u64,
}

/// The agent's metrics: counters of connections and their outcomes, per
/// identity counters and the latency histogram.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections and how sessions ended.
    pub counters: AgentCounters,
    identities: Mutex<BTreeMap<String, IdentityCounters>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    pub sessions_killed: AtomicU64,
    tagged_cgroups: AtomicU64,
    /// Connects the kernel refused, per tagged cgroup: `(cgroup id,
    /// identity, counts)`, refreshed by the agent from the eBPF map.
    kernel_refusals: Mutex<Vec<(u64, String, crate::interception::RefusedCounts)>>,
    /// Connections refused because their tag was revoked, per tagged cgroup
    /// id: `(identity, count)`.
    revoked_refusals: Mutex<BTreeMap<u64, (String, u64)>>,
}

impl Metrics {
    /// Replaces the kernel's refusal counts.
    pub fn set_kernel_refusals(&self, refusals: Vec<(u64, String, crate::interception::RefusedCounts)>) {
        *self.kernel_refusals.lock().unwrap_or_else(|p| p.into_inner()) = refusals;
    }

    /// The kernel's refusal counts, as last refreshed.
    pub fn kernel_refusals(&self) -> Vec<(u64, String, crate::interception::RefusedCounts)> {
        self.kernel_refusals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A connection of the revoked tag of cgroup `cgroup` (identity
    /// `identity`) was refused.
    pub fn revoked_refusal(&self, cgroup: u64, identity: &str) {
        let mut map = self.revoked_refusals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(cgroup).or_insert_with(|| (identity.to_string(), 0));
        entry.1 += 1;
    }

    /// Drops the revoked-tag refusals of `cgroup` (its entry was deleted or
    /// tagged again).
    pub fn forget_revoked(&self, cgroup: u64) {
        self.revoked_refusals.lock().unwrap_or_else(|p| p.into_inner()).remove(&cgroup);
    }

    /// Refusals of revoked tags: `(cgroup id, identity, count)`.
    pub fn revoked_refusals(&self) -> Vec<(u64, String, u64)> {
        let map = self.revoked_refusals.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(id, (identity, n))| (*id, identity.clone(), *n)).collect()
    }

    fn with<R>(&self, identity: &str, f: impl FnOnce(&mut IdentityCounters) -> R) -> R {
        let mut map = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(identity) {
            Some(c) => f(c),
            None => f(map.entry(identity.to_string()).or_default()),
        }
    }

    /// A session of `identity` started.
    pub fn session(&self, identity: &str) {
        self.with(identity, |c| c.sessions += 1);
    }

    /// A statement of `identity` ended.
    pub fn statement(&self, identity: &str, stats: &RowStats, rows: u64, error: bool) {
        self.with(identity, |c| {
            c.statements += 1;
            c.statement_errors += u64::from(error);
            c.rows += rows;
            c.masked_cells += stats.total();
            for (kind, n) in stats.iter() {
                *c.masked.entry(kind.as_str().to_string()).or_default() += n;
            }
        });
    }

    /// A statement of `identity` was refused by a guardrail.
    pub fn denial(&self, identity: &str) {
        self.with(identity, |c| c.denials += 1);
    }

    /// A statement of `identity`, in observe mode, had cells enforcing would
    /// have masked (`stats`); nothing was masked.
    pub fn observed(&self, identity: &str, stats: &RowStats) {
        if stats.total() == 0 {
            return;
        }
        self.with(identity, |c| {
            c.observe_masked_cells += stats.total();
            for (kind, n) in stats.iter() {
                *c.observe_masked.entry(kind.as_str().to_string()).or_default() += n;
            }
        });
    }

    /// A statement or session of `identity`, in observe mode, would have
    /// been refused or held; it ran.
    pub fn observed_denial(&self, identity: &str) {
        self.with(identity, |c| c.observe_denials += 1);
    }

    /// An approval of a statement of `identity` was decided.
    pub fn approval(&self, identity: &str, decision: &str) {
        self.with(identity, |c| *c.approvals.entry(decision.to_string()).or_default() += 1);
    }

    /// One request cycle took `d`.
    pub fn latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The agent's tag map now holds `n` cgroups.
    pub fn set_tagged_cgroups(&self, n: usize) {
        self.tagged_cgroups.store(n as u64, Ordering::Relaxed);
    }

    /// The number of tagged cgroups last set.
    pub fn tagged_cgroups(&self) -> u64 {
        self.tagged_cgroups.load(Ordering::Relaxed)
    }

    /// Per-identity counters, by identity.
    pub fn identities(&self) -> BTreeMap<String, IdentityCounters> {
        self.identities.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The agent-wide counters, with the rows and masked cells of all
    /// sessions (`totals`, from the registry).
    pub fn counters_snapshot(&self, (rows, masked_cells): (u64, u64)) -> CountersSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            connections: get(&c.connections),
            sessions_refused: get(&c.sessions_refused),
            protocol_errors: get(&c.protocol_errors),
            upstream_errors: get(&c.upstream_errors),
            rows,
            masked_cells,
            cancel_requests: get(&c.cancel_requests),
        }
    }

    /// The latency histogram as plain numbers.
    pub fn latency_snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.latency_buckets[i].load(Ordering::Relaxed)),
            count: self.latency_count.load(Ordering::Relaxed),
            sum_us: self.latency_sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Memory held by partial messages (see [`crate::session::budget`]) and
/// the process's own resources, as `masker status` and the metrics show
/// them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// Bytes partial messages of all sessions hold now.
    pub buffered_bytes: u64,
    /// The daemon-wide budget for them (`memory_budget_mib`).
    pub budget_bytes: u64,
    /// One session's cap (`session_buffer_mib`).
    pub session_cap_bytes: u64,
    /// Sessions ended because a message did not fit.
    pub sessions_refused: u64,
    /// Resident set size of the process, when /proc tells.
    pub rss_bytes: Option<u64>,
    /// Open file descriptors of the process, when /proc tells.
    pub open_fds: Option<u64>,
}

impl MemoryStatus {
    /// The process's resident set size (`/proc/self/statm`).
    pub fn rss_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    /// The process's open file descriptors (`/proc/self/fd`).
    pub fn open_fds() -> Option<u64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
    }
}

/// The relay latency histogram: per-bucket (not cumulative) counts.
#[derive(Debug, Clone, Default)]
pub struct LatencySnapshot {
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum_us: u64,
}

/// Everything the metrics endpoint shows, as plain numbers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: CountersSnapshot,
    pub sessions_killed: u64,
    pub audit_events: u64,
    pub audit_events_dropped: u64,
    pub approvals_pending: usize,
    /// Cgroups in the agent's tag map (0 for `masker proxy`).
    pub tagged_cgroups: u64,
    /// Live sessions per identity (`""`: none).
    pub live: BTreeMap<String, u64>,
    pub identities: BTreeMap<String, IdentityCounters>,
    pub latency: LatencySnapshot,
    /// Connects the eBPF programs refused: `(cgroup id, identity, counts)`.
    pub kernel_refusals: Vec<(u64, String, crate::interception::RefusedCounts)>,
    pub memory: MemoryStatus,
    /// Connections of revoked tags the agent refused: `(cgroup id,
    /// identity, count)`.
    pub revoked_refusals: Vec<(u64, String, u64)>,
}

/// The Prometheus text exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let c = &s.counters;
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(&mut o, "masker_connections_total", "Client connections accepted.", c.connections);
    counter(&mut o, "masker_sessions_refused_total", "Sessions refused (identity, replication).", c.sessions_refused);
    counter(&mut o, "masker_protocol_errors_total", "Sessions ended by a protocol error.", c.protocol_errors);
    counter(&mut o, "masker_upstream_errors_total", "Sessions that could not reach their server.", c.upstream_errors);
    counter(&mut o, "masker_cancel_requests_total", "CancelRequests forwarded.", c.cancel_requests);
    counter(&mut o, "masker_sessions_killed_total", "Sessions ended by an operator.", s.sessions_killed);
    counter(&mut o, "masker_audit_events_total", "Audit events queued for writing.", s.audit_events);
    counter(
        &mut o,
        "masker_audit_events_dropped_total",
        "Audit events dropped because the writer fell behind.",
        s.audit_events_dropped,
    );

    let m = &s.memory;
    counter(
        &mut o,
        "masker_sessions_refused_memory_total",
        "Sessions ended: a message did not fit in memory.",
        m.sessions_refused,
    );
    let gauge = |o: &mut String, name: &str, help: &str, v: Option<u64>| {
        if let Some(v) = v {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    };
    gauge(&mut o, "masker_buffered_bytes", "Bytes held by partial messages of all sessions.", Some(m.buffered_bytes));
    gauge(&mut o, "masker_buffer_budget_bytes", "Budget for partial messages of all sessions.", Some(m.budget_bytes));
    gauge(&mut o, "process_resident_memory_bytes", "Resident memory size in bytes.", m.rss_bytes);
    gauge(&mut o, "process_open_fds", "Number of open file descriptors.", m.open_fds);

    let _ = writeln!(
        o,
        "# HELP masker_approvals_pending Statements waiting for an operator's decision.\n\
         # TYPE masker_approvals_pending gauge\nmasker_approvals_pending {}",
        s.approvals_pending
    );
    let _ = writeln!(
        o,
        "# HELP masker_tagged_cgroups Cgroups tagged for interception (their connections to targets go through masker).\n\
         # TYPE masker_tagged_cgroups gauge\nmasker_tagged_cgroups {}",
        s.tagged_cgroups
    );

    let mut live = s.live.clone();
    let ids = &s.identities;
    for id in ids.keys() {
        live.entry(id.clone()).or_default();
    }
    let _ = writeln!(o, "# HELP masker_sessions Live sessions.\n# TYPE masker_sessions gauge");
    for (id, n) in &live {
        let _ = writeln!(o, "masker_sessions{{identity=\"{}\"}} {n}", label(id));
    }
    let family = |o: &mut String, name: &str, help: &str, f: &dyn Fn(&mut String, &str, &IdentityCounters)| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (id, c) in ids {
            f(o, &label(id), c);
        }
    };
    family(&mut o, "masker_sessions_total", "Sessions started.", &|o, id, c| {
        let _ = writeln!(o, "masker_sessions_total{{identity=\"{id}\"}} {}", c.sessions);
    });
    family(&mut o, "masker_statements_total", "Statements answered.", &|o, id, c| {
        let _ = writeln!(
            o,
            "masker_statements_total{{identity=\"{id}\",outcome=\"ok\"}} {}",
            c.statements - c.statement_errors
        );
        let _ = writeln!(o, "masker_statements_total{{identity=\"{id}\",outcome=\"error\"}} {}", c.statement_errors);
    });
    family(&mut o, "masker_rows_total", "Rows returned.", &|o, id, c| {
        let _ = writeln!(o, "masker_rows_total{{identity=\"{id}\"}} {}", c.rows);
    });
    family(&mut o, "masker_masked_cells_total", "Cells masked, by action.", &|o, id, c| {
        for kind in ActionKind::ALL {
            let n = c.masked.get(kind.as_str()).copied().unwrap_or(0);
            let _ = writeln!(o, "masker_masked_cells_total{{identity=\"{id}\",action=\"{kind}\"}} {n}");
        }
    });
    family(&mut o, "masker_denials_total", "Statements refused by a guardrail.", &|o, id, c| {
        let _ = writeln!(o, "masker_denials_total{{identity=\"{id}\"}} {}", c.denials);
    });
    family(
        &mut o,
        "masker_observe_masked_cells_total",
        "Observe mode: cells enforcing would have masked, by action (nothing was masked).",
        &|o, id, c| {
            for kind in ActionKind::ALL {
                let n = c.observe_masked.get(kind.as_str()).copied().unwrap_or(0);
                let _ = writeln!(o, "masker_observe_masked_cells_total{{identity=\"{id}\",action=\"{kind}\"}} {n}");
            }
        },
    );
    family(
        &mut o,
        "masker_observe_denials_total",
        "Observe mode: statements and sessions enforcing would have refused or held (they ran).",
        &|o, id, c| {
            let _ = writeln!(o, "masker_observe_denials_total{{identity=\"{id}\"}} {}", c.observe_denials);
        },
    );
    family(&mut o, "masker_approvals_total", "Approval decisions.", &|o, id, c| {
        for d in ["approved", "denied", "timeout", "granted", "abandoned"] {
            let n = c.approvals.get(d).copied().unwrap_or(0);
            let _ = writeln!(o, "masker_approvals_total{{identity=\"{id}\",decision=\"{d}\"}} {n}");
        }
    });

    let _ = writeln!(
        o,
        "# HELP masker_kernel_refused_total Connects of tagged cgroups the eBPF programs refused \
         (reason: no_listener in the workload's network namespace, egress lock).\n\
         # TYPE masker_kernel_refused_total counter"
    );
    for (cgroup, identity, r) in &s.kernel_refusals {
        let id = label(identity);
        for (reason, n) in [("no_listener", r.no_listener), ("egress", r.egress)] {
            let _ = writeln!(
                o,
                "masker_kernel_refused_total{{cgroup_id=\"{cgroup}\",identity=\"{id}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP masker_revoked_refused_total Connections from cgroups whose tag was removed (masker untag), \
         refused by the agent.\n# TYPE masker_revoked_refused_total counter"
    );
    for (cgroup, identity, n) in &s.revoked_refusals {
        let _ =
            writeln!(o, "masker_revoked_refused_total{{cgroup_id=\"{cgroup}\",identity=\"{}\"}} {n}", label(identity));
    }
    let _ = writeln!(
        o,
        "# HELP masker_relay_latency_seconds Time from a client's Query or Sync to the server's ReadyForQuery.\n\
         # TYPE masker_relay_latency_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += s.latency.buckets[i];
        let _ = writeln!(o, "masker_relay_latency_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let count = s.latency.count;
    let _ = writeln!(o, "masker_relay_latency_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "masker_relay_latency_seconds_sum {}", s.latency.sum_us as f64 / 1e6);
    let _ = writeln!(o, "masker_relay_latency_seconds_count {count}");
    o
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// What the endpoint serves: a fresh snapshot for each request.
pub type Source = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, source: Source) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let mut parts = line.split(|b| *b == b' ');
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let response = if method == b"GET" && (path == b"/metrics" || path.starts_with(b"/metrics?")) {
                let body = render(&source());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = "not found: GET /metrics\n";
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The metrics endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsError {
    /// The configured address.
    pub addr: std::net::SocketAddr,
    /// Why binding it failed.
    pub source: std::io::Error,
}

/// Binds `addr` and serves metrics from `source` on a spawned task.
pub async fn start(addr: std::net::SocketAddr, source: Source) -> Result<std::net::SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError { addr, source })?;
    let local = listener.local_addr().map_err(|source| MetricsError { addr, source })?;
    tokio::spawn(serve(listener, source));
    tracing::info!(%local, "metrics endpoint ready (GET /metrics)");
    Ok(local)
}
