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
