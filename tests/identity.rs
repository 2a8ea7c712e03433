//! Workload identity backed by OIDC tokens, end to end: the real `masker
//! agent` with `[[issuer]]` entries whose keys the test makes (ES256, P-256
//! keys from rcgen, tokens signed with jsonwebtoken) and serves from a JWKS
//! file or a local HTTPS server (a test CA in the temp dir), the real
//! `masker tag --token-file` / `masker run --token-env` CLI, real cgroups and
//! a real PostgreSQL.
//!
//! Covered: a valid token tags and the cgroup's connections go through
//! masker; each bad token (expired, not yet valid, wrong issuer, wrong
//! audience, bad signature, unknown key) is a CLI error naming the failed
//! check and tags nothing; an identity whose token expires is refused at
//! connect time with SQLSTATE 28000 naming the identity and the expiry;
//! `masker run` with a valid token runs the command (its exit code kept) and
//! with an invalid one runs nothing; keys over HTTPS are cached, refetched
//! once on rotation, refetched at most once per interval under a flood of
//! unknown key ids, and every fetch failure is a precise error; policy rules
//! with `claims` apply to the matching verified token only, and audit
//! `session_start` events carry the issuer and the selected claims.
//!
//! Keys, certificates and tokens live in temp dirs only. Needs root and BPF:
//! fails otherwise, unless `MASKER_TESTS_ALLOW_SKIP=ebpf`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup, test_client};
use masker_tests::process::{self, Output};
use masker_tests::psql::Psql;
use masker_tests::skip;
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

/// Not a test of its own (hence ignored): the body of the client process,
/// run by the tests with [`CLIENT_ENV`] set and `--ignored`; fails without.
#[test]
#[ignore = "the body of a client process the other tests start, not a test"]
fn identity_client_process() {
    let spec = std::env::var(CLIENT_ENV).unwrap_or_else(|_| {
        panic!("not a test: the body of a client process, run with {CLIENT_ENV} set by the other tests")
    });
    let info = ConnInfo::from_spec(&spec).unwrap_or_else(|| panic!("bad {CLIENT_ENV}: {spec:?}"));
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
    let wrapper = cg.command(std::env::current_exe().expect("the test binary"));
    let mut child = test_client(wrapper, "identity_client_process", CLIENT_ENV, info).expect("spawn the client");
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
    /// The public part of `key` as a JWK with kid "k1".
    jwk: Value,
    other: EncodingKey,
    tokens: std::cell::Cell<u32>,
}

/// A new ES256 key: its signing half and its public half as a JWK under `kid`.
fn es256_key(kid: &str) -> (EncodingKey, Value) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    (EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(), jwk)
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::Builder::new().prefix("masker-identity-").tempdir().unwrap();
        let (key, jwk) = es256_key("k1");
        let (other, _) = es256_key("k1");
        std::fs::write(dir.path().join("jwks.json"), json!({"keys": [jwk]}).to_string()).unwrap();
        Keys { key, jwk, other, dir, tokens: std::cell::Cell::new(0) }
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
        self.token_from(ISSUER, key, kid, edit)
    }

    /// A token of `issuer` signed with `key` under `kid`.
    fn token_from(
        &self,
        issuer: &str,
        key: &EncodingKey,
        kid: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> String {
        let now = now();
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), json!(issuer));
        claims.insert("aud".into(), json!(AUDIENCE));
        claims.insert("sub".into(), json!("repo:acme/shop:ref:refs/heads/main"));
        claims.insert("repository".into(), json!("acme/shop"));
        claims.insert("ref".into(), json!("refs/heads/main"));
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
    if !skip::ebpf() {
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
    let wrapper = cg.command(cluster.bindir().join("psql"));
    Psql::via(wrapper, info).env("PGSSLMODE", "disable").command(sql).timeout(CLIENT_TIMEOUT).run()
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

// ---------------------------------------------------------------------------
// JWKS over HTTPS

/// The issuer whose keys the agent fetches from [`JwksServer`].
const HTTPS_ISSUER: &str = "https://ci-https.example.test";
/// `jwks_min_fetch_interval_secs` of that issuer in the tests.
const MIN_FETCH_SECS: u64 = 3;
/// `jwks_cache_secs` of that issuer in the tests.
const CACHE_SECS: u64 = 8;

/// A local HTTPS server answering every `GET` with the JWKS it is given,
/// counting the requests. Its certificate (for 127.0.0.1) is issued by a test
/// CA whose certificate is written into `dir` (the agent's `jwks_ca_file`).
struct JwksServer {
    addr: std::net::SocketAddr,
    ca_file: PathBuf,
    jwks: std::sync::Arc<std::sync::Mutex<String>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl JwksServer {
    fn start(dir: &Path) -> JwksServer {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "masker test JWKS CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let ca_file = dir.join("jwks-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = std::sync::Arc::new(std::sync::Mutex::new(String::from("{\"keys\": []}")));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (jwks2, requests2) = (jwks.clone(), requests.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, jwks, requests) = (acceptor.clone(), jwks2.clone(), requests2.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if !head.starts_with(b"GET ") {
                        return;
                    }
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let path = head[4..].split(|b| *b == b' ').next().unwrap_or_default().to_vec();
                    let ok = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    // Misbehaving issuers, by path (see `jwks_fetch_failures_are_precise`).
                    let response = match &path[..] {
                        b"/redirect" => "HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example.test/jwks\r\n\
                                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string(),
                        b"/missing" => {
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                        }
                        b"/not-json" => ok("<html>login</html>"),
                        b"/huge" => ok(&format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20))),
                        b"/huge-chunked" => {
                            let chunk = "x".repeat(64 << 10);
                            let mut r = String::from(
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                            );
                            for _ in 0..32 {
                                r.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                            }
                            r + "0\r\n\r\n"
                        }
                        b"/stall" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        _ => ok(&jwks.lock().unwrap().clone()),
                    };
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        JwksServer { addr, ca_file, jwks, requests, runtime: Some(runtime) }
    }

    fn url(&self) -> String {
        format!("https://{}/.well-known/jwks", self.addr)
    }

    /// Serves `keys` from now on.
    fn serve(&self, keys: &[&Value]) {
        *self.jwks.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops listening: connections to its port are refused from now on.
    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[[issuer]]` body for an issuer whose keys are at `url`.
fn url_issuer(issuer: &str, url: &str, ca_file: &Path) -> String {
    format!(
        "issuer = {issuer:?}\naudience = {AUDIENCE:?}\njwks_url = {url:?}\njwks_ca_file = {:?}\n\
         jwks_min_fetch_interval_secs = {MIN_FETCH_SECS}\njwks_cache_secs = {CACHE_SECS}\n",
        ca_file.to_string_lossy()
    )
}

/// Waits until at least `MIN_FETCH_SECS` have passed since `since`.
fn wait_fetch_interval(since: std::time::Instant) {
    let until = since + Duration::from_secs(MIN_FETCH_SECS) + Duration::from_millis(200);
    let now = std::time::Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

/// Keys fetched over HTTPS: the first tag fetches, the next one with the
/// same `kid` uses the cache, a rotated key costs exactly one refetch, a
/// flood of unknown key ids stays within one fetch per interval, a key the
/// issuer does not serve is "unknown", and an unreachable issuer is a
/// precise fetch error that tags nothing.
#[test]
fn jwks_over_https_is_cached_refetched_and_bounded() {
    let keys = Keys::new();
    let mut server = JwksServer::start(keys.dir.path());
    server.serve(&[&keys.jwk]);
    // An issuer whose URL nothing answers (a port bound, then released).
    let down_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down_url = format!("https://127.0.0.1:{down_port}/jwks");
    if !skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    let mut options = AgentOptions::targets(&[cluster.addr()]);
    options.issuer_tables = vec![
        url_issuer(HTTPS_ISSUER, &server.url(), &server.ca_file),
        url_issuer("https://down.example.test", &down_url, &server.ca_file),
    ];
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    let info = cluster.app();
    let cg = TestCgroup::new().expect("cgroup");
    let tag = |cg: &TestCgroup, key: &EncodingKey, kid: &str| {
        tag_with_file(&agent, cg.path(), "ci-https", &keys.file(&keys.token_from(HTTPS_ISSUER, key, kid, |_| {})))
    };
    assert_eq!(server.requests(), 0, "the agent fetched keys before a token needed them");

    // First token: one fetch; the tagged cgroup's connections go through.
    let first_fetch = std::time::Instant::now();
    tag(&cg, &keys.key, "k1").assert_success();
    assert_eq!(server.requests(), 1);
    let before = agent.connections();
    assert_eq!(psql_in(&cg, cluster, &info, "SELECT 1").stdout.trim(), "1");
    assert_eq!(agent.connections(), before + 1);
    // Same kid again: from the cache.
    tag(&cg, &keys.key, "k1").assert_success();
    assert_eq!(server.requests(), 1, "a known kid was fetched again");

    // The issuer rotates: a token under the new kid costs exactly one fetch.
    let (k2, jwk2) = es256_key("k2");
    server.serve(&[&keys.jwk, &jwk2]);
    wait_fetch_interval(first_fetch);
    let rotated_at = std::time::Instant::now();
    tag(&cg, &k2, "k2").assert_success();
    assert_eq!(server.requests(), 2, "a rotated key needs exactly one refetch");
    tag(&cg, &k2, "k2").assert_success();
    assert_eq!(server.requests(), 2);

    // A flood of tokens with unknown key ids (20 at once): each is refused
    // as an unknown key, and the issuer sees at most one request per interval.
    let (k3, _) = es256_key("k3");
    let outputs: Vec<(String, Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let kid = format!("flood-{i}");
                let file = keys.file(&keys.token_from(HTTPS_ISSUER, &k3, &kid, |_| {}));
                let cg_path = cg.path().to_path_buf();
                let agent = &agent;
                s.spawn(move || {
                    let out = tag_with_file(agent, &cg_path, "ci-flood", &file);
                    (kid, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Fetches start at most once per interval; the last one was at `rotated_at`.
    let window_secs = rotated_at.elapsed().as_secs();
    for (kid, out) in &outputs {
        assert!(!out.status.success(), "a token with unknown kid {kid} tagged");
        let expected = format!("token key id \"{kid}\" is not in the JWKS of {HTTPS_ISSUER}");
        assert!(out.stderr.contains(&expected), "{kid}: expected {expected:?} in:\n{}", out.stderr);
    }
    let flood_requests = server.requests() - 2;
    assert!(
        flood_requests as u64 <= window_secs / MIN_FETCH_SECS,
        "20 unknown kids within {window_secs} s of the last fetch caused {flood_requests} fetches"
    );
    let tagged = tags(&agent);
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["identity"], json!("ci-https"), "a flood token replaced the tag");

    // A key the issuer does not serve, once the interval has passed: one
    // refetch, then the "unknown key" error, nothing tagged.
    std::thread::sleep(Duration::from_secs(MIN_FETCH_SECS) + Duration::from_millis(200));
    let before = server.requests();
    let (k9, _) = es256_key("k9");
    let k9_at = std::time::Instant::now();
    let cg2 = TestCgroup::new().expect("cgroup");
    let out = tag(&cg2, &k9, "k9");
    assert!(!out.status.success(), "a token signed by an unserved key tagged");
    assert!(
        out.stderr.contains(&format!("token key id \"k9\" is not in the JWKS of {HTTPS_ISSUER}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("was not tagged"), "{}", out.stderr);
    assert_eq!(server.requests(), before + 1, "an unknown kid after the interval refetches exactly once");
    assert_eq!(tags(&agent).len(), 1);

    // An issuer that never answered: the fetch error names the URL and the
    // reason; nothing is tagged.
    let out = tag_with_file(
        &agent,
        cg2.path(),
        "ci-down",
        &keys.file(&keys.token_from("https://down.example.test", &keys.key, "k1", |_| {})),
    );
    assert!(!out.status.success(), "a token of an unreachable issuer tagged");
    let expected = format!("jwks fetch from {down_url} failed: connect to 127.0.0.1:{down_port}: Connection refused");
    assert!(out.stderr.contains(&expected), "expected {expected:?} in:\n{}", out.stderr);
    assert!(out.stderr.contains("was not tagged"), "{}", out.stderr);

    // The issuer goes down: keys already fetched keep verifying, from the
    // cache and, once it is stale, still (the failed refetch is logged); a
    // new kid is a fetch error, not a silent "unknown key".
    server.stop();
    let requests = server.requests();
    tag(&cg2, &k2, "k2").assert_success();
    std::thread::sleep(
        (k9_at + Duration::from_millis(CACHE_SECS * 1000 + 200)).saturating_duration_since(std::time::Instant::now()),
    );
    let stale_at = std::time::Instant::now();
    tag(&cg2, &k2, "k2").assert_success();
    assert!(agent.stderr().contains("JWKS fetch failed, using the cached keys"), "{}", agent.stderr());
    wait_fetch_interval(stale_at);
    let out = tag(&cg2, &k3, "k-new");
    assert!(!out.status.success());
    let expected = format!("jwks fetch from {} failed: connect to {}", server.url(), server.addr);
    assert!(out.stderr.contains(&expected), "expected {expected:?} in:\n{}", out.stderr);
    assert_eq!(server.requests(), requests, "the stopped server answered");
    assert_eq!(tags(&agent).len(), 2);
    tear_down(agent, vec![cg, cg2]);
}

// ---------------------------------------------------------------------------
// Claims in policy rules

const CLAIMS_POLICY: &str = r#"version = 1
[defaults]
action = "detect"

# Jobs on the main branch of acme/shop read customer emails as they are.
[[rule]]
name = "main-reads-emails"
claims = { repository = "acme/shop", ref = "refs/heads/main" }
columns = ["public.customers.email"]
action = "allow"

# Everyone else: the domain only.
[[rule]]
name = "emails"
columns = ["public.customers.email"]
action = "email"
"#;

/// Lines of the audit file that are `session_start` events, once there are
/// at least `n` of them.
fn session_starts(file: &Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("an audit line is JSON"))
            .filter(|e| e["event"] == "session_start")
            .collect();
        if events.len() >= n {
            return events;
        }
        assert!(std::time::Instant::now() < deadline, "{} session_start events, expected {n}:\n{text}", events.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two jobs whose tokens differ only in `ref`: a rule with
/// `claims = { ref = "refs/heads/main", ... }` lets the main job read a
/// seeded email as it is, the feature job gets it masked, and so does a
/// cgroup tagged with the same identity but no token (fail closed). The
/// audit `session_start` events carry the issuer and the selected claims.
#[test]
fn policy_rules_match_verified_claims() {
    let keys = Keys::new();
    if !skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    let policy = keys.dir.path().join("policy.toml");
    std::fs::write(&policy, CLAIMS_POLICY).unwrap();
    let audit = keys.dir.path().join("audit.jsonl");
    let info = cluster.app();
    let mut options = AgentOptions::targets(&[cluster.addr()]);
    options.issuers = vec![(ISSUER.into(), AUDIENCE.into(), keys.jwks_file())];
    options.policy = Some(policy);
    options.catalog = Some((info.user.clone(), info.password.clone()));
    options.audit_file = Some(audit.clone());
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));

    let sql = "SELECT email FROM customers WHERE id = 1";
    // The seeded value, read directly (this process is not tagged).
    let mut direct = Command::new(cluster.bindir().join("psql"));
    direct
        .args(["-X", "-A", "-t", "-q", "-w", "-h", &info.host, "-p", &info.port.to_string(), "-U", &info.user])
        .args(["-d", &info.dbname, "-c", sql])
        .env("PGPASSWORD", &info.password)
        .env("PGSSLMODE", "disable");
    let before = agent.connections();
    let raw = process::run(direct, None, CLIENT_TIMEOUT).unwrap();
    raw.assert_success();
    assert_eq!(agent.connections(), before, "the direct read went through masker");
    let raw = raw.stdout.trim().to_string();
    let (_, domain) = raw.split_once('@').expect("a seeded email");
    let masked = format!("****@{domain}");

    let (main, feature, plain) =
        (TestCgroup::new().expect("cgroup"), TestCgroup::new().expect("cgroup"), TestCgroup::new().expect("cgroup"));
    tag_with_file(&agent, main.path(), "ci-job", &keys.file(&keys.token(|_| {}))).assert_success();
    let feature_token = keys.token(|c| {
        c.insert("ref".into(), json!("refs/heads/feature"));
    });
    tag_with_file(&agent, feature.path(), "ci-job", &keys.file(&feature_token)).assert_success();
    agent.tag(plain.path(), "ci-job");

    let read = |cg: &TestCgroup| {
        let before = agent.connections();
        let out = psql_in(cg, cluster, &info, sql);
        out.assert_success();
        assert_eq!(agent.connections(), before + 1, "the read did not go through masker");
        out.stdout.trim().to_string()
    };
    assert_eq!(read(&main), raw, "the main-branch job should read the email as it is");
    assert_eq!(read(&feature), masked, "the feature-branch job must not read the raw email");
    assert_eq!(read(&plain), masked, "an identity without a verified token must not match a claims rule");

    let starts = session_starts(&audit, 3);
    let by_cgroup = |cg: &TestCgroup| {
        let path =
            format!("/{}", cg.path().strip_prefix(masker_tests::agent::cgroup_v2_root().unwrap()).unwrap().display());
        starts
            .iter()
            .find(|e| e["cgroup_path"] == json!(path))
            .unwrap_or_else(|| panic!("no session_start for {path}: {starts:#?}"))
            .clone()
    };
    let e = by_cgroup(&main);
    assert_eq!(e["identity"], json!("ci-job"));
    assert_eq!(e["issuer"], json!(ISSUER));
    assert_eq!(
        e["claims"],
        json!({"sub": "repo:acme/shop:ref:refs/heads/main", "repository": "acme/shop", "ref": "refs/heads/main"})
    );
    assert_eq!(by_cgroup(&feature)["claims"]["ref"], json!("refs/heads/feature"));
    let e = by_cgroup(&plain);
    assert_eq!((&e["issuer"], &e["claims"]), (&Value::Null, &Value::Null), "{e}");
    tear_down(agent, vec![main, feature, plain]);
}

/// Every way a fetch can fail is a tag error naming the URL and the reason,
/// and tags nothing: a redirect (not followed), an HTTP error, an answer that
/// is not a JWKS, one larger than 1 MiB (announced or streamed), a server
/// that never answers (5 s timeout), and a certificate the agent does not
/// trust.
#[test]
fn jwks_fetch_failures_are_precise() {
    let keys = Keys::new();
    let server = JwksServer::start(keys.dir.path());
    server.serve(&[&keys.jwk]);
    if !skip::ebpf() {
        return;
    }
    let base = format!("https://{}", server.addr);
    let cases = [
        ("redirect", "HTTP 302 Found, redirect to https://elsewhere.example.test/jwks not followed"),
        ("missing", "HTTP 404 Not Found"),
        ("not-json", "the answer is not a JWKS: expected value at line 1 column 1"),
        ("huge", "the answer is larger than 1048576 bytes"),
        ("huge-chunked", "the answer is larger than 1048576 bytes"),
        ("stall", "no complete answer within 5 s"),
        ("untrusted", "TLS: invalid peer certificate: UnknownIssuer"),
    ];
    let cluster = PgCluster::shared();
    let mut options = AgentOptions::targets(&[cluster.addr()]);
    options.issuer_tables = cases
        .iter()
        .map(|(name, _)| {
            let issuer = format!("https://{name}.example.test");
            if *name == "untrusted" {
                // No jwks_ca_file: the system bundle does not know the test CA.
                format!("issuer = {issuer:?}\naudience = {AUDIENCE:?}\njwks_url = \"{base}/jwks\"\n")
            } else {
                url_issuer(&issuer, &format!("{base}/{name}"), &server.ca_file)
            }
        })
        .collect();
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("starting masker agent: {e:#}"));
    let cg = TestCgroup::new().expect("cgroup");
    for (name, reason) in cases {
        let issuer = format!("https://{name}.example.test");
        let token = keys.token_from(&issuer, &keys.key, "k1", |_| {});
        let out = tag_with_file(&agent, cg.path(), "ci-fail", &keys.file(&token));
        assert!(!out.status.success(), "{name}: tagged");
        let url = if name == "untrusted" { format!("{base}/jwks") } else { format!("{base}/{name}") };
        let expected = format!("jwks fetch from {url} failed: {reason}");
        assert!(out.stderr.contains(&expected), "{name}: expected {expected:?} in:\n{}", out.stderr);
        assert!(out.stderr.contains("was not tagged"), "{name}: {}", out.stderr);
    }
    assert_eq!(tags(&agent), Vec::<Value>::new());
    tear_down(agent, vec![cg]);
}
