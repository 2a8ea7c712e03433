//! `cargo xtask bench relay|cpu|connect|mask|lineage|all [--quick]`: end-to-end
//! benchmarks of masker against real processes, all numbers from one run.
//!
//! A run starts its own throwaway PostgreSQL 15 on 127.0.0.1 (see
//! [`processes`]), builds `masker` in release, starts `masker proxy` (and,
//! for `relay`, pgbouncer) in front of it and drives them with the stock
//! clients (`pgbench`, `psql`). Results are printed as aligned tables with
//! ratios side by side and written as JSON to `target/bench/<name>.json`.
//! Everything started is torn down at the end, also on error.
//!
//! - [`relay`]: pgbench `-S` TPS direct / masker / pgbouncer, and a
//!   2-million-row bulk read with masker's peak RSS.
//! - [`connect`]: connections per second, direct vs through masker.
//! - [`mask`]: a million rows with five personal columns, masked vs
//!   unmasked vs direct.
//! - [`lineage`]: parse-and-trace cost per statement, and pgbench `-S` with
//!   SQL lineage on vs off.
//! - [`cpu`]: the relay's CPU time per transaction (from `/proc`) for masker
//!   without a policy, with a policy (lineage), with policy + audit, and
//!   pgbouncer, and a [`bare`] relay that only copies bytes (the floor);
//!   latency added per round trip at one client.

pub(crate) mod bare;
pub(crate) mod client;
pub(crate) mod connect;
mod container;
mod cpu;
mod lineage;
mod mask;
pub(crate) mod processes;
mod relay;
pub(crate) mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use processes::Cluster;
use report::Table;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark to run.
    #[arg(value_enum)]
    pub which: Which,
    /// Shorter runs (3 s per pgbench run, fewer repetitions): ~3 minutes for `all`.
    #[arg(long)]
    pub quick: bool,
    /// Seconds per pgbench run in `relay` (default 10, 3 with --quick).
    #[arg(long)]
    pub secs: Option<u32>,
    /// Use the existing target/release/masker instead of building it first.
    #[arg(long)]
    pub no_build: bool,
    /// Benchmark this masker binary instead of building target/release/masker.
    #[arg(long, value_name = "PATH", conflicts_with = "no_build")]
    pub masker: Option<PathBuf>,
    /// `cpu`: also measure this other masker binary (e.g. a build of main) in
    /// the same rounds, for a before/after in one run.
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,
    /// `cpu`, `lineage`: rounds per configuration, the median is reported (default 3 for
    /// `cpu`, 5 for `lineage`; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// `cpu`: pgbench client counts (default 1,8,32).
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<u32>>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Relay,
    Connect,
    Mask,
    Lineage,
    Cpu,
    All,
}

/// What every benchmark gets: the cluster, the masker binary and the knobs.
pub struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub masker_bin: PathBuf,
    pub quick: bool,
    /// Seconds per pgbench `-T` run.
    pub secs: u32,
    /// `--baseline`: a second masker binary to compare with.
    pub baseline: Option<PathBuf>,
    /// `--rounds`.
    pub rounds: Option<usize>,
    /// `--clients`.
    pub clients: Option<Vec<u32>>,
}

impl Ctx<'_> {
    /// Repetitions of each timed streaming run (the median is reported).
    pub fn reps(&self) -> usize {
        if self.quick { 3 } else { 5 }
    }
}

/// A finished benchmark: tables to print and the same numbers as JSON.
pub struct Outcome {
    pub tables: Vec<Table>,
    pub json: Value,
}

/// Progress on stderr, so stdout holds only the tables.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub fn run(opts: &Options) -> Result<()> {
    let total = Instant::now();
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let masker_bin = opts.masker.clone().unwrap_or_else(|| target_dir.join("release").join("masker"));
    if !opts.no_build && opts.masker.is_none() {
        progress("cargo build --release -p masker-agent");
        let status = Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "-p", "masker-agent"])
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p masker-agent failed ({status})");
        }
    }
    if !masker_bin.exists() {
        bail!("{} does not exist", masker_bin.display());
    }

    progress("starting a throwaway PostgreSQL 15");
    let cluster = Cluster::start()?;
    let mut machine = report::machine(cluster.bindir(), &root);
    machine["masker_bin"] = json!(ctx_bin_label(&masker_bin, opts));
    println!("{}", report::machine_line(&machine));
    let ctx = Ctx {
        cluster: &cluster,
        masker_bin,
        quick: opts.quick,
        secs: opts.secs.unwrap_or(if opts.quick { 3 } else { 10 }),
        baseline: opts.baseline.clone(),
        rounds: opts.rounds,
        clients: opts.clients.clone(),
    };
    if let Some(b) = &ctx.baseline
        && !b.exists()
    {
        bail!("--baseline {} does not exist", b.display());
    }

    let selected: &[Which] = match opts.which {
        Which::All => &[Which::Relay, Which::Cpu, Which::Connect, Which::Mask, Which::Lineage],
        Which::Relay => &[Which::Relay],
        Which::Cpu => &[Which::Cpu],
        Which::Connect => &[Which::Connect],
        Which::Mask => &[Which::Mask],
        Which::Lineage => &[Which::Lineage],
    };
    let mut failed = Vec::new();
    for &which in selected {
        let (name, bench): (&str, fn(&Ctx) -> Result<Outcome>) = match which {
            Which::Relay => ("relay", relay::run),
            Which::Connect => ("connect", connect::run),
            Which::Mask => ("mask", mask::run),
            Which::Lineage => ("lineage", lineage::run),
            Which::Cpu => ("cpu", cpu::run),
            Which::All => unreachable!("expanded above"),
        };
        let busy = report::cpu_busy_percent(std::time::Duration::from_secs(2));
        if let Some(busy) = busy {
            let warning = if busy > 20.0 { " -- the machine is busy, expect noisy ratios" } else { "" };
            println!("\n{name}: CPU busy with other work before the run: {busy:.0}%{warning}");
        }
        let started = Instant::now();
        match bench(&ctx) {
            Ok(outcome) => {
                let secs = started.elapsed().as_secs_f64();
                for table in &outcome.tables {
                    print!("{}", table.render());
                }
                println!("  ({name} took {secs:.0} s)");
                let json = json!({
                    "bench": name,
                    "quick": opts.quick,
                    "cpu_busy_percent_before": busy.map(|b| b.round()),
                    "duration_secs": (secs * 10.0).round() / 10.0,
                    "unix_time": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    "machine": machine,
                    "results": outcome.json,
                });
                report::write_json(&target_dir.join("bench"), name, &json)?;
            }
            Err(err) => {
                eprintln!("bench: {name} failed: {err:#}");
                failed.push(name);
            }
        }
    }
    drop(cluster);
    println!("\ntotal {:.0} s", total.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The binary under test, marked when it is not this tree's fresh build.
fn ctx_bin_label(bin: &Path, opts: &Options) -> String {
    match (&opts.masker, opts.no_build) {
        (Some(_), _) => format!("{} (given with --masker)", bin.display()),
        (None, true) => format!("{} (not rebuilt: --no-build)", bin.display()),
        (None, false) => bin.display().to_string(),
    }
}

/// The workspace directory (xtask's parent).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
