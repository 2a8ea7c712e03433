//! Content detectors: find personal data inside free text.
//!
//! Hand-written scanners, one left-to-right pass, no regex and no allocation.
//! A cheap prefilter ([`may_contain_pii`]) skips text that cannot hold any of
//! the detected kinds (no `@`, fewer than four digits, fewer than two `:`).
//!
//! What is found, and what is deliberately not (to keep false positives low):
//!
//! | kind   | found                                                        | not found |
//! |--------|--------------------------------------------------------------|-----------|
//! | email  | `local@domain.tld` (TLD of ≥ 2 letters)                      | `user@localhost` |
//! | phone  | `+` and 8–15 digits with spaces/dashes/dots/parentheses;     | bare digit runs (ids, amounts) |
//! |        | `(555) 123-4567`, `555-123-4567`, `555.123.4567` (area 2–9);  | |
//! |        | national trunk-0 numbers in groups: `020 7946 0958`          | |
//! | SSN    | `###-##-####` with area ∉ {000, 666, 900–999}, group ≠ 00, serial ≠ 0000 | `ORD-123-45-6789`, 9 bare digits |
//! | card   | 13–19 digits, optional single spaces/dashes, Luhn-valid, issuer prefix (2,3,4,5,6) | Luhn-valid ids starting 1,7,8,9; timestamps |
//! | IBAN   | 2 letters, 2 check digits, 11–30 alphanumerics (groups of 4 allowed), mod-97 = 1 | |
//! | IPv4   | dotted quad, octets ≤ 255, optional `/len`                   | 0.0.0.0, 127.0.0.0/8, 255.255.x.x masks, `1.2.3.4.5` |
//! | IPv6   | anything `std` parses as an IPv6 address, optional `/len`    | `::`, `::1`, times like `12:34:56` |
//!
//! Every detector requires a token boundary on both sides: a match never
//! starts or ends inside a word or a longer number.

use bytes::BytesMut;

/// A kind of personal data the detectors recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PiiKind {
    Email,
    Phone,
    Ssn,
    Card,
    Iban,
    Ipv4,
    Ipv6,
}

/// One detected value: `text[start..end]` is personal data of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

/// Whether `text` may contain anything the detectors find. Cheap: one pass
/// counting digits, `@` and `:`.
pub fn may_contain_pii(text: &[u8]) -> bool {
    if memchr::memchr(b'@', text).is_some() {
        return true;
    }
    let (mut digits, mut colons) = (0usize, 0usize);
    for &b in text {
        digits += b.is_ascii_digit() as usize;
        colons += (b == b':') as usize;
        if digits >= 4 || colons >= 2 {
            return true;
        }
    }
    false
}

/// Calls `f` for each detected value, left to right, non-overlapping.
pub fn scan(text: &[u8], mut f: impl FnMut(Found)) {
    if !may_contain_pii(text) {
        return;
    }
    let mut i = 0;
    while i < text.len() {
        match detect_at(text, i) {
            Some(found) => {
                f(found);
                i = found.end;
            }
            None => i += 1,
        }
    }
}

/// Whether the detectors find anything in `text`.
pub fn contains_pii(text: &[u8]) -> bool {
    let mut any = false;
    scan(text, |_| any = true);
    any
}

/// How found values are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskStyle {
    /// Letters and digits become `*`; emails become `****@domain`.
    Text,
    /// Digits become `9`: keeps a JSON number a valid number.
    JsonNumber,
}

/// Appends `text` to `out` with every detected value masked (separators and
/// an email's domain are kept, an IBAN keeps its country code). Returns the
/// number of values masked; with 0, `out` received an exact copy.
pub(crate) fn mask_into(text: &[u8], out: &mut BytesMut, style: MaskStyle) -> usize {
    let mut copied = 0;
    let mut count = 0;
    scan(text, |found| {
        out.extend_from_slice(&text[copied..found.start]);
        put_mask(&text[found.start..found.end], found.kind, out, style);
        copied = found.end;
        count += 1;
    });
    out.extend_from_slice(&text[copied..]);
    count
}

fn put_mask(value: &[u8], kind: PiiKind, out: &mut BytesMut, style: MaskStyle) {
    if kind == PiiKind::Email && style == MaskStyle::Text {
        let at = value.iter().rposition(|&b| b == b'@').unwrap_or(0);
        out.extend_from_slice(b"****");
        out.extend_from_slice(&value[at..]);
        return;
    }
    let keep = if kind == PiiKind::Iban { 2 } else { 0 };
    for (k, &b) in value.iter().enumerate() {
        let masked = match style {
            MaskStyle::Text if k >= keep && b.is_ascii_alphanumeric() => b'*',
            MaskStyle::JsonNumber if b.is_ascii_digit() => b'9',
            _ => b,
        };
        out.extend_from_slice(&[masked]);
    }
}

fn detect_at(t: &[u8], i: usize) -> Option<Found> {
    let b = t[i];
    let prev = if i > 0 { Some(t[i - 1]) } else { None };
    let hit = |kind, end| Some(Found { kind, start: i, end });
    if is_local(b)
        && b != b'.'
        && !prev.is_some_and(is_local)
        && let Some(end) = email_at(t, i)
    {
        return hit(PiiKind::Email, end);
    }
    let num_boundary = !prev.is_some_and(|p| p.is_ascii_alphanumeric() || b"_-.".contains(&p));
    if num_boundary && (b.is_ascii_digit() || b == b'+' || b == b'(') {
        if b.is_ascii_digit() {
            if let Some(end) = ssn_at(t, i) {
                return hit(PiiKind::Ssn, end);
            }
            if let Some(end) = card_at(t, i) {
                return hit(PiiKind::Card, end);
            }
            if let Some(end) = ipv4_at(t, i) {
                return hit(PiiKind::Ipv4, end);
            }
        }
        if let Some(end) = phone_at(t, i) {
            return hit(PiiKind::Phone, end);
        }
    }
    if b.is_ascii_uppercase()
        && !prev.is_some_and(|p| p.is_ascii_alphanumeric())
        && let Some(end) = iban_at(t, i)
    {
        return hit(PiiKind::Iban, end);
    }
    if (b.is_ascii_hexdigit() || b == b':')
        && !prev.is_some_and(|p| p.is_ascii_alphanumeric() || b"_:.".contains(&p))
        && let Some(end) = ipv6_at(t, i)
    {
        return hit(PiiKind::Ipv6, end);
    }
    None
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
}

fn digit(t: &[u8], i: usize) -> bool {
    t.get(i).is_some_and(u8::is_ascii_digit)
}

/// Whether a number-like match may end at `end`: not followed by a letter,
/// a digit, `_`, or a separator that continues the number.
fn end_ok(t: &[u8], end: usize) -> bool {
    match t.get(end) {
        None => true,
        Some(&c) if c.is_ascii_alphanumeric() || c == b'_' => false,
        Some(&c) if b"-./".contains(&c) => !digit(t, end + 1),
        Some(_) => true,
    }
}

fn email_at(t: &[u8], i: usize) -> Option<usize> {
    let at = i + t[i..].iter().position(|&b| !is_local(b))?;
    if t[at] != b'@' || at == i {
        return None;
    }
    let start = at + 1;
    let mut end = start
        + t[start..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
            .unwrap_or(t.len() - start);
    while end > start && matches!(t[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &t[start..end];
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return None;
        }
        labels += 1;
        last = label;
    }
    (labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)).then_some(end)
}

fn ssn_at(t: &[u8], i: usize) -> Option<usize> {
    let s = t.get(i..i + 11)?;
    let shape = s.iter().enumerate().all(|(k, &b)| if k == 3 || k == 6 { b == b'-' } else { b.is_ascii_digit() });
    if !shape || !end_ok(t, i + 11) {
        return None;
    }
    let num = |r: &[u8]| r.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'));
    let (area, group, serial) = (num(&s[0..3]), num(&s[4..6]), num(&s[7..11]));
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(i + 11)
}

fn card_at(t: &[u8], i: usize) -> Option<usize> {
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut j = i;
    let mut sep: Option<u8> = None;
    loop {
        match t.get(j) {
            Some(&c) if c.is_ascii_digit() => {
                if n == 19 {
                    return None;
                }
                digits[n] = c - b'0';
                n += 1;
                j += 1;
            }
            Some(&c) if (c == b' ' || c == b'-') && digit(t, j + 1) && sep.is_none_or(|s| s == c) => {
                sep = Some(c);
                j += 1;
            }
            _ => break,
        }
    }
    if !(13..=19).contains(&n) || !end_ok(t, j) || digit(t, j) {
        return None;
    }
    let d = &digits[..n];
    (luhn(d) && issuer_ok(d)).then_some(j)
}

/// Luhn checksum over decimal digits.
pub(crate) fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| {
            let x = u32::from(x);
            if k % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether the leading digits are a payment card issuer range (Visa,
/// Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir).
pub(crate) fn issuer_ok(d: &[u8]) -> bool {
    let p2 = u32::from(d[0]) * 10 + u32::from(d[1]);
    let p4 = p2 * 100 + u32::from(d[2]) * 10 + u32::from(d[3]);
    match d[0] {
        4 => true,
        5 => (50..=58).contains(&p2),
        6 => true,
        3 => matches!(p2, 30 | 34 | 35 | 36 | 37 | 38 | 39),
        2 => (2200..=2204).contains(&p4) || (2221..=2720).contains(&p4),
        _ => false,
    }
}

fn ipv4_at(t: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    let mut octets = [0u32; 4];
    for (k, o) in octets.iter_mut().enumerate() {
        if k > 0 {
            if t.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
        let start = j;
        while digit(t, j) && j - start < 4 {
            j += 1;
        }
        let len = j - start;
        if len == 0 || len > 3 || (len > 1 && t[start] == b'0') {
            return None;
        }
        *o = t[start..j].iter().fold(0, |a, &b| a * 10 + u32::from(b - b'0'));
        if *o > 255 {
            return None;
        }
    }
    if t.get(j) == Some(&b'/') && digit(t, j + 1) {
        let start = j + 1;
        let mut k = start;
        while digit(t, k) && k - start < 3 {
            k += 1;
        }
        if t[start..k].iter().fold(0, |a, &b| a * 10 + u32::from(b - b'0')) <= 32 {
            j = k;
        }
    }
    if !end_ok(t, j) {
        return None;
    }
    let not_personal = octets == [0; 4] || octets[0] == 127 || (octets[0] == 255 && octets[1] == 255);
    (!not_personal).then_some(j)
}

fn phone_at(t: &[u8], i: usize) -> Option<usize> {
    match t[i] {
        b'+' => phone_international(t, i),
        b'(' => {
            // (555) 123-4567 or (555)123-4567
            let s = t.get(i..)?;
            if s.len() < 13 || !s[1..4].iter().all(u8::is_ascii_digit) || s[4] != b')' || !(b'2'..=b'9').contains(&s[1])
            {
                return None;
            }
            let k = if s[5] == b' ' { 6 } else { 5 };
            local_7(t, i + k)
        }
        b'0' => phone_trunk(t, i),
        b'2'..=b'9' => {
            // 555-123-4567, 555.123.4567
            let s = t.get(i..i + 12)?;
            let sep = s[3];
            let shape = (sep == b'-' || sep == b'.')
                && s[7] == sep
                && s.iter().enumerate().all(|(k, &b)| k == 3 || k == 7 || b.is_ascii_digit());
            (shape && end_ok(t, i + 12)).then_some(i + 12)
        }
        _ => None,
    }
}

/// `123-4567` / `123 4567` / `123.4567` at `i`, ending at a boundary.
fn local_7(t: &[u8], i: usize) -> Option<usize> {
    let s = t.get(i..i + 8)?;
    let shape =
        s[..3].iter().all(u8::is_ascii_digit) && b"-. ".contains(&s[3]) && s[4..].iter().all(u8::is_ascii_digit);
    (shape && end_ok(t, i + 8)).then_some(i + 8)
}

fn phone_international(t: &[u8], i: usize) -> Option<usize> {
    if !digit(t, i + 1) {
        return None;
    }
    let mut j = i + 1;
    let mut digits = 0;
    let mut open = false;
    loop {
        match t.get(j) {
            Some(c) if c.is_ascii_digit() => {
                digits += 1;
                j += 1;
            }
            Some(b' ' | b'-' | b'.') if digit(t, j + 1) || (t.get(j + 1) == Some(&b'(') && !open) => j += 1,
            Some(b'(') if !open && digit(t, j + 1) => {
                open = true;
                j += 1;
            }
            Some(b')') if open && digit(t, j - 1) => {
                open = false;
                j += 1;
            }
            _ => break,
        }
        if digits > 15 {
            return None;
        }
    }
    (!open && (8..=15).contains(&digits) && digit(t, j - 1) && end_ok(t, j)).then_some(j)
}

/// National numbers with a trunk 0: `020 7946 0958`, `07700 900123`, `030-1234567`.
fn phone_trunk(t: &[u8], i: usize) -> Option<usize> {
    if digit(t, i + 1) && t[i + 1] == b'0' {
        return None;
    }
    let mut j = i;
    let mut digits = 0;
    let mut groups = 1;
    let mut first_group = 0;
    let mut sep: Option<u8> = None;
    loop {
        match t.get(j) {
            Some(c) if c.is_ascii_digit() => {
                digits += 1;
                if groups == 1 {
                    first_group += 1;
                }
                j += 1;
            }
            Some(&c) if (c == b' ' || c == b'-') && digit(t, j + 1) && sep.is_none_or(|s| s == c) => {
                sep = Some(c);
                groups += 1;
                j += 1;
            }
            _ => break,
        }
        if digits > 11 {
            return None;
        }
    }
    let ok = groups >= 2 && (2..=5).contains(&first_group) && (10..=11).contains(&digits) && end_ok(t, j);
    ok.then_some(j)
}

fn iban_at(t: &[u8], i: usize) -> Option<usize> {
    let s = &t[i..];
    if s.len() < 15 || !s[1].is_ascii_uppercase() || !s[2].is_ascii_digit() || !s[3].is_ascii_digit() {
        return None;
    }
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut j = i;
    // Candidate ends: (byte end, char count), longest last.
    let mut ends = [(0usize, 0usize); 10];
    let mut nends = 0;
    let mut group = 0;
    loop {
        match t.get(j) {
            Some(&c) if c.is_ascii_uppercase() || c.is_ascii_digit() => {
                if n == 34 {
                    return None;
                }
                chars[n] = c;
                n += 1;
                group += 1;
                j += 1;
            }
            Some(b' ') if group == 4 && t.get(j + 1).is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) => {
                if nends < ends.len() {
                    ends[nends] = (j, n);
                    nends += 1;
                }
                group = 0;
                j += 1;
            }
            _ => break,
        }
    }
    if nends < ends.len() {
        ends[nends] = (j, n);
        nends += 1;
    }
    for &(end, len) in ends[..nends].iter().rev() {
        if (15..=34).contains(&len) && end_ok(t, end) && iban_checksum(&chars[..len]) {
            return Some(end);
        }
    }
    None
}

fn iban_checksum(c: &[u8]) -> bool {
    let mut r: u32 = 0;
    for &b in c[4..].iter().chain(&c[..4]) {
        r = if b.is_ascii_digit() {
            (r * 10 + u32::from(b - b'0')) % 97
        } else {
            (r * 100 + u32::from(b - b'A' + 10)) % 97
        };
    }
    r == 1
}

fn ipv6_at(t: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    let mut colons = 0;
    while let Some(&c) = t.get(j) {
        if !(c.is_ascii_hexdigit() || c == b':' || c == b'.') || j - i > 45 {
            break;
        }
        colons += (c == b':') as usize;
        j += 1;
    }
    if colons < 2 {
        return None;
    }
    // Trim trailing punctuation that belongs to the sentence, not the address.
    let mut end = j;
    loop {
        let s = std::str::from_utf8(&t[i..end]).ok()?;
        if let Ok(addr) = s.parse::<std::net::Ipv6Addr>() {
            if addr.is_loopback() || addr.is_unspecified() {
                return None;
            }
            let mut e = end;
            if t.get(e) == Some(&b'/') && digit(t, e + 1) {
                e += 1;
                while digit(t, e) {
                    e += 1;
                }
            }
            return (t.get(e).is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))).then_some(e);
        }
        if end > i && matches!(t[end - 1], b'.' | b':') {
            end -= 1;
        } else {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(PiiKind, String)> {
        let mut v = Vec::new();
        scan(s.as_bytes(), |f| v.push((f.kind, s[f.start..f.end].to_owned())));
        v
    }

    fn masked(s: &str) -> String {
        let mut out = BytesMut::new();
        mask_into(s.as_bytes(), &mut out, MaskStyle::Text);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn true_positives() {
        use PiiKind::*;
        let cases: &[(&str, PiiKind, &str)] = &[
            ("mail alice@example.com now", Email, "alice@example.com"),
            ("<Bob.Smith+tag@mail.example.co.uk>.", Email, "Bob.Smith+tag@mail.example.co.uk"),
            ("call +44 20 7946 0958 today", Phone, "+44 20 7946 0958"),
            ("tel:+15551234567", Phone, "+15551234567"),
            ("+1 (555) 123-4567", Phone, "+1 (555) 123-4567"),
            ("(555) 123-4567", Phone, "(555) 123-4567"),
            ("x 555-123-4567 y", Phone, "555-123-4567"),
            ("555.123.4567", Phone, "555.123.4567"),
            ("020 7946 0958", Phone, "020 7946 0958"),
            ("ssn 123-45-6789.", Ssn, "123-45-6789"),
            ("card 4111 1111 1111 1111 exp", Card, "4111 1111 1111 1111"),
            ("5500-0000-0000-0004", Card, "5500-0000-0000-0004"),
            ("378282246310005", Card, "378282246310005"),
            ("iban DE89 3704 0044 0532 0130 00 ok", Iban, "DE89 3704 0044 0532 0130 00"),
            ("GB82WEST12345698765432", Iban, "GB82WEST12345698765432"),
            ("from 192.168.1.20, ok", Ipv4, "192.168.1.20"),
            ("net 10.1.2.0/24", Ipv4, "10.1.2.0/24"),
            ("addr 2001:db8::8a2e:370:7334.", Ipv6, "2001:db8::8a2e:370:7334"),
            ("fe80::1/64 link", Ipv6, "fe80::1/64"),
        ];
        for (text, kind, value) in cases {
            assert_eq!(kinds(text), vec![(*kind, value.to_string())], "{text}");
        }
    }

    #[test]
    fn false_positives_are_rare() {
        for text in [
            "order 1234567890123456 shipped",          // 16 digits, not a card issuer / Luhn
            "ORD-123-45-6789",                         // prefixed id, not an SSN
            "000-12-3456 666-12-3456 912-34-5678",     // invalid SSN areas
            "123-00-4567 123-45-0000",                 // invalid group / serial
            "2024-03-05 12:34:56.789+00",              // timestamp
            "20240305123456",                          // compact timestamp
            "1709648245123",                           // unix millis
            "amount 1234567.89 EUR, total 12,345,678", // amounts
            "plan pro-2024 v1.2.3 build 10.0.19041",   // versions
            "127.0.0.1 0.0.0.0 255.255.255.0",         // not personal
            "uuid 7d444840-9dc0-11d1-b245-5ffdce74fad2",
            "the time is 12:34:56 and ::1 is loopback",
            "user@localhost",
            "4111111111111112", // Luhn fails
            "1000000000000009", // issuer 1
            "12345",
        ] {
            assert_eq!(kinds(text), vec![], "{text}");
        }
    }

    #[test]
    fn masking_keeps_the_rest() {
        assert_eq!(masked("mail alice@example.com or 555-123-4567."), "mail ****@example.com or ***-***-****.");
        assert_eq!(masked("DE89 3704 0044 0532 0130 00"), "DE** **** **** **** **** **");
        assert_eq!(masked("nothing here 42"), "nothing here 42");
        let mut out = BytesMut::new();
        assert_eq!(mask_into(b"4111111111111111", &mut out, MaskStyle::JsonNumber), 1);
        assert_eq!(&out[..], b"9999999999999999");
    }

    #[test]
    fn prefilter() {
        assert!(!may_contain_pii(b"Pro plan, 3 seats"));
        assert!(may_contain_pii(b"a@b"));
        assert!(may_contain_pii(b"fe80::"));
    }
}
