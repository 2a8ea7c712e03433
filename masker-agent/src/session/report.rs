//! What a session tells the audit trail and the metrics about itself: its
//! start and end, refusals and approval steps. The events are built here
//! from the session's plain values (see [`crate::audit`] for the schema).

use std::sync::atomic::{AtomicU64, Ordering};

use super::context::Session;
use crate::audit::{ApprovalStep, Event, Outcome, SessionFields, Tls, What, millis};

impl Session {
    /// Who and where the session is, for `session_start` and `session_end`.
    fn fields(&self) -> SessionFields<'_> {
        let e = &self.entry;
        let o = &e.origin;
        let startup = e.startup.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (user, database) = match startup {
            Some((user, database)) => (Some(user), Some(database)),
            None => (None, None),
        };
        let tls = Tls { client: e.tls_client.load(Ordering::Relaxed), server: e.tls_server.load(Ordering::Relaxed) };
        let destination = o.destination.as_ref().map_or("", |d| d.as_str());
        SessionFields::new(o.client, destination, o.cgroup_id, o.pid, user, database, tls)
            .in_netns(o.netns.as_ref().map(|n| n.ns.to_string()), o.netns.as_ref().and_then(|n| n.container.clone()))
    }

    fn emit(&self, what: What<'_>) {
        let event = Event::new(self.id(), self.identity(), what).observing(self.observes());
        self.ctx.audit.emit(&event);
    }

    /// Whether the session is in observe mode (relayed unchanged).
    pub fn observes(&self) -> bool {
        self.entry.observe.load(Ordering::Relaxed)
    }

    /// Records `session_start`.
    pub fn session_start(&self) {
        self.started.store(true, Ordering::Relaxed);
        if self.ctx.audit.enabled() {
            let verified = self.entry.origin.verified.as_deref().filter(|v| v.issuer.is_some());
            self.emit(What::SessionStart {
                session: self.fields(),
                issuer: verified.and_then(|v| v.issuer.as_deref()),
                claims: verified.map(|v| v.audited_claims()),
            });
        }
    }

    /// Records `session_end`; `error` is scrubbed here.
    pub fn session_end(&self, error: Option<&str>) {
        // A connection that never started (a port probe) is not a session.
        if !self.ctx.audit.enabled() || (error.is_none() && !self.started.load(Ordering::Relaxed)) {
            return;
        }
        let c = &self.entry.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.emit(What::SessionEnd {
            session: self.fields(),
            bytes_from_client: get(&c.bytes_from_client),
            bytes_to_client: get(&c.bytes_to_client),
            statements: get(&c.statements),
            rows: get(&c.rows),
            masked_cells: get(&c.masked_cells),
            duration_ms: millis(self.entry.started),
            outcome: if error.is_some() { Outcome::Error } else { Outcome::Ok },
            error: error.map(|e| crate::masking::scrub_text(e).into_owned()),
        });
    }

    /// Records that a statement was refused by `rule` (`reason` is what the
    /// client is told) and counts it for the identity.
    pub fn denial(&self, sql: &str, rule: &str, reason: &str) {
        self.ctx.metrics.denial(self.identity().unwrap_or(""));
        if self.ctx.audit.enabled() {
            self.emit(What::denial(sql, rule, reason));
        }
    }

    /// Observe mode: records that enforcing would have refused (or held) the
    /// statement `sql` under `rule` (`reason` is what the client would have
    /// been told): a `denial` event marked `mode` `observe` and
    /// `masker_observe_denials_total`. The statement runs.
    pub fn observed_denial(&self, sql: &str, rule: &str, reason: &str) {
        self.ctx.metrics.observed_denial(self.identity().unwrap_or(""));
        tracing::info!(
            session = self.id(),
            identity = self.identity().unwrap_or(""),
            rule,
            "observe mode: enforcing would refuse a statement; it runs"
        );
        if self.ctx.audit.enabled() {
            self.emit(What::denial(sql, rule, reason));
        }
    }

    /// Observe mode: records that enforcing would have refused the session
    /// at its start (its identity's `targets`, `databases` or `users`); it
    /// goes on.
    pub fn observed_connect_denial(&self, reason: &str) {
        self.ctx.metrics.observed_denial(self.identity().unwrap_or(""));
        if self.ctx.audit.enabled() {
            self.emit(What::connect_denial("identity", "28000", reason));
        }
    }

    /// Records that the session was refused at its start by `rule`
    /// (`identity`: its identity's `targets`, `databases` or `users`;
    /// `revoked`: its cgroup's tag was removed) with SQLSTATE `code`, and
    /// counts it for the identity.
    pub fn connect_denial(&self, rule: &str, code: &'static str, reason: &str) {
        self.ctx.metrics.denial(self.identity().unwrap_or(""));
        if self.ctx.audit.enabled() {
            self.emit(What::connect_denial(rule, code, reason));
        }
    }

    /// Records a step of approval `id` under `rule`, and counts decisions
    /// for the identity.
    pub fn approval(&self, id: u64, rule: &str, sql: &str, step: ApprovalStep<'_>) {
        if !matches!(step, ApprovalStep::Requested) {
            self.ctx.metrics.approval(self.identity().unwrap_or(""), step.decision());
        }
        if self.ctx.audit.enabled() {
            self.emit(What::approval(id, rule, sql, step));
        }
    }
}
