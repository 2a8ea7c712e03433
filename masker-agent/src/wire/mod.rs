//! PostgreSQL wire framing: pure functions over byte buffers, no I/O.
//!
//! Framing is done in two steps (as in mini-redis): [`peek_header`] says
//! whether a whole message header is present and whether its length is sane,
//! keeping "incomplete" (`Ok(None)`) apart from "malformed" (`Err`). Bodies are
//! then read in place as slices of the receive buffer; nothing is copied or
//! allocated for messages that pass through unchanged.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>

pub mod message;
pub mod sqlstate;

use std::fmt;

use bytes::{BufMut, BytesMut};

/// `SSLRequest` code in a startup-phase packet.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` code in a startup-phase packet.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` code in a startup-phase packet.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol major version 3 (the only one PostgreSQL ≥ 7.4 speaks).
pub const PROTOCOL_MAJOR_3: u32 = 3;

/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Backend message tags (every one, for reference; not all are looked at).
#[allow(dead_code)]
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';

    /// Every tag a PostgreSQL 15 server sends.
    pub const ALL: &[u8] = b"R K 2 3 C W d c G H D I E V v n N A t S 1 s Z T";
}

/// Frontend message tags (every one, for reference; not all are looked at).
#[allow(dead_code)]
pub mod frontend {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';

    /// Every tag a PostgreSQL 15 client may send after startup.
    pub const ALL: &[u8] = b"B C d c f D E H F P p Q S X";
}

/// Request codes of `Authentication` messages (the first field of the body).
pub mod auth {
    pub const AUTH_OK: u32 = 0;
    pub const AUTH_CLEARTEXT: u32 = 3;
    pub const AUTH_MD5: u32 = 5;
    pub const AUTH_SASL: u32 = 10;
    pub const AUTH_SASL_CONTINUE: u32 = 11;
    pub const AUTH_SASL_FINAL: u32 = 12;
}

/// Whether `tag` is a message a server may send.
pub fn is_backend_tag(tag: u8) -> bool {
    tag != b' ' && backend::ALL.contains(&tag)
}

/// Whether `tag` is a message a client may send once started up.
pub fn is_frontend_tag(tag: u8) -> bool {
    tag != b' ' && frontend::ALL.contains(&tag)
}

/// Result formats requested in a `Bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultFormats {
    /// One code for every column (no codes at all means text).
    All(Format),
    /// One code per column.
    PerColumn(Vec<Format>),
}

impl ResultFormats {
    /// The format of column `i` (text when the list is too short).
    pub fn for_column(&self, i: usize) -> Format {
        match self {
            ResultFormats::All(f) => *f,
            ResultFormats::PerColumn(v) => v.get(i).copied().unwrap_or(Format::Text),
        }
    }
}

/// The first five bytes of a regular message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Total length on the wire, including the tag byte and the length field.
    pub total_len: usize,
}

/// A message that can never be valid, whatever follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below its own size (4).
    BadLength { tag: u8, len: u32 },
    /// The message is larger than the configured limit.
    TooLarge { tag: u8, len: usize, max: usize },
    /// A type byte that the peer may not send.
    UnknownTag { tag: u8 },
    /// A startup-phase packet with a bad length or code.
    BadStartup(String),
    /// A message body that does not match its type's layout.
    BadBody { tag: u8, what: &'static str },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { tag, len } => {
                write!(f, "message {} has invalid length {len}", show_tag(*tag))
            }
            FrameError::TooLarge { tag, len, max } => {
                write!(f, "message {} of {len} bytes exceeds the limit of {max} bytes", show_tag(*tag))
            }
            FrameError::UnknownTag { tag } => write!(f, "unexpected message type {}", show_tag(*tag)),
            FrameError::BadStartup(why) => write!(f, "invalid startup packet: {why}"),
            FrameError::BadBody { tag, what } => {
                write!(f, "malformed {} message: {what}", show_tag(*tag))
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// A tag as a user reads it: `'D'` for printable tags, `0x00` otherwise.
pub fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() { format!("'{}'", tag as char) } else { format!("0x{tag:02x}") }
}

/// Reads the header of the regular message at the start of `buf`.
///
/// Returns `Ok(None)` while fewer than five bytes are there. The body may still
/// be incomplete when this returns a header: compare `total_len` with
/// `buf.len()`.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength { tag, len });
    }
    let total_len = len as usize + 1;
    if total_len > max_len {
        return Err(FrameError::TooLarge { tag, len: total_len, max: max_len });
    }
    Ok(Some(Header { tag, total_len }))
}

/// A packet of the startup phase (no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    SslRequest,
    GssEncRequest,
    /// `CancelRequest` for the backend `pid` with its secret `key`.
    Cancel {
        pid: u32,
        key: u32,
    },
    /// `StartupMessage` for protocol 3.x with its parameters in order.
    Startup {
        minor: u16,
        params: Vec<(&'a str, &'a str)>,
    },
}

/// Reads a startup-phase packet at the start of `buf`: `Ok(None)` until it is
/// complete, then the packet and its total length.
pub fn parse_startup(buf: &[u8]) -> Result<Option<(StartupPacket<'_>, usize)>, FrameError> {
    // The length alone can be wrong: reject it as soon as it is there, so a
    // peer sending four bad bytes is not left waiting for the timeout.
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(FrameError::BadStartup(format!("length {len} is outside 8..={MAX_STARTUP_PACKET}")));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if len != 8 => {
            return Err(FrameError::BadStartup(format!("encryption request of length {len}")));
        }
        SSL_REQUEST_CODE => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            if len != 16 {
                return Err(FrameError::BadStartup(format!("cancel request of length {len}")));
            }
            StartupPacket::Cancel {
                pid: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                key: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            }
        }
        _ if code >> 16 == PROTOCOL_MAJOR_3 => {
            StartupPacket::Startup { minor: (code & 0xffff) as u16, params: parse_startup_params(body)? }
        }
        _ => {
            return Err(FrameError::BadStartup(format!("unsupported protocol {}.{}", code >> 16, code & 0xffff)));
        }
    };
    Ok(Some((packet, len)))
}

fn parse_startup_params(body: &[u8]) -> Result<Vec<(&str, &str)>, FrameError> {
    let mut cur = Cursor::new(body, 0);
    let mut params = Vec::new();
    loop {
        let key = cur.cstr().map_err(|_| FrameError::BadStartup("unterminated parameter".into()))?;
        if key.is_empty() {
            break;
        }
        let value = cur.cstr().map_err(|_| FrameError::BadStartup("unterminated parameter value".into()))?;
        params.push((key, value));
    }
    if !cur.is_empty() {
        return Err(FrameError::BadStartup("bytes after the parameter list".into()));
    }
    Ok(params)
}

/// A bounds-checked reader over one message body. Every method fails with
/// [`FrameError::BadBody`] instead of panicking on short input.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Cursor<'a> {
    /// A reader over `body`, reporting errors against message type `tag`.
    pub fn new(body: &'a [u8], tag: u8) -> Self {
        Cursor { buf: body, pos: 0, tag }
    }

    fn err(&self, what: &'static str) -> FrameError {
        FrameError::BadBody { tag: self.tag, what }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err("truncated byte"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Result<u32, FrameError> {
        self.i32().map(|v| v as u32)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| self.err("field runs past the end of the message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A NUL-terminated string (UTF-8 checked).
    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let rest = self.remaining();
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.err("unterminated string"))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| self.err("string is not valid UTF-8"))?;
        self.pos += nul + 1;
        Ok(s)
    }
}

/// Wire format of a column or parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    /// Decodes a format code (0 text, 1 binary).
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// A PostgreSQL object id of a table (relation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableOid(pub u32);

/// A PostgreSQL object id of a data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeOid(pub u32);

/// One field of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// Table the column comes from; `TableOid(0)` when it is computed.
    pub table: TableOid,
    /// Attribute number within `table`; 0 when computed.
    pub column: i16,
    pub type_oid: TypeOid,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: Format,
}

/// Parses the body of a `RowDescription` ('T') message.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDescription>, FrameError> {
    let tag = backend::ROW_DESCRIPTION;
    let mut cur = Cursor::new(body, tag);
    let count = cur.i16()?;
    if count < 0 {
        return Err(FrameError::BadBody { tag, what: "negative field count" });
    }
    let mut fields = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = cur.cstr()?.to_owned();
        let table = TableOid(cur.u32()?);
        let column = cur.i16()?;
        let type_oid = TypeOid(cur.u32()?);
        let type_size = cur.i16()?;
        let type_modifier = cur.i32()?;
        let format = Format::from_code(cur.i16()?).ok_or(FrameError::BadBody { tag, what: "unknown format code" })?;
        fields.push(FieldDescription { name, table, column, type_oid, type_size, type_modifier, format });
    }
    if !cur.is_empty() {
        return Err(FrameError::BadBody { tag, what: "bytes after the last field" });
    }
    Ok(fields)
}

/// Iterates over the cells of a `DataRow` ('D') body without copying: each
/// item is `None` for SQL NULL or the cell's bytes.
pub struct DataRowCells<'a> {
    cur: Cursor<'a>,
    left: u16,
}

/// Starts reading a `DataRow` body; returns the cell count and an iterator.
pub fn data_row_cells(body: &[u8]) -> Result<(u16, DataRowCells<'_>), FrameError> {
    let mut cur = Cursor::new(body, backend::DATA_ROW);
    let count = cur.i16()?;
    if count < 0 {
        return Err(FrameError::BadBody { tag: backend::DATA_ROW, what: "negative column count" });
    }
    Ok((count as u16, DataRowCells { cur, left: count as u16 }))
}

impl<'a> Iterator for DataRowCells<'a> {
    type Item = Result<Option<&'a [u8]>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.cur.i32().and_then(|len| match len {
            -1 => Ok(None),
            n if n < -1 => Err(FrameError::BadBody { tag: backend::DATA_ROW, what: "negative cell length" }),
            n => self.cur.bytes(n as usize).map(Some),
        }))
    }
}

impl DataRowCells<'_> {
    /// Whether the whole body was consumed (call after the last cell).
    pub fn finished(&self) -> bool {
        self.cur.is_empty()
    }
}

/// Starts a message whose length is not yet known; finish it with
/// [`finish_message`] passing the returned offset.
pub fn begin_message(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Fills in the length of a message started with [`begin_message`].
pub fn finish_message(out: &mut BytesMut, len_at: usize) {
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Severity of an `ErrorResponse` we send ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an `ErrorResponse` with severity, SQLSTATE `code` and `message`.
pub fn put_error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    put_error_with_hint(out, severity, code, message, None);
}

/// Appends a `NoticeResponse` (severity NOTICE, SQLSTATE 00000) with an
/// optional hint: something the client is told while its request goes on.
pub fn put_notice(out: &mut BytesMut, message: &str, hint: Option<&str>) {
    let at = begin_message(out, backend::NOTICE_RESPONSE);
    let mut field = |kind: u8, value: &str| {
        out.put_u8(kind);
        out.extend(value.bytes().filter(|&b| b != 0));
        out.put_u8(0);
    };
    field(b'S', "NOTICE");
    field(b'V', "NOTICE");
    field(b'C', "00000");
    field(b'M', message);
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    out.put_u8(0);
    finish_message(out, at);
}

/// Appends an `ErrorResponse` with an optional hint.
pub fn put_error_with_hint(out: &mut BytesMut, severity: Severity, code: &str, message: &str, hint: Option<&str>) {
    let at = begin_message(out, backend::ERROR_RESPONSE);
    let mut field = |kind: u8, value: &str| {
        out.put_u8(kind);
        // A NUL inside a value would end the field early and desynchronise
        // the client's parser; our own texts never contain one.
        out.extend(value.bytes().filter(|&b| b != 0));
        out.put_u8(0);
    };
    field(b'S', severity.as_str());
    field(b'V', severity.as_str());
    field(b'C', code);
    field(b'M', message);
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    out.put_u8(0);
    finish_message(out, at);
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_parse() {
        let body = b"SERROR\0C23505\0Mduplicate key\0\0";
        assert_eq!(error_fields(body), (Some("23505".into()), Some("duplicate key".into())));
    }

    fn startup_bytes(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn header_incomplete_vs_malformed() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
        assert_eq!(peek_header(b"Q\0\0\0\x03", 100), Err(FrameError::BadLength { tag: b'Q', len: 3 }));
        assert_eq!(peek_header(b"Q\0\0\x01\0", 100), Err(FrameError::TooLarge { tag: b'Q', len: 257, max: 100 }));
        assert_eq!(peek_header(b"Q\0\0\0\x09SEL", 100), Ok(Some(Header { tag: b'Q', total_len: 10 })));
    }

    #[test]
    fn startup_packets() {
        let ssl = startup_bytes(SSL_REQUEST_CODE, b"");
        assert_eq!(parse_startup(&ssl), Ok(Some((StartupPacket::SslRequest, 8))));
        assert_eq!(parse_startup(&ssl[..7]), Ok(None));

        let cancel = startup_bytes(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 1, 0]);
        assert_eq!(parse_startup(&cancel), Ok(Some((StartupPacket::Cancel { pid: 7, key: 256 }, 16))));

        let start = startup_bytes(196_608, b"user\0alice\0database\0shop\0\0");
        let (packet, len) = parse_startup(&start).unwrap().unwrap();
        assert_eq!(len, start.len());
        assert_eq!(packet, StartupPacket::Startup { minor: 0, params: vec![("user", "alice"), ("database", "shop")] });
        // Incomplete until the last byte arrives.
        assert_eq!(parse_startup(&start[..start.len() - 1]), Ok(None));
    }

    #[test]
    fn startup_rejects_garbage() {
        assert!(parse_startup(&startup_bytes(196_608, b"user\0alice")).is_err());
        assert!(parse_startup(&startup_bytes(0x0002_0000, b"\0")).is_err());
        assert!(parse_startup(&startup_bytes(SSL_REQUEST_CODE, b"xx")).is_err());
        assert!(parse_startup(&[0, 0, 0xff, 0xff, 0, 3, 0, 0]).is_err());
        assert!(parse_startup(&[0, 0, 0, 4, 0, 3, 0, 0]).is_err());
        // Four bytes are enough to see a bad length.
        assert!(parse_startup(&[0, 0, 0, 3]).is_err());
        assert_eq!(parse_startup(&[0, 0, 0, 8]), Ok(None));
    }

    #[test]
    fn row_description_and_data_row() {
        let mut body = BytesMut::new();
        body.put_i16(2);
        for (name, table, col, ty, fmt) in [("id", 16384u32, 1i16, 23u32, 0i16), ("email", 16384, 3, 25, 1)] {
            body.extend_from_slice(name.as_bytes());
            body.put_u8(0);
            body.put_u32(table);
            body.put_i16(col);
            body.put_u32(ty);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(fmt);
        }
        let fields = parse_row_description(&body).unwrap();
        assert_eq!(fields[1].name, "email");
        assert_eq!(fields[1].table, TableOid(16384));
        assert_eq!(fields[1].format, Format::Binary);
        assert!(parse_row_description(&body[..body.len() - 1]).is_err());

        let mut row = BytesMut::new();
        row.put_i16(2);
        row.put_i32(1);
        row.put_u8(b'7');
        row.put_i32(-1);
        let (n, cells) = data_row_cells(&row).unwrap();
        assert_eq!(n, 2);
        let cells: Vec<_> = cells.collect::<Result<_, _>>().unwrap();
        assert_eq!(cells, vec![Some(&b"7"[..]), None]);

        let mut bad = BytesMut::new();
        bad.put_i16(1);
        bad.put_i32(100);
        let (_, mut cells) = data_row_cells(&bad).unwrap();
        assert!(cells.next().unwrap().is_err());
    }

    #[test]
    fn error_response_layout() {
        let mut out = BytesMut::new();
        put_error(&mut out, Severity::Error, "08P01", "bad\0thing");
        let header = peek_header(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(header.total_len, out.len());
        assert_eq!(&out[5..], b"SERROR\0VERROR\0C08P01\0Mbadthing\0\0");
    }
}
