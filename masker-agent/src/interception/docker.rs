//! Containers by id or name, and the Docker events watcher.
//!
//! - [`container_cgroup`]: the cgroup v2 directory of a container, for
//!   `masker tag --container ID|NAME`: through the Docker API (a name or an
//!   id: the container's first process and its `/proc/PID/cgroup`), else by
//!   its id in the cgroup tree as Docker (cgroupfs and systemd drivers),
//!   containerd/CRI and Podman name their directories.
//! - [`Watcher`]: the opt-in watcher of the Docker events API (`[docker]` in
//!   the agent configuration) that tags containers carrying the identity
//!   label (`masker.identity=ci-job`) and untags them when they stop. With
//!   Docker's cgroupfs driver the container's cgroup is created and tagged at
//!   `create`, before its first process runs; with the systemd driver the
//!   tag follows `start`, so a process that connects in the first
//!   milliseconds runs untagged (use `--cgroup-parent` under a tagged cgroup
//!   there).
//!
//! The API is spoken over the daemon's unix socket with hyper (HTTP/1.1, one
//! connection per request; the events stream keeps its own).
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::netns;

/// Docker's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The API version masker speaks (Docker 20.10 and later).
const API: &str = "/v1.41";
/// The largest response body read from the API.
const MAX_BODY: usize = 8 << 20;

/// A failed Docker API call or container look-up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DockerError(String);

fn err(what: impl Into<String>) -> DockerError {
    DockerError(what.into())
}

/// The daemon socket to use: `DOCKER_HOST` when it is `unix://PATH`, else
/// [`DEFAULT_SOCKET`].
pub fn socket_from_env() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

async fn request(socket: &Path, path: &str) -> Result<hyper::Response<hyper::body::Incoming>, DockerError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| err(format!("cannot reach the Docker daemon at {}: {e}", socket.display())))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| err(format!("Docker API: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("{API}{path}"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| err(format!("Docker API request: {e}")))?;
    sender.send_request(req).await.map_err(|e| err(format!("Docker API {path}: {e}")))
}

/// `GET path` on the API, as JSON.
pub async fn get_json(socket: &Path, path: &str) -> Result<Value, DockerError> {
    let response = request(socket, path).await?;
    let status = response.status();
    let mut body = Vec::new();
    let mut incoming = response.into_body();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| err(format!("Docker API {path}: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if body.len() + data.len() > MAX_BODY {
                return Err(err(format!("Docker API {path}: response larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(data);
        }
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| err(format!("Docker API {path}: {e}")))?;
    if !status.is_success() {
        let message = value["message"].as_str().unwrap_or("error");
        return Err(err(format!("Docker API {path}: {status}: {message}")));
    }
    Ok(value)
}

/// What `GET /containers/ID/json` tells about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Full id.
    pub id: String,
    /// First process (0 when not running).
    pub pid: u32,
    /// `HostConfig.CgroupParent` ("" = Docker's default).
    pub cgroup_parent: String,
    /// Value of the identity label, if any.
    pub label: Option<String>,
}

/// Inspects container `id_or_name`; `label` names the identity label.
pub async fn inspect(socket: &Path, id_or_name: &str, label: &str) -> Result<Inspected, DockerError> {
    if id_or_name.is_empty() || !id_or_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(err(format!("{id_or_name:?} is not a container id or name")));
    }
    let v = get_json(socket, &format!("/containers/{id_or_name}/json")).await?;
    Ok(Inspected {
        id: v["Id"].as_str().unwrap_or_default().to_string(),
        pid: v["State"]["Pid"].as_u64().unwrap_or(0) as u32,
        cgroup_parent: v["HostConfig"]["CgroupParent"].as_str().unwrap_or_default().to_string(),
        label: v["Config"]["Labels"][label].as_str().map(str::to_string),
    })
}

/// The cgroup v2 directory of process `pid`.
fn cgroup_of_pid(root: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = crate::interception::cgroup::v2_path_from_proc_cgroup(&text)?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// The cgroup v2 directory of container `id_or_name` (see the module
/// documentation): from the Docker API at `socket` when it answers, else by
/// id (at least 12 hex digits, unique) in the tree under `root`.
pub async fn container_cgroup(root: &Path, socket: &Path, id_or_name: &str) -> Result<PathBuf, DockerError> {
    let api = inspect(socket, id_or_name, "masker.identity").await;
    match api {
        Ok(c) if c.pid != 0 => {
            return cgroup_of_pid(root, c.pid)
                .ok_or_else(|| err(format!("container {id_or_name} (pid {}) has no cgroup v2 directory", c.pid)));
        }
        Ok(_) => return Err(err(format!("container {id_or_name} is not running"))),
        Err(e) => {
            let hex = id_or_name.len() >= 12 && id_or_name.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(e);
            }
        }
    }
    let prefix = id_or_name.to_ascii_lowercase();
    let root_owned = root.to_path_buf();
    let found = tokio::task::spawn_blocking(move || find_by_id_prefix(&root_owned, &prefix))
        .await
        .map_err(|e| err(e.to_string()))?;
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(err(format!("no container {id_or_name}: not known to Docker and no cgroup named after it"))),
        _ => Err(err(format!("container id {id_or_name} is ambiguous; give more of it"))),
    }
}

/// Directories under `root` whose container id starts with `prefix`.
fn find_by_id_prefix(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let name = e.file_name();
            if netns::container_id(Path::new(&name)).is_some_and(|id| id.starts_with(prefix)) {
                found.push(path.clone());
                continue;
            }
            if depth < 8 {
                stack.push((path, depth + 1));
            }
        }
    }
    found
}

/// What the watcher asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Tag `cgroup` (creating it first when `create`) with `identity`;
    /// `container` is the full id.
    Tag {
        /// The container's full id.
        container: String,
        /// Its cgroup v2 directory.
        cgroup: PathBuf,
        /// The identity label's value.
        identity: String,
        /// Whether to create the directory first (at `create`, before the
        /// runtime does).
        create: bool,
    },
    /// The container stopped or was removed: untag its cgroup.
    Untag {
        /// The container's full id.
        container: String,
    },
}

/// The Docker events watcher; see the module documentation.
pub struct Watcher {
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// The label whose value is the identity.
    pub label: String,
    /// The cgroup v2 mount.
    pub root: PathBuf,
}

impl Watcher {
    /// Runs until the task is aborted: lists running labelled containers,
    /// then follows the events stream (reconnecting with back-off), calling
    /// `apply` for each change.
    pub async fn run<F, Fut>(self, apply: F)
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut pause = Duration::from_millis(200);
        loop {
            match self.follow(&apply).await {
                Ok(()) => pause = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(socket = %self.socket.display(), "docker watcher: {e}; retrying in {pause:?}");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    async fn follow<F, Fut>(&self, apply: &F) -> Result<(), DockerError>
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let info = get_json(&self.socket, "/info").await?;
        let cgroupfs = info["CgroupDriver"].as_str() == Some("cgroupfs");
        if !cgroupfs {
            tracing::warn!(
                "docker watcher: the daemon uses the {} cgroup driver: labelled containers are tagged when they \
                 start, not before; run CI containers with --cgroup-parent under a tagged cgroup to close that gap",
                info["CgroupDriver"].as_str().unwrap_or("?")
            );
        }
        // Events from now on, then the containers already running (a
        // container that starts in between is seen twice; tagging is
        // idempotent).
        let filters = serde_json::json!({
            "type": ["container"],
            "event": ["create", "start", "die", "destroy"],
            "label": [&self.label],
        });
        let path = format!("/events?filters={}", percent_encode(&filters.to_string()));
        let response = request(&self.socket, &path).await?;
        if !response.status().is_success() {
            return Err(err(format!("Docker API /events: {}", response.status())));
        }
        let list = get_json(
            &self.socket,
            &format!(
                "/containers/json?filters={}",
                percent_encode(&serde_json::json!({"label": [&self.label]}).to_string())
            ),
        )
        .await?;
        for c in list.as_array().into_iter().flatten() {
            if let Some(id) = c["Id"].as_str() {
                self.on_event("start", id, apply, cgroupfs).await;
            }
        }
        tracing::info!(socket = %self.socket.display(), label = %self.label, "following Docker events");
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| err(format!("Docker events: {e}")))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            if pending.len() > MAX_BODY {
                return Err(err("Docker events: an event larger than 8 MiB"));
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                let (Some(action), Some(id)) = (event["Action"].as_str(), event["Actor"]["ID"].as_str()) else {
                    continue;
                };
                self.on_event(action, id, apply, cgroupfs).await;
            }
        }
        Err(err("the Docker events stream ended"))
    }

    async fn on_event<F, Fut>(&self, action: &str, id: &str, apply: &F, cgroupfs: bool)
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        match action {
            "die" | "destroy" => apply(Change::Untag { container: id.to_string() }).await,
            "create" if cgroupfs => {
                let Ok(c) = inspect(&self.socket, id, &self.label).await else { return };
                let Some(identity) = c.label else { return };
                // Where runc will create it (cgroupfs driver): the parent or
                // Docker's default, then the id.
                let parent = if c.cgroup_parent.is_empty() { "/docker" } else { c.cgroup_parent.as_str() };
                let cgroup = self.root.join(parent.trim_start_matches('/')).join(&c.id);
                apply(Change::Tag { container: c.id, cgroup, identity, create: true }).await;
            }
            "start" => {
                let Ok(c) = inspect(&self.socket, id, &self.label).await else { return };
                let Some(identity) = c.label else { return };
                if c.pid == 0 {
                    return;
                }
                let Some(cgroup) = cgroup_of_pid(&self.root, c.pid) else { return };
                apply(Change::Tag { container: c.id, cgroup, identity, create: false }).await;
            }
            _ => {}
        }
    }
}

/// Percent-encodes a query parameter value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["masker.identity"]}"#),
            "%7B%22label%22%3A%5B%22masker.identity%22%5D%7D"
        );
    }

    #[test]
    fn ids_are_found_in_the_cgroup_tree() {
        let dir = std::env::temp_dir().join(format!("masker-docker-ids-{}", std::process::id()));
        let id = "0123456789abcdef".repeat(4);
        let other = "fedcba9876543210".repeat(4);
        std::fs::create_dir_all(dir.join("system.slice").join(format!("docker-{id}.scope"))).unwrap();
        std::fs::create_dir_all(dir.join("ci").join(&other)).unwrap();
        assert_eq!(
            find_by_id_prefix(&dir, &id[..12]),
            vec![dir.join("system.slice").join(format!("docker-{id}.scope"))]
        );
        assert_eq!(find_by_id_prefix(&dir, &other[..20]), vec![dir.join("ci").join(&other)]);
        assert!(find_by_id_prefix(&dir, "abcabcabcabc").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn names_are_checked_before_they_reach_the_api() {
        let e = inspect(Path::new("/nonexistent.sock"), "../../info", "l").await.unwrap_err();
        assert!(e.to_string().contains("not a container id or name"), "{e}");
    }
}
