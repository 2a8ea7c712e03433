//! The `masker` command line: parses the arguments and dispatches to the
//! daemons (`daemon`) or, for the operator commands, to the running agent
//! over its admin socket. `anyhow` lives here only: this is the binary's
//! edge.
//!
//! `render` turns admin replies into text, `run` is `masker run`'s cgroup
//! steps, `tail` is `masker audit tail`, `explain` is `masker explain`.

mod explain;
mod render;
mod run;
mod tail;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::daemon::admin::{self, Request, Status};
use crate::daemon::config::{DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_DIR};
use crate::daemon::proxy::ProxyOptions;
use crate::daemon::signals::shutdown_signal;
use crate::plan::catalog::CatalogAccess;
use crate::policy::Policy;
use crate::session::auth::SecretSource;

/// masker: masks personal data in PostgreSQL results before workloads see it.
///
/// `masker agent` runs the daemon that transparently intercepts connections
/// from tagged cgroups (eBPF); `masker proxy` runs the same relay as an
/// explicit proxy. The other commands talk to a running agent as root.
#[derive(Debug, Parser)]
#[command(name = "masker", version, about, long_about)]
pub(crate) struct Cli {
    /// The agent's admin socket.
    #[arg(long, global = true, env = "MASKER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) admin_socket: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size of the proxy's variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: attach the eBPF programs, relay and mask redirected connections.
    Agent {
        /// Agent configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run as an explicit proxy that clients point at (no eBPF needed).
    ///
    /// Every client connecting to --listen is relayed to --upstream through
    /// the same session and masking path as the transparent agent. Prints
    /// `masker proxy listening on ADDR` on stdout once ready. SIGHUP reloads
    /// --policy; SIGTERM stops accepting, lets running statements finish for
    /// --drain-secs, then ends each session with SQLSTATE 57P01.
    Proxy {
        /// Address to listen on, e.g. 127.0.0.1:6432 (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// The real PostgreSQL server, HOST:PORT.
        #[arg(long)]
        upstream: crate::addr::TargetAddr,
        /// Policy file; without one, results are relayed unchanged.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Identity the policy sees for every session of this proxy.
        #[arg(long, default_value = "proxy")]
        identity: String,
        /// Role the proxy logs in as to read column names from the catalog.
        #[arg(long, env = "MASKER_CATALOG_USER")]
        catalog_user: Option<String>,
        /// Environment variable holding that role's password.
        #[arg(long, default_value = "MASKER_CATALOG_PASSWORD")]
        catalog_password_env: String,
        /// Terminate TLS towards clients with certificates from masker's CA
        /// kept in this directory (created on first use); without it,
        /// SSLRequest is answered 'N'.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// TLS towards the upstream server: disable, prefer, require or verify-full.
        #[arg(long, default_value = "disable")]
        upstream_tls: crate::session::tls::UpstreamTlsMode,
        /// CA bundle (PEM) that verify-full checks the server's certificate against.
        #[arg(long)]
        upstream_ca: Option<PathBuf>,
        /// Write audit events (JSON Lines) to this file, rotated at 100 MiB, 5 kept.
        #[arg(long)]
        audit_file: Option<PathBuf>,
        /// Serve Prometheus metrics (GET /metrics) on this address; off by default.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Inject a credential: clients must log in as this database user
        /// and send no password; the proxy logs in with the password from
        /// --credential-password-file or --credential-password-env.
        #[arg(long, requires = "credential_source")]
        credential_user: Option<String>,
        /// File holding that user's password (owned by root or the proxy's
        /// user, mode 0600 or stricter).
        #[arg(long, group = "credential_source", requires = "credential_user")]
        credential_password_file: Option<PathBuf>,
        /// Environment variable holding that user's password.
        #[arg(long, group = "credential_source", requires = "credential_user")]
        credential_password_env: Option<String>,
        /// Timeouts and memory limits (the agent's `[limits]`).
        #[command(flatten, next_help_heading = "Limits")]
        limits: crate::daemon::limits::LimitsConfig,
    },
    /// Show the agent: programs, targets, tagged cgroups, live sessions, per-identity counts, pending approvals.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Tag a cgroup (and its descendants) with a workload identity.
    Tag {
        /// cgroup directory: absolute, or relative to the cgroup v2 mount.
        #[arg(required_unless_present = "container")]
        cgroup: Option<PathBuf>,
        /// A running container instead (Docker id or name, or a containerd/CRI
        /// or Podman id): its cgroup is tagged, and its network namespace
        /// gets the agent's listener.
        #[arg(long, conflicts_with = "cgroup")]
        container: Option<String>,
        /// Create the cgroup (relative to the v2 mount) if it does not exist:
        /// e.g. the `--cgroup-parent` of containers not yet started.
        #[arg(long, requires = "cgroup")]
        create: bool,
        #[arg(long)]
        identity: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Remove a cgroup's tag: its new connections to targets are refused.
    ///
    /// Removal fails closed: the cgroup's connections to targets keep going
    /// to the agent, which answers them with SQLSTATE 28000 naming the
    /// cgroup and pid (a container's are refused with EPERM: its listener
    /// closes); they never go around masker. `masker tag` serves the cgroup
    /// again. The entry is deleted once the cgroup directory is removed.
    Untag {
        /// cgroup directory: absolute, or relative to the cgroup v2 mount.
        #[arg(required_unless_present = "container")]
        cgroup: Option<PathBuf>,
        /// A running container instead (as for `tag --container`).
        #[arg(long, conflicts_with = "cgroup")]
        container: Option<String>,
        /// Delete the entry instead, for a cgroup whose processes are gone
        /// (about to be removed); one that still has processes is only
        /// untagged as above.
        #[arg(long)]
        forget: bool,
    },
    /// Run a command in a new tagged cgroup; exits with the command's status.
    ///
    /// Creates a transient cgroup under masker's subtree, tags it, runs the
    /// command in it, then kills anything the command left running there,
    /// deletes the tag and removes the cgroup.
    Run {
        #[arg(long)]
        identity: String,
        #[command(flatten)]
        token: TokenArgs,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// masker's certificate authority (TLS towards clients).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Live sessions of the agent; `masker sessions kill ID` ends one.
    Sessions {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// Statements held by `[[approval]]` rules until an operator decides.
    ///
    /// The workload's client waits while its statement is held; approving
    /// runs it, denying or the rule's timeout gives the client SQLSTATE 42501
    /// with the reason (its session stays usable). Every decision is audited.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// The audit trail (read from its file; no agent needed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show how masker decides a statement for an identity, and why.
    ///
    /// For each result column: the base columns it derives from, the rule,
    /// the action and why; whether the statement is clean or tainted (what
    /// its errors and notices become); refusals (which rule, which column or
    /// option), values flowing into side channels, approval holds. The same
    /// decision the agent makes, from the same code, with the policy and the
    /// server's catalog as they are now, for a session that starts fresh
    /// (see --after). The catalog role reads the catalog and has the server
    /// describe each statement (Parse and Describe: nothing runs). Prints
    /// nothing of the statement but its normalized text (literals replaced).
    Explain(explain::ExplainArgs),
    /// Policy file commands.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Propose a policy for a database from its columns' names, comments,
    /// types and a bounded sample of their values.
    ///
    /// Connects like psql (-h, -p, -U, -d and the PG* variables; the
    /// password from PGPASSWORD, ~/.pgpass or --url-env, never the command
    /// line), reads every table and view the role can read in a read-only
    /// transaction, and prints a table of proposals with their evidence.
    /// --output writes the policy, --comments the COMMENT ON COLUMN SQL. No
    /// sampled value is ever printed, logged or written.
    #[command(disable_help_flag = true)]
    Discover(crate::discover::DiscoverArgs),
    /// Detach masker's eBPF programs and remove its pinned maps (tags included).
    ///
    /// For when the agent is stopped for good: while cgroups are tagged, a
    /// stopped agent leaves its programs attached so tagged workloads cannot
    /// bypass it.
    Uninstall {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// An OIDC token that backs a workload identity.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// File holding an OIDC ID token (JWT) for the identity; the agent
    /// verifies it against its `[[issuer]]` entries.
    #[arg(long, conflicts_with = "token_env")]
    pub(crate) token_file: Option<PathBuf>,
    /// Environment variable holding that token (as CI systems hand it out).
    #[arg(long)]
    pub(crate) token_env: Option<String>,
}

impl TokenArgs {
    /// The token, if one was given.
    pub(crate) fn read(&self) -> anyhow::Result<Option<String>> {
        match (&self.token_file, &self.token_env) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).with_context(|| format!("token file {}", file.display()))?;
                Ok(Some(text.trim().to_string()))
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                _ => anyhow::bail!("--token-env: {var} is not set"),
            },
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Print the CA certificate (PEM) for a trust store, creating the CA if needed.
    Export {
        /// The agent's state directory.
        #[arg(long, default_value = crate::session::tls::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCommand {
    /// End a live session (its client gets SQLSTATE 57P01).
    Kill { id: u64 },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Statements waiting now: id, session, identity, rule, statement (literals replaced).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Let a held statement run.
    Approve {
        id: u64,
        /// Also approve, for this long, the same statement shape (other
        /// literals) from the same identity: 90s, 15m, 2h, 1d (at most 7d).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration_arg)]
        for_: Option<std::time::Duration>,
    },
    /// Refuse a held statement; the client gets SQLSTATE 42501 with the reason.
    Deny {
        id: u64,
        /// Told to the client and recorded in the audit trail.
        #[arg(long)]
        reason: String,
    },
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, crate::approvals::DurationError> {
    crate::approvals::parse_duration(s)
}

/// Who decides, for audit events: the operator behind `sudo` when there is
/// one, else the login name, else the uid.
fn approver() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| crate::own_uid().map_or_else(|| "unknown".into(), |uid| format!("uid {uid}")))
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print audit events, optionally following new ones (across rotations).
    Tail {
        /// Keep printing events as they are written.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events of this workload identity.
        #[arg(long)]
        identity: Option<String>,
        /// Print the JSON lines as written.
        #[arg(long)]
        json: bool,
        /// The audit file (default: `[audit] file` of --config).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Agent configuration whose `[audit] file` to read.
        #[arg(long, default_value = "/etc/masker/agent.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy file; errors give file, line and what was expected.
    Check { file: PathBuf },
    /// Make the running agent load its policy file again and re-read injected
    /// credentials' passwords (as SIGHUP does).
    Reload,
}

/// Entry point of the `masker` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Stacks deep enough to analyse the deepest statement the parser takes
    // where it arrives (see `sql::with_parse_stack`); only touched pages
    // cost memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(crate::sql::PARSE_STACK)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("masker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("masker: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` with its causes, each said once: masker's errors name their cause in
/// their own message (and also return it as their source), anyhow's context
/// does not.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("MASKER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.admin_socket.as_path();
    match cli.command {
        Command::Agent { config } => {
            crate::daemon::agent::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy {
            listen,
            upstream,
            policy,
            identity,
            catalog_user,
            catalog_password_env,
            state_dir,
            upstream_tls,
            upstream_ca,
            audit_file,
            metrics_listen,
            credential_user,
            credential_password_file,
            credential_password_env,
            limits,
        } => {
            let credential = match credential_user {
                None => None,
                Some(user) => {
                    let source = match (credential_password_file, credential_password_env) {
                        (Some(f), _) => SecretSource::File(f),
                        (None, Some(v)) => SecretSource::Env(v),
                        (None, None) => anyhow::bail!(
                            "--credential-user needs --credential-password-file or --credential-password-env"
                        ),
                    };
                    Some((user, source))
                }
            };
            let catalog =
                catalog_user.map(|user| CatalogAccess { user, password: std::env::var(&catalog_password_env).ok() });
            let opts = ProxyOptions {
                listen,
                upstream,
                policy,
                identity,
                catalog,
                state_dir,
                upstream_tls,
                upstream_ca,
                audit_file,
                metrics_listen,
                credential,
                limits: limits.limits()?,
            };
            crate::daemon::proxy::run(opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let value = admin::request(socket, &Request::Status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let status: Status = serde_json::from_value(value)?;
                print!("{}", render::status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tag { cgroup, container, create, identity, token } => {
            let token = token.read()?;
            if create && let Some(c) = &cgroup {
                let root = crate::interception::cgroup::v2_root()?;
                let dir = root.join(c.strip_prefix(&root).unwrap_or(c).strip_prefix("/").unwrap_or(c));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            }
            let dir = run::cgroup_or_container(cgroup, container).await?;
            admin::request(socket, &Request::Tag { cgroup: dir.clone(), identity: identity.clone(), token }).await?;
            println!("tagged {} as {identity}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Untag { cgroup, container, forget } => {
            let dir = run::cgroup_or_container(cgroup, container).await?;
            let answer = admin::request(socket, &Request::Untag { cgroup: dir.clone(), forget }).await?;
            if let Some(note) = answer["note"].as_str() {
                eprintln!("masker: {note}");
            }
            let d = dir.display();
            match answer["outcome"].as_str().unwrap_or_default() {
                "forgotten" => println!("untagged {d} and deleted its entry"),
                "not_tagged" => println!("{d} was not tagged"),
                "already_revoked" => println!("{d} was already untagged; its connections to targets are refused"),
                _ => println!("untagged {d}: its connections to targets are refused until it is tagged again"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { identity, token, command } => {
            let token = token.read()?;
            run::run_tagged(socket, &identity, token, &command).await
        }
        Command::Sessions { json, command } => sessions(socket, json, command).await,
        Command::Approvals { command } => approvals(socket, command).await,
        Command::Audit { command: AuditCommand::Tail { follow, identity, json, file, config } } => {
            let file = match file {
                Some(f) => f,
                None => crate::daemon::config::AgentConfig::from_file(&config)?
                    .audit
                    .and_then(|a| a.file)
                    .ok_or_else(|| anyhow::anyhow!("{}: no [audit] file configured; pass --file", config.display()))?,
            };
            let opts = tail::TailOptions { file, follow, identity, json };
            let mut out = std::io::stdout();
            tokio::select! {
                r = tail::tail(&opts, &mut out) => r?,
                () = shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) => explain::explain(args).await,
        Command::Policy { command: PolicyCommand::Check { file } } => match Policy::from_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Policy { command: PolicyCommand::Reload } => {
            let value = admin::request(socket, &Request::PolicyReload).await?;
            println!("{}", value.as_str().unwrap_or("reloaded"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca { command: CaCommand::Export { state_dir } } => {
            let ca = crate::session::tls::CertificateAuthority::load_or_create(&state_dir)?;
            print!("{}", ca.certificate_pem());
            Ok(ExitCode::SUCCESS)
        }
        Command::Discover(args) => Ok(crate::discover::run(args).await?),
        Command::Uninstall { pin_dir } => {
            run::require_root()?;
            crate::interception::uninstall(&pin_dir)?;
            println!("removed masker's eBPF programs and maps under {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `masker sessions [--json]` and `masker sessions kill ID`.
async fn sessions(socket: &Path, json: bool, command: Option<SessionsCommand>) -> anyhow::Result<ExitCode> {
    if let Some(SessionsCommand::Kill { id }) = command {
        admin::request(socket, &Request::KillSession { id }).await?;
        println!("session {id} killed");
        return Ok(ExitCode::SUCCESS);
    }
    let value = admin::request(socket, &Request::Sessions).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let sessions: Vec<crate::daemon::registry::SessionSnapshot> = serde_json::from_value(value)?;
        print!("{}", render::sessions(&sessions));
    }
    Ok(ExitCode::SUCCESS)
}

/// `masker approvals list|approve|deny`.
async fn approvals(socket: &Path, command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List { json } => {
            let value = admin::request(socket, &Request::Approvals).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let pending: Vec<crate::approvals::PendingApproval> = serde_json::from_value(value)?;
                print!("{}", render::approvals(&pending));
            }
        }
        ApprovalsCommand::Approve { id, for_ } => {
            let request = Request::Approve { id, approver: approver(), for_secs: for_.map(|d| d.as_secs()) };
            admin::request(socket, &request).await?;
            match for_ {
                Some(d) => println!("approval {id}: approved, and its statement shape for {}s", d.as_secs()),
                None => println!("approval {id}: approved"),
            }
        }
        ApprovalsCommand::Deny { id, reason } => {
            admin::request(socket, &Request::Deny { id, approver: approver(), reason }).await?;
            println!("approval {id}: denied");
        }
    }
    Ok(ExitCode::SUCCESS)
}
