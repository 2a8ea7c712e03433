//! One cell: apply a column's action to a value of a known type and format,
//! writing the new value (without its length prefix) into the output buffer.
//!
//! Every output is valid for the column type in the column's format; when an
//! action does not fit the type, or the value cannot be decoded, the cell
//! becomes NULL ([`Outcome::Fallback`]).

use bytes::{BufMut, BytesMut};

use super::action::{ColumnAction, Generalize};
use super::codec::{self, Small, USECS_PER_DAY};
use super::detect::{self, MaskStyle};
use super::pseudonym::{Keys, Stream, digest_u64, put_hex};
use super::types::{PgType, Scalar};
use crate::wire::Format;

/// What happened to one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing was written: forward the input value.
    Same,
    /// A value was written; `changed` is false when it equals the input.
    Wrote { changed: bool },
    /// The action made the cell NULL (nothing written).
    Null,
    /// The action cannot apply to this type or value: NULL (nothing written).
    Fallback,
}

/// The placeholder text of `redact` for text columns.
pub const REDACTED: &str = "REDACTED";

/// Applies `action` to the value `v` of type `ty` in format `f`.
pub(crate) fn mask_cell(
    action: &ColumnAction,
    ty: PgType,
    f: Format,
    keys: &Keys,
    v: &[u8],
    out: &mut BytesMut,
) -> Outcome {
    match action {
        ColumnAction::Allow => return Outcome::Same,
        ColumnAction::Null => return Outcome::Null,
        _ => {}
    }
    match ty {
        PgType::Scalar(s) => mask_scalar(action, s, f, keys, v, out),
        PgType::Array(s) => match f {
            Format::Binary => array_or_fallback(out, |out| array_binary(action, s, keys, v, out)),
            Format::Text => array_or_fallback(out, |out| array_text(action, s, keys, v, out)),
        },
        PgType::Unknown => match (action, f) {
            (ColumnAction::Detect, Format::Text) if !detect::contains_pii(v) => Outcome::Same,
            (ColumnAction::Detect, Format::Text) => Outcome::Null,
            _ => Outcome::Fallback,
        },
    }
}

fn mask_scalar(action: &ColumnAction, s: Scalar, f: Format, keys: &Keys, v: &[u8], out: &mut BytesMut) -> Outcome {
    let bin = f == Format::Binary;
    let done = Outcome::Wrote { changed: true };
    match action {
        ColumnAction::Allow => Outcome::Same,
        ColumnAction::Null => Outcome::Null,
        ColumnAction::Redact => {
            put_redacted(s, bin, out);
            done
        }
        ColumnAction::Partial { first, last } if s.is_text() => {
            let Ok(text) = std::str::from_utf8(v) else { return Outcome::Fallback };
            let (body, pad) = split_pad(s, text);
            // Characters, not bytes: an ASCII value's are its bytes.
            let ascii = body.is_ascii();
            let n = if ascii { body.len() } else { body.chars().count() };
            let (first, last) = (*first as usize, *last as usize);
            if n <= first + last {
                out.put_bytes(b'*', n);
            } else {
                let at = |c: usize| if ascii { c } else { body.char_indices().nth(c).map_or(body.len(), |(i, _)| i) };
                let (head, tail) = (at(first), at(n - last));
                out.extend_from_slice(&body.as_bytes()[..head]);
                out.put_bytes(b'*', n - first - last);
                out.extend_from_slice(&body.as_bytes()[tail..]);
            }
            out.extend_from_slice(pad.as_bytes());
            done
        }
        ColumnAction::Email if s.is_text() => {
            let body = trim_pad(s, v);
            out.extend_from_slice(b"****");
            if let Some(at) = body.iter().rposition(|&b| b == b'@').filter(|&at| at + 1 < body.len()) {
                out.extend_from_slice(&body[at..]);
            }
            done
        }
        ColumnAction::Pseudonymize { format_preserving } => {
            if pseudonymize(s, bin, *format_preserving, keys, v, out).is_some() { done } else { Outcome::Fallback }
        }
        ColumnAction::Generalize(g) => generalize(s, bin, *g, v, out).unwrap_or(Outcome::Fallback),
        ColumnAction::Detect => detect_scalar(s, bin, v, out).unwrap_or(Outcome::Fallback),
        ColumnAction::Definition(names) if s.is_text() => {
            // Text in both formats: the value's UTF-8 bytes.
            let Ok(text) = std::str::from_utf8(v) else { return Outcome::Fallback };
            match names.scrub(text) {
                None => Outcome::Same,
                Some(scrubbed) => {
                    out.extend_from_slice(scrubbed.as_bytes());
                    done
                }
            }
        }
        ColumnAction::Partial { .. } | ColumnAction::Email | ColumnAction::Definition(_) => Outcome::Fallback,
    }
}

fn split_pad(s: Scalar, text: &str) -> (&str, &str) {
    if s == Scalar::Bpchar {
        let body = text.trim_end_matches(' ');
        (body, &text[body.len()..])
    } else {
        (text, "")
    }
}

fn trim_pad(s: Scalar, v: &[u8]) -> &[u8] {
    if s == Scalar::Bpchar {
        let n = v.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        &v[..n]
    } else {
        v
    }
}

fn width(s: Scalar) -> usize {
    match s {
        Scalar::Int2 => 2,
        Scalar::Int4 => 4,
        _ => 8,
    }
}

/// Writes the fixed placeholder of `redact`.
fn put_redacted(s: Scalar, bin: bool, out: &mut BytesMut) {
    use Scalar::*;
    let epoch_days = codec::pg_days(1970, 1, 1);
    match (s, bin) {
        (Text | Bpchar, _) => out.extend_from_slice(REDACTED.as_bytes()),
        (Int2 | Int4 | Int8, _) => codec::put_int(out, 0, width(s), bin),
        (Numeric, true) => out.extend_from_slice(&[0; 8]),
        (Float4, true) => out.put_f32(0.0),
        (Float8, true) => out.put_f64(0.0),
        (Numeric | Float4 | Float8, false) => out.put_u8(b'0'),
        (Bool, true) => out.put_u8(0),
        (Bool, false) => out.put_u8(b'f'),
        (Date, true) => out.put_i32(epoch_days as i32),
        (Date, false) => out.extend_from_slice(b"1970-01-01"),
        (Time, true) => out.put_i64(0),
        (Time | Interval, false) => out.extend_from_slice(b"00:00:00"),
        (Timestamp | Timestamptz, true) => out.put_i64(epoch_days * USECS_PER_DAY),
        (Timestamp, false) => out.extend_from_slice(b"1970-01-01 00:00:00"),
        (Timestamptz, false) => out.extend_from_slice(b"1970-01-01 00:00:00+00"),
        (Interval, true) => out.extend_from_slice(&[0; 16]),
        (Inet | Cidr, _) => {
            let net = codec::Net { addr: std::net::Ipv4Addr::UNSPECIFIED.into(), bits: 32 };
            codec::put_net(out, net, s == Cidr, bin)
        }
        (Uuid, _) => codec::put_uuid(out, &[0; 16], bin),
        (Json, _) => out.extend_from_slice(b"\"REDACTED\""),
        (Jsonb, true) => out.extend_from_slice(b"\x01\"REDACTED\""),
        (Jsonb, false) => out.extend_from_slice(b"\"REDACTED\""),
        (Bytea, _) => codec::put_bytea(out, &[], bin),
    }
}

// ---------------------------------------------------------------- pseudonymize

fn pseudonymize(s: Scalar, bin: bool, fp: bool, keys: &Keys, v: &[u8], out: &mut BytesMut) -> Option<()> {
    use Scalar::*;
    match s {
        Text | Bpchar => {
            let body = trim_pad(s, v);
            let d = keys.digest(b"t", &[body])?;
            if !fp {
                out.extend_from_slice(b"psd_");
                put_hex(out, &d[..8]);
            } else if let Some(at) = email_at(body) {
                let mut st = Stream::new(&d);
                map_classes(&body[..at], &mut st, out);
                let dom = keys.digest(b"domain", &[&body[at + 1..]])?;
                out.extend_from_slice(b"@d");
                put_hex(out, &dom[..5]);
                out.extend_from_slice(b".invalid");
            } else {
                map_classes(body, &mut Stream::new(&d), out);
            }
            out.extend_from_slice(&v[body.len()..]);
        }
        Json | Jsonb => {
            let text = if s == Jsonb && bin { v.strip_prefix(b"\x01")? } else { v };
            let d = keys.digest(b"t", &[text])?;
            if s == Jsonb && bin {
                out.put_u8(1);
            }
            out.extend_from_slice(b"\"psd_");
            put_hex(out, &d[..8]);
            out.put_u8(b'"');
        }
        Int2 | Int4 | Int8 => {
            let n = if bin { codec::int_from_binary(v)? } else { codec::int_from_text(v)? };
            let mut canon = Small::new();
            std::fmt::Write::write_fmt(&mut canon, format_args!("{n}")).ok()?;
            let d = keys.digest(b"n", &[canon.as_bytes()])?;
            let max = codec::int_max(width(s));
            let p = if fp {
                let mut digits = Small::new();
                map_number_digits(canon.as_bytes(), &mut Stream::new(&d), &mut digits);
                let p = codec::int_from_text(digits.as_bytes())?;
                if p.unsigned_abs() > max as u64 { p % max } else { p }
            } else {
                (digest_u64(&d) % (max as u64 + 1)) as i64
            };
            codec::put_int(out, p, width(s), bin);
        }
        Numeric => {
            let text = if bin { codec::numeric_bin_to_text(v)? } else { small_from(v)? };
            let dec = codec::parse_decimal(text.as_bytes());
            let Some(dec) = dec else {
                // NaN and ±Infinity carry nothing personal.
                return put_numeric(out, text.as_bytes(), bin);
            };
            let mut canon = Small::new();
            canonical_decimal(&dec, &mut canon)?;
            let d = keys.digest(b"n", &[canon.as_bytes()])?;
            let integral = dec.frac.iter().all(|&b| b == b'0');
            let mut res = Small::new();
            if integral && !fp {
                let p = digest_u64(&d) % (i64::MAX as u64 + 1);
                std::fmt::Write::write_fmt(&mut res, format_args!("{p}")).ok()?;
            } else {
                map_number_digits(text.as_bytes(), &mut Stream::new(&d), &mut res);
            }
            put_numeric(out, res.as_bytes(), bin)?;
        }
        Uuid => {
            let u = if bin { <[u8; 16]>::try_from(v).ok()? } else { codec::parse_uuid_text(v)? };
            let d = keys.digest(b"u", &[&u])?;
            let mut p: [u8; 16] = d[..16].try_into().ok()?;
            p[6] = (p[6] & 0x0f) | 0x40;
            p[8] = (p[8] & 0x3f) | 0x80;
            codec::put_uuid(out, &p, bin);
        }
        Date => {
            let days = if bin { i64::from(i32::from_be_bytes(v.try_into().ok()?)) } else { codec::parse_date(v)? };
            let d = keys.digest(b"date", &[&days.to_be_bytes()])?;
            let p = pseudo_day(digest_u64(&d));
            if bin { out.put_i32(p as i32) } else { codec::put_date_text(out, p) }
        }
        Timestamp | Timestamptz => {
            let us = if bin {
                i64::from_be_bytes(v.try_into().ok()?)
            } else {
                // A year beyond PostgreSQL's range (a hostile peer's value)
                // overflows: no pseudonym (NULL) rather than a panic.
                let t = codec::parse_timestamp(v)?;
                t.days
                    .checked_mul(USECS_PER_DAY)?
                    .checked_add(t.usecs)?
                    .checked_sub(t.tz_secs.checked_mul(1_000_000)?)?
            };
            let d = keys.digest(b"ts", &[&us.to_be_bytes()])?;
            let mut st = Stream::new(&d);
            let (day, tod) = (pseudo_day(st.next_u64()), st.below(USECS_PER_DAY as u64) as i64);
            if bin {
                out.put_i64(day * USECS_PER_DAY + tod);
            } else {
                codec::put_timestamp_text(out, day, tod, if s == Timestamptz { b"+00" } else { b"" });
            }
        }
        Time => {
            let us = if bin {
                i64::from_be_bytes(v.try_into().ok()?)
            } else {
                codec::parse_time(v).filter(|r| r.1.is_empty())?.0
            };
            let d = keys.digest(b"time", &[&us.to_be_bytes()])?;
            let p = (digest_u64(&d) % USECS_PER_DAY as u64) as i64;
            if bin { out.put_i64(p) } else { codec::put_time_text(out, p) }
        }
        Inet | Cidr => {
            let net = if bin { codec::parse_net_binary(v)? } else { codec::parse_net_text(v)? };
            let d = match net.addr {
                std::net::IpAddr::V4(a) => keys.digest(b"ip", &[&a.octets()])?,
                std::net::IpAddr::V6(a) => keys.digest(b"ip", &[&a.octets()])?,
            };
            let addr: std::net::IpAddr = if net.addr.is_ipv4() {
                std::net::Ipv4Addr::new(10, d[0], d[1], d[2]).into()
            } else {
                let mut o: [u8; 16] = d[..16].try_into().ok()?;
                o[0] = 0xfd;
                std::net::Ipv6Addr::from(o).into()
            };
            let mut p = codec::Net { addr, bits: net.max_bits() }.truncate(net.bits);
            if s == Inet {
                p.addr = addr; // inet keeps host bits; only cidr must not have any
            }
            codec::put_net(out, p, s == Cidr, bin);
        }
        Bytea => {
            let mut raw = Vec::new();
            let bytes = if bin {
                v
            } else {
                codec::bytea_from_text(v, &mut raw)?;
                &raw
            };
            let d = keys.digest(b"b", &[bytes])?;
            codec::put_bytea(out, &d, bin);
        }
        Bool | Float4 | Float8 | Interval => return None,
    }
    Some(())
}

/// A day between 1900-01-01 and 2029-12-31 (PostgreSQL day number).
fn pseudo_day(r: u64) -> i64 {
    let lo = codec::pg_days(1900, 1, 1);
    let hi = codec::pg_days(2030, 1, 1);
    lo + (r % (hi - lo) as u64) as i64
}

fn small_from(v: &[u8]) -> Option<Small> {
    let mut s = Small::new();
    s.extend(v).then_some(s)
}

fn put_numeric(out: &mut BytesMut, text: &[u8], bin: bool) -> Option<()> {
    if bin {
        codec::numeric_text_to_bin(text, out).then_some(())
    } else {
        out.extend_from_slice(text);
        Some(())
    }
}

/// `-0012.500` → `-12.5`, `0.0` → `0`: equal numbers give equal pseudonyms.
fn canonical_decimal(d: &codec::Decimal<'_>, out: &mut Small) -> Option<()> {
    let frac_len = d.frac.iter().rposition(|&b| b != b'0').map_or(0, |p| p + 1);
    let zero = d.int.is_empty() && frac_len == 0;
    if d.neg && !zero && !out.push(b'-') {
        return None;
    }
    if d.int.is_empty() {
        out.push(b'0');
    } else if !out.extend(d.int) {
        return None;
    }
    if frac_len > 0 && !(out.push(b'.') && out.extend(&d.frac[..frac_len])) {
        return None;
    }
    Some(())
}

/// Replaces every digit with a pseudo-random digit, keeping `-` and `.`, and
/// a non-zero leading digit for numbers of more than one integer digit.
fn map_number_digits(text: &[u8], st: &mut Stream, out: &mut Small) {
    let int_len = text.iter().filter(|b| b.is_ascii_digit()).count()
        - text.iter().position(|&b| b == b'.').map_or(0, |p| text[p..].iter().filter(|b| b.is_ascii_digit()).count());
    let mut first = true;
    for &b in text {
        if b.is_ascii_digit() {
            let d = if first && int_len > 1 { 1 + st.below(9) as u8 } else { st.below(10) as u8 };
            first = false;
            out.push(b'0' + d);
        } else {
            out.push(b);
        }
    }
}

/// Letters stay letters (same case), digits stay digits, the rest is kept.
/// Non-ASCII letters become ASCII lowercase letters.
fn map_classes(v: &[u8], st: &mut Stream, out: &mut BytesMut) {
    if v.is_ascii() {
        // The common case, byte by byte (the same mapping as below).
        out.reserve(v.len());
        for &c in v {
            out.put_u8(match c {
                b'0'..=b'9' => b'0' + st.below(10) as u8,
                b'A'..=b'Z' => b'A' + st.below(26) as u8,
                b'a'..=b'z' => b'a' + st.below(26) as u8,
                other => other,
            });
        }
        return;
    }
    map_chars(v, st, out);
}

/// [`map_classes`] character by character (any UTF-8; invalid sequences
/// read as U+FFFD).
fn map_chars(v: &[u8], st: &mut Stream, out: &mut BytesMut) {
    let text = String::from_utf8_lossy(v);
    for c in text.chars() {
        let b = if c.is_ascii_digit() {
            b'0' + st.below(10) as u8
        } else if c.is_ascii_uppercase() {
            b'A' + st.below(26) as u8
        } else if c.is_alphabetic() {
            b'a' + st.below(26) as u8
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        };
        out.put_u8(b);
    }
}

/// The position of `@` when the whole value is one email address.
fn email_at(v: &[u8]) -> Option<usize> {
    // No address without an `@`: most values are not scanned at all.
    memchr::memchr(b'@', v)?;
    let mut found = None;
    detect::scan(v, |f| {
        if f.kind == detect::PiiKind::Email && f.start == 0 && f.end == v.len() {
            found = v.iter().rposition(|&b| b == b'@');
        }
    });
    found
}

// ---------------------------------------------------------------- generalize

fn generalize(s: Scalar, bin: bool, g: Generalize, v: &[u8], out: &mut BytesMut) -> Option<Outcome> {
    use Generalize::*;
    use Scalar::*;
    let wrote = Some(Outcome::Wrote { changed: true });
    match (s, g) {
        (Date, Hour | Day) => Some(Outcome::Same),
        (Date, Month | Year) => {
            if bin {
                let days = i32::from_be_bytes(v.try_into().ok()?);
                if days == i32::MAX || days == i32::MIN {
                    return Some(Outcome::Same);
                }
                out.put_i32(codec::truncate_days(i64::from(days), g == Year) as i32);
            } else {
                if v.ends_with(b"infinity") {
                    return Some(Outcome::Same);
                }
                codec::put_date_text(out, codec::truncate_days(codec::parse_date(v)?, g == Year));
            }
            wrote
        }
        (Timestamp | Timestamptz, Hour | Day | Month | Year) => {
            let trunc = |days: i64, us: i64| -> (i64, i64) {
                match g {
                    Hour => (days, us - us % 3_600_000_000),
                    Day => (days, 0),
                    _ => (codec::truncate_days(days, g == Year), 0),
                }
            };
            if bin {
                let us = i64::from_be_bytes(v.try_into().ok()?);
                if us == i64::MAX || us == i64::MIN {
                    return Some(Outcome::Same);
                }
                let (days, tod) = trunc(us.div_euclid(USECS_PER_DAY), us.rem_euclid(USECS_PER_DAY));
                // Out of range once truncated (a value near the type's ends): not a
                // value this action can write, so the caller's fallback applies.
                out.put_i64(days.checked_mul(USECS_PER_DAY)?.checked_add(tod)?);
            } else {
                if v.ends_with(b"infinity") {
                    return Some(Outcome::Same);
                }
                // Truncated in the session's time zone, the one the value is shown in.
                let t = codec::parse_timestamp(v)?;
                let (days, tod) = trunc(t.days, t.usecs);
                codec::put_timestamp_text(out, days, tod, t.tz);
            }
            wrote
        }
        (Time, Hour | Day | Month | Year) => {
            let us = if bin {
                i64::from_be_bytes(v.try_into().ok()?)
            } else {
                codec::parse_time(v).filter(|r| r.1.is_empty())?.0
            };
            let t = if g == Hour { us - us % 3_600_000_000 } else { 0 };
            if bin {
                out.put_i64(t)
            } else {
                codec::put_time_text(out, t)
            }
            wrote
        }
        (Inet | Cidr, Network { v4, v6 }) => {
            let net = if bin { codec::parse_net_binary(v)? } else { codec::parse_net_text(v)? };
            let bits = if net.addr.is_ipv4() { v4 } else { v6 };
            codec::put_net(out, net.truncate(bits), s == Cidr, bin);
            wrote
        }
        (Int2 | Int4 | Int8, Bucket(size)) => {
            let n = if bin { codec::int_from_binary(v)? } else { codec::int_from_text(v)? };
            let b = i128::from(size);
            let r = i128::from(n).div_euclid(b) * b;
            let r = i64::try_from(r).ok().filter(|r| r.abs() <= codec::int_max(width(s)))?;
            codec::put_int(out, r, width(s), bin);
            wrote
        }
        (Numeric, Bucket(size)) => {
            let text = if bin { codec::numeric_bin_to_text(v)? } else { small_from(v)? };
            let Some(dec) = codec::parse_decimal(text.as_bytes()) else { return Some(Outcome::Same) };
            if dec.int.len() > 36 {
                return None;
            }
            let int = dec.int.iter().fold(0i128, |a, &b| a * 10 + i128::from(b - b'0'));
            let has_frac = dec.frac.iter().any(|&b| b != b'0');
            let floor = if dec.neg { -int - i128::from(has_frac) } else { int };
            let b = i128::from(size);
            let r = floor.div_euclid(b) * b;
            let mut res = Small::new();
            std::fmt::Write::write_fmt(&mut res, format_args!("{r}")).ok()?;
            put_numeric(out, res.as_bytes(), bin)?;
            wrote
        }
        (Float4 | Float8, Bucket(size)) => {
            let x: f64 = if bin {
                match v.len() {
                    4 => f64::from(f32::from_be_bytes(v.try_into().ok()?)),
                    8 => f64::from_be_bytes(v.try_into().ok()?),
                    _ => return None,
                }
            } else {
                std::str::from_utf8(v).ok()?.parse().ok()?
            };
            if !x.is_finite() {
                return Some(Outcome::Same);
            }
            let r = (x / size as f64).floor() * size as f64;
            match (s, bin) {
                (Float4, true) => out.put_f32(r as f32),
                (_, true) => out.put_f64(r),
                _ => std::fmt::Write::write_fmt(out, format_args!("{r}")).ok()?,
            }
            wrote
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- detect

fn detect_scalar(s: Scalar, bin: bool, v: &[u8], out: &mut BytesMut) -> Option<Outcome> {
    use Scalar::*;
    match s {
        Text | Bpchar => {
            if !detect::may_contain_pii(v) {
                return Some(Outcome::Same);
            }
            let n = detect::mask_into(v, out, MaskStyle::Text);
            Some(Outcome::Wrote { changed: n > 0 })
        }
        Json | Jsonb => {
            let text = if s == Jsonb && bin { v.strip_prefix(b"\x01")? } else { v };
            if !detect::may_contain_pii(text) {
                return Some(Outcome::Same);
            }
            if s == Jsonb && bin {
                out.put_u8(1);
            }
            let n = mask_json(text, out);
            Some(Outcome::Wrote { changed: n > 0 })
        }
        Int8 | Numeric => {
            // Card numbers stored as numbers.
            let card = if s == Int8 {
                let n = if bin { codec::int_from_binary(v)? } else { codec::int_from_text(v)? };
                let mut t = Small::new();
                std::fmt::Write::write_fmt(&mut t, format_args!("{}", n.unsigned_abs())).ok()?;
                is_card_number(t.as_bytes())
            } else {
                let text = if bin { codec::numeric_bin_to_text(v)? } else { small_from(v)? };
                codec::parse_decimal(text.as_bytes())
                    .is_some_and(|d| d.frac.iter().all(|&b| b == b'0') && is_card_number(d.int))
            };
            if card {
                put_redacted(s, bin, out);
                Some(Outcome::Wrote { changed: true })
            } else {
                Some(Outcome::Same)
            }
        }
        Inet | Cidr => {
            let net = if bin { codec::parse_net_binary(v)? } else { codec::parse_net_text(v)? };
            // A network no narrower than /24 (/64) is not one person's address.
            let wide = s == Cidr && net.bits <= if net.addr.is_ipv4() { 24 } else { 64 };
            if wide {
                Some(Outcome::Same)
            } else {
                put_redacted(s, bin, out);
                Some(Outcome::Wrote { changed: true })
            }
        }
        Bytea => {
            let mut raw = Vec::new();
            let bytes = if bin {
                v
            } else {
                codec::bytea_from_text(v, &mut raw)?;
                &raw
            };
            Some(if detect::contains_pii(bytes) { Outcome::Null } else { Outcome::Same })
        }
        Int2 | Int4 | Float4 | Float8 | Bool | Date | Time | Timestamp | Timestamptz | Interval | Uuid => {
            Some(Outcome::Same)
        }
    }
}

fn is_card_number(d: &[u8]) -> bool {
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let mut digits = [0u8; 19];
    for (o, &b) in digits.iter_mut().zip(d) {
        *o = b - b'0';
    }
    detect::luhn(&digits[..d.len()]) && detect::issuer_ok(&digits[..d.len()])
}

/// Masks detected values inside a JSON document: string contents are masked
/// like text, digits of numbers become `9` (a card number stored as a JSON
/// number stays a number). Keys are scanned too. Returns the count masked.
pub(crate) fn mask_json(text: &[u8], out: &mut BytesMut) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < text.len() {
        let q = memchr::memchr(b'"', &text[i..]).map_or(text.len(), |p| i + p);
        n += detect::mask_into(&text[i..q], out, MaskStyle::JsonNumber);
        if q == text.len() {
            break;
        }
        let mut j = q + 1;
        while j < text.len() && text[j] != b'"' {
            j += if text[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(text.len());
        out.put_u8(b'"');
        n += detect::mask_into(&text[q + 1..end], out, MaskStyle::Text);
        if end < text.len() {
            out.put_u8(b'"');
        }
        i = end + 1;
    }
    n
}

// ---------------------------------------------------------------- arrays

/// Runs an array masker; an array it cannot read leaves nothing in `out`
/// and becomes NULL (fail closed).
fn array_or_fallback(out: &mut BytesMut, mask: impl FnOnce(&mut BytesMut) -> Option<Outcome>) -> Outcome {
    let start = out.len();
    mask(out).unwrap_or_else(|| {
        out.truncate(start);
        Outcome::Fallback
    })
}

/// Binary array: ndim, has-null flag, element OID, (size, lower bound) per
/// dimension, then each element as length + bytes (-1 for NULL).
fn array_binary(action: &ColumnAction, s: Scalar, keys: &Keys, v: &[u8], out: &mut BytesMut) -> Option<Outcome> {
    let mut cur = crate::wire::Cursor::new(v, b'D');
    let ndim = cur.i32().ok()?;
    let _flags = cur.i32().ok()?;
    let oid = cur.u32().ok()?;
    if !(0..=6).contains(&ndim) {
        return None;
    }
    let mut count: u64 = if ndim == 0 { 0 } else { 1 };
    out.put_i32(ndim);
    let flags_at = out.len();
    out.put_i32(0);
    out.put_u32(oid);
    for _ in 0..ndim {
        let size = cur.i32().ok()?;
        let lbound = cur.i32().ok()?;
        count = count.checked_mul(u64::try_from(size).ok()?)?;
        out.put_i32(size);
        out.put_i32(lbound);
    }
    let mut has_null = false;
    let mut changed = false;
    for _ in 0..count {
        let len = cur.i32().ok()?;
        if len == -1 {
            has_null = true;
            out.put_i32(-1);
            continue;
        }
        let elem = cur.bytes(usize::try_from(len).ok()?).ok()?;
        let len_at = out.len();
        out.put_i32(0);
        match mask_scalar(action, s, Format::Binary, keys, elem, out) {
            Outcome::Same => out.extend_from_slice(elem),
            Outcome::Wrote { changed: c } => changed |= c,
            Outcome::Null | Outcome::Fallback => {
                out.truncate(len_at);
                out.put_i32(-1);
                has_null = true;
                changed = true;
                continue;
            }
        }
        let n = (out.len() - len_at - 4) as i32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
    }
    if !cur.is_empty() {
        return None;
    }
    out[flags_at..flags_at + 4].copy_from_slice(&i32::from(has_null).to_be_bytes());
    Some(Outcome::Wrote { changed })
}

/// Text array: `{a,"b c",NULL}`, nested braces for more dimensions, an
/// optional `[1:3]=` bounds prefix. Masked elements are always quoted.
fn array_text(action: &ColumnAction, s: Scalar, keys: &Keys, v: &[u8], out: &mut BytesMut) -> Option<Outcome> {
    let mut i = 0;
    if v.first() == Some(&b'[') {
        let eq = v.iter().position(|&b| b == b'=')?;
        out.extend_from_slice(&v[..=eq]);
        i = eq + 1;
    }
    let mut elem = Vec::new();
    let mut masked = BytesMut::new();
    let mut changed = false;
    let mut depth = 0usize;
    // After `{` or `,` an element (or a nested array) is expected.
    while i < v.len() {
        match v[i] {
            b'{' => {
                depth += 1;
                out.put_u8(b'{');
                i += 1;
            }
            b'}' => {
                depth = depth.checked_sub(1)?;
                out.put_u8(b'}');
                i += 1;
            }
            b',' => {
                out.put_u8(b',');
                i += 1;
            }
            b if array_space(b) => i += 1,
            _ if depth == 0 => return None,
            _ => {
                // One element.
                elem.clear();
                let quoted = v[i] == b'"';
                let raw_start = i;
                if quoted {
                    i += 1;
                    loop {
                        match *v.get(i)? {
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b'\\' => {
                                elem.push(*v.get(i + 1)?);
                                i += 2;
                            }
                            b => {
                                elem.push(b);
                                i += 1;
                            }
                        }
                    }
                } else {
                    while i < v.len() && v[i] != b',' && v[i] != b'}' {
                        if v[i] == b'\\' {
                            elem.push(*v.get(i + 1)?);
                            i += 2;
                        } else {
                            elem.push(v[i]);
                            i += 1;
                        }
                    }
                    while elem.last().copied().is_some_and(array_space) {
                        elem.pop();
                    }
                    if elem.eq_ignore_ascii_case(b"NULL") {
                        out.extend_from_slice(b"NULL");
                        continue;
                    }
                }
                // An element ends at `,` or `}`, nothing else.
                let next = v[i..].iter().find(|&&b| !array_space(b));
                if !matches!(next, Some(b',' | b'}')) {
                    return None;
                }
                masked.clear();
                match mask_scalar(action, s, Format::Text, keys, &elem, &mut masked) {
                    Outcome::Same => out.extend_from_slice(&v[raw_start..i]),
                    Outcome::Wrote { changed: c } => {
                        changed |= c;
                        out.put_u8(b'"');
                        for &b in masked.iter() {
                            if b == b'"' || b == b'\\' {
                                out.put_u8(b'\\');
                            }
                            out.put_u8(b);
                        }
                        out.put_u8(b'"');
                    }
                    Outcome::Null | Outcome::Fallback => {
                        changed = true;
                        out.extend_from_slice(b"NULL");
                    }
                }
            }
        }
    }
    (depth == 0).then_some(Outcome::Wrote { changed })
}

/// Whitespace around array elements as PostgreSQL's `array_in` skips it
/// (`\v` and `\f` included).
fn array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_values_map_as_character_by_character() {
        let d = [42u8; 32];
        for v in ["123-45-6789", "Jane.Doe7", "", " !~{}[]|@_-09azAZ", "MiXeD 0099 case"] {
            let (mut fast, mut slow) = (BytesMut::new(), BytesMut::new());
            map_classes(v.as_bytes(), &mut Stream::new(&d), &mut fast);
            map_chars(v.as_bytes(), &mut Stream::new(&d), &mut slow);
            assert_eq!(fast, slow, "{v}");
        }
    }
}
