//! Injection: the agent answers the server's authentication request with a
//! credential it holds (see [`super`]).

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::secret::{Credential, Secret};
use crate::wire::auth::{AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL};
use crate::wire::backend::{AUTHENTICATION, ERROR_RESPONSE, NEGOTIATE_PROTOCOL_VERSION, NOTICE_RESPONSE};
use crate::wire::message::Message;

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
    /// [`super::der::tls_server_end_point`] of a TLS server leg.
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

/// Authentication messages are small; anything larger is not one.
const MAX_AUTH_MESSAGE: usize = 1 << 20;

/// Logs in to `server` (which has just been sent the client's
/// StartupMessage) with `credential`. Returns the server's bytes from the
/// message that ended authentication (`AuthenticationOk` or an
/// ErrorResponse) on, preceded by any NegotiateProtocolVersion or notice the
/// server sent before: the relay forwards them to the client through its
/// filters.
///
/// `binding` is the [`super::der::tls_server_end_point`] of a TLS server leg. Returns
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
            Step::Continue if Message::new(&msg).tag() != AUTHENTICATION => keep.extend_from_slice(&msg),
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

#[cfg(test)]
mod tests {
    use super::super::der::tls_server_end_point;
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
}
