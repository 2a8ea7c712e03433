//! Integration-test harness for masker: real PostgreSQL, real clients, the
//! real `masker` binary.
//!
//! The pieces, in the order a test uses them:
//!
//! - [`cluster`]: a throwaway PostgreSQL 15 cluster ([`PgCluster`]) with the
//!   `app` role and the `shop` database, torn down even when the test process
//!   panics or is killed.
//! - [`fixture`]: the `shop` schema with deterministic fake personal data, and
//!   [`fixture::PersonalValues`] to assert that none of it leaks.
//! - [`proxy`]: [`MaskerProxy`], a `masker proxy` child process in front of a
//!   cluster; [`agent`]: `masker agent` with real eBPF, and test cgroups. The
//!   binary is always cargo's build of the tree under test ([`masker_binary`]).
//! - Clients: [`ConnInfo::connect`] (tokio-postgres, in process), [`psql`]
//!   (subprocess), [`python`] (psycopg 3 from the venv `scripts/setup.sh`
//!   made) and [`node`] (node-pg, installed by the same script), plus
//!   [`raw`], a byte-level protocol client for edge cases.
//! - [`compare`]: results through masker vs direct, value for value, and
//!   binary values decoded per type.
//! - [`finder`]: every seeded value in every form; [`attack`]: attack
//!   corpora run directly (the control: each must leak) and through masker,
//!   per client and channel, with the raw bytes from a [`recorder`];
//!   [`leaky`]: a deliberately leaking relay for the finder's own tests.
//! - [`transcript`]: compatibility as a byte comparison of whole sessions.
//! - [`skip`]: what a test does when the machine lacks what it needs (fail,
//!   unless `MASKER_TESTS_ALLOW_SKIP` allows that kind).
//! - [`corpora`]: the query corpora several suites run.
//!
//! Everything that waits has a deadline ([`poll`], [`within`]), so a broken
//! proxy fails a test instead of hanging it; nothing sleeps and then asserts.
#![forbid(unsafe_code)]

pub mod agent;
pub mod attack;
pub mod cluster;
pub mod compare;
pub mod corpora;
pub mod docker;
pub mod finder;
pub mod fixture;
pub mod leaky;
pub mod netns;
pub mod node;
pub mod process;
pub mod proxy;
pub mod psql;
pub mod python;
pub mod raw;
pub mod recorder;
pub mod skip;
pub mod transcript;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cluster::PgCluster;
pub use proxy::MaskerProxy;

/// Deadline of a tokio-postgres login (TCP, start-up, SCRAM): generous,
/// because dozens of logins at once on a loaded 2-core machine queue up
/// behind each other; a deadline, not a performance check.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);

/// Where and as whom a client connects: one PostgreSQL login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl ConnInfo {
    /// `host port user password dbname`: a login handed to a child process
    /// in one environment variable (see [`ConnInfo::from_spec`]).
    pub fn to_spec(&self) -> String {
        format!("{} {} {} {} {}", self.host, self.port, self.user, self.password, self.dbname)
    }

    /// The login [`ConnInfo::to_spec`] wrote.
    pub fn from_spec(spec: &str) -> Option<ConnInfo> {
        let parts: Vec<&str> = spec.split(' ').collect();
        let [host, port, user, password, dbname] = parts[..] else { return None };
        Some(ConnInfo {
            host: host.into(),
            port: port.parse().ok()?,
            user: user.into(),
            password: password.into(),
            dbname: dbname.into(),
        })
    }

    /// The same login, sent to `addr` instead (e.g. a [`MaskerProxy`]).
    pub fn at(&self, addr: SocketAddr) -> ConnInfo {
        ConnInfo { host: addr.ip().to_string(), port: addr.port(), ..self.clone() }
    }

    /// The same login, to another database.
    pub fn with_db(&self, dbname: &str) -> ConnInfo {
        ConnInfo { dbname: dbname.to_owned(), ..self.clone() }
    }

    /// The socket address, when `host` is an IP literal.
    pub fn addr(&self) -> SocketAddr {
        let ip = self.host.parse().unwrap_or_else(|_| panic!("host {:?} is not an IP address", self.host));
        SocketAddr::new(ip, self.port)
    }

    /// A libpq key/value connection string (psql, psycopg).
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user={} password={} dbname={} connect_timeout=10",
            self.host, self.port, self.user, self.password, self.dbname
        )
    }

    /// A tokio-postgres configuration for this login.
    pub fn tokio_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Connects with tokio-postgres and drives the connection on a spawned
    /// task of the current runtime, within [`CONNECT_LIMIT`].
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let config = self.tokio_config();
        let (client, connection) =
            within(CONNECT_LIMIT, "tokio-postgres connect", async { config.connect(tokio_postgres::NoTls).await })
                .await?;
        tokio::spawn(async move {
            // The error (if any) reaches the client as a closed connection.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Like [`Self::connect`], and also hands out what the server sends on
    /// its own: notices and notifications, in arrival order.
    pub async fn connect_with_messages(
        &self,
    ) -> Result<
        (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>),
        tokio_postgres::Error,
    > {
        let config = self.tokio_config();
        let (client, mut connection) =
            within(CONNECT_LIMIT, "tokio-postgres connect", async { config.connect(tokio_postgres::NoTls).await })
                .await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut messages).await {
                let _ = tx.send(msg);
            }
        });
        Ok((client, rx))
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` (every 20 ms) until it returns `Some`, and returns that;
/// panics with `what` once `limit` has passed. The way to wait for
/// something to happen: never sleep and then assert.
#[track_caller]
pub fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`poll`] for an async check.
pub async fn poll_async<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server runs a statement whose text contains `marker`, as
/// `watcher` (another session of the same role, or a superuser's) sees it in
/// `pg_stat_activity`: e.g. before cancelling it.
pub async fn wait_until_running(watcher: &tokio_postgres::Client, marker: &str) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() \
               AND strpos(query, $1) > 0";
    poll_async(Duration::from_secs(30), &format!("a running statement containing {marker:?}"), || async {
        let n: i64 = watcher.query_one(sql, &[&marker]).await.expect("pg_stat_activity").get(0);
        (n > 0).then_some(())
    })
    .await
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else the directory the
/// running test binary was built into (`<target>/<profile>/deps/<test>`),
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.ancestors().find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    workspace_root().join("target")
}

/// The root of the workspace under test (the directory above `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// The `masker` binary under test.
///
/// The suites are test targets of `masker-agent`, the package that owns the
/// binary, so `cargo test` builds it from the same tree before it runs them
/// and passes its path in `CARGO_BIN_EXE_masker`. There is no other way in:
/// no fallback to a path on disk, no override, so a stale or foreign binary
/// cannot be tested by accident.
///
/// # Panics
///
/// When the variable is not set (the suite was not started by `cargo test`)
/// or names no file.
pub fn masker_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let Some(path) = std::env::var_os("CARGO_BIN_EXE_masker") else {
                panic!(
                    "CARGO_BIN_EXE_masker is not set: run the suites with `cargo test -p masker-agent --test NAME` \
                     (cargo builds the masker binary of this tree first and passes its path)"
                )
            };
            let path = PathBuf::from(path);
            assert!(path.is_file(), "CARGO_BIN_EXE_masker names no file: {}", path.display());
            path
        })
        .clone()
}
