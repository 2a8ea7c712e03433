//! SQL lineage in a session: turning the [`crate::sql`] analysis of a
//! statement into a decision — clean or tainted, one masking action per
//! result column — and refusing the statements that would move personal
//! data out of the policy's sight.
//!
//! A statement is *clean* when everything it reads (see
//! [`Statement::reads`]) derives only from allowed columns, the catalogs,
//! literals and parameters, and the client's own temporary data: all it
//! causes reaches the client as the server sent it. Otherwise it is
//! *tainted*: its rows are masked per column, its errors and notices lose
//! their text, and a value it derives from a classified column may not flow
//! into a channel other than the rows (it is refused before it runs).
//!
//! Names resolve as the server resolves them for this session: relations
//! the session created ([`SessionModel`]) first, then the catalog, searched
//! along the session's own `search_path` through the world-readable
//! catalogs. Views are followed through their definitions, up to
//! [`VIEW_DEPTH`] levels. What cannot be resolved counts as unknown and
//! fails closed.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::PlanContext;
use super::catalog::Relation;
use crate::masking::ColumnAction;
use crate::policy::approval::ApprovalRule;
use crate::policy::guardrails::{self, Resolved};
use crate::session::track::model::{SearchPath, SessionModel};
use crate::sql::{self, CreatedKind, Effect, How, Lineage, Output, RelName, Source, Statement, StatementClass};

/// How many views deep a column is followed before it counts as unknown.
pub const VIEW_DEPTH: usize = 4;

/// Catalog views and functions that expose sampled values or other sessions'
/// statements; refused for masked sessions.
const REFUSED_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_stat_activity",
    "pg_prepared_statements",
    "pg_cursors",
];
const REFUSED_FUNCTIONS: &[&str] =
    &["pg_stat_get_activity", "pg_stat_statements", "pg_prepared_statement", "pg_cursor"];

/// Schemas whose relations are the catalog: their columns pass, except the
/// ones below.
const CATALOG_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// Catalog columns that hold SQL text written by people: scrubbed of the
/// literals that stand against classified columns.
const DEFINITION_COLUMNS: &[(&str, &str)] = &[
    ("pg_views", "definition"),
    ("pg_matviews", "definition"),
    ("pg_rules", "definition"),
    ("pg_policies", "qual"),
    ("pg_policies", "with_check"),
    ("pg_proc", "prosrc"),
    ("pg_type", "typdefault"),
    ("views", "view_definition"),
    ("routines", "routine_definition"),
    ("check_constraints", "check_clause"),
    ("columns", "column_default"),
    ("columns", "generation_expression"),
    ("domains", "domain_default"),
    ("attributes", "attribute_default"),
    ("triggers", "action_statement"),
    ("triggers", "action_condition"),
    ("parameters", "parameter_default"),
];

/// Catalog columns that hold parse trees (with constants as raw bytes) or
/// stored values: masked whole.
const VALUE_COLUMNS: &[(&str, &str)] = &[
    ("pg_proc", "prosqlbody"),
    ("pg_attrdef", "adbin"),
    ("pg_constraint", "conbin"),
    ("pg_index", "indexprs"),
    ("pg_index", "indpred"),
    ("pg_rewrite", "ev_qual"),
    ("pg_rewrite", "ev_action"),
    ("pg_policy", "polqual"),
    ("pg_policy", "polwithcheck"),
    ("pg_trigger", "tgqual"),
    ("pg_statistic_ext", "stxexprs"),
    ("pg_partitioned_table", "partexprs"),
    ("pg_class", "relpartbound"),
    ("pg_type", "typdefaultbin"),
    ("pg_attribute", "attmissingval"),
    ("pg_largeobject", "data"),
];

/// The system columns every table has (negative attribute numbers, absent
/// from the catalog's column lists): where a row version is and which
/// transactions and commands wrote it, never a value a client stored. No user
/// column can take these names. `pg_dump` reads `tableoid` of every catalog
/// it lists.
const SYSTEM_COLUMNS: &[&str] = &["tableoid", "ctid", "xmin", "xmax", "cmin", "cmax"];

/// A session's [`PlanContext`] with its [`SessionModel`] as it stands: what
/// names resolve to and what each statement is decided with.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    plan: &'a PlanContext,
    session: &'a SessionModel,
}

impl PlanContext {
    /// Decisions for this session's statements, with its objects and
    /// settings as `session` has them.
    pub fn resolver<'a>(&'a self, session: &'a SessionModel) -> Resolver<'a> {
        Resolver { plan: self, session }
    }
}

/// The decision for one result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Exactly one base table column: the `RowDescription` origin decides
    /// when it names one; otherwise (a cast) this action.
    Direct(ColumnAction),
    /// This action, whatever the origin says.
    Force(ColumnAction),
}

/// Why a result column got its [`Decision`]: the case of the decision
/// that applied and the base columns it looked at (what `masker explain`
/// shows; the session drops it).
#[derive(Debug)]
pub(super) struct Why {
    pub(super) reason: Reason,
    pub(super) bases: Bases,
}

impl Why {
    fn of(reason: Reason) -> Why {
        Why { reason, bases: Bases::default() }
    }
}

/// The case of a column decision that applied, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Literals, parameters, counts: the client's own values.
    Constant,
    /// An expression masker cannot follow, in a tainted statement or over
    /// something it cannot see into: masked whole.
    Untraced,
    /// An expression masker cannot follow, in a clean statement: it can
    /// only carry what the statement reads, which is all allowed.
    UntracedClean,
    /// Computed by a user function whose body reads masked data or cannot
    /// be analysed: masked whole.
    UncleanFunction,
    /// Exactly one base column (or a plain cast of it): that column's
    /// action; the server's RowDescription names the column's origin and
    /// decides when it names a table column.
    Exact,
    /// Computed from something that cannot be followed to base columns:
    /// masked whole.
    ComputedUnknown,
    /// Computed from a classified column: masked whole.
    ComputedClassified,
    /// Computed from columns no rule classifies: `defaults.action`.
    ComputedUnclassified,
    /// Computed from allowed columns only.
    ComputedAllowed,
    /// `EXECUTE`/`FETCH` of a prepared statement or cursor the session
    /// model does not know: masked whole.
    UnknownStored,
    /// The plan of a tainted `EXPLAIN`: literals against masked columns
    /// replaced (text format), otherwise masked whole.
    ExplainPlan,
    /// Rows of a statement whose output is not traced (`SHOW`, `EXPLAIN`,
    /// utility statements): allowed when the statement is clean and reads
    /// settings or plans only, masked whole otherwise.
    Untracked,
    /// The result's columns cannot be matched to the statement's outputs
    /// (`*` over something unknown, a function of unknown shape): allowed
    /// when the statement is clean, masked whole when it is tainted.
    Unmatched,
}

impl Reason {
    /// What the case means, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Constant => "a literal, parameter or count: the client's own value",
            Reason::Untraced => {
                "an expression masker cannot follow in a statement that reads masked data: masked whole"
            }
            Reason::UntracedClean => {
                "an expression masker cannot follow, in a statement that reads only allowed data: as it is"
            }
            Reason::UncleanFunction => {
                "computed by a user function whose body reads masked data or cannot be analysed: masked whole"
            }
            Reason::Exact => "exactly one base column (or a cast of it): that column's action",
            Reason::ComputedUnknown => "computed from something masker cannot trace: masked whole",
            Reason::ComputedClassified => "computed from a classified column: masked whole",
            Reason::ComputedUnclassified => "computed from columns no rule classifies: defaults.action",
            Reason::ComputedAllowed => "computed from allowed columns only: as it is",
            Reason::UnknownStored => "a prepared statement or cursor masker has not seen: masked whole",
            Reason::ExplainPlan => {
                "the plan of a statement that reads masked data: literals against masked columns replaced"
            }
            Reason::Untracked => "rows of a statement masker does not trace per column: as clean as what it reads",
            Reason::Unmatched => {
                "the result's columns cannot be matched to the statement's outputs: masked whole when it reads \
                 masked data, as they are otherwise"
            }
        }
    }

    /// A short name for `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Constant => "constant",
            Reason::Untraced => "untraced",
            Reason::UntracedClean => "untraced_clean",
            Reason::UncleanFunction => "unclean_function",
            Reason::Exact => "exact",
            Reason::ComputedUnknown => "computed_unknown",
            Reason::ComputedClassified => "computed_classified",
            Reason::ComputedUnclassified => "computed_unclassified",
            Reason::ComputedAllowed => "computed_allowed",
            Reason::UnknownStored => "unknown_prepared_or_cursor",
            Reason::ExplainPlan => "explain_plan",
            Reason::Untracked => "untracked",
            Reason::Unmatched => "unmatched",
        }
    }
}

/// Where a base column's action comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    /// A table column: the policy decides.
    Policy,
    /// A catalog column: passes.
    Catalog,
    /// SQL text written by people in the catalog: scrubbed.
    Definition,
    /// A parse tree or stored value in the catalog: masked.
    CatalogValue,
    /// A column of a temporary table the session filled itself.
    ClientData,
}

/// A base column reached by following sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Base {
    schema: String,
    table: String,
    column: String,
    comment: Option<String>,
    origin: Origin,
}

impl Base {
    fn named(&self) -> String {
        match self.origin {
            Origin::Definition if self.table.is_empty() => "a catalog definition".into(),
            _ => format!("{}.{}.{}", self.schema, self.table, self.column),
        }
    }
}

/// The base columns reached by following sources, and whether something
/// could not be followed.
#[derive(Debug, Default)]
pub(super) struct Bases {
    columns: BTreeSet<Base>,
    pub(super) unknown: bool,
}

/// A relation a name resolved to.
#[derive(Debug, Clone)]
enum Found {
    Catalog(Arc<Relation>),
    /// Created by this session.
    Session {
        name: RelName,
        temp: bool,
        kind: CreatedKind,
    },
}

impl Found {
    fn schema(&self) -> String {
        match self {
            Found::Catalog(r) => r.schema.clone(),
            Found::Session { name, temp: true, .. } => name.schema.clone().unwrap_or_else(|| "pg_temp".into()),
            Found::Session { name, .. } => name.schema.clone().unwrap_or_default(),
        }
    }

    fn name(&self) -> String {
        match self {
            Found::Catalog(r) => r.name.clone(),
            Found::Session { name, .. } => name.name.clone(),
        }
    }
}

/// Why a statement is tainted: the first base column (or other cause) that
/// is not allowed, for messages.
pub type Taint = Option<String>;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The action for a RowDescription column whose origin the catalog named
/// `schema.table.column`, when it is not the policy's to decide: catalog
/// columns (allowed, definitions scrubbed, parse trees masked) and the
/// session's own clean temporary tables (its own data).
pub fn origin_action(
    policy: &crate::policy::SessionPolicy,
    session: &SessionModel,
    schema: &str,
    table: &str,
    column: &str,
) -> Option<ColumnAction> {
    if CATALOG_SCHEMAS.contains(&schema) {
        return Some(match catalog_column(table, column) {
            Origin::Definition => ColumnAction::Definition(policy.classified_names()),
            Origin::CatalogValue => ColumnAction::Redact,
            _ => ColumnAction::Allow,
        });
    }
    if schema.starts_with("pg_temp_") && session.has_temp_table(table) && session.temp_clean() {
        return Some(ColumnAction::Allow);
    }
    None
}

fn catalog_column(table: &str, column: &str) -> Origin {
    if DEFINITION_COLUMNS.contains(&(table, column)) {
        Origin::Definition
    } else if VALUE_COLUMNS.contains(&(table, column)) {
        Origin::CatalogValue
    } else {
        Origin::Catalog
    }
}

impl Resolver<'_> {
    /// The schemas an unqualified relation name is searched in, in order
    /// (`pg_catalog` first unless the path places it); `None` when the
    /// session's search_path is unknown.
    async fn search_path(&self) -> Option<Vec<String>> {
        let path = match self.session.search_path() {
            SearchPath::Unknown => return None,
            SearchPath::Set(p) => p.clone(),
            SearchPath::Default => self
                .plan
                .catalog
                .default_search_path(&self.plan.destination, &self.plan.database, &self.plan.user)
                .await
                .unwrap_or_else(|_| vec!["$user".into(), "public".into()]),
        };
        let mut out: Vec<String> = Vec::with_capacity(path.len() + 1);
        if !path.iter().any(|s| s == "pg_catalog") {
            out.push("pg_catalog".into());
        }
        for s in path {
            let s = if s == "$user" { self.plan.user.clone() } else { s };
            // The session's temporary schema is the session model's.
            if s != "pg_temp" && !out.contains(&s) {
                out.push(s);
            }
        }
        Some(out)
    }

    async fn relation(&self, rel: &RelName) -> Option<Found> {
        if let Some(r) = self.session.relation(rel) {
            return Some(Found::Session { name: r.name.clone(), temp: r.temp, kind: r.kind.clone() });
        }
        let schemas = match &rel.schema {
            Some(s) if s.eq_ignore_ascii_case("pg_temp") => return None,
            Some(s) => vec![s.clone()],
            None => self.search_path().await?,
        };
        self.plan
            .catalog
            .relation_on_path(&self.plan.destination, &self.plan.database, &schemas, &rel.name)
            .await
            .ok()
            .flatten()
            .map(Found::Catalog)
    }

    /// The lineage of each column of a view or of a table built from a
    /// query (`None` when not traceable), in order.
    fn derived_columns<'s>(&'s self, found: &'s Found, depth: usize) -> Boxed<'s, Option<Vec<(String, Lineage)>>> {
        Box::pin(async move {
            if depth >= VIEW_DEPTH {
                return None;
            }
            let outs: Vec<Output> = match found {
                Found::Catalog(rel) => {
                    let def = rel.definition.as_deref()?;
                    let analysis = sql::analyze(def);
                    let stmt = analysis.as_ref().as_ref().ok()?.statements.first()?.clone();
                    stmt.output?
                }
                Found::Session {
                    kind: CreatedKind::View { outputs, .. } | CreatedKind::TableAs { outputs }, ..
                } => outputs.clone(),
                Found::Session { .. } => return None,
            };
            let mut cols = Vec::new();
            for o in outs {
                match o {
                    Output::Column { name, lineage } => cols.push((name, lineage)),
                    Output::Star(r) => {
                        let inner = self.relation(&r).await?;
                        for c in self.column_names(&inner, depth + 1).await? {
                            let lineage = Lineage {
                                how: How::Direct,
                                sources: [Source::Column { relation: r.clone(), column: c.clone() }].into(),
                            };
                            cols.push((c, lineage));
                        }
                    }
                    Output::Unknown => return None,
                }
            }
            if let Found::Catalog(rel) = found
                && cols.len() != rel.columns.len()
            {
                return None;
            }
            Some(cols)
        })
    }

    /// The column names of a relation in order, when known.
    fn column_names<'s>(&'s self, found: &'s Found, depth: usize) -> Boxed<'s, Option<Vec<String>>> {
        Box::pin(async move {
            match found {
                Found::Catalog(rel) => Some(rel.columns.iter().map(|(c, _)| c.clone()).collect()),
                Found::Session { kind: CreatedKind::Table { columns }, .. } => columns.clone(),
                Found::Session { .. } => {
                    Some(self.derived_columns(found, depth).await?.into_iter().map(|(c, _)| c).collect())
                }
            }
        })
    }

    /// Follows `l` to base columns. Returns the bases and whether the value
    /// is still exactly one column.
    fn bases<'s>(&'s self, l: &'s Lineage, depth: usize) -> Boxed<'s, (Bases, bool)> {
        Box::pin(async move {
            let mut out = Bases::default();
            let mut direct = l.how == How::Direct;
            if l.how == How::Unknown || depth > VIEW_DEPTH {
                out.unknown = true;
            }
            let mut found_direct = 0;
            for s in &l.sources {
                match s {
                    Source::Opaque => out.unknown = true,
                    Source::Function(name) => {
                        if !self.function_clean(name, depth).await {
                            out.unknown = true;
                        }
                    }
                    Source::Definition => {
                        found_direct += 1;
                        out.columns.insert(Base {
                            schema: "pg_catalog".into(),
                            table: String::new(),
                            column: String::new(),
                            comment: None,
                            origin: Origin::Definition,
                        });
                    }
                    Source::Column { relation, column } => {
                        let Some(found) = self.relation(relation).await else {
                            out.unknown = true;
                            continue;
                        };
                        match self.column(&found, column, depth).await {
                            ColumnOf::Missing => {}
                            ColumnOf::Unknown => {
                                found_direct += 1;
                                out.unknown = true;
                            }
                            ColumnOf::Base(b) => {
                                found_direct += 1;
                                out.columns.insert(b);
                            }
                            ColumnOf::Derived(l) => {
                                found_direct += 1;
                                let (b, d) = self.bases(&l, depth + 1).await;
                                direct &= d;
                                out.unknown |= b.unknown;
                                out.columns.extend(b.columns);
                            }
                        }
                    }
                    Source::ColumnAt { relation, position } => {
                        let Some(found) = self.relation(relation).await else {
                            out.unknown = true;
                            continue;
                        };
                        let name = self.column_names(&found, depth).await.and_then(|c| c.get(*position).cloned());
                        let Some(column) = name else {
                            out.unknown = true;
                            continue;
                        };
                        let l = Lineage {
                            how: How::Direct,
                            sources: [Source::Column { relation: relation.clone(), column }].into(),
                        };
                        found_direct += 1;
                        let (b, d) = self.bases(&l, depth).await;
                        direct &= d;
                        out.unknown |= b.unknown;
                        out.columns.extend(b.columns);
                    }
                    Source::AllColumns(relation) => {
                        direct = false;
                        let Some(found) = self.relation(relation).await else {
                            out.unknown = true;
                            continue;
                        };
                        let Some(names) = self.column_names(&found, depth).await else {
                            out.unknown = true;
                            continue;
                        };
                        for c in names {
                            match self.column(&found, &c, depth).await {
                                ColumnOf::Missing => {}
                                ColumnOf::Unknown => out.unknown = true,
                                ColumnOf::Base(b) => {
                                    out.columns.insert(b);
                                }
                                ColumnOf::Derived(l) => {
                                    let (b, _) = self.bases(&l, depth + 1).await;
                                    out.unknown |= b.unknown;
                                    out.columns.extend(b.columns);
                                }
                            }
                        }
                    }
                }
            }
            if l.how == How::Direct && found_direct == 0 {
                // No candidate exists: the name comes from somewhere unseen.
                out.unknown = true;
            }
            let direct = direct && !out.unknown && out.columns.len() == 1;
            (out, direct)
        })
    }

    /// Column `column` of a found relation.
    async fn column(&self, found: &Found, column: &str, depth: usize) -> ColumnOf {
        match found {
            Found::Catalog(rel) => {
                let Some(i) = rel.columns.iter().position(|(c, _)| c == column) else {
                    // Tables, materialized views, sequences, TOAST tables
                    // have system columns; views and the rest do not.
                    return if matches!(rel.kind, 'r' | 'p' | 'm' | 'S' | 't') {
                        system_column(found, column)
                    } else {
                        ColumnOf::Missing
                    };
                };
                let catalog = CATALOG_SCHEMAS.contains(&rel.schema.as_str());
                if rel.definition.is_some() && !catalog {
                    return match self.derived_columns(found, depth + 1).await {
                        Some(cols) => cols.get(i).map_or(ColumnOf::Unknown, |(_, l)| ColumnOf::Derived(l.clone())),
                        None => ColumnOf::Unknown,
                    };
                }
                let (name, comment) = &rel.columns[i];
                let origin = if catalog { catalog_column(&rel.name, name) } else { Origin::Policy };
                ColumnOf::Base(Base {
                    schema: rel.schema.clone(),
                    table: rel.name.clone(),
                    column: name.clone(),
                    comment: comment.clone(),
                    origin,
                })
            }
            Found::Session { kind: CreatedKind::Table { columns }, temp, .. } => {
                if SYSTEM_COLUMNS.contains(&column) {
                    return system_column(found, column);
                }
                if columns.as_ref().is_some_and(|c| !c.iter().any(|c| c == column)) {
                    return ColumnOf::Missing;
                }
                if *temp && !self.session.temp_clean() {
                    return ColumnOf::Unknown;
                }
                ColumnOf::Base(Base {
                    schema: found.schema(),
                    table: found.name(),
                    column: column.to_string(),
                    comment: None,
                    origin: if *temp { Origin::ClientData } else { Origin::Policy },
                })
            }
            Found::Session { temp, .. } => {
                if *temp && !self.session.temp_clean() {
                    return ColumnOf::Unknown;
                }
                match self.derived_columns(found, depth + 1).await {
                    Some(cols) => match cols.into_iter().find(|(c, _)| c == column) {
                        Some((_, l)) => ColumnOf::Derived(l),
                        None => ColumnOf::Missing,
                    },
                    None => ColumnOf::Unknown,
                }
            }
        }
    }

    /// The action for a base column.
    fn action(&self, b: &Base) -> ColumnAction {
        match b.origin {
            Origin::Policy => self.plan.policy.column_action(&b.schema, &b.table, &b.column, b.comment.as_deref()),
            Origin::Catalog | Origin::ClientData => ColumnAction::Allow,
            Origin::Definition => ColumnAction::Definition(self.plan.policy.classified_names()),
            Origin::CatalogValue => ColumnAction::Redact,
        }
    }

    /// Whether a base column is classified (a rule or a comment masks it,
    /// or it is catalog text that can embed values): what inference checks.
    fn classified(&self, b: &Base) -> bool {
        match b.origin {
            Origin::Policy => {
                let c = self.plan.policy.classification(&b.schema, &b.table, &b.column, b.comment.as_deref());
                c.classified && c.action != ColumnAction::Allow
            }
            // Definitions are masked where they are shown; testing or
            // ordering by them is what psql does (`ORDER BY` its
            // `pg_get_function_arguments` column).
            Origin::CatalogValue => true,
            Origin::Definition | Origin::Catalog | Origin::ClientData => false,
        }
    }

    /// The first base column of `bases` whose action is not `allow`, named
    /// for messages; `Some` too when something is unknown.
    fn first_masked(&self, bases: &Bases) -> Option<String> {
        if bases.unknown {
            return Some("a column the agent cannot trace".into());
        }
        bases.columns.iter().find_map(|b| (self.action(b) != ColumnAction::Allow).then(|| b.named()))
    }

    /// The statement a statement stands for when it runs another: the
    /// prepared statement of `EXECUTE`, the cursor's of `FETCH`.
    fn stands_for(&self, stmt: &Statement) -> Option<StoodFor> {
        match &stmt.effect {
            Some(Effect::Execute { name }) => Some(match self.session.prepared(name) {
                Some(s) => StoodFor::Stored(s),
                None => StoodFor::Missing,
            }),
            Some(Effect::Fetch { name, .. }) => Some(match self.session.cursor(name) {
                Some(s) => StoodFor::Stored(s),
                None => StoodFor::Missing,
            }),
            _ => None,
        }
    }

    /// Why `stmt` is tainted (`None`: clean): the first thing it reads that
    /// is not allowed — a masked or unclassified column, a value the agent
    /// cannot trace, a function whose body it cannot see.
    pub fn taint<'s>(&'s self, stmt: &'s Statement) -> Boxed<'s, Taint> {
        self.taint_at(stmt, 0)
    }

    /// [`Resolver::taint`] of a statement `depth` function bodies deep.
    fn taint_at<'s>(&'s self, stmt: &'s Statement, depth: usize) -> Boxed<'s, Taint> {
        Box::pin(async move {
            match self.stands_for(stmt) {
                Some(StoodFor::Stored(inner)) => {
                    if let Some(t) = self.taint(&inner).await {
                        return Some(t);
                    }
                }
                // The server answers that it does not exist, unless code
                // masker could not see made it.
                Some(StoodFor::Missing) if self.session.unseen_code() => {
                    return Some("a prepared statement or cursor the agent has not seen".into());
                }
                Some(StoodFor::Missing) => {}
                None => {}
            }
            for l in &stmt.reads {
                let (bases, _) = self.bases(l, depth).await;
                if let Some(what) = self.first_masked(&bases) {
                    return Some(what);
                }
            }
            // A view reads what its query reads, filters included (its
            // errors, and an EXPLAIN of it, can show them).
            if depth < VIEW_DEPTH {
                for r in &stmt.relations {
                    match self.relation(r).await {
                        Some(Found::Catalog(rel))
                            if rel.definition.is_some() && !CATALOG_SCHEMAS.contains(&rel.schema.as_str()) =>
                        {
                            let analysis = sql::analyze(rel.definition.as_deref().unwrap_or_default());
                            let Ok(a) = analysis.as_ref() else { return Some(format!("the view {r}")) };
                            for inner in &a.statements {
                                if let Some(t) = self.taint_at(inner, depth + 1).await {
                                    return Some(t);
                                }
                            }
                        }
                        Some(Found::Session { kind: CreatedKind::View { reads, .. }, .. }) => {
                            for l in &reads {
                                let (bases, _) = self.bases(l, depth + 1).await;
                                if let Some(what) = self.first_masked(&bases) {
                                    return Some(what);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            if self.calls_unclean_function(stmt, depth).await {
                return Some("a function whose body reads masked data or cannot be analysed".into());
            }
            None
        })
    }

    /// Whether the function `name` (as written) is clean: built in, or
    /// user-defined with a body (SQL or PL/pgSQL) that reads only allowed
    /// data, sends nothing to another channel and runs no dynamic SQL, for
    /// every overload. Bodies are followed [`VIEW_DEPTH`] calls deep.
    fn function_clean<'s>(&'s self, name: &'s str, depth: usize) -> Boxed<'s, bool> {
        Box::pin(async move {
            if depth >= VIEW_DEPTH {
                return false;
            }
            let one: std::collections::BTreeSet<String> = [name.to_string()].into();
            match self.plan.catalog.user_functions(&self.plan.destination, &self.plan.database, &one).await {
                Ok(user) if user.is_empty() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            let Ok(bodies) = self.plan.catalog.function_bodies(&self.plan.destination, &self.plan.database, name).await
            else {
                return false;
            };
            if bodies.is_empty() {
                return false;
            }
            for b in bodies.iter() {
                let vars: Vec<(String, Lineage)> =
                    b.arg_names.iter().filter(|a| !a.is_empty()).map(|a| (a.clone(), Lineage::constant())).collect();
                let statements = match b.language.as_str() {
                    "sql" if !b.source.trim().is_empty() => match sql::analyze_with_variables(&b.source, &vars) {
                        Ok(a) => a.statements,
                        Err(_) => return false,
                    },
                    "plpgsql" => match sql::plpgsql::analyze_function_body(&b.source, &b.arg_names) {
                        Some(p) if !p.dynamic && !p.opaque => {
                            for s in &p.sinks {
                                if !self.lineage_clean(&s.lineage, depth + 1).await {
                                    return false;
                                }
                            }
                            p.statements
                        }
                        _ => return false,
                    },
                    _ => return false,
                };
                for st in &statements {
                    let reads_only = matches!(st.class, StatementClass::Select) && st.write.is_none();
                    if !reads_only {
                        return false;
                    }
                    for s in &st.sinks {
                        if !self.lineage_clean(&s.lineage, depth + 1).await {
                            return false;
                        }
                    }
                    if self.taint_at(st, depth + 1).await.is_some() {
                        return false;
                    }
                }
            }
            true
        })
    }

    /// Whether a value of lineage `l` (in a function body `depth` deep)
    /// derives only from constants and allowed columns.
    async fn lineage_clean(&self, l: &Lineage, depth: usize) -> bool {
        if l.how == How::Constant {
            return true;
        }
        let (bases, _) = self.bases(l, depth).await;
        !bases.unknown && self.first_masked(&bases).is_none()
    }

    /// Whether the user function `name` (any overload) may send a value it
    /// is given or reads into a channel other than its result: a
    /// notification, a setting, an advisory lock, a large object, a
    /// sequence, dynamic SQL — directly or through the user functions it
    /// calls. A body masker cannot see (a temporary function of the
    /// session, a language it does not analyse) counts as one (fail
    /// closed). `RAISE` is not counted: the messages of a tainted statement
    /// are withheld.
    fn function_sends_sideways<'s>(&'s self, name: &'s str, depth: usize) -> Boxed<'s, bool> {
        Box::pin(async move {
            if depth >= VIEW_DEPTH {
                return true;
            }
            let one: std::collections::BTreeSet<String> = [name.to_string()].into();
            match self.plan.catalog.user_functions(&self.plan.destination, &self.plan.database, &one).await {
                Ok(user) if user.is_empty() => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
            let Ok(bodies) = self.plan.catalog.function_bodies(&self.plan.destination, &self.plan.database, name).await
            else {
                return true;
            };
            if bodies.is_empty() {
                return true;
            }
            for b in bodies.iter() {
                // Arguments stand for anything the caller passes; positional
                // references (`$1`) are not traced, so with them any sink counts.
                let positional = b.source.as_bytes().windows(2).any(|w| w[0] == b'$' && w[1].is_ascii_digit());
                let sideways = |sinks: &[crate::sql::Sink]| {
                    sinks.iter().any(|s| {
                        s.kind != crate::sql::SinkKind::Raise && (positional || s.lineage.how != How::Constant)
                    })
                };
                let statements = match b.language.as_str() {
                    "c" | "internal" => continue,
                    "sql" => {
                        let vars: Vec<(String, Lineage)> = b
                            .arg_names
                            .iter()
                            .filter(|a| !a.is_empty())
                            .map(|a| (a.clone(), Lineage::unknown()))
                            .collect();
                        match sql::analyze_with_variables(&b.source, &vars) {
                            Ok(a) => a.statements,
                            Err(_) => return true,
                        }
                    }
                    "plpgsql" => {
                        match sql::plpgsql::analyze_function_body_with(&b.source, &b.arg_names, &Lineage::unknown()) {
                            Some(p) if !p.dynamic && !p.opaque => {
                                if sideways(&p.sinks) {
                                    return true;
                                }
                                p.statements
                            }
                            _ => return true,
                        }
                    }
                    _ => return true,
                };
                for st in &statements {
                    if sideways(&st.sinks) {
                        return true;
                    }
                    let Ok(user) = self
                        .plan
                        .catalog
                        .user_functions(&self.plan.destination, &self.plan.database, &st.functions)
                        .await
                    else {
                        return true;
                    };
                    for f in &user {
                        if self.function_sends_sideways(f, depth + 1).await {
                            return true;
                        }
                    }
                }
            }
            false
        })
    }

    /// A statement that writes a relation whose triggers run a user
    /// function that is not clean or may send values to another channel:
    /// what the trigger reads would leave through the statement's errors,
    /// notices or side channels while the statement itself looks clean.
    /// When the catalog cannot tell, the write is refused (fail closed).
    async fn trigger_refusal(&self, stmt: &Statement) -> Option<String> {
        const FIRES: [&str; 6] = ["INSERT", "UPDATE", "DELETE", "MERGE", "COPY FROM", "TRUNCATE"];
        if !stmt.write.is_some_and(|w| FIRES.contains(&w)) {
            return None;
        }
        for r in &stmt.relations {
            let functions = match self
                .plan
                .catalog
                .trigger_functions(&self.plan.destination, &self.plan.database, r.schema.as_deref(), &r.name)
                .await
            {
                Ok(f) => f,
                Err(_) => {
                    return Some(format!(
                        "masker: statement refused: the triggers of {r} could not be read from the catalog (rule: \
                         code masker cannot see may not run in masked sessions)"
                    ));
                }
            };
            for f in &functions {
                if !self.function_clean(f, 0).await || self.function_sends_sideways(f, 0).await {
                    return Some(format!(
                        "masker: statement refused: it fires a trigger of {r} that runs {f}(), whose body reads masked \
                         data, sends values to another channel or cannot be seen by masker (rule: code masker cannot \
                         see may not run in masked sessions)"
                    ));
                }
            }
        }
        None
    }

    /// Refusals for code that runs out of the statement's sight: a
    /// statement that reads masked data and calls a user function that may
    /// send what it is given into another channel, and DDL that installs a
    /// user function to run later (a trigger) whose body is not clean — the
    /// statements that fire it would look clean.
    async fn function_refusal(&self, stmt: &Statement) -> Option<String> {
        if let Some(m) = self.trigger_refusal(stmt).await {
            return Some(m);
        }
        if stmt.write == Some("CREATE RULE")
            && let Some(reads) = self.taint(stmt).await
        {
            return Some(format!(
                "masker: statement refused: it installs a rule whose actions read {reads} (rule: code masker cannot \
                 see may not run in masked sessions)"
            ));
        }
        if stmt.functions.is_empty() {
            return None;
        }
        let user = match self
            .plan
            .catalog
            .user_functions(&self.plan.destination, &self.plan.database, &stmt.functions)
            .await
        {
            Ok(user) => user,
            // No catalog to ask (none configured, or it failed: a failure
            // refuses the statement anyway, see `Catalog::failed_since`):
            // every function PostgreSQL does not ship counts as a user's.
            Err(_) => stmt.functions.iter().filter(|f| !builtin_function(f)).cloned().collect(),
        };
        if user.is_empty() {
            return None;
        }
        if stmt.class == StatementClass::Ddl {
            for f in &user {
                if !self.function_clean(f, 0).await || self.function_sends_sideways(f, 0).await {
                    return Some(format!(
                        "masker: statement refused: it installs {f}() to run later (a trigger, rule, default, check, \
                         index or view), and its body reads \
                         masked data, sends values to another channel or cannot be seen by masker (rule: code masker \
                         cannot see may not run in masked sessions)"
                    ));
                }
            }
            return None;
        }
        let reads = self.taint(stmt).await?;
        for f in &user {
            if self.function_sends_sideways(f, 0).await {
                return Some(format!(
                    "masker: statement refused: it reads {reads} and calls {f}(), whose body may send values to a \
                     channel other than the masked rows or cannot be seen by masker (rule: values derived from masked \
                     columns may not leave through channels other than the masked rows)"
                ));
            }
        }
        None
    }

    /// Whether the statement calls a user-defined function that is not
    /// clean (see [`Resolver::function_clean`]); when the catalog cannot
    /// tell, it counts as one (fail closed).
    async fn calls_unclean_function(&self, stmt: &Statement, depth: usize) -> bool {
        if stmt.functions.is_empty() {
            return false;
        }
        let Ok(user) =
            self.plan.catalog.user_functions(&self.plan.destination, &self.plan.database, &stmt.functions).await
        else {
            return true;
        };
        for f in &user {
            if !self.function_clean(f, depth).await {
                return true;
            }
        }
        false
    }

    async fn decide(&self, l: &Lineage, stmt: &Statement, taint: &Taint) -> Decision {
        self.decide_why(l, stmt, taint).await.0
    }

    /// The decision for an output column of lineage `l` and why: the one
    /// place a column's decision is made (`masker explain` shows the why).
    async fn decide_why(&self, l: &Lineage, stmt: &Statement, taint: &Taint) -> (Decision, Why) {
        match l.how {
            // Literals, parameters, counts: the client's own values.
            How::Constant | How::Aggregate { reveals: false } => {
                return (Decision::Force(ColumnAction::Allow), Why::of(Reason::Constant));
            }
            How::Unknown => {
                return if taint.is_some() || l.sources.contains(&Source::Opaque) {
                    (Decision::Force(ColumnAction::Redact), Why::of(Reason::Untraced))
                } else {
                    (Decision::Force(ColumnAction::Allow), Why::of(Reason::UntracedClean))
                };
            }
            _ => {}
        }
        if l.how != How::Direct && self.calls_unclean_function(stmt, 0).await {
            return (Decision::Force(ColumnAction::Redact), Why::of(Reason::UncleanFunction));
        }
        let (bases, direct) = self.bases(l, 0).await;
        if direct && let Some(b) = bases.columns.iter().next() {
            return (Decision::Direct(self.action(b)), Why { reason: Reason::Exact, bases });
        }
        if bases.unknown {
            return (Decision::Force(ColumnAction::Redact), Why { reason: Reason::ComputedUnknown, bases });
        }
        if bases.columns.iter().any(|b| self.classified(b)) {
            return (Decision::Force(ColumnAction::Redact), Why { reason: Reason::ComputedClassified, bases });
        }
        if bases.columns.iter().any(|b| self.action(b) != ColumnAction::Allow) {
            // Computed from columns no rule classifies.
            let action = self.plan.policy.unclassified_action();
            return (Decision::Force(action), Why { reason: Reason::ComputedUnclassified, bases });
        }
        (Decision::Force(ColumnAction::Allow), Why { reason: Reason::ComputedAllowed, bases })
    }

    /// One decision per result column of statement `index` of `sql`, or a
    /// decision for every column when they cannot be matched to the
    /// statement's output (failing closed when the statement is tainted).
    pub async fn decisions(&self, sql: &str, index: usize, columns: usize) -> Vec<Decision> {
        let analysis = sql::analyze(sql);
        let stmt = match analysis.as_ref() {
            Ok(a) => a.statements.get(index),
            Err(_) => None,
        };
        let Some(stmt) = stmt else {
            return vec![Decision::Direct(ColumnAction::Redact); columns];
        };
        self.decisions_for(stmt, columns).await
    }

    /// The type of each output column of `stmt` that is exactly a table
    /// column (a masked value must stay valid for it); `None` for the
    /// others, or when the output cannot be matched to `columns`.
    pub async fn output_types(&self, stmt: &Statement, columns: usize) -> Vec<Option<crate::wire::TypeOid>> {
        let mut out = Vec::with_capacity(columns);
        for o in stmt.output.iter().flatten() {
            match o {
                Output::Column { lineage, .. } => out.push(self.column_type(lineage).await),
                Output::Star(r) => match self.relation(r).await {
                    Some(Found::Catalog(rel)) => out.extend(rel.types.iter().map(|t| Some(*t))),
                    _ => return vec![None; columns],
                },
                Output::Unknown => return vec![None; columns],
            }
        }
        if out.len() != columns {
            return vec![None; columns];
        }
        out
    }

    /// The type of a value that is exactly one table column.
    async fn column_type(&self, l: &Lineage) -> Option<crate::wire::TypeOid> {
        if l.how != How::Direct || l.sources.len() != 1 {
            return None;
        }
        let Some(Source::Column { relation, column }) = l.sources.iter().next() else { return None };
        match self.relation(relation).await? {
            Found::Catalog(rel) if rel.definition.is_none() => {
                let i = rel.columns.iter().position(|(c, _)| c == column)?;
                rel.types.get(i).copied()
            }
            _ => None,
        }
    }

    /// See [`Resolver::decisions`].
    pub async fn decisions_for(&self, stmt: &Statement, columns: usize) -> Vec<Decision> {
        self.decisions_why(stmt, columns).await.into_iter().map(|(d, _)| d).collect()
    }

    /// [`Resolver::decisions_for`], each decision with why it was made.
    pub(super) fn decisions_why<'s>(&'s self, stmt: &'s Statement, columns: usize) -> Boxed<'s, Vec<(Decision, Why)>> {
        Box::pin(async move {
            if let Some(stood) = self.stands_for(stmt) {
                return match stood {
                    StoodFor::Stored(inner) => self.decisions_why(&inner, columns).await,
                    StoodFor::Missing => (0..columns)
                        .map(|_| (Decision::Direct(ColumnAction::Redact), Why::of(Reason::UnknownStored)))
                        .collect(),
                };
            }
            let taint = self.taint(stmt).await;
            let fallback = |tainted: bool, reason: Reason| {
                let action = if tainted { ColumnAction::Redact } else { ColumnAction::Allow };
                (0..columns).map(|_| (Decision::Force(action.clone()), Why::of(reason))).collect::<Vec<_>>()
            };
            let Some(outs) = &stmt.output else {
                if stmt.class == StatementClass::Explain && taint.is_some() {
                    // The plan quotes filters on masked columns (the query's and
                    // its views'): the literals against them go, the plan stays.
                    let action = if stmt.explain_text {
                        ColumnAction::Definition(self.plan.policy.classified_names())
                    } else {
                        ColumnAction::Redact
                    };
                    return (0..columns)
                        .map(|_| (Decision::Force(action.clone()), Why::of(Reason::ExplainPlan)))
                        .collect();
                }
                // Rows from a statement without traced output (SHOW, EXPLAIN,
                // a procedure's OUT arguments): as clean as what it reads
                // (for CALL: as clean as the procedure's body).
                let safe =
                    matches!(stmt.class, StatementClass::Config | StatementClass::Explain | StatementClass::Procedural);
                return fallback(!safe || taint.is_some(), Reason::Untracked);
            };
            let mut decisions = Vec::with_capacity(columns);
            for o in outs {
                match o {
                    Output::Column { lineage, .. } => decisions.push(self.decide_why(lineage, stmt, &taint).await),
                    Output::Star(r) => {
                        let Some(found) = self.relation(r).await else {
                            return fallback(true, Reason::Unmatched);
                        };
                        let Some(names) = self.column_names(&found, 0).await else {
                            return fallback(taint.is_some(), Reason::Unmatched);
                        };
                        for c in names {
                            let l = Lineage {
                                how: How::Direct,
                                sources: [Source::Column { relation: r.clone(), column: c }].into(),
                            };
                            decisions.push(self.decide_why(&l, stmt, &taint).await);
                        }
                    }
                    Output::Unknown => return fallback(taint.is_some(), Reason::Unmatched),
                }
            }
            if decisions.len() != columns {
                return fallback(taint.is_some(), Reason::Unmatched);
            }
            decisions
        })
    }

    /// The action and type of each column a `COPY relation [(columns)] TO
    /// STDOUT` sends, in order; `None` when the relation or a column cannot
    /// be resolved.
    pub async fn copy_columns(
        &self,
        relation: &RelName,
        columns: Option<&[String]>,
    ) -> Option<Vec<(ColumnAction, crate::wire::TypeOid)>> {
        let found = self.relation(relation).await?;
        let names = self.column_names(&found, 0).await?;
        let types: Vec<crate::wire::TypeOid> = match &found {
            Found::Catalog(rel) => rel.types.clone(),
            // The session's own table: allowed, so its types do not matter.
            Found::Session { .. } => vec![crate::wire::TypeOid(0); names.len()],
        };
        let selected: Vec<usize> = match columns {
            None => (0..names.len()).collect(),
            Some(list) => list.iter().map(|c| names.iter().position(|n| n == c)).collect::<Option<_>>()?,
        };
        let mut out = Vec::with_capacity(selected.len());
        for i in selected {
            let l = Lineage {
                how: How::Direct,
                sources: [Source::Column { relation: relation.clone(), column: names[i].clone() }].into(),
            };
            let action = match self.decide(&l, &Statement::empty_copy(), &None).await {
                Decision::Direct(a) | Decision::Force(a) => a,
            };
            out.push((action, types.get(i).copied().unwrap_or(crate::wire::TypeOid(0))));
        }
        Some(out)
    }

    /// Under `defaults.refuse_inference`: why the statement may not test
    /// values as it does, naming the first masked column it tests (`WHERE
    /// ssn LIKE '1%'` with a count reveals digits one by one; so does an
    /// error raised only when a CASE on it holds). Equality with a constant
    /// on a pseudonymized column stays allowed: it tells no more than a join
    /// on the pseudonym does.
    async fn inference(&self, stmt: &Statement) -> Option<String> {
        for cond in &stmt.filters {
            let (bases, _) = self.bases(&cond.lineage, 0).await;
            if bases.unknown {
                if self.taint(stmt).await.is_some() {
                    return Some(
                        "masker: testing values of an expression the agent cannot trace is refused (rule: \
                         defaults.refuse_inference; the statement reads masked columns)"
                            .into(),
                    );
                }
                continue;
            }
            for b in &bases.columns {
                // Whether the catalog holds a parse tree or stored value at
                // all (a partial index, a default) is no value: ORMs ask
                // `CASE WHEN indpred IS NOT NULL THEN pg_get_expr(...)`.
                if !self.classified(b) || (cond.nullness && b.origin == Origin::CatalogValue) {
                    continue;
                }
                let allowed = match self.action(b) {
                    ColumnAction::Allow | ColumnAction::Detect => true,
                    ColumnAction::Pseudonymize { .. } => cond.equality,
                    _ => false,
                };
                if !allowed {
                    let rule = match b.origin {
                        Origin::Policy => {
                            self.plan.policy.rule_name(&b.schema, &b.table, &b.column, b.comment.as_deref())
                        }
                        _ => "catalog text that can embed values".into(),
                    };
                    return Some(format!(
                        "masker: filtering, grouping, ordering or testing on {} is refused ({rule} masks it and \
                         defaults.refuse_inference is on: a test on a masked column reveals its values); test \
                         unmasked columns instead",
                        b.named()
                    ));
                }
            }
        }
        None
    }

    /// Why the statements of `sql` must be refused, if they must, and by
    /// which kind of rule (`guardrail` or `lineage`): the message names the
    /// statement, relation or column and the rule, never a value. Later
    /// statements of `sql` are checked as if the earlier ones had run
    /// (`model` is the session as it will be).
    pub async fn refusal(&self, sql: &str) -> Option<(&'static str, String)> {
        let analysis = sql::analyze(sql);
        let analysis = analysis.as_ref().as_ref().ok()?;
        let mut model = self.session.clone();
        for stmt in &analysis.statements {
            let r = Resolver { plan: self.plan, session: &model };
            if let Some(g) = self.plan.policy.guardrails() {
                let relations = r.resolved_relations(stmt).await;
                let resolved: Vec<Resolved<'_>> =
                    relations.iter().map(|(schema, name)| Resolved { schema: schema.as_deref(), name }).collect();
                if let Some(message) = guardrails::violation(g, stmt, &resolved) {
                    return Some(("guardrail", message));
                }
            }
            if let Some(m) = r.lineage_refusal(stmt).await {
                return Some(("lineage", m));
            }
            model.apply(stmt);
        }
        None
    }

    /// Looks up the relations a statement text names (from its `analysis`;
    /// each from the cache, else the catalog) before it runs, so that a
    /// catalog that does not answer is known before the statement is sent
    /// ([`Catalog::failed_since`]) rather than when its result arrives.
    /// Stops at the first failed look-up.
    ///
    /// [`Catalog::failed_since`]: crate::plan::catalog::Catalog::failed_since
    pub async fn prefetch(&self, analysis: &Result<sql::Analysis, sql::SqlError>) {
        let Ok(analysis) = analysis else { return };
        let mark = self.plan.catalog.failure_mark();
        for r in analysis.statements.iter().flat_map(|s| &s.relations) {
            self.relation(r).await;
            if self.plan.catalog.failed_since(mark, &self.plan.destination, &self.plan.database).is_some() {
                return;
            }
        }
    }

    /// The relations of `stmt` as the catalog resolves them (`schema`,
    /// `name`), or as written when it cannot.
    async fn resolved_relations(&self, stmt: &Statement) -> Vec<(Option<String>, String)> {
        let mut out = Vec::with_capacity(stmt.relations.len());
        for r in &stmt.relations {
            out.push(match self.relation(r).await {
                Some(f) => (Some(f.schema()), f.name()),
                None => (r.schema.clone(), r.name.clone()),
            });
        }
        out
    }

    /// The `[[approval]]` rule that holds `sql` until an operator decides, if
    /// one does: the first rule whose every condition holds for one of its
    /// statements. Text that does not parse is not held (it will not run).
    pub async fn approval(&self, sql: &str) -> Option<Arc<ApprovalRule>> {
        let rules = self.plan.policy.approvals();
        if rules.is_empty() {
            return None;
        }
        let analysis = sql::analyze(sql);
        let analysis = analysis.as_ref().as_ref().ok()?;
        for stmt in &analysis.statements {
            let relations = match rules.iter().any(|r| !r.tables.is_empty()) {
                true => self.resolved_relations(stmt).await,
                false => Vec::new(),
            };
            let columns = match rules.iter().any(|r| !r.columns.is_empty()) {
                true => self.read_columns(stmt).await,
                false => BTreeSet::new(),
            };
            let held = rules.iter().find(|rule| {
                (rule.classes.is_empty() || rule.classes.contains(&stmt.class))
                    && (rule.tables.is_empty()
                        || relations.iter().any(|(s, n)| rule.tables.iter().any(|t| t.matches(s.as_deref(), n))))
                    && (rule.columns.is_empty()
                        || columns.iter().any(|(s, t, c)| {
                            rule.columns.iter().any(|[gs, gt, gc]| gs.matches(s) && gt.matches(t) && gc.matches(c))
                        }))
            });
            if let Some(rule) = held {
                return Some(rule.clone());
            }
        }
        None
    }

    /// The base columns that the output of `stmt`, or the data it moves,
    /// shows or is derived from.
    async fn read_columns(&self, stmt: &Statement) -> BTreeSet<(String, String, String)> {
        let mut lineages: Vec<Lineage> = Vec::new();
        for o in stmt.output.iter().flatten() {
            match o {
                Output::Column { lineage, .. } => lineages.push(lineage.clone()),
                Output::Star(rel) => {
                    lineages.push(Lineage { how: How::WholeRow, sources: [Source::AllColumns(rel.clone())].into() })
                }
                Output::Unknown => {}
            }
        }
        lineages.extend(stmt.moves.iter().cloned());
        let mut out = BTreeSet::new();
        for l in &lineages {
            let (bases, _) = self.bases(l, 0).await;
            out.extend(bases.columns.into_iter().map(|b| (b.schema, b.table, b.column)));
        }
        out
    }

    /// The lineage refusals of one statement: refused catalog views,
    /// inference, data moved out of sight, values flowing into side
    /// channels — for the statement and every statement of its `DO` body.
    fn lineage_refusal<'s>(&'s self, stmt: &'s Statement) -> Boxed<'s, Option<String>> {
        Box::pin(async move {
            for r in &stmt.relations {
                let catalog_schema = r.schema.as_deref().is_none_or(|s| s == "pg_catalog" || s == "public");
                if catalog_schema && REFUSED_RELATIONS.contains(&r.name.to_ascii_lowercase().as_str()) {
                    return Some(format!(
                        "masker: reading {r} is refused for masked sessions (rule: catalog views that expose \
                         sampled column values or other sessions' statements); query the tables themselves"
                    ));
                }
            }
            for f in &stmt.functions {
                let base = f.rsplit('.').next().unwrap_or(f);
                if REFUSED_FUNCTIONS.contains(&base) {
                    return Some(format!(
                        "masker: calling {f}() is refused for masked sessions (rule: catalog functions that \
                         expose other sessions' statements)"
                    ));
                }
            }
            if self.plan.policy.refuses_inference()
                && let Some(message) = self.inference(stmt).await
            {
                return Some(message);
            }
            if let Some(Err(why)) = &stmt.copy {
                return Some(format!(
                    "masker: COPY refused: {why} (rule: COPY output is masked only in the forms masker can parse \
                     and re-emit)"
                ));
            }
            if let Some(m) = self.move_refusal(stmt).await {
                return Some(m);
            }
            if let Some(m) = self.sink_refusal(stmt).await {
                return Some(m);
            }
            if let Some(m) = self.function_refusal(stmt).await {
                return Some(m);
            }
            if let Some(body) = &stmt.body {
                if body.dynamic {
                    return Some(
                        "masker: DO block refused: it runs SQL built at run time (EXECUTE of a text that is not a \
                         constant), which masker cannot analyse (rule: code masker cannot see may not run in masked \
                         sessions); run the statements themselves"
                            .into(),
                    );
                }
                for inner in &body.statements {
                    if let Some(m) = self.move_refusal(inner).await {
                        return Some(m);
                    }
                }
            }
            None
        })
    }

    /// Statements that would copy masked data where masking cannot follow.
    async fn move_refusal(&self, stmt: &Statement) -> Option<String> {
        let what = match stmt.class {
            StatementClass::CreateTableAs => "CREATE TABLE AS / SELECT INTO",
            StatementClass::Insert => "INSERT ... SELECT",
            StatementClass::Update => "UPDATE ... SET",
            StatementClass::Merge => "MERGE",
            StatementClass::Copy => "COPY (query)",
            _ if stmt.moves.is_some() => "a data-modifying WITH",
            _ => return None,
        };
        let moves = stmt.moves.as_ref()?;
        if moves.how == How::Constant || matches!(moves.how, How::Aggregate { reveals: false }) {
            return None;
        }
        if stmt.class == StatementClass::Copy {
            // COPY (query) TO STDOUT is masked per output column; only a
            // COPY TO a file or program would move data out of sight, and
            // those need server privileges masker does not pass through.
            return None;
        }
        let masked = if moves.how == How::Unknown {
            self.taint(stmt).await.map(|_| "a column the agent cannot trace".to_string())
        } else {
            let (bases, _) = self.bases(moves, 0).await;
            self.first_masked(&bases)
        };
        masked.map(|column| {
            format!(
                "masker: {what} refused: it would copy {column} (rule: data derived from masked columns may not be \
                 stored or exported where masking cannot follow it); select the masked columns instead, or leave \
                 them out"
            )
        })
    }

    /// A value derived from a masked column flowing into a notification, a
    /// setting, an advisory lock, a large object, a sequence, a RAISE or
    /// dynamic SQL: refused before it runs.
    async fn sink_refusal(&self, stmt: &Statement) -> Option<String> {
        for sink in &stmt.sinks {
            if let Some(m) = self.sink_refused(stmt, sink).await {
                return Some(m);
            }
        }
        None
    }

    /// Why `sink` of `stmt` makes the statement refused, if it does.
    pub(super) async fn sink_refused(&self, stmt: &Statement, sink: &crate::sql::Sink) -> Option<String> {
        if sink.lineage.how == How::Constant || matches!(sink.lineage.how, How::Aggregate { reveals: false }) {
            return None;
        }
        let (bases, _) = self.bases(&sink.lineage, 0).await;
        let column = if bases.unknown {
            self.taint(stmt).await.map(|_| "a value the agent cannot trace".to_string())
        } else {
            bases.columns.iter().find(|b| self.action(b) != ColumnAction::Allow).map(Base::named)
        };
        column.map(|column| {
            format!(
                "masker: statement refused: {column} would flow into {} through {} (rule: values derived from \
                 masked columns may not leave through channels other than the masked rows)",
                sink.kind.describe(),
                sink.function
            )
        })
    }

    /// Why the data `stmt` moves makes it refused, if it does.
    pub(super) async fn move_refused(&self, stmt: &Statement) -> Option<String> {
        self.move_refusal(stmt).await
    }
}

/// What `masker explain` reads of the resolver, beyond the decisions.
impl Resolver<'_> {
    /// The base columns `l` derives from (views followed).
    pub(super) async fn lineage_bases(&self, l: &Lineage) -> Bases {
        self.bases(l, 0).await.0
    }

    /// The base columns of `bases` as `masker explain` shows them: the
    /// column, where its action comes from, the action, the rule that
    /// decides it and whether it is classified.
    pub(super) fn describe_bases(&self, bases: &Bases) -> Vec<super::reasons::BaseColumn> {
        bases
            .columns
            .iter()
            .map(|b| {
                let (origin, rule) = match b.origin {
                    Origin::Policy => {
                        ("table", self.plan.policy.rule_name(&b.schema, &b.table, &b.column, b.comment.as_deref()))
                    }
                    Origin::Catalog => ("catalog", "catalog columns pass".to_string()),
                    Origin::Definition => (
                        "catalog definition",
                        "catalog text written by people: literals against classified columns replaced".to_string(),
                    ),
                    Origin::CatalogValue => {
                        ("catalog value", "catalog parse trees and stored values are masked".to_string())
                    }
                    Origin::ClientData => {
                        ("session data", "a temporary table the session filled itself with clean data".to_string())
                    }
                };
                super::reasons::BaseColumn {
                    column: b.named(),
                    origin,
                    action: super::reasons::ActionText::of(&self.action(b)),
                    rule,
                    classified: self.classified(b),
                }
            })
            .collect()
    }

    /// The names of the columns `stmt` returns, in order, as far as the
    /// statement and the catalog tell (`None`: they cannot be listed; `Some`
    /// of an empty list: no rows).
    pub(super) fn output_names<'s>(&'s self, stmt: &'s Statement) -> Boxed<'s, Option<Vec<String>>> {
        Box::pin(async move {
            match self.stands_for(stmt) {
                Some(StoodFor::Stored(inner)) => return self.output_names(&inner).await,
                Some(StoodFor::Missing) => return None,
                None => {}
            }
            let Some(outs) = &stmt.output else {
                return match stmt.class {
                    StatementClass::Config | StatementClass::Explain => None,
                    _ => Some(Vec::new()),
                };
            };
            let mut names = Vec::with_capacity(outs.len());
            for o in outs {
                match o {
                    Output::Column { name, .. } => names.push(name.clone()),
                    Output::Star(r) => {
                        let found = self.relation(r).await?;
                        names.extend(self.column_names(&found, 0).await?);
                    }
                    Output::Unknown => return None,
                }
            }
            Some(names)
        })
    }

    /// The schemas the session searches unqualified names in, in order
    /// (`None`: unknown).
    pub(super) async fn schemas_searched(&self) -> Option<Vec<String>> {
        self.search_path().await
    }
}

/// A column of a found relation.
enum ColumnOf {
    /// The relation has no such column.
    Missing,
    /// The relation is known but its column cannot be followed.
    Unknown,
    Base(Base),
    /// A view's (or query-built table's) column: follow this lineage.
    Derived(Lineage),
}

/// A system column of a table `found` (see [`SYSTEM_COLUMNS`]): it passes
/// like a catalog column. Any other name is missing.
fn system_column(found: &Found, column: &str) -> ColumnOf {
    if !SYSTEM_COLUMNS.contains(&column) {
        return ColumnOf::Missing;
    }
    ColumnOf::Base(Base {
        schema: found.schema(),
        table: found.name(),
        column: column.to_string(),
        comment: None,
        origin: Origin::Catalog,
    })
}

/// What `EXECUTE`/`FETCH` stand for.
enum StoodFor {
    Stored(Arc<Statement>),
    /// The prepared statement or cursor is unknown to the session model.
    Missing,
}

/// How every refusal statement starts (and a client's own code never does
/// unless it imitates one, which gains it nothing: its messages are then
/// treated like any other).
pub const REFUSAL_PREFIX: &str = "DO $masker$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '";

/// The HINT of every refusal: where to see why.
pub const REFUSAL_HINT: &str = "masker explain shows how masker decides a statement for an identity, column by column \
     (on the masker host: masker explain --identity IDENTITY --target HOST:PORT --database DB --user USER STATEMENT)";

/// The functions of PostgreSQL 15's `pg_catalog`, one name a line (from
/// `SELECT DISTINCT proname FROM pg_proc` of a fresh cluster).
const BUILTIN_FUNCTIONS: &str = include_str!("builtin_functions.txt");

/// Whether `name` (as a statement names it: `name` or `schema.name`, lower
/// case) is a function PostgreSQL ships: what counts as built in when the
/// catalog cannot be asked.
pub(crate) fn builtin_function(name: &str) -> bool {
    static NAMES: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    !name.contains('.') && NAMES.get_or_init(|| BUILTIN_FUNCTIONS.lines().collect()).contains(name)
}

/// A statement that makes the server itself answer with our refusal, as an
/// ordinary error in the statement's place: the transaction aborts exactly
/// as for any error and the session stays usable. Its HINT points to
/// `masker explain`.
pub fn refusal_statement(message: &str) -> String {
    let quoted = refusal_text(message).replace('\'', "''");
    format!("{REFUSAL_PREFIX}{quoted}', HINT = '{REFUSAL_HINT}'; END $masker$")
}

/// The message of a refusal as the client reads it: `$` could close the
/// dollar quote of [`refusal_statement`] (relation names come from the
/// client), so it is left out whichever way the refusal is delivered.
fn refusal_text(message: &str) -> String {
    message.replace('$', "")
}

/// What follows [`refusal_statement`] in [`refused_parse_statement`]: a
/// word the grammar does not allow after a `DO` block.
const REFUSED_AT_PARSE: &str = " masker_refused";

/// The text that takes a refused statement's place in a `Parse`: the
/// server's parser rejects it (a syntax error) before it looks at anything
/// else, parameter types included, so the Parse fails as a Parse can, no
/// statement is stored under its name and the server skips the rest of the
/// batch up to Sync. The agent answers the client with
/// [`put_refusal_error`] in the syntax error's place (the relay knows which
/// Parse it was; the text only makes the server's log readable).
pub fn refused_parse_statement(message: &str) -> String {
    format!("{}{REFUSED_AT_PARSE}", refusal_statement(message))
}

/// Appends the ErrorResponse a refusal reaches the client as: severity
/// ERROR, SQLSTATE 42501, the refusal's message and [`REFUSAL_HINT`], and
/// nothing about how it was delivered. The same fields, in the same order,
/// as what is left of the server's answer to [`refusal_statement`] once
/// the fields of the `DO` block that raised it are dropped (see
/// [`refusal_fields`]).
pub fn put_refusal_error(out: &mut bytes::BytesMut, message: &str) {
    crate::wire::put_error_with_hint(
        out,
        crate::wire::Severity::Error,
        "42501",
        &refusal_text(message),
        Some(REFUSAL_HINT),
    );
}

/// The fields of the server's answer to a refusal statement the client
/// gets: severity, SQLSTATE, message, detail and hint; not the context,
/// internal query or source location of the `DO` block that raised it.
pub fn refusal_fields(kind: u8) -> bool {
    matches!(kind, b'S' | b'V' | b'C' | b'M' | b'D' | b'H')
}

/// Whether `sql` is one of the agent's own refusal statements.
pub fn is_refusal(sql: &str) -> bool {
    sql.starts_with(REFUSAL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::TargetAddr;
    use crate::plan::catalog::Catalog;
    use crate::policy::Policy;

    fn relation(schema: &str, name: &str, kind: char, columns: &[&str]) -> Found {
        Found::Catalog(Arc::new(Relation {
            schema: schema.into(),
            name: name.into(),
            kind,
            columns: columns.iter().map(|c| (c.to_string(), None)).collect(),
            types: columns.iter().map(|_| crate::wire::TypeOid(25)).collect(),
            definition: (kind == 'v').then(|| "SELECT 1".into()),
        }))
    }

    /// `tableoid`, `ctid`, `xmin` ... of a table pass like catalog columns
    /// (pg_dump reads `tableoid` of every catalog it lists), even of a
    /// table whose every column is masked; views and unknown names have
    /// none.
    #[tokio::test]
    async fn system_columns_of_tables_pass() {
        let policy = Policy::parse(
            "version = 1\n[defaults]\naction = \"redact\"\nrefuse_inference = true\n\n\
             [[rule]]\nname = \"all\"\ncolumns = [\"public.customers.*\"]\naction = \"redact\"\n",
            "test.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = PlanContext {
            policy: policy.for_session("ci", None, "db:5432"),
            catalog: Arc::new(Catalog::new(None)),
            destination: TargetAddr::parse("db:5432").unwrap_or_else(|e| panic!("{e}")),
            database: "shop".into(),
            user: "app".into(),
        };
        let session = SessionModel::default();
        let r = plan.resolver(&session);
        let customers = relation("public", "customers", 'r', &["id", "email"]);
        let extension = relation("pg_catalog", "pg_extension", 'r', &["oid", "extname"]);
        let contacts = relation("public", "customer_contacts", 'v', &["email"]);
        for (found, column) in
            [(&customers, "tableoid"), (&customers, "ctid"), (&customers, "xmin"), (&extension, "tableoid")]
        {
            match r.column(found, column, 0).await {
                ColumnOf::Base(b) => {
                    assert_eq!(r.action(&b), ColumnAction::Allow, "{column}");
                    assert!(!r.classified(&b), "{column}");
                }
                _ => panic!("{column} of {} is no base column", found.name()),
            }
        }
        match r.column(&customers, "email", 0).await {
            ColumnOf::Base(b) => assert_ne!(r.action(&b), ColumnAction::Allow),
            _ => panic!("email is no base column"),
        }
        assert!(matches!(r.column(&customers, "no_such", 0).await, ColumnOf::Missing));
        assert!(matches!(r.column(&contacts, "ctid", 0).await, ColumnOf::Missing));
    }

    #[test]
    fn builtin_functions_are_known_without_a_catalog() {
        for f in ["count", "upper", "pg_catalog.upper", "pg_notify", "jsonb_build_object"] {
            assert!(builtin_function(f), "{f}");
        }
        for f in ["public.count", "myschema.upper", "evil", "pg_temp.f"] {
            assert!(!builtin_function(f), "{f}");
        }
    }

    #[test]
    fn refusal_statement_quotes_and_parses() {
        let sql = refusal_statement("it's refused: $masker$ x");
        assert!(sql.contains("it''s refused: masker x"));
        assert!(crate::sql::analyze_uncached(&sql).is_ok());
        let clean = refusal_statement("column public.customers.ssn (rule: x)");
        assert!(crate::sql::analyze_uncached(&clean).is_ok());
        assert!(is_refusal(&clean));
    }

    /// The Parse text of a refusal fails in the parser (pg_query is the
    /// server's own), with no parameter reference to type, and the error
    /// the client gets instead is masker's: 42501, message, hint, nothing
    /// else.
    #[test]
    fn refused_parse_fails_in_the_parser_and_answers_with_the_refusal() {
        let sql = refused_parse_statement("masker: statement refused: it's $1 $masker$ x");
        assert!(is_refusal(&sql));
        assert!(crate::sql::analyze_uncached(&sql).is_err(), "{sql}");
        assert!(!sql.contains("$1"), "{sql}");
        let mut out = bytes::BytesMut::new();
        put_refusal_error(&mut out, "masker: statement refused: it's $1 $masker$ x");
        let header = crate::wire::peek_header(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(header.total_len, out.len());
        let body = String::from_utf8_lossy(&out[5..]).to_string();
        assert_eq!(
            body,
            format!("SERROR\0VERROR\0C42501\0Mmasker: statement refused: it's 1 masker x\0H{REFUSAL_HINT}\0\0")
        );
        assert!(refusal_fields(b'M') && refusal_fields(b'H') && !refusal_fields(b'W') && !refusal_fields(b'F'));
    }
}
