//! The local admin socket: how `masker status`, `tag`, `untag`, `run` and
//! `policy reload` talk to the running agent.
//!
//! A Unix stream socket (mode 0600; its directory is made 0700 when the
//! agent creates it; the peer must be root), one JSON request line, one JSON
//! response line.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::daemon::metrics::CountersSnapshot;
use crate::daemon::registry::SessionSnapshot;
use crate::interception::cgroup::CgroupId;

/// A request to the agent. `Sessions` lists live sessions (`masker
/// sessions`); `KillSession` ends one (`masker sessions kill ID`);
/// `Approvals`, `Approve` and `Deny` are `masker approvals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Tag {
        cgroup: PathBuf,
        identity: String,
        /// An OIDC token (JWT) backing the identity; the agent verifies it
        /// and tags nothing if it fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// `masker untag`: revokes the tag (the entry stays and the cgroup's
    /// connections to targets are refused). With `forget`, for a cgroup
    /// whose processes are gone, the entry is deleted instead; a cgroup that
    /// still has processes is only revoked (the answer says so).
    Untag {
        cgroup: PathBuf,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forget: bool,
    },
    PolicyReload,
    Sessions,
    KillSession {
        id: u64,
    },
    /// Statements waiting for a decision (`masker approvals list`).
    Approvals,
    /// `masker approvals approve ID [--for DURATION]`; `approver` names the
    /// operator in audit events.
    Approve {
        id: u64,
        approver: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
    },
    /// `masker approvals deny ID --reason TEXT`.
    Deny {
        id: u64,
        approver: String,
        reason: String,
    },
}

/// The agent's answer: `{"ok": ...}` or `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// What `masker status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub listen: Vec<String>,
    pub programs: Vec<String>,
    pub pin_dir: String,
    pub targets: Vec<TargetStatus>,
    pub tags: Vec<TagStatus>,
    pub policy: Option<String>,
    /// `[[identity]]` blocks of the policy in observe mode (their `name`
    /// patterns): their sessions are relayed unmasked.
    #[serde(default)]
    pub observe: Vec<String>,
    pub sessions: Vec<SessionSnapshot>,
    pub counters: CountersSnapshot,
    /// What each identity did since the agent started.
    #[serde(default)]
    pub identities: std::collections::BTreeMap<String, crate::daemon::metrics::IdentityCounters>,
    /// Statements waiting for an operator's decision.
    #[serde(default)]
    pub approvals: Vec<crate::approvals::PendingApproval>,
    /// Injected credentials: where the agent logs in itself (never the
    /// password).
    #[serde(default)]
    pub credentials: Vec<CredentialStatus>,
    /// Network namespaces (containers) the agent has a listener in.
    #[serde(default)]
    pub namespaces: Vec<NamespaceStatus>,
    /// Entries of the kernel's listeners map (one per served namespace,
    /// the agent's own included).
    #[serde(default)]
    pub listener_entries: usize,
    /// Partial messages' memory, sessions refused for it, RSS and fds.
    #[serde(default)]
    pub memory: crate::daemon::metrics::MemoryStatus,
}

/// One `[[credential]]`, as `masker status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialStatus {
    pub target: String,
    /// The identity glob; `None`: every identity.
    pub identity: Option<String>,
    pub user: String,
    /// `password_file PATH` or `password_env VAR`.
    pub source: String,
}

/// One configured target and the addresses it resolved to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub target: String,
    pub addresses: Vec<String>,
}

/// One tagged cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagStatus {
    pub cgroup_id: CgroupId,
    pub path: Option<String>,
    pub identity: String,
    /// Whether the identity's egress lock is in force for the tag.
    #[serde(default)]
    pub egress_lock: bool,
    /// Connects the kernel refused for this tag (no listener in the
    /// workload's namespace; egress lock).
    #[serde(default)]
    pub refused: crate::interception::RefusedCounts,
    /// The tag was removed (`masker untag`) while the cgroup lives on: its
    /// connections to targets are refused.
    #[serde(default)]
    pub revoked: bool,
    /// Connections of this revoked tag the agent refused (since the agent
    /// started).
    #[serde(default)]
    pub revoked_refusals: u64,
}

/// One namespace the agent serves, as `masker status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceStatus {
    /// `net:[INODE]`.
    pub netns: String,
    /// The namespace cookie (key of the kernel's listeners map).
    pub cookie: u64,
    /// The tagged cgroup whose process brought it in.
    pub cgroup_id: u64,
    /// The container, when the process's cgroup names one.
    pub container: Option<String>,
    /// The listeners inside it.
    pub listen: Vec<String>,
    /// When the listener was opened (Unix seconds).
    pub since_unix: u64,
}

/// Answers admin requests (implemented by the agent).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// Creates the socket at `path` (root only) and serves it until the task is
/// dropped.
pub async fn serve<H: Handler>(path: &Path, handler: Arc<H>) -> io::Result<()> {
    // A directory the agent creates is root's only; one that exists (say
    // /tmp, or a state directory other services use) keeps its mode: the
    // socket itself is 0600 and every peer's uid is checked.
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // A socket left by an agent that did not exit cleanly.
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another agent answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "admin socket ready");
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, handler).await {
                warn!("admin connection: {e}");
            }
        });
    }
}

async fn serve_one<H: Handler>(stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let (r, mut w) = stream.into_split();
    let response = if peer.uid() != 0 {
        Response::Error("the masker admin socket is for root only".into())
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(r).take_line_limit();
        reader.read_line(&mut line).await?;
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler.handle(req).await,
            Err(e) => Response::Error(format!("bad admin request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

trait LineLimit: Sized {
    fn take_line_limit(self) -> tokio::io::Take<Self>;
}

impl<R: tokio::io::AsyncRead> LineLimit for BufReader<R> {
    /// Admin requests are small; a peer cannot make the agent buffer more.
    fn take_line_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 64 * 1024)
    }
}

/// Why a request to the agent failed. Says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No agent answers at the socket.
    #[error(
        "the masker agent is not running (no admin socket at {}); start it with `masker agent --config FILE`",
        .0.display()
    )]
    NotRunning(PathBuf),
    /// The socket is root's.
    #[error("permission denied on {}: masker's admin commands must run as root", .0.display())]
    PermissionDenied(PathBuf),
    /// Connecting failed otherwise.
    #[error("cannot reach the agent at {}: {source}", path.display())]
    Unreachable { path: PathBuf, source: io::Error },
    /// The connection failed mid-request.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The request cannot be encoded.
    #[error("{0}")]
    Encode(serde_json::Error),
    /// The agent refused the request; its message.
    #[error("{0}")]
    Refused(String),
    /// The answer is not a response.
    #[error("unreadable answer from the agent: {0}")]
    Unreadable(serde_json::Error),
}

/// Sends `request` to the agent at `path`. Errors say what to do.
pub async fn request(path: &Path, request: &Request) -> Result<serde_json::Value, AdminError> {
    let stream = UnixStream::connect(path).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AdminError::NotRunning(path.to_path_buf()),
        io::ErrorKind::PermissionDenied => AdminError::PermissionDenied(path.to_path_buf()),
        _ => AdminError::Unreachable { path: path.to_path_buf(), source: e },
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(AdminError::Encode)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(r).read_line(&mut reply).await?;
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(AdminError::Refused(e)),
        Err(e) => Err(AdminError::Unreadable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;

    impl Handler for Nobody {
        async fn handle(&self, _request: Request) -> Response {
            Response::Error("nothing here".into())
        }
    }

    /// Serves at `path` until the socket exists; returns the task.
    async fn served(path: PathBuf) -> tokio::task::JoinHandle<io::Result<()>> {
        let at = path.clone();
        let task = tokio::spawn(async move { serve(&at, Arc::new(Nobody)).await });
        for _ in 0..400 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        task
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn socket_directory_is_made_private_only_when_the_agent_creates_it() {
        let base = std::env::temp_dir().join(format!("masker-admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An existing directory (think /tmp) keeps its mode.
        let task = served(base.join("admin.sock")).await;
        assert_eq!(mode(&base.join("admin.sock")), 0o600);
        assert_eq!(mode(&base), 0o755);
        task.abort();
        // A directory the agent creates is root's only.
        let task = served(base.join("new").join("admin.sock")).await;
        assert_eq!(mode(&base.join("new")), 0o700);
        task.abort();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
