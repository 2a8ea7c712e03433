//! PL/pgSQL bodies (`DO` blocks, functions and procedures): the SQL they
//! run and where their values go, so that a block whose embedded SQL reads
//! no classified column is as clean as that SQL, and one that does cannot
//! pass a value to a `RAISE`, a notification, a setting or dynamic SQL.
//!
//! PostgreSQL's own PL/pgSQL parser (through `pg_query`) splits the body
//! into statements; every embedded query and expression is traced like a
//! top-level statement (see [`super::analyze`]) with the block's variables in
//! scope. Variables carry the lineage of what was assigned to them (a
//! union over all assignments, iterated so that loops are covered);
//! `SQLERRM`, `SQLSTATE` and `GET DIAGNOSTICS` carry everything the block
//! reads, since an error message can quote any value.
//!
//! Pure: no I/O. Whatever this module does not understand makes the
//! procedure [`Procedure::opaque`] (fail closed).

use std::collections::BTreeMap;

use serde_json::Value;

pub use super::analysis::Procedure;
use super::trace::analyze_with_variables;
use super::{Condition, How, Lineage, Sink, SinkKind, Source};

/// How many times the body is walked so that values assigned late in a
/// loop reach the statements before them.
const PASSES: usize = 3;

/// Analyzes a `DO` block body (`language` as the `DO` statement names it).
/// `None` for other languages, or when PostgreSQL's PL/pgSQL parser
/// rejects the body (the server will too).
pub fn analyze_do(body: &str, language: &str) -> Option<Procedure> {
    if !language.eq_ignore_ascii_case("plpgsql") {
        return None;
    }
    // The parser takes a CREATE FUNCTION statement; a dollar quote that
    // cannot occur in the body keeps it intact.
    let mut tag = String::from("masker_body");
    while body.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    let sql = format!("CREATE FUNCTION pg_temp.masker_do() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$");
    let parsed = pg_query::parse_plpgsql(&sql).ok()?;
    let function = parsed.as_array()?.first()?.get("PLpgSQL_function")?;
    Some(analyze_function(function, &[]))
}

/// Analyzes the body of a PL/pgSQL function whose arguments are named
/// `args` (the caller's values: constants here; their lineage is the
/// call's). `None` when the body does not parse.
pub fn analyze_function_body(body: &str, args: &[String]) -> Option<Procedure> {
    analyze_function_body_with(body, args, &Lineage::constant())
}

/// Like [`analyze_function_body`], with every argument standing for `arg`
/// (for example unknown: where the caller's values could go).
pub fn analyze_function_body_with(body: &str, args: &[String], arg: &Lineage) -> Option<Procedure> {
    let mut tag = String::from("masker_body");
    while body.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    let params: Vec<String> =
        args.iter().enumerate().map(|(i, a)| if a.is_empty() { format!("masker_arg{i}") } else { a.clone() }).collect();
    let signature =
        params.iter().map(|p| format!("\"{}\" text", p.replace('"', "\"\""))).collect::<Vec<_>>().join(", ");
    // The parser checks RETURN against the declared result type, which the
    // body's text does not say: the first that parses (a scalar, a trigger,
    // a set) is the one the body was written for.
    let parsed = ["void", "text", "trigger", "SETOF text"].iter().find_map(|returns| {
        let sql = format!(
            "CREATE FUNCTION pg_temp.masker_fn({signature}) RETURNS {returns} LANGUAGE plpgsql AS ${tag}${body}${tag}$"
        );
        pg_query::parse_plpgsql(&sql).ok()
    })?;
    let function = parsed.as_array()?.first()?.get("PLpgSQL_function")?;
    let params: Vec<(String, Lineage)> = params.into_iter().map(|p| (p, arg.clone())).collect();
    Some(analyze_function(function, &params))
}

/// The value of `expr` when it is a single string constant (`'select 1'`,
/// `$q$select 1$q$`, `E'...'`).
fn constant_string(expr: &str) -> Option<String> {
    super::with_parse_stack(expr, || string_constant(expr))
}

fn string_constant(expr: &str) -> Option<String> {
    let parsed = pg_query::parse(&format!("SELECT {expr}"), 0).ok()?;
    let json = serde_json::to_value(&parsed.protobuf).ok()?;
    let target = json.get("stmts")?.get(0)?.get("stmt")?.get("node")?.get("SelectStmt")?;
    let list = target.get("target_list")?.as_array()?;
    let [only] = list.as_slice() else { return None };
    let val = only.get("node")?.get("ResTarget")?.get("val")?.get("node")?.get("AConst")?;
    Some(val.get("val")?.get("Sval")?.get("sval")?.as_str()?.to_string())
}

/// The variables of a function, by datum number.
struct Datums {
    names: Vec<Option<String>>,
    /// Cursor variables declared with a query (`c CURSOR FOR SELECT ...`).
    cursor_queries: BTreeMap<usize, String>,
    defaults: Vec<(usize, String)>,
}

fn datums(function: &Value) -> Datums {
    let mut names = Vec::new();
    let mut cursor_queries = BTreeMap::new();
    let mut defaults = Vec::new();
    for (i, d) in function.get("datums").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let inner = d.as_object().and_then(|o| o.values().next());
        let name = inner.and_then(|v| v.get("refname")).and_then(Value::as_str).map(str::to_ascii_lowercase);
        if let Some(q) = inner.and_then(|v| v.get("cursor_explicit_expr")).and_then(expr_query) {
            cursor_queries.insert(i, q.to_string());
        }
        if let Some(q) = inner.and_then(|v| v.get("default_val")).and_then(expr_query) {
            defaults.push((i, q.to_string()));
        }
        // Rows built by the parser for INTO targets are not variables.
        let is_row = d.get("PLpgSQL_row").is_some();
        names.push(if is_row { None } else { name });
    }
    Datums { names, cursor_queries, defaults }
}

/// The query text of a `PLpgSQL_expr`.
fn expr_query(v: &Value) -> Option<&str> {
    v.get("PLpgSQL_expr")?.get("query")?.as_str()
}

fn expr_mode(v: &Value) -> i64 {
    v.get("PLpgSQL_expr").and_then(|e| e.get("parseMode")).and_then(Value::as_i64).unwrap_or(0)
}

struct Walker<'d> {
    datums: &'d Datums,
    vars: BTreeMap<String, Lineage>,
    /// Everything the body reads, for `SQLERRM` and friends.
    everything: Lineage,
    out: Procedure,
    /// Whether this pass records (the last one) or only propagates values.
    record: bool,
}

fn analyze_function(function: &Value, params: &[(String, Lineage)]) -> Procedure {
    let datums = datums(function);
    let mut w = Walker {
        datums: &datums,
        vars: BTreeMap::new(),
        everything: Lineage::constant(),
        out: Procedure::default(),
        record: false,
    };
    for name in datums.names.iter().flatten() {
        w.vars.insert(name.clone(), Lineage::constant());
    }
    for (name, l) in params {
        w.vars.insert(name.clone(), l.clone());
    }
    let Some(action) = function.get("action") else {
        return Procedure { opaque: true, ..Procedure::default() };
    };
    for pass in 0..=PASSES {
        w.record = pass == PASSES;
        w.out = Procedure::default();
        for (i, q) in &datums.defaults {
            let l = w.expression(q, 2);
            w.assign(*i, l);
        }
        w.stmt(action);
        // Error texts can quote anything read so far.
        let errors = w.everything.clone();
        for v in ["sqlerrm", "sqlstate"] {
            w.vars.insert(v.to_string(), errors.clone());
        }
    }
    w.out
}

/// The union of two lineages, as values assigned to one variable at
/// different times.
fn union(a: &Lineage, b: &Lineage) -> Lineage {
    let how = match (a.how, b.how) {
        (How::Unknown, _) | (_, How::Unknown) => How::Unknown,
        (How::Constant, h) | (h, How::Constant) => h,
        (x, y) if x == y => x,
        _ => How::Derived,
    };
    Lineage { how, sources: a.sources.union(&b.sources).cloned().collect() }
}

fn opaque() -> Lineage {
    Lineage { how: How::Unknown, sources: [Source::Opaque].into() }
}

impl Walker<'_> {
    fn var_list(&self) -> Vec<(String, Lineage)> {
        self.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Traces an embedded statement (`mode` 0) or expression (other modes);
    /// returns the lineage of what it yields.
    fn expression(&mut self, query: &str, mode: i64) -> Lineage {
        let text = match mode {
            0 => query.to_string(),
            // `target := expr` (assignment): the expression after `:=`.
            3..=5 => match query.split_once(":=") {
                Some((_, e)) => format!("SELECT {e}"),
                None => match query.split_once('=') {
                    Some((_, e)) => format!("SELECT {e}"),
                    None => {
                        self.out.opaque = true;
                        return opaque();
                    }
                },
            },
            _ => format!("SELECT {query}"),
        };
        let analysis = match analyze_with_variables(&text, &self.var_list(), analyze_do) {
            Ok(a) => a,
            Err(_) => {
                self.out.opaque = true;
                return opaque();
            }
        };
        let mut yields = Lineage::constant();
        for s in analysis.statements {
            for r in &s.reads {
                self.everything = union(&self.everything, r);
            }
            let out = match &s.output {
                Some(outs) => {
                    outs.iter().fold(Lineage::constant(), |acc, o| union(&acc, &super::trace::output_lineage(o)))
                }
                None => Lineage::constant(),
            };
            yields = union(&yields, &out);
            if self.record {
                self.out.statements.push(s);
            }
        }
        yields
    }

    fn expr_value(&mut self, v: Option<&Value>) -> Lineage {
        match v {
            Some(e) => match expr_query(e) {
                Some(q) => {
                    let q = q.to_string();
                    self.expression(&q, expr_mode(e))
                }
                None => Lineage::constant(),
            },
            None => Lineage::constant(),
        }
    }

    fn assign(&mut self, datum: usize, l: Lineage) {
        if let Some(Some(name)) = self.datums.names.get(datum) {
            let old = self.vars.get(name).cloned().unwrap_or_else(Lineage::constant);
            self.vars.insert(name.clone(), union(&old, &l));
        }
    }

    /// Assigns `l` to every variable a `target` (row, record, variable)
    /// names.
    fn assign_target(&mut self, target: Option<&Value>, l: &Lineage) {
        let Some(t) = target else { return };
        if let Some(row) = t.get("PLpgSQL_row") {
            for f in row.get("fields").and_then(Value::as_array).into_iter().flatten() {
                if let Some(n) = f.get("varno").and_then(Value::as_u64) {
                    self.assign(n as usize, l.clone());
                }
            }
        } else if let Some(name) =
            t.as_object().and_then(|o| o.values().next()).and_then(|v| v.get("refname")).and_then(Value::as_str)
        {
            let name = name.to_ascii_lowercase();
            let old = self.vars.get(&name).cloned().unwrap_or_else(Lineage::constant);
            self.vars.insert(name, union(&old, l));
        }
    }

    fn sink(&mut self, kind: SinkKind, what: &str, l: Lineage) {
        if self.record {
            self.out.sinks.push(Sink { kind, function: what.to_string(), lineage: l });
        }
    }

    fn condition(&mut self, v: Option<&Value>) {
        let l = self.expr_value(v);
        if self.record {
            self.out.conditions.push(Condition { lineage: l, equality: false, nullness: false });
        }
    }

    fn body(&mut self, list: Option<&Value>) {
        for s in list.and_then(Value::as_array).into_iter().flatten() {
            self.stmt(s);
        }
    }

    fn dynamic(&mut self, query: Option<&Value>, params: Option<&Value>) -> Lineage {
        for p in params.and_then(Value::as_array).into_iter().flatten() {
            let l = self.expr_value(Some(p));
            self.sink(SinkKind::DynamicSql, "EXECUTE ... USING", l);
        }
        // A string constant is SQL like any embedded statement.
        if let Some(text) = query.and_then(expr_query).and_then(constant_string) {
            return self.expression(&text, 0);
        }
        self.out.dynamic = true;
        let text = self.expr_value(query);
        self.sink(SinkKind::DynamicSql, "EXECUTE", text);
        // What dynamic SQL returns is unknown.
        opaque()
    }

    fn stmt(&mut self, s: &Value) {
        let Some((kind, v)) = s.as_object().and_then(|o| o.iter().next()) else {
            self.out.opaque = true;
            return;
        };
        match kind.as_str() {
            "PLpgSQL_stmt_block" => {
                self.body(v.get("body"));
                let handlers = v.get("exceptions").and_then(|e| e.get("PLpgSQL_exception_block"));
                for h in handlers.and_then(|h| h.get("exc_list")).and_then(Value::as_array).into_iter().flatten() {
                    self.body(h.get("PLpgSQL_exception").and_then(|e| e.get("action")));
                }
            }
            "PLpgSQL_stmt_assign" => {
                let l = self.expr_value(v.get("expr"));
                if let Some(n) = v.get("varno").and_then(Value::as_u64) {
                    self.assign(n as usize, l);
                }
            }
            "PLpgSQL_stmt_if" => {
                self.condition(v.get("cond"));
                self.body(v.get("then_body"));
                for e in v.get("elsif_list").and_then(Value::as_array).into_iter().flatten() {
                    let e = e.get("PLpgSQL_if_elsif").unwrap_or(e);
                    self.condition(e.get("cond"));
                    self.body(e.get("stmts"));
                }
                self.body(v.get("else_body"));
            }
            "PLpgSQL_stmt_case" => {
                let tested = self.expr_value(v.get("t_expr"));
                if self.record {
                    self.out.conditions.push(Condition { lineage: tested, equality: false, nullness: false });
                }
                for w in v.get("case_when_list").and_then(Value::as_array).into_iter().flatten() {
                    let w = w.get("PLpgSQL_case_when").unwrap_or(w);
                    self.condition(w.get("expr"));
                    self.body(w.get("stmts"));
                }
                self.body(v.get("else_stmts"));
            }
            "PLpgSQL_stmt_loop" => self.body(v.get("body")),
            "PLpgSQL_stmt_while" => {
                self.condition(v.get("cond"));
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_exit" => self.condition(v.get("cond")),
            "PLpgSQL_stmt_fori" => {
                let mut l = self.expr_value(v.get("lower"));
                l = union(&l, &self.expr_value(v.get("upper")));
                l = union(&l, &self.expr_value(v.get("step")));
                if let Some(var) = v.get("var") {
                    self.assign_target(Some(var), &l);
                }
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_fors" => {
                let l = self.expr_value(v.get("query"));
                self.assign_target(v.get("var"), &l);
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_forc" => {
                let q =
                    v.get("curvar").and_then(Value::as_u64).and_then(|c| self.datums.cursor_queries.get(&(c as usize)));
                let l = match q {
                    Some(q) => {
                        let q = q.clone();
                        self.expression(&q, 0)
                    }
                    None => {
                        self.out.opaque = true;
                        opaque()
                    }
                };
                self.expr_value(v.get("argquery"));
                self.assign_target(v.get("var"), &l);
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_dynfors" => {
                let l = self.dynamic(v.get("query"), v.get("params"));
                self.assign_target(v.get("var"), &l);
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_foreach_a" => {
                let l = self.expr_value(v.get("expr"));
                if let Some(n) = v.get("varno").and_then(Value::as_u64) {
                    self.assign(n as usize, l);
                }
                self.body(v.get("body"));
            }
            "PLpgSQL_stmt_return" | "PLpgSQL_stmt_return_next" => {
                self.expr_value(v.get("expr"));
            }
            "PLpgSQL_stmt_return_query" => {
                if v.get("dynquery").is_some() {
                    self.dynamic(v.get("dynquery"), v.get("params"));
                } else {
                    self.expr_value(v.get("query"));
                }
            }
            "PLpgSQL_stmt_raise" => {
                for p in v.get("params").and_then(Value::as_array).into_iter().flatten() {
                    let l = self.expr_value(Some(p));
                    self.sink(SinkKind::Raise, "RAISE", l);
                }
                for o in v.get("options").and_then(Value::as_array).into_iter().flatten() {
                    let e = o.get("PLpgSQL_raise_option").and_then(|o| o.get("expr"));
                    let l = self.expr_value(e);
                    self.sink(SinkKind::Raise, "RAISE ... USING", l);
                }
            }
            "PLpgSQL_stmt_assert" => {
                self.condition(v.get("cond"));
                let l = self.expr_value(v.get("message"));
                self.sink(SinkKind::Raise, "ASSERT", l);
            }
            "PLpgSQL_stmt_execsql" => {
                let l = self.expr_value(v.get("sqlstmt"));
                self.assign_target(v.get("target"), &l);
            }
            "PLpgSQL_stmt_dynexecute" => {
                let l = self.dynamic(v.get("query"), v.get("params"));
                self.assign_target(v.get("target"), &l);
            }
            "PLpgSQL_stmt_perform" | "PLpgSQL_stmt_call" => {
                self.expr_value(v.get("expr"));
            }
            "PLpgSQL_stmt_getdiag" => {
                let everything = self.everything.clone();
                for d in v.get("diag_items").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(n) = d.get("PLpgSQL_diag_item").and_then(|d| d.get("target")).and_then(Value::as_u64) {
                        self.assign(n as usize, everything.clone());
                    }
                }
            }
            "PLpgSQL_stmt_open" => {
                if v.get("dynquery").is_some() {
                    self.dynamic(v.get("dynquery"), v.get("params"));
                } else {
                    self.expr_value(v.get("query"));
                    self.expr_value(v.get("argquery"));
                    if let Some(q) = v
                        .get("curvar")
                        .and_then(Value::as_u64)
                        .and_then(|c| self.datums.cursor_queries.get(&(c as usize)))
                    {
                        let q = q.clone();
                        self.expression(&q, 0);
                    }
                }
            }
            "PLpgSQL_stmt_fetch" => {
                // Rows of some cursor of this block: as everything it reads.
                let everything = self.everything.clone();
                self.assign_target(v.get("target"), &everything);
            }
            "PLpgSQL_stmt_close" | "PLpgSQL_stmt_commit" | "PLpgSQL_stmt_rollback" => {}
            _ => self.out.opaque = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::RelName;

    fn col(schema: &str, table: &str, column: &str) -> Source {
        Source::Column { relation: RelName { schema: Some(schema.into()), name: table.into() }, column: column.into() }
    }

    fn proc(body: &str) -> Procedure {
        analyze_do(body, "plpgsql").expect("parses")
    }

    #[test]
    fn clean_block_counts_and_raises() {
        let p = proc("DECLARE n int; BEGIN SELECT count(*) INTO n FROM app.orders; RAISE NOTICE 'orders: %', n; END");
        assert!(!p.dynamic && !p.opaque);
        assert_eq!(p.sinks.len(), 1);
        assert!(matches!(p.sinks[0].lineage.how, How::Constant | How::Aggregate { reveals: false }), "{p:?}");
        assert!(p.statements.iter().any(|s| s.relations.iter().any(|r| r.name == "orders")));
    }

    #[test]
    fn values_flow_through_variables_into_sinks() {
        let p = proc(
            "DECLARE r record; e text; BEGIN FOR r IN SELECT email FROM app.customers LOOP e := upper(r.email); \
             PERFORM pg_notify('c', e); END LOOP; RAISE WARNING 'x %', e; END",
        );
        let email = col("app", "customers", "email");
        let raise = p.sinks.iter().find(|s| s.kind == SinkKind::Raise).expect("raise");
        assert!(raise.lineage.sources.contains(&email), "{raise:?}");
        let notify =
            p.statements.iter().flat_map(|s| &s.sinks).find(|s| s.kind == SinkKind::Notification).expect("notify");
        assert!(notify.lineage.sources.contains(&email), "{notify:?}");
    }

    #[test]
    fn loops_carry_values_backwards() {
        // `x` is raised before the assignment that taints it, in a loop.
        let p = proc(
            "DECLARE x text := ''; i int := 0; BEGIN WHILE i < 3 LOOP RAISE NOTICE '%', x; \
             SELECT ssn INTO x FROM app.customers LIMIT 1; i := i + 1; END LOOP; END",
        );
        let raise = p.sinks.iter().find(|s| s.kind == SinkKind::Raise).expect("raise");
        assert!(raise.lineage.sources.contains(&col("app", "customers", "ssn")), "{raise:?}");
    }

    #[test]
    fn error_texts_carry_everything_read() {
        let p = proc(
            "BEGIN PERFORM ssn::int FROM app.customers; EXCEPTION WHEN others THEN RAISE NOTICE '%', SQLERRM; END",
        );
        let raise = p.sinks.iter().find(|s| s.kind == SinkKind::Raise).expect("raise");
        assert!(raise.lineage.sources.contains(&col("app", "customers", "ssn")), "{raise:?}");
    }

    #[test]
    fn constant_dynamic_sql_is_analysed_like_embedded_sql() {
        let p = proc("BEGIN EXECUTE 'select pg_notify(''c'', email) from app.customers'; END");
        assert!(!p.dynamic, "{p:?}");
        let notify = p.statements.iter().flat_map(|s| &s.sinks).find(|s| s.kind == SinkKind::Notification);
        assert!(notify.is_some_and(|n| n.lineage.sources.contains(&col("app", "customers", "email"))), "{p:?}");
        // Built at run time: flagged.
        assert!(proc("BEGIN EXECUTE 'select ' || 'email from app.customers'; END").dynamic);
    }

    #[test]
    fn dynamic_sql_is_flagged_with_its_text() {
        let p = proc(
            "DECLARE e text; BEGIN SELECT email INTO e FROM app.customers LIMIT 1; \
             EXECUTE format('SELECT %L', e); END",
        );
        assert!(p.dynamic);
        let d = p.sinks.iter().find(|s| s.kind == SinkKind::DynamicSql).expect("dynamic");
        assert!(d.lineage.sources.contains(&col("app", "customers", "email")), "{d:?}");
    }

    #[test]
    fn conditions_on_values() {
        let p = proc(
            "DECLARE s text; BEGIN SELECT ssn INTO s FROM app.customers LIMIT 1; \
             IF s LIKE '5%' THEN RAISE EXCEPTION 'boom'; END IF; END",
        );
        assert!(
            p.conditions.iter().any(|c| c.lineage.sources.contains(&col("app", "customers", "ssn")))
                || p.statements.iter().flat_map(|s| &s.filters).any(|c| c.lineage.sources.contains(&col(
                    "app",
                    "customers",
                    "ssn"
                ))),
            "{p:?}"
        );
    }

    #[test]
    fn other_languages_and_bad_bodies() {
        assert!(analyze_do("select 1", "sql").is_none());
        assert!(analyze_do("BEGIN RAISE NOTICE 'unterminated; END", "plpgsql").is_none());
        // A body containing the wrapper's quote tag still parses.
        let p = proc("BEGIN RAISE NOTICE '$masker_body$'; END");
        assert!(!p.opaque);
    }

    #[test]
    fn function_bodies_parse_whatever_they_return() {
        let args = ["t".to_string()];
        // A scalar result, a trigger's row, a set: each parses as written.
        for body in [
            "BEGIN RAISE WARNING 'saw %', t; RETURN 'ok'; END",
            "BEGIN PERFORM pg_notify('c', t); RETURN NEW; END",
            "BEGIN RETURN NEXT t; END",
            "BEGIN PERFORM 1; END",
        ] {
            let p = analyze_function_body(body, &args).unwrap_or_else(|| panic!("{body}"));
            assert!(!p.opaque && !p.dynamic, "{body}: {p:?}");
        }
        assert!(analyze_function_body("BEGIN RETURN 1 +; END", &args).is_none());
    }

    #[test]
    fn arguments_can_stand_for_what_the_caller_passes() {
        let args = ["t".to_string()];
        let body = "BEGIN PERFORM set_config('application_name', t, false); RAISE WARNING '%', t; RETURN 1; END";
        // As constants (the caller's lineage decides), nothing flows.
        let p = analyze_function_body(body, &args).expect("parses");
        assert!(
            p.sinks.iter().chain(p.statements.iter().flat_map(|s| &s.sinks)).all(|s| s.lineage.how == How::Constant)
        );
        // Standing for anything, the setting and the RAISE both carry it.
        let p = analyze_function_body_with(body, &args, &Lineage::unknown()).expect("parses");
        let kinds: Vec<SinkKind> = p
            .sinks
            .iter()
            .chain(p.statements.iter().flat_map(|s| &s.sinks))
            .filter(|s| s.lineage.how != How::Constant)
            .map(|s| s.kind)
            .collect();
        assert!(kinds.contains(&SinkKind::Setting) && kinds.contains(&SinkKind::Raise), "{kinds:?}");
    }
}
