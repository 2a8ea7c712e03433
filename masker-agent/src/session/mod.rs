//! One client connection, from the first byte to the last: the startup
//! handshake, the identity's connect rules (`targets`, `databases`, `users`
//! of its policy block), the connection to the real server, the login
//! (relayed, or injected by [`auth`]), then the relay of both
//! directions until either side ends.
//!
//! The session is the same in agent mode and in proxy mode; only the
//! [`SessionOrigin`] (where the client was going, who it is) differs.
//!
//! The files follow the session: [`context`] (what it runs in), [`startup`](mod@startup)
//! (first packets, TLS with the client), [`upstream`] (the server
//! connection), [`auth`] (the login), [`relay`](mod@relay) (both directions),
//! [`track`] (following each result to its statement), with [`tls`] for
//! both legs' TLS settings and [`stream`] for the streams themselves.
//! [`budget`] bounds the memory a session's partial messages hold, and
//! [`drain`] knows whether a statement is running, for the daemon's stop.

pub mod auth;
pub mod budget;
pub mod context;
pub mod drain;
pub mod error;
pub mod relay;
mod report;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod track;
pub mod upstream;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::daemon::registry::{SessionCounters, SessionOrigin};
use crate::plan::PlanContext;
use crate::policy::SessionPolicy;
use crate::wire::message::Message;
use crate::wire::{self, FrameError, Header, Severity, backend};
use auth::{Credential, InjectOutcome, NoChannelBinding, inject, tls_server_end_point};
use budget::SessionBudget;
use context::{Route, Session, SessionContext};
use drain::{Activity, Direction};
use error::{SessionError, fatal};
use relay::{Filter, Pump, RelayError, Verdict};
use startup::{Startup, accept_tls, startup};
use stream::SplitIo;
use tls::Upstream;
use track::model::Published;
use track::{ClientTracker, ExpectQueue, ServerTracker};
use upstream::{connect_upstream, upstream_tls};

/// Serves one accepted client connection along `route`. Never panics on peer
/// input; every outcome is logged without data values.
pub async fn serve(client: TcpStream, origin: SessionOrigin, route: Route, ctx: Arc<SessionContext>) {
    let _ = client.set_nodelay(true);
    ctx.metrics.counters.connections.fetch_add(1, Ordering::Relaxed);
    let guard = ctx.registry.open(origin);
    let entry = &guard.entry;
    let session = Arc::new(Session::new(ctx.clone(), entry.clone()));
    debug!(session = entry.id, client = %entry.origin.client, "connection accepted");
    let result = handshake(client, &route, &ctx, &session).await;
    session.session_end(result.as_ref().err().map(|e| e.to_string()).as_deref());
    match result {
        Ok(()) => info!(
            session = entry.id,
            bytes_in = entry.counters.bytes_from_client.load(Ordering::Relaxed),
            bytes_out = entry.counters.bytes_to_client.load(Ordering::Relaxed),
            secs = entry.started.elapsed().as_secs_f64(),
            "session ended"
        ),
        Err(e) => {
            let counters = &ctx.metrics.counters;
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

/// The startup handshake: plain text, then (when the client asks and masker
/// has a CA) TLS, then the session proper over whichever stream results.
async fn handshake(
    mut client: TcpStream,
    route: &Route,
    ctx: &SessionContext,
    session: &Arc<Session>,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let allow_tls = ctx.tls.client.is_some();
    match startup(&mut client, &mut buf, allow_tls, route, ctx, session).await? {
        Startup::Done => Ok(()),
        Startup::Packet(len) => run(&mut client, buf, len, route, ctx, session).await,
        Startup::Tls => {
            let mut stream = accept_tls(client, ctx, session).await?;
            let result = match startup(&mut stream, &mut buf, false, route, ctx, session).await {
                Ok(Startup::Packet(len)) => run(&mut stream, buf, len, route, ctx, session).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            // Sends what is still buffered (an error message) and close_notify.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            result
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
    session: &Arc<Session>,
) -> Result<(), SessionError> {
    let entry = &session.entry;
    let destination = match route {
        Route::To(d) => d,
        Route::Refuse { code, message, denial } => {
            if let Some(rule) = denial {
                session.connect_denial(rule, code, message);
            }
            let _ = client.write_all(&fatal(code, message)).await;
            return Err(SessionError::Refused(message.clone()));
        }
    };
    let policy = ctx.current_policy();
    let identity = entry.origin.identity.as_deref();
    let target = ctx.target_name(destination);
    let (user, database) = entry.startup.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let session_policy = policy
        .as_ref()
        .map(|p| p.for_session(identity.unwrap_or(""), entry.origin.verified_claims(), destination.as_str()));
    let observe = session_policy.as_ref().is_some_and(|p| p.observes());
    if observe {
        entry.observe.store(true, Ordering::Relaxed);
        warn!(
            session = entry.id,
            identity = identity.unwrap_or(""),
            "OBSERVE MODE: session relayed unmasked; what masker would mask or refuse is only recorded"
        );
    }
    if let Some(g) = session_policy.as_ref().and_then(|p| p.guardrails())
        && let Some(message) =
            g.connect_refusal(identity.unwrap_or(""), &[target.as_str(), destination.as_str()], &database, &user)
    {
        if observe {
            session.observed_connect_denial(&message);
        } else {
            session.connect_denial("identity", "28000", &message);
            let _ = client.write_all(&fatal("28000", &message)).await;
            return Err(SessionError::Refused(message));
        }
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
        let _ = client.write_all(&fatal("28000", &message)).await;
        return Err(SessionError::Refused(message));
    }
    if ctx.shutdown.is_draining() {
        let message = "masker: terminating connection because masker is shutting down";
        let _ = client.write_all(&fatal("57P01", message)).await;
        return Err(SessionError::Refused(message.into()));
    }
    let server = match connect_upstream(destination, ctx, entry.origin.netns.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            let mut out = BytesMut::new();
            let msg = format!("masker: cannot connect to the database server {destination}: {e}");
            wire::put_error(&mut out, Severity::Fatal, "08006", &msg);
            let _ = client.write_all(&out).await;
            return Err(SessionError::Connect { dest: destination.clone(), source: e });
        }
    };
    let mut server = match upstream_tls(server, destination, ctx).await {
        Ok(s) => {
            entry.tls_server.store(matches!(s, Upstream::Tls(_)), Ordering::Relaxed);
            s
        }
        Err(e) => {
            let _ = client.write_all(&fatal("08001", &format!("masker: {e}"))).await;
            let _ = client.flush().await;
            return Err(SessionError::UpstreamTls(e));
        }
    };
    server.write_all(&buf[..startup_len]).await.map_err(|e| SessionError::Server(e.into()))?;
    server.flush().await.map_err(|e| SessionError::Server(e.into()))?;
    ctx.metrics.session(identity.unwrap_or(""));
    session.session_start();
    buf.advance(startup_len);
    let from_server = match &credential {
        None => BytesMut::new(),
        Some(c) => login(client, &mut server, c, ctx).await?,
    };

    // The catalog's key for the server: for a client in another network
    // namespace, qualified by that namespace (and looked up from there).
    if let Some(ns) = &entry.origin.netns {
        ctx.catalog.register_netns(ns);
    }
    let catalog_destination = crate::plan::catalog::destination_key(destination, entry.origin.netns.as_ref());
    let plan = |policy| {
        Arc::new(PlanContext {
            policy,
            catalog: ctx.catalog.clone(),
            destination: catalog_destination.clone(),
            database: database.clone(),
            user: user.clone(),
        })
    };
    match session_policy {
        // No policy but an audit trail: statements are followed, not masked.
        None if ctx.audit.enabled() => {
            let queue = ExpectQueue::default();
            let model = Published::default();
            let client_filter = ClientTracker::new(queue.clone(), None, session.clone(), model.clone()).observe_only();
            let server_filter =
                ServerTracker::new(queue, plan(SessionPolicy::allow_all()), session.clone(), model).observe_only();
            relay(client, &mut server, &buf, &from_server, client_filter, server_filter, false, ctx, session).await
        }
        None => {
            let filter = ServerFilter::new(&entry.counters);
            relay(client, &mut server, &buf, &from_server, ClientFilter, filter, false, ctx, session).await
        }
        Some(session_policy) => {
            // Observe mode holds nothing: nobody would be told.
            let holds = !session_policy.approvals().is_empty() && !observe;
            let plan = plan(session_policy);
            let queue = ExpectQueue::default();
            let model = Published::default();
            let mut client_filter =
                ClientTracker::new(queue.clone(), Some(plan.clone()), session.clone(), model.clone());
            let mut server_filter = ServerTracker::new(queue, plan, session.clone(), model);
            if observe {
                client_filter = client_filter.observing();
                server_filter = server_filter.observing();
            }
            relay(client, &mut server, &buf, &from_server, client_filter, server_filter, holds, ctx, session).await
        }
    }
}

/// Logs in to `server` with `credential` (see [`crate::session::auth`]);
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
            .and_then(|cert| tls_server_end_point(cert)),
        Upstream::Plain(_) => None,
    };
    let attempt = inject(server, credential, binding);
    match tokio::time::timeout(ctx.limits.auth_timeout, attempt).await {
        Ok(Ok((pending, mechanism))) => {
            debug!(user = %credential.user, mechanism = mechanism.unwrap_or("password"), "injected login answered");
            Ok(pending)
        }
        Ok(Err(InjectOutcome::Io(e))) => {
            let message = "masker: the database server closed the connection during the injected login";
            let _ = client.write_all(&fatal("08006", message)).await;
            Err(SessionError::Server(e.into()))
        }
        Ok(Err(InjectOutcome::Failed(e))) => {
            let _ = client.write_all(&fatal("08P01", &format!("masker: {e}"))).await;
            Err(SessionError::Inject(e))
        }
        Err(_) => {
            let message = format!(
                "masker: the database server did not complete the injected login within {}s (auth_timeout_secs)",
                ctx.limits.auth_timeout.as_secs()
            );
            let _ = client.write_all(&fatal("08006", &message)).await;
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
    session: &Session,
) -> Result<(), SessionError> {
    let entry = &session.entry;
    let counters = &entry.counters;
    let limits = &ctx.limits;
    let activity = Arc::new(Activity::default());
    let budget = SessionBudget::new(ctx.budget.clone(), entry.clone());
    let mut to_server = Pump::new(limits.max_client_message)
        .with_hangup(session.client_hangup.clone())
        .with_budget(budget.clone())
        .with_partial_timeout(limits.partial_message_timeout)
        .with_activity(activity.clone(), Direction::ToServer);
    to_server.preload(pending);
    let mut to_client =
        Pump::new(limits.max_server_message).with_budget(budget).with_activity(activity.clone(), Direction::ToClient);
    if holds {
        // Only sessions whose statements may be held for approval get notices
        // of the agent's own (and pay for watching the outbox on each read).
        to_client = to_client.with_outbox(session.to_client.clone());
    }
    to_client.preload(from_server);
    // Either leg in TLS: the server may offer channel binding, which
    // cannot work across masker.
    let mut server_filter = NoChannelBinding::new(server_filter, client.is_tls() || server.is_tls());
    let (mut cr, mut cw) = client.split_io();
    let (mut sr, mut sw) = server.split_io();
    // The login has `auth_timeout` to complete (a relayed login's
    // exchange, or the rest of an injected one).
    let login = async {
        if tokio::time::timeout(limits.auth_timeout, activity.login()).await.is_ok() {
            std::future::pending::<()>().await;
        }
    };

    let mut client_left = false;
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
                Ok(()) => {
                    client_left = true;
                    s2c.await.map_err(SessionError::Server)
                }
                Err(e) => Err(SessionError::Client(e)),
            },
            r = &mut s2c => match r {
                // The server ended the session while the client still
                // wanted it: unless it said why (a FATAL error), say so.
                Ok(()) => Err(SessionError::Server(RelayError::Truncated)),
                Err(e) => Err(SessionError::Server(e)),
            },
            () = entry.kill.killed() => Err(SessionError::Killed),
            () = ctx.shutdown.session_may_end(&activity) => Err(SessionError::ShuttingDown),
            () = login => Err(SessionError::AuthTimeout(limits.auth_timeout)),
        }
    };

    let told = to_client.last_tag() == backend::ERROR_RESPONSE;
    client_left |= to_server.last_tag() == wire::frontend::TERMINATE;
    let server_name = || {
        entry.origin.destination.as_ref().map_or_else(
            || "the database server".to_string(),
            |d| format!("the database server {}", ctx.target_name(d)),
        )
    };
    if let Err(e) = &result
        && to_client.at_boundary()
        && !client_left
    {
        let (code, message) = match e {
            SessionError::Client(RelayError::Refused { code, message })
            | SessionError::Server(RelayError::Refused { code, message }) => (*code, message.clone()),
            SessionError::Client(RelayError::Frame(f)) => {
                ("08P01", format!("masker: invalid message from client: {f}"))
            }
            SessionError::Client(RelayError::Stalled(limit)) => (
                "08P01",
                format!(
                    "masker: the client sent part of a message, then nothing for {}s (partial_message_timeout_secs); \
                     session closed",
                    limit.as_secs()
                ),
            ),
            SessionError::Client(RelayError::Memory(m)) => ("53200", format!("masker: {m}; session closed")),
            SessionError::Server(RelayError::Memory(m)) => {
                ("53200", format!("masker: a message from {}: {m}; session closed", server_name()))
            }
            SessionError::Server(RelayError::Frame(_)) => {
                ("08P01", "masker: invalid message from the database server; session closed".to_string())
            }
            // It sent its own FATAL error first (a terminated backend, a
            // server shutting down): the client knows why.
            SessionError::Server(RelayError::Truncated | RelayError::Io(_)) if told => return Ok(()),
            SessionError::Server(RelayError::Truncated | RelayError::Io(_)) => {
                ("08006", format!("masker: {} closed the connection unexpectedly", server_name()))
            }
            SessionError::Killed => ("57P01", "masker: session terminated by an operator".to_string()),
            SessionError::ShuttingDown => {
                ("57P01", "masker: terminating connection because masker is shutting down".to_string())
            }
            SessionError::AuthTimeout(limit) => {
                ("08006", format!("masker: the login did not complete within {}s (auth_timeout_secs)", limit.as_secs()))
            }
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
        Err(SessionError::Server(RelayError::Io(e))) if is_disconnect(&e) && (client_left || told) => Ok(()),
        // The server closed at a message boundary after telling the client
        // why (or after the client left).
        Err(SessionError::Server(RelayError::Truncated)) if (client_left || told) && to_client.at_boundary() => Ok(()),
        other => other,
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof)
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

    async fn on_message(&mut self, _msg: Message<'_>, _out: &mut BytesMut) -> Result<Verdict, RelayError> {
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

    async fn on_message(&mut self, _msg: Message<'_>, _out: &mut BytesMut) -> Result<Verdict, RelayError> {
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
