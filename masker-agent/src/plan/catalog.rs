//! Resolving result columns to the base columns they come from, through the
//! server's own catalog, on a connection the agent owns.
//!
//! A `RowDescription` names each column's table by OID and attribute number.
//! The agent asks the server (once per table, then cached) for the schema,
//! table and column names, the column comment (a DBA may classify a column
//! with `pii:<rule>`), and, for views, the base column a view column passes
//! through. The cache is per destination and database, dropped after DDL seen
//! on any session and after [`CACHE_TTL`].
//!
//! The catalog connection authenticates with credentials from the agent's
//! configuration ([`CatalogAccess`]); it needs no privilege beyond `LOGIN`,
//! since `pg_class`, `pg_attribute` and `pg_description` are readable by
//! every role.
//!
//! A look-up (waiting for the connection, opening it, the query) takes at
//! most the catalog timeout ([`Catalog::with_timeout`]); the connection also
//! runs with that `statement_timeout`, so the server cancels a query stuck
//! behind a lock. A connection that timed out is dropped (a frozen backend
//! is never used again). Failed look-ups are remembered per database
//! ([`Catalog::failed_since`]) so that the statement that needed them can be
//! refused, naming the catalog, rather than guessed at.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

use crate::addr::TargetAddr;
use crate::wire::{TableOid, TypeOid};

/// How long a resolved table stays cached without DDL.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// How long a look-up may take unless [`Catalog::with_timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A base column as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// The column comment, if any (may carry a `pii:<rule>` classification).
    pub comment: Option<String>,
    /// For a column of a view: the base column it passes through unchanged,
    /// when the view's dependencies show one of the same name.
    pub base: Option<Box<ColumnInfo>>,
    /// For a column of a view that does not pass a base column through by
    /// name: the view reads other columns, which may be sensitive.
    pub derived_from_view: bool,
}

/// How the agent logs in for catalog look-ups.
#[derive(Debug, Clone, Default)]
pub struct CatalogAccess {
    pub user: String,
    pub password: Option<String>,
}

/// Why a look-up failed (no data values in it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("catalog look-up on {destination} database {database}: {reason}")]
pub struct CatalogError {
    /// The server looked up.
    pub destination: TargetAddr,
    /// The database looked up.
    pub database: String,
    /// What failed.
    pub reason: CatalogFailure,
}

/// What failed in a catalog look-up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogFailure {
    /// The agent has no `[catalog]` credentials (or the proxy no
    /// `--catalog-user`).
    #[error("the agent has no catalog credentials configured")]
    NoCredentials,
    /// Connecting or querying failed.
    #[error("{}", describe(.0))]
    Postgres(Arc<tokio_postgres::Error>),
    /// The session's client is in a network namespace the catalog cannot
    /// reach (no longer served, or its socket could not be made there).
    #[error("catalog connection from the client's network namespace: {0}")]
    Netns(String),
    /// No answer within the catalog timeout.
    #[error("no answer within {}s (catalog_timeout_secs)", .0.as_secs_f64())]
    Timeout(Duration),
}

/// What a client library error says, with its causes: the server's
/// severity, SQLSTATE and message for an error it reported (its detail is
/// left out: it may quote values), else the I/O or protocol cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("the server answered {} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<tokio_postgres::Error> for CatalogFailure {
    fn from(e: tokio_postgres::Error) -> CatalogFailure {
        CatalogFailure::Postgres(Arc::new(e))
    }
}

type TableColumns = HashMap<i16, ColumnInfo>;

/// A relation looked up by name (none found is cached too), and when.
type CachedRelation = (Option<Arc<Relation>>, Instant);

struct CachedTable {
    columns: Arc<TableColumns>,
    at: Instant,
}

#[derive(Default)]
struct DbCache {
    tables: HashMap<TableOid, CachedTable>,
    /// Function name as written → whether it is a user (non-built-in) function.
    functions: HashMap<String, (bool, Instant)>,
    /// `(schemas searched, name)` → the relation found first.
    on_path: HashMap<(Vec<String>, String), CachedRelation>,
    /// Function name as written → the bodies of its user-defined overloads.
    bodies: HashMap<String, (Arc<Vec<FunctionBody>>, Instant)>,
    /// Login role → its default search_path in this database.
    default_paths: HashMap<String, (Vec<String>, Instant)>,
}

/// A relation found by name (for SQL lineage): its columns in attribute
/// order and, for a view, its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r` table, `v` view, `m` materialized view, ...
    pub kind: char,
    /// Column names and comments, in attribute order.
    pub columns: Vec<(String, Option<String>)>,
    /// Column type OIDs, in the same order.
    pub types: Vec<TypeOid>,
    /// `pg_get_viewdef` of a view or materialized view.
    pub definition: Option<String>,
}

/// The source of one user-defined function or procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionBody {
    /// `pg_language.lanname`: `sql`, `plpgsql`, `c`, ...
    pub language: String,
    /// `pg_proc.prosrc` (empty for a `BEGIN ATOMIC` SQL body).
    pub source: String,
    /// Argument names (empty strings for unnamed ones).
    pub arg_names: Vec<String>,
}

/// Catalog look-ups for all sessions of the agent.
pub struct Catalog {
    access: Option<CatalogAccess>,
    caches: Mutex<HashMap<(TargetAddr, String), DbCache>>,
    clients: tokio::sync::Mutex<HashMap<(TargetAddr, String), Client>>,
    /// Sessions from other network namespaces (containers) reach their
    /// server from there, and so does the catalog connection for them; their
    /// destinations are keyed `netns:<cookie>/<address>` (two containers'
    /// `127.0.0.1:5432` are different servers). By cookie.
    netns: Mutex<HashMap<u64, crate::interception::netns::NetnsOrigin>>,
    /// How long one look-up may take, and the connection's
    /// `statement_timeout`.
    timeout: Duration,
    /// The last failed look-up per destination and database: its number in
    /// `failure_seq` and what failed.
    failures: Mutex<HashMap<(TargetAddr, String), (u64, String)>>,
    failure_seq: AtomicU64,
    /// Bumped by every [`Catalog::invalidate`] (see [`Catalog::generation`]).
    generation: AtomicU64,
}

/// The catalog key of `destination` as seen from `netns` (or the agent's own
/// namespace): see [`Catalog::register_netns`].
pub fn destination_key(
    destination: &TargetAddr,
    netns: Option<&crate::interception::netns::NetnsOrigin>,
) -> TargetAddr {
    match netns {
        Some(ns) => {
            TargetAddr::parse(&format!("netns:{}/{destination}", ns.cookie)).unwrap_or_else(|_| destination.clone())
        }
        None => destination.clone(),
    }
}

impl Catalog {
    /// A catalog that logs in with `access`; `None` means the agent has no
    /// catalog credentials and every table column is treated as unresolved
    /// (and so masked: fail closed).
    pub fn new(access: Option<CatalogAccess>) -> Self {
        Catalog {
            access,
            caches: Mutex::new(HashMap::new()),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            netns: Mutex::new(HashMap::new()),
            timeout: DEFAULT_TIMEOUT,
            failures: Mutex::new(HashMap::new()),
            failure_seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Lets look-ups for destinations keyed by [`destination_key`] with
    /// `origin` connect from its namespace.
    pub fn register_netns(&self, origin: &crate::interception::netns::NetnsOrigin) {
        self.netns.lock().unwrap_or_else(|p| p.into_inner()).insert(origin.cookie, origin.clone());
    }

    /// Forgets namespace `cookie`: its connector, its open catalog
    /// connections (which would otherwise keep the namespace alive) and its
    /// cache.
    pub async fn forget_netns(&self, cookie: u64) {
        let prefix = format!("netns:{cookie}/");
        self.netns.lock().unwrap_or_else(|p| p.into_inner()).remove(&cookie);
        self.clients.lock().await.retain(|(dest, _), _| !dest.as_str().starts_with(&prefix));
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(dest, _), _| !dest.as_str().starts_with(&prefix));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Look-ups take at most `timeout` each (at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// A mark to pass to [`Catalog::failed_since`] later.
    pub fn failure_mark(&self) -> u64 {
        self.failure_seq.load(Ordering::Acquire)
    }

    /// What failed, if a look-up on `destination` and `database` failed
    /// after `mark` was taken (its message names the catalog and holds no
    /// data value).
    pub fn failed_since(&self, mark: u64, destination: &TargetAddr, database: &str) -> Option<String> {
        if self.failure_seq.load(Ordering::Acquire) == mark {
            // Nothing failed anywhere since (asked after every statement).
            return None;
        }
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, what) = failures.get(&(destination.clone(), database.to_string()))?;
        (*seq > mark).then(|| what.clone())
    }

    /// Forgets everything cached for `database` on `destination` (after DDL).
    pub fn invalidate(&self, destination: &TargetAddr, database: &str) {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.remove(&(destination.clone(), database.to_string()));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever something cached was forgotten after DDL: what a
    /// session worked out from the catalog under one generation holds
    /// while the generation stays (and cached entries are young, see
    /// [`CACHE_TTL`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The columns of each table in `tables`, from the cache or the server.
    pub async fn resolve(
        &self,
        destination: &TargetAddr,
        database: &str,
        tables: &[TableOid],
    ) -> Result<HashMap<TableOid, Arc<TableColumns>>, CatalogError> {
        let key = (destination.clone(), database.to_string());
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            for t in tables {
                if t.0 == 0 || found.contains_key(t) || missing.contains(t) {
                    continue;
                }
                match caches.get(&key).and_then(|c| c.tables.get(t)) {
                    Some(c) if c.at.elapsed() < CACHE_TTL => {
                        found.insert(*t, c.columns.clone());
                    }
                    _ => missing.push(*t),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let err = |reason: CatalogFailure| CatalogError {
            destination: destination.clone(),
            database: database.to_string(),
            reason,
        };
        let fetched = self.fetch(&key, &missing).await.map_err(err)?;
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let cache = caches.entry(key).or_default();
        for t in missing {
            // A table the catalog does not know (dropped meanwhile) resolves
            // to no columns: every column of it stays unresolved.
            let columns = Arc::new(fetched.get(&t).cloned().unwrap_or_default());
            cache.tables.insert(t, CachedTable { columns: columns.clone(), at: Instant::now() });
            found.insert(t, columns);
        }
        Ok(found)
    }

    /// The relation `name` as a session whose search path is `schemas` finds
    /// it: the first of `schemas` that has one. Read from the world-readable
    /// catalogs (`pg_class`, `pg_namespace`, `pg_attribute`), so the catalog
    /// role needs no privilege on the schemas. Cached for [`CACHE_TTL`].
    pub async fn relation_on_path(
        &self,
        destination: &TargetAddr,
        database: &str,
        schemas: &[String],
        name: &str,
    ) -> Result<Option<Arc<Relation>>, CatalogError> {
        const SQL: &str = "
            SELECT n.nspname::text, c.relname::text, c.relkind::text,
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   array(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
                   array(SELECT coalesce(col_description(c.oid, a.attnum), '') FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
                   array(SELECT a.atttypid FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = $2 AND n.nspname = ANY($1::text[])
             ORDER BY array_position($1::text[], n.nspname::text)
             LIMIT 1";
        let key = (destination.clone(), database.to_string());
        let cache_key = (schemas.to_vec(), name.to_string());
        {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((r, at)) = caches.get(&key).and_then(|c| c.on_path.get(&cache_key))
                && at.elapsed() < CACHE_TTL
            {
                return Ok(r.clone());
            }
        }
        let err = |reason: CatalogFailure| CatalogError {
            destination: destination.clone(),
            database: database.to_string(),
            reason,
        };
        let rows = self.query(&key, SQL, &[&schemas, &name]).await.map_err(err)?;
        let found = rows.first().map(|r| {
            let names: Vec<String> = r.get(4);
            let comments: Vec<String> = r.get(5);
            let kind: String = r.get(2);
            Arc::new(Relation {
                schema: r.get(0),
                name: r.get(1),
                kind: kind.chars().next().unwrap_or('?'),
                columns: names.into_iter().zip(comments).map(|(n, c)| (n, (!c.is_empty()).then_some(c))).collect(),
                types: r.get::<_, Vec<u32>>(6).into_iter().map(TypeOid).collect(),
                definition: r.get(3),
            })
        });
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.entry(key).or_default().on_path.insert(cache_key, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// The search_path a new session of `role` starts with in `database`:
    /// the role's own setting for the database or for all databases
    /// (`ALTER ROLE ... SET search_path`), else the database's and the
    /// server's (the catalog connection's reset value). Schema names as
    /// written (`$user` not expanded).
    pub async fn default_search_path(
        &self,
        destination: &TargetAddr,
        database: &str,
        role: &str,
    ) -> Result<Vec<String>, CatalogError> {
        const SQL: &str = "
            SELECT coalesce(
                (SELECT substr(s, 13)
                   FROM pg_db_role_setting d, unnest(d.setconfig) s
                  WHERE d.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
                    AND d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                    AND s LIKE 'search_path=%'
                  ORDER BY d.setdatabase DESC LIMIT 1),
                (SELECT reset_val FROM pg_settings WHERE name = 'search_path'))";
        let key = (destination.clone(), database.to_string());
        {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((p, at)) = caches.get(&key).and_then(|c| c.default_paths.get(role))
                && at.elapsed() < CACHE_TTL
            {
                return Ok(p.clone());
            }
        }
        let rows = self.query(&key, SQL, &[&role]).await.map_err(|reason| CatalogError {
            destination: destination.clone(),
            database: database.to_string(),
            reason,
        })?;
        let text: Option<String> = rows.first().and_then(|r| r.get(0));
        let path = crate::sql::search_path_schemas(&[text.unwrap_or_else(|| "\"$user\", public".into())]);
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.entry(key).or_default().default_paths.insert(role.to_string(), (path.clone(), Instant::now()));
        Ok(path)
    }

    /// Runs `sql` on the agent's catalog connection to `key`, opening it
    /// first if needed; a connection that failed is dropped so the next
    /// look-up opens a fresh one.
    async fn query(
        &self,
        key: &(TargetAddr, String),
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, CatalogFailure> {
        let attempt = async {
            let mut clients = self.clients.lock().await;
            let client = match clients.remove(key) {
                Some(c) if !c.is_closed() => c,
                _ => self.connect(&key.0, &key.1).await?,
            };
            let result = client.query(sql, params).await;
            if result.is_ok() {
                clients.insert(key.clone(), client);
            }
            Ok(result?)
        };
        // On expiry the attempt is dropped, and with it a connection that
        // did not answer: the next look-up opens a fresh one.
        let result =
            tokio::time::timeout(self.timeout, attempt).await.unwrap_or(Err(CatalogFailure::Timeout(self.timeout)));
        // Without credentials there is no catalog to fail: every table
        // column is masked, as documented (and warned about at start).
        if let Err(e) = &result
            && !matches!(e, CatalogFailure::NoCredentials)
        {
            let what = CatalogError { destination: key.0.clone(), database: key.1.clone(), reason: e.clone() };
            warn!("{what}");
            let seq = self.failure_seq.fetch_add(1, Ordering::AcqRel) + 1;
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (seq, what.to_string()));
        }
        result
    }

    /// Which of `functions` (as written: `name` or `schema.name`, lower
    /// case) are not built in: defined outside `pg_catalog`, so they may read
    /// tables the statement does not name. Unknown names count as user
    /// functions (fail closed). Cached like relations.
    pub async fn user_functions(
        &self,
        destination: &TargetAddr,
        database: &str,
        functions: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, CatalogError> {
        const SQL: &str = "
            SELECT bool_and(n.nspname = 'pg_catalog')
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname = $2 AND ($1::text IS NULL OR n.nspname = $1)";
        let key = (destination.clone(), database.to_string());
        let mut user = Vec::new();
        let mut missing = Vec::new();
        {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            for f in functions {
                match caches.get(&key).and_then(|c| c.functions.get(f)) {
                    Some((is_user, at)) if at.elapsed() < CACHE_TTL => {
                        if *is_user {
                            user.push(f.clone());
                        }
                    }
                    _ => missing.push(f.clone()),
                }
            }
        }
        for f in missing {
            let (schema, name) = match f.rsplit_once('.') {
                Some((s, n)) => (Some(s.to_string()), n.to_string()),
                None => (None, f.clone()),
            };
            let rows = self.query(&key, SQL, &[&schema, &name]).await.map_err(|reason| CatalogError {
                destination: destination.clone(),
                database: database.to_string(),
                reason,
            })?;
            let builtin: Option<bool> = rows.first().and_then(|r| r.get(0));
            let is_user = builtin != Some(true);
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches.entry(key.clone()).or_default().functions.insert(f.clone(), (is_user, Instant::now()));
            if is_user {
                user.push(f);
            }
        }
        Ok(user)
    }

    /// The bodies of the user-defined functions named `function` (as
    /// written: `name` or `schema.name`; every overload, in any schema when
    /// unqualified). Cached for [`CACHE_TTL`].
    pub async fn function_bodies(
        &self,
        destination: &TargetAddr,
        database: &str,
        function: &str,
    ) -> Result<Arc<Vec<FunctionBody>>, CatalogError> {
        const SQL: &str = "
            SELECT l.lanname::text, coalesce(p.prosrc, ''), coalesce(p.proargnames, '{}'::text[])
              FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace
              JOIN pg_language l ON l.oid = p.prolang
             WHERE p.proname = $2 AND ($1::text IS NULL OR n.nspname = $1) AND n.nspname <> 'pg_catalog'";
        let key = (destination.clone(), database.to_string());
        {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((b, at)) = caches.get(&key).and_then(|c| c.bodies.get(function))
                && at.elapsed() < CACHE_TTL
            {
                return Ok(b.clone());
            }
        }
        let (schema, name) = match function.rsplit_once('.') {
            Some((s, n)) => (Some(s.to_string()), n.to_string()),
            None => (None, function.to_string()),
        };
        let rows = self.query(&key, SQL, &[&schema, &name]).await.map_err(|reason| CatalogError {
            destination: destination.clone(),
            database: database.to_string(),
            reason,
        })?;
        let bodies = Arc::new(
            rows.iter()
                .map(|r| FunctionBody { language: r.get(0), source: r.get(1), arg_names: r.get(2) })
                .collect::<Vec<_>>(),
        );
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.entry(key).or_default().bodies.insert(function.to_string(), (bodies.clone(), Instant::now()));
        Ok(bodies)
    }

    /// The functions the user triggers of relation `schema.name` run
    /// (`schema.function`; with no schema, of every relation by that name:
    /// the session's search path is not known here, so all count).
    /// Not cached: a trigger can be created at any time.
    pub async fn trigger_functions(
        &self,
        destination: &TargetAddr,
        database: &str,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Vec<String>, CatalogError> {
        const SQL: &str = "
            SELECT DISTINCT pn.nspname::text || '.' || p.proname::text
              FROM pg_trigger t
              JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace cn ON cn.oid = c.relnamespace
              JOIN pg_proc p ON p.oid = t.tgfoid
              JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE NOT t.tgisinternal AND c.relname = $2 AND ($1::text IS NULL OR cn.nspname = $1)";
        let key = (destination.clone(), database.to_string());
        let schema = schema.map(str::to_string);
        let rows = self.query(&key, SQL, &[&schema, &name]).await.map_err(|reason| CatalogError {
            destination: destination.clone(),
            database: database.to_string(),
            reason,
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn fetch(
        &self,
        key: &(TargetAddr, String),
        tables: &[TableOid],
    ) -> Result<HashMap<TableOid, TableColumns>, CatalogFailure> {
        let oids: Vec<u32> = tables.iter().map(|t| t.0).collect();
        let rows = self.query(key, COLUMNS_SQL, &[&oids]).await?;
        Ok(columns_from_rows(&rows, oids.len()))
    }

    async fn connect(&self, destination: &TargetAddr, database: &str) -> Result<Client, CatalogFailure> {
        let access = self.access.as_ref().ok_or(CatalogFailure::NoCredentials)?;
        if let Some(rest) = destination.as_str().strip_prefix("netns:") {
            return self.connect_in_netns(rest, database, access).await;
        }
        let (host, port) = (destination.host(), destination.port());
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user(&access.user)
            .dbname(database)
            .application_name("masker-catalog")
            .connect_timeout(self.timeout)
            .options(format!("-c statement_timeout={}", self.timeout.as_millis()));
        if let Some(pw) = &access.password {
            config.password(pw);
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("catalog connection ended: {e}");
            }
        });
        debug!(%destination, database, "catalog connection opened");
        Ok(client)
    }

    /// A catalog connection made from another network namespace: `rest` is
    /// `<cookie>/<address>`.
    async fn connect_in_netns(
        &self,
        rest: &str,
        database: &str,
        access: &CatalogAccess,
    ) -> Result<Client, CatalogFailure> {
        let bad = |what: &str| CatalogFailure::Netns(what.to_string());
        let (cookie, addr) = rest.split_once('/').ok_or_else(|| bad("bad namespace destination"))?;
        let cookie: u64 = cookie.parse().map_err(|_| bad("bad namespace cookie"))?;
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| bad("destination is not an address"))?;
        let origin = self
            .netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cookie)
            .cloned()
            .ok_or_else(|| bad("the client's network namespace is no longer served"))?;
        let stream = origin
            .connect(addr, Some(masker_common::MASKER_SOCKET_MARK))
            .await
            .map_err(|e| CatalogFailure::Netns(e.to_string()))?;
        let mut config = tokio_postgres::Config::new();
        config.user(&access.user).dbname(database).application_name("masker-catalog");
        if let Some(pw) = &access.password {
            config.password(pw);
        }
        let connect = config.connect_raw(stream, NoTls);
        let (client, connection) =
            tokio::time::timeout(Duration::from_secs(10), connect).await.map_err(|_| bad("timed out"))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("catalog connection ended: {e}");
            }
        });
        debug!(netns = cookie, %addr, database, "catalog connection opened from the client's namespace");
        Ok(client)
    }
}

/// All columns of the tables `$1` (an oid array) in one round trip, with the
/// base column of each view column that passes one through under the same
/// name.
const COLUMNS_SQL: &str = "
        SELECT c.oid, a.attnum, n.nspname::text, c.relname::text, a.attname::text,
               col_description(c.oid, a.attnum),
               b.nspname::text, b.relname::text, b.attname::text, b.comment,
               (c.relkind IN ('v', 'm'))
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN LATERAL (
                SELECT bn.nspname, bc.relname, ba.attname, col_description(bc.oid, ba.attnum) AS comment
                  FROM pg_rewrite r
                  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                  AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
                  JOIN pg_class bc ON bc.oid = d.refobjid AND bc.oid <> c.oid
                  JOIN pg_namespace bn ON bn.oid = bc.relnamespace
                  JOIN pg_attribute ba ON ba.attrelid = bc.oid AND ba.attnum = d.refobjsubid
                 WHERE r.ev_class = c.oid AND c.relkind IN ('v', 'm') AND ba.attname = a.attname
                 ORDER BY bc.oid LIMIT 1
          ) b ON true
         WHERE c.oid = ANY($1::oid[])";

/// Groups the rows of [`COLUMNS_SQL`] by table; `requested` tables were asked.
fn columns_from_rows(rows: &[tokio_postgres::Row], requested: usize) -> HashMap<TableOid, TableColumns> {
    let mut out: HashMap<TableOid, TableColumns> = HashMap::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let attnum: i16 = row.get(1);
        let is_view: bool = row.get(10);
        let base_table: Option<String> = row.get(7);
        let base = base_table.map(|table| {
            Box::new(ColumnInfo {
                schema: row.get(6),
                table,
                column: row.get(8),
                comment: row.get(9),
                base: None,
                derived_from_view: false,
            })
        });
        let info = ColumnInfo {
            schema: row.get(2),
            table: row.get(3),
            column: row.get(4),
            comment: row.get(5),
            derived_from_view: is_view && base.is_none(),
            base,
        };
        out.entry(TableOid(oid)).or_default().insert(attnum, info);
    }
    if out.len() < requested {
        warn!(requested, found = out.len(), "some result tables are unknown to the catalog");
    }
    out
}
