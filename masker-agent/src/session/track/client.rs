//! The client → server side of a session: notes what each request will be
//! answered with, refuses or holds statements before they reach the server,
//! and asks for the columns of portals the client never described.

use rustc_hash::FxHashSet;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::expect::{Analyzed, Expect, ExpectQueue, Name, Text, lock};
use super::memo::{Memo, Refusal, Stamp, WHOLE_TEXT};
use super::model::{Published, SessionModel};
use crate::approvals::Outcome;
use crate::audit::ApprovalStep;
use crate::plan::PlanContext;
use crate::plan::lineage::{refusal_statement, refused_parse_statement};
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
    described_statements: FxHashSet<Name>,
    /// Portals whose columns will be known by the time they execute.
    described_portals: FxHashSet<Name>,
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
    model: Arc<SessionModel>,
    published: Published,
    /// Refusals already worked out, for statements sent again.
    memo: Memo,
    /// A Parse was refused since the last Sync: the server fails it and
    /// skips what follows up to Sync, so it is not sent at all.
    skip_till_sync: bool,
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
            described_statements: FxHashSet::default(),
            described_portals: FxHashSet::default(),
            session,
            observe_only: false,
            observing: false,
            model: Arc::default(),
            published,
            memo: Memo::default(),
            skip_till_sync: false,
        }
    }

    /// Follows statements without masking anything (see
    /// [`super::ServerTracker::observe_only`]).
    pub fn observe_only(mut self) -> Self {
        self.observe_only = true;
        self
    }

    /// The guardrail or lineage refusal of `sql` (analysed as `analysis`)
    /// with the session as `model` says: remembered from an earlier time
    /// under the same model revision and catalog generation, else worked
    /// out and added to `worked_out` (for the memo, once it is known that
    /// every catalog look-up answered).
    async fn refusal(
        &mut self,
        plan: &PlanContext,
        model: &SessionModel,
        sql: &str,
        analysis: &Analyzed,
        generation: u64,
        worked_out: &mut Vec<(Stamp, Refusal)>,
    ) -> Refusal {
        let stamp = Stamp { model: model.revision(), catalog: generation };
        if let Some(r) = &self.memo.entry(analysis, WHOLE_TEXT, stamp).refusal {
            return r.clone();
        }
        let r = plan.resolver(model).refusal(sql).await;
        worked_out.push((stamp, r.clone()));
        r
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
    async fn check(&mut self, sql: &str, analysis: &Analyzed) -> Option<String> {
        let plan = self.plan.clone()?;
        let catalog_mark = plan.catalog.failure_mark();
        let generation = plan.catalog.generation();
        let in_flight = !lock(&self.queue).is_empty();
        if !in_flight {
            // Nothing in flight: the server side's model is the session.
            let latest = self.published.latest();
            if latest.revision() != self.model.revision() {
                self.model = latest;
            }
        }
        let model = self.model.clone();
        // The relations it names are looked up now, before it runs (the
        // plan of its result finds them cached): a catalog that does not
        // answer refuses the statement below instead of masking blindly.
        // Not again while the decision is remembered (see [`Memo`]): they
        // were looked up less than a second ago, and the plan of the result
        // looks up what expired since (a catalog failing then masks the
        // result whole).
        let stamp = Stamp { model: model.revision(), catalog: generation };
        let remembered = self.memo.entry(analysis, WHOLE_TEXT, stamp).refusal.clone();
        let mut worked_out = Vec::with_capacity(2);
        let mut refusal = match remembered {
            Some(r) => r,
            None => {
                plan.resolver(&model).prefetch(analysis).await;
                self.refusal(&plan, &model, sql, analysis, generation, &mut worked_out).await
            }
        };
        if refusal.is_none() && in_flight {
            // What was sent may still fail: the statement must pass with the
            // session as it is now too (a CREATE still in flight that will
            // fail must not make a name look like the client's own data).
            let now = self.published.latest();
            if now.revision() != model.revision() {
                refusal = self.refusal(&plan, &now, sql, analysis, generation, &mut worked_out).await;
            }
        }
        let approval =
            if refusal.is_none() || self.observing { plan.resolver(&model).approval(sql).await } else { None };
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
        } else {
            // Every look-up answered: what was worked out holds for the
            // next time (see [`Memo`]).
            for (stamp, r) in worked_out {
                self.memo.entry(analysis, WHOLE_TEXT, stamp).refusal = Some(r);
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
        if let Ok(a) = analysis.as_ref() {
            for s in a.statements.iter().filter(|s| SessionModel::changed_by(s)) {
                Arc::make_mut(&mut self.model).apply(s);
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

    fn on_message_now(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Option<Result<Verdict, RelayError>> {
        if !self.skip_till_sync && matches!(msg.tag(), frontend::QUERY | frontend::PARSE) {
            // Checked before it goes on: that may look up the catalog or
            // wait for an approval.
            return None;
        }
        Some(self.on_request(msg, out))
    }

    async fn on_message(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if let Some(v) = self.on_message_now(msg, out) {
            return v;
        }
        let expect = match Frontend::parse(msg)? {
            Frontend::Query { sql } => {
                self.session.trail.request();
                let analysis = crate::sql::analyze(sql);
                if let Some(message) = self.check(sql, &analysis).await {
                    // The server answers with our error, in order.
                    let refused = refusal_statement(&message);
                    let at = wire::begin_message(out, frontend::QUERY);
                    out.extend_from_slice(refused.as_bytes());
                    out.put_u8(0);
                    wire::finish_message(out, at);
                    lock(&self.queue).push_back(Expect::Query { sql: Text::new(&refused) });
                    return Ok(Verdict::Replaced);
                }
                Expect::Query { sql: Text::analysed(sql, analysis) }
            }
            Frontend::Parse { name, sql, param_types: _ } => {
                self.described_statements.remove(name);
                let analysis = crate::sql::analyze(sql);
                if let Some(message) = self.check(sql, &analysis).await {
                    // Same statement name, a text the server's parser
                    // rejects: the Parse fails before parameter types
                    // matter, nothing is stored under the name, the server
                    // skips the batch up to Sync (we drop it: see
                    // `skip_till_sync`) and the server side answers the
                    // client with our refusal in the syntax error's place.
                    let at = wire::begin_message(out, frontend::PARSE);
                    out.extend_from_slice(name.as_bytes());
                    out.put_u8(0);
                    out.extend_from_slice(refused_parse_statement(&message).as_bytes());
                    out.put_u8(0);
                    out.put_i16(0);
                    wire::finish_message(out, at);
                    lock(&self.queue).push_back(Expect::Parse {
                        name: Name::from(name),
                        sql: Text::new(&refusal_statement(&message)),
                        refused: Some(message.into()),
                    });
                    self.skip_till_sync = true;
                    return Ok(Verdict::Replaced);
                }
                if let Ok(a) = analysis.as_ref()
                    && !name.is_empty()
                {
                    Arc::make_mut(&mut self.model).protocol_prepared(name, a.statements.first());
                }
                Expect::Parse { name: Name::from(name), sql: Text::analysed(sql, analysis), refused: None }
            }
            _ => return self.on_request(msg, out),
        };
        lock(&self.queue).push_back(expect);
        Ok(Verdict::Forward)
    }
}

impl ClientTracker {
    /// Every request but a statement (Query, Parse) to check: noted for
    /// the server side, and the Describe injected that an Execute needs.
    fn on_request(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if self.skip_till_sync {
            if msg.tag() != frontend::SYNC {
                // After the refused Parse's error the server would skip it
                // (Query and FunctionCall too): it never reaches the server.
                return Ok(Verdict::Replaced);
            }
            self.skip_till_sync = false;
        }
        if msg.tag() == frontend::SYNC {
            self.session.trail.request();
        }
        let expect = match Frontend::parse(msg)? {
            Frontend::Query { .. } | Frontend::Parse { .. } => {
                // Statements are checked in `on_message`; never unchecked.
                return Err(RelayError::refused("masker: a statement escaped its check; closing the session"));
            }
            Frontend::Bind { portal, statement, formats } => {
                if self.described_statements.contains(statement) {
                    self.described_portals.insert(Name::from(portal));
                } else {
                    self.described_portals.remove(portal);
                }
                Expect::Bind { portal: Name::from(portal), statement: Name::from(statement), formats }
            }
            Frontend::Describe { target: Target::Statement, name } => {
                self.described_statements.insert(Name::from(name));
                Expect::DescribeStatement { name: Name::from(name) }
            }
            Frontend::Describe { target: Target::Portal, name } => {
                self.described_portals.insert(Name::from(name));
                Expect::DescribePortal { name: Name::from(name), injected: false }
            }
            Frontend::Execute { portal } => {
                if !self.observe_only && !self.described_portals.contains(portal) {
                    // The client never asked for this portal's columns; ask
                    // ourselves so its rows can be masked, and hide the answer.
                    self.described_portals.insert(Name::from(portal));
                    let at = wire::begin_message(out, frontend::DESCRIBE);
                    out.put_u8(b'P');
                    out.extend_from_slice(portal.as_bytes());
                    out.put_u8(0);
                    wire::finish_message(out, at);
                    out.extend_from_slice(msg.bytes());
                    let mut q = lock(&self.queue);
                    q.push_back(Expect::DescribePortal { name: Name::from(portal), injected: true });
                    q.push_back(Expect::Execute { portal: Name::from(portal) });
                    return Ok(Verdict::Replaced);
                }
                Expect::Execute { portal: Name::from(portal) }
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

#[cfg(test)]
mod tests {
    use postgres_protocol::message::frontend as fe;

    use super::*;
    use crate::fuzzing::harness::Harness;
    use crate::plan::lineage::REFUSAL_HINT;
    use crate::wire::backend;

    /// A statement the harness's identity may not run (`deny_tables`).
    const REFUSED: &str = "SELECT count(*) FROM secrets.keys WHERE note LIKE $1";

    /// The messages of `bytes`: tag and body.
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            out.push((bytes[0], bytes[5..1 + len].to_vec()));
            bytes = &bytes[1 + len..];
        }
        out
    }

    /// Parse (`name`, one parameter of unspecified type), Bind, Describe
    /// portal, Execute, Sync: node-pg's and pgjdbc's batch.
    fn batch(name: &str, sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        fe::parse(name, sql, [0u32], &mut b).unwrap();
        let value = |v: &&str, buf: &mut BytesMut| {
            buf.put_slice(v.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        };
        fe::bind("", name, [0i16], ["5%"].iter(), value, [0i16], &mut b).map_err(|_| "bind").unwrap();
        fe::describe(b'P', "", &mut b).unwrap();
        fe::execute("", 0, &mut b).unwrap();
        fe::sync(&mut b);
        b
    }

    fn error(fields: &[(u8, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        let at = wire::begin_message(&mut b, backend::ERROR_RESPONSE);
        for (kind, value) in fields {
            b.put_u8(*kind);
            b.put_slice(value.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        wire::finish_message(&mut b, at);
        b
    }

    fn ready() -> BytesMut {
        let mut b = BytesMut::new();
        let at = wire::begin_message(&mut b, backend::READY_FOR_QUERY);
        b.put_u8(b'I');
        wire::finish_message(&mut b, at);
        b
    }

    /// A refused Parse goes to the server as a text its parser rejects,
    /// under the same name, with no parameter types; what the client sent
    /// after it up to Sync is dropped (the server would skip it), the Sync
    /// and what follows it pass.
    #[test]
    fn a_refused_parse_is_replaced_and_the_batch_dropped_up_to_sync() {
        for name in ["", "s1"] {
            let mut stream = batch(name, REFUSED);
            fe::query("SELECT 1", &mut stream).unwrap();
            let run = Harness::new(false).client(&stream, 0);
            assert!(run.result.is_ok(), "{:?}", run.result);
            let sent = messages(&run.out);
            let tags: Vec<u8> = sent.iter().map(|m| m.0).collect();
            assert_eq!(tags, [frontend::PARSE, frontend::SYNC, frontend::QUERY], "{name:?}");
            let body = &sent[0].1;
            let mut cur = wire::Cursor::new(body, frontend::PARSE);
            assert_eq!(cur.cstr().unwrap(), name);
            let text = cur.cstr().unwrap();
            assert!(text.starts_with(crate::plan::lineage::REFUSAL_PREFIX), "{text}");
            assert!(text.contains("secrets.keys") && !text.contains("LIKE"), "{text}");
            assert!(crate::sql::analyze_uncached(text).is_err(), "the server must reject {text}");
            assert_eq!(&body[name.len() + text.len() + 2..], [0, 0], "no parameter types");
            assert_eq!(sent[2].1, b"SELECT 1\0");
        }
    }

    /// The server's syntax error for that text reaches the client as
    /// masker's refusal (42501, message, hint and nothing else), then
    /// ReadyForQuery; the same fields as a refused simple Query.
    #[test]
    fn the_server_error_of_a_refused_parse_becomes_the_refusal() {
        let syntax = error(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "42601"),
            (b'M', "syntax error at or near \"masker_refused\""),
            (b'P', "312"),
            (b'F', "scan.l"),
            (b'L', "1188"),
            (b'R', "scanner_yyerror"),
        ]);
        for name in ["", "s1"] {
            let server = [syntax.clone(), ready()].concat();
            let run = Harness::new(false).server(&batch(name, REFUSED), &server, 0);
            assert!(run.result.is_ok(), "{:?}", run.result);
            let got = messages(&run.out);
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[0].0, backend::ERROR_RESPONSE);
            assert_eq!(got[1], (backend::READY_FOR_QUERY, b"I".to_vec()));
            let text = String::from_utf8_lossy(&got[0].1).to_string();
            let kinds: Vec<u8> = got[0].1.split(|b| *b == 0).filter_map(|f| f.first().copied()).collect();
            assert_eq!(kinds, b"SVCMH", "{text}");
            assert!(text.starts_with("SERROR\0VERROR\0C42501\0Mmasker: "), "{text}");
            assert!(text.contains("secrets.keys"), "{text}");
            assert!(text.ends_with(&format!("\0H{REFUSAL_HINT}\0\0")), "{text}");
        }
        // The same refusal as a simple Query, answered by the DO block's
        // RAISE (with its context and source location): the same fields.
        let mut query = BytesMut::new();
        fe::query("SELECT count(*) FROM secrets.keys WHERE note LIKE '5%'", &mut query).unwrap();
        let harness = Harness::new(false);
        let parse = messages(&harness.server(&batch("", REFUSED), &[syntax, ready()].concat(), 0).out);
        let raised = error(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "42501"),
            (b'M', &String::from_utf8_lossy(&parse[0].1).split('\0').nth(3).unwrap()[1..]),
            (b'H', REFUSAL_HINT),
            (b'W', "PL/pgSQL function inline_code_block line 1 at RAISE"),
            (b'F', "pl_exec.c"),
            (b'L', "3911"),
            (b'R', "exec_stmt_raise"),
        ]);
        let simple = messages(&harness.server(&query, &[raised, ready()].concat(), 0).out);
        assert_eq!(simple, parse);
    }

    /// Fail closed: a server that accepted the text is not followed.
    #[test]
    fn a_refused_parse_the_server_accepts_ends_the_session() {
        let mut complete = BytesMut::new();
        let at = wire::begin_message(&mut complete, backend::PARSE_COMPLETE);
        wire::finish_message(&mut complete, at);
        let run = Harness::new(false).server(&batch("s1", REFUSED), &complete, 0);
        assert!(run.result.is_err(), "{:?}", run.out);
        assert!(run.out.is_empty());
    }
}
