//! The relay through `masker proxy` without a policy: everything a client
//! sees must be identical, value for value (and where the protocol allows,
//! byte for byte), to a direct connection to the same server.
//!
//! Each test starts its own proxy in front of the binary's shared cluster.
//! `MASKER_TESTS_DIRECT=1` runs the same tests without masker (checks the tests).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, TryStreamExt, future, pin_mut};
use masker_tests::compare::{self, Digest};
use masker_tests::fixture::PersonalValues;
use masker_tests::psql::Psql;
use masker_tests::raw::{self, Msg, RawConn};
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, python, within};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const LIMIT: Duration = Duration::from_secs(120);

/// A proxy in front of the shared cluster, and `app` logins direct and through it.
struct Setup {
    proxy: MaskerProxy,
    direct: ConnInfo,
    proxied: ConnInfo,
}

fn setup() -> Setup {
    let cluster = PgCluster::shared();
    let proxy = MaskerProxy::start(cluster.addr(), None);
    assert!(MaskerProxy::bypassed() || proxy.addr() != cluster.addr());
    let direct = cluster.app();
    let proxied = direct.at(proxy.addr());
    Setup { proxy, direct, proxied }
}

impl Setup {
    async fn clients(&self) -> (Client, Client) {
        let direct = self.direct.connect().await.expect("direct connect");
        let proxied = self.proxied.connect().await.unwrap_or_else(|e| panic!("connect through masker: {e:?}"));
        (direct, proxied)
    }

    /// The same bytes sent on a fresh raw session direct and through masker
    /// give the same bytes back (up to ReadyForQuery after each round).
    async fn assert_same_bytes(&self, rounds: &[Vec<u8>]) -> Vec<Vec<Msg>> {
        self.assert_same_bytes_after("", rounds).await
    }

    /// Like [`Self::assert_same_bytes`], running the direct session to the
    /// end first and `reset` (SQL, direct) before each side, for rounds that
    /// change shared state.
    async fn assert_same_bytes_after(&self, reset: &str, rounds: &[Vec<u8>]) -> Vec<Vec<Msg>> {
        async fn session(info: &ConnInfo, reset: &str, rounds: &[Vec<u8>]) -> anyhow::Result<Vec<Vec<Msg>>> {
            if !reset.is_empty() {
                PgCluster::shared().app().connect().await?.batch_execute(reset).await?;
            }
            let (mut conn, _) = RawConn::login(info.addr(), info).await?;
            let mut out = Vec::new();
            for round in rounds {
                conn.send(round).await?;
                out.push(conn.read_until_ready().await?);
            }
            Ok(out)
        }
        let want = session(&self.direct, reset, rounds).await.expect("direct session");
        let got = session(&self.proxied, reset, rounds).await.unwrap_or_else(|e| panic!("through masker: {e:#}"));
        for ((round, want), got) in rounds.iter().zip(&want).zip(&got) {
            if raw::wire(want) != raw::wire(got) {
                panic!("bytes differ for {:?}\ndirect:  {want:?}\nthrough: {got:?}", String::from_utf8_lossy(round));
            }
        }
        got
    }
}

/// The wide customers query: every column type of the fixture.
const CUSTOMERS_SQL: &str = "SELECT * FROM customers ORDER BY id LIMIT 300";

#[tokio::test]
async fn simple_query_with_several_statements() {
    let s = setup();
    within(LIMIT, "simple query", async {
        let (direct, proxied) = s.clients().await;
        let sql = "SELECT 1 AS one; \
                   SELECT * FROM customers ORDER BY id LIMIT 100; \
                   ; \
                   SELECT o.order_no, o.amount, o.created_at, c.email FROM orders o JOIN customers c ON c.id = o.customer_id \
                     ORDER BY o.id LIMIT 100; \
                   SELECT * FROM customer_contacts WHERE id % 97 = 0 ORDER BY id; \
                   SELECT NULL::text AS nothing, ''::text AS empty, 'ünïcødé ✓' AS utf8, E'tab\\there' AS esc; \
                   SHOW server_version_num; \
                   SELECT count(*) FROM payments WHERE method = 'card'";
        let results = compare::assert_same_simple(&direct, &proxied, sql).await;
        assert_eq!(results.len(), 7);
        assert_eq!(results[1].rows.len(), 100);
        assert_eq!(results[1].columns.len(), 18);
    })
    .await
}

#[tokio::test]
async fn simple_query_bytes_are_identical() {
    let s = setup();
    within(LIMIT, "simple query bytes", async {
        let rounds = [
            raw::query("SELECT 1; SELECT * FROM customers ORDER BY id LIMIT 200; SELECT current_user"),
            raw::query(CUSTOMERS_SQL),
            raw::query(""),
            raw::query("SELECT 1; SELECT 1/0; SELECT 2"),
            raw::query("SELECT 'after the error'"),
            raw::query("COPY (SELECT id, email FROM customers ORDER BY id LIMIT 50) TO STDOUT"),
        ];
        let out = s.assert_same_bytes(&rounds).await;
        assert!(out[3].iter().any(|m| m.tag == b'E' && m.sqlstate().as_deref() == Some("22012")));
    })
    .await
}

#[tokio::test]
async fn extended_protocol_binary_results() {
    let s = setup();
    within(LIMIT, "extended protocol", async {
        let (direct, proxied) = s.clients().await;
        compare::assert_same_binary(&direct, &proxied, CUSTOMERS_SQL, &[]).await;
        let ids: Vec<i64> = (1..=500).step_by(7).collect();
        let r = compare::assert_same_binary(
            &direct,
            &proxied,
            "SELECT * FROM customers WHERE id = ANY($1) AND plan <> $2 ORDER BY id",
            &[&ids, &"nonexistent"],
        )
        .await;
        assert_eq!(r.rows.len(), ids.len());
        compare::assert_same_binary(
            &direct,
            &proxied,
            "SELECT o.*, p.method, p.card_number, p.iban FROM orders o LEFT JOIN payments p ON p.order_id = o.id \
             WHERE o.customer_id BETWEEN $1 AND $2 ORDER BY o.id",
            &[&10i64, &60i64],
        )
        .await;
        // The same prepared statement, executed again with other parameters.
        let d = direct.prepare("SELECT full_name, birth_date, last_ip FROM customers WHERE id = $1").await.unwrap();
        let p = proxied.prepare("SELECT full_name, birth_date, last_ip FROM customers WHERE id = $1").await.unwrap();
        for id in [1i64, 2, 4999, 5000, 5001] {
            let dr: Vec<Vec<compare::RawCell>> =
                direct.query(&d, &[&id]).await.unwrap().iter().map(|r| (0..3).map(|i| r.get(i)).collect()).collect();
            let pr: Vec<Vec<compare::RawCell>> =
                proxied.query(&p, &[&id]).await.unwrap().iter().map(|r| (0..3).map(|i| r.get(i)).collect()).collect();
            compare::assert_same("prepared statement reuse", dr, pr);
        }
        // Errors in the extended protocol, then the connection goes on.
        let err = proxied.query("SELECT $1::int", &[&"not a number"]).await.unwrap_err();
        assert!(err.as_db_error().is_none(), "client-side type check expected: {err:?}");
        let err = proxied.query("SELECT 1 / $1::int", &[&0i32]).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
        compare::assert_same_binary(&direct, &proxied, "SELECT $1::text || '!'", &[&"still here"]).await;
    })
    .await
}

#[tokio::test]
async fn extended_protocol_bytes_are_identical() {
    let s = setup();
    within(LIMIT, "extended protocol bytes", async {
        let mut portal = Vec::new();
        // Execute with a row limit: PortalSuspended, then the rest after a Flush.
        {
            use bytes::BytesMut;
            use postgres_protocol::message::frontend;
            let mut b = BytesMut::new();
            frontend::parse("s1", "SELECT id, email, tags FROM customers WHERE id <= $1 ORDER BY id", [20], &mut b)
                .unwrap();
            frontend::describe(b'S', "s1", &mut b).unwrap();
            frontend::bind(
                "p1",
                "s1",
                [0i16],
                [b"25"],
                |v, buf| {
                    buf.extend_from_slice(v);
                    Ok(postgres_protocol::IsNull::No)
                },
                [1i16],
                &mut b,
            )
            .map_err(|_| ())
            .unwrap();
            frontend::execute("p1", 10, &mut b).unwrap();
            frontend::flush(&mut b);
            frontend::execute("p1", 10, &mut b).unwrap();
            frontend::execute("p1", 0, &mut b).unwrap();
            frontend::close(b'P', "p1", &mut b).unwrap();
            frontend::close(b'S', "s1", &mut b).unwrap();
            frontend::sync(&mut b);
            portal.extend_from_slice(&b);
        }
        let rounds = [
            raw::extended(
                "SELECT * FROM customers WHERE id BETWEEN $1 AND $2 ORDER BY id",
                &[Some("1"), Some("40")],
                0,
            ),
            raw::extended(
                "SELECT * FROM customers WHERE id BETWEEN $1 AND $2 ORDER BY id",
                &[Some("1"), Some("40")],
                1,
            ),
            raw::extended("SELECT $1::text IS NULL", &[None], 1),
            raw::extended("SELECT 1/0", &[], 0),
            portal,
            // Several Syncs in one write: pipelined rounds.
            [
                raw::extended("SELECT 1", &[], 0),
                raw::extended("SELECT 'x' || $1", &[Some("y")], 0),
                raw::extended("SELECT count(*) FROM orders", &[], 1),
            ]
            .concat(),
        ];
        let out = s.assert_same_bytes(&rounds[..5]).await;
        assert!(out[4].iter().any(|m| m.tag == b's'), "no PortalSuspended: {:?}", out[4]);
        // Pipelined rounds: three ReadyForQuery; read them all.
        let (mut d, _) = RawConn::login(s.direct.addr(), &s.direct).await.unwrap();
        let (mut p, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        d.send(&rounds[5]).await.unwrap();
        p.send(&rounds[5]).await.unwrap();
        for _ in 0..3 {
            let want = d.read_until_ready().await.unwrap();
            let got = p.read_until_ready().await.unwrap();
            assert_eq!(raw::wire(&want), raw::wire(&got), "pipelined round differs: {want:?} vs {got:?}");
        }
    })
    .await
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let s = setup();
    within(LIMIT, "pipelining", async {
        let (direct, proxied) = s.clients().await;
        let queries: Vec<String> = (0..40)
            .map(|i| match i % 4 {
                0 => format!("SELECT * FROM customers WHERE id % 40 = {i} ORDER BY id"),
                1 => format!("SELECT order_no, amount FROM orders WHERE customer_id = {} ORDER BY id", i * 11 + 1),
                2 => format!("SELECT pg_sleep(0.0{}), {i} AS n", i % 10),
                _ => format!("SELECT g, md5(g::text) FROM generate_series(1, {}) g", 100 * i),
            })
            .collect();
        async fn all(client: &Client, queries: &[String]) -> Vec<compare::BinaryResult> {
            // tokio-postgres pipelines concurrent requests on one connection.
            future::join_all(queries.iter().map(|q| compare::binary(client, q, &[])))
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .unwrap()
        }
        let d = all(&direct, &queries).await;
        let p = all(&proxied, &queries).await;
        compare::assert_same("pipelined queries", d, p);
    })
    .await
}

#[tokio::test]
async fn copy_to_stdout_and_from_stdin() {
    let s = setup();
    within(LIMIT, "copy", async {
        let (direct, proxied) = s.clients().await;
        async fn copy_out(client: &Client, sql: &str) -> Vec<u8> {
            let stream = client.copy_out(sql).await.unwrap();
            pin_mut!(stream);
            let mut out = Vec::new();
            while let Some(chunk) = stream.try_next().await.unwrap() {
                out.extend_from_slice(&chunk);
            }
            out
        }
        for sql in [
            "COPY customers TO STDOUT",
            "COPY (SELECT * FROM orders ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
            "COPY payments TO STDOUT WITH (FORMAT binary)",
        ] {
            let d = copy_out(&direct, sql).await;
            let p = copy_out(&proxied, sql).await;
            assert!(d == p, "{sql}: {} bytes direct, {} through masker, contents differ", d.len(), p.len());
        }

        // COPY FROM STDIN through masker, in chunks, then compare with the source.
        let data = copy_out(&direct, "COPY (SELECT * FROM customers ORDER BY id) TO STDOUT").await;
        proxied.batch_execute("CREATE TEMP TABLE customers_copy (LIKE customers)").await.unwrap();
        let sink = proxied.copy_in("COPY customers_copy FROM STDIN").await.unwrap();
        pin_mut!(sink);
        for chunk in data.chunks(7919) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let copied = sink.finish().await.unwrap();
        assert_eq!(copied, masker_tests::fixture::CUSTOMERS);
        let back = copy_out(&proxied, "COPY (SELECT * FROM customers_copy ORDER BY id) TO STDOUT").await;
        if back != data {
            let (b, d) = (String::from_utf8_lossy(&back), String::from_utf8_lossy(&data));
            let first = b.lines().zip(d.lines()).find(|(x, y)| x != y);
            panic!(
                "COPY FROM STDIN through masker changed the data: {} vs {} bytes, first difference {first:?}",
                back.len(),
                data.len()
            );
        }

        // A COPY FROM STDIN with bad data fails with the server's error; the session goes on.
        let sink = proxied.copy_in("COPY customers_copy (id) FROM STDIN").await.unwrap();
        pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"not-a-number\n")).await.unwrap();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
        compare::assert_same_simple(&direct, &proxied, "SELECT 42").await;
    })
    .await
}

#[tokio::test]
async fn psql_copy_and_queries_match_direct() {
    let s = setup();
    let direct = s.direct.clone();
    let proxied = s.proxied.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let run = |info: &ConnInfo| {
            let query = Psql::new(info)
                .command(
                    "SELECT id, full_name, email, phone, birth_date, last_ip, tags, profile, balance, avatar \
                          FROM customers ORDER BY id LIMIT 300",
                )
                .run();
            let copy_out =
                Psql::new(info).command("\\copy (SELECT * FROM orders ORDER BY id) TO STDOUT WITH (FORMAT csv)").run();
            let copy_in = Psql::new(info)
                .stdin(format!("{}\\.\n", "1,ORD-X-1,12.50\n2,ORD-X-2,99.99\n"))
                .command("CREATE TEMP TABLE t (id int, order_no text, amount numeric)")
                .command("\\copy t FROM pstdin WITH (FORMAT csv)")
                .command("SELECT count(*), sum(amount), string_agg(order_no, ',' ORDER BY id) FROM t")
                .run();
            let error = Psql::new(info).command("SELECT 1").command("SELECT * FROM no_such_table").run();
            [query, copy_out, copy_in, error]
        };
        (run(&direct), run(&proxied))
    });
    let (d, p) = within(LIMIT, "psql", outputs).await.unwrap();
    for (what, (d, p)) in ["query", "\\copy to", "\\copy from", "error"].iter().zip(d.iter().zip(p.iter())) {
        assert_eq!(d.code(), p.code(), "{what}: exit code; through masker stderr: {}", p.stderr);
        assert!(d.stdout == p.stdout, "{what}: stdout differs\ndirect:\n{}\nthrough masker:\n{}", d.stdout, p.stdout);
        assert_eq!(d.stderr, p.stderr, "{what}: stderr differs");
    }
    assert_eq!(p[0].stdout.lines().count(), 300);
    assert_eq!(p[2].stdout.trim(), "2|112.49|ORD-X-1,ORD-X-2");
    assert_eq!(p[3].code(), Some(1));
    assert!(p[3].stderr.contains("relation \"no_such_table\" does not exist"));
}

#[tokio::test]
async fn psycopg_matches_direct() {
    let s = setup();
    let direct = s.direct.dsn();
    let proxied = s.proxied.dsn();
    let snippet = r#"
def main(conn):
    out = {}
    cur = conn.cursor()
    cur.execute("SELECT * FROM customers ORDER BY id LIMIT 200")
    out["text"] = [list(r) for r in cur.fetchall()]
    cur = conn.cursor(binary=True)
    cur.execute("SELECT * FROM customers WHERE id = ANY(%s) ORDER BY id", ([3, 5, 8, 13, 21, 34],))
    out["binary"] = [list(r) for r in cur.fetchall()]
    with conn.cursor(name="server_side") as named:
        named.execute("SELECT id, order_no, amount FROM orders ORDER BY id")
        out["named_rows"] = len(named.fetchall())
    conn.commit()
    with conn.pipeline():
        c1 = conn.execute("SELECT count(*) FROM payments")
        c2 = conn.execute("SELECT max(order_no) FROM orders")
    out["pipeline"] = [c1.fetchone()[0], c2.fetchone()[0]]
    conn.execute("SET application_name = 'psycopg-masker-test'")
    out["application_name"] = conn.info.parameter_status("application_name")
    try:
        conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero as e:
        out["error"] = e.sqlstate
    conn.rollback()
    out["after"] = conn.execute("SELECT 'ok'").fetchone()[0]
    return out
"#;
    let run = move |dsn: String| python::run(&dsn, snippet).unwrap_or_else(|e| panic!("{e:#}"));
    let (d, p) = within(LIMIT, "psycopg", async {
        let d = tokio::task::spawn_blocking(move || run(direct));
        let p = tokio::task::spawn_blocking(move || run(proxied));
        (d.await.unwrap(), p.await.unwrap())
    })
    .await;
    compare::assert_same("psycopg", &d, &p);
    assert_eq!(p["application_name"], "psycopg-masker-test");
    assert_eq!(p["error"], "22012");
    assert_eq!(p["named_rows"], masker_tests::fixture::ORDERS);
}

#[tokio::test]
async fn cancel_request_cancels_a_running_query() {
    let s = setup();
    within(LIMIT, "cancel", async {
        let client = s.proxied.connect().await.unwrap();
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            let result = client.simple_query("SELECT pg_sleep(30) AS relay_cancel_probe").await;
            (client, result)
        });
        let watcher = s.direct.connect().await.expect("a session to watch pg_stat_activity");
        masker_tests::wait_until_running(&watcher, "relay_cancel_probe").await;
        token.cancel_query(NoTls).await.expect("sending CancelRequest through masker");
        let (client, result) = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the cancelled query did not return within 10 s")
            .unwrap();
        let err = result.expect_err("pg_sleep(30) was not cancelled");
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
        // The session is usable afterwards.
        assert_eq!(compare::simple(&client, "SELECT 'alive'").await.unwrap()[0].rows[0][0].as_deref(), Some("alive"));
        // A cancel with a key nobody has does nothing (and does not break the proxy).
        let mut stray = RawConn::connect(s.proxied.addr()).await.unwrap();
        let mut msg = 16u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&80_877_102u32.to_be_bytes());
        msg.extend_from_slice(&[0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        stray.send(&msg).await.unwrap();
        stray.expect_closed(Duration::from_secs(5)).await.unwrap();
        assert_eq!(compare::simple(&client, "SELECT 2").await.unwrap()[0].rows[0][0].as_deref(), Some("2"));
    })
    .await
}

#[tokio::test]
async fn listen_notify_between_connections() {
    let s = setup();
    within(LIMIT, "listen/notify", async {
        let (listener, mut messages) = s.proxied.connect_with_messages().await.unwrap();
        listener.batch_execute("LISTEN masker_events; LISTEN \"Other Channel\"").await.unwrap();
        let notifier_proxied = s.proxied.connect().await.unwrap();
        let notifier_direct = s.direct.connect().await.unwrap();
        notifier_proxied.batch_execute("NOTIFY masker_events, 'from proxied'").await.unwrap();
        notifier_direct.execute("SELECT pg_notify('Other Channel', $1)", &[&"from direct ✓"]).await.unwrap();
        // Notifications arrive without the listener running a query.
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), messages.recv()).await {
                Ok(Some(AsyncMessage::Notification(n))) => got.push((n.channel().to_owned(), n.payload().to_owned())),
                Ok(Some(_)) => {}
                Ok(None) => panic!("listener connection closed"),
                Err(_) => panic!("notifications not delivered within 10 s; got {got:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                ("masker_events".to_owned(), "from proxied".to_owned()),
                ("Other Channel".to_owned(), "from direct ✓".to_owned())
            ]
        );
        // A notification to oneself arrives right after the query's result.
        let rounds = [raw::query("LISTEN me; NOTIFY me, 'self'; SELECT 1")];
        let (mut p, _) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        p.send(&rounds[0]).await.unwrap();
        let msgs = p.read_until_ready().await.unwrap();
        assert!(msgs.iter().any(|m| m.tag == b'A' && m.body.ends_with(b"me\0self\0")), "{msgs:?}");
    })
    .await
}

#[tokio::test]
async fn parameter_status_is_reported() {
    let s = setup();
    within(LIMIT, "ParameterStatus", async {
        // At startup: the same parameters as direct (BackendKeyData aside).
        let (_, d) = RawConn::login(s.direct.addr(), &s.direct).await.unwrap();
        let (_, p) = RawConn::login(s.proxied.addr(), &s.proxied).await.unwrap();
        let params = |msgs: &[Msg]| msgs.iter().filter(|m| m.tag == b'S').cloned().collect::<Vec<_>>();
        assert_eq!(params(&d), params(&p));
        assert!(params(&p).iter().any(|m| m.body.starts_with(b"server_version\x0015")), "{p:?}");
        assert!(p.iter().any(|m| m.tag == b'K'), "no BackendKeyData through masker: {p:?}");
        // After SET: ParameterStatus for reported parameters, byte for byte.
        let out = s
            .assert_same_bytes(&[
                raw::query("SET application_name = 'masker relay test'"),
                raw::query("SET TimeZone = 'Europe/Berlin'; SELECT timestamptz '2024-06-01 12:00:00+00'"),
                raw::query("BEGIN; SET LOCAL DateStyle = 'German'; SELECT date '2024-06-01'; COMMIT"),
            ])
            .await;
        assert!(out[0].iter().any(|m| m.tag == b'S' && m.body == b"application_name\0masker relay test\0"));
        assert!(out[1].iter().any(|m| m.tag == b'S' && m.body == b"TimeZone\0Europe/Berlin\0"));
    })
    .await
}

#[tokio::test]
async fn notices_are_relayed() {
    let s = setup();
    within(LIMIT, "NoticeResponse", async {
        let (client, mut messages) = s.proxied.connect_with_messages().await.unwrap();
        client
            .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello % from a DO block', 42; RAISE WARNING 'careful'; END $$")
            .await
            .unwrap();
        let mut notices = Vec::new();
        while notices.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), messages.recv()).await {
                Ok(Some(AsyncMessage::Notice(n))) => notices.push((n.severity().to_owned(), n.message().to_owned())),
                Ok(Some(_)) => {}
                other => panic!("expected notices, got {other:?} after {notices:?}"),
            }
        }
        assert_eq!(
            notices,
            vec![("NOTICE".to_owned(), "hello 42 from a DO block".to_owned()), ("WARNING".to_owned(), "careful".to_owned())]
        );
        s.assert_same_bytes(&[
            raw::query("DO $$ BEGIN RAISE NOTICE 'n1'; RAISE NOTICE 'n2 %', repeat('x', 10000); END $$"),
            raw::query("SET client_min_messages = debug1; CREATE TEMP TABLE IF NOT EXISTS t (i int); CREATE TEMP TABLE IF NOT EXISTS t (i int)"),
        ])
        .await;
    })
    .await
}

#[tokio::test]
async fn errors_and_recovery_in_transactions() {
    let s = setup();
    within(LIMIT, "transactions", async {
        let out = s
            .assert_same_bytes_after(
                "DROP TABLE IF EXISTS relay_tx; CREATE TABLE relay_tx (i int PRIMARY KEY)",
                &[
                    raw::query("SELECT 'start'"),
                    raw::query("BEGIN"),
                    raw::query("INSERT INTO relay_tx VALUES (1)"),
                    raw::query("INSERT INTO relay_tx VALUES (1)"),
                    raw::query("SELECT 1"),
                    raw::query("ROLLBACK"),
                    raw::query("SELECT count(*) FROM relay_tx"),
                    raw::query("BEGIN; INSERT INTO relay_tx VALUES (2); SAVEPOINT s1; INSERT INTO relay_tx VALUES (2)"),
                    raw::query("ROLLBACK TO SAVEPOINT s1"),
                    raw::query("INSERT INTO relay_tx VALUES (3); RELEASE SAVEPOINT s1; COMMIT"),
                    raw::query("SELECT array_agg(i ORDER BY i) FROM relay_tx"),
                    // An implicit transaction: the whole message fails together.
                    raw::query("INSERT INTO relay_tx VALUES (4); SELECT 1/0; INSERT INTO relay_tx VALUES (5)"),
                    raw::query("SELECT array_agg(i ORDER BY i) FROM relay_tx"),
                    [raw::extended("BEGIN", &[], 0), raw::extended("SELECT 1/0", &[], 0)].concat(),
                    raw::extended("SELECT 1", &[], 0),
                    raw::query("ROLLBACK"),
                ],
            )
            .await;
        let status = |round: &[Msg]| round.last().map(|m| m.body.clone());
        assert_eq!(status(&out[3]), Some(b"E".to_vec()), "failed transaction state");
        assert_eq!(out[4].iter().find(|m| m.tag == b'E').and_then(Msg::sqlstate).as_deref(), Some("25P02"));
        assert_eq!(status(&out[5]), Some(b"I".to_vec()));
        assert_eq!(status(&out[8]), Some(b"T".to_vec()));
        let data = |round: &[Msg]| round.iter().find(|m| m.tag == b'D').map(|m| m.body.clone());
        assert!(data(&out[10]).is_some_and(|b| b.ends_with(b"{2,3}")));
        assert!(data(&out[12]).is_some_and(|b| b.ends_with(b"{2,3}")));

        // The same through tokio-postgres' transaction API.
        let (_, mut proxied) = s.clients().await;
        proxied.batch_execute("CREATE TEMP TABLE tx2 (i int PRIMARY KEY)").await.unwrap();
        {
            let mut tx = proxied.transaction().await.unwrap();
            tx.execute("INSERT INTO tx2 VALUES (1)", &[]).await.unwrap();
            let savepoint = tx.savepoint("sp").await.unwrap();
            let err = savepoint.execute("INSERT INTO tx2 VALUES (1)", &[]).await.unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
            savepoint.rollback().await.unwrap();
            tx.execute("INSERT INTO tx2 VALUES (2)", &[]).await.unwrap();
            tx.commit().await.unwrap();
        }
        let n: i64 = proxied.query_one("SELECT count(*) FROM tx2", &[]).await.unwrap().get(0);
        assert_eq!(n, 2);
    })
    .await
}

#[tokio::test]
async fn a_million_rows() {
    let s = setup();
    within(Duration::from_secs(300), "a million rows", async {
        let (direct, proxied) = s.clients().await;
        let sql = "SELECT g, md5(g::text), g * 1.5 AS x, now() - g * interval '1 second' AS t \
                   FROM generate_series(1, 1000000) g";
        // Text over the simple protocol, then binary over the extended one,
        // direct and through masker concurrently.
        let (d, p) = tokio::join!(compare::digest_simple(&direct, sql), compare::digest_simple(&proxied, sql));
        let (d, p): (Digest, Digest) = (d.unwrap(), p.unwrap());
        assert_eq!(d.rows, 1_000_000);
        // now() differs between the two sessions' transactions; compare without it.
        let sql = "SELECT g, md5(g::text), g * 1.5 AS x FROM generate_series(1, 1000000) g";
        let (d2, p2) = tokio::join!(compare::digest_binary(&direct, sql), compare::digest_binary(&proxied, sql));
        compare::assert_same("1M rows, binary", d2.unwrap(), p2.unwrap());
        let (d3, p3) = tokio::join!(compare::digest_simple(&direct, sql), compare::digest_simple(&proxied, sql));
        compare::assert_same("1M rows, text", d3.unwrap(), p3.unwrap());
        assert_eq!(p.rows, d.rows);
    })
    .await
}

#[tokio::test]
async fn ipv6_upstream() {
    let cluster = PgCluster::shared();
    let Some(v6) = masker_tests::skip::ipv6(cluster) else { return };
    let proxy = MaskerProxy::start(v6, None);
    within(LIMIT, "IPv6 upstream", async {
        let direct = cluster.app().connect().await.unwrap();
        let proxied = cluster.app().at(proxy.addr()).connect().await.unwrap();
        let r = compare::simple(&proxied, "SELECT inet_server_addr()::text").await.unwrap();
        if !MaskerProxy::bypassed() {
            assert_eq!(r[0].rows[0][0].as_deref(), Some("::1/128"));
        }
        compare::assert_same_simple(&direct, &proxied, CUSTOMERS_SQL).await;
    })
    .await
}

#[tokio::test]
async fn many_sessions_at_once() {
    let s = setup();
    within(LIMIT, "concurrent sessions", async {
        let direct = s.direct.connect().await.unwrap();
        let want = compare::simple(&direct, "SELECT * FROM orders WHERE customer_id = 77 ORDER BY id").await.unwrap();
        let sessions = (0..32).map(|_| async {
            let client = s.proxied.connect().await.unwrap();
            compare::simple(&client, "SELECT * FROM orders WHERE customer_id = 77 ORDER BY id").await.unwrap()
        });
        for got in future::join_all(sessions).await {
            compare::assert_same("concurrent session", &want, &got);
        }
    })
    .await
}

#[tokio::test]
async fn proxy_log_has_no_row_data() {
    let mut s = setup();
    within(LIMIT, "log hygiene", async {
        let (_, proxied) = s.clients().await;
        compare::simple(&proxied, "SELECT * FROM customers ORDER BY id LIMIT 1000").await.unwrap();
        let _ = compare::simple(&proxied, "SELECT email::int FROM customers WHERE id = 42").await.unwrap_err();
        let stream = proxied.copy_out("COPY (SELECT * FROM customers WHERE id <= 500) TO STDOUT").await.unwrap();
        let chunks: Vec<_> = stream.collect().await;
        assert!(chunks.iter().all(Result::is_ok));
    })
    .await;
    s.proxy.assert_running();
    let log = s.proxy.stderr();
    let values = PersonalValues::load(PgCluster::shared()).unwrap();
    values.assert_absent("masker proxy stderr", &log);
    assert!(!log.contains("panicked"), "the proxy panicked:\n{log}");
}
