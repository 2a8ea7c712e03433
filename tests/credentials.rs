//! Credentials the workload never holds (issue 6): masker logs in to the
//! server itself with a password it keeps, so psql and tokio-postgres
//! connect with no password at all; per-identity `targets`, `databases` and
//! `users` of the policy; CancelRequest with passthrough and injected
//! logins.
//!
//! Real PostgreSQL (scram-sha-256; one cluster with `ssl = on` and a
//! self-signed certificate made in its temp dir), real `masker proxy`, and
//! the real `masker agent` with eBPF for the tests that need a tagged
//! workload (they fail without root and BPF, unless
//! `MASKER_TESTS_ALLOW_SKIP=ebpf`). Password files
//! live in temp dirs only.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use masker_tests::agent::{AgentOptions, LineChild, MaskerAgent, TestCgroup};
use masker_tests::cluster::{APP_DB, APP_PASSWORD, APP_USER};
use masker_tests::process::{self, Output};
use masker_tests::psql::{Psql, psql_binary};
use masker_tests::skip;
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, within};

const LIMIT: Duration = Duration::from_secs(120);
/// The variable the proxy reads an injected password from.
const PW_ENV: &str = "MASKER_TEST_INJECTED_PW";
/// A wrong password the agent holds; must never show anywhere.
const WRONG_SECRET: &str = "Wr0ng-s3cret-7f3a9c";

/// A cluster with `ssl = on` (certificate made in its temp dir).
static SSL_CLUSTER: LazyLock<PgCluster> = LazyLock::new(|| {
    let cluster = PgCluster::start().expect("starting the ssl cluster");
    cluster.enable_ssl().expect("enabling ssl");
    cluster
});

#[derive(Clone, Copy, Debug)]
enum Source {
    File,
    Env,
}

/// Writes `password` to `dir/name` with `mode`.
fn password_file(dir: &Path, name: &str, password: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `masker proxy` to `upstream` with TLS `upstream_tls` towards it, TLS
/// towards clients (CA in `dir`), injecting user `app` with `password`
/// from `source`, plus `extra` arguments; audit in `dir/audit.jsonl`.
fn injecting_proxy(
    upstream: std::net::SocketAddr,
    upstream_tls: &str,
    source: Source,
    password: &str,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<MaskerProxy> {
    let mut args: Vec<String> = ["--upstream-tls", upstream_tls, "--credential-user", APP_USER, "--state-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("state").to_string_lossy().into_owned());
    args.push("--audit-file".into());
    args.push(dir.join("audit.jsonl").to_string_lossy().into_owned());
    let mut env = Vec::new();
    match source {
        Source::File => {
            args.push("--credential-password-file".into());
            args.push(password_file(dir, "app.pw", password, 0o600).to_string_lossy().into_owned());
        }
        Source::Env => {
            args.extend(["--credential-password-env".to_string(), PW_ENV.to_string()]);
            env.push((PW_ENV, password));
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    // The session module logs which SASL mechanism the login used.
    env.push(("MASKER_LOG", "info,masker_agent::session=debug"));
    MaskerProxy::start_with_env(upstream, &args, &env)
}

/// The login of `cluster`'s `app` at `addr`, with no password.
fn no_password(cluster: &PgCluster, addr: std::net::SocketAddr) -> ConnInfo {
    ConnInfo { password: String::new(), ..cluster.app().at(addr) }
}

/// A tokio-postgres configuration for `info` that holds no password.
fn tokio_config_without_password(info: &ConnInfo) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&info.host)
        .port(info.port)
        .user(&info.user)
        .dbname(&info.dbname)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// Connects without a password and drives the connection on a task.
async fn connect_without_password(info: &ConnInfo) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_config_without_password(info).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One row: the number of customers and whether the server's leg is TLS.
const PROBE: &str = "SELECT (SELECT count(*) FROM customers)::text || ' ' || \
                     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())::text";

fn customers(cluster: &PgCluster) -> String {
    Psql::new(&cluster.app()).command("SELECT count(*) FROM customers").run_ok().trim().to_string()
}

#[test]
fn psql_and_tokio_postgres_log_in_with_no_password() {
    for (cluster, tls, server_tls) in [
        (&*SSL_CLUSTER, "require", "true"),
        (&*SSL_CLUSTER, "verify-full", "true"),
        (PgCluster::shared(), "disable", "false"),
    ] {
        let count = customers(cluster);
        assert!(count.parse::<u64>().unwrap() > 0);
        for source in [Source::File, Source::Env] {
            let dir = tempfile::tempdir().unwrap();
            let extra: Vec<String> = if tls == "verify-full" {
                // The server's own certificate, copied into the test's dir.
                let cert = dir.path().join("server.pem");
                std::fs::copy(cluster.data_dir().join("server.crt"), &cert).unwrap();
                vec!["--upstream-ca".into(), cert.to_string_lossy().into_owned()]
            } else {
                Vec::new()
            };
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let mut proxy = injecting_proxy(cluster.addr(), tls, source, APP_PASSWORD, dir.path(), &extra)
                .unwrap_or_else(|e| panic!("masker proxy: {e:#}"));
            let info = no_password(cluster, proxy.addr());
            // psql without PGPASSWORD or a .pgpass, whatever its sslmode
            // towards masker (libpq's default channel_binding=prefer).
            for sslmode in ["disable", "prefer", "require"] {
                let out = Psql::new(&info).no_password().env("PGSSLMODE", sslmode).command(PROBE).run();
                assert!(
                    out.status.success(),
                    "tls={tls} {source:?} sslmode={sslmode}: {}\n{}",
                    out.stderr,
                    proxy.stderr()
                );
                assert_eq!(out.stdout.trim(), format!("{count} {server_tls}"), "tls={tls} {source:?} {sslmode}");
            }
            // The same psql straight to the server fails: it needs a password.
            let direct = Psql::new(&no_password(cluster, cluster.addr())).no_password().command("SELECT 1").run();
            assert!(!direct.status.success(), "the server let psql in without a password");
            assert!(direct.stderr.contains("password"), "{}", direct.stderr);

            let rt = runtime();
            rt.block_on(within(LIMIT, "tokio-postgres", async {
                let client =
                    connect_without_password(&info).await.unwrap_or_else(|e| panic!("tls={tls} {source:?}: {e:?}"));
                let row = client.query_one(PROBE, &[]).await.expect("probe");
                assert_eq!(row.get::<_, String>(0), format!("{count} {server_tls}"));
                // Extended protocol, parameters and a second statement.
                let n: i64 = client
                    .query_one("SELECT count(*) FROM customers WHERE id > $1", &[&0i64])
                    .await
                    .expect("extended query")
                    .get(0);
                assert_eq!(n.to_string(), count);
                let db: String =
                    client.query_one("SELECT current_user || '@' || current_database()", &[]).await.unwrap().get(0);
                assert_eq!(db, format!("{APP_USER}@{APP_DB}"));
            }));
            proxy.assert_running();
            // Over TLS the login is bound to the server's certificate
            // (SCRAM-SHA-256-PLUS, tls-server-end-point); in plain text the
            // server offers no -PLUS.
            let mechanism = if server_tls == "true" { "SCRAM-SHA-256-PLUS" } else { "SCRAM-SHA-256" };
            let log = proxy.stderr();
            assert!(log.contains(&format!("mechanism=\"{mechanism}\"")), "tls={tls}: {log}");
            assert!(!proxy.stderr().contains(APP_PASSWORD), "the password is in the proxy's log");
            let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
            assert!(audit.contains("\"session_start\""), "{audit}");
            assert!(!audit.contains(APP_PASSWORD), "the password is in the audit trail");
        }
    }
}

/// A cluster whose `pg_hba.conf` asks role `md5user` for md5 and role
/// `pwuser` for a cleartext password (everyone else: scram-sha-256).
static AUTH_CLUSTER: LazyLock<PgCluster> = LazyLock::new(|| {
    let cluster = PgCluster::start().expect("starting the auth cluster");
    cluster
        .run_sql_as_superuser(
            "postgres",
            "SET password_encryption = 'md5';\n\
             CREATE ROLE md5user LOGIN PASSWORD 'md5-user-pw';\n\
             SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE pwuser LOGIN PASSWORD 'pw-user-pw';\n",
        )
        .expect("roles");
    let hba = cluster.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    let new = format!("host all md5user 127.0.0.1/32 md5\nhost all pwuser 127.0.0.1/32 password\n{old}");
    std::fs::write(&hba, new).unwrap();
    cluster.run_sql_as_superuser("postgres", "SELECT pg_reload_conf();\n").expect("reload");
    // The postmaster has read the new pg_hba.conf once it shows its rules.
    masker_tests::poll(Duration::from_secs(30), "pg_hba.conf reloaded", || {
        let rules = cluster
            .run_sql_as_superuser(
                "postgres",
                "SELECT count(*) FROM pg_hba_file_rules WHERE 'md5user' = ANY(user_name);\n",
            )
            .ok()?;
        (rules.trim() == "1").then_some(())
    });
    cluster
});

#[test]
fn md5_and_cleartext_logins_are_injected_too() {
    let cluster = &*AUTH_CLUSTER;
    for (user, password) in [("md5user", "md5-user-pw"), ("pwuser", "pw-user-pw")] {
        let dir = tempfile::tempdir().unwrap();
        let file = password_file(dir.path(), "pw", password, 0o600);
        let args: Vec<String> = ["--credential-user", user, "--credential-password-file", &file.to_string_lossy()]
            .map(String::from)
            .to_vec();
        let proxy = MaskerProxy::start_with_args(cluster.addr(), &args).unwrap();
        let info = ConnInfo { user: user.into(), password: String::new(), ..cluster.app().at(proxy.addr()) };
        let out = Psql::new(&info).no_password().command("SELECT current_user").run();
        assert!(out.status.success(), "{user}: {}\n{}", out.stderr, proxy.stderr());
        assert_eq!(out.stdout.trim(), user);
        // Straight to the server the same login needs its password.
        let direct = Psql::new(&ConnInfo { user: user.into(), ..no_password(cluster, cluster.addr()) })
            .no_password()
            .command("SELECT 1")
            .run();
        assert!(direct.stderr.contains("no password supplied"), "{user}: {}", direct.stderr);
        assert!(!proxy.stderr().contains(password));
    }
}

#[test]
fn md5_and_cleartext_logins_are_relayed_in_passthrough() {
    let cluster = &*AUTH_CLUSTER;
    let proxy = MaskerProxy::start_with_args(cluster.addr(), &[]).unwrap();
    for (user, password) in [("md5user", "md5-user-pw"), ("pwuser", "pw-user-pw")] {
        let info = ConnInfo { user: user.into(), password: password.into(), ..cluster.app().at(proxy.addr()) };
        let out = Psql::new(&info).command("SELECT current_user").run();
        assert!(out.status.success(), "{user}: {}\n{}", out.stderr, proxy.stderr());
        assert_eq!(out.stdout.trim(), user);
        let wrong = ConnInfo { password: "wrong".into(), ..info.clone() };
        let out = Psql::new(&wrong).command("SELECT 1").run();
        assert!(out.stderr.contains("password authentication failed"), "{user}: {}", out.stderr);
    }
    assert!(!proxy.stderr().contains("md5-user-pw") && !proxy.stderr().contains("pw-user-pw"));
}

#[test]
fn another_database_user_is_refused_naming_the_allowed_one() {
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let proxy = injecting_proxy(cluster.addr(), "disable", Source::File, APP_PASSWORD, dir.path(), &[]).unwrap();
    let info = ConnInfo { user: "postgres".into(), ..no_password(cluster, proxy.addr()) };
    let rt = runtime();
    let err = rt.block_on(within(LIMIT, "wrong user", connect_without_password(&info))).expect_err("wrong user");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert_eq!(
        db.message(),
        format!(
            "masker: connections to {} from identity proxy log in as database user \"app\" with a password the \
             agent holds; connect as user \"app\" (no password needed), not \"postgres\"",
            cluster.addr()
        )
    );
    let out = Psql::new(&info).no_password().command("SELECT 1").run();
    assert!(!out.status.success());
    assert!(out.stderr.contains("connect as user \"app\""), "{}", out.stderr);
    assert!(!out.stderr.contains(APP_PASSWORD) && !proxy.stderr().contains(APP_PASSWORD));
}

#[test]
fn a_wrong_stored_password_is_the_servers_28p01_and_never_shown() {
    for (cluster, tls) in [(&*SSL_CLUSTER, "require"), (PgCluster::shared(), "disable")] {
        for source in [Source::File, Source::Env] {
            let dir = tempfile::tempdir().unwrap();
            let mut proxy = injecting_proxy(cluster.addr(), tls, source, WRONG_SECRET, dir.path(), &[]).unwrap();
            let info = no_password(cluster, proxy.addr());
            let rt = runtime();
            let err = rt.block_on(within(LIMIT, "wrong secret", connect_without_password(&info))).expect_err("login");
            let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
            assert_eq!(db.code().code(), "28P01", "{db:?}");
            assert_eq!(db.message(), "password authentication failed for user \"app\"");
            let out = Psql::new(&info).no_password().command("SELECT 1").run();
            assert!(!out.status.success());
            assert!(out.stderr.contains("password authentication failed for user \"app\""), "{}", out.stderr);
            proxy.assert_running();
            // The audit writer is asynchronous: wait for the session's end.
            let audit = masker_tests::poll(Duration::from_secs(20), "a session_end audit event", || {
                std::fs::read_to_string(dir.path().join("audit.jsonl")).ok().filter(|a| a.contains("\"session_end\""))
            });
            for (what, text) in [
                ("tokio-postgres error", format!("{err:?}")),
                ("psql stdout", out.stdout.clone()),
                ("psql stderr", out.stderr.clone()),
                ("proxy log", proxy.stderr()),
                ("audit", audit),
            ] {
                assert!(!text.contains(WRONG_SECRET), "{tls} {source:?}: the secret is in the {what}:\n{text}");
            }
        }
    }
}

#[test]
fn an_unsafe_password_file_stops_the_proxy_with_a_precise_error() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = PgCluster::shared().addr();
    let loose = password_file(dir.path(), "loose.pw", APP_PASSWORD, 0o644);
    let args = |file: &Path| -> Vec<String> {
        ["--credential-user", "app", "--credential-password-file", &file.to_string_lossy()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let err = MaskerProxy::start_with_args(upstream, &args(&loose)).err().expect("started with a 0644 password file");
    let expected = format!(
        "--credential-user app: password_file {f} has mode 0644; it must not be accessible to group or others \
         (chmod 600 {f})",
        f = loose.display()
    );
    assert!(format!("{err:#}").contains(&expected), "{err:#}");
    // Owned by someone else (nobody), even with mode 0600.
    let foreign = password_file(dir.path(), "foreign.pw", APP_PASSWORD, 0o600);
    std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    let err = MaskerProxy::start_with_args(upstream, &args(&foreign)).err().expect("started with a foreign file");
    assert!(format!("{err:#}").contains("is owned by uid 65534; it must be owned by root"), "{err:#}");
    // An unset variable.
    let env_args: Vec<String> = ["--credential-user", "app", "--credential-password-env", "MASKER_TEST_UNSET_VAR_XYZ"]
        .map(String::from)
        .to_vec();
    let err = MaskerProxy::start_with_args(upstream, &env_args).err().expect("started without the variable");
    assert!(format!("{err:#}").contains("password_env MASKER_TEST_UNSET_VAR_XYZ is not set"), "{err:#}");
}

#[test]
fn an_unsafe_password_file_stops_the_agent_with_a_precise_error() {
    if !skip::ebpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = PgCluster::shared().addr().to_string();
    let loose = password_file(dir.path(), "loose.pw", APP_PASSWORD, 0o644);
    let options = AgentOptions {
        targets: vec![target.clone()],
        extra_config: format!(
            "[[credential]]\ntarget = \"{target}\"\nuser = \"app\"\npassword_file = \"{}\"\n",
            loose.display()
        ),
        ..AgentOptions::default()
    };
    let err = MaskerAgent::start(&options).err().expect("the agent started with a 0644 password file");
    let expected = format!(
        "credential 1 (target {target}, user app): password_file {f} has mode 0644; it must not be accessible to \
         group or others (chmod 600 {f})",
        f = loose.display()
    );
    assert!(format!("{err:#}").contains(&expected), "{err:#}");
    // A credential for a target that is not configured.
    let options = AgentOptions {
        targets: vec![target.clone()],
        extra_config: "[[credential]]\ntarget = \"db.example:5432\"\nuser = \"app\"\npassword_env = \"X\"\n".into(),
        ..AgentOptions::default()
    };
    let err = MaskerAgent::start(&options).err().expect("the agent started with an unknown target");
    assert!(
        format!("{err:#}").contains(&format!(
            "credential 1 (target db.example:5432, user app): target \"db.example:5432\" is not one of the \
             configured targets ({target})"
        )),
        "{err:#}"
    );
}

// ---------------------------------------------------------------------------
// Per-identity targets, databases and users

const IDENTITY_POLICY: &str = r#"
version = 1
[defaults]
action = "allow"

[[identity]]
name = "ci-read"
databases = ["shop"]
users = ["app"]

[[identity]]
name = "ci-elsewhere"
targets = ["db.internal:5432"]
"#;

/// Denial events of an audit file, once there are `n` (the audit writer is
/// asynchronous: polled, with a deadline).
fn denials(audit: &Path, n: usize) -> Vec<serde_json::Value> {
    masker_tests::poll(Duration::from_secs(20), &format!("{n} denial event(s) in {}", audit.display()), || {
        let events: Vec<serde_json::Value> = std::fs::read_to_string(audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "denial")
            .collect();
        (events.len() >= n).then_some(events)
    })
}

fn policy_proxy(identity: &str, dir: &Path, extra: &[&str]) -> MaskerProxy {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, IDENTITY_POLICY).unwrap();
    let mut args: Vec<String> = ["--policy", &policy.to_string_lossy(), "--identity", identity, "--audit-file"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("audit.jsonl").to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    MaskerProxy::start_with_args(PgCluster::shared().addr(), &args).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn identity_may_connect_only_to_its_databases_users_and_targets() {
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = policy_proxy("ci-read", dir.path(), &[]);
    let allowed = cluster.app().at(proxy.addr());
    let rt = runtime();
    rt.block_on(within(LIMIT, "identity connect rules", async {
        let client = allowed.connect().await.expect("allowed database and user");
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        for (info, what) in [
            (allowed.with_db("postgres"), "database postgres"),
            (ConnInfo { user: "postgres".into(), password: "x".into(), ..allowed.clone() }, "database user postgres"),
        ] {
            let err = info.connect().await.map(|_| ()).expect_err(what);
            let db = err.as_db_error().unwrap_or_else(|| panic!("{what}: {err:?}"));
            assert_eq!(db.code().code(), "28000");
            assert_eq!(
                db.message(),
                format!("masker: identity ci-read may not connect to {what} (rule: identity ci-read)")
            );
        }
    }));
    let out = Psql::new(&allowed.with_db("postgres")).command("SELECT 1").run();
    assert!(!out.status.success());
    assert!(out.stderr.contains("masker: identity ci-read may not connect to database postgres"), "{}", out.stderr);
    proxy.assert_running();
    let events = denials(&dir.path().join("audit.jsonl"), 3);
    assert_eq!(events.len(), 3, "{events:#?}");
    for e in &events {
        assert_eq!(
            (e["class"].as_str(), e["rule"].as_str(), e["sqlstate"].as_str()),
            (Some("connect"), Some("identity"), Some("28000"))
        );
        assert_eq!(e["identity"], "ci-read");
    }
    assert!(events[0]["reason"].as_str().unwrap().contains("may not connect to database postgres"), "{events:#?}");

    // The target pattern names db.internal only: this upstream is refused.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = policy_proxy("ci-elsewhere", dir.path(), &[]);
    let out = Psql::new(&cluster.app().at(elsewhere.addr())).command("SELECT 1").run();
    assert!(!out.status.success());
    let expected = format!(
        "masker: identity ci-elsewhere may not connect to target {} (rule: identity ci-elsewhere)",
        cluster.addr()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    assert_eq!(denials(&dir.path().join("audit.jsonl"), 1).len(), 1);
}

/// The real agent: a tagged workload's psql logs in with no password (the
/// agent injects the credential), and its identity's `databases` refuse
/// another database (28000, audited as a denial).
#[test]
fn agent_injects_for_a_tagged_identity_and_enforces_its_databases() {
    if !skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, IDENTITY_POLICY).unwrap();
    // Named by host name: the credential is found through the name the
    // address the client connected to (127.0.0.1) was resolved from.
    let target = format!("localhost:{}", cluster.port());
    let pw = password_file(dir.path(), "app.pw", APP_PASSWORD, 0o600);
    let audit = dir.path().join("audit.jsonl");
    let options = AgentOptions {
        targets: vec![target.clone()],
        policy: Some(policy),
        extra_config: format!(
            "[audit]\nfile = \"{}\"\n\n[[credential]]\ntarget = \"{target}\"\nidentity = \"ci-*\"\nuser = \"app\"\n\
             password_file = \"{}\"\n",
            audit.display(),
            pw.display()
        ),
        ..AgentOptions::default()
    };
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("{e:#}"));
    let cg = TestCgroup::new().unwrap();
    agent.tag(cg.path(), "ci-read");
    let count = customers(cluster);
    // psql in the tagged cgroup, to the server's own address, no password.
    let psql_in = |db: &str| -> Output {
        let mut cmd = cg.command(psql_binary());
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-h", "127.0.0.1", "-p", &cluster.port().to_string()])
            .args(["-U", APP_USER, "-d", db, "-c", "SELECT count(*) FROM customers"])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent/masker-tests-no-pgpass")
            // One attempt per psql (sslmode=prefer would retry in plain
            // text after the refusal, auditing a second denial).
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10");
        process::run(cmd, None, LIMIT).unwrap()
    };
    let out = psql_in(APP_DB);
    assert!(out.status.success(), "{}\nagent:\n{}", out.stderr, agent.stderr());
    assert_eq!(out.stdout.trim(), count);
    let out = psql_in("postgres");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("masker: identity ci-read may not connect to database postgres (rule: identity ci-read)"),
        "{}",
        out.stderr
    );
    let events = denials(&audit, 1);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["class"], "connect");
    assert!(!agent.stderr().contains(APP_PASSWORD));
    assert!(!std::fs::read_to_string(&audit).unwrap().contains(APP_PASSWORD));
    let status = agent.status();
    assert!(!status.to_string().contains(APP_PASSWORD));
    assert!(status["counters"]["sessions_refused"].as_u64().unwrap() >= 1, "{status}");
}

/// A rotated password file takes effect at `masker policy reload` (as at
/// SIGHUP); a file that has become unsafe is refused there and the previous
/// password stays in use.
#[test]
fn agent_rereads_a_rotated_password_file_on_reload() {
    if !skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    cluster
        .run_sql_as_superuser(
            "postgres",
            "DROP ROLE IF EXISTS rotuser; CREATE ROLE rotuser LOGIN PASSWORD 'rot-old-pw';",
        )
        .expect("role");
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "rot.pw", "rot-old-pw", 0o600);
    let target = cluster.addr().to_string();
    let options = AgentOptions {
        targets: vec![target.clone()],
        extra_config: format!(
            "[[credential]]\ntarget = \"{target}\"\nidentity = \"rot-*\"\nuser = \"rotuser\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
        ..AgentOptions::default()
    };
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("{e:#}"));
    let cg = TestCgroup::new().unwrap();
    agent.tag(cg.path(), "rot-job");
    let login =
        ConnInfo { user: "rotuser".into(), password: String::new(), dbname: "postgres".into(), ..cluster.app() };
    let psql = || {
        Psql::via(cg.command(psql_binary()), &login)
            .no_password()
            .env("PGSSLMODE", "disable")
            .command("SELECT current_user")
            .run()
    };
    let out = psql();
    assert_eq!((out.status.success(), out.stdout.trim()), (true, "rotuser"), "{}\n{}", out.stderr, agent.stderr());
    // `masker status` shows where the agent logs in itself, never the password.
    let status = agent.status();
    let listed = &status["credentials"][0];
    assert_eq!((listed["target"].as_str(), listed["user"].as_str()), (Some(target.as_str()), Some("rotuser")));
    assert_eq!(listed["identity"], "rot-*");
    assert_eq!(listed["source"], format!("password_file {}", pw.display()));
    let text = agent.run_cli(&["status"]).stdout;
    assert!(text.contains("INJECTED CREDENTIALS") && text.contains("rotuser"), "{text}");
    assert!(!text.contains("rot-old-pw") && !status.to_string().contains("rot-old-pw"));

    // The password changes on the server: the held one no longer works.
    cluster.run_sql_as_superuser("postgres", "ALTER ROLE rotuser PASSWORD 'rot-new-pw';").expect("alter role");
    let out = psql();
    assert!(out.stderr.contains("password authentication failed"), "{}", out.stderr);
    // Rotated file + reload: new sessions log in again.
    std::fs::write(&pw, "rot-new-pw\n").unwrap();
    let reload = agent.run_cli(&["policy", "reload"]);
    assert_eq!(reload.code(), Some(0), "{}", reload.stderr);
    assert!(reload.stdout.contains("1 credential password(s) re-read"), "{}", reload.stdout);
    let out = psql();
    assert_eq!(out.stdout.trim(), "rotuser", "{}\n{}", out.stderr, agent.stderr());

    // A file that became readable by others is refused; the previous password stays.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let reload = agent.run_cli(&["policy", "reload"]);
    assert_ne!(reload.code(), Some(0));
    assert!(
        reload.stderr.contains("has mode 0644") && reload.stderr.contains("keep their previous password"),
        "{}",
        reload.stderr
    );
    assert_eq!(psql().stdout.trim(), "rotuser");
    for secret in ["rot-old-pw", "rot-new-pw"] {
        assert!(!agent.stderr().contains(secret), "{secret} in the agent's log");
        assert!(!reload.stderr.contains(secret));
    }
    cluster.run_sql_as_superuser("postgres", "DROP ROLE rotuser;").expect("drop role");
}

// ---------------------------------------------------------------------------
// CancelRequest

/// Starts `SELECT pg_sleep(30)` on `client`, waits until the server runs
/// it, cancels it with the client's cancel token (which connects to the
/// address the client connected to: masker) and checks it ends with 57014.
/// `watcher` is another session of the same role (it sees the query in
/// `pg_stat_activity`).
async fn cancel_sleep(client: &tokio_postgres::Client, watcher: &tokio_postgres::Client) {
    let token = client.cancel_token();
    let marker = format!("credentials_cancel_{}", std::process::id());
    let sql = format!("SELECT pg_sleep(30) AS {marker}");
    let sleep = client.simple_query(&sql);
    let cancel = async {
        masker_tests::wait_until_running(watcher, &marker).await;
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request");
    };
    let (result, ()) = tokio::join!(sleep, cancel);
    let err = result.map(|_| ()).expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err:?}");
    // The session is still usable.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn cancel_request_cancels_the_query_with_passthrough_and_injection() {
    let cluster = PgCluster::shared();
    let rt = runtime();
    // Passthrough: the client's own password.
    let passthrough = MaskerProxy::start(cluster.addr(), None);
    rt.block_on(within(LIMIT, "cancel passthrough", async {
        let client = cluster.app().at(passthrough.addr()).connect().await.expect("connect");
        let watcher = cluster.app().at(passthrough.addr()).connect().await.expect("connect");
        cancel_sleep(&client, &watcher).await;
    }));
    // Injection, over TLS to the server.
    let dir = tempfile::tempdir().unwrap();
    let ssl = &*SSL_CLUSTER;
    let mut injecting = injecting_proxy(ssl.addr(), "require", Source::Env, APP_PASSWORD, dir.path(), &[]).unwrap();
    rt.block_on(within(LIMIT, "cancel injected", async {
        let client = connect_without_password(&no_password(ssl, injecting.addr())).await.expect("connect");
        let watcher = connect_without_password(&no_password(ssl, injecting.addr())).await.expect("connect");
        cancel_sleep(&client, &watcher).await;
    }));
    injecting.assert_running();
}

// A tokio-postgres client process for the agent (cgroup membership is per
// process, so the test binary is re-executed inside the tagged cgroup). It
// connects (with the password in the spec, or none), cancels a
// `pg_sleep(30)` and prints `CLIENT-OK` or `CLIENT-ERROR ...`.

const CLIENT_ENV: &str = "MASKER_IT_CREDENTIALS_CLIENT";

/// Not a test of its own (hence ignored): the body of the client process,
/// run by the tests with [`CLIENT_ENV`] set and `--ignored`; fails without.
#[test]
#[ignore = "the body of a client process the other tests start, not a test"]
fn cancel_client_process() {
    let spec = std::env::var(CLIENT_ENV).unwrap_or_else(|_| {
        panic!("not a test: the body of a client process, run with {CLIENT_ENV} set by the other tests")
    });
    let parts: Vec<&str> = spec.split(' ').collect();
    let [host, port, password] = parts[..] else { panic!("bad {CLIENT_ENV}: {spec:?}") };
    let info = ConnInfo {
        host: host.into(),
        port: port.parse().expect("port"),
        user: APP_USER.into(),
        password: password.trim_start_matches('-').into(),
        dbname: APP_DB.into(),
    };
    let result = std::panic::catch_unwind(|| {
        runtime().block_on(async {
            let connect = || async {
                if info.password.is_empty() { connect_without_password(&info).await } else { info.connect().await }
            };
            let client = connect().await.unwrap_or_else(|e| panic!("connect: {e:?}"));
            let watcher = connect().await.unwrap_or_else(|e| panic!("connect: {e:?}"));
            cancel_sleep(&client, &watcher).await;
        })
    });
    match result {
        Ok(()) => println!("CLIENT-OK"),
        Err(_) => println!("CLIENT-ERROR (see the panic above)"),
    }
}

/// The real agent: a tagged workload cancels its own query through the
/// redirect, with its own password (passthrough, identity `ci-pass`) and
/// with the agent's credential (identity `ci-inject`).
#[test]
fn agent_forwards_cancel_requests_in_both_modes() {
    if !skip::ebpf() {
        return;
    }
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let target = cluster.addr().to_string();
    let pw = password_file(dir.path(), "app.pw", APP_PASSWORD, 0o600);
    let options = AgentOptions {
        targets: vec![target.clone()],
        extra_config: format!(
            "[[credential]]\ntarget = \"{target}\"\nidentity = \"ci-inject\"\nuser = \"app\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
        ..AgentOptions::default()
    };
    let agent = MaskerAgent::start(&options).unwrap_or_else(|e| panic!("{e:#}"));
    for (identity, password) in [("ci-pass", APP_PASSWORD), ("ci-inject", "-")] {
        let cg = TestCgroup::new().unwrap();
        agent.tag(cg.path(), identity);
        let before = agent.status()["counters"]["cancel_requests"].as_u64().unwrap();
        let mut cmd = cg.command(std::env::current_exe().expect("the test binary"));
        cmd.args(["cancel_client_process", "--exact", "--ignored", "--nocapture", "--test-threads=1", "-q"])
            .env(CLIENT_ENV, format!("127.0.0.1 {} {password}", cluster.port()));
        let mut child = LineChild::spawn(cmd).expect("spawn the client");
        let line = child.line_starting("CLIENT-", LIMIT).expect("client result");
        let (_, stderr) = child.finish(LIMIT).unwrap();
        assert_eq!(line, "OK", "{identity}: {stderr}\nagent:\n{}", agent.stderr());
        let after = agent.status()["counters"]["cancel_requests"].as_u64().unwrap();
        assert_eq!(after, before + 1, "{identity}: the cancel did not go through the agent");
    }
    assert!(!agent.stderr().contains(APP_PASSWORD));
}
