//! What the analysis of a statement says: its class, relations, functions,
//! the lineage of each output column, what it reads and tests, where its
//! values go besides the rows, and what it does to the session (built by
//! [`super::trace`] and [`super::plpgsql`]).

use std::collections::BTreeSet;
use std::fmt;

use super::plpgsql;

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
    /// The column at `position` (0-based, in attribute order, dropped
    /// columns not counted) of `relation`: a column renamed by an alias
    /// column list (`FROM customers AS t(i, n, e)`), resolved by the session
    /// with the catalog.
    ColumnAt {
        /// The relation as written.
        relation: RelName,
        /// 0-based attribute position.
        position: usize,
    },
    /// SQL text written by people that the catalog keeps (a view's
    /// definition, a function's body, a default or constraint expression),
    /// as catalog functions such as `pg_get_viewdef` print it: it may embed
    /// literals compared with classified columns.
    Definition,
    /// A function the session resolves with the catalog (a user-defined
    /// function named with its schema, or one called in FROM): clean when
    /// its body reads nothing masked, else it may return anything.
    Function(String),
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

/// A test on values: the lineage of what is tested, and whether the test is
/// a plain equality with a constant (`col = 'x'`, `col = $1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What the test looks at.
    pub lineage: Lineage,
    /// `col = constant` (or `IN` constants): tells no more about a
    /// pseudonymized column than a join on the pseudonym does.
    pub equality: bool,
    /// `IS [NOT] NULL`: tells whether there is a value, nothing of it.
    pub nullness: bool,
}

/// A channel other than the result rows that a value can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkKind {
    /// `pg_notify` channel or payload.
    Notification,
    /// `set_config` name or value (reaches ParameterStatus, `SHOW`,
    /// `current_setting` in later statements).
    Setting,
    /// Advisory lock keys (visible in `pg_locks`).
    AdvisoryLock,
    /// Large-object contents or ids.
    LargeObject,
    /// Sequence names and values (`nextval`, `setval`).
    Sequence,
    /// Text that becomes SQL (`EXECUTE format(...)` in procedural code).
    DynamicSql,
    /// `RAISE` arguments and options in procedural code.
    Raise,
}

impl SinkKind {
    /// How refusals name the sink.
    pub fn describe(self) -> &'static str {
        match self {
            SinkKind::Notification => "a notification (pg_notify/NOTIFY)",
            SinkKind::Setting => "a setting (set_config/SET)",
            SinkKind::AdvisoryLock => "an advisory lock key",
            SinkKind::LargeObject => "a large object",
            SinkKind::Sequence => "a sequence name or value",
            SinkKind::DynamicSql => "dynamic SQL (EXECUTE)",
            SinkKind::Raise => "a RAISE message or option",
        }
    }
}

/// A value flowing into a [`SinkKind`] channel: the function (or statement)
/// and the lineage of the arguments that reach the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// The channel.
    pub kind: SinkKind,
    /// The function or statement that feeds it (`pg_notify`, `RAISE`).
    pub function: String,
    /// What reaches the channel.
    pub lineage: Lineage,
}

/// A relation the statement creates, for the session model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its name as written.
    pub name: RelName,
    /// `CREATE TEMP ...` or created in `pg_temp`.
    pub temp: bool,
    /// What it holds.
    pub kind: CreatedKind,
}

/// What a created relation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreatedKind {
    /// A table the client fills itself; `columns` in order when the
    /// statement lists them all (`None`: `LIKE`, `OF type`, inheritance).
    Table {
        /// The column names in order, when the statement lists them all.
        columns: Option<Vec<String>>,
    },
    /// `CREATE TABLE AS` / `SELECT INTO`: its columns are the query's
    /// outputs (renamed by a column list).
    TableAs {
        /// The query's outputs.
        outputs: Vec<Output>,
    },
    /// A view: its columns are its query's outputs.
    View {
        /// The query's outputs.
        outputs: Vec<Output>,
        /// Everything its query reads (filters included).
        reads: Vec<Lineage>,
    },
    /// Another kind of relation (sequence, materialized view, ...) that the
    /// session model does not follow: names resolve to unknown.
    Other,
}

/// What a statement does to the session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET [LOCAL] search_path`, `set_config('search_path', ..., local)`:
    /// the schemas in order (`None`: back to the default, `RESET`/`DEFAULT`).
    SearchPath {
        /// The schemas as written (`$user` not expanded).
        schemas: Option<Vec<String>>,
        /// `SET LOCAL`: until the end of the transaction.
        local: bool,
    },
    /// search_path set to something the tracer cannot read
    /// (`set_config('search_path', <expression>, ...)`).
    SearchPathUnknown,
    /// `RESET ALL`.
    ResetAll,
    /// `CREATE TABLE/VIEW/...`.
    Create(Created),
    /// `DROP TABLE/VIEW/...` of these relations.
    Drop(Vec<RelName>),
    /// SQL-level `PREPARE name AS statement`.
    Prepare {
        /// The statement name.
        name: String,
        /// Its analysis (parameters count as constants).
        statement: Box<Statement>,
    },
    /// `EXECUTE name`.
    Execute {
        /// The prepared statement's name.
        name: String,
    },
    /// `DEALLOCATE name` (`None`: `ALL`).
    Deallocate {
        /// The statement name (`None`: all of them).
        name: Option<String>,
    },
    /// `DECLARE name CURSOR FOR statement`.
    Declare {
        /// The cursor's name.
        name: String,
        /// Its query's analysis.
        statement: Box<Statement>,
    },
    /// `FETCH` (or `MOVE`: `rows` false) from cursor `name`.
    Fetch {
        /// The cursor's name.
        name: String,
        /// `FETCH` (rows come back) rather than `MOVE`.
        rows: bool,
    },
    /// `CLOSE name` (`None`: `ALL`).
    Close {
        /// The cursor's name (`None`: all of them).
        name: Option<String>,
    },
    /// `DISCARD ALL|TEMP|PLANS|SEQUENCES`.
    Discard {
        /// `DISCARD ALL`.
        all: bool,
        /// Temporary objects go (`TEMP` or `ALL`).
        temp: bool,
        /// Prepared plans go (`PLANS` or `ALL`).
        plans: bool,
    },
    /// `BEGIN`, `COMMIT`, `SAVEPOINT`, ...
    Transaction(TransactionStep),
}

/// A transaction boundary, for the session model's undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionStep {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` (its CommandComplete tag says whether it committed).
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE SAVEPOINT name`.
    Release(String),
    /// `ROLLBACK TO SAVEPOINT name`.
    RollbackTo(String),
    /// `PREPARE TRANSACTION` and the like: the session's transaction ends.
    Other,
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
    /// A `COPY ... TO` as masker reads it, or why its output cannot be
    /// masked (`None` for other statements and `COPY ... FROM`).
    pub copy: Option<Result<super::copy::CopyTo, super::copy::CopyParseError>>,
    /// Tests on values (for the inference guardrail): WHERE, JOIN ON, GROUP
    /// BY, HAVING, ORDER BY, DISTINCT, LIMIT/OFFSET, window partitions and
    /// orders, aggregate FILTERs, and conditions inside expressions anywhere
    /// (CASE WHEN, comparisons, NULLIF, IN/ANY/EXISTS subqueries).
    pub filters: Vec<Condition>,
    /// Every column reference anywhere in the statement (each with its
    /// candidates when a name is ambiguous), every `*` and whole-row
    /// reference, and [`Source::Opaque`] for what the tracer cannot see
    /// into: what the statement *reads*, whatever it returns. A statement
    /// is clean when all of it is allowed.
    pub reads: Vec<Lineage>,
    /// Values that flow into a channel other than the result rows
    /// (notifications, settings, advisory locks, large objects, sequences).
    pub sinks: Vec<Sink>,
    /// What the statement does to the session's state, for the session
    /// model: objects created or dropped, search_path, prepared statements,
    /// cursors, transaction boundaries.
    pub effect: Option<Effect>,
    /// A `DO` block's PL/pgSQL analysis (its statements' reads, sinks and
    /// conditions are also merged into this statement's).
    pub body: Option<Box<plpgsql::Procedure>>,
    /// `EXPLAIN` in its text format (the plan as lines a scrubber can read).
    pub explain_text: bool,
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
