//! SQL analysis: which base columns each output column of a statement is
//! derived from, and how.
//!
//! Pure, no I/O: [`analyze`] parses a query string with PostgreSQL's own
//! grammar (the `pg_query` crate wraps libpg_query) and traces every output
//! column of each statement back to the columns of the relations *as
//! written* in the SQL. Relation names are resolved to schema-qualified
//! tables, `*` is expanded and views are followed by the session, with the
//! server's catalog ([`crate::plan::lineage`]).
//!
//! Whatever the tracer does not understand becomes [`How::Unknown`], which
//! the session treats as "may carry any column the statement reads" (fail
//! closed). Results are cached per statement text ([`analyze`]), so a
//! statement sent many times (or prepared once) is parsed once.

pub mod copy;
mod trace;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

pub use trace::analyze_uncached;

/// A relation as the statement names it (not yet resolved with a search path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelName {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for RelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where an output value may come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Column `column` of `relation`. When a name is ambiguous as written
    /// (`SELECT email FROM a JOIN b`), each relation that could have it is a
    /// candidate source; the session drops candidates the catalog denies.
    Column { relation: RelName, column: String },
    /// Every column of `relation` (whole-row references, `c::text`).
    AllColumns(RelName),
    /// Something the tracer cannot see through (a set-returning function of
    /// unknown shape, a user-defined function that may read tables).
    Opaque,
}

/// How an output column derives from its sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// No column at all: constants, parameters, `now()`, `count(*)`.
    Constant,
    /// Exactly one column (or a plain cast of it).
    Direct,
    /// Computed from the sources (functions, operators, CASE, subqueries...).
    Derived,
    /// A whole row: `c`, `c.*` inside an expression, `row_to_json(c)`.
    WholeRow,
    /// An aggregate over the sources; `reveals` is false for `count`.
    Aggregate { reveals: bool },
    /// The tracer could not follow the expression: fail closed.
    Unknown,
}

/// The lineage of one output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub how: How,
    /// The columns the value reveals (empty for [`How::Constant`] and for
    /// aggregates that reveal no value).
    pub sources: BTreeSet<Source>,
}

impl Lineage {
    pub(crate) fn constant() -> Lineage {
        Lineage { how: How::Constant, sources: BTreeSet::new() }
    }

    pub(crate) fn unknown() -> Lineage {
        Lineage { how: How::Unknown, sources: BTreeSet::new() }
    }
}

/// One item of a statement's output list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One column, named as the server will name it (best effort).
    Column { name: String, lineage: Lineage },
    /// Every column of a base relation, in attribute order, each exactly that
    /// column (`*`, `t.*`): the session expands it with the catalog.
    Star(RelName),
    /// An unknown number of columns (`*` over a function or VALUES):
    /// positions after it cannot be matched.
    Unknown,
}

/// The kind of a statement, for guardrails and for deciding what to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    Select,
    /// `SELECT ... INTO`, `CREATE TABLE AS`, `CREATE MATERIALIZED VIEW`.
    CreateTableAs,
    Insert,
    Update,
    Delete,
    Merge,
    Ddl,
    Copy,
    Explain,
    Transaction,
    /// `SET`, `SHOW`, `RESET`, `DISCARD`...
    Config,
    /// `DO` blocks and `CALL`: code the tracer cannot see into.
    Procedural,
    /// Anything else (`VACUUM`, `LISTEN`, `PREPARE`, `EXECUTE`, ...).
    Utility,
}

impl StatementClass {
    /// The names policy files use for the classes, in declaration order.
    pub const NAMES: [&'static str; 13] = [
        "select",
        "create_table_as",
        "insert",
        "update",
        "delete",
        "merge",
        "ddl",
        "copy",
        "explain",
        "transaction",
        "config",
        "procedural",
        "utility",
    ];
    const ALL: [StatementClass; 13] = [
        StatementClass::Select,
        StatementClass::CreateTableAs,
        StatementClass::Insert,
        StatementClass::Update,
        StatementClass::Delete,
        StatementClass::Merge,
        StatementClass::Ddl,
        StatementClass::Copy,
        StatementClass::Explain,
        StatementClass::Transaction,
        StatementClass::Config,
        StatementClass::Procedural,
        StatementClass::Utility,
    ];

    /// The class a policy file names `name`.
    pub fn from_name(name: &str) -> Option<StatementClass> {
        Self::NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)).map(|i| Self::ALL[i])
    }

    /// The policy-file name of this class.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|c| *c == self).unwrap_or(Self::ALL.len() - 1)]
    }
}

/// Analysis of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub class: StatementClass,
    /// Relations the statement reads or writes, as written (CTE names excluded).
    pub relations: BTreeSet<RelName>,
    /// Functions called, as written (`schema.name` or `name`), lower case.
    pub functions: BTreeSet<String>,
    /// Output columns, for statements that return rows (SELECT, VALUES,
    /// RETURNING; `None` for the others).
    pub output: Option<Vec<Output>>,
    /// For data-moving statements (`CREATE TABLE AS`, `SELECT INTO`,
    /// `INSERT ... SELECT`, `UPDATE ... SET`, `COPY (query)`): the lineage
    /// of the data they move.
    pub moves: Option<Lineage>,
    /// `COPY (query) TO ...`: the query's output (`COPY table` has none).
    pub copy_query: bool,
    /// Columns used in WHERE, JOIN ON, GROUP BY, HAVING, ORDER BY, window
    /// partitions and aggregate filters (for the inference guardrail), with
    /// whether each use is a plain equality test.
    pub filters: Vec<(Source, bool)>,
    /// What the statement may change, for `read_only` identities; `None`
    /// only for the statements known to read: SELECT (without INTO or
    /// data-modifying WITH), EXPLAIN without ANALYZE of a write, COPY TO,
    /// SHOW, SET (but not ROLE or SESSION AUTHORIZATION), transaction
    /// control, cursors, PREPARE of a read, EXECUTE, DEALLOCATE, LISTEN,
    /// UNLISTEN. Everything else counts as a write (fail closed).
    pub write: Option<&'static str>,
}

/// The analysis of a query string: one entry per statement, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<Statement>,
}

/// Why a query string could not be analyzed (it will not run either:
/// PostgreSQL's parser rejects it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the statement: {0}")]
pub struct SqlError(pub String);

/// Distinct statement texts kept parsed; beyond it the cache is cleared
/// (a workload that generates unbounded distinct texts pays the parse).
const CACHE_ENTRIES: usize = 4096;
/// Statements longer than this are analyzed but not cached.
const CACHE_MAX_TEXT: usize = 64 * 1024;

/// Values computed once per statement shape ([`cache_key`]), bounded: when
/// [`CACHE_ENTRIES`] are held the cache is cleared, and texts longer than
/// [`CACHE_MAX_TEXT`] are not cached.
pub(crate) struct ShapeCache<V>(std::sync::OnceLock<Mutex<HashMap<String, V>>>);

impl<V: Clone> ShapeCache<V> {
    pub(crate) const fn new() -> Self {
        ShapeCache(std::sync::OnceLock::new())
    }

    /// The value for `sql`'s shape, computed by `compute` on a miss.
    pub(crate) fn get_or_compute(&self, sql: &str, compute: impl FnOnce(&str) -> V) -> V {
        if sql.len() > CACHE_MAX_TEXT {
            return compute(sql);
        }
        let key = cache_key(sql);
        let map = self.0.get_or_init(Default::default);
        if let Some(hit) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return hit.clone();
        }
        let value = compute(sql);
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_ENTRIES {
            m.clear();
        }
        m.insert(key, value.clone());
        value
    }
}

/// Analyzes `sql` (one or more statements), from the cache when a text of
/// the same shape (see [`cache_key`]) was analyzed before.
pub fn analyze(sql: &str) -> Arc<Result<Analysis, SqlError>> {
    static CACHE: ShapeCache<Arc<Result<Analysis, SqlError>>> = ShapeCache::new();
    CACHE.get_or_compute(sql, |sql| Arc::new(analyze_uncached(sql)))
}

/// The cache key of `sql`: the text with the contents of string literals
/// (quoted, `E''`, dollar-quoted) and numeric literals blanked, so
/// `... WHERE aid = 1` and `... WHERE aid = 2` (every statement of a client
/// that does not use parameters) share one analysis.
///
/// Sound because an analysis does not depend on literal values, with two
/// exceptions handled here: positional references (`ORDER BY 2`,
/// `GROUP BY 1`, `DISTINCT ON`) — numbers are kept verbatim in any text that
/// mentions those keywords — and a literal's own validity (`E'\u0000'`): a
/// text that shares its key with one that does not parse gets that error,
/// and a statement without analysis is masked entirely (fail closed), while
/// the server rejects the invalid one anyway. Identifiers (`"x1"`, `t2`),
/// parameters (`$1`) and comments stay as they are; an unterminated literal
/// leaves the text unchanged.
pub fn cache_key(sql: &str) -> String {
    let b = sql.as_bytes();
    let lower = sql.to_ascii_lowercase();
    let keep_numbers = ["order", "group", "distinct"].iter().any(|k| lower.contains(k));
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut run_start = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && ident(b[i - 1]);
        let skip_to = match c {
            b'\'' => {
                // '...' with '' escapes; E'...' also has backslash escapes.
                let backslash = i > 0 && matches!(b[i - 1], b'e' | b'E') && !(i > 1 && ident(b[i - 2]));
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return sql.to_string(),
                        Some(b'\\') if backslash => j += 2,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break Some(j + 1),
                        Some(_) => j += 1,
                    }
                }
            }
            b'"' => {
                // A quoted identifier: copied as it is.
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return sql.to_string(),
                        Some(b'"') if b.get(j + 1) == Some(&b'"') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                continue;
            }
            b'$' if !prev_ident => {
                // $tag$ ... $tag$ (not $1, a parameter).
                let tag_end = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'));
                match tag_end.map(|n| i + 1 + n) {
                    Some(t) if b[t] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=t];
                        match sql[t + 1..].find(tag) {
                            Some(n) => Some(t + 1 + n + tag.len()),
                            None => return sql.to_string(),
                        }
                    }
                    _ => None,
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
                i = end;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match sql[i + 2..].find("*/") {
                Some(n) => {
                    i = i + 2 + n + 2;
                    continue;
                }
                None => return sql.to_string(),
            },
            b'0'..=b'9' if !prev_ident && !keep_numbers => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                if j < b.len() && matches!(b[j], b'e' | b'E') {
                    let mut k = j + 1;
                    if k < b.len() && matches!(b[k], b'+' | b'-') {
                        k += 1;
                    }
                    if k < b.len() && b[k].is_ascii_digit() {
                        j = k;
                        while j < b.len() && b[j].is_ascii_digit() {
                            j += 1;
                        }
                    }
                }
                if j < b.len() && ident(b[j]) {
                    // `1abc` is not a number on its own: leave the text.
                    return sql.to_string();
                }
                Some(j)
            }
            _ => None,
        };
        match skip_to {
            Some(end) => {
                out.push_str(&sql[run_start..i]);
                out.push('?');
                i = end;
                run_start = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&sql[run_start..]);
    out
}

#[cfg(test)]
mod tests;
