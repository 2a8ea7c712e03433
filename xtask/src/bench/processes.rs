//! The servers a benchmark run starts: a throwaway PostgreSQL 15 cluster,
//! `masker proxy` instances and pgbouncer. All listen on 127.0.0.1 only, all
//! live in one temporary directory, and all go away with the run.
//!
//! Teardown happens in `Drop` (servers first, then the directory). For a run
//! that is killed before destructors run, a watchdog shell started with the
//! directory waits for this process to disappear, then kills the PIDs this
//! run recorded in `<dir>/pids`, stops the cluster and removes the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::client::{self, shell_quote};

/// Deadline for one server-side tool (initdb, pg_ctl).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings of the throwaway cluster. Durability is off (nothing here is
/// worth keeping), JIT and autovacuum are off so that runs are steady, and
/// the pgbench data set (scale 10, ~160 MB) fits in shared buffers.
/// Synchronized scans are off so that `LIMIT n` without `ORDER BY` returns
/// the same rows every time (a scan would otherwise start where the last
/// one stopped).
const POSTGRES_CONF: &str = "
synchronize_seqscans = off
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 512MB
jit = off
autovacuum = off
logging_collector = off
";

/// An unprivileged system user that servers run as when we are root
/// (PostgreSQL and pgbouncer refuse to run as root).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `postgres` when this process runs as root, `None` otherwise.
    fn detect() -> Result<Option<RunAs>> {
        let uid = fs::metadata("/proc/self").context("reading /proc/self")?.uid();
        if uid != 0 {
            return Ok(None);
        }
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output().context("running id")?;
            if !out.status.success() {
                bail!("running as root needs the `postgres` system user (scripts/setup.sh installs PostgreSQL)");
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing the output of id")
        };
        Ok(Some(RunAs { name: "postgres".into(), uid: id("-u")?, gid: id("-g")? }))
    }
}

/// The temporary directory of one run, its watchdog and the PIDs it started.
pub struct Workdir {
    path: PathBuf,
    watchdog: Option<Child>,
}

impl Workdir {
    /// Creates the directory (owned by `run_as`) and its watchdog, which runs
    /// `stop_cluster(dir)` after this process is gone.
    fn create(run_as: Option<&RunAs>, stop_cluster: impl FnOnce(&Path) -> String) -> Result<Workdir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = PathBuf::from(format!("/tmp/masker-bench-{}-{nanos:08x}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
        }
        let mut work = Workdir { path, watchdog: None };
        let stop_cluster = stop_cluster(&work.path);
        let dir = shell_quote(&work.path.to_string_lossy());
        let cleanup = format!(
            "for p in $(cat {dir}/pids 2>/dev/null); do kill -9 $p 2>/dev/null; done; \
             {stop_cluster} >/dev/null 2>&1; rm -rf {dir}"
        );
        let script = format!(
            "trap '' INT HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
            pid = std::process::id()
        );
        // Own process group: a Ctrl-C aimed at the bench does not reach it.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the cleanup watchdog")?;
        work.watchdog = Some(watchdog);
        Ok(work)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a child PID for the watchdog.
    fn register(&self, pid: u32) {
        let file = OpenOptions::new().create(true).append(true).open(self.path.join("pids"));
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{pid}");
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A running throwaway PostgreSQL cluster with trust authentication on
/// 127.0.0.1 (superuser `postgres`, database `postgres`).
pub struct Cluster {
    // Field order matters: `Drop for Cluster` stops the server, then the
    // directory goes.
    work: Workdir,
    bindir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    /// Network namespace (`ip netns` name) the server runs in, if not ours.
    netns: Option<String>,
}

impl Cluster {
    /// initdb + pg_ctl start in a new temporary directory.
    pub fn start() -> Result<Cluster> {
        Cluster::start_with(false, None, "")
    }

    /// [`Cluster::start`] with `extra` lines appended to postgresql.conf
    /// (later lines win, e.g. a larger `max_connections`).
    pub fn start_configured(extra: &str) -> Result<Cluster> {
        Cluster::start_with(false, None, extra)
    }

    /// [`Cluster::start`] with `ssl = on` and a throwaway self-signed
    /// certificate (openssl, in the cluster's directory), for comparing TLS
    /// connections with TLS connections.
    pub fn start_tls() -> Result<Cluster> {
        Cluster::start_with(true, None, "")
    }

    /// [`Cluster::start`] inside network namespace `netns` (`ip netns`
    /// name): its `127.0.0.1` is the namespace's loopback.
    pub fn start_in_netns(netns: &str) -> Result<Cluster> {
        Cluster::start_with(false, Some(netns.to_string()), "")
    }

    fn start_with(tls: bool, netns: Option<String>, extra: &str) -> Result<Cluster> {
        let bindir = bindir()?;
        let run_as = RunAs::detect()?;
        let work = Workdir::create(run_as.as_ref(), |dir| pg_ctl_stop_line(&bindir, run_as.as_ref(), dir))?;
        let mut cluster = Cluster { work, bindir, run_as, port: 0, netns };
        let data = cluster.data_dir();
        cluster.server_tool("initdb", |c| {
            c.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        })?;
        cluster.port = free_port()?;
        let mut conf = format!(
            "{POSTGRES_CONF}listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            cluster.port,
            cluster.work.path().display()
        );
        if tls {
            let (cert, key) = (data.join("server.crt"), data.join("server.key"));
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
                .args(["-subj", "/CN=localhost", "-days", "2", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .context("running openssl for the bench server's certificate")?;
            if !out.status.success() {
                bail!("openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .context("chmod server.key")?;
            if let Some(user) = &cluster.run_as {
                for f in [&cert, &key] {
                    std::os::unix::fs::chown(f, Some(user.uid), Some(user.gid))
                        .with_context(|| format!("chown {}", f.display()))?;
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        conf.push_str(extra);
        OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .context("writing postgresql.conf")?;
        let log = cluster.work.path().join("postgres.log");
        cluster
            .server_tool("pg_ctl", |c| {
                c.args(["start", "-w", "-t", "60", "-s", "-D"]).arg(&data).arg("-l").arg(&log);
            })
            .with_context(|| format!("server log:\n{}", tail(&log, 20)))?;
        Ok(cluster)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.port)
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn work(&self) -> &Workdir {
        &self.work
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    /// Runs initdb/pg_ctl as the cluster's owner (in its namespace).
    fn server_tool(&self, tool: &str, args: impl FnOnce(&mut Command)) -> Result<()> {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        if let Some(user) = &self.run_as {
            words.extend(["runuser", "-u", user.name.as_str(), "--"].map(Into::into));
        }
        words.push(self.bindir.join(tool).into());
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd.current_dir(self.work.path());
        args(&mut cmd);
        client::run(cmd, TOOL_TIMEOUT).map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.server_tool("pg_ctl", |c| {
            c.args(["stop", "-s", "-m", "fast", "-D"]).arg(&data);
        });
    }
}

/// The shell command the watchdog uses to stop a cluster in `dir`.
fn pg_ctl_stop_line(bindir: &Path, run_as: Option<&RunAs>, dir: &Path) -> String {
    let stop = format!(
        "{} stop -m immediate -D {}",
        shell_quote(&bindir.join("pg_ctl").to_string_lossy()),
        shell_quote(&dir.join("data").to_string_lossy())
    );
    match run_as {
        Some(user) => format!("runuser -u {} -- {stop}", user.name),
        None => stop,
    }
}

/// PostgreSQL 15 binaries: `pg_config --bindir` if it has initdb, else the
/// Debian location.
fn bindir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return Ok(debian);
    }
    bail!("no PostgreSQL 15 server binaries (initdb) found; run scripts/setup.sh")
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running `masker proxy`.
pub struct Masker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Masker {
    /// Starts `masker proxy --listen 127.0.0.1:0 --upstream <cluster>` plus
    /// `args` and `env`, and waits for its "listening" line. `label` names
    /// the log file.
    pub fn start(bin: &Path, cluster: &Cluster, args: &[String], env: &[(&str, &str)], label: &str) -> Result<Masker> {
        let log = cluster.work().path().join(format!("masker-{label}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--upstream", &cluster.addr().to_string()]).args(args);
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        cluster.work().register(child.id());
        let ready = ready_line(&mut child, "masker proxy listening on ");
        let mut masker = Masker { child, addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0), log };
        match ready.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => {
                masker.addr = addr.parse().with_context(|| format!("masker printed a bad address {addr:?}"))?;
                Ok(masker)
            }
            Err(_) => {
                let status = masker.child.try_wait().ok().flatten();
                bail!(
                    "masker proxy did not become ready ({}); its log:\n{}",
                    status.map_or("still running".to_string(), |s| s.to_string()),
                    tail(&masker.log, 20)
                )
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (whose CPU time `bench cpu` reads).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident set size.
    pub fn memory(&self) -> Result<Memory> {
        Memory::of(self.child.id())
    }

    /// The last lines of masker's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// What follows `prefix` on the first stdout line of `child` that starts
/// with it (the address a server prints once it listens); stdout is drained
/// after it so the child never blocks on a full pipe.
fn ready_line(child: &mut Child, prefix: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix(prefix) {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
    }
    rx
}

/// The bare relay of [`super::bare`] (`xtask bare-relay`), in front of the
/// cluster.
pub struct BareRelay {
    child: Child,
    addr: SocketAddr,
}

impl BareRelay {
    /// Builds xtask in release (the `cargo xtask` running this is a debug
    /// build: an unoptimised relay would be no floor) and starts its
    /// `bare-relay`.
    pub fn start(cluster: &Cluster) -> Result<BareRelay> {
        let root = super::workspace_root();
        let status = Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "-p", "xtask"])
            .status()
            .context("running cargo build --release -p xtask")?;
        if !status.success() {
            bail!("cargo build --release -p xtask failed ({status})");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let mut cmd = Command::new(target.join("release").join("xtask"));
        cmd.args(["bare-relay", "--listen", "127.0.0.1:0", "--upstream", &cluster.addr().to_string()]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting the bare relay")?;
        cluster.work().register(child.id());
        let ready = ready_line(&mut child, "listening on ");
        let addr = match ready.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => addr.parse().with_context(|| format!("the bare relay printed a bad address {addr:?}")),
            Err(_) => Err(anyhow::anyhow!("the bare relay did not become ready")),
        };
        let mut relay = BareRelay { child, addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0) };
        relay.addr = addr?;
        Ok(relay)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareRelay {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `VmHWM`: peak resident set size, in KiB.
    pub peak_kib: u64,
    /// `VmRSS`: current resident set size, in KiB.
    pub rss_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/<pid>/status")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Memory { peak_kib: field("VmHWM:")?, rss_kib: field("VmRSS:")? })
    }
}

/// A running pgbouncer in session pooling mode in front of the cluster.
pub struct Pgbouncer {
    child: Child,
    addr: SocketAddr,
}

impl Pgbouncer {
    pub fn start(cluster: &Cluster) -> Result<Pgbouncer> {
        let dir = cluster.work().path();
        let port = free_port()?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("pgbouncer-users.txt");
        fs::write(&users, "\"postgres\" \"\"\n").context("writing the pgbouncer auth file")?;
        fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\npool_mode = session\n\
                 max_client_conn = 200\ndefault_pool_size = 50\nmax_db_connections = 0\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
                 ignore_startup_parameters = extra_float_digits\nlog_connections = 0\nlog_disconnections = 0\n",
                pg = cluster.addr().port(),
                users = users.display(),
                dir = dir.display(),
            ),
        )
        .context("writing pgbouncer.ini")?;
        let mut cmd = Command::new("pgbouncer");
        cmd.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(user) = cluster.run_as() {
            cmd.uid(user.uid).gid(user.gid);
        }
        let child = cmd.spawn().context("starting pgbouncer (installed by scripts/setup.sh)")?;
        cluster.work().register(child.id());
        let mut bouncer = Pgbouncer { child, addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port) };
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&bouncer.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                bail!("pgbouncer exited ({status}); its log:\n{}", tail(&dir.join("pgbouncer.log"), 20));
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen on {} in time", bouncer.addr);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(bouncer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (pgbouncer runs in the foreground: one process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM, a short grace period, then SIGKILL; always reaps.
fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Ok(None) = child.try_wait() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.wait();
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
