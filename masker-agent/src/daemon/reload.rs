//! Reloading a daemon's policy (SIGHUP, `masker policy reload`): the policy
//! file is read again and replaces the one in force for new sessions, and
//! the injected credentials' passwords are read again. A file that does not
//! load keeps the previous policy; both daemons reload the same way.

use std::path::Path;

use crate::session::context::SessionContext;

/// Why a reload did not do all it should.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The policy file does not load; the previous policy stays.
    #[error("policy reload failed, the previous policy stays in force: {0}")]
    Policy(crate::policy::PolicyError),
    /// The policy was reloaded, but some credentials' passwords could not
    /// be read again.
    #[error("{done}, but {error}; those credentials keep their previous password")]
    Credentials { done: String, error: crate::session::auth::secret::ReloadError },
}

/// Loads the policy file `policy` again into `ctx` and re-reads the
/// injected credentials' passwords; says what it did.
pub fn reload(ctx: &SessionContext, policy: Option<&Path>) -> Result<String, ReloadError> {
    let loaded = super::load_policy(policy).map_err(ReloadError::Policy)?;
    let what = match policy {
        Some(p) => format!("policy {} reloaded; new sessions use it", p.display()),
        None => "no policy file configured; nothing to reload".to_string(),
    };
    *ctx.policy.write().unwrap_or_else(|p| p.into_inner()) = loaded;
    // Injected credentials: rotated password files take effect for new
    // sessions; one that cannot be read keeps its previous password.
    match ctx.credentials.reload() {
        Ok(0) => Ok(what),
        Ok(n) => Ok(format!("{what}; {n} credential password(s) re-read")),
        Err(error) => Err(ReloadError::Credentials { done: what, error }),
    }
}
