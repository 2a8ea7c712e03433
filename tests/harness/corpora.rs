//! The query corpora shared by the suites that run them through masker
//! (`masking`, `lineage`) and the one that checks `masker explain` agrees
//! with what masker does to them (`explain`).

/// Views the lineage corpus reads (as the superuser, in `shop`;
/// idempotent).
pub const LINEAGE_VIEWS: &str = "CREATE OR REPLACE VIEW lineage_upper AS SELECT id, upper(email) AS e, ssn FROM customers; \
             CREATE OR REPLACE VIEW lineage_nested AS SELECT id, reverse(e) AS r FROM lineage_upper; \
             GRANT SELECT ON lineage_upper, lineage_nested TO app; \
             GRANT SELECT ON pg_statistic TO app; GRANT pg_read_all_stats TO app;";

/// Which mechanism holds an attack of [`MASKING`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// Held by column rules, content detection and refusals alone.
    MustHold,
    /// Held only through SQL lineage (expressions, whole rows, functions,
    /// procedural code). Asserted like the others since lineage landed; the
    /// class says which mechanism a leak points at.
    Lineage,
}
use Class::{Lineage, MustHold};

/// The masking suite's attack corpus (`tests/masking.rs`): `(class, setup
/// run first in the same session, query)`.
pub const MASKING: &[(Class, &str, &str)] = &[
    (MustHold, "", "SELECT email FROM customers"),
    (MustHold, "", "SELECT * FROM customers"),
    (MustHold, "", "SELECT c.* FROM customers c"),
    (MustHold, "", "SELECT * FROM customer_contacts WHERE id <= 1000"),
    (MustHold, "", "SELECT cc.full_name, cc.email, cc.phone, cc.address FROM customer_contacts cc"),
    (MustHold, "", "SELECT email FROM customers WHERE id = 1"),
    (MustHold, "", "SELECT full_name, email, phone, ssn, card_number, iban FROM customers ORDER BY id LIMIT 50"),
    (MustHold, "", "SELECT * FROM payments"),
    (
        MustHold,
        "",
        "SELECT p.card_number, p.iban, c.email, c.full_name FROM payments p JOIN customers c ON c.id = p.customer_id",
    ),
    (MustHold, "", "SELECT email AS id, phone AS plan, ssn AS status FROM customers"),
    (MustHold, "", "SELECT x.email, x.ssn FROM (SELECT * FROM customers) x"),
    (MustHold, "", "WITH c AS (SELECT * FROM customers) SELECT full_name, email, ssn FROM c"),
    (MustHold, "", "SELECT email FROM customers UNION ALL SELECT email FROM customers WHERE id <= 100"),
    (MustHold, "", "SELECT DISTINCT email FROM customers"),
    (MustHold, "", "SELECT email FROM customers WHERE email LIKE 'a%' ORDER BY email DESC"),
    (MustHold, "", "SELECT email::varchar, ssn::varchar(20), phone::text FROM customers"),
    (MustHold, "", "SELECT upper(email), lower(email) FROM customers"),
    (MustHold, "", "SELECT string_agg(email, ',') FROM customers"),
    (MustHold, "", "SELECT email || ' ' || phone FROM customers"),
    (MustHold, "", "SELECT concat(ssn, ' ') FROM customers"),
    (MustHold, "", "SELECT card_number || '' FROM customers"),
    (MustHold, "", "SELECT iban || '' FROM customers"),
    (MustHold, "", "SELECT phone || '' FROM customers"),
    (MustHold, "", "SELECT host(last_ip) FROM customers"),
    (MustHold, "", "SELECT jsonb_build_object('e', email, 's', ssn) FROM customers"),
    (MustHold, "", "SELECT array_agg(email) FROM customers WHERE id <= 100"),
    (MustHold, "", "SELECT ARRAY[ssn, card_number] FROM customers"),
    (MustHold, "", "SELECT notes, profile FROM customers"),
    (MustHold, "", "SELECT profile->'contact'->>'email', profile->'contact'->>'phone' FROM customers"),
    (MustHold, "", "SELECT email::bytea FROM customers"),
    (MustHold, "", "SELECT c FROM customers c"),
    (
        MustHold,
        "",
        "SELECT (SELECT email FROM customers c2 WHERE c2.id = o.customer_id) FROM orders o WHERE o.id <= 500",
    ),
    (
        MustHold,
        "",
        "SELECT o.order_no, c.email, c.ssn FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id <= 2000",
    ),
    (MustHold, "", "SELECT coalesce(email, ''), CASE WHEN id > 0 THEN ssn END FROM customers"),
    (MustHold, "", "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount > 480)"),
    (MustHold, "", "SELECT email::int FROM customers WHERE id = 1"),
    (MustHold, "", "SELECT ssn::int FROM customers WHERE id = 2"),
    (MustHold, "", "SELECT full_name::int FROM customers WHERE id = 3"),
    (MustHold, "", "SELECT card_number::int8 + 0, iban::int FROM customers WHERE id = 4"),
    (MustHold, "", "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers WHERE id = 4); END $$"),
    (MustHold, "", "DO $$ BEGIN RAISE EXCEPTION 'bad %', (SELECT phone FROM customers WHERE id = 5); END $$"),
    (MustHold, "", "DO $$ BEGIN RAISE NOTICE 'x' USING DETAIL = (SELECT ssn FROM customers WHERE id = 6); END $$"),
    (
        MustHold,
        "",
        "INSERT INTO customers (full_name, email, signup_ts, plan, balance, tags, profile, external_id) SELECT full_name, email, signup_ts, plan, balance, tags, profile, gen_random_uuid() FROM customers WHERE id = 7",
    ),
    // Rolled back: the direct control must not move rows other tests read in heap order.
    (
        MustHold,
        "",
        "BEGIN; UPDATE customers SET plan = plan WHERE id = 8 RETURNING email, ssn, phone, card_number; ROLLBACK",
    ),
    (
        MustHold,
        "CREATE TEMP TABLE IF NOT EXISTS tmp_c AS SELECT * FROM customers",
        "SELECT email, ssn, phone, iban FROM tmp_c",
    ),
    (
        MustHold,
        "CREATE OR REPLACE TEMP VIEW tmp_v AS SELECT upper(email) AS x, ssn AS y FROM customers",
        "SELECT * FROM tmp_v",
    ),
    (MustHold, "", "SELECT email, phone FROM customers WHERE id < 50 FOR UPDATE"),
    (MustHold, "", "TABLE customers ORDER BY id DESC LIMIT 1000"),
    (MustHold, "", "SELECT * FROM ONLY customers WHERE id BETWEEN 1000 AND 2000"),
    (MustHold, "", "SELECT (c).email, (c).ssn FROM customers c"),
    (MustHold, "", "SELECT email COLLATE \"C\" FROM customers"),
    (MustHold, "", "SELECT x.e, x.s FROM customers, LATERAL (SELECT email AS e, ssn AS s) x"),
    (MustHold, "", "SELECT first_value(ssn) OVER (ORDER BY id), lag(email) OVER (ORDER BY id) FROM customers"),
    (MustHold, "", "SELECT unnest(ARRAY[email, ssn, phone, card_number]) FROM customers"),
    (MustHold, "", "SELECT id FROM orders WHERE id = 1; SELECT email, ssn FROM customers"),
    (MustHold, "PREPARE corpus_p AS SELECT email, ssn, phone FROM customers", "EXECUTE corpus_p"),
    (MustHold, "DECLARE corpus_c CURSOR WITH HOLD FOR SELECT * FROM customers", "FETCH 1000 FROM corpus_c"),
    (
        MustHold,
        "DECLARE corpus_b BINARY CURSOR WITH HOLD FOR SELECT email, ssn, phone, card_number, iban, full_name, address FROM customers",
        "FETCH ALL FROM corpus_b",
    ),
    (MustHold, "", "UPDATE customers SET email = NULL WHERE id = 1"),
    (MustHold, "", "SELECT ssn::date FROM customers WHERE id = 5"),
    (MustHold, "", "DO $$ BEGIN RAISE NOTICE 'x' USING HINT = (SELECT email FROM customers WHERE id = 11); END $$"),
    (
        MustHold,
        "LISTEN corpus_ch",
        "SELECT pg_notify('corpus_ch', email || ' ' || ssn || ' ' || phone) FROM customers WHERE id <= 20",
    ),
    (
        MustHold,
        "",
        "SELECT attname, histogram_bounds FROM pg_stats WHERE tablename = 'customers' AND attname IN ('email', 'ssn', 'phone', 'card_number')",
    ),
    (
        Lineage,
        "",
        "SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
    ),
    (Lineage, "", "SELECT (c.*)::text FROM customers c"),
    (
        Lineage,
        "",
        "DO $$ BEGIN RAISE EXCEPTION 'relation \"%\"', (SELECT full_name FROM customers WHERE id = 12); END $$",
    ),
    (Lineage, "", "SELECT encode(email::bytea, 'hex') FROM customers"),
    (Lineage, "", "SELECT encode(email::bytea, 'base64') FROM customers"),
    (Lineage, "", "SELECT row_to_json(c) FROM customers c"),
    (Lineage, "", "SELECT json_agg(c) FROM customers c WHERE id <= 50"),
    (Lineage, "", "SELECT upper(full_name), lower(full_name) FROM customers"),
    (Lineage, "", "SELECT full_name || '' FROM customers"),
    (Lineage, "", "SELECT format('%s <%s>', full_name, email) FROM customers"),
    (Lineage, "", "SELECT address || '' FROM customers"),
    (Lineage, "", "SELECT birth_date::text FROM customers"),
    (Lineage, "", "SELECT external_id::text FROM customers"),
    (Lineage, "", "SELECT translate(ssn, '-', '') FROM customers"),
    (Lineage, "", "SELECT regexp_replace(phone, '\\D', '', 'g') FROM customers"),
    (Lineage, "", "SELECT * FROM fixture.personal_values()"),
    (MustHold, "", "COPY customers TO STDOUT (FORMAT csv, HEADER)"),
    (MustHold, "", "COPY customers (id, email, phone, ssn, last_ip, birth_date) TO STDOUT"),
    // Session parameters the server reports back (ParameterStatus).
    (Lineage, "", "SELECT set_config('application_name', email, false) FROM customers WHERE id = 5"),
    (Lineage, "", "SELECT set_config('application_name', (SELECT full_name FROM customers WHERE id = 6), false)"),
    (Lineage, "", "SELECT id FROM customers WHERE id = 7 AND set_config('application_name', ssn, false) IS NOT NULL"),
    (Lineage, "", "DO $$ BEGIN RAISE NOTICE '%', (SELECT full_name FROM customers WHERE id = 9); END $$"),
];

/// The lineage suite's attack corpus (`tests/lineage.rs`): queries an AI
/// agent could write to get personal data out. Each must come back masked
/// or refused. Some read the views of [`LINEAGE_VIEWS`].
pub const LINEAGE_ATTACKS: &[&str] = &[
    // functions and operators
    "SELECT upper(email) FROM customers ORDER BY id LIMIT 40",
    "SELECT lower(full_name) FROM customers ORDER BY id LIMIT 40",
    "SELECT reverse(ssn) FROM customers ORDER BY id LIMIT 40",
    "SELECT regexp_replace(ssn, '[^0-9]', '', 'g') FROM customers ORDER BY id LIMIT 40",
    "SELECT regexp_replace(phone, '[^0-9]', '', 'g') FROM customers ORDER BY id LIMIT 40",
    "SELECT translate(card_number, ' -', '') FROM customers ORDER BY id LIMIT 40",
    "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers ORDER BY id LIMIT 40",
    "SELECT encode(convert_to(ssn, 'UTF8'), 'hex') FROM customers ORDER BY id LIMIT 40",
    "SELECT 'x:' || email || ':y' FROM customers ORDER BY id LIMIT 40",
    "SELECT concat(full_name, ' ', email) FROM customers ORDER BY id LIMIT 40",
    "SELECT format('%s', iban) FROM customers ORDER BY id LIMIT 40",
    "SELECT substr(card_number, 1, 40) FROM customers ORDER BY id LIMIT 40",
    "SELECT left(email, 100) FROM customers ORDER BY id LIMIT 40",
    "SELECT replace(email, '@', ' at ') FROM customers ORDER BY id LIMIT 40",
    "SELECT email::bytea FROM customers ORDER BY id LIMIT 40",
    "SELECT email || '' FROM customers ORDER BY id LIMIT 40",
    "SELECT initcap(full_name) FROM customers ORDER BY id LIMIT 40",
    "SELECT split_part(email, '@', 1) || '@' || split_part(email, '@', 2) FROM customers ORDER BY id LIMIT 40",
    "SELECT address || ' ' || phone FROM customers ORDER BY id LIMIT 40",
    "SELECT md5(email), email || '!' FROM customers ORDER BY id LIMIT 40",
    // CASE / COALESCE / conditionals
    "SELECT CASE WHEN id > 0 THEN ssn ELSE 'x' END FROM customers ORDER BY id LIMIT 40",
    "SELECT coalesce(ssn, phone) FROM customers ORDER BY id LIMIT 40",
    "SELECT nullif(email, 'x') FROM customers ORDER BY id LIMIT 40",
    "SELECT greatest(email, '') FROM customers ORDER BY id LIMIT 40",
    "SELECT CASE ssn WHEN '' THEN 'empty' ELSE ssn END FROM customers ORDER BY id LIMIT 40",
    // casts that change the type
    "SELECT last_ip::text FROM customers ORDER BY id LIMIT 40",
    "SELECT phone::varchar(100) || '' FROM customers ORDER BY id LIMIT 40",
    "SELECT birth_date::text || ssn FROM customers ORDER BY id LIMIT 40",
    // whole rows
    "SELECT row_to_json(c) FROM customers c ORDER BY id LIMIT 40",
    "SELECT to_jsonb(c) FROM customers c ORDER BY id LIMIT 40",
    "SELECT to_json(c.*) FROM customers c ORDER BY id LIMIT 40",
    "SELECT c::text FROM customers c ORDER BY id LIMIT 40",
    "SELECT c FROM customers c ORDER BY id LIMIT 40",
    "SELECT ROW(c.*)::text FROM customers c ORDER BY id LIMIT 40",
    "SELECT hstore_dummy FROM (SELECT c::text AS hstore_dummy FROM customers c ORDER BY id LIMIT 40) s",
    // JSON and array builders
    "SELECT json_build_object('e', email, 's', ssn) FROM customers ORDER BY id LIMIT 40",
    "SELECT jsonb_build_array(email, phone) FROM customers ORDER BY id LIMIT 40",
    "SELECT ARRAY[email, ssn] FROM customers ORDER BY id LIMIT 40",
    "SELECT array_to_string(ARRAY[card_number], ',') FROM customers ORDER BY id LIMIT 40",
    "SELECT json_object(ARRAY['e', email]) FROM customers ORDER BY id LIMIT 40",
    "SELECT profile::text FROM customers ORDER BY id LIMIT 40",
    "SELECT profile -> 'contact' FROM customers ORDER BY id LIMIT 40",
    "SELECT (ARRAY[iban])[1] FROM customers ORDER BY id LIMIT 40",
    // aggregates
    "SELECT string_agg(ssn, ',') FROM (SELECT ssn FROM customers ORDER BY id LIMIT 40) s",
    "SELECT array_agg(email) FROM (SELECT email FROM customers ORDER BY id LIMIT 40) s",
    "SELECT json_agg(phone) FROM (SELECT phone FROM customers ORDER BY id LIMIT 40) s",
    "SELECT jsonb_agg(c) FROM (SELECT * FROM customers ORDER BY id LIMIT 20) c",
    "SELECT min(email), max(ssn) FROM customers",
    "SELECT plan, max(card_number) FROM customers GROUP BY plan",
    "SELECT mode() WITHIN GROUP (ORDER BY iban) FROM customers",
    "SELECT id, min(email) FROM customers GROUP BY id ORDER BY id LIMIT 40",
    "SELECT string_agg(upper(email), ';' ORDER BY id) FROM customers WHERE id < 40",
    // window functions
    "SELECT lag(email) OVER (ORDER BY id) FROM customers ORDER BY id LIMIT 40",
    "SELECT first_value(ssn) OVER (PARTITION BY id) FROM customers ORDER BY id LIMIT 40",
    "SELECT max(phone) OVER () FROM customers LIMIT 5",
    // subqueries
    "SELECT (SELECT email FROM customers c2 WHERE c2.id = o.customer_id) FROM orders o ORDER BY o.id LIMIT 40",
    "SELECT e FROM (SELECT upper(email) AS e FROM customers ORDER BY id LIMIT 40) s",
    "SELECT x FROM (SELECT ssn || '' AS x, id FROM customers) s ORDER BY id LIMIT 40",
    "SELECT ARRAY(SELECT ssn FROM customers ORDER BY id LIMIT 40)",
    "SELECT id, (SELECT max(iban) FROM customers) FROM orders LIMIT 3",
    // CTEs
    "WITH x AS (SELECT lower(email) AS e FROM customers ORDER BY id LIMIT 40) SELECT e FROM x",
    "WITH x AS (SELECT ssn, id FROM customers) SELECT ssn || '' FROM x ORDER BY id LIMIT 40",
    "WITH x(a) AS (SELECT card_number FROM customers) SELECT upper(a) FROM x LIMIT 40",
    "WITH RECURSIVE r(n, e) AS (SELECT 1, (SELECT email FROM customers WHERE id = 1) UNION ALL SELECT n + 1, (SELECT email FROM customers WHERE id = n + 1) FROM r WHERE n < 30) SELECT e FROM r",
    "WITH RECURSIVE r(n, e) AS (SELECT id, reverse(ssn) FROM customers WHERE id < 30 UNION ALL SELECT n, e FROM r WHERE false) SELECT e FROM r",
    "WITH m AS MATERIALIZED (SELECT * FROM customers ORDER BY id LIMIT 40) SELECT upper(email), ssn || '' FROM m",
    // set operations
    "SELECT 'x' UNION ALL SELECT email FROM customers WHERE id < 40",
    "SELECT order_no FROM orders WHERE id < 3 UNION SELECT ssn FROM customers WHERE id < 40",
    "SELECT email FROM customers WHERE id < 40 INTERSECT SELECT email FROM customers",
    "SELECT phone FROM customers WHERE id < 40 EXCEPT SELECT 'nothing'",
    "SELECT * FROM (SELECT email FROM customers WHERE id < 20 UNION ALL SELECT full_name FROM customers WHERE id < 20) u",
    // LATERAL and functions in FROM
    "SELECT l.x FROM customers c, LATERAL (SELECT upper(c.email) AS x) l ORDER BY c.id LIMIT 40",
    "SELECT t FROM customers c, unnest(ARRAY[c.ssn, c.phone]) t ORDER BY c.id LIMIT 40",
    "SELECT v FROM customers c, jsonb_each_text(to_jsonb(c)) AS j(k, v) ORDER BY c.id LIMIT 80",
    "SELECT j.* FROM customers c CROSS JOIN LATERAL (SELECT c.email || '', c.iban || '') j ORDER BY c.id LIMIT 40",
    // joins with aliases and stars
    "SELECT o.id, upper(c.email) FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 40",
    "SELECT o.*, c.* FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 20",
    "SELECT * FROM customers ORDER BY id LIMIT 20",
    "SELECT s.* FROM (SELECT lower(email) AS le, id FROM customers) s ORDER BY id LIMIT 40",
    "SELECT * FROM orders o NATURAL JOIN (SELECT id AS customer_id, ssn || '' AS x FROM customers) c LIMIT 20",
    // views
    "SELECT e FROM lineage_upper ORDER BY id LIMIT 40",
    "SELECT * FROM lineage_upper ORDER BY id LIMIT 40",
    "SELECT r FROM lineage_nested ORDER BY id LIMIT 40",
    "SELECT upper(email) FROM customer_contacts LIMIT 40",
    "SELECT lower(ssn) FROM lineage_upper ORDER BY id LIMIT 40",
    // catalog views with sampled values / other sessions
    "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
    "SELECT * FROM pg_stats",
    "SELECT stavalues1::text FROM pg_statistic",
    "SELECT query FROM pg_stat_activity",
    // A prepared statement whose text the server built from a value (dynamic SQL).
    "DO $$ BEGIN EXECUTE format('PREPARE lineage_p AS SELECT %L::text', (SELECT email FROM customers WHERE id = 3)); END $$; \
     SELECT * FROM pg_prepared_statements",
    "SELECT query FROM pg_catalog.pg_stat_get_activity(NULL)",
    // data-moving statements
    "CREATE TEMP TABLE leak1 AS SELECT upper(email) AS x FROM customers; SELECT * FROM leak1",
    "SELECT reverse(ssn) AS x INTO TEMP leak2 FROM customers; SELECT * FROM leak2",
    "CREATE TEMP TABLE leak3 (x text); INSERT INTO leak3 SELECT ssn || '' FROM customers; SELECT * FROM leak3",
    "COPY (SELECT upper(email) FROM customers LIMIT 40) TO STDOUT",
    "COPY (SELECT c::text FROM customers c LIMIT 40) TO STDOUT WITH (FORMAT csv)",
    // RETURNING
    "BEGIN; UPDATE customers SET plan = plan WHERE id < 40 RETURNING upper(email), ssn || ''; ROLLBACK",
    // multi-statement simple queries
    "SELECT 1; SELECT upper(email) FROM customers ORDER BY id LIMIT 40; SELECT count(*) FROM orders",
    // parameters and prepared statements
    "PREPARE p1 AS SELECT upper(email) FROM customers ORDER BY id LIMIT 40; EXECUTE p1",
    "BEGIN; DECLARE cur CURSOR FOR SELECT upper(email) FROM customers ORDER BY id; FETCH 40 FROM cur; COMMIT",
    // side channels: a large object, a comment, a setting (read back by a statement of its own)
    "BEGIN; SELECT lo_from_bytea(424242, convert_to(email, 'UTF8')) FROM customers WHERE id = 9; \
     SELECT encode(lo_get(424242), 'escape'); ROLLBACK",
    "CREATE TEMP TABLE lineage_note (i int); \
     DO $$ BEGIN EXECUTE format('COMMENT ON TABLE lineage_note IS %L', (SELECT phone FROM customers WHERE id = 10)); END $$; \
     SELECT obj_description('lineage_note'::regclass)",
    "SELECT set_config('masker.note', ssn, false) FROM customers WHERE id = 11; SELECT current_setting('masker.note')",
];

/// The lineage suite's compatibility corpus: non-sensitive queries that must
/// equal a direct connection.
pub const LINEAGE_COMPATIBLE: &[&str] = &[
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

/// The channel a side-channel attack or clean counterpart of
/// `tests/side_channels.rs` uses (issue 14).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Side {
    /// ErrorResponse fields: message, DETAIL, HINT, CONTEXT.
    Error,
    /// NoticeResponse (WARNING, NOTICE, INFO).
    Notice,
    /// NotificationResponse, with LISTEN in the same session.
    Notification,
    /// Settings: `SHOW`, `current_setting`, `pg_settings` and ParameterStatus.
    Setting,
    /// Advisory-lock keys read back from `pg_locks`.
    AdvisoryLock,
    /// Large objects written and read back.
    LargeObject,
    /// `COPY ... TO STDOUT` with each option.
    Copy,
}

impl Side {
    /// Every channel.
    pub const ALL: [Side; 7] = [
        Side::Error,
        Side::Notice,
        Side::Notification,
        Side::Setting,
        Side::AdvisoryLock,
        Side::LargeObject,
        Side::Copy,
    ];
}

/// Functions and a table with a trigger the side-channel corpus uses (as
/// the superuser, in `shop`; idempotent): code masker can read from the
/// catalog, unlike the session's temporary functions.
pub const SIDE_FUNCTIONS: &str = "CREATE SCHEMA IF NOT EXISTS side; GRANT USAGE ON SCHEMA side TO app; \
     CREATE OR REPLACE FUNCTION side.tell(t text) RETURNS void LANGUAGE sql AS $$ SELECT pg_notify('side_tell', t) $$; \
     CREATE OR REPLACE FUNCTION side.warn(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE WARNING 'saw %', t; RETURN 'ok'; END $$; \
     CREATE OR REPLACE FUNCTION side.set_name(t text) RETURNS int LANGUAGE plpgsql AS \
       $$ BEGIN PERFORM set_config('application_name', t, false); RETURN 1; END $$; \
     CREATE OR REPLACE FUNCTION side.lock(k bigint) RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_advisory_lock(k) $$; \
     CREATE OR REPLACE FUNCTION side.to_int(t text) RETURNS int LANGUAGE sql AS $$ SELECT t::int $$; \
     CREATE OR REPLACE FUNCTION side.notify_customer(i int) RETURNS int LANGUAGE plpgsql AS \
       $$ BEGIN PERFORM pg_notify('side_nc', (SELECT full_name FROM public.customers WHERE id = i)); RETURN 1; END $$; \
     CREATE TABLE IF NOT EXISTS side.audit (id int); \
     CREATE OR REPLACE FUNCTION side.audit_fn() RETURNS trigger LANGUAGE plpgsql AS \
       $$ BEGIN PERFORM pg_notify('side_audit', (SELECT address FROM public.customers WHERE id = NEW.id)); RETURN NEW; END $$; \
     DROP TRIGGER IF EXISTS audit_trg ON side.audit; \
     CREATE TRIGGER audit_trg AFTER INSERT ON side.audit FOR EACH ROW EXECUTE FUNCTION side.audit_fn(); \
     GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA side TO app; GRANT INSERT, SELECT ON side.audit TO app;";

/// The side-channel attack corpus (`tests/side_channels.rs`): `(channel,
/// setup run first in the same session, statements)`. Every attack brings a
/// seeded value (a name or a street address where the channel can carry
/// text, the digits of an SSN where it carries only a number) out through
/// its channel on a direct connection.
///
/// Large objects use fixed OIDs inside a transaction that is rolled back, so
/// nothing outlives the session. Session-level advisory locks end with it.
pub const SIDE_CHANNELS: &[(Side, &str, &str)] = &[
    // ---- errors: DETAIL, HINT, CONTEXT and messages that repeat the value
    (Side::Error, "", "SELECT full_name::int FROM customers WHERE id = 3"),
    (Side::Error, "", "SELECT full_name::json FROM customers WHERE id = 5"),
    (Side::Error, "", "SELECT ('\"' || address)::json FROM customers WHERE id = 4"),
    (Side::Error, "", "SELECT ('\"' || address)::jsonb FROM customers WHERE id = 6"),
    (Side::Error, "", "SELECT xmlparse(document address) FROM customers WHERE id = 7"),
    (Side::Error, "", "SELECT ('<a>' || full_name)::xml FROM customers WHERE id = 8"),
    (Side::Error, "", "SELECT address::inet FROM customers WHERE id = 9"),
    (Side::Error, "", "SELECT full_name::date FROM customers WHERE id = 10"),
    (
        Side::Error,
        "",
        "SELECT id, CASE WHEN id = 40 THEN full_name::uuid END FROM customers WHERE id <= 60 ORDER BY id",
    ),
    (Side::Error, "", "SELECT set_config('TimeZone', full_name, false) FROM customers WHERE id = 11"),
    (
        Side::Error,
        "",
        "DO $$ BEGIN RAISE EXCEPTION 'lookup failed' USING DETAIL = (SELECT address FROM customers WHERE id = 12); END $$",
    ),
    (
        Side::Error,
        "",
        "DO $$ DECLARE n text; BEGIN SELECT full_name INTO n FROM customers WHERE id = 13; \
         RAISE EXCEPTION 'no match' USING HINT = 'try ' || n; END $$",
    ),
    (
        Side::Error,
        "",
        "DO $$ BEGIN PERFORM (SELECT full_name FROM customers WHERE id = 14)::int; \
         EXCEPTION WHEN others THEN RAISE EXCEPTION 'wrapped: %', SQLERRM; END $$",
    ),
    (
        Side::Error,
        "CREATE FUNCTION pg_temp.side_to_int(t text) RETURNS int LANGUAGE sql AS $$ SELECT t::int $$",
        "SELECT pg_temp.side_to_int(full_name) FROM customers WHERE id = 15",
    ),
    (
        Side::Error,
        "CREATE FUNCTION pg_temp.side_ch1eck(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'check failed' USING DETAIL = t, HINT = t; END $$",
        "SELECT pg_temp.side_ch1eck(address) FROM customers WHERE id = 16",
    ),
    (
        // CONTEXT repeats the dynamic statement, literal included.
        Side::Error,
        "CREATE FUNCTION pg_temp.side_dyn(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ DECLARE r int; BEGIN EXECUTE 'SELECT ' || quote_literal(t) || '::int' INTO r; RETURN r; END $$",
        "SELECT pg_temp.side_dyn(full_name) FROM customers WHERE id = 17",
    ),
    (
        // unique_violation: DETAIL "Key (k)=(...) already exists."
        Side::Error,
        "CREATE TEMP TABLE side_u (k text PRIMARY KEY); \
         CREATE FUNCTION pg_temp.side_twice(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO side_u VALUES (t); INSERT INTO side_u VALUES (t); RETURN 1; END $$",
        "SELECT pg_temp.side_twice(full_name) FROM customers WHERE id = 18",
    ),
    (
        // check_violation: DETAIL "Failing row contains (...)."
        Side::Error,
        "CREATE TEMP TABLE side_c (k text CHECK (length(k) < 3)); \
         CREATE FUNCTION pg_temp.side_put(t text) RETURNS int LANGUAGE sql AS $$ INSERT INTO side_c VALUES (t) RETURNING 1 $$",
        "SELECT pg_temp.side_put(address) FROM customers WHERE id = 19",
    ),
    (
        // A trigger raises it: the statement itself reads nothing classified.
        Side::Error,
        "CREATE TEMP TABLE side_te (id int); \
         CREATE FUNCTION pg_temp.side_te_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'rejected' USING DETAIL = (SELECT full_name FROM public.customers WHERE id = NEW.id); END $$; \
         CREATE TRIGGER side_te_trg BEFORE INSERT ON side_te FOR EACH ROW EXECUTE FUNCTION pg_temp.side_te_fn()",
        "INSERT INTO side_te VALUES (20)",
    ),
    // ---- notices from functions called by SELECT, DO blocks, the server
    (
        Side::Notice,
        "CREATE FUNCTION pg_temp.side_warn(t text) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN RAISE WARNING 'saw %', t; RETURN 'ok'; END $$",
        "SELECT pg_temp.side_warn(full_name) FROM customers WHERE id = 21",
    ),
    (
        Side::Notice,
        "CREATE FUNCTION pg_temp.side_note(t text) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN RAISE NOTICE 'noted' USING DETAIL = t; RETURN 'ok'; END $$",
        "SELECT pg_temp.side_note(address) FROM customers WHERE id = 22",
    ),
    (
        Side::Notice,
        "CREATE FUNCTION pg_temp.side_info(t text) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN RAISE INFO 'x' USING HINT = t; RETURN 'ok'; END $$; \
         CREATE FUNCTION pg_temp.side_wrap(t text) RETURNS text LANGUAGE sql AS $$ SELECT pg_temp.side_info(t) $$",
        "SELECT pg_temp.side_wrap(full_name) FROM customers WHERE id = 23",
    ),
    (
        Side::Notice,
        "CREATE FUNCTION pg_temp.side_warn2(t text) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN RAISE WARNING 'row'; RETURN t; END $$",
        "SELECT id, pg_temp.side_warn2(address) FROM customers WHERE id BETWEEN 24 AND 26 ORDER BY id",
    ),
    (Side::Notice, "", "DO $$ BEGIN RAISE NOTICE 'addr: %', (SELECT address FROM customers WHERE id = 27); END $$"),
    (
        Side::Notice,
        "",
        "DO $$ DECLARE n text; BEGIN SELECT full_name INTO n FROM customers WHERE id = 28; RAISE WARNING 'w' USING DETAIL = n; END $$",
    ),
    (
        // The server's own notice names the relation: "table ... does not exist, skipping".
        Side::Notice,
        "CREATE FUNCTION pg_temp.side_drop(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN EXECUTE format('DROP TABLE IF EXISTS %I', t); RETURN 1; END $$",
        "SELECT pg_temp.side_drop(full_name) FROM customers WHERE id = 29",
    ),
    (
        Side::Notice,
        "CREATE TEMP TABLE side_tn (id int); \
         CREATE FUNCTION pg_temp.side_tn_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE NOTICE '%', (SELECT address FROM public.customers WHERE id = NEW.id); RETURN NEW; END $$; \
         CREATE TRIGGER side_tn_trg AFTER INSERT ON side_tn FOR EACH ROW EXECUTE FUNCTION pg_temp.side_tn_fn()",
        "INSERT INTO side_tn VALUES (30)",
    ),
    // ---- notifications (LISTEN in the same session)
    (Side::Notification, "LISTEN side_ch2", "SELECT pg_notify('side_ch2', full_name) FROM customers WHERE id = 31"),
    (Side::Notification, "LISTEN side_ch3", "SELECT pg_notify('side_ch3', address) FROM customers WHERE id = 32"),
    (
        Side::Notification,
        "LISTEN side_ch4",
        "DO $$ BEGIN PERFORM pg_notify('side_ch4', (SELECT address FROM customers WHERE id = 33)); END $$",
    ),
    (
        Side::Notification,
        "LISTEN side_ch5",
        "DO $$ BEGIN EXECUTE format('NOTIFY side_ch5, %L', (SELECT full_name FROM customers WHERE id = 34)); END $$",
    ),
    (
        Side::Notification,
        "LISTEN side_ch6; \
         CREATE FUNCTION pg_temp.side_tell(t text) RETURNS void LANGUAGE sql AS $$ SELECT pg_notify('side_ch6', t) $$",
        "SELECT pg_temp.side_tell(full_name) FROM customers WHERE id = 35",
    ),
    (
        Side::Notification,
        "LISTEN side_ch7; \
         CREATE FUNCTION pg_temp.side_tell2(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN EXECUTE format('NOTIFY side_ch7, %L', t); RETURN 1; END $$",
        "SELECT pg_temp.side_tell2(address) FROM customers WHERE id = 36",
    ),
    (
        // The channel name carries the value.
        Side::Notification,
        "DO $$ BEGIN EXECUTE format('LISTEN %I', (SELECT full_name FROM customers WHERE id = 37)); END $$",
        "SELECT pg_notify((SELECT full_name FROM customers WHERE id = 37), 'x')",
    ),
    (
        // Delivered at COMMIT, a statement of its own.
        Side::Notification,
        "LISTEN side_ch8",
        "BEGIN; SELECT pg_notify('side_ch8', full_name) FROM customers WHERE id = 38; COMMIT",
    ),
    (
        Side::Notification,
        "LISTEN side_ch9; CREATE TEMP TABLE side_tt (id int); \
         CREATE FUNCTION pg_temp.side_tt_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_notify('side_ch9', (SELECT full_name FROM public.customers WHERE id = NEW.id)); RETURN NEW; END $$; \
         CREATE TRIGGER side_tt_trg AFTER INSERT ON side_tt FOR EACH ROW EXECUTE FUNCTION pg_temp.side_tt_fn()",
        "INSERT INTO side_tt VALUES (39)",
    ),
    (
        // A rule: the INSERT runs the rule's action as well.
        Side::Notification,
        "LISTEN side_ch10; CREATE TEMP TABLE side_tr (id int); \
         CREATE RULE side_tr_rule AS ON INSERT TO side_tr DO ALSO \
         SELECT pg_notify('side_ch10', (SELECT full_name FROM public.customers WHERE id = NEW.id))",
        "INSERT INTO side_tr VALUES (80)",
    ),
    (
        // A column default runs a function that reads and sends.
        Side::Notification,
        "LISTEN side_ch11; \
         CREATE FUNCTION pg_temp.side_def() RETURNS int LANGUAGE sql AS \
         $$ SELECT 1 FROM pg_notify('side_ch11', (SELECT address FROM public.customers WHERE id = 81)) $$; \
         CREATE TEMP TABLE side_td (id int, x int DEFAULT pg_temp.side_def())",
        "INSERT INTO side_td (id) VALUES (1)",
    ),
    (
        // An operator runs its function.
        Side::Notification,
        "LISTEN side_ch12; \
         CREATE FUNCTION pg_temp.side_opf(t text, i int) RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_notify('side_ch12', t) $$; \
         CREATE OPERATOR pg_temp.### (LEFTARG = text, RIGHTARG = int, FUNCTION = pg_temp.side_opf)",
        "SELECT address OPERATOR(pg_temp.###) 1 FROM customers WHERE id = 83",
    ),
    (
        // A rule that answers the INSERT with rows of its own.
        Side::Error,
        "CREATE TEMP TABLE side_ti (id int); \
         CREATE RULE side_ti_rule AS ON INSERT TO side_ti DO INSTEAD \
         SELECT full_name, address FROM public.customers WHERE id = NEW.id",
        "INSERT INTO side_ti VALUES (84)",
    ),
    // ---- settings: SHOW, current_setting, pg_settings, ParameterStatus
    (
        Side::Setting,
        "",
        "SELECT set_config('application_name', full_name, false) FROM customers WHERE id = 40; SHOW application_name",
    ),
    (
        // ParameterStatus alone (psql shows nothing of it).
        Side::Setting,
        "",
        "SELECT 1 FROM customers WHERE id = 41 AND set_config('application_name', address, false) IS NOT NULL",
    ),
    (
        Side::Setting,
        "",
        "SELECT set_config('side.note', address, false) FROM customers WHERE id = 42; SELECT current_setting('side.note')",
    ),
    (
        Side::Setting,
        "",
        "SELECT set_config('search_path', full_name, false) FROM customers WHERE id = 43; SHOW search_path",
    ),
    (
        Side::Setting,
        "",
        "DO $$ BEGIN EXECUTE format('SET application_name = %L', (SELECT address FROM customers WHERE id = 44)); END $$; \
         SHOW application_name",
    ),
    (
        Side::Setting,
        "CREATE FUNCTION pg_temp.side_set(t text) RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM set_config('application_name', t, false); RETURN 1; END $$",
        "SELECT pg_temp.side_set(full_name) FROM customers WHERE id = 45; SELECT current_setting('application_name')",
    ),
    (
        Side::Setting,
        "",
        "BEGIN; SELECT set_config('side.local', full_name, true) FROM customers WHERE id = 46; \
         SELECT setting FROM pg_settings WHERE name = 'side.local'; COMMIT",
    ),
    (
        Side::Setting,
        "CREATE TEMP TABLE side_ts (id int); \
         CREATE FUNCTION pg_temp.side_ts_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM set_config('side.trig', (SELECT address FROM public.customers WHERE id = NEW.id), false); RETURN NEW; END $$; \
         CREATE TRIGGER side_ts_trg AFTER INSERT ON side_ts FOR EACH ROW EXECUTE FUNCTION pg_temp.side_ts_fn()",
        "INSERT INTO side_ts VALUES (47); SHOW side.trig",
    ),
    (
        Side::Setting,
        "CREATE TEMP TABLE side_tp (id int); \
         CREATE FUNCTION pg_temp.side_tp_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM set_config('application_name', (SELECT full_name FROM public.customers WHERE id = NEW.id), false); RETURN NEW; END $$; \
         CREATE TRIGGER side_tp_trg AFTER INSERT ON side_tp FOR EACH ROW EXECUTE FUNCTION pg_temp.side_tp_fn()",
        "INSERT INTO side_tp VALUES (48)",
    ),
    // ---- advisory locks: a key can carry only a number (the SSN's digits);
    // pg_locks shows a bigint key as classid (high half) and objid (low half).
    (
        Side::AdvisoryLock,
        "",
        "SELECT pg_advisory_lock(replace(ssn, '-', '')::bigint) FROM customers WHERE id = 50; \
         SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (
        Side::AdvisoryLock,
        "",
        "BEGIN; SELECT pg_advisory_xact_lock(replace(ssn, '-', '')::bigint) FROM customers WHERE id = 51; \
         SELECT classid::bigint << 32 | objid::bigint AS k FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid(); COMMIT",
    ),
    (
        Side::AdvisoryLock,
        "",
        "SELECT pg_try_advisory_lock_shared(replace(ssn, '-', '')::int, 7) FROM customers WHERE id = 52; \
         SELECT classid, objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (
        Side::AdvisoryLock,
        "",
        "DO $$ BEGIN PERFORM pg_advisory_lock((SELECT replace(ssn, '-', '')::bigint FROM customers WHERE id = 53)); END $$; \
         SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (
        Side::AdvisoryLock,
        "CREATE FUNCTION pg_temp.side_lock(k bigint) RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_advisory_lock(k) $$",
        "SELECT pg_temp.side_lock(replace(ssn, '-', '')::bigint) FROM customers WHERE id = 54; \
         SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (
        Side::AdvisoryLock,
        "CREATE TEMP TABLE side_tl (id int); \
         CREATE FUNCTION pg_temp.side_tl_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_lock((SELECT replace(ssn, '-', '')::bigint FROM public.customers WHERE id = NEW.id)); RETURN NEW; END $$; \
         CREATE TRIGGER side_tl_trg AFTER INSERT ON side_tl FOR EACH ROW EXECUTE FUNCTION pg_temp.side_tl_fn()",
        "INSERT INTO side_tl VALUES (55); SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    // ---- large objects
    (
        Side::LargeObject,
        "",
        "BEGIN; SELECT lo_from_bytea(4242001, convert_to(full_name, 'UTF8')) FROM customers WHERE id = 60; \
         SELECT encode(lo_get(4242001), 'escape'); ROLLBACK",
    ),
    (
        Side::LargeObject,
        "",
        "BEGIN; SELECT lo_create(4242002); SELECT lo_put(4242002, 0, convert_to(address, 'UTF8')) FROM customers WHERE id = 61; \
         SELECT convert_from(lo_get(4242002), 'UTF8'); ROLLBACK",
    ),
    (
        Side::LargeObject,
        "",
        "BEGIN; SELECT lo_create(4242003); \
         SELECT lowrite(lo_open(4242003, 131072), convert_to(full_name, 'UTF8')) FROM customers WHERE id = 62; \
         SELECT encode(loread(lo_open(4242003, 262144), 100), 'escape'); ROLLBACK",
    ),
    (
        // Read back as bytea (hex).
        Side::LargeObject,
        "",
        "BEGIN; SELECT lo_from_bytea(4242004, convert_to(address, 'UTF8')) FROM customers WHERE id = 63; \
         SELECT lo_get(4242004); ROLLBACK",
    ),
    (
        Side::LargeObject,
        "",
        "BEGIN; DO $$ BEGIN PERFORM lo_from_bytea(4242005, convert_to((SELECT address FROM customers WHERE id = 64), 'UTF8')); END $$; \
         SELECT encode(lo_get(4242005), 'escape'); ROLLBACK",
    ),
    (
        Side::LargeObject,
        "CREATE FUNCTION pg_temp.side_lo(t text) RETURNS oid LANGUAGE sql AS $$ SELECT lo_from_bytea(4242006, convert_to(t, 'UTF8')) $$",
        "BEGIN; SELECT pg_temp.side_lo(full_name) FROM customers WHERE id = 65; \
         SELECT encode(lo_get(4242006), 'escape'); ROLLBACK",
    ),
    (
        Side::LargeObject,
        "CREATE TEMP TABLE side_tlo (id int); \
         CREATE FUNCTION pg_temp.side_tlo_fn() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM lo_from_bytea(4242007, convert_to((SELECT full_name FROM public.customers WHERE id = NEW.id), 'UTF8')); RETURN NEW; END $$; \
         CREATE TRIGGER side_tlo_trg AFTER INSERT ON side_tlo FOR EACH ROW EXECUTE FUNCTION pg_temp.side_tlo_fn()",
        "BEGIN; INSERT INTO side_tlo VALUES (66); SELECT encode(lo_get(4242007), 'escape'); ROLLBACK",
    ),
    // ---- the same channels through functions and a trigger masker reads
    // from the catalog ([`SIDE_FUNCTIONS`])
    (Side::Notification, "LISTEN side_tell", "SELECT side.tell(address) FROM customers WHERE id = 70"),
    (Side::Notification, "LISTEN side_nc", "SELECT side.notify_customer(71)"),
    (Side::Notification, "LISTEN side_audit", "INSERT INTO side.audit VALUES (72)"),
    (Side::Setting, "", "SELECT side.set_name(full_name) FROM customers WHERE id = 73; SHOW application_name"),
    (
        Side::AdvisoryLock,
        "",
        "SELECT side.lock(replace(ssn, '-', '')::bigint) FROM customers WHERE id = 74; \
         SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (Side::Notice, "", "SELECT side.warn(full_name) FROM customers WHERE id = 75"),
    (Side::Error, "", "SELECT side.to_int(address) FROM customers WHERE id = 76"),
    // ---- COPY with each option: the raw bytes must show nothing either
    (Side::Copy, "", "COPY customers (id, full_name, address) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)"),
    (
        Side::Copy,
        "",
        "COPY customers (full_name, address) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE (full_name, address), HEADER)",
    ),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (ENCODING 'UTF8')"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (ENCODING 'LATIN1')"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (FORMAT csv, QUOTE '''')"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (FORMAT csv, QUOTE '\"', ESCAPE '\\')"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (DELIMITER '|')"),
    (Side::Copy, "", "COPY customers (address, full_name) TO STDOUT (FORMAT csv, DELIMITER ';')"),
    (Side::Copy, "", "COPY customers (full_name, address, ssn) TO STDOUT (NULL 'NA')"),
    (Side::Copy, "", "COPY customers (full_name, ssn, address) TO STDOUT (FORMAT csv, NULL '')"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (FORMAT text, HEADER)"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (FORMAT csv, HEADER true)"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (FREEZE)"),
    (Side::Copy, "", "COPY customers TO STDOUT"),
    (Side::Copy, "", "COPY customers (address, full_name, id) TO STDOUT"),
    (Side::Copy, "", "COPY customers (\"full_name\", ADDRESS) TO STDOUT (FORMAT binary)"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT (DELIMITER ',')"),
    (Side::Copy, "", "COPY (SELECT full_name, address FROM customers WHERE id < 100) TO STDOUT"),
    (Side::Copy, "", "COPY (SELECT full_name, address FROM customers WHERE id < 100) TO STDOUT WITH (FORMAT csv)"),
    (Side::Copy, "", "COPY (SELECT full_name, address FROM customers WHERE id < 100) TO STDOUT WITH (FORMAT binary)"),
    (
        Side::Copy,
        "",
        "COPY (SELECT upper(full_name) || ' / ' || address FROM customers WHERE id < 100) TO STDOUT (FORMAT csv, FORCE_QUOTE *)",
    ),
    (Side::Copy, "", "COPY (TABLE customer_contacts) TO STDOUT (FORMAT csv, HEADER)"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT WITH CSV HEADER FORCE QUOTE *"),
    (Side::Copy, "", "COPY customers (full_name, address) TO STDOUT WITH DELIMITER AS '|' NULL AS 'nil'"),
    (Side::Copy, "", "COPY customers TO STDOUT WITH BINARY"),
    (Side::Copy, "", "SELECT 1; COPY customers (full_name) TO STDOUT (FORMAT csv, FORCE_QUOTE *); SELECT 2"),
];

/// Clean counterparts of [`SIDE_CHANNELS`]: each channel used with data
/// the policy allows (counts, plans, constants). Through masker each must
/// be byte for byte what a direct connection gets.
pub const SIDE_CHANNELS_CLEAN: &[(Side, &str, &str)] = &[
    (Side::Error, "", "SELECT plan::int FROM customers WHERE id = 1"),
    (Side::Error, "", "SELECT ('\"' || plan)::json FROM customers WHERE id = 2"),
    (
        Side::Error,
        "",
        "DO $$ BEGIN RAISE EXCEPTION 'too many' USING DETAIL = (SELECT count(*) FROM customers)::text, HINT = 'filter'; END $$",
    ),
    (Side::Error, "", "SELECT side.to_int(status) FROM orders WHERE id = 1"),
    (Side::Notice, "", "DO $$ BEGIN RAISE NOTICE 'customers: %', (SELECT count(*) FROM customers); END $$"),
    (Side::Notice, "", "SELECT side.warn(plan) FROM customers WHERE id = 1"),
    (Side::Notification, "LISTEN c", "SELECT pg_notify('c', 'hello'); NOTIFY c, 'world'"),
    (Side::Notification, "LISTEN side_tell", "SELECT side.tell('hello ' || count(*)) FROM orders"),
    (Side::Setting, "", "SELECT side.set_name(plan) FROM customers WHERE id = 2; SHOW application_name"),
    (
        Side::AdvisoryLock,
        "",
        "SELECT side.lock(count(*)) FROM orders; SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    (Side::Notification, "LISTEN c", "DO $$ BEGIN PERFORM pg_notify('c', (SELECT count(*) FROM orders)::text); END $$"),
    (
        Side::Setting,
        "",
        "SELECT set_config('application_name', 'x', false); SHOW application_name; SELECT current_setting('application_name')",
    ),
    (
        Side::Setting,
        "",
        "SELECT set_config('side.plan', plan, false) FROM customers WHERE id = 1; SELECT current_setting('side.plan')",
    ),
    (
        Side::AdvisoryLock,
        "",
        "SELECT pg_advisory_lock(4711); SELECT classid, objid, objsubid, mode, granted FROM pg_locks \
         WHERE locktype = 'advisory' AND pid = pg_backend_pid(); SELECT pg_advisory_unlock(4711)",
    ),
    (
        Side::LargeObject,
        "",
        // Written with constants; read back only as metadata: what lo_get
        // and loread return is masked whole whatever it is (a large object
        // may hold what anything outside masker stored).
        "BEGIN; SELECT lo_from_bytea(4243001, 'hello'); SELECT lo_put(4243001, 5, ' world'); \
         SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4243001; SELECT lo_unlink(4243001); ROLLBACK",
    ),
    (Side::Copy, "", "COPY orders TO STDOUT (FORMAT csv, FORCE_QUOTE *, HEADER)"),
    (
        Side::Copy,
        "",
        "COPY (SELECT id, plan, balance FROM customers ORDER BY id LIMIT 200) TO STDOUT (DELIMITER '|', NULL 'NA', HEADER)",
    ),
    (Side::Copy, "", "COPY orders (id, order_no, amount) TO STDOUT (FORMAT binary)"),
];
