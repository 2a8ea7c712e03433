//! SQL lineage through `masker proxy` (issue 5): personal data must not come
//! out through expressions, aggregates, whole-row references, subqueries,
//! CTEs, set operations, views, catalog views or data-moving statements.
//!
//! - An attack corpus ([`ATTACKS`], ≥ 80 queries) runs through psql (text,
//!   simple protocol), tokio-postgres (extended protocol, binary results)
//!   and psycopg (text and binary), once directly, where each must leak (its
//!   control), and once through masker, where no seeded personal value may
//!   appear in any form the finder knows, in any channel.
//! - An inference corpus: answers that must appear directly and never
//!   through masker with `refuse_inference = true`.
//! - Refusals are SQLSTATE 42501 errors and keep the session usable.
//!
//! Non-sensitive queries must equal a direct connection byte for byte: that
//! is `compat.rs`.

use std::sync::LazyLock;
use std::time::Duration;

use masker_tests::attack::{self, Attack, Client};
use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::compare;
use masker_tests::finder::Finder;
use masker_tests::fixture::PersonalValues;
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
name = "birth-date"
column_names = ["birth_date"]
action = "generalize"
to = "year"

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
    finder: Finder,
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    let cluster = PgCluster::shared();
    cluster.run_sql_as_superuser("shop", masker_tests::corpora::LINEAGE_VIEWS).expect("lineage views");
    let policy = cluster.scratch_dir("lineage").expect("scratch dir").join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let values = PersonalValues::load(cluster).expect("personal values");
    // Generalised to the year, a January 1st birth date is its own mask.
    Env { policy, finder: Finder::new(&values, |kind, value| kind == "birth_date" && value.ends_with("-01-01")) }
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

use masker_tests::corpora::LINEAGE_ATTACKS as ATTACKS;

/// A session that stays open while the corpus runs, whose last statement
/// quotes a seeded email: what `pg_stat_activity` shows other sessions.
async fn bystander(direct: &ConnInfo) -> tokio_postgres::Client {
    let client = direct.connect().await.expect("bystander session");
    let email: String = client.query_one("SELECT email FROM customers WHERE id = 42", &[]).await.expect("email").get(0);
    client.simple_query(&format!("SELECT id FROM customers WHERE email = '{email}'")).await.expect("bystander query");
    client
}

/// The lineage corpus through psql (text), tokio-postgres (binary) and
/// psycopg (text and binary): each attack must leak on a direct connection
/// (its control) and leak nothing through masker, in any channel.
#[test]
fn attack_corpus_leaks_directly_and_nothing_through_masker() {
    assert!(ATTACKS.len() >= 80, "{} attacks", ATTACKS.len());
    let (mut proxy, direct, proxied) = start();
    let attacks: Vec<Attack> =
        ATTACKS.iter().enumerate().map(|(i, sql)| Attack::new(format!("lineage#{}", i + 1), "", sql)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let verdict = rt.block_on(within(Duration::from_secs(1200), "lineage corpus", async {
        let _bystander = bystander(&direct).await;
        let d = attack::run(&direct, &attacks, &Client::ALL).await.expect("direct runs");
        let m = attack::run(&proxied, &attacks, &Client::ALL).await.expect("runs through masker");
        attack::judge(&ENV.finder, &attacks, &d, &m)
    }));
    proxy.assert_running();
    verdict.assert_clean("lineage attack corpus");
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

/// One customer's personal columns, read as the superuser: the ground truth
/// inference answers are computed from, apart from the queries themselves.
struct Truth {
    id: i64,
    full_name: String,
    email: String,
    ssn: String,
    phone: String,
    birth_date: String,
}

fn truth() -> Vec<Truth> {
    let out = PgCluster::shared()
        .run_sql_as_superuser(
            "shop",
            "SELECT id || E'\\t' || full_name || E'\\t' || email || E'\\t' || ssn || E'\\t' || phone || E'\\t' || birth_date \
             FROM customers ORDER BY id",
        )
        .expect("the ground truth");
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Truth {
                id: f[0].parse().expect("id"),
                full_name: f[1].into(),
                email: f[2].into(),
                ssn: f[3].into(),
                phone: f[4].into(),
                birth_date: f[5].into(),
            }
        })
        .collect()
}

fn ids<'a>(rows: impl Iterator<Item = &'a Truth>) -> String {
    rows.map(|t| t.id.to_string()).collect::<Vec<_>>().join(",")
}

/// Inference attacks: each asks a question about masked columns whose answer
/// (`INFER:...:END`, computed here from the ground truth, not by running the
/// query) must appear on a direct connection and never through masker with
/// `refuse_inference = true`.
fn inference_attacks(truth: &[Truth]) -> Vec<Attack> {
    let some = |id: i64| truth.iter().find(|t| t.id == id).expect("customer");
    let token = |answer: String| format!("INFER:{answer}:END");
    let ssn_prefix = some(17).ssn[..2].to_owned();
    let name7 = some(7).full_name.clone();
    let ssn3 = some(3).ssn[..2].to_owned();
    let mut by_name: Vec<&Truth> = truth.iter().filter(|t| t.id <= 25).collect();
    by_name.sort_by(|a, b| a.full_name.as_bytes().cmp(b.full_name.as_bytes()).then(a.id.cmp(&b.id)));
    let mut by_email: Vec<&Truth> = truth.iter().filter(|t| t.id <= 25).collect();
    by_email.sort_by(|a, b| a.email.as_bytes().cmp(b.email.as_bytes()));
    let distinct_ssn: std::collections::BTreeSet<&str> = truth.iter().map(|t| t.ssn.as_str()).collect();
    let mut first_digit: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in truth {
        *first_digit.entry(&t.ssn[..1]).or_default() += 1;
    }
    vec![
        Attack::inference(
            "inference#1 ssn prefix",
            &format!(
                "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY id) || ':END' FROM customers WHERE ssn LIKE '{ssn_prefix}%'"
            ),
            token(ids(truth.iter().filter(|t| t.ssn.starts_with(&ssn_prefix)))),
        ),
        Attack::inference(
            "inference#2 count by ssn",
            "SELECT 'INFER:' || count(*) || ':END' FROM customers WHERE ssn LIKE '1%'",
            token(truth.iter().filter(|t| t.ssn.starts_with('1')).count().to_string()),
        ),
        Attack::inference(
            "inference#3 email prefix",
            "SELECT 'INFER:' || count(*) || ':END' FROM customers c WHERE c.email LIKE 'a%'",
            token(truth.iter().filter(|t| t.email.starts_with('a')).count().to_string()),
        ),
        Attack::inference(
            "inference#4 group by ssn",
            "SELECT 'INFER:' || count(*) || ':END' FROM (SELECT ssn FROM customers GROUP BY ssn) s",
            token(distinct_ssn.len().to_string()),
        ),
        Attack::inference(
            "inference#5 order by name",
            "SELECT 'INFER:' || string_agg(id::text, ',') || ':END' FROM (SELECT id FROM customers WHERE id <= 25 ORDER BY full_name COLLATE \"C\", id) s",
            token(ids(by_name.into_iter())),
        ),
        Attack::inference(
            "inference#6 order by email",
            "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY email COLLATE \"C\") || ':END' FROM customers WHERE id <= 25",
            token(ids(by_email.into_iter())),
        ),
        Attack::inference(
            "inference#7 length of email",
            "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY id) || ':END' FROM customers WHERE id <= 30 AND length(email) > 25",
            token(ids(truth.iter().filter(|t| t.id <= 30 && t.email.len() > 25))),
        ),
        Attack::inference(
            "inference#8 birth date range",
            "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY id) || ':END' FROM customers WHERE id <= 300 AND birth_date BETWEEN '1970-01-01' AND '1971-12-31'",
            token(ids(truth
                .iter()
                .filter(|t| t.id <= 300 && ("1970-01-01".."1972-01-01").contains(&t.birth_date.as_str())))),
        ),
        Attack::inference(
            "inference#9 phone country",
            "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY id) || ':END' FROM customers WHERE id <= 60 AND phone LIKE '+44%'",
            token(ids(truth.iter().filter(|t| t.id <= 60 && t.phone.starts_with("+44")))),
        ),
        Attack::inference(
            "inference#10 name by function",
            &format!(
                "SELECT 'INFER:' || string_agg(id::text, ',' ORDER BY id) || ':END' FROM customers WHERE upper(full_name) = upper('{name7}')"
            ),
            token(ids(truth.iter().filter(|t| t.full_name == name7))),
        ),
        Attack::inference(
            "inference#11 ssn digit histogram",
            "SELECT 'INFER:' || string_agg(g || '=' || n, ',' ORDER BY g) || ':END' FROM (SELECT substr(ssn, 1, 1) g, count(*) n FROM customers GROUP BY 1) s",
            token(first_digit.iter().map(|(g, n)| format!("{g}={n}")).collect::<Vec<_>>().join(",")),
        ),
        Attack::inference(
            "inference#12 error when true",
            &format!("SELECT CASE WHEN (SELECT ssn FROM customers WHERE id = 3) LIKE '{ssn3}%' THEN 1/0 ELSE 1 END"),
            // The predicate holds, so the server raises division_by_zero.
            "22012".to_owned(),
        ),
    ]
}

/// Inference attacks that get their answer through masker today, with why.
/// Listed, not hidden: each must still leak (the corpus fails once one is
/// held, asking to remove it here), and the lead tracks them.
const KNOWN_INFERENCE_LEAKS: &[(&str, &str)] = &[];

#[test]
fn inference_corpus_answers_directly_and_never_through_masker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    let text =
        POLICY.replace("comment_classification = true", "comment_classification = true\nrefuse_inference = true");
    assert_ne!(text, POLICY);
    std::fs::write(&policy, text).expect("policy");
    let (mut proxy, direct, proxied) = start_with(&policy);
    let attacks = inference_attacks(&truth());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let verdict = rt.block_on(within(LIMIT, "inference corpus", async {
        let d = attack::run(&direct, &attacks, &Client::ALL).await.expect("direct runs");
        let m = attack::run(&proxied, &attacks, &Client::ALL).await.expect("runs through masker");
        attack::judge(&ENV.finder, &attacks, &d, &m)
    }));
    proxy.assert_running();
    verdict.assert_clean_except("inference corpus", KNOWN_INFERENCE_LEAKS);
}
