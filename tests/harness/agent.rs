//! `masker agent` as a child process, and throwaway cgroups to run clients in.
//!
//! [`MaskerAgent`] writes an agent configuration into a temporary directory
//! (its own admin socket, free listen ports, its own pin directory
//! `/sys/fs/bpf/masker-test-<pid>-<n>`), starts the real daemon (which
//! attaches the real eBPF programs to the cgroup v2 root) and waits for its
//! admin socket. Several agents can run at once: each has its own maps, so a
//! cgroup is redirected only by the agent that tagged it.
//!
//! [`TestCgroup`] is a uniquely named cgroup v2 directory under the root;
//! [`TestCgroup::command`] starts a program inside it.
//!
//! Both clean up in `Drop` and, if the test process dies first, in a watchdog
//! shell: the agent is stopped, `masker uninstall --pin-dir` removes its pins
//! (and so detaches its programs), cgroups are killed and removed.
//!
//! Needs root, bpffs and cgroup v2 (see [`crate::skip::ebpf`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::MaskerProxy;
use crate::process::{self, Output, shell_quote_path};

/// How long the agent may take to load its programs and open its admin socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of one `masker` CLI command (status, tag, uninstall, ...).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Where bpffs is mounted.
const BPFFS: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `masker-test-<pid>-<n>`: unique within the machine while this process lives.
fn unique_name() -> String {
    format!("masker-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// What the eBPF tests miss here, if anything: root, a bpffs directory,
/// cgroup v2. Tests ask through [`crate::skip::ebpf`], which fails unless
/// the skip is explicitly allowed.
pub fn ebpf_missing() -> Option<String> {
    if !process::running_as_root() {
        return Some("needs root to load eBPF programs and create cgroups".into());
    }
    if !Path::new(BPFFS).is_dir() {
        return Some(format!("no {BPFFS}: BPF is not available"));
    }
    if let Err(e) = cgroup_v2_root() {
        return Some(format!("{e:#}"));
    }
    None
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` or, on
/// hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup_v2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .ok_or_else(|| anyhow!("cgroup v2 is not mounted"))
}

/// The cgroup v2 directory of process `pid`.
pub fn cgroup_of(pid: u32) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).context("reading /proc/PID/cgroup")?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| anyhow!("no cgroup v2 entry"))?;
    Ok(cgroup_v2_root()?.join(rel.trim_start_matches('/')))
}

/// A free TCP port on `addr` (bound, then released: another process could
/// take it in between, which is unlikely enough for tests).
fn free_port(addr: SocketAddr) -> Result<u16> {
    Ok(TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?.local_addr()?.port())
}

/// What to start the agent with.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Targets to intercept (`host:port`, IPv6 in brackets).
    pub targets: Vec<String>,
    /// Also listen on `[::1]:<free port>` (`listen_v6`), for IPv6 targets.
    pub ipv6: bool,
    /// Policy file; without one the agent relays without masking.
    pub policy: Option<PathBuf>,
    /// Trusted OIDC token issuers, written as `[[issuer]]` tables:
    /// `(issuer, audience, jwks_file)`.
    pub issuers: Vec<(String, String, PathBuf)>,
    /// More `[[issuer]]` tables, each given as its TOML body (for keys such
    /// as `jwks_url` that the tuples above do not have).
    pub issuer_tables: Vec<String>,
    /// Credentials of the agent's catalog connection (`[catalog]`, the
    /// password in a file of the agent's temp dir): `(user, password)`.
    /// Without them every table column is masked.
    pub catalog: Option<(String, String)>,
    /// Write the audit trail (`[audit] file`) to this file.
    pub audit_file: Option<PathBuf>,
    /// TOML appended verbatim at the end of the configuration (tables such
    /// as `[[credential]]` or `[audit]`).
    pub extra_config: String,
    /// Environment variables of the agent process (e.g. a credential's
    /// `password_env`).
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// Intercepts `targets`, IPv4 listener only, no policy.
    pub fn targets(targets: &[SocketAddr]) -> AgentOptions {
        AgentOptions { targets: targets.iter().map(|t| t.to_string()).collect(), ..AgentOptions::default() }
    }
}

/// A running `masker agent`; see the module documentation.
pub struct MaskerAgent {
    child: Option<Child>,
    watchdog: Option<Child>,
    listen: SocketAddrV4,
    listen_v6: Option<SocketAddrV6>,
    admin_socket: PathBuf,
    pin_dir: PathBuf,
    dir: TempDir,
    /// Environment of the agent process (for [`MaskerAgent::restart`]).
    env: Vec<(String, String)>,
}

impl MaskerAgent {
    /// Writes the configuration, starts `masker agent --config FILE` and
    /// waits until its admin socket answers.
    pub fn start(options: &AgentOptions) -> Result<MaskerAgent> {
        let binary = MaskerProxy::binary();
        let dir = tempfile::Builder::new().prefix("masker-agent-").tempdir_in("/tmp")?;
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port((Ipv4Addr::LOCALHOST, 0).into())?);
        let listen_v6 = if options.ipv6 {
            Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, free_port((Ipv6Addr::LOCALHOST, 0).into())?, 0, 0))
        } else {
            None
        };
        let admin_socket = dir.path().join("admin").join("admin.sock");
        let pin_dir = Path::new(BPFFS).join(unique_name());
        let toml_str = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let mut config = format!(
            "listen = {}\nadmin_socket = {}\npin_dir = {}\ntarget_refresh_secs = 3600\ntargets = [{}]\n",
            toml_str(&listen.to_string()),
            toml_str(&admin_socket.to_string_lossy()),
            toml_str(&pin_dir.to_string_lossy()),
            options.targets.iter().map(|t| toml_str(t)).collect::<Vec<_>>().join(", "),
        );
        // masker's CA (TLS towards clients) stays inside the temp dir.
        config.push_str(&format!("state_dir = {}\n", toml_str(&dir.path().join("state").to_string_lossy())));
        if let Some(v6) = listen_v6 {
            config.push_str(&format!("listen_v6 = {}\n", toml_str(&v6.to_string())));
        }
        if let Some(policy) = &options.policy {
            config.push_str(&format!("policy = {}\n", toml_str(&policy.to_string_lossy())));
        }
        // Tables come last: top-level keys may not follow them.
        if let Some((user, password)) = &options.catalog {
            let file = dir.path().join("catalog.pw");
            std::fs::write(&file, password)?;
            config.push_str(&format!(
                "\n[catalog]\nuser = {}\npassword_file = {}\n",
                toml_str(user),
                toml_str(&file.to_string_lossy())
            ));
        }
        if let Some(file) = &options.audit_file {
            config.push_str(&format!("\n[audit]\nfile = {}\n", toml_str(&file.to_string_lossy())));
        }
        for body in &options.issuer_tables {
            config.push_str(&format!("\n[[issuer]]\n{body}\n"));
        }
        for (issuer, audience, jwks_file) in &options.issuers {
            config.push_str(&format!(
                "\n[[issuer]]\nissuer = {}\naudience = {}\njwks_file = {}\n",
                toml_str(issuer),
                toml_str(audience),
                toml_str(&jwks_file.to_string_lossy()),
            ));
        }
        config.push('\n');
        config.push_str(&options.extra_config);
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, &config)?;

        // The watchdog exists before the agent does, and removes whatever the
        // agent pinned even if this process dies without running destructors.
        let pid_file = dir.path().join("agent.pid");
        let watchdog = process::watchdog(&format!(
            "p=$(cat {pids} 2>/dev/null); [ -n \"$p\" ] && kill -9 \"$p\" 2>/dev/null; sleep 1; \
             {bin} uninstall --pin-dir {pins}; rm -rf {dir}",
            pids = shell_quote_path(&pid_file),
            bin = shell_quote_path(&binary),
            pins = shell_quote_path(&pin_dir),
            dir = shell_quote_path(dir.path()),
        ))?;
        let mut agent = MaskerAgent {
            child: None,
            watchdog: Some(watchdog),
            listen,
            listen_v6,
            admin_socket,
            pin_dir,
            dir,
            env: options.env.clone(),
        };
        agent.spawn()?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Starts `masker agent` on the configuration file (logs appended).
    fn spawn(&mut self) -> Result<()> {
        let binary = MaskerProxy::binary();
        let log = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name));
        let mut cmd = Command::new(&binary);
        cmd.arg("agent")
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?);
        if std::env::var_os("MASKER_LOG").is_none() {
            cmd.env("MASKER_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().with_context(|| format!("spawning {}", binary.display()))?;
        std::fs::write(self.dir.path().join("agent.pid"), child.id().to_string())?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the agent (SIGTERM) if it runs, and starts it again with the
    /// same configuration (pin directory, admin socket, listeners); returns
    /// once the new agent's admin socket answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("masker agent exited during start-up ({status}); stderr:\n{}", self.stderr());
            }
            if self.admin_socket.exists() && UnixStream::connect(&self.admin_socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("masker agent: no admin socket after {READY_TIMEOUT:?}; stderr:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's IPv4 listener (where redirected connections land).
    pub fn listen(&self) -> SocketAddrV4 {
        self.listen
    }

    /// The agent's IPv6 listener, if configured.
    pub fn listen_v6(&self) -> Option<SocketAddrV6> {
        self.listen_v6
    }

    /// The admin socket (for `--admin-socket` / `MASKER_ADMIN_SOCKET`).
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// The bpffs directory of its pinned maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// A `masker ARGS...` command talking to this agent's admin socket.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(MaskerProxy::binary());
        cmd.env("MASKER_ADMIN_SOCKET", &self.admin_socket);
        cmd
    }

    /// Runs `masker ARGS...` against this agent, whatever its exit code.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.cli();
        cmd.args(args);
        process::run(cmd, None, CLI_TIMEOUT).unwrap_or_else(|e| panic!("masker {args:?}: {e:#}"))
    }

    /// `masker status --json`, parsed.
    ///
    /// # Panics
    ///
    /// If the command fails or prints something else than JSON.
    #[track_caller]
    pub fn status(&self) -> Value {
        let out = self.run_cli(&["status", "--json"]);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("masker status --json: {e}: {}", out.stdout))
    }

    /// The agent's `connections` counter.
    #[track_caller]
    pub fn connections(&self) -> u64 {
        let status = self.status();
        status["counters"]["connections"].as_u64().unwrap_or_else(|| panic!("no counters.connections: {status}"))
    }

    /// `masker tag CGROUP --identity IDENTITY`.
    #[track_caller]
    pub fn tag(&self, cgroup: &Path, identity: &str) {
        self.run_cli(&["tag", &cgroup.to_string_lossy(), "--identity", identity]).assert_success();
    }

    /// `masker untag CGROUP`.
    #[track_caller]
    pub fn untag(&self, cgroup: &Path) {
        self.run_cli(&["untag", &cgroup.to_string_lossy()]).assert_success();
    }

    /// Sends SIGTERM (to the agent's PID only) and waits for it to exit,
    /// killing it after 15 s. Returns its exit status (`None` if it was
    /// already stopped). The pins stay as the agent left them.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match process::wait_until(&mut child, STOP_TIMEOUT) {
            Ok(Some(status)) => Some(status),
            _ => {
                eprintln!("masker agent did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
                None
            }
        }
    }

    /// `masker uninstall --pin-dir PIN_DIR`: detaches the programs and
    /// removes the maps the agent left.
    pub fn uninstall(&self) -> Output {
        self.run_cli(&["uninstall", "--pin-dir", &self.pin_dir.to_string_lossy()])
    }
}

impl Drop for MaskerAgent {
    fn drop(&mut self) {
        self.stop();
        let out = self.uninstall();
        if !out.status.success() {
            eprintln!("masker uninstall --pin-dir {} failed: {}", self.pin_dir.display(), out.stderr);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A cgroup v2 directory of the test (`<root>/masker-test-<pid>-<n>`, or a
/// child of another [`TestCgroup`]). Dropping it kills what runs in it and
/// removes it; children must be dropped first (drop order of locals is the
/// reverse of creation, which does that).
pub struct TestCgroup {
    path: PathBuf,
    watchdog: Option<Child>,
}

impl TestCgroup {
    /// Creates a new cgroup directly under the v2 root.
    pub fn new() -> Result<TestCgroup> {
        Self::create(cgroup_v2_root()?.join(unique_name()))
    }

    /// Creates the child cgroup `name` of this one.
    pub fn child(&self, name: &str) -> Result<TestCgroup> {
        Self::create(self.path.join(name))
    }

    fn create(path: PathBuf) -> Result<TestCgroup> {
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let quoted = shell_quote_path(&path);
        let watchdog = process::watchdog(&format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do [ -d {quoted} ] || break; \
             find {quoted} -depth -type d -exec sh -c 'echo 1 > \"$0/cgroup.kill\"; rmdir \"$0\"' {{}} \\; \
             2>/dev/null; sleep 0.2; done"
        ))?;
        Ok(TestCgroup { path, watchdog: Some(watchdog) })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs `program` inside this cgroup: a shell moves itself
    /// in, then `exec`s the program, so the program never runs outside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#).arg(&self.path).arg(program);
        cmd
    }

    /// Kills every process in the cgroup and removes it (retrying while it is
    /// busy, up to 2 s).
    pub fn remove(&mut self) -> Result<()> {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if !self.path.exists() {
            return Ok(());
        }
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("removing cgroup {}", self.path.display()));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("{e:#}");
        }
    }
}

/// Re-executes this test binary through `wrapper` (e.g. a
/// [`TestCgroup::command`] or `masker run ... --`), running only the test
/// `test`: the body of a client process, which reads its login from the
/// environment variable `var` ([`crate::ConnInfo::from_spec`]). That body is
/// an `#[ignore]`d test (it is not a test of its own, and fails without the
/// variable), so it is run with `--ignored`.
/// Cgroup membership is per process: this is how a Rust client runs in one.
pub fn test_client(wrapper: Command, test: &str, var: &str, info: &crate::ConnInfo) -> Result<LineChild> {
    let mut cmd = wrapper;
    cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1", "-q"]).env(var, info.to_spec());
    LineChild::spawn(cmd)
}

/// A child process whose stdout is read line by line on a thread, for
/// clients that report and then wait (e.g. holding a connection open while
/// the test looks at `masker status`).
pub struct LineChild {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl LineChild {
    /// Spawns `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Result<LineChild> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(LineChild { child, lines, stderr: Some(stderr) })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout line starting with `prefix` (the rest of the line),
    /// within `limit`.
    pub fn line_starting(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.to_owned()),
                    None => seen.push(line),
                },
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                    let what = match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout => format!("within {limit:?}"),
                        std::sync::mpsc::RecvTimeoutError::Disconnected => format!("before it exited ({status:?})"),
                    };
                    bail!("no line starting with {prefix:?} {what}; stdout: {seen:?}\nstderr:\n{stderr}");
                }
            }
        }
    }

    /// Writes a line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().ok_or_else(|| anyhow!("stdin already closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin and waits for the child to exit (killed after `limit`);
    /// returns its status and stderr.
    pub fn finish(mut self, limit: Duration) -> Result<(ExitStatus, String)> {
        drop(self.child.stdin.take());
        let status = process::wait_until(&mut self.child, limit)?;
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        match status {
            Some(status) => Ok((status, stderr)),
            None => bail!("timed out after {limit:?}; stderr:\n{stderr}"),
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
