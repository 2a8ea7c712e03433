//! The tracer: walks `pg_query`'s raw parse tree of each statement, keeping a
//! scope of the relations in FROM (base tables, subqueries, CTEs, functions)
//! per query level, and computes each output column's [`Lineage`].

use std::collections::{BTreeSet, HashMap};

use pg_query::NodeEnum as N;
use pg_query::protobuf::{self as pb, Node};

use super::analysis::{
    Analysis, Condition, Created, CreatedKind, DoBodies, Effect, How, Lineage, Output, Procedure, RelName, Sink,
    SinkKind, Source, SqlError, Statement, StatementClass, TransactionStep,
};

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

/// Catalog functions that print SQL text written by people (definitions,
/// bodies, defaults, constraints); see [`Source::Definition`].
const DEFINITION_FUNCTIONS: &[&str] = &[
    "pg_get_viewdef",
    "pg_get_ruledef",
    "pg_get_functiondef",
    "pg_get_function_sqlbody",
    "pg_get_function_arguments",
    "pg_get_expr",
    "pg_get_constraintdef",
    "pg_get_indexdef",
    "pg_get_triggerdef",
    "pg_get_partkeydef",
    "pg_get_partition_constraintdef",
    "pg_get_statisticsobjdef",
    "pg_get_statisticsobjdef_columns",
    "pg_get_statisticsobjdef_expressions",
    "pg_get_policydef",
];

/// Built-in functions that return data no statement names: large-object
/// contents and server files.
const DATA_FUNCTIONS: &[&str] = &[
    "lo_get",
    "loread",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    // They run SQL given as text, or dump whole tables.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
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

/// Analyzes every statement of `sql`, without the cache; `DO` bodies with
/// `do_bodies` (the PL/pgSQL analysis, which traces its embedded SQL with
/// this module: passed in, so that neither module imports the other).
pub fn analyze_uncached(sql: &str, do_bodies: DoBodies) -> Result<Analysis, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError(e.to_string()))?;
    let statements = parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| match raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            Some(node) => statement(node, do_bodies),
            None => Statement::empty(StatementClass::Utility),
        })
        .collect();
    Ok(Analysis { statements })
}

impl Statement {
    /// An empty `COPY` statement (no functions, nothing read): what a
    /// table's columns are decided with for `COPY table TO STDOUT`.
    pub fn empty_copy() -> Statement {
        Statement::empty(StatementClass::Copy)
    }

    fn empty(class: StatementClass) -> Statement {
        Statement {
            class,
            relations: BTreeSet::new(),
            functions: BTreeSet::new(),
            output: None,
            moves: None,
            copy_query: false,
            copy: None,
            filters: Vec::new(),
            reads: Vec::new(),
            sinks: Vec::new(),
            effect: None,
            body: None,
            explain_text: false,
            write: None,
        }
    }
}

/// What a statement may change (see [`Statement::write`]): an allow-list of
/// reads, anything else a write.
fn write_kind(node: &N) -> Option<&'static str> {
    // A read that hides a write: `WITH d AS (DELETE ... RETURNING *) SELECT`.
    let nested_dml = |n: &N| {
        let mut found = false;
        each_node(n, &mut |kind, _| {
            found |= matches!(kind, "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt");
        });
        found
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
        N::CreateTrigStmt(_) => Some("CREATE TRIGGER"),
        N::RuleStmt(_) => Some("CREATE RULE"),
        N::GrantStmt(_) | N::GrantRoleStmt(_) => Some("GRANT / REVOKE"),
        N::DoStmt(_) | N::CallStmt(_) => Some("DO / CALL (procedural code may write)"),
        _ => Some("DDL or another statement that changes the database"),
    }
}

/// Analyzes every statement of `sql` with procedural variables in scope:
/// each `(name, lineage)` is a value the statements may name (`n`, or
/// `r.field` for a record `r`), as PL/pgSQL resolves them.
pub fn analyze_with_variables(
    sql: &str,
    vars: &[(String, Lineage)],
    do_bodies: DoBodies,
) -> Result<Analysis, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError(e.to_string()))?;
    let mut root = Scope::root();
    let columns = vars.iter().map(|(name, l)| Output::Column { name: name.clone(), lineage: l.clone() }).collect();
    root.rels.push(ScopeRel { alias: String::new(), kind: RelKind::Variables(columns) });
    for (name, l) in vars {
        root.rels.push(ScopeRel { alias: name.clone(), kind: RelKind::Uniform(l.clone()) });
    }
    let statements = parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| match raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            Some(node) => statement_in(node, &root, do_bodies),
            None => Statement::empty(StatementClass::Utility),
        })
        .collect();
    Ok(Analysis { statements })
}

fn statement(node: &N, do_bodies: DoBodies) -> Statement {
    statement_in(node, &Scope::root(), do_bodies)
}

fn statement_in(node: &N, root: &Scope<'_>, do_bodies: DoBodies) -> Statement {
    let mut t = Tracer { do_bodies: Some(do_bodies), ..Tracer::default() };
    let mut explain_text = false;
    let (class, output, moves, copy_query) = match node {
        N::SelectStmt(s) => {
            let outs = t.select(s, root, 0);
            if s.into_clause.is_some() {
                (StatementClass::CreateTableAs, None, Some(combine_outputs(&outs)), false)
            } else {
                (StatementClass::Select, Some(outs), None, false)
            }
        }
        N::CreateTableAsStmt(c) => {
            let outs = c.query.as_deref().map(|q| t.query(q, root, 0)).unwrap_or_else(|| vec![Output::Unknown]);
            (StatementClass::CreateTableAs, None, Some(combine_outputs(&outs)), false)
        }
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) => {
            let (class, outs, moves) = t.modify(node, root, 0);
            (class, outs, moves, false)
        }
        N::MergeStmt(_) => (StatementClass::Merge, None, Some(Lineage::unknown()), false),
        N::CopyStmt(c) => {
            if let Some(q) = c.query.as_deref() {
                let outs = t.query(q, root, 0);
                // What COPY sends is the query's output.
                (StatementClass::Copy, Some(outs.clone()), Some(combine_outputs(&outs)), true)
            } else {
                if let Some(r) = &c.relation {
                    t.relations.insert(rel_name(r));
                }
                (StatementClass::Copy, None, None, false)
            }
        }
        N::ExplainStmt(e) => {
            explain_text = e.options.iter().all(|o| match o.node.as_ref() {
                Some(N::DefElem(d)) if d.defname == "format" => {
                    d.arg.as_deref().and_then(string_of).is_some_and(|f| f.eq_ignore_ascii_case("text"))
                }
                _ => true,
            });
            // The plan it prints quotes the query's and its views' filters.
            if let Some(inner) = e.query.as_deref().and_then(|n| n.node.as_ref()) {
                let s = statement_in(inner, root, do_bodies);
                t.reads.extend(s.reads);
                t.relations.extend(s.relations);
                t.functions.extend(s.functions);
                t.filters.extend(s.filters);
                t.sinks.extend(s.sinks);
            }
            (StatementClass::Explain, None, None, false)
        }
        N::TransactionStmt(_) => (StatementClass::Transaction, None, None, false),
        N::VariableSetStmt(_) | N::VariableShowStmt(_) | N::DiscardStmt(_) => {
            (StatementClass::Config, None, None, false)
        }
        N::DoStmt(_) => (StatementClass::Procedural, None, None, false),
        N::CallStmt(c) => {
            // A call of a procedure: decided like a function call (its body
            // from the catalog, `Resolver::function_clean`); its arguments
            // are expressions without subqueries.
            if let Some(f) = &c.funccall {
                let args = t.func_call(f, root, 0);
                t.reads.push(args);
            }
            (StatementClass::Procedural, None, None, false)
        }
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
        | N::TruncateStmt(_) => (StatementClass::Ddl, None, None, false),
        N::RuleStmt(r) => {
            // What the rule's actions will do when a statement fires them,
            // decided here: their reads, functions and sinks.
            for action in &r.actions {
                if let Some(n) = action.node.as_ref() {
                    let s = statement_in(n, root, do_bodies);
                    t.reads.extend(s.reads);
                    t.functions.extend(s.functions);
                    t.sinks.extend(s.sinks);
                }
            }
            (StatementClass::Ddl, None, None, false)
        }
        N::CreateTrigStmt(c) => {
            // The function the trigger will run: called by every later
            // statement that writes the table, so decided here.
            t.functions.insert(func_name(&c.funcname));
            (StatementClass::Ddl, None, None, false)
        }
        _ => (StatementClass::Utility, None, None, false),
    };
    if class == StatementClass::Ddl {
        // Code the statement installs to run later (a column default, a
        // check, an index expression, a view, a rule's action): the
        // functions it names, decided here.
        each_node(node, &mut |kind, v| {
            if kind == "FuncCall"
                && let Some(names) = v.get("funcname").and_then(serde_json::Value::as_array)
            {
                let parts: Vec<&str> =
                    names.iter().filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str()).collect();
                if !parts.is_empty() {
                    t.functions.insert(parts.join(".").to_ascii_lowercase());
                }
            }
        });
    }
    // Every relation named anywhere (subqueries in any clause, DML targets),
    // found by walking the whole tree, whatever the tracer understood.
    let ctes = cte_names(node);
    each_node(node, &mut |kind, v| {
        if kind == "RangeVar" {
            let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
            let (schema, name) = (text("schemaname"), text("relname"));
            if !name.is_empty() && (!schema.is_empty() || !ctes.contains(&name)) {
                t.relations.insert(RelName { schema: (!schema.is_empty()).then_some(schema), name });
            }
        }
    });
    let reads_rows = match node {
        N::CopyStmt(c) => c.is_from,
        N::AlterTableStmt(_)
        | N::IndexStmt(_)
        | N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::ReindexStmt(_)
        | N::RefreshMatViewStmt(_)
        | N::CreateStatsStmt(_) => true,
        _ => false,
    };
    if reads_rows {
        // DDL and utilities on existing relations read their rows (an index
        // build or a constraint check quotes the values it rejects).
        let created = created_name(node);
        for r in &t.relations {
            if Some(r) != created.as_ref() {
                t.reads.push(Lineage { how: How::WholeRow, sources: BTreeSet::from([Source::AllColumns(r.clone())]) });
            }
        }
    }
    let moves = if t.nested_moves.is_empty() {
        moves
    } else {
        let nested = std::mem::take(&mut t.nested_moves);
        Some(combine(moves.into_iter().chain(nested)))
    };
    let effect = effect(node, &mut t, output.as_deref(), moves.as_ref());
    let body = match node {
        N::DoStmt(d) => do_body(d, do_bodies).map(Box::new),
        _ => None,
    };
    if let N::DoStmt(_) = node {
        match &body {
            Some(p) => {
                for s in &p.statements {
                    t.reads.extend(s.reads.iter().cloned());
                    t.relations.extend(s.relations.iter().cloned());
                    t.functions.extend(s.functions.iter().cloned());
                    t.filters.extend(s.filters.iter().cloned());
                    t.sinks.extend(s.sinks.iter().cloned());
                }
                t.sinks.extend(p.sinks.iter().cloned());
                t.filters.extend(p.conditions.iter().cloned());
                if p.dynamic || p.opaque {
                    t.reads.push(Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) });
                }
            }
            None => t.reads.push(Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) }),
        }
    }
    if let N::CallStmt(c) = node
        && c.funccall.is_none()
    {
        // No call to decide: it may read anything.
        t.reads.push(Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) });
    }
    if let Some(Effect::Prepare { statement, .. } | Effect::Declare { statement, .. }) = &effect {
        // What the prepared statement or cursor will read is what this
        // statement reads (its errors at PREPARE/DECLARE come from there).
        t.reads.extend(statement.reads.iter().cloned());
        t.relations.extend(statement.relations.iter().cloned());
        t.functions.extend(statement.functions.iter().cloned());
        t.filters.extend(statement.filters.iter().cloned());
        t.sinks.extend(statement.sinks.iter().cloned());
    }
    Statement {
        class,
        relations: t.relations,
        functions: t.functions,
        output,
        moves,
        copy_query,
        copy: match node {
            N::CopyStmt(c) if !c.is_from => Some(super::copy::copy_to(c)),
            _ => None,
        },
        filters: t.filters,
        reads: dedup(t.reads),
        sinks: t.sinks,
        effect,
        body,
        explain_text,
        write: write_kind(node),
    }
}

fn dedup(mut v: Vec<Lineage>) -> Vec<Lineage> {
    let mut out: Vec<Lineage> = Vec::with_capacity(v.len());
    for l in v.drain(..) {
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

/// The node inside an optional boxed child.
fn inner(n: &Option<Box<Node>>) -> Option<&N> {
    n.as_deref().and_then(|n| n.node.as_ref())
}

/// A string constant (`'x'`) or a bare identifier (`x`), as SET arguments
/// and function arguments spell them.
fn const_text(n: &Node) -> Option<String> {
    match n.node.as_ref()? {
        N::AConst(c) => match c.val.as_ref()? {
            pb::a_const::Val::Sval(s) => Some(s.sval.clone()),
            _ => None,
        },
        N::TypeCast(t) => t.arg.as_deref().and_then(const_text),
        N::ColumnRef(c) => match c.fields.as_slice() {
            [f] => string_of(f).map(str::to_string),
            _ => None,
        },
        _ => None,
    }
}

/// A `search_path` value as written (`'app, "$user", public'` or a list of
/// names) split into schema names.
pub fn search_path_schemas(items: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for item in items {
        for part in item.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            if let Some(q) = p.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                out.push(q.replace("\"\"", "\""));
            } else {
                out.push(p.to_ascii_lowercase());
            }
        }
    }
    out
}

/// What `node` does to the session's state (see [`Effect`]).
fn effect(node: &N, t: &mut Tracer, output: Option<&[Output]>, moves: Option<&Lineage>) -> Option<Effect> {
    let _ = moves;
    match node {
        N::VariableSetStmt(v) => {
            let kind = v.kind;
            if kind == pb::VariableSetKind::VarResetAll as i32 {
                return Some(Effect::ResetAll);
            }
            if !v.name.eq_ignore_ascii_case("search_path") {
                return None;
            }
            let schemas = if kind == pb::VariableSetKind::VarSetValue as i32 {
                let items: Option<Vec<String>> = v.args.iter().map(const_text).collect();
                match items {
                    Some(items) => Some(search_path_schemas(&items)),
                    None => return Some(Effect::SearchPathUnknown),
                }
            } else if kind == pb::VariableSetKind::VarSetDefault as i32 || kind == pb::VariableSetKind::VarReset as i32
            {
                None
            } else {
                return Some(Effect::SearchPathUnknown);
            };
            Some(Effect::SearchPath { schemas, local: v.is_local })
        }
        N::DiscardStmt(d) => {
            let all = d.target == pb::DiscardMode::DiscardAll as i32;
            Some(Effect::Discard {
                all,
                temp: all || d.target == pb::DiscardMode::DiscardTemp as i32,
                plans: all || d.target == pb::DiscardMode::DiscardPlans as i32,
            })
        }
        N::CreateStmt(c) => {
            let r = c.relation.as_ref()?;
            let columns = if c.inh_relations.is_empty() && c.of_typename.is_none() && c.partbound.is_none() {
                c.table_elts
                    .iter()
                    .filter_map(|e| match e.node.as_ref() {
                        Some(N::ColumnDef(cd)) => Some(Some(cd.colname.clone())),
                        Some(N::TableLikeClause(_)) => Some(None),
                        _ => None,
                    })
                    .collect::<Option<Vec<String>>>()
            } else {
                None
            };
            Some(Effect::Create(Created { name: rel_name(r), temp: is_temp(r), kind: CreatedKind::Table { columns } }))
        }
        N::CreateTableAsStmt(c) => {
            let into = c.into.as_ref()?;
            let r = into.rel.as_ref()?;
            let is_matview = c.objtype == pb::ObjectType::ObjectMatview as i32;
            let mut outputs: Vec<Output> = match inner(&c.query) {
                Some(N::SelectStmt(s)) => {
                    let mut t2 = Tracer::default();
                    t2.select(s, &Scope::root(), 0)
                }
                _ => vec![Output::Unknown],
            };
            rename(&mut outputs, &into.col_names);
            let kind = if is_matview { CreatedKind::Other } else { CreatedKind::TableAs { outputs } };
            Some(Effect::Create(Created { name: rel_name(r), temp: is_temp(r), kind }))
        }
        N::SelectStmt(s) if s.into_clause.is_some() => {
            let into = s.into_clause.as_ref()?;
            let r = into.rel.as_ref()?;
            let mut outputs: Vec<Output> = output.map(<[Output]>::to_vec).unwrap_or_else(|| {
                let mut t2 = Tracer::default();
                t2.select(s, &Scope::root(), 0)
            });
            rename(&mut outputs, &into.col_names);
            Some(Effect::Create(Created {
                name: rel_name(r),
                temp: is_temp(r),
                kind: CreatedKind::TableAs { outputs },
            }))
        }
        N::ViewStmt(v) => {
            let r = v.view.as_ref()?;
            let mut t2 = Tracer::default();
            let mut outputs = match inner(&v.query) {
                Some(N::SelectStmt(s)) => t2.select(s, &Scope::root(), 0),
                _ => {
                    t2.reads.push(Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) });
                    vec![Output::Unknown]
                }
            };
            rename(&mut outputs, &v.aliases);
            let reads = dedup(t2.reads);
            Some(Effect::Create(Created {
                name: rel_name(r),
                temp: is_temp(r),
                kind: CreatedKind::View { outputs, reads },
            }))
        }
        N::CreateSeqStmt(c) => {
            let r = c.sequence.as_ref()?;
            Some(Effect::Create(Created { name: rel_name(r), temp: is_temp(r), kind: CreatedKind::Other }))
        }
        N::DropStmt(d) => {
            let relation_kinds = [
                pb::ObjectType::ObjectTable,
                pb::ObjectType::ObjectView,
                pb::ObjectType::ObjectMatview,
                pb::ObjectType::ObjectSequence,
                pb::ObjectType::ObjectForeignTable,
            ];
            if !relation_kinds.iter().any(|k| *k as i32 == d.remove_type) {
                return None;
            }
            let names = d
                .objects
                .iter()
                .filter_map(|o| match o.node.as_ref() {
                    Some(N::List(l)) => {
                        let parts: Vec<&str> = l.items.iter().filter_map(string_of).collect();
                        match parts.as_slice() {
                            [name] => Some(RelName { schema: None, name: name.to_string() }),
                            [.., schema, name] => {
                                Some(RelName { schema: Some(schema.to_string()), name: name.to_string() })
                            }
                            [] => None,
                        }
                    }
                    _ => None,
                })
                .collect();
            Some(Effect::Drop(names))
        }
        N::PrepareStmt(p) => {
            let q = inner(&p.query)?;
            Some(Effect::Prepare { name: p.name.clone(), statement: Box::new(statement(q, t.bodies())) })
        }
        N::ExecuteStmt(e) => {
            // The parameters are the client's values (constants), but may
            // be expressions over nothing else.
            for p in &e.params {
                let l = t.expr(p, &Scope::root(), 0);
                t.reads.push(l);
            }
            Some(Effect::Execute { name: e.name.clone() })
        }
        N::DeallocateStmt(d) => {
            Some(Effect::Deallocate { name: (!d.isall && !d.name.is_empty()).then(|| d.name.clone()) })
        }
        N::DeclareCursorStmt(d) => {
            let q = inner(&d.query)?;
            Some(Effect::Declare { name: d.portalname.clone(), statement: Box::new(statement(q, t.bodies())) })
        }
        N::FetchStmt(f) => Some(Effect::Fetch { name: f.portalname.clone(), rows: !f.ismove }),
        N::ClosePortalStmt(c) => Some(Effect::Close { name: (!c.portalname.is_empty()).then(|| c.portalname.clone()) }),
        N::TransactionStmt(tx) => {
            use pb::TransactionStmtKind as K;
            let step = match K::try_from(tx.kind).unwrap_or(K::Undefined) {
                K::TransStmtBegin | K::TransStmtStart => TransactionStep::Begin,
                K::TransStmtCommit => TransactionStep::Commit,
                K::TransStmtRollback => TransactionStep::Rollback,
                K::TransStmtSavepoint => TransactionStep::Savepoint(tx.savepoint_name.clone()),
                K::TransStmtRelease => TransactionStep::Release(tx.savepoint_name.clone()),
                K::TransStmtRollbackTo => TransactionStep::RollbackTo(tx.savepoint_name.clone()),
                _ => TransactionStep::Other,
            };
            Some(Effect::Transaction(step))
        }
        _ => t.search_path_call.take(),
    }
}

/// The PL/pgSQL analysis of a `DO` block (`None`: another language, or a
/// body that does not parse).
fn do_body(d: &pb::DoStmt, do_bodies: DoBodies) -> Option<Procedure> {
    let mut body = None;
    let mut language = "plpgsql".to_string();
    for a in &d.args {
        if let Some(N::DefElem(e)) = a.node.as_ref() {
            let value = e.arg.as_deref().and_then(string_of).map(str::to_string);
            match e.defname.as_str() {
                "as" => body = value,
                "language" => language = value.unwrap_or_default(),
                _ => {}
            }
        }
    }
    do_bodies(&body?, &language)
}

/// The relation a `CREATE` statement makes (it does not exist yet).
fn created_name(node: &N) -> Option<RelName> {
    match node {
        N::CreateStmt(c) => c.relation.as_ref().map(rel_name),
        N::ViewStmt(v) => v.view.as_ref().map(rel_name),
        N::CreateSeqStmt(c) => c.sequence.as_ref().map(rel_name),
        N::CreateTableAsStmt(c) => c.into.as_ref().and_then(|i| i.rel.as_ref()).map(rel_name),
        _ => None,
    }
}

/// Whether a relation being created is temporary.
fn is_temp(r: &pb::RangeVar) -> bool {
    r.relpersistence == "t" || r.schemaname.eq_ignore_ascii_case("pg_temp")
}

fn cte_names(node: &N) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    each_node(node, &mut |kind, v| {
        if kind == "CommonTableExpr"
            && let Some(name) = v.get("ctename").and_then(serde_json::Value::as_str)
        {
            out.insert(name.to_string());
        }
    });
    out
}

/// Calls `f(kind, body)` for every node below `node`, however deep. (The
/// parse tree's own node iterator skips some node kinds; its JSON form has
/// every node as `{"node": {"<Kind>": {...}}}`.)
pub(super) fn each_node(node: &N, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    if let Ok(v) = serde_json::to_value(node) {
        walk_json(&v, f);
    }
}

/// See [`each_node`].
pub(super) fn walk_json(v: &serde_json::Value, f: &mut dyn FnMut(&str, &serde_json::Value)) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(node)) = map.get("node")
                && let Some((kind, body)) = node.iter().next()
            {
                f(kind, body);
            }
            for child in map.values() {
                walk_json(child, f);
            }
        }
        Value::Array(items) => {
            for child in items {
                walk_json(child, f);
            }
        }
        _ => {}
    }
}

fn rel_name(r: &pb::RangeVar) -> RelName {
    RelName { schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()), name: r.relname.clone() }
}

/// A relation visible in one query level.
#[derive(Debug, Clone)]
enum RelKind {
    Base(RelName),
    /// A base relation whose first columns are renamed by an alias column
    /// list (`FROM customers AS t(i, n, e)`): those names resolve by
    /// position.
    Renamed(RelName, Vec<String>),
    /// A subquery, CTE or join alias: its output columns.
    Derived(Vec<Output>),
    /// A function in FROM: every column has this lineage, whatever its name.
    Uniform(Lineage),
    /// The variables of procedural code (at the root scope): a name that a
    /// relation in FROM may also have is a candidate of both.
    Variables(Vec<Output>),
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
    filters: Vec<Condition>,
    reads: Vec<Lineage>,
    sinks: Vec<Sink>,
    /// `set_config('search_path', ...)` seen in an expression.
    search_path_call: Option<Effect>,
    /// Data moved by INSERT/UPDATE nested in a WITH.
    nested_moves: Vec<Lineage>,
    /// How `DO` bodies are analysed (always set by [`statement_in`]).
    do_bodies: Option<DoBodies>,
}

/// A `DO` body nothing can analyse: it may read anything (fail closed).
fn opaque_body(_: &str, _: &str) -> Option<Procedure> {
    Some(Procedure { opaque: true, ..Procedure::default() })
}

fn direct(relation: RelName, column: &str) -> Lineage {
    Lineage { how: How::Direct, sources: BTreeSet::from([Source::Column { relation, column: column.to_string() }]) }
}

pub(super) fn output_lineage(o: &Output) -> Lineage {
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
        RelKind::Base(r) | RelKind::Renamed(r, _) => {
            Lineage { how: How::WholeRow, sources: BTreeSet::from([Source::AllColumns(r.clone())]) }
        }
        RelKind::Derived(outs) | RelKind::Variables(outs) => {
            let l = combine_outputs(outs);
            Lineage { how: if l.how == How::Unknown { How::Unknown } else { How::WholeRow }, sources: l.sources }
        }
        RelKind::Uniform(l) => derived(l.clone()),
    }
}

fn star_of(rel: &ScopeRel) -> Vec<Output> {
    match &rel.kind {
        RelKind::Base(r) | RelKind::Renamed(r, _) => vec![Output::Star(r.clone())],
        RelKind::Derived(outs) => outs.clone(),
        RelKind::Uniform(_) => vec![Output::Unknown],
        // Variables are not a relation of `*`.
        RelKind::Variables(_) => Vec::new(),
    }
}

impl Tracer {
    /// How this statement's nested statements analyse `DO` bodies.
    fn bodies(&self) -> DoBodies {
        self.do_bodies.unwrap_or(opaque_body)
    }

    /// Any statement that returns rows, used as a subquery, CTE or COPY source.
    fn query(&mut self, node: &Node, scope: &Scope<'_>, depth: usize) -> Vec<Output> {
        match node.node.as_ref() {
            Some(N::SelectStmt(s)) => self.select(s, scope, depth),
            Some(n @ (N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_))) => {
                let (_, outs, moves) = self.modify(n, scope, depth);
                // `WITH x AS (INSERT ... SELECT ...)`: the data it moves.
                self.nested_moves.extend(moves);
                outs.unwrap_or_default()
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
        clauses.extend(s.limit_count.as_deref());
        clauses.extend(s.limit_offset.as_deref());
        for c in clauses {
            self.filter(c, &scope, &outs, depth);
        }
        for sb in &s.sort_clause {
            if let Some(N::SortBy(sb)) = sb.node.as_ref()
                && let Some(n) = sb.node.as_deref()
            {
                // ORDER BY names an output column first, an input column
                // only when no output has the name.
                self.sort_key(n, &scope, &outs, depth);
            }
        }
        outs
    }

    fn star(&mut self, c: &pb::ColumnRef, scope: &Scope<'_>) -> Vec<Output> {
        let names: Vec<&str> = c.fields.iter().filter_map(string_of).collect();
        let outs: Vec<Output> = match names.as_slice() {
            [] => scope.rels.iter().flat_map(star_of).collect(),
            [.., alias] => match scope.find_alias(alias) {
                Some(rel) => star_of(rel),
                None => vec![Output::Unknown],
            },
        };
        self.reads.extend(outs.iter().map(output_lineage));
        outs
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
                        // Columns renamed by position: resolved by the
                        // session with the catalog.
                        let names = a.colnames.iter().filter_map(string_of).map(str::to_string).collect();
                        vec![ScopeRel { alias, kind: RelKind::Renamed(name, names) }]
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
                            let base = base_func_name(&fc.funcname);
                            let catalog = fc.funcname.len() == 2 && func_name(&fc.funcname).starts_with("pg_catalog.");
                            (PLAIN_SRFS.contains(&base.as_str()) && fc.funcname.len() == 1)
                                || (catalog && !DATA_FUNCTIONS.contains(&base.as_str()))
                        }
                        _ => false,
                    };
                    if plain {
                        parts.push(l);
                    } else {
                        // A function the session resolves: its output is
                        // as clean as its body.
                        let f = match call.node.as_ref() {
                            Some(N::FuncCall(fc)) => Source::Function(func_name(&fc.funcname)),
                            _ => Source::Opaque,
                        };
                        let how = if f == Source::Opaque { How::Unknown } else { How::Derived };
                        let mut sources = l.sources.clone();
                        sources.insert(f);
                        let lineage = Lineage { how, sources };
                        self.reads.push(lineage.clone());
                        parts.push(lineage);
                    }
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
                self.reads.push(l.clone());
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
            // The server may quote any column of a row it writes (a check
            // constraint's "Failing row contains (...)"): the statement
            // reads them all, as far as its messages go.
            self.reads
                .push(Lineage { how: How::WholeRow, sources: BTreeSet::from([Source::AllColumns(name.clone())]) });
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
        let l = found.unwrap_or_else(Lineage::unknown);
        self.reads.push(l.clone());
        l
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
            N::AExpr(a) => self.a_expr(a, scope, d),
            N::BoolExpr(b) => {
                let parts: Vec<Lineage> = b.args.iter().map(|a| self.condition(a, scope, d)).collect();
                derived(combine(parts))
            }
            N::NullTest(t) => {
                let l = derived(self.opt(t.arg.as_deref(), scope, d));
                self.filters.push(Condition { lineage: l.clone(), equality: false, nullness: true });
                l
            }
            N::BooleanTest(t) => {
                let l = derived(self.opt(t.arg.as_deref(), scope, d));
                self.filters.push(Condition { lineage: l.clone(), equality: false, nullness: false });
                l
            }
            N::CaseExpr(c) => {
                let arg = self.opt(c.arg.as_deref(), scope, d);
                let mut parts = vec![arg.clone(), self.opt(c.defresult.as_deref(), scope, d)];
                for w in &c.args {
                    let Some(N::CaseWhen(w)) = w.node.as_ref() else {
                        parts.push(self.expr(w, scope, d));
                        continue;
                    };
                    // `CASE x WHEN v` compares x with v; `CASE WHEN cond`
                    // tests cond: either way a condition on the values.
                    let test = match c.arg.as_deref() {
                        Some(_) => {
                            let v = self.opt(w.expr.as_deref(), scope, d);
                            let equality = arg.how == How::Direct && v.how == How::Constant;
                            let l = combine([arg.clone(), v]);
                            self.filters.push(Condition { lineage: l.clone(), equality, nullness: false });
                            l
                        }
                        None => match w.expr.as_deref() {
                            Some(e) => self.condition(e, scope, d),
                            None => Lineage::constant(),
                        },
                    };
                    parts.push(test);
                    parts.push(self.opt(w.result.as_deref(), scope, d));
                }
                derived(combine(parts))
            }
            N::CaseWhen(w) => {
                let test = match w.expr.as_deref() {
                    Some(e) => self.condition(e, scope, d),
                    None => Lineage::constant(),
                };
                let parts = [test, self.opt(w.result.as_deref(), scope, d)];
                derived(combine(parts))
            }
            N::CoalesceExpr(c) => self.exprs(&c.args, scope, d),
            N::MinMaxExpr(m) => self.exprs(&m.args, scope, d),
            N::RowExpr(r) => self.exprs(&r.args, scope, d),
            N::AArrayExpr(a) => self.exprs(&a.elements, scope, d),
            N::List(l) => self.exprs(&l.items, scope, d),
            N::AIndirection(i) if let Some(l) = self.field_of_row(i, scope) => l,
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
                let compares = [
                    pb::SubLinkType::AnySublink,
                    pb::SubLinkType::AllSublink,
                    pb::SubLinkType::RowcompareSublink,
                    pb::SubLinkType::ExistsSublink,
                ]
                .iter()
                .any(|k| *k as i32 == s.sub_link_type);
                let mut l = derived(combine(outs.iter().map(output_lineage).chain([test])));
                if l.how == How::WholeRow {
                    l.how = How::Derived;
                }
                if compares && s.sub_link_type != pb::SubLinkType::ExistsSublink as i32 {
                    // `x IN (SELECT ...)`, `x = ANY (SELECT ...)`: a test on
                    // both sides (EXISTS records its own WHERE).
                    self.filters.push(Condition { lineage: l.clone(), equality: false, nullness: false });
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
            _ => {
                // An expression kind the tracer does not follow: it may
                // read anything (fail closed).
                let l = Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) };
                self.reads.push(l.clone());
                l
            }
        }
    }

    /// An operator expression; comparisons, pattern matches, IN, BETWEEN,
    /// IS DISTINCT FROM and NULLIF are recorded as conditions (a test on a
    /// value reveals it, in a WHERE or anywhere else).
    fn a_expr(&mut self, a: &pb::AExpr, scope: &Scope<'_>, d: usize) -> Lineage {
        // `$1 + $2 + ... + $500` nests to the left as deep as it is long:
        // walk that spine with a loop, so a long chain costs no depth.
        let mut spine = vec![a];
        while let Some(N::AExpr(inner)) = spine.last().and_then(|a| a.lexpr.as_deref()).and_then(|n| n.node.as_ref()) {
            spine.push(inner);
        }
        let mut l = self.opt(spine.last().and_then(|a| a.lexpr.as_deref()), scope, d);
        for a in spine.iter().rev() {
            let r = self.opt(a.rexpr.as_deref(), scope, d);
            l = self.a_expr_step(a, l, r);
        }
        l
    }

    /// One operator of [`Self::a_expr`], its operands' lineages known.
    fn a_expr_step(&mut self, a: &pb::AExpr, l: Lineage, r: Lineage) -> Lineage {
        use pb::AExprKind as K;
        let kind = K::try_from(a.kind).unwrap_or(K::Undefined);
        let op = a.name.last().and_then(string_of).unwrap_or("");
        let test = match kind {
            K::AexprOp => COMPARISONS.contains(&op),
            K::Undefined => false,
            _ => true,
        };
        let mut combined = derived(combine([l.clone(), r.clone()]));
        let schema = if a.name.len() > 1 { a.name.first().and_then(string_of) } else { None };
        if let Some(schema) = schema.filter(|s| !s.eq_ignore_ascii_case("pg_catalog")) {
            // `OPERATOR(schema.op)`: a user's operator runs a user's function,
            // decided like a call of it (the session's own are never visible
            // to the catalog: fail closed).
            let full = format!("{}.{op}", schema.to_ascii_lowercase());
            self.functions.insert(full.clone());
            if combined.how != How::Unknown {
                combined.how = How::Derived;
            }
            combined.sources.insert(Source::Function(full.clone()));
            self.reads.push(Lineage { how: How::Derived, sources: BTreeSet::from([Source::Function(full)]) });
        }
        if kind == K::AexprOp && matches!(op, "/" | "%") && r.how != How::Constant {
            // Division by a value fails exactly when it is zero: a test.
            self.filters.push(Condition { lineage: r.clone(), equality: false, nullness: false });
        }
        if test {
            let eq_op = matches!(kind, K::AexprOp | K::AexprIn) && op == "=";
            let equality = eq_op
                && ((l.how == How::Direct && r.how == How::Constant)
                    || (r.how == How::Direct && l.how == How::Constant));
            let lineage = if equality { if l.how == How::Direct { l } else { r } } else { combined.clone() };
            self.filters.push(Condition { lineage, equality, nullness: false });
        }
        combined
    }

    /// An expression used as a condition (a WHERE clause, a CASE WHEN
    /// test, an argument of AND/OR/NOT): recorded, unless it records itself.
    fn condition(&mut self, n: &Node, scope: &Scope<'_>, d: usize) -> Lineage {
        let l = self.expr(n, scope, d);
        if !records_itself(n) {
            self.filters.push(Condition { lineage: l.clone(), equality: false, nullness: false });
        }
        l
    }

    /// `(c).email` where `c` is a relation in scope: that column (with the
    /// reading of `c` as a composite column of the same name as a second
    /// candidate, which the catalog drops when no such column exists).
    fn field_of_row(&mut self, i: &pb::AIndirection, scope: &Scope<'_>) -> Option<Lineage> {
        let [field] = i.indirection.as_slice() else { return None };
        let field = string_of(field)?;
        let Some(N::ColumnRef(c)) = i.arg.as_deref().and_then(|a| a.node.as_ref()) else { return None };
        let [name] = c.fields.as_slice() else { return None };
        let name = string_of(name)?;
        let rel = scope.find_alias(name)?;
        let l = match &rel.kind {
            RelKind::Base(r) | RelKind::Renamed(r, _) => {
                let mut l = resolve_in(rel, field)?;
                l.sources.insert(Source::Column { relation: r.clone(), column: name.to_string() });
                l
            }
            RelKind::Derived(_) | RelKind::Uniform(_) | RelKind::Variables(_) => resolve_in(rel, field)?,
        };
        self.reads.push(l.clone());
        Some(l)
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
        let mut arg_lineages: Vec<Lineage> = f.args.iter().map(|a| self.expr(a, scope, d)).collect();
        if f.agg_within_group {
            // Ordered-set aggregates (`mode() WITHIN GROUP (ORDER BY x)`,
            // `percentile_disc`) return values of their ORDER BY.
            for sb in &f.agg_order {
                if let Some(N::SortBy(sb)) = sb.node.as_ref() {
                    arg_lineages.push(self.opt(sb.node.as_deref(), scope, d));
                }
            }
        }
        let args = derived(combine(arg_lineages.iter().cloned()));
        // A function outside pg_catalog may read tables itself.
        let qualified_user = f.funcname.len() > 1 && !full.starts_with("pg_catalog.");
        if !qualified_user {
            self.sink(&name, f, &arg_lineages);
        }
        let builtin = f.funcname.len() == 1 || full.starts_with("pg_catalog.");
        if builtin && DEFINITION_FUNCTIONS.contains(&name.as_str()) {
            // The text a person wrote, as the catalog keeps it: exactly one
            // value (a cast of it stays direct).
            return Lineage { how: How::Direct, sources: BTreeSet::from([Source::Definition]) };
        }
        if builtin && DATA_FUNCTIONS.contains(&name.as_str()) {
            // Reads data no statement names (large objects, files).
            let l = Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) };
            self.reads.push(l.clone());
            return l;
        }
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
            // Its body may read anything: the session reads it from the
            // catalog.
            if l.how != How::Unknown {
                l.how = How::Derived;
            }
            l.sources.insert(Source::Function(full.clone()));
            self.reads.push(Lineage { how: How::Derived, sources: BTreeSet::from([Source::Function(full)]) });
        }
        l
    }

    /// Records the arguments of a built-in function whose effect outlives
    /// the statement (see [`SinkKind`]); `set_config('search_path', ...)`
    /// also changes the session's name resolution.
    fn sink(&mut self, name: &str, f: &pb::FuncCall, args: &[Lineage]) {
        let (kind, which): (SinkKind, &[usize]) = match name {
            "pg_notify" => (SinkKind::Notification, &[0, 1]),
            "set_config" => (SinkKind::Setting, &[0, 1]),
            "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_advisory_xact_lock"
            | "pg_advisory_xact_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
            | "pg_try_advisory_xact_lock"
            | "pg_try_advisory_xact_lock_shared"
            | "pg_advisory_unlock"
            | "pg_advisory_unlock_shared" => (SinkKind::AdvisoryLock, &[0, 1]),
            "lo_create" | "lo_creat" | "lo_from_bytea" | "lowrite" | "lo_put" | "lo_import" | "lo_export"
            | "lo_unlink" | "lo_truncate" | "lo_truncate64" => (SinkKind::LargeObject, &[0, 1, 2]),
            "nextval" | "setval" | "currval" => (SinkKind::Sequence, &[0, 1, 2]),
            "pg_logical_emit_message" => (SinkKind::Notification, &[0, 1, 2]),
            _ => return,
        };
        let lineage = combine(which.iter().filter_map(|i| args.get(*i)).cloned());
        if name == "set_config"
            && let Some(setting) = f.args.first().and_then(const_text)
            && setting.eq_ignore_ascii_case("search_path")
        {
            let local = f.args.get(2).and_then(const_text).is_some_and(|v| matches!(v.as_str(), "t" | "true" | "on"));
            let local_known = f.args.get(2).is_some_and(|a| const_text(a).is_some() || is_bool_const(a));
            let local = local || f.args.get(2).is_some_and(bool_const_true);
            self.search_path_call = match f.args.get(1).and_then(const_text) {
                Some(value) if local_known => {
                    Some(Effect::SearchPath { schemas: Some(search_path_schemas(&[value])), local })
                }
                _ => Some(Effect::SearchPathUnknown),
            };
        }
        self.sinks.push(Sink { kind, function: name.to_string(), lineage });
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

    /// An ORDER BY item: a bare name is an output column's when one has it.
    fn sort_key(&mut self, node: &Node, scope: &Scope<'_>, outs: &[Output], depth: usize) {
        if let Some(N::ColumnRef(c)) = node.node.as_ref()
            && let [name] = c.fields.iter().filter_map(string_of).collect::<Vec<_>>().as_slice()
            && let Some(l) = outs.iter().find_map(|o| match o {
                Output::Column { name: n, lineage } if n == name => Some(lineage.clone()),
                _ => None,
            })
        {
            self.filters.push(Condition { lineage: l, equality: false, nullness: false });
            return;
        }
        self.filter(node, scope, outs, depth);
    }

    /// Records the columns a filtering/grouping/ordering clause uses.
    fn filter(&mut self, node: &Node, scope: &Scope<'_>, outs: &[Output], depth: usize) {
        // `ROLLUP (a, b)`, `CUBE (...)`, `GROUPING SETS ((a), ())`: each
        // item groups like a plain `GROUP BY` item.
        if let Some(N::GroupingSet(g)) = node.node.as_ref() {
            for item in &g.content {
                self.filter(item, scope, outs, depth);
            }
            return;
        }
        // `ORDER BY 2` / `GROUP BY 1`: the output column at that position.
        if let Some(N::AConst(c)) = node.node.as_ref()
            && let Some(pb::a_const::Val::Ival(i)) = &c.val
        {
            if let Some(o) = usize::try_from(i.ival).ok().and_then(|i| i.checked_sub(1)).and_then(|i| outs.get(i)) {
                self.filters.push(Condition { lineage: output_lineage(o), equality: false, nullness: false });
            }
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
            self.filters.push(Condition { lineage: l, equality: false, nullness: false });
            return;
        }
        let l = self.condition(node, scope, depth);
        if l.how == How::Unknown && l.sources.is_empty() {
            self.filters.push(Condition {
                lineage: Lineage { how: How::Unknown, sources: BTreeSet::from([Source::Opaque]) },
                equality: false,
                nullness: false,
            });
        }
    }
}

/// Operators that test their operands (`=`, `<`, `LIKE`'s `~~`, regular
/// expressions, containment, full-text match, ...).
const COMPARISONS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "~~", "!~~", "~~*", "!~~*", "~", "!~", "~*", "!~*", "^@", "@@", "@@@", "@>",
    "<@", "&&", "?", "?|", "?&", "@?", "<<=", ">>=", "~=", "-|-", "&<", "&>", "<<|", "|>>", "&<|", "|&>",
];

/// Nodes whose [`Tracer::expr`] records their own condition.
fn records_itself(n: &Node) -> bool {
    match n.node.as_ref() {
        Some(N::AExpr(a)) => {
            let kind = pb::AExprKind::try_from(a.kind).unwrap_or(pb::AExprKind::Undefined);
            kind != pb::AExprKind::AexprOp
                || a.name.last().and_then(string_of).is_some_and(|op| COMPARISONS.contains(&op))
        }
        Some(N::BoolExpr(_) | N::NullTest(_) | N::BooleanTest(_)) => true,
        Some(N::SubLink(s)) => {
            [pb::SubLinkType::AnySublink, pb::SubLinkType::AllSublink, pb::SubLinkType::RowcompareSublink]
                .iter()
                .any(|k| *k as i32 == s.sub_link_type)
        }
        _ => false,
    }
}

fn is_bool_const(n: &Node) -> bool {
    matches!(n.node.as_ref(), Some(N::AConst(c)) if matches!(c.val, Some(pb::a_const::Val::Boolval(_))))
}

fn bool_const_true(n: &Node) -> bool {
    matches!(n.node.as_ref(), Some(N::AConst(c)) if matches!(&c.val, Some(pb::a_const::Val::Boolval(b)) if b.boolval))
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
            RelKind::Base(n) | RelKind::Renamed(n, _) => {
                n.name == table && (schema.is_none() || n.schema.as_deref() == schema)
            }
            _ => false,
        })
        .or_else(|| scope.parent.and_then(|p| find_base(p, schema, table)))
}

/// Column `col` of one relation in scope.
fn resolve_in(rel: &ScopeRel, col: &str) -> Option<Lineage> {
    match &rel.kind {
        RelKind::Base(r) => Some(direct(r.clone(), col)),
        RelKind::Renamed(r, names) => match names.iter().position(|n| n == col) {
            Some(position) => Some(Lineage {
                how: How::Direct,
                sources: BTreeSet::from([Source::ColumnAt { relation: r.clone(), position }]),
            }),
            // Columns after the renamed ones keep their names; a renamed
            // column's old name no longer exists (the catalog knows which:
            // the session drops it as a candidate that does not exist).
            None => Some(direct(r.clone(), col)),
        },
        RelKind::Derived(outs) | RelKind::Variables(outs) => lookup(outs, col),
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
        if !cands.is_empty()
            && let Some(v) = variable(scope, name)
        {
            // A relation in FROM may or may not have a column of that name
            // (only the catalog knows); a variable of it certainly exists.
            cands.push(v);
        }
        if let Some(l) = merge_candidates(cands) {
            return Some(l);
        }
        level = s.parent;
    }
    None
}

/// The procedural variable `name`, if the root scope has variables.
fn variable(scope: &Scope<'_>, name: &str) -> Option<Lineage> {
    let mut s = scope;
    while let Some(p) = s.parent {
        s = p;
    }
    s.rels.iter().find_map(|r| match &r.kind {
        RelKind::Variables(outs) => outs.iter().find_map(|o| match o {
            Output::Column { name: n, lineage } if n == name => Some(lineage.clone()),
            _ => None,
        }),
        _ => None,
    })
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
