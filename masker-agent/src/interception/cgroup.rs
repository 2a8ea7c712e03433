//! cgroup v2 plumbing: where the hierarchy is mounted, cgroup paths and ids,
//! and the transient cgroups `masker run` puts a command in.
//!
//! A cgroup's id is the inode number of its directory in the v2 hierarchy:
//! the value `bpf_get_current_cgroup_id()` returns in the kernel. The v2
//! hierarchy is found in `/proc/self/mountinfo`, so this works for a pure v2
//! system (`/sys/fs/cgroup`) and for systemd's hybrid mode
//! (`/sys/fs/cgroup/unified`).
//!
//! `masker run` uses, in order: [`create_transient`], tag it,
//! [`current`] (to remember where it was), [`move_into`] itself (pid 0),
//! spawn the command (the child inherits the cgroup), [`move_into`] itself back
//! once the child is spawned, wait, [`kill_all`] (what the command left
//! running), untag (the entry is deleted: nothing is left that could
//! connect), [`remove`].
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the masker-owned subtree of transient cgroups lives, under the v2 root.
pub const MASKER_SUBTREE: &str = "masker";

/// Id of a cgroup v2 (its directory's inode number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A process id (the tgid, as the initial pid namespace numbers it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pid(pub u32);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A cgroup operation that failed, with what to do about it in the message.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 filesystem in `/proc/self/mountinfo`.
    #[error(
        "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); masker needs the unified \
         hierarchy, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    V2NotMounted,
    /// The given cgroup does not exist.
    #[error("cgroup {0} does not exist (paths are absolute or relative to the cgroup v2 root)")]
    Missing(PathBuf),
    /// The path leaves the v2 hierarchy or is not a cgroup directory.
    #[error("{0} is not a cgroup v2 directory under {1}")]
    NotACgroup(PathBuf, PathBuf),
    /// A read or write under the hierarchy failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The mount point of the cgroup v2 hierarchy of this process.
pub fn v2_root() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(path).map_err(io_err("reading", path))?;
    v2_root_from_mountinfo(&mountinfo).ok_or(CgroupError::V2NotMounted)
}

/// The first `cgroup2` mount point listed in a `/proc/<pid>/mountinfo` text.
pub fn v2_root_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of a cgroup given as
/// - an absolute path under `root` (`/sys/fs/cgroup/unified/ci/job-1`),
/// - a cgroup path as `/proc/<pid>/cgroup` shows it (`/ci/job-1`), or
/// - a path relative to `root` (`ci/job-1`).
///
/// `..` is refused so the result stays inside the hierarchy. The directory
/// must exist.
pub fn resolve(root: &Path, cgroup: &Path) -> Result<PathBuf, CgroupError> {
    let dir = lexical_resolve(root, cgroup).ok_or_else(|| CgroupError::NotACgroup(cgroup.into(), root.into()))?;
    if !dir.is_dir() {
        return Err(CgroupError::Missing(dir));
    }
    if !dir.join("cgroup.procs").exists() {
        return Err(CgroupError::NotACgroup(dir, root.into()));
    }
    Ok(dir)
}

/// [`resolve`] without touching the filesystem.
fn lexical_resolve(root: &Path, cgroup: &Path) -> Option<PathBuf> {
    if cgroup.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    let relative = match cgroup.strip_prefix(root) {
        Ok(rel) => rel,
        Err(_) => cgroup.strip_prefix("/").unwrap_or(cgroup),
    };
    let mut dir = root.to_path_buf();
    for c in relative.components() {
        match c {
            Component::Normal(part) => dir.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(dir)
}

/// The id of the cgroup whose directory is `dir`.
pub fn id_of(dir: &Path) -> Result<CgroupId, CgroupError> {
    let meta = fs::metadata(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CgroupError::Missing(dir.into()),
        _ => CgroupError::Io { what: "stat", path: dir.into(), source: e },
    })?;
    Ok(CgroupId(meta.ino()))
}

/// The directory of the cgroup with id `id`, found by walking the hierarchy
/// (there is no id-to-path lookup for unprivileged user space without
/// `open_by_handle_at`). `None` if it no longer exists.
pub fn find_by_id(root: &Path, id: CgroupId) -> Option<PathBuf> {
    find_all_by_id(root, &[id]).pop().map(|(_, path)| path)
}

/// [`find_by_id`] for several ids in one walk. Returns the ids found.
pub fn find_all_by_id(root: &Path, ids: &[CgroupId]) -> Vec<(CgroupId, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if found.len() == ids.len() {
            break;
        }
        if let Ok(id) = id_of(&dir)
            && ids.contains(&id)
        {
            found.push((id, dir.clone()));
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// The cgroup v2 directory of process `pid` (`None`: this process), from
/// `/proc/<pid>/cgroup`.
pub fn current(root: &Path, pid: Option<u32>) -> Result<PathBuf, CgroupError> {
    let file = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/cgroup")),
        None => PathBuf::from("/proc/self/cgroup"),
    };
    let text = fs::read_to_string(&file).map_err(io_err("reading", &file))?;
    let rel = v2_path_from_proc_cgroup(&text).ok_or(CgroupError::V2NotMounted)?;
    lexical_resolve(root, Path::new(rel)).ok_or_else(|| CgroupError::NotACgroup(rel.into(), root.into()))
}

/// The v2 entry (`0::/path`) of a `/proc/<pid>/cgroup` text.
pub fn v2_path_from_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Creates `<root>/masker/run-<pid>-<n>` (and `<root>/masker` if needed) and
/// returns its directory.
pub fn create_transient(root: &Path) -> Result<PathBuf, CgroupError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let parent = root.join(MASKER_SUBTREE);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CgroupError::Io { what: "creating cgroup", path: parent, source: e }),
    }
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("run-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left over by an earlier process with the same pid: try the next n.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CgroupError::Io { what: "creating cgroup", path: dir, source: e }),
        }
    }
}

/// Moves process `pid` into the cgroup `dir` (pid 0: the calling process).
/// Moves the whole process (all threads), as `cgroup.procs` does.
pub fn move_into(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    if !dir.is_dir() {
        return Err(CgroupError::Missing(dir.into()));
    }
    fs::write(&procs, pid.to_string()).map_err(io_err("writing", &procs))
}

/// Whether cgroup `dir` or a descendant has a process (`populated` of its
/// `cgroup.events`).
pub fn populated(dir: &Path) -> Result<bool, CgroupError> {
    let events = dir.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CgroupError::Missing(dir.into()),
        _ => CgroupError::Io { what: "reading", path: events.clone(), source: e },
    })?;
    match text.lines().find_map(|l| l.strip_prefix("populated ")) {
        Some(v) => Ok(v.trim() != "0"),
        None => Err(CgroupError::Io {
            what: "reading",
            path: events,
            source: io::Error::new(io::ErrorKind::InvalidData, "no `populated` line"),
        }),
    }
}

/// Kills every process in cgroup `dir` and its descendants (`cgroup.kill`,
/// kernel 5.14+) and waits up to `limit` until none is left. Fails if some
/// remain (or the kernel has no `cgroup.kill`).
pub fn kill_all(dir: &Path, limit: Duration) -> Result<(), CgroupError> {
    let kill = dir.join("cgroup.kill");
    fs::write(&kill, "1").map_err(io_err("writing", &kill))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !populated(dir)? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CgroupError::Io {
                what: "emptying cgroup",
                path: dir.into(),
                source: io::Error::new(io::ErrorKind::TimedOut, format!("processes left after {limit:?}")),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process left in cgroup `dir` (if the kernel has
/// `cgroup.kill`, 5.14+) and removes it, retrying for up to a second while it
/// is still busy. Removing a cgroup that is already gone succeeds.
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = fs::write(&kill, "1");
    }
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(CgroupError::Io {
        what: "removing cgroup (processes or child cgroups remain)",
        path: dir.into(),
        source: last.unwrap_or_else(|| io::Error::other("busy")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
";
    const PURE: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_the_v2_mount() {
        assert_eq!(v2_root_from_mountinfo(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v2_root_from_mountinfo(PURE), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_root_from_mountinfo("27 25 0:26 / /x rw - cgroup cgroup rw\n"), None);
        let spaced = "35 24 0:30 / /mnt/c\\040g rw shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_from_mountinfo(spaced), Some(PathBuf::from("/mnt/c g")));
    }

    #[test]
    fn resolves_the_three_spellings() {
        let root = Path::new("/sys/fs/cgroup/unified");
        let want = Some(PathBuf::from("/sys/fs/cgroup/unified/ci/job-1"));
        assert_eq!(lexical_resolve(root, Path::new("/sys/fs/cgroup/unified/ci/job-1")), want);
        assert_eq!(lexical_resolve(root, Path::new("/ci/job-1")), want);
        assert_eq!(lexical_resolve(root, Path::new("ci/./job-1")), want);
        assert_eq!(lexical_resolve(root, Path::new("/")), Some(root.to_path_buf()));
        assert_eq!(lexical_resolve(root, Path::new("ci/../../etc")), None);
    }

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let text =
            "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n";
        assert_eq!(v2_path_from_proc_cgroup(text), Some("/user.slice/session-1.scope"));
        assert_eq!(v2_path_from_proc_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn this_process_has_a_cgroup_with_an_id() {
        let Ok(root) = v2_root() else { return };
        let dir = current(&root, None).expect("own cgroup");
        assert!(id_of(&dir).expect("id").0 > 0);
        assert_eq!(find_by_id(&root, id_of(&root).unwrap()), Some(root.clone()));
    }
}
