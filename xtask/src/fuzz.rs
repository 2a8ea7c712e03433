//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` one after the
//! other, each for a time, from the committed seeds (`fuzz/seeds/<target>`)
//! and the local corpus (`fuzz/corpus/<target>`, not committed), and prints
//! what each run did.
//!
//! Needs the nightly toolchain and cargo-fuzz (`scripts/setup.sh` installs
//! both). A crash stops the run with a non-zero exit; its input is in
//! `fuzz/artifacts/<target>/` and replays with
//! `cargo +nightly fuzz run <target> <file>`. A crash's input becomes a
//! seed and a unit test next to the code it broke.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &[
    "startup",
    "frontend",
    "backend",
    "cell",
    "copy",
    "policy",
    "agent_config",
    "sql",
    "plpgsql",
    "definition",
    "token",
];

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Options {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Only replay the committed seeds, once each (no fuzzing).
    #[arg(long)]
    pub replay: bool,
}

/// What one target's run did, from libFuzzer's final statistics.
struct Report {
    target: String,
    seconds: f64,
    execs: u64,
    corpus: usize,
}

/// Builds the targets, runs each and prints a table.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = crate::bench::workspace_root();
    let targets: Vec<String> =
        if opts.targets.is_empty() { TARGETS.iter().map(|t| t.to_string()).collect() } else { opts.targets.clone() };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}; the targets are {}", TARGETS.join(", "));
        }
    }
    let status = cargo_fuzz(&root).arg("build").status().context("running `cargo +nightly fuzz build`")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status}); `bash scripts/setup.sh` installs nightly and cargo-fuzz");
    }
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(run_target(&root, target, opts)?);
    }
    println!("\n{:<14} {:>9} {:>14} {:>12} {:>8}", "target", "seconds", "executions", "exec/s", "corpus");
    for r in &reports {
        let rate = if r.seconds > 0.0 { r.execs as f64 / r.seconds } else { 0.0 };
        println!("{:<14} {:>9.0} {:>14} {:>12.0} {:>8}", r.target, r.seconds, r.execs, rate, r.corpus);
    }
    println!("0 crashes");
    Ok(())
}

fn run_target(root: &Path, target: &str, opts: &Options) -> anyhow::Result<Report> {
    let seeds = root.join("fuzz/seeds").join(target);
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", target]);
    if opts.replay {
        // Each seed once, as a regression run.
        cmd.arg(&seeds).args(["--", "-runs=0"]);
    } else {
        cmd.arg(&corpus).arg(&seeds).arg("--").arg(format!("-max_total_time={}", opts.seconds));
    }
    // A slow input (a hang) is a crash too; keep inputs near what a peer
    // sends in one message.
    cmd.args(["-timeout=10", "-rss_limit_mb=3072", "-max_len=65536", "-print_final_stats=1"]);
    eprintln!("==> fuzz {target} ({})", if opts.replay { "replay".to_string() } else { format!("{} s", opts.seconds) });
    let started = Instant::now();
    let output = cmd.stderr(Stdio::piped()).output().with_context(|| format!("running fuzz target {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&output.stderr);
    let log_path = root.join("fuzz/artifacts").join(format!("{target}.log"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&log_path, log.as_bytes())?;
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzz target {target} failed ({}); the log is {} and the input in fuzz/artifacts/{target}/",
            output.status,
            log_path.display()
        );
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let corpus_files = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    Ok(Report { target: target.to_string(), seconds, execs: stat("number_of_executed_units"), corpus: corpus_files })
}

/// `cargo +nightly fuzz` in the workspace root, with the environment of
/// the outer `cargo xtask` (its toolchain, its flags, the `CARGO_*`
/// variables `cargo run` sets) removed: build scripts that watch them
/// would otherwise rebuild everything on each run.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["+nightly", "fuzz"]);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let outer = name.starts_with("CARGO") && name != "CARGO_HOME";
        if outer || matches!(&*name, "RUSTUP_TOOLCHAIN" | "RUSTC" | "RUSTC_WRAPPER" | "RUSTFLAGS" | "RUSTDOC") {
            cmd.env_remove(&*name);
        }
    }
    if let Some(path) = crate::build_ebpf::path_with_cargo_bin() {
        cmd.env("PATH", path);
    }
    cmd
}
