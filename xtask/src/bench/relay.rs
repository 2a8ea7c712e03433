//! `bench relay`: what the relay costs when nothing is masked.
//!
//! - pgbench `-S` (select-only, scale 10) in `-M simple` and `-M prepared`
//!   at 1, 8 and 32 clients, against PostgreSQL directly, through masker and
//!   through pgbouncer (session pooling). The three targets run back to back
//!   for each configuration so that drift hits them alike.
//!   Goal: masker ≥ pgbouncer everywhere and ≥ 0.75× direct.
//! - bulk: a 2,000,000-row result of ~100 bytes per row read with psql,
//!   direct vs masker; goal ≤ 1.15× direct. masker's peak RSS is read after a
//!   200,000-row read and after a 2,000,000-row read, each on a fresh masker
//!   process, to show memory does not grow with the result.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::client::{self, DBNAME, Pgbench};
use super::processes::{Masker, Memory, Pgbouncer};
use super::report::{Table, fmt_num, fmt_ratio, goal, median, mib, ratio};
use super::{Ctx, Outcome, progress};

const SCALE: u32 = 10;
const CLIENTS: [u32; 3] = [1, 8, 32];
const MODES: [&str; 2] = ["simple", "prepared"];
const BULK_ROWS: u64 = 2_000_000;
const BULK_SMALL_ROWS: u64 = 200_000;

/// The bulk table: id, two md5 hex strings and a short label, ~100 bytes per
/// DataRow on the wire.
const BULK_TABLE: &str = "CREATE UNLOGGED TABLE bench_bulk AS \
     SELECT i AS id, md5(i::text) AS a, md5((i * 7)::text) AS b, 'row ' || i AS c \
     FROM generate_series(1, 2000000) i";

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut tables = Vec::new();
    let (table, pgbench_json) = pgbench(ctx)?;
    tables.push(table);
    let (table, bulk_json) = bulk(ctx)?;
    tables.push(table);
    Ok(Outcome { tables, json: json!({ "pgbench": pgbench_json, "bulk": bulk_json }) })
}

fn pgbench(ctx: &Ctx) -> Result<(Table, Value)> {
    let cluster = ctx.cluster;
    progress(format!("relay: pgbench -i -s {SCALE}"));
    let mut init = client::pg_tool(cluster.bindir(), "pgbench", cluster.addr());
    init.args(["-i", "-q", "-s", &SCALE.to_string(), DBNAME]);
    client::run(init, Duration::from_secs(600)).context("pgbench -i")?;

    let masker = Masker::start(&ctx.masker_bin, cluster, &[], &[], "relay")?;
    let bouncer = Pgbouncer::start(cluster)?;
    // The same relay with the audit trail on: every statement is followed
    // (and written as an event) even without a policy.
    let audit_file = cluster.work().path().join("relay-audit.jsonl");
    let audit_args = ["--audit-file".to_string(), audit_file.to_string_lossy().into_owned()];
    let audited = Masker::start(&ctx.masker_bin, cluster, &audit_args, &[], "relay-audit")?;
    let targets = [
        ("direct", cluster.addr()),
        ("masker", masker.addr()),
        ("pgbouncer", bouncer.addr()),
        ("masker+audit", audited.addr()),
    ];
    for (name, addr) in targets {
        if let Err(err) = select_only(ctx, addr, "simple", 1, 1) {
            progress(format!("relay: warm-up against {name} failed: {err:#}"));
        }
    }

    let mut table = Table::new(
        format!("relay: pgbench -S, scale {SCALE}, {} s per run (TPS)", ctx.secs),
        &[
            "mode",
            "clients",
            "direct",
            "masker",
            "pgbouncer",
            "masker+audit",
            "masker/direct",
            "masker/pgbouncer",
            "audit/masker",
            "goal",
        ],
    );
    let mut runs = Vec::new();
    for mode in MODES {
        for clients in CLIENTS {
            let mut tps = [None; 4];
            for (i, (name, addr)) in targets.iter().enumerate() {
                match select_only(ctx, *addr, mode, clients, ctx.secs) {
                    Ok(p) => {
                        progress(format!("relay: -M {mode} -c {clients} {name}: {:.0} tps", p.tps));
                        tps[i] = Some(p.tps);
                        runs.push(json!({
                            "mode": mode, "clients": clients, "target": name,
                            "tps": p.tps, "latency_ms": p.latency_ms, "transactions": p.transactions,
                        }));
                    }
                    Err(err) => {
                        progress(format!("relay: -M {mode} -c {clients} {name} failed: {err:#}"));
                        runs.push(json!({
                            "mode": mode, "clients": clients, "target": name, "error": format!("{err:#}"),
                        }));
                        if *name == "masker" {
                            table.note(format!("masker -M {mode} -c {clients}: {}", summary(&err)));
                        }
                    }
                }
            }
            let vs_direct = ratio(tps[1], tps[0]);
            let vs_bouncer = ratio(tps[1], tps[2]);
            let verdict = match (vs_direct, vs_bouncer) {
                (Some(d), Some(b)) if d >= 0.75 && b >= 1.0 => "ok",
                (Some(_), Some(_)) => "MISS",
                _ => "-",
            };
            table.row(vec![
                mode.into(),
                clients.to_string(),
                fmt_num(tps[0], 0),
                fmt_num(tps[1], 0),
                fmt_num(tps[2], 0),
                fmt_num(tps[3], 0),
                fmt_ratio(vs_direct),
                fmt_ratio(vs_bouncer),
                fmt_ratio(ratio(tps[3], tps[1])),
                verdict.into(),
            ]);
        }
    }
    table.note("goal: masker/direct >= 0.75x and masker/pgbouncer >= 1.00x");
    table.note("masker+audit: no policy, [audit] on: each statement followed and written as a JSON line");
    let events = std::fs::read_to_string(&audit_file).map(|t| t.lines().count()).unwrap_or(0);
    table.note(format!("audit events written by masker+audit: {events}"));
    let memory = masker.memory().ok();
    if let Some(m) = memory {
        table.note(format!("masker peak RSS after all pgbench runs (up to 32 sessions): {}", mib(m.peak_kib)));
    }
    let json = json!({
        "scale": SCALE,
        "secs_per_run": ctx.secs,
        "runs": runs,
        "masker_peak_rss_kib": memory.map(|m| m.peak_kib),
    });
    Ok((table, json))
}

/// One `pgbench -S -n` run of `secs` seconds.
pub(super) fn select_only(ctx: &Ctx, target: SocketAddr, mode: &str, clients: u32, secs: u32) -> Result<Pgbench> {
    let mut cmd = client::pg_tool(ctx.cluster.bindir(), "pgbench", target);
    cmd.args(["-S", "-n", "-M", mode, "-T", &secs.to_string()]).args([
        "-c",
        &clients.to_string(),
        "-j",
        &clients.min(2).to_string(),
        DBNAME,
    ]);
    let out = client::run(cmd, Duration::from_secs(u64::from(secs) + 120))?;
    Pgbench::parse(&out.stdout)
}

fn bulk(ctx: &Ctx) -> Result<(Table, Value)> {
    let cluster = ctx.cluster;
    let bindir = cluster.bindir();
    progress(format!("relay: creating the {BULK_ROWS}-row bulk table"));
    let limit = Duration::from_secs(600);
    client::run(client::psql(bindir, cluster.addr(), BULK_TABLE), limit)?;
    client::run(client::psql(bindir, cluster.addr(), "VACUUM ANALYZE bench_bulk"), limit)?;
    let row_bytes = client::run(
        client::psql(bindir, cluster.addr(), "SELECT round(avg(pg_column_size(t.*))) FROM bench_bulk t"),
        limit,
    )?
    .stdout
    .trim()
    .to_string();

    let full = "SELECT * FROM bench_bulk";
    let small = format!("SELECT * FROM bench_bulk LIMIT {BULK_SMALL_ROWS}");
    // Warm the OS cache and the server; not measured.
    client::stream(bindir, cluster.addr(), full, limit)?;

    let mut table = Table::new(
        format!("relay: bulk read with psql -At (~{row_bytes} bytes/row in the table), median of {}", ctx.reps()),
        &[
            "rows",
            "direct s",
            "masker s",
            "masker/direct",
            "goal <=1.15x",
            "direct MB/s",
            "masker MB/s",
            "masker peak RSS",
        ],
    );
    let mut json_rows = Vec::new();
    let mut idle = None;
    for (rows, sql) in [(BULK_SMALL_ROWS, small.as_str()), (BULK_ROWS, full)] {
        // A fresh process per size: its peak RSS belongs to this size only.
        let masker = Masker::start(&ctx.masker_bin, cluster, &[], &[], &format!("bulk-{rows}"))?;
        if idle.is_none() {
            idle = masker.memory().ok();
        }
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..ctx.reps() {
            let d = client::stream(bindir, cluster.addr(), sql, limit)?;
            let m = client::stream(bindir, masker.addr(), sql, limit)
                .with_context(|| format!("bulk read through masker; its log:\n{}", masker.log_tail(10)))?;
            progress(format!("relay: bulk {rows} rows: direct {:.2} s, masker {:.2} s", d.secs, m.secs));
            if d.bytes != m.bytes {
                table.note(format!("{rows} rows: masker returned {} bytes, direct {} bytes", m.bytes, d.bytes));
            }
            bytes = d.bytes;
            direct.push(d.secs);
            through.push(m.secs);
        }
        let memory: Option<Memory> = masker.memory().ok();
        let (d, m) = (median(&direct), median(&through));
        let r = ratio(m, d);
        let mbps = |s: Option<f64>| s.map(|s| bytes as f64 / 1e6 / s);
        table.row(vec![
            rows.to_string(),
            fmt_num(d, 2),
            fmt_num(m, 2),
            fmt_ratio(r),
            if rows == BULK_ROWS { goal(r, |r| r <= 1.15) } else { String::new() },
            fmt_num(mbps(d), 0),
            fmt_num(mbps(m), 0),
            memory.map_or("-".into(), |m| mib(m.peak_kib)),
        ]);
        json_rows.push(json!({
            "rows": rows, "output_bytes": bytes,
            "direct_secs": direct, "masker_secs": through,
            "direct_median_secs": d, "masker_median_secs": m, "ratio": r,
            "masker_peak_rss_kib": memory.map(|m| m.peak_kib),
        }));
    }
    if let Some(m) = idle {
        table.note(format!(
            "masker RSS right after start: {}; goal: peak RSS < 64 MiB and flat in rows",
            mib(m.rss_kib)
        ));
    }
    table.note("MB/s = psql text output bytes / wall time (psql start + connect + query + transfer)");
    Ok((table, json!({ "row_bytes_in_table": row_bytes, "idle_rss_kib": idle.map(|m| m.rss_kib), "sizes": json_rows })))
}

/// The most telling line of a client failure: its first error line.
fn summary(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    let line = text.lines().find(|l| l.contains("error") || l.contains("FATAL")).or_else(|| text.lines().last());
    line.unwrap_or("").trim().to_string()
}
