//! Connecting like `psql`: `-h`, `-p`, `-U`, `-d` (a database name or a
//! connection string: `postgresql://...` or `key=value ...`), the `PGHOST`,
//! `PGPORT`, `PGUSER`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT` and
//! `PGCONNECT_TIMEOUT` variables, a Unix socket directory as host.
//!
//! The password is never taken from the command line: it comes from
//! `PGPASSWORD`, the password file (`PGPASSFILE`, default `~/.pgpass`, used
//! only when no group or other access, as libpq does), or a connection
//! string held in an environment variable (`--url-env DATABASE_URL`). A
//! connection string given with `-d` that carries a password is refused.
//!
//! TLS (`sslmode` `disable`, `prefer` (default), `require`, `verify-full`)
//! is negotiated by the agent's own upstream TLS code ([`crate::tls`]);
//! Unix sockets never use TLS, as with libpq.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::DiscoverError;
use crate::session::tls::UpstreamTlsMode;

/// An options error with `message`.
fn bad(message: impl Into<String>) -> DiscoverError {
    DiscoverError::Options(message.into())
}

/// Connection options, as `psql` takes them.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Database server host, or a Unix socket directory (default: the
    /// socket in /var/run/postgresql if there is one, else localhost).
    #[arg(short = 'h', long, env = "PGHOST")]
    pub host: Option<String>,
    /// Database server port.
    #[arg(short = 'p', long, env = "PGPORT")]
    pub port: Option<u16>,
    /// Database user (default: the login name).
    #[arg(short = 'U', long, env = "PGUSER")]
    pub username: Option<String>,
    /// Database name, or a connection string (`postgresql://user@host/db`,
    /// `host=... dbname=...`) without a password.
    #[arg(short = 'd', long, env = "PGDATABASE")]
    pub dbname: Option<String>,
    /// Environment variable holding a connection string (it may carry the
    /// password, e.g. DATABASE_URL); its settings win over the options above.
    #[arg(long, value_name = "VAR")]
    pub url_env: Option<String>,
    /// TLS towards the server: disable, prefer, require or verify-full.
    #[arg(long, env = "PGSSLMODE")]
    pub sslmode: Option<String>,
    /// CA bundle (PEM) that verify-full checks the server's certificate
    /// against (default: the system bundle).
    #[arg(long, env = "PGSSLROOTCERT")]
    pub sslrootcert: Option<PathBuf>,
    /// Seconds to wait for the connection.
    #[arg(long, env = "PGCONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
}

/// A secret that never prints.
#[derive(Clone, Default)]
struct Secret(Option<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Secret(..)" } else { "None" })
    }
}

/// Where and as whom to connect, resolved from options, environment and
/// connection string.
#[derive(Debug, Clone)]
pub struct Target {
    /// A host name or address, or a socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub sslmode: UpstreamTlsMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Duration,
    password: Secret,
}

impl Target {
    /// Resolves the options; the password is looked up here.
    pub fn from_args(args: &ConnectionArgs) -> Result<Target, DiscoverError> {
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                settings.insert(k.to_string(), v.clone());
            }
        };
        put("host", &args.host);
        put("port", &args.port.map(|p| p.to_string()));
        put("user", &args.username);
        put("sslmode", &args.sslmode);
        put("sslrootcert", &args.sslrootcert.as_ref().map(|p| p.display().to_string()));
        match &args.dbname {
            Some(d) if is_conninfo(d) => {
                let parsed = parse_conninfo(d).map_err(|e| bad(format!("-d: {e}")))?;
                if parsed.contains_key("password") {
                    return Err(bad("-d: the connection string carries a password; keep it off the command line \
                         (PGPASSWORD, ~/.pgpass, or --url-env VAR with the string in VAR)"));
                }
                settings.extend(parsed);
            }
            Some(d) => {
                settings.insert("dbname".into(), d.clone());
            }
            None => {}
        }
        if let Some(var) = &args.url_env {
            let text = std::env::var(var).map_err(|_| bad(format!("--url-env: {var} is not set")))?;
            settings.extend(parse_conninfo(&text).map_err(|e| bad(format!("--url-env {var}: {e}")))?);
        }

        let port = match settings.get("port") {
            Some(p) => p.parse().map_err(|_| bad(format!("invalid port {p:?}")))?,
            None => 5432,
        };
        let host = match settings.get("host") {
            Some(h) if !h.is_empty() => h.split(',').next().unwrap_or(h).to_string(),
            _ => {
                let socket_dir = "/var/run/postgresql";
                if Path::new(socket_dir).join(format!(".s.PGSQL.{port}")).exists() {
                    socket_dir.to_string()
                } else {
                    "localhost".to_string()
                }
            }
        };
        let user = match settings.get("user") {
            Some(u) => u.clone(),
            None => ["USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
                .ok_or_else(|| bad("no database user: pass -U USER (or set PGUSER)"))?,
        };
        let dbname = settings.get("dbname").cloned().unwrap_or_else(|| user.clone());
        let sslmode = match settings.get("sslmode").map(String::as_str) {
            None => UpstreamTlsMode::Prefer,
            Some("allow") => UpstreamTlsMode::Prefer,
            Some("verify-ca") => {
                return Err(bad("sslmode verify-ca is not supported; use verify-full (it checks the host name too)"));
            }
            Some(m) => m.parse().map_err(|e: crate::session::tls::UnknownTlsMode| bad(format!("sslmode: {e}")))?,
        };
        let connect_timeout = Duration::from_secs(match settings.get("connect_timeout") {
            Some(t) => t.parse().map_err(|_| bad(format!("invalid connect_timeout {t:?}")))?,
            None => args.connect_timeout,
        });
        let mut target = Target {
            host,
            port,
            user,
            dbname,
            sslmode,
            sslrootcert: settings.get("sslrootcert").map(PathBuf::from),
            connect_timeout: connect_timeout.max(Duration::from_secs(1)),
            password: Secret(settings.get("password").cloned()),
        };
        if target.password.0.is_none() {
            target.password = Secret(
                std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()).or_else(|| target.password_from_file()),
            );
        }
        Ok(target)
    }

    fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `user@host:port/dbname`, for reports (no password).
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// The password from the password file, if a line matches.
    fn password_from_file(&self) -> Option<String> {
        let path = match std::env::var_os("PGPASSFILE") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
        };
        let meta = std::fs::metadata(&path).ok()?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!("password file {} has group or other access; ignored (chmod 0600 it)", path.display());
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let host = if self.is_socket() { "localhost" } else { self.host.as_str() };
        pgpass_lookup(&text, host, self.port, &self.dbname, &self.user)
    }

    /// Connects, and makes the session read-only.
    pub async fn connect(&self) -> Result<Client, DiscoverError> {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("masker discover")
            .connect_timeout(self.connect_timeout)
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(p) = &self.password.0 {
            config.password(p);
        }
        let what = self.describe();
        let secs = self.connect_timeout.as_secs();
        let timeout = |what: String| DiscoverError::Timeout { what, secs };
        let connected = if self.is_socket() {
            config.host_path(&self.host).port(self.port);
            let (client, connection) = tokio::time::timeout(self.connect_timeout, config.connect(NoTls))
                .await
                .map_err(|_| timeout(format!("connecting to {what}")))?
                .map_err(|e| login_error(e, &what))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        } else {
            let address = format!("{}:{}", self.host, self.port);
            let stream = tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| timeout(format!("connecting to {address}")))?
            .map_err(|source| DiscoverError::Connect { what: address, source })?;
            let _ = stream.set_nodelay(true);
            let tls = crate::session::tls::TargetTls::new(&self.host, self.sslmode, self.sslrootcert.as_deref())?;
            let upstream = crate::session::tls::negotiate_upstream(stream, &tls).await?;
            let (client, connection) = tokio::time::timeout(self.connect_timeout, config.connect_raw(upstream, NoTls))
                .await
                .map_err(|_| timeout(format!("logging in to {what}")))?
                .map_err(|e| login_error(e, &what))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        };
        connected.batch_execute("SET default_transaction_read_only = on").await.map_err(|e| DiscoverError::Login {
            what: what.clone(),
            message: format!("setting up the session: {e}"),
        })?;
        Ok(connected)
    }
}

fn login_error(e: tokio_postgres::Error, what: &str) -> DiscoverError {
    let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    if e.as_db_error().is_none() && cause.contains("password missing") {
        return DiscoverError::PasswordMissing(what.to_string());
    }
    let message = if cause.is_empty() || e.as_db_error().is_some() { e.to_string() } else { format!("{e}: {cause}") };
    DiscoverError::Login { what: what.to_string(), message }
}

/// Whether `-d`'s value is a connection string rather than a name.
fn is_conninfo(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://") || s.contains('=')
}

/// The settings of a connection string (URI or `key=value` list).
pub fn parse_conninfo(s: &str) -> Result<BTreeMap<String, String>, String> {
    let s = s.trim();
    let mut out = BTreeMap::new();
    let rest = s.strip_prefix("postgresql://").or_else(|| s.strip_prefix("postgres://"));
    let Some(rest) = rest else {
        return parse_key_values(s);
    };
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.insert("user".into(), percent_decode(user)?);
            }
            if let Some(p) = password {
                out.insert("password".into(), percent_decode(p)?);
            }
            hostspec
        }
        None => authority,
    };
    let first = hostspec.split(',').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = first.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| "unterminated [ in the host".to_string())?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match first.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (first.to_string(), None),
        }
    };
    if !host.is_empty() {
        out.insert("host".into(), percent_decode(&host)?);
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.insert("port".into(), p);
    }
    if !path.is_empty() {
        out.insert("dbname".into(), percent_decode(path)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("parameter {pair:?} has no value"))?;
        insert_known(&mut out, &percent_decode(k)?, percent_decode(v)?);
    }
    Ok(out)
}

fn parse_key_values(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected key=value in the connection string after {key:?}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| "unterminated quoted value".to_string())?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| "dangling \\ in the connection string".to_string())?);
                } else {
                    value.push(c);
                }
            }
        }
        insert_known(&mut out, &key, value);
    }
}

/// Keeps the settings discover uses; others (application_name, options,
/// an ORM's own `schema=`) are ignored with a warning naming the key.
fn insert_known(out: &mut BTreeMap<String, String>, key: &str, value: String) {
    let key = match key {
        "dbname" | "host" | "port" | "user" | "password" | "sslmode" | "sslrootcert" | "connect_timeout" => key,
        "hostaddr" => "host",
        other => {
            tracing::warn!("connection string: parameter {other} is ignored");
            return;
        }
    };
    out.insert(key.to_string(), value);
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| "bad %-escape in the connection string".to_string())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape in the connection string".to_string())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the connection string is not UTF-8 once decoded".to_string())
}

/// The password of the first `.pgpass` line matching (`*` matches anything;
/// `\:` and `\\` escape).
fn pgpass_lookup(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.push(chars.next().unwrap_or('\\')),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let ok = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if ok(&fields[0], host) && ok(&fields[1], &port) && ok(&fields[2], dbname) && ok(&fields[3], user) {
            return Some(fields[4].clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris_and_key_values() {
        let m = parse_conninfo("postgresql://app:s%3Acret@db.internal:6432/shop?sslmode=require&schema=x").unwrap();
        assert_eq!(m["user"], "app");
        assert_eq!(m["password"], "s:cret");
        assert_eq!(m["host"], "db.internal");
        assert_eq!(m["port"], "6432");
        assert_eq!(m["dbname"], "shop");
        assert_eq!(m["sslmode"], "require");
        assert!(!m.contains_key("schema"));
        let m = parse_conninfo("postgres://[::1]:5433/db").unwrap();
        assert_eq!((m["host"].as_str(), m["port"].as_str()), ("::1", "5433"));
        let m = parse_conninfo("host=/tmp port = 5 dbname='my db' user=o\\'k").unwrap();
        assert_eq!(m["host"], "/tmp");
        assert_eq!(m["port"], "5");
        assert_eq!(m["dbname"], "my db");
        assert_eq!(m["user"], "o'k");
        assert!(parse_conninfo("host").is_err());
    }

    #[test]
    fn a_password_on_the_command_line_is_refused() {
        let args = ConnectionArgs {
            host: None,
            port: None,
            username: Some("u".into()),
            dbname: Some("postgresql://u:pw@h/db".into()),
            url_env: None,
            sslmode: None,
            sslrootcert: None,
            connect_timeout: 10,
        };
        let e = Target::from_args(&args).unwrap_err().to_string();
        assert!(e.contains("carries a password") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn pgpass_lines() {
        let text = "# comment\nother:5432:*:u:no\nlocalhost:*:shop:u:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(pgpass_lookup(text, "localhost", 5432, "shop", "u").as_deref(), Some("pa:ss"));
        assert_eq!(pgpass_lookup(text, "db", 1, "x", "y").as_deref(), Some("fallback"));
        assert_eq!(pgpass_lookup("h:1:d:u:p", "h", 2, "d", "u"), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let t = Target {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            dbname: "d".into(),
            sslmode: UpstreamTlsMode::Disable,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(1),
            password: Secret(Some("hunter2".into())),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(t.describe(), "u@h:1/d");
    }
}
