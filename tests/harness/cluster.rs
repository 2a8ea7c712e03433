//! A throwaway PostgreSQL 15 cluster.
//!
//! Each [`PgCluster`] lives in its own temporary directory and listens on a
//! random free port on 127.0.0.1 and ::1 (plus a Unix socket inside the
//! directory), so several test binaries can run at once. Authentication is
//! scram-sha-256 for every connection. It holds:
//!
//! - the superuser `postgres` ([`PgCluster::superuser`]),
//! - the non-superuser role `app` ([`PgCluster::app`]) with access to the
//!   `shop` database, which holds the [`crate::fixture`] schema and data.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server
//! runs as the `postgres` system user (or `masker-test`, created on demand).
//!
//! Teardown happens in `Drop` and, for clusters that are never dropped (the
//! shared one in a `static`) or a test process that is killed, in a watchdog
//! process that stops the server and removes the directory once the test
//! process has gone.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::ConnInfo;
use crate::process::{self, shell_quote, shell_quote_path};

/// Password of the superuser `postgres`.
pub const SUPERUSER_PASSWORD: &str = "masker-test-superuser";
/// The non-superuser role the workloads log in as.
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app-secret-pw";
/// The database holding the fixture.
pub const APP_DB: &str = "shop";

/// Deadline for one server-side tool (initdb, pg_ctl, psql set-up).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// A running throwaway cluster; see the module documentation.
pub struct PgCluster {
    dir: TempDir,
    bindir: PathBuf,
    run_as: Option<String>,
    port: u16,
    ipv6: bool,
    watchdog: Option<Child>,
}

static SHARED: LazyLock<PgCluster> =
    LazyLock::new(|| PgCluster::start().unwrap_or_else(|err| panic!("starting the test cluster: {err:#}")));

impl PgCluster {
    /// The cluster shared by all tests of this test binary (started on first
    /// use). Tests that need isolation create their own database or schema.
    ///
    /// # Panics
    ///
    /// If the cluster cannot be started; the message says why.
    pub fn shared() -> &'static PgCluster {
        &SHARED
    }

    /// Starts a new cluster with the `app` role, the `shop` database and the
    /// fixture loaded.
    pub fn start() -> Result<PgCluster> {
        let bindir = bindir()?;
        let run_as = if process::running_as_root() { Some(unprivileged_user()?) } else { None };
        let dir =
            tempfile::Builder::new().prefix("masker-pg-").tempdir_in("/tmp").context("creating the cluster dir")?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        let mut cluster = PgCluster { dir, bindir, run_as, port: 0, ipv6: false, watchdog: None };
        // The watchdog exists before the server does: whatever happens from here
        // on, the directory and any server in it go away with this process.
        let stop =
            cluster.command_line("pg_ctl", &["stop", "-D", &cluster.data_dir().to_string_lossy(), "-m", "immediate"]);
        cluster.watchdog = Some(process::watchdog(&format!(
            "{stop} >/dev/null 2>&1; rm -rf {}",
            shell_quote_path(cluster.dir.path())
        ))?);
        cluster.init()?;
        cluster.start_server()?;
        cluster.create_app()?;
        crate::fixture::load(&cluster)?;
        Ok(cluster)
    }

    /// TCP port (the same on 127.0.0.1 and ::1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's IPv4 address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.port)
    }

    /// The server's IPv6 address, if the host has IPv6 loopback.
    pub fn addr_v6(&self) -> Option<SocketAddr> {
        self.ipv6.then(|| SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.port))
    }

    /// The superuser `postgres`, database `shop`.
    pub fn superuser(&self) -> ConnInfo {
        ConnInfo {
            host: Ipv4Addr::LOCALHOST.to_string(),
            port: self.port,
            user: "postgres".into(),
            password: SUPERUSER_PASSWORD.into(),
            dbname: APP_DB.into(),
        }
    }

    /// The non-superuser `app`, database `shop`.
    pub fn app(&self) -> ConnInfo {
        ConnInfo { user: APP_USER.into(), password: APP_PASSWORD.into(), ..self.superuser() }
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A directory for files that live as long as the cluster (e.g. the
    /// policy file of a suite's shared set-up, kept in a `static`, whose
    /// destructor never runs): removed with the cluster, by its watchdog
    /// at the latest.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The directory with the PostgreSQL binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser (psql over the Unix socket) in `dbname`.
    pub fn run_sql_as_superuser(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", dbname, "-f", "-"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env_remove("PGSERVICE");
        let out = process::run(cmd, Some(sql.as_bytes()), TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!("psql as superuser failed ({}): {}", out.status, out.stderr);
        }
        Ok(out.stdout)
    }

    /// Creates an empty database owned by `app` and returns its login.
    pub fn create_database(&self, name: &str) -> Result<ConnInfo> {
        self.run_sql_as_superuser("postgres", &format!("CREATE DATABASE \"{name}\" OWNER {APP_USER};"))?;
        Ok(self.app().with_db(name))
    }

    /// A command running `program` from the PostgreSQL bindir as the server user.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C").env("TZ", "UTC");
        cmd
    }

    /// The shell equivalent of [`Self::command`].
    fn command_line(&self, program: &str, args: &[&str]) -> String {
        let mut words = Vec::new();
        if let Some(user) = &self.run_as {
            words.extend(["runuser".to_owned(), "-u".to_owned(), shell_quote(user), "--".to_owned()]);
        }
        words.push(shell_quote_path(&self.bindir.join(program)));
        words.extend(args.iter().map(|arg| shell_quote(arg)));
        words.join(" ")
    }

    fn init(&mut self) -> Result<()> {
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n"))?;
        std::fs::create_dir(self.socket_dir())?;
        if let Some(user) = &self.run_as {
            chown_to(&pwfile, user)?;
            chown_to(&self.socket_dir(), user)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-N", "-A", "scram-sha-256", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = process::run(cmd, None, TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!("initdb failed ({}):\n{}\n{}", out.status, out.stdout, out.stderr);
        }
        std::fs::remove_file(&pwfile)?;
        self.ipv6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok();
        let listen = if self.ipv6 { "127.0.0.1,::1" } else { "127.0.0.1" };
        let settings = format!(
            "\n# masker test harness\n\
             listen_addresses = '{listen}'\n\
             unix_socket_directories = '{sock}'\n\
             max_connections = 200\n\
             shared_buffers = 64MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = minimal\n\
             max_wal_senders = 0\n\
             max_wal_size = 1GB\n\
             checkpoint_timeout = 1h\n\
             autovacuum = off\n\
             jit = off\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             lc_messages = 'C'\n\
             password_encryption = 'scram-sha-256'\n",
            sock = self.socket_dir().display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))?
            .write_all(settings.as_bytes())?;
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let log = self.dir.path().join("postgres.log");
        let mut last_error = String::new();
        // A port that was free a moment ago can be taken by a parallel test
        // binary before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port(self.ipv6)?;
            let mut cmd = self.command("pg_ctl");
            cmd.args(["start", "-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {port}"))
                // Keep the server out of the terminal's process group: a Ctrl-C
                // on the test run is for the watchdog to clean up after.
                .process_group(0);
            let out = process::run(cmd, None, TOOL_TIMEOUT)?;
            if out.status.success() {
                self.port = port;
                return Ok(());
            }
            last_error =
                format!("pg_ctl start failed ({}): {}{}\n{}", out.status, out.stdout, out.stderr, self.server_log());
        }
        bail!("{last_error}")
    }

    /// Restarts the server on the same port (`pg_ctl restart -m fast`: its
    /// sessions get FATAL 57P01), waiting until it accepts connections.
    pub fn restart(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["restart", "-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .process_group(0);
        let out = process::run(cmd, None, TOOL_TIMEOUT)?;
        if !out.status.success() {
            bail!("pg_ctl restart failed ({}): {}{}\n{}", out.status, out.stdout, out.stderr, self.server_log());
        }
        Ok(())
    }

    /// Turns on `ssl` with a self-signed certificate for 127.0.0.1 and
    /// localhost (made with `openssl` in the data directory) and returns a
    /// copy of the certificate (PEM) for clients that verify it, kept in the
    /// cluster's temp dir.
    pub fn enable_ssl(&self) -> Result<PathBuf> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let cert = self.data_dir().join("server.crt");
        let key = self.data_dir().join("server.key");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // An end-entity certificate (webpki refuses a CA one as a server's).
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
        }
        let owner = std::fs::metadata(self.data_dir())?;
        for f in [&cert, &key] {
            std::os::unix::fs::chown(f, Some(owner.uid()), Some(owner.gid()))?;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
        }
        let client_copy = self.dir.path().join("server-ca.pem");
        std::fs::copy(&cert, &client_copy)?;
        self.run_sql_as_superuser("postgres", "ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();\n")
            .context("enabling ssl")?;
        // New sessions see the reloaded setting once the postmaster has read it.
        crate::poll(Duration::from_secs(30), "ssl = on after pg_reload_conf()", || {
            self.run_sql_as_superuser("postgres", "SHOW ssl;\n").ok().filter(|out| out.trim() == "on")
        });
        Ok(client_copy)
    }

    fn create_app(&self) -> Result<()> {
        self.run_sql_as_superuser(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';\n\
                 CREATE ROLE {APP_USER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{APP_PASSWORD}';\n\
                 CREATE DATABASE {APP_DB} OWNER {APP_USER};\n"
            ),
        )?;
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            let mut cmd = self.command("pg_ctl");
            cmd.args(["stop", "-w", "-m", "immediate", "-D"]).arg(self.data_dir());
            let _ = process::run(cmd, None, Duration::from_secs(30));
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // The TempDir removes the directory after this.
    }
}

/// `pg_config --bindir` if it has `initdb`, else the Debian location.
fn bindir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").is_file() {
        return Ok(debian);
    }
    bail!("no PostgreSQL server binaries: neither `pg_config --bindir` nor {} has initdb", debian.display())
}

/// The system user the server runs as when we are root.
fn unprivileged_user() -> Result<String> {
    for user in ["postgres", "masker-test"] {
        if user_ids(user).is_ok() {
            return Ok(user.to_owned());
        }
    }
    // Another test binary may create it at the same moment; check again after.
    let _ = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "masker-test"])
        .output();
    user_ids("masker-test")
        .map(|_| "masker-test".to_owned())
        .context("no postgres user and could not create masker-test")
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").arg(flag).arg(user).output()?;
        if !out.status.success() {
            bail!("no user {user}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn chown_to(path: &Path, user: &str) -> Result<()> {
    let (uid, gid) = user_ids(user)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))
}

/// A port free on 127.0.0.1 (and on ::1 when `ipv6`).
fn free_port(ipv6: bool) -> Result<u16> {
    for _ in 0..50 {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = v4.local_addr()?.port();
        if !ipv6 || TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free on both 127.0.0.1 and ::1")
}
