//! What a benchmark prints: aligned tables on stdout and the same numbers as
//! JSON in `target/bench/<name>.json`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// A table with a title, a header row and right-aligned numeric columns
/// (the first column is left-aligned).
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A line printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    let _ = write!(out, "{cell:<width$}");
                } else {
                    let _ = write!(out, "  {cell:>width$}");
                }
            }
            out.trim_end().to_string()
        };
        let mut out = format!("\n== {} ==\n", self.title);
        let header = line(&self.header);
        let rule = "-".repeat(header.chars().count());
        let _ = writeln!(out, "{header}\n{rule}");
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        out
    }
}

/// `value/base` as "1.23x", or "-" when either is missing.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// A number with `decimals` digits, or "failed" when the run failed.
pub fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("failed".into(), |v| format!("{v:.decimals$}"))
}

/// "ok" when `value` meets the goal (`ok(value)`), "MISS" when not, "-"
/// when there is no value.
pub fn goal(value: Option<f64>, ok: impl Fn(f64) -> bool) -> String {
    match value {
        Some(v) if ok(v) => "ok".into(),
        Some(_) => "MISS".into(),
        None => "-".into(),
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Median of the successful measurements.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// The machine and software a run measured, printed once and stored in
/// every JSON file.
pub fn machine(bindir: &Path, root: &Path) -> Value {
    let first_line = |cmd: &mut Command| -> String {
        cmd.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let dirty =
        !first_line(Command::new("git").current_dir(root).args(["status", "--porcelain", "--untracked-files=no"]))
            .is_empty();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": cpu,
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "postgres": first_line(Command::new(bindir.join("postgres")).arg("--version")),
        "pgbouncer": first_line(Command::new("pgbouncer").arg("--version")),
        "git": format!("{}{}", first_line(Command::new("git").current_dir(root).args(["rev-parse", "--short", "HEAD"])), if dirty { "+dirty" } else { "" }),
    })
}

/// Share of all CPUs busy (not idle, not waiting for I/O) over `window`,
/// from `/proc/stat`: taken before a benchmark, it shows whether something
/// else competes for the machine.
pub fn cpu_busy_percent(window: std::time::Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> =
            stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((total, idle))
    };
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?;
    (total > 0).then(|| 100.0 * (total - (i1 - i0)) as f64 / total as f64)
}

pub fn machine_line(m: &Value) -> String {
    format!(
        "machine: {} cpus ({}), {} GiB, kernel {}; {}; {}; tree {}\nmasker binary: {}",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["mem_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["postgres"].as_str().unwrap_or("?"),
        m["pgbouncer"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?"),
        m["masker_bin"].as_str().unwrap_or("?"),
    )
}

/// Writes `value` to `<dir>/<name>.json`.
pub fn write_json(dir: &Path, name: &str, value: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median(&[]), None);
        assert_eq!(fmt_ratio(ratio(Some(3.0), Some(2.0))), "1.50x");
        assert_eq!(fmt_ratio(ratio(None, Some(2.0))), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new("t", &["name", "value"]);
        t.row(vec!["a".into(), "1.0".into()]);
        t.row(vec!["long name".into(), "12345.0".into()]);
        let text = t.render();
        assert!(text.contains("a              1.0\n"), "{text}");
        assert!(text.contains("long name  12345.0\n"), "{text}");
    }
}
