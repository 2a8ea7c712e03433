//! Real tools through masker (issue 13, item 9), with the fixture's full
//! policy ([`masker_tests::fixture::POLICY`]) and `refuse_inference = true`:
//!
//! - SQLAlchemy's reflection (`inspect()` and `MetaData.reflect()`, from the
//!   tests' venv) gives through masker exactly what it gives directly;
//! - `pg_dump --schema-only` through masker is byte-identical to the direct
//!   dump (nothing normalised);
//! - `pg_dump --data-only` through masker is a masked dump: no seeded
//!   personal value in it, and it restores with psql into a fresh database
//!   holding the schema: with the unique constraints in place when the
//!   policy pseudonymises the unique columns (distinct values stay
//!   distinct), and only into the tables without them when it does not
//!   (the contrast shows the constraints are really checked);
//! - node-pg ([`masker_tests::node`]) running a subset of the compatibility
//!   corpus gets through masker exactly what it gets directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use masker_tests::cluster::{APP_PASSWORD, APP_USER};
use masker_tests::finder::Finder;
use masker_tests::fixture::{self, PersonalValues};
use masker_tests::process::{self, Output};
use masker_tests::psql::Psql;
use masker_tests::{ConnInfo, MaskerProxy, PgCluster, node, python};
use serde_json::Value;

const KEY: &str = "tools-suite-key-0123456789abcdef";
const TOOL_LIMIT: Duration = Duration::from_secs(300);

/// The fixture's policy with `refuse_inference = true`.
fn strict(policy: &str) -> String {
    let out = policy.replace("comment_classification = true", "comment_classification = true\nrefuse_inference = true");
    assert_ne!(out, policy, "the policy has no `comment_classification = true` line to extend");
    out
}

/// A policy whose actions do not keep unique columns unique: emails keep
/// only their domain, `external_id` is redacted (one placeholder UUID).
fn non_unique_policy() -> String {
    let policy = strict(fixture::POLICY);
    let email = "name = \"email\"\ncolumn_names = [\"*email*\"]\naction = \"pseudonymize\"\nformat_preserving = true";
    let external = "name = \"external\"\ncolumn_names = [\"external_id\"]\naction = \"pseudonymize\"";
    assert!(policy.contains(email) && policy.contains(external), "the fixture policy changed: adjust this test");
    policy
        .replace(email, "name = \"email\"\ncolumn_names = [\"*email*\"]\naction = \"email\"")
        .replace(external, "name = \"external\"\ncolumn_names = [\"external_id\"]\naction = \"redact\"")
}

/// `masker proxy` in front of the shared cluster with `policy`, the catalog
/// role `app` (LOGIN only, as the README asks).
fn start(name: &str, policy: &str) -> MaskerProxy {
    let cluster = PgCluster::shared();
    let path = cluster.scratch_dir(&format!("tools-{name}")).expect("scratch dir").join("policy.toml");
    std::fs::write(&path, policy).expect("policy");
    let args: Vec<String> = ["--policy", &path.to_string_lossy(), "--identity", "ci-tools", "--catalog-user", APP_USER]
        .iter()
        .map(|s| s.to_string())
        .collect();
    MaskerProxy::start_with_env(
        cluster.addr(),
        &args,
        &[("MASKER_CATALOG_PASSWORD", APP_PASSWORD), (fixture::POLICY_KEY_ENV, KEY)],
    )
    .unwrap_or_else(|e| panic!("starting masker proxy: {e:#}"))
}

/// A fresh file name in the cluster's scratch space.
fn scratch_file(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PgCluster::shared().scratch_dir("tools-files").expect("scratch dir");
    dir.join(format!("{what}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// A fresh database name.
fn fresh_db(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("tools_{what}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs a PostgreSQL client program of the cluster's bindir against `info`
/// (password from the environment, libpq's default `sslmode=prefer`).
fn pg_tool(program: &str, info: &ConnInfo, args: &[&str]) -> Output {
    let mut cmd = Command::new(PgCluster::shared().bindir().join(program));
    cmd.args(["-h", &info.host, "-p", &info.port.to_string(), "-U", &info.user, "-d", &info.dbname, "-w"])
        .args(args)
        .env("PGPASSWORD", &info.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .env_remove("PGOPTIONS")
        .env_remove("PGTZ");
    process::run(cmd, None, TOOL_LIMIT).unwrap_or_else(|e| panic!("{program}: {e:#}"))
}

/// `pg_dump ARGS -f FILE` against `info`; the dump's exact bytes.
fn pg_dump(info: &ConnInfo, args: &[&str], what: &str) -> Vec<u8> {
    let file = scratch_file(what);
    let file_arg = file.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    if !args.iter().any(|a| a.starts_with("--restrict-key")) {
        all.push("--restrict-key=toolssuite");
    }
    all.extend(["-f", &file_arg]);
    let out = pg_tool("pg_dump", info, &all);
    out.assert_success();
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// The first line where two dumps differ, for a failure message (lines of
/// the direct dump only: they hold no masked value).
fn first_difference(direct: &[u8], masked: &[u8]) -> String {
    let (d, m) = (String::from_utf8_lossy(direct), String::from_utf8_lossy(masked));
    for (i, (a, b)) in d.lines().zip(m.lines()).enumerate() {
        if a != b {
            return format!("line {}: direct {a:?}, through masker a different line of {} bytes", i + 1, b.len());
        }
    }
    format!("one is a prefix of the other ({} vs {} lines)", d.lines().count(), m.lines().count())
}

/// Runs a psql script file against `info` (`-v ON_ERROR_STOP=1`, one
/// transaction), whatever its outcome.
fn psql_file(info: &ConnInfo, file: &Path) -> Output {
    Psql::new(info).arg("--single-transaction").arg("-f").arg(&file.to_string_lossy()).run()
}

fn write_file(what: &str, bytes: &[u8]) -> PathBuf {
    let file = scratch_file(what);
    std::fs::write(&file, bytes).expect("writing a dump");
    file
}

/// One psql query, its unaligned tuples-only output.
fn query(info: &ConnInfo, sql: &str) -> String {
    Psql::new(info).command(sql).run_ok().trim().to_owned()
}

/// A finder for every seeded value a masked dump must not contain. Birth
/// dates on January 1st are exempt: generalised to the year, they are their
/// own mask.
fn finder(values: &PersonalValues) -> Finder {
    Finder::new(values, |kind, value| kind == "birth_date" && value.ends_with("-01-01"))
}

// ---------------------------------------------------------------- SQLAlchemy

/// Reflects the whole `shop` database with SQLAlchemy and prints it as JSON
/// (types by their `repr`, which carries length, precision and timezone).
const REFLECT: &str = r#"
import json, sys
import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

engine = sa.create_engine(sys.argv[1], poolclass=sa.pool.NullPool)
out = {"version": sa.__version__}
insp = sa.inspect(engine)
out["schemas"] = insp.get_schema_names()
out["default_schema"] = insp.default_schema_name
for schema in ["public", "fixture"]:
    s = {"tables": insp.get_table_names(schema=schema), "views": insp.get_view_names(schema=schema),
         "materialized": insp.get_materialized_view_names(schema=schema),
         "sequences": insp.get_sequence_names(schema=schema), "relations": {}}
    for name in s["tables"] + s["views"]:
        s["relations"][name] = {
            "columns": insp.get_columns(name, schema=schema),
            "pk": insp.get_pk_constraint(name, schema=schema),
            "fks": insp.get_foreign_keys(name, schema=schema),
            "indexes": insp.get_indexes(name, schema=schema),
            "unique": insp.get_unique_constraints(name, schema=schema),
            "checks": insp.get_check_constraints(name, schema=schema),
            "comment": insp.get_table_comment(name, schema=schema),
        }
    s["view_definitions"] = {v: insp.get_view_definition(v, schema=schema) for v in s["views"]}
    out[schema] = s
md = sa.MetaData()
md.reflect(engine, views=True)
out["metadata"] = {
    name: {"ddl": str(CreateTable(t).compile(engine)), "repr": repr(t),
           "indexes": sorted(str(CreateIndex(i).compile(engine)) for i in t.indexes)}
    for name, t in md.tables.items()
}
engine.dispose()
sys.stdout.write(json.dumps(out, default=repr, sort_keys=True))
"#;

fn reflect(info: &ConnInfo) -> Value {
    let url = format!(
        "postgresql+psycopg://{}:{}@{}:{}/{}?connect_timeout=10",
        info.user, info.password, info.host, info.port, info.dbname
    );
    let mut cmd = Command::new(python::venv_python());
    cmd.args(["-c", REFLECT, &url]).env("PGTZ", "UTC").env_remove("PGSSLMODE");
    let out = process::run(cmd, None, TOOL_LIMIT).unwrap_or_else(|e| panic!("SQLAlchemy: {e:#}"));
    assert!(out.status.success(), "SQLAlchemy reflection failed ({}):\n{}", out.status, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("SQLAlchemy's output: {e}"))
}

/// The first JSON path where two values differ.
fn json_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (va, vb) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
                if let Some(d) = json_difference(&format!("{path}.{key}"), va, vb) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| json_difference(&format!("{path}[{i}]"), va, vb))
        }
        _ => (a != b).then(|| format!("{path}: direct {a}, through masker {b}")),
    }
}

#[test]
fn sqlalchemy_reflection_is_identical_through_masker() {
    let proxy = start("sqlalchemy", &strict(fixture::POLICY));
    let cluster = PgCluster::shared();
    let direct = reflect(&cluster.app());
    let masked = reflect(&cluster.app().at(proxy.addr()));
    // The reflection saw the fixture: it is not comparing two empty answers.
    let customers = &direct["public"]["relations"]["customers"];
    assert_eq!(customers["columns"].as_array().map(Vec::len), Some(18), "customers' columns: {customers}");
    assert_eq!(direct["public"]["tables"], serde_json::json!(["customers", "orders", "payments"]));
    assert_eq!(direct["public"]["views"], serde_json::json!(["customer_contacts"]));
    for (relation, what) in [("customers", "unique"), ("orders", "fks"), ("orders", "checks"), ("orders", "indexes")] {
        let found = &direct["public"]["relations"][relation][what];
        assert!(found.as_array().is_some_and(|a| !a.is_empty()), "no {what} of {relation} reflected: {found}");
    }
    assert!(direct["metadata"].as_object().is_some_and(|m| m.len() == 4), "MetaData.reflect: {}", direct["metadata"]);
    if let Some(diff) = json_difference("", &direct, &masked) {
        panic!("SQLAlchemy's reflection differs through masker: {diff}");
    }
}

// ---------------------------------------------------------------- pg_dump

/// Whether `masked` is `direct` with some of its single-quoted literals
/// replaced by `'***'` (and nothing else changed).
fn only_literals_replaced(direct: &str, masked: &str) -> bool {
    let (d, m) = (direct.as_bytes(), masked.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < d.len() {
        if d[i] == b'\'' {
            // The literal's end: the next quote not doubled.
            let mut end = i + 1;
            while end < d.len() {
                if d[end] == b'\'' {
                    if d.get(end + 1) == Some(&b'\'') {
                        end += 2;
                        continue;
                    }
                    break;
                }
                end += 1;
            }
            let literal = &d[i..(end + 1).min(d.len())];
            if m[j..].starts_with(literal) {
                j += literal.len();
            } else if m[j..].starts_with(b"'***'") {
                j += 5;
            } else {
                return false;
            }
            i += literal.len();
        } else {
            if m.get(j) != Some(&d[i]) {
                return false;
            }
            i += 1;
            j += 1;
        }
    }
    j == m.len()
}

#[test]
fn pg_dump_schema_only_is_byte_identical_through_masker() {
    let proxy = start("schema", &strict(fixture::POLICY));
    let cluster = PgCluster::shared();
    // `\restrict KEY` (pg_dump 15.14 and later): a random key per run
    // unless given, so both runs are given the same.
    let base = ["--schema-only", "--restrict-key=toolssuite"];
    // The application's schema: byte for byte, with owners and grants and without.
    for extra in [&[][..], &["--no-owner", "--no-privileges"][..]] {
        let args: Vec<&str> = base.iter().chain(extra).chain(&["--schema=public"]).copied().collect();
        let direct = pg_dump(&cluster.app(), &args, "schema-direct");
        let masked = pg_dump(&cluster.app().at(proxy.addr()), &args, "schema-masked");
        let text = String::from_utf8_lossy(&direct);
        for expected in
            ["CREATE TABLE public.customers", "CREATE VIEW public.customer_contacts", "CHECK ((status", "pii:ssn"]
        {
            assert!(text.contains(expected), "the direct dump ({args:?}) has no {expected:?}");
        }
        assert!(direct == masked, "pg_dump {args:?} differs through masker: {}", first_difference(&direct, &masked));
    }
    // The whole database, with the fixture's helper functions: one of them
    // (`fixture.personal_values()`) matches `notes`, a classified column,
    // against literals in its body. Those literals, and nothing else, come
    // back replaced (issue 13 item 4: definitions keep their structure, never
    // a value standing against a classified column).
    let direct = pg_dump(&cluster.app(), &base, "full-direct");
    let masked = pg_dump(&cluster.app().at(proxy.addr()), &base, "full-masked");
    let (d, m) = (String::from_utf8_lossy(&direct), String::from_utf8_lossy(&masked));
    assert_eq!(d.lines().count(), m.lines().count(), "{}", first_difference(&direct, &masked));
    let differing: Vec<(&str, &str)> = d.lines().zip(m.lines()).filter(|(a, b)| a != b).collect();
    for (a, b) in &differing {
        assert!(only_literals_replaced(a, b), "a line of the dump differs by more than literals: {a:?}");
    }
    assert_eq!(differing.len(), 1, "lines with literals replaced: {differing:?}");
    assert!(differing[0].0.contains("WHERE notes LIKE '%@work.example%'"), "{differing:?}");
}

/// Loads the schema (as pg_dump printed it directly) into a fresh database
/// owned by `app`; returns the database's login.
fn fresh_copy(what: &str, schema: &[u8]) -> ConnInfo {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(&fresh_db(what)).expect("creating a database");
    let file = write_file("schema.sql", schema);
    psql_file(&db, &file).assert_success();
    db
}

fn drop_db(info: &ConnInfo) {
    let _ =
        PgCluster::shared().run_sql_as_superuser("postgres", &format!("DROP DATABASE IF EXISTS \"{}\";", info.dbname));
}

/// Statistics of the source and a restored copy that masking must keep:
/// row counts, allowed columns, and the number of distinct values of the
/// pseudonymised columns.
const KEPT: &str = "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), (SELECT count(*) FROM payments), \
    (SELECT sum(amount) FROM orders), (SELECT sum(balance) FROM customers), (SELECT max(created_at) FROM orders), \
    (SELECT count(DISTINCT email) FROM customers), (SELECT count(DISTINCT external_id) FROM customers), \
    (SELECT count(DISTINCT full_name) FROM customers)";

#[test]
fn pg_dump_data_only_through_masker_is_masked_and_restores_with_unique_constraints() {
    let cluster = PgCluster::shared();
    let values = PersonalValues::load(cluster).expect("seeded values");
    let finder = finder(&values);
    let proxy = start("data", &strict(fixture::POLICY));
    let schema = pg_dump(&cluster.app(), &["--schema-only", "--no-owner", "--no-privileges"], "schema");
    let masked = pg_dump(&cluster.app().at(proxy.addr()), &["--data-only"], "data-masked");

    // The control: the same dump directly holds the seeded values.
    let direct = pg_dump(&cluster.app(), &["--data-only"], "data-direct");
    assert!(!finder.find(&direct).is_empty(), "the direct data dump holds no seeded value: the finder is blind");
    let found = finder.find(&masked);
    assert!(found.is_empty(), "the masked data dump holds {} seeded values: {:?}", found.hits.len(), found.summary());
    assert!(masked.len() > 1_000_000, "the masked dump is only {} bytes", masked.len());

    // Valid for its type and unique where the schema says so: the dump
    // restores into the full schema (primary keys, unique constraints,
    // foreign keys, checks) in one transaction.
    let copy = fresh_copy("pseudonymised", &schema);
    let out = psql_file(&copy, &write_file("data-masked.sql", &masked));
    assert!(out.status.success(), "restoring the masked dump failed ({}):\n{}", out.status, out.stderr);
    assert!(out.stderr.is_empty(), "restoring the masked dump printed:\n{}", out.stderr);
    let constraints = query(
        &copy,
        "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'customers'::regclass AND contype = 'u'",
    );
    assert_eq!(constraints, "customers_email_key,customers_external_id_key");
    assert_eq!(query(&copy, KEPT), query(&cluster.app(), KEPT), "row counts, allowed columns or distinct pseudonyms");
    // Every classified column of the copy differs from the source row by row
    // (the finder above says the same about the whole dump).
    let same = query(
        &copy,
        "SELECT count(*) FILTER (WHERE ssn IS NOT NULL), count(*) FILTER (WHERE card_number ~ '^[0-9]{16}$') FROM customers",
    );
    assert_eq!(same, "0|0", "ssn (null) and card_number (redact) kept values");
    drop_db(&copy);
}

#[test]
fn pg_dump_data_only_with_non_unique_masks_restores_only_without_unique_constraints() {
    let cluster = PgCluster::shared();
    let values = PersonalValues::load(cluster).expect("seeded values");
    let proxy = start("data-non-unique", &non_unique_policy());
    let masked = pg_dump(&cluster.app().at(proxy.addr()), &["--data-only"], "data-non-unique");
    let found = finder(&values).find(&masked);
    assert!(found.is_empty(), "the masked data dump holds {} seeded values: {:?}", found.hits.len(), found.summary());
    let data = write_file("data-non-unique.sql", &masked);

    // Every value is valid for its type: the tables without their
    // constraints and indexes (pg_dump's pre-data section) take the dump.
    let tables =
        pg_dump(&cluster.app(), &["--schema-only", "--no-owner", "--no-privileges", "--section=pre-data"], "pre");
    let copy = fresh_copy("pre_data", &tables);
    let out = psql_file(&copy, &data);
    assert!(
        out.status.success(),
        "restoring the masked dump into bare tables failed ({}):\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(
        query(&copy, "SELECT count(*), count(DISTINCT email), count(DISTINCT external_id) FROM customers"),
        "5000|5|1"
    );
    drop_db(&copy);

    // With the unique constraints in place the same dump cannot restore:
    // emails that keep only their domain collide.
    let schema = pg_dump(&cluster.app(), &["--schema-only", "--no-owner", "--no-privileges"], "schema");
    let copy = fresh_copy("unique", &schema);
    let out = psql_file(&copy, &data);
    assert!(!out.status.success(), "a dump with colliding masked emails restored into unique columns");
    assert!(out.stderr.contains("duplicate key value violates unique constraint"), "{}", out.stderr);
    drop_db(&copy);
}

#[test]
fn only_literals_replaced_sees_any_other_change() {
    assert!(only_literals_replaced("WHERE a LIKE 'x' AND b = 'it''s'", "WHERE a LIKE '***' AND b = 'it''s'"));
    assert!(only_literals_replaced("f('a', 'b')", "f('***', '***')"));
    assert!(only_literals_replaced("no literal", "no literal"));
    assert!(!only_literals_replaced("WHERE a LIKE 'x'", "WHERE b LIKE '***'"));
    assert!(!only_literals_replaced("WHERE a = 1", "WHERE a = '***'"));
    assert!(!only_literals_replaced("'x'", "'***' AND true"));
}

// ---------------------------------------------------------------- node-pg

/// Cases of the compatibility corpus (`compat.rs`) as node-pg runs them:
/// introspection as an ORM does it, the client's own values that look like
/// personal data (literals and parameters), a named prepared statement,
/// server errors and notices, and allowed columns of personal tables.
fn node_steps() -> Vec<node::Step> {
    use node::Step;
    vec![
        // Introspection.
        Step::simple(
            "SELECT column_name, data_type, is_nullable, column_default, ordinal_position, character_maximum_length \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'customers' ORDER BY ordinal_position",
        ),
        Step::extended(
            "SELECT a.attname, a.atttypid::regtype::text, a.atttypmod, a.attnotnull, col_description(a.attrelid, a.attnum) \
             FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 ORDER BY a.attnum",
            &[Some("public.customers")],
        ),
        Step::extended(
            "SELECT c.relname, i.indisunique, i.indisprimary, pg_get_indexdef(i.indexrelid), \
             CASE WHEN i.indpred IS NOT NULL THEN pg_get_expr(i.indpred, i.indrelid) END \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = ANY($1::regclass[]) ORDER BY 1",
            &[Some("{public.customers,public.orders,public.payments}")],
        ),
        Step::simple(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'orders'::regclass ORDER BY conname",
        ),
        Step::simple(
            "SELECT n.tableoid, n.oid, n.nspname FROM pg_namespace n WHERE n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' ORDER BY n.oid",
        ),
        Step::simple("SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = 'public'"),
        // The client's own values that look like personal data.
        Step::simple(
            "SELECT 'jane.doe@example.com' AS email, '+1 (555) 555-0100' AS phone, '123-45-6789' AS ssn, '4111 1111 1111 1111' AS card",
        ),
        Step::extended(
            "SELECT $1::text AS email, $2::text AS phone, $3::date AS born, $4::inet AS ip, $5::text AS iban",
            &[
                Some("jane.doe@example.com"),
                Some("+44 20 7946 0018"),
                Some("1980-02-29"),
                Some("192.168.1.77"),
                Some("DE89370400440532013000"),
            ],
        ),
        Step::extended(
            "SELECT upper($1::text) || ' <' || $2::text || '>'",
            &[Some("Jane Doe"), Some("jane@example.org")],
        ),
        // A named prepared statement, bound twice, over allowed columns.
        Step::prepared(
            "orders_of",
            "SELECT id, order_no, amount, created_at, status FROM orders WHERE customer_id = $1 ORDER BY id",
            &[Some("7")],
        ),
        Step::prepared(
            "orders_of",
            "SELECT id, order_no, amount, created_at, status FROM orders WHERE customer_id = $1 ORDER BY id",
            &[Some("8")],
        ),
        Step::extended(
            "SELECT id, plan, balance, signup_ts, tags FROM customers WHERE id <= $1 ORDER BY id",
            &[Some("50")],
        ),
        Step::simple("SELECT status, count(*), sum(amount) FROM orders GROUP BY ROLLUP (status) ORDER BY 1"),
        // Errors and notices of statements that touch no personal data.
        Step::simple("SELECT 1/0"),
        Step::extended("SELECT $1::int", &[Some("abc")]),
        Step::simple("SELEC id FROM orders"),
        Step::extended("SELECT statu FROM orders", &[]),
        Step::simple("CREATE TEMP TABLE node_t (id int PRIMARY KEY, note text NOT NULL)"),
        Step::extended("INSERT INTO node_t VALUES ($1, $2)", &[Some("1"), Some("jane.doe@example.com")]),
        Step::extended("INSERT INTO node_t VALUES ($1, $2)", &[Some("1"), Some("again")]),
        Step::extended("INSERT INTO node_t VALUES ($1, $2)", &[Some("2"), None]),
        // Computed columns: a temp table's OID differs between any two sessions.
        Step::simple("SELECT array_agg(id ORDER BY id), string_agg(note, ',' ORDER BY id) FROM node_t"),
        Step::simple("DO $$ BEGIN RAISE NOTICE 'orders: %', (SELECT count(*) FROM orders); END $$"),
    ]
}

#[test]
fn node_pg_gets_through_masker_what_it_gets_directly() {
    let proxy = start("node", &strict(fixture::POLICY));
    let cluster = PgCluster::shared();
    let steps = node_steps();
    let direct = node::run(&cluster.app(), &steps).unwrap_or_else(|e| panic!("node-pg directly: {e:#}"));
    let masked =
        node::run(&cluster.app().at(proxy.addr()), &steps).unwrap_or_else(|e| panic!("node-pg through masker: {e:#}"));
    // What the direct session got is what the cases are about.
    let got = direct["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(got.len(), steps.len(), "{direct}");
    let errors: Vec<&str> = got.iter().filter_map(|s| s["error"]["code"].as_str()).collect();
    assert_eq!(errors, ["22012", "22P02", "42601", "42703", "23505", "23502"], "errors directly");
    assert_eq!(direct["notices"][0]["message"], "orders: 20000", "{}", direct["notices"]);
    assert_eq!(got[0]["results"][0]["rowCount"], 18, "information_schema.columns of customers: {}", got[0]);
    assert_eq!(got[10]["results"][0]["rows"].as_array().map(|r| r.is_empty()), Some(false), "{}", got[10]);
    if let Some(diff) = json_difference("", &direct, &masked) {
        panic!("node-pg got something else through masker: {diff}");
    }
}
