//! The `masker` command line: the daemon, the explicit proxy and the
//! operator commands that talk to the daemon over its admin socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::admin::{self, Request, Status};
use crate::catalog::{Catalog, CatalogAccess};
use crate::config::{DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_DIR};
use crate::listener;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::session::{Limits, SessionContext};

/// masker: masks personal data in PostgreSQL results before workloads see it.
///
/// `masker agent` runs the daemon that transparently intercepts connections
/// from tagged cgroups (eBPF); `masker proxy` runs the same relay as an
/// explicit proxy. The other commands talk to a running agent as root.
#[derive(Debug, Parser)]
#[command(name = "masker", version, about, long_about)]
pub struct Cli {
    /// The agent's admin socket.
    #[arg(long, global = true, env = "MASKER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the proxy's variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// `masker proxy listening on ADDR` on stdout once ready.
    Proxy {
        /// Address to listen on, e.g. 127.0.0.1:6432 (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// The real PostgreSQL server, HOST:PORT.
        #[arg(long)]
        upstream: String,
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
        upstream_tls: crate::tls::UpstreamTlsMode,
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
        cgroup: PathBuf,
        #[arg(long)]
        identity: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Remove a cgroup's tag; its new connections are no longer intercepted.
    Untag {
        /// cgroup directory: absolute, or relative to the cgroup v2 mount.
        cgroup: PathBuf,
    },
    /// Run a command in a new tagged cgroup; exits with the command's status.
    ///
    /// Creates a transient cgroup under masker's subtree, tags it, runs the
    /// command in it, then untags and removes the cgroup (killing anything
    /// the command left running there).
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
pub struct TokenArgs {
    /// File holding an OIDC ID token (JWT) for the identity; the agent
    /// verifies it against its `[[issuer]]` entries.
    #[arg(long, conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding that token (as CI systems hand it out).
    #[arg(long)]
    pub token_env: Option<String>,
}

impl TokenArgs {
    /// The token, if one was given.
    pub fn read(&self) -> anyhow::Result<Option<String>> {
        match (&self.token_file, &self.token_env) {
            (Some(file), _) => Ok(Some(crate::identity::read_token_file(file)?)),
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                _ => anyhow::bail!("--token-env: {var} is not set"),
            },
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM) for a trust store, creating the CA if needed.
    Export {
        /// The agent's state directory.
        #[arg(long, default_value = crate::tls::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End a live session (its client gets SQLSTATE 57P01).
    Kill { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
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

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
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
pub enum AuditCommand {
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
pub enum PolicyCommand {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("masker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("masker: {e:#}");
            ExitCode::FAILURE
        }
    }
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
            crate::agent::run(config).await?;
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
        } => {
            let credentials = match credential_user {
                None => crate::credentials::Credentials::default(),
                Some(user) => {
                    let source = match (credential_password_file, credential_password_env) {
                        (Some(f), _) => crate::credentials::SecretSource::File(f),
                        (None, Some(v)) => crate::credentials::SecretSource::Env(v),
                        (None, None) => anyhow::bail!(
                            "--credential-user needs --credential-password-file or --credential-password-env"
                        ),
                    };
                    let c = crate::credentials::load(&upstream, None, &user, source)
                        .map_err(|e| anyhow::anyhow!("--credential-user {user}: {e}"))?;
                    crate::credentials::Credentials::new(vec![c])
                }
            };
            let mut proxy_tls = crate::tls::SessionTls::default();
            if let Some(dir) = &state_dir {
                proxy_tls.client = Some(Arc::new(crate::tls::ClientTls::new(dir)?));
            }
            let host = crate::catalog::split_host_port(&upstream).map_or(upstream.as_str(), |(h, _)| h);
            let target = crate::tls::TargetTls::new(host, upstream_tls, upstream_ca.as_deref())?;
            proxy_tls.set_targets([(upstream.clone(), target)]);
            let policy = match policy {
                Some(p) => Some(Arc::new(Policy::from_file(&p).map_err(|e| anyhow::anyhow!("{e}"))?)),
                None => None,
            };
            let catalog =
                catalog_user.map(|user| CatalogAccess { user, password: std::env::var(&catalog_password_env).ok() });
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let local = listener.local_addr()?;
            let ctx = Arc::new(SessionContext {
                registry: Arc::new(Registry::default()),
                limits: Limits::default(),
                socket_mark: None,
                policy: RwLock::new(policy),
                catalog: Arc::new(Catalog::new(catalog)),
                tls: proxy_tls,
                credentials,
                target_names: RwLock::new(Default::default()),
            });
            let audit = crate::audit::AuditSettings {
                file: audit_file,
                max_bytes: crate::audit::AuditSettings::DEFAULT_MAX_BYTES,
                keep: crate::audit::AuditSettings::DEFAULT_KEEP,
                stdout: false,
            };
            ctx.registry.audit.start(&audit)?;
            if let Some(addr) = metrics_listen {
                crate::metrics::start(addr, ctx.registry.clone()).await?;
            }
            println!("masker proxy listening on {local}");
            listener::run_proxy(listener, upstream, identity, ctx, shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let value = admin::request(socket, &Request::Status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let status: Status = serde_json::from_value(value)?;
                print!("{}", render_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tag { cgroup, identity, token } => {
            let token = token.read()?;
            let dir = resolve_cgroup(&cgroup)?;
            admin::request(socket, &Request::Tag { cgroup: dir.clone(), identity: identity.clone(), token }).await?;
            println!("tagged {} as {identity}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Untag { cgroup } => {
            let dir = resolve_cgroup(&cgroup)?;
            admin::request(socket, &Request::Untag { cgroup: dir.clone() }).await?;
            println!("untagged {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { identity, token, command } => {
            let token = token.read()?;
            run_tagged(socket, &identity, token, &command).await
        }
        Command::Sessions { json, command } => sessions(socket, json, command).await,
        Command::Approvals { command } => approvals(socket, command).await,
        Command::Audit { command: AuditCommand::Tail { follow, identity, json, file, config } } => {
            let file = match file {
                Some(f) => f,
                None => crate::config::AgentConfig::from_file(&config)?
                    .audit
                    .and_then(|a| a.file)
                    .ok_or_else(|| anyhow::anyhow!("{}: no [audit] file configured; pass --file", config.display()))?,
            };
            let opts = crate::audit::TailOptions { file, follow, identity, json };
            let mut out = std::io::stdout();
            tokio::select! {
                r = crate::audit::tail(&opts, &mut out) => r?,
                () = shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
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
            let ca = crate::tls::CertificateAuthority::load_or_create(&state_dir)?;
            print!("{}", ca.certificate_pem());
            Ok(ExitCode::SUCCESS)
        }
        Command::Discover(args) => crate::discover::run(args).await,
        Command::Uninstall { pin_dir } => {
            require_root()?;
            crate::interception::uninstall(&pin_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("removed masker's eBPF programs and maps under {}", pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    if crate::own_uid() != Some(0) {
        anyhow::bail!("this command must run as root");
    }
    Ok(())
}

/// An existing cgroup directory, absolute or relative to the v2 mount.
fn resolve_cgroup(cgroup: &Path) -> anyhow::Result<PathBuf> {
    let root = crate::cgroup::v2_root().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::cgroup::resolve(&root, cgroup).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `masker run`: the command runs in a transient tagged cgroup. This process
/// moves itself in before spawning (so the child starts inside, with no
/// window where it runs untagged) and back out before removing the cgroup.
async fn run_tagged(
    socket: &Path,
    identity: &str,
    token: Option<String>,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    require_root()?;
    let root = crate::cgroup::v2_root().map_err(|e| anyhow::anyhow!("{e}"))?;
    let home = crate::cgroup::current(&root, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = crate::cgroup::create_transient(&root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cleanup = |tagged: bool| {
        let dir = dir.clone();
        let home = home.clone();
        async move {
            let _ = crate::cgroup::move_into(&home, std::process::id());
            if tagged && let Err(e) = admin::request(socket, &Request::Untag { cgroup: dir.clone() }).await {
                eprintln!("masker: untagging {}: {e:#}", dir.display());
            }
            if let Err(e) = crate::cgroup::remove(&dir) {
                eprintln!("masker: {e}");
            }
        }
    };
    if let Err(e) =
        admin::request(socket, &Request::Tag { cgroup: dir.clone(), identity: identity.to_string(), token }).await
    {
        cleanup(false).await;
        return Err(e);
    }
    if let Err(e) = crate::cgroup::move_into(&dir, std::process::id()) {
        cleanup(true).await;
        return Err(anyhow::anyhow!("{e}"));
    }
    let status = tokio::process::Command::new(&command[0]).args(&command[1..]).status().await;
    cleanup(true).await;
    let status = status.with_context(|| format!("cannot run {:?}", command[0]))?;
    let code = match status.code() {
        Some(c) => c,
        None => 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
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
        let sessions: Vec<crate::registry::SessionSnapshot> = serde_json::from_value(value)?;
        print!("{}", render_sessions(&sessions));
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
                print!("{}", render_approvals(&pending));
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

fn render_approvals(pending: &[crate::approvals::PendingApproval]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if pending.is_empty() {
        let _ = writeln!(o, "  (none)");
        return o;
    }
    let _ =
        writeln!(o, "  {:>4}  {:>7}  {:<16} {:<16} {:>9}  STATEMENT", "ID", "SESSION", "IDENTITY", "RULE", "WAITING");
    for p in pending {
        let _ = writeln!(
            o,
            "  {:>4}  {:>7}  {:<16} {:<16} {:>4}/{:<4}  {}",
            p.id,
            p.session,
            p.identity.as_deref().unwrap_or("-"),
            p.rule,
            format!("{}s", p.waiting_secs),
            format!("{}s", p.timeout_secs),
            p.statement
        );
    }
    o
}

fn render_sessions(sessions: &[crate::registry::SessionSnapshot]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if sessions.is_empty() {
        let _ = writeln!(o, "  (none)");
        return o;
    }
    let _ = writeln!(
        o,
        "  {:>4}  {:<16} {:>7}  {:<22} {:<12} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "ID", "IDENTITY", "PID", "DESTINATION", "USER", "AGE", "BYTES IN", "BYTES OUT", "ROWS", "MASKED"
    );
    for x in sessions {
        let by_action: Vec<String> = x.masked.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            o,
            "  {:>4}  {:<16} {:>7}  {:<22} {:<12} {:>5}s {:>10} {:>10} {:>8} {:>8}  {}",
            x.id,
            x.identity.as_deref().unwrap_or("-"),
            x.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            x.destination,
            x.user.as_deref().unwrap_or("-"),
            x.age_secs,
            x.bytes_from_client,
            x.bytes_to_client,
            x.rows,
            x.masked_cells,
            by_action.join(" ")
        );
    }
    o
}

fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "masker agent {} (pid {}, up {}s)", s.version, s.pid, s.uptime_secs);
    let _ = writeln!(o, "listening:  {}", s.listen.join(", "));
    let _ = writeln!(o, "programs:   {} (pinned under {})", s.programs.join(", "), s.pin_dir);
    let _ = writeln!(o, "policy:     {}", s.policy.as_deref().unwrap_or("none (relay without masking)"));
    let _ = writeln!(o, "\nTARGETS");
    for t in &s.targets {
        let _ = writeln!(o, "  {:<30} {}", t.target, t.addresses.join(", "));
    }
    let _ = writeln!(o, "\nTAGGED CGROUPS");
    if s.tags.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for t in &s.tags {
        let path = t.path.as_deref().unwrap_or("(cgroup removed)");
        let _ = writeln!(o, "  {:<20} {:>10}  {}", t.identity, t.cgroup_id, path);
    }
    if !s.credentials.is_empty() {
        let _ = writeln!(o, "\nINJECTED CREDENTIALS (the agent logs in; clients send no password)");
        for c in &s.credentials {
            let identity = c.identity.as_deref().unwrap_or("*");
            let _ = writeln!(o, "  {:<30} {:<16} user {:<14} {}", c.target, identity, c.user, c.source);
        }
    }
    let _ = writeln!(o, "\nSESSIONS");
    o.push_str(&render_sessions(&s.sessions));
    if !s.identities.is_empty() {
        let _ = writeln!(o, "\nIDENTITIES");
        let _ = writeln!(
            o,
            "  {:<20} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8}  MASKED BY ACTION",
            "IDENTITY", "SESSIONS", "STATEMENTS", "ERRORS", "ROWS", "MASKED", "DENIALS"
        );
        for (id, c) in &s.identities {
            let by_action: Vec<String> = c.masked.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(
                o,
                "  {:<20} {:>8} {:>10} {:>8} {:>10} {:>8} {:>8}  {}",
                if id.is_empty() { "-" } else { id },
                c.sessions,
                c.statements,
                c.statement_errors,
                c.rows,
                c.masked_cells,
                c.denials,
                by_action.join(" ")
            );
        }
    }
    let _ = writeln!(o, "\nPENDING APPROVALS");
    o.push_str(&render_approvals(&s.approvals));
    let c = &s.counters;
    let _ = writeln!(
        o,
        "\nCOUNTERS\n  connections {}  refused {}  protocol errors {}  upstream errors {}  cancels {}\n  rows {}  masked cells {}",
        c.connections,
        c.sessions_refused,
        c.protocol_errors,
        c.upstream_errors,
        c.cancel_requests,
        c.rows,
        c.masked_cells
    );
    o
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
