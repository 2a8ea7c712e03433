//! What `packaging/` ships, tried for real:
//!
//! - the CI-runner integrations (issue 7): the GitHub Actions
//!   job-started/job-completed hooks and the GitLab Runner
//!   `masker-gitlab-cgroup` helper, against a real `masker agent`, with real
//!   cgroups laid out as the runners lay them out, and `psql` from the job's
//!   cgroup (the scripts take `MASKER_BIN`, and the GitHub hooks
//!   `MASKER_SUDO`, empty here: the test runs as root), and the container
//!   runners (GitLab's docker executor, GitHub container jobs) through the
//!   Docker cgroup parent (issue 15);
//! - the Debian package (issue 18): built by `cargo xtask package`,
//!   installed with `dpkg -i`, `masker --version` and `masker policy check
//!   /etc/masker/policy.toml`, purged, and the machine as it was;
//! - the Prometheus rules (`promtool check rules` and `promtool test
//!   rules`), the Grafana dashboard (every query valid PromQL for promtool,
//!   on metrics a real agent exports) and the `masker_tagged_cgroups`
//!   gauge the alert needs, from a real agent;
//! - the Kubernetes DaemonSet, validated against the Kubernetes schemas by
//!   kubernetes-validate, its policy by `masker policy check`, its agent
//!   configuration against its own mounts and ports.
//!
//! promtool and kubernetes-validate are installed by `scripts/setup.sh`
//! under `$MASKER_TOOLS` (default /opt/masker-tools). Tests that need root
//! and BPF fail otherwise, unless `MASKER_TESTS_ALLOW_SKIP=ebpf`.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------- tools

/// Where `scripts/setup.sh` installs promtool and kubernetes-validate.
fn tools() -> PathBuf {
    std::env::var_os("MASKER_TOOLS").map_or_else(|| PathBuf::from("/opt/masker-tools"), PathBuf::from)
}

/// A tool under [`tools`]; panics with what to run when it is missing.
fn tool(relative: &str) -> PathBuf {
    let path = tools().join(relative);
    assert!(path.is_file(), "{} is missing: run `bash scripts/setup.sh` (setup_packaging_tools)", path.display());
    path
}

fn run_tool(mut cmd: Command) -> process::Output {
    cmd.env_remove("PYTHONPATH");
    process::run(cmd, None, LIMIT).expect("running a tool")
}

// ---------------------------------------------------------------- Prometheus and Grafana

#[test]
fn prometheus_alert_rules_check_and_pass_their_unit_tests() {
    let dir = script("prometheus");
    let mut check = Command::new(tool("bin/promtool"));
    check.current_dir(&dir).args(["check", "rules", "masker-alerts.yml"]);
    let out = run_tool(check);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS: 2 rules found"), "{}", out.stdout);
    // The unit tests fire the alert for a runner that is down with tags,
    // and not for one without tags or one that is up.
    let mut test = Command::new(tool("bin/promtool"));
    test.current_dir(&dir).args(["test", "rules", "masker-alerts.test.yml"]);
    let out = run_tool(test);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
}

/// The metric names in a Prometheus text exposition: of sample lines, and
/// of `# TYPE` lines (a family with no sample yet, such as the kernel's
/// refusals in proxy mode, is still exported).
fn exported_names(text: &str) -> BTreeSet<String> {
    let samples =
        text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).filter_map(|l| l.split(['{', ' ']).next());
    let families = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next());
    samples.chain(families).map(str::to_string).collect()
}

/// The `masker_*` metric names a PromQL expression uses.
fn used_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("masker_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// `GET /metrics` from `addr`, polled until it answers (deadline 20 s).
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.starts_with("HTTP/1.1 200") => return body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("no metrics from {addr}: {other:?}"),
        }
    }
}

fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

#[test]
fn grafana_dashboard_queries_are_promql_over_exported_metrics() {
    let text = std::fs::read_to_string(script("grafana/masker-dashboard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "masker-agent");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}", dash["schemaVersion"]);
    let vars: Vec<&str> =
        dash["templating"]["list"].as_array().expect("variables").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["datasource", "job", "instance", "identity"]);

    // Every panel query, with the dashboard's variables filled in.
    let mut exprs = Vec::new();
    let mut titles = BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("title");
        assert!(titles.insert(title), "two panels titled {title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$job", "masker")
                .replace("$instance", ".*")
                .replace("$identity", ".*");
            assert!(!filled.contains('$'), "{title}: unknown variable in {expr}");
            exprs.push((title.to_string(), filled));
        }
    }
    // The panels the issue asks for.
    for wanted in [
        "Live sessions by identity",
        "Statements by outcome",
        "Masked cells by action",
        "Denials by identity",
        "Approval decisions",
        "Relay latency",
        "Tagged cgroups",
    ] {
        assert!(titles.contains(wanted), "no panel {wanted}: {titles:?}");
    }

    // Valid PromQL: promtool checks each query as a recording rule.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("json")
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), &rules).expect("write");
    let mut check = Command::new(tool("bin/promtool"));
    check.current_dir(dir.path()).args(["check", "rules", "dashboard.yml"]);
    let out = run_tool(check);
    assert_eq!(out.code(), Some(0), "{}\n{}\n{rules}", out.stdout, out.stderr);

    // Every masker_* metric the dashboard and the alerts use is one masker
    // exports: scraped from a real `masker proxy` with a session behind it.
    let cluster = PgCluster::shared();
    let metrics = free_local_addr();
    let proxy = MaskerProxy::start_with_args(cluster.addr(), &["--metrics-listen".into(), metrics.to_string()])
        .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"));
    let mut psql = Command::new(cluster.bindir().join("psql"));
    let info = cluster.app();
    psql.args(["-X", "-At", "-w", "-h", "127.0.0.1", "-p", &proxy.addr().port().to_string(), "-U", &info.user])
        .args(["-d", &info.dbname, "-c", "SELECT 1"])
        .env("PGPASSWORD", &info.password)
        .env("PGSSLMODE", "disable");
    process::run(psql, None, LIMIT).expect("psql").assert_success();
    let exported = exported_names(&scrape(metrics));
    let alerts = std::fs::read_to_string(script("prometheus/masker-alerts.yml")).expect("alerts");
    let mut used: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| used_names(e)).collect();
    used.extend(used_names(&alerts));
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}\nexported: {exported:?}");
    drop(proxy);
}

#[test]
fn the_agent_exports_how_many_cgroups_are_tagged() {
    if !skip::ebpf() {
        return;
    }
    {
        let cluster = PgCluster::shared();
        let metrics = free_local_addr();
        let mut options = AgentOptions::targets(&[cluster.addr()]);
        options.extra_config = format!("metrics_listen = \"{metrics}\"\n");
        let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
        let gauge = |text: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix("masker_tagged_cgroups ")).and_then(|v| v.trim().parse().ok())
        };
        assert_eq!(gauge(&scrape(metrics)), Some(0), "{}", agent.stderr());
        let one = TestCgroup::new().expect("cgroup");
        let two = TestCgroup::new().expect("cgroup");
        agent.tag(one.path(), "ci-a");
        agent.tag(two.path(), "ci-b");
        assert_eq!(gauge(&scrape(metrics)), Some(2));
        agent.untag(one.path());
        assert_eq!(gauge(&scrape(metrics)), Some(1));
        agent.untag(two.path());
        assert_eq!(gauge(&scrape(metrics)), Some(0));
    }
}

// ---------------------------------------------------------------- Kubernetes

/// The documents of a YAML file as JSON (PyYAML from kubernetes-validate's venv).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let mut cmd = Command::new(tool("venv/bin/python"));
    cmd.args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path);
    let out = run_tool(cmd);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("json")
}

#[test]
fn kubernetes_daemonset_validates_and_fits_its_config() {
    let manifest = script("kubernetes/masker-daemonset.yaml");
    for version in ["1.29.0", "1.37.0"] {
        let mut cmd = Command::new(tool("venv/bin/kubernetes-validate"));
        cmd.args(["--strict", "-k", version]).arg(&manifest);
        let out = run_tool(cmd);
        assert_eq!(out.code(), Some(0), "Kubernetes {version}:\n{}{}", out.stdout, out.stderr);
        assert_eq!(out.stdout.matches(" passed for resource ").count(), 4, "{}", out.stdout);
    }
    // The validator rejects what it should (a misspelt field).
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&bad, text.replacen("      hostPID: true", "      hostPID: true\n      hostNetwrk: true", 1))
        .expect("write");
    let mut cmd = Command::new(tool("venv/bin/kubernetes-validate"));
    cmd.arg("--strict").arg(&bad);
    assert_ne!(run_tool(cmd).code(), Some(0), "a misspelt field must not validate");

    let docs = yaml_documents(&manifest);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]);
    let config = &docs[2]["data"];
    // The policy is the packaged default, and masker accepts it.
    let policy = config["policy.toml"].as_str().expect("policy.toml");
    let packaged = std::fs::read_to_string(script("debian/policy.toml")).expect("debian/policy.toml");
    assert_eq!(policy, packaged, "the ConfigMap's policy is packaging/debian/policy.toml");
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy).expect("write");
    let mut check = Command::new(MaskerProxy::binary());
    check.args(["policy", "check"]).arg(&policy_file);
    process::run(check, None, LIMIT).expect("policy check").assert_success();

    // The agent configuration points where the pod mounts things.
    let mut cmd = Command::new(tool("venv/bin/python"));
    cmd.args(["-c", "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.argv[1])))"])
        .arg(config["agent.toml"].as_str().expect("agent.toml"));
    let out = run_tool(cmd);
    assert_eq!(out.code(), Some(0), "agent.toml is TOML: {}", out.stderr);
    let agent: Value = serde_json::from_str(&out.stdout).expect("json");
    let pod = &docs[3]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let containers = pod["containers"].as_array().expect("containers");
    let main = &containers[0];
    assert_eq!(main["securityContext"]["privileged"], true);
    let mounts: Vec<(&str, &str)> = main["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or(""), m["mountPath"].as_str().unwrap_or("")))
        .collect();
    let mounted = |path: &str| mounts.iter().find(|(_, m)| path.starts_with(&format!("{m}/"))).map(|(n, _)| *n);
    let host_path = |volume: &str| {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .map(|v| v["hostPath"]["path"].clone())
    };
    for (key, volume) in [("admin_socket", "run"), ("pin_dir", "bpffs"), ("state_dir", "state"), ("policy", "config")] {
        let path = agent[key].as_str().unwrap_or_else(|| panic!("agent.toml has no {key}"));
        let path = if key == "state_dir" { format!("{path}/x") } else { path.to_string() };
        assert_eq!(mounted(&path), Some(volume), "{key} = {path}");
    }
    let audit = agent["audit"]["file"].as_str().expect("[audit] file");
    assert_eq!(mounted(audit), Some("audit"));
    assert_eq!(host_path("audit"), Some(Value::from("/var/log/masker")), "the audit trail goes to a hostPath");
    assert_eq!(host_path("bpffs"), Some(Value::from("/sys/fs/bpf")));
    assert_eq!(host_path("cgroup"), Some(Value::from("/sys/fs/cgroup")));
    assert!(mounts.contains(&("cgroup", "/sys/fs/cgroup")));
    let bpffs = main["volumeMounts"].as_array().expect("mounts").iter().find(|m| m["name"] == "bpffs").expect("bpffs");
    assert_eq!(bpffs["mountPropagation"], "Bidirectional", "pins must reach the host's bpffs");
    // Metrics: the configured port is the container's, the probes' and the scrape annotation's.
    let port: u64 = agent["metrics_listen"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("metrics_listen");
    assert_eq!(main["ports"][0]["containerPort"].as_u64(), Some(port));
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/metrics");
    assert_eq!(docs[3]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"], port.to_string());
    // Policy reload on change: the ConfigMap is mounted as a directory (a
    // subPath mount would never see updates) in both containers, and the
    // reloader checks before it reloads.
    let reload = containers.iter().find(|c| c["name"] == "policy-reload").expect("the policy-reload container");
    for c in [main, reload] {
        let m = c["volumeMounts"].as_array().expect("mounts").iter().find(|m| m["name"] == "config").expect("config");
        assert!(m["subPath"].is_null(), "{}", c["name"]);
        assert_eq!(m["mountPath"], "/etc/masker");
    }
    let script_text = reload["command"][2].as_str().expect("reload script");
    let check_at = script_text.find("masker policy check").expect("checks");
    let reload_at = script_text.find("masker policy reload").expect("reloads");
    assert!(check_at < reload_at, "{script_text}");
    assert!(reload["volumeMounts"].as_array().expect("mounts").iter().any(|m| m["name"] == "run"), "admin socket");
}

// ---------------------------------------------------------------- Debian package

/// Runs `dpkg ARGS`, retrying while another package manager holds the lock
/// (other jobs on the machine may be installing).
fn dpkg(args: &[&str]) -> process::Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut cmd = Command::new("dpkg");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let out = process::run(cmd, None, LIMIT).expect("dpkg");
        let locked = out.stderr.contains("lock") && out.code() == Some(2);
        if !locked || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What the package leaves on the machine, to compare before and after.
fn footprint() -> Vec<String> {
    let mut seen: Vec<String> = [
        "/usr/bin/masker",
        "/etc/masker",
        "/lib/systemd/system/masker-agent.service",
        "/usr/lib/systemd/system/masker-agent.service",
        "/usr/share/doc/masker",
        "/usr/share/masker",
        "/var/lib/masker",
        "/var/log/masker",
        "/var/lib/dpkg/info/masker.list",
        "/var/lib/systemd/deb-systemd-helper-enabled/masker-agent.service.dsh-also",
    ]
    .iter()
    .filter(|p| Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    let status = Command::new("dpkg-query").args(["-W", "-f=${Status}", "masker"]).output().expect("dpkg-query");
    seen.push(format!("dpkg: {}", String::from_utf8_lossy(&status.stdout).trim()));
    seen
}

/// Purges the package when dropped, so a failing test leaves no package.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = dpkg(&["--purge", "masker"]);
    }
}

#[test]
fn debian_package_installs_runs_and_purges_cleanly() {
    if !skip::require(skip::Kind::Ebpf, (!process::running_as_root()).then(|| "dpkg -i needs root".to_string())) {
        return;
    }
    let before = footprint();
    assert!(
        before.len() == 1 && !before[0].contains("ok installed"),
        "masker is already installed here ({before:?}); this test installs and purges it: remove it first"
    );
    // Built from the workspace like CI builds it, unless MASKER_DEB names one.
    let deb = match std::env::var_os("MASKER_DEB") {
        Some(d) => PathBuf::from(d),
        None => {
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .args(["run", "--quiet", "-p", "xtask", "--", "package"]);
            let out = process::run(build, None, Duration::from_secs(3600)).expect("cargo xtask package");
            assert_eq!(out.code(), Some(0), "cargo xtask package:\n{}", out.stderr);
            PathBuf::from(out.stdout.lines().last().expect("the .deb path").trim())
        }
    };
    assert!(deb.is_file(), "{}", deb.display());
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(name.starts_with("masker_") && name.ends_with(".deb"), "{name}");

    // What is in it, before installing.
    let mut contents = Command::new("dpkg-deb");
    contents.arg("-c").arg(&deb);
    let listing = process::run(contents, None, LIMIT).expect("dpkg-deb -c").stdout;
    for path in ["./usr/bin/masker", "./etc/masker/agent.toml", "./etc/masker/policy.toml", "masker-agent.service"] {
        assert!(listing.contains(path), "{path} not in the package:\n{listing}");
    }

    let _purge = Purge;
    let out = dpkg(&["-i", deb.to_str().expect("utf-8 path")]);
    assert_eq!(out.code(), Some(0), "dpkg -i:\n{}\n{}", out.stdout, out.stderr);
    let mut version = Command::new("/usr/bin/masker");
    version.arg("--version");
    let version = process::run(version, None, LIMIT).expect("masker --version");
    assert_eq!(version.code(), Some(0));
    assert_eq!(version.stdout.trim(), format!("masker {}", env!("CARGO_PKG_VERSION")));
    let mut check = Command::new("/usr/bin/masker");
    check.args(["policy", "check", "/etc/masker/policy.toml"]);
    let checked = process::run(check, None, LIMIT).expect("policy check");
    assert_eq!(checked.code(), Some(0), "{}", checked.stderr);
    assert!(checked.stdout.contains("/etc/masker/policy.toml: ok"), "{}", checked.stdout);
    // The configuration is a conffile (kept on upgrade, removed on purge).
    let status = Command::new("dpkg-query").args(["-s", "masker"]).output().expect("dpkg-query");
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("/etc/masker/agent.toml") && status.contains("/etc/masker/policy.toml"), "{status}");
    let unit = ["/lib/systemd/system/masker-agent.service", "/usr/lib/systemd/system/masker-agent.service"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .expect("the systemd unit is installed");
    assert!(unit.contains("ExecStart=/usr/bin/masker agent --config /etc/masker/agent.toml"), "{unit}");
    let mut help = Command::new("/usr/bin/masker");
    help.arg("--help");
    let help = process::run(help, None, LIMIT).expect("masker --help");
    assert!(help.stdout.contains("discover"), "{}", help.stdout);

    let out = dpkg(&["--purge", "masker"]);
    assert_eq!(out.code(), Some(0), "dpkg --purge:\n{}\n{}", out.stdout, out.stderr);
    assert_eq!(footprint(), before, "the machine is as it was");
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
