//! What the analysis of a statement says: its class, relations, functions
//! and the lineage of each output column (built by [`super::trace`]).

use std::collections::BTreeSet;
use std::fmt;

/// A relation as the statement names it (not yet resolved with a search path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelName {
    /// The schema, when the name is qualified.
    pub schema: Option<String>,
    /// The relation's name (case-folded unless it was quoted).
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
    #[allow(missing_docs)]
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
    #[allow(missing_docs)]
    Aggregate { reveals: bool },
    /// The tracer could not follow the expression: fail closed.
    Unknown,
}

/// The lineage of one output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// How the value derives from its sources.
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
    #[allow(missing_docs)]
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
    /// `SELECT` and `VALUES` (without `INTO`).
    Select,
    /// `SELECT ... INTO`, `CREATE TABLE AS`, `CREATE MATERIALIZED VIEW`.
    CreateTableAs,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `CREATE`, `ALTER`, `DROP`, `COMMENT`, `GRANT`, `TRUNCATE`, ...
    Ddl,
    /// `COPY` (either direction).
    Copy,
    /// `EXPLAIN`.
    Explain,
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints.
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
    /// What kind of statement it is.
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
    /// The statements, in the order of the text.
    pub statements: Vec<Statement>,
}

/// Why a query string could not be analyzed (it will not run either:
/// PostgreSQL's parser rejects it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the statement: {0}")]
pub struct SqlError(pub String);
