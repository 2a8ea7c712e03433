//! Why a session ended early, and the fatal error a client is sent.

use std::io;
use std::time::Duration;

use bytes::BytesMut;

use super::auth::InjectError;
use super::relay::RelayError;
use super::tls::UpstreamTlsError;
use crate::addr::TargetAddr;
use crate::wire::{self, FrameError, Severity};

/// Why a session ended early. Messages never contain row data.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(RelayError),
    #[error("server: {0}")]
    Server(RelayError),
    #[error("cannot connect to {dest}: {source}")]
    Connect { dest: TargetAddr, source: io::Error },
    #[error("startup: {0}")]
    Startup(FrameError),
    #[error("startup: {0}")]
    StartupIo(io::Error),
    #[error("client sent no startup packet within {0:?}")]
    StartupTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("TLS with the client: {0}")]
    ClientTls(#[from] ClientTlsError),
    #[error("{0}")]
    UpstreamTls(UpstreamTlsError),
    #[error("injected login: {0}")]
    Inject(InjectError),
    #[error("terminated by an operator")]
    Killed,
    #[error("ended by the daemon's shutdown")]
    ShuttingDown,
    #[error("the login did not complete within {}s", .0.as_secs())]
    AuthTimeout(Duration),
}

/// Why TLS with the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The client asked for TLS, but this masker has no CA.
    #[error("not configured")]
    NotConfigured,
    /// The handshake failed (or the client's hello could not be read).
    #[error("{0}")]
    Handshake(io::Error),
    /// No certificate could be issued for the name the client asked for.
    #[error("{0}")]
    Certificate(super::tls::TlsError),
}

/// A FATAL ErrorResponse with SQLSTATE `code` and `message`.
pub fn fatal(code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_error(&mut out, Severity::Fatal, code, message);
    out
}
