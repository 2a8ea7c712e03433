//! The audit trail: one structured event per session start and end, per
//! statement, per denial and per approval decision, as JSON Lines.
//!
//! # Schema (version 1)
//!
//! Every line is one JSON object with these common fields:
//!
//! | field      | type   | meaning                                               |
//! |------------|--------|-------------------------------------------------------|
//! | `v`        | number | schema version, `1`                                   |
//! | `ts`       | string | UTC time the event was recorded, RFC 3339 (ms)        |
//! | `event`    | string | `session_start`, `session_end`, `statement`, `denial`, `approval` |
//! | `session`  | number | session id (as `masker sessions` shows it)            |
//! | `identity` | string or null | workload identity                             |
//!
//! `session_start`: `client`, `destination`, `cgroup_id`, `cgroup_path`,
//! `pid`, `executable` (from `/proc/PID/exe`; null when unknown, e.g. in proxy
//! mode), `user`, `database`, `tls` (`{"client": bool, "server": bool}`),
//! `issuer` (the `iss` of the OIDC token behind the identity, null without
//! one) and `claims` (an object with the claims the issuer's `audit_claims`
//! name, default `sub`, `repository`, `ref`, as the token has them; null
//! without a token). Claims describing a person cannot be listed there.
//!
//! `session_end`: the `session_start` fields (without `issuer` and `claims`)
//! plus `bytes_from_client`, `bytes_to_client`, `statements`, `rows`,
//! `masked_cells`, `duration_ms`, `outcome` (`ok` or `error`) and `error`
//! (scrubbed, null when ok).
//!
//! `statement`: `statement` (normalized text: every literal replaced by a
//! placeholder, comments removed, at most 4096 bytes), `class` (`select`,
//! `insert`, `ddl`, ... or `unknown`), `tables` (relations as written),
//! `rows` (rows returned), `masked_cells`, `masked` (`{action: count}`),
//! `masked_columns` (`[{"position", "column", "action", "cells"}]`: the
//! result columns with masked cells, by name as the server sent it; cells
//! that fell back to NULL are included; COPY data counts per action only),
//! `outcome` (`ok` or `error`), `command` (the CommandComplete tag's verb),
//! `sqlstate` (on error), `error` (scrubbed message, on error), `duration_ms`.
//!
//! `denial`: `statement`, `class`, `rule`, `reason`, `sqlstate`. A session
//! refused at its start by its identity's `targets`, `databases` or `users`
//! is a denial with `class` `connect`, `rule` `identity`, an empty
//! `statement` and `sqlstate` `28000`.
//!
//! `approval`: `approval` (id, as `masker approvals list` shows it), `rule`
//! (the `[[approval]]` rule), `statement`, `class`, `decision` (`requested`
//! when the statement starts to wait, then `approved`, `denied` or `timeout`;
//! `granted` when a standing approval (`--for`) let it run without waiting,
//! with the id of that approval; `abandoned` when the client hung up while
//! it waited: it did not run), `approver`, `reason` (denials; scrubbed).
//!
//! # Guarantees
//!
//! An event never carries a raw value: statements are normalized, error
//! messages are scrubbed with [`masking::scrub_text`], and nothing from rows is
//! recorded but counts. Writing never blocks a session: events go through a
//! bounded channel to a writer thread; when it is full the event is dropped
//! and counted (`masker_audit_events_dropped_total`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::masking::{self, RowStats};
use crate::registry::SessionEntry;

/// Schema version written in every event's `v`.
pub const SCHEMA_VERSION: u32 = 1;
/// Events queued for the writer at most; beyond, events are dropped and counted.
const QUEUE: usize = 8192;
/// How long the writer lets events gather between writes (the queue holds
/// [`QUEUE`] events, many more than arrive in this time).
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
/// Longest normalized statement recorded.
const MAX_STATEMENT: usize = 4096;

/// Where audit events go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSettings {
    /// JSON Lines file, rotated by size.
    pub file: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` is the newest).
    pub keep: u32,
    /// Also write every event to standard output.
    pub stdout: bool,
}

impl AuditSettings {
    /// Default rotation size: 100 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
    /// Default number of rotated files kept.
    pub const DEFAULT_KEEP: u32 = 5;

    /// Whether any sink is configured.
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.stdout
    }
}

/// The audit trail of one agent or proxy. Disabled until [`Audit::start`].
#[derive(Debug, Default)]
pub struct Audit {
    tx: OnceLock<tokio::sync::mpsc::Sender<String>>,
    /// Events dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Events queued for writing.
    pub written: AtomicU64,
}

impl Audit {
    /// Opens the sinks of `settings` and starts the writer thread. The file
    /// is opened now so that a bad path fails at startup, with its name.
    pub fn start(&self, settings: &AuditSettings) -> anyhow::Result<()> {
        if !settings.enabled() {
            return Ok(());
        }
        let file = match &settings.file {
            Some(path) => Some(
                RotatingFile::open(path, settings.max_bytes.max(4096), settings.keep)
                    .map_err(|e| anyhow::anyhow!("audit file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(QUEUE);
        if self.tx.set(tx).is_err() {
            anyhow::bail!("the audit trail is already started");
        }
        let stdout = settings.stdout;
        std::thread::Builder::new().name("masker-audit".into()).spawn(move || {
            let mut file = file;
            let mut out = stdout.then(io::stdout);
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(line) = next {
                    if let Some(f) = file.as_mut()
                        && let Err(e) = f.write_line(line.as_bytes())
                    {
                        tracing::error!("audit file {}: {e}", f.path.display());
                    }
                    if let Some(o) = out.as_mut() {
                        let _ = o.write_all(line.as_bytes()).and_then(|_| o.write_all(b"\n"));
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
                if let Some(o) = out.as_mut() {
                    let _ = o.flush();
                }
                // Let events gather: under load the writer wakes once per
                // interval instead of once per statement (a context switch
                // each, which on a small host comes out of the sessions' CPU).
                std::thread::sleep(WRITE_INTERVAL);
            }
        })?;
        Ok(())
    }

    /// Whether events are recorded at all (skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Records `event` without waiting; drops (and counts) it when the
    /// writer is behind.
    pub fn emit(&self, event: &Event<'_>) {
        let Some(tx) = self.tx.get() else { return };
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("audit event not serializable: {e}");
                return;
            }
        };
        match tx.try_send(line) {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A file that is rotated (`FILE` → `FILE.1` → ... → `FILE.keep`) before it
/// would grow past `max_bytes`.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, keep, file: BufWriter::new(file), size })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Audit files may name who read what: root (or the agent's user) only.
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

// ------------------------------------------------------------------ events

/// One audit event: the common fields and what happened.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub v: u32,
    pub ts: String,
    pub session: u64,
    pub identity: Option<&'a str>,
    #[serde(flatten)]
    pub what: What<'a>,
}

impl<'a> Event<'a> {
    /// An event of `entry`'s session, stamped now.
    pub fn of(entry: &'a SessionEntry, what: What<'a>) -> Event<'a> {
        Event {
            v: SCHEMA_VERSION,
            ts: rfc3339_now(),
            session: entry.id,
            identity: entry.origin.identity.as_deref(),
            what,
        }
    }
}

/// TLS on each leg of a session.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tls {
    pub client: bool,
    pub server: bool,
}

/// Who and where a session is: the fields of `session_start` and `session_end`.
#[derive(Debug, Serialize)]
pub struct SessionFields<'a> {
    pub client: String,
    pub destination: &'a str,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub pid: Option<u32>,
    pub executable: Option<String>,
    /// The client's network namespace (`net:[INODE]`), when not the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The container id its cgroup names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub tls: Tls,
}

impl<'a> SessionFields<'a> {
    /// The session's origin, with the cgroup path and executable read from
    /// `/proc` when the pid is known.
    pub fn of(entry: &'a SessionEntry) -> SessionFields<'a> {
        let o = &entry.origin;
        let startup = entry.startup.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (cgroup_path, executable) = match o.pid {
            Some(pid) => (proc_cgroup(pid), std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(display)),
            None => (None, None),
        };
        SessionFields {
            client: o.client.to_string(),
            destination: &o.destination,
            cgroup_id: o.cgroup_id,
            cgroup_path,
            pid: o.pid,
            executable,
            netns: o.netns.as_ref().map(|n| n.ns.to_string()),
            container: o.netns.as_ref().and_then(|n| n.container.clone()),
            user: startup.as_ref().map(|s| s.0.clone()),
            database: startup.map(|s| s.1),
            tls: Tls {
                client: entry.tls_client.load(Ordering::Relaxed),
                server: entry.tls_server.load(Ordering::Relaxed),
            },
        }
    }
}

fn display(p: PathBuf) -> String {
    p.display().to_string()
}

/// The cgroup v2 path of `pid` (`/runner/job-42`), from `/proc/PID/cgroup`.
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// What happened.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What<'a> {
    SessionStart {
        #[serde(flatten)]
        session: SessionFields<'a>,
        /// The `iss` of the token behind the identity (null without one).
        issuer: Option<&'a str>,
        /// The issuer's `audit_claims` of that token (null without one).
        claims: Option<BTreeMap<&'a str, &'a serde_json::Value>>,
    },
    SessionEnd {
        #[serde(flatten)]
        session: SessionFields<'a>,
        bytes_from_client: u64,
        bytes_to_client: u64,
        statements: u64,
        rows: u64,
        masked_cells: u64,
        duration_ms: f64,
        outcome: Outcome,
        error: Option<String>,
    },
    Statement {
        statement: String,
        class: &'static str,
        tables: Vec<String>,
        rows: u64,
        masked_cells: u64,
        masked: BTreeMap<&'static str, u64>,
        masked_columns: Vec<MaskedColumn>,
        outcome: Outcome,
        command: Option<String>,
        sqlstate: Option<String>,
        error: Option<String>,
        duration_ms: f64,
    },
    Denial {
        statement: String,
        class: &'static str,
        rule: String,
        reason: String,
        sqlstate: &'static str,
    },
    Approval {
        approval: u64,
        rule: String,
        statement: String,
        class: &'static str,
        decision: &'static str,
        approver: Option<String>,
        reason: Option<String>,
    },
}

/// Whether what an event reports succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
}

/// Masked cells of one output column of a statement.
#[derive(Debug, Serialize)]
pub struct MaskedColumn {
    /// Position in the result (from 0) and name as the server sent it.
    pub position: usize,
    pub column: String,
    pub action: &'static str,
    pub cells: u64,
}

/// The columns of `plan` with masked cells.
fn masked_columns(plan: &masking::RowPlan, counts: &[u64]) -> Vec<MaskedColumn> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| MaskedColumn {
            position: i,
            column: plan.name(i).unwrap_or("?").to_string(),
            action: plan.action(i).and_then(|a| a.kind()).map_or("allow", |k| k.as_str()),
            cells: *n,
        })
        .collect()
}

/// Per-action masked-cell counts as an object (`{"email": 3}`).
pub fn masked_map(stats: &RowStats) -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = stats.iter().map(|(k, n)| (k.as_str(), n)).collect();
    if stats.fallback_null > 0 {
        m.insert("fallback_null", stats.fallback_null);
    }
    m
}

/// Records `session_start` for `entry`.
pub fn session_start(audit: &Audit, entry: &SessionEntry) {
    entry.trail.started.store(true, Ordering::Relaxed);
    if audit.enabled() {
        let verified = entry.origin.verified.as_deref().filter(|v| v.issuer.is_some());
        audit.emit(&Event::of(
            entry,
            What::SessionStart {
                session: SessionFields::of(entry),
                issuer: verified.and_then(|v| v.issuer.as_deref()),
                claims: verified.map(|v| v.audited_claims()),
            },
        ));
    }
}

/// Records `session_end` for `entry`; `error` is scrubbed here.
pub fn session_end(audit: &Audit, entry: &SessionEntry, error: Option<&str>) {
    // A connection that never started (a port probe) is not a session.
    if !audit.enabled() || (error.is_none() && !entry.trail.started.load(Ordering::Relaxed)) {
        return;
    }
    let c = &entry.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let what = What::SessionEnd {
        session: SessionFields::of(entry),
        bytes_from_client: get(&c.bytes_from_client),
        bytes_to_client: get(&c.bytes_to_client),
        statements: get(&c.statements),
        rows: get(&c.rows),
        masked_cells: get(&c.masked_cells),
        duration_ms: millis(entry.started),
        outcome: if error.is_some() { Outcome::Error } else { Outcome::Ok },
        error: error.map(|e| masking::scrub_text(e).into_owned()),
    };
    audit.emit(&Event::of(entry, what));
}

/// Records that a statement of `entry`'s session was refused by `rule`
/// (`reason` is what the client is told; scrubbed here all the same) and
/// counts it for the identity.
pub fn denial(entry: &SessionEntry, sql: &str, rule: &str, reason: &str) {
    entry.metrics.denial(entry.origin.identity.as_deref().unwrap_or(""));
    let audit = &entry.audit;
    if !audit.enabled() {
        return;
    }
    let what = What::Denial {
        statement: normalize(sql),
        class: classify(sql, 0).0,
        rule: rule.to_string(),
        reason: masking::scrub_text(reason).into_owned(),
        sqlstate: "42501",
    };
    audit.emit(&Event::of(entry, what));
}

/// Records that `entry`'s session was refused at its start by its
/// identity's `targets`, `databases` or `users` (`reason` is what the client
/// is told) and counts it for the identity. The event is a `denial` with
/// class `connect`, rule `identity` and SQLSTATE 28000.
pub fn connect_denial(entry: &SessionEntry, reason: &str) {
    entry.metrics.denial(entry.origin.identity.as_deref().unwrap_or(""));
    let audit = &entry.audit;
    if !audit.enabled() {
        return;
    }
    let what = What::Denial {
        statement: String::new(),
        class: "connect",
        rule: "identity".to_string(),
        reason: masking::scrub_text(reason).into_owned(),
        sqlstate: "28000",
    };
    audit.emit(&Event::of(entry, what));
}

/// A step in the life of a held statement (see [`crate::approvals`]).
#[derive(Debug, Clone, Copy)]
pub enum ApprovalStep<'a> {
    Requested,
    Approved {
        approver: &'a str,
    },
    Denied {
        approver: &'a str,
        reason: &'a str,
    },
    TimedOut,
    Granted {
        approver: &'a str,
    },
    /// The client hung up while the statement waited.
    Abandoned,
}

/// Records a step of approval `id` of `entry`'s session under `rule`, and
/// counts decisions for the identity.
pub fn approval(entry: &SessionEntry, id: u64, rule: &str, sql: &str, step: ApprovalStep<'_>) {
    let (decision, approver, reason) = match step {
        ApprovalStep::Requested => ("requested", None, None),
        ApprovalStep::Approved { approver } => ("approved", Some(approver), None),
        ApprovalStep::Denied { approver, reason } => ("denied", Some(approver), Some(reason)),
        ApprovalStep::TimedOut => ("timeout", None, None),
        ApprovalStep::Granted { approver } => ("granted", Some(approver), None),
        ApprovalStep::Abandoned => ("abandoned", None, None),
    };
    if decision != "requested" {
        entry.metrics.approval(entry.origin.identity.as_deref().unwrap_or(""), decision);
    }
    let audit = &entry.audit;
    if !audit.enabled() {
        return;
    }
    let what = What::Approval {
        approval: id,
        rule: rule.to_string(),
        statement: normalize(sql),
        class: classify(sql, 0).0,
        decision,
        approver: approver.map(str::to_string),
        reason: reason.map(|r| masking::scrub_text(r).into_owned()),
    };
    audit.emit(&Event::of(entry, what));
}

fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

// --------------------------------------------------------- statement trail

/// Follows the statements of one masking session as their results pass, for
/// `statement` events, per-identity counters and the relay latency
/// histogram. Owned by the session's server-side tracker: no lock per row.
pub struct StatementTrail {
    entry: std::sync::Arc<SessionEntry>,
    rows: u64,
    stats: RowStats,
    /// The plan of the current statement's masked rows and its masked cells
    /// per column.
    columns: Option<(std::sync::Arc<masking::RowPlan>, Vec<u64>)>,
    /// When the statement now answering started (end of the previous one or
    /// the client's request, whichever is later).
    last_end: Option<Instant>,
    /// Position of the next result within a multi-statement Query.
    index: usize,
}

impl StatementTrail {
    pub fn new(entry: std::sync::Arc<SessionEntry>) -> StatementTrail {
        StatementTrail { entry, rows: 0, stats: RowStats::default(), columns: None, last_end: None, index: 0 }
    }

    /// Per-column counters for rows masked with `plan` (to pass to
    /// [`masking::mask_data_row_counted`]).
    pub fn column_counts(&mut self, plan: &std::sync::Arc<masking::RowPlan>) -> &mut [u64] {
        let same = self.columns.as_ref().is_some_and(|(p, _)| std::sync::Arc::ptr_eq(p, plan));
        if !same {
            self.columns = Some((plan.clone(), vec![0; plan.len()]));
        }
        match &mut self.columns {
            Some((_, counts)) => counts,
            None => &mut [],
        }
    }

    /// A row of the current statement, with what masking it took (`None`:
    /// passed through).
    pub fn row(&mut self, stats: Option<&RowStats>) {
        self.rows += 1;
        if let Some(s) = stats {
            self.stats.add(s);
        }
    }

    /// Masked cells that arrived outside rows (COPY data).
    pub fn masked(&mut self, stats: &RowStats) {
        self.stats.add(stats);
    }

    /// The current statement ended: CommandComplete (`body` is its tag) or an
    /// ErrorResponse (`error` is the whole message body). `sql` is the text
    /// of the statement it answers, when known.
    pub fn end(&mut self, sql: Option<&str>, command: Option<&[u8]>, error: Option<&[u8]>) {
        let now = Instant::now();
        let started = match (self.last_end, self.entry.trail.oldest_request()) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        self.last_end = Some(now);
        let rows = std::mem::take(&mut self.rows);
        let stats = std::mem::take(&mut self.stats);
        let columns = self.columns.take();
        let index = self.index;
        self.index += 1;
        let identity = self.entry.origin.identity.as_deref().unwrap_or("");
        let metrics = &self.entry.metrics;
        metrics.statement(identity, &stats, rows, error.is_some());
        self.entry.trail.add(&stats);
        let audit = &self.entry.audit;
        if !audit.enabled() {
            return;
        }
        let (class, tables) = match sql {
            Some(sql) => classify(sql, index),
            None => ("unknown", Vec::new()),
        };
        let (sqlstate, message) = match error {
            Some(body) => {
                let (code, msg) = error_fields(body);
                (code, msg.map(|m| masking::scrub_text(&m).into_owned()))
            }
            None => (None, None),
        };
        let command = command.map(|c| {
            let text = String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or_default());
            text.split(' ').next().unwrap_or_default().to_string()
        });
        let what = What::Statement {
            statement: sql.map(normalize).unwrap_or_default(),
            class,
            tables,
            rows,
            masked_cells: stats.total(),
            masked: masked_map(&stats),
            masked_columns: columns.map(|(plan, counts)| masked_columns(&plan, &counts)).unwrap_or_default(),
            outcome: if error.is_some() { Outcome::Error } else { Outcome::Ok },
            command,
            sqlstate,
            error: message,
            duration_ms: (now.duration_since(started).as_secs_f64() * 1e6).round() / 1e3,
        };
        audit.emit(&Event::of(&self.entry, what));
    }

    /// ReadyForQuery: the request that started this cycle is answered.
    pub fn ready(&mut self) {
        self.index = 0;
        self.rows = 0;
        self.stats = RowStats::default();
        self.columns = None;
        if let Some(sent) = self.entry.trail.answered() {
            self.entry.metrics.latency(sent.elapsed());
        }
        self.last_end = None;
    }
}

/// What a session shares between its client side (which notes when requests
/// leave) and its server side, plus its masked cells per action.
#[derive(Debug, Default)]
pub struct SessionTrail {
    requests: std::sync::Mutex<std::collections::VecDeque<Instant>>,
    masked: std::sync::Mutex<RowStats>,
    started: std::sync::atomic::AtomicBool,
}

impl SessionTrail {
    /// The client sent a Query or a Sync: a ReadyForQuery will answer it.
    pub fn request(&self) {
        let mut q = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // A client that pipelines without reading: keep memory bounded.
        if q.len() < 4096 {
            q.push_back(Instant::now());
        }
    }

    fn oldest_request(&self) -> Option<Instant> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).front().copied()
    }

    fn answered(&self) -> Option<Instant> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn add(&self, stats: &RowStats) {
        if stats.total() > 0 || stats.fallback_null > 0 {
            self.masked.lock().unwrap_or_else(|p| p.into_inner()).add(stats);
        }
    }

    /// Masked cells of the session's finished statements, per action.
    pub fn masked(&self) -> RowStats {
        *self.masked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Statement class (lower case) and relations of statement `index` of `sql`.
pub fn classify(sql: &str, index: usize) -> (&'static str, Vec<String>) {
    let analysis = crate::sql::analyze(sql);
    match analysis.as_ref() {
        Ok(a) => match a.statements.get(index).or(a.statements.last()) {
            Some(s) => (class_name(s.class), s.relations.iter().map(|r| r.to_string()).collect()),
            None => ("empty", Vec::new()),
        },
        Err(_) => ("unknown", Vec::new()),
    }
}

/// The name of a statement class in audit events and metrics.
pub fn class_name(class: crate::sql::StatementClass) -> &'static str {
    use crate::sql::StatementClass as C;
    match class {
        C::Select => "select",
        C::CreateTableAs => "create_table_as",
        C::Insert => "insert",
        C::Update => "update",
        C::Delete => "delete",
        C::Merge => "merge",
        C::Ddl => "ddl",
        C::Copy => "copy",
        C::Explain => "explain",
        C::Transaction => "transaction",
        C::Config => "config",
        C::Procedural => "procedural",
        C::Utility => "utility",
    }
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

// ------------------------------------------------------------ normalizing

/// `sql` with every literal replaced: PostgreSQL's own normalizer
/// (`pg_query::normalize`, literals become `$n`) when the text parses, then a
/// lexical pass that replaces whatever literal is left (and every literal of
/// a text that does not parse) by `?` and drops comments. The result is
/// capped at 4096 bytes.
pub fn normalize(sql: &str) -> String {
    // Statements of one shape (see `sql::cache_key`: the same text but for
    // literals) normalize to the same text: parse each shape once.
    static CACHE: crate::sql::ShapeCache<std::sync::Arc<str>> = crate::sql::ShapeCache::new();
    CACHE.get_or_compute(sql, |sql| normalize_uncached(sql).into()).to_string()
}

fn normalize_uncached(sql: &str) -> String {
    let parsed = pg_query::normalize(sql).ok();
    let mut out = scrub_literals(parsed.as_deref().unwrap_or(sql));
    if out.len() > MAX_STATEMENT {
        let mut cut = MAX_STATEMENT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Replaces string, dollar-quoted, bit-string and numeric literals by `?`,
/// keeps `$n` parameters, quoted identifiers and keywords, drops comments and
/// collapses runs of white space. An unterminated literal swallows the rest.
pub fn scrub_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let push_space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // A prefix (E, B, X, U&, N) was copied as a word: drop it.
                let prefixed = out.ends_with(['e', 'E', 'b', 'B', 'x', 'X', 'n', 'N'])
                    && !out[..out.len() - 1].ends_with(|ch: char| ch.is_alphanumeric() || ch == '_');
                if prefixed {
                    out.pop();
                } else if out.ends_with("U&") || out.ends_with("u&") {
                    out.truncate(out.len() - 2);
                }
                let escapes = prefixed && matches!(b[i - 1], b'e' | b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                push_space(&mut out);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                push_space(&mut out);
            }
            b'$' => {
                // $n parameter, or a dollar quote $tag$ ... $tag$.
                let mut j = i + 1;
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    out.push_str(&sql[i..j]);
                    i = j;
                    continue;
                }
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') && !out.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                    out.push('?');
                } else {
                    out.push('$');
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                if out.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
                    // Part of an identifier (t1, col_2).
                    out.push(c as char);
                    i += 1;
                    continue;
                }
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                out.push('?');
            }
            c if c.is_ascii_whitespace() => {
                push_space(&mut out);
                i += 1;
            }
            c if word(c) => {
                let start = i;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or('?');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out.trim_end().to_string()
}

// ------------------------------------------------------------------- time

/// Now as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ------------------------------------------------------------------- tail

/// Options of `masker audit tail`.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub file: PathBuf,
    pub follow: bool,
    pub identity: Option<String>,
    pub json: bool,
}

/// `masker audit tail`: prints the events of `file` (filtered by identity),
/// then with `follow` keeps printing new ones, across rotations, until
/// interrupted.
pub async fn tail(opts: &TailOptions, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    let open = |p: &Path| -> io::Result<(BufReader<File>, u64)> {
        let f = File::open(p)?;
        let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata()?);
        Ok((BufReader::new(f), ino))
    };
    let (mut reader, mut ino) = open(&opts.file).map_err(|e| anyhow::anyhow!("{}: {e}", opts.file.display()))?;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            if let Some(text) = render_line(line.trim_end(), opts) {
                writeln!(out, "{text}")?;
            }
            continue;
        }
        if n > 0 {
            // A partial line: wait for the rest.
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        if !opts.follow {
            return Ok(());
        }
        out.flush()?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        // Rotated: the path names a new file; finish the old one first.
        if let Ok(meta) = std::fs::metadata(&opts.file) {
            let now = std::os::unix::fs::MetadataExt::ino(&meta);
            if now != ino {
                let mut rest = String::new();
                reader.read_to_string(&mut rest)?;
                for l in rest.lines() {
                    if let Some(text) = render_line(l, opts) {
                        writeln!(out, "{text}")?;
                    }
                }
                (reader, ino) = open(&opts.file)?;
            }
        }
    }
}

use std::io::Read as _;

/// One event as `audit tail` prints it, or `None` when filtered out.
fn render_line(line: &str, opts: &TailOptions) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => return (opts.identity.is_none()).then(|| format!("(unreadable line) {}", line.len())),
    };
    if let Some(want) = &opts.identity
        && v.get("identity").and_then(|i| i.as_str()) != Some(want.as_str())
    {
        return None;
    }
    if opts.json {
        return Some(line.to_string());
    }
    let s = |k: &str| v.get(k).map(plain).unwrap_or_default();
    let head = format!("{} {:<13} #{:<5} {:<12}", s("ts"), s("event"), s("session"), s("identity"));
    let detail = match v.get("event").and_then(|e| e.as_str()) {
        Some("session_start") => {
            format!(
                "{}@{} {} from {} pid={} exe={}",
                s("user"),
                s("database"),
                s("destination"),
                s("client"),
                s("pid"),
                s("executable")
            )
        }
        Some("session_end") => format!(
            "{} {} statements, {} rows, {} masked, {} ms{}",
            s("outcome"),
            s("statements"),
            s("rows"),
            s("masked_cells"),
            s("duration_ms"),
            v.get("error").filter(|e| !e.is_null()).map(|e| format!(": {}", plain(e))).unwrap_or_default()
        ),
        Some("statement") => format!(
            "{} {} rows={} masked={} {} ms: {}{}",
            s("class"),
            s("outcome"),
            s("rows"),
            s("masked_cells"),
            s("duration_ms"),
            s("statement"),
            v.get("sqlstate").filter(|e| !e.is_null()).map(|e| format!(" [{}]", plain(e))).unwrap_or_default()
        ),
        Some("denial") => format!("rule {}: {} ({}): {}", s("rule"), s("reason"), s("class"), s("statement")),
        Some("approval") => {
            format!("#{} {} by {} {}: {}", s("approval"), s("decision"), s("approver"), s("reason"), s("statement"))
        }
        _ => line.to_string(),
    };
    Some(format!("{head} {detail}"))
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_literals_away() {
        let n = normalize("SELECT * FROM customers WHERE email = 'alice@example.com' AND id = 42");
        assert!(!n.contains("alice") && !n.contains("42"), "{n}");
        assert!(n.contains("customers") && n.contains("email"), "{n}");
        // Unparseable text still loses its literals.
        let n = normalize("SELEC x FROM t WHERE a = 'bob@x.org' AND b = 3.5e+2 -- 'c'\n AND d = $$ secret $$");
        assert!(!n.contains("bob") && !n.contains("3.5") && !n.contains("secret") && !n.contains("'c'"), "{n}");
        assert_eq!(
            scrub_literals("select t1.c_2, $1, E'a\\'b', 'x''y', \"Q\"\"id\" from t1"),
            "select t1.c_2, $1, ?, ?, \"Q\"\"id\" from t1"
        );
        assert_eq!(scrub_literals("select $tag$ a $ b $tag$, x'1f', 1e-3 /* c /* n */ */"), "select ?, ?, ?");
        assert_eq!(scrub_literals("select 'unterminated"), "select ?");
    }

    #[test]
    fn formats_time() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_199, 5), "2024-02-29T23:59:59.005Z");
    }

    #[test]
    fn rotates_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("masker-audit-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..20 {
            f.write_line(format!("{{\"n\":{i},\"pad\":\"..............................\"}}").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert!(path.exists());
        assert!(dir.join("audit.jsonl.1").exists() && dir.join("audit.jsonl.2").exists());
        assert!(!dir.join("audit.jsonl.3").exists());
        for p in [path.clone(), dir.join("audit.jsonl.1")] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.len() <= 100 && text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn packaged_agent_config_parses() {
        let c = crate::config::AgentConfig::parse(include_str!("../../packaging/agent.toml"), "agent.toml").unwrap();
        let audit = c.audit.unwrap().settings();
        assert_eq!(audit.keep, 10);
        assert!(audit.file.is_some() && c.metrics_listen.is_some());
    }

    #[tokio::test]
    async fn kill_reaches_a_live_session_only() {
        let registry = std::sync::Arc::new(crate::registry::Registry::default());
        let origin = crate::registry::SessionOrigin {
            identity: Some("ci".into()),
            verified: None,
            client: "127.0.0.1:1".parse().unwrap(),
            destination: "db:5432".into(),
            cgroup_id: None,
            pid: None,
            netns: None,
        };
        let guard = registry.open(origin);
        let id = guard.entry.id;
        let entry = guard.entry.clone();
        let waiter = tokio::spawn(async move { entry.kill.killed().await });
        tokio::task::yield_now().await;
        assert!(registry.kill(id));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        drop(guard);
        assert!(!registry.kill(id), "a finished session cannot be killed");
        assert_eq!(registry.metrics.sessions_killed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn error_fields_parse() {
        let body = b"SERROR\0C23505\0Mduplicate key\0\0";
        assert_eq!(error_fields(body), (Some("23505".into()), Some("duplicate key".into())));
    }
}

// ----------------------------------------------------------------- config

/// The `[audit]` section of the agent configuration.
///
/// ```toml
/// [audit]
/// file = "/var/log/masker/audit.jsonl"
/// max_bytes = 104857600   # rotate at 100 MiB
/// keep = 5                # audit.jsonl.1 ... audit.jsonl.5
/// stdout = false
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub keep: Option<u32>,
    #[serde(default)]
    pub stdout: bool,
}

impl AuditConfig {
    /// The settings this section describes.
    pub fn settings(&self) -> AuditSettings {
        AuditSettings {
            file: self.file.clone(),
            max_bytes: self.max_bytes.unwrap_or(AuditSettings::DEFAULT_MAX_BYTES),
            keep: self.keep.unwrap_or(AuditSettings::DEFAULT_KEEP),
            stdout: self.stdout,
        }
    }
}
