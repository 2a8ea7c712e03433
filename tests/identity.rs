//! Workload identity backed by OIDC tokens, end to end: the real `masker
//! agent` with an `[[issuer]]` whose JWKS file is made by the test (ES256,
//! P-256 key from rcgen, tokens signed with jsonwebtoken), the real `masker
//! tag --token-file` / `masker run --token-env` CLI, real cgroups and a real
//! PostgreSQL.
//!
//! Covered: a valid token tags and the cgroup's connections go through
//! masker; each bad token (expired, not yet valid, wrong issuer, wrong
//! audience, bad signature, unknown key) is a CLI error naming the failed
//! check and tags nothing; an identity whose token expires is refused at
//! connect time with SQLSTATE 28000 naming the identity and the expiry;
//! `masker run` with a valid token runs the command (its exit code kept) and
//! with an invalid one runs nothing.
//!
//! Keys and tokens live in temp dirs only. Needs root and BPF; skipped with
//! a message otherwise. The `masker` binary must be built.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup, skip_reason};
use masker_tests::process::{self, Output};
use masker_tests::{ConnInfo, PgCluster};
use serde_json::{Value, json};
use tempfile::TempDir;

const ISSUER: &str = "https://ci.example.test";
const AUDIENCE: &str = "masker";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A tokio-postgres client process (cgroup membership is per process, so the
// test binary is re-executed inside the cgroup). It connects and prints
// `CLIENT-OK` or `CLIENT-DBERROR <sqlstate> <message>` / `CLIENT-ERROR ...`.

const CLIENT_ENV: &str = "MASKER_IT_IDENTITY_CLIENT";

/// Not a test of its own: the body of the client process (does nothing
/// without [`CLIENT_ENV`]).
#[test]
fn identity_client_process() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [host, port, user, password, dbname] = parts[..] else { panic!("bad {CLIENT_ENV}: {spec:?}") };
    let info = ConnInfo {
        host: host.into(),
        port: port.parse().expect("port"),
        user: user.into(),
        password: password.into(),
        dbname: dbname.into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        match info.tokio_config().connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                match client.query_one("SELECT 1", &[]).await {
                    Ok(_) => println!("CLIENT-OK"),
                    Err(e) => println!("CLIENT-ERROR query: {e}"),
                }
            }
            Err(e) => match e.as_db_error() {
                Some(db) => println!("CLIENT-DBERROR {} {}", db.code().code(), db.message()),
                None => println!("CLIENT-ERROR {e}"),
            },
        }
    });
}

/// Runs the client process in `cg`, returns what follows `CLIENT-`.
fn tokio_client_in(cg: &TestCgroup, info: &ConnInfo) -> String {
    let mut cmd = cg.command(std::env::current_exe().expect("the test binary"));
    cmd.args(["identity_client_process", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CLIENT_ENV, format!("{} {} {} {} {}", info.host, info.port, info.user, info.password, info.dbname));
    let mut child = LineChild::spawn(cmd).expect("spawn the client");
    let line = child.line_starting("CLIENT-", CLIENT_TIMEOUT).expect("client result");
    let _ = child.finish(CLIENT_TIMEOUT);
    line
}

// ---------------------------------------------------------------------------
// Keys, JWKS and tokens

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A temp dir with `jwks.json` (the public part of one ES256 key, kid "k1")
/// and the means to sign tokens with that key or with another one.
struct Keys {
    dir: TempDir,
    key: EncodingKey,
    other: EncodingKey,
    tokens: std::cell::Cell<u32>,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::Builder::new().prefix("masker-identity-").tempdir().unwrap();
        let gen_key = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (key, other) = (gen_key(), gen_key());
        let raw = key.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let enc = |k: &rcgen::KeyPair| EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
        Keys { key: enc(&key), other: enc(&other), dir, tokens: std::cell::Cell::new(0) }
    }

    fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// A token with the default claims (valid for 10 minutes), changed by
    /// `edit`, signed with the JWKS key under `kid`.
    fn token(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        self.token_with(&self.key, "k1", edit)
    }

    fn token_with(
        &self,
        key: &EncodingKey,
        kid: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> String {
        let now = now();
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), json!(ISSUER));
        claims.insert("aud".into(), json!(AUDIENCE));
        claims.insert("sub".into(), json!("repo:acme/shop:ref:refs/heads/main"));
        claims.insert("repository".into(), json!("acme/shop"));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now - 5));
        claims.insert("exp".into(), json!(now + 600));
        edit(&mut claims);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    /// Writes `token` into a new file of the temp dir.
    fn file(&self, token: &str) -> PathBuf {
        let n = self.tokens.get();
        self.tokens.set(n + 1);
        let path = self.dir.path().join(format!("token-{n}.jwt"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `secs` as the agent prints expiries (`YYYY-MM-DDTHH:MM:SSZ`), via date(1).
fn rfc3339(secs: u64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// ---------------------------------------------------------------------------
// Set-up

fn start(keys: &Keys) -> Option<(&'static PgCluster, MaskerAgent)> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return None;
    }
    let cluster = PgCluster::shared();
    let mut options = AgentOptions::targets(&[cluster.addr()]);
    options.issuers = vec![(ISSUER.into(), AUDIENCE.into(), keys.jwks_file())];
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    Some((cluster, agent))
}

fn tag_with_file(agent: &MaskerAgent, cg: &Path, identity: &str, token_file: &Path) -> Output {
    agent.run_cli(&[
        "tag",
        &cg.to_string_lossy(),
        "--identity",
        identity,
        "--token-file",
        &token_file.to_string_lossy(),
    ])
}

/// The tags of `masker status --json`.
fn tags(agent: &MaskerAgent) -> Vec<Value> {
    agent.status()["tags"].as_array().expect("tags").clone()
}

fn psql_in(cg: &TestCgroup, cluster: &PgCluster, info: &ConnInfo, sql: &str) -> Output {
    let mut cmd = cg.command(cluster.bindir().join("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-w"])
        .args(["-h", &info.host, "-p", &info.port.to_string(), "-U", &info.user, "-d", &info.dbname])
        .args(["-c", sql])
        .env("PGPASSWORD", &info.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    process::run(cmd, None, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("psql: {e:#}"))
}

#[track_caller]
fn tear_down(agent: MaskerAgent, cgroups: Vec<TestCgroup>) {
    let pin_dir = agent.pin_dir().to_path_buf();
    drop(agent);
    assert!(!pin_dir.exists(), "{} is left", pin_dir.display());
    let paths: Vec<PathBuf> = cgroups.iter().map(|c| c.path().to_path_buf()).collect();
    for cg in cgroups.into_iter().rev() {
        drop(cg);
    }
    for path in paths {
        assert!(!path.exists(), "test cgroup {} is left", path.display());
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn valid_token_tags_and_connections_go_through_masker() {
    let keys = Keys::new();
    let Some((cluster, agent)) = start(&keys) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    let token = keys.token(|_| {});
    let out = tag_with_file(&agent, cg.path(), "ci-job", &keys.file(&token));
    out.assert_success();
    assert!(out.stdout.contains("ci-job"), "{}", out.stdout);

    let tags = tags(&agent);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(tags[0]["identity"], json!("ci-job"));
    assert_eq!(tags[0]["path"], json!(cg.path().to_string_lossy()));

    let before = agent.connections();
    let out = psql_in(&cg, cluster, &info, "SELECT current_user, current_database()");
    out.assert_success();
    assert_eq!(out.stdout.trim(), "app|shop", "{}", out.stderr);
    assert_eq!(agent.connections(), before + 1, "the psql in the tagged cgroup did not go through masker");
    // tokio-postgres too.
    assert_eq!(tokio_client_in(&cg, &info), "OK");
    assert_eq!(agent.connections(), before + 2);
    tear_down(agent, vec![cg]);
}

#[test]
fn bad_tokens_are_cli_errors_naming_the_check_and_tag_nothing() {
    let keys = Keys::new();
    let Some((_cluster, agent)) = start(&keys) else { return };
    let cg = TestCgroup::new().expect("cgroup");
    let now = now();
    let expired_at = now - 120;
    let not_before = now + 3600;
    let cases: Vec<(&str, String, String)> = vec![
        (
            "expired",
            keys.token(|c| {
                c.insert("exp".into(), json!(expired_at));
                c.insert("nbf".into(), json!(expired_at - 600));
                c.insert("iat".into(), json!(expired_at - 600));
            }),
            format!("token expired at {}", rfc3339(expired_at)),
        ),
        (
            "not yet valid",
            keys.token(|c| {
                c.insert("nbf".into(), json!(not_before));
                c.insert("exp".into(), json!(not_before + 600));
            }),
            format!("token is not valid before {}", rfc3339(not_before)),
        ),
        (
            "wrong issuer",
            keys.token(|c| {
                c.insert("iss".into(), json!("https://evil.example.test"));
            }),
            "token issuer \"https://evil.example.test\" is not one of the agent's [[issuer]] entries".into(),
        ),
        (
            "wrong audience",
            keys.token(|c| {
                c.insert("aud".into(), json!("someone-else"));
            }),
            format!("token audience does not include \"{AUDIENCE}\""),
        ),
        ("bad signature", keys.token_with(&keys.other, "k1", |_| {}), "token signature is invalid".into()),
        (
            "unknown kid",
            keys.token_with(&keys.key, "k2", |_| {}),
            format!("token key id \"k2\" is not in the JWKS of {ISSUER}"),
        ),
    ];
    for (what, token, expected) in cases {
        let out = tag_with_file(&agent, cg.path(), "ci-bad", &keys.file(&token));
        assert!(!out.status.success(), "{what}: tagging succeeded: {}", out.stdout);
        assert!(out.stderr.contains(&expected), "{what}: expected {expected:?} in stderr:\n{}", out.stderr);
        assert!(out.stderr.contains("was not tagged"), "{what}: {}", out.stderr);
        assert_eq!(tags(&agent), Vec::<Value>::new(), "{what}: something was tagged");
    }
    // The same cgroup tags fine with a good token afterwards.
    tag_with_file(&agent, cg.path(), "ci-good", &keys.file(&keys.token(|_| {}))).assert_success();
    assert_eq!(tags(&agent).len(), 1);
    tear_down(agent, vec![cg]);
}

#[test]
fn expired_identity_is_refused_at_connect_time_with_28000() {
    let keys = Keys::new();
    let Some((cluster, agent)) = start(&keys) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    // The agent refuses connections once `now >= exp` (no leeway at connect
    // time; the 30 s leeway applies to verification at tag time only).
    let exp = now() + 3;
    let token = keys.token(|c| {
        c.insert("exp".into(), json!(exp));
    });
    tag_with_file(&agent, cg.path(), "ci-short", &keys.file(&token)).assert_success();
    assert_eq!(tags(&agent).len(), 1);
    while now() < exp + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = psql_in(&cg, cluster, &info, "SELECT 1");
    assert!(!out.status.success(), "psql with an expired identity succeeded: {}", out.stdout);
    let expiry = rfc3339(exp);
    for needle in ["ci-short", "expired", expiry.as_str()] {
        assert!(out.stderr.contains(needle), "{needle:?} not in psql's error:\n{}", out.stderr);
    }
    let line = tokio_client_in(&cg, &info);
    let Some(db) = line.strip_prefix("DBERROR ") else { panic!("expected a database error, got {line}") };
    assert!(db.starts_with("28000 "), "{db}");
    assert!(db.contains("ci-short") && db.contains(&format!("expired at {expiry}")), "{db}");
    tear_down(agent, vec![cg]);
}

#[test]
fn masker_run_with_token_env() {
    let keys = Keys::new();
    let Some((cluster, agent)) = start(&keys) else { return };
    let info = cluster.app();
    let psql = cluster.bindir().join("psql");
    // A valid token: the command runs tagged (its psql goes through masker)
    // and its exit code is masker's.
    let before = agent.connections();
    let mut cmd = agent.cli();
    cmd.args(["run", "--identity", "ci-run", "--token-env", "TOK", "--", "sh", "-c"])
        .arg(r#""$0" -X -A -t -q -w -h "$1" -p "$2" -U "$3" -d "$4" -c 'SELECT 1' >/dev/null && exit 3"#)
        .arg(&psql)
        .args([&info.host, &info.port.to_string(), &info.user, &info.dbname])
        .env("TOK", keys.token(|_| {}))
        .env("PGPASSWORD", &info.password)
        .env("PGSSLMODE", "disable");
    let out = process::run(cmd, None, CLIENT_TIMEOUT).unwrap();
    assert_eq!(out.code(), Some(3), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert_eq!(agent.connections(), before + 1, "the command's psql did not go through masker");
    assert_eq!(tags(&agent), Vec::<Value>::new(), "masker run left its tag");

    // An invalid token: nothing runs.
    let marker = keys.dir.path().join("ran");
    let mut cmd = agent.cli();
    cmd.args(["run", "--identity", "ci-run", "--token-env", "TOK", "--", "touch"]).arg(&marker).env(
        "TOK",
        keys.token(|c| {
            c.insert("aud".into(), json!("someone-else"));
        }),
    );
    let out = process::run(cmd, None, CLIENT_TIMEOUT).unwrap();
    assert!(!out.status.success(), "masker run with a bad token succeeded");
    assert!(out.stderr.contains("token audience does not include"), "{}", out.stderr);
    assert!(!marker.exists(), "the command ran despite the bad token");
    assert_eq!(tags(&agent), Vec::<Value>::new());

    // No token in the variable at all: also nothing runs.
    let mut cmd = agent.cli();
    cmd.args(["run", "--identity", "ci-run", "--token-env", "MASKER_IT_UNSET_TOKEN", "--", "touch"])
        .arg(&marker)
        .env_remove("MASKER_IT_UNSET_TOKEN");
    let out = process::run(cmd, None, CLIENT_TIMEOUT).unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("MASKER_IT_UNSET_TOKEN is not set"), "{}", out.stderr);
    assert!(!marker.exists());
    tear_down(agent, vec![]);
}

/// Stops `agent` and starts a second agent with the same configuration
/// (same pin dir, admin socket, ports; read from the running agent's command
/// line), after `between` ran with the configuration file's path. Returns
/// the second agent's process once its admin socket answers.
fn restart(agent: &mut MaskerAgent, between: impl FnOnce(&std::path::Path)) -> LineChild {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid().unwrap())).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let config = args.iter().position(|a| a == "--config").map(|i| args[i + 1].clone()).expect("--config");
    agent.stop();
    between(std::path::Path::new(&config));
    let second = LineChild::spawn({
        let mut cmd = Command::new(masker_tests::MaskerProxy::binary());
        cmd.args(["agent", "--config", &config]);
        cmd
    })
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(agent.admin_socket()).is_err() {
        assert!(std::time::Instant::now() < deadline, "restarted agent: no admin socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    second
}

/// The expiry of a token-backed identity must survive an agent restart: a
/// new agent on the same pin directory keeps the tags (the BPF maps are
/// reused), so it must also keep refusing the identity after its token's
/// `exp`.
#[test]
fn expiry_survives_an_agent_restart() {
    let keys = Keys::new();
    let Some((cluster, mut agent)) = start(&keys) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    let exp = now() + 3;
    let token = keys.token(|c| {
        c.insert("exp".into(), json!(exp));
    });
    tag_with_file(&agent, cg.path(), "ci-restart", &keys.file(&token)).assert_success();
    let second = restart(&mut agent, |_| {});
    assert_eq!(tags(&agent).len(), 1, "the tag survives the restart");
    while now() < exp + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = psql_in(&cg, cluster, &info, "SELECT 1");
    let refused = !out.status.success();
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    let _ = second.finish(Duration::from_secs(15));
    assert!(refused, "an identity whose token expired connected after an agent restart: {}", out.stdout);
    assert!(out.stderr.contains("ci-restart") && out.stderr.contains("expired"), "{}", out.stderr);
    tear_down(agent, vec![cg]);
}

/// An agent that restarts without its saved identities (state lost) does not
/// trust the tags it finds in the pinned map: their connections are refused
/// with 28000 until the cgroup is tagged again.
#[test]
fn a_tag_without_an_identity_record_is_refused_after_a_restart() {
    let keys = Keys::new();
    let Some((cluster, mut agent)) = start(&keys) else { return };
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    agent.tag(cg.path(), "ci-plain");
    assert_eq!(psql_in(&cg, cluster, &info, "SELECT 1").stdout.trim(), "1");
    let second = restart(&mut agent, |config| {
        let state = config.parent().unwrap().join("state").join("identities.json");
        assert!(state.is_file(), "the agent saved its identities at {}", state.display());
        std::fs::remove_file(&state).unwrap();
    });
    let out = psql_in(&cg, cluster, &info, "SELECT 1");
    // Tagging again restores access.
    agent.tag(cg.path(), "ci-plain");
    let again = psql_in(&cg, cluster, &info, "SELECT 1");
    agent.untag(cg.path());
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    let _ = second.finish(Duration::from_secs(15));
    assert!(!out.status.success(), "a tag without an identity record connected: {}", out.stdout);
    assert!(out.stderr.contains("no identity record"), "{}", out.stderr);
    assert_eq!(again.stdout.trim(), "1", "re-tagged cgroup: {}", again.stderr);
    tear_down(agent, vec![cg]);
}
