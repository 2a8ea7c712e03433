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
//!   cluster.
//! - Clients: [`ConnInfo::connect`] (tokio-postgres, in process), [`psql`]
//!   (subprocess) and [`python`] (psycopg 3 in a venv the harness creates),
//!   plus [`raw`], a byte-level protocol client for edge cases.
//! - [`compare`]: results through masker vs direct, value for value.
//!
//! Everything that waits has a deadline, so a broken proxy fails a test
//! instead of hanging it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod compare;
pub mod docker;
pub mod fixture;
pub mod leaks;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod psql;
pub mod python;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cluster::PgCluster;
pub use proxy::MaskerProxy;

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
    /// task of the current runtime. Times out after 20 s.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let config = self.tokio_config();
        let (client, connection) = within(Duration::from_secs(20), "tokio-postgres connect", async {
            config.connect(tokio_postgres::NoTls).await
        })
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
        let (client, mut connection) = within(Duration::from_secs(20), "tokio-postgres connect", async {
            config.connect(tokio_postgres::NoTls).await
        })
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
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target")
}

/// The directory the running binary's profile lives in (`<target>/debug`).
pub fn profile_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|name| name == "deps")
        && let Some(profile) = deps.parent()
    {
        return profile.to_path_buf();
    }
    target_dir().join("debug")
}
