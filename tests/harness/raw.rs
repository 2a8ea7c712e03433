//! A byte-level PostgreSQL client for protocol edge cases.
//!
//! [`RawConn`] sends exactly the bytes a test gives it and returns backend
//! messages as they arrived (tag + body, not decoded), so tests can assert
//! exact bytes and compare a session through masker with one direct. It can
//! log in with SCRAM-SHA-256 (no channel binding) on its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ConnInfo;

/// Default deadline for one read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One backend message as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The message as it was on the wire (tag, length, body).
    pub fn wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 5);
        out.push(self.tag);
        out.extend_from_slice(&(self.body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Fields of an ErrorResponse or NoticeResponse, by field code.
    pub fn fields(&self) -> BTreeMap<char, String> {
        error_fields(&self.body)
    }

    /// The SQLSTATE of an ErrorResponse/NoticeResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.fields().get(&'C').cloned()
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.tag as char, String::from_utf8_lossy(&self.body))
    }
}

/// Parses the fields of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> BTreeMap<char, String> {
    let mut fields = BTreeMap::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        fields.insert(code as char, String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    fields
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Msg(Msg),
    /// The peer closed the connection (cleanly or by reset).
    Closed,
}

/// A raw TCP connection speaking the PostgreSQL protocol byte by byte.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Connects (10 s deadline).
    pub async fn connect(addr: SocketAddr) -> Result<RawConn> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, buf: BytesMut::new() })
    }

    /// Connects and logs in as `info` (startup + SCRAM), returning the
    /// messages after AuthenticationOk up to and including ReadyForQuery.
    pub async fn login(addr: SocketAddr, info: &ConnInfo) -> Result<(RawConn, Vec<Msg>)> {
        let mut conn = RawConn::connect(addr).await?;
        let after = conn.startup(info, &[]).await?;
        Ok((conn, after))
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends the startup message and authenticates; returns the messages
    /// after AuthenticationOk up to and including ReadyForQuery.
    pub async fn startup(&mut self, info: &ConnInfo, extra: &[(&str, &str)]) -> Result<Vec<Msg>> {
        let mut params = vec![("user", info.user.as_str()), ("database", info.dbname.as_str())];
        params.extend_from_slice(extra);
        self.send(&startup_message(&params)).await?;
        let mut scram = None;
        loop {
            let msg = self.expect_msg().await?;
            match msg.tag {
                b'R' => {
                    let mut body = &msg.body[..];
                    ensure!(body.len() >= 4, "short Authentication message");
                    match body.get_i32() {
                        0 => break,
                        10 => {
                            let mechanisms = String::from_utf8_lossy(body);
                            ensure!(mechanisms.contains("SCRAM-SHA-256"), "server offers {mechanisms:?}");
                            let s = ScramSha256::new(info.password.as_bytes(), ChannelBinding::unsupported());
                            let mut out = BytesMut::new();
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
                            self.send(&out).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASLContinue before SASL")?;
                            s.update(body)?;
                            let mut out = BytesMut::new();
                            frontend::sasl_response(s.message(), &mut out)?;
                            self.send(&out).await?;
                        }
                        12 => scram.as_mut().context("SASLFinal before SASL")?.finish(body)?,
                        code => bail!("unsupported authentication request {code}"),
                    }
                }
                b'E' => bail!("login failed: {:?}", msg.fields()),
                other => bail!("unexpected message {:?} during authentication", other as char),
            }
        }
        self.read_until_ready().await
    }

    /// Reads one message or EOF, within [`READ_TIMEOUT`].
    pub async fn read(&mut self) -> Result<Read> {
        self.read_within(READ_TIMEOUT).await
    }

    /// Reads one message or EOF, within `limit`.
    pub async fn read_within(&mut self, limit: Duration) -> Result<Read> {
        tokio::time::timeout(limit, self.read_inner()).await.with_context(|| format!("no message within {limit:?}"))?
    }

    async fn read_inner(&mut self) -> Result<Read> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
                ensure!(len >= 4, "backend sent a message with length {len}");
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    let body = self.buf.split_to(len - 4).to_vec();
                    return Ok(Read::Msg(Msg { tag, body }));
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    ensure!(self.buf.is_empty(), "connection closed inside a message: {:?}", &self.buf[..]);
                    return Ok(Read::Closed);
                }
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(Read::Closed),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Reads one message; EOF is an error.
    pub async fn expect_msg(&mut self) -> Result<Msg> {
        match self.read().await? {
            Read::Msg(msg) => Ok(msg),
            Read::Closed => bail!("connection closed, expected a message"),
        }
    }

    /// Reads a single byte (the answer to SSLRequest/GSSENCRequest).
    pub async fn read_byte(&mut self) -> Result<u8> {
        ensure!(self.buf.is_empty(), "buffered bytes before a single-byte answer");
        let byte = tokio::time::timeout(READ_TIMEOUT, self.stream.read_u8()).await.context("no answer byte")??;
        Ok(byte)
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        loop {
            let msg = self.expect_msg().await?;
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }

    /// Asserts the peer closes the connection within `limit` (messages
    /// before the close are returned).
    pub async fn expect_closed(&mut self, limit: Duration) -> Result<Vec<Msg>> {
        let mut before = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_within(left).await.context("expected the connection to close")? {
                Read::Msg(msg) => before.push(msg),
                Read::Closed => return Ok(before),
            }
        }
    }

    /// Whether bytes arrive or the connection ends within `limit`.
    pub async fn quiet_for(&mut self, limit: Duration) -> bool {
        self.buf.is_empty() && tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)).await.is_err()
    }
}

/// A StartupMessage (protocol 3.0) with `params`.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).expect("startup message");
    out.to_vec()
}

/// The 8-byte SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    out.to_vec()
}

/// The 8-byte GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    [&8u32.to_be_bytes()[..], &80_877_104u32.to_be_bytes()[..]].concat()
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).expect("query message");
    out.to_vec()
}

/// Terminate.
pub fn terminate() -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::terminate(&mut out);
    out.to_vec()
}

/// An extended-protocol round: Parse (unnamed), Bind with text `params`
/// and `result_format` for all columns, Describe portal, Execute, Sync.
pub fn extended(sql: &str, params: &[Option<&str>], result_format: i16) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut out).expect("parse");
    frontend::bind(
        "",
        "",
        std::iter::once(0i16),
        params.iter(),
        |param, buf| match param {
            Some(value) => {
                buf.put_slice(value.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        std::iter::once(result_format),
        &mut out,
    )
    .map_err(|_| "bind")
    .expect("bind message");
    frontend::describe(b'P', "", &mut out).expect("describe");
    frontend::execute("", 0, &mut out).expect("execute");
    frontend::sync(&mut out);
    out.to_vec()
}

/// A message with `tag` and a length field of `len` exactly as given (which
/// may lie), followed by `body`.
pub fn message_with_len(tag: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Concatenates the wire bytes of `msgs`.
pub fn wire(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter().flat_map(Msg::wire).collect()
}
