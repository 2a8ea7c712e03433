//! `bench connect`: the cost of a connection (TCP connect, startup, auth,
//! `SELECT 1`, close) direct vs through masker.
//!
//! Each measurement is `pgbench -C -n -t N -c 1` with a one-line script
//! `SELECT 1;`: libpq opens a new connection for every transaction, and
//! pgbench's TPS "including reconnection times" is connections per second.
//! Direct and masker runs alternate, the median of the rounds is reported.
//! Authentication is `trust`, the cheapest there is, so the relay's share of
//! the time is as large as it gets. Goal: ≤ 1.3× direct per connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::client::{self, DBNAME, Pgbench};
use super::processes::Masker;
use super::report::{Table, fmt_num, fmt_ratio, goal, median, ratio};
use super::{Ctx, Outcome, progress};

/// Where [`bench_connect`] connects and how its client is started.
///
/// `direct` and `proxy` point pgbench at an address. The transparent
/// (eBPF) mode connects to the real server's address from a tagged cgroup:
/// `addr` is then [`Cluster::addr`](super::processes::Cluster::addr) and
/// `wrapper` the command that runs pgbench inside the tag, e.g.
/// `["masker", "run", "--identity", "bench", "--"]`.
pub struct ConnectTarget {
    /// Row label in the table and JSON ("direct", "masker proxy", ...).
    pub label: String,
    pub addr: SocketAddr,
    /// Command prefix that pgbench runs under (empty: run it as is).
    pub wrapper: Vec<String>,
}

impl ConnectTarget {
    pub fn plain(label: &str, addr: SocketAddr) -> ConnectTarget {
        ConnectTarget { label: label.into(), addr, wrapper: Vec::new() }
    }
}

/// One measurement of `conns` sequential connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRun {
    /// Connections per second (connect + startup + auth + `SELECT 1` + close).
    pub per_sec: f64,
    /// pgbench's "average connection time" (connect + startup + auth), ms.
    pub connect_ms: Option<f64>,
}

/// Opens `conns` connections one after another to `target`, each running
/// `SELECT 1` before closing. This is the hook the transparent mode plugs
/// into: give it a target whose address is redirected.
pub fn bench_connect(ctx: &Ctx, target: &ConnectTarget, conns: u32) -> Result<ConnectRun> {
    let cluster = ctx.cluster;
    let script = cluster.work().path().join("select1.sql");
    if !script.exists() {
        std::fs::write(&script, "SELECT 1;\n").context("writing the pgbench script")?;
    }
    let pgbench = client::pg_tool(cluster.bindir(), "pgbench", target.addr);
    let mut cmd = match target.wrapper.split_first() {
        None => pgbench,
        Some((program, args)) => {
            let mut wrapped = std::process::Command::new(program);
            wrapped.args(args).arg(pgbench.get_program()).args(pgbench.get_args());
            for (key, value) in pgbench.get_envs() {
                match value {
                    Some(value) => wrapped.env(key, value),
                    None => wrapped.env_remove(key),
                };
            }
            wrapped
        }
    };
    cmd.args(["-C", "-n", "-c", "1", "-j", "1", "-t", &conns.to_string(), "-f"]).arg(&script).arg(DBNAME);
    let out = client::run(cmd, Duration::from_secs(300)).with_context(|| format!("connecting to {}", target.label))?;
    let p = Pgbench::parse(&out.stdout)?;
    Ok(ConnectRun { per_sec: p.tps, connect_ms: p.connection_ms })
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    // Alternating rounds per target: connection times are noisy, the median
    // of many short rounds is steadier than one long one.
    let (conns, rounds): (u32, usize) = if ctx.quick { (200, 5) } else { (500, 7) };
    let masker = Masker::start(&ctx.masker_bin, ctx.cluster, None, "connect")?;
    let targets =
        [ConnectTarget::plain("direct", ctx.cluster.addr()), ConnectTarget::plain("masker proxy", masker.addr())];
    for target in &targets {
        bench_connect(ctx, target, 20).with_context(|| format!("warm-up against {}", target.label))?;
    }
    let mut runs: Vec<Vec<ConnectRun>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, target) in targets.iter().enumerate() {
            let run = bench_connect(ctx, target, conns)?;
            progress(format!("connect: round {} {}: {:.0} conn/s", round + 1, target.label, run.per_sec));
            runs[i].push(run);
        }
    }

    let mut table = Table::new(
        format!("connect: {conns} x (connect + startup + trust auth + SELECT 1 + close), median of {rounds} rounds"),
        &["path", "ms/conn", "conn/s", "connect ms", "vs direct", "goal <=1.3x"],
    );
    let per_conn: Vec<Option<f64>> =
        runs.iter().map(|r| median(&r.iter().map(|r| 1000.0 / r.per_sec).collect::<Vec<_>>())).collect();
    let mut json_targets = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let ms = per_conn[i];
        let connect_ms = median(&runs[i].iter().filter_map(|r| r.connect_ms).collect::<Vec<_>>());
        let r = if i == 0 { None } else { ratio(ms, per_conn[0]) };
        table.row(vec![
            target.label.clone(),
            fmt_num(ms, 3),
            fmt_num(ms.map(|ms| 1000.0 / ms), 0),
            fmt_num(connect_ms, 3),
            if i == 0 { String::new() } else { fmt_ratio(r) },
            if i == 0 { String::new() } else { goal(r, |r| r <= 1.3) },
        ]);
        json_targets.push(json!({
            "label": target.label,
            "per_sec": runs[i].iter().map(|r| r.per_sec).collect::<Vec<_>>(),
            "connect_ms": runs[i].iter().map(|r| r.connect_ms).collect::<Vec<_>>(),
            "median_ms_per_conn": ms,
            "ratio_vs_direct": r,
        }));
    }
    table.note("masker mode: explicit proxy (the eBPF-redirected row is added with the interception work)");
    table.note("connect ms = pgbench's average connection time (connect + startup + auth)");
    Ok(Outcome { tables: vec![table], json: json!({ "conns": conns, "rounds": rounds, "targets": json_targets }) })
}
