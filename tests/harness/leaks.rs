//! Finding seeded personal values in what a client received: the check
//! behind the masking and lineage attack corpora.
//!
//! Every seeded value (see [`PersonalValues`]) is looked for in any case and
//! in the forms an easy transform gives: hex, base64 (without padding), the
//! digits alone (phone numbers, SSNs, card numbers, IBANs) and, if asked,
//! reversed. Needles are indexed by their first 8 bytes behind a bloom
//! filter, so one pass over a text checks all ~200k of them (the tests run
//! unoptimised).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::fixture::PersonalValues;

/// Shortest needle; shorter forms would match by chance.
const KEY_LEN: usize = 8;
const BLOOM_BITS: u32 = 24;

/// A leak: `(kind, form)` → how many distinct values of that kind and form.
pub type Leaks = BTreeMap<(String, &'static str), usize>;

/// What to look for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forms {
    /// Also each value reversed (`reverse(email)` is a classic lineage leak).
    pub reversed: bool,
}

struct Needle {
    kind: String,
    form: &'static str,
    bytes: Vec<u8>,
}

/// The seeded values in their findable forms; see the module documentation.
pub struct LeakFinder {
    needles: Vec<Needle>,
    index: HashMap<u64, Vec<u32>, BuildHasherDefault<Mix>>,
    bloom: Vec<u64>,
}

impl LeakFinder {
    /// Needles for every seeded value but those `skip` says are no secret
    /// under the test's policy (e.g. a birth date generalised to the year).
    pub fn new(values: &PersonalValues, forms: Forms, skip: impl Fn(&str, &str) -> bool) -> LeakFinder {
        let mut needles = Vec::new();
        let mut seen = HashSet::new();
        for (kind, value) in values.all() {
            if skip(kind, value) {
                continue;
            }
            let lower = value.to_ascii_lowercase();
            let mut found = vec![
                ("value", lower.clone()),
                ("hex", hex(value.as_bytes())),
                ("base64", base64(value.as_bytes()).trim_end_matches('=').to_ascii_lowercase()),
            ];
            if forms.reversed {
                found.push(("reversed", lower.chars().rev().collect()));
            }
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            if ["phone", "ssn", "card_number", "iban"].contains(&kind.as_str()) && digits.len() >= 9 && digits != *value
            {
                found.push(("digits", digits));
            }
            for (form, text) in found {
                if text.len() >= KEY_LEN && seen.insert(text.clone()) {
                    needles.push(Needle { kind: kind.clone(), form, bytes: text.into_bytes() });
                }
            }
        }
        let mut index: HashMap<u64, Vec<u32>, BuildHasherDefault<Mix>> = HashMap::default();
        let mut bloom = vec![0u64; 1 << (BLOOM_BITS - 6)];
        for (i, n) in needles.iter().enumerate() {
            let key = key8(&n.bytes);
            index.entry(key).or_default().push(i as u32);
            let slot = bloom_slot(key);
            bloom[slot >> 6] |= 1 << (slot & 63);
        }
        assert!(needles.len() > 10_000, "too few seeded values: {}", needles.len());
        LeakFinder { needles, index, bloom }
    }

    /// The seeded values found in `text`, by kind and form.
    pub fn find(&self, text: &[u8]) -> Leaks {
        let mut found = Leaks::new();
        if text.len() < KEY_LEN {
            return found;
        }
        let lower = text.to_ascii_lowercase();
        let mut hit = HashSet::new();
        for i in 0..=lower.len() - KEY_LEN {
            let key = key8(&lower[i..]);
            let slot = bloom_slot(key);
            if self.bloom[slot >> 6] & (1 << (slot & 63)) == 0 {
                continue;
            }
            if let Some(list) = self.index.get(&key) {
                for &n in list {
                    let needle = &self.needles[n as usize];
                    if lower[i..].starts_with(&needle.bytes) && hit.insert(n) {
                        *found.entry((needle.kind.clone(), needle.form)).or_default() += 1;
                    }
                }
            }
        }
        found
    }
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
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}
