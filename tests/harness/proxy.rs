//! `masker proxy` as a child process.
//!
//! The binary is always the one cargo built from the tree under test for the
//! running suite ([`crate::masker_binary`]).
//!
//! Setting `MASKER_TESTS_DIRECT=1` makes [`MaskerProxy::start`] start nothing
//! and hand out the upstream address itself: the relay suites then run
//! against PostgreSQL directly, which checks the tests, not masker.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::process;

/// How long the proxy may take to print its listening line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The line prefix `masker proxy` prints on stdout once it listens.
pub const READY_PREFIX: &str = "masker proxy listening on ";

/// A running `masker proxy`; killed when dropped (and by a watchdog if the
/// test process dies first).
pub struct MaskerProxy {
    child: Option<Child>,
    watchdog: Option<Child>,
    addr: SocketAddr,
    upstream: SocketAddr,
    dir: TempDir,
}

impl MaskerProxy {
    /// The `masker` binary the tests run ([`crate::masker_binary`]).
    pub fn binary() -> PathBuf {
        crate::masker_binary()
    }

    /// Whether `MASKER_TESTS_DIRECT=1` asks to bypass the proxy.
    pub fn bypassed() -> bool {
        std::env::var("MASKER_TESTS_DIRECT").is_ok_and(|v| v == "1")
    }

    /// Starts `masker proxy --listen 127.0.0.1:0 --upstream UPSTREAM
    /// [--policy FILE]` and waits until it listens.
    ///
    /// # Panics
    ///
    /// If the proxy cannot be started or does not announce its address in
    /// time; the message includes its stderr.
    pub fn start(upstream: SocketAddr, policy: Option<&Path>) -> MaskerProxy {
        let mut args = Vec::new();
        if let Some(policy) = policy {
            args.push("--policy".to_owned());
            args.push(policy.to_string_lossy().into_owned());
        }
        Self::start_with_args(upstream, &args).unwrap_or_else(|err| panic!("starting masker proxy: {err:#}"))
    }

    /// Like [`Self::start`], with extra arguments after `--upstream`.
    pub fn start_with_args(upstream: SocketAddr, extra: &[String]) -> Result<MaskerProxy> {
        Self::start_with_env(upstream, extra, &[])
    }

    /// Like [`Self::start_with_args`], with extra environment variables for
    /// the proxy process (e.g. `MASKER_CATALOG_PASSWORD` and the policy's
    /// pseudonym `key_env`), so tests need not change their own environment.
    pub fn start_with_env(upstream: SocketAddr, extra: &[String], env: &[(&str, &str)]) -> Result<MaskerProxy> {
        let dir = tempfile::Builder::new().prefix("masker-proxy-").tempdir()?;
        if Self::bypassed() {
            return Ok(MaskerProxy { child: None, watchdog: None, addr: upstream, upstream, dir });
        }
        let binary = Self::binary();
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(&binary);
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--upstream", &upstream.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path)?)
            .envs(env.iter().copied());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", binary.display()))?;
        let watchdog = process::watchdog(&format!(
            "kill -9 {} 2>/dev/null; rm -rf {}",
            child.id(),
            process::shell_quote_path(dir.path())
        ))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keeps reading after the ready line so the proxy never blocks on a full pipe.
        thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !announced && let Some(addr) = line.strip_prefix(READY_PREFIX) {
                    announced = true;
                    let _ =
                        tx.send(addr.trim().parse::<SocketAddr>().map_err(|e| anyhow!("bad address in {line:?}: {e}")));
                } else if !announced {
                    let _ = tx.send(Err(anyhow!("unexpected stdout line before the ready line: {line:?}")));
                    announced = true;
                }
            }
        });
        let mut proxy = MaskerProxy { child: Some(child), watchdog: Some(watchdog), addr: upstream, upstream, dir };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(addr)) => {
                proxy.addr = addr;
                Ok(proxy)
            }
            Ok(Err(err)) => bail!("{err}\nstderr:\n{}", proxy.stderr()),
            Err(_) => {
                let status = proxy.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "no `{READY_PREFIX}ADDR` line within {READY_TIMEOUT:?} (exit status: {status:?})\nstderr:\n{}",
                    proxy.stderr()
                )
            }
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream server the proxy relays to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The proxy's stderr (its log) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Where the proxy's stderr goes.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Whether the proxy process is still running (always true when bypassed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The proxy's process id (`None` when bypassed or already reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`"TERM"`, `"HUP"`, `"INT"`) to the proxy with kill(1).
    ///
    /// # Panics
    ///
    /// If there is no proxy process or kill(1) fails.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running masker proxy");
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill(1)");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits up to `limit` for the proxy to exit; its status, or `None` if
    /// it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        process::wait_until(child, limit).ok().flatten()
    }

    /// The proxy's open file descriptors now (from /proc).
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid()?;
        Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
    }

    /// Panics with the proxy's stderr if it has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!("masker proxy exited ({status:?}); stderr:\n{}", self.stderr());
        }
    }
}

impl Drop for MaskerProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
