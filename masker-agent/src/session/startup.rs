//! The start of a session: the client's first packets up to its
//! StartupMessage (SSLRequest, GSSENCRequest, CancelRequest), and TLS
//! towards the client with a certificate from masker's CA.

use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::context::{Route, Session, SessionContext};
use super::error::{ClientTlsError, SessionError, fatal};
use super::upstream::forward_cancel;
use crate::wire::{self, Severity, StartupPacket};

/// What the client's first packets asked for.
pub enum Startup {
    /// A StartupMessage of this length is at the start of the buffer.
    Packet(usize),
    /// The client asked for TLS and was answered 'S'.
    Tls,
    /// Nothing more to do (a cancel request was forwarded, or the client left).
    Done,
}

/// TLS with the client on `client`, which sent an SSLRequest and was
/// answered 'S': the certificate is issued for the name the client asked for
/// (SNI), else for the target's configured host.
pub async fn accept_tls(
    client: TcpStream,
    ctx: &SessionContext,
    session: &Session,
) -> Result<TlsStream<TcpStream>, SessionError> {
    let Some(tls) = ctx.tls.client.clone() else { return Err(ClientTlsError::NotConfigured.into()) };
    let name_for = || ctx.tls.default_name(session.entry.origin.destination.as_ref());
    let accept = async {
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
        let start = acceptor.await.map_err(ClientTlsError::Handshake)?;
        let name = start.client_hello().server_name().map(str::to_string).unwrap_or_else(name_for);
        let config = tls.server_config(&name).map_err(ClientTlsError::Certificate)?;
        start.into_stream(config).await.map_err(ClientTlsError::Handshake)
    };
    // The handshake has `tls_timeout`, within what is left of the startup.
    let tls_deadline = tokio::time::Instant::now() + ctx.limits.tls_timeout;
    match tokio::time::timeout_at(tls_deadline.min(startup_deadline(ctx, session)), accept).await {
        Ok(s) => {
            let s = s?;
            session.entry.tls_client.store(true, Ordering::Relaxed);
            Ok(s)
        }
        Err(_) if tls_deadline <= startup_deadline(ctx, session) => {
            Err(ClientTlsError::Handshake(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("not completed within {}s (tls_timeout_secs)", ctx.limits.tls_timeout.as_secs()),
            ))
            .into())
        }
        Err(_) => Err(SessionError::StartupTimeout(ctx.limits.startup_timeout)),
    }
}

/// When the client's startup phase must be over: `startup_timeout` after
/// the connection was accepted, however the client spreads its bytes.
fn startup_deadline(ctx: &SessionContext, session: &Session) -> tokio::time::Instant {
    tokio::time::Instant::from_std(session.entry.started) + ctx.limits.startup_timeout
}

/// Reads the client's first packets up to its StartupMessage, answering
/// SSLRequest/GSSENCRequest and forwarding a CancelRequest.
pub async fn startup<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    buf: &mut BytesMut,
    allow_tls: bool,
    route: &Route,
    ctx: &SessionContext,
    session: &Session,
) -> Result<Startup, SessionError> {
    loop {
        match wire::parse_startup(buf) {
            Ok(Some((StartupPacket::SslRequest, len))) if allow_tls => {
                buf.advance(len);
                if !buf.is_empty() {
                    // Bytes sent in plain text after the SSLRequest must not
                    // be taken as if they had come over TLS.
                    let message = "masker: unencrypted data after SSLRequest";
                    let _ = client.write_all(&fatal("08P01", message)).await;
                    return Err(SessionError::Refused(message.into()));
                }
                client.write_all(b"S").await.map_err(SessionError::StartupIo)?;
                return Ok(Startup::Tls);
            }
            Ok(Some((StartupPacket::SslRequest | StartupPacket::GssEncRequest, len))) => {
                // 'N' makes sslmode=prefer clients go on in plain text and
                // sslmode=require ones stop; GSSAPI encryption is never
                // offered.
                buf.advance(len);
                client.write_all(b"N").await.map_err(SessionError::StartupIo)?;
            }
            Ok(Some((StartupPacket::Cancel { .. }, len))) => {
                ctx.metrics.counters.cancel_requests.fetch_add(1, Ordering::Relaxed);
                return match route {
                    Route::To(destination) => {
                        forward_cancel(&buf[..len], destination, ctx, session.entry.origin.netns.as_ref())
                            .await
                            .map(|()| Startup::Done)
                    }
                    Route::Refuse { message, .. } => Err(SessionError::Refused(message.clone())),
                };
            }
            Ok(Some((StartupPacket::Startup { params, .. }, len))) => {
                let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string());
                let user = get("user").unwrap_or_default();
                let database = get("database").unwrap_or_else(|| user.clone());
                let replication = get("replication").is_some_and(|v| !matches!(v.as_str(), "false" | "off" | "0"));
                *session.entry.startup.lock().unwrap_or_else(|p| p.into_inner()) = Some((user, database));
                if replication {
                    let message = "masker: replication connections are not relayed";
                    let _ = client.write_all(&fatal("42501", message)).await;
                    return Err(SessionError::Refused(message.into()));
                }
                return Ok(Startup::Packet(len));
            }
            Ok(None) => {
                let read = tokio::select! {
                    read = tokio::time::timeout_at(startup_deadline(ctx, session), client.read_buf(buf)) => read,
                    // The daemon stops: a session that has not started is
                    // simply closed.
                    () = ctx.shutdown.started() => return Ok(Startup::Done),
                };
                match read {
                    Err(_) => return Err(SessionError::StartupTimeout(ctx.limits.startup_timeout)),
                    Ok(Err(e)) => return Err(SessionError::StartupIo(e)),
                    // The client hung up before starting (e.g. a port probe).
                    Ok(Ok(0)) => return Ok(Startup::Done),
                    Ok(Ok(_)) => {}
                }
            }
            Err(e) => {
                let mut out = BytesMut::new();
                wire::put_error(&mut out, Severity::Fatal, "08P01", &format!("masker: {e}"));
                let _ = client.write_all(&out).await;
                return Err(SessionError::Startup(e));
            }
        }
    }
}
