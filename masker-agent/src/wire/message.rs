//! Typed views of whole messages, for the filters: a [`Message`] names its
//! tag and body (no `msg[0]`, `msg[5..]`), and [`Frontend`] reads the client
//! messages the session tracks (Query, Parse, Bind, Describe, Execute,
//! Close). Views borrow the receive buffer; nothing is copied.

use super::{Cursor, Format, FrameError, ResultFormats, frontend};

/// One whole message as framed: tag, length, body.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a>(&'a [u8]);

impl<'a> Message<'a> {
    /// The message in `bytes`, which holds exactly one whole message (as
    /// [`super::peek_header`] framed it).
    pub fn new(bytes: &'a [u8]) -> Message<'a> {
        Message(bytes)
    }

    /// The type byte (0 for an empty buffer, which framing never yields).
    pub fn tag(self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    /// The body after the five-byte header.
    pub fn body(self) -> &'a [u8] {
        self.0.get(5..).unwrap_or_default()
    }

    /// The message as it came, header included.
    pub fn bytes(self) -> &'a [u8] {
        self.0
    }
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

/// A client message the session follows, read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// Simple query.
    Query {
        sql: &'a str,
    },
    /// Prepare `sql` as statement `name`; `param_types` is the rest of the
    /// body (parameter count and type oids), as sent.
    Parse {
        name: &'a str,
        sql: &'a str,
        param_types: &'a [u8],
    },
    /// Bind statement `statement` to portal `portal` with result `formats`.
    Bind {
        portal: &'a str,
        statement: &'a str,
        formats: ResultFormats,
    },
    /// Describe a statement or a portal.
    Describe {
        target: Target,
        name: &'a str,
    },
    /// Execute portal `portal`.
    Execute {
        portal: &'a str,
    },
    /// Close a statement or a portal.
    Close {
        target: Target,
        name: &'a str,
    },
    Sync,
    /// The fast-path function call interface.
    FunctionCall,
    /// Any other message (nothing to follow).
    Other,
}

impl<'a> Frontend<'a> {
    /// Reads `msg`. A body that does not match its type's layout is a
    /// [`FrameError::BadBody`] naming what is wrong.
    pub fn parse(msg: Message<'a>) -> Result<Frontend<'a>, FrameError> {
        let tag = msg.tag();
        let bad = |what| FrameError::BadBody { tag, what };
        let mut cur = Cursor::new(msg.body(), tag);
        Ok(match tag {
            frontend::QUERY => Frontend::Query { sql: cur.cstr()? },
            frontend::PARSE => {
                let name = cur.cstr()?;
                let sql = cur.cstr()?;
                Frontend::Parse { name, sql, param_types: cur.remaining() }
            }
            frontend::BIND => {
                let portal = cur.cstr()?;
                let statement = cur.cstr()?;
                let n = cur.i16()?.max(0) as usize;
                cur.bytes(2 * n)?;
                let params = cur.i16()?.max(0);
                for _ in 0..params {
                    let len = cur.i32()?;
                    if len > 0 {
                        cur.bytes(len as usize)?;
                    }
                }
                let n = cur.i16()?;
                let code = |c: i16| Format::from_code(c).ok_or(bad("unknown result format code"));
                let formats = match n {
                    0 => ResultFormats::All(Format::Text),
                    1 => ResultFormats::All(code(cur.i16()?)?),
                    n if n > 1 => {
                        let mut v = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            v.push(code(cur.i16()?)?);
                        }
                        ResultFormats::PerColumn(v)
                    }
                    _ => return Err(bad("negative result format count")),
                };
                Frontend::Bind { portal, statement, formats }
            }
            frontend::DESCRIBE => {
                let target = match cur.u8()? {
                    b'S' => Target::Statement,
                    b'P' => Target::Portal,
                    _ => {
                        cur.cstr()?;
                        return Err(bad("Describe of neither statement nor portal"));
                    }
                };
                Frontend::Describe { target, name: cur.cstr()? }
            }
            frontend::EXECUTE => Frontend::Execute { portal: cur.cstr()? },
            frontend::CLOSE => {
                // Anything but 'S' closes a portal (the server checks).
                let target = if cur.u8()? == b'S' { Target::Statement } else { Target::Portal };
                Frontend::Close { target, name: cur.cstr()? }
            }
            frontend::SYNC => Frontend::Sync,
            frontend::FUNCTION_CALL => Frontend::FunctionCall,
            _ => Frontend::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{begin_message, finish_message};
    use bytes::{BufMut, BytesMut};

    fn message(tag: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let at = begin_message(&mut out, tag);
        out.extend_from_slice(body);
        finish_message(&mut out, at);
        out
    }

    #[test]
    fn reads_the_tracked_client_messages() {
        let q = message(frontend::QUERY, b"select 1\0");
        assert_eq!(Frontend::parse(Message::new(&q)).unwrap(), Frontend::Query { sql: "select 1" });
        let p = message(frontend::PARSE, b"s1\0select $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            Frontend::parse(Message::new(&p)).unwrap(),
            Frontend::Parse { name: "s1", sql: "select $1", param_types: b"\0\x01\0\0\0\x17" }
        );
        let mut bind = BytesMut::new();
        bind.extend_from_slice(b"p1\0s1\0");
        bind.put_i16(0);
        bind.put_i16(1);
        bind.put_i32(2);
        bind.extend_from_slice(b"42");
        bind.put_i16(2);
        bind.put_i16(1);
        bind.put_i16(0);
        let b = message(frontend::BIND, &bind);
        assert_eq!(
            Frontend::parse(Message::new(&b)).unwrap(),
            Frontend::Bind {
                portal: "p1",
                statement: "s1",
                formats: ResultFormats::PerColumn(vec![Format::Binary, Format::Text])
            }
        );
        let d = message(frontend::DESCRIBE, b"Pp1\0");
        assert_eq!(
            Frontend::parse(Message::new(&d)).unwrap(),
            Frontend::Describe { target: Target::Portal, name: "p1" }
        );
        let c = message(frontend::CLOSE, b"Ss1\0");
        assert_eq!(
            Frontend::parse(Message::new(&c)).unwrap(),
            Frontend::Close { target: Target::Statement, name: "s1" }
        );
        assert_eq!(Frontend::parse(Message::new(&message(frontend::SYNC, b""))).unwrap(), Frontend::Sync);
    }

    #[test]
    fn malformed_bodies_are_precise_errors() {
        let err = |tag, body: &[u8]| Frontend::parse(Message::new(&message(tag, body))).unwrap_err().to_string();
        assert_eq!(err(frontend::QUERY, b"select 1"), "malformed 'Q' message: unterminated string");
        assert_eq!(
            err(frontend::DESCRIBE, b"Xp1\0"),
            "malformed 'D' message: Describe of neither statement nor portal"
        );
        assert!(err(frontend::BIND, b"p\0s\0\0\0\0\0\xff\xff").contains("negative result format count"));
        assert!(err(frontend::BIND, b"p\0s\0\0\0\0\0\0\x01\0\x07").contains("unknown result format code"));
        // An empty buffer never panics.
        assert_eq!((Message::new(b"").tag(), Message::new(b"").body()), (0, &b""[..]));
    }
}
