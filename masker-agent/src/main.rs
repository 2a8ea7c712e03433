use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the agent is a long-running network
/// daemon whose memory use comes in bursts (many sessions at once), and
/// glibc's per-thread arenas keep what a burst freed; mimalloc returns freed
/// pages to the system (measured by `cargo xtask soak`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's C API (the static library the `mimalloc` crate links).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() -> ExitCode {
    // Freed pages are given back at once rather than after mimalloc's
    // default delay of a second: a delayed purge runs only when the thread
    // that freed calls the allocator again, and an agent that goes quiet
    // after a burst (10,000 connections closing) would otherwise keep that
    // memory. `MIMALLOC_PURGE_DELAY` in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator; no pointer is
        // passed, and it runs before any other thread exists.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    masker_agent::cli::main()
}
