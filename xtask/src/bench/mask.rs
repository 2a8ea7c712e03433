//! `bench mask`: the cost of masking. A million rows with five personal
//! columns (name, email, phone, SSN-like, address) and five plain ones (id,
//! amount, created_at, status, qty) are read with psql directly, through
//! masker without a policy and through masker with [`POLICY`], which masks
//! the five personal columns. Goal: masked ≤ 1.5× unmasked relay time, RSS
//! flat in result size (a 100,000-row read on a fresh masked process is
//! compared with the million-row one).
//!
//! When `masker proxy` does not take `--policy` yet, or refuses [`POLICY`],
//! the masked row says so and the rest is still measured.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::client;
use super::processes::Masker;
use super::report::{Table, fmt_num, fmt_ratio, goal, median, mib, ratio};
use super::{Ctx, Outcome, progress};

const ROWS: u64 = 1_000_000;
const SMALL_ROWS: u64 = 100_000;

/// The policy the masked variant runs with, in the format documented in
/// `examples/policy.toml`. A mix of cheap (redact, partial, email) and keyed
/// (pseudonymize) actions on the five personal columns; the plain columns
/// fall to `defaults.action` (switch it to "detect" to also measure content
/// scanning of unclassified columns).
pub const POLICY: &str = r#"# Policy of `cargo xtask bench mask`.
version = 1

[defaults]
action = "allow"
comment_classification = false

[pseudonymize]
key_env = "MASKER_PSEUDONYM_KEY"

[[rule]]
name = "name"
columns = ["public.bench_people.full_name"]
action = "pseudonymize"

[[rule]]
name = "email"
columns = ["public.bench_people.email"]
action = "email"

[[rule]]
name = "phone"
columns = ["public.bench_people.phone"]
action = "partial"
keep_last = 2

[[rule]]
name = "national-id"
columns = ["public.bench_people.ssn"]
action = "pseudonymize"
format_preserving = true

[[rule]]
name = "address"
columns = ["public.bench_people.address"]
action = "redact"
"#;

/// The pseudonym key [`POLICY`] reads from the environment.
const PSEUDONYM_KEY: (&str, &str) = ("MASKER_PSEUDONYM_KEY", "masker-bench-pseudonym-key-not-a-secret");

/// Fake people: ASCII names from two 20-word lists, emails derived from them,
/// US-style phones and SSN-like strings, street addresses.
const PEOPLE_TABLE: &str = "CREATE UNLOGGED TABLE bench_people AS
SELECT i AS id,
       n.f || ' ' || n.l AS full_name,
       lower(n.f || '.' || n.l) || i || '@example.com' AS email,
       '+1 (' || (200 + i % 800) || ') 555-' || lpad((i % 10000)::text, 4, '0') AS phone,
       (100 + i % 800) || '-' || (10 + i % 89) || '-' || (1000 + i % 8999) AS ssn,
       (1 + i % 9999) || ' ' || n.s || ', Springfield, IL ' || (60000 + i % 2000) AS address,
       round((i % 100000) / 100.0 + 0.99, 2)::numeric(12, 2) AS amount,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '37 seconds' AS created_at,
       (ARRAY['active', 'pending', 'closed', 'refunded'])[1 + i % 4] AS status,
       (i % 50)::int + 1 AS qty
FROM generate_series(1, 1000000) i,
LATERAL (SELECT
    (ARRAY['Alice', 'Bruno', 'Chen', 'Dana', 'Emeka', 'Fatima', 'Gustav', 'Hana', 'Ivan', 'Julia',
           'Kofi', 'Lena', 'Mateo', 'Nora', 'Omar', 'Priya', 'Quentin', 'Rosa', 'Sven', 'Yuki'])[1 + i % 20] AS f,
    (ARRAY['Smith', 'Garcia', 'Mueller', 'Nguyen', 'Okafor', 'Rossi', 'Kowalski', 'Tanaka', 'Silva', 'Dubois',
           'Jensen', 'Haddad', 'Novak', 'Ivanova', 'Cohen', 'Kim', 'Larsen', 'Moreau', 'Patel', 'Wong'])[1 + (i / 20) % 20] AS l,
    (ARRAY['Main St', 'Oak Ave', 'Pine Rd', 'Maple Dr', 'Cedar Ln', 'Elm St', 'Lake View', 'Hill Rd'])[1 + i % 8] AS s
) n";

const PERSONAL: &str = "full_name, email, phone, ssn, address";
const PLAIN: &str = "id, amount, created_at, status, qty";

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let cluster = ctx.cluster;
    let bindir = cluster.bindir();
    let limit = Duration::from_secs(600);
    progress(format!("mask: creating the {ROWS}-row people table"));
    client::run(client::psql(bindir, cluster.addr(), PEOPLE_TABLE), limit)?;
    client::run(client::psql(bindir, cluster.addr(), "VACUUM ANALYZE bench_people"), limit)?;

    let policy = cluster.work().path().join("bench-policy.toml");
    std::fs::write(&policy, POLICY).context("writing the bench policy")?;
    let unmasked = Masker::start(&ctx.masker_bin, cluster, &[], &[], "mask-off")?;
    let (masked, unavailable) = match start_masked(ctx, &policy, "mask-on") {
        Ok(m) => (Some(m), None),
        Err(reason) => (None, Some(reason)),
    };
    let mut table = Table::new(
        format!("mask: {ROWS} rows x (5 personal + 5 plain columns) read with psql -At, median of {}", ctx.reps()),
        &["path", "time s", "rows/s", "MB/s", "vs direct", "vs unmasked", "goal <=1.5x", "peak RSS"],
    );
    if let Some(masked) = &masked {
        check_masking(ctx, masked.addr(), &mut table)?;
    }

    let full = "SELECT * FROM bench_people";
    client::stream(bindir, cluster.addr(), full, limit)?; // warm-up, not measured
    let mut paths: Vec<(&str, SocketAddr)> = vec![("direct", cluster.addr()), ("masker, no policy", unmasked.addr())];
    if let Some(m) = &masked {
        paths.push(("masker, 5 columns masked", m.addr()));
    }
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut bytes = vec![0u64; paths.len()];
    for _ in 0..ctx.reps() {
        for (i, (label, addr)) in paths.iter().enumerate() {
            let s = client::stream(bindir, *addr, full, limit).with_context(|| format!("reading through {label}"))?;
            progress(format!("mask: {label}: {:.2} s", s.secs));
            secs[i].push(s.secs);
            bytes[i] = s.bytes;
        }
    }
    let peaks = [None, unmasked.memory().ok(), masked.as_ref().and_then(|m| m.memory().ok())];
    let medians: Vec<Option<f64>> = secs.iter().map(|s| median(s)).collect();
    let mut json_paths = Vec::new();
    for (i, (label, _)) in paths.iter().enumerate() {
        let t = medians[i];
        let vs_unmasked = if i == 2 { ratio(t, medians[1]) } else { None };
        table.row(vec![
            label.to_string(),
            fmt_num(t, 2),
            fmt_num(t.map(|t| ROWS as f64 / t), 0),
            fmt_num(t.map(|t| bytes[i] as f64 / 1e6 / t), 0),
            if i == 0 { String::new() } else { fmt_ratio(ratio(t, medians[0])) },
            if i == 2 { fmt_ratio(vs_unmasked) } else { String::new() },
            if i == 2 { goal(vs_unmasked, |r| r <= 1.5) } else { String::new() },
            peaks[i].map_or(String::new(), |m| mib(m.peak_kib)),
        ]);
        json_paths.push(json!({
            "label": label, "secs": secs[i], "median_secs": t, "output_bytes": bytes[i],
            "peak_rss_kib": peaks[i].map(|m| m.peak_kib),
        }));
    }
    if let Some(reason) = &unavailable {
        let mut row = vec!["masker, 5 columns masked".to_string()];
        row.extend(["-", "-", "-", "-", "-", "not available yet", "-"].map(String::from));
        table.row(row);
        table.note(format!("masking not available yet: {reason}"));
    }
    let flat = rss_flatness(ctx, &policy, masked.is_some())?;
    table.note(format!(
        "peak RSS on a fresh {} process after {SMALL_ROWS} rows: {} (compare with the {ROWS}-row peak above)",
        if masked.is_some() { "masking" } else { "unmasked" },
        flat.map_or("-".into(), mib)
    ));
    table.note("MB/s = psql text output bytes / wall time (psql start + connect + query + transfer)");
    let json = json!({
        "rows": ROWS,
        "policy": POLICY,
        "masking_available": masked.is_some(),
        "masking_unavailable_reason": unavailable,
        "paths": json_paths,
        "small_rows": SMALL_ROWS,
        "small_rows_peak_rss_kib": flat,
    });
    Ok(Outcome { tables: vec![table], json })
}

/// The `masker proxy` arguments that load the bench policy, or why masking
/// cannot be measured with this binary.
fn masked_args(ctx: &Ctx, policy: &Path) -> Result<Vec<String>, String> {
    let help = Command::new(&ctx.masker_bin).args(["proxy", "--help"]).output();
    let help = help.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    if !help.contains("--policy") {
        return Err("`masker proxy` does not take --policy yet".into());
    }
    let check = Command::new(&ctx.masker_bin)
        .args(["policy", "check"])
        .arg(policy)
        .env(PSEUDONYM_KEY.0, PSEUDONYM_KEY.1)
        .output()
        .map_err(|e| format!("running masker policy check: {e}"))?;
    let said = String::from_utf8_lossy(&check.stderr);
    if !check.status.success() && !said.contains("unrecognized subcommand") {
        return Err(format!("masker policy check refused the bench policy (adjust mask::POLICY): {}", said.trim()));
    }
    let mut args = vec!["--policy".to_string(), policy.display().to_string()];
    if help.contains("--catalog-user") {
        // Trust authentication: the catalog connection needs no password.
        args.extend(["--catalog-user".to_string(), "postgres".to_string()]);
    }
    Ok(args)
}

/// Starts masker with the bench policy, or says why it cannot.
fn start_masked(ctx: &Ctx, policy: &Path, label: &str) -> Result<Masker, String> {
    let args = masked_args(ctx, policy)?;
    Masker::start(&ctx.masker_bin, ctx.cluster, &args, &[PSEUDONYM_KEY], label)
        .map_err(|err| format!("masker did not start with the bench policy: {err:#}"))
}

/// Notes in the table whether the masked path really masks the personal
/// columns and leaves the plain ones alone, so a fast but inert policy does
/// not pass for a result.
fn check_masking(ctx: &Ctx, masked: SocketAddr, table: &mut Table) -> Result<()> {
    let bindir = ctx.cluster.bindir();
    let limit = Duration::from_secs(60);
    let query = |addr, columns: &str| -> Result<String> {
        let sql = format!("SELECT {columns} FROM bench_people ORDER BY id LIMIT 5");
        Ok(client::run(client::psql(bindir, addr, &sql), limit)?.stdout)
    };
    let direct = ctx.cluster.addr();
    if query(direct, PERSONAL)? == query(masked, PERSONAL)? {
        table.note("WARNING: with the bench policy the personal columns came back unchanged");
    }
    if query(direct, PLAIN)? != query(masked, PLAIN)? {
        table.note("WARNING: with the bench policy the plain columns came back changed");
    }
    Ok(())
}

/// Peak RSS of a fresh masker after a [`SMALL_ROWS`]-row read.
fn rss_flatness(ctx: &Ctx, policy: &Path, masking: bool) -> Result<Option<u64>> {
    let masker = if masking {
        start_masked(ctx, policy, "mask-small").map_err(anyhow::Error::msg)?
    } else {
        Masker::start(&ctx.masker_bin, ctx.cluster, &[], &[], "mask-small")?
    };
    let sql = format!("SELECT * FROM bench_people LIMIT {SMALL_ROWS}");
    client::stream(ctx.cluster.bindir(), masker.addr(), &sql, Duration::from_secs(300))?;
    Ok(masker.memory().ok().map(|m| m.peak_kib))
}
