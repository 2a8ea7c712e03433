//! Checks of the harness itself: the cluster, the fixture and the clients,
//! all direct (no masker), so a harness problem is not mistaken for a relay bug.

use std::time::Duration;

use masker_tests::compare;
use masker_tests::fixture::{self, PersonalValues};
use masker_tests::psql::Psql;
use masker_tests::{PgCluster, python, within};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn fixture_is_loaded_and_deterministic() {
    within(LIMIT, "fixture", async {
        let cluster = PgCluster::shared();
        let app = cluster.app().connect().await.unwrap();
        let counts = compare::simple(
            &app,
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), \
             (SELECT count(*) FROM payments), (SELECT count(*) FROM customer_contacts)",
        )
        .await
        .unwrap();
        let expected: Vec<Option<String>> =
            [fixture::CUSTOMERS, fixture::ORDERS, fixture::PAYMENTS, fixture::CUSTOMERS]
                .iter()
                .map(|n| Some(n.to_string()))
                .collect();
        assert_eq!(counts[0].rows, vec![expected]);

        // Every card number passes Luhn, every IBAN mod 97, orders look real.
        let checks = compare::simple(
            &app,
            "SELECT bool_and(card_number ~ '^4[0-9]{15}$'), \
                    bool_and(iban ~ '^DE[0-9]{20}$'), \
                    bool_and(ssn ~ '^[0-9]{3}-[0-9]{2}-[0-9]{4}$'), \
                    count(DISTINCT email), count(*) FILTER (WHERE notes ~ '@'), \
                    bool_and(profile ? 'contact') \
             FROM customers; \
             SELECT order_no FROM orders WHERE id = 123; \
             SELECT col_description('customers'::regclass, attnum) FROM pg_attribute \
               WHERE attrelid = 'customers'::regclass AND attname = 'ssn'",
        )
        .await
        .unwrap();
        let row = &checks[0].rows[0];
        assert_eq!(row[..3], [Some("t".into()), Some("t".into()), Some("t".into())]);
        assert_eq!(row[3], Some(fixture::CUSTOMERS.to_string()));
        assert!(row[4].as_deref().unwrap().parse::<u64>().unwrap() > 1000);
        assert_eq!(checks[1].rows, vec![vec![Some("ORD-2024-000123".to_owned())]]);
        assert_eq!(checks[2].rows, vec![vec![Some("pii:ssn".to_owned())]]);

        // Luhn and mod-97 checked in Rust, independently of the SQL generator.
        let rows =
            compare::simple(&app, "SELECT card_number, iban FROM customers ORDER BY id LIMIT 200").await.unwrap();
        for row in &rows[0].rows {
            let card = row[0].as_deref().unwrap();
            assert!(luhn_ok(card), "card {card} fails Luhn");
            let iban = row[1].as_deref().unwrap();
            assert!(iban_ok(iban), "IBAN {iban} fails mod 97");
        }

        // Deterministic: a digest over the whole table is the same every run.
        let digest = compare::digest_simple(&app, "SELECT * FROM customers ORDER BY id").await.unwrap();
        assert_eq!(digest.rows, fixture::CUSTOMERS);
        let again = compare::digest_simple(&app, "SELECT * FROM customers ORDER BY id").await.unwrap();
        assert_eq!(digest, again);
    })
    .await
}

#[test]
fn personal_values_cover_the_seeded_columns() {
    let values = PersonalValues::load(PgCluster::shared()).unwrap();
    for kind in ["full_name", "email", "phone", "ssn", "birth_date", "ip", "card_number", "iban", "address"] {
        assert!(values.of_kind(kind).count() >= 1000, "few values of kind {kind}");
    }
    let email = values.of_kind("email").next().unwrap().to_owned();
    let found = values.found_in(&format!("contact: {email}!"));
    let emails: Vec<_> = found.hits.iter().filter(|h| h.kind == "email").collect();
    assert_eq!(emails.len(), 1, "{found}");
    assert_eq!(emails[0].form, masker_tests::finder::Form::Value);
    assert!(values.found_in("nothing personal here").is_empty());
}

#[test]
fn app_is_not_superuser_and_uses_scram() {
    let cluster = PgCluster::shared();
    let out = Psql::new(&cluster.app())
        .command("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        .command("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'")
        .run();
    assert!(out.stdout.starts_with("app|f\n"), "{out:?}");
    assert!(out.stderr.contains("permission denied"), "app could read pg_authid: {out:?}");
    let out = Psql::new(&cluster.superuser())
        .command("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'")
        .run_ok();
    assert_eq!(out.trim(), "SCRAM-SHA-256$");
    let mut wrong = cluster.app();
    wrong.password = "wrong".into();
    let out = Psql::new(&wrong).command("SELECT 1").run();
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("password authentication failed"), "{out:?}");
}

#[test]
fn psycopg_runs_against_the_cluster() {
    let cluster = PgCluster::shared();
    let rows = python::query(
        &cluster.app().dsn(),
        "SELECT id, email, balance, tags, profile->'prefs', avatar FROM customers ORDER BY id LIMIT 2",
        true,
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], serde_json::json!(1));
    assert!(rows[0][5].as_str().unwrap().starts_with("\\x89504e47"));
}

#[test]
fn node_pg_runs_against_the_cluster() {
    use masker_tests::node::{self, Step};
    let cluster = PgCluster::shared();
    let out = node::run(
        &cluster.app(),
        &[
            Step::simple("SELECT id, email FROM customers ORDER BY id LIMIT 2"),
            Step::extended("SELECT $1::int + 1", &[Some("41")]),
        ],
    )
    .unwrap();
    assert_eq!(out["steps"][0]["results"][0]["rows"][0][0], "1", "{out}");
    assert_eq!(out["steps"][1]["results"][0]["rows"][0][0], "42", "{out}");
}

/// node-pg's lockfile pins every package exactly (`npm ci` installs those).
#[test]
fn node_clients_are_locked() {
    let lock: serde_json::Value = serde_json::from_str(masker_tests::node::LOCKFILE).expect("package-lock.json");
    let packages = lock["packages"].as_object().expect("packages");
    assert_eq!(packages["node_modules/pg"]["version"], "8.23.1");
    for (name, p) in packages.iter().filter(|(name, _)| !name.is_empty()) {
        assert!(p["version"].is_string() && p["integrity"].is_string(), "{name} is not locked: {p}");
    }
}

#[test]
fn ipv6_loopback_is_served() {
    let cluster = PgCluster::shared();
    let Some(addr) = masker_tests::skip::ipv6(cluster) else { return };
    let out = Psql::new(&cluster.app().at(addr)).command("SELECT inet_server_addr()").run_ok();
    assert_eq!(out.trim(), "::1");
}

#[test]
fn a_second_cluster_is_independent_and_cleaned_up() {
    let cluster = PgCluster::start().unwrap();
    let dir = cluster.data_dir();
    assert_ne!(cluster.port(), PgCluster::shared().port());
    let db = cluster.create_database("scratch").unwrap();
    assert_eq!(Psql::new(&db).command("SELECT current_database()").run_ok().trim(), "scratch");
    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

fn luhn_ok(number: &str) -> bool {
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_ok(iban: &str) -> bool {
    let rearranged = format!("{}{}", &iban[4..], &iban[..4]);
    let mut rem = 0u32;
    for c in rearranged.chars() {
        let digits = if c.is_ascii_digit() { c.to_string() } else { (c as u32 - 'A' as u32 + 10).to_string() };
        for d in digits.chars() {
            rem = (rem * 10 + d.to_digit(10).unwrap()) % 97;
        }
    }
    rem == 1
}

#[tokio::test]
async fn binary_decoding_matches_text_for_the_fixture() {
    within(LIMIT, "binary vs text", async {
        let app = PgCluster::shared().app().connect().await.unwrap();
        for sql in [
            "SELECT * FROM customers ORDER BY id",
            "SELECT * FROM orders ORDER BY id LIMIT 2000",
            "SELECT * FROM payments ORDER BY id LIMIT 2000",
            "SELECT NULL::int, 0::numeric, -0.000123::numeric, 12345678901234567890.5::numeric(30,3), \
             'NaN'::numeric, date 'infinity', timestamp '1999-12-31 23:59:59.5', timestamptz '1900-01-01 00:00:00+00', \
             ARRAY[[1,2],[3,NULL]], ARRAY['', 'a b', 'NULL', 'q\"x', NULL]::text[], '{}'::int[], \
             inet '10.0.0.0/8', cidr '2001:db8::/32', true, 1.5::float8, '{\"a\": [1, null]}'::jsonb",
        ] {
            let text: Vec<Vec<Option<String>>> = compare::simple(&app, sql).await.unwrap().remove(0).rows;
            let binary = compare::typed(&app, sql, &[]).await.unwrap();
            assert_eq!(text.len(), binary.len());
            for (t, b) in text.iter().zip(&binary) {
                assert_eq!(t, b, "{sql}");
            }
        }
    })
    .await
}

/// Every suite file in `tests/` is a test target of `masker-agent` (the
/// package that owns the binary), so none can sit there without running.
#[test]
fn suites_are_all_listed() {
    let root = masker_tests::workspace_root();
    let manifest = std::fs::read_to_string(root.join("masker-agent/Cargo.toml")).expect("masker-agent/Cargo.toml");
    let mut missing = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") {
            seen += 1;
            if !manifest.contains(&format!("path = \"../tests/{name}\"")) {
                missing.push(name);
            }
        }
    }
    assert!(seen >= 10, "only {seen} suites found in {}", root.join("tests").display());
    assert!(
        missing.is_empty(),
        "suites not listed as [[test]] in masker-agent/Cargo.toml (they would never run): {missing:?}"
    );
    // The binary under test is cargo's build of this tree.
    let binary = masker_tests::masker_binary();
    assert!(
        binary.starts_with(masker_tests::target_dir()),
        "{} is not in {}",
        binary.display(),
        masker_tests::target_dir().display()
    );
}

/// The set-up script installs exactly the Python packages the harness
/// expects (one list in each language; they must agree).
#[test]
fn setup_script_pins_the_python_clients() {
    let script = std::fs::read_to_string(masker_tests::workspace_root().join("scripts/setup.sh")).expect("setup.sh");
    let want = format!("MASKER_TEST_PY_PACKAGES=\"{}\"", python::PACKAGES);
    assert!(script.contains(&want), "scripts/setup.sh does not set {want}");
    assert!(python::PACKAGES.split(' ').all(|p| p.contains("==")), "unpinned: {}", python::PACKAGES);
}
