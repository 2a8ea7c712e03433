//! Developer tasks: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//! Each command lives in its own module; this file only dispatches.
mod bench;
mod build_ebpf;
mod fuzz;
mod package;
mod soak;

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
    /// Soak masker agent through the eBPF path: bursts, 10,000 idle and 16
    /// stalled connections, then a mixed workload; RSS, fds, errors, latency.
    Soak(soak::Options),
    /// The load of `soak`, run by it in a tagged cgroup (not for direct use).
    #[command(hide = true)]
    SoakClient(soak::client::Options),
    /// Run the cargo-fuzz targets of fuzz/ (nightly, cargo-fuzz), each for
    /// --seconds, from the committed seeds.
    Fuzz(fuzz::Options),
    /// The byte-copying relay `bench cpu` measures as the floor (not for
    /// direct use).
    #[command(hide = true)]
    BareRelay(bench::bare::Options),
    /// Build the Debian package (cargo-deb) and print the path of the .deb.
    Package(package::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(opts) => build_ebpf::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Soak(opts) => soak::run(&opts),
        Command::SoakClient(opts) => soak::client::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Package(opts) => package::run(&opts),
        Command::BareRelay(opts) => bench::bare::run(&opts),
    }
}
