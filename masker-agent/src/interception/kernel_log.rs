//! The programs' own account of what they decided for tagged cgroups
//! (redirected to which namespace's listener, refused because that namespace
//! has none, refused by the egress lock, let through as not a target),
//! written with aya-log into a ring buffer and forwarded here into the
//! agent's `tracing` at debug level, target `masker::kernel`:
//!
//! ```text
//! MASKER_LOG=info,masker::kernel=debug masker agent --config /etc/masker/agent.toml
//! ```
//!
//! The records carry cgroup ids, addresses, ports and namespace cookies,
//! never data. When the agent does not log at debug level, the programs are
//! loaded with aya-log's level set below debug and write nothing.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aya::Ebpf;
use aya_log::EbpfLogger;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// The global in the eBPF object that holds aya-log's level.
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// The `tracing` target of forwarded records.
pub const TARGET: &str = "masker::kernel";

/// aya-log's level for the programs: debug when the agent's subscriber wants
/// debug events from [`TARGET`], else info (the programs log nothing above
/// debug, so that silences them).
pub fn level_for_programs() -> u8 {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        aya_log::Level::Info as u8
    }
}

/// Forwards `log` records from aya-log into `tracing`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        match record.level() {
            log::Level::Error | log::Level::Warn => tracing::warn!(target: TARGET, "{}", record.args()),
            log::Level::Info => tracing::info!(target: TARGET, "{}", record.args()),
            log::Level::Debug | log::Level::Trace => tracing::debug!(target: TARGET, "{}", record.args()),
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log ring buffer.
pub struct KernelLog {
    logger: EbpfLogger<ToTracing>,
}

impl KernelLog {
    /// Takes the log map out of the loaded object.
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        Ok(Self { logger: EbpfLogger::init_with_logger(ebpf, ToTracing)? })
    }

    /// Forwards records as they arrive on a thread of its own, until the
    /// returned guard is dropped.
    pub fn forward(mut self) -> std::io::Result<Forwarding> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new().name("masker-kernel-log".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(&self.logger, PollFlags::IN)];
                // A timeout so that the thread notices the stop flag.
                match poll(&mut fds, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })) {
                    Ok(0) => continue,
                    Ok(_) => self.logger.flush(),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        tracing::warn!("kernel log: {e}; no more kernel-side records");
                        return;
                    }
                }
            }
        })?;
        Ok(Forwarding { stop })
    }
}

/// Stops the forwarding thread when dropped.
pub struct Forwarding {
    stop: Arc<AtomicBool>,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
