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

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Secret keys of the masking engine. Cheap to clone (the keyed HMAC state is
/// precomputed once).
#[derive(Clone, Default)]
pub struct Keys {
    pseudonym: Option<Hmac<Sha256>>,
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
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).ok()?;
        Some(Keys { pseudonym: Some(mac) })
    }

    /// Whether a pseudonymisation key is set.
    #[cfg(test)]
    pub fn has_pseudonym_key(&self) -> bool {
        self.pseudonym.is_some()
    }

    /// HMAC of `class ‖ 0 ‖ parts...`; `None` without a key.
    pub(crate) fn digest(&self, class: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
        let mut mac = self.pseudonym.clone()?;
        mac.update(class);
        mac.update(&[0]);
        for p in parts {
            mac.update(p);
        }
        Some(mac.finalize().into_bytes().into())
    }
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
}
