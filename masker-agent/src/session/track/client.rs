//! The client → server side of a session: notes what each request will be
//! answered with, refuses or holds statements before they reach the server,
//! and asks for the columns of portals the client never described.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::expect::{Expect, ExpectQueue, lock};
use super::model::{Published, SessionModel};
use crate::approvals::Outcome;
use crate::audit::ApprovalStep;
use crate::plan::PlanContext;
use crate::plan::lineage::refusal_statement;
use crate::policy::approval::ApprovalRule;
use crate::session::context::Session;
use crate::session::relay::{Filter, RelayError, Verdict};
use crate::sql::shape;
use crate::wire::message::{Frontend, Message, Target};
use crate::wire::{self, FrameError, Header, frontend};

/// Client → server side of a masking session.
pub struct ClientTracker {
    queue: ExpectQueue,
    /// What statements are checked with (`None`: never refuse or hold).
    plan: Option<Arc<PlanContext>>,
    /// Statements for which a Describe was sent (their columns will be known).
    described_statements: HashSet<String>,
    /// Portals whose columns will be known by the time they execute.
    described_portals: HashSet<String>,
    /// The session: where requests are noted when they leave (statement
    /// durations and latency), denials reported and held statements wait.
    session: Arc<Session>,
    /// Only follow statements for the audit trail (a session without a
    /// policy): no Describe injection, the fast-path interface allowed.
    observe_only: bool,
    /// Observe mode: statements are checked as when enforcing, but what
    /// would be refused or held is recorded and the statement goes on.
    observing: bool,
    /// The session as it will be once what was sent has run (statements
    /// are assumed to succeed); replaced by the server side's model
    /// whenever nothing is in flight.
    model: SessionModel,
    published: Published,
    model_version: u64,
}

impl ClientTracker {
    /// `plan`: refuse statements that move masked data out of sight or
    /// read catalog views with sampled values, and hold those an
    /// `[[approval]]` rule holds (`None`: never refuse).
    /// `published`: the server side's session model.
    pub fn new(
        queue: ExpectQueue,
        plan: Option<Arc<PlanContext>>,
        session: Arc<Session>,
        published: Published,
    ) -> Self {
        ClientTracker {
            queue,
            plan,
            described_statements: HashSet::new(),
            described_portals: HashSet::new(),
            session,
            observe_only: false,
            observing: false,
            model: SessionModel::default(),
            published,
            model_version: 0,
        }
    }

    /// Follows statements without masking anything (see
    /// [`super::ServerTracker::observe_only`]).
    pub fn observe_only(mut self) -> Self {
        self.observe_only = true;
        self
    }

    /// Observe mode (`mode = "observe"`): checks every statement as when
    /// enforcing, records what would be refused or held (see
    /// [`Session::observed_denial`]) and lets it run.
    pub fn observing(mut self) -> Self {
        self.observing = true;
        self
    }

    /// What the client is told instead of running `sql`, if it may not run:
    /// a guardrail or lineage refusal (audited as a denial), or an
    /// `[[approval]]` rule's hold that ended in a denial or a timeout. A held
    /// statement waits here, and with it everything the client sends after it.
    async fn check(&mut self, sql: &str) -> Option<String> {
        let plan = self.plan.clone()?;
        let catalog_mark = plan.catalog.failure_mark();
        let in_flight = !lock(&self.queue).is_empty();
        if !in_flight && let Some((model, version)) = self.published.newer_than(self.model_version) {
            self.model = (*model).clone();
            self.model_version = version;
        }
        let resolver = plan.resolver(&self.model);
        // The relations it names are looked up now, before it runs (the
        // plan of its result finds them cached): a catalog that does not
        // answer refuses the statement below instead of masking blindly.
        resolver.prefetch(sql).await;
        let mut refusal = resolver.refusal(sql).await;
        if refusal.is_none() && in_flight {
            // What was sent may still fail: the statement must pass with the
            // session as it is now too (a CREATE still in flight that will
            // fail must not make a name look like the client's own data).
            let now = self.published.latest();
            refusal = plan.resolver(&now).refusal(sql).await;
        }
        let approval = if refusal.is_none() || self.observing { resolver.approval(sql).await } else { None };
        // A look-up the decisions needed failed (timed out, unreachable):
        // what the statement would reveal is unknown (fail closed).
        if let Some(failure) = plan.catalog.failed_since(catalog_mark, &plan.destination, &plan.database) {
            let message = format!("masker: statement refused: {failure}; masker cannot tell what it would reveal");
            if self.observing {
                self.session.observed_denial(sql, "catalog", &message);
            } else {
                self.session.denial(sql, "catalog", &message);
                return Some(message);
            }
        }
        match refusal {
            Some((rule, message)) if self.observing => self.session.observed_denial(sql, rule, &message),
            Some((rule, message)) => {
                self.session.denial(sql, rule, &message);
                return Some(message);
            }
            None => {}
        }
        if let Some(rule) = approval {
            if self.observing {
                let message = format!("masker: statement would be held for approval (rule {})", rule.name);
                self.session.observed_denial(sql, "approval", &message);
            } else if let Some(message) = hold(&self.session, &rule, sql).await {
                return Some(message);
            }
        }
        // It will run: later statements see what it does.
        if let Ok(a) = crate::sql::analyze(sql).as_ref() {
            for s in &a.statements {
                self.model.apply(s);
            }
        }
        None
    }
}

/// Holds `sql` for an operator's decision under `rule`; `None` when it may
/// run, else the error the client gets.
async fn hold(session: &Session, rule: &ApprovalRule, sql: &str) -> Option<String> {
    let book = &session.ctx.approvals;
    let identity = session.identity();
    let shape = shape(sql);
    if let Some((id, approver)) = shape.as_deref().and_then(|s| book.granted(identity, s)) {
        session.approval(id, &rule.name, sql, ApprovalStep::Granted { approver: &approver });
        return None;
    }
    if !book.decidable() {
        // Nobody could approve it (masker proxy has no admin socket).
        let message = format!(
            "masker: statement refused: approval rule {} holds it, and this masker has no operator to approve \
             it (approvals need masker agent and its admin socket)",
            rule.name
        );
        session.denial(sql, "approval", &message);
        return Some(message);
    }
    let statement = crate::sql::normalize(sql);
    let ticket = book.request(session.id(), identity, &rule.name, statement, shape, rule.timeout);
    let id = ticket.id;
    session.approval(id, &rule.name, sql, ApprovalStep::Requested);
    // Tell the client why nothing happens (psql prints it at once).
    let mut notice = BytesMut::new();
    wire::put_notice(
        &mut notice,
        &format!(
            "masker: statement held for approval {id} (rule {}); waiting up to {}s for an operator",
            rule.name,
            rule.timeout.as_secs()
        ),
        Some(&format!(
            "An operator runs: masker approvals approve {id}  (or: masker approvals deny {id} --reason ...)"
        )),
    );
    session.to_client.push(&notice);
    tracing::info!(session = session.id(), approval = id, rule = %rule.name, "statement held for approval");
    let outcome = tokio::select! {
        outcome = ticket.wait(rule.timeout) => outcome,
        () = session.client_hangup.notified() => {
            // Nobody waits for the result: the statement must not run.
            session.approval(id, &rule.name, sql, ApprovalStep::Abandoned);
            tracing::info!(session = session.id(), approval = id, "client hung up; held statement withdrawn");
            return Some(format!("masker: approval {id} withdrawn: the client hung up"));
        }
    };
    match outcome {
        Outcome::Approved { approver } => {
            session.approval(id, &rule.name, sql, ApprovalStep::Approved { approver: &approver });
            None
        }
        Outcome::Denied { approver, reason } => {
            let step = ApprovalStep::Denied { approver: &approver, reason: &reason };
            session.approval(id, &rule.name, sql, step);
            Some(format!("masker: statement denied by {approver} (approval {id}, rule {}): {reason}", rule.name))
        }
        Outcome::TimedOut => {
            session.approval(id, &rule.name, sql, ApprovalStep::TimedOut);
            Some(format!(
                "masker: statement held for approval {id} (rule {}) was not approved within {}s; it did not run. \
                 An operator approves with: masker approvals approve ID",
                rule.name,
                rule.timeout.as_secs()
            ))
        }
    }
}

impl Filter for ClientTracker {
    fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
        if !wire::is_frontend_tag(header.tag) {
            return Err(FrameError::UnknownTag { tag: header.tag });
        }
        Ok(matches!(
            header.tag,
            frontend::QUERY
                | frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE
                | frontend::SYNC
                | frontend::FUNCTION_CALL
        ))
    }

    async fn on_message(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if matches!(msg.tag(), frontend::QUERY | frontend::SYNC) {
            self.session.trail.request();
        }
        let expect = match Frontend::parse(msg)? {
            Frontend::Query { sql } => {
                if let Some(message) = self.check(sql).await {
                    // The server answers with our error, in order.
                    let refused = refusal_statement(&message);
                    let at = wire::begin_message(out, frontend::QUERY);
                    out.extend_from_slice(refused.as_bytes());
                    out.put_u8(0);
                    wire::finish_message(out, at);
                    lock(&self.queue).push_back(Expect::Query { sql: refused.into() });
                    return Ok(Verdict::Replaced);
                }
                Expect::Query { sql: sql.into() }
            }
            Frontend::Parse { name, sql, param_types } => {
                self.described_statements.remove(name);
                if let Some(message) = self.check(sql).await {
                    // Same statement name and parameter types, our text.
                    let refused = refusal_statement(&message);
                    let at = wire::begin_message(out, frontend::PARSE);
                    out.extend_from_slice(name.as_bytes());
                    out.put_u8(0);
                    out.extend_from_slice(refused.as_bytes());
                    out.put_u8(0);
                    out.extend_from_slice(param_types);
                    wire::finish_message(out, at);
                    lock(&self.queue).push_back(Expect::Parse { name: name.to_string(), sql: refused.into() });
                    return Ok(Verdict::Replaced);
                }
                if let Ok(a) = crate::sql::analyze(sql).as_ref() {
                    self.model.protocol_prepared(name, a.statements.first());
                }
                Expect::Parse { name: name.to_string(), sql: sql.into() }
            }
            Frontend::Bind { portal, statement, formats } => {
                if self.described_statements.contains(statement) {
                    self.described_portals.insert(portal.to_string());
                } else {
                    self.described_portals.remove(portal);
                }
                Expect::Bind { portal: portal.to_string(), statement: statement.to_string(), formats }
            }
            Frontend::Describe { target: Target::Statement, name } => {
                self.described_statements.insert(name.to_string());
                Expect::DescribeStatement { name: name.to_string() }
            }
            Frontend::Describe { target: Target::Portal, name } => {
                self.described_portals.insert(name.to_string());
                Expect::DescribePortal { name: name.to_string(), injected: false }
            }
            Frontend::Execute { portal } => {
                if !self.observe_only && !self.described_portals.contains(portal) {
                    // The client never asked for this portal's columns; ask
                    // ourselves so its rows can be masked, and hide the answer.
                    self.described_portals.insert(portal.to_string());
                    let at = wire::begin_message(out, frontend::DESCRIBE);
                    out.put_u8(b'P');
                    out.extend_from_slice(portal.as_bytes());
                    out.put_u8(0);
                    wire::finish_message(out, at);
                    out.extend_from_slice(msg.bytes());
                    let mut q = lock(&self.queue);
                    q.push_back(Expect::DescribePortal { name: portal.to_string(), injected: true });
                    q.push_back(Expect::Execute { portal: portal.to_string() });
                    return Ok(Verdict::Replaced);
                }
                Expect::Execute { portal: portal.to_string() }
            }
            Frontend::Close { target, name } => {
                match target {
                    Target::Statement => self.described_statements.remove(name),
                    Target::Portal => self.described_portals.remove(name),
                };
                Expect::Close
            }
            Frontend::Sync => Expect::Sync,
            // Answered like a simple query: a result, then ReadyForQuery.
            Frontend::FunctionCall if self.observe_only => Expect::Sync,
            Frontend::FunctionCall if self.observing => {
                let message = "masker: the fast-path function call interface is not allowed for masked sessions";
                self.session.observed_denial("", "fast-path", message);
                Expect::Sync
            }
            Frontend::FunctionCall => {
                return Err(RelayError::refused(
                    "masker: the fast-path function call interface is not allowed for masked sessions",
                ));
            }
            Frontend::Other => return Ok(Verdict::Forward),
        };
        lock(&self.queue).push_back(expect);
        Ok(Verdict::Forward)
    }
}
