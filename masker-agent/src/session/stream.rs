//! The two byte streams of a session, whatever carries them.
//!
//! Each leg is a plain [`TcpStream`] or TLS over one. [`SplitIo`] splits a
//! leg into a read half and a write half so both relay directions run at
//! once: a plain socket splits into borrowed halves at no cost (no lock, no
//! allocation); a TLS stream shares its state through `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::session::tls::Upstream;

/// A connection that can be split into halves used concurrently.
pub trait SplitIo: AsyncRead + AsyncWrite + Unpin + Send {
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Both halves, borrowing `self`.
    fn split_io(&mut self) -> (Self::Read<'_>, Self::Write<'_>);

    /// Whether masker terminates TLS on this leg.
    fn is_tls(&self) -> bool;
}

impl SplitIo for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn split_io(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }

    fn is_tls(&self) -> bool {
        false
    }
}

/// TLS over a stream (either side of the handshake): the halves share the
/// TLS state through `tokio::io::split`.
macro_rules! tls_split_io {
    ($stream:ident) => {
        impl<S: AsyncRead + AsyncWrite + Unpin + Send> SplitIo for tokio_rustls::$stream::TlsStream<S> {
            type Read<'a>
                = tokio::io::ReadHalf<&'a mut Self>
            where
                S: 'a;
            type Write<'a>
                = tokio::io::WriteHalf<&'a mut Self>
            where
                S: 'a;

            fn split_io(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
                tokio::io::split(self)
            }

            fn is_tls(&self) -> bool {
                true
            }
        }
    };
}

tls_split_io!(server);
tls_split_io!(client);

type UpstreamTls = tokio_rustls::client::TlsStream<TcpStream>;

/// The read half of an [`Upstream`].
pub enum UpstreamRead<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut UpstreamTls>),
}

/// The write half of an [`Upstream`].
pub enum UpstreamWrite<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut UpstreamTls>),
}

impl SplitIo for Upstream {
    type Read<'a> = UpstreamRead<'a>;
    type Write<'a> = UpstreamWrite<'a>;

    fn split_io(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            Upstream::Plain(s) => {
                let (r, w) = s.split();
                (UpstreamRead::Plain(r), UpstreamWrite::Plain(w))
            }
            Upstream::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Upstream::Tls(_))
    }
}

/// Forwards each poll to whichever variant `$self` is.
macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for UpstreamRead<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamWrite<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
