use super::*;
use std::collections::BTreeSet;

fn rel(name: &str) -> RelName {
    RelName { schema: None, name: name.into() }
}

fn col(table: &str, column: &str) -> Source {
    Source::Column { relation: rel(table), column: column.into() }
}

fn outputs(sql: &str) -> Vec<Output> {
    let a = analyze_uncached(sql).expect("parses");
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements[0].output.clone().expect("returns rows")
}

fn lineage(sql: &str, i: usize) -> Lineage {
    match &outputs(sql)[i] {
        Output::Column { lineage, .. } => lineage.clone(),
        other => panic!("{sql}: output {i} is {other:?}"),
    }
}

#[track_caller]
fn check(sql: &str, how: How, sources: &[Source]) {
    let l = lineage(sql, 0);
    assert_eq!(l.how, how, "{sql}: {l:?}");
    let want: BTreeSet<Source> = sources.iter().cloned().collect();
    assert_eq!(l.sources, want, "{sql}");
}

/// The first output derives from `source` (not as the column itself).
#[track_caller]
fn reveals(sql: &str, source: Source) {
    let l = lineage(sql, 0);
    assert!(l.how != How::Direct && l.how != How::Constant, "{sql}: {l:?}");
    assert!(l.sources.contains(&source), "{sql}: {source:?} not among the sources: {l:?}");
}

#[test]
fn direct_columns_and_casts() {
    check("SELECT email FROM customers", How::Direct, &[col("customers", "email")]);
    check("SELECT c.email FROM customers c", How::Direct, &[col("customers", "email")]);
    check("SELECT email::varchar(200) FROM customers", How::Direct, &[col("customers", "email")]);
    check(
        "SELECT public.customers.email FROM public.customers",
        How::Direct,
        &[Source::Column {
            relation: RelName { schema: Some("public".into()), name: "customers".into() },
            column: "email".into(),
        }],
    );
}

#[test]
fn functions_operators_and_conditionals_derive() {
    for sql in [
        "SELECT upper(email) FROM customers",
        "SELECT 'x' || email FROM customers",
        "SELECT reverse(email) FROM customers",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        "SELECT CASE WHEN id > 0 THEN email END FROM customers",
        "SELECT coalesce(null, email) FROM customers",
        "SELECT greatest(email, 'a') FROM customers",
        "SELECT json_build_object('e', email) FROM customers",
        "SELECT jsonb_build_array(email) FROM customers",
        "SELECT ARRAY[email] FROM customers",
        "SELECT JSON_OBJECT('e' VALUE email) FROM customers",
        "SELECT (email)::text || '' FROM customers",
        "SELECT lag(email) OVER (ORDER BY id) FROM customers",
        "SELECT email COLLATE \"C\" || '' FROM customers",
        "SELECT substr(email, 1, 3) FROM customers",
    ] {
        reveals(sql, col("customers", "email"));
    }
}

#[test]
fn aggregates() {
    check("SELECT count(ssn) FROM customers", How::Aggregate { reveals: false }, &[]);
    check("SELECT count(*) FROM customers", How::Aggregate { reveals: false }, &[]);
    check("SELECT string_agg(ssn, ',') FROM customers", How::Aggregate { reveals: true }, &[col("customers", "ssn")]);
    check("SELECT max(ssn) FROM customers", How::Aggregate { reveals: true }, &[col("customers", "ssn")]);
    check("SELECT count(*) + 1 FROM customers", How::Aggregate { reveals: false }, &[]);
    reveals("SELECT upper(min(email)) FROM customers", col("customers", "email"));
}

#[test]
fn whole_rows() {
    for sql in [
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c.*) FROM customers c",
        "SELECT c::text FROM customers c",
        "SELECT c FROM customers c",
    ] {
        let l = lineage(sql, 0);
        assert!(l.sources.contains(&Source::AllColumns(rel("customers"))), "{sql}: {l:?}");
        assert_ne!(l.how, How::Direct, "{sql}");
    }
}

#[test]
fn stars_expand_symbolically() {
    assert_eq!(outputs("SELECT * FROM customers"), vec![Output::Star(rel("customers"))]);
    let o = outputs("SELECT o.id, c.* FROM orders o JOIN customers c ON c.id = o.customer_id");
    assert_eq!(o.len(), 2);
    assert_eq!(o[1], Output::Star(rel("customers")));
    assert_eq!(outputs("SELECT * FROM (SELECT * FROM customers) s"), vec![Output::Star(rel("customers"))]);
    assert_eq!(outputs("SELECT * FROM generate_series(1, 3)"), vec![Output::Unknown]);
}

#[test]
fn subqueries_ctes_and_set_operations() {
    check("SELECT e FROM (SELECT email AS e FROM customers) s", How::Direct, &[col("customers", "email")]);
    reveals("SELECT e FROM (SELECT upper(email) AS e FROM customers) s", col("customers", "email"));
    reveals("WITH x AS (SELECT lower(ssn) s FROM customers) SELECT s FROM x", col("customers", "ssn"));
    check("WITH x AS (SELECT ssn FROM customers) SELECT ssn FROM x", How::Direct, &[col("customers", "ssn")]);
    reveals("SELECT (SELECT email FROM customers LIMIT 1)", col("customers", "email"));
    reveals("SELECT id::text FROM orders UNION ALL SELECT email FROM customers", col("customers", "email"));
    let l = lineage("SELECT 1, 'a' INTERSECT SELECT id, ssn FROM customers", 1);
    assert!(l.sources.contains(&col("customers", "ssn")), "{l:?}");
    let l = lineage("SELECT id::text FROM orders EXCEPT SELECT email FROM customers", 0);
    assert!(l.sources.contains(&col("customers", "email")));
    reveals(
        "WITH RECURSIVE r(n, e) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, (SELECT email FROM customers OFFSET n LIMIT 1) FROM r WHERE n < 3) SELECT e FROM r",
        col("customers", "email"),
    );
    let l = lineage(
        "WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n + 1, upper(e) FROM r WHERE n < 3) SELECT e FROM r",
        0,
    );
    assert!(l.sources.contains(&col("customers", "email")) && l.how != How::Direct, "{l:?}");
}

#[test]
fn lateral_and_functions_in_from() {
    reveals("SELECT x FROM customers c, LATERAL (SELECT upper(c.email) AS x) l", col("customers", "email"));
    reveals("SELECT t FROM customers, unnest(tags || ARRAY[ssn]) t", col("customers", "ssn"));
    reveals("SELECT v FROM customers c, jsonb_each_text(c.profile) AS j(k, v)", col("customers", "profile"));
    // A function the session resolves with the catalog (its body decides).
    let l = lineage("SELECT v FROM fixture.personal_values() v", 0);
    assert!(l.sources.contains(&Source::Function("fixture.personal_values".into())), "{l:?}");
    assert_ne!(l.how, How::Direct);
    let l = lineage("SELECT fixture.label(id) FROM customers", 0);
    assert!(l.sources.contains(&Source::Function("fixture.label".into())), "{l:?}");
}

#[test]
fn constants_stay_constant() {
    check("SELECT 1, now()", How::Constant, &[]);
    check("SELECT $1::text", How::Constant, &[]);
    check("VALUES (1, 'a')", How::Constant, &[]);
}

#[test]
fn ambiguous_names_list_every_candidate() {
    let l = lineage("SELECT email FROM orders o JOIN customers c ON c.id = o.customer_id", 0);
    assert_eq!(l.how, How::Direct);
    assert!(l.sources.contains(&col("customers", "email")) && l.sources.contains(&col("orders", "email")));
}

#[test]
fn statement_classes_and_moves() {
    let a = analyze_uncached(
        "CREATE TABLE t AS SELECT upper(email) FROM customers; SELECT ssn INTO t2 FROM customers; \
         INSERT INTO t3 SELECT ssn FROM customers; UPDATE orders SET status = (SELECT ssn FROM customers LIMIT 1); \
         COPY (SELECT ssn FROM customers) TO STDOUT; COPY customers TO STDOUT; BEGIN; SET x = 1; DO $$ BEGIN END $$; \
         CREATE VIEW v AS SELECT 1; EXPLAIN SELECT 1",
    )
    .unwrap();
    let classes: Vec<StatementClass> = a.statements.iter().map(|s| s.class).collect();
    use StatementClass::*;
    assert_eq!(
        classes,
        [CreateTableAs, CreateTableAs, Insert, Update, Copy, Copy, Transaction, Config, Procedural, Ddl, Explain]
    );
    for s in &a.statements[..5] {
        let m = s.moves.as_ref().expect("moves data");
        assert!(
            m.sources
                .iter()
                .any(|s| matches!(s, Source::Column { column, .. } if column == "ssn" || column == "email"))
        );
    }
    assert!(a.statements[4].copy_query && !a.statements[5].copy_query);
    assert!(a.statements[5].relations.contains(&rel("customers")));
}

#[test]
fn relations_exclude_ctes_and_include_subqueries() {
    let a = analyze_uncached("WITH x AS (SELECT id FROM orders) SELECT * FROM x WHERE EXISTS (SELECT 1 FROM pg_stats)")
        .unwrap();
    let rels = &a.statements[0].relations;
    assert!(rels.contains(&rel("orders")) && rels.contains(&rel("pg_stats")) && !rels.contains(&rel("x")));
}

#[test]
fn returning_is_traced() {
    let a = analyze_uncached("UPDATE customers SET plan = plan RETURNING upper(email)").unwrap();
    let out = a.statements[0].output.as_ref().unwrap();
    match &out[0] {
        Output::Column { lineage, .. } => assert!(lineage.sources.contains(&col("customers", "email"))),
        o => panic!("{o:?}"),
    }
}

#[test]
fn filters_record_predicates_with_equality() {
    let a = analyze_uncached("SELECT count(*) FROM customers WHERE ssn LIKE '1%' AND email = $1 ORDER BY 1").unwrap();
    let f = &a.statements[0].filters;
    assert!(tests_column(f, &col("customers", "ssn"), false), "{f:?}");
    assert!(tests_column(f, &col("customers", "email"), true), "{f:?}");
}

#[test]
fn grouping_sets_record_their_columns() {
    for sql in [
        "SELECT status, count(*) FROM orders GROUP BY ROLLUP (status) ORDER BY 1",
        "SELECT status, amount, count(*) FROM orders GROUP BY CUBE (status, (amount, customer_id))",
        "SELECT status, count(*) FROM orders GROUP BY GROUPING SETS ((status), ()), amount",
    ] {
        let a = analyze_uncached(sql).unwrap();
        let f = &a.statements[0].filters;
        assert!(tests_column(f, &col("orders", "status"), false), "{sql}: {f:?}");
        assert!(
            f.iter().all(|c| c.lineage.how != How::Unknown && !c.lineage.sources.contains(&Source::Opaque)),
            "{sql}: {f:?}"
        );
    }
    let a = analyze_uncached("SELECT count(*) FROM customers GROUP BY ROLLUP (plan, (ssn))").unwrap();
    assert!(tests_column(&a.statements[0].filters, &col("customers", "ssn"), false));
}

#[test]
fn null_tests_are_marked_as_such() {
    let a = analyze_uncached(
        "SELECT CASE WHEN indpred IS NOT NULL THEN pg_get_expr(indpred, indrelid) END FROM pg_index \
         WHERE indpred::text LIKE '%x%'",
    )
    .unwrap();
    let f = &a.statements[0].filters;
    let indpred = col("pg_index", "indpred");
    let on = |nullness: bool| f.iter().any(|c| c.lineage.sources.contains(&indpred) && c.nullness == nullness);
    assert!(on(true), "the IS NOT NULL test: {f:?}");
    assert!(on(false), "the LIKE test: {f:?}");
}

/// Whether some condition tests `source` (with `equality` as given).
fn tests_column(f: &[Condition], source: &Source, equality: bool) -> bool {
    f.iter().any(|c| c.lineage.sources.contains(source) && c.equality == equality)
}

fn statement(sql: &str) -> Statement {
    let a = analyze_uncached(sql).expect("parses");
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements[0].clone()
}

#[test]
fn conditions_anywhere_are_recorded() {
    for sql in [
        "SELECT CASE WHEN ssn LIKE '5%' THEN 1 ELSE 0 END FROM customers",
        "SELECT 1/(CASE WHEN ssn LIKE '5%' THEN 0 ELSE 1 END) FROM customers",
        "SELECT count(*) FILTER (WHERE ssn > '5') FROM customers",
        "SELECT nullif(ssn, '123') FROM customers",
        "SELECT ssn < '5' FROM customers",
        "SELECT CASE ssn WHEN '1' THEN 'a' END FROM customers",
        "SELECT count(*) FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.ssn LIKE '1%')",
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn ~ '^5')",
        "SELECT sum(id) FROM customers HAVING max(ssn) > '5'",
        "SELECT rank() OVER (PARTITION BY ssn) FROM customers",
        "SELECT id FROM orders LIMIT (SELECT count(*) FROM customers WHERE ssn LIKE '5%')",
        "SELECT id FROM orders OFFSET (SELECT length(max(ssn)) FROM customers)",
        "SELECT x.n FROM (SELECT 1 AS n FROM orders o JOIN customers c ON c.ssn = o.note) x",
        "SELECT ssn IS NULL FROM customers",
        "SELECT ssn IN ('1', '2') FROM customers",
        "SELECT ssn BETWEEN '1' AND '5' FROM customers",
        "SELECT ssn IS DISTINCT FROM '1' FROM customers",
    ] {
        let s = statement(sql);
        assert!(
            s.filters.iter().any(|c| c.lineage.sources.contains(&col("customers", "ssn"))),
            "{sql}: {:?}",
            s.filters
        );
    }
    // Equality with a constant keeps its flag wherever it is.
    let s = statement("SELECT CASE WHEN email = 'a@b.c' THEN 1 END FROM customers");
    assert!(tests_column(&s.filters, &col("customers", "email"), true), "{:?}", s.filters);
    let s = statement("SELECT count(*) FROM customers WHERE email IN ('a', 'b')");
    assert!(tests_column(&s.filters, &col("customers", "email"), true), "{:?}", s.filters);
    // Arithmetic and concatenation are not tests.
    let s = statement("SELECT id + 1, email || 'x' FROM customers");
    assert!(s.filters.is_empty(), "{:?}", s.filters);
}

#[test]
fn unqualified_join_columns_keep_their_candidates() {
    let s = statement("SELECT o.id FROM orders o JOIN customers c ON c.id = customer_id");
    let group = s
        .filters
        .iter()
        .find(|c| c.lineage.sources.contains(&col("orders", "customer_id")))
        .expect("the join condition is recorded");
    // Both relations are candidates for `customer_id`, in one condition:
    // the session drops the one the catalog denies.
    assert!(group.lineage.sources.contains(&col("customers", "customer_id")), "{group:?}");
}

#[test]
fn reads_cover_every_reference() {
    let s = statement("SELECT id FROM customers WHERE ssn = '1' ORDER BY email");
    for c in ["id", "ssn", "email"] {
        assert!(s.reads.iter().any(|l| l.sources.contains(&col("customers", c))), "{c}: {:?}", s.reads);
    }
    let s = statement("SELECT * FROM customers");
    assert!(s.reads.iter().any(|l| l.sources.contains(&Source::AllColumns(rel("customers")))), "{:?}", s.reads);
    let s = statement("SELECT 1 FROM app.customer_contact(1)");
    assert!(
        s.reads.iter().any(|l| l.sources.contains(&Source::Function("app.customer_contact".into()))),
        "{:?}",
        s.reads
    );
    let s = statement("SELECT 1 FROM xmltable('/a' PASSING '<a/>' COLUMNS x int)");
    assert!(s.reads.iter().any(|l| l.sources.contains(&Source::Opaque)), "{:?}", s.reads);
    let s = statement("SELECT 'jane@example.com', $1, now()");
    assert!(s.reads.is_empty(), "{:?}", s.reads);
}

#[test]
fn sinks_name_their_channel() {
    let s = statement("SELECT pg_notify('c', full_name) FROM customers");
    let sink = s.sinks.first().expect("a sink");
    assert_eq!(sink.kind, SinkKind::Notification);
    assert!(sink.lineage.sources.contains(&col("customers", "full_name")));
    let s = statement("SELECT set_config('application_name', phone, false) FROM customers LIMIT 1");
    assert_eq!(s.sinks[0].kind, SinkKind::Setting);
    assert!(s.sinks[0].lineage.sources.contains(&col("customers", "phone")));
    let s = statement("SELECT pg_advisory_lock(length(ssn)) FROM customers");
    assert_eq!(s.sinks[0].kind, SinkKind::AdvisoryLock);
    let s = statement("SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers");
    assert_eq!(s.sinks[0].kind, SinkKind::LargeObject);
    let s = statement("SELECT pg_notify('c', 'literal')");
    assert_eq!(s.sinks[0].lineage.how, How::Constant);
}

#[test]
fn alias_column_lists_and_row_fields_resolve() {
    let l = lineage("SELECT t.n FROM customers AS t(i, n, e)", 0);
    assert_eq!(l.how, How::Direct);
    assert_eq!(l.sources, BTreeSet::from([Source::ColumnAt { relation: rel("customers"), position: 1 }]), "{l:?}");
    let l = lineage("SELECT (c).email FROM customers c", 0);
    assert_eq!(l.how, How::Direct, "{l:?}");
    assert!(l.sources.contains(&col("customers", "email")));
}

#[test]
fn session_effects() {
    let e = |sql: &str| statement(sql).effect;
    assert_eq!(
        e("SET search_path TO app, \"$user\", public"),
        Some(Effect::SearchPath { schemas: Some(vec!["app".into(), "$user".into(), "public".into()]), local: false })
    );
    assert_eq!(
        e("SET LOCAL search_path = 'app,public'"),
        Some(Effect::SearchPath { schemas: Some(vec!["app".into(), "public".into()]), local: true })
    );
    assert_eq!(e("RESET search_path"), Some(Effect::SearchPath { schemas: None, local: false }));
    assert_eq!(
        e("SELECT pg_catalog.set_config('search_path', '', false)"),
        Some(Effect::SearchPath { schemas: Some(vec![]), local: false })
    );
    assert_eq!(e("SELECT set_config('search_path', current_user, false)"), Some(Effect::SearchPathUnknown));
    match e("CREATE TEMP TABLE t (a int, b text)") {
        Some(Effect::Create(c)) => {
            assert!(c.temp);
            assert_eq!(c.kind, CreatedKind::Table { columns: Some(vec!["a".into(), "b".into()]) });
        }
        other => panic!("{other:?}"),
    }
    match e("CREATE TEMP VIEW v (x) AS SELECT email FROM customers") {
        Some(Effect::Create(Created { kind: CreatedKind::View { outputs, .. }, temp: true, .. })) => {
            assert!(matches!(&outputs[0], Output::Column { name, .. } if name == "x"), "{outputs:?}");
        }
        other => panic!("{other:?}"),
    }
    match e("PREPARE p (int) AS SELECT id, amount FROM orders WHERE id = $1") {
        Some(Effect::Prepare { name, statement }) => {
            assert_eq!(name, "p");
            assert_eq!(statement.output.as_ref().map(Vec::len), Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e("EXECUTE p(1)"), Some(Effect::Execute { name: "p".into() }));
    match e("DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT email FROM customers") {
        Some(Effect::Declare { name, statement }) => {
            assert_eq!(name, "c");
            assert!(statement.reads.iter().any(|l| l.sources.contains(&col("customers", "email"))));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e("FETCH 10 FROM c"), Some(Effect::Fetch { name: "c".into(), rows: true }));
    assert_eq!(e("MOVE NEXT IN c"), Some(Effect::Fetch { name: "c".into(), rows: false }));
    assert_eq!(e("CLOSE ALL"), Some(Effect::Close { name: None }));
    assert_eq!(e("DISCARD ALL"), Some(Effect::Discard { all: true, temp: true, plans: true }));
    assert_eq!(
        e("DROP TABLE IF EXISTS t, app.u"),
        Some(Effect::Drop(vec![rel("t"), RelName { schema: Some("app".into()), name: "u".into() }]))
    );
    assert_eq!(e("ROLLBACK TO SAVEPOINT s"), Some(Effect::Transaction(TransactionStep::RollbackTo("s".into()))));
}

#[test]
fn unparsable_text_is_an_error_and_cache_hits() {
    assert!(analyze_uncached("SELEC 1").is_err());
    let a = analyze("SELECT email FROM customers");
    let b = analyze("SELECT email FROM customers");
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn cache_key_blanks_literals_only() {
    use crate::sql::cache_key;
    let a = cache_key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
    assert_eq!(a, cache_key("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"));
    assert_eq!(a, "SELECT abalance FROM pgbench_accounts WHERE aid = ?;");
    assert_eq!(cache_key("SELECT 'it''s', E'a\\'b', $$x$$, $t$y$t$, 1.5e-3"), "SELECT ?, E?, ?, ?, ?");
    // Identifiers, parameters and quoted names stay.
    assert_eq!(cache_key("SELECT t1.c2, \"x 1\" FROM t1 WHERE a = $1"), "SELECT t1.c2, \"x 1\" FROM t1 WHERE a = $1");
    // Positional references make numbers significant.
    assert_ne!(cache_key("SELECT a, b FROM t ORDER BY 1"), cache_key("SELECT a, b FROM t ORDER BY 2"));
    assert_ne!(cache_key("SELECT a, count(*) FROM t GROUP BY 1"), cache_key("SELECT a, count(*) FROM t GROUP BY 2"));
    // Different identifiers never share a key.
    assert_ne!(
        cache_key("SELECT email FROM customers WHERE id = 1"),
        cache_key("SELECT plan FROM customers WHERE id = 1")
    );
    // Unterminated text is left alone (the server will reject it).
    assert_eq!(cache_key("SELECT 'abc"), "SELECT 'abc");
    // The blanked text still has the same analysis.
    let one = crate::sql::analyze("SELECT upper(email) FROM customers WHERE id = 1");
    let two = crate::sql::analyze("SELECT upper(email) FROM customers WHERE id = 2");
    assert!(std::sync::Arc::ptr_eq(&one, &two));
    assert_eq!(*one, crate::sql::analyze_uncached("SELECT upper(email) FROM customers WHERE id = 2"));
}

#[test]
fn ordered_set_aggregates_reveal_their_order_by() {
    reveals("SELECT mode() WITHIN GROUP (ORDER BY iban) FROM customers", col("customers", "iban"));
    reveals("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ssn) FROM customers", col("customers", "ssn"));
}

#[test]
fn cache_keeps_code_and_settings_apart() {
    use crate::sql::cache_key;
    let a = "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers LIMIT 1); END $$";
    let b = "DO $$ BEGIN RAISE NOTICE 'orders: %', (SELECT count(*) FROM orders); END $$";
    assert_ne!(cache_key(a), cache_key(b));
    assert_ne!(*crate::sql::analyze(a), *crate::sql::analyze(b));
    assert_ne!(
        cache_key("SELECT set_config('search_path', 'app', false)"),
        cache_key("SELECT set_config('search_path', 'other', false)")
    );
    // Ordinary statements still share a key across literals.
    assert_eq!(cache_key("SELECT 'x' FROM t WHERE dob = 'y'"), cache_key("SELECT 'a' FROM t WHERE dob = 'b'"));
}

#[test]
fn data_modifying_with_moves_data() {
    let s = statement("WITH x AS (INSERT INTO t SELECT card FROM customers RETURNING e) SELECT * FROM x");
    assert!(s.moves.as_ref().is_some_and(|m| m.sources.contains(&col("customers", "card"))), "{:?}", s.moves);
}

#[test]
fn procedural_variables_are_candidates_beside_columns() {
    let vars = [("p_id".to_string(), Lineage::constant())];
    let a =
        crate::sql::analyze_with_variables("SELECT sum(amount) FROM orders WHERE customer_id = p_id", &vars).unwrap();
    let s = &a.statements[0];
    let cond = s.filters.iter().find(|c| c.lineage.sources.contains(&col("orders", "p_id"))).expect("condition");
    // Column or variable: not a direct column (the catalog drops the column).
    assert_ne!(cond.lineage.how, How::Direct, "{cond:?}");
}

#[test]
fn division_by_a_value_is_a_test_of_it() {
    let s = statement("SELECT 1/(length(full_name) - 11) FROM customers");
    assert!(tests_column(&s.filters, &col("customers", "full_name"), false), "{:?}", s.filters);
    let s = statement("SELECT id % 7, amount / 2 FROM orders");
    assert!(s.filters.is_empty(), "{:?}", s.filters);
}

#[test]
fn explain_reads_its_query_and_knows_its_format() {
    let s = statement("EXPLAIN SELECT id FROM customers WHERE email = 'x'");
    assert!(s.reads.iter().any(|l| l.sources.contains(&col("customers", "email"))), "{:?}", s.reads);
    assert!(s.explain_text);
    assert!(!statement("EXPLAIN (FORMAT JSON) SELECT 1").explain_text);
}

#[test]
fn create_trigger_names_the_function_it_will_run() {
    let a = analyze("CREATE TRIGGER t AFTER INSERT ON side_t FOR EACH ROW EXECUTE FUNCTION pg_temp.side_fn()")
        .as_ref()
        .clone()
        .unwrap();
    let s = &a.statements[0];
    assert_eq!(s.class, StatementClass::Ddl);
    assert_eq!(s.write, Some("CREATE TRIGGER"));
    assert!(s.functions.contains("pg_temp.side_fn"), "{:?}", s.functions);
    let a = analyze("CREATE TRIGGER t BEFORE UPDATE ON app.t FOR EACH ROW EXECUTE PROCEDURE audit()")
        .as_ref()
        .clone()
        .unwrap();
    assert!(a.statements[0].functions.contains("audit"), "{:?}", a.statements[0].functions);
}

#[test]
fn code_installed_by_ddl_and_user_operators_name_their_functions() {
    let one = |sql: &str| analyze(sql).as_ref().clone().unwrap().statements.remove(0);
    let s = one("CREATE TEMP TABLE d (id int, x int DEFAULT pg_temp.side_def() CHECK (pg_temp.ok(x)))");
    assert!(s.functions.contains("pg_temp.side_def") && s.functions.contains("pg_temp.ok"), "{:?}", s.functions);
    let s = one("ALTER TABLE d ALTER COLUMN x SET DEFAULT app.f(1)");
    assert!(s.functions.contains("app.f"), "{:?}", s.functions);
    let s = one(
        "CREATE RULE r AS ON INSERT TO t DO ALSO SELECT pg_notify('c', (SELECT full_name FROM customers WHERE id = NEW.id))",
    );
    assert_eq!(s.write, Some("CREATE RULE"));
    assert!(s.sinks.iter().any(|k| k.kind == SinkKind::Notification), "{:?}", s.sinks);
    assert!(s.relations.iter().any(|r| r.name == "customers"));
    let s = one("SELECT address OPERATOR(pg_temp.###) 1 FROM customers");
    assert!(s.functions.contains("pg_temp.###"), "{:?}", s.functions);
    // Built-in operators, qualified or not, are not user code.
    let s = one("SELECT 1 OPERATOR(pg_catalog.+) 2, 3 + 4");
    assert!(s.functions.is_empty(), "{:?}", s.functions);
}

#[test]
fn long_operator_chains_are_traced_to_their_end() {
    // `$1 + ... + $500` nests 500 deep to the left: constant, not untraceable.
    let params: Vec<String> = (1..=500).map(|i| format!("${i}")).collect();
    check(&format!("SELECT {}", params.join(" + ")), How::Constant, &[]);
    // The same chain with a column at its far left still derives from it.
    let mut terms = vec!["email".to_string()];
    terms.extend((1..=500).map(|i| format!("'{i}'")));
    reveals(&format!("SELECT {} FROM customers", terms.join(" || ")), col("customers", "email"));
    // ... and at its far right.
    let mut terms: Vec<String> = (1..=500).map(|i| format!("'{i}'")).collect();
    terms.push("email".into());
    reveals(&format!("SELECT {} FROM customers", terms.join(" || ")), col("customers", "email"));
    // A comparison at the end of a chain is still recorded as a condition.
    let a = analyze_uncached(&format!("SELECT id FROM customers WHERE {} = ssn", terms[..500].join(" || ")))
        .expect("parses");
    let ssn = col("customers", "ssn");
    assert!(a.statements[0].filters.iter().any(|c| c.lineage.sources.contains(&ssn)), "{:?}", a.statements[0].filters);
}

#[test]
fn the_deepest_trees_the_parser_accepts_are_analyzed_without_overflowing() {
    // libpg_query takes a little under 800 levels.
    let shapes = [
        format!("SELECT {}", vec!["1"; 700].join(" + ")),
        format!("SELECT {}1{}", "abs(".repeat(740), ")".repeat(740)),
        format!("SELECT {}1{}", "ARRAY[".repeat(740), "]".repeat(740)),
        format!("SELECT 1 FROM customers WHERE {}", vec!["ssn = '1'"; 780].join(" OR ")),
        format!("SELECT {}1{}", "(SELECT ".repeat(250), ")".repeat(250)),
    ];
    // A thread with less stack than needed (the analysis moves to a thread
    // of its own), one with just what is needed in place and a runtime
    // worker's (both in place in optimised builds).
    for stack in [2 << 20, (4 << 20) + (64 << 10), PARSE_STACK] {
        let shapes = shapes.clone();
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                for sql in &shapes {
                    // Parsed and traced, or refused by the parser: never a crash.
                    let _ = analyze_uncached(sql);
                    let _ = definition::scrub_definition(sql, &|_| true);
                }
                // The operator chain at the parser's limit is traced to a constant.
                assert_eq!(lineage(&shapes[0], 0).how, How::Constant);
            })
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }
}
