//! Following each result back to the statement that produced it, so that
//! every `DataRow`, `CopyData`, error, notice and notification is masked with
//! the right plan.
//!
//! The client side ([`ClientTracker`]) notes, in order, what each request will
//! be answered with ([`Expect`]); the server side ([`ServerTracker`]) consumes
//! those notes as the answers arrive. This is how a `DataRow` of an `Execute`
//! finds its columns even though no `RowDescription` precedes it: the
//! statement's `Describe`, or one the agent injects itself when the client
//! never asked, gave them earlier, and `Bind` gave the result formats.
//!
//! Both trackers run in the session's task; the queue between them is never
//! contended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tracing::warn;

use crate::daemon::registry::SessionEntry;
use crate::masking::{self, ColumnAction, CopyMasker, RowPlan};
use crate::plan::catalog::Catalog;
use crate::plan::lineage::{Decision, Resolver, refusal_statement, runs_client_code};
use crate::policy::SessionPolicy;
use crate::policy::approval::ApprovalRule;
use crate::session::relay::{Filter, RelayError, Verdict};
use crate::wire::{self, Cursor, FieldDescription, Format, FrameError, Header, TableOid, TypeOid, backend, frontend};

/// Result formats requested in a `Bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultFormats {
    /// One code for every column (no codes at all means text).
    All(Format),
    /// One code per column.
    PerColumn(Vec<Format>),
}

impl ResultFormats {
    fn for_column(&self, i: usize) -> Format {
        match self {
            ResultFormats::All(f) => *f,
            ResultFormats::PerColumn(v) => v.get(i).copied().unwrap_or(Format::Text),
        }
    }
}

/// What the server will answer a request with, noted when the request passes.
#[derive(Debug)]
pub enum Expect {
    Query {
        sql: Arc<str>,
    },
    Parse {
        name: String,
        sql: Arc<str>,
    },
    Bind {
        portal: String,
        statement: String,
        formats: ResultFormats,
    },
    DescribeStatement {
        name: String,
    },
    /// `injected`: the agent sent this Describe itself; its answer is
    /// consumed here and never reaches the client.
    DescribePortal {
        name: String,
        injected: bool,
    },
    Execute {
        portal: String,
    },
    Close,
    Sync,
}

/// The queue between the two trackers of a session.
pub type ExpectQueue = Arc<Mutex<VecDeque<Expect>>>;

fn lock(q: &ExpectQueue) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

fn bad(tag: u8, what: &'static str) -> RelayError {
    RelayError::Frame(FrameError::BadBody { tag, what })
}

fn refuse(message: impl Into<String>) -> RelayError {
    RelayError::Refused { code: "42501", message: message.into() }
}

/// What the client side needs to refuse statements (see
/// [`crate::plan::lineage::Resolver::refusal`]).
pub struct LineageGuard {
    pub policy: Arc<SessionPolicy>,
    pub catalog: Arc<Catalog>,
    pub destination: String,
    pub database: String,
}

impl LineageGuard {
    fn resolver(&self) -> Resolver<'_> {
        Resolver {
            policy: &self.policy,
            catalog: &self.catalog,
            destination: &self.destination,
            database: &self.database,
        }
    }
}

/// Client → server side of a masking session.
pub struct ClientTracker {
    queue: ExpectQueue,
    guard: Option<LineageGuard>,
    /// Statements for which a Describe was sent (their columns will be known).
    described_statements: HashSet<String>,
    /// Portals whose columns will be known by the time they execute.
    described_portals: HashSet<String>,
    /// Notes when requests leave, for statement durations and latency.
    observed: Option<Arc<SessionEntry>>,
    /// Only follow statements for the audit trail (a session without a
    /// policy): no Describe injection, the fast-path interface allowed.
    observe_only: bool,
}

impl ClientTracker {
    /// `guard`: refuse statements that move masked data out of sight or
    /// read catalog views with sampled values (`None`: never refuse).
    pub fn new(queue: ExpectQueue, guard: Option<LineageGuard>) -> Self {
        ClientTracker {
            queue,
            guard,
            described_statements: HashSet::new(),
            described_portals: HashSet::new(),
            observed: None,
            observe_only: false,
        }
    }

    /// Follows statements without masking anything (see
    /// [`ServerTracker::observe_only`]).
    pub fn observe_only(mut self) -> Self {
        self.observe_only = true;
        self
    }

    /// Notes request times in `entry` (see [`crate::audit::SessionTrail`]).
    pub fn observed(mut self, entry: Arc<SessionEntry>) -> Self {
        self.observed = Some(entry);
        self
    }

    /// What the client is told instead of running `sql`, if it may not run:
    /// a guardrail or lineage refusal (audited as a denial), or an
    /// `[[approval]]` rule's hold that ended in a denial or a timeout. A held
    /// statement waits here, and with it everything the client sends after it.
    async fn check(&self, sql: &str) -> Option<String> {
        let guard = self.guard.as_ref()?;
        let resolver = guard.resolver();
        if let Some((rule, message)) = resolver.refusal(sql).await {
            if let Some(entry) = &self.observed {
                crate::audit::denial(entry, sql, rule, &message);
            }
            return Some(message);
        }
        let rule = resolver.approval(sql).await?;
        let Some(entry) = &self.observed else {
            // Nowhere to ask: fail closed.
            return Some(format!("masker: statement refused: approval rule {} holds it", rule.name));
        };
        hold(entry, &rule, sql).await
    }
}

/// Holds `sql` for an operator's decision under `rule`; `None` when it may
/// run, else the error the client gets.
async fn hold(entry: &SessionEntry, rule: &ApprovalRule, sql: &str) -> Option<String> {
    use crate::approvals::Outcome;
    use crate::audit::ApprovalStep;
    use crate::sql::shape;
    let book = &entry.approvals;
    let identity = entry.origin.identity.as_deref();
    let shape = shape(sql);
    if let Some((id, approver)) = shape.as_deref().and_then(|s| book.granted(identity, s)) {
        crate::audit::approval(entry, id, &rule.name, sql, ApprovalStep::Granted { approver: &approver });
        return None;
    }
    if !book.decidable() {
        // Nobody could approve it (masker proxy has no admin socket).
        let message = format!(
            "masker: statement refused: approval rule {} holds it, and this masker has no operator to approve \
             it (approvals need masker agent and its admin socket)",
            rule.name
        );
        crate::audit::denial(entry, sql, "approval", &message);
        return Some(message);
    }
    let statement = crate::sql::normalize(sql);
    let ticket = book.request(entry.id, identity, &rule.name, statement, shape, rule.timeout);
    let id = ticket.id;
    crate::audit::approval(entry, id, &rule.name, sql, ApprovalStep::Requested);
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
    entry.to_client.push(&notice);
    tracing::info!(session = entry.id, approval = id, rule = %rule.name, "statement held for approval");
    let outcome = tokio::select! {
        outcome = ticket.wait(rule.timeout) => outcome,
        () = entry.client_hangup.notified() => {
            // Nobody waits for the result: the statement must not run.
            crate::audit::approval(entry, id, &rule.name, sql, ApprovalStep::Abandoned);
            tracing::info!(session = entry.id, approval = id, "client hung up; held statement withdrawn");
            return Some(format!("masker: approval {id} withdrawn: the client hung up"));
        }
    };
    match outcome {
        Outcome::Approved { approver } => {
            crate::audit::approval(entry, id, &rule.name, sql, ApprovalStep::Approved { approver: &approver });
            None
        }
        Outcome::Denied { approver, reason } => {
            let step = ApprovalStep::Denied { approver: &approver, reason: &reason };
            crate::audit::approval(entry, id, &rule.name, sql, step);
            Some(format!("masker: statement denied by {approver} (approval {id}, rule {}): {reason}", rule.name))
        }
        Outcome::TimedOut => {
            crate::audit::approval(entry, id, &rule.name, sql, ApprovalStep::TimedOut);
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

    async fn on_message(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        let tag = msg[0];
        if matches!(tag, frontend::QUERY | frontend::SYNC)
            && let Some(entry) = &self.observed
        {
            entry.trail.request();
        }
        let mut cur = Cursor::new(&msg[5..], tag);
        let expect = match tag {
            frontend::QUERY => {
                let sql = cur.cstr()?;
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
            frontend::PARSE => {
                let name = cur.cstr()?.to_string();
                let sql: &str = cur.cstr()?;
                self.described_statements.remove(&name);
                if let Some(message) = self.check(sql).await {
                    // Same statement name and parameter types, our text.
                    let refused = refusal_statement(&message);
                    let rest_at = 5 + name.len() + 1 + sql.len() + 1;
                    let at = wire::begin_message(out, frontend::PARSE);
                    out.extend_from_slice(name.as_bytes());
                    out.put_u8(0);
                    out.extend_from_slice(refused.as_bytes());
                    out.put_u8(0);
                    out.extend_from_slice(&msg[rest_at.min(msg.len())..]);
                    wire::finish_message(out, at);
                    lock(&self.queue).push_back(Expect::Parse { name, sql: refused.into() });
                    return Ok(Verdict::Replaced);
                }
                Expect::Parse { name, sql: sql.into() }
            }
            frontend::BIND => {
                let portal = cur.cstr()?.to_string();
                let statement = cur.cstr()?.to_string();
                let n = cur.i16()?.max(0) as usize;
                cur.bytes(2 * n)?;
                let params = cur.i16()?.max(0);
                for _ in 0..params {
                    let len = cur.i32()?;
                    if len > 0 {
                        cur.bytes(len as usize)?;
                    }
                }
                let n = cur.i16()?;
                let code = |c: i16| Format::from_code(c).ok_or(bad(tag, "unknown result format code"));
                let formats = match n {
                    0 => ResultFormats::All(Format::Text),
                    1 => ResultFormats::All(code(cur.i16()?)?),
                    n if n > 1 => {
                        let mut v = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            v.push(code(cur.i16()?)?);
                        }
                        ResultFormats::PerColumn(v)
                    }
                    _ => return Err(bad(tag, "negative result format count")),
                };
                if self.described_statements.contains(&statement) {
                    self.described_portals.insert(portal.clone());
                } else {
                    self.described_portals.remove(&portal);
                }
                Expect::Bind { portal, statement, formats }
            }
            frontend::DESCRIBE => {
                let kind = cur.u8()?;
                let name = cur.cstr()?.to_string();
                match kind {
                    b'S' => {
                        self.described_statements.insert(name.clone());
                        Expect::DescribeStatement { name }
                    }
                    b'P' => {
                        self.described_portals.insert(name.clone());
                        Expect::DescribePortal { name, injected: false }
                    }
                    _ => return Err(bad(tag, "Describe of neither statement nor portal")),
                }
            }
            frontend::EXECUTE => {
                let portal = cur.cstr()?.to_string();
                if !self.observe_only && !self.described_portals.contains(&portal) {
                    // The client never asked for this portal's columns; ask
                    // ourselves so its rows can be masked, and hide the answer.
                    self.described_portals.insert(portal.clone());
                    let at = wire::begin_message(out, frontend::DESCRIBE);
                    out.put_u8(b'P');
                    out.extend_from_slice(portal.as_bytes());
                    out.put_u8(0);
                    wire::finish_message(out, at);
                    out.extend_from_slice(msg);
                    let mut q = lock(&self.queue);
                    q.push_back(Expect::DescribePortal { name: portal.clone(), injected: true });
                    q.push_back(Expect::Execute { portal });
                    return Ok(Verdict::Replaced);
                }
                Expect::Execute { portal }
            }
            frontend::CLOSE => {
                let kind = cur.u8()?;
                let name = cur.cstr()?;
                match kind {
                    b'S' => self.described_statements.remove(name),
                    _ => self.described_portals.remove(name),
                };
                Expect::Close
            }
            frontend::SYNC => Expect::Sync,
            // Answered like a simple query: a result, then ReadyForQuery.
            frontend::FUNCTION_CALL if self.observe_only => Expect::Sync,
            frontend::FUNCTION_CALL => {
                return Err(refuse("masker: the fast-path function call interface is not allowed for masked sessions"));
            }
            _ => return Ok(Verdict::Forward),
        };
        lock(&self.queue).push_back(expect);
        Ok(Verdict::Forward)
    }
}

/// What a session masks with: its policy, where it goes, its catalog.
pub struct MaskContext {
    pub policy: Arc<SessionPolicy>,
    pub catalog: Arc<Catalog>,
    pub destination: String,
    pub database: String,
    pub entry: Arc<SessionEntry>,
}

impl MaskContext {
    /// What the client side of this session needs to refuse statements.
    pub fn lineage_guard(&self) -> LineageGuard {
        LineageGuard {
            policy: self.policy.clone(),
            catalog: self.catalog.clone(),
            destination: self.destination.clone(),
            database: self.database.clone(),
        }
    }
}

struct Statement {
    sql: Arc<str>,
    fields: Option<Arc<Vec<FieldDescription>>>,
    /// The plan for the formats of the last Bind, reused while they repeat.
    plan: Option<(ResultFormats, Arc<RowPlan>)>,
}

struct Portal {
    statement: String,
    formats: ResultFormats,
    plan: Option<Arc<RowPlan>>,
}

/// Server → client side of a masking session.
pub struct ServerTracker {
    queue: ExpectQueue,
    ctx: MaskContext,
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    /// Plan for the rows now arriving.
    current: Option<Arc<RowPlan>>,
    copy: Option<CopyMasker>,
    /// A refused result is being swallowed up to its end.
    swallowing: bool,
    catalog_warned: bool,
    /// Statements of the current simple Query completed so far: the next
    /// result belongs to the statement at this index.
    query_index: usize,
    /// Audit events, per-identity counters and latency of this session.
    trail: crate::audit::StatementTrail,
    /// Only follow statements for the audit trail: every message reaches
    /// the client as the server sent it.
    observe_only: bool,
}

impl ServerTracker {
    pub fn new(queue: ExpectQueue, ctx: MaskContext) -> Self {
        ServerTracker {
            trail: crate::audit::StatementTrail::new(ctx.entry.clone()),
            queue,
            ctx,
            statements: HashMap::new(),
            portals: HashMap::new(),
            current: None,
            copy: None,
            swallowing: false,
            catalog_warned: false,
            query_index: 0,
            observe_only: false,
        }
    }

    /// Follows statements for `statement` audit events, per-identity counters
    /// and latency without masking, scrubbing or refusing anything: for
    /// sessions without a policy while the audit trail is on.
    pub fn observe_only(mut self) -> Self {
        self.observe_only = true;
        self
    }

    /// The plan for rows of the Execute at the head of the queue, if that is
    /// what comes next.
    fn execute_plan(&self) -> Option<Arc<RowPlan>> {
        match lock(&self.queue).front() {
            Some(Expect::Execute { portal }) => self.portals.get(portal).and_then(|p| p.plan.clone()),
            _ => None,
        }
    }

    /// Builds the masking plan for columns `fields` in `formats` (or the
    /// formats the fields carry).
    /// `sql`: the statement text and the index of the statement in it, for
    /// lineage (output columns computed from masked columns are masked).
    async fn plan(
        &mut self,
        fields: &[FieldDescription],
        formats: Option<&ResultFormats>,
        sql: Option<(&str, usize)>,
    ) -> Arc<RowPlan> {
        if self.observe_only {
            let columns = fields.iter().map(|f| (ColumnAction::Allow, f.type_oid, f.format)).collect();
            return Arc::new(RowPlan::new(columns, self.ctx.policy.keys()));
        }
        let decisions = match sql {
            Some((sql, index)) => {
                let resolver = Resolver {
                    policy: &self.ctx.policy,
                    catalog: &self.ctx.catalog,
                    destination: &self.ctx.destination,
                    database: &self.ctx.database,
                };
                Some(resolver.decisions(sql, index, fields.len()).await)
            }
            // No statement text known: fail closed on computed columns.
            None => None,
        };
        let mut tables: Vec<TableOid> = fields.iter().map(|f| f.table).filter(|t| t.0 != 0).collect();
        tables.sort();
        tables.dedup();
        let resolved = if tables.is_empty() {
            Ok(HashMap::new())
        } else {
            self.ctx.catalog.resolve(&self.ctx.destination, &self.ctx.database, &tables).await
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                if !self.catalog_warned {
                    warn!(session = self.ctx.entry.id, "{e}; masking every table column of this session");
                    self.catalog_warned = true;
                }
                HashMap::new()
            }
        };
        let policy = &self.ctx.policy;
        let columns = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let decision = decisions.as_ref().and_then(|d| d.get(i));
                let action = if let Some(Decision::Force(a)) = decision {
                    a.clone()
                } else if f.table.0 == 0 {
                    match decision {
                        Some(Decision::Direct(a)) => a.clone(),
                        _ => ColumnAction::Redact,
                    }
                } else {
                    match resolved.get(&f.table).and_then(|cols| cols.get(&f.column)) {
                        Some(info) => {
                            let base = info.base.as_deref().unwrap_or(info);
                            let action =
                                policy.column_action(&base.schema, &base.table, &base.column, base.comment.as_deref());
                            // A view column computed from other columns gets
                            // at least content detection.
                            if info.derived_from_view && action == ColumnAction::Allow {
                                policy.unclassified_action()
                            } else {
                                action
                            }
                        }
                        // Unknown origin: fail closed.
                        None => ColumnAction::Redact,
                    }
                };
                let format = formats.map(|fm| fm.for_column(i)).unwrap_or(f.format);
                (action, f.type_oid, format)
            })
            .collect();
        Arc::new(RowPlan::new(columns, policy.keys()).with_names(fields.iter().map(|f| f.name.to_string()).collect()))
    }

    async fn on_row_description(&mut self, msg: &[u8]) -> Result<Verdict, RelayError> {
        let fields = wire::parse_row_description(&msg[5..])?;
        let front = lock(&self.queue).pop_front();
        match front {
            Some(Expect::Query { sql }) => {
                self.current = Some(self.plan(&fields, None, Some((&*sql, self.query_index))).await);
                lock(&self.queue).push_front(Expect::Query { sql });
                Ok(Verdict::Forward)
            }
            Some(Expect::DescribeStatement { name }) => {
                let fields = Arc::new(fields);
                let sql = self.statements.get(&name).map(|s| s.sql.clone());
                let waiting: Vec<String> = self
                    .portals
                    .iter()
                    .filter(|(_, p)| p.statement == name && p.plan.is_none())
                    .map(|(k, _)| k.clone())
                    .collect();
                for portal in waiting {
                    let formats = self.portals[&portal].formats.clone();
                    let plan = self.plan(&fields, Some(&formats), sql.as_deref().map(|s| (s, 0))).await;
                    if let Some(p) = self.portals.get_mut(&portal) {
                        p.plan = Some(plan);
                    }
                }
                if let Some(s) = self.statements.get_mut(&name) {
                    s.fields = Some(fields);
                    s.plan = None;
                }
                Ok(Verdict::Forward)
            }
            Some(Expect::DescribePortal { name, injected }) => {
                let sql =
                    self.portals.get(&name).and_then(|p| self.statements.get(&p.statement)).map(|s| s.sql.clone());
                let plan = self.plan(&fields, None, sql.as_deref().map(|s| (s, 0))).await;
                if let Some(p) = self.portals.get_mut(&name) {
                    p.plan = Some(plan);
                }
                Ok(if injected { Verdict::Replaced } else { Verdict::Forward })
            }
            other => {
                if let Some(e) = other {
                    lock(&self.queue).push_front(e);
                }
                Err(refuse("masker: RowDescription that answers no request; closing the session"))
            }
        }
    }

    async fn on_bind_complete(&mut self) -> Result<Verdict, RelayError> {
        let front = lock(&self.queue).pop_front();
        let Some(Expect::Bind { portal, statement, formats }) = front else {
            return Err(refuse("masker: BindComplete that answers no Bind; closing the session"));
        };
        let cached = self.statements.get(&statement).and_then(|s| {
            let fields = s.fields.clone()?;
            match &s.plan {
                Some((f, plan)) if *f == formats => Some(Ok(plan.clone())),
                _ => Some(Err((fields, s.sql.clone()))),
            }
        });
        let plan = match cached {
            Some(Ok(plan)) => Some(plan),
            Some(Err((fields, sql))) => {
                let plan = self.plan(&fields, Some(&formats), Some((&*sql, 0))).await;
                if let Some(s) = self.statements.get_mut(&statement) {
                    s.plan = Some((formats.clone(), plan.clone()));
                }
                Some(plan)
            }
            None => None,
        };
        self.portals.insert(portal, Portal { statement, formats, plan });
        Ok(Verdict::Forward)
    }

    fn on_data_row(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if self.swallowing {
            return Ok(Verdict::Replaced);
        }
        if self.current.is_none() {
            self.current = self.execute_plan();
        }
        let Some(plan) = &self.current else {
            return Err(refuse(
                "masker: rows whose columns are unknown; closing the session rather than relaying them",
            ));
        };
        // Rows of an all-allowed plan stream through unseen (see `wants`).
        let counters = &self.ctx.entry.counters;
        counters.rows.fetch_add(1, Ordering::Relaxed);
        let per_column = self.trail.column_counts(plan);
        let stats = masking::mask_data_row_counted(plan, &msg[5..], out, per_column)
            .map_err(|e| refuse(format!("masker: cannot mask a row ({e}); closing the session")))?;
        counters.masked_cells.fetch_add(stats.total(), Ordering::Relaxed);
        self.trail.row(Some(&stats));
        Ok(Verdict::Replaced)
    }

    /// End of one statement's result: CommandComplete, EmptyQueryResponse or
    /// PortalSuspended.
    fn on_result_end(&mut self, msg: &[u8]) -> Result<Verdict, RelayError> {
        if msg[0] == backend::COMMAND_COMPLETE {
            let sql = self.audit_sql();
            self.trail.end(sql.as_deref(), Some(&msg[5..]), None);
        }
        self.current = None;
        self.copy = None;
        self.ctx.entry.counters.statements.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        match q.front() {
            Some(Expect::Execute { .. }) => {
                q.pop_front();
            }
            Some(Expect::Query { .. }) => self.query_index += 1,
            _ => {}
        }
        drop(q);
        if msg[0] == backend::COMMAND_COMPLETE && is_ddl_tag(&msg[5..]) {
            self.ctx.catalog.invalidate(&self.ctx.destination, &self.ctx.database);
        }
        if std::mem::take(&mut self.swallowing) {
            return Ok(Verdict::Replaced);
        }
        Ok(Verdict::Forward)
    }

    async fn on_copy_out(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        let sql = match lock(&self.queue).front() {
            Some(Expect::Query { sql }) => Some(sql.clone()),
            Some(Expect::Execute { portal }) => {
                self.portals.get(portal).and_then(|p| self.statements.get(&p.statement)).map(|s| s.sql.clone())
            }
            _ => None,
        };
        let masker = match sql {
            Some(sql) => self.copy_masker(&sql, &msg[5..]).await,
            None => Err("the COPY statement is unknown".to_string()),
        };
        match masker {
            Ok(m) => {
                self.copy = Some(m);
                Ok(Verdict::Forward)
            }
            Err(why) => {
                self.swallowing = true;
                let message = format!("masker: COPY TO STDOUT refused: {why}");
                let hint = "COPY a table (optionally with a column list) in text, csv or binary format, or use SELECT";
                wire::put_error_with_hint(out, wire::Severity::Error, "42501", &message, Some(hint));
                Ok(Verdict::Replaced)
            }
        }
    }

    async fn copy_masker(&mut self, sql: &str, response: &[u8]) -> Result<CopyMasker, String> {
        let copy = crate::sql::copy::parse_copy_to_stdout(sql)?;
        let mut cur = Cursor::new(response, backend::COPY_OUT_RESPONSE);
        let overall = cur.u8().map_err(|e| e.to_string())?;
        let columns = self
            .ctx
            .catalog
            .relation_columns(&self.ctx.destination, &self.ctx.database, copy.schema.as_deref(), &copy.table)
            .await
            .map_err(|e| e.to_string())?;
        let selected: Vec<&(String, TypeOid, crate::plan::catalog::ColumnInfo)> = match &copy.columns {
            None => columns.iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| columns.iter().find(|c| &c.0 == n).ok_or_else(|| format!("unknown column {n:?}")))
                .collect::<Result<_, _>>()?,
        };
        let policy = &self.ctx.policy;
        let plan = selected
            .iter()
            .map(|(_, ty, info)| {
                let base = info.base.as_deref().unwrap_or(info);
                (policy.column_action(&base.schema, &base.table, &base.column, base.comment.as_deref()), *ty)
            })
            .collect();
        use crate::sql::copy::CopyFormat as Sql;
        let options = match (overall, copy.format) {
            (1, _) | (_, Sql::Binary) => masking::CopyOptions::binary(),
            (_, Sql::Csv { header }) => masking::CopyOptions { header, ..masking::CopyOptions::csv() },
            (_, Sql::Text) => masking::CopyOptions::text(),
        };
        Ok(CopyMasker::new(masking::CopyPlan::new(options, plan, policy.keys())))
    }

    fn on_copy_data(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if self.swallowing {
            return Ok(Verdict::Replaced);
        }
        let Some(copy) = self.copy.as_mut() else {
            return Err(refuse("masker: COPY data outside a COPY; closing the session"));
        };
        let stats = copy
            .push(&msg[5..], out)
            .map_err(|e| refuse(format!("masker: cannot mask COPY data ({e}); closing the session")))?;
        self.ctx.entry.counters.masked_cells.fetch_add(stats.total(), Ordering::Relaxed);
        self.trail.masked(&stats);
        Ok(Verdict::Replaced)
    }

    /// The text of the statement the server is answering now, for audit.
    fn audit_sql(&self) -> Option<Arc<str>> {
        let q = lock(&self.queue);
        let named = |name: &str| self.statements.get(name).map(|s| s.sql.clone());
        match q.front()? {
            Expect::Query { sql } | Expect::Parse { sql, .. } => Some(sql.clone()),
            Expect::Bind { statement, .. } => named(statement),
            Expect::DescribeStatement { name } => named(name),
            Expect::Execute { portal } | Expect::DescribePortal { name: portal, .. } => {
                self.portals.get(portal).and_then(|p| named(&p.statement))
            }
            Expect::Close | Expect::Sync => None,
        }
    }

    fn on_error(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        let tag = msg[0];
        if tag == backend::ERROR_RESPONSE
            && let Some(sql) = self.audit_sql()
        {
            self.trail.end(Some(&sql), None, Some(&msg[5..]));
        }
        if self.observe_only {
            // The message goes out as it came (see below for the queue).
            out.extend_from_slice(msg);
        } else if self.audit_sql().is_some_and(|sql| runs_client_code(&sql)) {
            withhold_message(&msg[5..], out, tag)?;
        } else {
            masking::mask_error_fields(&msg[5..], out, tag)
                .map_err(|e| refuse(format!("masker: cannot scrub a server message ({e}); closing the session")))?;
        }
        if tag == backend::ERROR_RESPONSE {
            self.current = None;
            self.copy = None;
            let mut q = lock(&self.queue);
            if !matches!(q.front(), Some(Expect::Query { .. })) {
                // Extended protocol: the server skips everything up to Sync.
                while !matches!(q.front(), None | Some(Expect::Sync)) {
                    q.pop_front();
                }
            }
            if std::mem::take(&mut self.swallowing) {
                out.clear();
                return Ok(Verdict::Replaced);
            }
        }
        Ok(Verdict::Replaced)
    }
}

/// Appends an ErrorResponse/NoticeResponse (`tag`) that keeps only the
/// severity and SQLSTATE of `body` and says that the text was withheld: for
/// messages raised by the client's own procedural code.
fn withhold_message(body: &[u8], out: &mut BytesMut, tag: u8) -> Result<(), RelayError> {
    let mut cur = Cursor::new(body, tag);
    let at = wire::begin_message(out, tag);
    loop {
        let kind = cur.u8()?;
        if kind == 0 {
            break;
        }
        let value = cur.cstr()?;
        if matches!(kind, b'S' | b'V' | b'C') {
            out.put_u8(kind);
            out.extend_from_slice(value.as_bytes());
            out.put_u8(0);
        }
    }
    out.put_u8(b'M');
    out.extend_from_slice(b"masker: the text of a message raised by procedural code (DO, CALL) is withheld");
    out.put_u8(0);
    out.put_u8(0);
    wire::finish_message(out, at);
    Ok(())
}

/// Whether a CommandComplete tag reports DDL (the catalog may have changed).
fn is_ddl_tag(body: &[u8]) -> bool {
    const DDL: [&[u8]; 5] = [b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"SELECT INTO"];
    DDL.iter().any(|p| body.starts_with(p))
}

impl Filter for ServerTracker {
    fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
        if !wire::is_backend_tag(header.tag) {
            return Err(FrameError::UnknownTag { tag: header.tag });
        }
        Ok(match header.tag {
            // Observing only: rows, COPY data, notices and notifications
            // stream through (rows need no plan: nothing is masked).
            backend::DATA_ROW if self.observe_only => {
                self.ctx.entry.counters.rows.fetch_add(1, Ordering::Relaxed);
                self.trail.row(None);
                false
            }
            backend::COPY_DATA | backend::COPY_DONE | backend::NOTIFICATION_RESPONSE | backend::NOTICE_RESPONSE
                if self.observe_only =>
            {
                false
            }
            backend::DATA_ROW => {
                if self.current.is_none() {
                    self.current = self.execute_plan();
                }
                let whole = self.swallowing || self.current.as_ref().is_none_or(|p| !p.is_passthrough());
                if !whole {
                    // Streams through unseen: count it here.
                    self.ctx.entry.counters.rows.fetch_add(1, Ordering::Relaxed);
                    self.trail.row(None);
                }
                whole
            }
            backend::PARAMETER_STATUS
            | backend::AUTHENTICATION
            | backend::BACKEND_KEY_DATA
            | backend::NEGOTIATE_PROTOCOL_VERSION
            | backend::PARAMETER_DESCRIPTION => false,
            _ => true,
        })
    }

    async fn on_message(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        match msg[0] {
            backend::DATA_ROW => self.on_data_row(msg, out),
            backend::ROW_DESCRIPTION => self.on_row_description(msg).await,
            backend::BIND_COMPLETE => self.on_bind_complete().await,
            backend::PARSE_COMPLETE => {
                let front = lock(&self.queue).pop_front();
                match front {
                    Some(Expect::Parse { name, sql }) => {
                        self.statements.insert(name, Statement { sql, fields: None, plan: None });
                        Ok(Verdict::Forward)
                    }
                    _ => Err(refuse("masker: ParseComplete that answers no Parse; closing the session")),
                }
            }
            backend::NO_DATA => {
                let front = lock(&self.queue).pop_front();
                match front {
                    Some(Expect::DescribePortal { injected: true, .. }) => Ok(Verdict::Replaced),
                    Some(Expect::DescribeStatement { name }) => {
                        if let Some(s) = self.statements.get_mut(&name) {
                            s.fields = Some(Arc::new(Vec::new()));
                        }
                        Ok(Verdict::Forward)
                    }
                    _ => Ok(Verdict::Forward),
                }
            }
            backend::CLOSE_COMPLETE => {
                let mut q = lock(&self.queue);
                if matches!(q.front(), Some(Expect::Close)) {
                    q.pop_front();
                }
                Ok(Verdict::Forward)
            }
            backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED => {
                self.on_result_end(msg)
            }
            backend::READY_FOR_QUERY => {
                self.trail.ready();
                self.query_index = 0;
                self.current = None;
                self.copy = None;
                self.swallowing = false;
                let mut q = lock(&self.queue);
                if matches!(q.front(), Some(Expect::Query { .. } | Expect::Sync)) {
                    q.pop_front();
                }
                Ok(Verdict::Forward)
            }
            backend::ERROR_RESPONSE | backend::NOTICE_RESPONSE => self.on_error(msg, out),
            backend::NOTIFICATION_RESPONSE => {
                masking::mask_notification(&msg[5..], out, false)
                    .map_err(|e| refuse(format!("masker: cannot scrub a notification ({e}); closing the session")))?;
                Ok(Verdict::Replaced)
            }
            backend::COPY_OUT_RESPONSE | backend::COPY_BOTH_RESPONSE if self.observe_only => Ok(Verdict::Forward),
            backend::COPY_OUT_RESPONSE => self.on_copy_out(msg, out).await,
            backend::COPY_DATA => self.on_copy_data(msg, out),
            backend::COPY_DONE => {
                if self.swallowing {
                    return Ok(Verdict::Replaced);
                }
                if let Some(copy) = self.copy.as_mut() {
                    copy.finish()
                        .map_err(|e| refuse(format!("masker: COPY data ended badly ({e}); closing the session")))?;
                }
                Ok(Verdict::Forward)
            }
            backend::COPY_BOTH_RESPONSE => {
                Err(refuse("masker: replication (CopyBoth) is not allowed for masked sessions"))
            }
            _ => Ok(Verdict::Forward),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withheld_message_keeps_only_severity_and_sqlstate() {
        let body = b"SERROR\0VERROR\0CP0001\0Mrelation \"Alice Martin\"\0WPL/pgSQL function inline_code_block\0\0";
        let mut out = BytesMut::new();
        withhold_message(body, &mut out, backend::ERROR_RESPONSE).unwrap();
        let header = wire::peek_header(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(header.total_len, out.len());
        let text = String::from_utf8_lossy(&out[5..]).to_string();
        assert!(text.starts_with("SERROR\0VERROR\0CP0001\0Mmasker: "), "{text:?}");
        assert!(!text.contains("Alice") && !text.contains("inline_code_block"), "{text:?}");
        // A truncated body is an error, not a panic or a partial message.
        assert!(withhold_message(b"SERROR\0CP0", &mut BytesMut::new(), backend::ERROR_RESPONSE).is_err());
    }

    #[test]
    fn client_code_is_told_from_our_refusals() {
        assert!(runs_client_code("DO $$ BEGIN RAISE NOTICE 'x'; END $$"));
        assert!(runs_client_code("select 1; call p()"));
        assert!(!runs_client_code(&refusal_statement("masker: refused")));
        assert!(!runs_client_code("select 1"));
    }
}
