//! The queue between a session's two trackers: what each request the client
//! sent will be answered with, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::sql::{Analysis, SqlError};
use crate::wire::ResultFormats;

/// A statement or portal name as the client sent it: kept inline up to 24
/// bytes (driver names like `""`, `P_0`, `S_12`, `__asyncpg_stmt_1f__` are
/// shorter), so noting and looking one up on every Bind, Describe and
/// Execute neither allocates nor follows a pointer.
pub type Name = compact_str::CompactString;

/// What [`crate::sql::analyze`] says of a text (shared by every text of
/// the same shape).
pub type Analyzed = Arc<Result<Analysis, SqlError>>;

/// A statement text the client sent, with its analysis once either side
/// needed it: analysed once for both trackers and every message its
/// answer brings.
#[derive(Debug)]
pub struct Text {
    sql: Box<str>,
    analysis: OnceLock<Analyzed>,
}

impl Text {
    /// `sql`, not analysed yet.
    pub fn new(sql: &str) -> Arc<Text> {
        Arc::new(Text { sql: sql.into(), analysis: OnceLock::new() })
    }

    /// `sql` with its analysis.
    pub fn analysed(sql: &str, analysis: Analyzed) -> Arc<Text> {
        Arc::new(Text { sql: sql.into(), analysis: OnceLock::from(analysis) })
    }

    /// The text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its analysis (from the shape cache the first time).
    pub fn analysis(&self) -> &Analyzed {
        self.analysis.get_or_init(|| crate::sql::analyze(&self.sql))
    }
}

/// What the server will answer a request with, noted when the request passes.
#[derive(Debug)]
pub enum Expect {
    Query {
        sql: Arc<Text>,
    },
    /// `refused`: masker refused the client's statement with this message
    /// and sent [`crate::plan::lineage::refused_parse_statement`] in its
    /// place, which the server's parser rejects; `sql` is then the
    /// refusal's `DO` text (what the audit trail records).
    Parse {
        name: Name,
        sql: Arc<Text>,
        /// Masker refused the client's statement with this message and
        /// sent [`crate::plan::lineage::refused_parse_statement`] in its
        /// place, which the server's parser rejects; `sql` is then the
        /// refusal's `DO` text (what the audit trail records).
        refused: Option<Arc<str>>,
    },
    Bind {
        portal: Name,
        statement: Name,
        formats: ResultFormats,
    },
    DescribeStatement {
        name: Name,
    },
    /// `injected`: the agent sent this Describe itself; its answer is
    /// consumed here and never reaches the client.
    DescribePortal {
        name: Name,
        injected: bool,
    },
    Execute {
        portal: Name,
    },
    Close,
    Sync,
}

/// The queue between the two trackers of a session.
pub type ExpectQueue = Arc<Mutex<VecDeque<Expect>>>;

/// The queue, locked (never contended: both trackers run in the session's
/// task).
pub fn lock(q: &ExpectQueue) -> MutexGuard<'_, VecDeque<Expect>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}
