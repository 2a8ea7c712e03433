//! `masker audit tail`: the audit trail as text (or its JSON lines), from
//! its file; no agent needed.

use std::fs::File;
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};

/// Options of `masker audit tail`.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub file: PathBuf,
    pub follow: bool,
    pub identity: Option<String>,
    pub json: bool,
}

/// `masker audit tail`: prints the events of `file` (filtered by identity),
/// then with `follow` keeps printing new ones, across rotations, until
/// interrupted.
pub async fn tail(opts: &TailOptions, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    let open = |p: &Path| -> io::Result<(BufReader<File>, u64)> {
        let f = File::open(p)?;
        let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata()?);
        Ok((BufReader::new(f), ino))
    };
    let (mut reader, mut ino) = open(&opts.file).map_err(|e| anyhow::anyhow!("{}: {e}", opts.file.display()))?;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            if let Some(text) = render_line(line.trim_end(), opts) {
                writeln!(out, "{text}")?;
            }
            continue;
        }
        if n > 0 {
            // A partial line: wait for the rest.
            reader.seek(SeekFrom::Current(-(n as i64)))?;
        }
        if !opts.follow {
            return Ok(());
        }
        out.flush()?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        // Rotated: the path names a new file; finish the old one first.
        if let Ok(meta) = std::fs::metadata(&opts.file) {
            let now = std::os::unix::fs::MetadataExt::ino(&meta);
            if now != ino {
                let mut rest = String::new();
                reader.read_to_string(&mut rest)?;
                for l in rest.lines() {
                    if let Some(text) = render_line(l, opts) {
                        writeln!(out, "{text}")?;
                    }
                }
                (reader, ino) = open(&opts.file)?;
            }
        }
    }
}

/// One event as `audit tail` prints it, or `None` when filtered out.
fn render_line(line: &str, opts: &TailOptions) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => return (opts.identity.is_none()).then(|| format!("(unreadable line) {}", line.len())),
    };
    if let Some(want) = &opts.identity
        && v.get("identity").and_then(|i| i.as_str()) != Some(want.as_str())
    {
        return None;
    }
    if opts.json {
        return Some(line.to_string());
    }
    let s = |k: &str| v.get(k).map(plain).unwrap_or_default();
    let head = format!("{} {:<13} #{:<5} {:<12}", s("ts"), s("event"), s("session"), s("identity"));
    let detail = match v.get("event").and_then(|e| e.as_str()) {
        Some("session_start") => {
            format!(
                "{}@{} {} from {} pid={} exe={}",
                s("user"),
                s("database"),
                s("destination"),
                s("client"),
                s("pid"),
                s("executable")
            )
        }
        Some("session_end") => format!(
            "{} {} statements, {} rows, {} masked, {} ms{}",
            s("outcome"),
            s("statements"),
            s("rows"),
            s("masked_cells"),
            s("duration_ms"),
            v.get("error").filter(|e| !e.is_null()).map(|e| format!(": {}", plain(e))).unwrap_or_default()
        ),
        Some("statement") => format!(
            "{} {} rows={} masked={} {} ms: {}{}",
            s("class"),
            s("outcome"),
            s("rows"),
            s("masked_cells"),
            s("duration_ms"),
            s("statement"),
            v.get("sqlstate").filter(|e| !e.is_null()).map(|e| format!(" [{}]", plain(e))).unwrap_or_default()
        ),
        Some("denial") => format!("rule {}: {} ({}): {}", s("rule"), s("reason"), s("class"), s("statement")),
        Some("approval") => {
            format!("#{} {} by {} {}: {}", s("approval"), s("decision"), s("approver"), s("reason"), s("statement"))
        }
        _ => line.to_string(),
    };
    Some(format!("{head} {detail}"))
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}
