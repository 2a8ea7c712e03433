//! Decoding and encoding of the values the engine rewrites, in PostgreSQL's
//! text and binary wire formats.
//!
//! Text formats follow the server's default output settings (`DateStyle =
//! ISO`, `IntervalStyle = postgres`, `bytea_output = hex`); a value that does
//! not parse is reported as `None`, and the caller fails closed (NULL).
//! Binary formats: integers big-endian; `date` i32 days and `timestamp[tz]` i64
//! µs since 2000-01-01; `time` i64 µs since midnight; `numeric` is
//! (ndigits, weight, sign, dscale, base-10000 digits), all i16/u16;
//! `inet`/`cidr` is (family, bits, is_cidr, nb, address bytes).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

/// Microseconds in a day.
pub(crate) const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;

// ---------------------------------------------------------------- integers

pub(crate) fn int_from_text(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

pub(crate) fn int_from_binary(v: &[u8]) -> Option<i64> {
    Some(match v.len() {
        2 => i64::from(i16::from_be_bytes([v[0], v[1]])),
        4 => i64::from(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        8 => i64::from_be_bytes(v.try_into().ok()?),
        _ => return None,
    })
}

/// Writes an integer of `width` bytes (2, 4, 8) in `binary` or text form.
pub(crate) fn put_int(out: &mut BytesMut, n: i64, width: usize, binary: bool) {
    if binary {
        match width {
            2 => out.put_i16(n as i16),
            4 => out.put_i32(n as i32),
            _ => out.put_i64(n),
        }
    } else {
        let _ = write!(out, "{n}");
    }
}

/// The largest value of an integer type of `width` bytes.
pub(crate) fn int_max(width: usize) -> i64 {
    match width {
        2 => i64::from(i16::MAX),
        4 => i64::from(i32::MAX),
        _ => i64::MAX,
    }
}

/// A short decimal rendering on the stack (no allocation).
pub(crate) struct Small {
    buf: [u8; 128],
    len: usize,
}

impl Small {
    pub(crate) fn new() -> Small {
        Small { buf: [0; 128], len: 0 }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends; `false` when the buffer is full.
    pub(crate) fn push(&mut self, b: u8) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        self.buf[self.len] = b;
        self.len += 1;
        true
    }

    pub(crate) fn extend(&mut self, s: &[u8]) -> bool {
        s.iter().all(|&b| self.push(b))
    }
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.extend(s.as_bytes()) { Ok(()) } else { Err(std::fmt::Error) }
    }
}

// ---------------------------------------------------------------- numeric

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;

/// A decimal number split into its parts (text form, without signs or dots).
pub(crate) struct Decimal<'a> {
    pub neg: bool,
    /// Integer digits, without leading zeros (may be empty for 0.x).
    pub int: &'a [u8],
    /// Fraction digits, as written (trailing zeros kept: they carry the scale).
    pub frac: &'a [u8],
}

/// Parses `[-+]digits[.digits]`; `None` for NaN/Infinity and anything else.
pub(crate) fn parse_decimal(v: &[u8]) -> Option<Decimal<'_>> {
    let (neg, rest) = match v.first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let lead = int.iter().take_while(|&&b| b == b'0').count();
    Some(Decimal { neg, int: &int[lead..], frac })
}

/// Renders a binary numeric as text (as `numeric_out` would). `None` when
/// malformed or longer than the stack buffer.
pub(crate) fn numeric_bin_to_text(v: &[u8]) -> Option<Small> {
    if v.len() < 8 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([v[i], v[i + 1]]);
    let ndigits = be16(0) as usize;
    let weight = be16(2) as i16 as i64;
    let sign = be16(4);
    let dscale = be16(6) as i64;
    if v.len() != 8 + 2 * ndigits {
        return None;
    }
    let mut s = Small::new();
    match sign {
        0xC000 => return s.extend(b"NaN").then_some(s),
        0xD000 => return s.extend(b"Infinity").then_some(s),
        0xF000 => return s.extend(b"-Infinity").then_some(s),
        NUMERIC_POS => {}
        NUMERIC_NEG => {
            s.push(b'-');
        }
        _ => return None,
    }
    let digit = |i: i64| -> Option<u16> {
        if i < 0 || i as usize >= ndigits {
            return Some(0);
        }
        let d = be16(8 + 2 * i as usize);
        (d < 10_000).then_some(d)
    };
    if weight < 0 {
        s.push(b'0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            let ok = if i == 0 { write!(s, "{d}").is_ok() } else { write!(s, "{d:04}").is_ok() };
            if !ok {
                return None;
            }
        }
    }
    if dscale > 0 {
        s.push(b'.');
        let mut left = dscale;
        let mut i = weight + 1;
        while left > 0 {
            let d = digit(i)?;
            let mut four = Small::new();
            let _ = write!(four, "{d:04}");
            let take = left.min(4) as usize;
            if !s.extend(&four.as_bytes()[..take]) {
                return None;
            }
            left -= take as i64;
            i += 1;
        }
    }
    Some(s)
}

/// Writes the binary numeric for a text decimal (`-12.340` keeps dscale 3).
/// Returns `false` (writing nothing) when `v` is not a plain decimal.
pub(crate) fn numeric_text_to_bin(v: &[u8], out: &mut BytesMut) -> bool {
    match v {
        b"NaN" => return put_numeric_special(out, 0xC000),
        b"Infinity" => return put_numeric_special(out, 0xD000),
        b"-Infinity" => return put_numeric_special(out, 0xF000),
        _ => {}
    }
    let Some(d) = parse_decimal(v) else { return false };
    let Ok(dscale) = u16::try_from(d.frac.len()) else { return false };
    // Group digits in fours aligned on the decimal point.
    let int_pad = (4 - d.int.len() % 4) % 4;
    let int_groups = (d.int.len() + int_pad) / 4;
    let frac_groups = d.frac.len().div_ceil(4);
    let total = int_groups + frac_groups;
    let group = |g: usize| -> u16 {
        let mut n = 0u16;
        for k in 0..4 {
            let pos = g * 4 + k; // position in the padded digit string
            let b = if g < int_groups {
                if pos < int_pad { b'0' } else { d.int[pos - int_pad] }
            } else {
                let fp = pos - int_groups * 4;
                *d.frac.get(fp).unwrap_or(&b'0')
            };
            n = n * 10 + u16::from(b - b'0');
        }
        n
    };
    let mut first = 0;
    while first < total && group(first) == 0 {
        first += 1;
    }
    let mut last = total;
    while last > first && group(last - 1) == 0 {
        last -= 1;
    }
    let ndigits = last - first;
    let weight = int_groups as i64 - 1 - first as i64;
    let (Ok(nd), Ok(w)) = (u16::try_from(ndigits), i16::try_from(if ndigits == 0 { 0 } else { weight })) else {
        return false;
    };
    out.put_u16(nd);
    out.put_i16(w);
    out.put_u16(if d.neg && ndigits > 0 { NUMERIC_NEG } else { NUMERIC_POS });
    out.put_u16(dscale);
    for g in first..last {
        out.put_u16(group(g));
    }
    true
}

fn put_numeric_special(out: &mut BytesMut, sign: u16) -> bool {
    out.put_u16(0);
    out.put_i16(0);
    out.put_u16(sign);
    out.put_u16(0);
    true
}

// ---------------------------------------------------------------- dates and times

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// PostgreSQL day number (since 2000-01-01) of a date.
pub(crate) fn pg_days(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d) - PG_EPOCH_DAYS
}

/// The date of a PostgreSQL day number.
pub(crate) fn pg_civil(days: i64) -> (i64, u32, u32) {
    civil_from_days(days + PG_EPOCH_DAYS)
}

/// A parsed text date or timestamp.
pub(crate) struct DateTime<'a> {
    /// Days since 2000-01-01.
    pub days: i64,
    /// Microseconds since midnight (0 for dates).
    pub usecs: i64,
    /// Time zone suffix as written (`+01`, `-05:30`), empty if none.
    pub tz: &'a [u8],
    /// Offset of `tz` in seconds east of UTC.
    pub tz_secs: i64,
}

fn num(v: &[u8]) -> Option<i64> {
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0i64, |a, &b| a * 10 + i64::from(b - b'0')))
}

/// Parses an ISO date `YYYY-MM-DD[ BC]`.
pub(crate) fn parse_date(v: &[u8]) -> Option<i64> {
    let (v, bc) = strip_bc(v);
    let (days, rest) = parse_ymd(v, bc)?;
    rest.is_empty().then_some(days)
}

fn strip_bc(v: &[u8]) -> (&[u8], bool) {
    match v.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (v, false),
    }
}

fn parse_ymd(v: &[u8], bc: bool) -> Option<(i64, &[u8])> {
    let dash1 = v.iter().position(|&b| b == b'-')?;
    let y = num(&v[..dash1])?;
    let r = &v[dash1 + 1..];
    if r.len() < 5 || r[2] != b'-' {
        return None;
    }
    let m = num(&r[..2])? as u32;
    let d = num(&r[3..5])? as u32;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some((pg_days(y, m, d), &r[5..]))
}

/// Parses `HH:MM:SS[.ffffff]`, returning µs and the rest.
pub(crate) fn parse_time(v: &[u8]) -> Option<(i64, &[u8])> {
    if v.len() < 8 || v[2] != b':' || v[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&v[..2])?, num(&v[3..5])?, num(&v[6..8])?);
    if h > 24 || m > 59 || s > 60 {
        return None;
    }
    let mut us = ((h * 60 + m) * 60 + s) * 1_000_000;
    let mut rest = &v[8..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return None;
        }
        us += num(&frac[..n])? * 10i64.pow(6 - n as u32);
        rest = &frac[n..];
    }
    Some((us, rest))
}

/// Parses an ISO timestamp `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]`.
pub(crate) fn parse_timestamp(v: &[u8]) -> Option<DateTime<'_>> {
    let (v, bc) = strip_bc(v);
    let (days, rest) = parse_ymd(v, bc)?;
    let rest = rest.strip_prefix(b" ")?;
    let (usecs, tz) = parse_time(rest)?;
    let tz_secs = if tz.is_empty() {
        0
    } else {
        let sign = match tz[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let mut secs = 0;
        for (k, part) in tz[1..].split(|&b| b == b':').enumerate() {
            if k > 2 || part.len() != 2 {
                return None;
            }
            secs = secs * 60 + num(part)?;
        }
        let parts = tz[1..].split(|&b| b == b':').count() as u32;
        sign * secs * 60i64.pow(3 - parts)
    };
    Some(DateTime { days, usecs, tz, tz_secs })
}

fn put_ymd(out: &mut BytesMut, days: i64) -> bool {
    let (y, m, d) = pg_civil(days);
    let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
    bc
}

/// Writes a date (`days` since 2000-01-01) in ISO text.
pub(crate) fn put_date_text(out: &mut BytesMut, days: i64) {
    if put_ymd(out, days) {
        out.extend_from_slice(b" BC");
    }
}

/// Writes a time of day in µs as `HH:MM:SS[.ffffff]`.
pub(crate) fn put_time_text(out: &mut BytesMut, us: i64) {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let _ = write!(out, "{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let mut f = Small::new();
        let _ = write!(f, "{frac:06}");
        let digits = f.as_bytes();
        let n = digits.iter().rposition(|&b| b != b'0').map_or(0, |p| p + 1);
        out.put_u8(b'.');
        out.extend_from_slice(&digits[..n]);
    }
}

/// Writes a timestamp from PostgreSQL day number, time of day and tz suffix.
pub(crate) fn put_timestamp_text(out: &mut BytesMut, days: i64, us: i64, tz: &[u8]) {
    let bc = put_ymd(out, days);
    out.put_u8(b' ');
    put_time_text(out, us);
    out.extend_from_slice(tz);
    if bc {
        out.extend_from_slice(b" BC");
    }
}

/// First day of the month or year containing `days` (PostgreSQL day numbers).
pub(crate) fn truncate_days(days: i64, to_year: bool) -> i64 {
    let (y, m, _) = pg_civil(days);
    pg_days(y, if to_year { 1 } else { m }, 1)
}

// ---------------------------------------------------------------- inet / cidr

const PGSQL_AF_INET: u8 = 2;
const PGSQL_AF_INET6: u8 = 3;

/// An address with its netmask length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Net {
    pub(crate) fn max_bits(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// The network of `bits` (host bits cleared); unchanged when already wider.
    pub(crate) fn truncate(self, bits: u8) -> Net {
        let bits = bits.min(self.bits);
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Net { addr, bits }
    }
}

pub(crate) fn parse_net_text(v: &[u8]) -> Option<Net> {
    let s = std::str::from_utf8(v).ok()?;
    let (a, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some(Net { addr, bits })
}

pub(crate) fn parse_net_binary(v: &[u8]) -> Option<Net> {
    if v.len() < 4 {
        return None;
    }
    let (family, bits, nb) = (v[0], v[1], v[3] as usize);
    if v.len() != 4 + nb {
        return None;
    }
    let addr = match (family, nb) {
        (PGSQL_AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
        (PGSQL_AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&v[4..20]).ok()?)),
        _ => return None,
    };
    let net = Net { addr, bits };
    (bits <= net.max_bits()).then_some(net)
}

pub(crate) fn put_net(out: &mut BytesMut, net: Net, cidr: bool, binary: bool) {
    if binary {
        match net.addr {
            IpAddr::V4(a) => {
                out.extend_from_slice(&[PGSQL_AF_INET, net.bits, cidr as u8, 4]);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.extend_from_slice(&[PGSQL_AF_INET6, net.bits, cidr as u8, 16]);
                out.extend_from_slice(&a.octets());
            }
        }
    } else if cidr || net.bits != net.max_bits() {
        let _ = write!(out, "{}/{}", net.addr, net.bits);
    } else {
        let _ = write!(out, "{}", net.addr);
    }
}

// ---------------------------------------------------------------- uuid, bytea

pub(crate) fn parse_uuid_text(v: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for &b in v {
        if b == b'-' || b == b'{' || b == b'}' {
            continue;
        }
        let d = (b as char).to_digit(16)? as u8;
        match hi.take() {
            None => hi = Some(d),
            Some(h) => {
                *out.get_mut(n)? = h << 4 | d;
                n += 1;
            }
        }
    }
    (n == 16 && hi.is_none()).then_some(out)
}

pub(crate) fn put_uuid(out: &mut BytesMut, u: &[u8; 16], binary: bool) {
    if binary {
        out.extend_from_slice(u);
        return;
    }
    for (i, chunk) in [&u[0..4], &u[4..6], &u[6..8], &u[8..10], &u[10..16]].into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b'-');
        }
        super::pseudonym::put_hex(out, chunk);
    }
}

/// Decodes bytea text output (`\x` hex, or the escape format) into `buf`.
pub(crate) fn bytea_from_text(v: &[u8], buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    if let Some(hex) = v.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        for pair in hex.chunks(2) {
            let h = (pair[0] as char).to_digit(16)?;
            let l = (pair[1] as char).to_digit(16)?;
            buf.push((h << 4 | l) as u8);
        }
        return Some(());
    }
    let mut i = 0;
    while i < v.len() {
        if v[i] != b'\\' {
            buf.push(v[i]);
            i += 1;
        } else if v.get(i + 1) == Some(&b'\\') {
            buf.push(b'\\');
            i += 2;
        } else {
            let oct = v.get(i + 1..i + 4)?;
            let n =
                oct.iter().try_fold(0u32, |a, &b| (b'0'..=b'7').contains(&b).then(|| a * 8 + u32::from(b - b'0')))?;
            buf.push(u8::try_from(n).ok()?);
            i += 4;
        }
    }
    Some(())
}

pub(crate) fn put_bytea(out: &mut BytesMut, bytes: &[u8], binary: bool) {
    if binary {
        out.extend_from_slice(bytes);
    } else {
        out.extend_from_slice(b"\\x");
        super::pseudonym::put_hex(out, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num_roundtrip(text: &str) -> String {
        let mut bin = BytesMut::new();
        assert!(numeric_text_to_bin(text.as_bytes(), &mut bin), "{text}");
        String::from_utf8(numeric_bin_to_text(&bin).unwrap().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn numeric_binary_roundtrip() {
        for t in ["0", "1", "-1", "12345678.90", "0.0001", "10000", "-0.5", "123456789012345678901234567890", "0.000"] {
            assert_eq!(num_roundtrip(t), t);
        }
        assert_eq!(num_roundtrip("007.50"), "7.50");
        // Agrees with postgres-protocol's own decoder on structure.
        let mut bin = BytesMut::new();
        numeric_text_to_bin(b"-12.340", &mut bin);
        assert_eq!(&bin[..], &[0, 2, 0, 0, 0x40, 0, 0, 3, 0, 12, 13, 72]);
    }

    #[test]
    fn dates() {
        assert_eq!(pg_days(2000, 1, 1), 0);
        assert_eq!(pg_days(1970, 1, 1), -10_957);
        assert_eq!(pg_civil(pg_days(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(parse_date(b"2024-03-05"), Some(pg_days(2024, 3, 5)));
        assert_eq!(parse_date(b"0044-03-15 BC"), Some(pg_days(-43, 3, 15)));
        let mut out = BytesMut::new();
        put_date_text(&mut out, pg_days(-43, 3, 15));
        assert_eq!(&out[..], b"0044-03-15 BC");
        let ts = parse_timestamp(b"2024-03-05 13:45:12.5+05:30").unwrap();
        assert_eq!(ts.usecs, (13 * 3600 + 45 * 60 + 12) * 1_000_000 + 500_000);
        assert_eq!(ts.tz_secs, 5 * 3600 + 1800);
        assert_eq!(parse_timestamp(b"2024-03-05 13:45:12-08").unwrap().tz_secs, -8 * 3600);
        assert!(parse_timestamp(b"2024-03-05T13:45:12").is_none());
    }

    #[test]
    fn nets_and_uuids() {
        let n = parse_net_text(b"192.168.1.77").unwrap();
        assert_eq!(n.truncate(24), parse_net_text(b"192.168.1.0/24").unwrap());
        let mut out = BytesMut::new();
        put_net(&mut out, n.truncate(24), false, false);
        assert_eq!(&out[..], b"192.168.1.0/24");
        let u = parse_uuid_text(b"7d444840-9dc0-11d1-b245-5ffdce74fad2").unwrap();
        let mut out = BytesMut::new();
        put_uuid(&mut out, &u, false);
        assert_eq!(&out[..], b"7d444840-9dc0-11d1-b245-5ffdce74fad2");
        let mut buf = Vec::new();
        bytea_from_text(b"\\x41ff", &mut buf).unwrap();
        assert_eq!(buf, [0x41, 0xff]);
        bytea_from_text(b"a\\\\b\\001", &mut buf).unwrap();
        assert_eq!(buf, b"a\\b\x01");
    }
}
