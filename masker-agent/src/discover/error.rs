//! Why `masker discover` stopped. None of these carries a sampled value or
//! a password: server errors during sampling never get here (they are
//! recorded per relation, scrubbed, and the run goes on).

use std::path::PathBuf;

/// What went wrong, with what the user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// An option, an environment variable or a connection string is wrong.
    #[error("{0}")]
    Options(String),
    /// The server could not be reached.
    #[error("connecting to {what}: {source}")]
    Connect {
        /// `host:port` or the socket directory.
        what: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// Connecting or logging in took longer than the connect timeout.
    #[error("{what}: no answer within {secs}s")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The connect timeout.
        secs: u64,
    },
    /// The TLS settings cannot be used (a bad CA bundle, a host name that
    /// cannot be verified).
    #[error(transparent)]
    TlsSettings(#[from] crate::session::tls::TlsError),
    /// TLS towards the server failed or was refused.
    #[error(transparent)]
    Tls(#[from] crate::session::tls::UpstreamTlsError),
    /// The server asks for a password and there is none.
    #[error(
        "{0} asks for a password: set PGPASSWORD, use a password file (~/.pgpass or PGPASSFILE), or --url-env VAR \
         with a connection string that carries it"
    )]
    PasswordMissing(String),
    /// The server refused the login or the session.
    #[error("logging in to {what}: {message}")]
    Login {
        /// `user@host:port/dbname`.
        what: String,
        /// The client library's or the server's message (no password).
        message: String,
    },
    /// Reading the catalog failed.
    #[error("listing tables and columns: {0}")]
    Catalog(tokio_postgres::Error),
    /// An output file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// Standard output could not be written.
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
    /// The JSON report could not be written.
    #[error("writing the JSON report: {0}")]
    Json(#[from] serde_json::Error),
}
