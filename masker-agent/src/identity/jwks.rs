//! An issuer's signing keys fetched from an HTTPS URL (`jwks_url`), cached.
//!
//! # Cache and refetch rules
//!
//! - The key set fetched last is used for [`IssuerConfig::jwks_cache_secs`]
//!   (default 10 minutes); a verification after that fetches it again.
//! - A token whose `kid` is not in a fresh cache makes one refetch (the
//!   issuer may have rotated its keys), but fetches of one issuer start at
//!   most once per [`IssuerConfig::jwks_min_fetch_interval_secs`] (default
//!   30 s), whatever caused them: a flood of tokens with unknown key ids costs
//!   the issuer one request per interval, not one per token. Within the
//!   interval an unknown `kid` is simply unknown.
//! - Concurrent verifications of one issuer wait for the same fetch (the
//!   cache lock is held across it), so they cannot start a second one.
//! - A failed fetch is an error naming the URL and the reason, **except**
//!   when the cache (even past its lifetime) holds the token's key: then the
//!   stale key set is used and the failure logged. Keys an issuer published
//!   are not revoked by its being unreachable; a key we have never seen is
//!   never trusted.
//!
//! # The request
//!
//! One HTTP/1.1 `GET` per fetch on a fresh connection, TLS with rustls and
//! the agent's single crypto provider (ring), trust anchors from the system
//! bundle plus `jwks_ca_file`. No redirects are followed (a 3xx is an error
//! naming the `Location`), the whole exchange has [`FETCH_TIMEOUT`], and the
//! body is read up to [`MAX_JWKS_BYTES`]. Only `https://` URLs are accepted
//! (checked when the configuration is read).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::issuer::IssuerConfig;

/// Longest time one fetch (connect, TLS, request, whole body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS accepted (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Trust anchors used besides `jwks_ca_file` (Debian's bundle).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a key set could not be fetched (displayed as the reason in
/// `jwks fetch from <url> failed: <reason>`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect to {host}:{port}: {source}")]
    Connect { host: String, port: u16, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::http::Error),
    #[error("HTTP {status}, redirect to {to} not followed")]
    Redirect { status: hyper::StatusCode, to: String },
    #[error("HTTP {0}")]
    Status(hyper::StatusCode),
    #[error("the answer is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("reading the answer: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("no complete answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    #[error("the answer is not a JWKS: {0}")]
    NotJwks(serde_json::Error),
    /// The last fetch failed and the next is not due yet.
    #[error("{last} (retried at most every {every_secs} s)")]
    RateLimited { last: Arc<FetchError>, every_secs: u64 },
    #[error("no key set fetched yet")]
    NotYet,
}

/// A `jwks_url` issuer whose client cannot be set up. Names the URL or file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("jwks_url {url:?}: {source}")]
    Url { url: String, source: hyper::http::uri::InvalidUri },
    #[error("jwks_url {0:?} has no host")]
    NoHost(String),
    #[error("jwks_url {url:?}: host cannot be verified: {source}")]
    Host { url: String, source: rustls::pki_types::InvalidDnsNameError },
    #[error("{}: {source}", path.display())]
    Pem { path: std::path::PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: {source}", path.display())]
    Certificate { path: std::path::PathBuf, source: rustls::Error },
    #[error("jwks_ca_file {}: no certificate in this file", .0.display())]
    NoCertificate(std::path::PathBuf),
    #[error("jwks_url {url:?}: no trust anchors ({source}); set jwks_ca_file")]
    NoTrustAnchors { url: String, source: Box<SetupError> },
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// The keys of one `jwks_url` issuer and where to get them again.
pub struct JwksClient {
    url: String,
    uri: Uri,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    ttl: Duration,
    min_interval: Duration,
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for JwksClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksClient").field("url", &self.url).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Instant>,
    /// When the last fetch started (successful or not): the rate limit.
    last_attempt: Option<Instant>,
    last_error: Option<Arc<FetchError>>,
}

impl JwksClient {
    /// A client for `url` (already checked to be `https://`) trusting the
    /// system bundle and the PEM certificates of `ca_file`. Errors name the
    /// file or URL.
    pub fn new(issuer: &IssuerConfig, url: &str, ca_file: Option<&Path>) -> Result<JwksClient, SetupError> {
        let uri: Uri = url.parse().map_err(|source| SetupError::Url { url: url.to_string(), source })?;
        let host = uri.host().ok_or_else(|| SetupError::NoHost(url.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name =
            ServerName::try_from(host).map_err(|source| SetupError::Host { url: url.to_string(), source })?;
        let mut roots = RootCertStore::empty();
        let mut add_pem = |path: &Path| -> Result<usize, SetupError> {
            let mut n = 0;
            let pem = |source| SetupError::Pem { path: path.to_path_buf(), source };
            for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
                let cert = cert.map_err(pem)?;
                roots.add(cert).map_err(|source| SetupError::Certificate { path: path.to_path_buf(), source })?;
                n += 1;
            }
            Ok(n)
        };
        if let Some(ca) = ca_file
            && add_pem(ca)? == 0
        {
            return Err(SetupError::NoCertificate(ca.to_path_buf()));
        }
        // The system bundle is optional when the issuer names its own CA.
        if let Err(e) = add_pem(Path::new(SYSTEM_CA_BUNDLE))
            && ca_file.is_none()
        {
            return Err(SetupError::NoTrustAnchors { url: url.to_string(), source: Box::new(e) });
        }
        let config = ClientConfig::builder_with_provider(crate::session::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(SetupError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(JwksClient {
            url: url.to_string(),
            uri,
            server_name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            ttl: Duration::from_secs(issuer.jwks_cache_secs),
            min_interval: Duration::from_secs(issuer.jwks_min_fetch_interval_secs),
            cache: Default::default(),
        })
    }

    /// The key set to verify a token with key id `kid` (`None`: the token
    /// names no key), following the rules of the module documentation. The
    /// returned set may still lack `kid` (rate-limited refetch); the caller
    /// reports the unknown key.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, Arc<FetchError>> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let has_kid = |set: &JwkSet| kid.is_none_or(|k| set.find(k).is_some());
        let fresh = cache.fetched_at.is_some_and(|t| now.duration_since(t) < self.ttl);
        if let Some(keys) = &cache.keys
            && fresh
            && has_kid(keys)
        {
            return Ok(keys.clone());
        }
        let may_fetch = cache.last_attempt.is_none_or(|t| now.duration_since(t) >= self.min_interval);
        if !may_fetch {
            return match (&cache.keys, &cache.last_error) {
                (Some(keys), _) => Ok(keys.clone()),
                (None, Some(e)) => {
                    Err(Arc::new(FetchError::RateLimited { last: e.clone(), every_secs: self.min_interval.as_secs() }))
                }
                (None, None) => Err(Arc::new(FetchError::NotYet)),
            };
        }
        cache.last_attempt = Some(now);
        match self.fetch().await {
            Ok(set) => {
                info!(url = %self.url, keys = set.keys.len(), "JWKS fetched");
                let set = Arc::new(set);
                cache.keys = Some(set.clone());
                cache.fetched_at = Some(Instant::now());
                cache.last_error = None;
                Ok(set)
            }
            Err(e) => {
                let e = Arc::new(e);
                cache.last_error = Some(e.clone());
                match &cache.keys {
                    Some(keys) if has_kid(keys) => {
                        warn!(url = %self.url, "JWKS fetch failed, using the cached keys: {e}");
                        Ok(keys.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, FetchError> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get()).await.map_err(|_| FetchError::Timeout)??;
        serde_json::from_slice(&body).map_err(FetchError::NotJwks)
    }

    async fn get(&self) -> Result<Bytes, FetchError> {
        let host = self.uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await.map_err(|source| FetchError::Connect {
            host: host.to_string(),
            port,
            source,
        })?;
        let tls = self.connector.connect(self.server_name.clone(), tcp).await.map_err(FetchError::Tls)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(FetchError::Http)?;
        // The connection task ends with the response (or with this future on
        // timeout, as the sender is dropped).
        tokio::spawn(conn);
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, concat!("masker/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(FetchError::Request)?;
        let response = sender.send_request(request).await.map_err(FetchError::Http)?;
        let status = response.status();
        if status.is_redirection() {
            let to = response.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("?");
            return Err(FetchError::Redirect { status, to: to.to_string() });
        }
        if !status.is_success() {
            return Err(FetchError::Status(status));
        }
        if let Some(len) = response.headers().get(hyper::header::CONTENT_LENGTH)
            && len.to_str().ok().and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() { FetchError::TooLarge } else { FetchError::Body(e) }
        })?;
        Ok(body.to_bytes())
    }
}
