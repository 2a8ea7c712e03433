//! `bench cpu`: what a transaction costs the relay in CPU time, the figure
//! to steer by on a small shared machine where TPS swings from run to run.
//!
//! pgbench `-S` (scale 10) in `-M simple` and `-M prepared` at 1, 8 and 32
//! clients against PostgreSQL directly, pgbouncer (session pooling), a bare
//! relay that only copies bytes ([`super::bare`]: the floor) and
//! masker three ways: without a policy, with [`POLICY`] (every statement
//! parsed, traced through lineage and planned) and with the same policy plus
//! the audit trail. For each run the proxy's CPU time is read from
//! `/proc/<pid>/stat` (utime + stime of all its threads) before and after;
//! CPU µs per transaction = the difference / transactions pgbench processed.
//! The targets take turns within a round (the order rotates from round to
//! round) and the median of the rounds is reported.
//!
//! At one client a transaction is one round trip, so `1e6 / TPS` is the
//! time per round trip; what a proxy adds is that minus direct's.
//!
//! `--baseline PATH` adds the three masker rows again for another build
//! (e.g. `main`'s), measured in the same rounds: a before/after in one run.
//!
//! Goal (issue 17): masker with the policy ≤ 0.9× pgbouncer's CPU per
//! transaction at every point, and its added latency at one client ≤
//! pgbouncer's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::client::{self, DBNAME};
use super::processes::{BareRelay, Masker, Pgbouncer};
use super::relay::select_only;
use super::report::{Table, fmt_num, fmt_ratio, goal, median, mib, ratio};
use super::{Ctx, Outcome, progress};

const SCALE: u32 = 10;
const MODES: [&str; 2] = ["simple", "prepared"];

/// The policy of the lineage rows: the pgbench tables hold no personal data,
/// yet every statement goes through lineage and a masking plan (`filler` is
/// redacted, the rest is traced to allowed columns; other columns would be
/// scanned by the content detectors).
pub const POLICY: &str = r#"# Policy of `cargo xtask bench cpu` and `bench lineage`.
version = 1
[defaults]
action = "detect"
[[rule]]
name = "filler"
column_names = ["filler"]
action = "redact"
[[rule]]
name = "ops"
column_names = ["aid", "bid", "tid", "abalance", "bbalance", "tbalance", "delta", "mtime"]
action = "allow"
"#;

/// Cumulative CPU time (user + system, all threads) of process `pid`, in
/// microseconds, from `/proc/<pid>/stat`.
pub fn process_cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 * 1e6 / clock_ticks_per_sec() as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no `)` in /proc/<pid>/stat")?;
    // `rest` starts at field 3 (state): utime is the 12th field after it.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).with_context(|| format!("field {} of /proc/<pid>/stat", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// `getconf CLK_TCK` (the unit of /proc's CPU times); 100 on Linux unless
/// `getconf` says otherwise.
fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// One relay under test: its label, address and the process whose CPU is
/// counted (`None` for direct).
struct Target {
    label: String,
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    /// A masker with the lineage policy (the goal's row).
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Bare,
    Pgbouncer,
    Masker,
    MaskerPolicy,
    MaskerAudit,
}

/// One measured pgbench run.
#[derive(Clone, Copy)]
struct Run {
    tps: f64,
    cpu_us_per_tx: Option<f64>,
}

/// The masker processes of one binary: no policy, policy, policy + audit.
struct Maskers {
    plain: Masker,
    policy: Masker,
    audit: Masker,
}

fn start_maskers(ctx: &Ctx, bin: &Path, tag: &str) -> Result<Maskers> {
    let cluster = ctx.cluster;
    let work = cluster.work().path();
    let policy_file = work.join("cpu-policy.toml");
    std::fs::write(&policy_file, POLICY).context("writing the cpu bench policy")?;
    // Trust authentication: the catalog connection needs no password.
    let policy_args =
        vec!["--policy".to_string(), policy_file.display().to_string(), "--catalog-user".into(), "postgres".into()];
    let mut audit_args = policy_args.clone();
    audit_args.extend(["--audit-file".to_string(), work.join(format!("cpu-audit-{tag}.jsonl")).display().to_string()]);
    Ok(Maskers {
        plain: Masker::start(bin, cluster, &[], &[], &format!("cpu-{tag}"))?,
        policy: Masker::start(bin, cluster, &policy_args, &[], &format!("cpu-policy-{tag}"))?,
        audit: Masker::start(bin, cluster, &audit_args, &[], &format!("cpu-audit-{tag}"))?,
    })
}

fn masker_targets(m: &Maskers, suffix: &str) -> Vec<Target> {
    vec![
        Target { label: format!("masker{suffix}"), addr: m.plain.addr(), pid: Some(m.plain.pid()), kind: Kind::Masker },
        Target {
            label: format!("masker+policy{suffix}"),
            addr: m.policy.addr(),
            pid: Some(m.policy.pid()),
            kind: Kind::MaskerPolicy,
        },
        Target {
            label: format!("masker+policy+audit{suffix}"),
            addr: m.audit.addr(),
            pid: Some(m.audit.pid()),
            kind: Kind::MaskerAudit,
        },
    ]
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let cluster = ctx.cluster;
    progress(format!("cpu: pgbench -i -s {SCALE}"));
    let mut init = client::pg_tool(cluster.bindir(), "pgbench", cluster.addr());
    init.args(["-i", "-q", "-s", &SCALE.to_string(), DBNAME]);
    client::run(init, Duration::from_secs(600)).context("pgbench -i")?;

    let bouncer = Pgbouncer::start(cluster)?;
    let bare = BareRelay::start(cluster)?;
    let current = start_maskers(ctx, &ctx.masker_bin, "current")?;
    let baseline = match &ctx.baseline {
        Some(bin) => Some(start_maskers(ctx, bin, "baseline").context("starting the --baseline masker")?),
        None => None,
    };
    let mut targets = vec![
        Target { label: "direct".into(), addr: cluster.addr(), pid: None, kind: Kind::Direct },
        Target { label: "pgbouncer".into(), addr: bouncer.addr(), pid: Some(bouncer.pid()), kind: Kind::Pgbouncer },
        Target { label: "bare relay".into(), addr: bare.addr(), pid: Some(bare.pid()), kind: Kind::Bare },
    ];
    let suffix = if baseline.is_some() { " (new)" } else { "" };
    targets.extend(masker_targets(&current, suffix));
    if let Some(b) = &baseline {
        targets.extend(masker_targets(b, " (baseline)"));
    }
    for t in &targets {
        select_only(ctx, t.addr, "simple", 1, 1).with_context(|| format!("warm-up against {}", t.label))?;
        select_only(ctx, t.addr, "prepared", 1, 1).with_context(|| format!("warm-up against {}", t.label))?;
    }

    let rounds = ctx.rounds.unwrap_or(if ctx.quick { 1 } else { 3 });
    let clients = ctx.clients.clone().unwrap_or_else(|| vec![1, 8, 32]);
    let mut header: Vec<String> = vec!["mode".into(), "clients".into()];
    header.extend(targets.iter().filter(|t| t.pid.is_some()).map(|t| t.label.clone()));
    header.extend(["bare/pgbouncer".to_string(), "policy/pgbouncer".to_string(), "goal <=0.9x".to_string()]);
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut cpu_table = Table::new(
        format!(
            "cpu: relay CPU µs per transaction (utime+stime from /proc), pgbench -S scale {SCALE}, {} s per run, \
             median of {rounds}",
            ctx.secs
        ),
        &header_refs,
    );
    let mut tps_header: Vec<String> = vec!["mode".into(), "clients".into()];
    tps_header.extend(targets.iter().map(|t| t.label.clone()));
    let tps_refs: Vec<&str> = tps_header.iter().map(String::as_str).collect();
    let mut tps_table = Table::new("cpu: TPS of the same runs (secondary: noisy on a shared machine)", &tps_refs);
    let mut lat_header: Vec<String> = vec!["mode".into(), "direct µs/round trip".into()];
    lat_header.extend(targets.iter().filter(|t| t.pid.is_some()).map(|t| format!("+{}", t.label)));
    let lat_refs: Vec<&str> = lat_header.iter().map(String::as_str).collect();
    let mut lat_table = Table::new(
        "cpu: latency added per round trip at 1 client, µs (1e6/TPS minus direct's, median of rounds)",
        &lat_refs,
    );

    let mut json_points = Vec::new();
    for mode in MODES {
        for &c in &clients {
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
            for round in 0..rounds {
                // Rotate the order so no target always runs right after another.
                let n = targets.len();
                for k in 0..n {
                    let i = (k + round) % n;
                    let t = &targets[i];
                    let before = t.pid.map(process_cpu_us).transpose()?;
                    let p = select_only(ctx, t.addr, mode, c, ctx.secs)
                        .with_context(|| format!("pgbench -M {mode} -c {c} against {}", t.label))?;
                    let after = t.pid.map(process_cpu_us).transpose()?;
                    let tx = p.transactions.map(|t| t as f64).unwrap_or(p.tps * f64::from(ctx.secs));
                    let cpu = match (before, after) {
                        (Some(b), Some(a)) if tx > 0.0 => Some((a - b) / tx),
                        _ => None,
                    };
                    progress(format!(
                        "cpu: -M {mode} -c {c} {}: {:.0} tps{}",
                        t.label,
                        p.tps,
                        cpu.map(|c| format!(", {c:.1} µs/tx")).unwrap_or_default()
                    ));
                    runs[i].push(Run { tps: p.tps, cpu_us_per_tx: cpu });
                }
            }
            let cpu: Vec<Option<f64>> =
                runs.iter().map(|r| median(&r.iter().filter_map(|r| r.cpu_us_per_tx).collect::<Vec<_>>())).collect();
            let tps: Vec<Option<f64>> =
                runs.iter().map(|r| median(&r.iter().map(|r| r.tps).collect::<Vec<_>>())).collect();
            let find = |kind: Kind| targets.iter().position(|t| t.kind == kind);
            let bouncer_cpu = find(Kind::Pgbouncer).and_then(|i| cpu[i]);
            let policy_cpu = find(Kind::MaskerPolicy).and_then(|i| cpu[i]);
            let vs = ratio(policy_cpu, bouncer_cpu);
            let floor = ratio(find(Kind::Bare).and_then(|i| cpu[i]), bouncer_cpu);
            let mut row = vec![mode.to_string(), c.to_string()];
            row.extend(targets.iter().enumerate().filter(|(_, t)| t.pid.is_some()).map(|(i, _)| fmt_num(cpu[i], 1)));
            row.extend([fmt_ratio(floor), fmt_ratio(vs), goal(vs, |r| r <= 0.9)]);
            cpu_table.row(row);
            let mut row = vec![mode.to_string(), c.to_string()];
            row.extend(tps.iter().map(|t| fmt_num(*t, 0)));
            tps_table.row(row);

            let mut added = Vec::new();
            if c == 1 {
                // Per round: the round trip through a proxy minus direct's in
                // the same round, then the median.
                let direct = find(Kind::Direct).map(|i| &runs[i]);
                let mut row = vec![mode.to_string()];
                let direct_us = direct.and_then(|d| median(&d.iter().map(|r| 1e6 / r.tps).collect::<Vec<_>>()));
                row.push(fmt_num(direct_us, 1));
                for (i, t) in targets.iter().enumerate() {
                    if t.pid.is_none() {
                        continue;
                    }
                    let per_round: Vec<f64> = match direct {
                        Some(d) => runs[i].iter().zip(d).map(|(r, d)| 1e6 / r.tps - 1e6 / d.tps).collect(),
                        None => Vec::new(),
                    };
                    let m = median(&per_round);
                    row.push(fmt_num(m, 1));
                    added.push(json!({ "target": t.label, "added_us_per_round_trip": per_round, "median": m }));
                }
                lat_table.row(row);
            }
            json_points.push(json!({
                "mode": mode,
                "clients": c,
                "targets": targets.iter().enumerate().map(|(i, t)| json!({
                    "target": t.label,
                    "tps": runs[i].iter().map(|r| r.tps).collect::<Vec<_>>(),
                    "cpu_us_per_tx": runs[i].iter().map(|r| r.cpu_us_per_tx).collect::<Vec<_>>(),
                    "median_tps": tps[i],
                    "median_cpu_us_per_tx": cpu[i],
                })).collect::<Vec<_>>(),
                "policy_vs_pgbouncer_cpu": vs,
                "bare_relay_vs_pgbouncer_cpu": floor,
                "latency_added_at_1_client": added,
            }));
        }
    }
    cpu_table.note("policy/pgbouncer = masker with the lineage policy vs pgbouncer; goal <= 0.9x (issue 17)");
    cpu_table.note(
        "bare relay: accept, connect, copy bytes both ways on one tokio thread, nothing parsed (xtask bare-relay): \
         the floor of a userspace relay here; bare/pgbouncer = that floor vs pgbouncer",
    );
    cpu_table.note(
        "masker+policy: every statement parsed (cached per shape), traced, resolved through the catalog and planned; \
         +audit: the same with every statement written as an audit event",
    );
    let mut memory = Vec::new();
    let mut mem_notes = Vec::new();
    for (label, m) in [("masker", &current)].into_iter().chain(baseline.as_ref().map(|b| ("baseline", b))) {
        for (what, p) in [("no policy", &m.plain), ("policy", &m.policy), ("policy+audit", &m.audit)] {
            if let Ok(mem) = p.memory() {
                mem_notes.push(format!("{label} {what} {}", mib(mem.peak_kib)));
                memory.push(json!({ "binary": label, "variant": what, "peak_rss_kib": mem.peak_kib }));
            }
        }
    }
    if !mem_notes.is_empty() {
        cpu_table.note(format!("peak RSS after all runs (up to 32 sessions each): {}", mem_notes.join(", ")));
    }
    if targets.iter().any(|t| t.pid.is_some() && t.kind != Kind::Pgbouncer) && json_points.is_empty() {
        bail!("no runs");
    }
    Ok(Outcome {
        tables: vec![cpu_table, lat_table, tps_table],
        json: json!({
            "scale": SCALE,
            "secs_per_run": ctx.secs,
            "rounds": rounds,
            "clock_ticks_per_sec": clock_ticks_per_sec(),
            "policy": POLICY,
            "baseline": ctx.baseline.as_ref().map(|b| b.display().to_string()),
            "points": json_points,
            "peak_rss": memory,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_a_stat_line_with_a_tricky_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let line = "4242 (mask er) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 56 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(line).unwrap(), 1290);
        assert!(parse_cpu_ticks("4242 (x) S 1").is_err());
        assert!(parse_cpu_ticks("no paren").is_err());
    }
}
