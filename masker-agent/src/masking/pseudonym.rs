//! Keyed, deterministic pseudonyms.
//!
//! A pseudonym is derived from HMAC-SHA256(key, class ‖ 0 ‖ canonical value).
//! The canonical value does not depend on the wire format or on the exact
//! column type within a class (text/varchar/bpchar/name share "t"; int2/4/8
//! and numeric share "n" with the decimal text), so the same value gives the
//! same pseudonym in text and binary results, across tables, sessions and
//! agents that share the key: joins, GROUP BY and COUNT(DISTINCT) still work.
//! The key never appears in `Debug` output.

use std::fmt;
use std::sync::Arc;

use sha2::block_api::compress256;
use sha2::{Digest, Sha256};

/// Secret keys of the masking engine. Cheap to clone (the keyed HMAC state is
/// precomputed once and shared).
#[derive(Clone, Default)]
pub struct Keys {
    pseudonym: Option<Arc<HmacSha256>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("pseudonym", &self.pseudonym.as_ref().map(|_| "<set>")).finish()
    }
}

/// Minimum length of a pseudonymisation key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

impl Keys {
    /// No keys: `pseudonymize` then yields NULL (fail closed).
    pub fn none() -> Keys {
        Keys { pseudonym: None }
    }

    /// Keys with the pseudonymisation secret `secret` (at least [`MIN_KEY_LEN`] bytes).
    ///
    /// Returns `None` when the secret is too short.
    pub fn new(secret: &[u8]) -> Option<Keys> {
        if secret.len() < MIN_KEY_LEN {
            return None;
        }
        Some(Keys { pseudonym: Some(Arc::new(HmacSha256::new(secret))) })
    }

    /// Whether a pseudonymisation key is set.
    #[cfg(test)]
    pub fn has_pseudonym_key(&self) -> bool {
        self.pseudonym.is_some()
    }

    /// HMAC of `class ‖ 0 ‖ parts...`; `None` without a key.
    pub(crate) fn digest(&self, class: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
        let mac = self.pseudonym.as_ref()?;
        let mut inner = mac.start();
        inner.update(class);
        inner.update(&[0]);
        for p in parts {
            inner.update(p);
        }
        Some(mac.finish(inner))
    }
}

/// HMAC-SHA256 (RFC 2104) under one fixed key, with the SHA-256 states
/// after the key's inner and outer pad blocks computed once: a short
/// message then costs two block compressions and no copy of a hasher.
/// Pseudonymizing is the hottest code of a masked bulk read (issue 17:
/// `hmac::Hmac` spent as long around the compressions as in them). Checked
/// against the `hmac` crate in the tests.
struct HmacSha256 {
    inner: [u32; 8],
    outer: [u32; 8],
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

impl HmacSha256 {
    fn new(key: &[u8]) -> HmacSha256 {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let state_after = |pad: u8| {
            let mut b = block;
            b.iter_mut().for_each(|x| *x ^= pad);
            let mut state = SHA256_IV;
            compress256(&mut state, &[b]);
            state
        };
        HmacSha256 { inner: state_after(0x36), outer: state_after(0x5c) }
    }

    fn start(&self) -> Blocks {
        Blocks { state: self.inner, block: [0; 64], pos: 0, len: 64 }
    }

    fn finish(&self, inner: Blocks) -> [u8; 32] {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&inner.finish());
        block[32] = 0x80;
        block[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        let mut state = self.outer;
        compress256(&mut state, &[block]);
        to_bytes(&state)
    }
}

/// SHA-256 in progress from a given state (`len` bytes already hashed).
struct Blocks {
    state: [u32; 8],
    block: [u8; 64],
    pos: usize,
    len: u64,
}

impl Blocks {
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let n = data.len().min(64 - self.pos);
            self.block[self.pos..self.pos + n].copy_from_slice(&data[..n]);
            self.pos += n;
            data = &data[n..];
            if self.pos == 64 {
                compress256(&mut self.state, &[self.block]);
                self.pos = 0;
            }
        }
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.len * 8;
        self.block[self.pos] = 0x80;
        self.block[self.pos + 1..].fill(0);
        if self.pos >= 56 {
            compress256(&mut self.state, &[self.block]);
            self.block = [0; 64];
        }
        self.block[56..].copy_from_slice(&bits.to_be_bytes());
        compress256(&mut self.state, &[self.block]);
        to_bytes(&self.state)
    }
}

fn to_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// A deterministic stream of pseudo-random numbers seeded by a digest
/// (xoshiro256**). Its outputs are a function of the HMAC only.
pub(crate) struct Stream {
    s: [u64; 4],
}

impl Stream {
    pub(crate) fn new(digest: &[u8; 32]) -> Stream {
        let mut s = [0u64; 4];
        for (i, w) in s.iter_mut().enumerate() {
            *w = u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Stream { s }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A number in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The first 8 bytes of a digest as a number.
pub(crate) fn digest_u64(d: &[u8; 32]) -> u64 {
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex.
pub(crate) fn put_hex(out: &mut bytes::BytesMut, bytes: &[u8]) {
    for b in bytes {
        out.extend_from_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_key_dependent() {
        let a = Keys::new(b"0123456789abcdef0123").unwrap();
        let b = Keys::new(b"another-key-of-some-length").unwrap();
        assert_eq!(a.digest(b"t", &[b"alice"]), a.digest(b"t", &[b"alice"]));
        assert_ne!(a.digest(b"t", &[b"alice"]), b.digest(b"t", &[b"alice"]));
        assert_ne!(a.digest(b"t", &[b"alice"]), a.digest(b"n", &[b"alice"]));
        assert!(Keys::new(b"short").is_none());
        assert!(Keys::none().digest(b"t", &[b"x"]).is_none());
        assert!(!format!("{a:?}").contains("0123"));
    }

    #[test]
    fn equals_the_hmac_crate_for_every_length_and_key_size() {
        use hmac::{Hmac, KeyInit, Mac};
        let keys: [&[u8]; 4] = [
            &[7u8; 16],
            &[9u8; 64],
            &[3u8; 65],
            b"a key much longer than one SHA-256 block, hashed first as RFC 2104 says it is; 0123456789",
        ];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for key in keys {
            let ours = Keys::new(key).unwrap();
            for len in 0..data.len() {
                for class in [&b"t"[..], b"domain"] {
                    let (a, b) = data[..len].split_at(len / 3);
                    let mut theirs = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
                    theirs.update(class);
                    theirs.update(&[0]);
                    theirs.update(&data[..len]);
                    let expected: [u8; 32] = theirs.finalize().into_bytes().into();
                    assert_eq!(ours.digest(class, &[a, b]), Some(expected), "key {} bytes, message {len}", key.len());
                }
            }
        }
    }
}
