//! How the workload's authentication reaches the server: relayed
//! (passthrough) or done by the agent itself (injection).
//!
//! **Passthrough** (the default): the client's own authentication exchange
//! (SCRAM-SHA-256, md5, password) is relayed unchanged, with one exception:
//! `SCRAM-SHA-256-PLUS` is removed from the server's list of SASL
//! mechanisms. Channel binding ties the SCRAM exchange to the TLS connection
//! it runs over; with masker in between, the client's TLS connection ends at
//! masker and the server's starts there, so a client that chose the `-PLUS`
//! variant would always fail. Without it, libpq (`channel_binding=prefer`,
//! the default) and other drivers fall back to plain SCRAM-SHA-256; clients
//! that set `channel_binding=require` cannot connect through masker.
//!
//! **Injection** (a `[[credential]]` of the agent config, or `masker proxy
//! --credential-user`): for a target and an identity the agent holds a
//! database user's password and logs in itself, so the workload needs none.
//! The client's StartupMessage must name the credential's `user` (anything
//! else is refused with SQLSTATE 28000 naming the allowed user); it is sent
//! to the server as the client wrote it (database, options,
//! application_name, ...). The agent answers the server's authentication
//! request ([`Injector`]: SCRAM-SHA-256 (channel binding below), md5 or
//! cleartext password), and from `AuthenticationOk` on everything the server
//! sends goes to the client through the normal relay. The client is never
//! asked for a password. A failed login reaches the client as the server's
//! own ErrorResponse (28P01), through the same scrubbing as every other
//! error. The secret itself lives only in a [`Secret`], whose `Debug` shows
//! nothing, and is never put in a log line, an error, the audit trail or
//! `masker status`.
//!
//! SCRAM over a TLS server leg uses channel binding when the server offers
//! `SCRAM-SHA-256-PLUS`: `tls-server-end-point`, the hash of the server's
//! certificate as masker received it ([`tls_server_end_point`]), so the
//! server checks that the login ran over its own TLS connection (a
//! man-in-the-middle with another certificate fails, even with `tls =
//! "require"`, which does not verify the certificate). Otherwise (a
//! plain-text leg, no `-PLUS` offered, or a certificate whose signature
//! hash is not one RFC 5929 defines here) SCRAM runs with the GS2 flag `n`,
//! which servers accept over TLS too. Either way, the client needs no
//! setting at all; only `channel_binding=require` on the client cannot
//! work, because the client itself does no SCRAM.

use std::fmt;
use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session::relay::{Filter, RelayError, Verdict};
use crate::wire::{FrameError, Header};

/// The SASL mechanism masker never offers a client.
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

const AUTHENTICATION: u8 = b'R';
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;
const ERROR_RESPONSE: u8 = b'E';
const NOTICE_RESPONSE: u8 = b'N';
const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// Server → client filter wrapper: rewrites `AuthenticationSASL` to drop
/// [`SCRAM_PLUS`] (when `active`), and hands everything else to `inner`.
/// After `AuthenticationOk` it only delegates.
pub struct NoChannelBinding<F> {
    inner: F,
    active: bool,
    inner_wants: bool,
}

impl<F> NoChannelBinding<F> {
    /// Wraps `inner`; `active` says whether a TLS leg makes the rewrite
    /// necessary (a plain server connection never offers `-PLUS`).
    pub fn new(inner: F, active: bool) -> Self {
        NoChannelBinding { inner, active, inner_wants: false }
    }
}

/// `msg` (a whole `AuthenticationSASL`) without [`SCRAM_PLUS`], or `None`
/// when it does not list it or is malformed (the client then sees it as is
/// and reports it).
pub fn without_scram_plus(msg: &[u8]) -> Option<BytesMut> {
    let body = msg.get(9..)?;
    let mut mechanisms = Vec::new();
    let mut rest = body;
    loop {
        let end = memchr::memchr(0, rest)?;
        if end == 0 {
            break;
        }
        mechanisms.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    if !mechanisms.contains(&SCRAM_PLUS.as_bytes()) {
        return None;
    }
    let mut out = BytesMut::with_capacity(msg.len());
    out.put_u8(AUTHENTICATION);
    out.put_u32(0);
    out.put_u32(AUTH_SASL);
    for m in mechanisms.iter().filter(|m| **m != SCRAM_PLUS.as_bytes()) {
        out.put_slice(m);
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

impl<F: Filter + Send> Filter for NoChannelBinding<F> {
    fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
        let inner = self.inner.wants(header)?;
        if self.active && header.tag == AUTHENTICATION {
            self.inner_wants = inner;
            return Ok(true);
        }
        Ok(inner)
    }

    async fn on_message(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if !(self.active && msg[0] == AUTHENTICATION) {
            return self.inner.on_message(msg, out).await;
        }
        let code = msg.get(5..9).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == Some(AUTH_OK) {
            self.active = false;
        }
        let rewritten = if code == Some(AUTH_SASL) { without_scram_plus(msg) } else { None };
        match (rewritten, self.inner_wants) {
            (None, false) => Ok(Verdict::Forward),
            (None, true) => self.inner.on_message(msg, out).await,
            (Some(new), false) => {
                out.extend_from_slice(&new);
                Ok(Verdict::Replaced)
            }
            (Some(new), true) => match self.inner.on_message(&new, out).await? {
                Verdict::Forward => {
                    out.extend_from_slice(&new);
                    Ok(Verdict::Replaced)
                }
                Verdict::Replaced => Ok(Verdict::Replaced),
            },
        }
    }

    fn on_flush(&mut self) {
        self.inner.on_flush();
    }
}

// ------------------------------------------------------------ injection

/// A database password the agent holds. `Debug` prints nothing of it and
/// there is no `Display`: the only way out is [`Secret::expose`], used where
/// the authentication exchange needs the bytes.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(password: String) -> Secret {
        Secret(password)
    }

    /// The password, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a credential's password comes from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the password (one line; a trailing newline is
    /// ignored). Must be a regular file owned by root or by the agent's
    /// user, with no permission bits for group or others.
    File(PathBuf),
    /// An environment variable of the agent's process.
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "password_file {}", p.display()),
            SecretSource::Env(v) => write!(f, "password_env {v}"),
        }
    }
}

/// Why a secret could not be read. Names the source, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("password_file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("password_file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "password_file {path} is owned by uid {owner}; it must be owned by root or by the agent's user (uid {own})"
    )]
    Owner { path: PathBuf, owner: u32, own: u32 },
    #[error(
        "password_file {path} has mode {mode:04o}; it must not be accessible to group or others (chmod 600 {path})"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("password_file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("password_env {var} is not set (or not UTF-8) in the agent's environment")]
    EnvUnset { var: String },
    #[error("password_env {var} is empty")]
    EmptyEnv { var: String },
}

impl SecretSource {
    /// Reads the password, checking a file's type, owner and mode first.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if v.is_empty() => Err(SecretError::EmptyEnv { var: var.clone() }),
                Ok(v) => Ok(Secret(v)),
                Err(_) => Err(SecretError::EnvUnset { var: var.clone() }),
            },
            SecretSource::File(path) => {
                use std::os::unix::fs::MetadataExt;
                let unreadable = |source| SecretError::Unreadable { path: path.clone(), source };
                // symlink_metadata: a link to a file elsewhere is refused
                // rather than checked by what it points at.
                let meta = std::fs::symlink_metadata(path).map_err(unreadable)?;
                if !meta.file_type().is_file() {
                    return Err(SecretError::NotAFile { path: path.clone() });
                }
                let own = crate::own_uid();
                if meta.uid() != 0 && Some(meta.uid()) != own {
                    return Err(SecretError::Owner { path: path.clone(), owner: meta.uid(), own: own.unwrap_or(0) });
                }
                let mode = meta.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(SecretError::Mode { path: path.clone(), mode });
                }
                let text = std::fs::read_to_string(path).map_err(unreadable)?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                let password = password.strip_suffix('\r').unwrap_or(password);
                if password.is_empty() {
                    return Err(SecretError::EmptyFile { path: path.clone() });
                }
                Ok(Secret(password.to_string()))
            }
        }
    }
}

/// One credential the agent logs in with: for sessions towards `target`
/// whose identity matches `identity` (a glob; `None` = every identity, and
/// sessions without one), as database user `user`.
#[derive(Debug)]
pub struct Credential {
    /// The target as configured (`host:port`).
    pub target: String,
    identity: Option<crate::policy::glob::Glob>,
    /// The pattern as written, for messages.
    pub identity_pattern: Option<String>,
    /// The database user the client must name and the agent logs in as.
    pub user: String,
    /// Where the password came from (shown in errors, never the password).
    pub source: SecretSource,
    /// Replaced whole by [`Credential::reload`] (password rotation).
    secret: std::sync::RwLock<Secret>,
}

impl Credential {
    /// A credential whose secret was read from `source`.
    pub fn new(
        target: &str,
        identity: Option<&str>,
        user: &str,
        source: SecretSource,
        secret: Secret,
    ) -> Result<Credential, String> {
        let glob = match identity {
            None => None,
            Some(p) => Some(crate::policy::glob::Glob::new(p).ok_or("empty `identity` pattern")?),
        };
        if user.is_empty() {
            return Err("empty `user`".into());
        }
        Ok(Credential {
            target: target.to_string(),
            identity: glob,
            identity_pattern: identity.map(str::to_string),
            user: user.to_string(),
            source,
            secret: std::sync::RwLock::new(secret),
        })
    }

    fn applies(&self, target: &str, identity: Option<&str>) -> bool {
        self.target.eq_ignore_ascii_case(target)
            && match (&self.identity, identity) {
                (None, _) => true,
                (Some(g), Some(id)) => g.matches(id),
                (Some(_), None) => false,
            }
    }

    /// The password, for [`Injector`].
    pub fn secret(&self) -> Secret {
        self.secret.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the password from its source again, with the same checks as at
    /// start (a rotated password file); on error the previous one stays.
    pub fn reload(&self) -> Result<(), SecretError> {
        let secret = self.source.load()?;
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = secret;
        Ok(())
    }
}

/// The credentials of an agent or proxy; the first that applies wins (file
/// order).
#[derive(Debug, Clone, Default)]
pub struct Credentials(Vec<std::sync::Arc<Credential>>);

impl Credentials {
    /// A set of credentials, tried in this order.
    pub fn new(list: Vec<Credential>) -> Credentials {
        Credentials(list.into_iter().map(std::sync::Arc::new).collect())
    }

    /// The credential for sessions of `identity` towards `target` (the
    /// configured `host:port`), if the agent injects one.
    pub fn find(&self, target: &str, identity: Option<&str>) -> Option<std::sync::Arc<Credential>> {
        self.0.iter().find(|c| c.applies(target, identity)).cloned()
    }

    /// Reads every password from its source again (`masker policy reload`,
    /// SIGHUP). Returns how many were re-read, or the errors (naming the
    /// credential and the source, never a value) of those that keep their
    /// previous password.
    pub fn reload(&self) -> Result<usize, String> {
        let errors: Vec<String> = self
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.reload().err().map(|e| format!("credential {} (target {}, user {}): {e}", i + 1, c.target, c.user))
            })
            .collect();
        if errors.is_empty() { Ok(self.0.len()) } else { Err(errors.join("; ")) }
    }

    /// The credentials in the order they are tried.
    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.0.iter().map(|c| &**c)
    }

    /// How many credentials are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why an injected login could not be completed. The messages are safe to
/// show a client: they never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the database server asked for {0}, which masker cannot answer with an injected credential")]
    Unsupported(String),
    #[error("invalid authentication message from the database server: {0}")]
    Protocol(String),
}

/// What the injector needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send what was written to the output (if anything) and read on.
    Continue,
    /// Authentication is over (`AuthenticationOk` or an ErrorResponse was
    /// this message): relay it and everything after it to the client.
    Done,
}

/// Answers the server's authentication requests with a credential: a pure
/// state machine over whole server messages (tag included), writing the
/// replies into a buffer.
pub struct Injector<'a> {
    user: &'a str,
    secret: &'a Secret,
    /// `tls-server-end-point` data of the server leg, when it is TLS.
    binding: Option<Vec<u8>>,
    scram: Option<ScramSha256>,
    /// SCRAM was started but the server's final message not verified yet.
    scram_open: bool,
    /// The SASL mechanism chosen, once SCRAM started.
    mechanism: Option<&'static str>,
}

impl<'a> Injector<'a> {
    /// An injector logging in as `user` with `secret`; `binding` is the
    /// [`tls_server_end_point`] of a TLS server leg.
    pub fn new(user: &'a str, secret: &'a Secret, binding: Option<Vec<u8>>) -> Injector<'a> {
        Injector { user, secret, binding, scram: None, scram_open: false, mechanism: None }
    }

    /// The SASL mechanism used, if the server asked for SASL.
    pub fn mechanism(&self) -> Option<&'static str> {
        self.mechanism
    }

    /// Handles one whole server message; replies go to `out`.
    pub fn on_message(&mut self, msg: &[u8], out: &mut BytesMut) -> Result<Step, InjectError> {
        let bad = |what: &str| InjectError::Protocol(what.to_string());
        let Some(&tag) = msg.first() else { return Err(bad("empty message")) };
        match tag {
            ERROR_RESPONSE => return Ok(Step::Done),
            NOTICE_RESPONSE | NEGOTIATE_PROTOCOL_VERSION => return Ok(Step::Continue),
            AUTHENTICATION => {}
            other => {
                return Err(InjectError::Protocol(format!(
                    "unexpected message {} before authentication completed",
                    crate::wire::show_tag(other)
                )));
            }
        }
        let code = msg.get(5..9).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        let body = msg.get(9..).unwrap_or_default();
        let io = |e: std::io::Error| InjectError::Protocol(e.to_string());
        match code {
            Some(AUTH_OK) => {
                if self.scram_open {
                    return Err(bad("AuthenticationOk before the SCRAM exchange was completed and verified"));
                }
                Ok(Step::Done)
            }
            Some(AUTH_CLEARTEXT) => {
                frontend::password_message(self.secret.expose().as_bytes(), out).map_err(io)?;
                Ok(Step::Continue)
            }
            Some(AUTH_MD5) => {
                let salt: [u8; 4] =
                    body.try_into().map_err(|_| bad("AuthenticationMD5Password without a 4-byte salt"))?;
                let hash = md5_hash(self.user.as_bytes(), self.secret.expose().as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), out).map_err(io)?;
                Ok(Step::Continue)
            }
            Some(AUTH_SASL) => {
                if self.scram.is_some() {
                    return Err(bad("a second AuthenticationSASL"));
                }
                let mechanisms = sasl_mechanisms(body).ok_or_else(|| bad("malformed AuthenticationSASL"))?;
                let (mechanism, binding) = match self.binding.take() {
                    Some(data) if mechanisms.contains(&SCRAM_SHA_256_PLUS) => {
                        (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(data))
                    }
                    // GS2 flag `n`: accepted by a server that also offers
                    // the -PLUS variant (see the module documentation).
                    _ if mechanisms.contains(&SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    _ => {
                        return Err(InjectError::Unsupported(format!("SASL mechanism(s) {}", mechanisms.join(", "))));
                    }
                };
                let scram = ScramSha256::new(self.secret.expose().as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, scram.message(), out).map_err(io)?;
                self.scram = Some(scram);
                self.scram_open = true;
                self.mechanism = Some(mechanism);
                Ok(Step::Continue)
            }
            Some(AUTH_SASL_CONTINUE) => {
                let scram = self.scram.as_mut().ok_or_else(|| bad("AuthenticationSASLContinue without SASL"))?;
                scram.update(body).map_err(|e| InjectError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(scram.message(), out).map_err(io)?;
                Ok(Step::Continue)
            }
            Some(AUTH_SASL_FINAL) => {
                let scram = self.scram.as_mut().ok_or_else(|| bad("AuthenticationSASLFinal without SASL"))?;
                scram.finish(body).map_err(|e| InjectError::Protocol(format!("SCRAM: {e}")))?;
                self.scram_open = false;
                Ok(Step::Continue)
            }
            Some(other) => Err(InjectError::Unsupported(auth_name(other))),
            None => Err(bad("truncated authentication request")),
        }
    }
}

fn auth_name(code: u32) -> String {
    match code {
        2 => "Kerberos V5 authentication".into(),
        6 => "SCM credential authentication".into(),
        7 | 8 => "GSSAPI authentication".into(),
        9 => "SSPI authentication".into(),
        c => format!("authentication method {c}"),
    }
}

/// The mechanism names of an `AuthenticationSASL` body (after the code).
fn sasl_mechanisms(body: &[u8]) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = memchr::memchr(0, rest)?;
        if end == 0 {
            return Some(out);
        }
        out.push(std::str::from_utf8(&rest[..end]).ok()?);
        rest = &rest[end + 1..];
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929) of a server
/// certificate (DER): its hash with the hash function of its signature
/// algorithm, SHA-256 for MD5 and SHA-1. `None` for a signature algorithm
/// without a defined hash here (RSA-PSS, Ed25519, ...) or a certificate
/// that does not parse: SCRAM then runs without channel binding.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OID, ... }, signature }
    let (0x30, body, _) = der(cert)? else { return None };
    let (0x30, _tbs, rest) = der(body)? else { return None };
    let (0x30, algorithm, _) = der(rest)? else { return None };
    let (0x06, oid, _) = der(algorithm)? else { return None };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04]; // 1.2.840.10045.4
    let hash = match oid {
        [rsa @ .., n] if rsa == RSA => match n {
            4 | 5 | 11 => 256, // md5, sha1 -> sha256; sha256WithRSAEncryption
            12 => 384,
            13 => 512,
            14 => 224,
            _ => return None,
        },
        [ecdsa @ .., 1] if ecdsa == ECDSA => 256, // ecdsa-with-SHA1 -> sha256
        [ecdsa @ .., 3, n] if ecdsa == ECDSA => match n {
            1 => 224,
            2 => 256,
            3 => 384,
            4 => 512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        224 => sha2::Sha224::digest(cert).to_vec(),
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// One DER element at the start of `input`: tag, contents, what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Authentication messages are small; anything larger is not one.
const MAX_AUTH_MESSAGE: usize = 1 << 20;

/// Logs in to `server` (which has just been sent the client's
/// StartupMessage) with `credential`. Returns the server's bytes from the
/// message that ended authentication (`AuthenticationOk` or an
/// ErrorResponse) on, preceded by any NegotiateProtocolVersion or notice the
/// server sent before: the relay forwards them to the client through its
/// filters.
///
/// `binding` is the [`tls_server_end_point`] of a TLS server leg. Returns
/// the bytes and the SASL mechanism used (if any).
pub async fn inject<S: AsyncRead + AsyncWrite + Unpin>(
    server: &mut S,
    credential: &Credential,
    binding: Option<Vec<u8>>,
) -> Result<(BytesMut, Option<&'static str>), InjectOutcome> {
    let secret = credential.secret();
    let mut injector = Injector::new(&credential.user, &secret, binding);
    let mut buf = BytesMut::with_capacity(1024);
    let mut keep = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        let header = match crate::wire::peek_header(&buf, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) if buf.len() >= h.total_len => h,
            Ok(_) => {
                if server.read_buf(&mut buf).await.map_err(InjectOutcome::Io)? == 0 {
                    return Err(InjectOutcome::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                continue;
            }
            Err(e) => return Err(InjectOutcome::Failed(InjectError::Protocol(e.to_string()))),
        };
        let msg = buf.split_to(header.total_len);
        match injector.on_message(&msg, &mut out).map_err(InjectOutcome::Failed)? {
            Step::Done => {
                keep.extend_from_slice(&msg);
                keep.extend_from_slice(&buf);
                return Ok((keep, injector.mechanism()));
            }
            Step::Continue if msg[0] != AUTHENTICATION => keep.extend_from_slice(&msg),
            Step::Continue => {}
        }
        if !out.is_empty() {
            server.write_all(&out).await.map_err(InjectOutcome::Io)?;
            server.flush().await.map_err(InjectOutcome::Io)?;
            out.clear();
        }
    }
}

/// How [`inject`] failed.
#[derive(Debug)]
pub enum InjectOutcome {
    /// The server connection failed.
    Io(std::io::Error),
    /// The server's authentication cannot be answered; tell the client.
    Failed(InjectError),
}

/// Reads `[[credential]]`-style settings into a [`Credential`], checking the
/// secret's source; the error names the target and user, never a value.
pub fn load(target: &str, identity: Option<&str>, user: &str, source: SecretSource) -> Result<Credential, String> {
    let secret = source.load().map_err(|e| e.to_string())?;
    Credential::new(target, identity, user, source, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(mechs: &[&str]) -> Vec<u8> {
        let mut body = 10u32.to_be_bytes().to_vec();
        for m in mechs {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'R'];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    fn auth(code: u32, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![b'R'];
        msg.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
        msg.extend_from_slice(&code.to_be_bytes());
        msg.extend_from_slice(body);
        msg
    }

    #[test]
    fn answers_cleartext_and_md5_without_leaking_the_secret() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        let mut inj = Injector::new("app", &secret, None);
        let mut out = BytesMut::new();
        assert_eq!(inj.on_message(&auth(3, &[]), &mut out).unwrap(), Step::Continue);
        assert_eq!(&out[..], b"p\0\0\0\x0chunter2\0");
        out.clear();
        assert_eq!(inj.on_message(&auth(5, &[1, 2, 3, 4]), &mut out).unwrap(), Step::Continue);
        let hash = md5_hash(b"app", b"hunter2", [1, 2, 3, 4]);
        assert!(hash.starts_with("md5") && hash.len() == 35);
        assert_eq!(&out[5..out.len() - 1], hash.as_bytes());
        assert_eq!(inj.on_message(&auth(0, &[]), &mut out).unwrap(), Step::Done);
        let mut error = vec![b'E'];
        error.extend_from_slice(&5u32.to_be_bytes());
        error.push(0);
        assert_eq!(Injector::new("app", &secret, None).on_message(&error, &mut out).unwrap(), Step::Done);
    }

    #[test]
    fn bad_or_unsupported_server_input_is_a_precise_error() {
        let secret = Secret::new("hunter2".into());
        let mut out = BytesMut::new();
        let err = |msg: &[u8]| {
            Injector::new("app", &secret, None).on_message(msg, &mut BytesMut::new()).unwrap_err().to_string()
        };
        assert_eq!(
            err(&auth(7, &[])),
            "the database server asked for GSSAPI authentication, which masker cannot answer with an injected credential"
        );
        assert_eq!(
            err(&sasl(&["SCRAM-SHA-256-PLUS"])),
            "the database server asked for SASL mechanism(s) SCRAM-SHA-256-PLUS, which masker cannot answer with an \
             injected credential"
        );
        assert_eq!(
            err(&auth(5, &[1, 2])),
            "invalid authentication message from the database server: AuthenticationMD5Password without a 4-byte salt"
        );
        assert!(err(&auth(11, b"r=x")).contains("AuthenticationSASLContinue without SASL"));
        assert!(err(b"Dxxxx").contains("unexpected message 'D' before authentication completed"));
        assert!(err(&[b'R', 0, 0, 0, 4]).contains("truncated authentication request"));
        // SCRAM: a server nonce that does not extend ours, and an Ok that
        // skips the server's proof, are both refused.
        let mut inj = Injector::new("app", &secret, None);
        assert_eq!(inj.on_message(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]), &mut out).unwrap(), Step::Continue);
        assert!(std::str::from_utf8(&out).unwrap().contains("SCRAM-SHA-256\0"));
        assert!(std::str::from_utf8(&out).unwrap().contains("n,,n=,r="), "GS2 flag n");
        let e = inj.on_message(&auth(0, &[]), &mut out).unwrap_err().to_string();
        assert!(e.contains("AuthenticationOk before the SCRAM exchange was completed"), "{e}");
        let e = inj.on_message(&auth(11, b"r=other,s=c2FsdA==,i=4096"), &mut out).unwrap_err().to_string();
        assert!(e.starts_with("invalid authentication message from the database server: SCRAM:"), "{e}");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn channel_binding_hashes_with_the_certificate_signature_hash() {
        use sha2::Digest;
        let cert = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap().der().to_vec()
        };
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(tls_server_end_point(&p256).unwrap(), sha2::Sha256::digest(&p256).to_vec());
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(tls_server_end_point(&p384).unwrap(), sha2::Sha384::digest(&p384).to_vec());
        // No hash defined for Ed25519: no channel binding, no guess.
        assert_eq!(tls_server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(tls_server_end_point(&p256[..p256.len() / 2]), None);
        assert_eq!(tls_server_end_point(b"\x30\x84\xff\xff\xff\xff"), None);
        // The injector binds when the server offers -PLUS, and only then.
        let secret = Secret::new("pw".into());
        let mut out = BytesMut::new();
        let mut inj = Injector::new("app", &secret, tls_server_end_point(&p256));
        inj.on_message(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]), &mut out).unwrap();
        assert_eq!(inj.mechanism(), Some("SCRAM-SHA-256-PLUS"));
        assert!(String::from_utf8_lossy(&out).contains("p=tls-server-end-point,,n=,r="));
        let mut inj = Injector::new("app", &secret, tls_server_end_point(&p256));
        inj.on_message(&sasl(&["SCRAM-SHA-256"]), &mut BytesMut::new()).unwrap();
        assert_eq!(inj.mechanism(), Some("SCRAM-SHA-256"));
    }

    #[test]
    fn credentials_match_target_then_identity_in_order() {
        let c = |identity: Option<&str>, user: &str| {
            Credential::new("db:5432", identity, user, SecretSource::Env("X".into()), Secret::new("pw".into())).unwrap()
        };
        let set = Credentials::new(vec![c(Some("ci-*"), "ci_user"), c(None, "app")]);
        assert_eq!(set.find("db:5432", Some("ci-build")).unwrap().user, "ci_user");
        assert_eq!(set.find("DB:5432", Some("release")).unwrap().user, "app");
        assert_eq!(set.find("db:5432", None).unwrap().user, "app");
        assert!(set.find("other:5432", Some("ci-build")).is_none());
        assert!(!format!("{set:?}").contains("\"pw\""));
    }

    #[test]
    fn drops_only_the_plus_variant() {
        let got = without_scram_plus(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])).unwrap();
        assert_eq!(&got[..], &sasl(&["SCRAM-SHA-256"])[..]);
        assert!(without_scram_plus(&sasl(&["SCRAM-SHA-256"])).is_none());
        assert!(without_scram_plus(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])[..12]).is_none());
    }
}
