//! Real Docker containers through masker: a private `dockerd` started by the
//! test set-up ([`Docker`]: no default bridge, no iptables, no forwarding;
//! checked unchanged), an imported skeleton image running the host's `/usr`
//! read-only, containers under `--cgroup-parent` cgroups the tests own.
//!
//! Inside a `--network none` container, `127.0.0.1:<cluster port>` leads to
//! the shared PostgreSQL (a forwarder opened in the container's namespace),
//! so clients use the same connection string as on the host.
//!
//! `MASKER_DOCKER_JOBS` sets the number of short jobs of the lifecycle test
//! (200 by default). Needs root, BPF and `dockerd`; skipped otherwise.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, test_client};
use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::docker::{Docker, DockerParent, host_network_state};
use masker_tests::netns::NsForward;
use masker_tests::process::{self, Output};
use masker_tests::psql::Psql;
use masker_tests::{ConnInfo, PgCluster};
use serde_json::{Value, json};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const NOTICE: Duration = Duration::from_secs(15);
const QUERY: &str = "SELECT email FROM customers WHERE id = 1";
const POLICY: &str = "version = 1\n[[rule]]\nname = \"email\"\ncolumns = [\"*.*.email\"]\naction = \"email\"\n";
/// The user-defined network of the service-container test.
const SERVICE_NET: &str = "198.18.213.0/24";
const SERVICE_IP: &str = "198.18.213.10";

const CLIENT_ENV: &str = "MASKER_DOCKER_TOKIO_CLIENT";

/// Not a test of its own: the tokio-postgres client run inside a container
/// (this test binary, mounted read-only). Prints `CLIENT-RESULT <email>`.
#[test]
#[ignore = "the body of a client process the other tests start, not a test"]
fn tokio_postgres_client_process() {
    let spec = std::env::var(CLIENT_ENV).unwrap_or_else(|_| {
        panic!("not a test: the body of a client process, run with {CLIENT_ENV} set by the other tests")
    });
    let info = ConnInfo::from_spec(&spec).expect("login spec");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        match info.connect().await {
            Ok(client) => {
                let row = client.query_one("SELECT email FROM customers WHERE id = $1", &[&1i64]).await.expect("query");
                println!("CLIENT-RESULT {}", row.get::<_, String>(0));
            }
            Err(e) => println!("CLIENT-ERROR {e}"),
        }
    });
}

struct Setup {
    docker: &'static Docker,
    cluster: &'static PgCluster,
    agent: MaskerAgent,
    _dir: tempfile::TempDir,
    raw_email: String,
}

fn setup(extra: impl FnOnce(&mut AgentOptions)) -> Option<Setup> {
    if !masker_tests::skip::docker() {
        return None;
    }
    let docker = Docker::shared();
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut options = AgentOptions {
        targets: vec![cluster.addr().to_string()],
        policy: Some(policy),
        catalog: Some((APP_USER.into(), APP_PASSWORD.into())),
        ..AgentOptions::default()
    };
    extra(&mut options);
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    let raw = Psql::new(&cluster.app()).command(QUERY).timeout(CLIENT_TIMEOUT).run();
    raw.assert_success();
    Some(Setup { docker, cluster, agent, _dir: dir, raw_email: raw.stdout.trim().to_string() })
}

/// A running container and the forwarder that makes the cluster reachable
/// in it; removed on drop.
struct Running {
    docker: &'static Docker,
    id: String,
    _forward: Option<NsForward>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.docker.remove(&self.id);
    }
}

impl Setup {
    fn masked_email(&self) -> String {
        format!("****@{}", self.raw_email.split_once('@').expect("email").1)
    }

    /// A `--network none` container (optionally under `parent`, with
    /// `labels`) in which `127.0.0.1:<cluster port>` leads to the cluster.
    fn container(&self, parent: Option<&DockerParent>, labels: &[(&str, &str)]) -> Running {
        let exe_dir = current_exe().parent().expect("deps dir").to_path_buf();
        let id = self.docker.start_container(parent, "none", labels, &[&exe_dir]).expect("docker run");
        let ns = self.docker.netns_path(&id).expect("container netns");
        let forward =
            NsForward::start(&ns, SocketAddr::from(([127, 0, 0, 1], self.cluster.port())), self.cluster.addr())
                .expect("forward into the container");
        Running { docker: self.docker, id, _forward: Some(forward) }
    }

    fn psql(&self, c: &Running, info: &ConnInfo, sql: &str) -> Output {
        // Psql sets these in the docker CLI's environment; `-e` passes them in.
        let wrapper = self.docker.exec_env(
            &c.id,
            &["PGPASSWORD", "PGCONNECT_TIMEOUT", "PGTZ"],
            self.cluster.bindir().join("psql"),
        );
        Psql::via(wrapper, info).command(sql).timeout(CLIENT_TIMEOUT).run()
    }

    fn tokio(&self, c: &Running) -> LineChild {
        let wrapper = self.docker.exec_env(&c.id, &[CLIENT_ENV], current_exe());
        test_client(wrapper, "tokio_postgres_client_process", CLIENT_ENV, &self.cluster.app()).expect("tokio client")
    }

    /// Polls `masker status` until `ok` holds.
    #[track_caller]
    fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + NOTICE;
        loop {
            let status = self.agent.status();
            if ok(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: not within {NOTICE:?}: {status:#}\n{}", self.agent.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent serves the namespace of container `c`.
    #[track_caller]
    fn wait_served(&self, c: &Running) -> Value {
        let ino = netns_inode(&self.docker.netns_path(&c.id).expect("netns"));
        let name = format!("net:[{ino}]");
        let status = self.wait_status("container namespace served", |s| served(s, &name).is_some());
        served(&status, &name).expect("served")
    }
}

fn current_exe() -> PathBuf {
    std::env::current_exe().expect("test binary")
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

fn served(status: &Value, netns: &str) -> Option<Value> {
    status["namespaces"].as_array()?.iter().find(|n| n["netns"] == json!(netns)).cloned()
}

#[track_caller]
fn assert_stdout(out: &Output, want: &str) {
    out.assert_success();
    assert_eq!(out.stdout.trim(), want, "stderr: {}", out.stderr);
}

fn agent_fds(agent: &MaskerAgent) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", agent.pid().expect("agent"))).map(|d| d.count()).unwrap_or(0)
}

/// psql and tokio-postgres in a container under a tagged `--cgroup-parent`
/// get masked rows with the host's connection string; a container elsewhere
/// goes direct until `masker tag --container NAME`; after `masker untag
/// --container` its new connections are refused (its listener is closed:
/// `EPERM` in the kernel), never direct. The host's forwarding and firewall
/// are as before.
#[test]
fn docker_containers_through_masker() {
    let Some(s) = setup(|_| {}) else { return };
    let parent = DockerParent::new().expect("parent cgroup");
    s.agent.tag(parent.path(), "ci-docker");
    let c = s.container(Some(&parent), &[]);
    let ns = s.wait_served(&c);
    assert_eq!(ns["container"], json!(c.id), "{ns:#}");
    assert_stdout(&s.psql(&c, &s.cluster.app(), QUERY), &s.masked_email());
    let mut tokio = s.tokio(&c);
    let result = tokio.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("tokio client");
    assert_eq!(result, format!("RESULT {}", s.masked_email()));
    let _ = tokio.finish(CLIENT_TIMEOUT);
    let status = s.agent.status();
    let table = s.agent.run_cli(&["status"]);
    assert!(table.stdout.contains(&c.id[..12]), "status table names the container:\n{}", table.stdout);
    assert_eq!(status["counters"]["connections"], json!(2), "{status:#}");

    // Another container, not under the tagged parent: direct.
    let other_parent = DockerParent::new().expect("cgroup");
    let plain = s.container(Some(&other_parent), &[]);
    assert_stdout(&s.psql(&plain, &s.cluster.app(), QUERY), &s.raw_email);
    // Tagged by container name: masked, through its own namespace listener.
    let name = s
        .docker
        .run(&["inspect", "--format", "{{.Name}}", &plain.id])
        .unwrap()
        .stdout
        .trim()
        .trim_start_matches('/')
        .to_string();
    let mut tag = s.agent.cli();
    tag.env("DOCKER_HOST", format!("unix://{}", s.docker.socket().display())).args([
        "tag",
        "--container",
        &name,
        "--identity",
        "ci-by-name",
    ]);
    process::run(tag, None, CLIENT_TIMEOUT).unwrap().assert_success();
    s.wait_served(&plain);
    assert_stdout(&s.psql(&plain, &s.cluster.app(), QUERY), &s.masked_email());
    // Untagged (by id prefix, through the cgroup tree): its listener is
    // gone and its connections are refused, never direct.
    let mut untag = s.agent.cli();
    untag.env("DOCKER_HOST", "unix:///nonexistent.sock").args(["untag", "--container", &plain.id[..16]]);
    process::run(untag, None, CLIENT_TIMEOUT).unwrap().assert_success();
    let ino = netns_inode(&s.docker.netns_path(&plain.id).unwrap());
    s.wait_status("listener of the untagged container closed", |st| served(st, &format!("net:[{ino}]")).is_none());
    let out = s.psql(&plain, &s.cluster.app(), QUERY);
    assert!(!out.status.success(), "the untagged container reached the database: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "psql: {}", out.stderr);
    let status = s.agent.status();
    let tag = status["tags"].as_array().unwrap().iter().find(|t| t["identity"] == json!("ci-by-name")).cloned();
    let tag = tag.unwrap_or_else(|| panic!("the revoked tag is listed: {status:#}"));
    assert_eq!(tag["revoked"], json!(true), "{tag:#}");
    assert!(tag["refused"]["no_listener"].as_u64().unwrap_or(0) >= 1, "{tag:#}");

    drop((plain, c));
    assert_eq!(&host_network_state(), s.docker.host_network_before(), "dockerd changed forwarding or iptables");
}

/// A service container on a user-defined Docker network (a database only
/// the job's network reaches) is a network target; the agent connects from
/// the job container's namespace.
#[test]
fn a_service_container_on_the_jobs_network() {
    let Some(s) = setup(|o| o.targets.push(format!("{SERVICE_NET}:5432"))) else { return };
    let net = format!("mskr-net-{}", std::process::id());
    s.docker.run(&["network", "create", "--internal", "--subnet", SERVICE_NET, &net]).unwrap().assert_success();
    struct Net<'a>(&'a Docker, String);
    impl Drop for Net<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["network", "rm", &self.1]);
        }
    }
    let _net = Net(s.docker, net.clone());
    // The service: its network address leads to the cluster.
    let out = s
        .docker
        .run(&[
            "run",
            "-d",
            "--network",
            &net,
            "--ip",
            SERVICE_IP,
            "-v",
            "/usr:/usr:ro",
            masker_tests::docker::IMAGE,
            "sleep",
            "1000000",
        ])
        .unwrap();
    out.assert_success();
    let service = Running { docker: s.docker, id: out.stdout.trim().to_string(), _forward: None };
    let ns = s.docker.netns_path(&service.id).unwrap();
    let _svc = NsForward::start(&ns, format!("{SERVICE_IP}:5432").parse().unwrap(), s.cluster.addr()).unwrap();
    // The job, under a tagged parent, on the same network.
    let parent = DockerParent::new().unwrap();
    s.agent.tag(parent.path(), "ci-service");
    let id = s.docker.start_container(Some(&parent), &net, &[], &[]).unwrap();
    let job = Running { docker: s.docker, id, _forward: None };
    s.wait_served(&job);
    let info = ConnInfo { host: SERVICE_IP.into(), port: 5432, ..s.cluster.app() };
    assert_stdout(&s.psql(&job, &info, QUERY), &s.masked_email());
    let status = s.agent.status();
    let session_targets: Vec<&Value> = status["targets"].as_array().unwrap().iter().collect();
    assert!(session_targets.iter().any(|t| t["target"] == json!(format!("{SERVICE_NET}:5432"))), "{status:#}");
    drop((job, service));
}

/// An agent restarted while a container runs serves it again.
#[test]
fn agent_restart_while_a_container_runs() {
    let Some(mut s) = setup(|_| {}) else { return };
    let parent = DockerParent::new().unwrap();
    s.agent.tag(parent.path(), "ci-restart");
    let c = s.container(Some(&parent), &[]);
    s.wait_served(&c);
    assert_stdout(&s.psql(&c, &s.cluster.app(), QUERY), &s.masked_email());
    s.agent.restart().expect("restart");
    s.wait_served(&c);
    assert_stdout(&s.psql(&c, &s.cluster.app(), QUERY), &s.masked_email());
}

/// `docker restart`: the container comes back in a new network namespace,
/// which the agent serves; the old one's listener is closed.
#[test]
fn a_restarted_container_is_served_in_its_new_namespace() {
    let Some(s) = setup(|_| {}) else { return };
    let parent = DockerParent::new().unwrap();
    s.agent.tag(parent.path(), "ci-docker-restart");
    let mut c = s.container(Some(&parent), &[]);
    let before = s.wait_served(&c);
    assert_stdout(&s.psql(&c, &s.cluster.app(), QUERY), &s.masked_email());
    c._forward = None;
    s.docker.run(&["restart", "-t", "0", &c.id]).unwrap().assert_success();
    let ns = s.docker.netns_path(&c.id).unwrap();
    c._forward =
        Some(NsForward::start(&ns, SocketAddr::from(([127, 0, 0, 1], s.cluster.port())), s.cluster.addr()).unwrap());
    // A new namespace (its inode may be the old one's, reused once that one
    // was freed; its cookie never is): served under a new cookie, the old
    // listener closed.
    let name = format!("net:[{}]", netns_inode(&ns));
    let old_cookie = before["cookie"].clone();
    s.wait_status("the new namespace served, the old one's listener closed", |st| {
        let namespaces = st["namespaces"].as_array().cloned().unwrap_or_default();
        namespaces.iter().any(|n| n["netns"] == json!(name) && n["cookie"] != old_cookie)
            && namespaces.iter().all(|n| n["cookie"] != old_cookie)
    });
    assert_stdout(&s.psql(&c, &s.cluster.app(), QUERY), &s.masked_email());
}

/// The Docker events watcher tags a labelled container before it runs and
/// untags it when it stops; an unlabelled one is left alone.
#[test]
fn labelled_containers_are_tagged_by_the_watcher() {
    if !masker_tests::skip::docker() {
        return;
    }
    let docker_socket = Docker::shared().socket().to_path_buf();
    let Some(s) = setup(|o| {
        o.extra_config = format!("[docker]\nsocket = {:?}\n", docker_socket.display().to_string());
    }) else {
        return;
    };
    let parent = DockerParent::new().unwrap();
    // The watcher follows the events stream before the container exists.
    let deadline = Instant::now() + NOTICE;
    while !s.agent.stderr().contains("following Docker events") {
        assert!(Instant::now() < deadline, "watcher not started:\n{}", s.agent.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let labelled = s.container(Some(&parent), &[("masker.identity", "ci-label")]);
    s.wait_served(&labelled);
    let status = s.agent.status();
    let tag = status["tags"].as_array().unwrap().iter().find(|t| t["identity"] == json!("ci-label")).cloned();
    let tag = tag.unwrap_or_else(|| panic!("no ci-label tag: {status:#}"));
    assert!(tag["path"].as_str().unwrap_or_default().ends_with(&labelled.id), "{tag:#}");
    assert_stdout(&s.psql(&labelled, &s.cluster.app(), QUERY), &s.masked_email());

    let unlabelled = s.container(Some(&parent), &[]);
    assert_stdout(&s.psql(&unlabelled, &s.cluster.app(), QUERY), &s.raw_email);

    // Stopped: the watcher deletes the entry outright (the container's
    // processes and cgroup are gone), not just revoked.
    s.docker.run(&["stop", "-t", "0", &labelled.id]).unwrap().assert_success();
    s.wait_status("the stopped container untagged", |st| {
        st["tags"].as_array().is_some_and(|t| t.iter().all(|t| t["identity"] != json!("ci-label")))
    });
    assert!(s.agent.status()["namespaces"].as_array().unwrap().is_empty());
    drop((labelled, unlabelled));
}

/// Many short container jobs in a row (`MASKER_DOCKER_JOBS`, default 200):
/// each is served, then leaves no listener, file descriptor or map entry.
#[test]
fn short_container_jobs_leave_nothing_behind() {
    let Some(s) = setup(|_| {}) else { return };
    let jobs: usize = std::env::var("MASKER_DOCKER_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let parent = DockerParent::new().unwrap();
    s.agent.tag(parent.path(), "ci-jobs");
    {
        let warm = s.container(Some(&parent), &[]);
        s.wait_served(&warm);
        assert_stdout(&s.psql(&warm, &s.cluster.app(), "SELECT 1"), "1");
    }
    s.wait_status("warm-up listener closed", |st| st["namespaces"].as_array().is_some_and(Vec::is_empty));
    let fds_before = agent_fds(&s.agent);
    let started = Instant::now();
    for i in 0..jobs {
        let c = s.container(Some(&parent), &[]);
        s.wait_served(&c);
        let out = s.psql(&c, &s.cluster.app(), "SELECT 1");
        assert!(out.status.success() && out.stdout.trim() == "1", "job {i}: {} {}", out.stdout, out.stderr);
        drop(c);
        s.wait_status(&format!("job {i}: listener closed"), |st| {
            st["namespaces"].as_array().is_some_and(Vec::is_empty)
        });
    }
    eprintln!("{jobs} container jobs in {:?}", started.elapsed());
    let status = s.agent.status();
    assert_eq!(status["counters"]["connections"].as_u64(), Some(1 + jobs as u64), "{status:#}");
    assert_eq!(status["listener_entries"], json!(1), "listener map entries left: {status:#}");
    let deadline = Instant::now() + NOTICE;
    loop {
        let fds = agent_fds(&s.agent);
        if fds <= fds_before {
            eprintln!("agent fds: {fds_before} before, {fds} after {jobs} jobs");
            break;
        }
        assert!(Instant::now() < deadline, "agent fds: {fds_before} before, {fds} after {jobs} jobs");
        std::thread::sleep(Duration::from_millis(100));
    }
}
