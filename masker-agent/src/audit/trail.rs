//! Following the statements of one session as their results pass: the
//! `statement` events, the per-identity counters and the relay latency.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Audit;
use super::event::{Event, Outcome, What, WouldMask, masked_columns, masked_map};
use crate::daemon::metrics::Metrics;
use crate::masking::{self, RowStats};

/// Follows the statements of one masking session as their results pass, for
/// `statement` events, per-identity counters and the relay latency
/// histogram. Owned by the session's server-side tracker: no lock per row.
pub struct StatementTrail {
    session: u64,
    identity: Option<String>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    requests: Arc<SessionTrail>,
    rows: u64,
    stats: RowStats,
    /// The plan of the current statement's masked rows and its masked cells
    /// per column.
    columns: Option<(Arc<masking::RowPlan>, Vec<u64>)>,
    /// When the statement now answering started (end of the previous one or
    /// the client's request, whichever is later).
    last_end: Option<Instant>,
    /// Position of the next result within a multi-statement Query.
    index: usize,
    /// Observe mode: the cells counted were not masked; they are what
    /// enforcing would have masked.
    observing: bool,
}

impl StatementTrail {
    /// The trail of session `session` (of `identity`), recording to `audit`
    /// and `metrics`; `requests` is where the client side notes when
    /// requests leave.
    pub fn new(
        session: u64,
        identity: Option<String>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        requests: Arc<SessionTrail>,
    ) -> StatementTrail {
        StatementTrail {
            session,
            identity,
            audit,
            metrics,
            requests,
            rows: 0,
            stats: RowStats::default(),
            columns: None,
            last_end: None,
            index: 0,
            observing: false,
        }
    }

    /// The trail of a session in observe mode: the cells it is told about
    /// were not masked; they are recorded as what enforcing would have
    /// masked (`would_mask` in events, `masker_observe_masked_cells_total`).
    pub fn observing(mut self) -> StatementTrail {
        self.observing = true;
        self
    }

    /// Per-column counters for rows masked with `plan` (to pass to
    /// [`masking::mask_data_row_counted`]).
    pub fn column_counts(&mut self, plan: &Arc<masking::RowPlan>) -> &mut [u64] {
        let same = self.columns.as_ref().is_some_and(|(p, _)| Arc::ptr_eq(p, plan));
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
    /// of the statement it answers, when known. Returns the statement's
    /// masked cells per action (for the session's own counters; none in
    /// observe mode, where nothing is masked).
    pub fn end(&mut self, sql: Option<&str>, command: Option<&[u8]>, error: Option<&[u8]>) -> RowStats {
        let now = Instant::now();
        let started = match (self.last_end, self.requests.oldest_request()) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        self.last_end = Some(now);
        let rows = std::mem::take(&mut self.rows);
        let counted = std::mem::take(&mut self.stats);
        let (stats, would) = match self.observing {
            true => (RowStats::default(), counted),
            false => (counted, RowStats::default()),
        };
        let columns = self.columns.take();
        let index = self.index;
        self.index += 1;
        let identity = self.identity.as_deref();
        self.metrics.statement(identity.unwrap_or(""), &stats, rows, error.is_some());
        if self.observing {
            self.metrics.observed(identity.unwrap_or(""), &would);
        }
        if !self.audit.enabled() {
            return stats;
        }
        let (class, tables) = match sql {
            Some(sql) => crate::sql::classify(sql, index),
            None => ("unknown", Vec::new()),
        };
        let (sqlstate, message) = match error {
            Some(body) => {
                let (code, msg) = crate::wire::error_fields(body);
                (code, msg.map(|m| masking::scrub_text(&m).into_owned()))
            }
            None => (None, None),
        };
        let command = command.map(|c| {
            let text = String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or_default());
            text.split(' ').next().unwrap_or_default().to_string()
        });
        let columns = columns.map(|(plan, counts)| masked_columns(&plan, &counts)).unwrap_or_default();
        let (masked_columns, would_mask) = match self.observing {
            true => (Vec::new(), Some(WouldMask { cells: would.total(), by_action: masked_map(&would), columns })),
            false => (columns, None),
        };
        let what = What::Statement {
            statement: sql.map(crate::sql::normalize).unwrap_or_default(),
            class,
            tables,
            rows,
            masked_cells: stats.total(),
            masked: masked_map(&stats),
            masked_columns,
            outcome: if error.is_some() { Outcome::Error } else { Outcome::Ok },
            command,
            sqlstate,
            error: message,
            duration_ms: (now.duration_since(started).as_secs_f64() * 1e6).round() / 1e3,
            would_mask,
        };
        self.audit.emit(&Event::new(self.session, identity, what).observing(self.observing));
        stats
    }

    /// ReadyForQuery: the request that started this cycle is answered.
    pub fn ready(&mut self) {
        self.index = 0;
        self.rows = 0;
        self.stats = RowStats::default();
        self.columns = None;
        if let Some(sent) = self.requests.answered() {
            self.metrics.latency(sent.elapsed());
        }
        self.last_end = None;
    }
}

/// What a session's client side tells its server side: when each request
/// that a ReadyForQuery will answer left (for statement durations and the
/// relay latency).
#[derive(Debug, Default)]
pub struct SessionTrail {
    requests: Mutex<VecDeque<Instant>>,
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
}
