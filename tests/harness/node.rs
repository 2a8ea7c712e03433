//! node-pg (Node.js) as a client, installed by `scripts/setup.sh` outside
//! the checkout: `$MASKER_TEST_NODE_DIR`, else
//! `$HOME/.cache/masker/test-node`, from `node/package.json` and the
//! lockfile next to this file (`npm ci`: exactly the locked versions). The
//! harness installs nothing: a missing or different installation fails the
//! test, naming the script to run.
//!
//! [`run`] hands `node/client.js` a login and a list of [`Step`]s; it runs
//! them in one session and returns what node-pg received as JSON: per step
//! the results (command, row count, field descriptions, rows as the
//! server's text, unparsed) or the error's fields, and the notices.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{ConnInfo, process};

/// The lockfile `scripts/setup.sh` installs from; the installation keeps a
/// copy, which must be identical.
pub const LOCKFILE: &str = include_str!("node/package-lock.json");
const CLIENT: &str = include_str!("node/client.js");

/// One statement for node-pg.
#[derive(Clone, Debug)]
pub struct Step {
    pub text: String,
    /// Parameters (as text; `None` is NULL). Any parameter, or a name,
    /// makes node-pg use the extended protocol.
    pub values: Option<Vec<Option<String>>>,
    /// A prepared statement's name: parsed on first use, then only bound.
    pub name: Option<String>,
    /// The extended protocol even without parameters.
    pub extended: bool,
}

impl Step {
    /// A simple query.
    pub fn simple(text: &str) -> Step {
        Step { text: text.into(), values: None, name: None, extended: false }
    }

    /// The extended protocol (unnamed statement) with text parameters.
    pub fn extended(text: &str, values: &[Option<&str>]) -> Step {
        Step {
            text: text.into(),
            values: Some(values.iter().map(|v| v.map(str::to_owned)).collect()),
            name: None,
            extended: true,
        }
    }

    /// A named prepared statement with text parameters.
    pub fn prepared(name: &str, text: &str, values: &[Option<&str>]) -> Step {
        Step { name: Some(name.into()), ..Step::extended(text, values) }
    }

    fn to_json(&self) -> Value {
        json!({"text": self.text, "values": self.values, "name": self.name, "extended": self.extended})
    }
}

/// Where node-pg is installed: `$MASKER_TEST_NODE_DIR`, else
/// `$HOME/.cache/masker/test-node`.
pub fn install_dir() -> PathBuf {
    match std::env::var_os("MASKER_TEST_NODE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/masker/test-node")
        }
    }
}

/// The checked installation directory.
///
/// # Panics
///
/// If node is missing or the installation differs from [`LOCKFILE`]: run
/// `scripts/setup.sh` (the message says so).
pub fn installed() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| checked().unwrap_or_else(|err| panic!("node-pg: {err:#}")))
}

fn checked() -> Result<PathBuf> {
    let dir = install_dir();
    let installed = std::fs::read_to_string(dir.join("package-lock.json")).unwrap_or_default();
    if installed != LOCKFILE || !dir.join("node_modules/pg/package.json").is_file() {
        bail!(
            "{} does not hold node-pg as tests/harness/node/package-lock.json locks it: run `bash scripts/setup.sh` \
             (as root) or `. scripts/setup.sh && setup_node_clients`",
            dir.display()
        );
    }
    let mut cmd = Command::new("node");
    cmd.args(["-e", "process.stdout.write(require('pg/package.json').version)"]).current_dir(&dir);
    let out = process::run(cmd, None, Duration::from_secs(60)).context("running node (apt-get install nodejs)")?;
    if !out.status.success() {
        bail!("require('pg') failed ({}):\n{}", out.status, out.stderr);
    }
    Ok(dir)
}

/// Runs `steps` in one node-pg session to `info` and returns what the
/// client received. Errors of the statements are part of the result; an
/// error here means node or the client script failed.
pub fn run(info: &ConnInfo, steps: &[Step]) -> Result<Value> {
    let dir = installed();
    let input = json!({
        "conn": {"host": info.host, "port": info.port, "user": info.user, "password": info.password,
                 "database": info.dbname},
        "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
    });
    let mut cmd = Command::new("node");
    // `-e` resolves `require` from the working directory.
    cmd.args(["-e", CLIENT]).current_dir(dir).env("PGTZ", "UTC").env_remove("PGSSLMODE");
    let out = process::run(cmd, Some(input.to_string().as_bytes()), Duration::from_secs(120))?;
    if !out.status.success() {
        bail!("the node-pg client failed ({}):\n{}", out.status, out.stderr);
    }
    serde_json::from_str(&out.stdout).with_context(|| format!("decoding node-pg's output {:?}", out.stdout))
}
