//! Accepting connections and learning where each one was going.
//!
//! In proxy mode every client is going to the one configured upstream. In
//! agent mode the eBPF programs recorded the original destination (see
//! [`crate::interception`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info};

use crate::registry::SessionOrigin;
use crate::session::{self, Route, SessionContext};

/// Serves `listener` as an explicit proxy: every client goes to `upstream`
/// (`host:port`) with workload identity `identity`, until `shutdown`
/// resolves.
pub async fn run_proxy(
    listener: TcpListener,
    upstream: String,
    identity: String,
    ctx: Arc<SessionContext>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => {
                info!("proxy shutting down");
                return;
            }
        };
        match accepted {
            Ok((stream, client)) => {
                let origin = SessionOrigin {
                    identity: Some(identity.clone()),
                    verified: None,
                    client,
                    destination: upstream.clone(),
                    cgroup_id: None,
                    pid: None,
                    netns: None,
                };
                tokio::spawn(session::serve(stream, origin, Route::To(upstream.clone()), ctx.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; existing sessions keep running.
                error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
