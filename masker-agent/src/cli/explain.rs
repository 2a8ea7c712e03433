//! `masker explain`: how masker decides a statement for an identity, from
//! the same code the agent runs ([`crate::plan::explain`]), as text or JSON.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::addr::TargetAddr;
use crate::plan::PlanContext;
use crate::plan::catalog::{Catalog, CatalogAccess};
use crate::plan::explain::{BaseColumn, Describer, Explanation, Who};
use crate::policy::Policy;

/// `masker explain`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The statement (one or more, as a client would send them in one
    /// Query); read from stdin when absent or `-`.
    statement: Option<String>,
    /// The workload identity the policy sees (as tagged, or `masker proxy
    /// --identity`).
    #[arg(long)]
    identity: String,
    /// The database server, HOST:PORT, as the workload dials it (the
    /// policy's `targets` match it; the catalog is read there).
    #[arg(long)]
    target: TargetAddr,
    /// The session's database.
    #[arg(long, short = 'd', env = "PGDATABASE")]
    database: String,
    /// The session's database user (`$user` in its search_path).
    #[arg(long, short = 'U', env = "PGUSER")]
    user: String,
    /// Policy file (default: the `policy` of --config).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// An agent configuration: its `policy` and `[catalog]` credentials.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Role that reads the catalog and has the server describe the
    /// statement (default: `[catalog] user` of --config).
    #[arg(long, env = "MASKER_CATALOG_USER")]
    catalog_user: Option<String>,
    /// Environment variable holding that role's password.
    #[arg(long, default_value = "MASKER_CATALOG_PASSWORD")]
    catalog_password_env: String,
    /// The verified token claims of the identity, as a JSON object (rules and
    /// `[[identity]]` blocks with `claims` apply only with matching claims).
    #[arg(long)]
    claims: Option<String>,
    /// Statements the session ran before (repeatable, in order; assumed to
    /// succeed, as the agent assumes; refused ones do not run): the
    /// temporary tables, views, search_path, prepared statements and
    /// cursors they create count.
    #[arg(long, value_name = "SQL")]
    after: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Runs `masker explain`.
pub(super) async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let sql = match args.statement.as_deref() {
        Some(s) if s != "-" => s.to_string(),
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the statement from stdin")?;
            text
        }
    };
    if sql.trim().is_empty() {
        bail!("no statement: pass it as an argument or on stdin");
    }
    let config = args.config.as_deref().map(crate::daemon::config::AgentConfig::from_file).transpose()?;
    let policy_path = match (&args.policy, config.as_ref().and_then(|c| c.policy.clone())) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => {
            bail!("no policy: pass --policy FILE or --config with a `policy` (without one nothing is masked)")
        }
    };
    // Explaining masks no value: the pseudonymisation key need not be at
    // hand (a `key_env` that is not set gets a stand-in; a `key_file` must
    // still be readable).
    let stand_in = |name: &str| std::env::var(name).ok().or_else(|| Some("masker-explain-stand-in-key".into()));
    let policy = Policy::from_file_with_env(&policy_path, &stand_in)?;
    let access = match (&args.catalog_user, config.as_ref().and_then(|c| c.catalog.as_ref())) {
        (Some(user), _) => {
            Some(CatalogAccess { user: user.clone(), password: std::env::var(&args.catalog_password_env).ok() })
        }
        (None, Some(c)) => Some(c.access()?),
        (None, None) => None,
    };
    let claims: Option<crate::identity::Claims> = match &args.claims {
        Some(text) => Some(serde_json::from_str(text).context("--claims: expected a JSON object of claims")?),
        None => None,
    };
    let session_policy = policy.for_session(&args.identity, claims.as_ref(), args.target.as_str());
    let plan = PlanContext {
        policy: session_policy,
        catalog: Arc::new(Catalog::new(access.clone())),
        destination: args.target.clone(),
        database: args.database.clone(),
        user: args.user.clone(),
    };
    let describer = match &access {
        Some(a) => Describer::connect(a, &args.target, &args.database).await.ok(),
        None => None,
    };
    let who = Who { identity: &args.identity };
    let explanation = plan.explain(&who, &sql, &args.after, describer.as_ref()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", render(&explanation, &policy_path));
    }
    Ok(ExitCode::SUCCESS)
}

fn bases(list: &[BaseColumn]) -> String {
    list.iter()
        .map(|b| {
            let class = if b.classified { ", classified" } else { "" };
            format!("{} [{}, {}{class}]", b.column, b.action.name, b.rule)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The explanation as text.
fn render(e: &Explanation, policy: &std::path::Path) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "identity {} -> {} database {} user {} (policy {})",
        e.identity,
        e.target,
        e.database,
        e.user,
        policy.display()
    );
    match (&e.identity_block, e.mode) {
        (Some(b), "observe") => {
            let _ = writeln!(
                o,
                "MODE OBSERVE ([[identity]] {b}): nothing below is done to the workload; sessions are relayed \
                 unchanged and what would be masked or refused is recorded in the audit trail and metrics"
            );
        }
        (Some(b), _) => {
            let _ = writeln!(o, "mode enforce ([[identity]] {b})");
        }
        (None, _) => {
            let _ = writeln!(o, "mode enforce (no [[identity]] block applies)");
        }
    }
    if let Some(m) = &e.connect_refusal {
        let _ = writeln!(o, "SESSION REFUSED at its start (SQLSTATE 28000): {m}");
    }
    if let Some(c) = &e.catalog_error {
        let _ = writeln!(o, "CATALOG UNREADABLE: {c}; every table column is masked (fail closed)");
    }
    if let Some(p) = &e.parse_error {
        let _ = writeln!(
            o,
            "does not parse ({p}): it goes to the server, which answers a syntax error (42601, as sent); other \
             errors about it have their text withheld"
        );
        return o;
    }
    for a in &e.after_refused {
        let _ = writeln!(
            o,
            "--after {} is refused (it does not run, nor does what it creates exist): {}",
            a.after + 1,
            a.message
        );
    }
    if let Some(r) = &e.refusal {
        let _ = writeln!(
            o,
            "\nREFUSED before it runs ({} rule, SQLSTATE {}); nothing of the text runs, the session stays usable:\n  \
             {}",
            r.kind, r.sqlstate, r.message
        );
    }
    if let Some(h) = &e.approval {
        let _ = writeln!(
            o,
            "\nHELD for approval by rule {}: the client waits up to {}s for an operator (masker agent); masker proxy \
             has no operator and refuses it (42501)",
            h.rule, h.timeout_secs
        );
    }
    for s in &e.statements {
        let _ = writeln!(o, "\nstatement {} ({}): {}", s.index + 1, s.class, s.statement);
        match &s.taint {
            Some(t) => {
                let _ = writeln!(o, "  TAINTED: it reads {t}");
            }
            None => {
                let _ = writeln!(o, "  clean: it reads only allowed columns, catalogs, literals and parameters");
            }
        }
        let _ = writeln!(o, "  messages: {}", s.messages);
        match &s.columns {
            None => {
                let _ = writeln!(o, "  returns no rows");
            }
            Some(cols) => {
                let from = match s.columns_from {
                    "server" => "as the server describes them",
                    "unknown" => "they cannot be listed; one decision for every column",
                    _ => "as the statement names them",
                };
                let _ = writeln!(o, "  columns ({from}):");
                if let Some(err) = &s.describe_error {
                    let _ = writeln!(o, "    (the server did not describe it: {err})");
                }
                for c in cols {
                    let _ = writeln!(o, "    {:>2}  {:<20} {:<13} {}", c.position + 1, c.name, c.action.name, c.why);
                    let _ = writeln!(o, "        action: {}; decided by: {}", c.action.detail, c.rule);
                    if let Some(origin) = &c.origin {
                        let _ = writeln!(o, "        origin: {origin}");
                    }
                    if !c.derived_from.is_empty() {
                        let _ = writeln!(o, "        from: {}", bases(&c.derived_from));
                    }
                    if c.untraced {
                        let _ = writeln!(o, "        part of it cannot be traced");
                    }
                }
            }
        }
        for sink in &s.sinks {
            let verdict = sink.refusal.as_deref().map_or("allowed".to_string(), |r| format!("REFUSED: {r}"));
            let _ = writeln!(o, "  sink: {} through {}: {verdict}", sink.channel, sink.through);
            if !sink.derived_from.is_empty() {
                let _ = writeln!(o, "        from: {}", bases(&sink.derived_from));
            }
        }
        if let Some(m) = &s.moves {
            let verdict = m.refusal.as_deref().map_or("allowed".to_string(), |r| format!("REFUSED: {r}"));
            let _ = writeln!(o, "  moves data: {verdict}");
            if !m.derived_from.is_empty() {
                let _ = writeln!(o, "        from: {}", bases(&m.derived_from));
            }
        }
        if !s.tests.is_empty() {
            let inference = match e.refuse_inference {
                true => {
                    "refused under defaults.refuse_inference (equality with a constant on a pseudonymized column excepted)"
                }
                false => "allowed (defaults.refuse_inference is off)",
            };
            let _ = writeln!(o, "  tests classified columns ({inference}): {}", bases(&s.tests));
        }
    }
    o
}
