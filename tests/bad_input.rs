//! Bad input from either peer, over raw TCP: masker answers with a proper
//! PostgreSQL error (SQLSTATE 08P01 for protocol violations, class 08 for an
//! unreachable server) and closes that one session cleanly; it never hangs,
//! never panics, and every other session goes on.
//!
//! With `MASKER_TESTS_DIRECT=1` the tests that only make sense with masker
//! in between are skipped, and the ones about client input check only that
//! the server closes the session (PostgreSQL itself closes silently on a bad
//! message length, where masker must send 08P01 first).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use masker_tests::compare;
use masker_tests::psql::Psql;
use masker_tests::raw::{self, Msg, RawConn, Read};
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

const LIMIT: Duration = Duration::from_secs(60);
/// The deadline of the wait for a bad session to be answered and closed:
/// under masker's own timeouts (10 s to connect upstream, 30 s for a
/// start-up), so a close within it comes from the check under test, not
/// from a timeout that would have ended the session anyway. A deadline, not
/// a measurement: nothing asserts how fast it happens.
const PROMPT: Duration = Duration::from_secs(9);

struct Setup {
    proxy: MaskerProxy,
    proxied: ConnInfo,
}

fn setup() -> Setup {
    let cluster = PgCluster::shared();
    let proxy = MaskerProxy::start(cluster.addr(), None);
    let proxied = cluster.app().at(proxy.addr());
    Setup { proxy, proxied }
}

impl Setup {
    /// A session opened before the bad input, to check it is unaffected.
    async fn bystander(&self) -> Client {
        let client = self.proxied.connect().await.unwrap_or_else(|e| panic!("connect through masker: {e:?}"));
        assert_eq!(query_one(&client, "SELECT 'before'").await, "before");
        client
    }

    /// The proxy still runs, the bystander still works, a new session works.
    async fn assert_healthy(&mut self, bystander: &Client) {
        self.proxy.assert_running();
        assert_eq!(query_one(bystander, "SELECT 'bystander ok'").await, "bystander ok");
        let fresh = self.proxied.connect().await.unwrap_or_else(|e| panic!("new session after bad input: {e:?}"));
        assert_eq!(query_one(&fresh, "SELECT count(*) FROM customers WHERE id <= 10").await, "10");
        let log = self.proxy.stderr();
        assert!(!log.contains("panicked"), "masker panicked:\n{log}");
    }
}

async fn query_one(client: &Client, sql: &str) -> String {
    let r = compare::simple(client, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    r[0].rows[0][0].clone().unwrap_or_default()
}

/// Reads what the peer sends until it closes (within [`PROMPT`]).
async fn until_closed(conn: &mut RawConn, what: &str) -> Vec<Msg> {
    conn.expect_closed(PROMPT).await.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Asserts `msgs` is exactly one ErrorResponse with `sqlstate` (or a code
/// starting with it) and returns its fields.
#[track_caller]
fn assert_single_error(what: &str, msgs: &[Msg], sqlstate: &str) {
    assert_eq!(msgs.len(), 1, "{what}: expected one ErrorResponse before the close, got {msgs:?}");
    let msg = &msgs[0];
    assert_eq!(msg.tag, b'E', "{what}: expected an ErrorResponse, got {msg:?}");
    let fields = msg.fields();
    let code = fields.get(&'C').cloned().unwrap_or_default();
    assert!(code.starts_with(sqlstate), "{what}: SQLSTATE {code}, expected {sqlstate}: {fields:?}");
    let severity = fields.get(&'S').cloned().unwrap_or_default();
    assert!(severity == "FATAL" || severity == "ERROR", "{what}: severity {severity}: {fields:?}");
    assert!(!fields.get(&'M').cloned().unwrap_or_default().is_empty(), "{what}: no message: {fields:?}");
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_answered_n() {
    let mut s = setup();
    within(LIMIT, "SSLRequest", async {
        let bystander = s.bystander().await;
        let mut requests = vec![("SSLRequest", raw::ssl_request())];
        // A PostgreSQL built with GSSAPI answers 'G' itself; masker must say 'N'.
        if !MaskerProxy::bypassed() {
            requests.push(("GSSENCRequest", raw::gssenc_request()));
        }
        for (name, request) in requests {
            let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
            conn.send(&request).await.unwrap();
            assert_eq!(conn.read_byte().await.unwrap(), b'N', "{name} must be answered with exactly 'N'");
            assert!(conn.quiet_for(Duration::from_millis(200)).await, "{name}: bytes after the 'N'");
            // The client goes on with a normal startup on the same connection.
            conn.startup(&s.proxied, &[]).await.unwrap_or_else(|e| panic!("startup after {name}: {e:#}"));
            conn.send(&raw::query("SELECT 'after ssl'")).await.unwrap();
            let msgs = conn.read_until_ready().await.unwrap();
            assert!(msgs.iter().any(|m| m.tag == b'D' && m.body.ends_with(b"after ssl")), "{msgs:?}");
        }
        // Both, one after the other (libpq with gssencmode=prefer, sslmode=prefer).
        if MaskerProxy::bypassed() {
            return s.assert_healthy(&bystander).await;
        }
        let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
        conn.send(&raw::gssenc_request()).await.unwrap();
        assert_eq!(conn.read_byte().await.unwrap(), b'N');
        conn.send(&raw::ssl_request()).await.unwrap();
        assert_eq!(conn.read_byte().await.unwrap(), b'N');
        conn.startup(&s.proxied, &[]).await.unwrap();
        s.assert_healthy(&bystander).await;
    })
    .await
}

#[tokio::test]
async fn message_length_below_four_is_a_protocol_violation() {
    let mut s = setup();
    within(LIMIT, "short length", async {
        let bystander = s.bystander().await;
        for (tag, len) in [(b'Q', 3u32), (b'Q', 0), (b'P', 2), (b'S', 1)] {
            let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
            conn.send(&raw::message_with_len(tag, len, b"")).await.unwrap();
            let what = format!("{} with length {len}", tag as char);
            let msgs = until_closed(&mut conn, &what).await;
            if !MaskerProxy::bypassed() {
                assert_single_error(&what, &msgs, "08P01");
            }
        }
        s.assert_healthy(&bystander).await;
    })
    .await;
    if !MaskerProxy::bypassed() {
        let log = s.proxy.stderr().to_lowercase();
        assert!(
            ["length", "protocol", "malformed", "08p01"].iter().any(|w| log.contains(w)),
            "the proxy log does not say what happened:\n{log}"
        );
    }
}

#[tokio::test]
async fn oversized_message_is_a_protocol_violation() {
    let mut s = setup();
    within(LIMIT, "oversized", async {
        let bystander = s.bystander().await;
        for len in [0x8000_0000u32, 0xffff_ffff, 0x4000_0100] {
            let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
            // The start of a body that would never end: masker must not wait for it.
            conn.send(&raw::message_with_len(b'Q', len, b"SELECT 1")).await.unwrap();
            let what = format!("Query claiming {len} bytes");
            let msgs = until_closed(&mut conn, &what).await;
            if !MaskerProxy::bypassed() {
                assert_single_error(&what, &msgs, "08P01");
            }
        }
        s.assert_healthy(&bystander).await;
    })
    .await
}

#[tokio::test]
async fn unknown_message_type_is_a_protocol_violation() {
    let mut s = setup();
    within(LIMIT, "unknown tag", async {
        let bystander = s.bystander().await;
        for tag in [b'!', 0u8, b'Z'] {
            let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
            conn.send(&raw::message_with_len(tag, 4, b"")).await.unwrap();
            let what = format!("message type {tag:#04x}");
            let msgs = until_closed(&mut conn, &what).await;
            // PostgreSQL itself answers 08P01 here; so must masker (from either side).
            assert_single_error(&what, &msgs, "08P01");
        }
        s.assert_healthy(&bystander).await;
    })
    .await
}

#[tokio::test]
async fn garbage_startup_is_refused_without_hanging() {
    let mut s = setup();
    within(LIMIT, "garbage startup", async {
        let bystander = s.bystander().await;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("an HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
            ("length 3", vec![0, 0, 0, 3]),
            ("length 2 GiB", [&0x7fff_ffffu32.to_be_bytes()[..], &[0, 3, 0, 0]].concat()),
            ("length 8 with protocol 9.9", [&8u32.to_be_bytes()[..], &0x0009_0009u32.to_be_bytes()[..]].concat()),
            ("protocol 3.0 without terminator", [&12u32.to_be_bytes()[..], &[0, 3, 0, 0], b"user"].concat()),
            ("a TLS ClientHello", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]),
            ("random bytes", (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect()),
        ];
        for (what, bytes) in cases {
            let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
            conn.send(&bytes).await.unwrap();
            let msgs = until_closed(&mut conn, what).await;
            // An ErrorResponse (any SQLSTATE) or a plain close; never data, never a hang.
            assert!(msgs.len() <= 1 && msgs.iter().all(|m| m.tag == b'E'), "{what}: got {msgs:?}");
        }
        // A startup without a user name: the server's own error comes back.
        let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
        conn.send(&raw::startup_message(&[("database", "shop")])).await.unwrap();
        let msgs = until_closed(&mut conn, "startup without user").await;
        assert_single_error("startup without user", &msgs, "28000");
        // A client that gives up in the middle of the startup packet.
        let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
        conn.send(&raw::startup_message(&[("user", "app"), ("database", "shop")])[..7]).await.unwrap();
        drop(conn);
        // Wrong password: the server's error, relayed.
        let mut wrong = s.proxied.clone();
        wrong.password = "not the password".into();
        let err = wrong.connect().await.expect_err("login with a wrong password");
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err:?}");
        s.assert_healthy(&bystander).await;
    })
    .await
}

#[tokio::test]
async fn clients_vanishing_mid_session_do_not_disturb_others() {
    let mut s = setup();
    within(LIMIT, "vanishing clients", async {
        let bystander = s.bystander().await;
        // Gone while a large result streams.
        let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        conn.send(&raw::query("SELECT g, repeat('x', 200) FROM generate_series(1, 2000000) g")).await.unwrap();
        let _ = conn.read().await.unwrap();
        drop(conn);
        // Gone during authentication.
        let mut conn = RawConn::connect(s.proxied.addr()).await.unwrap();
        conn.send(&raw::startup_message(&[("user", "app"), ("database", "shop")])).await.unwrap();
        let auth = conn.expect_msg().await.unwrap();
        assert_eq!(auth.tag, b'R');
        drop(conn);
        // Gone in the middle of a message.
        let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        conn.send(&raw::query("SELECT 1")[..6]).await.unwrap();
        drop(conn);
        // Terminate, then close.
        let (mut conn, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        conn.send(&raw::terminate()).await.unwrap();
        assert!(until_closed(&mut conn, "after Terminate").await.is_empty());
        s.assert_healthy(&bystander).await;
        // The abandoned server sessions end too (no leaked backends).
        let direct = PgCluster::shared().superuser().connect().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = query_one(
                &direct,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series(1, 2000000)%' \
                 AND pid <> pg_backend_pid()",
            )
            .await;
            if n == "0" {
                break;
            }
            assert!(Instant::now() < deadline, "the server still runs the abandoned query");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn unreachable_upstream_gives_a_connection_error() {
    if MaskerProxy::bypassed() {
        return;
    }
    let mut proxy = MaskerProxy::start(closed_port(), None);
    let info = PgCluster::shared().app().at(proxy.addr());
    within(LIMIT, "unreachable upstream", async {
        for _ in 0..3 {
            let mut conn = RawConn::connect(proxy.addr()).await.unwrap();
            conn.send(&raw::startup_message(&[("user", "app"), ("database", "shop")])).await.unwrap();
            let msgs = until_closed(&mut conn, "startup to an unreachable upstream").await;
            assert_single_error("unreachable upstream", &msgs, "08");
        }
        let err = info.connect().await.expect_err("connect through masker to a closed port");
        let code = err.code().map(|c| c.code().to_owned()).unwrap_or_default();
        assert!(code.starts_with("08"), "tokio-postgres got {err:?}");
    })
    .await;
    let out = tokio::task::spawn_blocking(move || Psql::new(&info).command("SELECT 1").run()).await.unwrap();
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("FATAL") || out.stderr.contains("ERROR"), "psql shows no server error: {}", out.stderr);
    proxy.assert_running();
}

/// A fake server: answers SSLRequest/GSSENCRequest with 'N', accepts any
/// startup, then answers every message with `reply`.
async fn fake_server(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut startup = loop {
                    let len = sock.read_u32().await.ok()? as usize;
                    let mut body = vec![0; len.checked_sub(4)?];
                    sock.read_exact(&mut body).await.ok()?;
                    if body.starts_with(&80_877_103u32.to_be_bytes()) || body.starts_with(&80_877_104u32.to_be_bytes())
                    {
                        sock.write_all(b"N").await.ok()?;
                        continue;
                    }
                    break body;
                };
                startup.clear();
                // AuthenticationOk, BackendKeyData, ReadyForQuery(idle).
                let mut hello = raw::message_with_len(b'R', 8, &[0, 0, 0, 0]);
                hello.extend(raw::message_with_len(b'K', 12, &[0, 0, 0, 42, 1, 2, 3, 4]));
                hello.extend(raw::message_with_len(b'Z', 5, b"I"));
                sock.write_all(&hello).await.ok()?;
                let mut buf = [0u8; 4096];
                loop {
                    if sock.read(&mut buf).await.ok()? == 0 {
                        return Some(());
                    }
                    sock.write_all(reply).await.ok()?;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn malformed_server_message_closes_only_that_session() {
    if MaskerProxy::bypassed() {
        return;
    }
    // A DataRow claiming length 2, and a message with a tag no server sends.
    for reply in [&b"T\0\0\0\x06\0\0D\0\0\0\x02"[..], &b"\x01\0\0\0\x04"[..], &b"D\xff\xff\xff\xffxx"[..]] {
        let upstream = within(LIMIT, "fake server", fake_server(reply)).await;
        let mut proxy = MaskerProxy::start(upstream, None);
        let info = PgCluster::shared().app().at(proxy.addr());
        within(LIMIT, "malformed server message", async {
            let (mut bystander, _) = RawConn::login(proxy.addr(), &info).await.expect("login to the fake server");
            let (mut conn, _) = RawConn::login(proxy.addr(), &info).await.expect("login to the fake server");
            conn.send(&raw::query("SELECT 1")).await.unwrap();
            let msgs = until_closed(&mut conn, "after a malformed server message").await;
            assert!(msgs.iter().all(|m| m.tag != b'D'), "a malformed row reached the client: {msgs:?}");
            if let Some(last) = msgs.last() {
                assert_eq!(last.tag, b'E', "{msgs:?}");
                let code = last.sqlstate().unwrap_or_default();
                assert!(code.starts_with("08") || code.starts_with("XX"), "SQLSTATE {code}: {msgs:?}");
            }
            // The other session to the same (broken) server is still open.
            assert!(bystander.quiet_for(Duration::from_millis(300)).await, "the bystander session was disturbed");
        })
        .await;
        proxy.assert_running();
        let log = proxy.stderr();
        assert!(!log.contains("panicked"), "masker panicked:\n{log}");
    }
}

#[tokio::test]
async fn bad_sessions_in_parallel_with_good_ones() {
    let mut s = setup();
    within(LIMIT, "mixed load", async {
        let bystander = s.bystander().await;
        let addr = s.proxied.addr();
        let bad = (0..20).map(|i| async move {
            let mut conn = RawConn::connect(addr).await.unwrap();
            let bytes = match i % 3 {
                0 => b"garbage!".to_vec(),
                1 => raw::message_with_len(b'Q', 2, b""),
                _ => vec![0, 0, 0, 3],
            };
            conn.send(&bytes).await.unwrap();
            let _ = conn.expect_closed(PROMPT).await.unwrap();
        });
        let good = (0..10).map(|i| {
            let info = s.proxied.clone();
            async move {
                let client = info.connect().await.unwrap();
                let n = query_one(&client, &format!("SELECT count(*) FROM orders WHERE customer_id = {}", i + 1)).await;
                assert!(n.parse::<u64>().is_ok());
            }
        });
        tokio::join!(futures_util::future::join_all(bad), futures_util::future::join_all(good));
        s.assert_healthy(&bystander).await;
    })
    .await
}

#[tokio::test]
async fn read_reports_close_not_hang_for_raw_helpers() {
    // Guards the harness: a connection the peer closes reads as Closed, promptly.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        drop(sock);
    });
    let mut conn = RawConn::connect(addr).await.unwrap();
    assert_eq!(conn.read_within(PROMPT).await.unwrap(), Read::Closed);
}
