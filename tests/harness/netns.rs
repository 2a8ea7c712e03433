//! A hand-made "container": its own network namespace (`ip netns add`,
//! loopback up) and its own cgroup v2 directory, with an init process that
//! joined the cgroup before it entered the namespace, as a container
//! runtime's first process does. About 0.3 s to make; no image, no daemon.
//!
//! [`NetnsContainer::forward`] makes an address reachable inside the
//! namespace that leads to a server outside it (the way a container reaches
//! the host's database through its bridge): a listener on `127.0.0.1:PORT`
//! inside the namespace whose connections are relayed from the host
//! namespace. Everything stays on loopback interfaces of namespaces the test
//! made; no route, address or firewall rule of the host changes.
//!
//! Dropping it kills the processes (cgroup.kill), removes the cgroup, stops
//! the forwarders and deletes the namespace; a watchdog does the same if the
//! test process dies first.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::agent::TestCgroup;
use crate::process::{self, shell_quote};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// See the module documentation.
pub struct NetnsContainer {
    name: String,
    cgroup: Option<TestCgroup>,
    init: Option<Child>,
    forwards: Vec<NsForward>,
    watchdog: Option<Child>,
}

impl NetnsContainer {
    /// Makes the namespace and the cgroup (a child of `parent`) and starts
    /// the init process in both.
    pub fn start(parent: &TestCgroup) -> Result<NetnsContainer> {
        let name = format!("mskr-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let watchdog = process::watchdog(&format!("ip netns delete {} 2>/dev/null", shell_quote(&name)))?;
        let mut container = NetnsContainer {
            name: name.clone(),
            cgroup: None,
            init: None,
            forwards: Vec::new(),
            watchdog: Some(watchdog),
        };
        ip(&["netns", "add", &name])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        let cgroup = parent.child(&name)?;
        let init = container_command(cgroup.path(), &name, "sleep")
            .arg("1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the container's init process")?;
        container.cgroup = Some(cgroup);
        container.init = Some(init);
        // The init process is in place once it is in the namespace.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let want = container.netns_inode()?;
        loop {
            let pid = container.init.as_ref().map(Child::id).unwrap_or_default();
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == want) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("the init process of {name} did not enter its namespace");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(container)
    }

    /// The namespace's name (under `/run/netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's cgroup directory.
    pub fn cgroup(&self) -> &Path {
        self.cgroup.as_ref().map(TestCgroup::path).unwrap_or(Path::new("/nonexistent"))
    }

    /// The inode of the namespace (`net:[INODE]`).
    pub fn netns_inode(&self) -> Result<u64> {
        Ok(std::fs::metadata(self.netns_path())?.ino())
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// The init process's pid.
    pub fn init_pid(&self) -> Option<u32> {
        self.init.as_ref().map(Child::id)
    }

    /// A command that runs `program` in the container: a shell joins the
    /// cgroup, then enters the namespace and execs the program (as `docker
    /// exec` does).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        container_command(self.cgroup(), &self.name, program)
    }

    /// Makes `127.0.0.1:port` inside the namespace lead to `to` (in the
    /// test's namespace). Returns once the listener exists.
    pub fn forward(&mut self, port: u16, to: SocketAddr) -> Result<()> {
        let f = NsForward::start(&self.netns_path(), SocketAddr::from((Ipv4Addr::LOCALHOST, port)), to)
            .with_context(|| format!("in {}", self.name))?;
        self.forwards.push(f);
        Ok(())
    }

    /// Stops the container: kills its processes (init included) and waits
    /// until none is left. The namespace itself stays until drop.
    pub fn kill(&mut self) -> Result<()> {
        let _ = std::fs::write(self.cgroup().join("cgroup.kill"), "1");
        if let Some(mut init) = self.init.take() {
            let _ = init.kill();
            let _ = init.wait();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(self.cgroup().join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
            if std::time::Instant::now() > deadline {
                bail!("processes left in {}", self.cgroup().display());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for NetnsContainer {
    fn drop(&mut self) {
        let _ = self.kill();
        self.forwards.clear();
        drop(self.cgroup.take());
        let _ = ip(&["netns", "delete", &self.name]);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

fn container_command(cgroup: &Path, netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec ip netns exec "$ns" "$@""#)
        .arg(cgroup)
        .arg(netns)
        .arg(program);
    cmd
}

/// Copies both ways until either side closes.
fn relay(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    thread::spawn(move || copy(a, b));
    thread::spawn(move || copy(b2, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A plain TCP forwarder in the test's namespace: `listen` leads to `to`
/// (e.g. the same server under a second loopback address). Stops on drop.
pub struct Forward {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Forward {
    /// Listens on `listen` and relays each connection to `to`.
    pub fn start(listen: SocketAddr, to: SocketAddr) -> Result<Forward> {
        let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((a, _)) => {
                        let _ = a.set_nonblocking(false);
                        if let Ok(b) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                            relay(a, b);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Forward { stop, thread: Some(thread) })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener on `listen` inside the network namespace at `ns_path`
/// (`/run/netns/NAME`, `/proc/PID/ns/net`) whose connections are relayed to
/// `to` from the test's own namespace: how a container reaches a server
/// outside it in these tests. Stops on drop.
pub struct NsForward {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsForward {
    /// Opens the listener (enter the namespace, bind, return) and starts
    /// relaying; returns once the listener exists.
    pub fn start(ns_path: &Path, listen: SocketAddr, to: SocketAddr) -> Result<NsForward> {
        let ns = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let listener = (|| -> io::Result<TcpListener> {
                let home = File::open("/proc/thread-self/ns/net")?;
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
                let bound = TcpListener::bind(listen);
                move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network))?;
                let listener = bound?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(outside) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                            relay(inside, outside);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx.recv().context("forwarder thread")?.with_context(|| format!("listening on {listen}"))?;
        Ok(NsForward { stop, thread: Some(thread) })
    }
}

impl Drop for NsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
