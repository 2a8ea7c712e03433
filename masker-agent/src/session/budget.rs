//! Memory that partial messages may hold.
//!
//! The relay streams what it need not inspect, so most messages never sit
//! in memory whole. A message a filter must see whole (a client's Query or
//! Parse, a server's DataRow when masking) is buffered until its last byte
//! arrives: a peer that announces a large message and sends it slowly, or
//! not at all, holds that memory. Each such message is charged, at its
//! announced length, against a per-session cap and a daemon-wide budget
//! before it is buffered; a message that does not fit ends its session with
//! SQLSTATE 53200 and leaves every other session as it was.
//!
//! The charge is the announced length, not the bytes received so far: the
//! receive buffer is sized for the whole message when its header arrives,
//! and a peer that announces 60 MiB must not be able to grow into it slowly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::daemon::registry::SessionEntry;

/// The daemon-wide budget for partial messages.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    session_cap: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes for all sessions and `session_cap` bytes
    /// for any one.
    pub fn new(limit: usize, session_cap: usize) -> MemoryBudget {
        MemoryBudget { limit, session_cap, used: AtomicUsize::new(0), refused: AtomicU64::new(0) }
    }

    /// Bytes charged now, all sessions together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The daemon-wide limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The per-session cap, bytes.
    pub fn session_cap(&self) -> usize {
        self.session_cap
    }

    /// Sessions ended because a message of theirs did not fit.
    pub fn refused_sessions(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if the total stays within the limit.
    fn take(&self, bytes: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .map(|_| ())
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a partial message may not be buffered. The numbers are sizes, never
/// content.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BudgetError {
    /// The session would hold more than its cap.
    #[error(
        "a message of {wanted} bytes would take this session's partial messages past its cap of {cap} bytes \
         (session_buffer_mib)"
    )]
    Session { wanted: usize, cap: usize },
    /// All sessions together would hold more than the budget.
    #[error(
        "a message of {wanted} bytes does not fit in masker's memory budget for partial messages ({used} of \
         {limit} bytes in use by all sessions; memory_budget_mib)"
    )]
    Global { wanted: usize, used: usize, limit: usize },
}

/// One session's account: what its partial messages hold shows in its
/// registry entry (`masker sessions`), and is charged to the daemon's
/// budget.
#[derive(Clone)]
pub struct SessionBudget {
    budget: Arc<MemoryBudget>,
    entry: Arc<SessionEntry>,
}

impl SessionBudget {
    /// The account of the session `entry` in `budget`.
    pub fn new(budget: Arc<MemoryBudget>, entry: Arc<SessionEntry>) -> SessionBudget {
        SessionBudget { budget, entry }
    }

    /// Charges `bytes` to the session and the daemon; released when the
    /// [`Reservation`] is dropped. A refusal is counted once per call (the
    /// session ends on it).
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, BudgetError> {
        let held = &self.entry.counters.buffered_bytes;
        let refuse = |e| {
            self.budget.refused.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        // Both directions of a session may charge at once: add first, then
        // check, so that together they never pass the cap.
        let mine = held.fetch_add(bytes as u64, Ordering::AcqRel) as usize;
        if mine.saturating_add(bytes) > self.budget.session_cap {
            held.fetch_sub(bytes as u64, Ordering::AcqRel);
            return refuse(BudgetError::Session { wanted: bytes, cap: self.budget.session_cap });
        }
        if let Err(used) = self.budget.take(bytes) {
            held.fetch_sub(bytes as u64, Ordering::AcqRel);
            return refuse(BudgetError::Global { wanted: bytes, used, limit: self.budget.limit });
        }
        Ok(Reservation { account: self.clone(), bytes })
    }
}

/// Bytes charged for one partial message; given back when dropped.
pub struct Reservation {
    account: SessionBudget,
    bytes: usize,
}

impl Reservation {
    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.account.budget.give_back(self.bytes);
        self.account.entry.counters.buffered_bytes.fetch_sub(self.bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::registry::{Registry, SessionOrigin};

    fn session(registry: &Arc<Registry>) -> crate::daemon::registry::SessionGuard {
        registry.open(SessionOrigin {
            netns: None,
            identity: None,
            verified: None,
            client: "127.0.0.1:1".parse().unwrap(),
            destination: None,
            cgroup_id: None,
            pid: None,
        })
    }

    #[test]
    fn charges_are_capped_per_session_and_overall_and_given_back() {
        let registry = Arc::new(Registry::default());
        let budget = Arc::new(MemoryBudget::new(100, 60));
        let (a, b) = (session(&registry), session(&registry));
        let (a, b) =
            (SessionBudget::new(budget.clone(), a.entry.clone()), SessionBudget::new(budget.clone(), b.entry.clone()));
        let first = a.reserve(50).unwrap();
        assert!(matches!(a.reserve(20), Err(BudgetError::Session { wanted: 20, cap: 60 })));
        let second = b.reserve(50).unwrap();
        assert!(matches!(b.reserve(1), Err(BudgetError::Global { wanted: 1, used: 100, limit: 100 })));
        assert_eq!((budget.used(), budget.refused_sessions()), (100, 2));
        assert_eq!(a.entry.counters.buffered_bytes.load(Ordering::Relaxed), 50);
        drop(first);
        assert_eq!(budget.used(), 50);
        assert_eq!(a.entry.counters.buffered_bytes.load(Ordering::Relaxed), 0);
        let again = a.reserve(50).unwrap();
        assert_eq!(again.bytes(), 50);
        drop((again, second));
        assert_eq!(budget.used(), 0);
    }
}
