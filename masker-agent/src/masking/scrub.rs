//! Errors, notices and notifications: values the server quotes back.
//!
//! PostgreSQL puts data values into messages (`invalid input syntax for type
//! integer: "alice@example.com"`, `Key (email)=(alice@example.com) already
//! exists.`, `Failing row contains (...)`). [`scrub_text`] applies, in order:
//!
//! 1. A double-quoted string is kept only when it names an object: it follows
//!    one of the words in [`IDENTIFIER_WORDS`] (`relation "customers"`,
//!    `constraint "customers_email_key"`) and looks like an identifier
//!    (≤ 63 bytes of letters, digits, `_`, `$`, `.`, space). Every other
//!    quoted string becomes `"***"`. Role and database names are not kept.
//! 2. A parenthesised group that follows `=` or the word `contains` is data
//!    (`Key (email)=(***)`, `Failing row contains (***)`): everything from
//!    its `(` to the last `)` of the text becomes `***`, so a value holding
//!    parentheses cannot end the group early.
//! 3. A single-quoted SQL literal (`'...'`, opened after a non-letter) becomes `'***'`.
//! 4. The content detectors run over the result and mask what they find.
//!
//! Column names in `Key (email)=` stay readable; SQLSTATE, severity, object
//! name fields, positions and source locations are kept as they are.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::cell::mask_json;
use super::detect::{self, MaskStyle};
use super::row::MaskError;
use crate::wire::{self, FrameError};

/// Words after which a double-quoted string names a database object.
pub const IDENTIFIER_WORDS: &[&str] = &[
    "relation",
    "table",
    "column",
    "constraint",
    "index",
    "schema",
    "function",
    "procedure",
    "routine",
    "aggregate",
    "type",
    "sequence",
    "view",
    "trigger",
    "extension",
    "operator",
    "cursor",
    "portal",
    "statement",
    "savepoint",
    "collation",
    "tablespace",
    "domain",
    "policy",
    "publication",
    "subscription",
    "server",
    "parameter",
    "option",
    "rule",
    "language",
    "channel",
    "attribute",
    "conversion",
    "family",
    "class",
];

const MASK: &str = "***";

/// Scrubs data values from a server message text (see the module docs for
/// the exact rule). Borrows when nothing changed.
pub fn scrub_text(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = closing(b, i + 1, b'"');
                let content = &s[i + 1..end.min(b.len())];
                out.push('"');
                if names_object(&s[..i]) && identifier_like(content) {
                    out.push_str(content);
                } else {
                    out.push_str(MASK);
                }
                if end < b.len() {
                    out.push('"');
                }
                i = end + 1;
            }
            b'(' if opens_data(&s[..i]) => match b.iter().rposition(|&c| c == b')').filter(|&p| p > i) {
                Some(close) => {
                    out.push('(');
                    out.push_str(MASK);
                    out.push(')');
                    i = close + 1;
                }
                None => {
                    out.push('(');
                    out.push_str(MASK);
                    i = b.len();
                }
            },
            b'\'' if i == 0 || !b[i - 1].is_ascii_alphanumeric() => {
                let end = closing(b, i + 1, b'\'');
                out.push('\'');
                out.push_str(MASK);
                if end < b.len() {
                    out.push('\'');
                }
                i = end + 1;
            }
            _ => {
                let next = b[i..].iter().position(|&c| matches!(c, b'"' | b'(' | b'\'')).map_or(b.len(), |p| i + p);
                let next = if next == i { i + 1 } else { next };
                out.push_str(&s[i..next]);
                i = next;
            }
        }
    }
    let mut masked = BytesMut::new();
    if detect::mask_into(out.as_bytes(), &mut masked, MaskStyle::Text) > 0 {
        out = String::from_utf8_lossy(&masked).into_owned();
    }
    if out == s { Cow::Borrowed(s) } else { Cow::Owned(out) }
}

/// Index of the closing `q` (a doubled `qq` is an escaped quote), or `b.len()`.
fn closing(b: &[u8], mut i: usize, q: u8) -> usize {
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i;
        }
        i += 1;
    }
    b.len()
}

fn last_word(before: &str) -> &str {
    let t = before.trim_end();
    let start = t
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |(p, c)| p + c.len_utf8());
    &t[start..]
}

fn names_object(before: &str) -> bool {
    // `relation "x"` but not `relation: "x"`: only spaces between word and quote.
    if !before.ends_with(' ') {
        return false;
    }
    let w = last_word(before);
    IDENTIFIER_WORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

fn opens_data(before: &str) -> bool {
    before.ends_with('=') || last_word(before).eq_ignore_ascii_case("contains") && before.ends_with(' ')
}

fn identifier_like(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 63
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_$. ".contains(&b))
        && !detect::contains_pii(c.as_bytes())
}

/// Rewrites a NotificationResponse body (pid, channel, payload) and appends
/// the complete message. The channel (an identifier) is kept. The payload is
/// replaced by `REDACTED` when `redact_payload`; otherwise the detectors mask
/// what they find (JSON-aware when the payload starts with `{` or `[`).
/// Returns whether the payload changed; on error nothing is appended.
pub fn mask_notification(body: &[u8], out: &mut BytesMut, redact_payload: bool) -> Result<bool, MaskError> {
    let tag = wire::backend::NOTIFICATION_RESPONSE;
    let bad = |what| MaskError::from(FrameError::BadBody { tag, what });
    let pid = body.get(..4).ok_or_else(|| bad("truncated process id"))?;
    let rest = &body[4..];
    let ch_len = memchr::memchr(0, rest).ok_or_else(|| bad("unterminated channel"))?;
    let payload = &rest[ch_len + 1..];
    let p_len = memchr::memchr(0, payload).ok_or_else(|| bad("unterminated payload"))?;
    if p_len + 1 != payload.len() {
        return Err(bad("bytes after the payload"));
    }
    let payload = &payload[..p_len];
    let at = wire::begin_message(out, tag);
    out.extend_from_slice(pid);
    out.extend_from_slice(&rest[..=ch_len]);
    let changed = if redact_payload {
        out.extend_from_slice(super::cell::REDACTED.as_bytes());
        true
    } else if payload.trim_ascii_start().first().is_some_and(|c| *c == b'{' || *c == b'[') {
        mask_json(payload, out) > 0
    } else {
        detect::mask_into(payload, out, MaskStyle::Text) > 0
    };
    out.put_u8(0);
    wire::finish_message(out, at);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_values_keeps_identifiers() {
        let cases = [
            (
                r#"invalid input syntax for type integer: "alice@example.com""#,
                r#"invalid input syntax for type integer: "***""#,
            ),
            ("Key (email)=(alice@example.com) already exists.", "Key (email)=(***) already exists."),
            ("Key (a, b)=(x) y), z) conflicts with existing key (a, b)=(1, 2).", "Key (a, b)=(***)."),
            (
                r#"duplicate key value violates unique constraint "customers_email_key""#,
                r#"duplicate key value violates unique constraint "customers_email_key""#,
            ),
            (
                r#"null value in column "email" of relation "customers" violates not-null constraint"#,
                r#"null value in column "email" of relation "customers" violates not-null constraint"#,
            ),
            ("Failing row contains (1, Alice Smith, null).", "Failing row contains (***)."),
            (r#"syntax error at or near "Alice""#, r#"syntax error at or near "***""#),
            (r#"role "alice.smith" does not exist"#, r#"role "***" does not exist"#),
            ("SQL statement \"SELECT * FROM t WHERE email = 'bob@x.org'\"", "SQL statement \"***\""),
            ("PL/pgSQL function f(integer) line 3 at RAISE", "PL/pgSQL function f(integer) line 3 at RAISE"),
            ("user alice@example.com logged in from 10.1.2.3", "user ****@example.com logged in from **.*.*.*"),
            ("WHERE x = 'it''s secret' AND y", "WHERE x = '***' AND y"),
            ("é \"x\" ü=(é) contains (ö", "é \"***\" ü=(***) contains (***"),
            ("COPY customers, line 2, column email: \"a@b.co\"", "COPY customers, line 2, column email: \"***\""),
        ];
        for (input, want) in cases {
            assert_eq!(scrub_text(input), want, "{input}");
        }
        assert!(matches!(scrub_text("relation \"orders\" does not exist"), Cow::Borrowed(_)));
    }

    #[test]
    fn notification() {
        let mut body = Vec::new();
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(b"events\0{\"email\":\"alice@example.com\",\"id\":42}\0");
        let mut out = BytesMut::new();
        assert!(mask_notification(&body, &mut out, false).unwrap());
        assert_eq!(&out[9..], b"events\0{\"email\":\"****@example.com\",\"id\":42}\0");
        let mut out = BytesMut::new();
        assert!(mask_notification(&body, &mut out, true).unwrap());
        assert!(out.ends_with(b"events\0REDACTED\0"));
    }
}
