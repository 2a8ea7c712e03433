//! `cargo xtask build-ebpf`: builds `masker-ebpf` for `bpfel-unknown-none`.
//!
//! The same command runs from `masker-agent/build.rs`, which embeds the
//! object in the `masker` binary; this task exists to build and inspect the
//! object on its own (e.g. with `llvm-objdump` or `bpftool prog load`).
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask build-ebpf`.
#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile (both profiles are optimised: the
    /// verifier needs it).
    #[arg(long)]
    pub release: bool,
}

/// The eBPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";

/// Builds the object and prints its path.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = crate::bench::workspace_root();
    let target_dir = root.join("target").join("ebpf");
    let profile = if opts.release { "release" } else { "debug" };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("masker-ebpf"))
        .args(["+nightly", "build", "--target", TARGET, "-Z", "build-std=core", "--bins"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    if opts.release {
        cmd.arg("--release");
    }
    if let Some(path) = path_with_cargo_bin() {
        cmd.env("PATH", path);
    }
    let status = cmd.status().context("running `cargo +nightly` (is rustup installed?)")?;
    if !status.success() {
        bail!(
            "building the eBPF object failed ({status}). It needs the nightly toolchain with rust-src \
             and bpf-linker: run `bash scripts/setup.sh`."
        );
    }
    let object = target_dir.join(TARGET).join(profile).join("masker");
    println!("{}", object.display());
    Ok(())
}

/// `PATH` with `~/.cargo/bin` (where setup.sh installs bpf-linker) appended.
pub(crate) fn path_with_cargo_bin() -> Option<std::ffi::OsString> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let mut paths: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    paths.push(cargo_home.join("bin"));
    std::env::join_paths(paths).ok()
}
