//! Guardrails through `masker proxy` (issue 7): statements an identity may
//! not run are refused with SQLSTATE 42501 and a message naming the rule,
//! the session stays usable, and each refusal is audited as a denial.

use std::path::Path;
use std::time::Duration;

use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, within};

const LIMIT: Duration = Duration::from_secs(120);

const POLICY: &str = r#"
version = 1
[defaults]
action = "allow"

[[identity]]
name = "ci-*"
read_only = true
deny_tables = ["payments"]
writing_functions = ["nextval"]
"#;

fn start(identity: &str, dir: &Path) -> (MaskerProxy, ConnInfo) {
    let cluster = PgCluster::shared();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let args: Vec<String> = [
        "--policy",
        &policy.to_string_lossy(),
        "--identity",
        identity,
        "--catalog-user",
        APP_USER,
        "--audit-file",
        &dir.join("audit.jsonl").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proxy = MaskerProxy::start_with_env(cluster.addr(), &args, &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD)])
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"));
    let proxied = cluster.app().at(proxy.addr());
    (proxy, proxied)
}

#[test]
fn read_only_identity_is_refused_writes_and_keeps_its_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut proxy, proxied) = start("ci-bot", dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "guardrails", async {
        let client = proxied.connect().await.expect("connect");
        let refused = [
            ("INSERT INTO orders (customer_id, order_no, amount, status) VALUES (1, 'x', 1, 'new')", "INSERT"),
            ("UPDATE orders SET status = 'x' WHERE id = 1", "UPDATE"),
            ("DELETE FROM orders WHERE id = 1", "DELETE"),
            ("TRUNCATE orders", "TRUNCATE"),
            ("CREATE TABLE guard_t (a int)", "DDL"),
            ("GRANT SELECT ON orders TO PUBLIC", "GRANT / REVOKE"),
            ("SET ROLE postgres", "SET ROLE"),
            ("DO $$ BEGIN PERFORM 1; END $$", "DO / CALL"),
            ("EXPLAIN ANALYZE DELETE FROM orders", "EXPLAIN ANALYZE"),
            ("WITH d AS (DELETE FROM orders WHERE id < 0 RETURNING id) SELECT count(*) FROM d", "data-modifying WITH"),
            ("SELECT nextval('orders_id_seq')", "nextval"),
            ("SELECT amount FROM payments LIMIT 1", "deny_tables"),
        ];
        for (sql, what) in refused {
            for simple in [true, false] {
                let err = if simple {
                    client.simple_query(sql).await.map(|_| ()).expect_err(sql)
                } else {
                    client.query(sql, &[]).await.map(|_| ()).expect_err(sql)
                };
                let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err:?}"));
                assert_eq!(db.code().code(), "42501", "{sql}: {db:?}");
                assert!(db.message().contains(what), "{sql}: {}", db.message());
                assert!(db.message().contains("rule: identity ci-*"), "{sql}: {}", db.message());
                assert!(!client.simple_query("SELECT 1").await.expect("usable after refusal").is_empty());
            }
        }
        // COPY FROM is refused too (on a connection of its own: tokio-postgres
        // does not reuse a connection whose copy_in failed, masker or not).
        let copier = proxied.connect().await.expect("connect");
        let err = copier.copy_in::<_, bytes::Bytes>("COPY orders FROM STDIN").await.map(|_| ()).expect_err("COPY FROM");
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"), "{err:?}");
        assert!(
            client.is_closed() || !client.simple_query("SELECT 1").await.expect("other sessions unaffected").is_empty()
        );

        // Inside a transaction the refusal aborts it like any error would.
        client.batch_execute("BEGIN").await.expect("begin");
        let err = client.simple_query("DELETE FROM orders").await.expect_err("refused in a transaction");
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42501"));
        let aborted = client.simple_query("SELECT 1").await.expect_err("transaction is aborted");
        assert_eq!(aborted.as_db_error().map(|d| d.code().code()), Some("25P02"));
        client.batch_execute("ROLLBACK").await.expect("rollback");

        // Reads, transaction control, settings and COPY TO keep working.
        let n: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.expect("read").get(0);
        assert!(n > 0);
        client.batch_execute("BEGIN; SET LOCAL work_mem = '8MB'; SHOW work_mem; COMMIT").await.expect("config");
        client.copy_out("COPY orders TO STDOUT").await.expect("COPY TO is a read");
    }));
    proxy.assert_running();

    // Every refusal is a denial event of rule "guardrail".
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit file");
    let denials: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e.to_string().contains("\"denial\""))
        .collect();
    assert!(denials.len() >= 25, "{} denial events:\n{audit}", denials.len());
    assert!(denials.iter().all(|e| e["rule"] == "guardrail"), "{denials:#?}");
}

/// The reason COPY FROM gets its own connection above: a failed copy_in
/// leaves tokio-postgres's connection unusable against the server itself.
#[test]
fn failed_copy_in_poisons_a_tokio_postgres_connection_directly_too() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "copy_in direct", async {
        let direct = PgCluster::shared().app().connect().await.expect("connect");
        let err =
            direct.copy_in::<_, bytes::Bytes>("COPY no_such_table FROM STDIN").await.map(|_| ()).expect_err("copy");
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42P01"), "{err:?}");
        assert!(direct.batch_execute("BEGIN").await.is_err(), "tokio-postgres recovered after a failed copy_in");
    }));
}

#[test]
fn other_identities_may_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut proxy, proxied) = start("release-bot", dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "no guardrails", async {
        let client = proxied.connect().await.expect("connect");
        client
            .batch_execute("CREATE TEMP TABLE guard_ok (a int); INSERT INTO guard_ok VALUES (1); DROP TABLE guard_ok")
            .await
            .expect("writes of an identity without guardrails");
        let n: i64 = client.query_one("SELECT count(*) FROM payments", &[]).await.expect("read").get(0);
        assert!(n > 0);
    }));
    proxy.assert_running();
}

/// `masker proxy` has no admin socket, so nobody could approve a statement
/// an `[[approval]]` rule holds: it is refused at once (not after the
/// timeout), and other statements run.
#[test]
fn approval_rules_in_the_proxy_refuse_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::shared();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[defaults]\naction = \"allow\"\n[[approval]]\nname = \"writes\"\nclasses = [\"update\"]\ntimeout = \"1h\"\n",
    )
    .expect("policy");
    let args: Vec<String> = ["--policy", &policy.to_string_lossy(), "--identity", "ci-bot", "--catalog-user", APP_USER]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let proxy = MaskerProxy::start_with_env(cluster.addr(), &args, &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD)])
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(within(LIMIT, "approval in the proxy", async {
        let client = cluster.app().at(proxy.addr()).connect().await.expect("connect");
        // The rule's timeout is 1 h and `within` allows 120 s: an answer at all
        // means it was refused at once, and the message says why.
        let err = client.simple_query("UPDATE orders SET status = status WHERE id = 1").await.expect_err("held");
        let db = err.as_db_error().expect("db error");
        assert_eq!(db.code().code(), "42501");
        assert!(db.message().contains("approval rule writes") && db.message().contains("no operator"), "{db:?}");
        let one = client.simple_query("SELECT 1").await.expect("the session goes on");
        assert!(!one.is_empty());
    }));
}
