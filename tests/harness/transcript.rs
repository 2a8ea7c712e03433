//! Compatibility as a byte comparison: the whole server-to-client transcript
//! of a session (recorded by [`crate::recorder`] under the client) through
//! masker must equal the transcript of the same session on a direct
//! connection, message for message and byte for byte, and so must what the
//! client itself printed or returned.
//!
//! Normalised first, because they legitimately differ between any two
//! sessions, and nothing else:
//!
//! - BackendKeyData (`K`): the backend's process id and secret key;
//! - the SCRAM exchange's server messages (`R` with SASLContinue and
//!   SASLFinal): the server's nonce, salt and signature are per connection;
//! - NotificationResponse (`A`): the notifying backend's process id;
//! - in client output, `PID <n>` (psql's "received from server process with
//!   PID n") and the keys of the normalised messages.
//!
//! Types, typmods, table OIDs, notices, ParameterStatus, CommandComplete
//! tags and every error field are compared as they are.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::recorder::Recorder;
use crate::{ConnInfo, psql::Psql, python};

/// One backend message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(300).collect();
        let more = if body.chars().count() > 300 { "…" } else { "" };
        write!(f, "{}{:?}{more}", self.tag as char, shown)
    }
}

/// Splits a recorded server-to-client stream into messages; a first single
/// byte answering SSLRequest/GSSENCRequest is kept as a message of its own
/// (tag `?`).
pub fn parse(bytes: &[u8]) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    // A single-byte answer is followed by an Authentication or Error message.
    while rest.len() >= 2 && matches!(rest[0], b'N' | b'S' | b'G') && matches!(rest[1], b'R' | b'E') {
        out.push(Message { tag: b'?', body: vec![rest[0]] });
        rest = &rest[1..];
    }
    while !rest.is_empty() {
        if rest.len() < 5 {
            bail!("{} stray bytes at the end of the transcript", rest.len());
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < len + 1 {
            bail!("a message of length {len} runs past the end of the transcript ({} bytes left)", rest.len());
        }
        out.push(Message { tag: rest[0], body: rest[5..len + 1].to_vec() });
        rest = &rest[len + 1..];
    }
    Ok(out)
}

/// Replaces what legitimately differs between sessions; see the module
/// documentation.
pub fn normalize(messages: &mut [Message]) {
    for m in messages {
        match m.tag {
            b'K' => m.body = b"<backend key>".to_vec(),
            b'R' if m.body.len() >= 4 && matches!(m.body[..4], [0, 0, 0, 11] | [0, 0, 0, 12]) => {
                m.body.truncate(4);
                m.body.extend_from_slice(b"<per-connection SCRAM data>");
            }
            b'A' if m.body.len() >= 4 => m.body[..4].copy_from_slice(b"<pid"),
            _ => {}
        }
    }
}

/// `PID <digits>` → `PID <pid>` in client output.
pub fn normalize_output(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("PID ") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("<pid>");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// What a case gets: a login whose session is recorded, and one that is not
/// (for other sessions a case needs: a notifier, a cancel).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub recorded: ConnInfo,
    pub other: ConnInfo,
}

/// A case's body: runs against an endpoint, returns the client's own output.
pub type CaseFn = fn(Endpoint) -> Pin<Box<dyn Future<Output = Result<String>> + Send>>;

/// How a case talks to the server.
#[derive(Clone)]
pub enum Script {
    /// psql with these arguments (after the connection options and `-X`),
    /// and this standard input; its stdout, stderr and exit code are the
    /// output.
    Psql(Vec<String>, Option<String>),
    /// A psycopg snippet defining `main(conn)`; its JSON result is the output.
    Psycopg(String),
    /// Raw protocol rounds (each read up to ReadyForQuery) on one session.
    Raw(Vec<Vec<u8>>),
    /// Anything else.
    Custom(CaseFn),
}

/// One compatibility case.
#[derive(Clone)]
pub struct Case {
    pub id: &'static str,
    pub title: &'static str,
    pub script: Script,
}

/// A session's record: the client's output and the normalised transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub output: String,
    pub transcript: Vec<Message>,
}

/// Runs `case` against `target` (recording the session) and normalises it.
pub async fn run(case: &Case, target: &ConnInfo) -> Result<Record> {
    let recorder = Recorder::start(target.addr())?;
    let endpoint = Endpoint { recorded: target.at(recorder.addr()), other: target.clone() };
    let output = tokio::time::timeout(Duration::from_secs(180), run_script(&case.script, endpoint))
        .await
        .with_context(|| format!("{}: no end within 180 s", case.id))??;
    let wire = tokio::task::spawn_blocking(move || recorder.finish(Duration::from_secs(30))).await??;
    let mut transcript = parse(&wire)?;
    normalize(&mut transcript);
    Ok(Record { output: normalize_output(&output), transcript })
}

async fn run_script(script: &Script, endpoint: Endpoint) -> Result<String> {
    match script.clone() {
        Script::Psql(args, stdin) => {
            tokio::task::spawn_blocking(move || {
                let mut psql =
                    Psql::new(&endpoint.recorded).arg("-v").arg("ON_ERROR_STOP=0").env("PGSSLMODE", "disable");
                for arg in &args {
                    psql = psql.arg(arg);
                }
                if let Some(input) = stdin {
                    psql = psql.stdin(input);
                }
                let out = psql.try_run()?;
                Ok(format!("exit {:?}\n--stdout--\n{}\n--stderr--\n{}", out.code(), out.stdout, out.stderr))
            })
            .await?
        }
        Script::Psycopg(snippet) => {
            let dsn = format!("{} sslmode=disable", endpoint.recorded.dsn());
            let value = tokio::task::spawn_blocking(move || python::run(&dsn, &snippet)).await??;
            Ok(serde_json::to_string_pretty(&value)?)
        }
        Script::Raw(rounds) => {
            let info = endpoint.recorded;
            let (mut conn, _) = crate::raw::RawConn::login(info.addr(), &info).await?;
            for round in &rounds {
                conn.send(round).await?;
                conn.read_until_ready().await?;
            }
            conn.send(&crate::raw::terminate()).await?;
            conn.expect_closed(Duration::from_secs(10)).await?;
            Ok(String::new())
        }
        Script::Custom(f) => f(endpoint).await,
    }
}

/// Where two records first differ, if they do.
pub fn first_difference(direct: &Record, masked: &Record) -> Option<String> {
    if direct.output != masked.output {
        let (d, m): (Vec<&str>, Vec<&str>) = (direct.output.lines().collect(), masked.output.lines().collect());
        let at = d.iter().zip(&m).position(|(a, b)| a != b).unwrap_or(d.len().min(m.len()));
        return Some(format!(
            "client output, line {}:\n  direct:        {:?}\n  through masker: {:?}",
            at + 1,
            d.get(at).unwrap_or(&"<end>"),
            m.get(at).unwrap_or(&"<end>")
        ));
    }
    if direct.transcript != masked.transcript {
        let (d, m) = (&direct.transcript, &masked.transcript);
        let at = d.iter().zip(m).position(|(a, b)| a != b).unwrap_or(d.len().min(m.len()));
        return Some(format!(
            "transcript, message {} of {}/{}:\n  direct:         {:?}\n  through masker: {:?}",
            at + 1,
            d.len(),
            m.len(),
            d.get(at),
            m.get(at)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let mut wire = vec![b'N'];
        for (tag, body) in [
            (b'R', &[0u8, 0, 0, 11, b'r', b'='][..]),
            (b'K', &[0, 0, 1, 2, 9, 9, 9, 9][..]),
            (b'A', &[0, 0, 0, 7, b'c', 0, b'p', 0][..]),
            (b'Z', &[b'I'][..]),
        ] {
            wire.push(tag);
            wire.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            wire.extend_from_slice(body);
        }
        let mut msgs = parse(&wire).unwrap();
        assert_eq!(msgs.iter().map(|m| m.tag).collect::<Vec<_>>(), b"?RKAZ");
        normalize(&mut msgs);
        assert_eq!(msgs[2].body, b"<backend key>");
        assert_eq!(&msgs[3].body[..4], b"<pid");
        assert_eq!(&msgs[3].body[4..], b"c\0p\0");
        assert!(parse(&wire[..wire.len() - 1]).is_err());
        assert_eq!(normalize_output("from server process with PID 4242."), "from server process with PID <pid>.");
    }
}
