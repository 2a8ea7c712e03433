//! Transparent interception end to end: the real `masker agent` (real eBPF
//! programs, attached to the cgroup v2 root), real cgroups, a real PostgreSQL
//! and real clients (`psql`, tokio-postgres) that connect to the server's own
//! address, unchanged.
//!
//! Each test starts its own agent (own listen ports, admin socket and pin
//! directory) and its own cgroups, so the tests run in parallel with each
//! other and with other test binaries; a cgroup is redirected only by the
//! agent that tagged it. Whether a connection went through masker is read from
//! the agent (`masker status --json`: connection counter, live sessions).
//! Every test ends by checking that its pins and cgroups are gone.
//!
//! Needs root and BPF: fails otherwise, unless `MASKER_TESTS_ALLOW_SKIP=ebpf`.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup, test_client};
use masker_tests::process::{self, Output};
use masker_tests::psql::Psql;
use masker_tests::skip;
use masker_tests::{ConnInfo, PgCluster};
use serde_json::{Value, json};

/// The query both clients run: enough to see that the rows come from the
/// real server, unchanged (the agents here have no policy).
const QUERY: &str = "SELECT count(*), current_user, current_database() FROM customers WHERE id <= 100";
/// What [`QUERY`] returns in psql's unaligned output.
const QUERY_OUT: &str = "100|app|shop";
/// Deadline of one client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The tokio-postgres client, run as a separate process so that it can be put
// in a cgroup (cgroup membership is per process).

/// Set in the environment of the re-executed test binary: the login
/// (`host port user password dbname`) of the client process.
const CLIENT_ENV: &str = "MASKER_IT_TOKIO_CLIENT";

/// Not a test of its own (hence ignored): the body of the tokio-postgres
/// client process the other tests start (this test binary, re-executed with
/// [`CLIENT_ENV`] set and `--ignored`, inside a cgroup). Run without the
/// variable, it fails.
///
/// The client connects, runs a parameterized query (extended protocol) and
/// prints `CLIENT-RESULT {json}` (or `CLIENT-ERROR [SQLSTATE] message`, the
/// code when the server sent one), then keeps the
/// connection open until a line arrives on stdin, runs one more query and
/// prints `CLIENT-DONE {json}`.
#[test]
#[ignore = "the body of a client process the other tests start, not a test"]
fn tokio_postgres_client_process() {
    let spec = std::env::var(CLIENT_ENV).unwrap_or_else(|_| {
        panic!("not a test: the body of a client process, run with {CLIENT_ENV} set by the other tests")
    });
    let info = ConnInfo::from_spec(&spec).unwrap_or_else(|| panic!("bad {CLIENT_ENV}: {spec:?}"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = match info.connect().await {
            Ok(client) => client,
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                let code = e.code().map(|c| format!("[{}] ", c.code())).unwrap_or_default();
                println!("CLIENT-ERROR {code}{message}");
                return;
            }
        };
        let row = client
            .query_one(
                "SELECT count(*), current_user::text, current_database()::text FROM customers WHERE id <= $1",
                &[&100i64],
            )
            .await
            .expect("query");
        let (count, user, db): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        println!("CLIENT-RESULT {}", json!({ "pid": std::process::id(), "count": count, "user": user, "db": db }));
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let one: i32 = client.query_one("SELECT 1", &[]).await.expect("second query").get(0);
        println!("CLIENT-DONE {}", json!({ "one": one }));
    });
}

/// A tokio-postgres client process for `info`, started by `wrapper` (a
/// command whose remaining arguments are the program and its arguments: a
/// [`TestCgroup::command`] or `masker run ... --`).
fn tokio_client(wrapper: Command, info: &ConnInfo) -> LineChild {
    test_client(wrapper, "tokio_postgres_client_process", CLIENT_ENV, info).expect("spawn the tokio-postgres client")
}

fn current_exe() -> PathBuf {
    std::env::current_exe().expect("the test binary")
}

/// Waits for the client's result line, checks the rows, returns its pid.
#[track_caller]
fn expect_client_result(client: &mut LineChild) -> u32 {
    let result = client.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    let Some(result) = result.strip_prefix("RESULT ") else { panic!("tokio-postgres client failed: {result}") };
    let result: Value = serde_json::from_str(result).expect("client JSON");
    assert_eq!((&result["count"], &result["user"], &result["db"]), (&json!(100), &json!("app"), &json!("shop")));
    result["pid"].as_u64().expect("pid") as u32
}

/// Lets the client run its second query on the open connection and exit.
#[track_caller]
fn finish_client(mut client: LineChild) {
    client.send_line("go").expect("release the client");
    let done = client.line_starting("CLIENT-DONE ", CLIENT_TIMEOUT).expect("second query on the same connection");
    assert_eq!(serde_json::from_str::<Value>(&done).unwrap(), json!({ "one": 1 }));
    let (status, stderr) = client.finish(CLIENT_TIMEOUT).expect("client exits");
    assert!(status.success(), "client failed ({status}): {stderr}");
}

// ---------------------------------------------------------------------------
// psql

/// Runs psql (`program` of `wrapper`) against `info` with `sql`.
fn psql(wrapper: Command, info: &ConnInfo, sql: &str) -> Output {
    Psql::via(wrapper, info).command(sql).timeout(CLIENT_TIMEOUT).run()
}

/// psql run directly by the test process (not in any test cgroup).
fn psql_here(cluster: &PgCluster, info: &ConnInfo, sql: &str) -> Output {
    psql(Command::new(cluster.bindir().join("psql")), info, sql)
}

/// psql in cgroup `cg`.
fn psql_in(cg: &TestCgroup, cluster: &PgCluster, info: &ConnInfo, sql: &str) -> Output {
    psql(cg.command(cluster.bindir().join("psql")), info, sql)
}

#[track_caller]
fn assert_query_ok(out: &Output) {
    out.assert_success();
    assert_eq!(out.stdout.trim(), QUERY_OUT, "stderr: {}", out.stderr);
}

// ---------------------------------------------------------------------------
// Set-up and the final checks

/// The shared cluster and a fresh agent, or `None` (with the reason printed)
/// when the machine cannot run these tests.
fn start(options: impl FnOnce(&PgCluster) -> Option<AgentOptions>) -> Option<(&'static PgCluster, MaskerAgent)> {
    if !skip::ebpf() {
        return None;
    }
    let cluster = PgCluster::shared();
    let options = options(cluster)?;
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    Some((cluster, agent))
}

fn targets(cluster: &PgCluster) -> Option<AgentOptions> {
    Some(AgentOptions::targets(&[cluster.addr()]))
}

/// Stops the agent, removes the cgroups and checks that nothing is left: no
/// pin directory (so no program stays attached and no map pinned) and no
/// cgroup directory.
#[track_caller]
fn tear_down(agent: MaskerAgent, cgroups: Vec<TestCgroup>) {
    let pin_dir = agent.pin_dir().to_path_buf();
    drop(agent);
    assert!(!pin_dir.exists(), "{} is left after the agent stopped and `masker uninstall`", pin_dir.display());
    let paths: Vec<PathBuf> = cgroups.iter().map(|c| c.path().to_path_buf()).collect();
    // Children first: reverse creation order.
    for cg in cgroups.into_iter().rev() {
        drop(cg);
    }
    for path in paths {
        assert!(!path.exists(), "test cgroup {} is left", path.display());
    }
}

/// The live session of process `pid` in `status`.
#[track_caller]
fn session_of(status: &Value, pid: u32) -> Value {
    let sessions = status["sessions"].as_array().expect("sessions");
    sessions
        .iter()
        .find(|s| s["pid"] == json!(pid))
        .cloned()
        .unwrap_or_else(|| panic!("no session of pid {pid} in masker status: {status:#}"))
}

fn cgroup_id(path: &Path) -> u64 {
    std::fs::metadata(path).expect("cgroup directory").ino()
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn tagged_psql_and_tokio_postgres_reach_the_server_through_masker() {
    let Some((cluster, agent)) = start(targets) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "it-tagged");
    assert_query_ok(&psql_here(cluster, &info, QUERY));
    assert_eq!(agent.connections(), 0, "an untagged psql went through masker");

    // psql, unchanged address, same rows as directly.
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1, "the tagged psql did not go through masker\n{}", agent.stderr());

    // tokio-postgres: while its connection is open, the agent lists it.
    let mut client = tokio_client(cg.command(current_exe()), &info);
    let pid = expect_client_result(&mut client);
    let status = agent.status();
    let session = session_of(&status, pid);
    assert_eq!(session["identity"], json!("it-tagged"), "{session:#}");
    assert_eq!(session["destination"], json!(cluster.addr().to_string()), "{session:#}");
    assert_eq!(session["cgroup_id"], json!(cgroup_id(cg.path())), "{session:#}");
    assert_eq!((&session["user"], &session["database"]), (&json!("app"), &json!("shop")), "{session:#}");
    assert!(session["bytes_to_client"].as_u64().unwrap() > 0, "{session:#}");
    assert_eq!(status["counters"]["connections"], json!(2), "{status:#}");
    let tags = status["tags"].as_array().expect("tags");
    assert_eq!(tags.len(), 1, "{status:#}");
    assert_eq!(tags[0]["identity"], json!("it-tagged"));
    assert_eq!(tags[0]["path"], json!(cg.path().to_string_lossy()));
    assert_eq!(tags[0]["cgroup_id"], json!(cgroup_id(cg.path())));
    assert_eq!(status["targets"][0]["addresses"], json!([cluster.addr().to_string()]), "{status:#}");
    assert_eq!(status["pin_dir"], json!(agent.pin_dir().to_string_lossy()));
    assert_eq!(status["programs"].as_array().map(Vec::len), Some(7), "{status:#}");

    // The table view shows the same.
    let table = agent.run_cli(&["status"]);
    table.assert_success();
    assert!(table.stdout.contains("it-tagged") && table.stdout.contains(&pid.to_string()), "{}", table.stdout);

    finish_client(client);
    // The agent ends the session once it sees the client gone: wait for it.
    let status = masker_tests::poll(CLIENT_TIMEOUT, "the session to leave `masker status`", || {
        let status = agent.status();
        status["sessions"].as_array().is_some_and(Vec::is_empty).then_some(status)
    });
    assert_eq!(status["counters"]["sessions_refused"], json!(0), "{status:#}");
    tear_down(agent, vec![cg]);
}

#[test]
fn processes_outside_the_tag_connect_directly() {
    let Some((cluster, agent)) = start(targets) else { return };
    let info = cluster.app();
    let tagged = TestCgroup::new().expect("cgroup");
    let plain = TestCgroup::new().expect("cgroup");
    agent.tag(tagged.path(), "it-other");

    assert_query_ok(&psql_in(&plain, cluster, &info, QUERY));
    let mut client = tokio_client(plain.command(current_exe()), &info);
    expect_client_result(&mut client);
    finish_client(client);
    assert_query_ok(&psql_here(cluster, &info, QUERY));
    let status = agent.status();
    assert_eq!(status["counters"]["connections"], json!(0), "an untagged client went through masker: {status:#}");

    // The tagged sibling is intercepted: the agent was working all along.
    assert_query_ok(&psql_in(&tagged, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1);
    tear_down(agent, vec![tagged, plain]);
}

#[test]
fn descendant_cgroups_of_a_tagged_one_are_covered() {
    let Some((cluster, agent)) = start(targets) else { return };
    let info = cluster.app();
    let parent = TestCgroup::new().expect("cgroup");
    agent.tag(parent.path(), "it-parent");
    let job = parent.child("job").expect("cgroup");
    let step = job.child("step").expect("cgroup");

    assert_query_ok(&psql_in(&step, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1, "psql in a grandchild of the tagged cgroup went direct");

    let mut client = tokio_client(job.command(current_exe()), &info);
    let pid = expect_client_result(&mut client);
    let session = session_of(&agent.status(), pid);
    assert_eq!(session["identity"], json!("it-parent"), "{session:#}");
    assert_eq!(session["cgroup_id"], json!(cgroup_id(job.path())), "the connecting task's own cgroup");
    finish_client(client);
    assert_eq!(agent.connections(), 2);
    tear_down(agent, vec![parent, job, step]);
}

/// `GET /metrics` from the agent's endpoint at `addr`.
fn metrics(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics response");
    text
}

/// `masker untag` fails closed: the cgroup's new connections are refused by
/// the agent with 28000 naming the cgroup and pid (psql and tokio-postgres
/// see it, the audit trail records a denial, status and metrics count it),
/// never sent around masker; a connection opened while tagged stays. Once
/// the cgroup is removed the entry goes, and a stopped agent with no tag
/// left removes its programs.
#[test]
fn untag_refuses_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    // A free port for the metrics endpoint (bound, then released).
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let Some((cluster, mut agent)) = start(|c| {
        let mut options = AgentOptions::targets(&[c.addr()]);
        options.extra_config =
            format!("metrics_listen = \"{metrics_addr}\"\n[audit]\nfile = {:?}\n", audit.to_string_lossy());
        Some(options)
    }) else {
        return;
    };
    let info = cluster.app();
    let mut cg = TestCgroup::new().expect("cgroup");
    let id = cgroup_id(cg.path());
    agent.tag(cg.path(), "it-untag");
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1);

    // A connection opened while tagged stays with masker after the untag.
    let mut client = tokio_client(cg.command(current_exe()), &info);
    expect_client_result(&mut client);
    assert_eq!(agent.connections(), 2);
    let out = agent.run_cli(&["untag", &cg.path().to_string_lossy()]);
    out.assert_success();
    assert!(out.stdout.contains("refused"), "masker untag says what it did: {}", out.stdout);
    let status = agent.status();
    let tags = status["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 1, "the entry stays, revoked: {status:#}");
    assert_eq!((&tags[0]["revoked"], &tags[0]["cgroup_id"]), (&json!(true), &json!(id)), "{status:#}");

    // New connections reach masker and are refused: psql with the text,
    // tokio-postgres with the SQLSTATE too. Untagged processes: direct.
    let out = psql_in(&cg, cluster, &info, QUERY);
    assert!(!out.status.success(), "psql after `masker untag` reached the server: {}", out.stdout);
    for part in ["masker: the tag of cgroup", &id.to_string(), "it-untag", "was removed", "refused"] {
        assert!(out.stderr.contains(part), "psql's error lacks {part:?}: {}", out.stderr);
    }
    let mut refused = tokio_client(cg.command(current_exe()), &info);
    let pid = refused.id();
    let line = refused.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    assert!(line.starts_with("ERROR [28000] "), "tokio-postgres after `masker untag`: {line}");
    assert!(line.contains(&format!("pid {pid}")) && line.contains(&format!("cgroup {id}")), "{line}");
    let _ = refused.finish(CLIENT_TIMEOUT);
    assert_query_ok(&psql_here(cluster, &info, QUERY));

    let status = agent.status();
    assert!(status["counters"]["connections"].as_u64().unwrap() >= 4, "refused connections reached masker: {status:#}");
    assert!(status["counters"]["sessions_refused"].as_u64().unwrap() >= 2, "{status:#}");
    let tag = &status["tags"][0];
    assert!(tag["revoked_refusals"].as_u64().unwrap() >= 2, "{status:#}");
    assert!(status["identities"]["it-untag"]["denials"].as_u64().unwrap() >= 2, "{status:#}");
    let table = agent.run_cli(&["status"]);
    assert!(table.stdout.contains("REVOKED"), "masker status shows the revoked tag:\n{}", table.stdout);
    let text = metrics(metrics_addr);
    let series = format!("masker_revoked_refused_total{{cgroup_id=\"{id}\",identity=\"it-untag\"}} ");
    let count = text.lines().find_map(|l| l.strip_prefix(series.as_str())).unwrap_or_else(|| panic!("{text}"));
    assert!(count.parse::<u64>().unwrap() >= 2, "{text}");
    let events: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("audit trail")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON"))
        .collect();
    let denial = events.iter().find(|e| e["event"] == json!("denial") && e["rule"] == json!("revoked"));
    let denial = denial.unwrap_or_else(|| panic!("no denial for the revoked tag in {events:#?}"));
    assert_eq!((&denial["class"], &denial["sqlstate"]), (&json!("connect"), &json!("28000")), "{denial:#}");
    assert_eq!(denial["identity"], json!("it-untag"), "{denial:#}");

    // The connection opened while tagged still works.
    finish_client(client);

    // The cgroup goes: so does its entry (the agent's periodic scan).
    let path = cg.path().to_path_buf();
    cg.remove().expect("remove the cgroup");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.status()["tags"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "revoked entry of {} outlived it", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = metrics(metrics_addr);
    assert!(!text.contains(&series), "the removed tag's series is gone: {text}");

    // With no tag left, a stopped agent removes its programs and pins itself.
    let status = agent.stop().expect("agent exit status");
    assert!(status.success(), "agent exit {status}: {}", agent.stderr());
    assert!(!agent.pin_dir().exists(), "pins left by an agent stopped with no tags: {}", agent.pin_dir().display());
    tear_down(agent, vec![cg]);
}

/// Tagging a revoked cgroup again serves it again (under the new identity),
/// and `masker untag --forget` deletes the entry of a cgroup with no process
/// left while only revoking one that still has processes.
#[test]
fn a_retagged_cgroup_is_served_again() {
    let Some((cluster, mut agent)) = start(targets) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "it-first");
    agent.untag(cg.path());
    let out = psql_in(&cg, cluster, &info, QUERY);
    assert!(!out.status.success() && out.stderr.contains("was removed"), "revoked: {}", out.stderr);
    let before = agent.connections();

    agent.tag(cg.path(), "it-again");
    let status = agent.status();
    assert_eq!(status["tags"][0]["revoked"], json!(false), "{status:#}");
    assert_eq!(status["tags"][0]["identity"], json!("it-again"), "{status:#}");
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    let mut client = tokio_client(cg.command(current_exe()), &info);
    let pid = expect_client_result(&mut client);
    assert_eq!(session_of(&agent.status(), pid)["identity"], json!("it-again"));
    assert_eq!(agent.connections(), before + 2, "the re-tagged cgroup's connections went through masker");

    // --forget while a process is in the cgroup: revoked, not deleted.
    let out = agent.run_cli(&["untag", "--forget", &cg.path().to_string_lossy()]);
    out.assert_success();
    assert!(out.stderr.contains("still has processes"), "{}", out.stderr);
    assert_eq!(agent.status()["tags"][0]["revoked"], json!(true));
    finish_client(client);
    // ... and without one: deleted at once; the cgroup connects directly.
    let out = agent.run_cli(&["untag", "--forget", &cg.path().to_string_lossy()]);
    out.assert_success();
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    assert!(agent.status()["tags"].as_array().unwrap().is_empty());
    let before = agent.connections();
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    assert_eq!(agent.connections(), before, "a forgotten cgroup goes direct");

    let status = agent.stop().expect("agent exit status");
    assert!(status.success(), "agent exit {status}: {}", agent.stderr());
    tear_down(agent, vec![cg]);
}

#[test]
fn stopped_agent_fails_closed_until_uninstalled() {
    let Some((cluster, mut agent)) = start(targets) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "it-closed");
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1);

    let status = agent.stop().expect("agent exit status");
    assert!(status.success(), "agent exit {status}: {}", agent.stderr());
    assert!(agent.pin_dir().exists(), "a stopped agent with tagged cgroups must leave its programs attached");

    // Tagged: refused, never sent around masker.
    let out = psql_in(&cg, cluster, &info, QUERY);
    assert!(!out.status.success(), "tagged psql reached the server with the agent stopped: {}", out.stdout);
    assert!(out.stderr.contains("Connection refused"), "psql: {}", out.stderr);
    let mut client = tokio_client(cg.command(current_exe()), &info);
    let result = client.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    assert!(result.starts_with("ERROR ") && result.to_lowercase().contains("refused"), "tokio-postgres: {result}");
    let _ = client.finish(CLIENT_TIMEOUT);
    // Untagged: unaffected.
    assert_query_ok(&psql_here(cluster, &info, QUERY));

    // `masker uninstall` detaches for good: the tagged cgroup connects directly.
    agent.uninstall().assert_success();
    assert!(!agent.pin_dir().exists(), "`masker uninstall` left {}", agent.pin_dir().display());
    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    tear_down(agent, vec![cg]);
}

#[test]
fn ipv6_target_is_redirected() {
    let Some((cluster, agent)) = start(|cluster| {
        let v6 = skip::ipv6(cluster)?;
        Some(AgentOptions { targets: vec![v6.to_string()], ipv6: true, policy: None, ..AgentOptions::default() })
    }) else {
        return;
    };
    let v6 = cluster.addr_v6().expect("IPv6 address");
    let info = ConnInfo { host: v6.ip().to_string(), ..cluster.app() };
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "it-v6");

    assert_query_ok(&psql_in(&cg, cluster, &info, QUERY));
    assert_eq!(agent.connections(), 1, "psql to [::1] did not go through masker\n{}", agent.stderr());

    let mut client = tokio_client(cg.command(current_exe()), &info);
    let pid = expect_client_result(&mut client);
    let session = session_of(&agent.status(), pid);
    assert_eq!(session["destination"], json!(v6.to_string()), "{session:#}");
    assert_eq!(session["identity"], json!("it-v6"));
    let peer: SocketAddr = session["client"].as_str().unwrap().parse().expect("client address");
    assert!(peer.is_ipv6(), "accepted on the IPv6 listener: {session:#}");
    finish_client(client);

    // 127.0.0.1 on the same port is not a target of this agent: direct.
    assert_query_ok(&psql_in(&cg, cluster, &cluster.app(), QUERY));
    assert_eq!(agent.connections(), 2);
    tear_down(agent, vec![cg]);
}

#[test]
fn masker_run_tags_a_transient_cgroup_and_propagates_exit_codes() {
    let Some((cluster, agent)) = start(targets) else { return };
    let info = cluster.app();
    let run = |args: &[&str]| -> Command {
        let mut cmd = agent.cli();
        cmd.args(["run", "--identity", "it-run", "--"]).args(args);
        cmd
    };

    let out = process::run(run(&["sh", "-c", "exit 7"]), None, CLIENT_TIMEOUT).unwrap();
    assert_eq!(out.code(), Some(7), "masker run -- sh -c 'exit 7': {}", out.stderr);
    let out = process::run(run(&["true"]), None, CLIENT_TIMEOUT).unwrap();
    assert_eq!(out.code(), Some(0), "masker run -- true: {}", out.stderr);

    // The command runs in a transient cgroup that is gone afterwards.
    let out = process::run(run(&["cat", "/proc/self/cgroup"]), None, CLIENT_TIMEOUT).unwrap();
    out.assert_success();
    let rel = out.stdout.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 line").to_owned();
    assert!(rel.starts_with("/masker/run-"), "masker run used cgroup {rel}");
    let transient = masker_tests::agent::cgroup_v2_root().unwrap().join(rel.trim_start_matches('/'));
    assert!(!transient.exists(), "masker run left its cgroup {}", transient.display());

    // psql inside `masker run` goes through masker, unchanged address.
    let mut cmd = run(&[]);
    cmd.arg(cluster.bindir().join("psql"));
    assert_query_ok(&psql(cmd, &info, QUERY));
    assert_eq!(agent.connections(), 1, "psql under masker run did not go through masker\n{}", agent.stderr());

    // ... with the identity given to `masker run`.
    let mut cmd = run(&[]);
    cmd.arg(current_exe());
    let mut client = tokio_client(cmd, &info);
    let pid = expect_client_result(&mut client);
    let session = session_of(&agent.status(), pid);
    assert_eq!(session["identity"], json!("it-run"), "{session:#}");
    finish_client(client);
    assert_eq!(agent.connections(), 2);
    let status = agent.status();
    assert!(status["tags"].as_array().unwrap().is_empty(), "masker run left a tag: {status:#}");

    // Without an agent: a clear error, and the command does not run.
    let mut cmd = Command::new(masker_tests::MaskerProxy::binary());
    let marker = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&marker).unwrap();
    cmd.env("MASKER_ADMIN_SOCKET", "/nonexistent/masker-admin.sock")
        .args(["run", "--identity", "it-run", "--", "touch"])
        .arg(OsString::from(marker.as_os_str()));
    let out = process::run(cmd, None, CLIENT_TIMEOUT).unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(out.stderr.contains("not running"), "masker run without an agent: {}", out.stderr);
    assert!(!marker.exists(), "the command ran untagged although the agent was not reachable");
    tear_down(agent, Vec::new());
}

/// A reload (`masker policy reload` or SIGHUP) that fails keeps the policy in
/// force; one that succeeds applies to new sessions. The two policies differ
/// in what the identity may run (no catalog needed to tell them apart).
#[test]
fn policy_reload_keeps_the_old_policy_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    let allow = "version = 1\n[defaults]\naction = \"allow\"\n";
    let deny = "version = 1\n[defaults]\naction = \"allow\"\n[[identity]]\nname = \"it-reload\"\ndeny_classes = [\"select\"]\n";
    std::fs::write(&policy, allow).expect("policy");
    let Some((cluster, agent)) = start(|c| {
        let mut options = AgentOptions::targets(&[c.addr()]);
        options.policy = Some(policy.clone());
        Some(options)
    }) else {
        return;
    };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "it-reload");
    let sql = "SELECT 'reload.probe'::text";
    let raw = "reload.probe".to_string();
    let read = |agent: &MaskerAgent| {
        let before = agent.connections();
        let out = psql_in(&cg, cluster, &info, sql);
        assert_eq!(agent.connections(), before + 1, "the probe did not go through masker");
        if out.status.success() { out.stdout.trim().to_string() } else { out.stderr }
    };
    assert_eq!(read(&agent), raw, "allow policy");

    // A broken file: the reload fails with the file and line, nothing changes.
    std::fs::write(&policy, "version = 1\n[defaults]\naction = \"redakt\"\n").expect("policy");
    let out = agent.run_cli(&["policy", "reload"]);
    assert!(!out.status.success(), "reload of a broken policy succeeded: {}", out.stdout);
    assert!(out.stderr.contains("policy.toml:3:"), "reload error: {}", out.stderr);
    assert_eq!(read(&agent), raw, "the failed reload changed the policy");

    // A good file, through the CLI, then back through SIGHUP.
    std::fs::write(&policy, deny).expect("policy");
    let out = agent.run_cli(&["policy", "reload"]);
    assert!(out.status.success(), "reload: {}", out.stderr);
    let refused = read(&agent);
    assert!(refused.contains("42501") || refused.contains("refused"), "the reloaded policy is not in force: {refused}");
    std::fs::write(&policy, allow).expect("policy");
    let pid = agent.pid().expect("agent pid");
    let hup = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill -HUP");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read(&agent) != raw {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the policy: {}", agent.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.untag(cg.path());
    tear_down(agent, vec![cg]);
}
