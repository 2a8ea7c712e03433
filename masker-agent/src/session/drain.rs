//! How sessions end when the daemon stops, and what that needs to know.
//!
//! On SIGTERM the daemon stops accepting and [`Shutdown::begin`]s a drain
//! with a deadline. A session whose statements are all answered ends at
//! once; one with a statement running ends as soon as it is answered, or at
//! the deadline, whichever comes first. Either way its client gets a FATAL
//! `57P01` (`admin_shutdown`), as PostgreSQL's own fast shutdown does, when
//! the relay is at a message boundary towards it.
//!
//! [`Activity`] is what the relay learns from the message tags it frames
//! anyway: requests that expect a ReadyForQuery (Query, Sync, FunctionCall,
//! and the login itself) and the ReadyForQuery messages answering them. It
//! also tells when the login completed (the first ReadyForQuery), for the
//! authentication timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, watch};

use crate::wire::{backend, frontend};

/// Requests and answers of one session, as its two pumps frame them.
#[derive(Debug)]
pub struct Activity {
    /// Requests that a ReadyForQuery will answer; the login counts as one.
    requests: AtomicU64,
    /// ReadyForQuery messages the server sent.
    answered: AtomicU64,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: AtomicBool,
    changed: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            requests: AtomicU64::new(1),
            answered: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }
}

/// Which way a pump relays, for [`Activity::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

impl Activity {
    /// Notes a message with tag `tag` going `direction` (each message once).
    pub fn observe(&self, direction: Direction, tag: u8) {
        match (direction, tag) {
            (Direction::ToServer, frontend::QUERY | frontend::FUNCTION_CALL) => {
                self.requests.fetch_add(1, Ordering::AcqRel);
            }
            (Direction::ToServer, frontend::SYNC) => {
                self.unsynced.store(false, Ordering::Release);
                self.requests.fetch_add(1, Ordering::AcqRel);
            }
            (
                Direction::ToServer,
                frontend::PARSE | frontend::BIND | frontend::EXECUTE | frontend::DESCRIBE | frontend::CLOSE,
            ) => self.unsynced.store(true, Ordering::Release),
            (Direction::ToClient, backend::READY_FOR_QUERY) => {
                self.answered.fetch_add(1, Ordering::AcqRel);
                self.changed.notify_waiters();
            }
            _ => {}
        }
    }

    /// Whether every request was answered and nothing is half sent in the
    /// extended protocol: no statement is running.
    pub fn is_idle(&self) -> bool {
        !self.unsynced.load(Ordering::Acquire)
            && self.answered.load(Ordering::Acquire) >= self.requests.load(Ordering::Acquire)
    }

    /// Whether the login completed (the server's first ReadyForQuery).
    pub fn logged_in(&self) -> bool {
        self.answered.load(Ordering::Acquire) > 0
    }

    /// Resolves once `done(self)` holds (checked after every answer).
    async fn until(&self, done: impl Fn(&Activity) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once no statement is running.
    pub async fn idle(&self) {
        self.until(Activity::is_idle).await
    }

    /// Resolves once the login completed.
    pub async fn login(&self) {
        self.until(Activity::logged_in).await
    }
}

/// The daemon's stop: `None` while serving, the drain deadline once
/// stopping.
#[derive(Debug)]
pub struct Shutdown {
    deadline: watch::Sender<Option<Instant>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { deadline: watch::Sender::new(None) }
    }
}

impl Shutdown {
    /// Starts the drain (or moves its deadline: a second SIGTERM ends every
    /// session at once).
    pub fn begin(&self, deadline: Instant) {
        self.deadline.send_replace(Some(deadline));
    }

    /// Whether the daemon is stopping.
    pub fn is_draining(&self) -> bool {
        self.deadline.borrow().is_some()
    }

    /// Resolves when the daemon starts stopping.
    pub async fn started(&self) {
        let mut rx = self.deadline.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Resolves when the session with `activity` should end: the daemon is
    /// stopping and the session is idle, or the drain deadline passed.
    pub async fn session_may_end(&self, activity: &Activity) {
        let mut rx = self.deadline.subscribe();
        loop {
            let Ok(deadline) = rx.wait_for(Option::is_some).await.map(|d| *d) else {
                // The daemon's context is gone: nothing left to wait for.
                return std::future::pending().await;
            };
            let Some(deadline) = deadline else { continue };
            tokio::select! {
                () = activity.idle() => return,
                () = tokio::time::sleep_until(deadline.into()) => return,
                // A second signal moved the deadline.
                _ = rx.changed() => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_and_answers() {
        let a = Activity::default();
        assert!(!a.is_idle() && !a.logged_in(), "the login is a request");
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        assert!(a.is_idle() && a.logged_in());
        a.observe(Direction::ToServer, frontend::QUERY);
        a.observe(Direction::ToServer, frontend::QUERY);
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        assert!(!a.is_idle(), "a pipelined second query still runs");
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        assert!(a.is_idle());
        a.observe(Direction::ToServer, frontend::PARSE);
        a.observe(Direction::ToServer, frontend::BIND);
        assert!(!a.is_idle(), "extended protocol before Sync");
        a.observe(Direction::ToServer, frontend::SYNC);
        assert!(!a.is_idle());
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        assert!(a.is_idle());
    }

    #[tokio::test]
    async fn a_busy_session_ends_when_answered_or_at_the_deadline() {
        let shutdown = Shutdown::default();
        let a = Activity::default();
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        a.observe(Direction::ToServer, frontend::QUERY);
        let wait = shutdown.session_may_end(&a);
        tokio::pin!(wait);
        tokio::select! {
            () = &mut wait => panic!("ended before the daemon stops"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        shutdown.begin(Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut wait => panic!("ended while its statement runs"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        a.observe(Direction::ToClient, backend::READY_FOR_QUERY);
        tokio::time::timeout(Duration::from_secs(5), &mut wait).await.expect("ends once answered");

        let busy = Activity::default();
        let end = shutdown.session_may_end(&busy);
        shutdown.begin(Instant::now());
        tokio::time::timeout(Duration::from_secs(5), end).await.expect("ends at the deadline");
    }
}
