//! A deliberately leaking relay: a stand-in for a broken masker that adds a
//! personal value to an otherwise clean session, in one chosen form and
//! channel. The finder's own tests point the attack clients at it and
//! require the finder to report the leak, in that channel.
//!
//! The relay parses the server-to-client stream into messages. After the
//! start-up (the first ReadyForQuery) it acts once per session, on the first
//! statement result (the first CommandComplete or CopyDone):
//!
//! - [`Inject::Notice`], [`Inject::Notification`], [`Inject::ParameterStatus`]
//!   add that message before the ReadyForQuery that follows;
//! - [`Inject::Error`] replaces the CommandComplete with an ErrorResponse;
//! - [`Inject::Cell`] replaces the first cell of the first DataRow (text, or
//!   the binary encoding of a typed value for binary clients);
//! - [`Inject::Copy`] replaces the data of the first CopyData.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// What the relay adds to each session.
#[derive(Clone, Debug)]
pub enum Inject {
    /// Nothing: a transparent relay (the clean control).
    Nothing,
    /// A NoticeResponse whose message is this text.
    Notice(String),
    /// A NotificationResponse on channel `leak` with this payload.
    Notification(String),
    /// A ParameterStatus `(name, value)`.
    ParameterStatus(String, String),
    /// An ErrorResponse whose message is this text, instead of CommandComplete.
    Error(String),
    /// The first DataRow's first cell, as these bytes.
    Cell(Vec<u8>),
    /// The first CopyData's data.
    Copy(Vec<u8>),
}

/// A running leaking relay; stops accepting when dropped.
pub struct LeakyRelay {
    addr: SocketAddr,
}

impl LeakyRelay {
    /// Listens on `127.0.0.1:0`, relays to `upstream`, injecting `inject`.
    pub fn start(upstream: SocketAddr, inject: Inject) -> Result<LeakyRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the leaking relay")?;
        let addr = listener.local_addr()?;
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else { continue };
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { continue };
                thread::spawn(move || copy(client, server2));
                let inject = inject.clone();
                thread::spawn(move || relay_backend(server, client2, inject));
            }
        });
        Ok(LeakyRelay { addr })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn fields(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (f, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', text)] {
        body.push(f);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

/// Relays backend messages, injecting once after the start-up.
fn relay_backend(mut server: TcpStream, mut client: TcpStream, inject: Inject) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    // The single-byte answer to SSLRequest/GSSENCRequest precedes any message.
    let mut started = false;
    let mut first_byte_checked = false;
    let mut done = matches!(inject, Inject::Nothing);
    let mut pending: Option<Vec<u8>> = None;
    let mut row_done = false;
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        if !first_byte_checked {
            first_byte_checked = true;
            if buf.len() == 1 && (buf[0] == b'N' || buf[0] == b'S' || buf[0] == b'G') {
                out.extend_from_slice(&buf);
                buf.clear();
                first_byte_checked = false;
            }
        }
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let msg: Vec<u8> = buf.drain(..len + 1).collect();
            let (tag, body) = (msg[0], &msg[5..]);
            if !started || done {
                started |= tag == b'Z';
                out.extend_from_slice(&msg);
                continue;
            }
            match (&inject, tag) {
                (Inject::Cell(cell), b'D') if !row_done => {
                    row_done = true;
                    let mut new = body[..2].to_vec();
                    let first_len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    let rest = 6 + first_len.max(0) as usize;
                    new.extend_from_slice(&(cell.len() as i32).to_be_bytes());
                    new.extend_from_slice(cell);
                    new.extend_from_slice(&body[rest..]);
                    out.extend_from_slice(&message(b'D', &new));
                }
                (Inject::Copy(data), b'd') if !row_done => {
                    row_done = true;
                    out.extend_from_slice(&message(b'd', data));
                }
                (Inject::Error(text), b'C') => {
                    out.extend_from_slice(&message(b'E', &fields("ERROR", "XX000", text)));
                    done = true;
                }
                (_, b'C' | b'c') if pending.is_none() => {
                    out.extend_from_slice(&msg);
                    pending = match &inject {
                        Inject::Notice(text) => Some(message(b'N', &fields("NOTICE", "00000", text))),
                        Inject::Notification(payload) => {
                            let mut body = 4242u32.to_be_bytes().to_vec();
                            body.extend_from_slice(b"leak\0");
                            body.extend_from_slice(payload.as_bytes());
                            body.push(0);
                            Some(message(b'A', &body))
                        }
                        Inject::ParameterStatus(name, value) => {
                            Some(message(b'S', format!("{name}\0{value}\0").as_bytes()))
                        }
                        _ => None,
                    };
                    if pending.is_none() && row_done {
                        done = true;
                    }
                }
                (_, b'Z') => {
                    if let Some(p) = pending.take() {
                        out.extend_from_slice(&p);
                        done = true;
                    }
                    out.extend_from_slice(&msg);
                }
                _ => out.extend_from_slice(&msg),
            }
        }
        if client.write_all(&out).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// The binary encoding of a date (`YYYY-MM-DD`): days since 2000-01-01.
pub fn binary_date(date: &str) -> Vec<u8> {
    let p: Vec<i64> = date.split('-').map(|x| x.parse().expect("date part")).collect();
    let (y, m, d) = (p[0], p[1], p[2]);
    // Howard Hinnant's days_from_civil, shifted to 2000-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468 - 10_957;
    (days as i32).to_be_bytes().to_vec()
}

/// The binary encoding of an IPv4 `inet` host address.
pub fn binary_inet(ip: &str) -> Vec<u8> {
    let addr: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    let mut out = vec![2, 32, 0, 4];
    out.extend_from_slice(&addr.octets());
    out
}

/// The binary encoding of a `uuid`.
pub fn binary_uuid(uuid: &str) -> Vec<u8> {
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).collect();
    (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect()
}
