//! Passthrough: the client's own login is relayed, without the channel
//! binding variant that cannot work across masker (see [`super`]).

use bytes::{BufMut, BytesMut};

use crate::session::relay::{Filter, RelayError, Verdict};
use crate::wire::auth::{AUTH_OK, AUTH_SASL};
use crate::wire::backend::AUTHENTICATION;
use crate::wire::message::Message;
use crate::wire::{FrameError, Header};

/// The SASL mechanism masker never offers a client.
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

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

    async fn on_message(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Result<Verdict, RelayError> {
        if !(self.active && msg.tag() == AUTHENTICATION) {
            return self.inner.on_message(msg, out).await;
        }
        let code = msg.body().get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == Some(AUTH_OK) {
            self.active = false;
        }
        let rewritten = if code == Some(AUTH_SASL) { without_scram_plus(msg.bytes()) } else { None };
        match (rewritten, self.inner_wants) {
            (None, false) => Ok(Verdict::Forward),
            (None, true) => self.inner.on_message(msg, out).await,
            (Some(new), false) => {
                out.extend_from_slice(&new);
                Ok(Verdict::Replaced)
            }
            (Some(new), true) => match self.inner.on_message(Message::new(&new), out).await? {
                Verdict::Forward => {
                    out.extend_from_slice(&new);
                    Ok(Verdict::Replaced)
                }
                Verdict::Replaced => Ok(Verdict::Replaced),
            },
        }
    }

    fn on_message_now(&mut self, msg: Message<'_>, out: &mut BytesMut) -> Option<Result<Verdict, RelayError>> {
        if self.active && msg.tag() == AUTHENTICATION {
            return None;
        }
        self.inner.on_message_now(msg, out)
    }

    fn on_flush(&mut self) {
        self.inner.on_flush();
    }
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

    #[test]
    fn drops_only_the_plus_variant() {
        let got = without_scram_plus(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])).unwrap();
        assert_eq!(&got[..], &sasl(&["SCRAM-SHA-256"])[..]);
        assert!(without_scram_plus(&sasl(&["SCRAM-SHA-256"])).is_none());
        assert!(without_scram_plus(&sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])[..12]).is_none());
    }
}
