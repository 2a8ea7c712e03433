//! TLS on both legs of `masker proxy`: towards the client with certificates
//! from masker's own CA (`--state-dir`), towards the server per
//! `--upstream-tls`. Real psql in every sslmode, a real PostgreSQL with
//! `ssl=on` and a self-signed certificate made in the test's temp dir.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use masker_tests::psql::Psql;
use masker_tests::{MaskerProxy, PgCluster};
use tempfile::TempDir;

/// A temp state dir holding masker's CA, and the CA certificate exported
/// with `masker ca export` into `ca.pem` next to it.
struct Ca {
    dir: TempDir,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::Builder::new().prefix("masker-tls-").tempdir().unwrap();
        let out = Command::new(MaskerProxy::binary())
            .args(["ca", "export", "--state-dir"])
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ca export: {}", String::from_utf8_lossy(&out.stderr));
        let pem = String::from_utf8(out.stdout).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
        Ca { dir }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn pem(&self) -> String {
        self.dir.path().join("ca.pem").to_string_lossy().into_owned()
    }
}

fn proxy(upstream: std::net::SocketAddr, ca: &Ca, extra: &[&str]) -> MaskerProxy {
    let mut args = vec!["--state-dir".to_owned(), ca.state_dir().to_string_lossy().into_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    MaskerProxy::start_with_args(upstream, &args).unwrap_or_else(|e| panic!("masker proxy: {e:#}"))
}

/// psql to `host` (a name or IP) at the proxy's port with `sslmode`,
/// trusting `rootcert`.
fn psql(proxy: &MaskerProxy, host: &str, sslmode: &str, rootcert: &str, sql: &str) -> masker_tests::process::Output {
    let mut info = PgCluster::shared().app().at(proxy.addr());
    info.host = host.to_owned();
    Psql::new(&info).env("PGSSLMODE", sslmode).env("PGSSLROOTCERT", rootcert).command(sql).run()
}

const TLS_STATE: &str = "SELECT 'ok'";

#[test]
fn psql_works_in_every_sslmode_with_the_ca_trusted() {
    let ca = Ca::new();
    let mut proxy = proxy(PgCluster::shared().addr(), &ca, &[]);
    for host in ["127.0.0.1", "localhost"] {
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let out = psql(&proxy, host, mode, &ca.pem(), TLS_STATE);
            assert!(out.status.success(), "sslmode={mode} host={host}: {}\n{}", out.stderr, proxy.stderr());
            assert_eq!(out.stdout.trim(), "ok");
            let info = psql(&proxy, host, mode, &ca.pem(), "\\conninfo");
            let encrypted = info.stdout.contains("SSL connection");
            assert_eq!(encrypted, !matches!(mode, "disable" | "allow"), "sslmode={mode}: {}", info.stdout);
        }
    }
    proxy.assert_running();
}

#[test]
fn ca_is_created_once_readable_by_root_only() {
    let ca = Ca::new();
    let state = ca.state_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca.key")), 0o600);
    assert_eq!(std::fs::metadata(state.join("ca.key")).unwrap().uid(), unsafe_free_uid());
    // The proxy uses the CA that was exported.
    let before = std::fs::read(state.join("ca.crt")).unwrap();
    let proxy = proxy(PgCluster::shared().addr(), &ca, &[]);
    let out = psql(&proxy, "127.0.0.1", "verify-full", &ca.pem(), TLS_STATE);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(std::fs::read(state.join("ca.crt")).unwrap(), before);
}

/// Our own uid, read from /proc (the test crate forbids unsafe code).
fn unsafe_free_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[test]
fn verify_full_fails_without_the_ca_and_for_another_name() {
    let ca = Ca::new();
    let other = Ca::new();
    let proxy = proxy(PgCluster::shared().addr(), &ca, &[]);
    let out = psql(&proxy, "127.0.0.1", "verify-full", &other.pem(), TLS_STATE);
    assert!(!out.status.success());
    assert!(out.stderr.contains("certificate verify failed"), "{}", out.stderr);
    // sslmode=require does not check the certificate (when no root
    // certificate file exists; with one, libpq behaves as verify-ca).
    let out = psql(&proxy, "127.0.0.1", "require", "/nonexistent/root.crt", TLS_STATE);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn without_state_dir_ssl_is_declined() {
    let proxy = MaskerProxy::start(PgCluster::shared().addr(), None);
    let info = PgCluster::shared().app().at(proxy.addr());
    let out = Psql::new(&info).env("PGSSLMODE", "require").command(TLS_STATE).run();
    assert!(!out.status.success());
    assert!(out.stderr.contains("server does not support SSL"), "{}", out.stderr);
}

/// A cluster with `ssl = on` and a self-signed certificate for 127.0.0.1
/// and localhost; the certificate (PEM) path is returned for verify-full.
struct SslCluster {
    cluster: PgCluster,
    cert: PathBuf,
}

static SSL_CLUSTER: LazyLock<SslCluster> = LazyLock::new(|| {
    let cluster = PgCluster::start().expect("starting the ssl cluster");
    let cert = cluster.enable_ssl().expect("enabling ssl");
    SslCluster { cluster, cert }
});

const SERVER_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn server_tls_require_and_verify_full() {
    let ssl = &*SSL_CLUSTER;
    let ca = Ca::new();
    let cert = ssl.cert.to_string_lossy().into_owned();
    for extra in [
        vec!["--upstream-tls", "prefer"],
        vec!["--upstream-tls", "require"],
        vec!["--upstream-tls", "verify-full", "--upstream-ca", &cert],
    ] {
        let proxy = proxy(ssl.cluster.addr(), &ca, &extra);
        let mut info = ssl.cluster.app().at(proxy.addr());
        info.host = "127.0.0.1".into();
        // Client leg in plain text, libpq's default channel_binding=prefer:
        // the client sends "n" (no channel binding) and the server accepts.
        let out = Psql::new(&info).env("PGSSLMODE", "disable").command(SERVER_SSL).run();
        assert!(out.status.success(), "{extra:?}: {}\n{}", out.stderr, proxy.stderr());
        assert_eq!(out.stdout.trim(), "t", "{extra:?}: the server leg must be TLS");
        // Both legs in TLS: SCRAM passthrough works with channel binding off.
        let out = Psql::new(&info)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &ca.pem())
            .env("PGCHANNELBINDING", "disable")
            .command(SERVER_SSL)
            .run();
        assert!(out.status.success(), "{extra:?}: {}\n{}", out.stderr, proxy.stderr());
        assert_eq!(out.stdout.trim(), "t");
        // Both legs in TLS with channel binding: SCRAM-SHA-256-PLUS is not
        // offered (it would bind to masker's certificate, not the server's),
        // and a client that then says "I could bind, you can't" ('y' flag) is
        // refused by a TLS server as a possible downgrade. A known limit of
        // SCRAM passthrough across a TLS terminator.
        for binding in ["prefer", "require"] {
            let out = Psql::new(&info)
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &ca.pem())
                .env("PGCHANNELBINDING", binding)
                .command(SERVER_SSL)
                .run();
            assert!(!out.status.success());
            assert!(out.stderr.contains("channel binding"), "{binding}: {}", out.stderr);
            assert!(!out.stderr.contains("SCRAM channel binding check failed"), "PLUS was offered: {}", out.stderr);
        }
    }
    // Plain text to the ssl cluster still works when asked for.
    let proxy = proxy(ssl.cluster.addr(), &ca, &["--upstream-tls", "disable"]);
    let out = psql(&proxy, "127.0.0.1", "require", &ca.pem(), SERVER_SSL);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "f");
}

#[test]
fn server_tls_verify_full_rejects_an_untrusted_certificate() {
    let ssl = &*SSL_CLUSTER;
    let ca = Ca::new();
    let proxy = proxy(ssl.cluster.addr(), &ca, &["--upstream-tls", "verify-full", "--upstream-ca", &ca.pem()]);
    let out = psql(&proxy, "127.0.0.1", "require", &ca.pem(), SERVER_SSL);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("masker: TLS handshake with the database server at 127.0.0.1 failed: invalid peer certificate"),
        "{}",
        out.stderr
    );
}

#[test]
fn required_server_tls_is_never_downgraded() {
    let ca = Ca::new();
    // The shared cluster has ssl off: it answers the SSLRequest with 'N'.
    for mode in ["require", "verify-full"] {
        let proxy = proxy(PgCluster::shared().addr(), &ca, &["--upstream-tls", mode, "--upstream-ca", &ca.pem()]);
        let out = psql(&proxy, "127.0.0.1", "require", &ca.pem(), TLS_STATE);
        assert!(!out.status.success());
        let expected = format!(
            "masker: the database server at 127.0.0.1 does not accept TLS, and the target requires it (tls = \"{mode}\")"
        );
        assert!(out.stderr.contains(&expected), "{}", out.stderr);
    }
    // prefer falls back to plain text.
    let proxy = proxy(PgCluster::shared().addr(), &ca, &["--upstream-tls", "prefer"]);
    let out = psql(&proxy, "127.0.0.1", "require", &ca.pem(), TLS_STATE);
    assert!(out.status.success(), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// tokio-postgres over rustls (tokio-postgres-rustls), client leg and both legs.

/// A rustls client configuration trusting only the PEM certificates in `ca`.
fn rustls_config(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connects with tokio-postgres over rustls (trusting `ca`) to `host` at the
/// proxy's port with `sslmode=require`, runs `sql` (one text column) and
/// returns its value or the connection error.
fn tokio_rustls_query(
    info: &masker_tests::ConnInfo,
    host: &str,
    ca: &Path,
    channel_binding: tokio_postgres::config::ChannelBinding,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let mut config = info.tokio_config();
    config.host(host).ssl_mode(tokio_postgres::config::SslMode::Require).channel_binding(channel_binding);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(ca));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = config.connect(tls).await?;
        let conn = tokio::spawn(conn);
        let row = client.query_one(sql, &[]).await?;
        let value = row.get::<_, String>(0);
        drop(client);
        let _ = conn.await;
        Ok(value)
    })
}

#[test]
fn tokio_postgres_over_rustls_verifies_masker_certificate() {
    use tokio_postgres::config::ChannelBinding;
    let ca = Ca::new();
    let other = Ca::new();
    let proxy = proxy(PgCluster::shared().addr(), &ca, &[]);
    let info = PgCluster::shared().app().at(proxy.addr());
    // rustls always verifies the certificate and the name (IP or DNS SAN).
    for host in ["127.0.0.1", "localhost"] {
        let got = tokio_rustls_query(&info, host, Path::new(&ca.pem()), ChannelBinding::Prefer, "SELECT 'ok'")
            .unwrap_or_else(|e| panic!("host={host}: {e:?}\n{}", proxy.stderr()));
        assert_eq!(got, "ok");
    }
    // Another CA (same subject name, another key): the handshake fails on
    // the certificate's signature.
    let err = tokio_rustls_query(&info, "127.0.0.1", Path::new(&other.pem()), ChannelBinding::Prefer, "SELECT 'ok'")
        .expect_err("a certificate from an untrusted CA was accepted");
    let text = format!("{err:?}");
    assert!(text.contains("InvalidCertificate"), "{text}");
    // SCRAM-SHA-256-PLUS is not offered, so a client that requires channel
    // binding is refused by the client library itself.
    let err = tokio_rustls_query(&info, "127.0.0.1", Path::new(&ca.pem()), ChannelBinding::Require, "SELECT 'ok'")
        .expect_err("channel binding required but not possible");
    assert!(format!("{err:?}").to_lowercase().contains("channel binding"), "{err:?}");
}

#[test]
fn tokio_postgres_over_rustls_with_tls_to_the_server() {
    use tokio_postgres::config::ChannelBinding;
    let ssl = &*SSL_CLUSTER;
    let ca = Ca::new();
    let cert = ssl.cert.to_string_lossy().into_owned();
    let proxy = proxy(ssl.cluster.addr(), &ca, &["--upstream-tls", "verify-full", "--upstream-ca", &cert]);
    let info = ssl.cluster.app().at(proxy.addr());
    // Both legs TLS: the server sees its leg encrypted. Channel binding off,
    // as with psql (SCRAM passthrough across a TLS terminator).
    let got = tokio_rustls_query(
        &info,
        "localhost",
        Path::new(&ca.pem()),
        ChannelBinding::Disable,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.stderr()));
    assert_eq!(got, "true");
}

/// `session_start` and `session_end` audit events say which legs ran TLS.
#[test]
fn audit_events_record_tls_on_each_leg() {
    let ssl = &*SSL_CLUSTER;
    let ca = Ca::new();
    let audit = ca.dir.path().join("audit.jsonl");
    let audit_arg = audit.to_string_lossy().into_owned();
    let tls_proxy = proxy(ssl.cluster.addr(), &ca, &["--upstream-tls", "require", "--audit-file", &audit_arg]);
    let mut info = ssl.cluster.app().at(tls_proxy.addr());
    info.host = "127.0.0.1".into();
    for sslmode in ["require", "disable"] {
        let out =
            Psql::new(&info).env("PGSSLMODE", sslmode).env("PGCHANNELBINDING", "disable").command("SELECT 1").run();
        assert!(out.status.success(), "{sslmode}: {}\n{}", out.stderr, tls_proxy.stderr());
    }
    let plain = proxy(PgCluster::shared().addr(), &ca, &["--upstream-tls", "disable", "--audit-file", &audit_arg]);
    let out = psql(&plain, "127.0.0.1", "disable", &ca.pem(), "SELECT 1");
    assert!(out.status.success(), "{}", out.stderr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let tls: Vec<(bool, bool)> = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let starts: Vec<(bool, bool)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line"))
            .filter(|e| e["event"] == "session_start")
            .map(|e| (e["tls"]["client"].as_bool().expect("client"), e["tls"]["server"].as_bool().expect("server")))
            .collect();
        if starts.len() >= 3 || std::time::Instant::now() > deadline {
            break starts;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(tls, [(true, true), (false, true), (false, false)]);
}
