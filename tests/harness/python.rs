//! psycopg 3 (Python) as a client (and SQLAlchemy over it, see `tools.rs`), from the venv `scripts/setup.sh` creates
//! with pinned versions ([`PACKAGES`]) outside the checkout:
//! `$MASKER_TEST_VENV`, else `$HOME/.cache/masker/test-venv`. The harness
//! installs nothing: a missing or different venv fails the test, naming the
//! script to run.
//!
//! Snippets define `main(conn)`; the harness connects (psycopg, autocommit
//! off, libpq's default `sslmode=prefer`), calls it and returns its result as
//! JSON. Values JSON cannot express come back as strings (`str()`), bytes as
//! `\x<hex>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process;

/// The Python packages of the venv, exactly as `scripts/setup.sh` installs
/// them (`MASKER_TEST_PY_PACKAGES` there; a harness self-test checks both
/// say the same).
/// SQLAlchemy (no C dependencies of its own; `greenlet` only serves its
/// asyncio layer, which the tests do not use) is the ORM whose reflection
/// `tools.rs` runs through masker.
pub const PACKAGES: &str = "psycopg==3.2.13 psycopg-binary==3.2.13 typing_extensions==4.16.0 SQLAlchemy==2.1.9";

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

/// Where the venv is: `$MASKER_TEST_VENV`, else `$HOME/.cache/masker/test-venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("MASKER_TEST_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/masker/test-venv")
        }
    }
}

/// The venv's python.
///
/// # Panics
///
/// If the venv is missing or was made with other packages than
/// [`PACKAGES`]: run `scripts/setup.sh` (the message says so).
pub fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| checked_venv().unwrap_or_else(|err| panic!("the psycopg venv: {err:#}")))
}

fn checked_venv() -> Result<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let stamp = venv.join(".masker-packages");
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if !python.is_file() || installed != PACKAGES {
        bail!(
            "{} does not hold the test clients ({PACKAGES}; it has {:?}): run `bash scripts/setup.sh` \
             (as root) or `. scripts/setup.sh && setup_test_clients`",
            venv.display(),
            installed
        );
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-c", "import psycopg; print(psycopg.__version__)"]);
    let out = process::run(cmd, None, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!("import psycopg failed ({}):\n{}\n{}", out.status, out.stdout, out.stderr);
    }
    Ok(python)
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
