//! Observe mode (issue 18): an `[[identity]]` block with `mode = "observe"`
//! relays everything unchanged and records what enforcing would have done.
//!
//! - Byte for byte: the masking corpus and the lineage compatibility corpus,
//!   simple protocol (with the corpus's setups) and extended protocol
//!   (binary results, with and without the client's Describe), give exactly
//!   the messages a direct session gets — rows, errors with every field,
//!   notices, COPY data, CommandComplete — though the policy masks and
//!   refuses many of them when enforced.
//! - The audit trail: every event of an observe session says `mode`
//!   `observe`; a statement event's `would_mask` is exactly the
//!   `masked_columns` (and per-action counts) the same statement gets from an
//!   enforcing proxy, and its own masked counts are zero; what enforcing
//!   refuses or holds (lineage, guardrail, approval, the identity's
//!   `databases`) is a `denial` event with the same reason.
//! - The metrics count it: `masker_observe_masked_cells_total` and
//!   `masker_observe_denials_total` match the audit trail, and nothing is
//!   counted as masked or denied.
//! - `masker agent`: `masker status` names the observing identities and
//!   marks their live sessions, the agent's log says so, and psql in a tagged
//!   cgroup sees what psql sees directly (root and BPF; skipped otherwise).
//!
//! Needs the masker binary: `cargo build -p masker-agent --bin masker`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use masker_tests::agent::{AgentOptions, MaskerAgent, TestCgroup};
use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::corpora::{LINEAGE_COMPATIBLE, MASKING};
use masker_tests::psql::Psql;
use masker_tests::raw::{self, Msg, RawConn};
use masker_tests::{MaskerProxy, PgCluster, within};
use postgres_protocol::message::frontend;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDENTITY: &str = "ci-observe";
const KEY_ENV: &str = "MASKER_OBSERVE_KEY";
const KEY: &str = "observe-suite-key-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(300);

/// Masks and refuses a lot when enforced; `{MODE}` is replaced by the
/// block's mode line. The block's `databases` does not list `shop`: an
/// enforced session would be refused at its start.
const POLICY: &str = r#"
version = 1
[defaults]
action = "detect"
comment_classification = true
[pseudonymize]
key_env = "MASKER_OBSERVE_KEY"

[[rule]]
name = "email"
column_names = ["*email*"]
action = "pseudonymize"
format_preserving = true

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
name = "ops"
column_names = ["id", "*_id", "order_no", "created_at", "status", "plan", "amount*", "balance"]
action = "allow"

[[identity]]
name = "ci-observe*"
{MODE}
databases = {DATABASES}
deny_functions = ["pg_read_file"]

[[approval]]
name = "customer-updates"
classes = ["update"]
tables = ["public.customers"]
"#;

fn policy(dir: &Path, name: &str, mode: &str, databases: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, POLICY.replace("{MODE}", mode).replace("{DATABASES}", databases)).expect("policy");
    path
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A proxy for [`IDENTITY`] with `policy`, its audit trail in `audit` and
/// metrics on `metrics`.
fn proxy(policy: &Path, audit: &Path, metrics: Option<std::net::SocketAddr>) -> MaskerProxy {
    let cluster = PgCluster::shared();
    let mut args: Vec<String> =
        ["--identity", IDENTITY, "--catalog-user", APP_USER, "--audit-file"].iter().map(|s| s.to_string()).collect();
    args.push(audit.to_string_lossy().into_owned());
    args.push("--policy".into());
    args.push(policy.to_string_lossy().into_owned());
    if let Some(m) = metrics {
        args.push("--metrics-listen".into());
        args.push(m.to_string());
    }
    MaskerProxy::start_with_env(cluster.addr(), &args, &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD), (KEY_ENV, KEY)])
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"))
}

/// The messages as compared: a NotificationResponse's sender pid differs
/// between two sessions by nature and is zeroed; BackendKeyData is left out.
/// With `temp`, the table OIDs of RowDescriptions are zeroed too: the
/// session's own temporary tables have an OID per session.
fn comparable(msgs: Vec<Msg>, temp: bool) -> Vec<Msg> {
    msgs.into_iter()
        .filter(|m| m.tag != b'K')
        .map(|mut m| {
            if m.tag == b'A' && m.body.len() >= 4 {
                m.body[..4].copy_from_slice(&[0; 4]);
            }
            if m.tag == b'T' && temp {
                zero_table_oids(&mut m.body);
            }
            m
        })
        .collect()
}

/// Zeroes the table OID of every field of a RowDescription body.
fn zero_table_oids(body: &mut [u8]) {
    let Some(count) = body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
    let mut at = 2;
    for _ in 0..count {
        let Some(end) = body[at..].iter().position(|b| *b == 0) else { return };
        at += end + 1;
        if let Some(oid) = body.get_mut(at..at + 4) {
            oid.copy_from_slice(&[0; 4]);
        }
        // table oid 4, attnum 2, type oid 4, size 2, modifier 4, format 2
        at += 18;
    }
}

/// Parse, Bind (binary results), Execute, Sync: the client never describes
/// the portal (masker asks the server itself).
fn extended_without_describe(sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut out).expect("parse");
    frontend::bind(
        "",
        "",
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&str>>(),
        |_: Option<&str>, _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes),
        std::iter::once(1i16),
        &mut out,
    )
    .map_err(|_| "bind")
    .expect("bind");
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::sync(&mut out);
    out.to_vec()
}

/// Texts whose results change from one session to the next by nature
/// (other sessions' activity, creation times).
fn session_dependent(sql: &str) -> bool {
    ["pg_stat_activity", "pg_stat_get_activity", "pg_prepared_statements", "pg_cursors"].iter().any(|v| sql.contains(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_is_byte_for_byte_direct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let observe = policy(dir.path(), "observe.toml", "mode = \"observe\"", "[\"other_db\"]");
    let proxy = proxy(&observe, &dir.path().join("audit.jsonl"), None);
    let cluster = PgCluster::shared();
    let info = cluster.app();
    within(LIMIT, "byte-for-byte corpus", async {
        let (mut d, d_login) = RawConn::login(cluster.addr(), &info).await.expect("direct login");
        // The identity's `databases` would refuse this session: observed, not refused.
        let (mut p, p_login) = RawConn::login(proxy.addr(), &info).await.expect("login through masker in observe mode");
        assert_eq!(comparable(d_login, false), comparable(p_login, false), "after login");
        let mut cases: Vec<(&str, &str)> = MASKING.iter().map(|(_, setup, sql)| (*setup, *sql)).collect();
        cases.extend(LINEAGE_COMPATIBLE.iter().map(|sql| ("", *sql)));
        let mut compared = 0;
        for (setup, sql) in cases {
            if session_dependent(sql) {
                continue;
            }
            let temp = setup.contains("TEMP");
            // One session each for the whole corpus: what a setup creates
            // stays, as it would in a real session. Writes are rolled back.
            let mut round = Vec::new();
            if !setup.is_empty() {
                round.push(raw::query(setup));
            }
            // Each form in its own transaction, rolled back.
            let mut forms = vec![raw::query(sql)];
            if !sql.contains(';') && !sql.starts_with("EXECUTE") && !sql.starts_with("FETCH") {
                forms.push(raw::extended(sql, &[], 1));
                forms.push(extended_without_describe(sql));
            }
            for form in forms {
                round.extend([raw::query("BEGIN"), form, raw::query("ROLLBACK")]);
            }
            // The whole round on one side, then on the other: an open
            // transaction's row locks would make the other side wait.
            let mut answers = Vec::new();
            for bytes in &round {
                d.send(bytes).await.expect("send direct");
                answers.push(comparable(
                    d.read_until_ready().await.unwrap_or_else(|e| panic!("{sql}: direct: {e:#}")),
                    temp,
                ));
            }
            for (bytes, want) in round.iter().zip(answers) {
                p.send(bytes).await.expect("send through masker");
                let got = comparable(
                    p.read_until_ready().await.unwrap_or_else(|e| panic!("{sql}: no answer through masker: {e:#}")),
                    temp,
                );
                compared += want.len();
                assert!(
                    raw::wire(&want) == raw::wire(&got),
                    "{sql}: observe mode changed the bytes\ndirect:  {want:?}\nmasker:  {got:?}"
                );
            }
        }
        assert!(compared > 10_000, "{compared} messages compared");
    })
    .await;
}

/// The audit events in `path`, once it holds a `session_end` for each of
/// `sessions` sessions (the writer is asynchronous).
fn audit_events(path: &Path, sessions: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("audit line is JSON")).collect();
        if events.iter().filter(|e| e["event"] == "session_end").count() >= sessions {
            return events;
        }
        assert!(Instant::now() < deadline, "audit trail incomplete: {events:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The statements whose audit trail is compared between an enforcing and
/// an observing proxy (each in its own session).
const AUDITED: &[&str] = &[
    "SELECT id, email, ssn, phone, card_number, plan FROM customers WHERE id <= 25 ORDER BY id",
    "SELECT upper(email), notes FROM customers WHERE id <= 40 ORDER BY id",
    "SELECT o.order_no, c.iban FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id <= 30 ORDER BY o.id",
    "COPY customers (id, email, phone, ssn) TO STDOUT",
    "SELECT * FROM pg_stats WHERE tablename = 'customers'",
    "UPDATE customers SET plan = plan WHERE id = 1",
    "SELECT pg_read_file('/etc/hostname')",
    "CREATE TEMP TABLE observe_copy AS SELECT email FROM customers",
];

/// Runs each of [`AUDITED`] in its own session of `proxy` (writes rolled
/// back); errors are expected from the enforcing proxy.
async fn run_audited(proxy: &MaskerProxy) {
    let info = PgCluster::shared().app().at(proxy.addr());
    for sql in AUDITED {
        let client = info.connect().await.expect("connect");
        client.batch_execute("BEGIN").await.expect("BEGIN");
        if sql.starts_with("COPY") {
            if let Ok(stream) = client.copy_out(*sql).await {
                futures_util::pin_mut!(stream);
                while futures_util::StreamExt::next(&mut stream).await.is_some() {}
            }
        } else {
            let _ = client.simple_query(sql).await;
        }
        let _ = client.batch_execute("ROLLBACK").await;
    }
}

/// The `statement` event of `sql` (by its normalized text's start), if
/// it ran (a refused statement's event is that of masker's refusal).
fn ran<'a>(events: &'a [Value], sql: &str) -> Option<&'a Value> {
    let end = [sql.find(" FROM"), sql.find('\''), Some(30), Some(sql.len())].into_iter().flatten().min().unwrap_or(0);
    let head = &sql[..end];
    events.iter().find(|e| e["event"] == "statement" && e["statement"].as_str().is_some_and(|s| s.starts_with(head)))
}

fn statement<'a>(events: &'a [Value], sql: &str) -> &'a Value {
    ran(events, sql).unwrap_or_else(|| panic!("no statement event for {sql}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_audits_and_counts_what_enforcing_would_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = "[\"shop\"]";
    let enforce = policy(dir.path(), "enforce.toml", "", shop);
    let observe = policy(dir.path(), "observe.toml", "mode = \"observe\"", shop);
    let (enforce_audit, observe_audit) = (dir.path().join("enforce.jsonl"), dir.path().join("observe.jsonl"));
    let metrics = free_port();
    let enforcing = proxy(&enforce, &enforce_audit, None);
    let observing = proxy(&observe, &observe_audit, Some(metrics));
    within(LIMIT, "audit and metrics", async {
        run_audited(&enforcing).await;
        run_audited(&observing).await;
    })
    .await;
    let enforced = audit_events(&enforce_audit, AUDITED.len());
    let observed = audit_events(&observe_audit, AUDITED.len());

    // Every event of an observing session says so; none of an enforcing one.
    assert!(observed.iter().all(|e| e["mode"] == "observe"), "{observed:?}");
    assert!(enforced.iter().all(|e| e.get("mode").is_none()), "{enforced:?}");

    // What would have been masked is what enforcing masks, column by column.
    for sql in &AUDITED[..4] {
        let (e, o) = (statement(&enforced, sql), statement(&observed, sql));
        assert_eq!(o["masked_cells"], 0, "{o}");
        assert_eq!(o["masked_columns"], serde_json::json!([]), "{o}");
        let would = &o["would_mask"];
        assert_eq!(would["columns"], e["masked_columns"], "{sql}\nenforced: {e}\nobserved: {o}");
        assert_eq!(would["by_action"], e["masked"], "{sql}");
        assert_eq!(would["cells"], e["masked_cells"], "{sql}");
        assert!(would["cells"].as_u64().unwrap_or(0) > 0, "{sql}: {o}");
    }
    let first = &statement(&observed, AUDITED[0])["would_mask"]["columns"];
    let actions: Vec<(&str, &str)> = first
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| (c["column"].as_str().unwrap_or(""), c["action"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(actions, [("email", "pseudonymize"), ("ssn", "null"), ("phone", "partial"), ("card_number", "redact")]);

    // What enforcing refuses or holds, observe records with the same reason.
    let denials = |events: &[Value]| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|e| e["event"] == "denial")
            .map(|e| (e["rule"].as_str().unwrap_or("").to_string(), e["statement"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    let (de, dobs) = (denials(&enforced), denials(&observed));
    assert_eq!(de.len(), 4, "{de:?}");
    assert_eq!(de, dobs, "the same statements are refused or held, by the same kind of rule");
    let reasons = |events: &[Value], rule: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == "denial" && e["rule"] == rule)
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for rule in ["lineage", "guardrail"] {
        assert_eq!(reasons(&enforced, rule), reasons(&observed, rule), "{rule}");
    }
    assert!(reasons(&observed, "approval")[0].contains("would be held for approval (rule customer-updates)"));
    // What enforcing refused did not run there, and ran in observe mode.
    for sql in &AUDITED[4..] {
        assert!(ran(&enforced, sql).is_none(), "{sql} ran though enforced");
        assert!(ran(&observed, sql).is_some(), "{sql} did not run in observe mode");
    }

    // The metrics count what the audit trail says, and nothing as masked
    // or denied.
    let mut would_total: BTreeMap<String, u64> = BTreeMap::new();
    for e in observed.iter().filter(|e| e["event"] == "statement") {
        for (action, n) in e["would_mask"]["by_action"].as_object().into_iter().flatten() {
            if action != "fallback_null" {
                *would_total.entry(action.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    assert!(would_total.len() >= 4, "{would_total:?}");
    let text = within(Duration::from_secs(10), "scrape", scrape(metrics)).await;
    for (action, n) in &would_total {
        let series = format!("masker_observe_masked_cells_total{{identity=\"{IDENTITY}\",action=\"{action}\"}}");
        assert_eq!(metric(&text, &series), *n, "{action}: {text}");
    }
    assert_eq!(metric(&text, &format!("masker_observe_denials_total{{identity=\"{IDENTITY}\"}}")), 4);
    assert_eq!(metric(&text, &format!("masker_denials_total{{identity=\"{IDENTITY}\"}}")), 0);
    for action in ["pseudonymize", "null", "partial", "redact", "detect"] {
        assert_eq!(
            metric(&text, &format!("masker_masked_cells_total{{identity=\"{IDENTITY}\",action=\"{action}\"}}")),
            0,
            "{action}"
        );
    }
    // The proxy says it observes.
    assert!(observing.stderr().contains("OBSERVE MODE"), "{}", observing.stderr());
}

/// Observe mode through the agent: status, log, and psql in a tagged cgroup.
#[test]
fn agent_status_marks_observing_identities_and_sessions() {
    if !masker_tests::skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let observe = policy(dir.path(), "observe.toml", "mode = \"observe\"", "[\"shop\"]");
    let options = AgentOptions {
        targets: vec![cluster.addr().to_string()],
        policy: Some(observe),
        catalog: Some((APP_USER.into(), APP_PASSWORD.into())),
        audit_file: Some(dir.path().join("audit.jsonl")),
        env: vec![(KEY_ENV.into(), KEY.into())],
        ..AgentOptions::default()
    };
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    let status = agent.status();
    assert_eq!(status["observe"], serde_json::json!(["ci-observe*"]), "{status}");
    let text = agent.run_cli(&["status"]);
    assert!(
        text.stdout.contains("OBSERVE MODE: sessions of [[identity]] ci-observe* are relayed UNMASKED"),
        "{}",
        text.stdout
    );
    assert!(agent.stderr().contains("OBSERVE MODE"), "{}", agent.stderr());

    // psql in a tagged cgroup sees what psql sees directly.
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "ci-observe-1");
    let sql = "SELECT id, email, ssn, phone, card_number FROM customers WHERE id <= 20 ORDER BY id";
    let info = cluster.app();
    let direct = Psql::new(&info).command(sql).run_ok();
    let wrapper = cg.command(cluster.bindir().join("psql"));
    let tagged = Psql::via(wrapper, &info).env("PGSSLMODE", "disable").command(sql).run_ok();
    assert_eq!(direct, tagged, "psql through the agent in observe mode");

    // A live session of the identity is marked. It waits on an advisory
    // lock held here, so it is there while status is read.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let holder = rt.block_on(cluster.app().connect()).expect("direct connect");
    rt.block_on(holder.batch_execute("SELECT pg_advisory_lock(4242)")).expect("lock");
    let wrapper = cg.command(cluster.bindir().join("psql"));
    let mut waiting = Psql::via(wrapper, &info)
        .env("PGSSLMODE", "disable")
        .command("SELECT pg_advisory_lock(4242); SELECT pg_advisory_unlock(4242)")
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let status = agent.status();
        let live = status["sessions"].as_array().cloned().unwrap_or_default();
        if let Some(s) = live.into_iter().find(|s| s["identity"] == "ci-observe-1") {
            break s;
        }
        assert!(Instant::now() < deadline, "no live session of ci-observe-1: {status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(session["observe"], true, "{session}");
    assert!(agent.run_cli(&["sessions"]).stdout.contains("OBSERVE (relayed unmasked)"));
    rt.block_on(holder.batch_execute("SELECT pg_advisory_unlock(4242)")).expect("unlock");
    let out = masker_tests::process::wait_until(&mut waiting, Duration::from_secs(30));
    assert!(matches!(out, Ok(Some(s)) if s.success()), "{out:?}");

    // What enforcing would have done, per identity.
    let status = agent.status();
    let counters = &status["identities"]["ci-observe-1"];
    assert!(counters["observe_masked_cells"].as_u64().unwrap_or(0) >= 40, "{counters}");
    assert_eq!(counters["masked_cells"], 0, "{counters}");
    assert!(agent.run_cli(&["status"]).stdout.contains("OBSERVE MODE: WHAT ENFORCING WOULD HAVE DONE"));
    agent.untag(cg.path());
}
