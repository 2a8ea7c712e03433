//! The queue between a session's two trackers: what each request the client
//! sent will be answered with, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::wire::ResultFormats;

/// What the server will answer a request with, noted when the request passes.
#[derive(Debug)]
pub enum Expect {
    Query {
        sql: Arc<str>,
    },
    /// `refused`: masker refused the client's statement with this message
    /// and sent [`crate::plan::lineage::refused_parse_statement`] in its
    /// place, which the server's parser rejects; `sql` is then the
    /// refusal's `DO` text (what the audit trail records).
    Parse {
        name: String,
        sql: Arc<str>,
        refused: Option<Arc<str>>,
    },
    Bind {
        portal: String,
        statement: String,
        formats: ResultFormats,
    },
    DescribeStatement {
        name: String,
    },
    /// `injected`: the agent sent this Describe itself; its answer is
    /// consumed here and never reaches the client.
    DescribePortal {
        name: String,
        injected: bool,
    },
    Execute {
        portal: String,
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
