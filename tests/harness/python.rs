//! psycopg 3 (Python) as a client, in a venv the harness creates itself.
//!
//! The venv lives in `<target>/test-venv`. Creating it is idempotent and safe
//! when several test binaries ask at once: an exclusive lock on
//! `<target>/test-venv.lock` serialises them, and a stamp file records that a
//! venv with [`REQUIREMENT`] is complete. If `python3 -m venv` is unavailable
//! and we are root, `python3-venv` is installed with apt.
//!
//! Snippets define `main(conn)`; the harness connects (psycopg, autocommit
//! off, libpq's default `sslmode=prefer`), calls it and returns its result as
//! JSON. Values JSON cannot express come back as strings (`str()`), bytes as
//! `\x<hex>`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process;

/// What the venv installs.
pub const REQUIREMENT: &str = "psycopg[binary]>=3.1,<4";

const WRAPPER: &str = r#"
import json, sys
import psycopg

def _default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(o).hex()
    return str(o)

ns = {"psycopg": psycopg}
exec(compile(sys.argv[2], "<snippet>", "exec"), ns)
with psycopg.connect(sys.argv[1]) as conn:
    result = ns["main"](conn)
sys.stdout.write(json.dumps(result, default=_default))
"#;

/// The venv's python, creating the venv on first use.
///
/// # Panics
///
/// If the venv cannot be created; the message says which step failed.
pub fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| ensure_venv().unwrap_or_else(|err| panic!("setting up the psycopg venv: {err:#}")))
}

fn ensure_venv() -> Result<PathBuf> {
    let target = crate::target_dir();
    std::fs::create_dir_all(&target)?;
    let venv = target.join("test-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".masker-ready");
    let lock = File::create(target.join("test-venv.lock"))?;
    lock.lock().context("locking test-venv.lock")?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENT) && python.is_file() {
        return Ok(python);
    }
    let long = Duration::from_secs(600);
    let has_venv = |py: &str| {
        Command::new(py).args(["-c", "import venv, ensurepip"]).output().is_ok_and(|out| out.status.success())
    };
    // The system python is preferred: it is the one CI machines have.
    let base = ["/usr/bin/python3", "python3"].into_iter().find(|py| has_venv(py));
    let base = match base {
        Some(py) => py,
        None => {
            if process::running_as_root() {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv"])
                    .env("DEBIAN_FRONTEND", "noninteractive");
                process::run(cmd, None, long)?.assert_success();
            }
            if !has_venv("python3") {
                bail!("python3 has no venv/ensurepip module (install python3-venv)");
            }
            "python3"
        }
    };
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    let mut cmd = Command::new(base);
    cmd.args(["-m", "venv"]).arg(&venv);
    check(process::run(cmd, None, long)?, "python3 -m venv")?;
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args(["install", "-q", "--disable-pip-version-check", "--no-input", REQUIREMENT]);
    check(process::run(cmd, None, long)?, "pip install")?;
    let mut cmd = Command::new(&python);
    cmd.args(["-c", "import psycopg; print(psycopg.__version__)"]);
    check(process::run(cmd, None, Duration::from_secs(60))?, "import psycopg")?;
    std::fs::write(&stamp, REQUIREMENT)?;
    Ok(python)
}

fn check(out: process::Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}\n{}", out.status, out.stdout, out.stderr);
    }
    Ok(())
}

/// Runs `snippet` (which must define `main(conn)`) with a psycopg connection
/// to `dsn` and returns `main`'s result. Errors carry Python's traceback.
pub fn run(dsn: &str, snippet: &str) -> Result<Value> {
    let mut cmd = Command::new(venv_python());
    cmd.args(["-c", WRAPPER, dsn, snippet]).env("PGTZ", "UTC").env_remove("PGSSLMODE");
    let out = process::run(cmd, None, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!("psycopg snippet failed ({}):\n{}", out.status, out.stderr);
    }
    serde_json::from_str(&out.stdout).with_context(|| format!("decoding the snippet's output {:?}", out.stdout))
}

/// Runs one query with psycopg (text format unless `binary`) and returns its
/// rows as JSON arrays.
pub fn query(dsn: &str, sql: &str, binary: bool) -> Result<Vec<Value>> {
    let snippet = format!(
        "def main(conn):\n    cur = conn.cursor(binary={})\n    cur.execute({})\n    return [list(r) for r in cur.fetchall()]\n",
        if binary { "True" } else { "False" },
        serde_json::to_string(sql)?
    );
    match run(dsn, &snippet)? {
        Value::Array(rows) => Ok(rows),
        other => bail!("expected rows, got {other}"),
    }
}
