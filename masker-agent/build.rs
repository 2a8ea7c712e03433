//! Builds the eBPF object (`masker-ebpf`) and hands its path to the crate as
//! `MASKER_EBPF_OBJECT`, so `interception` embeds it with
//! `include_bytes_aligned!` and `masker` is the only file to install.
//!
//! Runs the same command as `cargo xtask build-ebpf --release`: nightly cargo,
//! `-Z build-std=core`, `bpf-linker`, in its own target directory
//! (`target/ebpf`) so it never waits on the outer build's lock. Everything the
//! outer cargo exported for build scripts (`RUSTFLAGS`, `CARGO_*`, `TARGET`,
//! ...) is removed first: it describes the host build, not the BPF one.
//!
//! Set `MASKER_EBPF_OBJECT=/path/to/object` to embed a prebuilt object instead
//! (e.g. where nightly or bpf-linker are not installed).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    println!("cargo:rerun-if-env-changed=MASKER_EBPF_OBJECT");
    if let Some(prebuilt) = env::var_os("MASKER_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        println!("cargo:rustc-env=MASKER_EBPF_OBJECT={}", prebuilt.display());
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("masker-agent lives in the workspace").to_path_buf();
    for watched in ["masker-ebpf/src", "masker-ebpf/Cargo.toml", "masker-ebpf/Cargo.lock", "masker-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("masker-common/Cargo.toml").display());

    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(rustup_cargo());
    cmd.current_dir(root.join("masker-ebpf")).args([
        "+nightly",
        "build",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
        "--bins",
    ]);
    clean_env(&mut cmd);
    cmd.env("CARGO_TARGET_DIR", &target_dir).env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    if let Some(path) = path_with_cargo_bin() {
        cmd.env("PATH", path);
    }

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => fail(&format!("could not run `cargo +nightly` ({e})")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Show the nested build's diagnostics in the outer build's output.
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        fail(&format!("the eBPF build failed ({})", output.status));
    }
    let object = target_dir.join(TARGET).join("release").join("masker");
    if !object.is_file() {
        fail(&format!("the eBPF build succeeded but {} is missing", object.display()));
    }
    println!("cargo:rustc-env=MASKER_EBPF_OBJECT={}", object.display());
}

fn fail(what: &str) -> ! {
    panic!(
        "{what}.\nBuilding masker needs the nightly toolchain with rust-src and bpf-linker: run \
         `bash scripts/setup.sh`, or set MASKER_EBPF_OBJECT to a prebuilt object \
         (`cargo xtask build-ebpf --release` prints its path)."
    );
}

/// The rustup proxy `cargo` (understands `+nightly`), not `$CARGO`, which is
/// the stable toolchain's own binary.
fn rustup_cargo() -> PathBuf {
    cargo_home().map(|h| h.join("bin").join("cargo")).filter(|p| p.is_file()).unwrap_or_else(|| "cargo".into())
}

/// Removes what the outer cargo exported for build scripts and rustc.
fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let inherited_from_cargo = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || (key.starts_with("RUST") && key != "RUSTUP_HOME")
            || matches!(
                key,
                "TARGET" | "HOST" | "PROFILE" | "OPT_LEVEL" | "DEBUG" | "NUM_JOBS" | "OUT_DIR" | "MAKEFLAGS" | "MFLAGS"
            );
        if inherited_from_cargo {
            cmd.env_remove(key);
        }
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// `PATH` with `$CARGO_HOME/bin` (where setup.sh installs bpf-linker) appended.
fn path_with_cargo_bin() -> Option<std::ffi::OsString> {
    let mut paths: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    paths.push(cargo_home()?.join("bin"));
    env::join_paths(paths).ok()
}
