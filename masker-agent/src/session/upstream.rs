//! The server side of a session: connecting to the destination (with the
//! agent's `SO_MARK`), TLS as the target's settings say, and forwarding a
//! CancelRequest.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::context::SessionContext;
use super::error::SessionError;
use super::tls::{Upstream, UpstreamTlsError, negotiate_upstream};
use crate::addr::TargetAddr;

/// A CancelRequest is forwarded as is to the server the session's
/// destination names: the client holds the server's own BackendKeyData
/// because the relay passed it through unchanged.
pub async fn forward_cancel(
    packet: &[u8],
    destination: &TargetAddr,
    ctx: &SessionContext,
    netns: Option<&crate::interception::netns::NetnsOrigin>,
) -> Result<(), SessionError> {
    let server = connect_upstream(destination, ctx, netns)
        .await
        .map_err(|source| SessionError::Connect { dest: destination.clone(), source })?;
    let mut server = upstream_tls(server, destination, ctx).await.map_err(SessionError::UpstreamTls)?;
    server.write_all(packet).await.map_err(|e| SessionError::Server(e.into()))?;
    server.flush().await.map_err(|e| SessionError::Server(e.into()))?;
    // The server closes the connection without answering.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sink)).await;
    Ok(())
}

/// Sets up TLS on a fresh server connection as the target's settings say.
pub async fn upstream_tls(
    stream: TcpStream,
    destination: &TargetAddr,
    ctx: &SessionContext,
) -> Result<Upstream, UpstreamTlsError> {
    let Some(target) = ctx.tls.target(destination) else { return Ok(Upstream::Plain(stream)) };
    let limit = ctx.limits.tls_timeout;
    match tokio::time::timeout(limit, negotiate_upstream(stream, &target)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamTlsError::Handshake {
            host: target.host.clone(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not completed within {}s (tls_timeout_secs)", limit.as_secs()),
            ),
        }),
    }
}

/// Connects to `destination` (`host:port`, names resolved now), trying each
/// address in turn, within the connect timeout. For a client in another
/// network namespace (`netns`), from a socket created in that namespace.
pub async fn connect_upstream(
    destination: &TargetAddr,
    ctx: &SessionContext,
    netns: Option<&crate::interception::netns::NetnsOrigin>,
) -> io::Result<TcpStream> {
    let attempt = async {
        // An address needs no resolver: `lookup_host` would hand even a
        // literal to the blocking pool, a thread hop on every connection.
        if let Some(addr) = destination.socket_addr() {
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
        for addr in tokio::net::lookup_host(destination.as_str()).await? {
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
