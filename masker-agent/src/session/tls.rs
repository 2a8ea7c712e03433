//! TLS on both legs of a session.
//!
//! - Towards the client, masker terminates TLS with certificates issued on
//!   the fly by its own certificate authority ([`CertificateAuthority`]), for
//!   the host the client asked for (SNI), else the target's configured name
//!   or IP address. The CA is created on first start under the state
//!   directory (`ca.crt`, `ca.key`; the key and the directory readable by
//!   root only) and exported with `masker ca export` into a runner's trust
//!   store, so `sslmode=verify-full` clients keep working.
//! - Towards the server, each target says whether to use TLS
//!   ([`UpstreamTlsMode`]); [`negotiate_upstream`] sends the SSLRequest and
//!   never downgrades a required TLS.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;

use crate::addr::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default state directory of the agent (the CA lives here).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/masker";
/// The CA certificate inside the state directory (PEM, world-readable).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key inside the state directory (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA's subject common name. Fixed, because the issuing certificate is
/// rebuilt from the key on every start and its subject must match the
/// exported certificate byte for byte.
const CA_COMMON_NAME: &str = "masker local CA";
/// How long issued leaf certificates are valid (and cached).
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many host names have a cached server configuration; a
/// client asking for ever new names only makes the cache start over.
const MAX_CACHED_NAMES: usize = 256;
/// Where verify-full looks for trust anchors when a target names no CA file.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS set-up problem; the message names the file or host involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory cannot be read or written.
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    /// The CA key can be read by others.
    #[error("{path}: mode {mode:o} lets others read the CA key; chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    /// The CA key (or the CA rebuilt from it) is unusable.
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: rcgen::Error },
    /// A PEM file cannot be read.
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    /// A certificate of a CA bundle is unusable.
    #[error("{path}: {source}")]
    Certificate { path: PathBuf, source: rustls::Error },
    /// A CA bundle holds no certificate.
    #[error("{path}: no certificate in this CA bundle")]
    EmptyBundle { path: PathBuf },
    /// No certificate could be issued for a name.
    #[error("certificate for {name:?}: {source}")]
    Issue { name: String, source: rcgen::Error },
    /// A certificate was issued, but the TLS configuration refuses it.
    #[error("certificate for {name:?}: {source}")]
    Install { name: String, source: rustls::Error },
    /// The CA certificate does not parse.
    #[error("certificate for {name:?}: CA certificate: {source}")]
    CaCertificate { name: String, source: rustls::pki_types::pem::Error },
    /// Creating masker's CA failed.
    #[error("TLS configuration: {0}")]
    Generate(rcgen::Error),
    /// The TLS library refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// A `verify-full` target whose host cannot be a certificate name.
    #[error("TLS configuration: target host {host:?} cannot be verified: {source}")]
    Host { host: String, source: rustls::pki_types::InvalidDnsNameError },
}

/// The one crypto provider of every TLS configuration masker builds (ring;
/// no process-wide default is installed).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// masker's own certificate authority.
pub struct CertificateAuthority {
    /// The issuing certificate rebuilt from the stored key (same subject and
    /// key as the exported one, which is what verification needs).
    issuer: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "masker");
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl CertificateAuthority {
    /// Loads the CA from `state_dir`, creating the directory (mode 0700) and
    /// a new CA (key mode 0600) when there is none yet.
    pub fn load_or_create(state_dir: &Path) -> Result<CertificateAuthority, TlsError> {
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::File { path, source }
        };
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if !state_dir.exists() {
            fs::create_dir_all(state_dir).map_err(file_err(state_dir))?;
            fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(file_err(state_dir))?;
        }
        if key_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(file_err(&key_path))?;
            let mode = fs::metadata(&key_path).map_err(file_err(&key_path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(TlsError::KeyMode { path: key_path, mode: mode & 0o777 });
            }
            let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::Key { path: key_path.clone(), source })?;
            let pem = fs::read_to_string(&cert_path).map_err(file_err(&cert_path))?;
            let issuer =
                ca_params().self_signed(&key).map_err(|source| TlsError::Key { path: key_path.clone(), source })?;
            return Ok(CertificateAuthority { issuer, key, pem });
        }
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params = ca_params();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        let pem = cert.pem();
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_file(&cert_path, pem.as_bytes(), 0o644)?;
        let issuer = ca_params().self_signed(&key).map_err(TlsError::Generate)?;
        tracing::info!(cert = %cert_path.display(), "created masker's certificate authority");
        Ok(CertificateAuthority { issuer, key, pem })
    }

    /// The CA certificate, PEM, for clients' trust stores.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by this
    /// CA: the chain (leaf, CA) and the leaf's private key.
    pub fn issue(&self, name: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let issue_err = |source: rcgen::Error| TlsError::Issue { name: name.to_string(), source };
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(issue_err)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::try_from(LEAF_LIFETIME).unwrap_or(time::Duration::days(30));
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(issue_err)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key).map_err(issue_err)?;
        let ca_der = CertificateDer::from_pem_slice(self.pem.as_bytes())
            .map_err(|source| TlsError::CaCertificate { name: name.to_string(), source })?;
        let chain = vec![cert.der().clone(), ca_der];
        Ok((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }
}

/// A unique positive serial number (time and a process-wide counter).
fn random_serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut bytes = Vec::with_capacity(16);
    bytes.push(0x01);
    bytes.extend_from_slice(&(nanos as u64).to_be_bytes());
    bytes.extend_from_slice(&(std::process::id() as u64 ^ COUNTER.fetch_add(1, Ordering::Relaxed)).to_be_bytes());
    SerialNumber::from_slice(&bytes)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::File { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_file(path, bytes, 0o600)
}

/// TLS termination towards clients: one server configuration per host name,
/// each with a certificate from the CA.
pub struct ClientTls {
    ca: CertificateAuthority,
    configs: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
}

impl ClientTls {
    /// Loads or creates the CA under `state_dir`.
    pub fn new(state_dir: &Path) -> Result<ClientTls, TlsError> {
        Ok(ClientTls { ca: CertificateAuthority::load_or_create(state_dir)?, configs: Mutex::default() })
    }

    /// The server configuration presenting a certificate for `name`.
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let fresh = LEAF_LIFETIME / 2;
        {
            let configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((issued, config)) = configs.get(&name)
                && issued.elapsed() < fresh
            {
                return Ok(config.clone());
            }
        }
        let (chain, key) = self.ca.issue(&name)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::Install { name: name.clone(), source })?;
        let config = Arc::new(config);
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if configs.len() >= MAX_CACHED_NAMES {
            configs.clear();
        }
        configs.insert(name, (Instant::now(), config.clone()));
        Ok(config)
    }
}

/// Whether and how masker uses TLS towards a target's server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain text (the default).
    #[default]
    Disable,
    /// TLS if the server offers it, plain otherwise; certificate not checked.
    Prefer,
    /// TLS or no session; certificate not checked (as libpq's `require`).
    Require,
    /// TLS or no session; the certificate must chain to the CA bundle and
    /// name the target's host.
    VerifyFull,
}

/// A TLS mode other than `disable`, `prefer`, `require` and `verify-full`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TLS mode {0:?}: expected disable, prefer, require or verify-full")]
pub struct UnknownTlsMode(pub String);

impl std::str::FromStr for UpstreamTlsMode {
    type Err = UnknownTlsMode;
    fn from_str(s: &str) -> Result<Self, UnknownTlsMode> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-full" => Ok(Self::VerifyFull),
            _ => Err(UnknownTlsMode(s.to_string())),
        }
    }
}

impl std::fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// One target's TLS settings, ready to connect with.
pub struct TargetTls {
    /// The host name (or IP) the target is configured with: the name checked
    /// in the server's certificate and the default name of the certificate
    /// presented to clients that send no SNI.
    pub host: String,
    pub mode: UpstreamTlsMode,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls").field("host", &self.host).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl TargetTls {
    /// Settings for a target at `host` (no port). `ca_file` (PEM bundle) is
    /// the trust anchor for `verify-full`; without one the system bundle is
    /// used.
    pub fn new(host: &str, mode: UpstreamTlsMode, ca_file: Option<&Path>) -> Result<TargetTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let config = match mode {
            UpstreamTlsMode::Disable => None,
            UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => Some(
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
                    .with_no_client_auth(),
            ),
            UpstreamTlsMode::VerifyFull => {
                let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
                let mut roots = RootCertStore::empty();
                let pem = |source| TlsError::Pem { path: path.to_path_buf(), source };
                for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
                    let cert = cert.map_err(pem)?;
                    roots.add(cert).map_err(|source| TlsError::Certificate { path: path.to_path_buf(), source })?;
                }
                if roots.is_empty() {
                    return Err(TlsError::EmptyBundle { path: path.to_path_buf() });
                }
                Some(builder.with_root_certificates(roots).with_no_client_auth())
            }
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if mode == UpstreamTlsMode::VerifyFull {
            ServerName::try_from(host.clone()).map_err(|source| TlsError::Host { host: host.clone(), source })?;
        }
        Ok(TargetTls { host, mode, connector: config.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c))) })
    }
}

/// What a session needs to know about TLS, shared by all sessions.
#[derive(Default)]
pub struct SessionTls {
    /// TLS termination towards clients; `None` answers SSLRequest with 'N'.
    pub client: Option<Arc<ClientTls>>,
    /// Per destination (`host:port` as the route names it): the target's
    /// TLS settings. Destinations not listed are reached in plain text.
    pub targets: RwLock<HashMap<TargetAddr, Arc<TargetTls>>>,
}

impl SessionTls {
    /// The settings for `destination`, if any.
    pub fn target(&self, destination: &TargetAddr) -> Option<Arc<TargetTls>> {
        self.targets.read().unwrap_or_else(|p| p.into_inner()).get(destination).cloned()
    }

    /// Replaces the per-destination settings.
    pub fn set_targets(&self, targets: impl IntoIterator<Item = (TargetAddr, TargetTls)>) {
        let map = targets.into_iter().map(|(d, t)| (d, Arc::new(t))).collect();
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The name for the certificate shown to a client going to
    /// `destination` that sent no SNI: the target's configured host, else
    /// the destination's host.
    pub fn default_name(&self, destination: Option<&TargetAddr>) -> String {
        match destination {
            Some(d) => match self.target(d) {
                Some(t) => t.host.clone(),
                None => d.host().to_string(),
            },
            None => String::new(),
        }
    }
}

/// The server side of a session, in plain text or TLS.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why TLS towards the server could not be set up. Safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("the database server at {host} does not accept TLS, and the target requires it (tls = \"{mode}\")")]
    Refused { host: String, mode: UpstreamTlsMode },
    #[error("TLS handshake with the database server at {host} failed: {source}")]
    Handshake { host: String, source: io::Error },
    #[error("the database server at {host} answered the SSLRequest with {byte:#04x}")]
    Unexpected { host: String, byte: u8 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Sends an SSLRequest on `stream` when `target` asks for TLS and performs
/// the handshake; a required TLS is never downgraded.
pub async fn negotiate_upstream(mut stream: TcpStream, target: &TargetTls) -> Result<Upstream, UpstreamTlsError> {
    let Some(connector) = &target.connector else { return Ok(Upstream::Plain(stream)) };
    // SSLRequest: length 8, code 1234.5679.
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| UpstreamTlsError::Handshake {
                host: target.host.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            })?;
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|source| UpstreamTlsError::Handshake { host: target.host.clone(), source })?;
            Ok(Upstream::Tls(Box::new(tls)))
        }
        b'N' if target.mode == UpstreamTlsMode::Prefer => Ok(Upstream::Plain(stream)),
        b'N' => Err(UpstreamTlsError::Refused { host: target.host.clone(), mode: target.mode }),
        byte => Err(UpstreamTlsError::Unexpected { host: target.host.clone(), byte }),
    }
}

/// Accepts any server certificate (modes `prefer` and `require`, like
/// libpq), while still checking the handshake signatures.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("masker-ca-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = dir.join("state");
        let first = CertificateAuthority::load_or_create(&state).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(CA_KEY_FILE)), 0o600);
        let second = CertificateAuthority::load_or_create(&state).unwrap();
        assert_eq!(first.certificate_pem(), second.certificate_pem());
        // A leaf from the reloaded CA verifies against the stored CA cert.
        let (chain, _) = second.issue("127.0.0.1").unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(first.certificate_pem().as_bytes()).unwrap()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).unwrap();
        let other = ServerName::try_from("db.internal").unwrap();
        assert!(verifier.verify_server_cert(&chain[0], &chain[1..], &other, &[], UnixTime::now()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
