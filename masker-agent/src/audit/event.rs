//! The audit events: their schema (see [`super`]) and how each is built
//! from plain values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::interception::cgroup::{CgroupId, Pid};
use crate::masking::{self, RowStats};

/// Schema version written in every event's `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// One audit event: the common fields and what happened.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub v: u32,
    pub ts: String,
    pub session: u64,
    pub identity: Option<&'a str>,
    /// `observe` for every event of a session in observe mode (absent
    /// otherwise): nothing was masked or refused for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(flatten)]
    pub what: What<'a>,
}

impl<'a> Event<'a> {
    /// An event of session `session` (of `identity`), stamped now.
    pub fn new(session: u64, identity: Option<&'a str>, what: What<'a>) -> Event<'a> {
        Event { v: SCHEMA_VERSION, ts: crate::rfc3339::now_millis(), session, identity, mode: None, what }
    }

    /// Marks the event as one of a session in observe mode when `observe`.
    pub fn observing(mut self, observe: bool) -> Event<'a> {
        if observe {
            self.mode = Some("observe");
        }
        self
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
    pub cgroup_id: Option<CgroupId>,
    pub cgroup_path: Option<String>,
    pub pid: Option<Pid>,
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
    /// The fields of a session from `client` to `destination`; the cgroup
    /// path and executable are read from `/proc` when the pid is known.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: std::net::SocketAddr,
        destination: &'a str,
        cgroup_id: Option<CgroupId>,
        pid: Option<Pid>,
        user: Option<String>,
        database: Option<String>,
        tls: Tls,
    ) -> SessionFields<'a> {
        let (cgroup_path, executable) = match pid {
            Some(pid) => (proc_cgroup(pid), std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(display)),
            None => (None, None),
        };
        SessionFields {
            client: client.to_string(),
            destination,
            cgroup_id,
            cgroup_path,
            pid,
            executable,
            netns: None,
            container: None,
            user,
            database,
            tls,
        }
    }

    /// The same fields, naming the client's network namespace and container
    /// (sessions from containers).
    pub fn in_netns(mut self, netns: Option<String>, container: Option<String>) -> Self {
        self.netns = netns;
        self.container = container;
        self
    }
}

fn display(p: PathBuf) -> String {
    p.display().to_string()
}

/// The cgroup v2 path of `pid` (`/runner/job-42`), from `/proc/PID/cgroup`.
fn proc_cgroup(pid: Pid) -> Option<String> {
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
        /// Observe mode: what enforcing would have masked (the `masked`
        /// fields are then zero: nothing was).
        #[serde(skip_serializing_if = "Option::is_none")]
        would_mask: Option<WouldMask>,
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

/// What a statement of a session in observe mode would have had masked.
#[derive(Debug, Serialize)]
pub struct WouldMask {
    /// Cells, over all actions.
    pub cells: u64,
    /// Cells per action (`{"email": 3}`).
    pub by_action: BTreeMap<&'static str, u64>,
    /// The result columns with cells to mask, as `masked_columns`.
    pub columns: Vec<MaskedColumn>,
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
pub(crate) fn masked_columns(plan: &masking::RowPlan, counts: &[u64]) -> Vec<MaskedColumn> {
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

impl<'a> What<'a> {
    /// A statement refused by `rule` (`reason` is what the client is told;
    /// scrubbed here all the same).
    pub fn denial(sql: &str, rule: &str, reason: &str) -> What<'a> {
        What::Denial {
            statement: crate::sql::normalize(sql),
            class: crate::sql::classify(sql, 0).0,
            rule: rule.to_string(),
            reason: masking::scrub_text(reason).into_owned(),
            sqlstate: "42501",
        }
    }

    /// A session refused at its start, class `connect`: by its identity's
    /// `targets`, `databases` or `users` (rule `identity`), or because its
    /// cgroup's tag was removed (rule `revoked`); SQLSTATE `sqlstate`
    /// (28000 for both).
    pub fn connect_denial(rule: &str, sqlstate: &'static str, reason: &str) -> What<'a> {
        What::Denial {
            statement: String::new(),
            class: "connect",
            rule: rule.to_string(),
            reason: masking::scrub_text(reason).into_owned(),
            sqlstate,
        }
    }

    /// A step of approval `id` under `rule`.
    pub fn approval(id: u64, rule: &str, sql: &str, step: ApprovalStep<'_>) -> What<'a> {
        let (approver, reason) = match step {
            ApprovalStep::Approved { approver } | ApprovalStep::Granted { approver } => (Some(approver), None),
            ApprovalStep::Denied { approver, reason } => (Some(approver), Some(reason)),
            ApprovalStep::Requested | ApprovalStep::TimedOut | ApprovalStep::Abandoned => (None, None),
        };
        What::Approval {
            approval: id,
            rule: rule.to_string(),
            statement: crate::sql::normalize(sql),
            class: crate::sql::classify(sql, 0).0,
            decision: step.decision(),
            approver: approver.map(str::to_string),
            reason: reason.map(|r| masking::scrub_text(r).into_owned()),
        }
    }
}

impl ApprovalStep<'_> {
    /// The step's `decision` in events and metrics.
    pub fn decision(&self) -> &'static str {
        match self {
            ApprovalStep::Requested => "requested",
            ApprovalStep::Approved { .. } => "approved",
            ApprovalStep::Denied { .. } => "denied",
            ApprovalStep::TimedOut => "timeout",
            ApprovalStep::Granted { .. } => "granted",
            ApprovalStep::Abandoned => "abandoned",
        }
    }
}

/// Milliseconds since `since`, to the microsecond.
pub fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}
