//! Signals the daemons answer: SIGINT/SIGTERM end them; SIGHUP reloads the
//! policy (and the injected credentials' passwords).

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Calls `reload` on every SIGHUP, on a spawned task (abort it to stop).
/// Both daemons reload their policy this way ([`super::reload`]).
pub fn on_hangup(reload: impl Fn() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            reload();
        }
    })
}
