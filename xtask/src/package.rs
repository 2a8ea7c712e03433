//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `masker-agent/Cargo.toml`.
//!
//! cargo-deb runs `cargo build --release -p masker-agent` (whose build
//! script builds the eBPF object, so a fresh clone with the toolchain from
//! `scripts/setup.sh` is enough), strips the binary and writes
//! `target/debian/masker_<version>-1_<arch>.deb`: `/usr/bin/masker`, the
//! `masker-agent` systemd unit (installed, not enabled), `/etc/masker/agent.toml`
//! and `/etc/masker/policy.toml` as conffiles, the example policy, the
//! Prometheus alerts and the Grafana dashboard under `/usr/share`.
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The cargo-deb version `scripts/setup.sh` installs (and this task expects).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Options of `cargo xtask package`.
#[derive(clap::Args)]
pub struct Options {
    /// Directory for the .deb (default: target/debian).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Builds the package and prints the path of the .deb.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = crate::bench::workspace_root();
    let version = Command::new("cargo")
        .args(["deb", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match version {
        None => {
            bail!("cargo-deb is not installed: run `bash scripts/setup.sh` (it installs cargo-deb {CARGO_DEB_VERSION})")
        }
        Some(v) if !v.ends_with(CARGO_DEB_VERSION) => {
            eprintln!("warning: {v} found; scripts/setup.sh pins cargo-deb {CARGO_DEB_VERSION}");
        }
        Some(_) => {}
    }
    let output = opts.output.clone().unwrap_or_else(|| root.join("target").join("debian"));
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let out = Command::new("cargo")
        .current_dir(&root)
        // The release profile keeps line tables for benchmarks' profiles;
        // the package ships a stripped binary.
        .args(["deb", "-p", "masker-agent", "--strip", "--output"])
        .arg(&output)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout.lines().rev().find(|l| l.trim_end().ends_with(".deb")).map(str::trim);
    match deb {
        Some(path) => println!("{path}"),
        None => bail!("cargo deb did not say which package it wrote:\n{stdout}"),
    }
    Ok(())
}
