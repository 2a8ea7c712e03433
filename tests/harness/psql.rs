//! `psql` as a subprocess client.
//!
//! ```no_run
//! # use masker_tests::{PgCluster, psql::Psql};
//! let cluster = PgCluster::shared();
//! let out = Psql::new(&cluster.app()).command("SELECT count(*) FROM customers").run();
//! assert_eq!(out.stdout.trim(), "5000");
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::ConnInfo;
use crate::process::{self, Output};

/// A psql invocation: `psql -X -A -t -q -v ON_ERROR_STOP=1 -w` with the
/// password in `PGPASSWORD`, unaligned tuples-only output by default.
pub struct Psql {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Psql {
    /// psql connecting to `info` (libpq's default `sslmode=prefer`, so the
    /// SSLRequest path is exercised too).
    pub fn new(info: &ConnInfo) -> Psql {
        Psql::via(Command::new(psql_binary()), info)
    }

    /// psql started by `wrapper`, a command whose remaining arguments are
    /// the program and its arguments (e.g. [`crate::agent::TestCgroup::command`]
    /// of [`psql_binary`], so psql runs inside a cgroup).
    pub fn via(wrapper: Command, info: &ConnInfo) -> Psql {
        let mut cmd = wrapper;
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-w"])
            .args(["-h", &info.host, "-p", &info.port.to_string(), "-U", &info.user, "-d", &info.dbname])
            .env("PGPASSWORD", &info.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGTZ", "UTC")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env_remove("PGOPTIONS");
        Psql { cmd, stdin: None, timeout: Duration::from_secs(120) }
    }

    /// Adds `-c SQL` (may be given several times; meta-commands like `\copy`
    /// work too).
    pub fn command(mut self, sql: &str) -> Psql {
        self.cmd.arg("-c").arg(sql);
        self
    }

    /// Adds a raw argument.
    pub fn arg(mut self, arg: &str) -> Psql {
        self.cmd.arg(arg);
        self
    }

    /// Sends no password at all: no `PGPASSWORD`, and a `PGPASSFILE` that
    /// does not exist (so no `~/.pgpass` is read either). With `-w` psql
    /// fails instead of prompting if the server asks for one.
    pub fn no_password(mut self) -> Psql {
        self.cmd.env_remove("PGPASSWORD").env("PGPASSFILE", "/nonexistent/masker-tests-no-pgpass");
        self
    }

    /// Sets an environment variable for psql.
    pub fn env(mut self, key: &str, value: &str) -> Psql {
        self.cmd.env(key, value);
        self
    }

    /// Feeds `input` on stdin (with `-f -`, or as data for `\copy ... FROM STDIN`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Psql {
        self.stdin = Some(input.into());
        self
    }

    /// Changes the deadline (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Psql {
        self.timeout = timeout;
        self
    }

    /// Runs psql, whatever its exit code.
    ///
    /// # Panics
    ///
    /// If psql cannot be started or exceeds its deadline.
    pub fn run(self) -> Output {
        process::run(self.cmd, self.stdin.as_deref(), self.timeout).unwrap_or_else(|err| panic!("psql: {err:#}"))
    }

    /// Runs psql, whatever its exit code; an error when psql cannot be
    /// started or exceeds its deadline.
    pub fn try_run(self) -> anyhow::Result<Output> {
        process::run(self.cmd, self.stdin.as_deref(), self.timeout)
    }

    /// Starts psql in the background with stdout and stderr piped (for a
    /// client that must wait while the test acts).
    pub fn spawn(mut self) -> std::process::Child {
        use std::process::Stdio;
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.spawn().unwrap_or_else(|err| panic!("starting psql: {err}"))
    }

    /// Runs psql and returns stdout.
    ///
    /// # Panics
    ///
    /// Also when psql exits non-zero.
    #[track_caller]
    pub fn run_ok(self) -> String {
        let out = self.run();
        out.assert_success();
        out.stdout
    }
}

/// psql from the server's bindir if present, else from `PATH` (looked up once).
pub fn psql_binary() -> PathBuf {
    static PSQL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PSQL.get_or_init(|| {
        let candidates = [
            Command::new("pg_config")
                .arg("--bindir")
                .output()
                .ok()
                .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("psql")),
            Some(PathBuf::from("/usr/lib/postgresql/15/bin/psql")),
        ];
        candidates.into_iter().flatten().find(|path| path.is_file()).unwrap_or_else(|| PathBuf::from("psql"))
    })
    .clone()
}
