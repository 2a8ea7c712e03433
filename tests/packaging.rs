//! The CI-runner integrations of `packaging/` run for real (issue 7): the
//! GitHub Actions job-started/job-completed hooks and the GitLab Runner
//! `masker-gitlab-cgroup` helper, against a real `masker agent`, with real
//! cgroups laid out as the runners lay them out, and `psql` from the job's
//! cgroup.
//!
//! The scripts take `MASKER_BIN` (and the GitHub hooks `MASKER_SUDO`, empty
//! here: the test runs as root) so they can run against the built binary.
//! Needs root and BPF: fails otherwise, unless `MASKER_TESTS_ALLOW_SKIP=ebpf`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup, cgroup_v2_root};
use masker_tests::process::{self, shell_quote_path};
use masker_tests::skip;
use masker_tests::{MaskerProxy, PgCluster};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging").join(name)
}

fn start() -> Option<(MaskerAgent, &'static PgCluster)> {
    if !skip::ebpf() {
        return None;
    }
    let cluster = PgCluster::shared();
    let agent = MaskerAgent::start(&AgentOptions::targets(&[cluster.addr()]))
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    Some((agent, cluster))
}

/// `psql -c 'SELECT 1'` to the target as a shell command line.
fn psql_line(cluster: &PgCluster) -> String {
    let info = cluster.app();
    format!(
        "PGPASSWORD={} PGSSLMODE=disable {} -X -At -w -h {} -p {} -U {} -d {} -c 'SELECT 1'",
        info.password,
        shell_quote_path(&cluster.bindir().join("psql")),
        info.host,
        info.port,
        info.user,
        info.dbname
    )
}

/// Sessions the agent has seen for `identity`.
fn sessions_of(agent: &MaskerAgent, identity: &str) -> u64 {
    agent.status()["identities"][identity]["sessions"].as_u64().unwrap_or(0)
}

fn tags(agent: &MaskerAgent) -> Vec<Value> {
    agent.status()["tags"].as_array().expect("tags").clone()
}

#[test]
fn github_actions_hooks_tag_the_runner_service_for_the_job() {
    let Some((agent, cluster)) = start() else { return };
    let base = TestCgroup::new().expect("cgroup");
    // A self-hosted runner as a systemd service: the hook and the job's
    // steps run in cgroups below the service's.
    let service = base.child("actions.runner.org-app.runner1.service").expect("service cgroup");
    let hook = service.child("hook").expect("hook cgroup");
    let job = service.child("job").expect("job cgroup");
    let temp = tempfile::tempdir().expect("tempdir");
    let run_hook = |name: &str| {
        let mut cmd = hook.command("sh");
        cmd.arg(script(name))
            .env("MASKER_BIN", MaskerProxy::binary())
            .env("MASKER_SUDO", "")
            .env("MASKER_ADMIN_SOCKET", agent.admin_socket())
            .env("GITHUB_REPOSITORY", "org/app")
            .env("RUNNER_TEMP", temp.path());
        process::run(cmd, None, LIMIT).unwrap_or_else(|e| panic!("{name}: {e:#}"))
    };
    let job_psql = || {
        let mut cmd = job.command("sh");
        cmd.args(["-c", &psql_line(cluster)]);
        process::run(cmd, None, LIMIT).expect("psql")
    };

    let out = run_hook("github-actions/job-started.sh");
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stderr, agent.stderr());
    assert!(out.stdout.contains("identity gha-org-app"), "{}", out.stdout);
    let tags = tags(&agent);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(tags[0]["identity"], "gha-org-app");
    let tagged = tags[0]["path"].as_str().expect("path");
    assert!(
        tagged.ends_with("/actions.runner.org-app.runner1.service"),
        "the service is tagged, not the hook: {tagged}"
    );

    let out = job_psql();
    assert_eq!((out.code(), out.stdout.trim()), (Some(0), "1"), "{}", out.stderr);
    assert_eq!(sessions_of(&agent, "gha-org-app"), 1, "the job's connection went through masker");

    let out = run_hook("github-actions/job-completed.sh");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let after = self::tags(&agent);
    assert!(after.len() == 1 && after[0]["revoked"] == true, "revoked after the job (the service lives on): {after:?}");
    assert!(!temp.path().join("masker-cgroup").exists(), "the hook's state file is removed");
    // Between jobs the runner's connections to the targets are refused,
    // never direct.
    let out = job_psql();
    assert_ne!(out.code(), Some(0), "a connection after the job reached the database: {}", out.stdout);
    assert!(out.stderr.contains("was removed"), "{}", out.stderr);

    // The next job is tagged (and served) again.
    let out = run_hook("github-actions/job-started.sh");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let out = job_psql();
    assert_eq!((out.code(), out.stdout.trim()), (Some(0), "1"), "{}", out.stderr);
    assert_eq!(sessions_of(&agent, "gha-org-app"), 2, "the next job's connection went through masker");
    let out = run_hook("github-actions/job-completed.sh");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn gitlab_pre_and_post_build_scripts_move_the_job_shell_in_and_out() {
    let Some((agent, cluster)) = start() else { return };
    let home = TestCgroup::new().expect("cgroup");
    // The job's shell, as GitLab Runner's shell executor starts it; it runs
    // the lines it is sent.
    let mut cmd = home.command("sh");
    cmd.args(["-c", r#"while read -r line; do eval "$line"; done"#]);
    let mut shell = LineChild::spawn(cmd).expect("job shell");
    let pid = shell.id().to_string();
    let identity = "gitlab-group-app";
    let state = tempfile::tempdir().expect("state dir");
    let helper = |args: &[&str]| {
        let mut cmd = Command::new("sh");
        cmd.arg(script("gitlab/masker-gitlab-cgroup"))
            .args(args)
            .env("MASKER_BIN", MaskerProxy::binary())
            .env("MASKER_GITLAB_STATE", state.path())
            .env("MASKER_ADMIN_SOCKET", agent.admin_socket());
        process::run(cmd, None, LIMIT).unwrap_or_else(|e| panic!("masker-gitlab-cgroup {args:?}: {e:#}"))
    };
    let cgroup_of_shell = || std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");

    let out = helper(&["enter", &pid, identity]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stderr, agent.stderr());
    let dir = cgroup_v2_root().expect("v2 root").join("masker-gitlab").join(format!("{identity}-{pid}"));
    assert!(dir.is_dir(), "{}", dir.display());
    assert!(cgroup_of_shell().contains(&format!("/masker-gitlab/{identity}-{pid}")), "{}", cgroup_of_shell());
    assert_eq!(tags(&agent).iter().filter(|t| t["identity"] == identity).count(), 1);

    shell.send_line(&format!("{} >/dev/null 2>&1; echo RESULT $?", psql_line(cluster))).expect("send");
    assert_eq!(shell.line_starting("RESULT ", LIMIT).expect("psql result"), "0");
    assert_eq!(sessions_of(&agent, identity), 1, "the job's connection went through masker");

    let out = helper(&["leave", identity]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!dir.exists(), "the job cgroup is removed");
    assert!(tags(&agent).is_empty(), "untagged");
    let back = cgroup_of_shell();
    let home_rel = home.path().strip_prefix(cgroup_v2_root().expect("v2 root")).expect("relative");
    assert!(back.contains(&format!("0::/{}", home_rel.display())), "the shell is back home: {back}");

    let out = helper(&["enter", "0", "x"]);
    assert_ne!(out.code(), Some(0), "a bad pid is an error");
    let out = helper(&[]);
    assert_eq!(out.code(), Some(2), "usage: {}", out.stderr);
    let _ = shell.finish(LIMIT);
    // The parent directory is shared with real runners; removed when empty.
    let _ = std::fs::remove_dir(cgroup_v2_root().expect("v2 root").join("masker-gitlab"));
}

// ---------------------------------------------------------------------------
// Container jobs (issue 15), with real Docker containers.

/// A `--network none` container under `--cgroup-parent parent` in which
/// `127.0.0.1:<cluster port>` leads to the cluster; runs `psql -c 'SELECT
/// 1'` in it with `docker exec` and returns psql's output. With `retry`,
/// psql is run again until it succeeds (the agent needs a moment to find
/// a new container), up to a deadline.
fn psql_in_container(
    docker: &masker_tests::docker::Docker,
    parent: &str,
    cluster: &PgCluster,
    retry: bool,
) -> process::Output {
    let run = docker
        .run(&[
            "run",
            "-d",
            "--network",
            "none",
            "--cgroup-parent",
            parent,
            "-v",
            "/usr:/usr:ro",
            masker_tests::docker::IMAGE,
            "sleep",
            "1000000",
        ])
        .expect("docker run");
    run.assert_success();
    let id = run.stdout.trim().to_string();
    let ns = docker.netns_path(&id).expect("netns");
    let _forward = masker_tests::netns::NsForward::start(
        &ns,
        std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port())),
        cluster.addr(),
    )
    .expect("forward");
    // The agent finds the container within moments (cgroup events).
    let deadline = std::time::Instant::now() + LIMIT;
    let info = cluster.app();
    let out = loop {
        let mut cmd = docker.exec_env(&id, &["PGPASSWORD"], cluster.bindir().join("psql"));
        cmd.env("PGPASSWORD", &info.password).args(["-X", "-At", "-w", "-h", "127.0.0.1"]).args([
            "-p",
            &cluster.port().to_string(),
            "-U",
            &info.user,
            "-d",
            &info.dbname,
            "-c",
            "SELECT 1",
        ]);
        let out = process::run(cmd, None, LIMIT).expect("docker exec psql");
        if !retry || out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = docker.remove(&id);
    out
}

/// GitLab Runner's docker executor: the job containers' `cgroup_parent`
/// (docker-executor.toml) is tagged by the drop-in's `masker tag ...
/// --create` before the runner starts; a job container's psql goes through
/// masker as the runner's identity.
#[test]
fn gitlab_docker_executor_cgroup_parent_is_tagged_by_the_drop_in() {
    if !masker_tests::skip::docker() {
        return;
    }
    let Some((agent, cluster)) = start() else { return };
    let docker = masker_tests::docker::Docker::shared();
    let recipe = std::fs::read_to_string(script("gitlab/docker-executor.toml")).expect("recipe");
    let parent = recipe
        .lines()
        .find_map(|l| l.trim().strip_prefix("cgroup_parent = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("cgroup_parent in docker-executor.toml");
    let drop_in = std::fs::read_to_string(script("gitlab/gitlab-runner-masker.conf")).expect("drop-in");
    let exec = drop_in.lines().find_map(|l| l.strip_prefix("ExecStartPre=")).expect("ExecStartPre").to_string();
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[1..3], ["tag", parent.trim_start_matches('/')], "the drop-in tags the recipe's cgroup_parent");
    // The same commands, on a cgroup of this test (the recipe's name plus a
    // unique suffix, so a real runner on the machine is not disturbed).
    let unique = format!("{}-{}", parent.trim_start_matches('/'), std::process::id());
    let mut tag = agent.cli();
    tag.args(["tag", &unique]).args(&words[3..]);
    let out = process::run(tag, None, LIMIT).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    struct Parent(String);
    impl Drop for Parent {
        fn drop(&mut self) {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for d in /sys/fs/cgroup/*/{0} /sys/fs/cgroup/{0}; do [ -d \"$d\" ] && rmdir \"$d\"; done",
                    self.0
                ))
                .status();
        }
    }
    let _parent = Parent(unique.clone());
    let identity = words[words.iter().position(|w| *w == "--identity").unwrap() + 1];
    let out = psql_in_container(docker, &format!("/{unique}"), cluster, true);
    assert_eq!((out.code(), out.stdout.trim()), (Some(0), "1"), "{}\n{}", out.stderr, agent.stderr());
    assert_eq!(sessions_of(&agent, identity), 1, "the job container's connection went through masker");
    let mut untag = agent.cli();
    untag.args(["untag", &unique]);
    process::run(untag, None, LIMIT).unwrap().assert_success();
}

/// GitHub Actions container jobs: with Docker's daemon-wide cgroup parent
/// (daemon.json) and `MASKER_DOCKER_CGROUP_PARENT` in the runner's .env, the
/// job-started hook tags the containers' parent for the job and the
/// job-completed hook untags it.
#[test]
fn github_actions_container_jobs_are_tagged_through_the_docker_cgroup_parent() {
    if !masker_tests::skip::docker() {
        return;
    }
    let Some((agent, cluster)) = start() else { return };
    let docker = masker_tests::docker::Docker::shared();
    let daemon: Value =
        serde_json::from_str(&std::fs::read_to_string(script("github-actions/daemon.json")).unwrap()).unwrap();
    let parent = daemon["cgroup-parent"].as_str().expect("cgroup-parent").to_string();
    // As the runner service lays it out; the Docker parent gets a unique
    // suffix (this test's dockerd gets it per container, as daemon.json
    // would give it to every container).
    let unique = format!("{parent}-{}", std::process::id());
    let base = TestCgroup::new().expect("cgroup");
    let service = base.child("actions.runner.org-app.runner1.service").expect("service cgroup");
    let hook = service.child("hook").expect("hook cgroup");
    let temp = tempfile::tempdir().expect("tempdir");
    let run_hook = |name: &str| {
        let mut cmd = hook.command("sh");
        cmd.arg(script(name))
            .env("MASKER_BIN", MaskerProxy::binary())
            .env("MASKER_SUDO", "")
            .env("MASKER_ADMIN_SOCKET", agent.admin_socket())
            .env("MASKER_DOCKER_CGROUP_PARENT", &unique)
            .env("GITHUB_REPOSITORY", "org/app")
            .env("RUNNER_TEMP", temp.path());
        process::run(cmd, None, LIMIT).unwrap_or_else(|e| panic!("{name}: {e:#}"))
    };
    struct Parent(String);
    impl Drop for Parent {
        fn drop(&mut self) {
            let name = self.0.trim_start_matches('/');
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for d in /sys/fs/cgroup/*/{name} /sys/fs/cgroup/{name}; do [ -d \"$d\" ] && rmdir \"$d\"; done"
                ))
                .status();
        }
    }
    let _parent = Parent(unique.clone());
    let out = run_hook("github-actions/job-started.sh");
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stderr, agent.stderr());
    assert_eq!(tags(&agent).len(), 2, "the runner service and the Docker parent: {:?}", tags(&agent));
    let out = psql_in_container(docker, &unique, cluster, true);
    assert_eq!((out.code(), out.stdout.trim()), (Some(0), "1"), "{}\n{}", out.stderr, agent.stderr());
    assert_eq!(sessions_of(&agent, "gha-org-app"), 1, "the container job's connection went through masker");
    let out = run_hook("github-actions/job-completed.sh");
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let after = tags(&agent);
    assert!(after.len() == 2 && after.iter().all(|t| t["revoked"] == true), "revoked after the job: {after:?}");
    // A container started between jobs is refused (no listener), never
    // direct.
    let out = psql_in_container(docker, &unique, cluster, false);
    assert_ne!(out.code(), Some(0), "a container between jobs reached the database: {}", out.stdout);
    assert!(out.stderr.contains("Operation not permitted"), "{}", out.stderr);
}
