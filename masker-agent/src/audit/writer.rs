//! The audit writer: a thread that appends events to a size-rotated file
//! and/or standard output, so that no session ever waits for a disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// Events queued for the writer at most; beyond, events are dropped and counted.
const QUEUE: usize = 8192;
/// How long the writer lets events gather between writes (the queue holds
/// [`QUEUE`] events, many more than arrive in this time).
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Where audit events go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSettings {
    /// JSON Lines file, rotated by size.
    pub file: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` is the newest).
    pub keep: u32,
    /// Also write every event to standard output.
    pub stdout: bool,
}

impl AuditSettings {
    /// Default rotation size: 100 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
    /// Default number of rotated files kept.
    pub const DEFAULT_KEEP: u32 = 5;

    /// Whether any sink is configured.
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.stdout
    }
}

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit file cannot be created or opened.
    #[error("audit file {}: {source}", path.display())]
    File {
        /// The configured file.
        path: PathBuf,
        /// Why it cannot be opened.
        source: io::Error,
    },
    /// [`super::Audit::start`] was called twice.
    #[error("the audit trail is already started")]
    AlreadyStarted,
    /// The writer thread could not be spawned.
    #[error("{0}")]
    Thread(io::Error),
}

/// Opens the sinks of `settings` and starts the writer thread; returns where
/// events are sent. The file is opened now so that a bad path fails at
/// startup, with its name.
pub(super) fn start(settings: &AuditSettings) -> Result<mpsc::Sender<String>, AuditError> {
    let file = match &settings.file {
        Some(path) => Some(
            RotatingFile::open(path, settings.max_bytes.max(4096), settings.keep)
                .map_err(|source| AuditError::File { path: path.clone(), source })?,
        ),
        None => None,
    };
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    let stdout = settings.stdout;
    std::thread::Builder::new()
        .name("masker-audit".into())
        .spawn(move || {
            let mut file = file;
            let mut out = stdout.then(io::stdout);
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(line) = next {
                    if let Some(f) = file.as_mut()
                        && let Err(e) = f.write_line(line.as_bytes())
                    {
                        tracing::error!("audit file {}: {e}", f.path.display());
                    }
                    if let Some(o) = out.as_mut() {
                        let _ = o.write_all(line.as_bytes()).and_then(|_| o.write_all(b"\n"));
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
                if let Some(o) = out.as_mut() {
                    let _ = o.flush();
                }
                // Let events gather: under load the writer wakes once per
                // interval instead of once per statement (a context switch
                // each, which on a small host comes out of the sessions' CPU).
                std::thread::sleep(WRITE_INTERVAL);
            }
        })
        .map_err(AuditError::Thread)?;
    Ok(tx)
}

/// A file that is rotated (`FILE` → `FILE.1` → ... → `FILE.keep`) before it
/// would grow past `max_bytes`.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, keep, file: BufWriter::new(file), size })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Audit files may name who read what: root (or the agent's user) only.
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("masker-audit-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let mut f = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..20 {
            f.write_line(format!("{{\"n\":{i},\"pad\":\"..............................\"}}").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert!(path.exists());
        assert!(dir.join("audit.jsonl.1").exists() && dir.join("audit.jsonl.2").exists());
        assert!(!dir.join("audit.jsonl.3").exists());
        for p in [path.clone(), dir.join("audit.jsonl.1")] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.len() <= 100 && text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
