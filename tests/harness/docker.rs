//! A real Docker daemon for the container tests, started by the test set-up
//! and private to this test process: its own socket, data and exec roots
//! under a temporary directory, the `vfs` storage driver, no default bridge,
//! and neither iptables rules nor IP forwarding (`--iptables=false
//! --ip6tables=false --ip-forward=false --ip-masq=false`), so the host's
//! firewall and forwarding stay as they were (checked when the daemon stops).
//!
//! Containers run an imported skeleton image (a few directories and
//! symlinks, no registry needed) with the host's `/usr` mounted read-only,
//! so they run the host's `psql`, `sleep` and libraries. `--network none`
//! containers have only loopback; [`crate::netns::NsForward`] makes the test
//! cluster reachable at `127.0.0.1:PORT` inside them.
//!
//! [`DockerParent`] is a cgroup the test owns and passes as
//! `--cgroup-parent`; on hybrid hosts runc also creates it in every v1
//! hierarchy, and the parent removes those too.
//!
//! A watchdog removes containers, networks, the daemon and its directory if
//! the test process dies first. Needs `dockerd` (Debian's `docker.io`,
//! installed by `scripts/setup.sh`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::agent::TestCgroup;
use crate::process::{self, Output, shell_quote_path};

/// The skeleton image every test container runs.
pub const IMAGE: &str = "masker-test-skeleton:1";
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// A private Docker daemon; see the module documentation.
pub struct Docker {
    dir: TempDir,
    socket: PathBuf,
    daemon: Child,
    watchdog: Option<Child>,
    /// `net.ipv4.ip_forward` and the iptables rules before the daemon started.
    host_before: (String, String),
}

static SHARED: LazyLock<Result<Docker, String>> = LazyLock::new(|| Docker::start().map_err(|e| format!("{e:#}")));

/// What the Docker tests miss here besides eBPF, if anything: `dockerd`.
/// Tests ask through [`crate::skip::docker`].
pub fn dockerd_missing() -> Option<String> {
    if Command::new("dockerd").arg("--version").output().is_err() {
        return Some("no dockerd (apt-get install docker.io; scripts/setup.sh does)".into());
    }
    None
}

impl Docker {
    /// The daemon shared by the tests of this process, started on first use.
    ///
    /// # Panics
    ///
    /// If it cannot be started; the message says why.
    pub fn shared() -> &'static Docker {
        match &*SHARED {
            Ok(d) => d,
            Err(e) => panic!("starting dockerd: {e}"),
        }
    }

    fn start() -> Result<Docker> {
        let dir = tempfile::Builder::new().prefix("masker-docker-").tempdir_in("/tmp")?;
        let socket = dir.path().join("docker.sock");
        let host_before = host_network_state();
        let pid_file = dir.path().join("dockerd.pid");
        let docker = format!("docker -H unix://{}", socket.display());
        let watchdog = process::watchdog(&format!(
            "{docker} ps -aq | xargs -r {docker} rm -f >/dev/null 2>&1; \
             {docker} network prune -f >/dev/null 2>&1; \
             kill $(cat {pid}) 2>/dev/null; sleep 3; \
             grep {d} /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null; \
             rm -rf {d}",
            pid = shell_quote_path(&pid_file),
            d = shell_quote_path(dir.path()),
        ))?;
        let log = std::fs::File::create(dir.path().join("dockerd.log"))?;
        let daemon = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(&pid_file)
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false"])
            .args(["--ip-masq=false", "--storage-driver", "vfs", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("spawning dockerd")?;
        let mut d = Docker { dir, socket, daemon, watchdog: Some(watchdog), host_before };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.cli(&["version", "--format", "{{.Server.Version}}"]).is_ok_and(|o| o.status.success()) {
                break;
            }
            if let Ok(Some(status)) = d.daemon.try_wait() {
                bail!("dockerd exited ({status}):\n{}", d.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        d.import_skeleton()?;
        Ok(d)
    }

    fn import_skeleton(&self) -> Result<()> {
        let root = self.dir.path().join("skeleton");
        for sub in ["usr", "etc", "tmp", "proc", "sys", "dev", "run", "root", "work"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        for (link, to) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            std::os::unix::fs::symlink(to, root.join(link))?;
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")?;
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        let tar = self.dir.path().join("skeleton.tar");
        let out = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").output()?;
        if !out.status.success() {
            bail!("tar: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.run(&["import", &tar.to_string_lossy(), IMAGE])?.assert_success();
        Ok(())
    }

    /// The daemon's socket (for `DOCKER_HOST` and the agent's watcher).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker ARGS...` command for this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()));
        cmd
    }

    fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command();
        cmd.args(args);
        process::run(cmd, None, CLI_TIMEOUT)
    }

    /// Runs `docker ARGS...`, whatever its exit code.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.cli(args)
    }

    /// `docker run -d` of the skeleton image running `sleep`, with `/usr`
    /// (and `extra_mounts`, read-only) from the host, in `--cgroup-parent
    /// parent` (absolute, as Docker's cgroupfs driver takes it), on
    /// `network` (`none` for loopback only), with `labels`. Returns the id.
    pub fn start_container(
        &self,
        parent: Option<&DockerParent>,
        network: &str,
        labels: &[(&str, &str)],
        extra_mounts: &[&Path],
    ) -> Result<String> {
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--network".into(), network.into()];
        if let Some(p) = parent {
            args.extend(["--cgroup-parent".into(), p.docker_name()]);
        }
        args.extend(["-v".into(), "/usr:/usr:ro".into()]);
        for m in extra_mounts {
            args.extend(["-v".into(), format!("{0}:{0}:ro", m.display())]);
        }
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend([IMAGE.into(), "sleep".into(), "1000000".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&refs)?;
        if !out.status.success() {
            bail!("docker run: {}\n{}", out.stderr, self.log());
        }
        Ok(out.stdout.trim().to_string())
    }

    /// The pid (in the host's pid namespace) of a container's first process.
    pub fn pid_of(&self, id: &str) -> Result<u32> {
        let out = self.run(&["inspect", "--format", "{{.State.Pid}}", id])?;
        out.stdout.trim().parse().with_context(|| format!("docker inspect {id}: {}", out.stderr))
    }

    /// `/proc/<pid>/ns/net` of a container's first process.
    pub fn netns_path(&self, id: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(format!("/proc/{}/ns/net", self.pid_of(id)?)))
    }

    /// `docker exec ID PROGRAM`: the command's remaining arguments are the
    /// program's.
    pub fn exec(&self, id: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.command();
        cmd.args(["exec", "-i", id]).arg(program);
        cmd
    }

    /// `docker exec -i -e VAR... ID PROGRAM`: `vars` are passed from the
    /// command's own environment into the container.
    pub fn exec_env(&self, id: &str, vars: &[&str], program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.command();
        cmd.args(["exec", "-i"]);
        for v in vars {
            cmd.args(["-e", v]);
        }
        cmd.arg(id).arg(program);
        cmd
    }

    /// `docker rm -f ID`.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.run(&["rm", "-f", id])?.assert_success();
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Statics are not dropped; the watchdog does this at process exit.
        let _ = self.daemon.kill();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
        }
    }
}

/// `net.ipv4.ip_forward` and `iptables -S`: what dockerd could change.
pub fn host_network_state() -> (String, String) {
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    let rules = Command::new("iptables")
        .arg("-S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (forward.trim().to_string(), rules)
}

impl Docker {
    /// What the host's forwarding and firewall were before the daemon.
    pub fn host_network_before(&self) -> &(String, String) {
        &self.host_before
    }
}

/// A cgroup the test owns, passed to Docker as `--cgroup-parent`.
pub struct DockerParent {
    cgroup: Option<TestCgroup>,
    name: String,
}

impl DockerParent {
    /// A new parent directly under the cgroup v2 root.
    pub fn new() -> Result<DockerParent> {
        let cgroup = TestCgroup::new()?;
        let name = cgroup.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(DockerParent { cgroup: Some(cgroup), name })
    }

    /// Its v2 directory (tag this).
    pub fn path(&self) -> &Path {
        self.cgroup.as_ref().map(TestCgroup::path).unwrap_or(Path::new("/nonexistent"))
    }

    /// The `--cgroup-parent` value.
    pub fn docker_name(&self) -> String {
        format!("/{}", self.name)
    }
}

impl Drop for DockerParent {
    fn drop(&mut self) {
        drop(self.cgroup.take());
        // runc made the same directory in each v1 hierarchy of a hybrid host.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let dir = e.path().join(&self.name);
                if dir.is_dir() {
                    let _ = Command::new("find")
                        .arg(&dir)
                        .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}
