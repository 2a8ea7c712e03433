//! Finding seeded personal values in anything a client (or a log) received:
//! the one check behind every attack corpus, the log and audit checks, and
//! the direct controls that prove each attack can leak at all.
//!
//! Every seeded value ([`PersonalValues`]) is looked for in these forms
//! ([`Form`]), in any letter case:
//!
//! - the value itself, and reversed;
//! - inside hex or base64 text of any case: hex and base64 runs of the
//!   haystack are decoded (hex at both nibble alignments, base64 at all four
//!   character alignments, line breaks and `\n` escapes removed first, so
//!   wrapped output is found too) and the decoded bytes are searched like
//!   plain text; base64 of the exact bytes is also matched embedded in a
//!   longer base64 stream (one core per byte alignment);
//! - phone, SSN, card and IBAN numbers as their digits alone (and a phone
//!   without its country code), and those digits reversed: matched against
//!   each run of digits of the haystack (digits joined across up to three of
//!   ` -./()`), as a whole run, so the digits of unrelated numbers running
//!   together do not count;
//! - the local part of an email address;
//! - each part of a full name of five letters or more, as a whole word, in
//!   plain text (shorter parts, and words in decoded base64 of unrelated
//!   bytes, match by chance: a format-preserving pseudonym of an email's
//!   local part spells a four-letter name now and then);
//! - a birth date as `MM/DD/YYYY`, `DD.MM.YYYY`, and as the digit runs
//!   `YYYYMMDD`, `MMDDYYYY`, `DDMMYYYY`.
//!
//! Needles of eight bytes or more are indexed by their first eight bytes
//! behind a bloom filter, so one pass over a text checks all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::fixture::PersonalValues;

/// Shortest substring needle: shorter ones would match by chance.
const KEY_LEN: usize = 8;
const BLOOM_BITS: u32 = 24;
/// Shortest name part looked for as a word.
const MIN_NAME_PART: usize = 5;
/// Shortest hex run decoded (8 bytes).
const MIN_HEX_RUN: usize = 16;
/// Shortest base64 run decoded (9 bytes).
const MIN_B64_RUN: usize = 12;

/// How a value appeared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// The value, in any case.
    Value,
    /// The value reversed, in any case.
    Reversed,
    /// Only the digits of a phone, SSN, card or IBAN number.
    Digits,
    /// Those digits reversed.
    ReversedDigits,
    /// The local part of an email address.
    EmailLocalPart,
    /// One part of a full name, as a word.
    NamePart,
    /// A birth date written in another format.
    DateFormat,
}

impl Form {
    /// Every form, for reports and the finder's own tests.
    pub const ALL: [Form; 7] = [
        Form::Value,
        Form::Reversed,
        Form::Digits,
        Form::ReversedDigits,
        Form::EmailLocalPart,
        Form::NamePart,
        Form::DateFormat,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Form::Value => "value",
            Form::Reversed => "reversed",
            Form::Digits => "digits",
            Form::ReversedDigits => "reversed-digits",
            Form::EmailLocalPart => "email-local-part",
            Form::NamePart => "name-part",
            Form::DateFormat => "date-format",
        }
    }
}

/// What the value was wrapped in, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encoding {
    /// As text.
    Plain,
    /// Inside hex (any case).
    Hex,
    /// Inside base64.
    Base64,
}

impl Encoding {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }
}

/// One seeded value found: which (by index), its kind, and how it appeared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    pub value: usize,
    pub kind: String,
    pub form: Form,
    pub encoding: Encoding,
}

impl Hit {
    /// `kind/form` or `kind/encoding:form`.
    pub fn label(&self) -> String {
        match self.encoding {
            Encoding::Plain => format!("{}/{}", self.kind, self.form.name()),
            e => format!("{}/{}:{}", self.kind, e.name(), self.form.name()),
        }
    }
}

/// The seeded values found in one text: at most one [`Hit`] per value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub hits: Vec<Hit>,
}

impl Found {
    /// Nothing found.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// `label → count`, for reports.
    pub fn summary(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for hit in &self.hits {
            *out.entry(hit.label()).or_default() += 1;
        }
        out
    }

    /// The distinct (encoding, form) pairs found.
    pub fn forms(&self) -> BTreeSet<(Encoding, Form)> {
        self.hits.iter().map(|h| (h.encoding, h.form)).collect()
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} value(s) {:?}", self.hits.len(), self.summary())
    }
}

/// A needle: the value it came from and its form.
#[derive(Clone, Copy)]
struct Source {
    value: u32,
    form: Form,
}

/// Substring needles of at least [`KEY_LEN`] bytes.
#[derive(Default)]
struct SubstringIndex {
    needles: Vec<(Vec<u8>, Source)>,
    by_key: HashMap<u64, Vec<u32>, BuildHasherDefault<Mix>>,
    bloom: Vec<u64>,
}

impl SubstringIndex {
    fn add(&mut self, seen: &mut HashSet<Vec<u8>>, bytes: Vec<u8>, source: Source) {
        if bytes.len() >= KEY_LEN && seen.insert(bytes.clone()) {
            self.needles.push((bytes, source));
        }
    }

    fn build(&mut self) {
        self.bloom = vec![0u64; 1 << (BLOOM_BITS - 6)];
        for (i, (bytes, _)) in self.needles.iter().enumerate() {
            let key = key8(bytes);
            self.by_key.entry(key).or_default().push(i as u32);
            let slot = bloom_slot(key);
            self.bloom[slot >> 6] |= 1 << (slot & 63);
        }
    }

    fn scan(&self, hay: &[u8], mut hit: impl FnMut(Source)) {
        if hay.len() < KEY_LEN {
            return;
        }
        for i in 0..=hay.len() - KEY_LEN {
            let key = key8(&hay[i..]);
            let slot = bloom_slot(key);
            if self.bloom[slot >> 6] & (1 << (slot & 63)) == 0 {
                continue;
            }
            if let Some(list) = self.by_key.get(&key) {
                for &n in list {
                    let (bytes, source) = &self.needles[n as usize];
                    if hay[i..].starts_with(bytes) {
                        hit(*source);
                    }
                }
            }
        }
    }
}

/// The seeded values in their findable forms; see the module documentation.
pub struct Finder {
    values: Vec<(String, String)>,
    /// Lower-case needles, searched in plain and decoded text.
    text: SubstringIndex,
    /// Base64 cores (case-sensitive), searched in the unwrapped text.
    base64: SubstringIndex,
    /// Whole digit runs.
    digit_runs: HashMap<Vec<u8>, Vec<Source>>,
    /// Lower-case name parts, as whole words of plain text.
    words: HashMap<Vec<u8>, Vec<Source>>,
}

impl Finder {
    /// Needles for every seeded value except those `exempt` says are no
    /// secret under the test's policy (e.g. a birth date that its mask,
    /// generalised to the year, leaves unchanged).
    pub fn new(values: &PersonalValues, exempt: impl Fn(&str, &str) -> bool) -> Finder {
        let values: Vec<(String, String)> = values.all().to_vec();
        let mut finder = Finder {
            values: Vec::new(),
            text: SubstringIndex::default(),
            base64: SubstringIndex::default(),
            digit_runs: HashMap::new(),
            words: HashMap::new(),
        };
        let (mut seen_text, mut seen_b64) = (HashSet::new(), HashSet::new());
        for (i, (kind, value)) in values.iter().enumerate() {
            if exempt(kind, value) {
                continue;
            }
            let i = i as u32;
            let src = |form| Source { value: i, form };
            let lower = value.to_lowercase();
            finder.text.add(&mut seen_text, lower.clone().into_bytes(), src(Form::Value));
            finder.text.add(&mut seen_text, lower.chars().rev().collect::<String>().into_bytes(), src(Form::Reversed));
            for core in base64_cores(value.as_bytes()) {
                finder.base64.add(&mut seen_b64, core.into_bytes(), src(Form::Value));
            }
            match kind.as_str() {
                "phone" | "ssn" | "card_number" | "iban" => {
                    let mut runs = vec![digits(value)];
                    if kind == "phone"
                        && let Some((country, national)) = value.split_once(' ')
                        && country.starts_with('+')
                    {
                        runs.push(digits(national));
                    }
                    for run in runs.into_iter().filter(|r| r.len() >= 7) {
                        let reversed: String = run.chars().rev().collect();
                        finder.digit_runs.entry(run.into_bytes()).or_default().push(src(Form::Digits));
                        finder.digit_runs.entry(reversed.into_bytes()).or_default().push(src(Form::ReversedDigits));
                    }
                }
                "email" => {
                    if let Some((local, _)) = lower.rsplit_once('@') {
                        finder.text.add(&mut seen_text, local.as_bytes().to_vec(), src(Form::EmailLocalPart));
                    }
                }
                "full_name" => {
                    for part in lower.split(|c: char| !c.is_alphabetic()).filter(|p| p.chars().count() >= MIN_NAME_PART)
                    {
                        finder.words.entry(part.as_bytes().to_vec()).or_default().push(src(Form::NamePart));
                    }
                }
                "birth_date" => {
                    if let [y, m, d] = value.split('-').collect::<Vec<_>>()[..] {
                        for text in [format!("{m}/{d}/{y}"), format!("{d}.{m}.{y}")] {
                            finder.text.add(&mut seen_text, text.into_bytes(), src(Form::DateFormat));
                        }
                        for run in [format!("{y}{m}{d}"), format!("{m}{d}{y}"), format!("{d}{m}{y}")] {
                            finder.digit_runs.entry(run.into_bytes()).or_default().push(src(Form::DateFormat));
                        }
                    }
                }
                _ => {}
            }
        }
        finder.values = values;
        finder.text.build();
        finder.base64.build();
        assert!(finder.text.needles.len() > 10_000, "too few seeded values: {}", finder.text.needles.len());
        finder
    }

    /// The seeded value `hit` refers to, as `(kind, value)`.
    pub fn value(&self, hit: &Hit) -> &(String, String) {
        &self.values[hit.value]
    }

    /// The seeded values found in `text` (one hit per value: the first form
    /// found, plain text before decoded).
    pub fn find(&self, text: &[u8]) -> Found {
        let mut hits: BTreeMap<u32, (Form, Encoding)> = BTreeMap::new();
        let mut note = |source: Source, encoding: Encoding| {
            hits.entry(source.value).or_insert((source.form, encoding));
        };
        let lower = text.to_ascii_lowercase();
        self.text.scan(&lower, |s| note(s, Encoding::Plain));
        for (start, end) in digit_runs(text) {
            let run: Vec<u8> = text[start..end].iter().copied().filter(u8::is_ascii_digit).collect();
            if let Some(sources) = self.digit_runs.get(&run) {
                sources.iter().for_each(|&s| note(s, Encoding::Plain));
            }
        }
        for word in lower.split(|b| !b.is_ascii_alphabetic() && *b < 0x80) {
            if let Some(sources) = self.words.get(word) {
                sources.iter().for_each(|&s| note(s, Encoding::Plain));
            }
        }
        for decoded in hex_decoded(text) {
            self.text.scan(&decoded.to_ascii_lowercase(), |s| note(s, Encoding::Hex));
        }
        let unwrapped = unwrap_lines(text);
        self.base64.scan(&unwrapped, |s| note(s, Encoding::Base64));
        for decoded in base64_decoded(&unwrapped) {
            self.text.scan(&decoded.to_ascii_lowercase(), |s| note(s, Encoding::Base64));
        }
        let hits = hits
            .into_iter()
            .map(|(value, (form, encoding))| Hit {
                value: value as usize,
                kind: self.values[value as usize].0.clone(),
                form,
                encoding,
            })
            .collect();
        Found { hits }
    }
}

/// The digits of `s`.
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Byte ranges of digit runs: digits joined across at most three of ` -./()`.
fn digit_runs(text: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        while i < text.len() {
            if text[i].is_ascii_digit() {
                i += 1;
                end = i;
                continue;
            }
            let gap = text[i..].iter().take(4).take_while(|b| b" -./()".contains(b)).count();
            if gap > 0 && gap <= 3 && text.get(i + gap).is_some_and(u8::is_ascii_digit) {
                i += gap;
            } else {
                break;
            }
        }
        runs.push((start, end));
        i = end.max(start + 1);
    }
    runs
}

/// Decoded hex runs (at least [`MIN_HEX_RUN`] hex digits, any case), at
/// both alignments.
fn hex_decoded(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && text[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i - start >= MIN_HEX_RUN {
            for offset in 0..2 {
                let run = &text[start + offset..i];
                out.push(run.chunks_exact(2).map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect());
            }
        }
    }
    out
}

fn nibble(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// `text` without line breaks and their escapes (`\n`, `\r` as two
/// characters), so wrapped base64 joins up again.
fn unwrap_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\n' | b'\r' => i += 1,
            b'\\' if matches!(text.get(i + 1), Some(b'n' | b'r')) => i += 2,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Decoded base64 runs (standard or URL-safe alphabet, at least
/// [`MIN_B64_RUN`] characters), at all four character alignments.
fn base64_decoded(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if b64_value(text[i]).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && b64_value(text[i]).is_some() {
            i += 1;
        }
        if i - start >= MIN_B64_RUN {
            for offset in 0..4 {
                let sextets: Vec<u8> = text[start + offset..i].iter().filter_map(|&b| b64_value(b)).collect();
                let mut bytes = Vec::with_capacity(sextets.len() * 3 / 4);
                for q in sextets.chunks(4) {
                    let n = q.iter().enumerate().fold(0u32, |n, (k, &v)| n | (u32::from(v) << (18 - 6 * k)));
                    let take = match q.len() {
                        4 => 3,
                        3 => 2,
                        2 => 1,
                        _ => 0,
                    };
                    bytes.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
                }
                out.push(bytes);
            }
        }
    }
    out
}

/// The base64 characters that appear whenever `bytes` is embedded anywhere
/// in a longer base64 stream: one core per alignment (0, 1 or 2 bytes before
/// it), without the characters its neighbours also shape.
fn base64_cores(bytes: &[u8]) -> Vec<String> {
    (0..3)
        .filter_map(|k| {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(bytes);
            let enc = base64(&padded);
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + bytes.len())) / 6;
            (end >= start + KEY_LEN).then(|| enc[start..end].to_owned())
        })
        .collect()
}

fn bloom_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BLOOM_BITS)) as usize
}

fn key8(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..KEY_LEN].try_into().expect("8 bytes"))
}

/// A cheap hasher for the 8-byte keys (the keys are already well spread).
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x5175_cc1b_7272_20a9);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 (with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() { B64[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finder() -> Finder {
        let mut values = vec![
            ("email".to_owned(), "anna.schmidt17@example.com".to_owned()),
            ("full_name".to_owned(), "Anna Schmidt".to_owned()),
            ("phone".to_owned(), "+1 (415) 555-0123".to_owned()),
            ("ssn".to_owned(), "123-45-6789".to_owned()),
            ("birth_date".to_owned(), "1987-06-15".to_owned()),
            ("iban".to_owned(), "DE89370400440532013000".to_owned()),
        ];
        // Enough filler values for the size check.
        values.extend((0..12_000).map(|i| ("email".to_owned(), format!("filler{i:06}@example.org"))));
        Finder::new(&PersonalValues::from_values(values), |_, _| false)
    }

    fn found(f: &Finder, text: &str) -> BTreeSet<String> {
        f.find(text.as_bytes()).hits.iter().map(Hit::label).collect()
    }

    #[test]
    fn every_form_and_encoding() {
        let f = finder();
        let email = "anna.schmidt17@example.com";
        let cases: Vec<(String, &str)> = vec![
            (format!("x {} y", email.to_uppercase()), "email/value"),
            (format!("[{}]", email.chars().rev().collect::<String>()), "email/reversed"),
            (format!("\\x{}", hex(email.to_uppercase().as_bytes()).to_uppercase()), "email/hex:value"),
            (format!("zz{}zz", hex(format!("..{email}").as_bytes())), "email/hex:value"),
            (base64(email.as_bytes()), "email/base64:value"),
            (base64(format!("ab{}", email.to_uppercase()).as_bytes()), "email/base64:value"),
            (format!("q{}", base64(format!("{email}?").as_bytes())), "email/base64:value"),
            ("local part anna.schmidt17 only".into(), "email/email-local-part"),
            ("call 4155550123 now".into(), "phone/digits"),
            ("call 14155550123 now".into(), "phone/digits"),
            ("ssn 987 654 321 reversed? no: 9876-54321".into(), "ssn/reversed-digits"),
            ("id 123456789.".into(), "ssn/digits"),
            ("DOB 06/15/1987".into(), "birth_date/date-format"),
            ("DOB 15.06.1987".into(), "birth_date/date-format"),
            ("DOB 19870615!".into(), "birth_date/date-format"),
            ("Dear SCHMIDT,".into(), "full_name/name-part"),
            ("acct 89370400440532013000".into(), "iban/digits"),
        ];
        for (text, want) in cases {
            let got = found(&f, &text);
            assert!(got.contains(want), "{want} not found in {text:?}: {got:?}");
        }
        // Wrapped base64 (76 characters a line, as PostgreSQL's encode() writes it).
        let long = format!("{email} {email} {email}");
        let b64 = base64(long.as_bytes());
        let wrapped: String =
            b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        assert!(found(&f, &wrapped).contains("email/base64:value"));
        assert!(found(&f, &wrapped.replace('\n', "\\n")).contains("email/base64:value"));
    }

    #[test]
    fn clean_text_finds_nothing() {
        let f = finder();
        for text in [
            "SELECT 1; REDACTED ****@example.com 000-00-0000",
            "psd_0123456789abcdef psd_fedcba9876543210",
            "2024-03-05 14:22:33+00 ORD-2024-000123 1709648553 12345.67",
            "schmidtke annabelle", // a name part only as a whole word
            "1234567890123",       // digits running on past a needle
        ] {
            assert!(f.find(text.as_bytes()).is_empty(), "{text:?}: {:?}", f.find(text.as_bytes()));
        }
    }

    #[test]
    fn exempt_values_are_not_looked_for() {
        let values = PersonalValues::from_values(
            (0..12_000)
                .map(|i| ("email".to_owned(), format!("filler{i:06}@example.org")))
                .chain([("birth_date".to_owned(), "1987-01-01".to_owned())])
                .collect(),
        );
        let f = Finder::new(&values, |kind, value| kind == "birth_date" && value.ends_with("-01-01"));
        assert!(f.find(b"1987-01-01").is_empty());
        assert!(!f.find(b"filler000001@example.org").is_empty());
    }
}
