//! Approvals: statements that wait for an operator's yes.
//!
//! An `[[approval]]` rule of the policy ([`crate::policy::approval::ApprovalRule`])
//! holds the matching statements of a session. The client → server relay
//! stops at the statement (nothing the client sends after it is relayed) and
//! the statement waits in the agent's book ([`Approvals`]) until an operator runs
//! `masker approvals approve ID [--for DURATION]` or `masker approvals deny ID
//! --reason TEXT`, or until the rule's timeout:
//!
//! - approved: the statement goes to the server as the client sent it;
//! - denied or timed out: the server answers with masker's 42501 error in the
//!   statement's place (with the approver and reason, or the timeout), the
//!   transaction aborts as for any error and the session stays usable.
//!
//! The client is sent a NoticeResponse naming the approval id as soon as its
//! statement is held. `--for DURATION` also approves, for that long, every
//! later statement of the same shape (the same statement text with other
//! literals) from the same identity. Every step is an `approval` audit event (`requested`,
//! `approved`, `denied`, `timeout`, `granted` by a standing approval,
//! `abandoned`). A client that hangs up, or a session that ends, while it
//! waits withdraws its request.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The longest standing approval (`--for`).
pub const MAX_STANDING: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest approver name and denial reason accepted.
const MAX_APPROVER: usize = 64;
const MAX_REASON: usize = 500;

/// A statement waiting for a decision, as `masker approvals list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingApproval {
    pub id: u64,
    pub session: u64,
    pub identity: Option<String>,
    /// The `[[approval]]` rule that holds it.
    pub rule: String,
    /// Normalized statement text (literals replaced; never a value).
    pub statement: String,
    /// When it started waiting (RFC 3339, UTC).
    pub requested_at: String,
    pub waiting_secs: u64,
    pub timeout_secs: u64,
}

/// An operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it; with `standing`, also run the same shape from the same
    /// identity for that long without asking.
    Approve {
        approver: String,
        standing: Option<Duration>,
    },
    Deny {
        approver: String,
        reason: String,
    },
}

/// How a held statement's wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved { approver: String },
    Denied { approver: String, reason: String },
    TimedOut,
}

struct Pending {
    view: PendingApproval,
    since: Instant,
    decide: oneshot::Sender<Decision>,
    shape: Option<String>,
}

struct Grant {
    /// The approval that created it.
    approval: u64,
    identity: Option<String>,
    shape: String,
    until: Instant,
    approver: String,
}

/// The agent's pending approvals and standing grants.
#[derive(Default)]
pub struct Approvals {
    /// Whether an operator can decide at all (the agent's admin socket);
    /// `masker proxy` has none, so its held statements are refused at once.
    decidable: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    pending: Mutex<BTreeMap<u64, Pending>>,
    grants: Mutex<Vec<Grant>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").field("pending", &self.pending_count()).finish_non_exhaustive()
    }
}

/// A registered request; dropping it withdraws the request.
pub struct Ticket<'a> {
    book: &'a Approvals,
    pub id: u64,
    decided: oneshot::Receiver<Decision>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.book.pending).remove(&self.id);
    }
}

impl Ticket<'_> {
    /// Waits for the decision, at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, &mut self.decided).await {
            Ok(Ok(Decision::Approve { approver, .. })) => Outcome::Approved { approver },
            Ok(Ok(Decision::Deny { approver, reason })) => Outcome::Denied { approver, reason },
            // The sender is only dropped with the book: nobody can decide.
            Ok(Err(_)) | Err(_) => Outcome::TimedOut,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Approvals {
    /// Says that operators can decide (the admin socket is served).
    pub fn enable_decisions(&self) {
        self.decidable.store(true, Ordering::Relaxed);
    }

    /// Whether operators can decide on held statements.
    pub fn decidable(&self) -> bool {
        self.decidable.load(Ordering::Relaxed)
    }

    /// The approval id and approver of a standing grant that covers `shape`
    /// for `identity`, if one is still in force.
    pub fn granted(&self, identity: Option<&str>, shape: &str) -> Option<(u64, String)> {
        let now = Instant::now();
        let mut grants = lock(&self.grants);
        grants.retain(|g| g.until > now);
        grants
            .iter()
            .find(|g| g.identity.as_deref() == identity && g.shape == shape)
            .map(|g| (g.approval, g.approver.clone()))
    }

    /// Registers a statement waiting for a decision. `shape` (see [`crate::sql::shape`])
    /// is what a standing approval of it covers.
    pub fn request(
        &self,
        session: u64,
        identity: Option<&str>,
        rule: &str,
        statement: String,
        shape: Option<String>,
        timeout: Duration,
    ) -> Ticket<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (decide, decided) = oneshot::channel();
        let view = PendingApproval {
            id,
            session,
            identity: identity.map(str::to_string),
            rule: rule.to_string(),
            statement,
            requested_at: crate::rfc3339::now_millis(),
            waiting_secs: 0,
            timeout_secs: timeout.as_secs(),
        };
        lock(&self.pending).insert(id, Pending { view, since: Instant::now(), decide, shape });
        Ticket { book: self, id, decided }
    }

    /// The statements waiting now, oldest first.
    pub fn list(&self) -> Vec<PendingApproval> {
        lock(&self.pending)
            .values()
            .map(|p| PendingApproval { waiting_secs: p.since.elapsed().as_secs(), ..p.view.clone() })
            .collect()
    }

    /// How many statements wait.
    pub fn pending_count(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Delivers `decision` to request `id`. Errors say why not (unknown id,
    /// already decided or withdrawn, bad approver or reason text).
    pub fn decide(&self, id: u64, decision: Decision) -> Result<PendingApproval, DecideError> {
        match &decision {
            Decision::Approve { approver, standing } => {
                check_text("approver", approver, MAX_APPROVER)?;
                if standing.is_some_and(|d| d.is_zero() || d > MAX_STANDING) {
                    return Err(DecideError::Standing);
                }
            }
            Decision::Deny { approver, reason } => {
                check_text("approver", approver, MAX_APPROVER)?;
                check_text("reason", reason, MAX_REASON)?;
            }
        }
        let pending = lock(&self.pending).remove(&id).ok_or(DecideError::NotPending(id))?;
        if let (Decision::Approve { approver, standing: Some(d) }, Some(shape)) = (&decision, pending.shape) {
            lock(&self.grants).push(Grant {
                approval: id,
                identity: pending.view.identity.clone(),
                shape,
                until: Instant::now() + *d,
                approver: approver.clone(),
            });
        }
        let view = PendingApproval { waiting_secs: pending.since.elapsed().as_secs(), ..pending.view };
        // The session may have ended in between: then nobody waits.
        let _ = pending.decide.send(decision);
        Ok(view)
    }
}

/// Why an operator's decision was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The approver or reason is empty.
    #[error("the {0} is empty")]
    Empty(&'static str),
    /// The approver or reason is longer than allowed.
    #[error("the {0} is longer than {1} characters")]
    TooLong(&'static str, usize),
    /// The approver or reason is not one printable line.
    #[error("the {0} contains control characters")]
    Control(&'static str),
    /// A standing approval (`--for`) out of range.
    #[error("--for must be between 1s and 7d")]
    Standing,
    /// No statement waits under this id.
    #[error("no pending approval {0} (decided, timed out or its session ended)")]
    NotPending(u64),
}

/// Operator-given text that ends up in client errors and audit events:
/// one line, printable, bounded.
fn check_text(what: &'static str, text: &str, max: usize) -> Result<(), DecideError> {
    if text.trim().is_empty() {
        return Err(DecideError::Empty(what));
    }
    if text.chars().count() > max {
        return Err(DecideError::TooLong(what, max));
    }
    if text.chars().any(char::is_control) {
        return Err(DecideError::Control(what));
    }
    Ok(())
}

/// A duration that is not one number and one unit (`s`, `m`, `h`, `d`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}; expected e.g. 90s, 15m, 2h or 1d")]
pub struct DurationError(pub String);

/// Parses `90s`, `15m`, `2h`, `7d` (one number, one unit).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let bad = || DurationError(text.to_string());
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::shape;

    fn approve(by: &str, standing: Option<Duration>) -> Decision {
        Decision::Approve { approver: by.into(), standing }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["", "s", "10", "10x", "-1m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn approve_deny_timeout_and_withdraw() {
        let book = Approvals::default();
        let t = book.request(1, Some("ci"), "writes", "UPDATE t SET a = $1".into(), None, Duration::from_secs(5));
        let id = t.id;
        assert_eq!(book.list().len(), 1);
        assert_eq!(book.list()[0].rule, "writes");
        book.decide(id, approve("alice", None)).unwrap();
        assert_eq!(t.wait(Duration::from_secs(5)).await, Outcome::Approved { approver: "alice".into() });
        assert_eq!(book.pending_count(), 0);
        assert!(book.decide(id, approve("alice", None)).unwrap_err().to_string().contains("no pending approval"));

        let t = book.request(1, Some("ci"), "writes", "x".into(), None, Duration::from_secs(5));
        let deny = Decision::Deny { approver: "bob".into(), reason: "not during the freeze".into() };
        book.decide(t.id, deny).unwrap();
        assert_eq!(
            t.wait(Duration::from_secs(5)).await,
            Outcome::Denied { approver: "bob".into(), reason: "not during the freeze".into() }
        );

        let t = book.request(1, None, "writes", "x".into(), None, Duration::from_millis(20));
        assert_eq!(t.wait(Duration::from_millis(20)).await, Outcome::TimedOut);
        assert_eq!(book.pending_count(), 0, "a timed-out request is withdrawn");

        let t = book.request(1, None, "writes", "x".into(), None, Duration::from_secs(5));
        let id = t.id;
        drop(t);
        assert!(book.decide(id, approve("alice", None)).is_err(), "a dropped session's request is gone");
    }

    #[test]
    fn bad_decisions_are_refused_and_keep_the_request() {
        let book = Approvals::default();
        let t = book.request(1, None, "r", "x".into(), None, Duration::from_secs(5));
        let deny = |reason: &str| Decision::Deny { approver: "bob".into(), reason: reason.into() };
        assert!(book.decide(t.id, deny("")).unwrap_err().to_string().contains("reason is empty"));
        assert!(book.decide(t.id, deny("a\nb")).unwrap_err().to_string().contains("control"));
        assert!(book.decide(t.id, deny(&"x".repeat(501))).unwrap_err().to_string().contains("longer"));
        assert!(book.decide(t.id, approve("alice", Some(Duration::from_secs(8 * 86400)))).is_err());
        assert_eq!(book.pending_count(), 1);
    }

    #[test]
    fn standing_approval_covers_the_shape_for_the_identity_only() {
        let book = Approvals::default();
        let s1 = shape("UPDATE orders SET status = 'x' WHERE id = 1").unwrap();
        let s2 = shape("UPDATE orders SET status = 'y' WHERE id = 2").unwrap();
        let other = shape("DELETE FROM orders WHERE id = 2").unwrap();
        assert_eq!(s1, s2);
        assert_ne!(s1, other);
        assert_ne!(shape("DELETE FROM orders_2024_01").unwrap(), shape("DELETE FROM orders_2024_02").unwrap());
        assert_ne!(shape("SELECT a FROM t").unwrap(), shape("SELECT b FROM t").unwrap());
        let t = book.request(1, Some("ci"), "r", "x".into(), Some(s1.clone()), Duration::from_secs(5));
        book.decide(t.id, approve("alice", Some(Duration::from_secs(60)))).unwrap();
        assert_eq!(book.granted(Some("ci"), &s2).map(|g| g.1), Some("alice".into()));
        assert_eq!(book.granted(Some("other"), &s2), None);
        assert_eq!(book.granted(Some("ci"), &other), None);
        let t = book.request(1, Some("ci"), "r", "x".into(), Some(other.clone()), Duration::from_secs(5));
        book.decide(t.id, approve("alice", None)).unwrap();
        assert_eq!(book.granted(Some("ci"), &other), None, "a one-time approval leaves no grant");
    }
}
