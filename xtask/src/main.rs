//! Developer tasks: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//! Each command lives in its own module; this file only dispatches.
mod bench;
mod build_ebpf;
mod package;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "masker developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (nightly, bpf-linker) and print its path.
    BuildEbpf(build_ebpf::Options),
    /// Run end-to-end benchmarks (relay, connect, mask) against real processes.
    Bench(bench::Options),
    /// Build the Debian package (cargo-deb) and print the path of the .deb.
    Package(package::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(opts) => build_ebpf::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Package(opts) => package::run(&opts),
    }
}
