//! SQL lineage through `masker proxy` (issue 5): personal data must not come
//! out through expressions, aggregates, whole-row references, subqueries,
//! CTEs, set operations, views, catalog views or data-moving statements.
//!
//! - An attack corpus ([`ATTACKS`], ≥ 80 queries) runs through psql (text,
//!   simple protocol) and tokio-postgres (extended protocol, binary
//!   results); no seeded personal value, nor its case, reversed, digits-only,
//!   base64 or hex form, may appear in any result or error.
//! - Refusals are SQLSTATE 42501 errors and keep the session usable.
//! - A compatibility corpus of non-sensitive queries returns exactly what a
//!   direct connection returns.
//!
//! Needs the masker binary: `cargo build -p masker-agent --bin masker`.

use std::sync::LazyLock;
use std::time::Duration;

use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::compare::{self, RawCell};
use masker_tests::fixture::PersonalValues;
use masker_tests::leaks::{Forms, LeakFinder};
use masker_tests::psql::Psql;
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, within};

const LIMIT: Duration = Duration::from_secs(300);

const POLICY: &str = r#"
version = 1
[defaults]
action = "detect"
comment_classification = true
[pseudonymize]
key_env = "MASKER_LINEAGE_KEY"

[[rule]]
name = "email"
column_names = ["*email*"]
action = "pseudonymize"
format_preserving = true

[[rule]]
name = "name"
column_names = ["full_name"]
action = "pseudonymize"

[[rule]]
name = "national-id"
column_names = ["ssn"]
action = "null"

[[rule]]
name = "external-id"
column_names = ["external_id"]
action = "pseudonymize"

[[rule]]
name = "ops"
column_names = ["id", "*_id", "order_no", "created_at", "paid_at", "signup_ts", "status", "plan", "amount*", "balance", "method"]
action = "allow"
"#;

struct Env {
    policy: std::path::PathBuf,
    finder: LeakFinder,
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    let cluster = PgCluster::shared();
    cluster.run_sql_as_superuser("shop", masker_tests::corpora::LINEAGE_VIEWS).expect("lineage views");
    let policy = cluster.scratch_dir("lineage").expect("scratch dir").join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let values = PersonalValues::load(cluster).expect("personal values");
    Env { policy, finder: LeakFinder::new(&values, Forms { reversed: true }, |kind, _| kind == "birth_date") }
});

fn start() -> (MaskerProxy, ConnInfo, ConnInfo) {
    start_with(&ENV.policy)
}

fn start_with(policy: &std::path::Path) -> (MaskerProxy, ConnInfo, ConnInfo) {
    let cluster = PgCluster::shared();
    let args: Vec<String> =
        ["--policy", &policy.to_string_lossy(), "--identity", "ci-lineage", "--catalog-user", APP_USER]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let proxy = MaskerProxy::start_with_env(
        cluster.addr(),
        &args,
        &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD), ("MASKER_LINEAGE_KEY", "lineage-suite-key-0123456789abcdef")],
    )
    .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"));
    let direct = cluster.app();
    let proxied = direct.at(proxy.addr());
    (proxy, direct, proxied)
}

use masker_tests::corpora::{LINEAGE_ATTACKS as ATTACKS, LINEAGE_COMPATIBLE as COMPATIBLE};

fn check(what: &str, text: &[u8]) -> Result<(), String> {
    let leaks = ENV.finder.find(text);
    if leaks.is_empty() { Ok(()) } else { Err(format!("{what}: leaked (kind, form) → count: {leaks:?}")) }
}

fn render_binary(r: &compare::BinaryResult) -> Vec<u8> {
    let mut out = Vec::new();
    for row in &r.rows {
        for RawCell(cell) in row {
            if let Some(b) = cell {
                out.extend_from_slice(b);
                out.push(b'|');
            }
        }
        out.push(b'\n');
    }
    out
}

#[test]
fn attack_corpus_leaks_nothing_through_psql_and_tokio_postgres() {
    assert!(ATTACKS.len() >= 80, "{} attacks", ATTACKS.len());
    let (mut proxy, _direct, proxied) = start();
    let mut failures = Vec::new();
    // psql, text, simple protocol, one session per query.
    for sql in ATTACKS {
        let out = Psql::new(&proxied).command(sql).run();
        let text = format!("{}\n{}", out.stdout, out.stderr);
        if let Err(e) = check(&format!("psql {sql:?}"), text.as_bytes()) {
            failures.push(e);
        }
    }
    proxy.assert_running();
    // tokio-postgres, extended protocol, binary results, one session.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "tokio-postgres attacks", async {
        let client = proxied.connect().await.expect("connect through masker");
        for sql in ATTACKS {
            let statements: Vec<&str> = sql.split("; ").collect();
            for s in statements {
                let text = match compare::binary(&client, s, &[]).await {
                    Ok(r) => render_binary(&r),
                    Err(e) => format!("{e:?}").into_bytes(),
                };
                if let Err(e) = check(&format!("tokio-postgres {s:?}"), &text) {
                    failures.push(e);
                }
            }
            // The session stays usable after refusals and errors.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        let r = compare::binary(&client, "SELECT 1", &[]).await.expect("session still usable");
        assert_eq!(r.rows.len(), 1);
    }));
    proxy.assert_running();
    assert!(failures.is_empty(), "{} leaks:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn refusals_are_42501_naming_the_rule_and_keep_the_session() {
    let (mut proxy, _direct, proxied) = start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "refusals", async {
        let client = proxied.connect().await.expect("connect");
        for (sql, mentions) in [
            ("SELECT * FROM pg_stats", "pg_stats"),
            ("SELECT query FROM pg_stat_activity", "pg_stat_activity"),
            ("CREATE TEMP TABLE t1 AS SELECT upper(email) FROM customers", "customers.email"),
            ("CREATE TEMP TABLE t2 (x text); INSERT INTO t2 SELECT ssn FROM customers", "customers.ssn"),
        ] {
            for simple in [true, false] {
                let err = if simple {
                    client.simple_query(sql).await.map(|_| ()).expect_err(sql)
                } else if let Some((setup, last)) = sql.rsplit_once("; ") {
                    client.batch_execute(setup).await.expect(setup);
                    client.query(last, &[]).await.map(|_| ()).expect_err(sql)
                } else {
                    client.query(sql, &[]).await.map(|_| ()).expect_err(sql)
                };
                let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err:?}"));
                assert_eq!(db.code().code(), "42501", "{sql}: {db:?}");
                assert!(db.message().contains(mentions) && db.message().contains("rule"), "{sql}: {}", db.message());
                let _ = client.batch_execute("DROP TABLE IF EXISTS t2").await;
                let rows = client.simple_query("SELECT 1").await.expect("usable after refusal");
                assert!(!rows.is_empty());
            }
        }
        // Non-sensitive data may still be copied.
        client
            .batch_execute("CREATE TEMP TABLE ok1 AS SELECT id, amount FROM orders; DROP TABLE ok1")
            .await
            .expect("CTAS of allowed columns");
    }));
    proxy.assert_running();
}

#[test]
fn refuse_inference_blocks_predicates_on_masked_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    let text =
        POLICY.replace("comment_classification = true", "comment_classification = true\nrefuse_inference = true");
    assert_ne!(text, POLICY);
    std::fs::write(&policy, text).expect("policy");
    let (mut proxy, direct, proxied) = start_with(&policy);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "refuse_inference", async {
        let client = proxied.connect().await.expect("connect");
        let plain = direct.connect().await.expect("direct");
        // Refused: a predicate, a grouping or an ordering on a masked column
        // (ssn is nulled; a LIKE on a pseudonymized column reveals its text).
        for (sql, column, rule) in [
            ("SELECT count(*) FROM customers WHERE ssn LIKE '1%'", "customers.ssn", "rule national-id"),
            ("SELECT count(*) FROM customers c WHERE c.email LIKE 'a%'", "customers.email", "rule email"),
            ("SELECT count(*) FROM customers GROUP BY ssn", "customers.ssn", "rule national-id"),
            ("SELECT id FROM customers ORDER BY full_name LIMIT 3", "customers.full_name", "rule name"),
            ("SELECT id FROM customers WHERE length(ssn) > 3", "customers.ssn", "rule national-id"),
        ] {
            for simple in [true, false] {
                let err = if simple {
                    client.simple_query(sql).await.map(|_| ()).expect_err(sql)
                } else {
                    client.query(sql, &[]).await.map(|_| ()).expect_err(sql)
                };
                let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err:?}"));
                assert_eq!(db.code().code(), "42501", "{sql}: {db:?}");
                assert!(db.message().contains(column) && db.message().contains(rule), "{sql}: {}", db.message());
                assert!(!client.simple_query("SELECT 1").await.expect("usable after refusal").is_empty());
            }
        }
        // Allowed: equality on a pseudonymized column, and predicates on
        // allowed columns, with the same answers as direct.
        for sql in [
            "SELECT count(*) FROM customers WHERE email = 'nobody@example.invalid'",
            "SELECT count(*) FROM customers WHERE id < 100 AND plan = 'pro'",
            "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status",
        ] {
            compare::assert_same_simple(&plain, &client, sql).await;
        }
    }));
    proxy.assert_running();
}

#[test]
fn compatibility_corpus_equals_direct() {
    let (mut proxy, direct, proxied) = start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "compatibility", async {
        let d = direct.connect().await.expect("direct");
        let p = proxied.connect().await.expect("proxied");
        for sql in COMPATIBLE {
            compare::assert_same_simple(&d, &p, sql).await;
            compare::assert_same_binary(&d, &p, sql, &[]).await;
        }
    }));
    proxy.assert_running();
}
