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

#[track_caller]
fn reveals(sql: &str, source: Source) {
    let l = lineage(sql, 0);
    assert!(l.how != How::Direct && l.how != How::Constant, "{sql}: {l:?}");
    assert!(l.sources.contains(&source) || l.how == How::Unknown, "{sql}: {l:?}");
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
    let l = lineage("SELECT v FROM fixture.personal_values() v", 0);
    assert_eq!(l.how, How::Unknown);
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
    assert!(f.contains(&(col("customers", "ssn"), false)), "{f:?}");
    assert!(f.contains(&(col("customers", "email"), true)), "{f:?}");
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
