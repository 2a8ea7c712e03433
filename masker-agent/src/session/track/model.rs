//! The session as the server sees it: what the client created or declared
//! on this connection, so that names resolve the way the server resolves
//! them for this session.
//!
//! The model follows each statement's [`Effect`] once the server says it
//! succeeded (`CommandComplete`), and follows transactions so that a
//! rolled-back `CREATE TEMP TABLE` or `SET search_path` is forgotten again:
//!
//! - relations the session created (temporary ones first, as `pg_temp` is
//!   searched first), with what they hold: a table the client fills itself,
//!   a `CREATE TABLE AS` or a view with the lineage of its query;
//! - `search_path` (`SET`, `SET LOCAL`, `set_config`, `RESET`, `DISCARD ALL`);
//! - SQL-level prepared statements (`PREPARE name AS ...`, not
//!   transactional) and cursors (`DECLARE name CURSOR FOR ...`), each with
//!   its analysed statement for every later `EXECUTE` / `FETCH`.
//!
//! Pure state: no I/O, no locks; the session's server side owns it.
//!
//! Every change gives the model a new [`SessionModel::revision`], unique in
//! the process: what was worked out with one revision (a statement's
//! taint, a row plan) holds for every model with that revision.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sql::{CreatedKind, Effect, RelName, Statement, TransactionStep};

/// The session's `search_path` as masker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPath {
    /// The server's default for this role and database (not set here).
    Default,
    /// Set to these schemas (as written; `$user` not yet expanded).
    Set(Vec<String>),
    /// Set to something masker could not read: unqualified names resolve
    /// to nothing (fail closed).
    Unknown,
}

/// A relation the session created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRelation {
    /// Its name as created (schema `pg_temp` for temporary relations).
    pub name: RelName,
    pub temp: bool,
    pub kind: CreatedKind,
}

/// Something the current transaction changed, to undo on rollback.
#[derive(Debug, Clone)]
enum Undo {
    Relation { key: RelKey, old: Option<SessionRelation> },
    Cursor { name: String, old: Option<Arc<Statement>> },
    SessionPath(SearchPath),
    TempTainted(bool),
}

/// `(schema or "" for unqualified, name)`, lower case as the parser gives.
type RelKey = (String, String);

/// The model of one session.
#[derive(Debug, Clone)]
pub struct SessionModel {
    relations: HashMap<RelKey, SessionRelation>,
    prepared: HashMap<String, Arc<Statement>>,
    cursors: HashMap<String, Arc<Statement>>,
    /// The effective search path (may be a `SET LOCAL`).
    path: SearchPath,
    /// The session-level value, restored when a local one ends.
    session_path: SearchPath,
    /// A statement whose code masker cannot see (a user function, `CALL`,
    /// dynamic SQL) ran while temporary tables existed: they may now hold
    /// anything, and their columns are no longer the client's own data.
    temp_tainted: bool,
    /// Code masker cannot see has run in this session: it may have
    /// prepared statements or declared cursors masker does not know.
    unseen_code: bool,
    undo: Vec<Undo>,
    /// Savepoint names with the undo length when each was set.
    savepoints: Vec<(String, usize)>,
    /// An error happened in the current transaction.
    failed: bool,
    /// Changes with every change of the above (see [`SessionModel::revision`]).
    revision: u64,
}

/// The next revision of any model of this process.
fn next_revision() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Default for SessionModel {
    fn default() -> Self {
        SessionModel {
            relations: HashMap::new(),
            prepared: HashMap::new(),
            cursors: HashMap::new(),
            path: SearchPath::Default,
            session_path: SearchPath::Default,
            temp_tainted: false,
            unseen_code: false,
            undo: Vec::new(),
            savepoints: Vec::new(),
            failed: false,
            // Every empty model is the same model.
            revision: 0,
        }
    }
}

fn key(name: &RelName, temp: bool) -> RelKey {
    let schema = if temp { "pg_temp".to_string() } else { name.schema.clone().unwrap_or_default() };
    (schema, name.name.clone())
}

impl SessionModel {
    /// Identifies this state of the model: two models with the same
    /// revision are equal (clones of one model that neither changed since).
    /// Unique in the process, never reused.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Marks a change.
    fn changed(&mut self) {
        self.revision = next_revision();
    }

    /// Whether [`SessionModel::apply`] of `statement` can change anything.
    pub fn changed_by(statement: &Statement) -> bool {
        statement.effect.is_some() || statement.body.is_some()
    }

    /// Applies what a statement did, once the server reports it succeeded.
    /// Statements of a `DO` block are applied in order after the block.
    pub fn apply(&mut self, statement: &Statement) {
        if !Self::changed_by(statement) {
            // A plain read: nothing changes (the common case, kept cheap).
            return;
        }
        self.changed();
        if let Some(effect) = &statement.effect {
            self.apply_effect(effect);
        }
        if let Some(body) = &statement.body {
            for s in &body.statements {
                if let Some(e) = &s.effect {
                    self.apply_effect(e);
                }
            }
            if body.dynamic || body.opaque {
                self.opaque_code_ran();
            }
        }
    }

    fn apply_effect(&mut self, effect: &Effect) {
        match effect {
            Effect::SearchPath { schemas, local } => {
                let value = schemas.clone().map_or(SearchPath::Default, SearchPath::Set);
                self.set_path(value, *local);
            }
            Effect::SearchPathUnknown => self.set_path(SearchPath::Unknown, false),
            Effect::ResetAll => self.set_path(SearchPath::Default, false),
            Effect::Create(c) => {
                let k = key(&c.name, c.temp);
                let relation = SessionRelation {
                    name: RelName {
                        schema: if c.temp { Some("pg_temp".into()) } else { c.name.schema.clone() },
                        name: c.name.name.clone(),
                    },
                    temp: c.temp,
                    kind: c.kind.clone(),
                };
                let old = self.relations.insert(k.clone(), relation);
                self.undo.push(Undo::Relation { key: k, old });
            }
            Effect::Drop(names) => {
                for n in names {
                    for k in self.keys_for(n) {
                        let old = self.relations.remove(&k);
                        self.undo.push(Undo::Relation { key: k, old });
                    }
                }
            }
            Effect::Prepare { name, statement } => {
                // Not transactional: survives a rollback.
                self.prepared.insert(name.clone(), Arc::new((**statement).clone()));
            }
            Effect::Deallocate { name: Some(n) } => {
                self.prepared.remove(n);
            }
            Effect::Deallocate { name: None } => self.prepared.clear(),
            Effect::Declare { name, statement } => {
                let old = self.cursors.insert(name.clone(), Arc::new((**statement).clone()));
                self.undo.push(Undo::Cursor { name: name.clone(), old });
            }
            Effect::Close { name: Some(n) } => {
                if let Some(old) = self.cursors.remove(n) {
                    self.undo.push(Undo::Cursor { name: n.clone(), old: Some(old) });
                }
            }
            Effect::Close { name: None } => {
                for (n, old) in std::mem::take(&mut self.cursors) {
                    self.undo.push(Undo::Cursor { name: n, old: Some(old) });
                }
            }
            Effect::Discard { all, temp, plans: _ } => {
                if *temp {
                    self.relations.retain(|_, r| !r.temp);
                    self.temp_tainted = false;
                }
                if *all {
                    self.prepared.clear();
                    self.cursors.clear();
                    self.path = SearchPath::Default;
                    self.session_path = SearchPath::Default;
                }
            }
            Effect::Transaction(step) => self.transaction(step),
            Effect::Execute { .. } | Effect::Fetch { .. } => {}
        }
    }

    /// Every key a `DROP` of `name` may remove.
    fn keys_for(&self, name: &RelName) -> Vec<RelKey> {
        match &name.schema {
            Some(s) => vec![(s.clone(), name.name.clone()), key(name, s.eq_ignore_ascii_case("pg_temp"))],
            // The first match in search order: a temporary one, else an
            // unqualified one.
            None => {
                let temp = ("pg_temp".to_string(), name.name.clone());
                if self.relations.contains_key(&temp) { vec![temp] } else { vec![(String::new(), name.name.clone())] }
            }
        }
    }

    fn set_path(&mut self, value: SearchPath, local: bool) {
        if local {
            self.path = value;
        } else {
            self.undo.push(Undo::SessionPath(self.session_path.clone()));
            self.session_path = value.clone();
            self.path = value;
        }
    }

    fn transaction(&mut self, step: &TransactionStep) {
        match step {
            TransactionStep::Savepoint(name) => self.savepoints.push((name.clone(), self.undo.len())),
            TransactionStep::Release(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i);
                }
            }
            TransactionStep::RollbackTo(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    let mark = self.savepoints[i].1;
                    // The savepoint stays; later ones go.
                    self.savepoints.truncate(i + 1);
                    self.rollback_to(mark);
                    self.failed = false;
                }
            }
            // COMMIT and ROLLBACK are followed by their CommandComplete tag
            // (see [`SessionModel::command_complete`]): a COMMIT of a failed
            // transaction reports ROLLBACK.
            TransactionStep::Begin | TransactionStep::Commit | TransactionStep::Rollback | TransactionStep::Other => {}
        }
    }

    fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            match self.undo.pop() {
                Some(Undo::Relation { key, old }) => match old {
                    Some(r) => {
                        self.relations.insert(key, r);
                    }
                    None => {
                        self.relations.remove(&key);
                    }
                },
                Some(Undo::Cursor { name, old }) => match old {
                    Some(c) => {
                        self.cursors.insert(name, c);
                    }
                    None => {
                        self.cursors.remove(&name);
                    }
                },
                Some(Undo::SessionPath(p)) => self.session_path = p,
                Some(Undo::TempTainted(t)) => self.temp_tainted = t,
                None => break,
            }
        }
        self.path = self.session_path.clone();
    }

    /// The end of a transaction, committed or not.
    fn end_transaction(&mut self, committed: bool) {
        if self.undo.is_empty() && self.savepoints.is_empty() && !self.failed && self.path == self.session_path {
            // Nothing to end (a statement that changed nothing): unchanged.
            return;
        }
        self.changed();
        if !committed {
            self.rollback_to(0);
        }
        self.undo.clear();
        self.savepoints.clear();
        self.path = self.session_path.clone();
        self.failed = false;
    }

    /// A `CommandComplete` tag: `COMMIT` and `ROLLBACK` end the transaction
    /// (the server says `ROLLBACK` for a COMMIT of a failed transaction).
    pub fn command_complete(&mut self, tag: &[u8]) {
        let word = tag.split(|b| *b == b' ' || *b == 0).next().unwrap_or(b"");
        match word {
            b"COMMIT" => self.end_transaction(true),
            b"ROLLBACK" if !tag.starts_with(b"ROLLBACK TO") => self.end_transaction(false),
            _ => {}
        }
    }

    /// An ErrorResponse: the current transaction will not commit.
    pub fn error(&mut self) {
        if !self.failed {
            self.changed();
            self.failed = true;
        }
    }

    /// ReadyForQuery with its transaction status (`I` idle, `T` in a
    /// transaction block, `E` in a failed one).
    pub fn ready(&mut self, status: u8) {
        if status == b'I' {
            let committed = !self.failed;
            self.end_transaction(committed);
        }
    }

    /// Code masker cannot see ran (a user function, `CALL`, dynamic SQL):
    /// temporary tables may now hold data from anywhere.
    pub fn opaque_code_ran(&mut self) {
        self.changed();
        self.unseen_code = true;
        if !self.temp_tainted && self.relations.values().any(|r| r.temp) {
            self.undo.push(Undo::TempTainted(false));
            self.temp_tainted = true;
        }
    }

    /// Whether code masker cannot see has run (see
    /// [`SessionModel::opaque_code_ran`]).
    pub fn unseen_code(&self) -> bool {
        self.unseen_code
    }

    /// A statement prepared with the protocol's Parse under `name`: SQL
    /// `EXECUTE name` runs it too (one namespace).
    pub fn protocol_prepared(&mut self, name: &str, statement: Option<&Statement>) {
        if name.is_empty() {
            return;
        }
        self.changed();
        match statement {
            Some(s) => {
                self.prepared.insert(name.to_string(), Arc::new(s.clone()));
            }
            None => {
                self.prepared.remove(name);
            }
        }
    }

    /// Whether the temporary tables hold only what the client put there.
    pub fn temp_clean(&self) -> bool {
        !self.temp_tainted
    }

    /// The session relation a name resolves to, if the session created it:
    /// `pg_temp` first (as the server searches it first for relations),
    /// then one created under that exact schema or unqualified.
    pub fn relation(&self, name: &RelName) -> Option<&SessionRelation> {
        match &name.schema {
            Some(s) if s.eq_ignore_ascii_case("pg_temp") => {
                self.relations.get(&("pg_temp".to_string(), name.name.clone()))
            }
            Some(s) => self.relations.get(&(s.clone(), name.name.clone())),
            None => self
                .relations
                .get(&("pg_temp".to_string(), name.name.clone()))
                .or_else(|| self.relations.get(&(String::new(), name.name.clone()))),
        }
    }

    /// Whether the session has a temporary table called `name` holding
    /// the client's own data: one it created with columns and filled
    /// itself, or with `CREATE TABLE AS` (which is refused when it would
    /// copy masked data). Views are not: their columns follow their query.
    pub fn has_temp_table(&self, name: &str) -> bool {
        matches!(
            self.relations.get(&("pg_temp".to_string(), name.to_string())).map(|r| &r.kind),
            Some(CreatedKind::Table { .. } | CreatedKind::TableAs { .. })
        )
    }

    /// The effective search path.
    pub fn search_path(&self) -> &SearchPath {
        &self.path
    }

    /// The statement prepared as `name` with SQL `PREPARE`.
    pub fn prepared(&self, name: &str) -> Option<Arc<Statement>> {
        self.prepared.get(name).cloned()
    }

    /// The statement of cursor `name`.
    pub fn cursor(&self, name: &str) -> Option<Arc<Statement>> {
        self.cursors.get(name).cloned()
    }
}

/// The server side's model as of its last ReadyForQuery, for the client
/// side: what it checks the next statements against once nothing it sent
/// is still in flight.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<std::sync::Mutex<Arc<SessionModel>>>);

impl Published {
    /// Makes `model` the latest (a copy is made only when it changed since
    /// the last one published).
    pub fn publish(&self, model: &SessionModel) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.revision() != model.revision() {
            *g = Arc::new(model.clone());
        }
    }

    /// The latest model published.
    pub fn latest(&self) -> Arc<SessionModel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::analyze_uncached;

    fn run(m: &mut SessionModel, sql: &str) {
        for s in analyze_uncached(sql).expect("parses").statements {
            m.apply(&s);
        }
    }

    fn rel(name: &str) -> RelName {
        RelName { schema: None, name: name.into() }
    }

    #[test]
    fn revision_changes_with_every_change_and_only_then() {
        let mut m = SessionModel::default();
        let empty = m.revision();
        run(&mut m, "SELECT * FROM t WHERE id = 1");
        m.command_complete(b"SELECT 1\0");
        m.ready(b'I');
        assert_eq!(m.revision(), empty, "a plain read changes nothing");

        run(&mut m, "CREATE TEMP TABLE scratch (x int)");
        let created = m.revision();
        assert_ne!(created, empty);
        let copy = m.clone();
        assert_eq!(copy.revision(), created, "a clone is the same state");
        m.ready(b'I');
        assert_ne!(m.revision(), created, "the transaction ended: its undo log went");
        let idle = m.revision();
        m.ready(b'I');
        assert_eq!(m.revision(), idle, "nothing left to end");

        let changes: [fn(&mut SessionModel); 4] = [
            |m: &mut SessionModel| m.error(),
            |m: &mut SessionModel| m.opaque_code_ran(),
            |m: &mut SessionModel| m.protocol_prepared("s1", None),
            |m: &mut SessionModel| run(m, "SET search_path TO app"),
        ];
        for change in changes {
            let before = m.revision();
            change(&mut m);
            assert_ne!(m.revision(), before);
        }
        let failed = m.revision();
        m.error();
        m.protocol_prepared("", None);
        assert_eq!(m.revision(), failed, "already failed; the unnamed statement is not kept");
    }

    #[test]
    fn search_path_set_local_and_reset() {
        let mut m = SessionModel::default();
        run(&mut m, "SET search_path TO app, public");
        m.ready(b'I');
        assert_eq!(m.search_path(), &SearchPath::Set(vec!["app".into(), "public".into()]));
        run(&mut m, "BEGIN; SET LOCAL search_path = other");
        m.ready(b'T');
        assert_eq!(m.search_path(), &SearchPath::Set(vec!["other".into()]));
        run(&mut m, "COMMIT");
        m.command_complete(b"COMMIT");
        m.ready(b'I');
        assert_eq!(m.search_path(), &SearchPath::Set(vec!["app".into(), "public".into()]));
        run(&mut m, "SELECT set_config('search_path', 'x', false)");
        m.ready(b'I');
        assert_eq!(m.search_path(), &SearchPath::Set(vec!["x".into()]));
        run(&mut m, "RESET search_path");
        m.ready(b'I');
        assert_eq!(m.search_path(), &SearchPath::Default);
        run(&mut m, "SELECT set_config('search_path', current_user, false)");
        assert_eq!(m.search_path(), &SearchPath::Unknown);
        run(&mut m, "DISCARD ALL");
        assert_eq!(m.search_path(), &SearchPath::Default);
    }

    #[test]
    fn rolled_back_settings_and_objects_are_forgotten() {
        let mut m = SessionModel::default();
        run(&mut m, "BEGIN");
        run(&mut m, "SET search_path = app");
        run(&mut m, "CREATE TEMP TABLE t (a int)");
        m.ready(b'T');
        assert!(m.relation(&rel("t")).is_some());
        run(&mut m, "ROLLBACK");
        m.command_complete(b"ROLLBACK");
        m.ready(b'I');
        assert!(m.relation(&rel("t")).is_none());
        assert_eq!(m.search_path(), &SearchPath::Default);
        // An implicit transaction that fails (one Query, an error) too.
        run(&mut m, "CREATE TEMP TABLE u (a int)");
        m.error();
        m.ready(b'I');
        assert!(m.relation(&rel("u")).is_none());
        // Committed ones stay.
        run(&mut m, "CREATE TEMP TABLE v (a int)");
        m.ready(b'I');
        assert!(m.relation(&rel("v")).unwrap().temp);
    }

    #[test]
    fn savepoints_undo_only_what_followed() {
        let mut m = SessionModel::default();
        run(&mut m, "BEGIN; CREATE TEMP TABLE a (x int); SAVEPOINT s; CREATE TEMP TABLE b (x int)");
        m.error();
        run(&mut m, "ROLLBACK TO SAVEPOINT s");
        assert!(m.relation(&rel("a")).is_some() && m.relation(&rel("b")).is_none());
        run(&mut m, "COMMIT");
        m.command_complete(b"COMMIT");
        m.ready(b'I');
        assert!(m.relation(&rel("a")).is_some());
    }

    #[test]
    fn prepared_statements_survive_rollback_cursors_do_not() {
        let mut m = SessionModel::default();
        run(&mut m, "BEGIN; PREPARE p AS SELECT id FROM orders; DECLARE c CURSOR FOR SELECT 1");
        run(&mut m, "ROLLBACK");
        m.command_complete(b"ROLLBACK");
        m.ready(b'I');
        assert!(m.prepared("p").is_some());
        assert!(m.cursor("c").is_none());
        run(&mut m, "DEALLOCATE p");
        assert!(m.prepared("p").is_none());
        run(&mut m, "DECLARE c2 CURSOR WITH HOLD FOR SELECT 2");
        m.ready(b'I');
        assert!(m.cursor("c2").is_some());
        run(&mut m, "CLOSE ALL");
        assert!(m.cursor("c2").is_none());
    }

    #[test]
    fn drop_and_discard_temp() {
        let mut m = SessionModel::default();
        run(&mut m, "CREATE TEMP TABLE t (a int); CREATE TEMP VIEW v AS SELECT a FROM t");
        m.ready(b'I');
        assert!(matches!(m.relation(&rel("v")).map(|r| &r.kind), Some(CreatedKind::View { .. })));
        run(&mut m, "DROP VIEW v");
        assert!(m.relation(&rel("v")).is_none());
        run(&mut m, "DISCARD TEMP");
        assert!(m.relation(&rel("t")).is_none());
        // pg_temp-qualified names find temporary relations.
        run(&mut m, "CREATE TABLE pg_temp.w (a int)");
        assert!(m.relation(&RelName { schema: Some("pg_temp".into()), name: "w".into() }).is_some());
    }

    #[test]
    fn opaque_code_taints_existing_temp_tables_only() {
        let mut m = SessionModel::default();
        m.opaque_code_ran();
        assert!(m.temp_clean());
        run(&mut m, "CREATE TEMP TABLE t (a int)");
        m.ready(b'I');
        run(&mut m, "DO $$ BEGIN EXECUTE 'select ' || '1'; END $$");
        assert!(!m.temp_clean());
    }
}
