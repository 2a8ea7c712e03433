//! The tracer: walks `pg_query`'s raw parse tree of each statement, keeping a
//! scope of the relations in FROM (base tables, subqueries, CTEs, functions)
//! per query level, and computes each output column's [`Lineage`].

use std::collections::{BTreeSet, HashMap};

use pg_query::NodeEnum as N;
use pg_query::protobuf::{self as pb, Node};

use super::analysis::{Analysis, How, Lineage, Output, RelName, Source, SqlError, Statement, StatementClass};

/// How deep subqueries may nest before the tracer gives up (fail closed).
const MAX_DEPTH: usize = 64;

/// Aggregates that reveal values of their argument (anything except `count`).
const AGGREGATES: &[&str] = &[
    "min",
    "max",
    "sum",
    "avg",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_objectagg",
    "json_arrayagg",
    "mode",
    "percentile_disc",
    "percentile_cont",
    "any_value",
    "xmlagg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "every",
    "range_agg",
    "range_intersect_agg",
    "stddev",
    "variance",
];

/// Set-returning functions whose output derives only from their arguments.
const PLAIN_SRFS: &[&str] = &[
    "unnest",
    "generate_series",
    "generate_subscripts",
    "json_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "json_each",
    "json_each_text",
    "jsonb_each",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "regexp_matches",
    "regexp_split_to_table",
    "string_to_table",
    "json_to_record",
    "json_to_recordset",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "json_populate_record",
    "jsonb_populate_record",
    "jsonb_path_query",
];

/// Analyzes every statement of `sql`, without the cache.
pub fn analyze_uncached(sql: &str) -> Result<Analysis, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError(e.to_string()))?;
    let statements = parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| match raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            Some(node) => statement(node),
            None => Statement::empty(StatementClass::Utility),
        })
        .collect();
    Ok(Analysis { statements })
}

impl Statement {
    fn empty(class: StatementClass) -> Statement {
        Statement {
            class,
            relations: BTreeSet::new(),
            functions: BTreeSet::new(),
            output: None,
            moves: None,
            copy_query: false,
            filters: Vec::new(),
            write: None,
        }
    }
}

/// What a statement may change (see [`Statement::write`]): an allow-list of
/// reads, anything else a write.
fn write_kind(node: &N) -> Option<&'static str> {
    // A read that hides a write: `WITH d AS (DELETE ... RETURNING *) SELECT`.
    let nested_dml = |n: &N| {
        n.nodes().iter().any(|(r, ..)| {
            matches!(
                r,
                pg_query::NodeRef::InsertStmt(_)
                    | pg_query::NodeRef::UpdateStmt(_)
                    | pg_query::NodeRef::DeleteStmt(_)
                    | pg_query::NodeRef::MergeStmt(_)
            )
        })
    };
    let inner = |q: &Option<Box<Node>>| q.as_deref().and_then(|n| n.node.as_ref()).and_then(write_kind);
    match node {
        N::SelectStmt(s) if s.into_clause.is_some() => Some("SELECT INTO"),
        N::SelectStmt(_) if nested_dml(node) => Some("a data-modifying WITH"),
        N::SelectStmt(_) => None,
        N::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| match o.node.as_ref() {
                Some(N::DefElem(d)) if d.defname == "analyze" => match d.arg.as_deref().and_then(|a| a.node.as_ref()) {
                    Some(N::Boolean(b)) => b.boolval,
                    Some(N::String(v)) => !matches!(v.sval.as_str(), "false" | "off" | "0"),
                    _ => true,
                },
                _ => false,
            });
            if analyze { inner(&e.query).map(|_| "EXPLAIN ANALYZE of a write") } else { None }
        }
        N::CopyStmt(c) if c.is_from => Some("COPY FROM"),
        N::CopyStmt(c) => c.query.as_deref().and_then(|n| n.node.as_ref()).and_then(write_kind),
        N::VariableSetStmt(v)
            if (v.name == "role" || v.name == "session_authorization")
                && v.kind != pb::VariableSetKind::VarReset as i32
                && v.kind != pb::VariableSetKind::VarResetAll as i32 =>
        {
            Some("SET ROLE / SET SESSION AUTHORIZATION")
        }
        N::PrepareStmt(p) => inner(&p.query),
        N::DeclareCursorStmt(d) => inner(&d.query),
        N::VariableSetStmt(_)
        | N::VariableShowStmt(_)
        | N::DiscardStmt(_)
        | N::TransactionStmt(_)
        | N::ExecuteStmt(_)
        | N::DeallocateStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::ListenStmt(_)
        | N::UnlistenStmt(_) => None,
        N::InsertStmt(_) => Some("INSERT"),
        N::UpdateStmt(_) => Some("UPDATE"),
        N::DeleteStmt(_) => Some("DELETE"),
        N::MergeStmt(_) => Some("MERGE"),
        N::TruncateStmt(_) => Some("TRUNCATE"),
        N::CreateTableAsStmt(_) => Some("CREATE TABLE AS"),
        N::GrantStmt(_) | N::GrantRoleStmt(_) => Some("GRANT / REVOKE"),
        N::DoStmt(_) | N::CallStmt(_) => Some("DO / CALL (procedural code may write)"),
        _ => Some("DDL or another statement that changes the database"),
    }
}

fn statement(node: &N) -> Statement {
    let mut t = Tracer::default();
    let root = Scope::root();
    let (class, output, moves, copy_query) = match node {
        N::SelectStmt(s) => {
            let outs = t.select(s, &root, 0);
            if s.into_clause.is_some() {
                (StatementClass::CreateTableAs, None, Some(combine_outputs(&outs)), false)
            } else {
                (StatementClass::Select, Some(outs), None, false)
            }
        }
        N::CreateTableAsStmt(c) => {
            let outs = c.query.as_deref().map(|q| t.query(q, &root, 0)).unwrap_or_else(|| vec![Output::Unknown]);
            (StatementClass::CreateTableAs, None, Some(combine_outputs(&outs)), false)
        }
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) => {
            let (class, outs, moves) = t.modify(node, &root, 0);
            (class, outs, moves, false)
        }
        N::MergeStmt(_) => (StatementClass::Merge, None, Some(Lineage::unknown()), false),
        N::CopyStmt(c) => {
            if let Some(q) = c.query.as_deref() {
                let outs = t.query(q, &root, 0);
                (StatementClass::Copy, None, Some(combine_outputs(&outs)), true)
            } else {
                if let Some(r) = &c.relation {
                    t.relations.insert(rel_name(r));
                }
                (StatementClass::Copy, None, None, false)
            }
        }
        N::ExplainStmt(_) => (StatementClass::Explain, None, None, false),
        N::TransactionStmt(_) => (StatementClass::Transaction, None, None, false),
        N::VariableSetStmt(_) | N::VariableShowStmt(_) | N::DiscardStmt(_) => {
            (StatementClass::Config, None, None, false)
        }
        N::DoStmt(_) | N::CallStmt(_) => (StatementClass::Procedural, None, None, false),
        N::ViewStmt(_)
        | N::CreateStmt(_)
        | N::AlterTableStmt(_)
        | N::DropStmt(_)
        | N::IndexStmt(_)
        | N::CreateFunctionStmt(_)
        | N::CreateSchemaStmt(_)
        | N::RenameStmt(_)
        | N::CommentStmt(_)
        | N::GrantStmt(_)
        | N::TruncateStmt(_)
        | N::RuleStmt(_)
        | N::CreateTrigStmt(_) => (StatementClass::Ddl, None, None, false),
        _ => (StatementClass::Utility, None, None, false),
    };
    // Every relation named anywhere (subqueries in any clause, DML targets).
    let ctes = cte_names(node);
    for (n, _, _, _) in node.nodes() {
        if let pg_query::NodeRef::RangeVar(r) = n {
            let name = rel_name(r);
            if name.schema.is_some() || !ctes.contains(&name.name) {
                t.relations.insert(name);
            }
        }
    }
    Statement {
        class,
        relations: t.relations,
        functions: t.functions,
        output,
        moves,
        copy_query,
        filters: t.filters,
        write: write_kind(node),
    }
}

fn cte_names(node: &N) -> BTreeSet<String> {
    node.nodes()
        .into_iter()
        .filter_map(|(n, _, _, _)| match n {
            pg_query::NodeRef::CommonTableExpr(c) => Some(c.ctename.clone()),
            _ => None,
        })
        .collect()
}

fn rel_name(r: &pb::RangeVar) -> RelName {
    RelName { schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()), name: r.relname.clone() }
}

/// A relation visible in one query level.
#[derive(Debug, Clone)]
enum RelKind {
    Base(RelName),
    /// A subquery, CTE or join alias: its output columns.
    Derived(Vec<Output>),
    /// A function in FROM: every column has this lineage, whatever its name.
    Uniform(Lineage),
}

#[derive(Debug, Clone)]
struct ScopeRel {
    alias: String,
    kind: RelKind,
}

#[derive(Debug, Default)]
struct Scope<'p> {
    rels: Vec<ScopeRel>,
    ctes: HashMap<String, Vec<Output>>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn root() -> Scope<'static> {
        Scope::default()
    }

    fn child(&'p self) -> Scope<'p> {
        Scope { rels: Vec::new(), ctes: HashMap::new(), parent: Some(self) }
    }

    fn cte(&self, name: &str) -> Option<&Vec<Output>> {
        self.ctes.get(name).or_else(|| self.parent.and_then(|p| p.cte(name)))
    }

    fn find_alias(&self, alias: &str) -> Option<&ScopeRel> {
        self.rels.iter().rev().find(|r| r.alias == alias).or_else(|| self.parent.and_then(|p| p.find_alias(alias)))
    }
}

#[derive(Default)]
struct Tracer {
    relations: BTreeSet<RelName>,
    functions: BTreeSet<String>,
    filters: Vec<(Source, bool)>,
}

fn direct(relation: RelName, column: &str) -> Lineage {
    Lineage { how: How::Direct, sources: BTreeSet::from([Source::Column { relation, column: column.to_string() }]) }
}

fn output_lineage(o: &Output) -> Lineage {
    match o {
        Output::Column { lineage, .. } => lineage.clone(),
        Output::Star(r) => Lineage { how: How::WholeRow, sources: BTreeSet::from([Source::AllColumns(r.clone())]) },
        Output::Unknown => Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) },
    }
}

/// The lineage of a value computed from `parts`.
fn combine(parts: impl IntoIterator<Item = Lineage>) -> Lineage {
    let mut sources = BTreeSet::new();
    let mut how = How::Constant;
    for p in parts {
        how = match (how, p.how) {
            (How::Unknown, _) | (_, How::Unknown) => How::Unknown,
            (How::WholeRow, _) | (_, How::WholeRow) => How::WholeRow,
            (h, How::Constant) => h,
            (How::Constant, How::Aggregate { reveals: false }) => How::Aggregate { reveals: false },
            (h, How::Aggregate { reveals: false }) => h,
            _ => How::Derived,
        };
        sources.extend(p.sources);
    }
    Lineage { how, sources }
}

/// Everything a statement's outputs could reveal, as one lineage.
fn combine_outputs(outs: &[Output]) -> Lineage {
    combine(outs.iter().map(output_lineage))
}

/// A value that is `l` passed through something that is not a plain cast.
fn derived(l: Lineage) -> Lineage {
    match l.how {
        How::Direct => Lineage { how: How::Derived, sources: l.sources },
        _ => l,
    }
}

fn string_of(n: &Node) -> Option<&str> {
    match n.node.as_ref()? {
        N::String(s) => Some(&s.sval),
        _ => None,
    }
}

fn func_name(names: &[Node]) -> String {
    names.iter().filter_map(string_of).collect::<Vec<_>>().join(".").to_ascii_lowercase()
}

fn base_func_name(names: &[Node]) -> String {
    names.iter().rev().find_map(string_of).unwrap_or_default().to_ascii_lowercase()
}

/// The name PostgreSQL gives an output column without an alias (best effort).
fn column_name(n: Option<&Node>) -> String {
    match n.and_then(|n| n.node.as_ref()) {
        Some(N::ColumnRef(c)) => c.fields.iter().rev().find_map(string_of).unwrap_or("?column?").to_string(),
        Some(N::FuncCall(f)) => base_func_name(&f.funcname),
        Some(N::TypeCast(t)) => match t.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(N::ColumnRef(_)) | Some(N::FuncCall(_)) => column_name(t.arg.as_deref()),
            _ => t.type_name.as_ref().map(|tn| base_func_name(&tn.names)).unwrap_or_else(|| "?column?".into()),
        },
        Some(N::CaseExpr(_)) => "case".into(),
        Some(N::CoalesceExpr(_)) => "coalesce".into(),
        _ => "?column?".into(),
    }
}

fn rename(outs: &mut [Output], colnames: &[Node]) {
    let mut names = colnames.iter().filter_map(string_of);
    for o in outs.iter_mut() {
        let Some(new) = names.next() else { return };
        match o {
            Output::Column { name, .. } => *name = new.to_string(),
            // Renaming inside a `*` expansion: positions are known only to the
            // session, so the columns lose their names; references by the new
            // names resolve to nothing and fail closed.
            _ => return,
        }
    }
}

/// The column `name` among `outs`, if `outs` can have it.
fn lookup(outs: &[Output], name: &str) -> Option<Lineage> {
    if let Some(l) = outs.iter().find_map(|o| match o {
        Output::Column { name: n, lineage } if n == name => Some(lineage.clone()),
        _ => None,
    }) {
        return Some(l);
    }
    let mut cands: Vec<Lineage> = Vec::new();
    for o in outs {
        match o {
            Output::Star(r) => cands.push(direct(r.clone(), name)),
            Output::Unknown => cands.push(output_lineage(o)),
            Output::Column { .. } => {}
        }
    }
    merge_candidates(cands)
}

/// One of several candidates (an ambiguous name): still direct when every
/// candidate is; the session keeps the candidates whose column exists.
fn merge_candidates(cands: Vec<Lineage>) -> Option<Lineage> {
    if cands.len() <= 1 {
        return cands.into_iter().next();
    }
    if cands.iter().all(|c| c.how == How::Direct) {
        let sources = cands.into_iter().flat_map(|c| c.sources).collect();
        return Some(Lineage { how: How::Direct, sources });
    }
    Some(derived(combine(cands)))
}

fn whole_row(rel: &ScopeRel) -> Lineage {
    match &rel.kind {
        RelKind::Base(r) => Lineage { how: How::WholeRow, sources: BTreeSet::from([Source::AllColumns(r.clone())]) },
        RelKind::Derived(outs) => {
            let l = combine_outputs(outs);
            Lineage { how: if l.how == How::Unknown { How::Unknown } else { How::WholeRow }, sources: l.sources }
        }
        RelKind::Uniform(l) => derived(l.clone()),
    }
}

fn star_of(rel: &ScopeRel) -> Vec<Output> {
    match &rel.kind {
        RelKind::Base(r) => vec![Output::Star(r.clone())],
        RelKind::Derived(outs) => outs.clone(),
        RelKind::Uniform(_) => vec![Output::Unknown],
    }
}

impl Tracer {
    /// Any statement that returns rows, used as a subquery, CTE or COPY source.
    fn query(&mut self, node: &Node, scope: &Scope<'_>, depth: usize) -> Vec<Output> {
        match node.node.as_ref() {
            Some(N::SelectStmt(s)) => self.select(s, scope, depth),
            Some(n @ (N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_))) => {
                self.modify(n, scope, depth).1.unwrap_or_default()
            }
            _ => vec![Output::Unknown],
        }
    }

    fn with(&mut self, with: Option<&pb::WithClause>, scope: &mut Scope<'_>, depth: usize) {
        let Some(with) = with else { return };
        for c in &with.ctes {
            let Some(N::CommonTableExpr(cte)) = c.node.as_ref() else { continue };
            let Some(q) = cte.ctequery.as_deref() else { continue };
            let recursive_union = match q.node.as_ref() {
                Some(N::SelectStmt(s)) if with.recursive && s.op != pb::SetOperation::SetopNone as i32 => Some(s),
                _ => None,
            };
            let mut outs = if let Some(s) = recursive_union {
                // The non-recursive term first, then the whole union a few
                // times so columns fed back through the recursion are seen.
                let mut outs = s.larg.as_deref().map(|l| self.select(l, scope, depth + 1)).unwrap_or_default();
                rename(&mut outs, &cte.aliascolnames);
                for _ in 0..3 {
                    scope.ctes.insert(cte.ctename.clone(), outs.clone());
                    let mut next = self.select(s, scope, depth + 1);
                    rename(&mut next, &cte.aliascolnames);
                    outs = union_outputs(outs, next);
                }
                outs
            } else {
                self.query(q, scope, depth + 1)
            };
            rename(&mut outs, &cte.aliascolnames);
            scope.ctes.insert(cte.ctename.clone(), outs);
        }
    }

    fn select(&mut self, s: &pb::SelectStmt, parent: &Scope<'_>, depth: usize) -> Vec<Output> {
        if depth > MAX_DEPTH {
            return vec![Output::Unknown];
        }
        let mut scope = parent.child();
        self.with(s.with_clause.as_ref(), &mut scope, depth);
        if s.op != pb::SetOperation::SetopNone as i32 {
            let l = s.larg.as_deref().map(|l| self.select(l, &scope, depth + 1)).unwrap_or_default();
            let r = s.rarg.as_deref().map(|r| self.select(r, &scope, depth + 1)).unwrap_or_default();
            return union_outputs(l, r);
        }
        if !s.values_lists.is_empty() {
            let mut cols: Vec<Vec<Lineage>> = Vec::new();
            for row in &s.values_lists {
                let items: Vec<&Node> = match row.node.as_ref() {
                    Some(N::List(l)) => l.items.iter().collect(),
                    _ => vec![row],
                };
                for (i, item) in items.into_iter().enumerate() {
                    let l = self.expr(item, &scope, depth);
                    if cols.len() <= i {
                        cols.push(Vec::new());
                    }
                    cols[i].push(l);
                }
            }
            return cols
                .into_iter()
                .enumerate()
                .map(|(i, ls)| Output::Column { name: format!("column{}", i + 1), lineage: combine(ls) })
                .collect();
        }
        for item in &s.from_clause {
            let rels = self.range_item(item, &scope, depth);
            scope.rels.extend(rels);
        }
        let outs = self.targets(&s.target_list, &scope, depth);
        // Clauses that filter, group or order: for the inference guardrail.
        let mut clauses: Vec<&Node> = Vec::new();
        clauses.extend(s.where_clause.as_deref());
        clauses.extend(s.having_clause.as_deref());
        clauses.extend(s.group_clause.iter());
        clauses.extend(s.distinct_clause.iter());
        for c in clauses {
            self.filter(c, &scope, &outs, depth);
        }
        for sb in &s.sort_clause {
            if let Some(N::SortBy(sb)) = sb.node.as_ref()
                && let Some(n) = sb.node.as_deref()
            {
                self.filter(n, &scope, &outs, depth);
            }
        }
        outs
    }

    fn star(&mut self, c: &pb::ColumnRef, scope: &Scope<'_>) -> Vec<Output> {
        let names: Vec<&str> = c.fields.iter().filter_map(string_of).collect();
        match names.as_slice() {
            [] => scope.rels.iter().flat_map(star_of).collect(),
            [.., alias] => match scope.find_alias(alias) {
                Some(rel) => star_of(rel),
                None => vec![Output::Unknown],
            },
        }
    }

    /// The relations a FROM item brings into scope.
    fn range_item(&mut self, item: &Node, scope: &Scope<'_>, depth: usize) -> Vec<ScopeRel> {
        match item.node.as_ref() {
            Some(N::RangeVar(r)) => {
                let alias = r.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_else(|| r.relname.clone());
                if r.schemaname.is_empty()
                    && let Some(outs) = scope.cte(&r.relname)
                {
                    let mut outs = outs.clone();
                    if let Some(a) = &r.alias {
                        rename(&mut outs, &a.colnames);
                    }
                    return vec![ScopeRel { alias, kind: RelKind::Derived(outs) }];
                }
                let name = rel_name(r);
                self.relations.insert(name.clone());
                match &r.alias {
                    Some(a) if !a.colnames.is_empty() => {
                        // Columns renamed by position: known only to the catalog.
                        vec![ScopeRel { alias, kind: RelKind::Derived(vec![Output::Star(name)]) }]
                    }
                    _ => vec![ScopeRel { alias, kind: RelKind::Base(name) }],
                }
            }
            Some(N::RangeSubselect(rs)) => {
                // The FROM items before this one are visible (LATERAL); an
                // over-approximation without LATERAL is harmless.
                let mut outs = match rs.subquery.as_deref() {
                    Some(q) => self.query(q, scope, depth + 1),
                    None => vec![Output::Unknown],
                };
                let alias = rs.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_default();
                if let Some(a) = &rs.alias {
                    rename(&mut outs, &a.colnames);
                }
                vec![ScopeRel { alias, kind: RelKind::Derived(outs) }]
            }
            Some(N::JoinExpr(j)) => {
                let mut rels = Vec::new();
                if let Some(l) = j.larg.as_deref() {
                    rels.extend(self.range_item(l, scope, depth));
                }
                let mut inner = Scope { rels: rels.clone(), ctes: HashMap::new(), parent: Some(scope) };
                if let Some(r) = j.rarg.as_deref() {
                    let right = self.range_item(r, &inner, depth);
                    inner.rels.extend(right.iter().cloned());
                    rels.extend(right);
                }
                if let Some(q) = j.quals.as_deref() {
                    self.filter(q, &inner, &[], depth);
                }
                if let Some(a) = &j.alias {
                    let mut outs: Vec<Output> = rels.iter().flat_map(star_of).collect();
                    rename(&mut outs, &a.colnames);
                    rels.push(ScopeRel { alias: a.aliasname.clone(), kind: RelKind::Derived(outs) });
                }
                rels
            }
            Some(N::RangeFunction(rf)) => {
                let mut parts = Vec::new();
                for f in &rf.functions {
                    let call = match f.node.as_ref() {
                        Some(N::List(l)) => l.items.first(),
                        _ => Some(f),
                    };
                    let Some(call) = call else { continue };
                    let l = self.expr(call, scope, depth);
                    let plain = match call.node.as_ref() {
                        Some(N::FuncCall(fc)) => {
                            PLAIN_SRFS.contains(&base_func_name(&fc.funcname).as_str()) && fc.funcname.len() == 1
                        }
                        _ => false,
                    };
                    parts.push(if plain { l } else { Lineage { how: How::Unknown, sources: [Source::Opaque].into() } });
                }
                let alias = rf.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_else(|| {
                    rf.functions
                        .first()
                        .and_then(|f| match f.node.as_ref() {
                            Some(N::List(l)) => l.items.first().map(|n| column_name(Some(n))),
                            _ => None,
                        })
                        .unwrap_or_default()
                });
                vec![ScopeRel { alias, kind: RelKind::Uniform(derived(combine(parts))) }]
            }
            Some(N::RangeTableSample(ts)) => match ts.relation.as_deref() {
                Some(r) => self.range_item(r, scope, depth),
                None => vec![ScopeRel { alias: String::new(), kind: RelKind::Uniform(Lineage::unknown()) }],
            },
            _ => {
                // XMLTABLE, JSON_TABLE, ...: opaque.
                let l = Lineage { how: How::Unknown, sources: [Source::Opaque].into() };
                vec![ScopeRel { alias: String::new(), kind: RelKind::Uniform(l) }]
            }
        }
    }

    /// INSERT / UPDATE / DELETE: class, RETURNING output, moved data.
    fn modify(
        &mut self,
        node: &N,
        parent: &Scope<'_>,
        depth: usize,
    ) -> (StatementClass, Option<Vec<Output>>, Option<Lineage>) {
        let mut scope = parent.child();
        let (class, relation, with, returning) = match node {
            N::InsertStmt(i) => {
                (StatementClass::Insert, i.relation.as_ref(), i.with_clause.as_ref(), i.returning_clause.as_ref())
            }
            N::UpdateStmt(u) => {
                (StatementClass::Update, u.relation.as_ref(), u.with_clause.as_ref(), u.returning_clause.as_ref())
            }
            N::DeleteStmt(d) => {
                (StatementClass::Delete, d.relation.as_ref(), d.with_clause.as_ref(), d.returning_clause.as_ref())
            }
            _ => return (StatementClass::Utility, None, Some(Lineage::unknown())),
        };
        self.with(with, &mut scope, depth);
        if let Some(r) = relation {
            let name = rel_name(r);
            self.relations.insert(name.clone());
            let alias = r.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_else(|| r.relname.clone());
            scope.rels.push(ScopeRel { alias, kind: RelKind::Base(name) });
        }
        let mut moves = None;
        match node {
            N::InsertStmt(i) => {
                if let Some(q) = i.select_stmt.as_deref() {
                    let outs = self.query(q, &scope, depth + 1);
                    moves = Some(combine_outputs(&outs));
                }
            }
            N::UpdateStmt(u) => {
                for f in &u.from_clause {
                    let rels = self.range_item(f, &scope, depth);
                    scope.rels.extend(rels);
                }
                let parts: Vec<Lineage> = u
                    .target_list
                    .iter()
                    .map(|t| match t.node.as_ref() {
                        Some(N::ResTarget(rt)) => {
                            rt.val.as_deref().map(|v| self.expr(v, &scope, depth)).unwrap_or_else(Lineage::unknown)
                        }
                        _ => Lineage::unknown(),
                    })
                    .collect();
                moves = Some(combine(parts));
                if let Some(w) = u.where_clause.as_deref() {
                    self.filter(w, &scope, &[], depth);
                }
            }
            N::DeleteStmt(d) => {
                for f in &d.using_clause {
                    let rels = self.range_item(f, &scope, depth);
                    scope.rels.extend(rels);
                }
                if let Some(w) = d.where_clause.as_deref() {
                    self.filter(w, &scope, &[], depth);
                }
            }
            _ => {}
        }
        let output = returning.map(|r| self.targets(&r.exprs, &scope, depth));
        (class, output, moves)
    }

    fn column_ref(&mut self, c: &pb::ColumnRef, scope: &Scope<'_>) -> Lineage {
        let star = matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(N::AStar(_)));
        let names: Vec<&str> = c.fields.iter().filter_map(string_of).collect();
        let found = match (names.as_slice(), star) {
            ([alias], true) => scope.find_alias(alias).map(whole_row),
            ([.., schema, table], true) => find_base(scope, Some(schema), table).map(whole_row),
            ([col], false) => resolve_name(scope, col),
            ([alias, col], false) => match scope.find_alias(alias) {
                Some(rel) => resolve_in(rel, col),
                None => None,
            },
            ([.., schema, table, col], false) => find_base(scope, Some(schema), table).and_then(|r| resolve_in(r, col)),
            _ => None,
        };
        found.unwrap_or_else(Lineage::unknown)
    }

    fn exprs<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>, scope: &Scope<'_>, depth: usize) -> Lineage {
        let parts: Vec<Lineage> = nodes.into_iter().map(|n| self.expr(n, scope, depth)).collect();
        derived(combine(parts))
    }

    fn opt(&mut self, n: Option<&Node>, scope: &Scope<'_>, depth: usize) -> Lineage {
        n.map(|n| self.expr(n, scope, depth)).unwrap_or_else(Lineage::constant)
    }

    /// The lineage of an expression.
    fn expr(&mut self, node: &Node, scope: &Scope<'_>, depth: usize) -> Lineage {
        if depth > MAX_DEPTH {
            return Lineage::unknown();
        }
        let d = depth + 1;
        let Some(n) = node.node.as_ref() else { return Lineage::constant() };
        match n {
            N::ColumnRef(c) => self.column_ref(c, scope),
            N::AConst(_) | N::ParamRef(_) | N::SqlvalueFunction(_) | N::SetToDefault(_) => Lineage::constant(),
            N::TypeCast(t) => self.opt(t.arg.as_deref(), scope, d),
            N::CollateClause(c) => self.opt(c.arg.as_deref(), scope, d),
            N::NamedArgExpr(a) => self.opt(a.arg.as_deref(), scope, d),
            N::FuncCall(f) => self.func_call(f, scope, d),
            N::AExpr(a) => {
                let parts = [a.lexpr.as_deref(), a.rexpr.as_deref()];
                self.exprs(parts.into_iter().flatten(), scope, d)
            }
            N::BoolExpr(b) => self.exprs(&b.args, scope, d),
            N::NullTest(t) => derived(self.opt(t.arg.as_deref(), scope, d)),
            N::BooleanTest(t) => derived(self.opt(t.arg.as_deref(), scope, d)),
            N::CaseExpr(c) => {
                let mut parts = vec![self.opt(c.arg.as_deref(), scope, d), self.opt(c.defresult.as_deref(), scope, d)];
                for w in &c.args {
                    parts.push(self.expr(w, scope, d));
                }
                derived(combine(parts))
            }
            N::CaseWhen(w) => {
                let parts = [self.opt(w.expr.as_deref(), scope, d), self.opt(w.result.as_deref(), scope, d)];
                derived(combine(parts))
            }
            N::CoalesceExpr(c) => self.exprs(&c.args, scope, d),
            N::MinMaxExpr(m) => self.exprs(&m.args, scope, d),
            N::RowExpr(r) => self.exprs(&r.args, scope, d),
            N::AArrayExpr(a) => self.exprs(&a.elements, scope, d),
            N::List(l) => self.exprs(&l.items, scope, d),
            N::AIndirection(i) => {
                let mut parts = vec![self.opt(i.arg.as_deref(), scope, d)];
                for ind in &i.indirection {
                    if let Some(N::AIndices(ix)) = ind.node.as_ref() {
                        parts.push(self.opt(ix.lidx.as_deref(), scope, d));
                        parts.push(self.opt(ix.uidx.as_deref(), scope, d));
                    }
                }
                derived(combine(parts))
            }
            N::SubLink(s) => {
                let outs = match s.subselect.as_deref() {
                    Some(q) => self.query(q, scope, d),
                    None => vec![Output::Unknown],
                };
                let test = self.opt(s.testexpr.as_deref(), scope, d);
                let mut l = derived(combine(outs.iter().map(output_lineage).chain([test])));
                if l.how == How::WholeRow {
                    l.how = How::Derived;
                }
                l
            }
            N::GroupingFunc(_) => Lineage::constant(),
            N::JsonValueExpr(v) => self.opt(v.raw_expr.as_deref(), scope, d),
            N::JsonKeyValue(kv) => {
                let key = self.opt(kv.key.as_deref(), scope, d);
                let value = kv.value.as_ref().map(|v| self.opt(v.raw_expr.as_deref(), scope, d));
                derived(combine([key, value.unwrap_or_else(Lineage::constant)]))
            }
            N::JsonObjectConstructor(o) => self.exprs(&o.exprs, scope, d),
            N::JsonArrayConstructor(a) => self.exprs(&a.exprs, scope, d),
            N::JsonParseExpr(p) => match &p.expr {
                Some(v) => derived(self.opt(v.raw_expr.as_deref(), scope, d)),
                None => Lineage::unknown(),
            },
            N::JsonScalarExpr(s) => derived(self.opt(s.expr.as_deref(), scope, d)),
            N::JsonSerializeExpr(s) => match &s.expr {
                Some(v) => derived(self.opt(v.raw_expr.as_deref(), scope, d)),
                None => Lineage::unknown(),
            },
            _ => Lineage::unknown(),
        }
    }

    fn func_call(&mut self, f: &pb::FuncCall, scope: &Scope<'_>, d: usize) -> Lineage {
        let full = func_name(&f.funcname);
        let name = base_func_name(&f.funcname);
        self.functions.insert(full.clone());
        if let Some(filter) = f.agg_filter.as_deref() {
            self.filter(filter, scope, &[], d);
        }
        if let Some(w) = f.over.as_deref() {
            for n in w.partition_clause.iter().chain(&w.order_clause) {
                let n = match n.node.as_ref() {
                    Some(N::SortBy(sb)) => sb.node.as_deref(),
                    _ => Some(n),
                };
                if let Some(n) = n {
                    self.filter(n, scope, &[], d);
                }
            }
        }
        for sb in &f.agg_order {
            if let Some(N::SortBy(sb)) = sb.node.as_ref()
                && let Some(n) = sb.node.as_deref()
            {
                self.filter(n, scope, &[], d);
            }
        }
        let args = self.exprs(&f.args, scope, d);
        // A function outside pg_catalog may read tables itself.
        let qualified_user = f.funcname.len() > 1 && !full.starts_with("pg_catalog.");
        let mut l = if f.agg_star || (name == "count" && f.over.is_none()) {
            Lineage { how: How::Aggregate { reveals: false }, sources: BTreeSet::new() }
        } else if AGGREGATES.contains(&name.as_str()) && f.over.is_none() {
            let how = if args.how == How::Unknown { How::Unknown } else { How::Aggregate { reveals: true } };
            Lineage { how, sources: args.sources }
        } else {
            args
        };
        if name == "count" && args_unknown(&l) {
            l.how = How::Unknown;
        }
        if qualified_user {
            l.how = How::Unknown;
            l.sources.insert(Source::Opaque);
        }
        l
    }

    /// The outputs of a target list (a SELECT list or a RETURNING list):
    /// `*` and `t.*` expand symbolically, everything else is traced.
    fn targets(&mut self, items: &[Node], scope: &Scope<'_>, depth: usize) -> Vec<Output> {
        let mut outs = Vec::new();
        for t in items {
            let Some(N::ResTarget(rt)) = t.node.as_ref() else {
                outs.push(Output::Unknown);
                continue;
            };
            let val = rt.val.as_deref();
            if let Some(N::ColumnRef(c)) = val.and_then(|v| v.node.as_ref())
                && matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(N::AStar(_)))
            {
                outs.extend(self.star(c, scope));
                continue;
            }
            let lineage = val.map(|v| self.expr(v, scope, depth)).unwrap_or_else(Lineage::unknown);
            let name = if rt.name.is_empty() { column_name(val) } else { rt.name.clone() };
            outs.push(Output::Column { name, lineage });
        }
        outs
    }

    /// Records the columns a filtering/grouping/ordering clause uses.
    fn filter(&mut self, node: &Node, scope: &Scope<'_>, outs: &[Output], depth: usize) {
        // `ORDER BY 2` / `GROUP BY 1`: the output column at that position.
        if let Some(N::AConst(c)) = node.node.as_ref()
            && let Some(pb::a_const::Val::Ival(i)) = &c.val
        {
            if let Some(o) = usize::try_from(i.ival).ok().and_then(|i| i.checked_sub(1)).and_then(|i| outs.get(i)) {
                let l = output_lineage(o);
                self.filters.extend(l.sources.into_iter().map(|s| (s, false)));
            }
            return;
        }
        if let Some(N::BoolExpr(b)) = node.node.as_ref() {
            for a in &b.args {
                self.filter(a, scope, outs, depth);
            }
            return;
        }
        // `col = constant` (or `constant = col`): an equality test.
        if let Some(N::AExpr(a)) = node.node.as_ref()
            && a.kind == pb::AExprKind::AexprOp as i32
            && a.name.len() == 1
            && string_of(&a.name[0]) == Some("=")
        {
            let l = self.opt(a.lexpr.as_deref(), scope, depth);
            let r = self.opt(a.rexpr.as_deref(), scope, depth);
            let (col, other) = if l.how == How::Direct { (l, r) } else { (r, l) };
            if col.how == How::Direct && other.how == How::Constant {
                self.filters.extend(col.sources.into_iter().map(|s| (s, true)));
                return;
            }
            self.filters.extend(col.sources.into_iter().chain(other.sources).map(|s| (s, false)));
            return;
        }
        // Output aliases (`ORDER BY e`) resolve to their output column.
        if let Some(N::ColumnRef(c)) = node.node.as_ref()
            && let [name] = c.fields.iter().filter_map(string_of).collect::<Vec<_>>().as_slice()
            && let Some(l) = outs.iter().find_map(|o| match o {
                Output::Column { name: n, lineage } if n == name => Some(lineage.clone()),
                _ => None,
            })
            && resolve_name(scope, name).is_none()
        {
            self.filters.extend(l.sources.into_iter().map(|s| (s, false)));
            return;
        }
        let l = self.expr(node, scope, depth);
        if l.how == How::Unknown {
            self.filters.push((Source::Opaque, false));
        }
        self.filters.extend(l.sources.into_iter().map(|s| (s, false)));
    }
}

fn args_unknown(l: &Lineage) -> bool {
    l.how == How::Unknown
}

fn find_base<'a>(scope: &'a Scope<'_>, schema: Option<&str>, table: &str) -> Option<&'a ScopeRel> {
    scope
        .rels
        .iter()
        .rev()
        .find(|r| match &r.kind {
            RelKind::Base(n) => n.name == table && (schema.is_none() || n.schema.as_deref() == schema),
            _ => false,
        })
        .or_else(|| scope.parent.and_then(|p| find_base(p, schema, table)))
}

/// Column `col` of one relation in scope.
fn resolve_in(rel: &ScopeRel, col: &str) -> Option<Lineage> {
    match &rel.kind {
        RelKind::Base(r) => Some(direct(r.clone(), col)),
        RelKind::Derived(outs) => lookup(outs, col),
        RelKind::Uniform(l) => Some(l.clone()),
    }
}

/// An unqualified name: a column of some relation in the innermost level that
/// can have it, else of an outer level; or a whole row by alias.
fn resolve_name(scope: &Scope<'_>, name: &str) -> Option<Lineage> {
    let mut level = Some(scope);
    while let Some(s) = level {
        let mut cands: Vec<Lineage> = s.rels.iter().filter_map(|r| resolve_in(r, name)).collect();
        if cands.iter().all(|c| c.how == How::Direct)
            && let Some(rel) = s.rels.iter().rev().find(|r| r.alias == name)
        {
            // `SELECT c FROM customers c`: a whole-row reference unless the
            // table has a column `c` (only the catalog knows): both.
            cands.push(whole_row(rel));
            return Some(derived(combine(cands)));
        }
        if let Some(l) = merge_candidates(cands) {
            return Some(l);
        }
        level = s.parent;
    }
    None
}

/// Column-wise union of two set-operation arms.
fn union_outputs(l: Vec<Output>, r: Vec<Output>) -> Vec<Output> {
    let shaped = |o: &[Output]| o.iter().all(|o| matches!(o, Output::Column { .. }));
    if !shaped(&l) || !shaped(&r) {
        // `*` inside a set operation: column positions are not known here.
        let all = combine(l.iter().chain(&r).map(output_lineage));
        return vec![Output::Column { name: "?column?".into(), lineage: all }, Output::Unknown];
    }
    let n = l.len().max(r.len());
    (0..n)
        .map(|i| {
            let a = l.get(i).map(output_lineage);
            let b = r.get(i).map(output_lineage);
            let name = match l.get(i) {
                Some(Output::Column { name, .. }) => name.clone(),
                _ => "?column?".into(),
            };
            let lineage = match (a, b) {
                (Some(a), Some(b)) if a == b => a,
                (Some(a), Some(b)) => derived(combine([a, b])),
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => Lineage::unknown(),
            };
            Output::Column { name, lineage }
        })
        .collect()
}
