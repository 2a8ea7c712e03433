//! Approvals end to end (issue 7): the real `masker agent` with a policy
//! whose `[[approval]]` rules hold statements, `psql` in a tagged cgroup
//! (its connection redirected by eBPF), and the real `masker approvals` CLI
//! deciding while the client waits.
//!
//! Covered: approve (the statement runs once decided), deny (42501 with the
//! approver and reason; the session runs its next statement), timeout (42501
//! naming the timeout; the session goes on), a standing approval (`--for`)
//! that lets the same shape run without asking, reads of a listed column
//! held, other identities and other statements not held, `masker sessions
//! kill` of a session that waits (its request is withdrawn), and the audit
//! events of each step validated field by field.
//!
//! Needs root and BPF: fails otherwise, unless `MASKER_TESTS_ALLOW_SKIP=ebpf`.
#![forbid(unsafe_code)]

use std::process::Child;
use std::time::{Duration, Instant};

use masker_tests::agent::{AgentOptions, MaskerAgent, TestCgroup};
use masker_tests::cluster::{APP_DB, APP_PASSWORD, APP_USER};
use masker_tests::process;
use masker_tests::psql::Psql;
use masker_tests::skip;
use masker_tests::{ConnInfo, PgCluster};
use serde_json::Value;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

const POLICY: &str = r#"
version = 1
[defaults]
action = "allow"
comment_classification = false

[[approval]]
name = "ledger-writes"
identities = ["ci-*"]
classes = ["update", "delete"]
tables = ["approval_ledger"]
timeout = "4s"

[[approval]]
name = "raw-ssn"
identities = ["ci-*"]
columns = ["public.customers.ssn"]
"#;

struct Setup {
    agent: MaskerAgent,
    cluster: &'static PgCluster,
    dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !skip::ebpf() {
        return None;
    }
    let cluster = PgCluster::shared();
    static LEDGER: std::sync::Once = std::sync::Once::new();
    LEDGER.call_once(|| {
        cluster
            .run_sql_as_superuser(
                APP_DB,
                "DROP TABLE IF EXISTS approval_ledger; \
             CREATE TABLE approval_ledger (id int PRIMARY KEY, note text); \
             INSERT INTO approval_ledger SELECT g, 'n' || g FROM generate_series(1, 20) g; \
             GRANT ALL ON approval_ledger TO app;",
            )
            .expect("ledger table");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let options = AgentOptions {
        targets: vec![cluster.addr().to_string()],
        policy: Some(policy),
        catalog: Some((APP_USER.into(), APP_PASSWORD.into())),
        audit_file: Some(dir.path().join("audit.jsonl")),
        ..AgentOptions::default()
    };
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    Some(Setup { agent, cluster, dir })
}

impl Setup {
    /// A cgroup tagged with `identity`.
    fn cgroup(&self, identity: &str) -> TestCgroup {
        let cg = TestCgroup::new().expect("cgroup");
        self.agent.tag(cg.path(), identity);
        cg
    }

    /// `psql` in `cg` running each of `statements` in one session (going on
    /// after errors), started in the background.
    fn psql(&self, cg: &TestCgroup, statements: &[&str]) -> Child {
        let info: ConnInfo = self.cluster.app();
        let wrapper = cg.command(self.cluster.bindir().join("psql"));
        // VERBOSITY=verbose shows the SQLSTATE; without ON_ERROR_STOP psql
        // goes on after an error, as a session that stays usable must.
        let mut psql = Psql::via(wrapper, &info).env("PGSSLMODE", "disable").arg("-v").arg("VERBOSITY=verbose");
        psql = psql.arg("-v").arg("ON_ERROR_STOP=0");
        for s in statements {
            psql = psql.command(s);
        }
        psql.spawn()
    }

    fn cli(&self, args: &[&str]) -> process::Output {
        let out = self.agent.run_cli(args);
        assert!(out.code() == Some(0), "masker {args:?}: {}\n{}", out.stderr, self.agent.stderr());
        out
    }

    /// The pending approvals, waiting until there are `n` (or failing).
    fn pending(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["approvals", "list", "--json"]);
            let list: Vec<Value> = serde_json::from_str(&out.stdout).expect("approvals list --json");
            if list.len() == n {
                return list;
            }
            assert!(Instant::now() < deadline, "expected {n} pending approvals, have {list:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("audit line is JSON")).collect()
    }

    /// The approval events of approval `id`, waiting for `decision` to appear.
    fn approval_events(&self, id: u64, decision: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events: Vec<Value> = self
                .audit()
                .into_iter()
                .filter(|e| e["event"] == "approval" && e["approval"].as_u64() == Some(id))
                .collect();
            if events.iter().any(|e| e["decision"] == decision) {
                return events;
            }
            assert!(Instant::now() < deadline, "no {decision} event for approval {id}: {events:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits for `child` and returns (exit code, stdout, stderr).
fn finish(child: Child) -> (Option<i32>, String, String) {
    let pid = child.id();
    let out = wait_with_limit(child, CLIENT_TIMEOUT).unwrap_or_else(|| panic!("psql (pid {pid}) did not finish"));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn wait_with_limit(mut child: Child, limit: Duration) -> Option<std::process::Output> {
    match process::wait_until(&mut child, limit) {
        Ok(Some(_)) => child.wait_with_output().ok(),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

fn direct_note(cluster: &PgCluster, id: i32) -> String {
    cluster
        .run_sql_as_superuser(APP_DB, &format!("SELECT note FROM approval_ledger WHERE id = {id}"))
        .expect("direct read")
        .trim()
        .to_string()
}

fn assert_event(e: &Value, rule: &str, decision: &str) {
    assert_eq!(e["v"], 1, "{e}");
    assert_eq!(e["identity"], "ci-bot", "{e}");
    assert_eq!(e["rule"], rule, "{e}");
    assert_eq!(e["decision"], decision, "{e}");
    assert!(e["session"].as_u64().is_some() && e["ts"].as_str().is_some(), "{e}");
}

#[test]
fn approve_deny_timeout_and_standing_approvals() {
    let Some(s) = setup() else { return };
    let ci = s.cgroup("ci-bot");

    // Approve: the client waits, told why by a notice, then its statement runs.
    let mut child = s.psql(&ci, &["UPDATE approval_ledger SET note = 'approved-1' WHERE id = 1 RETURNING note"]);
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, notices) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let pending = s.pending(1);
    let p = &pending[0];
    let notice = notices.recv_timeout(Duration::from_secs(20)).expect("a notice while the statement waits");
    let expected = format!("masker: statement held for approval {} (rule ledger-writes)", p["id"]);
    assert!(notice.starts_with("NOTICE:") && notice.contains(&expected), "{notice}");
    assert_eq!(p["rule"], "ledger-writes");
    assert_eq!(p["identity"], "ci-bot");
    let statement = p["statement"].as_str().expect("statement");
    assert!(statement.contains("UPDATE approval_ledger") && !statement.contains("approved-1"), "{statement}");
    let listed = s.cli(&["approvals", "list"]).stdout;
    assert!(listed.contains("ledger-writes") && listed.contains("ci-bot"), "{listed}");
    assert!(s.agent.status()["approvals"].as_array().is_some_and(|a| a.len() == 1), "status shows it");
    // Held means never sent: no server session has seen the statement.
    assert_eq!(direct_note(s.cluster, 1), "n1", "a held statement has not run");
    let seen = s
        .cluster
        .run_sql_as_superuser(
            "shop",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'UPDATE approval_ledger%';\n",
        )
        .expect("pg_stat_activity");
    assert_eq!(seen.trim(), "0", "the server has seen the held statement");
    let id = p["id"].as_u64().expect("id");
    s.cli(&["approvals", "approve", &id.to_string()]);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "approved-1");
    assert_eq!(direct_note(s.cluster, 1), "approved-1");
    let events = s.approval_events(id, "approved");
    assert_event(&events[0], "ledger-writes", "requested");
    assert_event(&events[1], "ledger-writes", "approved");
    assert_eq!(events[1]["class"], "update");
    assert!(events[1]["approver"].as_str().is_some_and(|a| !a.is_empty()), "{}", events[1]);
    assert!(!events[1].to_string().contains("approved-1"), "no literal in audit: {}", events[1]);

    // Deny: 42501 with approver and reason; the session's next statement runs.
    let child = s.psql(
        &ci,
        &["DELETE FROM approval_ledger WHERE id = 2", "SELECT 'still-usable', count(*) FROM approval_ledger"],
    );
    let id = s.pending(1)[0]["id"].as_u64().expect("id");
    s.cli(&["approvals", "deny", &id.to_string(), "--reason", "change freeze until Monday"]);
    let (_, out, err) = finish(child);
    assert!(err.contains("42501") && err.contains("denied by"), "{err}");
    assert!(err.contains("change freeze until Monday") && err.contains("ledger-writes"), "{err}");
    assert_eq!(out.trim(), "still-usable|20", "{err}");
    let events = s.approval_events(id, "denied");
    let denied = events.iter().find(|e| e["decision"] == "denied").expect("denied");
    assert_event(denied, "ledger-writes", "denied");
    assert_eq!(denied["reason"], "change freeze until Monday");
    // A decided approval cannot be decided again.
    let again = s.agent.run_cli(&["approvals", "approve", &id.to_string()]);
    assert_ne!(again.code(), Some(0));
    assert!(again.stderr.contains("no pending approval"), "{}", again.stderr);

    // Timeout: nobody decides within the rule's 4 s.
    let child = s.psql(&ci, &["DELETE FROM approval_ledger WHERE id = 3", "SELECT 'after-timeout'"]);
    let id = s.pending(1)[0]["id"].as_u64().expect("id");
    let (_, out, err) = finish(child);
    assert!(err.contains("42501") && err.contains("not approved within 4s"), "{err}");
    assert_eq!(out.trim(), "after-timeout");
    assert_eq!(s.pending(0).len(), 0);
    assert_eq!(direct_note(s.cluster, 3), "n3", "a timed-out statement did not run");
    assert_event(s.approval_events(id, "timeout").last().expect("event"), "ledger-writes", "timeout");

    // A client that hangs up while its statement waits withdraws it: the
    // statement never runs, whoever approves later.
    let mut child = s.psql(&ci, &["DELETE FROM approval_ledger WHERE id = 9"]);
    let id = s.pending(1)[0]["id"].as_u64().expect("id");
    child.kill().expect("kill psql");
    let _ = child.wait();
    assert_eq!(s.pending(0).len(), 0, "the request was withdrawn");
    assert_event(s.approval_events(id, "abandoned").last().expect("event"), "ledger-writes", "abandoned");
    let late = s.agent.run_cli(&["approvals", "approve", &id.to_string()]);
    assert!(late.stderr.contains("no pending approval"), "{}", late.stderr);
    assert_eq!(direct_note(s.cluster, 9), "n9", "a withdrawn statement did not run");

    // Standing approval: `--for` covers the same shape with other literals.
    let child = s.psql(&ci, &["UPDATE approval_ledger SET note = 'standing-4' WHERE id = 4"]);
    let id = s.pending(1)[0]["id"].as_u64().expect("id");
    s.cli(&["approvals", "approve", &id.to_string(), "--for", "10m"]);
    assert_eq!(finish(child).0, Some(0));
    let child = s.psql(&ci, &["UPDATE approval_ledger SET note = 'standing-5' WHERE id = 5"]);
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(direct_note(s.cluster, 5), "standing-5");
    let granted: Vec<Value> =
        s.audit().into_iter().filter(|e| e["event"] == "approval" && e["decision"] == "granted").collect();
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(granted[0]["approval"].as_u64(), Some(id), "granted names the standing approval");
    // ... but not another statement shape.
    let child = s.psql(&ci, &["DELETE FROM approval_ledger WHERE id = 6"]);
    let id = s.pending(1)[0]["id"].as_u64().expect("id");
    s.cli(&["approvals", "deny", &id.to_string(), "--reason", "no"]);
    let (_, _, err) = finish(child);
    assert!(err.contains("denied by"), "{err}");

    // Not held: reads of other columns, and other identities.
    let child =
        s.psql(&ci, &["SELECT note FROM approval_ledger WHERE id = 7", "SELECT count(full_name) FROM customers"]);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("n7\n"), "{out}");
    let other = s.cgroup("release-bot");
    let child = s.psql(&other, &["UPDATE approval_ledger SET note = 'other-8' WHERE id = 8 RETURNING note"]);
    let (code, out, err) = finish(child);
    assert_eq!((code, out.trim()), (Some(0), "other-8"), "{err}");

    // Metrics for the identity count the decisions.
    let status = s.agent.status();
    let approvals = &status["identities"]["ci-bot"]["approvals"];
    assert_eq!(approvals["approved"], 2, "{status}");
    assert_eq!(approvals["denied"], 2, "{status}");
    assert_eq!(approvals["timeout"], 1, "{status}");
    assert_eq!(approvals["granted"], 1, "{status}");
}

#[test]
fn reading_a_listed_column_waits_and_killing_a_waiting_session_withdraws_it() {
    let Some(s) = setup() else { return };
    let ci = s.cgroup("ci-bot");
    let expected = s
        .cluster
        .run_sql_as_superuser(APP_DB, "SELECT ssn FROM customers ORDER BY id LIMIT 1")
        .expect("direct ssn")
        .trim()
        .to_string();

    // Reading the listed (unmasked) column through an expression is held too.
    let child = s.psql(&ci, &["SELECT upper(ssn) FROM customers ORDER BY id LIMIT 1"]);
    let p = &s.pending(1)[0];
    assert_eq!(p["rule"], "raw-ssn");
    s.cli(&["approvals", "approve", &p["id"].as_u64().expect("id").to_string()]);
    let (code, out, err) = finish(child);
    assert_eq!((code, out.trim()), (Some(0), expected.to_uppercase().as_str()), "{err}");

    // `masker sessions kill` ends a session whose statement waits.
    let child = s.psql(&ci, &["SELECT ssn FROM customers LIMIT 1"]);
    let p = s.pending(1)[0].clone();
    let session = p["session"].as_u64().expect("session");
    let sessions: Vec<Value> = serde_json::from_str(&s.cli(&["sessions", "--json"]).stdout).expect("sessions --json");
    assert!(sessions.iter().any(|x| x["id"].as_u64() == Some(session) && x["identity"] == "ci-bot"), "{sessions:?}");
    s.cli(&["sessions", "kill", &session.to_string()]);
    let (code, out, err) = finish(child);
    assert_ne!(code, Some(0));
    assert!(err.contains("57P01"), "{err}");
    assert!(!out.contains(&expected), "a killed session got no data");
    assert_eq!(s.pending(0).len(), 0, "the request was withdrawn");
    let stale = s.agent.run_cli(&["approvals", "approve", &p["id"].as_u64().expect("id").to_string()]);
    assert!(stale.stderr.contains("no pending approval"), "{}", stale.stderr);
    let end = s
        .audit()
        .into_iter()
        .find(|e| e["event"] == "session_end" && e["session"].as_u64() == Some(session))
        .expect("session_end of the killed session");
    assert_eq!(end["outcome"], "error", "{end}");
    assert!(!serde_json::to_string(&s.audit()).expect("json").contains(&expected), "no ssn in the audit trail");
}
