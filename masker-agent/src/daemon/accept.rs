//! Accepting connections and learning where each one was going: one accept
//! loop for both daemons, generic over how a connection is routed.
//!
//! In proxy mode every client is going to the one configured upstream
//! ([`FixedUpstream`]). In agent mode the eBPF programs recorded the original
//! destination (see [`super::agent`] and [`crate::interception`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::error;

use super::registry::SessionOrigin;
use super::shards::Shards;
use crate::addr::TargetAddr;
use crate::session;
use crate::session::context::{Route, SessionContext};

/// Decides where an accepted connection goes and who it is.
pub trait Router: Send + Sync + 'static {
    /// The origin and route of a connection accepted from `peer`.
    fn route(&self, peer: SocketAddr) -> impl Future<Output = (SessionOrigin, Route)> + Send;
}

/// Serves `listener` until `shutdown` resolves: each connection is routed by
/// `router` and served as a session on its own task, on one of the session
/// threads ([`Shards`]).
pub async fn serve<R: Router>(
    listener: TcpListener,
    router: Arc<R>,
    ctx: Arc<SessionContext>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (router, ctx) = (router.clone(), ctx.clone());
                let Some(shards) = Shards::global() else {
                    tokio::spawn(async move {
                        let (origin, route) = router.route(peer).await;
                        session::serve(stream, origin, route, ctx).await;
                    });
                    continue;
                };
                // The session runs on a session thread: the socket moves
                // from this runtime's reactor to that thread's.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        error!("cannot hand over the connection from {peer}: {e}");
                        continue;
                    }
                };
                shards.spawn(move || async move {
                    let stream = match TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            error!("cannot take over the connection from {peer}: {e}");
                            return;
                        }
                    };
                    let (origin, route) = router.route(peer).await;
                    session::serve(stream, origin, route, ctx).await;
                });
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

/// The explicit proxy's routing: every client goes to `upstream`
/// (`host:port`) with workload identity `identity`.
pub struct FixedUpstream {
    /// The real server.
    pub upstream: TargetAddr,
    /// The identity the policy sees for every session.
    pub identity: String,
}

impl Router for FixedUpstream {
    async fn route(&self, peer: SocketAddr) -> (SessionOrigin, Route) {
        let origin = SessionOrigin {
            identity: Some(self.identity.clone()),
            verified: None,
            client: peer,
            destination: Some(self.upstream.clone()),
            cgroup_id: None,
            pid: None,
            netns: None,
        };
        (origin, Route::To(self.upstream.clone()))
    }
}
