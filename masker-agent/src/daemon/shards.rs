//! The threads sessions run on: one single-threaded tokio runtime per CPU,
//! each owning its sessions from start to end.
//!
//! A session is one task that relays both directions; on a work-stealing
//! runtime every readiness event could wake a second worker to look for
//! work (a futex wake-up and a context switch that find nothing), and a
//! session's task could move between threads. Pinned to one single-threaded
//! runtime, a session's wake-ups stay on the thread that polls its sockets:
//! the relay costs the read, write and `epoll_wait` calls and little else,
//! and several sessions of one thread share each `epoll_wait`.
//!
//! The accept loops stay on the daemon's main runtime; each accepted socket
//! is handed to the shard with the fewest live sessions (deregistered from
//! the main runtime's reactor and registered with the shard's). Everything
//! sessions share (the catalog, the audit writer, approvals, the registry)
//! is runtime-agnostic: tokio's synchronisation types, std threads, atomics.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::{Builder, Handle};
use tracing::warn;

/// Most session threads started, whatever the CPU count.
const MAX_SHARDS: usize = 64;

/// One session thread: its runtime and how many sessions it runs now.
struct Shard {
    handle: Handle,
    live: Arc<AtomicUsize>,
}

/// The session threads of this process.
pub struct Shards {
    shards: Vec<Shard>,
}

/// Decrements a shard's live count when its session task ends (or is
/// dropped with its runtime).
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// `count` session threads, each running a single-threaded runtime
    /// (with I/O and timers) until the process exits. A thread that cannot
    /// be started is left out (logged); `None` when none could.
    fn start(count: usize) -> Option<Shards> {
        let mut shards = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = match Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("cannot build session runtime {i}: {e}");
                    continue;
                }
            };
            let handle = runtime.handle().clone();
            let spawned = std::thread::Builder::new()
                .name(format!("masker-session-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()));
            match spawned {
                Ok(_) => shards.push(Shard { handle, live: Arc::new(AtomicUsize::new(0)) }),
                Err(e) => warn!("cannot start session thread {i}: {e}"),
            }
        }
        (!shards.is_empty()).then_some(Shards { shards })
    }

    /// The session threads of this process, started on first use: one per
    /// CPU the process may run on. `None` when no thread could be started
    /// (sessions then run on the caller's runtime).
    pub fn global() -> Option<&'static Shards> {
        static SHARDS: OnceLock<Option<Shards>> = OnceLock::new();
        SHARDS
            .get_or_init(|| {
                let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                let n = std::env::var("MASKER_SESSION_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(cpus);
                // 0: sessions run on the daemon's own runtime.
                (n > 0).then(|| Shards::start(n.min(MAX_SHARDS))).flatten()
            })
            .as_ref()
    }

    /// Runs `session` on the thread with the fewest live sessions (the
    /// first of them on a tie). `session` is created on that thread, so the
    /// sockets it registers belong to that thread's reactor.
    pub fn spawn<F, Fut>(&self, session: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(shard) = self.shards.iter().min_by_key(|s| s.live.load(Ordering::Relaxed)) else {
            return;
        };
        shard.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(shard.live.clone());
        shard.handle.spawn(async move {
            let _live = live;
            session().await;
        });
    }
}
