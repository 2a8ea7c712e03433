//! The labelled schema `masker discover` is measured on: 25 tables and
//! views, 240+ columns, each labelled with what a reviewer would mask it as
//! (`&[]`: not personal data), with deterministic fake data.
//!
//! Labelling conventions (the README repeats them next to the figures):
//! direct identifiers, contact data, exact locations (street, postcode,
//! coordinates), birth dates, national ids, payment and bank data, IP
//! addresses of people, pay, and free text that holds any of those are
//! personal data. Quasi-identifiers on their own (city, country, gender,
//! job title) and operational data (ids, timestamps, amounts, statuses,
//! server addresses) are not. Where two categories are right (a column of
//! mixed emails and phone numbers), the label lists both.
//!
//! What makes it hard, on purpose:
//! - names that lie: `address` holding emails, `contact` holding phone
//!   numbers, `col1`..`col12` of a legacy import, `ref` holding SSNs; and the
//!   other way round, `email_verified`, `phone_model`, `card_type`,
//!   `ip_version`, `products.name`, `nombre_de_commandes` (French: number of
//!   orders), `servers.ip_address`;
//! - free text with personal data in some rows only (notes, ticket bodies,
//!   JSON payloads), next to free text without any (descriptions, logs);
//! - numbers that look like card numbers: 16-digit order numbers and EAN-13
//!   barcodes, of which about one in ten passes Luhn by chance;
//! - column names in German, French and Spanish, with and without accents
//!   (`straße`, `prénom`, `teléfono`);
//! - columns with nothing but a comment to go by, an empty table, views, a
//!   materialized view, a partitioned table, a view too slow to sample, and
//!   a table the role cannot read.

use std::fmt::Write as _;

/// A tiny deterministic generator (xorshift64*), seeded per table.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: &str) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + (self.next() % 10) as u8)).collect()
    }
}

/// A value for an INSERT.
pub enum V {
    Null,
    /// A string literal (quoted when written).
    Text(String),
    /// A literal written as it is (numbers, booleans, casts).
    Raw(String),
}

impl V {
    fn sql(&self) -> String {
        match self {
            V::Null => "NULL".into(),
            V::Text(s) => format!("'{}'", s.replace('\'', "''")),
            V::Raw(s) => s.clone(),
        }
    }
}

type Gen = Box<dyn Fn(&mut Rng, usize) -> V>;

/// One column: name, type, label (allowed categories; empty = not personal), data.
pub struct Col {
    pub name: &'static str,
    pub ty: &'static str,
    pub label: &'static [&'static str],
    data: Gen,
}

/// One table with its rows.
pub struct Table {
    pub schema: &'static str,
    pub name: &'static str,
    pub rows: usize,
    pub cols: Vec<Col>,
}

fn col(
    name: &'static str,
    ty: &'static str,
    label: &'static [&'static str],
    data: impl Fn(&mut Rng, usize) -> V + 'static,
) -> Col {
    Col { name, ty, label, data: Box::new(data) }
}

const NONE: &[&str] = &[];

// ---------------------------------------------------------------- fake data

const FIRST: &[&str] = &[
    "Anna",
    "Lukas",
    "Léa",
    "José",
    "María",
    "Jürgen",
    "Zoë",
    "Chloé",
    "Mateo",
    "Sofía",
    "Noah",
    "Émile",
    "Björn",
    "Inés",
    "Oliver",
    "Amelia",
    "Hannah",
    "Lucía",
    "Camille",
    "Maximilian",
    "Aurélie",
    "Joaquín",
    "Greta",
    "Théo",
];
const LAST: &[&str] = &[
    "Müller",
    "Schmidt",
    "García",
    "Martínez",
    "Dubois",
    "Lefèvre",
    "Smith",
    "Johnson",
    "O'Brien",
    "Fernández",
    "Nowak",
    "Rossi",
    "Bernard",
    "Weiß",
    "López",
    "Schäfer",
    "Moreau",
    "Jiménez",
    "Brown",
    "Fischer",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "beispiel.de", "exemple.fr", "ejemplo.es"];
const CITIES: &[&str] = &["Berlin", "Paris", "Madrid", "London", "München", "Lyon", "Sevilla", "Hamburg", "Boston"];
const STREETS: &[&str] = &[
    "Hauptstraße",
    "Bahnhofstraße",
    "rue de la Paix",
    "avenue Victor Hugo",
    "Calle Mayor",
    "Gran Vía",
    "Baker Street",
    "Elm Street",
    "Lindenallee",
];

fn ascii(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'á' | 'à' | 'â' => Some('a'),
            'é' | 'è' | 'ê' | 'ë' | 'É' => Some('e'),
            'í' | 'ï' => Some('i'),
            'ó' | 'ô' | 'ö' => Some('o'),
            'ú' | 'ü' => Some('u'),
            'ñ' => Some('n'),
            'ß' => Some('s'),
            '\'' => None,
            c => Some(c.to_ascii_lowercase()),
        })
        .collect()
}

fn first(r: &mut Rng) -> String {
    r.pick(FIRST).to_string()
}
fn last(r: &mut Rng) -> String {
    r.pick(LAST).to_string()
}
fn full_name(r: &mut Rng) -> String {
    format!("{} {}", first(r), last(r))
}
fn email(r: &mut Rng) -> String {
    let (f, l) = (first(r), last(r));
    format!("{}.{}{}@{}", ascii(&f), ascii(&l), r.range(1, 999), r.pick(DOMAINS))
}
fn phone(r: &mut Rng) -> String {
    match r.range(0, 5) {
        0 => format!("+49 171 {}", r.digits(7)),
        1 => format!("+33 6 {} {} {} {}", r.digits(2), r.digits(2), r.digits(2), r.digits(2)),
        2 => format!("+34 6{} {} {}", r.digits(2), r.digits(3), r.digits(3)),
        3 => format!("({}) {}-{}", r.range(201, 989), r.range(200, 999), r.digits(4)),
        4 => format!("{}-{}-{}", r.range(201, 989), r.range(200, 999), r.digits(4)),
        _ => format!("020 {} {}", r.digits(4), r.digits(4)),
    }
}
fn ssn(r: &mut Rng) -> String {
    format!("{:03}-{:02}-{:04}", r.range(1, 665), r.range(1, 99), r.range(1, 9999))
}
fn luhn_complete(body: &str) -> String {
    // The check digit that makes body + digit pass Luhn.
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(k, b)| {
            let x = u32::from(b - b'0');
            if k % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}
fn card_digits(r: &mut Rng) -> String {
    match r.range(0, 2) {
        0 => luhn_complete(&format!("4{}", r.digits(14))),
        1 => luhn_complete(&format!("5{}{}", r.range(1, 5), r.digits(13))),
        _ => luhn_complete(&format!("37{}", r.digits(12))),
    }
}
fn card(r: &mut Rng) -> String {
    let d = card_digits(r);
    match r.range(0, 2) {
        0 if d.len() == 16 => format!("{} {} {} {}", &d[0..4], &d[4..8], &d[8..12], &d[12..16]),
        1 if d.len() == 16 => format!("{}-{}-{}-{}", &d[0..4], &d[4..8], &d[8..12], &d[12..16]),
        _ => d,
    }
}
fn iban(r: &mut Rng, country: &str) -> String {
    let bban = match country {
        "DE" => r.digits(18),
        "ES" => r.digits(20),
        _ => format!("{}{}", r.digits(10), r.digits(13)),
    };
    // Check digits: 98 - (bban + country + "00") mod 97, letters as 10..35.
    let mut rem: u64 = 0;
    for c in bban.chars().chain(country.chars()).chain("00".chars()) {
        let v = c.to_digit(36).unwrap_or(0) as u64;
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}
fn ipv4(r: &mut Rng) -> String {
    format!("{}.{}.{}.{}", r.range(81, 223), r.range(0, 255), r.range(0, 255), r.range(1, 254))
}
fn ipv6(r: &mut Rng) -> String {
    format!("2001:db8:{:x}::{:x}", r.range(1, 0xffff), r.range(1, 0xffff))
}
fn birth_date(r: &mut Rng) -> String {
    format!("{}-{:02}-{:02}", r.range(1950, 2005), r.range(1, 12), r.range(1, 28))
}
fn ts(r: &mut Rng) -> V {
    V::Raw(format!(
        "'2024-{:02}-{:02} {:02}:{:02}:00+00'::timestamptz",
        r.range(1, 12),
        r.range(1, 28),
        r.range(0, 23),
        r.range(0, 59)
    ))
}
fn day(r: &mut Rng) -> V {
    V::Raw(format!("'2024-{:02}-{:02}'::date", r.range(1, 12), r.range(1, 28)))
}
fn street(r: &mut Rng) -> String {
    let s = r.pick(STREETS);
    if s.starts_with("rue") || s.starts_with("avenue") || s.contains("Street") {
        format!("{} {s}", r.range(1, 220))
    } else {
        format!("{s} {}", r.range(1, 220))
    }
}
fn postcode(r: &mut Rng) -> String {
    match r.range(0, 2) {
        0 => format!("{:05}", r.range(1000, 99999)),
        1 => format!("SW{} {}AA", r.range(1, 9), r.range(1, 9)),
        _ => format!("{:05}", r.range(28001, 28080)),
    }
}
fn money(r: &mut Rng, hi: u64) -> V {
    V::Raw(format!("{}.{:02}", r.range(1, hi), r.range(0, 99)))
}
fn int(r: &mut Rng, lo: u64, hi: u64) -> V {
    V::Raw(r.range(lo, hi).to_string())
}
fn id(i: usize) -> V {
    V::Raw((i + 1).to_string())
}
fn bool_(r: &mut Rng) -> V {
    V::Raw(if r.chance(0.5) { "true" } else { "false" }.into())
}
fn t(s: impl Into<String>) -> V {
    V::Text(s.into())
}
fn sometimes(r: &mut Rng, p: f64, v: impl FnOnce(&mut Rng) -> V) -> V {
    if r.chance(p) { v(r) } else { V::Null }
}

const NOTES: &[&str] = &[
    "Customer asked about delivery times.",
    "Called back, issue resolved.",
    "Requested a copy of the invoice.",
    "Prefers delivery after 5 pm.",
    "Kunde fragt nach der Lieferzeit.",
    "Le client demande un remboursement.",
    "El cliente solicita la factura.",
    "Package left with the neighbour.",
    "Upgraded to the pro plan.",
];

/// Free text that holds personal data in about `rate` of the rows.
fn note(r: &mut Rng, rate: f64) -> V {
    let base = r.pick(NOTES).to_string();
    if !r.chance(rate) {
        return t(base);
    }
    let extra = match r.range(0, 4) {
        0 => format!("New address for invoices: {}.", email(r)),
        1 => format!("Please call {} before delivery.", phone(r)),
        2 => format!("Refund to IBAN {} requested.", iban(r, "DE")),
        3 => format!("Wrote from {} yesterday.", email(r)),
        _ => format!("Paid with card {} by phone.", card(r)),
    };
    t(format!("{base} {extra}"))
}

const LOG_LINES: &[&str] = &[
    "job finished in 12.3s (exit 0)",
    "pulled image sha256:9f86d081884c7d65 in 4.1s",
    "runner v2.311.0 on linux-x64",
    "retry 3/5 after timeout",
    "cache hit for key deps-7f3a",
    "uploaded 14 artifacts (3.2 MB)",
];

const DESCRIPTIONS: &[&str] = &[
    "Stainless steel water bottle, 750 ml.",
    "Organic cotton t-shirt in five colours.",
    "Wireless mouse with silent clicks.",
    "Notebook, A5, dotted, 120 pages.",
    "Espresso cups, set of 4.",
];

fn ean13(r: &mut Rng) -> String {
    let body = format!("{}{}", r.pick(&["40", "41", "50", "54"]), r.digits(10));
    let sum: u32 = body.bytes().enumerate().map(|(k, b)| u32::from(b - b'0') * if k % 2 == 0 { 1 } else { 3 }).sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

// ---------------------------------------------------------------- the schema

/// Every table of the labelled schema.
pub fn tables() -> Vec<Table> {
    vec![
        Table {
            schema: "public",
            name: "customers",
            rows: 400,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("email", "text", &["email"], |r, _| t(email(r))),
                col("first_name", "text", &["person-name"], |r, _| t(first(r))),
                col("last_name", "text", &["person-name"], |r, _| t(last(r))),
                col("phone", "text", &["phone"], |r, _| sometimes(r, 0.9, |r| t(phone(r)))),
                col("date_of_birth", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
                col("updated_at", "timestamptz", NONE, |r, _| ts(r)),
                col("status", "text", NONE, |r, _| t(r.pick(&["active", "suspended", "closed"]))),
                col("email_verified", "boolean", NONE, |r, _| bool_(r)),
                col("email_verified_at", "timestamptz", NONE, |r, _| ts(r)),
                col("marketing_opt_in", "boolean", NONE, |r, _| bool_(r)),
                col("last_login_ip", "inet", &["ip-address"], |r, _| t(ipv4(r))),
                col("country", "char(2)", NONE, |r, _| t(r.pick(&["DE", "FR", "ES", "GB", "US"]))),
                col("city", "text", NONE, |r, _| t(r.pick(CITIES))),
                col("street_address", "text", &["postal-address"], |r, _| t(street(r))),
                col("postal_code", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("loyalty_points", "integer", NONE, |r, _| int(r, 0, 5000)),
                col("plan", "text", NONE, |r, _| t(r.pick(&["free", "pro", "team"]))),
                col("gender", "text", NONE, |r, _| t(r.pick(&["f", "m", "x"]))),
            ],
        },
        Table {
            schema: "public",
            name: "products",
            rows: 200,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("sku", "text", NONE, |r, _| t(format!("SKU-{}", r.range(10000, 99999)))),
                col("name", "text", NONE, |r, _| {
                    t(r.pick(&["Water bottle", "T-shirt", "Mouse", "Notebook", "Espresso cups"]))
                }),
                col("description", "text", NONE, |r, _| t(r.pick(DESCRIPTIONS))),
                col("price", "numeric(10,2)", NONE, |r, _| money(r, 200)),
                col("currency", "char(3)", NONE, |r, _| t(r.pick(&["EUR", "USD", "GBP"]))),
                col("barcode", "text", NONE, |r, _| t(ean13(r))),
                col("weight_grams", "integer", NONE, |r, _| int(r, 10, 5000)),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
            ],
        },
        Table {
            schema: "public",
            name: "orders",
            rows: 600,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("customer_id", "bigint", NONE, |r, _| int(r, 1, 400)),
                col("order_number", "bigint", NONE, |r, _| V::Raw(format!("4{}", r.digits(15)))),
                col("total", "numeric(12,2)", NONE, |r, _| money(r, 900)),
                col("shipping_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("shipping_street", "text", &["postal-address"], |r, _| t(street(r))),
                col("shipping_zip", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("shipping_city", "text", NONE, |r, _| t(r.pick(CITIES))),
                col("billing_email", "text", &["email"], |r, _| t(email(r))),
                col("notes", "text", &["free-text"], |r, _| sometimes(r, 0.6, |r| note(r, 0.25))),
                col("tracking_number", "text", NONE, |r, _| t(format!("9{}", r.digits(21)))),
                col("placed_at", "timestamptz", NONE, |r, _| ts(r)),
                col("card_last4", "text", NONE, |r, _| t(r.digits(4))),
                col("card_brand", "text", NONE, |r, _| t(r.pick(&["visa", "mastercard", "amex"]))),
            ],
        },
        Table {
            schema: "public",
            name: "payments",
            rows: 500,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("order_id", "bigint", NONE, |r, _| int(r, 1, 600)),
                col("card_number", "text", &["card"], |r, _| t(card(r))),
                col("pan_token", "text", NONE, |r, _| t(format!("tok_{:x}", r.next()))),
                col("iban", "text", &["bank-account"], |r, _| sometimes(r, 0.5, |r| t(iban(r, "DE")))),
                col("amount", "numeric(12,2)", NONE, |r, _| money(r, 900)),
                col("currency", "char(3)", NONE, |r, _| t(r.pick(&["EUR", "USD"]))),
                col("processor_ref", "text", NONE, |r, _| t(format!("ch_{:x}{:x}", r.next(), r.next()))),
                col("paid_at", "timestamptz", NONE, |r, _| ts(r)),
                col("payer_ip", "text", &["ip-address"], |r, _| t(ipv4(r))),
                col("status", "text", NONE, |r, _| t(r.pick(&["paid", "refunded", "failed"]))),
            ],
        },
        Table {
            schema: "public",
            name: "support_tickets",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("customer_id", "bigint", NONE, |r, _| int(r, 1, 400)),
                col("subject", "text", NONE, |r, _| {
                    t(r.pick(&["Delivery late", "Wrong size", "Refund", "Login problem", "Invoice"]))
                }),
                col("body", "text", &["free-text"], |r, _| note(r, 0.35)),
                col("contact", "text", &["email", "phone", "free-text"], |r, _| {
                    if r.chance(0.5) { t(email(r)) } else { t(phone(r)) }
                }),
                col("priority", "smallint", NONE, |r, _| int(r, 1, 4)),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
                col("closed_at", "timestamptz", NONE, |r, _| sometimes(r, 0.7, ts)),
            ],
        },
        Table {
            schema: "public",
            name: "audit_events",
            rows: 30_000,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("actor_id", "bigint", NONE, |r, _| int(r, 1, 400)),
                col("action", "text", NONE, |r, _| t(r.pick(&["login", "logout", "view", "update", "export"]))),
                col("ip_address", "inet", &["ip-address"], |r, _| t(if r.chance(0.8) { ipv4(r) } else { ipv6(r) })),
                col("user_agent", "text", NONE, |r, _| {
                    t(r.pick(&[
                        "Mozilla/5.0 (X11; Linux x86_64)",
                        "curl/8.5.0",
                        "okhttp/4.12.0",
                        "python-requests/2.31",
                    ]))
                }),
                col("payload", "jsonb", &["free-text"], |r, _| {
                    if r.chance(0.3) {
                        t(format!("{{\"event\": \"profile_update\", \"new_email\": \"{}\"}}", email(r)))
                    } else {
                        t(format!("{{\"event\": \"view\", \"page\": \"/orders/{}\"}}", r.range(1, 600)))
                    }
                }),
                col("occurred_at", "timestamptz", NONE, |r, _| ts(r)),
                col("request_id", "uuid", NONE, |r, _| {
                    V::Raw(format!(
                        "'{:08x}-0000-4000-8000-{:012x}'::uuid",
                        r.next() as u32,
                        r.next() & 0xffff_ffff_ffff
                    ))
                }),
            ],
        },
        Table {
            schema: "public",
            name: "web_sessions",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("user_id", "bigint", NONE, |r, _| int(r, 1, 400)),
                col("token_hash", "text", NONE, |r, _| t(format!("{:016x}{:016x}", r.next(), r.next()))),
                col("client_ip", "inet", &["ip-address"], |r, _| t(ipv4(r))),
                col("device", "text", NONE, |r, _| t(r.pick(&["iPhone 14", "Pixel 7", "ThinkPad X1", "MacBook Air"]))),
                col("phone_model", "text", NONE, |r, _| t(r.pick(&["iPhone 14", "Pixel 7", "Galaxy S23"]))),
                col("expires_at", "timestamptz", NONE, |r, _| ts(r)),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
            ],
        },
        Table {
            schema: "public",
            name: "newsletter_subscribers",
            rows: 250,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("address", "text", &["email"], |r, _| t(email(r))),
                col("subscribed_at", "timestamptz", NONE, |r, _| ts(r)),
                col("confirmed", "boolean", NONE, |r, _| bool_(r)),
                col("locale", "text", NONE, |r, _| t(r.pick(&["de_DE", "fr_FR", "es_ES", "en_GB"]))),
                col("unsubscribe_token", "text", NONE, |r, _| t(format!("{:016x}", r.next()))),
            ],
        },
        Table {
            schema: "public",
            name: "invoices",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("invoice_no", "text", NONE, |r, _| t(format!("INV-2024-{:06}", r.range(1, 999_999)))),
                col("vat_id", "text", NONE, |r, _| t(format!("DE{}", r.digits(9)))),
                col("billing_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("billing_address", "text", &["postal-address"], |r, _| {
                    t(format!("{}, {} {}", street(r), postcode(r), r.pick(CITIES)))
                }),
                col("amount", "numeric(12,2)", NONE, |r, _| money(r, 5000)),
                col("issued_on", "date", NONE, |r, _| day(r)),
                col("pdf_path", "text", NONE, |r, _| t(format!("/srv/invoices/2024/{}.pdf", r.range(1, 99999)))),
            ],
        },
        Table {
            schema: "public",
            name: "newsletter_stats",
            rows: 0,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("email", "text", &["email"], |r, _| t(email(r))),
                col("mobile_phone", "text", &["phone"], |r, _| t(phone(r))),
                col("notes", "text", NONE, |r, _| note(r, 0.0)),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
            ],
        },
        Table {
            schema: "crm",
            name: "contacts",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("display_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("given_name", "text", &["person-name"], |r, _| t(first(r))),
                col("family_name", "text", &["person-name"], |r, _| t(last(r))),
                col("mobile", "text", &["phone"], |r, _| t(phone(r))),
                col("work_phone", "text", &["phone"], |r, _| sometimes(r, 0.7, |r| t(phone(r)))),
                col("fax", "text", &["phone"], |r, _| sometimes(r, 0.2, |r| t(phone(r)))),
                col("email_address", "text", &["email"], |r, _| t(email(r))),
                col("company", "text", NONE, |r, _| {
                    t(r.pick(&["Acme GmbH", "Globex SA", "Initech Ltd", "Umbrella SL"]))
                }),
                col("job_title", "text", NONE, |r, _| t(r.pick(&["Buyer", "CTO", "Office manager", "Engineer"]))),
                col("address_line1", "text", &["postal-address"], |r, _| t(street(r))),
                col("address_line2", "text", &["postal-address"], |r, _| {
                    sometimes(r, 0.3, |r| t(format!("Apt {}", r.range(1, 40))))
                }),
                col("zip", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("state", "text", NONE, |r, _| t(r.pick(&["BY", "HH", "IDF", "MD"]))),
                col("notes", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("phone_type", "text", NONE, |r, _| t(r.pick(&["mobile", "work", "home"]))),
                col("email_count", "integer", NONE, |r, _| int(r, 0, 300)),
                col("tags", "text[]", NONE, |r, _| {
                    t(format!("{{{},{}}}", r.pick(&["vip", "new"]), r.pick(&["b2b", "b2c"])))
                }),
            ],
        },
        Table {
            schema: "crm",
            name: "leads",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("contact", "text", &["phone"], |r, _| t(phone(r))),
                col("source", "text", NONE, |r, _| t(r.pick(&["web", "fair", "referral"]))),
                col("score", "integer", NONE, |r, _| int(r, 0, 100)),
                col("lat", "double precision", &["geolocation"], |r, _| {
                    V::Raw(format!("{}.{}", r.range(36, 55), r.digits(5)))
                }),
                col("lng", "double precision", &["geolocation"], |r, _| {
                    V::Raw(format!("{}.{}", r.range(0, 13), r.digits(5)))
                }),
                col("created_at", "timestamptz", NONE, |r, _| ts(r)),
            ],
        },
        Table {
            schema: "hr",
            name: "employees",
            rows: 200,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("employee_number", "text", NONE, |r, _| t(format!("E-{:06}", r.range(1, 999_999)))),
                col("first_name", "text", &["person-name"], |r, _| t(first(r))),
                col("last_name", "text", &["person-name"], |r, _| t(last(r))),
                col("ssn", "text", &["national-id"], |r, _| t(ssn(r))),
                col("birthday", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("salary", "numeric(10,2)", &["compensation"], |r, _| money(r, 150_000)),
                col("hire_date", "date", NONE, |r, _| day(r)),
                col("manager_id", "bigint", NONE, |r, _| int(r, 1, 200)),
                col("department", "text", NONE, |r, _| t(r.pick(&["Sales", "Engineering", "Finance"]))),
                col("home_address", "text", &["postal-address"], |r, _| t(street(r))),
                col("personal_email", "text", &["email"], |r, _| t(email(r))),
                col("work_email", "text", &["email"], |r, _| t(email(r))),
                col("emergency_contact_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("emergency_contact_phone", "text", &["phone"], |r, _| t(phone(r))),
                col("passport_number", "text", &["national-id"], |r, _| t(format!("C{}X{}", r.digits(2), r.digits(5)))),
                col("tax_id", "text", &["national-id"], |r, _| t(format!("{}-{}", r.digits(2), r.digits(7)))),
                col("bank_iban", "text", &["bank-account"], |r, _| t(iban(r, "DE"))),
                col("gender", "text", NONE, |r, _| t(r.pick(&["f", "m", "x"]))),
            ],
        },
        Table {
            schema: "hr",
            name: "payroll",
            rows: 400,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("employee_id", "bigint", NONE, |r, _| int(r, 1, 200)),
                col("period", "date", NONE, |r, _| day(r)),
                col("gross_pay", "numeric(10,2)", &["compensation"], |r, _| money(r, 12_000)),
                col("net_pay", "numeric(10,2)", &["compensation"], |r, _| money(r, 8_000)),
                col("account_number", "text", &["bank-account"], |r, _| t(iban(r, "FR"))),
                col("bonus", "numeric(10,2)", &["compensation"], |r, _| money(r, 3_000)),
                col("currency", "char(3)", NONE, |_, _| t("EUR")),
                col("paid_on", "date", NONE, |r, _| day(r)),
            ],
        },
        Table {
            schema: "hr",
            name: "applicants",
            rows: 150,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("full_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("email", "text", &["email"], |r, _| t(email(r))),
                col("phone_number", "text", &["phone"], |r, _| t(phone(r))),
                col("resume_text", "text", &["free-text"], |r, _| {
                    t(format!("Experienced engineer. Reach me at {} or {}.", email(r), phone(r)))
                }),
                col("applied_on", "date", NONE, |r, _| day(r)),
                col("position", "text", NONE, |r, _| t(r.pick(&["Engineer", "Designer", "Accountant"]))),
                col("dob", "text", &["birth-date"], |r, _| t(birth_date(r))),
                col("nationality", "text", NONE, |r, _| t(r.pick(&["DE", "FR", "ES"]))),
            ],
        },
        Table {
            schema: "legacy",
            name: "customer_import",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("col1", "text", &["email"], |r, _| t(email(r))),
                col("col2", "text", &["phone"], |r, _| {
                    t(format!("{}-{}-{}", r.range(201, 989), r.range(200, 999), r.digits(4)))
                }),
                col("col3", "text", &["national-id"], |r, _| t(ssn(r))),
                col("col4", "text", &["card"], |r, _| t(card(r))),
                col("col5", "bigint", &["card"], |r, _| V::Raw(luhn_complete(&format!("4{}", r.digits(14))))),
                col("col6", "text", &["bank-account"], |r, _| t(iban(r, "ES"))),
                col("col7", "text", NONE, |r, _| t(format!("P-{}-{}", r.range(100, 999), r.pick(&["A", "B", "C"])))),
                col("col8", "text", &["ip-address"], |r, _| t(ipv4(r))),
                col("col9", "bigint", NONE, |r, _| V::Raw(format!("{}{}", r.range(1, 9), r.digits(15)))),
                col("col10", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("col11", "text", &["phone"], |r, _| t(format!("0049-{}-{}", r.range(150, 179), r.digits(7)))),
                col("col12", "text", &["national-id"], |r, _| t(format!("X{}", r.digits(7)))),
                col("misc", "jsonb", &["free-text", "email"], |r, _| {
                    t(format!("{{\"contact\": \"{}\", \"source\": \"import\"}}", email(r)))
                }),
                col("field_a", "text", NONE, |r, _| t(format!("DE{}AB{}", r.digits(2), r.digits(6)))),
            ],
        },
        Table {
            schema: "legacy",
            name: "accounts",
            rows: 300,
            cols: vec![
                col("acct_no", "bigint PRIMARY KEY", NONE, |_, i| {
                    V::Raw(format!("4{:015}", 123_456_789_000 + i as u64 * 7919))
                }),
                col("ref", "text", &["national-id"], |r, _| t(ssn(r))),
                col("holder_name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("opened", "date", NONE, |r, _| day(r)),
                col("balance", "numeric(14,2)", NONE, |r, _| money(r, 90_000)),
                col("branch_code", "text", NONE, |r, _| t(format!("BR{}", r.digits(3)))),
            ],
        },
        Table {
            schema: "intl",
            name: "kunden",
            rows: 250,
            cols: vec![
                col("kundennummer", "bigint PRIMARY KEY", NONE, |_, i| V::Raw((100_000 + i).to_string())),
                col("vorname", "text", &["person-name"], |r, _| t(first(r))),
                col("nachname", "text", &["person-name"], |r, _| t(last(r))),
                col("straße", "text", &["postal-address"], |r, _| {
                    t(format!("{} {}", r.pick(&["Hauptstraße", "Lindenallee", "Bahnhofstraße"]), r.range(1, 120)))
                }),
                col("hausnummer", "text", &["postal-address"], |r, _| {
                    t(format!("{}{}", r.range(1, 120), r.pick(&["", "a", "b"])))
                }),
                col("plz", "text", &["postal-address"], |r, _| t(format!("{:05}", r.range(1000, 99999)))),
                col("ort", "text", NONE, |r, _| t(r.pick(&["Berlin", "München", "Hamburg", "Köln"]))),
                col("geburtsdatum", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("telefonnummer", "text", &["phone"], |r, _| t(format!("+49 30 {}", r.digits(8)))),
                col("handynummer", "text", &["phone"], |r, _| t(format!("+49 15{} {}", r.range(1, 9), r.digits(7)))),
                col("e_mail_adresse", "text", &["email"], |r, _| t(email(r))),
                col("steuer_id", "text", &["national-id"], |r, _| t(format!("{}{}", r.range(1, 9), r.digits(10)))),
                col("iban", "text", &["bank-account"], |r, _| t(iban(r, "DE"))),
                col("bemerkung", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("erstellt_am", "timestamptz", NONE, |r, _| ts(r)),
                col("anzahl_bestellungen", "integer", NONE, |r, _| int(r, 0, 80)),
            ],
        },
        Table {
            schema: "intl",
            name: "clients",
            rows: 250,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("prénom", "text", &["person-name"], |r, _| t(first(r))),
                col("nom", "text", &["person-name"], |r, _| t(last(r))),
                col("adresse", "text", &["postal-address"], |r, _| t(format!("{} rue de la Paix", r.range(1, 90)))),
                col("code_postal", "text", &["postal-address"], |r, _| t(format!("{:05}", r.range(1000, 95999)))),
                col("ville", "text", NONE, |r, _| t(r.pick(&["Paris", "Lyon", "Marseille", "Lille"]))),
                col("date_de_naissance", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("téléphone", "text", &["phone"], |r, _| {
                    t(format!("+33 6 {} {} {} {}", r.digits(2), r.digits(2), r.digits(2), r.digits(2)))
                }),
                col("courriel", "text", &["email"], |r, _| t(email(r))),
                col("numero_securite_sociale", "text", &["national-id"], |r, _| {
                    t(format!("{}{:02}{:02}{}", r.range(1, 2), r.range(40, 99), r.range(1, 12), r.digits(10)))
                }),
                col("nombre_de_commandes", "integer", NONE, |r, _| int(r, 0, 50)),
                col("commentaire", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("date_inscription", "date", NONE, |r, _| day(r)),
            ],
        },
        Table {
            schema: "intl",
            name: "clientes",
            rows: 250,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("nombre", "text", &["person-name"], |r, _| t(first(r))),
                col("apellidos", "text", &["person-name"], |r, _| t(format!("{} {}", last(r), last(r)))),
                col("dirección", "text", &["postal-address"], |r, _| t(format!("Calle Mayor {}", r.range(1, 90)))),
                col("codigo_postal", "text", &["postal-address"], |r, _| t(format!("{:05}", r.range(28001, 28080)))),
                col("ciudad", "text", NONE, |r, _| t(r.pick(&["Madrid", "Sevilla", "Valencia"]))),
                col("fecha_de_nacimiento", "date", &["birth-date"], |r, _| {
                    V::Raw(format!("'{}'::date", birth_date(r)))
                }),
                col("teléfono", "text", &["phone"], |r, _| {
                    t(format!("+34 6{} {} {}", r.digits(2), r.digits(3), r.digits(3)))
                }),
                col("correo_electronico", "text", &["email"], |r, _| t(email(r))),
                col("dni", "text", &["national-id"], |r, _| t(format!("{}{}", r.digits(8), r.pick(&["Z", "X", "K"])))),
                col("numero_de_tarjeta", "text", &["card"], |r, _| t(card(r))),
                col("cuenta_bancaria", "text", &["bank-account"], |r, _| t(iban(r, "ES"))),
                col("observaciones", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("fecha_alta", "date", NONE, |r, _| day(r)),
                col("saldo", "numeric(12,2)", NONE, |r, _| money(r, 9000)),
            ],
        },
        Table {
            schema: "ops",
            name: "servers",
            rows: 60,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("hostname", "text", NONE, |_, i| t(format!("db-{i:02}.internal"))),
                col("ip_address", "inet", NONE, |r, _| t(format!("10.0.{}.{}", r.range(0, 20), r.range(1, 254)))),
                col("port", "integer", NONE, |_, _| V::Raw("5432".into())),
                col("os_version", "text", NONE, |r, _| t(format!("Debian {}.{}", r.range(11, 12), r.range(1, 9)))),
                col("mac_address", "macaddr", NONE, |r, _| {
                    t(format!("08:00:2b:{:02x}:{:02x}:{:02x}", r.range(0, 255), r.range(0, 255), r.range(0, 255)))
                }),
                col("datacenter", "text", NONE, |r, _| t(r.pick(&["fra1", "par2", "mad1"]))),
            ],
        },
        Table {
            schema: "ops",
            name: "job_runs",
            rows: 300,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("job_name", "text", NONE, |r, _| {
                    t(r.pick(&["nightly-backup", "vacuum-analyze", "export-reports"]))
                }),
                col("started_at", "timestamptz", NONE, |r, _| ts(r)),
                col("finished_at", "timestamptz", NONE, |r, _| ts(r)),
                col("exit_code", "integer", NONE, |r, _| int(r, 0, 2)),
                col("log_excerpt", "text", NONE, |r, _| t(format!("{}; {}", r.pick(LOG_LINES), r.pick(LOG_LINES)))),
                col("runner", "text", NONE, |r, _| t(r.pick(&["runner-a", "runner-b"]))),
            ],
        },
        Table {
            schema: "public",
            name: "events",
            rows: 400,
            cols: vec![
                col("id", "bigint", NONE, |_, i| id(i)),
                col("occurred_at", "timestamptz NOT NULL", NONE, |r, _| ts(r)),
                col("actor_email", "text", &["email"], |r, _| t(email(r))),
                col("detail", "text", NONE, |r, _| t(r.pick(&["viewed cart", "checked out", "searched"]))),
            ],
        },
    ]
}

/// The held-out tables: written after the classifier was frozen (commit
/// b3be853) from the column names of well-known applications (Django,
/// WordPress, Magento, Odoo, Discourse, Stripe, a hospital and a German HR
/// system), and measured once, with no change to the classifier after: the
/// figure that says how discover does on names it was not written for.
pub fn holdout_tables() -> Vec<Table> {
    vec![
        Table {
            schema: "holdout",
            name: "auth_user",
            rows: 200,
            cols: vec![
                col("id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("password", "varchar(128)", NONE, |r, _| {
                    t(format!("pbkdf2_sha256$600000${:x}${:x}", r.next(), r.next()))
                }),
                col("last_login", "timestamptz", NONE, |r, _| ts(r)),
                col("is_superuser", "boolean", NONE, |r, _| bool_(r)),
                col("username", "varchar(150)", &["person-name"], |r, _| {
                    t(format!("{}{}", ascii(&first(r)), r.range(1, 99)))
                }),
                col("first_name", "varchar(150)", &["person-name"], |r, _| t(first(r))),
                col("last_name", "varchar(150)", &["person-name"], |r, _| t(last(r))),
                col("email", "varchar(254)", &["email"], |r, _| t(email(r))),
                col("is_staff", "boolean", NONE, |r, _| bool_(r)),
                col("is_active", "boolean", NONE, |r, _| bool_(r)),
                col("date_joined", "timestamptz", NONE, |r, _| ts(r)),
            ],
        },
        Table {
            schema: "holdout",
            name: "wp_users",
            rows: 200,
            cols: vec![
                col("ID", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("user_login", "varchar(60)", &["person-name"], |r, _| {
                    t(format!("{}_{}", ascii(&first(r)), ascii(&last(r))))
                }),
                col("user_pass", "varchar(255)", NONE, |r, _| t(format!("$P$B{:x}{:x}", r.next(), r.next()))),
                col("user_nicename", "varchar(50)", &["person-name"], |r, _| {
                    t(format!("{}-{}", ascii(&first(r)), ascii(&last(r))))
                }),
                col("user_email", "varchar(100)", &["email"], |r, _| t(email(r))),
                col("user_url", "varchar(100)", NONE, |r, _| t(format!("https://blog{}.example.net", r.range(1, 300)))),
                col("user_registered", "timestamp", NONE, |r, _| ts(r)),
                col("user_activation_key", "varchar(255)", NONE, |r, _| t(format!("{:x}", r.next()))),
                col("user_status", "integer", NONE, |_, _| V::Raw("0".into())),
                col("display_name", "varchar(250)", &["person-name"], |r, _| t(full_name(r))),
            ],
        },
        Table {
            schema: "holdout",
            name: "customer_address_entity",
            rows: 250,
            cols: vec![
                col("entity_id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("parent_id", "integer", NONE, |r, _| int(r, 1, 400)),
                col("created_at", "timestamp", NONE, |r, _| ts(r)),
                col("updated_at", "timestamp", NONE, |r, _| ts(r)),
                col("is_active", "smallint", NONE, |_, _| V::Raw("1".into())),
                col("city", "varchar(255)", NONE, |r, _| t(r.pick(CITIES))),
                col("company", "varchar(255)", NONE, |r, _| {
                    sometimes(r, 0.3, |r| t(r.pick(&["Acme GmbH", "Globex SA"])))
                }),
                col("country_id", "varchar(255)", NONE, |r, _| t(r.pick(&["DE", "FR", "ES", "US"]))),
                col("fax", "varchar(255)", &["phone"], |r, _| sometimes(r, 0.2, |r| t(phone(r)))),
                col("firstname", "varchar(255)", &["person-name"], |r, _| t(first(r))),
                col("lastname", "varchar(255)", &["person-name"], |r, _| t(last(r))),
                col("middlename", "varchar(255)", &["person-name"], |r, _| sometimes(r, 0.2, |r| t(first(r)))),
                col("postcode", "varchar(255)", &["postal-address"], |r, _| t(postcode(r))),
                col("prefix", "varchar(40)", NONE, |r, _| t(r.pick(&["Mr", "Ms", "Dr", ""]))),
                col("region", "varchar(255)", NONE, |r, _| t(r.pick(&["Bavaria", "Île-de-France", "Madrid"]))),
                col("street", "text", &["postal-address"], |r, _| t(street(r))),
                col("suffix", "varchar(40)", NONE, |r, _| t(r.pick(&["", "Jr.", "PhD"]))),
                col("telephone", "varchar(255)", &["phone"], |r, _| t(phone(r))),
                col("vat_id", "text", NONE, |r, _| sometimes(r, 0.2, |r| t(format!("FR{}", r.digits(11))))),
                col("vat_is_valid", "integer", NONE, |r, _| int(r, 0, 1)),
            ],
        },
        Table {
            schema: "holdout",
            name: "res_partner",
            rows: 250,
            cols: vec![
                col("id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("name", "varchar", &["person-name"], |r, _| t(full_name(r))),
                col("display_name", "varchar", &["person-name"], |r, _| t(full_name(r))),
                col("ref", "varchar", NONE, |r, _| t(format!("P{:05}", r.range(1, 99999)))),
                col("lang", "varchar", NONE, |r, _| t(r.pick(&["en_US", "de_DE", "fr_FR"]))),
                col("tz", "varchar", NONE, |r, _| t(r.pick(&["Europe/Berlin", "Europe/Paris"]))),
                col("vat", "varchar", NONE, |r, _| sometimes(r, 0.3, |r| t(format!("DE{}", r.digits(9))))),
                col("website", "varchar", NONE, |r, _| {
                    sometimes(r, 0.3, |r| t(format!("https://www.shop{}.example", r.range(1, 99))))
                }),
                col("comment", "text", &["free-text"], |r, _| note(r, 0.3)),
                col("active", "boolean", NONE, |r, _| bool_(r)),
                col("street", "varchar", &["postal-address"], |r, _| t(street(r))),
                col("street2", "varchar", &["postal-address"], |r, _| {
                    sometimes(r, 0.3, |r| t(format!("Building {}", r.range(1, 9))))
                }),
                col("zip", "varchar", &["postal-address"], |r, _| t(postcode(r))),
                col("city", "varchar", NONE, |r, _| t(r.pick(CITIES))),
                col("email", "varchar", &["email"], |r, _| t(email(r))),
                col("phone", "varchar", &["phone"], |r, _| t(phone(r))),
                col("mobile", "varchar", &["phone"], |r, _| sometimes(r, 0.6, |r| t(phone(r)))),
                col("is_company", "boolean", NONE, |r, _| bool_(r)),
                col("function", "varchar", NONE, |r, _| t(r.pick(&["Buyer", "CEO", "Accountant"]))),
                col("barcode", "varchar", NONE, |r, _| sometimes(r, 0.2, |r| t(ean13(r)))),
            ],
        },
        Table {
            schema: "holdout",
            name: "users",
            rows: 300,
            cols: vec![
                col("id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("username", "varchar(60)", &["person-name"], |r, _| {
                    t(format!("{}{}", ascii(&first(r)), r.range(1, 999)))
                }),
                col("name", "varchar", &["person-name"], |r, _| t(full_name(r))),
                col("created_at", "timestamp", NONE, |r, _| ts(r)),
                col("last_seen_at", "timestamp", NONE, |r, _| ts(r)),
                col("registration_ip_address", "inet", &["ip-address"], |r, _| t(ipv4(r))),
                col("ip_address", "inet", &["ip-address"], |r, _| t(ipv4(r))),
                col("date_of_birth", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("locale", "varchar(10)", NONE, |r, _| t(r.pick(&["en", "de", "fr"]))),
                col("trust_level", "integer", NONE, |r, _| int(r, 0, 4)),
                col("title", "varchar", NONE, |r, _| sometimes(r, 0.1, |r| t(r.pick(&["Leader", "Regular"])))),
            ],
        },
        Table {
            schema: "holdout",
            name: "patients",
            rows: 200,
            cols: vec![
                col("id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("mrn", "text", &["national-id"], |r, _| t(format!("MRN-{:07}", r.range(1, 9_999_999)))),
                col("given", "text", &["person-name"], |r, _| t(first(r))),
                col("family", "text", &["person-name"], |r, _| t(last(r))),
                col("birth_date", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("sex", "text", NONE, |r, _| t(r.pick(&["female", "male", "other"]))),
                col("address_line", "text", &["postal-address"], |r, _| t(street(r))),
                col("postal", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("home_phone", "text", &["phone"], |r, _| t(phone(r))),
                col("insurance_number", "text", &["national-id"], |r, _| t(format!("A{}", r.digits(9)))),
                col("primary_physician", "text", &["person-name"], |r, _| t(format!("Dr. {}", last(r)))),
                col("diagnosis_notes", "text", &["free-text"], |r, _| {
                    t(r.pick(&["Reports headaches since March.", "Type 2 diabetes, stable.", "Follow-up in 6 weeks."]))
                }),
            ],
        },
        Table {
            schema: "holdout",
            name: "stripe_customers",
            rows: 250,
            cols: vec![
                col("id", "text PRIMARY KEY", NONE, |r, i| t(format!("cus_{i}{:x}", r.next()))),
                col("email", "text", &["email"], |r, _| t(email(r))),
                col("name", "text", &["person-name"], |r, _| t(full_name(r))),
                col("phone", "text", &["phone"], |r, _| sometimes(r, 0.5, |r| t(phone(r)))),
                col("address_line1", "text", &["postal-address"], |r, _| t(street(r))),
                col("address_postal_code", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("address_city", "text", NONE, |r, _| t(r.pick(CITIES))),
                col("address_country", "text", NONE, |r, _| t(r.pick(&["DE", "FR", "US"]))),
                col("default_source", "text", NONE, |r, _| t(format!("card_{:x}", r.next()))),
                col("invoice_prefix", "text", NONE, |r, _| t(format!("{:X}", r.next() & 0xffff_ffff))),
                col("delinquent", "boolean", NONE, |r, _| bool_(r)),
                col("balance", "bigint", NONE, |r, _| int(r, 0, 100_000)),
                col("created", "bigint", NONE, |r, _| int(r, 1_600_000_000, 1_730_000_000)),
                col("description", "text", &["free-text"], |r, _| {
                    if r.chance(0.5) {
                        t(format!("Customer for {}", email(r)))
                    } else {
                        t("Imported from the old shop")
                    }
                }),
            ],
        },
        Table {
            schema: "holdout",
            name: "shipments",
            rows: 300,
            cols: vec![
                col("id", "integer PRIMARY KEY", NONE, |_, i| id(i)),
                col("recipient", "text", &["person-name"], |r, _| t(full_name(r))),
                col("recipient_phone", "text", &["phone"], |r, _| t(phone(r))),
                col("dest_address", "text", &["postal-address"], |r, _| {
                    t(format!("{}, {}", street(r), r.pick(CITIES)))
                }),
                col("dest_postcode", "text", &["postal-address"], |r, _| t(postcode(r))),
                col("weight_kg", "numeric(8,3)", NONE, |r, _| V::Raw(format!("{}.{}", r.range(0, 30), r.digits(3)))),
                col("carrier", "text", NONE, |r, _| t(r.pick(&["DHL", "UPS", "La Poste", "Correos"]))),
                col("tracking_code", "text", NONE, |r, _| t(format!("JJD{}", r.digits(18)))),
                col("signed_by", "text", &["person-name"], |r, _| sometimes(r, 0.7, |r| t(last(r)))),
                col("delivered_at", "timestamptz", NONE, |r, _| sometimes(r, 0.8, ts)),
            ],
        },
        Table {
            schema: "holdout",
            name: "mitarbeiter",
            rows: 200,
            cols: vec![
                col("personalnummer", "integer PRIMARY KEY", NONE, |_, i| V::Raw((5000 + i).to_string())),
                col("anrede", "text", NONE, |r, _| t(r.pick(&["Herr", "Frau", "Divers"]))),
                col("titel", "text", NONE, |r, _| sometimes(r, 0.1, |_| t("Dr."))),
                col("vorname", "text", &["person-name"], |r, _| t(first(r))),
                col("familienname", "text", &["person-name"], |r, _| t(last(r))),
                col("geburtsort", "text", NONE, |r, _| t(r.pick(&["Berlin", "Köln", "Dresden"]))),
                col("geburtsdatum", "date", &["birth-date"], |r, _| V::Raw(format!("'{}'::date", birth_date(r)))),
                col("sozialversicherungsnummer", "text", &["national-id"], |r, _| {
                    t(format!("{} {} {} {}", r.digits(2), r.digits(6), r.pick(&["M", "S", "B"]), r.digits(3)))
                }),
                col("krankenkasse", "text", NONE, |r, _| t(r.pick(&["AOK", "TK", "Barmer"]))),
                col("bruttogehalt", "numeric(10,2)", &["compensation"], |r, _| money(r, 9000)),
                col("iban", "text", &["bank-account"], |r, _| t(iban(r, "DE"))),
                col("bic", "text", NONE, |r, _| t(r.pick(&["COBADEFFXXX", "DEUTDEFFXXX"]))),
                col("email_geschaeftlich", "text", &["email"], |r, _| t(email(r))),
                col("telefon_privat", "text", &["phone"], |r, _| t(format!("+49 30 {}", r.digits(8)))),
            ],
        },
        Table {
            schema: "holdout",
            name: "request_log",
            rows: 400,
            cols: vec![
                col("id", "bigint PRIMARY KEY", NONE, |_, i| id(i)),
                col("ts", "timestamptz", NONE, |r, _| ts(r)),
                col("level", "text", NONE, |r, _| t(r.pick(&["info", "warn", "error"]))),
                col("message", "text", &["free-text"], |r, _| {
                    if r.chance(0.2) {
                        t(format!("login failed for {}", email(r)))
                    } else {
                        t(r.pick(&["cache refreshed", "request completed", "slow query"]))
                    }
                }),
                col("source_ip", "inet", &["ip-address"], |r, _| t(ipv4(r))),
                col("path", "text", NONE, |r, _| t(format!("/api/v1/orders/{}", r.range(1, 900)))),
                col("status_code", "integer", NONE, |r, _| int(r, 200, 503)),
                col("duration_ms", "integer", NONE, |r, _| int(r, 1, 3000)),
            ],
        },
    ]
}

/// Views and other relations over the tables, with their labels: (schema,
/// relation, column, label).
pub const VIEW_LABELS: &[(&str, &str, &str, &[&str])] = &[
    ("public", "customer_view", "id", NONE),
    ("public", "customer_view", "email", &["email"]),
    ("public", "customer_view", "name", &["person-name"]),
    ("public", "customer_view", "phone", &["phone"]),
    ("public", "order_stats", "customer_id", NONE),
    ("public", "order_stats", "order_count", NONE),
    ("public", "order_stats", "total_spent", NONE),
    ("crm", "contact_directory", "email_address", &["email"]),
    ("crm", "contact_directory", "mobile", &["phone"]),
    ("crm", "contact_directory", "company", NONE),
    ("ops", "slow_view", "id", NONE),
    ("ops", "slow_view", "note", NONE),
];

/// DDL after the tables: comments, views, the partitioned layout, the
/// table the role cannot read, statistics.
pub const AFTER: &str = r#"
COMMENT ON COLUMN legacy.customer_import.col11 IS 'Mobile number of the customer, as imported';
COMMENT ON COLUMN legacy.customer_import.col12 IS 'Legacy import. pii:national-id';
COMMENT ON COLUMN ops.job_runs.runner IS 'name of the CI runner that ran the job';
COMMENT ON COLUMN public.products.name IS 'Product name shown in the shop';
CREATE VIEW public.customer_view AS
  SELECT id, email, first_name || ' ' || last_name AS name, phone FROM public.customers;
CREATE VIEW public.order_stats AS
  SELECT customer_id, count(*) AS order_count, sum(total) AS total_spent FROM public.orders GROUP BY customer_id;
CREATE MATERIALIZED VIEW crm.contact_directory AS
  SELECT email_address, mobile, company FROM crm.contacts;
CREATE VIEW ops.slow_view AS
  SELECT g AS id, (pg_sleep(0.5) IS NULL)::text AS note FROM generate_series(1, 100) g;
CREATE SCHEMA secret;
CREATE TABLE secret.vault (id bigint, api_key text);
INSERT INTO secret.vault VALUES (1, 'sk_live_do_not_read_me_123456');
"#;

/// The schemas the tables live in.
pub const SCHEMAS: &[&str] = &["crm", "hr", "legacy", "intl", "ops", "holdout"];

/// The whole set-up as SQL: schemas, tables (public.events partitioned by
/// half-year), rows, [`AFTER`], grants to the role `reader` (everything but
/// `secret`), ANALYZE.
pub fn setup_sql(reader: &str) -> String {
    let mut o = String::new();
    for s in SCHEMAS {
        let _ = writeln!(o, "CREATE SCHEMA {s};");
    }
    for table in tables().into_iter().chain(holdout_tables()) {
        let cols: Vec<String> = table.cols.iter().map(|c| format!("{} {}", ident(c.name), c.ty)).collect();
        let name = format!("{}.{}", table.schema, ident(table.name));
        if table.name == "events" {
            let _ = writeln!(o, "CREATE TABLE {name} ({}) PARTITION BY RANGE (occurred_at);", cols.join(", "));
            let _ = writeln!(
                o,
                "CREATE TABLE public.events_h1 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');\n\
                 CREATE TABLE public.events_h2 PARTITION OF public.events FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');"
            );
        } else {
            let _ = writeln!(o, "CREATE TABLE {name} ({});", cols.join(", "));
        }
        let mut rng = Rng::new(&name);
        let names: Vec<String> = table.cols.iter().map(|c| ident(c.name)).collect();
        for chunk in (0..table.rows).collect::<Vec<_>>().chunks(1000) {
            let rows: Vec<String> = chunk
                .iter()
                .map(|i| {
                    let values: Vec<String> = table.cols.iter().map(|c| (c.data)(&mut rng, *i).sql()).collect();
                    format!("({})", values.join(", "))
                })
                .collect();
            let _ = writeln!(o, "INSERT INTO {name} ({}) VALUES\n{};", names.join(", "), rows.join(",\n"));
        }
    }
    o.push_str(AFTER);
    for s in ["public"].iter().chain(SCHEMAS) {
        let _ =
            writeln!(o, "GRANT USAGE ON SCHEMA {s} TO {reader}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {reader};");
    }
    o.push_str("ANALYZE;\n");
    o
}

/// `name` as an SQL identifier.
pub fn ident(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !["ref", "function", "user"].contains(&name)
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Every labelled column of the development set (everything but the
/// held-out tables): (schema, relation, column, allowed categories).
pub fn labels() -> Vec<(String, String, String, &'static [&'static str])> {
    let mut out = Vec::new();
    for table in tables() {
        for c in &table.cols {
            out.push((table.schema.to_string(), table.name.to_string(), c.name.to_string(), c.label));
        }
    }
    for (s, r, c, l) in VIEW_LABELS {
        out.push((s.to_string(), r.to_string(), c.to_string(), *l));
    }
    out
}

/// Every labelled column of the held-out tables.
pub fn holdout_labels() -> Vec<(String, String, String, &'static [&'static str])> {
    holdout_tables()
        .iter()
        .flat_map(|t| t.cols.iter().map(|c| (t.schema.to_string(), t.name.to_string(), c.name.to_string(), c.label)))
        .collect()
}
