//! The server → client side of a session: follows each result back to the
//! request that produced it and masks rows, COPY data, errors, notices and
//! notifications with the right plan.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use tracing::warn;

use super::expect::{Expect, ExpectQueue, Name, Text, lock};
use super::memo::{Memo, Stamp};
use super::model::{Published, SearchPath, SessionModel};
use crate::audit::trail::StatementTrail;
use crate::masking::{self, ColumnAction, CopyMasker, RowPlan};
use crate::plan::PlanContext;
use crate::plan::copy::CopyPlanError;
use crate::plan::lineage::{is_refusal, put_refusal_error, refusal_fields};
use crate::session::context::Session;
use crate::session::relay::{Filter, RelayError, Verdict};
use crate::wire::message::Message;
use crate::wire::{self, Cursor, FieldDescription, FrameError, Header, ResultFormats, backend};

struct Statement {
    sql: Arc<Text>,
    fields: Option<Arc<Vec<FieldDescription>>>,
    /// The plan for the formats of the last Bind, reused while they repeat.
    plan: Option<(ResultFormats, Arc<RowPlan>)>,
}

struct Portal {
    statement: Name,
    formats: ResultFormats,
    plan: Option<Arc<RowPlan>>,
}

/// Server → client side of a masking session.
pub struct ServerTracker {
    queue: ExpectQueue,
    /// What the session's column plans are made with.
    planner: Arc<PlanContext>,
    session: Arc<Session>,
    // Looked up by name for every Bind, Execute and result: a fast hash
    // (names come from the client, which gains nothing by colliding them
    // but its own session's speed).
    statements: FxHashMap<Name, Statement>,
    portals: FxHashMap<Name, Portal>,
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
    trail: StatementTrail,
    /// Only follow statements for the audit trail: every message reaches
    /// the client as the server sent it.
    observe_only: bool,
    /// Observe mode: plans and masks as when enforcing, into a scratch
    /// buffer, to count what would be masked; every message reaches the
    /// client as the server sent it.
    observing: bool,
    /// The session as the server sees it (objects, search_path, prepared
    /// statements, cursors), updated as statements complete.
    model: SessionModel,
    /// Where the model goes at each ReadyForQuery, for the client side.
    published: Published,
    /// What the statement being answered now is, once worked out.
    attribution: Option<(StatementKey, Attribution)>,
    /// A tainted statement ran since the last ReadyForQuery: the settings
    /// the server reports before the next one may carry its values.
    batch_tainted: bool,
    /// Taints and row plans already worked out, for statements sent again.
    memo: Memo,
    /// An extended-protocol error arrived before the client's Sync: until
    /// ReadyForQuery, what the client sends is skipped by the server.
    skipping_to_sync: bool,
}

/// One statement of one text: the text's address and the index.
type StatementKey = (usize, usize);

/// What the statement a message belongs to is, for that message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribution {
    /// No statement is running (startup, authentication, idle).
    None,
    /// One of masker's own refusal statements.
    Refusal,
    /// Text PostgreSQL's parser rejects: it does not run.
    Unparsed,
    /// Reads nothing but allowed columns, catalogs, literals, parameters.
    Clean,
    /// Reads classified data (or something masker cannot trace).
    Tainted,
}

impl ServerTracker {
    /// The server side of `session`, planning with `planner`; `queue` is
    /// shared with its [`super::ClientTracker`].
    pub fn new(queue: ExpectQueue, planner: Arc<PlanContext>, session: Arc<Session>, published: Published) -> Self {
        let ctx = &session.ctx;
        let trail = StatementTrail::new(
            session.id(),
            session.identity().map(str::to_string),
            ctx.audit.clone(),
            ctx.metrics.clone(),
            session.trail.clone(),
        );
        ServerTracker {
            trail,
            queue,
            planner,
            session,
            statements: FxHashMap::default(),
            portals: FxHashMap::default(),
            current: None,
            copy: None,
            swallowing: false,
            catalog_warned: false,
            query_index: 0,
            observe_only: false,
            observing: false,
            model: SessionModel::default(),
            published,
            attribution: None,
            batch_tainted: false,
            skipping_to_sync: false,
            memo: Memo::default(),
        }
    }

    /// What the memo's entries are valid under now.
    fn stamp(&self) -> Stamp {
        Stamp { model: self.model.revision(), catalog: self.planner.catalog.generation() }
    }

    /// Whether every catalog look-up of this session's database answered
    /// since `mark` (see [`crate::plan::catalog::Catalog::failure_mark`]):
    /// only then is what was worked out worth remembering.
    fn catalog_answered_since(&self, mark: u64) -> bool {
        self.planner.catalog.failed_since(mark, &self.planner.destination, &self.planner.database).is_none()
    }

    /// The statement the server is answering now: its text and its index
    /// in the text.
    fn current(&self) -> Option<(Arc<Text>, usize)> {
        let q = lock(&self.queue);
        let named = |name: &str| self.statements.get(name).map(|s| s.sql.clone());
        let sql = match q.front()? {
            Expect::Query { sql } => return Some((sql.clone(), self.query_index)),
            Expect::Parse { sql, .. } => Some(sql.clone()),
            Expect::Bind { statement, .. } => named(statement),
            Expect::DescribeStatement { name } => named(name),
            Expect::Execute { portal } | Expect::DescribePortal { name: portal, .. } => {
                self.portals.get(portal).and_then(|p| named(&p.statement))
            }
            Expect::Close | Expect::Sync => None,
        }?;
        Some((sql, 0))
    }

    /// What the statement being answered now is (worked out once per
    /// statement: its taint is decided with the session as it stood
    /// before the statement ran).
    async fn attribution(&mut self) -> Attribution {
        let now = self.current();
        self.attribution_of(now).await
    }

    /// [`ServerTracker::attribution`] of `now`, the statement being answered.
    async fn attribution_of(&mut self, now: Option<(Arc<Text>, usize)>) -> Attribution {
        if let Some(a) = self.attribution_known(&now) {
            return a;
        }
        let Some((sql, index)) = now else { return Attribution::None };
        let Ok(analysis) = sql.analysis().as_ref() else { return Attribution::Unparsed };
        let Some(stmt) = analysis.statements.get(index) else { return Attribution::Clean };
        let stamp = self.stamp();
        let mark = self.planner.catalog.failure_mark();
        let tainted = self.planner.resolver(&self.model).taint(stmt).await.is_some();
        if self.catalog_answered_since(mark) {
            self.memo.entry(sql.analysis(), index, stamp).tainted = Some(tainted);
        }
        let a = if tainted { Attribution::Tainted } else { Attribution::Clean };
        self.attributed(&sql, index, a);
        a
    }

    /// [`ServerTracker::attribution_of`] `now` if it is known without a
    /// catalog look-up (worked out for this statement already, or
    /// remembered in the memo); `None`: it has to be worked out.
    fn attribution_known(&mut self, now: &Option<(Arc<Text>, usize)>) -> Option<Attribution> {
        let Some((sql, index)) = now else { return Some(Attribution::None) };
        let key = (Arc::as_ptr(sql) as *const u8 as usize, *index);
        if let Some((k, a)) = self.attribution
            && k == key
        {
            return Some(a);
        }
        let a = if is_refusal(sql.sql()) {
            Attribution::Refusal
        } else {
            match sql.analysis().as_ref() {
                Err(_) => Attribution::Unparsed,
                Ok(analysis) if analysis.statements.get(*index).is_none() => Attribution::Clean,
                Ok(_) => {
                    let stamp = self.stamp();
                    match self.memo.entry(sql.analysis(), *index, stamp).tainted? {
                        true => Attribution::Tainted,
                        false => Attribution::Clean,
                    }
                }
            }
        };
        self.attributed(sql, *index, a);
        Some(a)
    }

    /// Notes that statement `index` of `sql` is `a`.
    fn attributed(&mut self, sql: &Arc<Text>, index: usize, a: Attribution) {
        if a == Attribution::Tainted {
            self.batch_tainted = true;
        }
        self.attribution = Some(((Arc::as_ptr(sql) as *const u8 as usize, index), a));
    }

    /// The session model follows a statement that completed.
    fn completed(&mut self, now: Option<(Arc<Text>, usize)>, tag: &[u8]) {
        if let Some((sql, index)) = now
            && let Ok(a) = sql.analysis().as_ref()
            && let Some(stmt) = a.statements.get(index)
        {
            self.model.apply(stmt);
            let tainted = matches!(self.attribution, Some((_, Attribution::Tainted)));
            let opaque = stmt.reads.iter().any(|l| l.sources.contains(&crate::sql::Source::Opaque));
            if opaque || (tainted && self.calls_user_code(stmt)) {
                // A function or procedure masker does not analyse ran.
                self.model.opaque_code_ran();
            }
        }
        self.model.command_complete(tag);
    }

    /// Whether `stmt` calls a function PostgreSQL does not ship: built-in
    /// functions write no table (those that run SQL given as text read
    /// [`crate::sql::Source::Opaque`]), so a catalog query calling
    /// `format_type` leaves the session's temporary tables as they were.
    /// Unqualified names are built in only while `pg_catalog` is searched
    /// first (not named in search_path, or named first).
    fn calls_user_code(&self, stmt: &crate::sql::Statement) -> bool {
        let catalog_first = match self.model.search_path() {
            SearchPath::Default => true,
            SearchPath::Set(schemas) => {
                let at = schemas.iter().position(|s| s.eq_ignore_ascii_case("pg_catalog"));
                at.is_none_or(|i| i == 0)
            }
            SearchPath::Unknown => false,
        };
        stmt.functions.iter().any(|f| {
            let qualified = f.starts_with("pg_catalog.");
            !(crate::plan::lineage::builtin_function(f) && (qualified || catalog_first))
        })
    }

    /// Follows statements for `statement` audit events, per-identity counters
    /// and latency without masking, scrubbing or refusing anything: for
    /// sessions without a policy while the audit trail is on.
    pub fn observe_only(mut self) -> Self {
        self.observe_only = true;
        self
    }

    /// Observe mode (`mode = "observe"`): everything is planned and masked as
    /// when enforcing, but what the masking writes goes nowhere (the
    /// filter's output buffer is only kept for replaced messages) and every
    /// message is forwarded as the server sent it; the masked cells are
    /// counted as what enforcing would have masked.
    pub fn observing(mut self) -> Self {
        self.observing = true;
        self.trail = self.trail.observing();
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

    /// The masking plan for columns `fields` (see [`PlanContext::row_plan`]);
    /// all columns allowed when observing only.
    async fn plan(
        &mut self,
        fields: &[FieldDescription],
        formats: Option<&ResultFormats>,
        sql: Option<(&str, usize)>,
    ) -> Arc<RowPlan> {
        self.plan_checked(fields, formats, sql).await.0
    }

    /// [`ServerTracker::plan`], and whether the catalog answered (a plan
    /// made without it fails closed and is not worth keeping).
    async fn plan_checked(
        &mut self,
        fields: &[FieldDescription],
        formats: Option<&ResultFormats>,
        sql: Option<(&str, usize)>,
    ) -> (Arc<RowPlan>, bool) {
        if self.observe_only {
            let columns = fields.iter().map(|f| (ColumnAction::Allow, f.type_oid, f.format)).collect();
            return (Arc::new(RowPlan::new(columns, self.planner.policy.keys())), true);
        }
        let (plan, error) = self.planner.row_plan(&self.model, fields, formats, sql).await;
        let answered = error.is_none();
        if let Some(e) = error
            && !self.catalog_warned
        {
            warn!(session = self.session.id(), "{e}; masking every table column of this session");
            self.catalog_warned = true;
        }
        (plan, answered)
    }

    /// The plan for rows described by the RowDescription `body` (in
    /// `formats`) that answer statement `index` of `sql`: the one made for
    /// the same statement and description before (see [`Memo`]), else a
    /// new one.
    async fn row_plan(
        &mut self,
        body: &[u8],
        formats: Option<&ResultFormats>,
        sql: Option<(Arc<Text>, usize)>,
    ) -> Result<Arc<RowPlan>, RelayError> {
        let Some((text, index)) = sql.filter(|_| !self.observe_only) else {
            let fields = wire::parse_row_description(body)?;
            return Ok(self.plan(&fields, formats, None).await);
        };
        let stamp = self.stamp();
        if let Some(plan) = self.memo.entry(text.analysis(), index, stamp).plan(body, formats) {
            return Ok(plan);
        }
        let fields = wire::parse_row_description(body)?;
        let mark = self.planner.catalog.failure_mark();
        let (plan, answered) = self.plan_checked(&fields, formats, Some((text.sql(), index))).await;
        if answered && self.catalog_answered_since(mark) {
            self.memo.entry(text.analysis(), index, stamp).add_plan(body, formats, plan.clone());
        }
        Ok(plan)
    }

    /// Columns described: the plan for the rows that follow (the memo's,
    /// if [`ServerTracker::row_description_now`] found none, is made here).
    async fn on_row_description(&mut self, msg: Message<'_>) -> Result<Verdict, RelayError> {
        let front = lock(&self.queue).pop_front();
        match front {
            Some(Expect::Query { sql }) => {
                // Back in place first: the queue is whole whatever happens.
                lock(&self.queue).push_front(Expect::Query { sql: sql.clone() });
                let plan = self.row_plan(msg.body(), None, Some((sql, self.query_index))).await?;
                self.current = Some(plan);
                Ok(Verdict::Forward)
            }
            Some(Expect::DescribeStatement { name }) => {
                let fields = Arc::new(wire::parse_row_description(msg.body())?);
                let sql = self.statements.get(&name).map(|s| s.sql.clone());
                let waiting: Vec<Name> = self
                    .portals
                    .iter()
                    .filter(|(_, p)| p.statement == name && p.plan.is_none())
                    .map(|(k, _)| k.clone())
                    .collect();
                for portal in waiting {
                    let formats = self.portals[&portal].formats.clone();
                    let plan = self.plan(&fields, Some(&formats), sql.as_deref().map(|s| (s.sql(), 0))).await;
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
                let plan = self.row_plan(msg.body(), None, sql.map(|s| (s, 0))).await?;
                if let Some(p) = self.portals.get_mut(&name) {
                    p.plan = Some(plan);
                }
                Ok(if injected { Verdict::Replaced } else { Verdict::Forward })
            }
            other => {
                if let Some(e) = other {
                    lock(&self.queue).push_front(e);
                }
                Err(RelayError::refused("masker: RowDescription that answers no request; closing the session"))
            }
        }
    }

    /// A portal is bound: its plan, made here when
    /// [`ServerTracker::bind_complete_now`] found that it needs one.
    async fn on_bind_complete(&mut self) -> Result<Verdict, RelayError> {
        let front = lock(&self.queue).pop_front();
        let Some(Expect::Bind { portal, statement, formats }) = front else {
            return Err(RelayError::refused("masker: BindComplete that answers no Bind; closing the session"));
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
                let plan = self.plan(&fields, Some(&formats), Some((sql.sql(), 0))).await;
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

    /// [`ServerTracker::on_bind_complete`] when the portal's plan needs no
    /// work: the statement's columns are not known yet (its Execute plans
    /// them), or its plan for these result formats is made. `None`: it
    /// needs a plan, and the queue is as it was.
    fn bind_complete_now(&mut self) -> Option<Result<Verdict, RelayError>> {
        let front = lock(&self.queue).pop_front();
        let Some(Expect::Bind { portal, statement, formats }) = front else {
            return Some(Err(RelayError::refused("masker: BindComplete that answers no Bind; closing the session")));
        };
        let plan = match self.statements.get(statement.as_str()) {
            Some(s) if s.fields.is_some() => match &s.plan {
                Some((f, plan)) if *f == formats => Some(plan.clone()),
                _ => {
                    lock(&self.queue).push_front(Expect::Bind { portal, statement, formats });
                    return None;
                }
            },
            _ => None,
        };
        self.portals.insert(portal, Portal { statement, formats, plan });
        Some(Ok(Verdict::Forward))
    }

    /// [`ServerTracker::on_row_description`] of a query's or a portal's
    /// columns when the memo holds their plan; `None`: it has to be made,
    /// and nothing changed.
    fn row_description_now(&mut self, msg: Message<'_>) -> Option<Result<Verdict, RelayError>> {
        if self.observe_only {
            return None;
        }
        let stamp = self.stamp();
        let mut q = lock(&self.queue);
        match q.front()? {
            Expect::Query { sql } => {
                let plan = self.memo.entry(sql.analysis(), self.query_index, stamp).plan(msg.body(), None)?;
                self.current = Some(plan);
                Some(Ok(Verdict::Forward))
            }
            Expect::DescribePortal { name, injected } => {
                let injected = *injected;
                let portal = self.portals.get_mut(name.as_str())?;
                let sql = &self.statements.get(portal.statement.as_str())?.sql;
                let plan = self.memo.entry(sql.analysis(), 0, stamp).plan(msg.body(), None)?;
                portal.plan = Some(plan);
                q.pop_front();
                Some(Ok(if injected { Verdict::Replaced } else { Verdict::Forward }))
            }
            _ => None,
        }
    }

    fn on_parse_complete(&mut self) -> Result<Verdict, RelayError> {
        let front = lock(&self.queue).pop_front();
        match front {
            Some(Expect::Parse { refused: Some(_), .. }) => Err(RelayError::refused(
                "masker: the server accepted the text that stands for a refused statement; closing the session",
            )),
            Some(Expect::Parse { name, sql, refused: None }) => {
                if let Ok(a) = sql.analysis().as_ref() {
                    self.model.protocol_prepared(&name, a.statements.first());
                }
                self.statements.insert(name, Statement { sql, fields: None, plan: None });
                Ok(Verdict::Forward)
            }
            _ => Err(RelayError::refused("masker: ParseComplete that answers no Parse; closing the session")),
        }
    }

    fn on_no_data(&mut self) -> Verdict {
        let front = lock(&self.queue).pop_front();
        match front {
            Some(Expect::DescribePortal { injected: true, .. }) => Verdict::Replaced,
            Some(Expect::DescribeStatement { name }) => {
                if let Some(s) = self.statements.get_mut(&name) {
                    s.fields = Some(Arc::new(Vec::new()));
                }
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }

    fn on_ready_for_query(&mut self, msg: Message<'_>) -> Verdict {
        self.trail.ready();
        self.model.ready(msg.body().first().copied().unwrap_or(b'I'));
        self.published.publish(&self.model);
        self.attribution = None;
        self.batch_tainted = false;
        self.query_index = 0;
        self.current = None;
        self.copy = None;
        self.swallowing = false;
        let mut q = lock(&self.queue);
        if std::mem::take(&mut self.skipping_to_sync) {
            // The error came before the client's Sync: the server
            // skipped everything the client sent up to it.
            while let Some(e) = q.pop_front() {
                if matches!(e, Expect::Sync) {
                    break;
                }
            }
        } else if matches!(q.front(), Some(Expect::Query { .. } | Expect::Sync)) {
            q.pop_front();
        }
        Verdict::Forward
    }

    fn on_data_row(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if self.swallowing {
            return Ok(Verdict::Replaced);
        }
        if self.current.is_none() {
            self.current = self.execute_plan();
        }
        let counters = &self.session.entry.counters;
        let Some(plan) = &self.current else {
            if self.observing {
                counters.rows.fetch_add(1, Ordering::Relaxed);
                self.trail.row(None);
                return Ok(Verdict::Forward);
            }
            return Err(RelayError::refused(
                "masker: rows whose columns are unknown; closing the session rather than relaying them",
            ));
        };
        // Rows of an all-allowed plan stream through unseen (see `wants`).
        counters.rows.fetch_add(1, Ordering::Relaxed);
        let per_column = self.trail.column_counts(plan);
        let masked = masking::mask_data_row_counted(plan, msg.body(), out, per_column);
        if self.observing {
            // What was written to `out` goes nowhere: the row goes out as it came.
            self.trail.row(masked.as_ref().ok());
            return Ok(Verdict::Forward);
        }
        let stats =
            masked.map_err(|e| RelayError::refused(format!("masker: cannot mask a row ({e}); closing the session")))?;
        counters.masked_cells.fetch_add(stats.total(), Ordering::Relaxed);
        self.trail.row(Some(&stats));
        Ok(Verdict::Replaced)
    }

    /// End of one statement's result: CommandComplete, EmptyQueryResponse or
    /// PortalSuspended.
    async fn on_result_end(&mut self, msg: Message<'_>) -> Result<Verdict, RelayError> {
        let mut now = None;
        if msg.tag() == backend::COMMAND_COMPLETE {
            // The statement answered, looked up once for all its uses.
            now = self.current();
            self.trail_end(msg, &now);
            if !self.observe_only {
                // Settings it changed are reported before ReadyForQuery.
                self.attribution_of(now.clone()).await;
            }
        }
        Ok(self.result_ended(msg, now))
    }

    /// [`ServerTracker::on_result_end`] when the statement's attribution is
    /// known without a catalog look-up; `None`: it is not.
    fn result_end_now(&mut self, msg: Message<'_>) -> Option<Verdict> {
        let mut now = None;
        if msg.tag() == backend::COMMAND_COMPLETE {
            now = self.current();
            if !self.observe_only {
                self.attribution_known(&now)?;
            }
            self.trail_end(msg, &now);
        }
        Some(self.result_ended(msg, now))
    }

    /// The audit trail and the counters note the statement `now` that
    /// CommandComplete `msg` ends.
    fn trail_end(&mut self, msg: Message<'_>, now: &Option<(Arc<Text>, usize)>) {
        let stats = self.trail.end(now.as_ref().map(|(t, _)| t.sql()), Some(msg.body()), None);
        self.session.entry.counters.add_masked(&stats);
    }

    /// The end of a result whose statement (`now`, for CommandComplete) is
    /// attributed and noted in the trail.
    fn result_ended(&mut self, msg: Message<'_>, now: Option<(Arc<Text>, usize)>) -> Verdict {
        if msg.tag() == backend::COMMAND_COMPLETE {
            self.completed(now, msg.body());
        }
        self.current = None;
        self.copy = None;
        self.session.entry.counters.statements.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        match q.front() {
            Some(Expect::Execute { .. }) => {
                q.pop_front();
            }
            Some(Expect::Query { .. }) => self.query_index += 1,
            _ => {}
        }
        drop(q);
        if msg.tag() == backend::COMMAND_COMPLETE && is_ddl_tag(msg.body()) {
            self.planner.catalog.invalidate(&self.planner.destination, &self.planner.database);
        }
        if std::mem::take(&mut self.swallowing) {
            return Verdict::Replaced;
        }
        Verdict::Forward
    }

    async fn on_copy_out(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        let masker = match self.current() {
            Some((sql, index)) => self.planner.copy_masker(&self.model, sql.sql(), index, msg.body()).await,
            None => Err(CopyPlanError::UnknownStatement),
        };
        match masker {
            Ok(m) => {
                self.copy = Some(m);
                Ok(Verdict::Forward)
            }
            Err(why) if self.observing => {
                let message = format!("masker: COPY TO STDOUT refused: {why}");
                let sql = self.audit_sql();
                self.session.observed_denial(sql.as_deref().map_or("", Text::sql), "lineage", &message);
                Ok(Verdict::Forward)
            }
            Err(why) => {
                self.swallowing = true;
                let message = format!("masker: COPY TO STDOUT refused: {why}");
                let hint = "COPY a table, a column list or a query in text, csv or binary format, or use SELECT";
                wire::put_error_with_hint(out, wire::Severity::Error, "42501", &message, Some(hint));
                Ok(Verdict::Replaced)
            }
        }
    }

    fn on_copy_data(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if self.swallowing {
            return Ok(Verdict::Replaced);
        }
        let Some(copy) = self.copy.as_mut() else {
            if self.observing {
                return Ok(Verdict::Forward);
            }
            return Err(RelayError::refused("masker: COPY data outside a COPY; closing the session"));
        };
        let masked = copy.push(msg.body(), out);
        if self.observing {
            // Counted, not sent: the data goes out as it came.
            match masked {
                Ok(stats) => self.trail.masked(&stats),
                Err(_) => self.copy = None,
            }
            return Ok(Verdict::Forward);
        }
        let stats = masked
            .map_err(|e| RelayError::refused(format!("masker: cannot mask COPY data ({e}); closing the session")))?;
        self.session.entry.counters.masked_cells.fetch_add(stats.total(), Ordering::Relaxed);
        self.trail.masked(&stats);
        Ok(Verdict::Replaced)
    }

    /// The text of the statement the server is answering now, for audit.
    fn audit_sql(&self) -> Option<Arc<Text>> {
        self.current().map(|(sql, _)| sql)
    }

    /// An ErrorResponse or NoticeResponse. Messages of a clean statement,
    /// and those outside any statement (login, startup), go out as the
    /// server sent them; those of a tainted statement keep their severity
    /// and SQLSTATE and get masker's text, unless the server located them
    /// in the client's own statement text before anything ran (a `P`
    /// position and no context of code that ran). masker's own refusals
    /// lose the context of how they are delivered.
    async fn on_error(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        let tag = msg.tag();
        if !well_formed_fields(msg.body())
            || (tag == backend::ERROR_RESPONSE && !(has_field(msg.body(), b'S') && has_field(msg.body(), b'C')))
        {
            // Forwarded as is, it would reach the client as sent: a peer's
            // bad input ends the session with a precise error instead.
            return Err(RelayError::Refused {
                code: "08P01",
                message: format!(
                    "masker: the database server sent a malformed {}; closing the session",
                    if tag == backend::ERROR_RESPONSE { "ErrorResponse" } else { "NoticeResponse" }
                ),
            });
        }
        if tag == backend::ERROR_RESPONSE
            && let Some((name, message)) = self.refused_parse()
        {
            return self.on_refused_parse(msg.body(), out, &name, &message);
        }
        if tag == backend::ERROR_RESPONSE
            && let Some(sql) = self.audit_sql()
        {
            let stats = self.trail.end(Some(sql.sql()), None, Some(msg.body()));
            self.session.entry.counters.add_masked(&stats);
        }
        let verdict = if self.observe_only {
            Verdict::Forward
        } else {
            let body = msg.body();
            match self.attribution().await {
                // Worked out all the same: the session model follows it.
                _ if self.observing => Verdict::Forward,
                Attribution::None | Attribution::Clean => Verdict::Forward,
                Attribution::Refusal => {
                    keep_fields(body, out, tag, refusal_fields)?;
                    Verdict::Replaced
                }
                Attribution::Unparsed if field(body, b'C') == Some("42601") => Verdict::Forward,
                Attribution::Tainted if from_statement_text(body) => Verdict::Forward,
                Attribution::Unparsed | Attribution::Tainted => {
                    withhold_message(body, out, tag)?;
                    Verdict::Replaced
                }
            }
        };
        if tag == backend::ERROR_RESPONSE && self.after_error() {
            out.clear();
            return Ok(Verdict::Replaced);
        }
        Ok(verdict)
    }

    /// The statement name and refusal message of the Parse the server is
    /// answering now, if masker refused it.
    fn refused_parse(&self) -> Option<(Name, Arc<str>)> {
        match lock(&self.queue).front()? {
            Expect::Parse { name, refused: Some(message), .. } => Some((name.clone(), message.clone())),
            _ => None,
        }
    }

    /// The server's error for the text that stands for a refused statement
    /// in a Parse (a syntax error, see
    /// [`crate::plan::lineage::refused_parse_statement`]): the client gets
    /// masker's refusal in its place, exactly as a refused simple Query
    /// gets it, and the audit trail records that. An error that is not
    /// the parser's (the session ends: FATAL) keeps what a refusal's
    /// answer keeps.
    fn on_refused_parse(
        &mut self,
        body: &[u8],
        out: &mut BytesMut,
        name: &str,
        message: &str,
    ) -> Result<Verdict, RelayError> {
        let mut answer = BytesMut::new();
        if field(body, b'V').or(field(body, b'S')) == Some("ERROR") {
            put_refusal_error(&mut answer, message);
        } else {
            keep_fields(body, &mut answer, backend::ERROR_RESPONSE, refusal_fields)?;
        }
        let sql = self.audit_sql();
        let stats = self.trail.end(sql.as_ref().map(|t| t.sql()), None, answer.get(5..));
        self.session.entry.counters.add_masked(&stats);
        if name.is_empty() {
            // The server drops the unnamed statement before it parses.
            self.statements.remove(name);
        }
        if self.after_error() {
            out.clear();
        } else {
            out.extend_from_slice(&answer);
        }
        Ok(Verdict::Replaced)
    }

    /// The session follows an ErrorResponse: the statement ended, and in the
    /// extended protocol the server skips everything up to Sync. Whether the
    /// error ends a refused result being swallowed (it is swallowed too).
    fn after_error(&mut self) -> bool {
        self.model.error();
        self.current = None;
        self.copy = None;
        let mut q = lock(&self.queue);
        if !matches!(q.front(), Some(Expect::Query { .. })) {
            // Extended protocol: the server skips everything up to Sync.
            while !matches!(q.front(), None | Some(Expect::Sync)) {
                q.pop_front();
            }
            // A pipelining client may not have sent its Sync yet: what it
            // sends until then is skipped too (see READY_FOR_QUERY).
            self.skipping_to_sync = q.is_empty();
        }
        std::mem::take(&mut self.swallowing)
    }
}

/// Whether a well-formed ErrorResponse/NoticeResponse body has a field of
/// `kind` (every ErrorResponse of PostgreSQL has a severity `S` and a
/// SQLSTATE `C`: clients rely on them).
fn has_field(body: &[u8], kind: u8) -> bool {
    let mut rest = body;
    while let Some((&k, tail)) = rest.split_first() {
        if k == 0 {
            return false;
        }
        if k == kind {
            return true;
        }
        match tail.iter().position(|&b| b == 0) {
            Some(nul) => rest = &tail[nul + 1..],
            None => return false,
        }
    }
    false
}

/// Whether an ErrorResponse/NoticeResponse body is a list of fields (a
/// kind byte and a NUL-terminated value each) ended by a NUL, and nothing
/// after it.
fn well_formed_fields(body: &[u8]) -> bool {
    let mut rest = body;
    loop {
        match rest.split_first() {
            Some((0, tail)) => return tail.is_empty(),
            Some((_, tail)) => match tail.iter().position(|&b| b == 0) {
                Some(nul) => rest = &tail[nul + 1..],
                None => return false,
            },
            None => return false,
        }
    }
}

/// The value of field `kind` of an error or notice body.
fn field(body: &[u8], kind: u8) -> Option<&str> {
    let mut at = 0;
    while at < body.len() && body[at] != 0 {
        let k = body[at];
        let end = at + 1 + body[at + 1..].iter().position(|&b| b == 0)?;
        if k == kind {
            return std::str::from_utf8(&body[at + 1..end]).ok();
        }
        at = end + 1;
    }
    None
}

/// Whether the server raised the message while analysing the client's own
/// statement text, before anything ran: it carries a position in that text
/// (`P`) and no trace of code that ran (`W` context, `p`/`q` internal query).
fn from_statement_text(body: &[u8]) -> bool {
    field(body, b'P').is_some() && field(body, b'W').is_none() && field(body, b'q').is_none()
}

/// A ParameterStatus reported after a tainted statement: settings with free
/// text (`application_name` and any the server adds) lose their value; the
/// ones drivers parse, whose values are validated, stay.
fn on_parameter_status(body: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
    const VALIDATED: &[&str] = &[
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
        "session_authorization",
        "default_transaction_read_only",
        "in_hot_standby",
        "scram_iterations",
    ];
    let mut cur = Cursor::new(body, backend::PARAMETER_STATUS);
    let name = cur.cstr()?;
    if VALIDATED.contains(&name) {
        return Ok(Verdict::Forward);
    }
    let at = wire::begin_message(out, backend::PARAMETER_STATUS);
    out.extend_from_slice(name.as_bytes());
    out.put_u8(0);
    out.extend_from_slice(b"***");
    out.put_u8(0);
    wire::finish_message(out, at);
    Ok(Verdict::Replaced)
}

/// Appends the message `body` (`tag`) with only the fields `keep` accepts.
fn keep_fields(body: &[u8], out: &mut BytesMut, tag: u8, keep: impl Fn(u8) -> bool) -> Result<(), RelayError> {
    let mut cur = Cursor::new(body, tag);
    let at = wire::begin_message(out, tag);
    loop {
        let kind = cur.u8()?;
        if kind == 0 {
            break;
        }
        let value = cur.cstr()?;
        if keep(kind) {
            out.put_u8(kind);
            out.extend_from_slice(value.as_bytes());
            out.put_u8(0);
        }
    }
    out.put_u8(0);
    wire::finish_message(out, at);
    Ok(())
}

/// Appends an ErrorResponse/NoticeResponse (`tag`) that keeps only the
/// severity and SQLSTATE of `body` and says that the text was withheld: for
/// messages raised by the client's own procedural code.
fn withhold_message(body: &[u8], out: &mut BytesMut, tag: u8) -> Result<(), RelayError> {
    let mut cur = Cursor::new(body, tag);
    let at = wire::begin_message(out, tag);
    let mut code = String::new();
    loop {
        let kind = cur.u8()?;
        if kind == 0 {
            break;
        }
        let value = cur.cstr()?;
        if matches!(kind, b'S' | b'V' | b'C') {
            if kind == b'C' {
                code = value.to_string();
            }
            out.put_u8(kind);
            out.extend_from_slice(value.as_bytes());
            out.put_u8(0);
        }
    }
    out.put_u8(b'M');
    let text = format!(
        "masker: {} ({code}); the message text is withheld because the statement reads masked data",
        crate::wire::sqlstate::condition_name(&code)
    );
    out.extend_from_slice(text.as_bytes());
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
                self.session.entry.counters.rows.fetch_add(1, Ordering::Relaxed);
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
                    self.session.entry.counters.rows.fetch_add(1, Ordering::Relaxed);
                    self.trail.row(None);
                }
                whole
            }
            // A tainted statement may have set one from its data.
            backend::PARAMETER_STATUS => self.batch_tainted && !self.observing,
            backend::AUTHENTICATION
            | backend::BACKEND_KEY_DATA
            | backend::NEGOTIATE_PROTOCOL_VERSION
            | backend::PARAMETER_DESCRIPTION => false,
            _ => true,
        })
    }

    fn on_message_now(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Option<Result<Verdict, RelayError>> {
        match msg.tag() {
            backend::DATA_ROW => Some(self.on_data_row(msg, out)),
            backend::ROW_DESCRIPTION => self.row_description_now(msg),
            backend::BIND_COMPLETE => self.bind_complete_now(),
            backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED => {
                self.result_end_now(msg).map(Ok)
            }
            backend::PARSE_COMPLETE => Some(self.on_parse_complete()),
            backend::NO_DATA => Some(Ok(self.on_no_data())),
            backend::CLOSE_COMPLETE => {
                let mut q = lock(&self.queue);
                if matches!(q.front(), Some(Expect::Close)) {
                    q.pop_front();
                }
                Some(Ok(Verdict::Forward))
            }
            backend::PARAMETER_STATUS => Some(on_parameter_status(msg.body(), out)),
            backend::READY_FOR_QUERY => Some(Ok(self.on_ready_for_query(msg))),
            _ => None,
        }
    }

    async fn on_message(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if let Some(v) = self.on_message_now(msg, out) {
            return v;
        }
        match msg.tag() {
            backend::ROW_DESCRIPTION => self.on_row_description(msg).await,
            backend::BIND_COMPLETE => self.on_bind_complete().await,
            backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE | backend::PORTAL_SUSPENDED => {
                self.on_result_end(msg).await
            }
            backend::ERROR_RESPONSE | backend::NOTICE_RESPONSE => self.on_error(msg, out).await,
            backend::NOTIFICATION_RESPONSE if self.observing => Ok(Verdict::Forward),
            backend::NOTIFICATION_RESPONSE
                if self
                    .planner
                    .policy
                    .guardrails()
                    .is_some_and(|g| g.notifications == crate::policy::guardrails::Notifications::Withhold) =>
            {
                Ok(Verdict::Replaced)
            }
            backend::NOTIFICATION_RESPONSE => {
                masking::mask_notification(msg.body(), out, false).map_err(|e| {
                    RelayError::refused(format!("masker: cannot scrub a notification ({e}); closing the session"))
                })?;
                Ok(Verdict::Replaced)
            }
            backend::COPY_OUT_RESPONSE | backend::COPY_BOTH_RESPONSE if self.observe_only => Ok(Verdict::Forward),
            backend::COPY_OUT_RESPONSE => self.on_copy_out(msg, out).await,
            backend::COPY_DATA => self.on_copy_data(msg, out),
            backend::COPY_DONE => {
                if self.swallowing {
                    return Ok(Verdict::Replaced);
                }
                if self.observing {
                    if let Some(copy) = self.copy.as_mut() {
                        let _ = copy.finish();
                    }
                    return Ok(Verdict::Forward);
                }
                if let Some(copy) = self.copy.as_mut() {
                    copy.finish().map_err(|e| {
                        RelayError::refused(format!("masker: COPY data ended badly ({e}); closing the session"))
                    })?;
                }
                Ok(Verdict::Forward)
            }
            backend::COPY_BOTH_RESPONSE if self.observing => {
                let message = "masker: replication (CopyBoth) is not allowed for masked sessions";
                self.session.observed_denial("", "replication", message);
                Ok(Verdict::Forward)
            }
            backend::COPY_BOTH_RESPONSE => {
                Err(RelayError::refused("masker: replication (CopyBoth) is not allowed for masked sessions"))
            }
            _ => Ok(Verdict::Forward),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_fields_are_checked_before_they_are_forwarded() {
        assert!(super::well_formed_fields(b"SERROR\0C42601\0Mx\0\0"));
        assert!(super::well_formed_fields(b"\0"));
        assert!(!super::well_formed_fields(b""));
        assert!(!super::well_formed_fields(b"SER\xff\xff"));
        assert!(!super::well_formed_fields(b"SERROR\0"));
        assert!(!super::well_formed_fields(b"SERROR\0\0junk"));
        assert!(super::has_field(b"SERROR\0C42601\0\0", b'C'));
        assert!(!super::has_field(b"SERROR\0Mx\0\0", b'C'));
    }

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
}
