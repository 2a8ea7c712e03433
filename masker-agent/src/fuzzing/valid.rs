//! What a valid output looks like, written apart from the code under test:
//! the PostgreSQL text forms (ISO date style) and binary forms of each type
//! the masking engine knows, message layouts, and COPY data read back.

use crate::masking::types::{PgType, Scalar, classify};
use crate::masking::{ColumnAction, CopyOptions};
use crate::wire::message::Message;
use crate::wire::{self, Format, TypeOid};

/// The whole messages in `out`, which holds a relay's output. With
/// `complete`, the output may not end in the middle of a message.
pub fn frames(out: &[u8], complete: bool) -> Vec<Message<'_>> {
    let mut msgs = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        match wire::peek_header(rest, usize::MAX) {
            Ok(Some(h)) if h.total_len <= rest.len() => {
                msgs.push(Message::new(&rest[..h.total_len]));
                rest = &rest[h.total_len..];
            }
            Ok(_) => {
                assert!(!complete, "the output ends in the middle of a message");
                break;
            }
            Err(e) => panic!("sent on a message that does not frame: {e}"),
        }
    }
    msgs
}

/// What a client is answered in the startup phase: `S`, `N`s, and at most
/// one ErrorResponse at the end.
pub fn startup_answer(answer: &[u8]) {
    let mut rest = answer;
    while let Some((&b, tail)) = rest.split_first() {
        match b {
            b'S' | b'N' => rest = tail,
            b'E' => {
                let msgs = frames(rest, true);
                assert_eq!(msgs.len(), 1, "more than one message after an error");
                fields(msgs[0].body()).unwrap_or_else(|| panic!("malformed ErrorResponse {rest:?}"));
                return;
            }
            _ => panic!("startup answer {answer:?}"),
        }
    }
}

/// The fields of an ErrorResponse/NoticeResponse body, if well formed.
fn fields(body: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (&kind, tail) = rest.split_first()?;
        if kind == 0 {
            return tail.is_empty().then_some(out);
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        out.push((kind, &tail[..nul]));
        rest = &tail[nul + 1..];
    }
}

/// A message the server tracker writes itself is well formed.
pub fn backend_message(msg: Message<'_>) {
    match msg.tag() {
        b'E' | b'N' => {
            let f = fields(msg.body()).unwrap_or_else(|| panic!("malformed {:?}", msg.bytes()));
            for kind in [b'S', b'C'] {
                if msg.tag() == b'E' {
                    assert!(f.iter().any(|(k, _)| *k == kind), "ErrorResponse without {}", kind as char);
                }
            }
        }
        b'A' => {
            let body = msg.body();
            let ok = body.len() >= 4 && {
                let rest = &body[4..];
                let a = rest.iter().position(|&b| b == 0);
                a.and_then(|a| rest[a + 1..].iter().position(|&b| b == 0).map(|b| a + 1 + b + 1 == rest.len()))
                    == Some(true)
            };
            assert!(ok, "malformed NotificationResponse {:?}", msg.bytes());
        }
        _ => {}
    }
}

/// Whether `v` is a valid value of type `oid` in format `f` (types the
/// engine does not know: any value).
pub fn value(oid: TypeOid, f: Format, v: &[u8]) -> bool {
    match classify(oid) {
        PgType::Scalar(s) => scalar(s, f, v),
        PgType::Array(s) => match f {
            Format::Binary => binary_array(s, v),
            Format::Text => text_array(v).is_some_and(|elems| elems.iter().flatten().all(|e| scalar(s, f, e))),
        },
        PgType::Unknown => true,
    }
}

fn scalar(s: Scalar, f: Format, v: &[u8]) -> bool {
    match f {
        Format::Text => scalar_text(s, v),
        Format::Binary => scalar_binary(s, v),
    }
}

fn digits(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(u8::is_ascii_digit)
}

fn signed_digits(v: &[u8]) -> bool {
    digits(v.strip_prefix(b"-").unwrap_or(v))
}

fn scalar_text(s: Scalar, v: &[u8]) -> bool {
    let Ok(t) = std::str::from_utf8(v) else { return false };
    match s {
        Scalar::Text | Scalar::Bpchar | Scalar::Interval => true,
        Scalar::Int2 => signed_digits(v) && t.parse::<i16>().is_ok(),
        Scalar::Int4 => signed_digits(v) && t.parse::<i32>().is_ok(),
        Scalar::Int8 => signed_digits(v) && t.parse::<i64>().is_ok(),
        Scalar::Numeric => {
            matches!(t, "NaN" | "Infinity" | "-Infinity") || {
                let u = t.strip_prefix('-').unwrap_or(t);
                match u.split_once('.') {
                    Some((i, f)) => digits(i.as_bytes()) && digits(f.as_bytes()),
                    None => digits(u.as_bytes()),
                }
            }
        }
        Scalar::Float4 | Scalar::Float8 => {
            matches!(t, "NaN" | "Infinity" | "-Infinity")
                || (t.bytes().all(|b| b.is_ascii_digit() || b"-+.e".contains(&b))
                    && t.bytes().any(|b| b.is_ascii_digit())
                    && if s == Scalar::Float4 {
                        t.parse::<f32>().is_ok_and(f32::is_finite)
                    } else {
                        t.parse::<f64>().is_ok_and(f64::is_finite)
                    })
        }
        Scalar::Bool => matches!(t, "t" | "f"),
        Scalar::Date => matches!(t, "infinity" | "-infinity") || iso_date(bc(t)).is_some(),
        Scalar::Time => iso_time(t).is_some_and(str::is_empty),
        Scalar::Timestamp | Scalar::Timestamptz => {
            if matches!(t, "infinity" | "-infinity") {
                return true;
            }
            let t = bc(t);
            let Some((d, rest)) = t.split_once(' ') else { return false };
            let Some(rest) = iso_date(d).and(iso_time(rest)) else { return false };
            if s == Scalar::Timestamp { rest.is_empty() } else { tz_offset(rest) }
        }
        Scalar::Inet | Scalar::Cidr => net_text(s == Scalar::Cidr, t),
        Scalar::Uuid => {
            t.len() == 36
                && t.char_indices()
                    .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
        }
        Scalar::Json | Scalar::Jsonb => serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok(),
        Scalar::Bytea => bytea_text(v),
    }
}

/// `t` without the ` BC` suffix of dates before year 1.
fn bc(t: &str) -> &str {
    t.strip_suffix(" BC").unwrap_or(t)
}

/// `YYYY-MM-DD` (four or more year digits, year ≥ 1).
fn iso_date(t: &str) -> Option<()> {
    let mut parts = t.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() < 4
        || m.len() != 2
        || d.len() != 2
        || !digits(y.as_bytes())
        || !digits(m.as_bytes())
        || !digits(d.as_bytes())
    {
        return None;
    }
    let (y, m, d): (u64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (y >= 1 && (1..=12).contains(&m) && d >= 1 && d <= days[m as usize - 1]).then_some(())
}

/// `HH:MM:SS[.ffffff]` (24:00:00 at most); the rest of `t` after it.
fn iso_time(t: &str) -> Option<&str> {
    let b = t.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (&t[..2], &t[3..5], &t[6..8]);
    if !(digits(h.as_bytes()) && digits(m.as_bytes()) && digits(s.as_bytes())) {
        return None;
    }
    let (h, m, s): (u32, u32, u32) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    let mut rest = &t[8..];
    let mut frac = false;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=6).contains(&n) {
            return None;
        }
        frac = f.bytes().take(n).any(|b| b != b'0');
        rest = &f[n..];
    }
    let ok = (h < 24 && m < 60 && s < 60) || (h == 24 && m == 0 && s == 0 && !frac);
    ok.then_some(rest)
}

/// `+HH`, `-HH:MM` or `+HH:MM:SS`.
fn tz_offset(t: &str) -> bool {
    let Some(u) = t.strip_prefix(['+', '-']) else { return false };
    let parts: Vec<&str> = u.split(':').collect();
    (1..=3).contains(&parts.len()) && parts.iter().all(|p| p.len() == 2 && digits(p.as_bytes()))
}

fn net_text(cidr: bool, t: &str) -> bool {
    let (addr, bits) = match t.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (t, None),
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else { return false };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) if digits(b.as_bytes()) => match b.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return false,
        },
        Some(_) => return false,
        None if cidr => return false,
        None => max,
    };
    !cidr || host_bits_zero(&addr, bits)
}

fn host_bits_zero(addr: &std::net::IpAddr, bits: u8) -> bool {
    let bytes: Vec<u8> = match addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.iter().enumerate().all(|(i, &b)| {
        let keep = (bits as usize).saturating_sub(i * 8).min(8);
        let mask = if keep == 8 { 0xff } else { !(0xffu8 >> keep) };
        b & !mask == 0
    })
}

/// Hex (`\x0a1b`) or escape (`a\\b\001`) format.
fn bytea_text(v: &[u8]) -> bool {
    if let Some(hex) = v.strip_prefix(b"\\x") {
        return hex.len() % 2 == 0 && hex.iter().all(u8::is_ascii_hexdigit);
    }
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' {
            match v.get(i + 1..i + 4) {
                _ if v.get(i + 1) == Some(&b'\\') => i += 2,
                Some([a, b, c])
                    if (b'0'..=b'3').contains(a) && (b'0'..=b'7').contains(b) && (b'0'..=b'7').contains(c) =>
                {
                    i += 4
                }
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

fn scalar_binary(s: Scalar, v: &[u8]) -> bool {
    match s {
        Scalar::Text | Scalar::Bpchar | Scalar::Json => std::str::from_utf8(v).is_ok(),
        Scalar::Int2 => v.len() == 2,
        Scalar::Int4 | Scalar::Float4 | Scalar::Date => v.len() == 4,
        Scalar::Int8 | Scalar::Float8 | Scalar::Timestamp | Scalar::Timestamptz => v.len() == 8,
        Scalar::Time => {
            v.len() == 8 && (0..=86_400_000_000).contains(&i64::from_be_bytes(v.try_into().unwrap_or([0xff; 8])))
        }
        Scalar::Interval => v.len() == 16,
        Scalar::Bool => matches!(v, [0] | [1]),
        Scalar::Uuid => v.len() == 16,
        Scalar::Bytea => true,
        Scalar::Jsonb => v.split_first().is_some_and(|(&version, json)| {
            version == 1 && serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok()
        }),
        Scalar::Numeric => numeric_binary(v),
        Scalar::Inet | Scalar::Cidr => {
            let [family, bits, _is_cidr, nb, addr @ ..] = v else { return false };
            let (len, max) = match family {
                2 => (4, 32),
                3 => (16, 128),
                _ => return false,
            };
            if *nb as usize != len || addr.len() != len || *bits > max {
                return false;
            }
            let ip = if len == 4 {
                std::net::IpAddr::from(<[u8; 4]>::try_from(addr).unwrap_or_default())
            } else {
                std::net::IpAddr::from(<[u8; 16]>::try_from(addr).unwrap_or_default())
            };
            s == Scalar::Inet || host_bits_zero(&ip, *bits)
        }
    }
}

/// ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_binary(v: &[u8]) -> bool {
    if v.len() < 8 {
        return false;
    }
    let word = |i: usize| u16::from_be_bytes([v[2 * i], v[2 * i + 1]]);
    let (ndigits, sign, dscale) = (word(0) as usize, word(2), word(3));
    v.len() == 8 + 2 * ndigits
        && matches!(sign, 0x0000 | 0x4000 | 0xC000 | 0xD000 | 0xF000)
        && dscale & 0xC000 == 0
        && (4..4 + ndigits).all(|i| word(i) < 10_000)
}

fn binary_array(s: Scalar, v: &[u8]) -> bool {
    let mut cur = wire::Cursor::new(v, b'D');
    let read = |cur: &mut wire::Cursor<'_>| -> Option<bool> {
        let ndim = cur.i32().ok()?;
        let flags = cur.i32().ok()?;
        let _oid = cur.u32().ok()?;
        if !(0..=6).contains(&ndim) || !(0..=1).contains(&flags) {
            return Some(false);
        }
        let mut count: u64 = if ndim == 0 { 0 } else { 1 };
        for _ in 0..ndim {
            let size = cur.i32().ok()?;
            let _lower = cur.i32().ok()?;
            count = count.checked_mul(u64::try_from(size).ok()?)?;
        }
        for _ in 0..count {
            match cur.i32().ok()? {
                -1 => {}
                n => {
                    if !scalar_binary(s, cur.bytes(usize::try_from(n).ok()?).ok()?) {
                        return Some(false);
                    }
                }
            }
        }
        Some(cur.is_empty())
    };
    read(&mut cur) == Some(true)
}

/// The elements of a text array (`None` for NULL), if it is one.
fn text_array(v: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let mut i = 0;
    if v.first() == Some(&b'[') {
        i = v.iter().position(|&b| b == b'=')? + 1;
    }
    // array_in's whitespace (`\v` and `\f` included).
    let ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    while v.get(i).copied().is_some_and(ws) {
        i += 1;
    }
    if v.get(i) != Some(&b'{') {
        return None;
    }
    let mut elems = Vec::new();
    let mut depth = 0usize;
    // What came last, as PostgreSQL's array_in checks it: `{`, `,` or an
    // element (a value or a closed sub-array). `{,1}`, `{1,}`, `{1 2}` are
    // malformed.
    #[derive(PartialEq)]
    enum Last {
        Open,
        Comma,
        Elem,
    }
    let mut last = Last::Open;
    while i < v.len() {
        match v[i] {
            b'{' => {
                if last == Last::Elem {
                    return None;
                }
                last = Last::Open;
                depth += 1;
                i += 1;
            }
            b'}' => {
                if last == Last::Comma {
                    return None;
                }
                last = Last::Elem;
                depth = depth.checked_sub(1)?;
                i += 1;
                if depth == 0 {
                    return v[i..].iter().all(|&b| ws(b)).then_some(elems);
                }
            }
            b',' => {
                if last != Last::Elem {
                    return None;
                }
                last = Last::Comma;
                i += 1;
            }
            b if ws(b) => i += 1,
            _ if last == Last::Elem => return None,
            b'"' => {
                last = Last::Elem;
                let mut e = Vec::new();
                i += 1;
                loop {
                    match *v.get(i)? {
                        b'"' => break,
                        b'\\' => {
                            e.push(*v.get(i + 1)?);
                            i += 2;
                        }
                        b => {
                            e.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                elems.push(Some(e));
            }
            _ => {
                last = Last::Elem;
                let mut e = Vec::new();
                while i < v.len() && !matches!(v[i], b',' | b'}') {
                    if v[i] == b'\\' {
                        e.push(*v.get(i + 1)?);
                        i += 2;
                    } else {
                        e.push(v[i]);
                        i += 1;
                    }
                }
                while e.last().copied().is_some_and(ws) {
                    e.pop();
                }
                elems.push(if e.eq_ignore_ascii_case(b"NULL") { None } else { Some(e) });
            }
        }
    }
    None
}

/// The payload of the CopyData message in `out` (empty when there is none).
pub fn copy_data_payloads(out: &[u8]) -> Vec<u8> {
    let msgs = frames(out, true);
    assert!(msgs.len() <= 1, "more than one CopyData for one push");
    msgs.first().map_or_else(Vec::new, |m| {
        assert_eq!(m.tag(), b'd', "COPY output of type {}", wire::show_tag(m.tag()));
        assert!(!m.body().is_empty(), "an empty CopyData");
        m.body().to_vec()
    })
}

/// A field of a COPY row: `None` for NULL, else the value.
type Row = Vec<Option<Vec<u8>>>;

/// Reads COPY data of one format back into rows.
type ReadRows = fn(&CopyOptions, &[u8]) -> Option<Vec<Row>>;

/// The output of a successful COPY reads back as the input's rows, one for
/// one, with the plan's column count; a masked field that was valid for its
/// type still is, and an allowed one is unchanged.
///
/// `kind`: 0 text, 1 csv, 2 binary (as in [`super::copy`]).
pub fn copy_output(kind: u8, opts: &CopyOptions, cols: &[(ColumnAction, TypeOid)], input: &[u8], output: &[u8]) {
    let (format, read): (Format, ReadRows) = match kind {
        0 => (Format::Text, text_rows),
        1 => (Format::Text, csv_rows),
        _ => (Format::Binary, binary_rows),
    };
    let Some(rows_in) = read(opts, input) else { return };
    let rows_out = read(opts, output).unwrap_or_else(|| panic!("COPY output does not read back: {output:?}"));
    assert_eq!(rows_in.len(), rows_out.len(), "COPY row count changed: {output:?}");
    let skip = usize::from(opts.header);
    for (row_in, row_out) in rows_in.iter().zip(&rows_out).skip(skip) {
        assert_eq!(row_out.len(), cols.len(), "COPY row with {} fields for {} columns", row_out.len(), cols.len());
        for ((a, b), (action, oid)) in row_in.iter().zip(row_out).zip(cols) {
            match (action, a, b) {
                (ColumnAction::Allow, a, b) => assert_eq!(a, b, "an allowed COPY field changed"),
                (_, Some(a), Some(b)) if value(*oid, format, a) => {
                    assert!(
                        value(*oid, format, b),
                        "{action:?} made a valid {oid:?} COPY field invalid: {a:?} -> {b:?}"
                    )
                }
                _ => {}
            }
        }
    }
}

/// Text COPY: rows end at `\n`, fields at the delimiter, `\N` is NULL,
/// backslash escapes.
fn text_rows(opts: &CopyOptions, data: &[u8]) -> Option<Vec<Row>> {
    let body = data.strip_suffix(b"\n")?;
    let mut rows = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut row = Vec::new();
        // Fields end at a delimiter that no backslash escapes (`\:` is a
        // `:` inside a value when the delimiter is `:`).
        let mut fields = Vec::new();
        let (mut start, mut k) = (0, 0);
        while k < line.len() {
            if line[k] == b'\\' {
                k += 2;
            } else if line[k] == opts.delimiter {
                fields.push(&line[start..k]);
                start = k + 1;
                k += 1;
            } else {
                k += 1;
            }
        }
        fields.push(&line[start.min(line.len())..]);
        for field in fields {
            if field == opts.null.as_slice() {
                row.push(None);
                continue;
            }
            let mut v = Vec::new();
            let mut i = 0;
            while i < field.len() {
                if field[i] != b'\\' {
                    v.push(field[i]);
                    i += 1;
                    continue;
                }
                let c = *field.get(i + 1)?;
                i += 2;
                v.push(match c {
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 11,
                    b'0'..=b'7' => {
                        let mut n = u32::from(c - b'0');
                        for _ in 0..2 {
                            match field.get(i) {
                                Some(&d @ b'0'..=b'7') => {
                                    n = n * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        n as u8
                    }
                    b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                        let mut n = 0u32;
                        for _ in 0..2 {
                            match field.get(i).and_then(|&d| (d as char).to_digit(16)) {
                                Some(d) => {
                                    n = n * 16 + d;
                                    i += 1;
                                }
                                None => break,
                            }
                        }
                        n as u8
                    }
                    c => c,
                });
            }
            row.push(Some(v));
        }
        rows.push(row);
    }
    Some(rows)
}

/// CSV: rows end at a newline outside quotes; an unquoted field equal to
/// the NULL marker is NULL.
fn csv_rows(opts: &CopyOptions, data: &[u8]) -> Option<Vec<Row>> {
    let (q, e, d) = (opts.quote, opts.escape, opts.delimiter);
    let mut rows = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let mut row = Vec::new();
        loop {
            let mut v = Vec::new();
            // PostgreSQL's reading: a quote anywhere opens a quoted section.
            let mut quoted = false;
            let mut in_quotes = false;
            // The last byte read was a `\r` outside quotes (a CRLF line end).
            let mut cr_outside = false;
            loop {
                let Some(&b) = data.get(i) else {
                    if in_quotes {
                        return None;
                    }
                    break;
                };
                if in_quotes {
                    if b == e
                        && data.get(i + 1).is_some_and(|&n| n == q || n == e)
                        && (e != q || data.get(i + 1) == Some(&q))
                    {
                        v.push(data[i + 1]);
                        i += 2;
                        continue;
                    }
                    if b == q {
                        in_quotes = false;
                    } else {
                        v.push(b);
                    }
                    cr_outside = false;
                } else if b == q {
                    (quoted, in_quotes, cr_outside) = (true, true, false);
                } else if b == d || b == b'\n' {
                    break;
                } else {
                    v.push(b);
                    cr_outside = b == b'\r';
                }
                i += 1;
            }
            if cr_outside && data.get(i) == Some(&b'\n') {
                v.pop();
            }
            row.push(if !quoted && v == opts.null { None } else { Some(v) });
            match data.get(i) {
                Some(&b) if b == d => i += 1,
                Some(b'\n') => {
                    i += 1;
                    break;
                }
                Some(b'\r') if data.get(i + 1) == Some(&b'\n') => {
                    i += 2;
                    break;
                }
                _ => return None,
            }
        }
        rows.push(row);
    }
    Some(rows)
}

/// Binary COPY: signature, flags, header extension, tuples, trailer.
fn binary_rows(_: &CopyOptions, data: &[u8]) -> Option<Vec<Row>> {
    let rest = data.strip_prefix(b"PGCOPY\n\xff\r\n\0")?;
    let mut cur = wire::Cursor::new(rest, b'd');
    let _flags = cur.u32().ok()?;
    let ext = cur.u32().ok()?;
    cur.bytes(ext as usize).ok()?;
    let mut rows = Vec::new();
    loop {
        let n = cur.i16().ok()?;
        if n == -1 {
            return cur.is_empty().then_some(rows);
        }
        let mut row = Vec::new();
        for _ in 0..n.max(0) {
            row.push(match cur.i32().ok()? {
                -1 => None,
                l => Some(cur.bytes(usize::try_from(l).ok()?).ok()?.to_vec()),
            });
        }
        rows.push(row);
    }
}
