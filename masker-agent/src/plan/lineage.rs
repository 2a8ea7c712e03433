//! SQL lineage in a session: turning the [`crate::sql`] analysis of a
//! statement into one masking decision per result column, and refusing the
//! statements that would move personal data out of the policy's sight.
//!
//! Relation names are resolved with the agent's catalog connection
//! (`to_regclass` on *its* search path, not the client's: a client that sets
//! its own `search_path`, or reads its temporary tables, names relations the
//! agent cannot see; those count as unknown and fail closed). Views are
//! followed through `pg_get_viewdef`, up to [`VIEW_DEPTH`] levels.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::PlanContext;
use super::catalog::Relation;
use crate::masking::ColumnAction;
use crate::policy::approval::ApprovalRule;
use crate::policy::guardrails::{self, Resolved};
use crate::sql::{self, How, Lineage, Output, RelName, Source, Statement, StatementClass};

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

/// The decision for one result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Exactly one base table column: the `RowDescription` origin decides
    /// when it names one; otherwise (a cast) this action.
    Direct(ColumnAction),
    /// This action, whatever the origin says.
    Force(ColumnAction),
}

/// A base column reached by following sources, or the fact that one could
/// not be followed.
#[derive(Debug, Default)]
struct Bases {
    columns: BTreeSet<(String, String, String, Option<String>)>,
    unknown: bool,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl PlanContext {
    async fn relation(&self, rel: &RelName) -> Option<Arc<Relation>> {
        self.catalog.relation(&self.destination, &self.database, rel).await.ok().flatten()
    }

    /// The lineage of each column of a view (`None` when not traceable).
    fn view_columns<'s>(&'s self, rel: Arc<Relation>, depth: usize) -> Boxed<'s, Option<Vec<Lineage>>> {
        Box::pin(async move {
            let def = rel.definition.as_deref()?;
            if depth >= VIEW_DEPTH {
                return None;
            }
            let analysis = sql::analyze(def);
            let stmt = analysis.as_ref().as_ref().ok()?.statements.first()?.clone();
            let outs = stmt.output?;
            let mut cols = Vec::new();
            for o in outs {
                match o {
                    Output::Column { lineage, .. } => cols.push(lineage),
                    Output::Star(r) => {
                        let inner = self.relation(&r).await?;
                        for (c, _) in &inner.columns {
                            cols.push(Lineage {
                                how: How::Direct,
                                sources: [Source::Column { relation: r.clone(), column: c.clone() }].into(),
                            });
                        }
                    }
                    Output::Unknown => return None,
                }
            }
            (cols.len() == rel.columns.len()).then_some(cols)
        })
    }

    /// Follows `l` to base table columns. Returns the bases and whether the
    /// value is still exactly one column.
    fn bases<'s>(&'s self, l: &'s Lineage, depth: usize) -> Boxed<'s, (Bases, bool)> {
        Box::pin(async move {
            let mut out = Bases::default();
            let mut direct = l.how == How::Direct;
            if l.how == How::Unknown {
                out.unknown = true;
            }
            let mut found_direct = 0;
            for s in &l.sources {
                match s {
                    Source::Opaque => out.unknown = true,
                    Source::Column { relation, column } => {
                        let Some(rel) = self.relation(relation).await else {
                            out.unknown = true;
                            continue;
                        };
                        let Some(i) = rel.columns.iter().position(|(c, _)| c == column) else {
                            // A candidate that does not exist (ambiguous names).
                            continue;
                        };
                        found_direct += 1;
                        if rel.definition.is_some() {
                            match self.view_columns(rel.clone(), depth + 1).await {
                                Some(cols) => {
                                    let (b, d) = self.bases(&cols[i], depth + 1).await;
                                    direct &= d;
                                    out.unknown |= b.unknown;
                                    out.columns.extend(b.columns);
                                }
                                None => out.unknown = true,
                            }
                        } else {
                            let (name, comment) = &rel.columns[i];
                            out.columns.insert((rel.schema.clone(), rel.name.clone(), name.clone(), comment.clone()));
                        }
                    }
                    Source::AllColumns(relation) => {
                        direct = false;
                        let Some(rel) = self.relation(relation).await else {
                            out.unknown = true;
                            continue;
                        };
                        if rel.definition.is_some() {
                            match self.view_columns(rel.clone(), depth + 1).await {
                                Some(cols) => {
                                    for c in &cols {
                                        let (b, _) = self.bases(c, depth + 1).await;
                                        out.unknown |= b.unknown;
                                        out.columns.extend(b.columns);
                                    }
                                }
                                None => out.unknown = true,
                            }
                        } else {
                            for (name, comment) in &rel.columns {
                                out.columns.insert((
                                    rel.schema.clone(),
                                    rel.name.clone(),
                                    name.clone(),
                                    comment.clone(),
                                ));
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

    /// The first base column of `bases` whose action is not `allow`, as
    /// `schema.table.column`; `Some("an unknown column")` when unknown.
    fn first_masked(&self, bases: &Bases) -> Option<String> {
        if bases.unknown {
            return Some("a column the agent cannot trace".into());
        }
        bases.columns.iter().find_map(|(s, t, c, comment)| {
            (self.policy.column_action(s, t, c, comment.as_deref()) != ColumnAction::Allow)
                .then(|| format!("{s}.{t}.{c}"))
        })
    }

    /// Whether any column of the statement's relations is masked (or a
    /// relation is unknown): what an untraceable output could carry.
    async fn statement_sensitive(&self, stmt: &Statement) -> bool {
        for r in &stmt.relations {
            let l = Lineage { how: How::WholeRow, sources: [Source::AllColumns(r.clone())].into() };
            let (b, _) = self.bases(&l, 0).await;
            if self.first_masked(&b).is_some() {
                return true;
            }
        }
        false
    }

    /// Whether the statement calls a function defined outside `pg_catalog`:
    /// its body may read tables the statement does not name, so no output
    /// that is not exactly a column can be trusted. When the catalog cannot
    /// tell, it counts as one (fail closed).
    async fn calls_user_function(&self, stmt: &Statement) -> bool {
        if stmt.functions.is_empty() {
            return false;
        }
        self.catalog
            .user_functions(&self.destination, &self.database, &stmt.functions)
            .await
            .map_or(true, |user| !user.is_empty())
    }

    async fn decide(&self, l: &Lineage, stmt: &Statement) -> Decision {
        let unclassified = Decision::Force(self.policy.unclassified_action());
        if l.how != How::Direct && l.how != (How::Aggregate { reveals: false }) && self.calls_user_function(stmt).await
        {
            return Decision::Force(ColumnAction::Redact);
        }
        match l.how {
            How::Constant | How::Aggregate { reveals: false } => unclassified,
            How::Unknown => {
                // An opaque source (a user-defined function, XMLTABLE, ...)
                // may read tables the statement does not name: fail closed.
                if l.sources.contains(&Source::Opaque) || self.statement_sensitive(stmt).await {
                    Decision::Force(ColumnAction::Redact)
                } else {
                    unclassified
                }
            }
            _ => {
                let (bases, direct) = self.bases(l, 0).await;
                if direct && let Some((s, t, c, comment)) = bases.columns.iter().next() {
                    return Decision::Direct(self.policy.column_action(s, t, c, comment.as_deref()));
                }
                if self.first_masked(&bases).is_some() { Decision::Force(ColumnAction::Redact) } else { unclassified }
            }
        }
    }

    /// One decision per result column of statement `index` of `sql`, or
    /// `None` when the columns cannot be matched to the statement's output
    /// (the caller fails closed).
    pub async fn decisions(&self, sql: &str, index: usize, columns: usize) -> Vec<Decision> {
        let analysis = sql::analyze(sql);
        let stmt = match analysis.as_ref() {
            Ok(a) => a.statements.get(index),
            Err(_) => None,
        };
        let Some(stmt) = stmt else {
            return vec![Decision::Direct(ColumnAction::Redact); columns];
        };
        let fallback = |sensitive: bool| {
            let action = if sensitive { ColumnAction::Redact } else { self.policy.unclassified_action() };
            vec![Decision::Direct(action); columns]
        };
        let Some(outs) = &stmt.output else {
            // Rows from a statement without traced output: SHOW and EXPLAIN
            // carry no table data; FETCH, EXECUTE and the like may.
            let safe = matches!(stmt.class, StatementClass::Config | StatementClass::Explain);
            return fallback(!safe || self.statement_sensitive(stmt).await);
        };
        let mut decisions = Vec::with_capacity(columns);
        for o in outs {
            match o {
                Output::Column { lineage, .. } => decisions.push(self.decide(lineage, stmt).await),
                Output::Star(r) => {
                    let Some(rel) = self.relation(r).await else {
                        return fallback(true);
                    };
                    let cols = match rel.definition {
                        Some(_) => match self.view_columns(rel.clone(), 0).await {
                            Some(c) => c,
                            None => return fallback(true),
                        },
                        None => rel
                            .columns
                            .iter()
                            .map(|(c, _)| Lineage {
                                how: How::Direct,
                                sources: [Source::Column { relation: r.clone(), column: c.clone() }].into(),
                            })
                            .collect(),
                    };
                    for c in &cols {
                        decisions.push(self.decide(c, stmt).await);
                    }
                }
                Output::Unknown => {
                    let sensitive = self.statement_sensitive(stmt).await || self.calls_user_function(stmt).await;
                    return fallback(sensitive);
                }
            }
        }
        if decisions.len() != columns {
            let sensitive = self.statement_sensitive(stmt).await || self.calls_user_function(stmt).await;
            return fallback(sensitive);
        }
        decisions
    }

    /// Under `defaults.refuse_inference`: why the statement may not filter,
    /// group or order as it does, naming the first masked column it uses so
    /// (`WHERE ssn LIKE '1%'` with a count reveals digits one by one).
    /// Equality with a constant on a pseudonymized column stays allowed: it
    /// tells no more than a join on the pseudonym does.
    async fn inference(&self, stmt: &Statement) -> Option<String> {
        for (source, equality) in &stmt.filters {
            let l = Lineage { how: How::Direct, sources: [source.clone()].into() };
            let (bases, _) = self.bases(&l, 0).await;
            if bases.unknown {
                if self.statement_sensitive(stmt).await {
                    return Some(
                        "masker: filtering, grouping or ordering on an expression the agent cannot trace is refused \
                         (rule: defaults.refuse_inference; the statement reads masked columns)"
                            .into(),
                    );
                }
                continue;
            }
            for (s, t, c, comment) in &bases.columns {
                let allowed = match self.policy.column_action(s, t, c, comment.as_deref()) {
                    ColumnAction::Allow | ColumnAction::Detect => true,
                    ColumnAction::Pseudonymize { .. } => *equality,
                    _ => false,
                };
                if !allowed {
                    let rule = self.policy.rule_name(s, t, c, comment.as_deref());
                    return Some(format!(
                        "masker: filtering, grouping or ordering on {s}.{t}.{c} is refused ({rule} masks it and \
                         defaults.refuse_inference is on: a predicate on a masked column reveals its values); \
                         filter on unmasked columns instead"
                    ));
                }
            }
        }
        None
    }

    /// Why the statements of `sql` must be refused, if they must, and by
    /// which kind of rule (`guardrail` or `lineage`): the message names the
    /// statement, relation or column and the rule, never a value.
    pub async fn refusal(&self, sql: &str) -> Option<(&'static str, String)> {
        let analysis = sql::analyze(sql);
        let analysis = analysis.as_ref().as_ref().ok()?;
        if let Some(g) = self.policy.guardrails() {
            for stmt in &analysis.statements {
                let relations = self.resolved_relations(stmt).await;
                let resolved: Vec<Resolved<'_>> =
                    relations.iter().map(|(schema, name)| Resolved { schema: schema.as_deref(), name }).collect();
                if let Some(message) = guardrails::violation(g, stmt, &resolved) {
                    return Some(("guardrail", message));
                }
            }
        }
        self.lineage_refusal(analysis).await.map(|m| ("lineage", m))
    }

    /// The relations of `stmt` as the catalog resolves them (`schema`,
    /// `name`), or as written when it cannot.
    async fn resolved_relations(&self, stmt: &Statement) -> Vec<(Option<String>, String)> {
        let mut out = Vec::with_capacity(stmt.relations.len());
        for r in &stmt.relations {
            out.push(match self.relation(r).await {
                Some(rel) => (Some(rel.schema.clone()), rel.name.clone()),
                None => (r.schema.clone(), r.name.clone()),
            });
        }
        out
    }

    /// The `[[approval]]` rule that holds `sql` until an operator decides, if
    /// one does: the first rule whose every condition holds for one of its
    /// statements. Text that does not parse is not held (it will not run).
    pub async fn approval(&self, sql: &str) -> Option<Arc<ApprovalRule>> {
        let rules = self.policy.approvals();
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
            out.extend(bases.columns.into_iter().map(|(s, t, c, _)| (s, t, c)));
        }
        out
    }

    async fn lineage_refusal(&self, analysis: &sql::Analysis) -> Option<String> {
        for stmt in &analysis.statements {
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
            if self.policy.refuses_inference()
                && let Some(message) = self.inference(stmt).await
            {
                return Some(message);
            }
            let what = match stmt.class {
                StatementClass::CreateTableAs => "CREATE TABLE AS / SELECT INTO",
                StatementClass::Insert => "INSERT ... SELECT",
                StatementClass::Update => "UPDATE ... SET",
                StatementClass::Merge => "MERGE",
                StatementClass::Copy => "COPY (query)",
                _ => continue,
            };
            let Some(moves) = &stmt.moves else { continue };
            if moves.how == How::Constant || matches!(moves.how, How::Aggregate { reveals: false }) {
                continue;
            }
            let masked = if moves.how == How::Unknown {
                self.statement_sensitive(stmt).await.then(|| "a column the agent cannot trace".to_string())
            } else {
                let (bases, _) = self.bases(moves, 0).await;
                self.first_masked(&bases)
            };
            if let Some(column) = masked {
                return Some(format!(
                    "masker: {what} refused: it would copy {column} (rule: data derived from masked columns may \
                     not be stored or exported where masking cannot follow it); select the masked columns \
                     instead, or leave them out"
                ));
            }
        }
        None
    }
}

/// How every refusal statement starts (and a client's own code never does
/// unless it imitates one, which gains it nothing: its messages are then
/// scrubbed like any other).
const REFUSAL_PREFIX: &str = "DO $masker$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '";

/// A statement that makes the server itself answer with our refusal, as an
/// ordinary error in the statement's place: the transaction aborts exactly
/// as for any error and the session stays usable.
pub fn refusal_statement(message: &str) -> String {
    // `$` could close the dollar quote (relation names come from the client).
    let quoted = message.replace('$', "").replace('\'', "''");
    format!("{REFUSAL_PREFIX}{quoted}'; END $masker$")
}

/// Whether `sql` runs the client's own procedural code (`DO`, `CALL`):
/// whatever it RAISEs was computed where lineage cannot see, so the text of
/// its errors and notices is withheld (fail closed). The agent's own
/// refusal statements are not the client's code.
pub fn runs_client_code(sql: &str) -> bool {
    if sql.starts_with(REFUSAL_PREFIX) {
        return false;
    }
    match sql::analyze(sql).as_ref() {
        Ok(a) => a.statements.iter().any(|s| s.class == StatementClass::Procedural),
        // Unparsable text does not run at all.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_code_is_told_from_our_refusals() {
        assert!(runs_client_code("DO $$ BEGIN RAISE NOTICE 'x'; END $$"));
        assert!(runs_client_code("select 1; call p()"));
        assert!(!runs_client_code(&refusal_statement("masker: refused")));
        assert!(!runs_client_code("select 1"));
    }

    #[test]
    fn refusal_statement_quotes_and_parses() {
        let sql = refusal_statement("it's refused: $masker$ x");
        assert!(sql.contains("it''s refused: masker x"));
        assert!(crate::sql::analyze_uncached(&sql).is_ok());
        let clean = refusal_statement("column public.customers.ssn (rule: x)");
        assert!(crate::sql::analyze_uncached(&clean).is_ok());
    }
}
