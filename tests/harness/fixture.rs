//! The `shop` fixture: schema and deterministic fake personal data.
//!
//! Tables (all in `public`, owned by the superuser, DML granted to `app`):
//!
//! - `customers` ([`CUSTOMERS`] rows): `id, full_name, email, phone, ssn,
//!   birth_date date, signup_ts timestamptz, last_ip inet, card_number, iban,
//!   address, notes (free text with emails and phones), plan, balance
//!   numeric(12,2), tags text[], profile jsonb, avatar bytea, external_id
//!   uuid`; personal columns carry comments like `pii:ssn`.
//! - `orders` ([`ORDERS`] rows): `id, customer_id, order_no ('ORD-2024-000123'),
//!   amount, created_at, status`.
//! - `payments` ([`PAYMENTS`] rows): `id, order_id, customer_id, method,
//!   card_number, iban, amount, paid_at`.
//! - view `customer_contacts (id, full_name, email, phone, address)`.
//!
//! `fixture.personal_values()` returns every seeded personal value as
//! `(kind, value)`; [`PersonalValues`] loads them for leak assertions.
//! The SQL is in `fixture.sql` next to this file.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};

use crate::PgCluster;
use crate::cluster::APP_DB;
use crate::finder::{Finder, Found};

/// Rows in `customers`.
pub const CUSTOMERS: u64 = 5_000;
/// Rows in `orders`.
pub const ORDERS: u64 = 20_000;
/// Rows in `payments`.
pub const PAYMENTS: u64 = 15_000;

/// The fixture's SQL script (psql syntax: uses `:customers` etc.).
pub const SQL: &str = include_str!("fixture.sql");

/// The environment variable [`POLICY`] reads its pseudonym key from.
pub const POLICY_KEY_ENV: &str = "MASKER_COMPAT_KEY";

/// A full policy for the fixture: every personal column masked (emails,
/// names and `external_id` pseudonymised, so unique columns stay unique),
/// ids, amounts, timestamps and the like allowed, everything else `detect`.
/// The pseudonym key comes from [`POLICY_KEY_ENV`].
pub const POLICY: &str = r#"version = 1

[defaults]
action = "detect"
comment_classification = true

[pseudonymize]
key_env = "MASKER_COMPAT_KEY"

[[rule]]
name = "email"
column_names = ["*email*"]
action = "pseudonymize"
format_preserving = true

[[rule]]
name = "name"
column_names = ["full_name"]
action = "pseudonymize"

[[rule]]
name = "phone"
column_names = ["*phone*"]
action = "partial"
keep_last = 2

[[rule]]
name = "ssn"
column_names = ["ssn"]
action = "null"

[[rule]]
name = "card"
column_names = ["card_number", "iban", "address"]
action = "redact"

[[rule]]
name = "birth_date"
column_names = ["birth_date"]
action = "generalize"
to = "year"

[[rule]]
name = "ip"
column_names = ["last_ip"]
action = "generalize"
to = "network"
ipv4_prefix = 24
ipv6_prefix = 64

[[rule]]
name = "free_text"
column_names = ["notes", "profile"]
action = "detect"

[[rule]]
name = "external"
column_names = ["external_id"]
action = "pseudonymize"

[[rule]]
name = "ops"
column_names = ["id", "*_id", "plan", "status", "amount", "balance", "created_at", "paid_at", "signup_ts", "method", "order_no", "tags"]
action = "allow"
"#;

/// Loads the fixture into `shop` on `cluster` as the superuser.
pub fn load(cluster: &PgCluster) -> Result<()> {
    let script = format!("\\set customers {CUSTOMERS}\n\\set orders {ORDERS}\n\\set payments {PAYMENTS}\n{SQL}");
    cluster.run_sql_as_superuser(APP_DB, &script).context("loading the shop fixture")?;
    Ok(())
}

/// Every personal value the fixture seeded, to assert that none leaks.
#[derive(Clone)]
pub struct PersonalValues {
    values: Vec<(String, String)>,
    finder: Arc<OnceLock<Finder>>,
}

impl std::fmt::Debug for PersonalValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PersonalValues({} values)", self.values.len())
    }
}

impl PersonalValues {
    /// Queries `fixture.personal_values()` directly (not through masker).
    pub fn load(cluster: &PgCluster) -> Result<PersonalValues> {
        let out = cluster.run_sql_as_superuser(
            APP_DB,
            "SELECT kind || E'\\t' || value FROM fixture.personal_values() WHERE value IS NOT NULL;",
        )?;
        let values = out
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(kind, value)| (kind.to_owned(), value.to_owned()))
            .collect();
        Ok(PersonalValues::from_values(values))
    }

    /// Values given directly (for the finder's own tests).
    pub fn from_values(values: Vec<(String, String)>) -> PersonalValues {
        PersonalValues { values, finder: Arc::new(OnceLock::new()) }
    }

    /// A [`Finder`] for every value (none exempt), built once.
    pub fn finder(&self) -> &Finder {
        self.finder.get_or_init(|| Finder::new(self, |_, _| false))
    }

    /// All `(kind, value)` pairs.
    pub fn all(&self) -> &[(String, String)] {
        &self.values
    }

    /// The values of one kind (`email`, `ssn`, `card_number`, ...).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values.iter().filter(move |(k, _)| k == kind).map(|(_, v)| v.as_str())
    }

    /// The seeded values in `text`, in any form the [`Finder`] knows.
    pub fn found_in(&self, text: &str) -> Found {
        self.finder().find(text.as_bytes())
    }

    /// Panics, naming the kinds and forms of what leaked, if any seeded value
    /// occurs in `text` in any form the [`Finder`] knows (case, reversed,
    /// hex, base64, digits, email local part, name part, date formats).
    #[track_caller]
    pub fn assert_absent(&self, what: &str, text: &str) {
        let found = self.found_in(text);
        let kinds: BTreeSet<String> = found.hits.iter().map(|h| h.label()).collect();
        assert!(found.is_empty(), "{what}: {} seeded personal values leaked (kind/form: {kinds:?})", found.hits.len());
    }
}
