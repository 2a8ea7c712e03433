//! SQL text without its values: the normalized statements of audit events
//! and approvals (every literal replaced), statement shapes (the same text
//! but for literals) and the cache keyed by them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Longest normalized statement recorded.
const MAX_STATEMENT: usize = 4096;

/// Distinct statement texts kept parsed; beyond it the cache is cleared
/// (a workload that generates unbounded distinct texts pays the parse).
const CACHE_ENTRIES: usize = 4096;
/// Statements longer than this are analyzed but not cached.
const CACHE_MAX_TEXT: usize = 64 * 1024;

/// Values computed once per statement shape ([`cache_key`]), bounded: when
/// [`CACHE_ENTRIES`] are held the cache is cleared, and texts longer than
/// [`CACHE_MAX_TEXT`] are not cached.
pub(crate) struct ShapeCache<V>(std::sync::OnceLock<Mutex<HashMap<String, V>>>);

impl<V: Clone> ShapeCache<V> {
    pub(crate) const fn new() -> Self {
        ShapeCache(std::sync::OnceLock::new())
    }

    /// The value for `sql`'s shape, computed by `compute` on a miss.
    pub(crate) fn get_or_compute(&self, sql: &str, compute: impl FnOnce(&str) -> V) -> V {
        if sql.len() > CACHE_MAX_TEXT {
            return compute(sql);
        }
        let key = cache_key(sql);
        let map = self.0.get_or_init(Default::default);
        if let Some(hit) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return hit.clone();
        }
        let value = compute(sql);
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_ENTRIES {
            m.clear();
        }
        m.insert(key, value.clone());
        value
    }
}

/// Whether `c` may be part of an unquoted identifier (or a number's
/// digits), as PostgreSQL's scanner reads them.
fn ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Bytes where [`cache_key`] may find a literal, an identifier in quotes
/// or a comment starting.
const LITERAL_START: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = true;
        c += 1;
    }
    t[b'\'' as usize] = true;
    t[b'"' as usize] = true;
    t[b'$' as usize] = true;
    t[b'-' as usize] = true;
    t[b'/' as usize] = true;
    t
};

/// What [`cache_key`] must know of a text before blanking anything.
#[derive(Debug, Default, PartialEq, Eq)]
struct Keywords {
    /// `order`, `group` or `distinct` occurs (anywhere, in any case):
    /// numbers may be positional references and are kept.
    keep_numbers: bool,
    /// `search_path`, `set_config`, `function` or `procedure` occurs
    /// (anywhere, in any case) or `do` as a word: strings may hold code or
    /// settings and nothing is blanked.
    verbatim: bool,
}

/// The first letters of the words [`keywords`] looks for, in either case.
const KEYWORD_START: [bool; 256] = {
    let mut t = [false; 256];
    let letters = b"ogdsfp";
    let mut i = 0;
    while i < letters.len() {
        t[letters[i] as usize] = true;
        t[letters[i].to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    t
};

/// The [`Keywords`] of `text`, in one pass: at each byte only the keywords
/// starting with that letter are compared (the text of a statement sent
/// again is scanned on every send, before its cache look-up).
fn keywords(text: &[u8]) -> Keywords {
    let at = |i: usize, word: &[u8]| text.get(i..i + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let mut k = Keywords::default();
    for (i, &c) in text.iter().enumerate() {
        if !KEYWORD_START[usize::from(c)] {
            continue;
        }
        match c.to_ascii_lowercase() {
            b'o' => k.keep_numbers |= at(i, b"order"),
            b'g' => k.keep_numbers |= at(i, b"group"),
            b'd' => {
                k.keep_numbers |= at(i, b"distinct");
                let word =
                    at(i, b"do") && (i == 0 || !ident(text[i - 1])) && text.get(i + 2).is_none_or(|&c| !ident(c));
                k.verbatim |= word;
            }
            b's' => k.verbatim |= at(i, b"search_path") || at(i, b"set_config"),
            b'f' => k.verbatim |= at(i, b"function"),
            b'p' => k.verbatim |= at(i, b"procedure"),
            _ => {}
        }
    }
    k
}

/// The cache key of `sql`: the text with the contents of string literals
/// (quoted, `E''`, dollar-quoted) and numeric literals blanked, so
/// `... WHERE aid = 1` and `... WHERE aid = 2` (every statement of a client
/// that does not use parameters) share one analysis.
///
/// Sound because an analysis does not depend on literal values, with these
/// exceptions handled here: positional references (`ORDER BY 2`,
/// `GROUP BY 1`, `DISTINCT ON`) — numbers are kept verbatim in any text that
/// mentions those keywords; code and settings held in strings (a `DO`
/// body, a function body, `set_config('search_path', ...)`) — no text that
/// may hold them is blanked at all; and a literal's own validity (`E'\u0000'`): a
/// text that shares its key with one that does not parse gets that error,
/// and a statement without analysis is masked entirely (fail closed), while
/// the server rejects the invalid one anyway. Identifiers (`"x1"`, `t2`),
/// parameters (`$1`) and comments stay as they are; an unterminated literal
/// leaves the text unchanged.
pub fn cache_key(sql: &str) -> String {
    let b = sql.as_bytes();
    let Keywords { keep_numbers, verbatim } = keywords(b);
    if verbatim {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut run_start = 0;
    while i < b.len() {
        let c = b[i];
        if !LITERAL_START[usize::from(c)] {
            // Most of a text: nothing starts here.
            i += 1;
            continue;
        }
        let prev_ident = i > 0 && ident(b[i - 1]);
        let skip_to = match c {
            b'\'' => {
                // '...' with '' escapes; E'...' also has backslash escapes.
                let backslash = i > 0 && matches!(b[i - 1], b'e' | b'E') && !(i > 1 && ident(b[i - 2]));
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return sql.to_string(),
                        Some(b'\\') if backslash => j += 2,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break Some(j + 1),
                        Some(_) => j += 1,
                    }
                }
            }
            b'"' => {
                // A quoted identifier: copied as it is.
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return sql.to_string(),
                        Some(b'"') if b.get(j + 1) == Some(&b'"') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                continue;
            }
            b'$' if !prev_ident => {
                // $tag$ ... $tag$ (not $1, a parameter).
                let tag_end = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'));
                match tag_end.map(|n| i + 1 + n) {
                    Some(t) if b[t] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=t];
                        match sql[t + 1..].find(tag) {
                            Some(n) => Some(t + 1 + n + tag.len()),
                            None => return sql.to_string(),
                        }
                    }
                    _ => None,
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
                i = end;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match sql[i + 2..].find("*/") {
                Some(n) => {
                    i = i + 2 + n + 2;
                    continue;
                }
                None => return sql.to_string(),
            },
            b'0'..=b'9' if !prev_ident && !keep_numbers => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                if j < b.len() && matches!(b[j], b'e' | b'E') {
                    let mut k = j + 1;
                    if k < b.len() && matches!(b[k], b'+' | b'-') {
                        k += 1;
                    }
                    if k < b.len() && b[k].is_ascii_digit() {
                        j = k;
                        while j < b.len() && b[j].is_ascii_digit() {
                            j += 1;
                        }
                    }
                }
                if j < b.len() && ident(b[j]) {
                    // `1abc` is not a number on its own: leave the text.
                    return sql.to_string();
                }
                Some(j)
            }
            _ => None,
        };
        match skip_to {
            Some(end) => {
                out.push_str(&sql[run_start..i]);
                out.push('?');
                i = end;
                run_start = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&sql[run_start..]);
    out
}

/// `sql` with every literal replaced: PostgreSQL's own normalizer
/// (`pg_query::normalize`, literals become `$n`) when the text parses, then a
/// lexical pass that replaces whatever literal is left (and every literal of
/// a text that does not parse) by `?` and drops comments. The result is
/// capped at 4096 bytes.
pub fn normalize(sql: &str) -> String {
    // Statements of one shape (see `sql::cache_key`: the same text but for
    // literals) normalize to the same text: parse each shape once.
    static CACHE: ShapeCache<Arc<str>> = ShapeCache::new();
    CACHE.get_or_compute(sql, |sql| normalize_uncached(sql).into()).to_string()
}

fn normalize_uncached(sql: &str) -> String {
    let parsed = pg_query::normalize(sql).ok();
    let mut out = scrub_literals(parsed.as_deref().unwrap_or(sql));
    if out.len() > MAX_STATEMENT {
        let mut cut = MAX_STATEMENT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Replaces string, dollar-quoted, bit-string and numeric literals by `?`,
/// keeps `$n` parameters, quoted identifiers and keywords, drops comments and
/// collapses runs of white space. An unterminated literal swallows the rest.
pub fn scrub_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let push_space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // A prefix (E, B, X, U&, N) was copied as a word: drop it.
                let prefixed = out.ends_with(['e', 'E', 'b', 'B', 'x', 'X', 'n', 'N'])
                    && !out[..out.len() - 1].ends_with(|ch: char| ch.is_alphanumeric() || ch == '_');
                if prefixed {
                    out.pop();
                } else if out.ends_with("U&") || out.ends_with("u&") {
                    out.truncate(out.len() - 2);
                }
                let escapes = prefixed && matches!(b[i - 1], b'e' | b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                push_space(&mut out);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                push_space(&mut out);
            }
            b'$' => {
                // $n parameter, or a dollar quote $tag$ ... $tag$.
                let mut j = i + 1;
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    out.push_str(&sql[i..j]);
                    i = j;
                    continue;
                }
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') && !out.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                    out.push('?');
                } else {
                    out.push('$');
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                if out.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
                    // Part of an identifier (t1, col_2).
                    out.push(c as char);
                    i += 1;
                    continue;
                }
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                out.push('?');
            }
            c if c.is_ascii_whitespace() => {
                push_space(&mut out);
                i += 1;
            }
            c if word(c) => {
                let start = i;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or('?');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out.trim_end().to_string()
}

/// The shape of a statement for standing approvals: its text with every
/// literal replaced by a parameter (PostgreSQL's normalizer), so statements
/// that differ only in literals share it; `None` when the text does not
/// parse (such a statement is asked about each time). Not the fingerprint:
/// that one treats `orders_2024_01` and `orders_2024_02` as one table.
pub fn shape(sql: &str) -> Option<String> {
    pg_query::normalize(sql).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_literals_away() {
        let n = normalize("SELECT * FROM customers WHERE email = 'alice@example.com' AND id = 42");
        assert!(!n.contains("alice") && !n.contains("42"), "{n}");
        assert!(n.contains("customers") && n.contains("email"), "{n}");
        // Unparseable text still loses its literals.
        let n = normalize("SELEC x FROM t WHERE a = 'bob@x.org' AND b = 3.5e+2 -- 'c'\n AND d = $$ secret $$");
        assert!(!n.contains("bob") && !n.contains("3.5") && !n.contains("secret") && !n.contains("'c'"), "{n}");
        assert_eq!(
            scrub_literals("select t1.c_2, $1, E'a\\'b', 'x''y', \"Q\"\"id\" from t1"),
            "select t1.c_2, $1, ?, ?, \"Q\"\"id\" from t1"
        );
        assert_eq!(scrub_literals("select $tag$ a $ b $tag$, x'1f', 1e-3 /* c /* n */ */"), "select ?, ?, ?");
        assert_eq!(scrub_literals("select 'unterminated"), "select ?");
    }

    /// The one-pass scan finds what a search for each keyword anywhere in
    /// the text (`do` as a word) finds, in any case and at any position.
    #[test]
    fn keywords_are_found_as_a_search_for_each_finds_them() {
        fn naive(text: &[u8]) -> Keywords {
            let ci = |w: &[u8]| text.windows(w.len()).position(|x| x.eq_ignore_ascii_case(w));
            let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
            let word_do = text.windows(2).enumerate().any(|(i, w)| {
                w.eq_ignore_ascii_case(b"do")
                    && (i == 0 || !ident(text[i - 1]))
                    && text.get(i + 2).is_none_or(|&c| !ident(c))
            });
            Keywords {
                keep_numbers: [&b"order"[..], b"group", b"distinct"].iter().any(|w| ci(w).is_some()),
                verbatim: word_do
                    || [&b"search_path"[..], b"set_config", b"function", b"procedure"].iter().any(|w| ci(w).is_some()),
            }
        }
        let pieces = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "ORDER BY 2",
            "reorders",
            "GrOuP",
            "distinc",
            "DISTINCT ON (1)",
            "do",
            "DO $$ BEGIN END $$",
            "undo",
            "do_it",
            "x.do",
            "$do",
            "é",
            "SET search_path = x",
            "set_confi",
            "SELECT set_config('a', 'b', false)",
            "create function f()",
            "PROCEDURE",
            "",
            " ",
            "'o'",
        ];
        for a in pieces {
            for b in pieces {
                for sep in ["", " ", "_"] {
                    let text = format!("{a}{sep}{b}");
                    assert_eq!(keywords(text.as_bytes()), naive(text.as_bytes()), "{text:?}");
                }
            }
        }
        assert_eq!(keywords(b"SELECT 1 ORDER BY 1"), Keywords { keep_numbers: true, verbatim: false });
        assert_eq!(keywords(b"do"), Keywords { keep_numbers: false, verbatim: true });
        assert_eq!(cache_key("SELECT a FROM t WHERE b = 12 AND c = 'x'"), "SELECT a FROM t WHERE b = ? AND c = ?");
        assert_eq!(cache_key("SELECT a FROM t ORDER BY 2"), "SELECT a FROM t ORDER BY 2");
        assert_eq!(cache_key("DO $$ BEGIN PERFORM 1; END $$"), "DO $$ BEGIN PERFORM 1; END $$");
    }
}
