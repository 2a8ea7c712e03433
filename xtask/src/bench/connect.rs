//! `bench connect`: the cost of a connection (TCP connect, startup, auth,
//! `SELECT 1`, close) direct vs through masker.
//!
//! Each measurement is `pgbench -C -n -t N -c 1` with a one-line script
//! `SELECT 1;`: libpq opens a new connection for every transaction, and
//! pgbench's TPS "including reconnection times" is connections per second.
//! Direct and masker runs alternate, the median of the rounds is reported.
//! Authentication is `trust`, the cheapest there is, so the relay's share of
//! the time is as large as it gets. Goal: ≤ 1.3× direct per connection.
//!
//! Three paths, same run: direct, the explicit `masker proxy`, and the
//! transparent one: `masker agent` with the eBPF redirect for the cluster's
//! address, pgbench started with `masker run` and connecting to the server's
//! own address. The transparent row needs root and BPF; without them it is
//! left out with a note saying why.
//!
//! Container rows (issue 15): pgbench in a hand-made container (its own
//! network namespace with a PostgreSQL of its own inside, and a cgroup under
//! a tagged parent), once direct to that server and once through the
//! listener the agent opens inside the namespace (the agent connects
//! upstream from there). Goal: the container row within 1.1x of the host's
//! eBPF row.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::client::{self, DBNAME, Pgbench, shell_quote};
use super::container::Container;
use super::processes::{Cluster, Masker, free_port};
use super::report::{Table, fmt_num, fmt_ratio, goal, median, ratio};
use super::{Ctx, Outcome, progress};

/// Where [`bench_connect`] connects and how its client is started.
///
/// `direct` and `proxy` point pgbench at an address. The transparent
/// (eBPF) mode connects to the real server's address from a tagged cgroup:
/// `addr` is then [`Cluster::addr`](super::processes::Cluster::addr) and
/// `wrapper` the command that runs pgbench inside the tag, e.g.
/// `["masker", "run", "--identity", "bench", "--"]`.
pub struct ConnectTarget {
    /// Row label in the table and JSON ("direct", "masker proxy", ...).
    pub label: String,
    pub addr: SocketAddr,
    /// Command prefix that pgbench runs under (empty: run it as is).
    pub wrapper: Vec<String>,
    /// libpq `sslmode` of pgbench. The bench cluster runs without TLS, so
    /// `disable` everywhere compares the same work; `require` against the
    /// agent adds the TLS handshake masker offers its clients.
    pub sslmode: &'static str,
}

impl ConnectTarget {
    pub fn plain(label: &str, addr: SocketAddr) -> ConnectTarget {
        ConnectTarget { label: label.into(), addr, wrapper: Vec::new(), sslmode: "disable" }
    }
}

/// One measurement of `conns` sequential connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRun {
    /// Connections per second (connect + startup + auth + `SELECT 1` + close).
    pub per_sec: f64,
    /// pgbench's "average connection time" (connect + startup + auth), ms.
    pub connect_ms: Option<f64>,
}

/// Opens `conns` connections one after another to `target`, each running
/// `SELECT 1` before closing. This is the hook the transparent mode plugs
/// into: give it a target whose address is redirected.
pub fn bench_connect(ctx: &Ctx, target: &ConnectTarget, conns: u32) -> Result<ConnectRun> {
    let cluster = ctx.cluster;
    let script = cluster.work().path().join("select1.sql");
    if !script.exists() {
        std::fs::write(&script, "SELECT 1;\n").context("writing the pgbench script")?;
    }
    let mut pgbench = client::pg_tool(cluster.bindir(), "pgbench", target.addr);
    pgbench.env("PGSSLMODE", target.sslmode);
    let mut cmd = match target.wrapper.split_first() {
        None => pgbench,
        Some((program, args)) => {
            let mut wrapped = std::process::Command::new(program);
            wrapped.args(args).arg(pgbench.get_program()).args(pgbench.get_args());
            for (key, value) in pgbench.get_envs() {
                match value {
                    Some(value) => wrapped.env(key, value),
                    None => wrapped.env_remove(key),
                };
            }
            wrapped
        }
    };
    cmd.args(["-C", "-n", "-c", "1", "-j", "1", "-t", &conns.to_string(), "-f"]).arg(&script).arg(DBNAME);
    let out = client::run(cmd, Duration::from_secs(300)).with_context(|| format!("connecting to {}", target.label))?;
    let p = Pgbench::parse(&out.stdout)?;
    Ok(ConnectRun { per_sec: p.tps, connect_ms: p.connection_ms })
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    // Alternating rounds per target: connection times are noisy, the median
    // of many short rounds is steadier than one long one.
    let (conns, rounds): (u32, usize) = if ctx.quick { (200, 5) } else { (500, 7) };
    let masker = Masker::start(&ctx.masker_bin, ctx.cluster, &[], &[], "connect")?;
    // The same server set-up with ssl = on: what a TLS row through masker
    // is compared with (one TLS handshake each).
    let tls_cluster = Cluster::start_tls().context("starting the TLS cluster")?;
    let mut targets = vec![
        ConnectTarget::plain("direct", ctx.cluster.addr()),
        ConnectTarget::plain("masker proxy", masker.addr()),
        ConnectTarget {
            label: "direct, TLS".into(),
            addr: tls_cluster.addr(),
            wrapper: Vec::new(),
            sslmode: "require",
        },
    ];
    // The container and its own server, before the agent (it intercepts
    // that server's address too).
    let container = match Container::start().and_then(|c| {
        let cluster = Cluster::start_in_netns(c.netns()).context("starting PostgreSQL in the container")?;
        Ok((c, cluster))
    }) {
        Ok(c) => Some(c),
        Err(err) => {
            progress(format!("connect: no container rows: {err:#}"));
            None
        }
    };
    let extra: Vec<SocketAddr> = container.iter().map(|(_, c)| c.addr()).collect();
    let mut container_rows = None;
    let agent = match Agent::start(&ctx.masker_bin, ctx.cluster, &extra) {
        Ok(agent) => {
            targets.push(ConnectTarget {
                label: "masker agent (eBPF)".into(),
                addr: ctx.cluster.addr(),
                wrapper: agent.run_wrapper(),
                sslmode: "disable",
            });
            targets.push(ConnectTarget {
                label: "masker agent (eBPF), client TLS".into(),
                addr: ctx.cluster.addr(),
                wrapper: agent.run_wrapper(),
                sslmode: "require",
            });
            if let Some((c, cluster)) = &container {
                match agent.serve_container(c) {
                    Ok(()) => {
                        container_rows = Some(targets.len());
                        targets.push(ConnectTarget {
                            label: "container, direct".into(),
                            addr: cluster.addr(),
                            wrapper: ["ip", "netns", "exec", c.netns()].map(String::from).to_vec(),
                            sslmode: "disable",
                        });
                        let mut wrapper = vec!["sh".to_string()];
                        wrapper.extend(c.wrapper());
                        targets.push(ConnectTarget {
                            label: "container, masker agent (namespace listener)".into(),
                            addr: cluster.addr(),
                            wrapper,
                            sslmode: "disable",
                        });
                    }
                    Err(err) => progress(format!("connect: no container rows: {err:#}")),
                }
            }
            Some(agent)
        }
        Err(err) => {
            progress(format!("connect: no eBPF row: {err:#}"));
            None
        }
    };
    for target in &targets {
        bench_connect(ctx, target, 20).with_context(|| format!("warm-up against {}", target.label))?;
    }
    let mut runs: Vec<Vec<ConnectRun>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, target) in targets.iter().enumerate() {
            let run = bench_connect(ctx, target, conns)?;
            progress(format!("connect: round {} {}: {:.0} conn/s", round + 1, target.label, run.per_sec));
            runs[i].push(run);
        }
    }

    let mut table = Table::new(
        format!("connect: {conns} x (connect + startup + trust auth + SELECT 1 + close), median of {rounds} rounds"),
        &["path", "ms/conn", "conn/s", "connect ms", "vs direct", "goal <=1.3x"],
    );
    let per_conn: Vec<Option<f64>> =
        runs.iter().map(|r| median(&r.iter().map(|r| 1000.0 / r.per_sec).collect::<Vec<_>>())).collect();
    let mut json_targets = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let ms = per_conn[i];
        let connect_ms = median(&runs[i].iter().filter_map(|r| r.connect_ms).collect::<Vec<_>>());
        // TLS rows are compared with the direct TLS row, container rows with
        // direct in the container, the others with plain direct.
        let baseline = match container_rows {
            Some(first) if i >= first => first,
            _ if target.sslmode == "require" => 2,
            _ => 0,
        };
        let r = if i == baseline { None } else { ratio(ms, per_conn[baseline]) };
        table.row(vec![
            target.label.clone(),
            fmt_num(ms, 3),
            fmt_num(ms.map(|ms| 1000.0 / ms), 0),
            fmt_num(connect_ms, 3),
            if i == baseline { String::new() } else { fmt_ratio(r) },
            if i == baseline { String::new() } else { goal(r, |r| r <= 1.3) },
        ]);
        json_targets.push(json!({
            "label": target.label,
            "per_sec": runs[i].iter().map(|r| r.per_sec).collect::<Vec<_>>(),
            "connect_ms": runs[i].iter().map(|r| r.connect_ms).collect::<Vec<_>>(),
            "median_ms_per_conn": ms,
            "ratio_vs_direct": r,
        }));
    }
    let mut container_vs_host = None;
    if let Some(first) = container_rows {
        // The container path against the host's eBPF path (row 3).
        let r = ratio(per_conn[first + 1], per_conn[3]);
        container_vs_host = r;
        table.note(format!(
            "container, masker agent vs masker agent (eBPF) on the host: {} (goal <= 1.1x: {})",
            fmt_ratio(r),
            goal(r, |r| r <= 1.1)
        ));
        table.note(
            "container rows: pgbench in a hand-made container (own network namespace with its own PostgreSQL, \
             cgroup under a tagged parent); vs direct = vs direct in the container",
        );
    }
    if let Some(agent) = &agent {
        // The redirected row counts only if masker really saw those connections.
        let seen = agent.connections()?;
        let redirected_rows = if container_rows.is_some() { 3 } else { 2 };
        let expected = redirected_rows * u64::from(20 + conns * rounds as u32);
        if seen < expected {
            bail!("masker agent saw {seen} connections, expected at least {expected}: pgbench was not redirected");
        }
    }
    match &agent {
        Some(_) => table
            .note("masker agent (eBPF): pgbench under `masker run` connects to the server's own address, redirected"),
        None => table.note("masker agent (eBPF): not measured (needs root and BPF; see the progress output)"),
    }
    drop(agent);
    drop(container);
    table.note("connect ms = pgbench's average connection time (connect + startup + auth)");
    table.note(
        "sslmode=disable on the plain rows; the TLS rows use sslmode=require: direct, TLS against the same server \
         set-up with ssl = on (self-signed), and the agent with masker's CA towards the client (plain to the \
         server); TLS rows compare with direct, TLS",
    );
    Ok(Outcome {
        tables: vec![table],
        json: json!({
            "conns": conns,
            "rounds": rounds,
            "targets": json_targets,
            "container_vs_host_agent": container_vs_host,
        }),
    })
}

/// A `masker agent` intercepting the cluster's address, for the transparent
/// row. Its own admin socket and pin directory; stopped (SIGTERM) and
/// `masker uninstall`ed when dropped, and by a watchdog shell if the bench
/// process dies first.
pub(crate) struct Agent {
    child: Child,
    watchdog: Option<Child>,
    bin: PathBuf,
    admin_socket: PathBuf,
    pin_dir: PathBuf,
}

impl Agent {
    fn start(bin: &Path, cluster: &Cluster, extra_targets: &[SocketAddr]) -> Result<Agent> {
        Agent::start_with(bin, cluster, extra_targets, "")
    }

    /// [`Agent::start`] with `extra` appended to the agent configuration
    /// (a policy, `[catalog]`, `[limits]`).
    pub(crate) fn start_with(
        bin: &Path,
        cluster: &Cluster,
        extra_targets: &[SocketAddr],
        extra: &str,
    ) -> Result<Agent> {
        let dir = cluster.work().path();
        let admin_socket = dir.join("agent-admin").join("admin.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/masker-bench-{}", std::process::id()));
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nadmin_socket = {:?}\npin_dir = {:?}\nstate_dir = {:?}\ntargets = [{}]\n{extra}",
                free_port()?,
                admin_socket.display().to_string(),
                pin_dir.display().to_string(),
                dir.join("agent-state").display().to_string(),
                std::iter::once(cluster.addr())
                    .chain(extra_targets.iter().copied())
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .context("writing the agent configuration")?;
        let log = dir.join("masker-agent.log");
        let child = Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting {} agent", bin.display()))?;
        let cleanup = format!(
            "kill -9 {pid} 2>/dev/null; {bin} uninstall --pin-dir {pins} >/dev/null 2>&1",
            pid = child.id(),
            bin = shell_quote(&bin.to_string_lossy()),
            pins = shell_quote(&pin_dir.to_string_lossy()),
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' INT HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
                pid = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut agent = Agent { child, watchdog, bin: bin.to_path_buf(), admin_socket, pin_dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&agent.admin_socket).is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!("masker agent exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("masker agent: no admin socket after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// The agent's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `masker status --json` of the agent.
    pub(crate) fn status(&self) -> Result<serde_json::Value> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--admin-socket").arg(&self.admin_socket).args(["status", "--json"]);
        let out = client::run(cmd, Duration::from_secs(30))?;
        serde_json::from_str(&out.stdout).context("masker status --json")
    }

    /// The agent's connection counter (`masker status --json`).
    fn connections(&self) -> Result<u64> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--admin-socket").arg(&self.admin_socket).args(["status", "--json"]);
        let out = client::run(cmd, Duration::from_secs(30))?;
        let status: serde_json::Value = serde_json::from_str(&out.stdout).context("masker status --json")?;
        status["counters"]["connections"].as_u64().context("no counters.connections in masker status")
    }

    /// Tags the container's parent cgroup and waits until the agent has its
    /// listener inside the container's namespace.
    fn serve_container(&self, c: &Container) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--admin-socket").arg(&self.admin_socket).arg("tag").arg(c.parent());
        cmd.args(["--identity", "bench-container"]);
        client::run(cmd, Duration::from_secs(30)).context("masker tag")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--admin-socket").arg(&self.admin_socket).args(["status", "--json"]);
            let out = client::run(cmd, Duration::from_secs(30))?;
            let status: serde_json::Value = serde_json::from_str(&out.stdout).context("masker status --json")?;
            if status["namespaces"].as_array().is_some_and(|n| !n.is_empty()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent opened no listener in the container's namespace within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `masker --admin-socket S run --identity bench --`: pgbench runs in a
    /// transient tagged cgroup.
    fn run_wrapper(&self) -> Vec<String> {
        self.run_as("bench")
    }

    /// `masker --admin-socket S run --identity IDENTITY --`.
    pub(crate) fn run_as(&self, identity: &str) -> Vec<String> {
        [self.bin.to_string_lossy().as_ref(), "--admin-socket", &self.admin_socket.to_string_lossy()]
            .into_iter()
            .chain(["run", "--identity", identity, "--"])
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        let _ =
            Command::new(&self.bin).arg("uninstall").arg("--pin-dir").arg(&self.pin_dir).stdout(Stdio::null()).status();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
