//! The client programs a benchmark drives (`pgbench`, `psql`) and how their
//! output is read. Clients run as the invoking user and connect over TCP to
//! 127.0.0.1 as the superuser `postgres` (trust authentication).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The database every benchmark uses.
pub const DBNAME: &str = "postgres";

/// Environment variables that would change what libpq connects to or how.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGOPTIONS",
    "PGAPPNAME",
];

/// A finished command's output.
pub struct Output {
    pub stdout: String,
}

/// A client tool from `bindir` pointed at `target` as user `postgres`;
/// callers add the tool's own arguments (and, for pgbench, the database last).
pub fn pg_tool(bindir: &Path, tool: &str, target: SocketAddr) -> Command {
    let mut cmd = Command::new(bindir.join(tool));
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.args(["-h", &target.ip().to_string(), "-p", &target.port().to_string(), "-U", "postgres"]);
    cmd
}

/// `psql` running `sql` in [`DBNAME`] at `target`, stopping at the first error.
pub fn psql(bindir: &Path, target: SocketAddr, sql: &str) -> Command {
    let mut cmd = pg_tool(bindir, "psql", target);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", DBNAME, "-c", sql]);
    cmd
}

/// Runs `cmd` to completion (killing it after `limit`) and fails, with its
/// stderr, unless it exits 0.
pub fn run(mut cmd: Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("spawning {shown}"))?;
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_until(&mut child, limit)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(Output { stdout }),
        Some(status) => bail!("{shown} failed ({status}):\n{}", last_lines(&stderr, &stdout)),
        None => bail!("{shown} timed out after {limit:?}:\n{}", last_lines(&stderr, &stdout)),
    }
}

/// One timed read of a whole result: wall time and bytes psql printed.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    pub secs: f64,
    pub bytes: u64,
}

/// Runs `sql` with `psql -X -At` at `target` and counts what it prints
/// (instead of writing it anywhere). The time covers psql's start, the
/// connection, the query and the transfer, identically for every target.
pub fn stream(bindir: &Path, target: SocketAddr, sql: &str, limit: Duration) -> Result<Stream> {
    let mut cmd = psql(bindir, target, sql);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning psql")?;
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading psql's output"),
        }
    }
    let status = wait_until(&mut child, limit)?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(Stream { secs, bytes }),
        Some(status) => bail!("psql at {target} failed ({status}): {}", stderr.trim()),
        None => bail!("psql at {target} timed out after {limit:?}"),
    }
}

/// What one pgbench run reported.
#[derive(Clone, Copy, Debug)]
pub struct Pgbench {
    /// Transactions per second (`tps = ...`).
    pub tps: f64,
    /// `latency average = ... ms`.
    pub latency_ms: Option<f64>,
    /// `average connection time = ... ms` (with `-C`: per connection).
    pub connection_ms: Option<f64>,
    /// `number of transactions actually processed: ...`.
    pub transactions: Option<u64>,
}

impl Pgbench {
    /// Parses pgbench 15's summary.
    pub fn parse(out: &str) -> Result<Pgbench> {
        let number = |prefix: &str| -> Option<f64> {
            out.lines().find_map(|l| l.trim().strip_prefix(prefix)).and_then(|rest| {
                let token = rest.split_whitespace().next()?;
                token.split('/').next()?.parse().ok()
            })
        };
        let tps = number("tps = ").with_context(|| format!("no `tps =` line in pgbench output:\n{out}"))?;
        Ok(Pgbench {
            tps,
            latency_ms: number("latency average = "),
            connection_ms: number("average connection time = "),
            transactions: number("number of transactions actually processed: ").map(|n| n as u64),
        })
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` up to `limit`; kills and reaps it after that (`None`).
fn wait_until(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn last_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() { stdout } else { stderr };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_15_summary() {
        let out = "pgbench (15.18 (Debian 15.18-0+deb12u1))\ntransaction type: <builtin: select only>\n\
                   number of transactions actually processed: 12345\nnumber of failed transactions: 0 (0.000%)\n\
                   latency average = 0.081 ms\naverage connection time = 1.234 ms\n\
                   tps = 12311.123456 (including reconnection times)\n";
        let p = Pgbench::parse(out).unwrap();
        assert_eq!(p.tps, 12311.123456);
        assert_eq!(p.latency_ms, Some(0.081));
        assert_eq!(p.connection_ms, Some(1.234));
        assert_eq!(p.transactions, Some(12345));
        assert!(Pgbench::parse("nothing").is_err());
    }
}
