//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`). Not
//! part of masker's interface: hidden from the docs, used by nothing else.
//!
//! Each function takes the fuzzer's bytes, runs one parser or masker that
//! reads what a peer sends (or a file an operator writes), and checks what
//! can be checked about the result: that framing does not depend on how the
//! input was cut into reads, that a masked value is still a valid value of
//! its column type, that a re-written message frames. A function panics only
//! when such an invariant breaks (or the code under test panics): that is
//! the crash the fuzzer reports.
//!
//! # Why a module and not a `fuzzing` cargo feature
//!
//! The crate's modules are `pub(crate)`, so the targets need a way in. A
//! module that is always compiled is built, linted and tested by every
//! `cargo build`, `clippy` and `test` of the workspace: it cannot rot behind
//! a feature nobody enables, and feature unification cannot change what the
//! `masker` binary is built with. Its unit test replays the committed seed
//! corpus (`fuzz/seeds`) on stable Rust, so every input that once crashed a
//! target stays a test even where nightly is not installed. It adds no
//! unsafe code and exposes only functions over bytes; the binary links none
//! of it.
//!
//! # Input layout
//!
//! Targets read a few control bytes from the front of the input (how reads
//! are cut, which type or action a cell has) and take the rest as the data.
//! The seeds in `fuzz/seeds/<target>/` show each layout; `fuzz/README.md`
//! describes them.

pub(crate) mod harness;
mod valid;

use bytes::{BufMut, BytesMut};

use crate::masking::{ColumnAction, CopyMasker, CopyOptions, CopyPlan, Generalize, Keys, RowPlan};
use crate::wire::message::Frontend;
use crate::wire::{self, Format, StartupPacket, TypeOid};
use harness::{Harness, Run};

/// The control bytes at the front of a fuzzer's input.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// The next byte (0 once the input is used up).
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// The startup phase: [`wire::parse_startup`] on the bytes, and the
/// session's startup exchange on the same bytes read in pieces.
///
/// # Panics
///
/// When a packet parses differently from a prefix of itself, when the
/// exchange answers anything but `S`, `N` or one ErrorResponse, or when a
/// StartupMessage it accepts does not parse.
pub fn startup(data: &[u8]) {
    let mut input = Input(data);
    let cut = input.byte();
    let allow_tls = cut & 1 == 1;
    let bytes = input.rest();
    match wire::parse_startup(bytes) {
        Ok(Some((packet, len))) => {
            assert!((8..=wire::MAX_STARTUP_PACKET).contains(&len) && len <= bytes.len());
            // The packet is decided by its own bytes, not by what follows.
            assert_eq!(wire::parse_startup(&bytes[..len]), Ok(Some((packet.clone(), len))));
            // Before it is whole, it is incomplete (or its length is bad).
            for end in [4, len / 2, len - 1] {
                if end >= 4 && end < len {
                    assert_eq!(wire::parse_startup(&bytes[..end]), Ok(None), "prefix of {end} bytes");
                }
            }
            if let StartupPacket::Startup { params, .. } = &packet {
                for (k, v) in params {
                    assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
                }
            }
        }
        Ok(None) => assert!(bytes.len() < 4 || bytes.len() < u32_at(bytes, 0) as usize),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let (result, answer) = harness::startup(bytes, cut, allow_tls);
    valid::startup_answer(&answer);
    if let Ok(Some(packet)) = result {
        let parsed = wire::parse_startup(&packet);
        assert!(matches!(parsed, Ok(Some((StartupPacket::Startup { .. }, l))) if l == packet.len()), "{parsed:?}");
        assert!(bytes.windows(packet.len()).any(|w| w == packet), "accepted a packet the client did not send");
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Client → server: the bytes as a client's message stream through the
/// relay's framing and the session's client tracker (statements checked
/// against a policy, Describe injected), once read whole and once in pieces.
///
/// # Panics
///
/// When the outcome or the bytes sent on depend on how reads were cut, when
/// a message sent on does not frame, has a type a client may not send, or
/// (for the types the tracker reads) does not parse.
pub fn frontend(data: &[u8]) {
    let mut input = Input(data);
    let cut = input.byte();
    let stream = input.rest();
    let whole = Harness::new(false).client(stream, 0);
    let pieces = Harness::new(false).client(stream, cut);
    assert_same_run(&whole, &pieces);
    for msg in valid::frames(&whole.out, whole.result.is_ok()) {
        assert!(wire::is_frontend_tag(msg.tag()), "sent on a message of type {}", wire::show_tag(msg.tag()));
        if matches!(msg.tag(), b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
            && let Err(e) = Frontend::parse(msg)
        {
            panic!("sent on a {} message that does not parse: {e}", wire::show_tag(msg.tag()));
        }
    }
}

/// Server → client: a client stream (to set up what the server answers)
/// then the server's stream through the relay and the session's server
/// tracker (rows, COPY data, errors, notices and notifications masked by a
/// policy without catalog access, so table columns fail closed), once read
/// whole and once in pieces.
///
/// Layout: cut byte, mode byte (bit 0: observe only), client stream length
/// (u16), client stream, server stream.
///
/// # Panics
///
/// When the outcome or the bytes sent on depend on how reads were cut, or
/// when a message the tracker wrote itself (errors, notices,
/// notifications) is malformed.
pub fn backend(data: &[u8]) {
    let mut input = Input(data);
    let cut = input.byte();
    let observe = input.byte() & 1 == 1;
    let n = input.u16() as usize;
    let client = input.take(n);
    let server = input.rest();
    let whole = Harness::new(observe).server(client, server, 0);
    let pieces = Harness::new(observe).server(client, server, cut);
    assert_same_run(&whole, &pieces);
    for msg in valid::frames(&whole.out, whole.result.is_ok()) {
        assert!(wire::is_backend_tag(msg.tag()), "sent on a message of type {}", wire::show_tag(msg.tag()));
        if !observe {
            valid::backend_message(msg);
        }
    }
}

fn assert_same_run(whole: &Run, pieces: &Run) {
    assert_eq!(whole.result, pieces.result, "the outcome depends on how reads were cut");
    if whole.result.is_ok() {
        assert!(whole.out == pieces.out, "the bytes sent on depend on how reads were cut");
    }
}

/// Types a cell may have: every type the masking engine knows (scalars,
/// then arrays), and one it does not (`point`).
const CELL_TYPES: [u32; 41] = [
    25, 1043, 19, 705, 1042, 21, 23, 20, 1700, 700, 701, 16, 1082, 1083, 1114, 1184, 1186, 869, 650, 2950, 114, 3802,
    17, 1009, 1014, 1005, 1007, 1016, 1231, 1021, 1022, 1000, 1182, 1115, 1185, 1041, 651, 2951, 199, 1001, 600,
];

/// An action as the policy compiler can produce it (bucket sizes above 0,
/// prefixes within the address's bits).
fn action(input: &mut Input<'_>) -> ColumnAction {
    match input.byte() % 12 {
        0 => ColumnAction::Allow,
        1 => ColumnAction::Redact,
        2 => ColumnAction::Null,
        3 => ColumnAction::Partial { first: u16::from(input.byte() % 8), last: u16::from(input.byte() % 8) },
        4 => ColumnAction::Email,
        5 => ColumnAction::Pseudonymize { format_preserving: input.byte() & 1 == 1 },
        6 => ColumnAction::Generalize(Generalize::Hour),
        7 => ColumnAction::Generalize(Generalize::Day),
        8 => ColumnAction::Generalize(Generalize::Month),
        9 => ColumnAction::Generalize(Generalize::Year),
        10 => match input.byte() & 1 {
            0 => ColumnAction::Generalize(Generalize::Network { v4: input.byte() % 33, v6: input.byte() % 129 }),
            _ => ColumnAction::Generalize(Generalize::Bucket(u64::from(input.u16()).max(1) * 10)),
        },
        _ => ColumnAction::Detect,
    }
}

fn keys() -> Keys {
    Keys::new(b"fuzzing-pseudonym-key-0123456789").unwrap_or_default()
}

/// One cell: a value of a type in a format, masked by an action, as a
/// DataRow with one more (allowed) column after it.
///
/// Layout: type byte, format byte (bit 0: binary), action bytes, value.
///
/// # Panics
///
/// When the masked row does not frame or has another cell count, when the
/// allowed column changed, or when a value that was valid for its type is
/// masked into one that is not.
pub fn cell(data: &[u8]) {
    let mut input = Input(data);
    let oid = TypeOid(CELL_TYPES[input.byte() as usize % CELL_TYPES.len()]);
    let format = if input.byte() & 1 == 1 { Format::Binary } else { Format::Text };
    let action = action(&mut input);
    let value = input.rest();

    let mut body = BytesMut::new();
    body.put_i16(2);
    body.put_i32(value.len() as i32);
    body.extend_from_slice(value);
    body.put_i32(4);
    body.extend_from_slice(b"keep");
    let plan =
        RowPlan::new(vec![(action.clone(), oid, format), (ColumnAction::Allow, TypeOid(25), Format::Text)], &keys());
    let mut out = BytesMut::new();
    let stats = crate::masking::mask_data_row_counted(&plan, &body, &mut out, &mut [])
        .unwrap_or_else(|e| panic!("a well-formed row is refused: {e}"));
    let total = wire::peek_header(&out, usize::MAX).ok().flatten().map(|h| h.total_len);
    assert_eq!((out.first(), total), (Some(&b'D'), Some(out.len())), "the masked row does not frame");
    let (n, cells) = wire::data_row_cells(&out[5..]).unwrap_or_else(|e| panic!("masked row: {e}"));
    let mut cells = cells;
    assert_eq!(n, 2);
    let masked = cells.next().and_then(Result::ok).unwrap_or_else(|| panic!("masked row: first cell"));
    assert_eq!(cells.next().and_then(Result::ok), Some(Some(&b"keep"[..])), "the allowed cell changed");
    assert!(cells.finished(), "bytes after the last cell");
    match (&action, masked) {
        (ColumnAction::Allow, m) => assert_eq!(m, Some(value), "an allowed value changed"),
        (ColumnAction::Null, m) => assert_eq!(m, None, "a nulled value is not NULL"),
        (_, None) => {}
        (_, Some(m)) => {
            if valid::value(oid, format, value) {
                assert!(
                    valid::value(oid, format, m),
                    "{action:?} made a valid {oid:?} {format:?} value invalid: {value:?} -> {m:?}"
                );
            }
        }
    }
    let _ = stats.total();
}

/// COPY options as PostgreSQL accepts them for `COPY ... TO STDOUT`:
/// format (0 text, 1 csv, 2 binary) in bits 0-1 of `spec` (3 is csv),
/// `HEADER` in bit 2; delimiter, NULL marker, quote and escape picked by
/// the next bytes among values that do not clash.
fn copy_options(spec: u8, input: &mut Input<'_>) -> (u8, CopyOptions) {
    let kind = match spec & 3 {
        0 => 0,
        2 => 2,
        _ => 1,
    };
    let header = spec & 4 != 0;
    let pick = input.byte();
    let mut opts = match kind {
        0 => CopyOptions { header, ..CopyOptions::text() },
        1 => CopyOptions { header, ..CopyOptions::csv() },
        _ => return (2, CopyOptions::binary()),
    };
    if pick & 1 == 1 {
        opts.delimiter = [b'|', b';', b':', b' ', b'~', b',', b'\t'][(pick >> 1) as usize % 7];
        if kind == 1 && opts.delimiter == b'\t' {
            opts.delimiter = b'|';
        }
    }
    if pick & 16 != 0 {
        opts.null = [&b"NULL"[..], b"", b"-", b"\\N", b"<null>"][(pick >> 5) as usize % 5].to_vec();
        if opts.null.contains(&opts.delimiter) {
            opts.null = b"NULL".to_vec();
        }
    }
    if kind == 1 && pick & 128 != 0 {
        let q = input.byte();
        opts.quote = [b'"', b'\'', b'%'][q as usize % 3];
        opts.escape = [opts.quote, b'\\', b'!'][(q >> 2) as usize % 3];
        if opts.quote == opts.delimiter || opts.escape == opts.delimiter {
            (opts.quote, opts.escape) = (b'"', b'"');
        }
    }
    (kind, opts)
}

/// `COPY ... TO STDOUT` data through a [`CopyMasker`] with a plan of one to
/// four columns, fed whole and in pieces.
///
/// Layout: options bytes (see `copy_options`), cut byte, column count
/// byte, per column a type byte and action bytes, then the data.
///
/// # Panics
///
/// When masking succeeds or fails depending on how the data was cut, when
/// the output differs with the cut, or when the output of a successful
/// COPY does not read back as the input's rows with the plan's column
/// count (with valid values where the input's were, allowed ones unchanged).
pub fn copy(data: &[u8]) {
    let mut input = Input(data);
    let spec = input.byte();
    let (kind, opts) = copy_options(spec, &mut input);
    let cut = input.byte();
    let ncols = 1 + input.byte() as usize % 4;
    let cols: Vec<(ColumnAction, TypeOid)> = (0..ncols)
        .map(|_| {
            let oid = TypeOid(CELL_TYPES[input.byte() as usize % CELL_TYPES.len()]);
            (action(&mut input), oid)
        })
        .collect();
    let payload = input.rest();
    let plan = CopyPlan::new(opts.clone(), cols.clone(), &keys());
    let run = |cut: u8| -> Result<Vec<u8>, String> {
        let mut masker = CopyMasker::new(plan.clone());
        let mut data = Vec::new();
        for chunk in harness::cuts(payload, cut) {
            let mut out = BytesMut::new();
            masker.push(chunk, &mut out).map_err(|e| e.to_string())?;
            data.extend_from_slice(&valid::copy_data_payloads(&out));
        }
        masker.finish().map_err(|e| e.to_string())?;
        Ok(data)
    };
    let whole = run(0);
    let pieces = run(cut);
    assert_eq!(whole.is_ok(), pieces.is_ok(), "COPY masking fails or not depending on the cut: {whole:?} {pieces:?}");
    if let (Ok(a), Ok(b)) = (&whole, &pieces) {
        assert!(a == b, "COPY output depends on the cut");
        valid::copy_output(kind, &opts, &cols, payload, a);
    }
}

/// A policy file, then the rules it gives a session applied to a few
/// columns. Environment variables all resolve to a key; files under
/// `/dev`, `/proc` and `/sys` are not named (a fuzzer that finds
/// `/dev/zero` learns nothing about masker).
///
/// # Panics
///
/// When an error names a line the file does not have.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ["dev/", "proc/", "sys/", "/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let env = |_: &str| Some("fuzzing-pseudonym-key-0123456789".to_string());
    match crate::policy::Policy::parse_with_env(text, "policy.toml", &env) {
        Ok(policy) => {
            for identity in ["ci-job", "", "Ci-*"] {
                let session = policy.for_session(identity, None, "db.internal:5432");
                for (s, t, c) in [("public", "customers", "email"), ("Sales", "t", "x_y"), ("", "", "")] {
                    let _ = session.column_action(s, t, c, Some("pii:email"));
                    let _ = session.rule_name(s, t, c, None);
                }
                let _ = (session.guardrails().is_some(), session.approvals().len(), session.unclassified_action());
            }
        }
        Err(e) => {
            // `policy.toml:LINE:COL: message` or `policy.toml: message`.
            let shown = e.to_string();
            let place = shown.strip_prefix("policy.toml:").and_then(|r| r.split_once(": ")).map(|p| p.0);
            let line = place.and_then(|p| p.split(':').next()).and_then(|l| l.parse::<usize>().ok());
            if let Some(line) = line {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "line {line}: {shown}");
            }
        }
    }
}

/// The agent's configuration file (parsed and validated; no file it names
/// is read).
///
/// # Panics
///
/// When an error names a position the file does not have.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match crate::daemon::config::AgentConfig::parse(text, "agent.toml") {
        Ok(config) => {
            for t in &config.targets {
                let _ = t.as_str();
            }
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let message = e.to_string();
            if let crate::daemon::config::ConfigError::Invalid { at: Some((line, col)), .. } = &e {
                assert!(*line >= 1 && *line <= text.lines().count().max(1) + 1 && *col >= 1, "{message}");
            }
        }
    }
}

/// SQL text as a client sends it: parsed and traced (uncached: the cache
/// would grow with every input), normalized, scrubbed of literals, reduced
/// to its shape, and read as a `COPY ... TO STDOUT`.
///
/// # Panics
///
/// When scrubbing literals is not stable (scrubbing twice changes more).
pub fn sql(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sql = text.as_ref();
    let analysis = crate::sql::analyze_uncached(sql);
    if let Ok(a) = &analysis {
        for s in &a.statements {
            let _ = (s.class.name(), s.relations.len(), s.output.as_ref().map(Vec::len));
        }
    }
    let _ = crate::sql::normalize(sql);
    let scrubbed = crate::sql::scrub_literals(sql);
    assert_eq!(crate::sql::scrub_literals(&scrubbed), scrubbed, "scrubbing literals is not stable");
    let _ = (crate::sql::shape(sql), crate::sql::cache_key(sql));
    for index in 0..3 {
        let _ = crate::sql::copy::parse_copy_to_stdout(sql, index);
    }
    let _ = crate::plan::lineage::is_refusal(sql);
}

/// Procedural code as a client sends it in `DO` (and as a function body):
/// PostgreSQL's PL/pgSQL parser, then the analysis of what the body reads
/// and where values flow.
///
/// Layout: language byte (0 `plpgsql`, 1 `PLpgSQL`, 2 `sql`), then the body.
pub fn plpgsql(data: &[u8]) {
    let mut input = Input(data);
    let language = ["plpgsql", "PLpgSQL", "sql"][input.byte() as usize % 3];
    let body = String::from_utf8_lossy(input.rest());
    if let Some(p) = crate::sql::plpgsql::analyze_do(&body, language) {
        let _ = format!("{p:?}");
    }
    let args = ["a".to_string(), "email".to_string()];
    if let Some(p) = crate::sql::plpgsql::analyze_function_body(&body, &args) {
        let _ = format!("{p:?}");
    }
}

/// A view or function definition as the server's catalog prints it,
/// scrubbed of literals that stand against classified columns.
///
/// Layout: class byte (which column names are classified: none, all, or
/// those containing `e`), then the text.
///
/// # Panics
///
/// When nothing is classified and the text changes, when scrubbing twice
/// changes more than once, or when a definition PostgreSQL parses no longer
/// parses once scrubbed.
pub fn definition(data: &[u8]) {
    let mut input = Input(data);
    let class = input.byte() % 3;
    let text = String::from_utf8_lossy(input.rest());
    let classified: &(dyn Fn(&str) -> bool + Sync) = match class {
        0 => &|_: &str| false,
        1 => &|_: &str| true,
        _ => &|c: &str| c.contains('e'),
    };
    let scrubbed = crate::sql::definition::scrub_definition(&text, classified);
    if class == 0 {
        assert_eq!(scrubbed, text, "scrubbed with no column classified");
    }
    let again = crate::sql::definition::scrub_definition(&scrubbed, classified);
    assert_eq!(again, scrubbed, "scrubbing is not stable");
    let parses = |t: &str| crate::sql::with_parse_stack(t, || pg_query::parse(t, 0).is_ok());
    if parses(&text) {
        assert!(parses(&scrubbed), "a parsing definition no longer parses: {scrubbed:?}");
    }
}

/// An OIDC token as `masker tag --token-file` presents it, verified by the
/// agent's verifier for the issuer `https://issuer.fuzz` and audience
/// `masker`.
///
/// Layout: mode byte, time byte (now is `1_700_000_000 + 1000 * byte`),
/// then by mode: 0, the token against a fixed JWKS; 1, a header and claims
/// (JSON, separated by a NUL) signed with the fixed key (ES256), so the
/// checks after the signature are reached; 2, a JWKS (JSON), a NUL and a
/// token.
///
/// # Panics
///
/// When a token is accepted although it has expired, is for another
/// audience, names another issuer or has no `exp`.
pub fn token(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte() % 3;
    let now = 1_700_000_000 + 1000 * u64::from(input.byte());
    let rest = input.rest();
    let split = |b: &[u8]| -> (String, String) {
        let (a, b) = b.split_at(b.iter().position(|&c| c == 0).unwrap_or(b.len()));
        (String::from_utf8_lossy(a).into_owned(), String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned())
    };
    let (token, jwks) = match mode {
        0 => (String::from_utf8_lossy(rest).into_owned(), harness::JWKS.to_string()),
        1 => {
            let (header, claims) = split(rest);
            let Some(token) = harness::sign(&header, &claims) else { return };
            (token, harness::JWKS.to_string())
        }
        _ => {
            let (jwks, token) = split(rest);
            (token, jwks)
        }
    };
    let Some(identity) = harness::verify_token(&token, &jwks, now) else { return };
    let exp = identity.expires_at.unwrap_or_else(|| panic!("accepted without exp: {identity:?}"));
    assert!(now < exp, "accepted an expired token: {identity:?}");
    assert_eq!(identity.issuer.as_deref(), Some(harness::ISSUER));
    let aud = identity.claims.get("aud");
    let for_us = match aud {
        Some(serde_json::Value::String(a)) => a == harness::AUDIENCE,
        Some(serde_json::Value::Array(l)) => l.iter().any(|a| a.as_str() == Some(harness::AUDIENCE)),
        _ => false,
    };
    assert!(for_us, "accepted a token for audience {aud:?}");
    let iss = identity.claims.get("iss").and_then(|v| v.as_str());
    assert_eq!(iss, Some(harness::ISSUER), "accepted a token of another issuer");
}

/// Builds a client message `tag` with `body`: for seeds and tests.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let at = wire::begin_message(&mut out, tag);
    out.extend_from_slice(body);
    wire::finish_message(&mut out, at);
    out.to_vec()
}

#[cfg(test)]
mod tests;
