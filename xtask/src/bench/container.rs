//! A hand-made container for the container row of `bench connect`: its own
//! network namespace (`ip netns add`, loopback up) with a PostgreSQL of its
//! own inside (so "direct" in the container is loopback, as it is on the
//! host), and a cgroup under a parent the agent tags, with an init process
//! that joined the cgroup before it entered the namespace.
//!
//! Removed on drop (processes killed, cgroups and namespace deleted), and by
//! a watchdog shell if the bench process dies first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::client::shell_quote;

pub struct Container {
    name: String,
    parent: PathBuf,
    cgroup: PathBuf,
    init: Option<Child>,
    watchdog: Option<Child>,
}

impl Container {
    /// Makes the namespace, the cgroups (`<v2 root>/<name>/job`) and the
    /// init process.
    pub fn start() -> Result<Container> {
        let name = format!("masker-bench-{}", std::process::id());
        let root = cgroup_v2_root()?;
        let parent = root.join(&name);
        let cgroup = parent.join("job");
        let cleanup = format!(
            "for d in {job} {parent}; do [ -d \"$d\" ] && echo 1 > \"$d/cgroup.kill\"; sleep 0.2; rmdir \"$d\"; done; \
             ip netns delete {name} 2>/dev/null",
            job = shell_quote(&cgroup.to_string_lossy()),
            parent = shell_quote(&parent.to_string_lossy()),
            name = shell_quote(&name),
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' INT HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
                pid = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut c = Container { name, parent, cgroup, init: None, watchdog };
        ip(&["netns", "add", &c.name])?;
        ip(&["-n", &c.name, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&c.cgroup).with_context(|| format!("creating {}", c.cgroup.display()))?;
        let mut init = Command::new("sh");
        init.args(c.wrapper()).args(["sleep", "1000000"]).stdin(Stdio::null()).stdout(Stdio::null());
        c.init = Some(init.spawn().context("starting the container's init process")?);
        Ok(c)
    }

    /// The namespace's name (`ip netns exec NAME`).
    pub fn netns(&self) -> &str {
        &self.name
    }

    /// The cgroup to tag (the job's parent).
    pub fn parent(&self) -> &PathBuf {
        &self.parent
    }

    /// Arguments of `sh` that run the remaining arguments as a program in
    /// the container: join the cgroup, then enter the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "-c".into(),
            r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec ip netns exec "$ns" "$@""#.into(),
            self.cgroup.to_string_lossy().into_owned(),
            self.name.clone(),
        ]
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        if let Some(mut init) = self.init.take() {
            let _ = init.kill();
            let _ = init.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in [&self.cgroup, &self.parent] {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = ip(&["netns", "delete", &self.name]);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn cgroup_v2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("cgroup v2 is not mounted")
}
