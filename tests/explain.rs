//! `masker explain` agrees with the agent (issue 18): for every query of the
//! masking and lineage corpora, what `masker explain --json` says — refused
//! or not, and per result column masked or not — is what `masker proxy`
//! does to the query, compared with a direct connection:
//!
//! - explain refuses (or an approval rule holds, which `masker proxy`
//!   refuses) ⇔ the proxy answers SQLSTATE 42501 with explain's message and
//!   the hint that points to `masker explain`;
//! - a column explain allows comes back exactly as direct (as a multiset of
//!   values: row order is not part of the decision);
//! - a column explain masks with an action that changes values (redact,
//!   null, email, partial, pseudonymize, generalize) comes back different
//!   from direct whenever direct has a value in it; `detect` and definition
//!   scrubbing depend on the content and are not asserted on values;
//! - the statement count and the column count of each result match.
//!
//! Twice: with the policy as written and with `defaults.refuse_inference`.
//! Also the text output names the columns, rules and actions, and a
//! statement the server cannot describe (it names the session's own
//! objects) is explained from the statement and the catalog.
//!
//! Needs the masker binary: `cargo build -p masker-agent --bin masker`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use masker_tests::cluster::{APP_DB, APP_PASSWORD, APP_USER};
use masker_tests::compare::{self, SimpleResult};
use masker_tests::corpora::{LINEAGE_ATTACKS, LINEAGE_COMPATIBLE, LINEAGE_VIEWS, MASKING};
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, process, within};
use serde_json::Value;

const IDENTITY: &str = "ci-explain";
const KEY_ENV: &str = "MASKER_EXPLAIN_KEY";
const KEY: &str = "explain-suite-key-0123456789abcdef";

/// Every action kind, classification by rule, by comment (`pii:` comments of
/// the fixture) and by `defaults.action`, an `[[identity]]` block and an
/// approval rule.
const POLICY: &str = r#"
version = 1
[defaults]
action = "detect"
comment_classification = true
[pseudonymize]
key_env = "MASKER_EXPLAIN_KEY"

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
name = "phone"
column_names = ["*phone*"]
action = "partial"
keep_last = 2

[[rule]]
name = "card"
column_names = ["card_number", "iban"]
action = "redact"

[[rule]]
name = "birth"
column_names = ["birth_date"]
action = "generalize"
to = "year"

[[rule]]
name = "ip"
column_names = ["last_ip"]
action = "generalize"
to = "network"

[[rule]]
name = "free-text"
column_names = ["notes", "profile"]
action = "detect"

[[rule]]
name = "ops"
column_names = ["id", "*_id", "order_no", "created_at", "paid_at", "signup_ts", "status", "plan", "amount*", "balance", "method"]
action = "allow"

[[identity]]
name = "ci-*"
deny_functions = ["pg_read_file"]

[[approval]]
name = "customer-updates"
classes = ["update"]
tables = ["public.customers"]
"#;

/// Tests on values in every clause that can hold one, for
/// `defaults.refuse_inference` (the corpus holds few on classified columns).
const INFERENCE: &[&str] = &[
    "SELECT count(*) FROM customers WHERE ssn LIKE '1%'",
    "SELECT count(*) FROM customers c WHERE c.email LIKE 'a%'",
    "SELECT count(*) FROM customers WHERE email = 'nobody@example.invalid'",
    "SELECT count(*) FROM customers WHERE ssn = '123-45-6789'",
    "SELECT count(*) FROM customers GROUP BY ssn",
    "SELECT plan, count(*) FROM customers GROUP BY plan HAVING max(phone) > '+2'",
    "SELECT id FROM customers ORDER BY full_name LIMIT 3",
    "SELECT id FROM customers WHERE length(ssn) > 3",
    "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id AND c.iban LIKE 'DE1%' LIMIT 5",
    "SELECT id, rank() OVER (PARTITION BY birth_date) FROM customers LIMIT 5",
    "SELECT count(*) FILTER (WHERE phone LIKE '+1%') FROM customers",
    "SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END FROM customers LIMIT 5",
    "SELECT ssn < '5' FROM customers LIMIT 5",
    "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE email LIKE 'b%') LIMIT 5",
    "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND c.ssn > '5') LIMIT 5",
    "SELECT id FROM customers LIMIT (SELECT length(max(ssn)) FROM customers)",
    "SELECT count(*) FROM customers WHERE id < 100 AND plan = 'pro'",
    "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status",
    "SELECT id, plan FROM customers ORDER BY id LIMIT 2",
    "SELECT * FROM customers LIMIT 1",
];

/// The corpus: `(setup run first in the same session, query)`.
fn corpus() -> Vec<(&'static str, &'static str)> {
    let mut cases: Vec<(&str, &str)> = MASKING.iter().map(|(_, setup, sql)| (*setup, *sql)).collect();
    cases.extend(LINEAGE_ATTACKS.iter().map(|sql| ("", *sql)));
    cases.extend(LINEAGE_COMPATIBLE.iter().map(|sql| ("", *sql)));
    cases
}

struct Env {
    cluster: &'static PgCluster,
    dir: tempfile::TempDir,
}

fn env() -> Env {
    let cluster = PgCluster::shared();
    static VIEWS: std::sync::Once = std::sync::Once::new();
    VIEWS.call_once(|| {
        cluster.run_sql_as_superuser(APP_DB, LINEAGE_VIEWS).expect("lineage views");
    });
    Env { cluster, dir: tempfile::tempdir().expect("tempdir") }
}

impl Env {
    fn policy(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("policy");
        path
    }

    fn proxy(&self, policy: &Path) -> MaskerProxy {
        let args: Vec<String> =
            ["--policy", &policy.to_string_lossy(), "--identity", IDENTITY, "--catalog-user", APP_USER]
                .iter()
                .map(|s| s.to_string())
                .collect();
        MaskerProxy::start_with_env(
            self.cluster.addr(),
            &args,
            &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD), (KEY_ENV, KEY)],
        )
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"))
    }

    /// `masker explain` of `sql` after `setup`, as `masker proxy` sessions
    /// of [`IDENTITY`] see it; `json` or text.
    fn explain(&self, policy: &Path, setup: &str, sql: &str, json: bool) -> String {
        let mut cmd = Command::new(MaskerProxy::binary());
        cmd.args(["explain", "--identity", IDENTITY, "--target", &self.cluster.addr().to_string()])
            .args(["--database", APP_DB, "--user", APP_USER, "--catalog-user", APP_USER])
            .arg("--policy")
            .arg(policy)
            .env("MASKER_CATALOG_PASSWORD", APP_PASSWORD)
            // The key is not needed to explain: it is left out on purpose.
            .env_remove(KEY_ENV)
            .env("MASKER_LOG", "warn");
        if !setup.is_empty() {
            cmd.args(["--after", setup]);
        }
        if json {
            cmd.arg("--json");
        }
        // The statement on stdin, as `masker explain < file.sql` reads it.
        let out = process::run(cmd, Some(sql.as_bytes()), Duration::from_secs(60)).expect("masker explain runs");
        assert!(out.status.success(), "masker explain {sql:?} failed: {}", out.stderr);
        out.stdout
    }
}

/// What one session returned for `setup` then `sql`.
#[derive(Debug)]
enum Outcome {
    Rows(Vec<SimpleResult>),
    Error { code: String, message: String, hint: Option<String> },
}

/// Runs `setup` (errors ignored) then `sql` in a fresh session of `info`.
/// Unless `sql` controls transactions itself, it runs in a transaction that
/// is rolled back: the corpus holds writes.
async fn run(info: &ConnInfo, setup: &str, sql: &str, own_transaction: bool) -> Outcome {
    let client = info.connect().await.expect("connect");
    if !setup.is_empty() {
        let _ = client.batch_execute(setup).await;
    }
    if !own_transaction {
        client.batch_execute("BEGIN").await.expect("BEGIN");
    }
    let result = compare::simple(&client, sql).await;
    let _ = client.batch_execute("ROLLBACK").await;
    match result {
        Ok(r) => Outcome::Rows(r),
        Err(e) => match e.as_db_error() {
            Some(db) => Outcome::Error {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                hint: db.hint().map(str::to_string),
            },
            None => Outcome::Error { code: String::new(), message: format!("{e:?}"), hint: None },
        },
    }
}

/// Actions whose masked values always differ from a non-null original.
const CHANGING: &[&str] = &["redact", "null", "email", "partial", "pseudonymize", "generalize"];

/// The column's values, sorted (row order is not what is compared).
fn column(r: &SimpleResult, c: usize) -> Vec<Option<String>> {
    let mut v: Vec<Option<String>> = r.rows.iter().map(|row| row.get(c).cloned().flatten()).collect();
    v.sort();
    v
}

/// At most 300 characters of `v`'s debug text, for failure messages.
fn short(v: &impl std::fmt::Debug) -> String {
    let text = format!("{v:?}");
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

/// Checks one case; returns what disagrees.
fn agree(sql: &str, explained: &Value, direct: &Outcome, proxied: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let refusal = &explained["refusal"];
    let held = &explained["approval"];
    match proxied {
        Outcome::Error { code, message, hint }
            if code == "42501" && hint.as_deref().is_some_and(|h| h.contains("masker explain")) =>
        {
            if !refusal.is_null() {
                if refusal["message"].as_str() != Some(message.as_str()) {
                    bad.push(format!("{sql}: proxy refused with {message:?}, explain says {refusal}"));
                }
            } else if !held.is_null() {
                let rule = held["rule"].as_str().unwrap_or_default();
                if !message.contains(&format!("approval rule {rule} holds it")) {
                    bad.push(format!("{sql}: proxy refused with {message:?}, explain says held by {rule}"));
                }
            } else {
                bad.push(format!("{sql}: proxy refused ({message}), explain says it runs"));
            }
            return bad;
        }
        _ if !refusal.is_null() || !held.is_null() => {
            bad.push(format!(
                "{sql}: explain refuses or holds it ({refusal} {held}), the proxy ran it: {}",
                short(proxied)
            ));
            return bad;
        }
        _ => {}
    }
    if explained["after_refused"].as_array().is_some_and(|a| !a.is_empty()) {
        // The setup did not run through masker, so the sessions differ.
        return bad;
    }
    let (Outcome::Rows(d), Outcome::Rows(p)) = (direct, proxied) else {
        // Errors on both sides (or only one, when a statement's error text
        // depends on the session): nothing per column to compare.
        if matches!(direct, Outcome::Rows(_)) != matches!(proxied, Outcome::Rows(_)) {
            bad.push(format!("{sql}: direct {}, proxied {}", short(direct), short(proxied)));
        }
        return bad;
    };
    let statements = explained["statements"].as_array().cloned().unwrap_or_default();
    if statements.len() != p.len() || d.len() != p.len() {
        bad.push(format!(
            "{sql}: {} statements explained, {} results through masker, {} direct",
            statements.len(),
            p.len(),
            d.len()
        ));
        return bad;
    }
    for ((s, dr), pr) in statements.iter().zip(d).zip(p) {
        if pr.columns.is_empty() {
            continue;
        }
        let Some(cols) = s["columns"].as_array() else {
            bad.push(format!(
                "{sql}: explain says statement {} returns no rows; it returned {:?}",
                s["index"], pr.columns
            ));
            continue;
        };
        let every = s["columns_from"] == "unknown";
        if !every && cols.len() != pr.columns.len() {
            bad.push(format!("{sql}: explain lists {} columns, the result has {}", cols.len(), pr.columns.len()));
            continue;
        }
        for c in 0..pr.columns.len() {
            let e = if every { &cols[0] } else { &cols[c] };
            let action = e["action"]["name"].as_str().unwrap_or_default();
            let (dv, pv) = (column(dr, c), column(pr, c));
            if action == "allow" && dv != pv {
                bad.push(format!("{sql}: column {} ({}) explained allow, but masked", c + 1, pr.columns[c]));
            }
            if CHANGING.contains(&action) && dv.iter().any(Option::is_some) && dv == pv {
                bad.push(format!(
                    "{sql}: column {} ({}) explained {action}, but came back as direct",
                    c + 1,
                    pr.columns[c]
                ));
            }
        }
    }
    bad
}

/// `masker explain --json` of every case, a few processes at a time.
fn explain_all(env: &Env, policy: &Path, cases: &[(&'static str, &'static str)]) -> Vec<Value> {
    let mut out = Vec::with_capacity(cases.len());
    for chunk in cases.chunks(6) {
        let done: Vec<Value> = std::thread::scope(|scope| {
            let running: Vec<_> = chunk
                .iter()
                .map(|(setup, sql)| scope.spawn(move || (sql, env.explain(policy, setup, sql, true))))
                .collect();
            running
                .into_iter()
                .map(|h| {
                    let (sql, text) = h.join().expect("explain thread");
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: explain --json: {e}\n{text}"))
                })
                .collect()
        });
        out.extend(done);
    }
    out
}

/// Runs `cases` under `policy` through the proxy and direct and checks them
/// against their explanations (`all`, in the same order). Returns how many
/// were refused or held and how many columns were explained.
fn corpus_agrees(env: &Env, policy: &Path, cases: &[(&'static str, &'static str)], all: &[Value]) -> (usize, usize) {
    let mut proxy = env.proxy(policy);
    let direct = env.cluster.app();
    let proxied = direct.at(proxy.addr());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut failures = Vec::new();
    let (mut refused, mut columns) = (0, 0);
    for (&(setup, sql), explained) in cases.iter().zip(all) {
        let own_transaction =
            explained["statements"].as_array().is_some_and(|s| s.iter().any(|s| s["class"] == "transaction"));
        let (d, p) = rt.block_on(within(Duration::from_secs(120), sql, async {
            (run(&direct, setup, sql, own_transaction).await, run(&proxied, setup, sql, own_transaction).await)
        }));
        refused += usize::from(!explained["refusal"].is_null() || !explained["approval"].is_null());
        columns += explained["statements"]
            .as_array()
            .map_or(0, |s| s.iter().map(|s| s["columns"].as_array().map_or(0, Vec::len)).sum());
        failures.extend(agree(sql, explained, &d, &p));
    }
    proxy.assert_running();
    assert!(
        failures.is_empty(),
        "explain disagrees with masker on {} case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    (refused, columns)
}

#[test]
fn explain_agrees_with_the_proxy_on_the_masking_and_lineage_corpora() {
    let env = env();
    let policy = env.policy("policy.toml", POLICY);
    let cases = corpus();
    let explained = explain_all(&env, &policy, &cases);
    let (refused, columns) = corpus_agrees(&env, &policy, &cases, &explained);
    // The corpus exercises both sides of each decision.
    assert!(refused >= 20 && columns >= 200, "{refused} refused, {columns} columns explained");
}

/// With `defaults.refuse_inference`: the cases whose statements test values
/// (the only ones the setting can change), through the proxy too.
#[test]
fn explain_agrees_under_refuse_inference() {
    let env = env();
    let text =
        POLICY.replace("comment_classification = true", "comment_classification = true\nrefuse_inference = true");
    let policy = env.policy("inference.toml", &text);
    let mut cases = corpus();
    cases.extend(INFERENCE.iter().map(|sql| ("", *sql)));
    let explained = explain_all(&env, &policy, &cases);
    let tests = |e: &Value| {
        e["statements"].as_array().is_some_and(|s| {
            s.iter().any(|s| s["tests_untraced"] == true || s["tests"].as_array().is_some_and(|t| !t.is_empty()))
        })
    };
    let (cases, explained): (Vec<_>, Vec<_>) = cases.into_iter().zip(explained).filter(|(_, e)| tests(e)).unzip();
    assert!(cases.len() >= INFERENCE.len(), "{} cases test values", cases.len());
    let (refused, _) = corpus_agrees(&env, &policy, &cases, &explained);
    // Both sides: refused tests, and allowed ones (equality with a constant
    // on a pseudonymized column, tests on allowed columns).
    assert!(refused >= 14 && refused < cases.len(), "{refused} of {} refused", cases.len());
}

#[test]
fn text_output_names_columns_rules_actions_and_refusals() {
    let env = env();
    let policy = env.policy("text.toml", POLICY);
    let out = env.explain(&policy, "", "SELECT id, upper(email), phone, ssn FROM customers WHERE id = 42", false);
    for want in [
        "identity ci-explain",
        "mode enforce ([[identity]] ci-*)",
        "TAINTED: it reads public.customers.",
        "columns (as the server describes them)",
        "computed from a classified column: masked whole",
        "rule email (public.customers.email)",
        "rule phone (public.customers.phone, as the server names it)",
        "keep the last 2 characters",
        "rule national-id",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The statement is shown with its literals replaced.
    assert!(!out.contains("= 42") && out.contains("WHERE id = $1"), "{out}");

    let out = env.explain(&policy, "", "SELECT pg_notify('ch', email) FROM customers", false);
    assert!(out.contains("REFUSED before it runs (lineage rule, SQLSTATE 42501)"), "{out}");
    assert!(out.contains("sink: a notification (pg_notify/NOTIFY) through pg_notify: REFUSED"), "{out}");

    let out = env.explain(&policy, "", "UPDATE customers SET plan = plan WHERE id = 1", false);
    assert!(out.contains("HELD for approval by rule customer-updates"), "{out}");

    let out = env.explain(&policy, "", "SELECT pg_read_file('/etc/hostname')", false);
    assert!(out.contains("REFUSED before it runs (guardrail rule") && out.contains("deny_functions"), "{out}");
}

#[test]
fn session_objects_are_explained_from_the_statement() {
    let env = env();
    let policy = env.policy("session.toml", POLICY);
    // The temp table holds a copy of clean columns the session made itself;
    // the server cannot describe it on another connection.
    let text = env.explain(
        &policy,
        "CREATE TEMP TABLE mine AS SELECT id, plan FROM customers",
        "SELECT id, plan, 'x' AS k FROM mine",
        true,
    );
    let e: Value = serde_json::from_str(&text).expect("json");
    let s = &e["statements"][0];
    assert_eq!(s["columns_from"], "statement", "{s}");
    assert!(s["describe_error"].as_str().is_some_and(|m| m.contains("the session created")), "{s}");
    let names: Vec<&str> = s["columns"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["id", "plan", "k"]);
    assert_eq!(s["tainted"], false, "{s}");
    // A refused setup does not run: its table does not exist for the statement.
    let text =
        env.explain(&policy, "CREATE TEMP TABLE leak AS SELECT email FROM customers", "SELECT * FROM leak", true);
    let e: Value = serde_json::from_str(&text).expect("json");
    let cols: BTreeSet<&str> = e["statements"][0]["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["action"]["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(!cols.contains("allow"), "{e}");
}
