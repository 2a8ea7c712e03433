//! Bounded, read-only sampling of one relation.
//!
//! One transaction per relation: `BEGIN READ ONLY`, `statement_timeout` and
//! `lock_timeout` set to the time budget, a cursor over
//! `SELECT left(col::text, 1000), ... FROM rel [TABLESAMPLE SYSTEM (p)] LIMIT n`
//! fetched 100 rows at a time, then `ROLLBACK`. `TABLESAMPLE` is used on
//! tables and materialized views the planner believes hold more than
//! [`TABLESAMPLE_ABOVE`] times the row budget, with a percentage aimed at
//! three times the budget (pages, not rows, are sampled); when it returns
//! too few rows, the first `n` rows are read instead. Views and smaller
//! tables are read with `LIMIT n`. Only columns whose type the detectors can
//! read are selected; each value is cut to [`MAX_VALUE_CHARS`] characters.
//!
//! Values go into [`SampleStats`] counters at once and are dropped. A server
//! error is reported by SQLSTATE and its message scrubbed of values.

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::classify::SampleStats;
use super::inventory::{Relation, quote_ident};

/// Characters of each value the detectors look at.
pub const MAX_VALUE_CHARS: u32 = 1000;
/// Relations estimated above this many times the row budget are sampled by pages.
pub const TABLESAMPLE_ABOVE: f64 = 10.0;
const FETCH: u32 = 100;

/// How much to read per relation.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Rows per relation; 0 disables sampling.
    pub rows: u32,
    /// Time per relation.
    pub timeout: Duration,
}

/// How sampling one relation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read `rows` rows, by pages (`TABLESAMPLE`) or the first rows (`LIMIT`).
    Sampled { rows: u64, tablesample: bool },
    /// The time budget ran out after `rows` rows (classified from those).
    TimedOut { rows: u64 },
    /// Not sampled, and why.
    Skipped(&'static str),
    /// The server refused (SQLSTATE, scrubbed message).
    Failed(String),
}

impl Outcome {
    /// `sampled`, `timed_out`, `skipped` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Sampled { .. } => "sampled",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        }
    }

    /// Rows read.
    pub fn rows(&self) -> u64 {
        match self {
            Outcome::Sampled { rows, .. } | Outcome::TimedOut { rows } => *rows,
            _ => 0,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Sampled { rows, tablesample: true } => write!(f, "{rows} rows (tablesample)"),
            Outcome::Sampled { rows, tablesample: false } => write!(f, "{rows} rows"),
            Outcome::TimedOut { rows } => write!(f, "timed out after {rows} rows"),
            Outcome::Skipped(why) => write!(f, "not sampled: {why}"),
            Outcome::Failed(why) => write!(f, "sampling failed: {why}"),
        }
    }
}

/// Samples `rel`; one entry per column, `None` for columns not sampled.
pub async fn sample(client: &Client, rel: &Relation, budget: &Budget) -> (Outcome, Vec<Option<SampleStats>>) {
    let mut stats: Vec<Option<SampleStats>> = vec![None; rel.columns.len()];
    let picked: Vec<usize> = (0..rel.columns.len()).filter(|i| rel.columns[*i].class.worth_sampling()).collect();
    if budget.rows == 0 {
        return (Outcome::Skipped("--sample-rows 0"), stats);
    }
    if picked.is_empty() {
        return (Outcome::Skipped("no column of a type the detectors read"), stats);
    }
    if rel.kind == super::inventory::RelKind::Foreign {
        return (Outcome::Skipped("foreign table (reading it would query the remote server)"), stats);
    }
    for i in &picked {
        stats[*i] = Some(SampleStats::default());
    }
    let started = Instant::now();
    // The client-side deadline backs up statement_timeout.
    let limit = budget.timeout + Duration::from_secs(5);
    let result = tokio::time::timeout(limit, read(client, rel, budget, &picked, &mut stats, started)).await;
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            let rows = stats.iter().flatten().next().map_or(0, |s| s.values);
            match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::QUERY_CANCELED => Outcome::TimedOut { rows },
                _ => Outcome::Failed(describe(&e)),
            }
        }
        Err(_) => Outcome::TimedOut { rows: 0 },
    };
    let _ = client.batch_execute("ROLLBACK").await;
    if matches!(outcome, Outcome::Failed(_)) {
        // What was read before the error is not a sample of the relation.
        for s in stats.iter_mut() {
            *s = None;
        }
    }
    (outcome, stats)
}

/// The sampling transaction; values are counted as they arrive.
async fn read(
    client: &Client,
    rel: &Relation,
    budget: &Budget,
    picked: &[usize],
    stats: &mut [Option<SampleStats>],
    started: Instant,
) -> Result<Outcome, tokio_postgres::Error> {
    let ms = budget.timeout.as_millis().max(1);
    client
        .batch_execute(&format!(
            "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY; \
             SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; \
             SET LOCAL search_path = pg_catalog"
        ))
        .await?;
    let select: Vec<String> = picked
        .iter()
        .map(|i| format!("pg_catalog.left({}::pg_catalog.text, {MAX_VALUE_CHARS})", quote_ident(&rel.columns[*i].name)))
        .collect();
    let from = format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name));
    let n = budget.rows;
    let pages = rel.kind.samples_pages() && rel.estimated_rows > TABLESAMPLE_ABOVE * f64::from(n);
    if pages {
        let percent = (300.0 * f64::from(n) / rel.estimated_rows).clamp(0.000_001, 100.0);
        let sql = format!("SELECT {} FROM {from} TABLESAMPLE SYSTEM ({percent:.6}) LIMIT {n}", select.join(", "));
        let rows = fetch_all(client, &sql, picked, stats, started, budget.timeout).await?;
        if rows >= u64::from(n / 4) {
            return Ok(finish(rows, true, started, budget.timeout));
        }
        // Too few pages came up: count from scratch on the first rows.
        for i in picked {
            stats[*i] = Some(SampleStats::default());
        }
    }
    let sql = format!("SELECT {} FROM {from} LIMIT {n}", select.join(", "));
    let rows = fetch_all(client, &sql, picked, stats, started, budget.timeout).await?;
    Ok(finish(rows, false, started, budget.timeout))
}

fn finish(rows: u64, tablesample: bool, started: Instant, timeout: Duration) -> Outcome {
    if started.elapsed() >= timeout { Outcome::TimedOut { rows } } else { Outcome::Sampled { rows, tablesample } }
}

/// Runs `sql` through a cursor, counting every value; stops early when the
/// time budget is spent.
async fn fetch_all(
    client: &Client,
    sql: &str,
    picked: &[usize],
    stats: &mut [Option<SampleStats>],
    started: Instant,
    timeout: Duration,
) -> Result<u64, tokio_postgres::Error> {
    client.batch_execute(&format!("DECLARE masker_discover NO SCROLL CURSOR FOR {sql}")).await?;
    let mut rows = 0u64;
    loop {
        let messages = client.simple_query(&format!("FETCH {FETCH} FROM masker_discover")).await?;
        let mut got = 0;
        for m in &messages {
            if let SimpleQueryMessage::Row(row) = m {
                got += 1;
                for (k, i) in picked.iter().enumerate() {
                    if let (Ok(Some(value)), Some(s)) = (row.try_get(k), stats[*i].as_mut()) {
                        s.add(value);
                    }
                }
            }
        }
        rows += got;
        if got < u64::from(FETCH) || started.elapsed() >= timeout {
            break;
        }
    }
    client.batch_execute("CLOSE masker_discover").await?;
    Ok(rows)
}

/// A server error without values: its SQLSTATE and its scrubbed message.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), crate::masking::scrub_text(db.message())),
        None => crate::masking::scrub_text(&e.to_string()).into_owned(),
    }
}
