//! Workloads in their own network namespace (container jobs), end to end,
//! with hand-made containers ([`NetnsContainer`]: `ip netns add` plus a
//! cgroup v2 child, about 0.3 s each): the real `masker agent` opens its
//! listener inside the container's namespace, the real eBPF programs send the
//! container's connections there, and the agent connects upstream from the
//! container's namespace, so the container reaches exactly what it would
//! have reached directly.
//!
//! Inside each container, `127.0.0.1:<port of the shared cluster>` leads to
//! the shared PostgreSQL through a forwarder (as a container reaches the
//! host's database through its bridge); clients use the same connection
//! string as on the host. From the host namespace that address is the
//! cluster itself, so a connection made from the wrong namespace would still
//! work: the tests tell the two apart through the forwarder's namespace only
//! where it matters (a port that only the container has).
//!
//! Real Docker containers are in `tests/docker.rs`.
//!
//! Needs root, BPF and `ip`; skipped with a message otherwise.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup, test_client};
use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::netns::NetnsContainer;
use masker_tests::process::Output;
use masker_tests::psql::Psql;
use masker_tests::{ConnInfo, PgCluster};
use serde_json::{Value, json};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to notice a container start or stop.
const NOTICE: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
version = 1

[[rule]]
name = "email"
columns = ["*.*.email"]
action = "email"

[[identity]]
name = "ci-locked"
egress = "targets-only"

[[identity]]
name = "*"
"#;

/// The raw and the masked email of customer 1 (the policy keeps the domain).
const QUERY: &str = "SELECT email FROM customers WHERE id = 1";

// ---------------------------------------------------------------------------
// A tokio-postgres client process (re-executed test binary, so it can run in
// a cgroup and a namespace).

const CLIENT_ENV: &str = "MASKER_CONTAINERS_TOKIO_CLIENT";

/// Not a test of its own: the body of the tokio-postgres client process.
/// Prints `CLIENT-RESULT <email>` or `CLIENT-ERROR <message>`, then waits for
/// a line on stdin before it disconnects.
#[test]
#[ignore = "the body of a client process the other tests start, not a test"]
fn tokio_postgres_client_process() {
    let spec = std::env::var(CLIENT_ENV).unwrap_or_else(|_| {
        panic!("not a test: the body of a client process, run with {CLIENT_ENV} set by the other tests")
    });
    let info = ConnInfo::from_spec(&spec).expect("login spec");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = match info.connect().await {
            Ok(c) => c,
            Err(e) => {
                // With its causes (the errno of a refused connect).
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                println!("CLIENT-ERROR {message}");
                return;
            }
        };
        let row = client.query_one("SELECT email FROM customers WHERE id = $1", &[&1i64]).await.expect("query");
        let email: String = row.get(0);
        println!("CLIENT-RESULT {email}");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
}

fn current_exe() -> PathBuf {
    std::env::current_exe().expect("the test binary")
}

// ---------------------------------------------------------------------------
// Set-up

struct Setup {
    cluster: &'static PgCluster,
    agent: MaskerAgent,
    /// The tagged parent cgroup containers are started under (as with
    /// `docker run --cgroup-parent`).
    parent: TestCgroup,
    _dir: tempfile::TempDir,
    raw_email: String,
}

fn setup(identity: &str, extra: impl FnOnce(&mut AgentOptions)) -> Option<Setup> {
    if !masker_tests::skip::ebpf() {
        return None;
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        panic!("no `ip` command (iproute2, which scripts/setup.sh installs)");
    }
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let mut options = AgentOptions {
        targets: vec![cluster.addr().to_string()],
        policy: Some(policy),
        catalog: Some((APP_USER.into(), APP_PASSWORD.into())),
        audit_file: Some(dir.path().join("audit.jsonl")),
        env: vec![("MASKER_LOG".into(), "info,masker::kernel=debug".into())],
        ..AgentOptions::default()
    };
    extra(&mut options);
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    let parent = TestCgroup::new().expect("parent cgroup");
    agent.tag(parent.path(), identity);
    let raw = Psql::new(&cluster.app()).command(QUERY).timeout(CLIENT_TIMEOUT).run();
    raw.assert_success();
    let raw_email = raw.stdout.trim().to_string();
    assert!(raw_email.contains('@') && !raw_email.starts_with("****"), "raw email: {raw_email}");
    Some(Setup { cluster, agent, parent, _dir: dir, raw_email })
}

impl Setup {
    /// A container under the tagged parent whose `127.0.0.1:<cluster port>`
    /// leads to the cluster.
    fn container(&self) -> NetnsContainer {
        let mut c = NetnsContainer::start(&self.parent).expect("container");
        c.forward(self.cluster.port(), self.cluster.addr()).expect("forward to the cluster");
        c
    }

    fn masked_email(&self) -> String {
        let (_, domain) = self.raw_email.split_once('@').expect("email");
        format!("****@{domain}")
    }

    fn psql_in(&self, c: &NetnsContainer, sql: &str) -> Output {
        Psql::via(c.command(self.cluster.bindir().join("psql")), &self.cluster.app())
            .command(sql)
            .timeout(CLIENT_TIMEOUT)
            .run()
    }

    fn tokio_in(&self, c: &NetnsContainer) -> LineChild {
        test_client(c.command(current_exe()), "tokio_postgres_client_process", CLIENT_ENV, &self.cluster.app())
            .expect("spawn the tokio-postgres client")
    }

    /// Polls `masker status` until `ok` holds for it.
    #[track_caller]
    fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + NOTICE;
        loop {
            let status = self.agent.status();
            if ok(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: not within {NOTICE:?}: {status:#}\n{}", self.agent.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The served namespace with inode `ino`, once the agent has it.
    #[track_caller]
    fn wait_served(&self, c: &NetnsContainer) -> Value {
        let name = format!("net:[{}]", c.netns_inode().expect("netns inode"));
        let status = self.wait_status("the container's namespace served", |s| served(s, &name).is_some());
        served(&status, &name).expect("served")
    }
}

fn served(status: &Value, netns: &str) -> Option<Value> {
    status["namespaces"].as_array()?.iter().find(|n| n["netns"] == json!(netns)).cloned()
}

fn agent_fds(agent: &MaskerAgent) -> usize {
    let pid = agent.pid().expect("agent running");
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Entries in the kernel's listeners map (the agent's own namespace
/// included), as the agent reports them.
fn listener_entries(agent: &MaskerAgent) -> u64 {
    agent.status()["listener_entries"].as_u64().expect("listener_entries")
}

#[track_caller]
fn assert_stdout(out: &Output, want: &str) {
    out.assert_success();
    assert_eq!(out.stdout.trim(), want, "stderr: {}", out.stderr);
}

// ---------------------------------------------------------------------------
// The tests

/// psql and tokio-postgres in a container under a tagged cgroup get masked
/// rows through the listener the agent opened in the container's namespace,
/// with the connection string they would use directly; status and audit
/// name the namespace; the kernel's decision reaches the agent's log.
#[test]
fn container_clients_get_masked_rows_through_their_namespace_listener() {
    let Some(s) = setup("ci-container", |_| {}) else { return };
    let c = s.container();
    // The container started after the tag: the agent finds it.
    let ns = s.wait_served(&c);
    assert_eq!(
        ns["cgroup_id"],
        json!(
            std::fs::metadata(s.parent.path())
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        )
    );
    assert_eq!(ns["listen"].as_array().map(|l| !l.is_empty()), Some(true), "{ns:#}");

    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
    let mut client = s.tokio_in(&c);
    let result = client.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    assert_eq!(result, format!("RESULT {}", s.masked_email()), "tokio-postgres in the container");
    let status = s.agent.status();
    let session = status["sessions"].as_array().unwrap().iter().find(|x| x["pid"] == json!(client.id())).cloned();
    let session = session.unwrap_or_else(|| panic!("no session of the tokio client: {status:#}"));
    assert_eq!(session["netns"], ns["netns"], "{session:#}");
    assert_eq!(session["destination"], json!(s.cluster.addr().to_string()));
    assert_eq!(session["identity"], json!("ci-container"));
    client.send_line("done").unwrap();
    let _ = client.finish(CLIENT_TIMEOUT);

    // The same query from the host is not masked (not tagged).
    assert_stdout(&Psql::new(&s.cluster.app()).command(QUERY).timeout(CLIENT_TIMEOUT).run(), &s.raw_email);
    // Audit: the session events carry the namespace.
    let audit = std::fs::read_to_string(s._dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(
        audit.lines().any(|l| l.contains("session_start") && l.contains(ns["netns"].as_str().unwrap())),
        "no session_start with the namespace in the audit trail:\n{audit}"
    );
    // The kernel's decision, through aya-log, in the agent's log.
    let deadline = Instant::now() + NOTICE;
    while !s.agent.stderr().contains("redirected to netns") {
        assert!(Instant::now() < deadline, "no kernel-side record in the agent log:\n{}", s.agent.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A container outside the tagged cgroup connects directly; one under a
/// cgroup whose tag is removed loses its listener and is refused in the
/// kernel (`EPERM`, counted), never let through; tagged again, it is served
/// again.
#[test]
fn untagged_containers_go_direct_and_untagging_refuses_them() {
    let Some(s) = setup("ci-untag", |_| {}) else { return };
    let other_parent = TestCgroup::new().expect("cgroup");
    let mut plain = NetnsContainer::start(&other_parent).expect("container");
    plain.forward(s.cluster.port(), s.cluster.addr()).unwrap();
    assert_stdout(&s.psql_in(&plain, QUERY), &s.raw_email);
    assert_eq!(s.agent.connections(), 0, "an untagged container went through masker");
    assert!(served(&s.agent.status(), &format!("net:[{}]", plain.netns_inode().unwrap())).is_none());

    let c = s.container();
    let ns = s.wait_served(&c);
    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
    s.agent.untag(s.parent.path());
    let status = s.agent.status();
    assert!(served(&status, ns["netns"].as_str().unwrap()).is_none(), "listener left after untag: {status:#}");
    assert_eq!(status["tags"][0]["revoked"], json!(true), "{status:#}");
    let out = s.psql_in(&c, QUERY);
    assert!(!out.status.success(), "the untagged container reached the database: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "psql: {}", out.stderr);
    let mut client = s.tokio_in(&c);
    let result = client.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    assert!(result.starts_with("ERROR ") && result.contains("Operation not permitted"), "tokio-postgres: {result}");
    let _ = client.finish(CLIENT_TIMEOUT);
    let status = s.agent.status();
    assert!(status["tags"][0]["refused"]["no_listener"].as_u64().unwrap_or(0) >= 2, "counted: {status:#}");

    // Tagged again: the listener comes back, masked rows again.
    s.agent.tag(s.parent.path(), "ci-untag");
    s.wait_served(&c);
    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
    drop(c);
    drop(plain);
}

/// Processes started later in a running container (`docker exec`) use the
/// same listener; a stopped container's listener, map entry and file
/// descriptors go away, also after many short jobs in a row.
#[test]
fn short_jobs_leave_no_listener_fd_or_map_entry() {
    let Some(s) = setup("ci-jobs", |_| {}) else { return };
    // Warm up (first catalog connection, lazily opened files), then count.
    {
        let c = s.container();
        s.wait_served(&c);
        assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
    }
    s.wait_status("the warm-up container's listener closed", |st| {
        st["namespaces"].as_array().is_some_and(Vec::is_empty)
    });
    let fds_before = agent_fds(&s.agent);
    let entries_before = listener_entries(&s.agent);
    const JOBS: usize = 20;
    for i in 0..JOBS {
        let mut c = s.container();
        s.wait_served(&c);
        // Two "exec"s in the same container.
        assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
        assert_stdout(&s.psql_in(&c, "SELECT 1"), "1");
        c.kill().expect("stop the container");
        let ino = c.netns_inode().unwrap();
        s.wait_status(&format!("job {i}: listener closed"), |st| served(st, &format!("net:[{ino}]")).is_none());
    }
    let status = s.agent.status();
    assert_eq!(status["counters"]["connections"].as_u64(), Some(1 + 2 * JOBS as u64), "{status:#}");
    assert!(status["namespaces"].as_array().unwrap().is_empty(), "{status:#}");
    // Descriptors may lag a moment behind (sessions end asynchronously).
    let deadline = Instant::now() + NOTICE;
    loop {
        let fds = agent_fds(&s.agent);
        if fds <= fds_before {
            break;
        }
        assert!(Instant::now() < deadline, "agent fds {fds_before} before {JOBS} jobs, {fds} after");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(entries_before, 1, "only the agent's own namespace");
    assert_eq!(listener_entries(&s.agent), entries_before, "listener map entries left");
}

/// An agent restarted while a container runs finds it again.
#[test]
fn a_restarted_agent_rediscovers_running_containers() {
    let Some(mut s) = setup("ci-restart", |_| {}) else { return };
    let c = s.container();
    s.wait_served(&c);
    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
    s.agent.restart().expect("restart the agent");
    let ns = s.wait_served(&c);
    assert!(ns["since_unix"].as_u64().is_some());
    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
}

/// A service only the container can reach (a port that exists only in its
/// namespace, as a service container on the job's network) works as a
/// network target: the agent connects from the container's namespace.
#[test]
fn a_target_only_the_container_can_reach() {
    // A port free on the host that only the container will have.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(s) = setup("ci-service", |o| {
        o.targets.push(format!("127.0.0.0/8:{port}"));
    }) else {
        return;
    };
    let mut c = s.container();
    c.forward(port, s.cluster.addr()).expect("the service inside the container");
    s.wait_served(&c);
    let info = ConnInfo { port, ..s.cluster.app() };
    let out = Psql::via(c.command(s.cluster.bindir().join("psql")), &info).command(QUERY).timeout(CLIENT_TIMEOUT).run();
    assert_stdout(&out, &s.masked_email());
    // From the host, the port leads nowhere: the agent did connect from the
    // container's namespace.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let status = s.agent.status();
    assert!(status["targets"].as_array().unwrap().iter().any(|t| t["target"] == json!(format!("127.0.0.0/8:{port}"))));
}

/// The egress lock: a locked identity reaches the database through its
/// target address (masked) and not through another address of the same
/// server; an identity without the lock is unaffected.
#[test]
fn egress_lock_refuses_other_paths_to_the_database() {
    let Some(s) = setup("ci-locked", |_| {}) else { return };
    // The same server under a second loopback address, as a database host
    // with two addresses: 127.0.0.2 forwards to the cluster.
    let second = masker_tests::netns::Forward::start(
        std::net::SocketAddr::from(([127, 0, 0, 2], s.cluster.port())),
        s.cluster.addr(),
    )
    .expect("second address");
    let locked = s.parent.child("job").expect("cgroup");
    let psql_at = |cg: &TestCgroup, host: &str| {
        let info = ConnInfo { host: host.into(), ..s.cluster.app() };
        Psql::via(cg.command(s.cluster.bindir().join("psql")), &info).command(QUERY).timeout(CLIENT_TIMEOUT).run()
    };
    assert_stdout(&psql_at(&locked, "127.0.0.1"), &s.masked_email());
    let out = psql_at(&locked, "127.0.0.2");
    assert!(!out.status.success(), "the locked job reached the database around masker: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "psql: {}", out.stderr);
    let status = s.agent.status();
    let tag = &status["tags"][0];
    assert_eq!(tag["egress_lock"], json!(true), "{status:#}");
    assert!(tag["refused"]["egress"].as_u64().unwrap_or(0) >= 1, "{status:#}");

    // Another identity, no lock: the second address is simply not a target.
    let open = TestCgroup::new().expect("cgroup");
    s.agent.tag(open.path(), "ci-open");
    assert_stdout(&psql_at(&open, "127.0.0.2"), &s.raw_email);

    // Untagged: the target is refused by the agent, and the lock stays (a
    // removed tag never opens more than the tag allowed).
    s.agent.untag(s.parent.path());
    let out = psql_at(&locked, "127.0.0.1");
    assert!(!out.status.success() && out.stderr.contains("was removed"), "revoked, to the target: {}", out.stderr);
    let out = psql_at(&locked, "127.0.0.2");
    assert!(!out.status.success(), "the revoked job reached the database around masker: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "psql: {}", out.stderr);
    drop(second);
}

/// A container whose namespace has no listener (here: started while the
/// agent is down; its pinned programs stay) is refused in the kernel, never
/// sent around masker, and counted; the restarted agent serves it.
#[test]
fn no_listener_in_the_namespace_means_refused() {
    let Some(mut s) = setup("ci-nolistener", |_| {}) else { return };
    let status = s.agent.stop().expect("agent exit status");
    assert!(status.success(), "agent exit: {}", s.agent.stderr());
    let c = s.container();
    let out = s.psql_in(&c, QUERY);
    assert!(!out.status.success(), "reached the database with no listener in the namespace: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "psql: {}", out.stderr);

    s.agent.restart().expect("restart the agent");
    let status = s.agent.status();
    assert!(status["tags"][0]["refused"]["no_listener"].as_u64().unwrap_or(0) >= 1, "{status:#}");
    s.wait_served(&c);
    assert_stdout(&s.psql_in(&c, QUERY), &s.masked_email());
}
