//! The secrets of injected credentials: where each password comes from,
//! the checks on its file, and the store that rotates them on reload.

use std::fmt;
use std::path::PathBuf;

use std::sync::Arc;

use crate::addr::{AddrError, TargetAddr};

/// A database password the agent holds. `Debug` prints nothing of it and
/// there is no `Display`: the only way out is [`Secret::expose`], used where
/// the authentication exchange needs the bytes.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    #[cfg(test)]
    pub fn new(password: String) -> Secret {
        Secret(password)
    }

    /// The password, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a credential's password comes from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the password (one line; a trailing newline is
    /// ignored). Must be a regular file owned by root or by the agent's
    /// user, with no permission bits for group or others.
    File(PathBuf),
    /// An environment variable of the agent's process.
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "password_file {}", p.display()),
            SecretSource::Env(v) => write!(f, "password_env {v}"),
        }
    }
}

/// Why a secret could not be read. Names the source, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("password_file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("password_file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "password_file {path} is owned by uid {owner}; it must be owned by root or by the agent's user (uid {own})"
    )]
    Owner { path: PathBuf, owner: u32, own: u32 },
    #[error(
        "password_file {path} has mode {mode:04o}; it must not be accessible to group or others (chmod 600 {path})"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("password_file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("password_env {var} is not set (or not UTF-8) in the agent's environment")]
    EnvUnset { var: String },
    #[error("password_env {var} is empty")]
    EmptyEnv { var: String },
}

impl SecretSource {
    /// Reads the password, checking a file's type, owner and mode first.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if v.is_empty() => Err(SecretError::EmptyEnv { var: var.clone() }),
                Ok(v) => Ok(Secret(v)),
                Err(_) => Err(SecretError::EnvUnset { var: var.clone() }),
            },
            SecretSource::File(path) => {
                use std::os::unix::fs::MetadataExt;
                let unreadable = |source| SecretError::Unreadable { path: path.clone(), source };
                // symlink_metadata: a link to a file elsewhere is refused
                // rather than checked by what it points at.
                let meta = std::fs::symlink_metadata(path).map_err(unreadable)?;
                if !meta.file_type().is_file() {
                    return Err(SecretError::NotAFile { path: path.clone() });
                }
                let own = crate::own_uid();
                if meta.uid() != 0 && Some(meta.uid()) != own {
                    return Err(SecretError::Owner { path: path.clone(), owner: meta.uid(), own: own.unwrap_or(0) });
                }
                let mode = meta.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(SecretError::Mode { path: path.clone(), mode });
                }
                let text = std::fs::read_to_string(path).map_err(unreadable)?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                if password.is_empty() {
                    return Err(SecretError::EmptyFile { path: path.clone() });
                }
                Ok(Secret(password.to_string()))
            }
        }
    }
}

/// One credential the agent logs in with: for sessions towards `target`
/// whose identity matches `identity` (a glob; `None` = every identity, and
/// sessions without one), as database user `user`.
#[derive(Debug)]
pub struct Credential {
    /// The target as configured.
    pub target: TargetAddr,
    identity: Option<crate::policy::glob::Glob>,
    /// The pattern as written, for messages.
    pub identity_pattern: Option<String>,
    /// The database user the client must name and the agent logs in as.
    pub user: String,
    /// Where the password came from (shown in errors, never the password).
    pub source: SecretSource,
    /// Replaced whole by [`Credential::reload`] (password rotation).
    secret: std::sync::RwLock<Secret>,
}

impl Credential {
    /// A credential whose secret was read from `source`.
    pub fn new(
        target: &str,
        identity: Option<&str>,
        user: &str,
        source: SecretSource,
        secret: Secret,
    ) -> Result<Credential, CredentialError> {
        let glob = match identity {
            None => None,
            Some(p) => Some(crate::policy::glob::Glob::new(p).ok_or(CredentialError::EmptyIdentity)?),
        };
        if user.is_empty() {
            return Err(CredentialError::EmptyUser);
        }
        Ok(Credential {
            target: TargetAddr::parse(target)?,
            identity: glob,
            identity_pattern: identity.map(str::to_string),
            user: user.to_string(),
            source,
            secret: std::sync::RwLock::new(secret),
        })
    }

    fn applies(&self, target: &str, identity: Option<&str>) -> bool {
        self.target.as_str().eq_ignore_ascii_case(target)
            && match (&self.identity, identity) {
                (None, _) => true,
                (Some(g), Some(id)) => g.matches(id),
                (Some(_), None) => false,
            }
    }

    /// The password, for [`super::inject::Injector`].
    pub fn secret(&self) -> Secret {
        self.secret.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the password from its source again, with the same checks as at
    /// start (a rotated password file); on error the previous one stays.
    pub fn reload(&self) -> Result<(), SecretError> {
        let secret = self.source.load()?;
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = secret;
        Ok(())
    }
}

/// The credentials of an agent or proxy; the first that applies wins (file
/// order).
#[derive(Debug, Clone, Default)]
pub struct Credentials(Vec<Arc<Credential>>);

impl Credentials {
    /// A set of credentials, tried in this order.
    pub fn new(list: Vec<Credential>) -> Credentials {
        Credentials(list.into_iter().map(std::sync::Arc::new).collect())
    }

    /// The credential for sessions of `identity` towards `target` (the
    /// configured `host:port`), if the agent injects one.
    pub fn find(
        &self,
        target: &(impl AsRef<str> + ?Sized),
        identity: Option<&str>,
    ) -> Option<std::sync::Arc<Credential>> {
        self.0.iter().find(|c| c.applies(target.as_ref(), identity)).cloned()
    }

    /// Reads every password from its source again (`masker policy reload`,
    /// SIGHUP). Returns how many were re-read, or the errors (naming the
    /// credential and the source, never a value) of those that keep their
    /// previous password.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let failed: Vec<(usize, Arc<Credential>, SecretError)> =
            self.0.iter().enumerate().filter_map(|(i, c)| c.reload().err().map(|e| (i + 1, c.clone(), e))).collect();
        if failed.is_empty() { Ok(self.0.len()) } else { Err(ReloadError { failed }) }
    }

    /// The credentials in the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.0.iter().map(|c| &**c)
    }

    /// How many credentials are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a credential cannot be used. Names the setting, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The password cannot be read from its source.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// The target is not `host:port`.
    #[error("target {0}")]
    Target(#[from] AddrError),
    #[error("empty `identity` pattern")]
    EmptyIdentity,
    #[error("empty `user`")]
    EmptyUser,
}

/// The credentials whose password could not be read again on reload (they
/// keep the previous one).
#[derive(Debug, thiserror::Error)]
pub struct ReloadError {
    /// Position (from 1) of each credential, and why.
    failed: Vec<(usize, Arc<Credential>, SecretError)>,
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (i, c, e)) in self.failed.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "credential {i} (target {}, user {}): {e}", c.target, c.user)?;
        }
        Ok(())
    }
}

/// Reads `[[credential]]`-style settings into a [`Credential`], checking the
/// secret's source; the error names the target and user, never a value.
pub fn load(
    target: &str,
    identity: Option<&str>,
    user: &str,
    source: SecretSource,
) -> Result<Credential, CredentialError> {
    let secret = source.load()?;
    Credential::new(target, identity, user, source, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_target_then_identity_in_order() {
        let c = |identity: Option<&str>, user: &str| {
            Credential::new("db:5432", identity, user, SecretSource::Env("X".into()), Secret::new("pw".into())).unwrap()
        };
        let set = Credentials::new(vec![c(Some("ci-*"), "ci_user"), c(None, "app")]);
        assert_eq!(set.find("db:5432", Some("ci-build")).unwrap().user, "ci_user");
        assert_eq!(set.find("DB:5432", Some("release")).unwrap().user, "app");
        assert_eq!(set.find("db:5432", None).unwrap().user, "app");
        assert!(set.find("other:5432", Some("ci-build")).is_none());
        assert!(!format!("{set:?}").contains("\"pw\""));
    }
}
