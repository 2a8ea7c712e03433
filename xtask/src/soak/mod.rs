//! `cargo xtask soak`: masker under sustained and hostile load through the
//! eBPF path, with its memory and file descriptors watched throughout.
//!
//! A run starts a throwaway PostgreSQL 15 (trust authentication, a
//! `soak_people` table of 10,000 rows with personal columns), builds
//! `masker` in release and starts `masker agent` with the eBPF redirect for
//! the cluster's address, a policy that masks three columns and makes the
//! `soak` identity read-only, and catalog access. The load runs as
//! `xtask soak-client` ([`client`]) under `masker run --identity soak`, so
//! it connects to the server's own address and every connection is
//! redirected. Phases, in order:
//!
//! 1. **bursts**: 20 bursts of N concurrent sessions (connect, a masked
//!    read, close); the agent's RSS after each, settled. Goal: RSS after the
//!    last within 1.5x of after the first (memory returns to the system).
//! 2. **idle**: 10,000 silent TCP connections held; RSS and fds with them
//!    and after they close.
//! 3. **stalled**: 16 sessions each announcing a 60 MiB Query and sending
//!    30 MiB of it; RSS while held (bounded by `memory_budget_mib`), how
//!    many were refused with 53200.
//! 4. **mixed**: N concurrent sessions for `--secs`: masked point reads,
//!    bulk reads (2,000 masked rows), writes the guardrail refuses (42501,
//!    expected), reconnects; errors, p50/p99 latency per kind, RSS sampled
//!    every second. Goal: 0 errors, RSS flat after warm-up (last third
//!    within 1.2x of the first third's peak).
//!
//! At the end the agent's fds must be back to their baseline. Everything is
//! bounded (each phase has a deadline; the default run takes 5-8 minutes
//! on the 2-core machine). Needs root and BPF; results are printed and
//! written to `target/bench/soak.json`.

pub mod client;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::client as pg;
use crate::bench::connect::Agent;
use crate::bench::processes::Cluster;
use crate::bench::report::{self, Table, fmt_num, fmt_ratio, goal};

/// Options of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Options {
    /// Concurrent sessions of each burst and of the mixed workload.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Seconds of the mixed workload.
    #[arg(long, default_value_t = 120)]
    pub secs: u64,
    /// Bursts of `--sessions` sessions.
    #[arg(long, default_value_t = 20)]
    pub bursts: usize,
    /// Silent connections held in the idle phase.
    #[arg(long, default_value_t = 10_000)]
    pub idle: usize,
    /// Sessions stalled in the middle of a large message.
    #[arg(long, default_value_t = 16)]
    pub stalled: usize,
    /// Use the existing target/release/masker instead of building it first.
    #[arg(long)]
    pub no_build: bool,
}

const POLICY: &str = r#"# Policy of `cargo xtask soak`.
version = 1

[defaults]
action = "allow"
comment_classification = false

[[rule]]
name = "email"
columns = ["public.soak_people.email"]
action = "email"

[[rule]]
name = "name"
columns = ["public.soak_people.full_name"]
action = "redact"

[[rule]]
name = "phone"
columns = ["public.soak_people.phone"]
action = "partial"
keep_last = 2

[[identity]]
name = "soak"
read_only = true
"#;

const TABLE_SQL: &str = "
CREATE TABLE soak_people (id int PRIMARY KEY, full_name text, email text, phone text, plan text);
INSERT INTO soak_people
  SELECT g, 'Person ' || g, 'person' || g || '@example.com', '+1 555 ' || lpad(g::text, 7, '0'), 'basic'
    FROM generate_series(1, 10000) g;
ANALYZE soak_people;";

fn progress(msg: impl AsRef<str>) {
    eprintln!("soak: {}", msg.as_ref());
}

/// Resident set size of `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading /proc/<pid>/fd")?.count())
}

/// This process's hard limit of open files (soft limits are raised to it:
/// no privilege needed).
fn hard_nofile() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .context("no open files limit in /proc/self/limits")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Polls until the agent holds at most `baseline` fds (its sessions are
/// gone), then until its RSS stops falling (two readings 0.5 s apart within
/// 1%, at most 10 s): the allocator returns freed memory with a delay. Its
/// RSS and fds then.
fn settle(pid: u32, baseline: usize, limit: Duration) -> Result<(u64, usize)> {
    let deadline = Instant::now() + limit;
    while fds(pid)? > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = rss_kib(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_kib(pid)?;
        if now + now / 100 >= last || Instant::now() > until {
            return Ok((now, fds(pid)?));
        }
        last = now;
    }
}

/// The load generator of one phase, running in the tagged cgroup.
struct Load {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Load {
    fn start(agent: &Agent, cluster: &Cluster, phase: &[&str]) -> Result<Load> {
        let exe = std::env::current_exe().context("the xtask binary")?;
        let wrapper = agent.run_as("soak");
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .args(["prlimit", &format!("--nofile={0}:{0}", hard_nofile()?), "--"])
            .arg(exe)
            .arg("soak-client")
            .args(phase)
            .args(["--addr", &cluster.addr().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the soak client under masker run")?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Load { child, stdin, lines })
    }

    /// The next `HOLD` (`Some(what)`) or the result (`None` with it stored).
    fn next(&mut self) -> Result<Step> {
        for line in self.lines.by_ref() {
            let line = line?;
            if let Some(what) = line.strip_prefix("HOLD ") {
                return Ok(Step::Hold(what.to_string()));
            }
            if let Some(result) = line.strip_prefix("RESULT ") {
                let value: Value = serde_json::from_str(result).context("the soak client's result")?;
                let status = self.child.wait()?;
                if !status.success() {
                    bail!("the soak client failed ({status})");
                }
                return Ok(Step::Done(value));
            }
        }
        let status = self.child.wait()?;
        bail!("the soak client ended without a result ({status})")
    }

    fn release(&mut self) -> Result<()> {
        writeln!(self.stdin)?;
        self.stdin.flush()?;
        Ok(())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

enum Step {
    Hold(String),
    Done(Value),
}

/// Samples the agent's RSS every second while alive.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    out.lock().unwrap().push((started.elapsed().as_secs_f64(), kib));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler { stop, samples, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let total = Instant::now();
    let root = crate::bench::workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let masker_bin = target_dir.join("release").join("masker");
    if !opts.no_build {
        progress("cargo build --release -p masker-agent");
        let status =
            Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "masker-agent"]).status()?;
        if !status.success() {
            bail!("cargo build --release -p masker-agent failed ({status})");
        }
    }
    progress("starting a throwaway PostgreSQL 15");
    let cluster = Cluster::start_configured(&format!(
        "max_connections = {}\nshared_buffers = 256MB\n",
        opts.sessions + opts.stalled + 100
    ))?;
    pg::run(pg::psql(cluster.bindir(), cluster.addr(), TABLE_SQL), Duration::from_secs(120))
        .context("creating soak_people")?;
    let policy = cluster.work().path().join("soak-policy.toml");
    std::fs::write(&policy, POLICY)?;
    let extra = format!("policy = {:?}\n\n[catalog]\nuser = \"postgres\"\n", policy.display().to_string());
    let agent =
        Agent::start_with(&masker_bin, &cluster, &[], &extra).context("starting masker agent (needs root and BPF)")?;
    let pid = agent.pid();
    let nofile = hard_nofile()?;
    let out =
        Command::new("prlimit").arg(format!("--nofile={nofile}:{nofile}")).arg(format!("--pid={pid}")).output()?;
    if !out.status.success() {
        bail!("prlimit on the agent: {}", String::from_utf8_lossy(&out.stderr));
    }
    if nofile < (opts.idle + opts.sessions + 1000) as u64 {
        bail!("the open files limit ({nofile}) is too low for --idle {} and --sessions {}", opts.idle, opts.sessions);
    }
    let machine = report::machine(cluster.bindir(), &root);
    println!("{}", report::machine_line(&machine));

    // Warm-up: the catalog connection and caches exist from here on.
    progress("warm-up");
    let mut load = Load::start(&agent, &cluster, &["mixed", "--sessions", "20", "--secs", "3"])?;
    let warm = match load.next()? {
        Step::Done(v) => v,
        Step::Hold(w) => bail!("unexpected hold {w}"),
    };
    drop(load);
    if warm["errors"].as_u64() != Some(0) {
        bail!("warm-up errors: {warm}");
    }
    let (rss_start, baseline) = settle(pid, usize::MAX, Duration::ZERO)?;
    let baseline = baseline.max(fds(pid)?);
    progress(format!("baseline: RSS {:.1} MiB, {baseline} fds", mib(rss_start)));
    let settle_limit = Duration::from_secs(60);

    // 1. Bursts.
    let sessions = opts.sessions.to_string();
    let bursts = opts.bursts.to_string();
    let mut load = Load::start(&agent, &cluster, &["bursts", "--sessions", &sessions, "--bursts", &bursts])?;
    let mut after_burst = Vec::new();
    let bursts_result = loop {
        match load.next()? {
            Step::Hold(what) => {
                let (rss, _) = settle(pid, baseline, settle_limit)?;
                progress(format!("{what}: RSS {:.1} MiB", mib(rss)));
                after_burst.push(rss);
                load.release()?;
            }
            Step::Done(v) => break v,
        }
    };
    drop(load);

    // 2. Idle connections.
    let idle = opts.idle.to_string();
    let mut load = Load::start(&agent, &cluster, &["idle", "--conns", &idle])?;
    let (idle_rss, idle_fds) = match load.next()? {
        Step::Hold(what) => {
            // Let the agent accept them all (each is one fd there).
            let deadline = Instant::now() + Duration::from_secs(60);
            while fds(pid)? < baseline + opts.idle * 9 / 10 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(1));
            let m = (rss_kib(pid)?, fds(pid)?);
            progress(format!("{what}: RSS {:.1} MiB, {} fds", mib(m.0), m.1));
            load.release()?;
            m
        }
        Step::Done(v) => bail!("idle phase ended early: {v}"),
    };
    let idle_result = match load.next()? {
        Step::Done(v) => v,
        Step::Hold(w) => bail!("unexpected hold {w}"),
    };
    drop(load);
    let (idle_after, _) = settle(pid, baseline, settle_limit)?;

    // 3. Stalled large messages.
    let stalled = opts.stalled.to_string();
    let mut load =
        Load::start(&agent, &cluster, &["stalled", "--clients", &stalled, "--announce-mib", "60", "--send-mib", "30"])?;
    let (stalled_rss, stalled_status) = match load.next()? {
        Step::Hold(what) => {
            std::thread::sleep(Duration::from_secs(1));
            let rss = rss_kib(pid)?;
            let status = agent.status()?;
            progress(format!("{what}: RSS {:.1} MiB", mib(rss)));
            load.release()?;
            (rss, status["memory"].clone())
        }
        Step::Done(v) => bail!("stalled phase ended early: {v}"),
    };
    let stalled_result = match load.next()? {
        Step::Done(v) => v,
        Step::Hold(w) => bail!("unexpected hold {w}"),
    };
    drop(load);
    let (stalled_after, _) = settle(pid, baseline, settle_limit)?;

    // 4. Mixed workload.
    let secs = opts.secs.to_string();
    progress(format!("mixed: {} sessions for {} s", opts.sessions, opts.secs));
    let sampler = Sampler::start(pid);
    let mut load = Load::start(&agent, &cluster, &["mixed", "--sessions", &sessions, "--secs", &secs])?;
    let mixed = match load.next()? {
        Step::Done(v) => v,
        Step::Hold(w) => bail!("unexpected hold {w}"),
    };
    drop(load);
    let series = sampler.finish();
    let (rss_end, fds_end) = settle(pid, baseline, settle_limit)?;
    drop(agent);
    drop(cluster);

    // Report.
    let first = after_burst.first().copied();
    let last = after_burst.last().copied();
    let burst_ratio = first.zip(last).map(|(f, l)| l as f64 / f as f64);
    let mut t =
        Table::new("soak: memory and descriptors of masker agent (eBPF path)", &["measurement", "value", "goal"]);
    t.row(vec!["RSS at start (after warm-up)".into(), format!("{:.1} MiB", mib(rss_start)), String::new()]);
    t.row(vec![
        format!("RSS after burst 1 / {} of {} sessions", opts.bursts, opts.sessions),
        format!("{:.1} / {:.1} MiB", mib(first.unwrap_or(0)), mib(last.unwrap_or(0))),
        String::new(),
    ]);
    t.row(vec!["  ratio last / first".into(), fmt_ratio(burst_ratio), goal(burst_ratio, |r| r <= 1.5)]);
    t.row(vec![
        format!("{} silent connections: RSS, fds", opts.idle),
        format!("{:.1} MiB, {idle_fds}", mib(idle_rss)),
        String::new(),
    ]);
    t.row(vec!["  RSS after they closed".into(), format!("{:.1} MiB", mib(idle_after)), String::new()]);
    t.row(vec![
        format!("{} stalled 60 MiB messages (30 MiB sent): RSS", opts.stalled),
        format!("{:.1} MiB", mib(stalled_rss)),
        "bounded by the budget".into(),
    ]);
    t.row(vec![
        "  held / refused (53200)".into(),
        format!("{} / {}", stalled_result["held"], stalled_result["refused"].as_array().map_or(0, Vec::len)),
        String::new(),
    ]);
    t.row(vec!["  RSS after they closed".into(), format!("{:.1} MiB", mib(stalled_after)), String::new()]);
    t.row(vec!["RSS at the end".into(), format!("{:.1} MiB", mib(rss_end)), String::new()]);
    let fds_ok = fds_end <= baseline;
    t.row(vec![
        "fds at the end / baseline".into(),
        format!("{fds_end} / {baseline}"),
        (if fds_ok { "ok" } else { "MISSED" }).into(),
    ]);
    t.note(
        "RSS after a burst or phase: read once the agent's fds are back to the baseline and its RSS stopped falling",
    );

    let mut w = Table::new(
        format!("soak: mixed workload, {} concurrent sessions for {} s (eBPF path)", opts.sessions, opts.secs),
        &["operation", "ops", "p50 ms", "p99 ms"],
    );
    for kind in client::KINDS_FOR_REPORT {
        let k = &mixed["by_kind"][kind];
        w.row(vec![
            kind.into(),
            k["ops"].to_string(),
            fmt_num(k["p50_ms"].as_f64(), 2),
            fmt_num(k["p99_ms"].as_f64(), 2),
        ]);
    }
    w.row(vec![
        "all".into(),
        mixed["ops"].to_string(),
        fmt_num(mixed["p50_ms"].as_f64(), 2),
        fmt_num(mixed["p99_ms"].as_f64(), 2),
    ]);
    let errors = mixed["errors"].as_u64().unwrap_or(u64::MAX) + bursts_result["errors"].as_u64().unwrap_or(u64::MAX);
    w.note(format!(
        "errors: {} in the mixed workload, {} in the bursts (goal 0){}",
        mixed["errors"],
        bursts_result["errors"],
        mixed["first_error"]
            .as_str()
            .or(bursts_result["first_error"].as_str())
            .map(|e| format!("; first: {e}"))
            .unwrap_or_default()
    ));
    // RSS flat after warm-up: the last third of the samples against the
    // peak of the first third.
    let n = series.len();
    let flat = (n >= 6).then(|| {
        let first_peak = series[..n / 3].iter().map(|s| s.1).max().unwrap_or(0);
        let last_peak = series[2 * n / 3..].iter().map(|s| s.1).max().unwrap_or(0);
        (first_peak, last_peak, last_peak as f64 / first_peak.max(1) as f64)
    });
    if let Some((a, b, r)) = flat {
        w.note(format!(
            "RSS during the run: peak {:.1} MiB in the first third, {:.1} MiB in the last ({:.2}x; goal <= 1.2x: {})",
            mib(a),
            mib(b),
            r,
            if r <= 1.2 { "ok" } else { "MISSED" }
        ));
    }
    w.note("refused_write = an UPDATE the read-only guardrail answers with 42501 (expected, not an error)");
    print!("{}", t.render());
    print!("{}", w.render());
    println!("\ntotal {:.0} s", total.elapsed().as_secs_f64());
    let json = json!({
        "bench": "soak",
        "machine": machine,
        "options": { "sessions": opts.sessions, "secs": opts.secs, "bursts": opts.bursts, "idle": opts.idle, "stalled": opts.stalled },
        "rss_kib": {
            "start": rss_start, "after_burst": after_burst, "burst_ratio": burst_ratio,
            "idle_held": idle_rss, "idle_after": idle_after,
            "stalled_held": stalled_rss, "stalled_after": stalled_after, "end": rss_end,
            "mixed_series": series,
        },
        "fds": { "baseline": baseline, "idle_held": idle_fds, "end": fds_end },
        "bursts": bursts_result,
        "idle": idle_result,
        "stalled": stalled_result,
        "stalled_memory_status": stalled_status,
        "mixed": mixed,
        "duration_secs": total.elapsed().as_secs(),
    });
    report::write_json(&target_dir.join("bench"), "soak", &json)?;
    if errors > 0 || !fds_ok {
        bail!("soak: {errors} errors, fds {fds_end} (baseline {baseline})");
    }
    Ok(())
}
