//! One client connection, from the first byte to the last: the startup
//! handshake, the identity's connect rules (`targets`, `databases`, `users`
//! of its policy block), the connection to the real server, the login
//! (relayed, or injected by [`crate::credentials`]), then the relay of both
//! directions until either side ends.
//!
//! The session is the same in agent mode and in proxy mode; only the
//! [`SessionOrigin`] (where the client was going, who it is) differs.

pub mod copy;
pub mod lineage;
pub mod relay;
pub mod results;
pub mod stream;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::credentials::{Credential, Credentials, InjectOutcome, NoChannelBinding};
use crate::policy::Policy;
use crate::registry::{Registry, SessionCounters, SessionEntry, SessionOrigin};
use crate::tls::{SessionTls, Upstream, UpstreamTlsError};
use crate::wire::{self, FrameError, Header, Severity, StartupPacket, backend};
use relay::{Filter, Pump, RelayError, Verdict};
use results::{ClientTracker, ExpectQueue, MaskContext, ServerTracker};
use stream::SplitIo;

/// Limits that protect the agent from its peers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message a client may send (PostgreSQL's own limit is 1 GiB).
    pub max_client_message: usize,
    /// Largest server message the agent buffers when it must see it whole.
    pub max_server_message: usize,
    /// How long the client may take to send its startup packet.
    pub startup_timeout: Duration,
    /// How long connecting to the server may take.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_message: 64 << 20,
            max_server_message: 1 << 30,
            startup_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What every session of an agent or proxy shares.
pub struct SessionContext {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// `SO_MARK` put on upstream sockets so the eBPF programs never redirect
    /// the agent's own connections (a second guard besides the agent running
    /// outside tagged cgroups). `None` in proxy mode.
    pub socket_mark: Option<u32>,
    /// The policy in force; replaced whole on reload. Sessions keep the one
    /// they started with. `None`: relay without masking.
    pub policy: RwLock<Option<Arc<Policy>>>,
    pub catalog: Arc<Catalog>,
    /// TLS towards clients (masker's CA) and towards each target's server.
    pub tls: SessionTls,
    /// Credentials the agent logs in with, by configured target name.
    pub credentials: Credentials,
    /// The configured target name (`db.internal:5432`) of each destination
    /// address a route names (`10.0.0.5:5432`); kept up to date by the
    /// agent's target refresh. Destinations not listed are their own name.
    pub target_names: RwLock<HashMap<String, String>>,
}

impl SessionContext {
    /// The policy new sessions start with.
    pub fn current_policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configured name of the target `destination` belongs to.
    pub fn target_name(&self, destination: &str) -> String {
        let names = self.target_names.read().unwrap_or_else(|p| p.into_inner());
        names.get(destination).cloned().unwrap_or_else(|| destination.to_string())
    }
}

/// Where an accepted connection goes, or why it may not go anywhere.
#[derive(Debug, Clone)]
pub enum Route {
    /// Relay to this `host:port`.
    To(String),
    /// Refuse after the startup packet with this SQLSTATE and message (no
    /// data values in it).
    Refuse { code: &'static str, message: String },
}

/// Why a session ended early. Messages never contain row data.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("client: {0}")]
    Client(RelayError),
    #[error("server: {0}")]
    Server(RelayError),
    #[error("cannot connect to {dest}: {source}")]
    Connect { dest: String, source: io::Error },
    #[error("startup: {0}")]
    Startup(FrameError),
    #[error("startup: {0}")]
    StartupIo(io::Error),
    #[error("client sent no startup packet within {0:?}")]
    StartupTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("TLS with the client: {0}")]
    ClientTls(String),
    #[error("{0}")]
    UpstreamTls(UpstreamTlsError),
    #[error("injected login: {0}")]
    Inject(crate::credentials::InjectError),
    #[error("terminated by an operator")]
    Killed,
}

/// Serves one accepted client connection along `route`. Never panics on peer
/// input; every outcome is logged without data values.
pub async fn serve(client: TcpStream, origin: SessionOrigin, route: Route, ctx: Arc<SessionContext>) {
    let _ = client.set_nodelay(true);
    ctx.registry.counters.connections.fetch_add(1, Ordering::Relaxed);
    let guard = ctx.registry.open(origin);
    let entry = &guard.entry;
    debug!(session = entry.id, client = %entry.origin.client, "connection accepted");
    let result = handshake(client, &route, &ctx, entry).await;
    crate::audit::session_end(&ctx.registry.audit, entry, result.as_ref().err().map(|e| e.to_string()).as_deref());
    match result {
        Ok(()) => info!(
            session = entry.id,
            bytes_in = entry.counters.bytes_from_client.load(Ordering::Relaxed),
            bytes_out = entry.counters.bytes_to_client.load(Ordering::Relaxed),
            secs = entry.started.elapsed().as_secs_f64(),
            "session ended"
        ),
        Err(e) => {
            let counters = &ctx.registry.counters;
            match &e {
                SessionError::Connect { .. } | SessionError::UpstreamTls(_) | SessionError::Inject(_) => {
                    counters.upstream_errors.fetch_add(1, Ordering::Relaxed)
                }
                SessionError::Refused(_) => counters.sessions_refused.fetch_add(1, Ordering::Relaxed),
                _ => counters.protocol_errors.fetch_add(1, Ordering::Relaxed),
            };
            warn!(session = entry.id, client = %entry.origin.client, "session failed: {e}");
        }
    }
}

/// What the client's first packets asked for.
enum Startup {
    /// A StartupMessage of this length is at the start of the buffer.
    Packet(usize),
    /// The client asked for TLS and was answered 'S'.
    Tls,
    /// Nothing more to do (a cancel request was forwarded, or the client left).
    Done,
}

fn refuse(code: &str, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_error(&mut out, Severity::Fatal, code, message);
    out
}

/// The startup handshake: plain text, then (when the client asks and masker
/// has a CA) TLS, then the session proper over whichever stream results.
async fn handshake(
    mut client: TcpStream,
    route: &Route,
    ctx: &SessionContext,
    entry: &Arc<SessionEntry>,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let client_tls = ctx.tls.client.clone();
    match startup(&mut client, &mut buf, client_tls.is_some(), route, ctx, entry).await? {
        Startup::Done => Ok(()),
        Startup::Packet(len) => run(&mut client, buf, len, route, ctx, entry).await,
        Startup::Tls => {
            let Some(tls) = client_tls else { return Err(SessionError::ClientTls("not configured".into())) };
            let name_for = || ctx.tls.default_name(&entry.origin.destination);
            let accept = async {
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
                let start = acceptor.await.map_err(|e| SessionError::ClientTls(e.to_string()))?;
                let name = start.client_hello().server_name().map(str::to_string).unwrap_or_else(name_for);
                let config = tls.server_config(&name).map_err(|e| SessionError::ClientTls(e.to_string()))?;
                start.into_stream(config).await.map_err(|e| SessionError::ClientTls(e.to_string()))
            };
            let mut stream = match tokio::time::timeout(ctx.limits.startup_timeout, accept).await {
                Ok(s) => s?,
                Err(_) => return Err(SessionError::StartupTimeout(ctx.limits.startup_timeout)),
            };
            entry.tls_client.store(true, Ordering::Relaxed);
            let result = match startup(&mut stream, &mut buf, false, route, ctx, entry).await {
                Ok(Startup::Packet(len)) => run(&mut stream, buf, len, route, ctx, entry).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            // Sends what is still buffered (an error message) and close_notify.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            result
        }
    }
}

/// Reads the client's first packets up to its StartupMessage, answering
/// SSLRequest/GSSENCRequest and forwarding a CancelRequest.
async fn startup<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    buf: &mut BytesMut,
    allow_tls: bool,
    route: &Route,
    ctx: &SessionContext,
    entry: &Arc<SessionEntry>,
) -> Result<Startup, SessionError> {
    loop {
        match wire::parse_startup(buf) {
            Ok(Some((StartupPacket::SslRequest, len))) if allow_tls => {
                buf.advance(len);
                if !buf.is_empty() {
                    // Bytes sent in plain text after the SSLRequest must not
                    // be taken as if they had come over TLS.
                    let message = "masker: unencrypted data after SSLRequest";
                    let _ = client.write_all(&refuse("08P01", message)).await;
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
                ctx.registry.counters.cancel_requests.fetch_add(1, Ordering::Relaxed);
                return match route {
                    Route::To(destination) => {
                        forward_cancel(&buf[..len], destination, ctx, entry.origin.netns.as_ref())
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
                *entry.startup.lock().unwrap_or_else(|p| p.into_inner()) = Some((user, database));
                if replication {
                    let message = "masker: replication connections are not relayed";
                    let _ = client.write_all(&refuse("42501", message)).await;
                    return Err(SessionError::Refused(message.into()));
                }
                return Ok(Startup::Packet(len));
            }
            Ok(None) => {
                let read = tokio::time::timeout(ctx.limits.startup_timeout, client.read_buf(buf)).await;
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

/// The session after the StartupMessage (the first `startup_len` bytes of
/// `buf`): connect to the server, then relay.
async fn run<C: SplitIo>(
    client: &mut C,
    mut buf: BytesMut,
    startup_len: usize,
    route: &Route,
    ctx: &SessionContext,
    entry: &Arc<SessionEntry>,
) -> Result<(), SessionError> {
    let destination = match route {
        Route::To(d) => d.as_str(),
        Route::Refuse { code, message } => {
            let _ = client.write_all(&refuse(code, message)).await;
            return Err(SessionError::Refused(message.clone()));
        }
    };
    let policy = ctx.current_policy();
    let identity = entry.origin.identity.as_deref();
    let target = ctx.target_name(destination);
    let (user, database) = entry.startup.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let session_policy =
        policy.as_ref().map(|p| p.for_session(identity.unwrap_or(""), entry.origin.verified_claims(), destination));
    if let Some(g) = session_policy.as_ref().and_then(|p| p.guardrails())
        && let Some(message) = g.connect_refusal(identity.unwrap_or(""), &[&target, destination], &database, &user)
    {
        crate::audit::connect_denial(entry, &message);
        let _ = client.write_all(&refuse("28000", &message)).await;
        return Err(SessionError::Refused(message));
    }
    let credential = ctx.credentials.find(&target, identity);
    if let Some(c) = &credential
        && c.user != user
    {
        let message = format!(
            "masker: connections to {target}{} log in as database user \"{}\" with a password the agent holds; \
             connect as user \"{}\" (no password needed), not \"{user}\"",
            identity.map(|i| format!(" from identity {i}")).unwrap_or_default(),
            c.user,
            c.user,
        );
        let _ = client.write_all(&refuse("28000", &message)).await;
        return Err(SessionError::Refused(message));
    }
    let server = match connect_upstream(destination, ctx, entry.origin.netns.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            let mut out = BytesMut::new();
            let msg = format!("masker: cannot connect to the database server {destination}: {e}");
            wire::put_error(&mut out, Severity::Fatal, "08006", &msg);
            let _ = client.write_all(&out).await;
            return Err(SessionError::Connect { dest: destination.to_string(), source: e });
        }
    };
    let mut server = match upstream_tls(server, destination, ctx).await {
        Ok(s) => {
            entry.tls_server.store(matches!(s, crate::tls::Upstream::Tls(_)), Ordering::Relaxed);
            s
        }
        Err(e) => {
            let _ = client.write_all(&refuse("08001", &format!("masker: {e}"))).await;
            let _ = client.flush().await;
            return Err(SessionError::UpstreamTls(e));
        }
    };
    server.write_all(&buf[..startup_len]).await.map_err(|e| SessionError::Server(e.into()))?;
    server.flush().await.map_err(|e| SessionError::Server(e.into()))?;
    entry.metrics.session(identity.unwrap_or(""));
    crate::audit::session_start(&ctx.registry.audit, entry);
    buf.advance(startup_len);
    let from_server = match &credential {
        None => BytesMut::new(),
        Some(c) => login(client, &mut server, c, ctx).await?,
    };

    match session_policy {
        // No policy but an audit trail: statements are followed, not masked.
        None if ctx.registry.audit.enabled() => {
            let observe = MaskContext {
                policy: crate::policy::SessionPolicy::allow_all(),
                catalog: ctx.catalog.clone(),
                destination: catalog_key(destination, entry, ctx),
                database,
                entry: entry.clone(),
            };
            let queue = ExpectQueue::default();
            let client_filter = ClientTracker::new(queue.clone(), None).observed(entry.clone()).observe_only();
            let server_filter = ServerTracker::new(queue, observe).observe_only();
            relay(client, &mut server, &buf, &from_server, client_filter, server_filter, false, ctx, entry).await
        }
        None => {
            let filter = ServerFilter::new(&entry.counters);
            relay(client, &mut server, &buf, &from_server, ClientFilter, filter, false, ctx, entry).await
        }
        Some(session_policy) => {
            let holds = !session_policy.approvals().is_empty();
            let mask = MaskContext {
                policy: session_policy,
                catalog: ctx.catalog.clone(),
                destination: catalog_key(destination, entry, ctx),
                database,
                entry: entry.clone(),
            };
            let queue = ExpectQueue::default();
            let client_filter = ClientTracker::new(queue.clone(), Some(mask.lineage_guard())).observed(entry.clone());
            let server_filter = ServerTracker::new(queue, mask);
            relay(client, &mut server, &buf, &from_server, client_filter, server_filter, holds, ctx, entry).await
        }
    }
}

/// The catalog's key for the session's server: for a client in another
/// network namespace, qualified by that namespace (and looked up from there).
fn catalog_key(destination: &str, entry: &SessionEntry, ctx: &SessionContext) -> String {
    if let Some(ns) = &entry.origin.netns {
        ctx.catalog.register_netns(ns);
    }
    crate::catalog::destination_key(destination, entry.origin.netns.as_ref())
}

/// Logs in to `server` with `credential` (see [`crate::credentials`]);
/// returns the server's bytes from `AuthenticationOk` or its ErrorResponse
/// on, for the relay. A server whose authentication cannot be answered ends
/// the session with an error to the client that never contains the secret.
async fn login<C: SplitIo>(
    client: &mut C,
    server: &mut Upstream,
    credential: &Credential,
    ctx: &SessionContext,
) -> Result<BytesMut, SessionError> {
    let binding = match server {
        Upstream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| crate::credentials::tls_server_end_point(cert)),
        Upstream::Plain(_) => None,
    };
    let attempt = crate::credentials::inject(server, credential, binding);
    match tokio::time::timeout(ctx.limits.connect_timeout, attempt).await {
        Ok(Ok((pending, mechanism))) => {
            debug!(user = %credential.user, mechanism = mechanism.unwrap_or("password"), "injected login answered");
            Ok(pending)
        }
        Ok(Err(InjectOutcome::Io(e))) => {
            let message = "masker: the database server closed the connection during the injected login";
            let _ = client.write_all(&refuse("08006", message)).await;
            Err(SessionError::Server(e.into()))
        }
        Ok(Err(InjectOutcome::Failed(e))) => {
            let _ = client.write_all(&refuse("08P01", &format!("masker: {e}"))).await;
            Err(SessionError::Inject(e))
        }
        Err(_) => {
            let message = format!(
                "masker: the database server did not complete the injected login within {:?}",
                ctx.limits.connect_timeout
            );
            let _ = client.write_all(&refuse("08006", &message)).await;
            Err(SessionError::Server(io::Error::new(io::ErrorKind::TimedOut, message).into()))
        }
    }
}

/// Relays both directions until either ends. `pending` holds client bytes
/// read after the startup packet, `from_server` server bytes read by an
/// injected login (they go through the server filter like any other);
/// `holds`: the policy has `[[approval]]` rules (the client may get notices).
#[allow(clippy::too_many_arguments)]
async fn relay<C: SplitIo, S: SplitIo, CF: Filter, SF: Filter + Send>(
    client: &mut C,
    server: &mut S,
    pending: &[u8],
    from_server: &[u8],
    mut client_filter: CF,
    server_filter: SF,
    holds: bool,
    ctx: &SessionContext,
    entry: &SessionEntry,
) -> Result<(), SessionError> {
    let counters = &entry.counters;
    let mut to_server = Pump::new(ctx.limits.max_client_message).with_hangup(entry.client_hangup.clone());
    to_server.preload(pending);
    let mut to_client = Pump::new(ctx.limits.max_server_message);
    if holds {
        // Only sessions whose statements may be held for approval get notices
        // of the agent's own (and pay for watching the outbox on each read).
        to_client = to_client.with_outbox(entry.to_client.clone());
    }
    to_client.preload(from_server);
    // Either leg in TLS: the server may offer channel binding, which
    // cannot work across masker.
    let mut server_filter = NoChannelBinding::new(server_filter, client.is_tls() || server.is_tls());
    let (mut cr, mut cw) = client.split_io();
    let (mut sr, mut sw) = server.split_io();

    let result = {
        let c2s = async {
            let r = to_server.run(&mut cr, &mut sw, &mut client_filter, &counters.bytes_from_client).await;
            if r.is_ok() {
                // The client is gone: let the server see end of stream too.
                let _ = sw.shutdown().await;
            }
            r
        };
        let s2c = to_client.run(&mut sr, &mut cw, &mut server_filter, &counters.bytes_to_client);
        tokio::pin!(c2s, s2c);
        tokio::select! {
            r = &mut c2s => match r {
                // Let the server finish what it was sending.
                Ok(()) => s2c.await.map_err(SessionError::Server),
                Err(e) => Err(SessionError::Client(e)),
            },
            r = &mut s2c => r.map_err(SessionError::Server),
            () = entry.kill.killed() => Err(SessionError::Killed),
        }
    };

    if let Err(e) = &result
        && to_client.at_boundary()
    {
        let (code, message) = match e {
            SessionError::Client(RelayError::Refused { code, message })
            | SessionError::Server(RelayError::Refused { code, message }) => (*code, message.clone()),
            SessionError::Client(RelayError::Frame(f)) => {
                ("08P01", format!("masker: invalid message from client: {f}"))
            }
            SessionError::Server(RelayError::Frame(_) | RelayError::Truncated) => {
                ("08P01", "masker: invalid message from the database server; session closed".to_string())
            }
            SessionError::Killed => ("57P01", "masker: session terminated by an operator".to_string()),
            _ => return result,
        };
        let mut out = BytesMut::new();
        wire::put_error(&mut out, Severity::Fatal, code, &message);
        let _ = cw.write_all(&out).await;
        let _ = cw.flush().await;
    }
    match result {
        // A client that vanished is not a failure of the session.
        Err(SessionError::Client(RelayError::Io(e))) if is_disconnect(&e) => Ok(()),
        Err(SessionError::Server(RelayError::Io(e))) if is_disconnect(&e) => Ok(()),
        other => other,
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof)
}

/// A CancelRequest is forwarded as is to the server the session's
/// destination names: the client holds the server's own BackendKeyData
/// because the relay passed it through unchanged.
async fn forward_cancel(
    packet: &[u8],
    destination: &str,
    ctx: &SessionContext,
    netns: Option<&crate::interception::netns::NetnsOrigin>,
) -> Result<(), SessionError> {
    let server = connect_upstream(destination, ctx, netns)
        .await
        .map_err(|source| SessionError::Connect { dest: destination.to_string(), source })?;
    let mut server = upstream_tls(server, destination, ctx).await.map_err(SessionError::UpstreamTls)?;
    server.write_all(packet).await.map_err(|e| SessionError::Server(e.into()))?;
    server.flush().await.map_err(|e| SessionError::Server(e.into()))?;
    // The server closes the connection without answering.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sink)).await;
    Ok(())
}

/// Sets up TLS on a fresh server connection as the target's settings say.
async fn upstream_tls(
    stream: TcpStream,
    destination: &str,
    ctx: &SessionContext,
) -> Result<Upstream, UpstreamTlsError> {
    match ctx.tls.target(destination) {
        Some(target) => crate::tls::negotiate_upstream(stream, &target).await,
        None => Ok(Upstream::Plain(stream)),
    }
}

/// Connects to `destination` (`host:port`, names resolved now), trying each
/// address in turn, within the connect timeout. For a client in another
/// network namespace (`netns`), from a socket created in that namespace.
async fn connect_upstream(
    destination: &str,
    ctx: &SessionContext,
    netns: Option<&crate::interception::netns::NetnsOrigin>,
) -> io::Result<TcpStream> {
    let attempt = async {
        // An address needs no resolver: `lookup_host` would hand even a
        // literal to the blocking pool, a thread hop on every connection.
        if let Ok(addr) = destination.parse::<SocketAddr>() {
            return match netns {
                Some(ns) => ns.connect(addr, ctx.socket_mark).await,
                None => connect_one(addr, ctx.socket_mark).await,
            };
        }
        if netns.is_some() {
            // Only the workload's own resolver knows its names; the kernel
            // recorded an address, so this does not happen on that path.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a name cannot be resolved in the client's namespace",
            ));
        }
        let mut last = None;
        for addr in tokio::net::lookup_host(destination).await? {
            match connect_one(addr, ctx.socket_mark).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name resolved to no address")))
    };
    match tokio::time::timeout(ctx.limits.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("timed out after {:?}", ctx.limits.connect_timeout)))
        }
    }
}

async fn connect_one(addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}

/// Client → server: rejects message types a client may not send; everything
/// else streams through untouched.
struct ClientFilter;

impl Filter for ClientFilter {
    fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
        if !wire::is_frontend_tag(header.tag) {
            return Err(FrameError::UnknownTag { tag: header.tag });
        }
        Ok(false)
    }

    async fn on_message(&mut self, _msg: &[u8], _out: &mut BytesMut) -> Result<Verdict, RelayError> {
        Ok(Verdict::Forward)
    }
}

/// Server → client without a policy: rejects message types a server does not
/// send and counts rows and statements for `masker status` (in local
/// counters, published once per batch).
struct ServerFilter<'a> {
    counters: &'a SessionCounters,
    rows: u64,
    statements: u64,
}

impl<'a> ServerFilter<'a> {
    fn new(counters: &'a SessionCounters) -> Self {
        ServerFilter { counters, rows: 0, statements: 0 }
    }
}

impl Filter for ServerFilter<'_> {
    fn wants(&mut self, header: Header) -> Result<bool, FrameError> {
        match header.tag {
            backend::DATA_ROW => self.rows += 1,
            backend::COMMAND_COMPLETE => self.statements += 1,
            tag if !wire::is_backend_tag(tag) => return Err(FrameError::UnknownTag { tag }),
            _ => {}
        }
        Ok(false)
    }

    async fn on_message(&mut self, _msg: &[u8], _out: &mut BytesMut) -> Result<Verdict, RelayError> {
        Ok(Verdict::Forward)
    }

    fn on_flush(&mut self) {
        if self.rows > 0 {
            self.counters.rows.fetch_add(std::mem::take(&mut self.rows), Ordering::Relaxed);
        }
        if self.statements > 0 {
            self.counters.statements.fetch_add(std::mem::take(&mut self.statements), Ordering::Relaxed);
        }
    }
}
