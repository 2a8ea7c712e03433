//! `COPY ... TO STDOUT`: masking CopyData payloads in text, csv and binary.
//!
//! A CopyData message may hold one row, several, or part of one (binary COPY
//! and long rows are split arbitrarily by some servers and proxies), so
//! [`CopyMasker`] is streaming: it keeps the bytes of an incomplete row until
//! the rest arrives and emits masked output for complete rows only. Memory
//! stays bounded by the longest row ([`CopyMasker::with_row_limit`]).

use bytes::{Buf, BufMut, BytesMut};

use super::action::{ColumnAction, RowStats};
use super::cell::{Outcome, mask_cell};
use super::pseudonym::Keys;
use super::row::{ColPlan, MaskError, count, put_masked_cell};
use super::types::classify;
use crate::wire::{self, Format, TypeOid};

/// The COPY format named in the statement (`FORMAT text|csv|binary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// The COPY options that shape the data (from the COPY statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    /// Column separator (text: tab, csv: comma).
    pub delimiter: u8,
    /// The NULL marker (text: `\N`, csv: empty unquoted).
    pub null: Vec<u8>,
    /// csv quote character (default `"`).
    pub quote: u8,
    /// csv escape character (default: the quote).
    pub escape: u8,
    /// Whether the first line is a header of column names (kept as is).
    pub header: bool,
}

impl CopyOptions {
    /// `FORMAT text` defaults.
    pub fn text() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            quote: b'"',
            escape: b'"',
            header: false,
        }
    }

    /// `FORMAT csv` defaults.
    pub fn csv() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Csv,
            delimiter: b',',
            null: Vec::new(),
            quote: b'"',
            escape: b'"',
            header: false,
        }
    }

    /// `FORMAT binary`.
    pub fn binary() -> CopyOptions {
        CopyOptions { format: CopyFormat::Binary, ..CopyOptions::text() }
    }
}

/// The column plan of one COPY: options plus (action, type) per column, in
/// the order of the COPY's column list.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    opts: CopyOptions,
    cols: Vec<ColPlan>,
    keys: Keys,
}

impl CopyPlan {
    pub fn new(opts: CopyOptions, cols: Vec<(ColumnAction, TypeOid)>, keys: &Keys) -> CopyPlan {
        let format = if opts.format == CopyFormat::Binary { Format::Binary } else { Format::Text };
        let cols = cols.into_iter().map(|(action, oid)| ColPlan { action, ty: classify(oid), format }).collect();
        CopyPlan { opts, cols, keys: keys.clone() }
    }
}

/// Default limit of one COPY row held while incomplete.
pub const DEFAULT_ROW_LIMIT: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinState {
    Header,
    Tuples,
    Done,
}

/// Streaming masker for the CopyData payloads of one COPY TO STDOUT.
#[derive(Debug)]
pub struct CopyMasker {
    plan: CopyPlan,
    pending: BytesMut,
    /// Where the scan for the end of the pending row resumes, and (csv)
    /// whether that position is inside quotes.
    scan: usize,
    in_quotes: bool,
    header_left: bool,
    bin: BinState,
    limit: usize,
    val: Vec<u8>,
    masked: BytesMut,
}

impl CopyMasker {
    pub fn new(plan: CopyPlan) -> CopyMasker {
        CopyMasker::with_row_limit(plan, DEFAULT_ROW_LIMIT)
    }

    /// A masker that refuses rows longer than `limit` bytes.
    pub fn with_row_limit(plan: CopyPlan, limit: usize) -> CopyMasker {
        let header_left = plan.opts.header;
        CopyMasker {
            plan,
            pending: BytesMut::new(),
            scan: 0,
            in_quotes: false,
            header_left,
            bin: BinState::Header,
            limit,
            val: Vec::new(),
            masked: BytesMut::new(),
        }
    }

    /// Feeds one CopyData payload. Appends one CopyData message (tag `d`)
    /// holding every row completed so far, or nothing if no row is complete.
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<RowStats, MaskError> {
        self.pending.extend_from_slice(chunk);
        let start = out.len();
        let at = wire::begin_message(out, wire::backend::COPY_DATA);
        let body = out.len();
        let res = match self.plan.opts.format {
            CopyFormat::Binary => self.binary(out),
            _ => self.lines(out),
        };
        match res {
            Ok(stats) if out.len() > body => {
                wire::finish_message(out, at);
                Ok(stats)
            }
            Ok(stats) => {
                out.truncate(start);
                if self.pending.len() > self.limit {
                    return Err(MaskError::too_large(self.limit));
                }
                Ok(stats)
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Call at CopyDone: an error if an incomplete row is left (fail closed).
    pub fn finish(&mut self) -> Result<(), MaskError> {
        if !self.pending.is_empty() {
            return Err(MaskError::copy("incomplete row at the end of the data"));
        }
        if self.plan.opts.format == CopyFormat::Binary && self.bin != BinState::Done {
            return Err(MaskError::copy("binary data ended without its trailer"));
        }
        Ok(())
    }

    fn lines(&mut self, out: &mut BytesMut) -> Result<RowStats, MaskError> {
        let mut stats = RowStats::default();
        loop {
            let Some(end) = self.find_row_end() else { return Ok(stats) };
            let row = self.pending.split_to(end + 1).freeze();
            self.scan = 0;
            self.in_quotes = false;
            if std::mem::take(&mut self.header_left) {
                out.extend_from_slice(&row);
                continue;
            }
            let line = row.strip_suffix(b"\n").unwrap_or(&row);
            let (line, cr) = match line.strip_suffix(b"\r") {
                Some(l) if !self.in_quotes => (l, true),
                _ => (line, false),
            };
            if self.plan.opts.format == CopyFormat::Csv {
                self.csv_row(line, out, &mut stats)?;
            } else {
                self.text_row(line, out, &mut stats)?;
            }
            if cr {
                out.put_u8(b'\r');
            }
            out.put_u8(b'\n');
        }
    }

    /// Index of the `\n` ending the first pending row.
    fn find_row_end(&mut self) -> Option<usize> {
        if self.plan.opts.format == CopyFormat::Text {
            let p = memchr::memchr(b'\n', &self.pending[self.scan..]).map(|p| self.scan + p);
            if p.is_none() {
                self.scan = self.pending.len();
            }
            return p;
        }
        let (q, e) = (self.plan.opts.quote, self.plan.opts.escape);
        let mut i = self.scan;
        while i < self.pending.len() {
            let b = self.pending[i];
            if self.in_quotes {
                if b == e && e != q && i + 1 < self.pending.len() {
                    i += 2;
                    continue;
                }
                if b == e && e != q {
                    break; // need the next byte
                }
                if b == q {
                    self.in_quotes = false;
                }
            } else if b == q {
                self.in_quotes = true;
            } else if b == b'\n' {
                return Some(i);
            }
            i += 1;
        }
        self.scan = i;
        None
    }

    fn text_row(&mut self, line: &[u8], out: &mut BytesMut, stats: &mut RowStats) -> Result<(), MaskError> {
        let delim = self.plan.opts.delimiter;
        let mut fields = TextFields { line, delim, at: 0, done: false };
        for (k, col) in self.plan.cols.iter().enumerate() {
            let raw = fields.next().ok_or_else(|| MaskError::copy("row has fewer columns than the plan"))?;
            if k > 0 {
                out.put_u8(delim);
            }
            if raw == self.plan.opts.null.as_slice() || col.action == ColumnAction::Allow {
                out.extend_from_slice(raw);
                continue;
            }
            unescape_text(raw, &mut self.val);
            self.masked.clear();
            let outcome = mask_cell(&col.action, col.ty, Format::Text, &self.plan.keys, &self.val, &mut self.masked);
            count(col, outcome, stats);
            match outcome {
                Outcome::Same => out.extend_from_slice(raw),
                Outcome::Wrote { .. } => escape_text(&self.masked, delim, out),
                Outcome::Null | Outcome::Fallback => out.extend_from_slice(&self.plan.opts.null),
            }
        }
        if fields.next().is_some() {
            return Err(MaskError::copy("row has more columns than the plan"));
        }
        Ok(())
    }

    fn csv_row(&mut self, line: &[u8], out: &mut BytesMut, stats: &mut RowStats) -> Result<(), MaskError> {
        let o = &self.plan.opts;
        let (q, e, delim) = (o.quote, o.escape, o.delimiter);
        let mut i = 0;
        for (k, col) in self.plan.cols.iter().enumerate() {
            if k > 0 {
                if line.get(i) != Some(&delim) {
                    return Err(MaskError::copy("row has fewer columns than the plan"));
                }
                i += 1;
                out.put_u8(delim);
            }
            let start = i;
            self.val.clear();
            // As PostgreSQL reads CSV: a quote anywhere in a field opens a
            // quoted section (the server only quotes whole fields; a peer
            // that does otherwise is read as the server would read it).
            let mut quoted = false;
            let mut in_quotes = false;
            loop {
                let Some(&b) = line.get(i) else {
                    if in_quotes {
                        return Err(MaskError::copy("unterminated quoted field"));
                    }
                    break;
                };
                if in_quotes {
                    if b == e
                        && line.get(i + 1).is_some_and(|&n| n == q || n == e)
                        && (e != q || line.get(i + 1) == Some(&q))
                    {
                        self.val.push(line[i + 1]);
                        i += 2;
                        continue;
                    }
                    if b == q {
                        in_quotes = false;
                    } else {
                        self.val.push(b);
                    }
                } else if b == q {
                    (quoted, in_quotes) = (true, true);
                } else if b == delim {
                    break;
                } else {
                    self.val.push(b);
                }
                i += 1;
            }
            let raw = &line[start..i];
            if (!quoted && self.val == o.null) || col.action == ColumnAction::Allow {
                out.extend_from_slice(raw);
                continue;
            }
            self.masked.clear();
            let outcome = mask_cell(&col.action, col.ty, Format::Text, &self.plan.keys, &self.val, &mut self.masked);
            count(col, outcome, stats);
            match outcome {
                Outcome::Same => out.extend_from_slice(raw),
                Outcome::Wrote { .. } => {
                    out.put_u8(q);
                    for &b in self.masked.iter() {
                        if b == q || b == e {
                            out.put_u8(e);
                        }
                        out.put_u8(b);
                    }
                    out.put_u8(q);
                }
                Outcome::Null | Outcome::Fallback => out.extend_from_slice(&o.null),
            }
        }
        if i != line.len() {
            return Err(MaskError::copy("row has more columns than the plan"));
        }
        Ok(())
    }

    fn binary(&mut self, out: &mut BytesMut) -> Result<RowStats, MaskError> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let mut stats = RowStats::default();
        loop {
            match self.bin {
                BinState::Header => {
                    if self.pending.len() < SIGNATURE.len() + 8 {
                        return Ok(stats);
                    }
                    if &self.pending[..SIGNATURE.len()] != SIGNATURE {
                        return Err(MaskError::copy("bad binary COPY signature"));
                    }
                    let ext = &self.pending[SIGNATURE.len() + 4..SIGNATURE.len() + 8];
                    let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]) as usize;
                    let total = SIGNATURE.len() + 8 + ext;
                    if self.pending.len() < total {
                        return Ok(stats);
                    }
                    out.extend_from_slice(&self.pending[..total]);
                    self.pending.advance(total);
                    self.bin = BinState::Tuples;
                }
                BinState::Tuples => {
                    let Some(len) = self.tuple_len()? else { return Ok(stats) };
                    let tuple = self.pending.split_to(len);
                    let n = i16::from_be_bytes([tuple[0], tuple[1]]);
                    out.put_i16(n);
                    if n == -1 {
                        self.bin = BinState::Done;
                        continue;
                    }
                    let mut p = 2;
                    for col in &self.plan.cols {
                        let l = i32::from_be_bytes([tuple[p], tuple[p + 1], tuple[p + 2], tuple[p + 3]]);
                        p += 4;
                        if l < 0 {
                            out.put_i32(-1);
                            continue;
                        }
                        let v = &tuple[p..p + l as usize];
                        p += l as usize;
                        put_masked_cell(col, &self.plan.keys, v, out, &mut stats);
                    }
                }
                BinState::Done => {
                    if !self.pending.is_empty() {
                        return Err(MaskError::copy("data after the binary trailer"));
                    }
                    return Ok(stats);
                }
            }
        }
    }

    /// Length of the first pending tuple (or trailer) once complete.
    fn tuple_len(&self) -> Result<Option<usize>, MaskError> {
        let b = &self.pending[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let n = i16::from_be_bytes([b[0], b[1]]);
        if n == -1 {
            return Ok(Some(2));
        }
        if n as usize != self.plan.cols.len() || n < 0 {
            return Err(MaskError::copy("tuple field count differs from the plan"));
        }
        let mut p = 2;
        for _ in 0..n {
            let Some(l) = b.get(p..p + 4) else { return Ok(None) };
            let l = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            p += 4;
            if l < -1 {
                return Err(MaskError::copy("negative field length"));
            }
            if l > 0 {
                p += l as usize;
            }
            if p > self.limit {
                return Err(MaskError::too_large(self.limit));
            }
        }
        Ok((p <= b.len()).then_some(p))
    }
}

/// The fields of a COPY text-format line: split at the delimiters no
/// backslash escapes (a value holding the delimiter is sent as `\,`).
struct TextFields<'a> {
    line: &'a [u8],
    delim: u8,
    at: usize,
    done: bool,
}

impl<'a> Iterator for TextFields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let start = self.at;
        let mut i = start;
        while i < self.line.len() {
            match self.line[i] {
                b'\\' => i += 2,
                b if b == self.delim => {
                    self.at = i + 1;
                    return Some(&self.line[start..i]);
                }
                _ => i += 1,
            }
        }
        self.done = true;
        Some(&self.line[start.min(self.line.len())..])
    }
}

/// Decodes the backslash escapes of the COPY text format.
fn unescape_text(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(n as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut n = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|&d| (d as char).to_digit(16)) {
                        Some(d) => {
                            n = n * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(n as u8);
            }
            other => out.push(other),
        }
    }
}

/// Encodes a value for the COPY text format.
fn escape_text(v: &[u8], delim: u8, out: &mut BytesMut) {
    for &b in v {
        let esc = match b {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            8 => b'b',
            12 => b'f',
            11 => b'v',
            _ if b == delim => b,
            _ => {
                out.put_u8(b);
                continue;
            }
        };
        out.put_u8(b'\\');
        out.put_u8(esc);
    }
}
