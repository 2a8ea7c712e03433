//! The agent's configuration file (`masker agent --config FILE`), TOML.
//!
//! ```toml
//! listen = "127.0.0.1:15432"        # where redirected connections land (IPv4)
//! listen_v6 = "[::1]:15432"         # optional, for IPv6 targets
//! admin_socket = "/run/masker/admin.sock"
//! policy = "/etc/masker/policy.toml"
//! pin_dir = "/sys/fs/bpf/masker"
//! targets = [
//!     "db.internal:5432",                                  # plain text to the server
//!     { address = "10.0.0.5:5432", tls = "verify-full", ca_file = "/etc/masker/db-ca.pem" },
//!     "172.16.0.0/12:5432",                                # a network: e.g. service containers
//!     "*:6432",                                            # every address on a port
//! ]
//! state_dir = "/var/lib/masker"     # masker's CA (TLS towards clients)
//! target_refresh_secs = 30
//!
//! metrics_listen = "127.0.0.1:9187" # optional Prometheus endpoint
//!
//! [limits]                          # optional; see crate::daemon::limits
//! partial_message_timeout_secs = 30
//! memory_budget_mib = 256
//!
//! [audit]                           # optional; see crate::audit for the schema
//! file = "/var/log/masker/audit.jsonl"
//! max_bytes = 104857600
//! keep = 5
//! stdout = false
//!
//! [catalog]                         # how the agent reads column names
//! user = "masker"
//! password_env = "MASKER_CATALOG_PASSWORD"   # or password_file = "..."
//!
//! [[issuer]]                        # OIDC token issuers; see crate::identity
//! issuer = "https://token.actions.githubusercontent.com"
//! audience = "masker"
//! jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
//!
//! [docker]                          # optional: tag containers by label
//! socket = "/var/run/docker.sock"
//! label = "masker.identity"         # its value is the identity
//!
//! [[credential]]                    # the agent logs in for the workload
//! target = "db.internal:5432"       # a target as `targets` names it
//! identity = "ci-*"                 # optional glob; absent: every identity
//! user = "app"                      # the database user the client must name
//! password_file = "/etc/masker/app.pw"   # root-owned, mode 0600; or password_env = "VAR"
//! ```
//!
//! See [`crate::session::auth`] for what a client sends when a credential
//! applies.

use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::addr::{AddrError, TargetAddr};
use crate::plan::catalog::CatalogAccess;
use crate::session::auth::{self, CredentialError, Credentials, SecretSource};

/// Default admin socket path.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/masker/admin.sock";
/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/masker";

/// The agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Listener that redirected IPv4 connections land on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddrV4,
    /// Listener for redirected IPv6 connections.
    #[serde(default)]
    pub listen_v6: Option<SocketAddrV6>,
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Policy file; without one the agent relays without masking.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Databases whose connections are redirected: `"host:port"` or a
    /// table `{ address = "host:port", tls = "...", ca_file = "..." }`.
    pub targets: Vec<TargetConfig>,
    /// Where masker keeps its CA (key readable by root only).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often target names are resolved again.
    #[serde(default = "default_refresh")]
    pub target_refresh_secs: u64,
    #[serde(default)]
    pub catalog: Option<CatalogConfig>,
    /// Trusted OIDC token issuers (`[[issuer]]`) for `masker tag --token-file`.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<crate::identity::IssuerConfig>,
    /// Audit trail sinks (`[audit]`); none by default.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Prometheus endpoint (`GET /metrics`), e.g. "127.0.0.1:9187"; off by default.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Credentials the agent logs in with (`[[credential]]`), tried in order.
    #[serde(default, rename = "credential")]
    pub credentials: Vec<CredentialConfig>,
    /// The Docker events watcher (`[docker]`); off without it.
    #[serde(default)]
    pub docker: Option<DockerConfig>,
    /// Timeouts and memory limits (`[limits]`); defaults for what is absent.
    #[serde(default)]
    pub limits: super::limits::LimitsConfig,
}

/// `[docker]`: tag containers that carry the identity label when they are
/// created or start, untag them when they stop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The daemon's API socket.
    #[serde(default = "default_docker_socket")]
    pub socket: PathBuf,
    /// The label whose value is the identity (`masker.identity=ci-job`).
    #[serde(default = "default_docker_label")]
    pub label: String,
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from(crate::interception::docker::DEFAULT_SOCKET)
}

fn default_docker_label() -> String {
    "masker.identity".to_string()
}

/// One `[[credential]]`: for sessions towards `target` of an identity
/// matching `identity`, the agent logs in as `user` with the password from
/// `password_file` or `password_env` (exactly one). `Debug` shows where the
/// password is, never the password (it is read by
/// [`AgentConfig::load_credentials`], not stored here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub target: String,
    #[serde(default)]
    pub identity: Option<String>,
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

impl CredentialConfig {
    /// `credential N (target T, user U)`, as errors name it.
    fn name(&self, index: usize) -> String {
        format!("credential {} (target {}, user {})", index + 1, self.target, self.user)
    }
}

/// One target: where it is and how masker talks TLS to its server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "TargetSpec")]
pub struct TargetConfig {
    /// `host:port`.
    pub address: TargetAddr,
    pub tls: crate::session::tls::UpstreamTlsMode,
    /// CA bundle (PEM) for `tls = "verify-full"`; the system bundle without it.
    pub ca_file: Option<PathBuf>,
}

impl TargetConfig {
    /// The `host:port` of the target.
    pub fn as_str(&self) -> &str {
        self.address.as_str()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetSpec {
    Address(String),
    Table(TargetTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetTable {
    address: String,
    #[serde(default)]
    tls: crate::session::tls::UpstreamTlsMode,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// A target that is not `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("target {0}")]
pub struct TargetError(#[from] AddrError);

impl TryFrom<TargetSpec> for TargetConfig {
    type Error = TargetError;
    fn try_from(spec: TargetSpec) -> Result<Self, TargetError> {
        Ok(match spec {
            TargetSpec::Address(address) => {
                TargetConfig { address: TargetAddr::parse(&address)?, tls: Default::default(), ca_file: None }
            }
            TargetSpec::Table(t) => {
                TargetConfig { address: TargetAddr::parse(&t.address)?, tls: t.tls, ca_file: t.ca_file }
            }
        })
    }
}

/// Credentials of the agent's own catalog connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub user: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl CatalogConfig {
    /// Reads the password from its source.
    pub fn access(&self) -> Result<CatalogAccess, ConfigError> {
        let password = match (&self.password_env, &self.password_file) {
            (Some(var), _) => Some(std::env::var(var).map_err(|_| ConfigError::CatalogEnv(var.clone()))?),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|source| ConfigError::CatalogFile { path: file.clone(), source })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(CatalogAccess { user: self.user.clone(), password })
    }
}

fn default_listen() -> SocketAddrV4 {
    SocketAddrV4::new([127, 0, 0, 1].into(), 15432)
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(crate::session::tls::DEFAULT_STATE_DIR)
}
fn default_refresh() -> u64 {
    30
}

/// A configuration that cannot be used: the file, where in it and what is
/// wrong (never a password).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not a valid configuration.
    #[error("{origin}{}: {message}", at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid {
        /// The file (or origin name).
        origin: String,
        /// 1-based line and column, when the problem has a place.
        at: Option<(usize, usize)>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A `[[credential]]`'s password cannot be read.
    #[error("{origin}: {credential}: {source}")]
    Credential { origin: String, credential: String, source: CredentialError },
    /// `[catalog]`'s password cannot be read.
    #[error("catalog.password_env: {0} is not set")]
    CatalogEnv(String),
    /// `[catalog]`'s password file cannot be read.
    #[error("catalog.password_file {}: {source}", path.display())]
    CatalogFile { path: PathBuf, source: std::io::Error },
}

impl AgentConfig {
    /// Reads and validates `path`; errors name the file, line and field.
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a configuration; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
        let invalid = |at: Option<(usize, usize)>, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            at,
            message,
        };
        let config: AgentConfig = toml::from_str(text)
            .map_err(|e| invalid(e.span().map(|s| line_col(text, s.start)), e.message().to_string()))?;
        if config.targets.is_empty() {
            return Err(invalid(
                None,
                "`targets` is empty; list the databases to intercept as \"host:port\"".to_string(),
            ));
        }
        for t in &config.targets {
            if crate::interception::NetPort::looks_like_network(t.as_str()) {
                crate::interception::NetPort::parse_target(t.as_str())
                    .map_err(|e| invalid(None, format!("target {e}")))?;
                if t.tls == crate::session::tls::UpstreamTlsMode::VerifyFull {
                    return Err(invalid(
                        None,
                        format!(
                            "target {:?} is a network: tls = \"verify-full\" needs a host name to verify; use \
                             \"require\" or name the host",
                            t.as_str()
                        ),
                    ));
                }
            }
        }
        for (i, c) in config.credentials.iter().enumerate() {
            let name = c.name(i);
            let problem = |what: &str| Err(invalid(None, format!("{name}: {what}")));
            if !config.targets.iter().any(|t| t.as_str().eq_ignore_ascii_case(&c.target)) {
                let known: Vec<&str> = config.targets.iter().map(TargetConfig::as_str).collect();
                return problem(&format!(
                    "target {:?} is not one of the configured targets ({})",
                    c.target,
                    known.join(", ")
                ));
            }
            if c.user.is_empty() {
                return problem("`user` is empty");
            }
            if c.identity.as_deref() == Some("") {
                return problem("`identity` is empty; remove it to match every identity");
            }
            match (&c.password_file, &c.password_env) {
                (Some(_), Some(_)) => return problem("set one of `password_file` and `password_env`, not both"),
                (None, None) => return problem("set `password_file` or `password_env`"),
                _ => {}
            }
        }
        Ok(config)
    }

    /// Reads the password of every `[[credential]]` (a file must be a
    /// regular file owned by root or the agent's user and not accessible to
    /// group or others; a variable must be set). Errors name the file, the
    /// credential and what is wrong, never a password.
    pub fn load_credentials(&self, origin: &str) -> Result<Credentials, ConfigError> {
        let mut list = Vec::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let source = match (&c.password_file, &c.password_env) {
                (Some(f), _) => SecretSource::File(f.clone()),
                (None, Some(v)) => SecretSource::Env(v.clone()),
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_string(),
                        at: None,
                        message: format!("{}: set `password_file` or `password_env`", c.name(i)),
                    });
                }
            };
            let credential = auth::load(&c.target, c.identity.as_deref(), &c.user, source).map_err(|source| {
                ConfigError::Credential { origin: origin.to_string(), credential: c.name(i), source }
            })?;
            list.push(credential);
        }
        Ok(Credentials::new(list))
    }
}

/// 1-based line and column of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The `[audit]` section of the agent configuration.
///
/// ```toml
/// [audit]
/// file = "/var/log/masker/audit.jsonl"
/// max_bytes = 104857600   # rotate at 100 MiB
/// keep = 5                # audit.jsonl.1 ... audit.jsonl.5
/// stdout = false
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub keep: Option<u32>,
    #[serde(default)]
    pub stdout: bool,
}

impl AuditConfig {
    /// The settings this section describes.
    pub fn settings(&self) -> crate::audit::AuditSettings {
        crate::audit::AuditSettings {
            file: self.file.clone(),
            max_bytes: self.max_bytes.unwrap_or(crate::audit::AuditSettings::DEFAULT_MAX_BYTES),
            keep: self.keep.unwrap_or(crate::audit::AuditSettings::DEFAULT_KEEP),
            stdout: self.stdout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_agent_config_parses() {
        let c = crate::daemon::config::AgentConfig::parse(include_str!("../../../packaging/agent.toml"), "agent.toml")
            .unwrap();
        let audit = c.audit.unwrap().settings();
        assert_eq!(audit.keep, 10);
        assert!(audit.file.is_some() && c.metrics_listen.is_some());
    }

    #[test]
    fn parses_minimal_and_full() {
        let c = AgentConfig::parse("targets = [\"db:5432\"]\n", "a.toml").unwrap();
        assert_eq!(c.listen.port(), 15432);
        assert_eq!(c.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        let c = AgentConfig::parse(
            "listen = \"127.0.0.1:7000\"\nlisten_v6 = \"[::1]:7000\"\ntargets = [\"[::1]:5432\"]\n\
             [catalog]\nuser = \"masker\"\npassword_env = \"X\"\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.catalog.unwrap().user, "masker");
    }

    #[test]
    fn targets_are_strings_or_tables() {
        let c = AgentConfig::parse(
            "targets = [\"db:5432\", { address = \"10.0.0.5:5432\", tls = \"verify-full\", ca_file = \"/ca.pem\" }]\n",
            "a.toml",
        )
        .unwrap();
        assert_eq!(c.targets[0].address, "db:5432");
        assert_eq!(c.targets[0].tls, crate::session::tls::UpstreamTlsMode::Disable);
        assert_eq!(c.targets[1].tls, crate::session::tls::UpstreamTlsMode::VerifyFull);
        assert_eq!(c.targets[1].ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/masker"));
        assert!(AgentConfig::parse("targets = [{ address = \"db:1\", tls = \"maybe\" }]\n", "a.toml").is_err());
    }

    #[test]
    fn issuers_take_exactly_one_key_source() {
        let issuer = |body: &str| {
            AgentConfig::parse(
                &format!("targets = [\"db:5432\"]\n[[issuer]]\nissuer = \"https://ci\"\naudience = \"m\"\n{body}"),
                "agent.toml",
            )
        };
        use crate::identity::JwksSource;
        let c = issuer("jwks_url = \"https://ci/.well-known/jwks\"\njwks_ca_file = \"/ca.pem\"\n").unwrap();
        let i = &c.issuers[0];
        assert_eq!(
            i.jwks,
            JwksSource::Url { url: "https://ci/.well-known/jwks".into(), ca_file: Some(PathBuf::from("/ca.pem")) }
        );
        assert_eq!((i.jwks_cache_secs, i.jwks_min_fetch_interval_secs), (600, 30));
        assert_eq!(i.audit_claims, ["sub", "repository", "ref"]);
        let c = issuer("jwks_file = \"/j.json\"\naudit_claims = [\"job_id\"]\njwks_cache_secs = 60\n").unwrap();
        assert_eq!(c.issuers[0].jwks, JwksSource::File("/j.json".into()));
        assert_eq!(c.issuers[0].audit_claims, ["job_id"]);

        let e = |body: &str| issuer(body).unwrap_err().to_string();
        assert_eq!(
            e("jwks_file = \"/j\"\njwks_url = \"https://ci/j\"\n"),
            "agent.toml:2:1: [[issuer]] \"https://ci\": set either `jwks_file` or `jwks_url`, not both"
        );
        assert_eq!(
            e(""),
            "agent.toml:2:1: [[issuer]] \"https://ci\": needs `jwks_file` (a JWKS file) or `jwks_url` (https://...)"
        );
        assert_eq!(
            e("jwks_url = \"http://ci/jwks\"\n"),
            "agent.toml:2:1: [[issuer]] \"https://ci\": jwks_url \"http://ci/jwks\" is not https://; keys are fetched over HTTPS only"
        );
        assert_eq!(
            e("jwks_file = \"/j\"\njwks_ca_file = \"/ca.pem\"\n"),
            "agent.toml:2:1: [[issuer]] \"https://ci\": `jwks_ca_file` applies only to `jwks_url`"
        );
        assert_eq!(
            e("jwks_file = \"/j\"\naudit_claims = [\"ref\", \"email\"]\n"),
            "agent.toml:2:1: [[issuer]] \"https://ci\": audit_claims: \"email\" describes a person; audit events carry workload metadata only"
        );
        assert!(
            e("jwks_url = \"https:///x\"\n").contains("jwks_url \"https:///x\""),
            "{}",
            e("jwks_url = \"https:///x\"\n")
        );
        assert!(e("jwks_file = \"/j\"\njwks_uri = \"x\"\n").contains("unknown field `jwks_uri`"));
    }

    #[test]
    fn credentials_are_validated_at_load() {
        let base = "targets = [\"db:5432\"]\n[[credential]]\n";
        let e = |body: &str| AgentConfig::parse(&format!("{base}{body}"), "agent.toml").unwrap_err().to_string();
        assert_eq!(
            e("target = \"other:5432\"\nuser = \"app\"\npassword_env = \"X\"\n"),
            "agent.toml: credential 1 (target other:5432, user app): target \"other:5432\" is not one of the \
             configured targets (db:5432)"
        );
        assert_eq!(
            e("target = \"db:5432\"\nuser = \"app\"\npassword_env = \"X\"\npassword_file = \"/f\"\n"),
            "agent.toml: credential 1 (target db:5432, user app): set one of `password_file` and `password_env`, \
             not both"
        );
        assert_eq!(
            e("target = \"db:5432\"\nuser = \"app\"\n"),
            "agent.toml: credential 1 (target db:5432, user app): set `password_file` or `password_env`"
        );
        assert!(e("target = \"db:5432\"\npassword_env = \"X\"\n").contains("missing field `user`"));
        let c = AgentConfig::parse(
            &format!("{base}target = \"db:5432\"\nidentity = \"ci-*\"\nuser = \"app\"\npassword_env = \"X\"\n"),
            "agent.toml",
        )
        .unwrap();
        assert_eq!(c.credentials[0].identity.as_deref(), Some("ci-*"));
    }

    #[test]
    fn credential_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        let text = format!(
            "targets = [\"db:5432\"]\n[[credential]]\ntarget = \"db:5432\"\nuser = \"app\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let config = AgentConfig::parse(&text, "agent.toml").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = config.load_credentials("agent.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "agent.toml: credential 1 (target db:5432, user app): password_file {f} has mode 0644; it must not \
                 be accessible to group or others (chmod 600 {f})",
                f = file.display()
            )
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = config.load_credentials("agent.toml").unwrap();
        let c = creds.find("db:5432", Some("anyone")).unwrap();
        assert_eq!(c.secret().expose(), "s3cret-pw");
        assert!(!format!("{creds:?} {config:?}").contains("s3cret"), "secret in Debug output");
        let e = AgentConfig::parse(&text.replace("pw\"", "missing\""), "agent.toml")
            .unwrap()
            .load_credentials("agent.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing: No such file or directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh private directory under the system temp dir.
    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("masker-config-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = AgentConfig::parse("targets = [\"db:5432\"]\nlisen = \"x\"\n", "agent.toml").unwrap_err();
        assert!(e.to_string().starts_with("agent.toml:2:1: unknown field `lisen`"), "{e}");
        let e = AgentConfig::parse("targets = [\"nohostport\"]\n", "agent.toml").unwrap_err();
        assert!(e.to_string().contains("not \"host:port\""), "{e}");
        let e = AgentConfig::parse("targets = []\n", "agent.toml").unwrap_err();
        assert!(e.to_string().contains("targets"), "{e}");
    }
}
