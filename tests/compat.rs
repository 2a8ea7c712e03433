//! Compatibility with masking on: for statements that touch no personal
//! data, masker must be invisible. Every case runs a session twice, directly
//! and through `masker proxy` with a full policy, and compares the whole
//! server-to-client transcript byte for byte (types, typmods, table OIDs,
//! notices, ParameterStatus, CommandComplete, every error field) and what
//! the client printed or returned; only what differs between any two
//! sessions is normalised ([`masker_tests::transcript`]: backend keys, SCRAM
//! nonces, notifying process ids).
//!
//! Clean statements that masker still changes today are listed in
//! [`AWAITING_PRECISION`] with the reason: they are asserted to differ still,
//! so when masker's precision work fixes one, this suite fails and says to
//! move it back among the cases that must be identical.

use std::time::Duration;

use bytes::BytesMut;
use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::raw::{self, RawConn};
use masker_tests::transcript::{self, Case, Endpoint, Script};
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, within};
use postgres_protocol::message::frontend;

const KEY_ENV: &str = masker_tests::fixture::POLICY_KEY_ENV;

/// A full policy: every personal column masked, the rest allowed.
const POLICY: &str = masker_tests::fixture::POLICY;

/// Clean statements masker changes today, `(case id, why)`. Each must still
/// differ; move it out of this list once it comes back identical.
const AWAITING_PRECISION: &[(&str, &str)] = &[];

/// Queries of allowed columns (formerly the masking suite's no-over-masking list).
const PLAIN: &[&str] = &[
    "SELECT id, customer_id, order_no, amount, created_at, status FROM orders ORDER BY id",
    "SELECT 'ORD-2024-000123' AS order_no, 'INV-2024-0042' AS invoice, 20240115 AS day_key, 4711 AS n",
    "SELECT order_no FROM orders WHERE order_no IN ('ORD-2024-000123', 'ORD-2024-012345', 'ORD-2024-019999') ORDER BY 1",
    "SELECT id, plan, balance, signup_ts, tags FROM customers ORDER BY id",
    "SELECT plan, count(*), sum(balance), avg(balance), min(signup_ts), max(signup_ts) FROM customers GROUP BY plan ORDER BY plan",
    "SELECT customer_id, count(*), sum(amount), max(created_at) FROM orders GROUP BY customer_id ORDER BY customer_id",
    "SELECT o.id, o.order_no, p.method, p.amount, p.paid_at FROM orders o JOIN payments p ON p.order_id = o.id ORDER BY o.id",
    "SELECT c.id, c.plan, count(o.id), coalesce(sum(o.amount), 0) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.plan ORDER BY c.id",
    "SELECT status, count(*), sum(amount)::numeric(14,2), percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders GROUP BY status ORDER BY status",
    "SELECT count(*), count(DISTINCT email), count(DISTINCT ssn), sum(id) FROM customers",
    "SELECT id, created_at::date, extract(epoch FROM created_at)::bigint, date_trunc('month', created_at) FROM orders WHERE id <= 3000 ORDER BY id",
    "SELECT generate_series(1, 2000) AS n, generate_series(1, 2000) * 1000003 AS big",
    "SELECT id, amount, amount * 100 AS cents, round(amount / 3, 4) AS third FROM payments ORDER BY id",
    "SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, 12345678.9::numeric, true, 'plain text', '2024-05-06'::date, '2024-05-06 07:08:09+00'::timestamptz",
];

/// Non-sensitive queries (formerly the lineage suite's compatibility list).
const COMPATIBLE: &[&str] = &[
    "SELECT count(*) FROM customers",
    "SELECT count(ssn), count(DISTINCT email) FROM customers",
    "SELECT sum(amount), avg(amount)::numeric(12,2), min(amount), max(amount) FROM orders",
    "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status",
    "SELECT date_trunc('month', created_at) AS m, count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT max(created_at), min(created_at) FROM orders",
    "SELECT o.id, o.amount * 2, c.plan FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 50",
    "SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY c.id LIMIT 50",
    "WITH t AS (SELECT customer_id, sum(amount) s FROM orders GROUP BY 1) SELECT customer_id, s FROM t ORDER BY s DESC, customer_id LIMIT 20",
    "SELECT id::text || '-' || status FROM orders ORDER BY id LIMIT 50",
    "SELECT upper(order_no) FROM orders ORDER BY id LIMIT 50",
    "SELECT method, count(*), sum(amount) FROM payments GROUP BY method ORDER BY method",
    "SELECT plan, round(avg(balance), 2) FROM customers GROUP BY plan ORDER BY plan",
    "SELECT id FROM orders WHERE amount > 100 UNION SELECT id FROM payments WHERE amount > 100 ORDER BY 1 LIMIT 50",
    "SELECT row_number() OVER (ORDER BY id), id, amount FROM orders ORDER BY id LIMIT 50",
    "SELECT 1 AS one, now()::date = current_date, 'text'",
    "SELECT extract(year FROM signup_ts)::int AS y, count(*) FROM customers GROUP BY 1 ORDER BY 1",
    "SELECT json_build_object('id', id, 'amount', amount) FROM orders ORDER BY id LIMIT 20",
];

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn psql(args: &[&str]) -> Script {
    Script::Psql(s(args), None)
}

/// Simple query, then the extended protocol with text and with binary
/// results, for one statement.
fn three_ways(sql: &str) -> Script {
    Script::Raw(vec![raw::query(sql), raw::extended(sql, &[], 0), raw::extended(sql, &[], 1)])
}

/// Parse (typed parameters) + Describe statement + Sync, then Bind/Execute
/// rounds with text and binary parameters and results.
fn prepared_rounds() -> Vec<Vec<u8>> {
    let mut prep = BytesMut::new();
    frontend::parse(
        "ps1",
        "SELECT id, customer_id, amount, created_at, status FROM orders WHERE customer_id = $1 AND amount > $2 ORDER BY id",
        [20, 1700],
        &mut prep,
    )
    .expect("parse");
    frontend::describe(b'S', "ps1", &mut prep).expect("describe");
    frontend::sync(&mut prep);
    let bind = |params: &[&[u8]], formats: &[i16], result: i16| {
        let mut b = BytesMut::new();
        frontend::bind(
            "",
            "ps1",
            formats.iter().copied(),
            params.iter().copied(),
            |v, buf| {
                buf.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            },
            [result],
            &mut b,
        )
        .map_err(|_| "bind")
        .expect("bind");
        frontend::describe(b'P', "", &mut b).expect("describe portal");
        frontend::execute("", 0, &mut b).expect("execute");
        frontend::sync(&mut b);
        b.to_vec()
    };
    vec![
        prep.to_vec(),
        bind(&[b"77", b"10.5"], &[0, 0], 0),
        bind(&[&77i64.to_be_bytes(), b"10.5"], &[1, 0], 1),
        bind(&[b"not a number", b"1"], &[0, 0], 0),
        raw::query("DEALLOCATE ps1"),
    ]
}

/// Several extended-protocol rounds in one write, an error before the Sync.
fn pipelined_rounds() -> Vec<Vec<u8>> {
    let mut b = BytesMut::new();
    frontend::parse("", "SELECT id, status FROM orders WHERE id <= 3 ORDER BY id", [], &mut b).expect("parse");
    frontend::bind(
        "",
        "",
        [],
        [] as [Option<&[u8]>; 0],
        |_: Option<&[u8]>, _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes),
        [1],
        &mut b,
    )
    .map_err(|_| "bind")
    .expect("bind");
    frontend::describe(b'P', "", &mut b).expect("describe");
    frontend::execute("", 0, &mut b).expect("execute");
    frontend::parse("", "SELECT 1/0", [], &mut b).expect("parse");
    frontend::bind(
        "",
        "",
        [],
        [] as [Option<&[u8]>; 0],
        |_: Option<&[u8]>, _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes),
        [0],
        &mut b,
    )
    .map_err(|_| "bind")
    .expect("bind");
    frontend::execute("", 0, &mut b).expect("execute");
    frontend::parse("", "SELECT 'skipped after the error'", [], &mut b).expect("parse");
    frontend::sync(&mut b);
    vec![b.to_vec(), raw::extended("SELECT count(*) FROM payments", &[], 1)]
}

/// COPY FROM STDIN over the raw protocol: good data, a bad row, a CopyFail.
fn copy_rounds() -> Vec<Vec<u8>> {
    let copy_data = |data: &[u8]| {
        let mut b = BytesMut::new();
        frontend::CopyData::new(data).expect("copy data").write(&mut b);
        b.to_vec()
    };
    let done = || {
        let mut b = BytesMut::new();
        frontend::copy_done(&mut b);
        b.to_vec()
    };
    let fail = || {
        let mut b = BytesMut::new();
        frontend::copy_fail("client gave up", &mut b).expect("copy fail");
        b.to_vec()
    };
    vec![
        raw::query("CREATE TEMP TABLE compat_copy (id int PRIMARY KEY, note text)"),
        [raw::query("COPY compat_copy FROM STDIN"), copy_data(b"1\tone\n2\ttwo\n"), done()].concat(),
        [raw::query("COPY compat_copy FROM STDIN"), copy_data(b"3\tthree\nx\tbad\n"), done()].concat(),
        [raw::query("COPY compat_copy FROM STDIN (FORMAT csv)"), copy_data(b"4,four\n"), fail()].concat(),
        raw::query("COPY compat_copy TO STDOUT"),
        raw::query("COPY compat_copy TO STDOUT (FORMAT binary)"),
        // Computed columns: a temp table's OID differs between any two sessions.
        raw::query("SELECT array_agg(id ORDER BY id), string_agg(note, ',' ORDER BY id) FROM compat_copy"),
    ]
}

fn cancel_case(e: Endpoint) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send>> {
    Box::pin(async move {
        let info = e.recorded;
        let (mut conn, startup) = RawConn::login(info.addr(), &info).await?;
        let key =
            startup.iter().find(|m| m.tag == b'K').ok_or_else(|| anyhow::anyhow!("no BackendKeyData"))?.body.clone();
        conn.send(&raw::query("SELECT pg_sleep(60) AS compat_cancel")).await?;
        // Waits (polling, with a deadline) until the server runs it.
        let watcher = PgCluster::shared().superuser().connect().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = watcher
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%compat_cancel%' AND pid <> pg_backend_pid()", &[])
                .await?
                .get(0);
            if n > 0 {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the query never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut cancel = RawConn::connect(info.addr()).await?;
        let mut msg = 16u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&80_877_102u32.to_be_bytes());
        msg.extend_from_slice(&key);
        cancel.send(&msg).await?;
        cancel.expect_closed(Duration::from_secs(10)).await?;
        let msgs = conn.read_until_ready().await?;
        conn.send(&raw::query("SELECT 'after the cancel'")).await?;
        conn.read_until_ready().await?;
        conn.send(&raw::terminate()).await?;
        Ok(format!("{:?}", msgs.iter().map(|m| m.tag as char).collect::<String>()))
    })
}

/// A pipelining client (libpq pipeline mode, psycopg's `pipeline()`) whose
/// statement fails before it sent its Sync: the server skips what follows
/// up to that Sync, then the session goes on.
fn pipeline_error_case(
    e: Endpoint,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send>> {
    Box::pin(async move {
        let info = e.recorded;
        let (mut conn, _) = RawConn::login(info.addr(), &info).await?;
        let round = |sql: &str| {
            let mut b = raw::extended(sql, &[], 0);
            b.truncate(b.len() - 5); // without its Sync
            b
        };
        let mut flush = BytesMut::new();
        frontend::flush(&mut flush);
        conn.send(
            &[round("SELECT id, amount FROM orders ORDER BY id LIMIT 2"), round("SELECT 1/0"), flush.to_vec()].concat(),
        )
        .await?;
        let mut tags = String::new();
        loop {
            let m = conn.expect_msg().await?;
            tags.push(m.tag as char);
            if m.tag == b'E' {
                break;
            }
        }
        // Sent after the error arrived: skipped by the server up to the Sync.
        conn.send(
            &[round("SELECT 3"), round("SELECT id FROM orders LIMIT 1"), raw::extended("SELECT 4", &[], 0)].concat(),
        )
        .await?;
        for m in conn.read_until_ready().await? {
            tags.push(m.tag as char);
        }
        conn.send(&raw::query("SELECT 'after pipeline', id FROM orders ORDER BY id LIMIT 1")).await?;
        for m in conn.read_until_ready().await? {
            tags.push(m.tag as char);
        }
        conn.send(&raw::extended("SELECT amount FROM orders ORDER BY id LIMIT 1", &[], 1)).await?;
        for m in conn.read_until_ready().await? {
            tags.push(m.tag as char);
        }
        conn.send(&raw::terminate()).await?;
        Ok(tags)
    })
}

fn notify_case(e: Endpoint) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send>> {
    Box::pin(async move {
        let info = e.recorded;
        let (mut listener, _) = RawConn::login(info.addr(), &info).await?;
        listener.send(&raw::query("LISTEN compat_channel; LISTEN \"Other Channel\"")).await?;
        listener.read_until_ready().await?;
        let notifier = e.other.connect().await?;
        notifier.batch_execute("NOTIFY compat_channel, 'order 17 shipped'").await?;
        notifier.execute("SELECT pg_notify('Other Channel', $1)", &[&"payload ✓"]).await?;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let msg = listener.expect_msg().await?;
            if msg.tag == b'A' {
                seen.push(msg);
            }
        }
        listener.send(&raw::query("NOTIFY compat_channel, 'to myself'; SELECT 1")).await?;
        listener.read_until_ready().await?;
        listener.send(&raw::terminate()).await?;
        Ok(format!("{} notifications", seen.len()))
    })
}

fn bad_login_case(e: Endpoint) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send>> {
    Box::pin(async move {
        let mut out = String::new();
        for (user, password) in [(APP_USER, "wrong password"), ("nobody_here", APP_PASSWORD)] {
            let info = ConnInfo { user: user.into(), password: password.into(), ..e.recorded.clone() };
            let err = RawConn::login(info.addr(), &info).await.err().map(|e| format!("{e:#}"));
            out.push_str(&format!("{user}: {err:?}\n"));
        }
        Ok(out)
    })
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case { id: "C01", title: "allowed customer columns, psql aligned and unaligned", script: psql(&[
            "-c", "SELECT id, plan, balance, signup_ts, tags FROM customers ORDER BY id LIMIT 500",
            "-P", "format=aligned", "-P", "tuples_only=off",
            "-c", "SELECT id, plan, balance, signup_ts, tags FROM customers ORDER BY id LIMIT 500",
        ]) },
        Case { id: "C02", title: "every column of orders", script: three_ways("SELECT * FROM orders ORDER BY id") },
        Case { id: "C03", title: "counts, also over personal columns", script: three_ways(
            "SELECT count(*), count(email), count(DISTINCT ssn), count(phone), count(birth_date) FROM customers") },
        Case { id: "C04", title: "aggregates over amounts", script: three_ways(
            "SELECT method, count(*), sum(amount), avg(amount)::numeric(12,4), min(paid_at), max(paid_at), \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM payments GROUP BY method ORDER BY method") },
        Case { id: "C05", title: "100k rows from generate_series through psql", script: psql(&[
            "-c", "SELECT g, g * 2 AS twice, md5(g::text) FROM generate_series(1, 100000) g"]) },
        Case { id: "C06", title: "NULLs, empty strings, unicode, escapes", script: three_ways(
            "SELECT NULL::text AS nothing, '' AS empty, 'ünïcødé ✓ 日本' AS utf8, E'tab\\there\\nnewline' AS esc, NULL::int, ' ' AS space") },
        Case { id: "C07", title: "arrays", script: three_ways(
            "SELECT ARRAY[1, 2, NULL]::int4[], ARRAY['a', 'b c', NULL, '\"q\"']::text[], '{{1,2},{3,4}}'::int8[], \
             '{}'::text[], ARRAY[1.5, NULL]::numeric[], tags FROM customers ORDER BY id LIMIT 20") },
        Case { id: "C08", title: "numeric and floats", script: three_ways(
            "SELECT 0::numeric, -0.000123::numeric, 12345678901234567890.5::numeric(30,3), 'NaN'::numeric, \
             1.5::float4, 'Infinity'::float8, -2.25e-10::float8, 3::int2, 4::int8, balance FROM customers ORDER BY id LIMIT 50") },
        Case { id: "C09", title: "time zones, dates, intervals", script: Script::Raw(vec![
            raw::query("SET TimeZone = 'America/New_York'"),
            raw::query("SELECT timestamptz '2024-06-01 12:00:00+00', date '2024-02-29', interval '1 year 2 mons 3 days 04:05:06.789', time '23:59:59.5', created_at FROM orders ORDER BY id LIMIT 20"),
            raw::extended("SELECT timestamptz '2024-06-01 12:00:00+00', created_at, interval '-3 days' FROM orders ORDER BY id LIMIT 20", &[], 1),
            raw::query("SET DateStyle = 'German'; SELECT date '2024-06-01', signup_ts FROM customers ORDER BY id LIMIT 5; RESET DateStyle"),
            raw::query("RESET TimeZone"),
        ]) },
        Case { id: "C10", title: "several statements in one simple query", script: Script::Raw(vec![raw::query(
            "SELECT 1 AS one; SELECT id, status FROM orders ORDER BY id LIMIT 5; ; SELECT count(*) FROM payments; SHOW server_version_num")]) },
        Case { id: "C11", title: "transactions, savepoints, errors and recovery", script: Script::Raw(vec![
            raw::query("CREATE TEMP TABLE compat_tx (i int PRIMARY KEY)"),
            raw::query("BEGIN"),
            raw::query("INSERT INTO compat_tx VALUES (1)"),
            raw::query("INSERT INTO compat_tx VALUES (1)"),
            raw::query("SELECT 1"),
            raw::query("ROLLBACK"),
            raw::query("BEGIN; INSERT INTO compat_tx VALUES (2); SAVEPOINT s1; INSERT INTO compat_tx VALUES (2)"),
            raw::query("ROLLBACK TO SAVEPOINT s1"),
            raw::query("INSERT INTO compat_tx VALUES (3); RELEASE SAVEPOINT s1; COMMIT"),
            raw::query("INSERT INTO compat_tx VALUES (4); SELECT 1/0; INSERT INTO compat_tx VALUES (5)"),
            raw::query("SELECT array_agg(i ORDER BY i) FROM compat_tx"),
            [raw::extended("BEGIN", &[], 0), raw::extended("SELECT 1/0", &[], 0)].concat(),
            raw::extended("SELECT 1", &[], 0),
            raw::query("ROLLBACK"),
        ]) },
        Case { id: "C12", title: "error fields of non-personal errors (psql, verbose)", script: Script::Psql(s(&[
            "-v", "VERBOSITY=verbose", "-f", "-"]), Some(
            "SELECT 1/0;\nSELEC 1;\nSELECT no_such_column FROM orders;\nSELECT statu FROM orders;\n\
             CREATE TEMP TABLE compat_err (i int PRIMARY KEY, n text NOT NULL, c int CHECK (c > 0));\n\
             INSERT INTO compat_err VALUES (1, 'x', 1);\nINSERT INTO compat_err VALUES (1, 'y', 2);\n\
             INSERT INTO compat_err VALUES (2, NULL, 2);\nINSERT INTO compat_err VALUES (3, 'z', -1);\n\
             SELECT 'abc'::int;\nSELECT * FROM no_such_table;\nSELECT id FROM orders WHERE status = 42;\n".into())) },
        Case { id: "C13", title: "server notices", script: Script::Raw(vec![
            raw::query("CREATE TEMP TABLE IF NOT EXISTS compat_n (i int)"),
            raw::query("CREATE TEMP TABLE IF NOT EXISTS compat_n (i int)"),
            raw::query("DROP TABLE IF EXISTS compat_no_such_table"),
            raw::query("SET client_min_messages = debug1; DROP TABLE IF EXISTS compat_no_such_table; RESET client_min_messages"),
        ]) },
        Case { id: "C14", title: "RAISE NOTICE/WARNING/INFO of literals in a DO block", script: Script::Raw(vec![raw::query(
            "DO $$ BEGIN RAISE NOTICE 'hello % from a DO block', 42; RAISE WARNING 'careful' USING DETAIL = 'a detail', HINT = 'a hint'; RAISE INFO 'info'; END $$")]) },
        Case { id: "C15", title: "SQL PREPARE / EXECUTE / DEALLOCATE over allowed columns", script: Script::Raw(vec![
            raw::query("PREPARE compat_p (int8) AS SELECT id, amount, status FROM orders WHERE customer_id = $1 ORDER BY id"),
            raw::query("EXECUTE compat_p(77)"),
            raw::extended("EXECUTE compat_p(78)", &[], 1),
            raw::query("DEALLOCATE compat_p"),
        ]) },
        Case { id: "C16", title: "protocol-level prepared statement: typed parameters, ParameterDescription, text and binary", script: Script::Raw(prepared_rounds()) },
        Case { id: "C17", title: "pipelined extended protocol with an error before Sync", script: Script::Raw(pipelined_rounds()) },
        Case { id: "C18", title: "COPY FROM STDIN over the protocol: data, a bad row, CopyFail", script: Script::Raw(copy_rounds()) },
        Case { id: "C19", title: "psql \\copy in and out (text and csv)", script: Script::Psql(s(&[
            "-c", "CREATE TEMP TABLE compat_t (id int, order_no text, amount numeric)",
            "-c", "\\copy compat_t FROM STDIN (FORMAT csv)",
            "-c", "\\copy compat_t TO STDOUT",
            "-c", "\\copy (SELECT id, amount FROM orders ORDER BY id LIMIT 100) TO STDOUT (FORMAT csv, HEADER)"]),
            Some("1,ORD-X-1,12.50\n2,ORD-X-2,99.99\n\\.\n".into())) },
        Case { id: "C20", title: "COPY of a table of allowed columns (text, csv, binary)", script: Script::Raw(vec![
            raw::query("COPY orders TO STDOUT"),
            raw::query("COPY orders (id, amount, status) TO STDOUT (FORMAT csv, HEADER)"),
            raw::query("COPY payments (id, order_id, method, amount, paid_at) TO STDOUT (FORMAT binary)"),
        ]) },
        Case { id: "C21", title: "COPY (query) of allowed columns", script: Script::Raw(vec![
            raw::query("COPY (SELECT id, amount FROM orders ORDER BY id LIMIT 100) TO STDOUT (FORMAT csv)")]) },
        Case { id: "C22", title: "a cancel request (BackendKeyData round trip)", script: Script::Custom(cancel_case) },
        Case { id: "C23", title: "LISTEN/NOTIFY with literal payloads between sessions", script: Script::Custom(notify_case) },
        Case { id: "C24", title: "wrong password and unknown user", script: Script::Custom(bad_login_case) },
        Case { id: "C25", title: "binary results of many types", script: three_ways(
            "SELECT true, 1::int2, 2::int4, 3::int8, 4.5::float4, 6.25::float8, 7.125::numeric, 'txt'::text, 'vc'::varchar(10), \
             'bp'::char(4), 'nm'::name, date '2024-01-02', time '03:04:05', timestamp '2024-01-02 03:04:05', \
             timestamptz '2024-01-02 03:04:05+00', interval '1 day', inet '192.0.2.1/24', cidr '198.51.100.0/24', \
             '00000000-0000-0000-0000-000000000001'::uuid, '{\"a\": 1}'::json, '{\"b\": [1, 2]}'::jsonb, '\\xdeadbeef'::bytea, \
             'x'::\"char\", 42::oid, '(1,2)'::point, ROW(1, 'a')") },
        Case { id: "C26", title: "psql meta-commands", script: psql(&["-c", "\\d orders", "-c", "\\dt", "-c", "\\df fixture.*"]) },
        Case { id: "C27", title: "psql output formats", script: psql(&[
            "-P", "format=csv", "-c", "SELECT id, amount, status FROM orders ORDER BY id LIMIT 30",
            "-P", "format=aligned", "-P", "expanded=on", "-c", "SELECT id, amount, status FROM orders ORDER BY id LIMIT 3",
            "-P", "expanded=off", "-P", "format=html", "-c", "SELECT id, status FROM orders ORDER BY id LIMIT 3"]) },
        Case { id: "C28", title: "large values and wide rows", script: Script::Raw(vec![
            raw::query("SELECT repeat('x', 1048576) AS big, length(repeat('y', 2000000))"),
            raw::query(&format!("SELECT {}", (1..=1000).map(|i| format!("{i} AS c{i}")).collect::<Vec<_>>().join(", "))),
            raw::extended(&format!("SELECT {}", (1..=500).map(|i| format!("${i}::int")).collect::<Vec<_>>().join(" + ")),
                &(1..=500).map(|_| Some("1")).collect::<Vec<_>>(), 1),
        ]) },
        Case { id: "C29", title: "edge cases: empty query, zero columns, zero rows", script: Script::Raw(vec![
            raw::query(""), raw::query(";"), raw::query("SELECT"), raw::query("SELECT id FROM orders WHERE false"),
            raw::extended("", &[], 0), raw::extended("SELECT", &[], 1), raw::extended("SELECT id FROM orders WHERE false", &[], 1),
        ]) },
        Case { id: "C30", title: "cursors over allowed columns (DECLARE/FETCH/MOVE/CLOSE, WITH HOLD, BINARY)", script: Script::Raw(vec![
            raw::query("BEGIN; DECLARE compat_c CURSOR FOR SELECT id, amount, status FROM orders ORDER BY id"),
            raw::query("FETCH 5 FROM compat_c; MOVE 10 IN compat_c; FETCH 2 FROM compat_c"),
            raw::extended("FETCH 3 FROM compat_c", &[], 1),
            raw::query("CLOSE compat_c; COMMIT"),
            raw::query("DECLARE compat_h CURSOR WITH HOLD FOR SELECT id, created_at FROM orders ORDER BY id LIMIT 20"),
            raw::query("FETCH ALL FROM compat_h; CLOSE compat_h"),
            raw::query("BEGIN; DECLARE compat_b BINARY CURSOR FOR SELECT id, amount FROM orders ORDER BY id LIMIT 10; FETCH ALL FROM compat_b; COMMIT"),
        ]) },
        Case { id: "C31", title: "session state: SET/SHOW/RESET, ParameterStatus, statement_timeout", script: Script::Raw(vec![
            raw::query("SET application_name = 'compat suite'"),
            raw::query("SHOW application_name"),
            raw::query("SET search_path = fixture, public; SHOW search_path; RESET search_path"),
            raw::query("SET IntervalStyle = 'iso_8601'; SELECT interval '1 day 2 hours'; RESET IntervalStyle"),
            raw::query("SET statement_timeout = '1ms'; SELECT pg_sleep(0.2); RESET statement_timeout"),
            raw::query("RESET application_name"),
            raw::query("BEGIN; SET LOCAL DateStyle = 'SQL, DMY'; SELECT date '2024-06-01'; COMMIT"),
        ]) },
        Case { id: "C32", title: "psycopg: text, binary, server-side cursor, pipeline, executemany", script: Script::Psycopg(r#"
def main(conn):
    out = {}
    cur = conn.cursor()
    cur.execute("SELECT id, plan, balance, signup_ts, tags FROM customers ORDER BY id LIMIT 100")
    out["text"] = [[str(v) for v in r] for r in cur.fetchall()]
    cur = conn.cursor(binary=True)
    cur.execute("SELECT id, amount, created_at, status FROM orders WHERE customer_id = ANY(%s) ORDER BY id", ([3, 5, 8],))
    out["binary"] = [[str(v) for v in r] for r in cur.fetchall()]
    with conn.cursor(name="compat_named") as named:
        named.execute("SELECT id, order_no, amount FROM orders ORDER BY id")
        out["named"] = len(named.fetchall())
    conn.commit()
    with conn.pipeline():
        c1 = conn.execute("SELECT count(*) FROM payments")
        c2 = conn.execute("SELECT max(order_no) FROM orders")
    out["pipeline"] = [c1.fetchone()[0], c2.fetchone()[0]]
    conn.execute("CREATE TEMP TABLE compat_many (i int, t text)")
    conn.cursor().executemany("INSERT INTO compat_many VALUES (%s, %s)", [(i, f"row {i}") for i in range(50)])
    out["many"] = conn.execute("SELECT count(*), max(t) FROM compat_many").fetchone()
    try:
        conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero as e:
        out["error"] = [e.sqlstate, e.diag.message_primary]
    conn.rollback()
    return out
"#.into()) },
        Case { id: "C33", title: "catalog lookups of names and types", script: three_ways(
            "SELECT a.attname, a.atttypid::regtype::text, a.atttypmod, a.attnotnull, col_description(a.attrelid, a.attnum) \
             FROM pg_attribute a WHERE a.attrelid = 'customers'::regclass AND a.attnum > 0 ORDER BY a.attnum") },
        Case { id: "C35", title: "pipeline: an error before the client's Sync, then the session goes on", script: Script::Custom(pipeline_error_case) },
        Case { id: "C34", title: "RowDescription table OIDs and column numbers of a join", script: Script::Raw(vec![{
            let mut b = BytesMut::new();
            frontend::parse("", "SELECT o.id, o.amount, p.method, c.plan FROM orders o JOIN payments p ON p.order_id = o.id \
                JOIN customers c ON c.id = o.customer_id WHERE o.id <= $1 ORDER BY o.id", [], &mut b).expect("parse");
            frontend::describe(b'S', "", &mut b).expect("describe");
            frontend::sync(&mut b);
            b.to_vec()
        }]) },
    ];
    for (i, sql) in PLAIN.iter().enumerate() {
        cases.push(Case {
            id: Box::leak(format!("P{:02}", i + 1).into_boxed_str()),
            title: sql,
            script: three_ways(sql),
        });
    }
    for (i, sql) in COMPATIBLE.iter().enumerate() {
        cases.push(Case {
            id: Box::leak(format!("L{:02}", i + 1).into_boxed_str()),
            title: sql,
            script: three_ways(sql),
        });
    }
    cases
}

fn start() -> MaskerProxy {
    let cluster = PgCluster::shared();
    let policy = cluster.scratch_dir("compat").expect("scratch dir").join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let args: Vec<String> =
        ["--policy", &policy.to_string_lossy(), "--identity", "ci-compat", "--catalog-user", APP_USER]
            .iter()
            .map(|s| s.to_string())
            .collect();
    MaskerProxy::start_with_env(
        cluster.addr(),
        &args,
        &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD), (KEY_ENV, "compat-suite-key-0123456789abcdef")],
    )
    .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"))
}

/// Every case: identical transcripts and client output, except the cases of
/// [`AWAITING_PRECISION`], which must still differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_statements_are_byte_identical_with_masking_on() {
    let mut proxy = start();
    let cluster = PgCluster::shared();
    let (direct, masked) = (cluster.app(), cluster.app().at(proxy.addr()));
    let cases = cases();
    for (id, _) in AWAITING_PRECISION {
        assert!(cases.iter().any(|c| c.id == *id), "AWAITING_PRECISION names no case {id}");
    }
    let mut problems = Vec::new();
    let (mut identical, mut awaiting) = (0, 0);
    within(Duration::from_secs(900), "compatibility cases", async {
        for case in &cases {
            let d = transcript::run(case, &direct).await.unwrap_or_else(|e| panic!("{} directly: {e:#}", case.id));
            let m = transcript::run(case, &masked).await;
            let difference = match &m {
                Ok(m) => transcript::first_difference(&d, m),
                Err(e) => Some(format!("the session through masker failed: {e:#}")),
            };
            let why = AWAITING_PRECISION.iter().find(|(id, _)| *id == case.id).map(|(_, why)| *why);
            match (difference, why) {
                (None, None) => identical += 1,
                (Some(diff), Some(why)) => {
                    awaiting += 1;
                    eprintln!("{} (AWAITING_PRECISION: {why}) still differs: {diff}", case.id);
                }
                (Some(diff), None) => problems.push(format!("{} {}: differs: {diff}", case.id, case.title)),
                (None, Some(why)) => problems.push(format!(
                    "{} {}: now identical through masker; move it out of AWAITING_PRECISION (was: {why})",
                    case.id, case.title
                )),
            }
        }
    })
    .await;
    proxy.assert_running();
    eprintln!(
        "compatibility: {} cases, {identical} identical, {awaiting} still differing as listed in AWAITING_PRECISION",
        cases.len()
    );
    assert!(problems.is_empty(), "{} of {} cases:\n{}", problems.len(), cases.len(), problems.join("\n\n"));
}
