//! Attack corpora with direct controls: every attack runs through the same
//! clients once against the server directly (where it must leak, or it is a
//! dead attack that proves nothing) and once through masker (where nothing
//! may be found).
//!
//! What a client saw is kept per channel ([`Channel`]): rows (text, or
//! binary decoded per type, records and arrays included), errors and notices
//! with every field, notifications, ParameterStatus values, COPY data, and
//! the raw bytes the server side sent ([`crate::recorder`]), so a value that
//! reaches the wire but no rendering is still found. The clients
//! ([`Client`]): psql (simple protocol, text), tokio-postgres (extended
//! protocol, binary results) and psycopg (text, and binary), each attack in a
//! fresh session.
//!
//! A client that breaks (cannot connect, times out, crashes, returns fewer
//! results than it was given attacks) fails the corpus: a missing result is
//! never counted as clean.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{TryStreamExt, pin_mut};
use serde_json::Value;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use crate::compare::{self, RawCell};
use crate::finder::{Finder, Found};
use crate::psql::Psql;
use crate::recorder::Recorder;
use crate::{ConnInfo, python};

/// Deadline of one client run of one attack.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long a recorder waits for the client's connections to end.
const HANGUP_LIMIT: Duration = Duration::from_secs(30);

/// What shows that an attack worked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Any seeded personal value, in any form the finder knows.
    PersonalValue,
    /// This exact text: the answer of an inference query (computed
    /// independently of the query), e.g. `INFER:17:END`.
    Answer(String),
}

/// One attack: statements run in a fresh session (`setup` first, in the
/// same session), and what would prove it leaked.
#[derive(Clone, Debug)]
pub struct Attack {
    pub id: String,
    pub setup: String,
    pub sql: String,
    pub expect: Expect,
}

impl Attack {
    /// An attack that must bring a seeded value out.
    pub fn new(id: impl Into<String>, setup: &str, sql: &str) -> Attack {
        Attack { id: id.into(), setup: setup.to_owned(), sql: sql.to_owned(), expect: Expect::PersonalValue }
    }

    /// An inference attack: its `answer` must appear directly, never through masker.
    pub fn inference(id: impl Into<String>, sql: &str, answer: String) -> Attack {
        Attack { id: id.into(), setup: String::new(), sql: sql.to_owned(), expect: Expect::Answer(answer) }
    }
}

/// A client library (and protocol) the attacks run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Client {
    /// psql: simple protocol, text, `VERBOSITY=verbose`.
    Psql,
    /// tokio-postgres: extended protocol, binary results.
    TokioBinary,
    /// psycopg 3, text results.
    PsycopgText,
    /// psycopg 3, binary results.
    PsycopgBinary,
}

impl Client {
    /// Every client.
    pub const ALL: [Client; 4] = [Client::Psql, Client::TokioBinary, Client::PsycopgText, Client::PsycopgBinary];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Client::Psql => "psql",
            Client::TokioBinary => "tokio-postgres(binary)",
            Client::PsycopgText => "psycopg(text)",
            Client::PsycopgBinary => "psycopg(binary)",
        }
    }
}

/// Where in a session something came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Rows,
    Error,
    Notice,
    Notification,
    ParameterStatus,
    Copy,
    /// The raw server-to-client bytes.
    Wire,
}

impl Channel {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Rows => "rows",
            Channel::Error => "error",
            Channel::Notice => "notice",
            Channel::Notification => "notification",
            Channel::ParameterStatus => "parameter-status",
            Channel::Copy => "copy",
            Channel::Wire => "wire",
        }
    }
}

/// What one client got for one attack.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub channels: BTreeMap<Channel, Vec<u8>>,
    /// Set when the client itself broke (not an SQL error: those are
    /// results).
    pub failure: Option<String>,
}

impl Seen {
    fn push(&mut self, channel: Channel, text: impl AsRef<[u8]>) {
        let buf = self.channels.entry(channel).or_default();
        buf.extend_from_slice(text.as_ref());
        buf.push(b'\n');
    }
}

/// The results of a corpus on one target: `[attack][client]`.
pub type Results = Vec<BTreeMap<Client, Seen>>;

/// Runs every attack with every client against `target` (psycopg in its own
/// processes, alongside psql and tokio-postgres).
pub async fn run(target: &ConnInfo, attacks: &[Attack], clients: &[Client]) -> Result<Results> {
    let mut psycopg = Vec::new();
    for &client in clients {
        let binary = match client {
            Client::PsycopgText => false,
            Client::PsycopgBinary => true,
            _ => continue,
        };
        let (target, attacks) = (target.clone(), attacks.to_vec());
        psycopg.push((client, tokio::task::spawn_blocking(move || run_psycopg(&target, &attacks, binary))));
    }
    let mut out: Results = vec![BTreeMap::new(); attacks.len()];
    for (i, attack) in attacks.iter().enumerate() {
        if clients.contains(&Client::Psql) {
            let (target, attack) = (target.clone(), attack.clone());
            let seen = tokio::task::spawn_blocking(move || run_psql(&target, &attack)).await?;
            out[i].insert(Client::Psql, seen);
        }
        if clients.contains(&Client::TokioBinary) {
            out[i].insert(Client::TokioBinary, run_tokio(target, attack).await);
        }
    }
    for (client, handle) in psycopg {
        let results = handle.await?.with_context(|| format!("{} run", client.name()))?;
        if results.len() != attacks.len() {
            bail!("{}: {} results for {} attacks", client.name(), results.len(), attacks.len());
        }
        for (i, seen) in results.into_iter().enumerate() {
            out[i].insert(client, seen);
        }
    }
    Ok(out)
}

fn finish_recorder(recorder: Recorder, seen: &mut Seen) {
    match recorder.finish(HANGUP_LIMIT) {
        Ok(wire) => {
            seen.channels.insert(Channel::Wire, wire);
        }
        Err(e) => seen.failure = Some(format!("{e:#}")),
    }
}

fn run_psql(target: &ConnInfo, attack: &Attack) -> Seen {
    let mut seen = Seen::default();
    let recorder = match Recorder::start(target.addr()) {
        Ok(r) => r,
        Err(e) => return Seen { failure: Some(format!("{e:#}")), ..Seen::default() },
    };
    let info = target.at(recorder.addr());
    let mut psql = Psql::new(&info)
        .arg("-v")
        .arg("ON_ERROR_STOP=0")
        .arg("-v")
        .arg("VERBOSITY=verbose")
        .env("PGSSLMODE", "disable")
        .timeout(RUN_LIMIT);
    if !attack.setup.is_empty() {
        psql = psql.command(&attack.setup);
    }
    let out = psql.command(&attack.sql).try_run();
    match out {
        Ok(out) => {
            for line in out.stdout.lines() {
                let channel =
                    if line.starts_with("Asynchronous notification") { Channel::Notification } else { Channel::Rows };
                seen.push(channel, line);
            }
            let mut current = Channel::Error;
            for line in out.stderr.lines() {
                let head = line.split(':').next().unwrap_or_default();
                if ["ERROR", "FATAL", "PANIC"].iter().any(|h| head.ends_with(h)) {
                    current = Channel::Error;
                } else if ["NOTICE", "WARNING", "INFO", "DEBUG", "LOG"].iter().any(|h| head.contains(h)) {
                    current = Channel::Notice;
                }
                seen.push(current, line);
            }
            if out.code() == Some(2) || out.stderr.contains("psql: error: connection to server") {
                seen.failure = Some(format!("psql could not run the session (exit {:?}): {}", out.code(), out.stderr));
            }
        }
        Err(e) => seen.failure = Some(format!("psql: {e:#}")),
    }
    let failure = seen.failure.take();
    finish_recorder(recorder, &mut seen);
    seen.failure = failure.or(seen.failure.take());
    seen
}

async fn run_tokio(target: &ConnInfo, attack: &Attack) -> Seen {
    let mut seen = Seen::default();
    let recorder = match Recorder::start(target.addr()) {
        Ok(r) => r,
        Err(e) => return Seen { failure: Some(format!("{e:#}")), ..Seen::default() },
    };
    let info = target.at(recorder.addr());
    let session = tokio::time::timeout(RUN_LIMIT, tokio_session(&info, attack, &mut seen)).await;
    match session {
        Ok(Ok(())) => {}
        Ok(Err(e)) => seen.failure = Some(format!("tokio-postgres: {e:#}")),
        Err(_) => seen.failure = Some(format!("tokio-postgres: no result within {RUN_LIMIT:?}")),
    }
    let failure = seen.failure.take();
    let finished = tokio::task::spawn_blocking(move || {
        let mut s = Seen::default();
        finish_recorder(recorder, &mut s);
        s
    })
    .await;
    match finished {
        Ok(s) => {
            seen.channels.extend(s.channels);
            seen.failure = failure.or(s.failure);
        }
        Err(e) => seen.failure = Some(format!("recorder: {e}")),
    }
    seen
}

fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{db:?}"),
        None => format!("{e:?}"),
    }
}

async fn tokio_session(info: &ConnInfo, attack: &Attack, seen: &mut Seen) -> Result<()> {
    let (client, mut messages) = info.connect_with_messages().await.context("connect")?;
    if !attack.setup.is_empty()
        && let Err(e) = client.batch_execute(&attack.setup).await
    {
        if e.as_db_error().is_none() && e.is_closed() {
            bail!("connection lost during set-up: {e:?}");
        }
        seen.push(Channel::Error, db_error_text(&e));
    }
    for statement in split_statements(&attack.sql) {
        if is_copy_to_stdout(&statement) {
            match client.copy_out(statement.as_str()).await {
                Ok(stream) => {
                    pin_mut!(stream);
                    let mut data = Vec::new();
                    loop {
                        match stream.try_next().await {
                            Ok(Some(chunk)) => data.extend_from_slice(&chunk),
                            Ok(None) => break,
                            Err(e) => {
                                seen.push(Channel::Error, db_error_text(&e));
                                break;
                            }
                        }
                    }
                    seen.push(Channel::Copy, data);
                }
                Err(e) => seen.push(Channel::Error, db_error_text(&e)),
            }
            continue;
        }
        let result = async {
            let prepared = client.prepare(&statement).await?;
            let rows = client.query(&prepared, &[]).await?;
            Ok::<_, tokio_postgres::Error>((prepared, rows))
        }
        .await;
        match result {
            Ok((prepared, rows)) => {
                let mut text = String::new();
                for row in &rows {
                    for (i, column) in prepared.columns().iter().enumerate() {
                        text.push_str(column.name());
                        text.push('=');
                        match row.try_get::<_, RawCell>(i).map(|c| c.0) {
                            Ok(Some(raw)) => text.push_str(&render_binary(column.type_(), &raw)),
                            Ok(None) => text.push_str("NULL"),
                            Err(e) => text.push_str(&format!("<{e}>")),
                        }
                        text.push('\t');
                    }
                    text.push('\n');
                }
                seen.push(Channel::Rows, text);
            }
            Err(e) => {
                if e.as_db_error().is_none() && client.is_closed() {
                    bail!("connection lost: {e:?}");
                }
                seen.push(Channel::Error, db_error_text(&e));
            }
        }
    }
    // Notices and notifications of the statements above were queued before
    // their results arrived.
    drop(client);
    while let Some(message) = messages.recv().await {
        match message {
            AsyncMessage::Notice(db) => seen.push(Channel::Notice, format!("{db:?}")),
            AsyncMessage::Notification(n) => {
                seen.push(Channel::Notification, format!("{}: {}", n.channel(), n.payload()))
            }
            other => seen.push(Channel::Notice, format!("{other:?}")),
        }
    }
    Ok(())
}

/// A binary cell as text: decoded by its type, else its bytes (lossy) and hex.
pub fn render_binary(ty: &tokio_postgres::types::Type, raw: &[u8]) -> String {
    match compare::decode_binary(ty, raw) {
        Ok(text) => text,
        Err(_) => format!("{} \\x{}", String::from_utf8_lossy(raw), crate::finder::hex(raw)),
    }
}

const PSYCOPG_RUNNER: &str = r#"
import json, sys
import psycopg

CASES = json.load(sys.stdin)
BINARY = sys.argv[1] == "binary"
PARAMS = ["application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone", "integer_datetimes",
          "is_superuser", "server_encoding", "server_version", "session_authorization", "standard_conforming_strings"]
DIAG = ["severity", "sqlstate", "message_primary", "message_detail", "message_hint", "statement_position",
        "internal_position", "internal_query", "context", "schema_name", "table_name", "column_name",
        "datatype_name", "constraint_name", "source_file", "source_line", "source_function"]

def diag(d):
    return " | ".join(f"{k}={getattr(d, k)}" for k in DIAG if getattr(d, k, None))

def render(v):
    if v is None:
        return "NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return "\\x" + b.hex() + " " + b.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(render(x) for x in v) + ")"
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)

def split(sql):
    out, buf, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = sql.find(c, i + 1)
            j = n if j < 0 else j + 1
            buf.append(sql[i:j]); i = j
        elif c == "$":
            k = sql.find("$", i + 1)
            tag = sql[i:k + 1] if k > 0 and all(ch.isalnum() or ch == "_" for ch in sql[i + 1:k]) else None
            if tag:
                j = sql.find(tag, k + 1)
                j = n if j < 0 else j + len(tag)
                buf.append(sql[i:j]); i = j
            else:
                buf.append(c); i += 1
        elif c == ";":
            s = "".join(buf).strip()
            if s: out.append(s)
            buf = []; i += 1
        else:
            buf.append(c); i += 1
    s = "".join(buf).strip()
    if s: out.append(s)
    return out

def is_copy(s):
    return s.lstrip().lower().startswith("copy")

def run(case):
    ch = {k: [] for k in ("rows", "error", "notice", "notification", "parameter_status", "copy")}
    try:
        conn = psycopg.connect(case["dsn"], autocommit=True)
    except Exception as e:
        return {"failure": f"connect: {type(e).__name__}: {e}"}
    conn.add_notice_handler(lambda d: ch["notice"].append(diag(d)))
    conn.add_notify_handler(lambda n: ch["notification"].append(f"{n.channel}: {n.payload}"))
    failure = None
    try:
        for part, sql in (("setup", case["setup"]), ("sql", case["sql"])):
            if not sql:
                continue
            stmts = split(sql) if (BINARY or any(is_copy(s) for s in split(sql))) else [sql]
            for st in stmts:
                try:
                    cur = conn.cursor(binary=BINARY)
                    if is_copy(st):
                        with cur.copy(st) as cp:
                            ch["copy"].append(b"".join(bytes(b) for b in cp).decode("utf-8", "replace"))
                        continue
                    cur.execute(st)
                    while True:
                        if cur.description is not None:
                            ch["rows"].append("\t".join(d.name for d in cur.description))
                            for row in cur.fetchall():
                                ch["rows"].append("\t".join(render(v) for v in row))
                        ch["rows"].append("-- " + str(cur.statusmessage))
                        if not cur.nextset():
                            break
                except Exception as e:
                    if conn.closed:
                        raise
                    if isinstance(e, psycopg.Error):
                        ch["error"].append(f"{type(e).__name__}: {e} || {diag(e.diag)}")
                    else:  # a value the client could not load: still a result, not a crash
                        ch["error"].append(f"client-side {type(e).__name__}: {e}")
        for p in PARAMS:
            ch["parameter_status"].append(f"{p}={conn.info.parameter_status(p)}")
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    out = {k: "\n".join(v) for k, v in ch.items()}
    out["failure"] = failure
    return out

results = []
for case in CASES:
    results.append(run(case))
    print(json.dumps(results[-1]), flush=True)
"#;

fn run_psycopg(target: &ConnInfo, attacks: &[Attack], binary: bool) -> Result<Vec<Seen>> {
    let mut recorders = Vec::with_capacity(attacks.len());
    let mut cases = Vec::with_capacity(attacks.len());
    for attack in attacks {
        let recorder = Recorder::start(target.addr())?;
        let info = target.at(recorder.addr());
        cases.push(serde_json::json!({
            "dsn": format!("{} sslmode=disable", info.dsn()),
            "setup": attack.setup,
            "sql": attack.sql,
        }));
        recorders.push(recorder);
    }
    let mut cmd = std::process::Command::new(python::venv_python());
    cmd.args(["-c", PSYCOPG_RUNNER, if binary { "binary" } else { "text" }]).env("PGTZ", "UTC").env_remove("PGSSLMODE");
    let input = serde_json::to_vec(&cases)?;
    let limit = RUN_LIMIT + Duration::from_secs(5 * attacks.len() as u64);
    let out = crate::process::run(cmd, Some(&input), limit)?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    if !out.status.success() || lines.len() != attacks.len() {
        bail!(
            "the psycopg runner ended ({}) after {} of {} attacks:\n{}",
            out.status,
            lines.len(),
            attacks.len(),
            out.stderr
        );
    }
    let mut results = Vec::with_capacity(attacks.len());
    for (line, recorder) in lines.into_iter().zip(recorders) {
        let value: Value = serde_json::from_str(line).with_context(|| format!("psycopg result {line:?}"))?;
        let mut seen = Seen::default();
        for (key, channel) in [
            ("rows", Channel::Rows),
            ("error", Channel::Error),
            ("notice", Channel::Notice),
            ("notification", Channel::Notification),
            ("parameter_status", Channel::ParameterStatus),
            ("copy", Channel::Copy),
        ] {
            if let Some(text) = value[key].as_str() {
                seen.push(channel, text);
            }
        }
        let failure = value["failure"].as_str().map(str::to_owned);
        finish_recorder(recorder, &mut seen);
        seen.failure = failure.or(seen.failure);
        results.push(seen);
    }
    Ok(results)
}

/// Statements of `sql`, split at top-level semicolons (quotes, dollar quotes
/// and comments respected), for clients that send one at a time.
pub fn split_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'$' => {
                let tag_end =
                    b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_')).map(|p| i + 1 + p);
                match tag_end {
                    Some(end)
                        if b[end] == b'$' && !(i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
                    {
                        let tag = &b[i..=end];
                        let body = end + 1;
                        i = b[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(b.len(), |p| body + p + tag.len());
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                let s = sql[start..i].trim();
                if !s.is_empty() {
                    out.push(s.to_owned());
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let s = sql[start.min(sql.len())..].trim();
    if !s.is_empty() {
        out.push(s.to_owned());
    }
    out
}

fn is_copy_to_stdout(statement: &str) -> bool {
    let lower = statement.to_ascii_lowercase();
    lower.trim_start().starts_with("copy") && lower.contains("to stdout")
}

/// One thing that went wrong with a corpus.
#[derive(Clone, Debug)]
pub struct Problem {
    pub attack: String,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.attack, self.what)
    }
}

/// The verdict on a corpus: direct controls and masked runs.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Attacks run.
    pub attacks: usize,
    /// Client runs per target (attacks × clients).
    pub runs: usize,
    /// Attacks whose direct run leaked (the control held).
    pub controls_passed: usize,
    /// Attacks that found nothing directly: they prove nothing.
    pub dead: Vec<Problem>,
    /// Attacks that leaked through masker.
    pub leaks: Vec<Problem>,
    /// Client runs that broke (directly or through masker).
    pub failures: Vec<Problem>,
    /// `(attack, client, channel)` of every masked leak (for expected-leak lists).
    pub leaked: BTreeSet<(String, Client, Channel)>,
}

impl Verdict {
    /// Every problem, one per line.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.dead.iter().map(|p| format!("DEAD ATTACK {p}")));
        out.extend(self.failures.iter().map(|p| format!("CLIENT FAILED {p}")));
        out.extend(self.leaks.iter().map(|p| format!("LEAK {p}")));
        out
    }

    /// A one-line count.
    pub fn summary(&self) -> String {
        format!(
            "{} attacks × clients = {} runs per target; direct controls leaked for {} of {} attacks; {} dead, {} leaks through masker, {} client failures",
            self.attacks,
            self.runs,
            self.controls_passed,
            self.attacks,
            self.dead.len(),
            self.leaks.len(),
            self.failures.len()
        )
    }

    /// Panics with every problem, if there is any.
    #[track_caller]
    pub fn assert_clean(&self, what: &str) {
        self.assert_clean_except(what, &[]);
    }

    /// Like [`Self::assert_clean`], except for the attacks `known` lists as
    /// leaking through masker today, `(attack id, why)`: those must still
    /// leak (so the list cannot rot: once masker holds one, this fails and
    /// says to remove it), and everything else must be clean.
    #[track_caller]
    pub fn assert_clean_except(&self, what: &str, known: &[(&str, &str)]) {
        let is_known = |attack: &str| known.iter().any(|(id, _)| attack.starts_with(&format!("{id}: ")));
        let mut problems: Vec<String> = Vec::new();
        problems.extend(self.dead.iter().map(|p| format!("DEAD ATTACK {p}")));
        problems.extend(self.failures.iter().map(|p| format!("CLIENT FAILED {p}")));
        problems.extend(self.leaks.iter().filter(|p| !is_known(&p.attack)).map(|p| format!("LEAK {p}")));
        for (id, why) in known {
            if !self.leaked.iter().any(|(attack, _, _)| attack == id) {
                problems.push(format!(
                    "FIXED? [{id}] is listed as a known leak ({why}) but leaked nowhere through masker: remove it from the list"
                ));
            }
        }
        assert!(problems.is_empty(), "{what}: {}\n{}", self.summary(), problems.join("\n"));
        eprintln!("{what}: {} (known leaks still leaking: {})", self.summary(), known.len());
    }
}

/// What `finder` finds in each channel of each client's run of `attack`
/// (values the attacker typed aside), where it finds anything.
pub fn scan(finder: &Finder, attack: &Attack, seen: &BTreeMap<Client, Seen>) -> BTreeMap<(Client, Channel), Found> {
    let typed = typed_values(finder, attack);
    let mut out = BTreeMap::new();
    for (client, seen) in seen {
        for (channel, text) in &seen.channels {
            let f = found(finder, text, &typed);
            if !f.is_empty() {
                out.insert((*client, *channel), f);
            }
        }
    }
    out
}

fn typed_values(finder: &Finder, attack: &Attack) -> BTreeSet<usize> {
    finder.find(format!("{}\n{}", attack.setup, attack.sql).as_bytes()).hits.iter().map(|h| h.value).collect()
}

/// What `finder` finds in `text`, without the values the attacker typed.
fn found(finder: &Finder, text: &[u8], typed: &BTreeSet<usize>) -> Found {
    let mut found = finder.find(text);
    found.hits.retain(|h| !typed.contains(&h.value));
    found
}

fn describe(finder: &Finder, found: &Found) -> String {
    let first = found.hits.first().map(|h| format!(", e.g. {:?}", finder.value(h).1)).unwrap_or_default();
    format!("{found}{first}")
}

/// Judges a corpus: each attack must leak in the `direct` results (in any
/// client and channel) and leak nowhere in the `masked` ones.
pub fn judge(finder: &Finder, attacks: &[Attack], direct: &Results, masked: &Results) -> Verdict {
    let mut v = Verdict { attacks: attacks.len(), runs: masked.iter().map(BTreeMap::len).sum(), ..Verdict::default() };
    for (i, attack) in attacks.iter().enumerate() {
        let typed = typed_values(finder, attack);
        let problem = |what: String| Problem { attack: format!("{}: {}", attack.id, attack.sql), what };
        // The direct control.
        let mut leaked_directly = false;
        for (client, seen) in direct.get(i).into_iter().flatten() {
            if let Some(failure) = &seen.failure {
                v.failures.push(problem(format!("{} direct: {failure}", client.name())));
            }
            for text in seen.channels.values() {
                leaked_directly |= match &attack.expect {
                    Expect::PersonalValue => !found(finder, text, &typed).is_empty(),
                    Expect::Answer(answer) => contains(text, answer.as_bytes()),
                };
            }
        }
        if leaked_directly {
            v.controls_passed += 1;
        } else {
            let want = match &attack.expect {
                Expect::PersonalValue => "no seeded value".to_owned(),
                Expect::Answer(answer) => format!("not its answer {answer:?}"),
            };
            v.dead.push(problem(format!("{want} in any client or channel on a direct connection")));
        }
        // The masked run.
        for (client, seen) in masked.get(i).into_iter().flatten() {
            if let Some(failure) = &seen.failure {
                v.failures.push(problem(format!("{} through masker: {failure}", client.name())));
            }
            for (channel, text) in &seen.channels {
                let leak = match &attack.expect {
                    Expect::PersonalValue => {
                        let f = found(finder, text, &typed);
                        (!f.is_empty()).then(|| describe(finder, &f))
                    }
                    Expect::Answer(answer) => {
                        contains(text, answer.as_bytes()).then(|| format!("the answer {answer:?}"))
                    }
                };
                if let Some(leak) = leak {
                    v.leaked.insert((attack.id.clone(), *client, *channel));
                    v.leaks.push(problem(format!("{} / {}: {leak}", client.name(), channel.name())));
                }
            }
        }
        if masked.get(i).is_none_or(BTreeMap::is_empty) {
            v.failures.push(problem("no result through masker".into()));
        }
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `sql` with the simple protocol and returns every row as text (for
/// answers computed on the side, e.g. as the superuser).
pub async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let mut rows = Vec::new();
    for msg in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = msg {
            rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(split_statements("SELECT 1; SELECT ';'"), vec!["SELECT 1", "SELECT ';'"]);
        assert_eq!(
            split_statements("DO $$ BEGIN PERFORM 1; END $$; SELECT 2;"),
            vec!["DO $$ BEGIN PERFORM 1; END $$", "SELECT 2"]
        );
        assert_eq!(
            split_statements("DO $x$ a; $$ b $x$; -- c; d\nSELECT 3"),
            vec!["DO $x$ a; $$ b $x$", "-- c; d\nSELECT 3"]
        );
        assert_eq!(split_statements("SELECT \"a;b\" /* ; */ FROM t"), vec!["SELECT \"a;b\" /* ; */ FROM t"]);
        assert!(split_statements(" ; ").is_empty());
    }
}
