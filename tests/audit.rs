//! The audit trail and metrics through `masker proxy` (issue 7):
//!
//! - session and statement events are written, one JSON object per line,
//!   and carry the fields of the documented schema (version 1);
//! - statements are normalized: no literal survives, and no seeded personal
//!   value appears anywhere in the audit file or the proxy's log, even for
//!   statements that quote values and errors that echo them;
//! - the metrics endpoint answers and counts.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::fixture::PersonalValues;
use masker_tests::{MaskerProxy, PgCluster, within};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);
const IDENTITY: &str = "ci-audit";

const POLICY: &str = r#"version = 1

[defaults]
action = "detect"

[[rule]]
name = "email"
column_names = ["email"]
action = "email"

[[rule]]
name = "name"
column_names = ["full_name"]
action = "redact"

[[rule]]
name = "phone"
column_names = ["phone"]
action = "partial"
keep_last = 2

[[rule]]
name = "ids"
column_names = ["ssn", "card_number", "iban", "address"]
action = "null"

[[rule]]
name = "order-keys"
columns = ["*.orders.id", "*.orders.order_no"]
action = "allow"
"#;

struct Setup {
    proxy: MaskerProxy,
    _dir: tempfile::TempDir,
    audit: std::path::PathBuf,
    metrics: std::net::SocketAddr,
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start() -> Setup {
    let cluster = PgCluster::shared();
    let dir = tempfile::Builder::new().prefix("masker-audit-").tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let audit = dir.path().join("audit").join("audit.jsonl");
    let metrics = free_port();
    let args: Vec<String> = [
        "--policy",
        &policy.to_string_lossy(),
        "--identity",
        IDENTITY,
        "--catalog-user",
        APP_USER,
        "--audit-file",
        &audit.to_string_lossy(),
        "--metrics-listen",
        &metrics.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proxy = MaskerProxy::start_with_env(cluster.addr(), &args, &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD)])
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"));
    Setup { proxy, _dir: dir, audit, metrics }
}

/// The audit file's events once `pred` holds for them (polls; the writer
/// is asynchronous).
async fn events_until(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    within(Duration::from_secs(20), what, async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let events: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}")))
                .collect();
            if pred(&events) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

fn kind(e: &Value) -> &str {
    e["event"].as_str().unwrap_or("")
}

/// Checks one event against schema version 1.
fn check_schema(e: &Value) {
    assert_eq!(e["v"], 1, "{e}");
    let ts = e["ts"].as_str().unwrap_or_else(|| panic!("ts: {e}"));
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "ts {ts}");
    assert!(e["session"].as_u64().is_some(), "{e}");
    assert_eq!(e["identity"], IDENTITY, "{e}");
    let has = |fields: &[&str]| {
        for f in fields {
            assert!(e.get(*f).is_some(), "event {} lacks {f}: {e}", kind(e));
        }
    };
    let session = ["client", "destination", "cgroup_id", "cgroup_path", "pid", "executable", "user", "database", "tls"];
    match kind(e) {
        "session_start" => {
            has(&session);
            assert_eq!(e["user"], APP_USER);
            assert_eq!(e["tls"]["client"], false);
        }
        "session_end" => {
            has(&session);
            has(&[
                "bytes_from_client",
                "bytes_to_client",
                "statements",
                "rows",
                "masked_cells",
                "duration_ms",
                "outcome",
            ]);
            assert!(e["bytes_to_client"].as_u64().unwrap() > 0, "{e}");
        }
        "statement" => {
            has(&[
                "statement",
                "class",
                "tables",
                "rows",
                "masked_cells",
                "masked",
                "masked_columns",
                "outcome",
                "duration_ms",
            ]);
            assert!(e["statement"].is_string() && e["class"].is_string() && e["masked"].is_object(), "{e}");
            assert!(e["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
            match e["outcome"].as_str() {
                Some("ok") => assert!(e["command"].is_string(), "{e}"),
                Some("error") => assert!(e["sqlstate"].as_str().is_some_and(|s| s.len() == 5), "{e}"),
                other => panic!("outcome {other:?}: {e}"),
            }
        }
        "denial" => {
            has(&["statement", "class", "rule", "reason", "sqlstate"]);
            assert_eq!(e["sqlstate"], "42501");
        }
        other => panic!("unexpected event {other:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_events_follow_the_schema_and_never_hold_values() {
    let setup = start();
    let cluster = PgCluster::shared();
    let values = PersonalValues::load(cluster).expect("seeded values");
    let email = values.of_kind("email").next().expect("an email").to_string();
    let name = values.of_kind("full_name").next().map(str::to_string);
    let proxied = cluster.app().at(setup.proxy.addr());

    within(LIMIT, "queries through the proxy", async {
        let client = proxied.connect().await.expect("connect through masker");
        // Masked rows, simple protocol.
        let rows = client
            .simple_query("SELECT id, full_name, email, phone, ssn FROM customers ORDER BY id LIMIT 20")
            .await
            .expect("select");
        assert!(rows.len() > 20);
        // A literal value in the statement text.
        client
            .simple_query(&format!("SELECT id, email FROM customers WHERE email = '{email}'"))
            .await
            .expect("select by email");
        // Extended protocol with a parameter.
        let got = client.query("SELECT id, email FROM customers WHERE email = $1", &[&email]).await.expect("param");
        assert_eq!(got.len(), 1);
        // Rows of an all-allowed result stream through unseen; they count.
        let keys = client.simple_query("SELECT id, order_no FROM orders ORDER BY id LIMIT 7").await.expect("keys");
        let n = keys.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
        assert_eq!(n, 7);
        // Several statements in one Query.
        client.simple_query("SELECT 1; SELECT count(*) FROM orders WHERE amount > 100.5").await.expect("multi");
        // Errors that echo values back.
        let e = client.simple_query(&format!("SELECT '{email}'::int")).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("22P02"));
        let insert = format!(
            "INSERT INTO customers (full_name, email, plan, balance, tags, profile, signup_ts, external_id) \
             VALUES ('{}', '{email}', 'free', 0, '{{}}', '{{}}', now(), gen_random_uuid())",
            name.as_deref().unwrap_or("Somebody")
        );
        let e = client.simple_query(&insert).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{e:?}");
        let e = client.query("SELECT $1::text::int", &[&email]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("22P02"));
        // A refused statement (catalog view with sampled values).
        let e = client
            .simple_query("SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'")
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e:?}");
        // The session is still usable.
        client.simple_query("SELECT 1").await.expect("after errors");
        drop(client);
    })
    .await;

    let events =
        events_until(&setup.audit, "a session_end event", |ev| ev.iter().any(|e| kind(e) == "session_end")).await;
    for e in &events {
        check_schema(e);
    }
    let kinds: BTreeSet<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds, ["denial", "session_end", "session_start", "statement"].into_iter().collect(), "{events:#?}");
    let denial = events.iter().find(|e| kind(e) == "denial").unwrap();
    assert!(denial["statement"].as_str().unwrap().contains("pg_stats"), "{denial}");

    let statements: Vec<&Value> = events.iter().filter(|e| kind(e) == "statement").collect();
    for s in &statements {
        let text = s["statement"].as_str().unwrap();
        assert!(!text.contains('\''), "a string literal survived normalization: {text}");
        assert!(!text.contains("100.5") && !text.contains(" 20"), "a number literal survived: {text}");
    }
    let find = |needle: &str| {
        statements
            .iter()
            .find(|s| s["statement"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no statement event with {needle:?}: {statements:#?}"))
    };
    let first = find("ORDER BY id LIMIT");
    assert_eq!(first["class"], "select");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["rows"], 20);
    assert!(first["masked_cells"].as_u64().unwrap() >= 20, "{first}");
    assert!(first["masked"]["email"].as_u64().unwrap() >= 20, "{first}");
    assert!(first["tables"].as_array().unwrap().iter().any(|t| t == "customers"), "{first}");
    // Per column: name, position and action as the result has them.
    let columns = first["masked_columns"].as_array().unwrap_or_else(|| panic!("masked_columns: {first}"));
    let column =
        |name: &str| columns.iter().find(|c| c["column"] == name).unwrap_or_else(|| panic!("no {name} in {columns:?}"));
    assert_eq!(
        (column("full_name")["position"].as_u64(), column("full_name")["action"].as_str()),
        (Some(1), Some("redact"))
    );
    assert_eq!(column("email")["action"], "email");
    assert_eq!(column("email")["cells"], first["masked"]["email"], "{first}");
    assert_eq!(column("ssn")["action"], "null");
    assert!(columns.iter().all(|c| c["column"] != "id"), "unmasked columns are not listed: {columns:?}");
    let per_column: u64 = columns.iter().map(|c| c["cells"].as_u64().unwrap()).sum();
    let fallback = first["masked"]["fallback_null"].as_u64().unwrap_or(0);
    assert_eq!(per_column, first["masked_cells"].as_u64().unwrap() + fallback, "{first}");
    let keys = find("order_no FROM orders");
    assert_eq!(keys["rows"], 7, "{keys}");
    assert_eq!(keys["masked_cells"], 0, "{keys}");
    let dup = find("INSERT INTO customers");
    assert_eq!(dup["outcome"], "error");
    assert_eq!(dup["sqlstate"], "23505");
    assert_eq!(dup["class"], "insert");
    assert!(statements.iter().any(|s| s["sqlstate"] == "22P02"), "cast error audited");
    assert!(statements.iter().filter(|s| s["statement"].as_str().unwrap().contains("count(*)")).count() >= 1);

    let end = events.iter().find(|e| kind(e) == "session_end").unwrap();
    assert_eq!(end["outcome"], "ok");
    assert!(end["statements"].as_u64().unwrap() >= 5, "{end}");

    // No seeded value anywhere: the audit file and the proxy's log.
    let audit_text = std::fs::read_to_string(&setup.audit).unwrap();
    // In any form the finder knows (case, reversed, hex, base64, parts...).
    values.assert_absent("audit file", &audit_text);
    values.assert_absent("proxy stderr", &setup.proxy.stderr());

    // Metrics: exposed and counting.
    let text = scrape(setup.metrics).await;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("masker_connections_total ") >= 1.0);
    assert!(value(&format!("masker_sessions_total{{identity=\"{IDENTITY}\"}}")) >= 1.0);
    assert!(value(&format!("masker_statements_total{{identity=\"{IDENTITY}\",outcome=\"ok\"}}")) >= 5.0);
    assert!(value(&format!("masker_statements_total{{identity=\"{IDENTITY}\",outcome=\"error\"}}")) >= 3.0);
    assert!(value(&format!("masker_masked_cells_total{{identity=\"{IDENTITY}\",action=\"email\"}}")) >= 20.0);
    assert!(value("masker_relay_latency_seconds_count ") >= 5.0);
    assert_eq!(value("masker_audit_events_dropped_total "), 0.0);
    assert!(value(&format!("masker_denials_total{{identity=\"{IDENTITY}\"}}")) >= 1.0);
    values.assert_absent("metrics", &text);
}

/// `GET /metrics` over a plain TCP connection.
async fn scrape(addr: std::net::SocketAddr) -> String {
    within(Duration::from_secs(10), "metrics scrape", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: text/plain; version=0.0.4"), "{out}");
        let mut other = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint");
        other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut not_found = String::new();
        other.read_to_string(&mut not_found).await.unwrap();
        assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
        out
    })
    .await
}

#[test]
fn audit_tail_filters_and_renders() {
    let setup = start();
    let cluster = PgCluster::shared();
    let proxied = cluster.app().at(setup.proxy.addr());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = proxied.connect().await.expect("connect");
        client.simple_query("SELECT email FROM customers LIMIT 3").await.unwrap();
        drop(client);
        events_until(&setup.audit, "session_end", |ev| ev.iter().any(|e| kind(e) == "session_end")).await;
    });
    let run = |args: &[&str]| {
        let out = std::process::Command::new(MaskerProxy::binary()).args(args).output().expect("masker audit tail");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let file = setup.audit.to_string_lossy().to_string();
    let json = run(&["audit", "tail", "--file", &file, "--json"]);
    assert!(json.lines().count() >= 3 && json.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{json}");
    let human = run(&["audit", "tail", "--file", &file, "--identity", IDENTITY]);
    assert!(human.contains("statement") && human.contains("SELECT email FROM customers LIMIT"), "{human}");
    let none = run(&["audit", "tail", "--file", &file, "--identity", "nobody"]);
    assert!(none.is_empty(), "{none}");
}

/// A proxy without a policy relays unchanged (no masking, no scrubbing) and
/// still writes a `statement` event per statement when the audit trail is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_policy_are_audited_statement_by_statement() {
    let cluster = PgCluster::shared();
    let values = PersonalValues::load(cluster).expect("seeded values");
    let email = values.of_kind("email").next().expect("an email").to_string();
    let dir = tempfile::Builder::new().prefix("masker-audit-").tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let args = ["--identity".to_string(), IDENTITY.to_string(), "--audit-file".into(), audit.to_string_lossy().into()];
    let proxy = MaskerProxy::start_with_args(cluster.addr(), &args).unwrap_or_else(|e| panic!("proxy: {e:#}"));
    let direct = cluster.app();
    let proxied = cluster.app().at(proxy.addr());
    let sql = "SELECT id, full_name, email FROM customers ORDER BY id LIMIT 5";
    within(LIMIT, "no-policy session", async {
        let d = direct.connect().await.expect("direct");
        let p = proxied.connect().await.expect("proxied");
        // Raw rows, equal to direct: nothing is masked without a policy.
        let row_text = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter()
                .map(|r| format!("{}|{}|{}", r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
                .collect()
        };
        let want = row_text(d.query(sql, &[]).await.expect("direct"));
        assert_eq!(row_text(p.query(sql, &[]).await.expect("proxied")), want);
        p.simple_query(&format!("SELECT id FROM customers WHERE email = '{email}'; SELECT 1")).await.expect("multi");
        // An error reaches the client as the server sent it (not scrubbed).
        let err = p.simple_query("SELECT no_such_column FROM customers").await.expect_err("error");
        assert!(err.as_db_error().expect("db error").message().contains("\"no_such_column\""), "{err:?}");
        // COPY (query) streams through unchanged (a policy would refuse it).
        let copy = "COPY (SELECT id, email FROM customers ORDER BY id LIMIT 3) TO STDOUT";
        let mut chunks = Vec::new();
        for client in [&d, &p] {
            let stream = client.copy_out(copy).await.expect("copy out");
            futures_util::pin_mut!(stream);
            let mut bytes = Vec::new();
            while let Some(chunk) = futures_util::TryStreamExt::try_next(&mut stream).await.expect("copy data") {
                bytes.extend_from_slice(&chunk);
            }
            chunks.push(bytes);
        }
        assert_eq!(chunks[0], chunks[1], "COPY through masker equals direct");
        assert_eq!(chunks[1].iter().filter(|b| **b == b'\n').count(), 3);
    })
    .await;
    let events =
        events_until(&audit, "statement events", |ev| ev.iter().filter(|e| kind(e) == "statement").count() >= 5).await;
    let statements: Vec<&Value> = events.iter().filter(|e| kind(e) == "statement").collect();
    let extended = statements
        .iter()
        .find(|e| e["statement"].as_str().is_some_and(|s| s.contains("ORDER BY id LIMIT")))
        .unwrap_or_else(|| panic!("extended-protocol statement: {statements:?}"));
    assert_eq!(extended["rows"], 5, "{extended}");
    assert_eq!(extended["masked_cells"], 0, "{extended}");
    assert_eq!(extended["class"], "select");
    assert_eq!(extended["outcome"], "ok");
    let by_email = statements
        .iter()
        .find(|e| e["statement"].as_str().is_some_and(|s| s.contains("WHERE email =")))
        .unwrap_or_else(|| panic!("simple statement: {statements:?}"));
    assert_eq!(by_email["rows"], 1, "{by_email}");
    let failed = statements.iter().find(|e| e["outcome"] == "error").expect("an error event");
    assert!(statements.iter().any(|e| e["command"] == "COPY" && e["rows"] == 0), "COPY event: {statements:?}");
    assert_eq!(failed["sqlstate"], "42703", "{failed}");
    let text = std::fs::read_to_string(&audit).expect("audit file");
    values.assert_absent("the audit trail", &text);
    values.assert_absent("the proxy log", &proxy.stderr());
}
