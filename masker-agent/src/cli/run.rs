//! `masker run -- CMD`: the command runs in a transient tagged cgroup
//! (created with [`crate::interception::cgroup`], tagged over the admin
//! socket, removed afterwards).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::daemon::admin::{self, Request};

pub(super) fn require_root() -> anyhow::Result<()> {
    if crate::own_uid() != Some(0) {
        anyhow::bail!("this command must run as root");
    }
    Ok(())
}

/// The cgroup named on the command line, or that of `--container` (Docker
/// at `DOCKER_HOST` or its default socket, else by id in the cgroup tree).
pub(super) async fn cgroup_or_container(cgroup: Option<PathBuf>, container: Option<String>) -> anyhow::Result<PathBuf> {
    match (cgroup, container) {
        (Some(c), _) => resolve_cgroup(&c),
        (None, Some(id)) => {
            let root = crate::interception::cgroup::v2_root()?;
            let socket = crate::interception::docker::socket_from_env();
            Ok(crate::interception::docker::container_cgroup(&root, &socket, &id).await?)
        }
        (None, None) => anyhow::bail!("name a cgroup or --container"),
    }
}

/// An existing cgroup directory, absolute or relative to the v2 mount.
pub(super) fn resolve_cgroup(cgroup: &Path) -> anyhow::Result<PathBuf> {
    let root = crate::interception::cgroup::v2_root()?;
    Ok(crate::interception::cgroup::resolve(&root, cgroup)?)
}

/// `masker run`: the command runs in a transient tagged cgroup. This process
/// moves itself in before spawning (so the child starts inside, with no
/// window where it runs untagged) and back out before removing the cgroup.
/// Afterwards, what the command left running is killed first, then the tag
/// is deleted (nothing is left that could connect), then the cgroup
/// removed; if the cgroup cannot be emptied, the tag is revoked instead (its
/// connections refused) and the agent deletes it once the cgroup is gone.
pub(super) async fn run_tagged(
    socket: &Path,
    identity: &str,
    token: Option<String>,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    require_root()?;
    let root = crate::interception::cgroup::v2_root()?;
    let home = crate::interception::cgroup::current(&root, None)?;
    let dir = crate::interception::cgroup::create_transient(&root)?;
    let cleanup = |tagged: bool| {
        let dir = dir.clone();
        let home = home.clone();
        async move {
            let _ = crate::interception::cgroup::move_into(&home, std::process::id());
            if tagged {
                let emptied = crate::interception::cgroup::kill_all(&dir, std::time::Duration::from_secs(2));
                if let Err(e) = &emptied {
                    eprintln!("masker: {e}; revoking the tag instead of deleting it");
                }
                let request = Request::Untag { cgroup: dir.clone(), forget: emptied.is_ok() };
                if let Err(e) = admin::request(socket, &request).await {
                    eprintln!("masker: untagging {}: {e}", dir.display());
                }
            }
            if let Err(e) = crate::interception::cgroup::remove(&dir) {
                eprintln!("masker: {e}");
            }
        }
    };
    if let Err(e) =
        admin::request(socket, &Request::Tag { cgroup: dir.clone(), identity: identity.to_string(), token }).await
    {
        cleanup(false).await;
        return Err(e.into());
    }
    if let Err(e) = crate::interception::cgroup::move_into(&dir, std::process::id()) {
        cleanup(true).await;
        return Err(e.into());
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
