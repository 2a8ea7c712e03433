use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the agent is a long-running network
/// daemon whose memory use comes in bursts (many sessions at once), and
/// glibc's per-thread arenas keep what a burst freed; mimalloc returns freed
/// pages to the system (measured by `cargo xtask soak`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    masker_agent::cli::main()
}
