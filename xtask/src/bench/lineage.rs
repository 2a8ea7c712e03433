//! `cargo xtask bench lineage`: what SQL lineage costs.
//!
//! - Parse-and-trace time per statement, cold and cached, from the
//!   `masker-agent` bench target `sql` (release profile, in process).
//! - pgbench `-S` through masker with a policy (every statement parsed,
//!   traced and planned) vs masker without one vs direct, same run.
//!   Goal (issue 5): lineage on >= 0.9x lineage off.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::client::{self, DBNAME};
// The pgbench tables hold no personal data; the policy still makes every
// statement go through lineage and a masking plan (shared with `bench cpu`).
use super::cpu::POLICY;
use super::processes::Masker;
use super::relay::select_only;
use super::report::{Table, fmt_num, fmt_ratio, ratio};
use super::{Ctx, Outcome, progress};

const SCALE: u32 = 10;
const CLIENTS: [u32; 2] = [1, 8];
const MODES: [&str; 2] = ["simple", "prepared"];

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (trace_table, trace_json) = parse_and_trace(ctx)?;
    let (tps_table, tps_json) = pgbench(ctx)?;
    Ok(Outcome {
        tables: vec![trace_table, tps_table],
        json: json!({ "parse_and_trace": trace_json, "pgbench": tps_json }),
    })
}

fn parse_and_trace(ctx: &Ctx) -> Result<(Table, Value)> {
    progress("lineage: cargo bench -p masker-agent --bench sql");
    let root = super::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root).args(["bench", "-q", "-p", "masker-agent", "--bench", "sql"]);
    if ctx.quick {
        cmd.env("MASKER_BENCH_QUICK", "1");
    }
    let out = cmd.output().context("running cargo bench")?;
    if !out.status.success() {
        bail!("cargo bench --bench sql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut table =
        Table::new("lineage: parse and trace one statement (µs, release)", &["statement", "cold", "cached"]);
    let mut rows = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("statement\t")).skip(1) {
        let cells: Vec<&str> = line.split('\t').collect();
        if let [name, cold, cached] = cells.as_slice() {
            table.row(vec![name.to_string(), cold.to_string(), cached.to_string()]);
            rows.push(json!({ "statement": name, "cold_us": cold.parse::<f64>().ok(), "cached_us": cached.parse::<f64>().ok() }));
        }
    }
    if rows.is_empty() {
        bail!("no results in the output of the sql bench:\n{text}");
    }
    table.note(
        "cold = parse with pg_query + trace every time; cached = the per-text cache hit a repeated statement gets",
    );
    Ok((table, json!(rows)))
}

fn pgbench(ctx: &Ctx) -> Result<(Table, Value)> {
    let cluster = ctx.cluster;
    progress(format!("lineage: pgbench -i -s {SCALE}"));
    let mut init = client::pg_tool(cluster.bindir(), "pgbench", cluster.addr());
    init.args(["-i", "-q", "-s", &SCALE.to_string(), DBNAME]);
    client::run(init, Duration::from_secs(600)).context("pgbench -i")?;

    let policy = cluster.work().path().join("lineage-policy.toml");
    std::fs::write(&policy, POLICY).context("writing the lineage policy")?;
    let off = Masker::start(&ctx.masker_bin, cluster, &[], &[], "lineage-off")?;
    // Trust authentication: the catalog connection needs no password.
    let args = ["--policy".to_string(), policy.display().to_string(), "--catalog-user".into(), "postgres".into()];
    let on = Masker::start(&ctx.masker_bin, cluster, &args, &[], "lineage-on")?;
    let targets = [("direct", cluster.addr()), ("lineage off", off.addr()), ("lineage on", on.addr())];
    for (name, addr) in targets {
        select_only(ctx, addr, "simple", 1, 1).with_context(|| format!("warm-up against {name}"))?;
    }
    let mut table = Table::new(
        format!("lineage: pgbench -S, scale {SCALE}, {} s per run (TPS)", ctx.secs),
        &["mode", "clients", "direct", "masker, no policy", "masker, lineage on", "on/off", "on/direct", "goal >=0.9x"],
    );
    let mut runs = Vec::new();
    for mode in MODES {
        for clients in CLIENTS {
            let mut tps = [None; 3];
            for (i, (name, addr)) in targets.iter().enumerate() {
                let p = select_only(ctx, *addr, mode, clients, ctx.secs)
                    .with_context(|| format!("pgbench -M {mode} -c {clients} against {name}"))?;
                progress(format!("lineage: -M {mode} -c {clients} {name}: {:.0} tps", p.tps));
                tps[i] = Some(p.tps);
                runs.push(json!({ "mode": mode, "clients": clients, "target": name, "tps": p.tps }));
            }
            let on_off = ratio(tps[2], tps[1]);
            table.row(vec![
                mode.into(),
                clients.to_string(),
                fmt_num(tps[0], 0),
                fmt_num(tps[1], 0),
                fmt_num(tps[2], 0),
                fmt_ratio(on_off),
                fmt_ratio(ratio(tps[2], tps[0])),
                match on_off {
                    Some(r) if r >= 0.9 => "ok".into(),
                    Some(_) => "MISS".into(),
                    None => "-".into(),
                },
            ]);
        }
    }
    table
        .note("lineage on: every statement parsed (cached per text), traced, resolved through the catalog and planned");
    Ok((table, json!({ "scale": SCALE, "secs_per_run": ctx.secs, "runs": runs })))
}
