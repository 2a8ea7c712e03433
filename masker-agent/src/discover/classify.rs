//! Classifying columns from their name, comment, type and sampled values.
//! Pure: no I/O, and no value ever leaves [`SampleStats`] (it holds counts).
//!
//! Signals, strongest first:
//!
//! 1. the column comment tags it: `pii:<rule or action>` (what a DBA said);
//! 2. the values: at least [`STRUCTURED_RATIO`] of the sampled non-null
//!    values *are* one kind of detected data (an email, a phone number, a
//!    US SSN, a Luhn-valid card number, a mod-97-valid IBAN, an IP address;
//!    see [`crate::masking::detect`]), and one kind makes up at least
//!    [`DOMINANT_SHARE`] of those, so a column named `contact` that holds
//!    emails is an email column, and a column named `address` that holds
//!    emails is too;
//! 3. the name ([`super::dictionary`]), when the type can hold such data;
//!    names that need a table of people (`name`, `address`) count only in
//!    one: a table whose name says so (`customers`, `kunden`) or that has
//!    another column classified as a person's data by a strong signal;
//! 4. words of the comment, looked up like a name;
//! 5. the type: `inet`/`cidr` hold IP addresses;
//! 6. the values again: text in which the detectors find personal data
//!    *inside* longer values (notes, messages, JSON documents) is free text
//!    to scan (`detect`).
//!
//! Two checks take a proposal back: a name that says email or IP address on
//! a text column whose sample of at least [`CONTRADICTION_MIN`] values holds
//! none (the values contradict the name), and IP addresses in a table of
//! machines (`servers`, `hosts`, `nodes`), which are not a person's.
//! Values that pass a checksum only now and then (order numbers that look
//! like card numbers in a few percent of rows) stay below the ratio and are
//! reported for review instead.

use std::fmt;

use serde::Serialize;

use super::Category;
use super::dictionary::{self, Strength, Verdict};
use crate::masking::detect::PiiKind;

/// Share of sampled values that must be one detected kind for the column
/// to be that kind: half. A column of order ids, some of which pass Luhn
/// by chance (about 1 in 10 numbers, fewer with an issuer prefix), stays
/// far below it; a column of emails with some blanks or typos stays above.
pub const STRUCTURED_RATIO: f64 = 0.5;
/// Share of the whole-value matches that one kind must have for the column
/// to be that kind (otherwise it is mixed contact data: free text).
pub const DOMINANT_SHARE: f64 = 0.8;
/// Sampled values needed before a sample may contradict a name.
pub const CONTRADICTION_MIN: u64 = 20;

/// The detectors' kinds, in [`SampleStats`] index order.
pub const KINDS: [PiiKind; 7] =
    [PiiKind::Email, PiiKind::Phone, PiiKind::Ssn, PiiKind::Card, PiiKind::Iban, PiiKind::Ipv4, PiiKind::Ipv6];

/// The index of `kind` in [`KINDS`].
pub fn kind_index(kind: PiiKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// A kind's name in evidence ("emails").
pub fn kind_plural(kind: PiiKind) -> &'static str {
    match kind {
        PiiKind::Email => "emails",
        PiiKind::Phone => "phone numbers",
        PiiKind::Ssn => "US SSNs",
        PiiKind::Card => "card numbers (Luhn)",
        PiiKind::Iban => "IBANs (mod-97)",
        PiiKind::Ipv4 => "IPv4 addresses",
        PiiKind::Ipv6 => "IPv6 addresses",
    }
}

fn kind_category(kind: PiiKind) -> Category {
    match kind {
        PiiKind::Email => Category::Email,
        PiiKind::Phone => Category::Phone,
        PiiKind::Ssn => Category::NationalId,
        PiiKind::Card => Category::Card,
        PiiKind::Iban => Category::BankAccount,
        PiiKind::Ipv4 | PiiKind::Ipv6 => Category::IpAddress,
    }
}

/// Counts over the sampled values of one column; never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SampleStats {
    /// Non-null values looked at.
    pub values: u64,
    /// Values that are, as a whole (surrounding blanks aside), one detected
    /// item of a kind (by [`KINDS`] index).
    pub whole: [u64; 7],
    /// Values that contain a detected item of a kind, but are more than it.
    pub within: [u64; 7],
    /// Values that contain anything detected, not as the whole value.
    pub within_any: u64,
}

impl SampleStats {
    /// Runs the detectors over one value and counts what they find.
    pub fn add(&mut self, value: &str) {
        self.values += 1;
        let trimmed = value.trim();
        let mut found = [false; 7];
        let mut whole = None;
        crate::masking::detect::scan(trimmed.as_bytes(), |f| {
            if f.start == 0 && f.end == trimmed.len() {
                whole = Some(f.kind);
            } else {
                found[kind_index(f.kind)] = true;
            }
        });
        if let Some(kind) = whole {
            self.whole[kind_index(kind)] += 1;
            return;
        }
        if found.iter().any(|f| *f) {
            self.within_any += 1;
        }
        for (i, f) in found.iter().enumerate() {
            self.within[i] += u64::from(*f);
        }
    }

    /// Values that are a whole detected item of any kind.
    pub fn whole_total(&self) -> u64 {
        self.whole.iter().sum()
    }

    /// Values that hold an item of `kind` in any way.
    fn holding(&self, kind: PiiKind) -> u64 {
        let i = kind_index(kind);
        self.whole[i] + self.within[i]
    }
}

/// What kind of values a column's type holds, as far as classifying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeClass {
    Text,
    /// json, jsonb, xml.
    Document,
    Array,
    /// smallint, integer.
    Integer,
    /// bigint, numeric, money: wide enough for card and phone numbers.
    WideNumber,
    Float,
    Boolean,
    /// date, timestamp, timestamptz.
    Date,
    /// time, interval.
    Time,
    /// inet, cidr.
    Network,
    Mac,
    Uuid,
    Bytes,
    Geometric,
    Enum,
    /// Composite, range and other types: their text form may hold anything.
    Other,
}

impl TypeClass {
    /// From the catalog: the base type's `typname` and `typcategory` (of
    /// the domain's base type for a domain).
    pub fn from_catalog(typname: &str, typcategory: &str) -> TypeClass {
        match typcategory {
            "A" => TypeClass::Array,
            "B" => TypeClass::Boolean,
            "D" => TypeClass::Date,
            "T" => TypeClass::Time,
            "I" => TypeClass::Network,
            "G" => TypeClass::Geometric,
            "E" => TypeClass::Enum,
            "S" => TypeClass::Text,
            "N" => match typname {
                "int8" | "numeric" | "money" => TypeClass::WideNumber,
                "float4" | "float8" => TypeClass::Float,
                _ => TypeClass::Integer,
            },
            _ => match typname {
                "json" | "jsonb" | "xml" => TypeClass::Document,
                "uuid" => TypeClass::Uuid,
                "bytea" => TypeClass::Bytes,
                "macaddr" | "macaddr8" => TypeClass::Mac,
                _ => TypeClass::Other,
            },
        }
    }

    /// Whether the detectors can find anything in this type's text form
    /// (what is worth sampling).
    pub fn worth_sampling(self) -> bool {
        matches!(
            self,
            TypeClass::Text | TypeClass::Document | TypeClass::Array | TypeClass::WideNumber | TypeClass::Other
        )
    }

    /// Whether a column of this type can hold data of `category`.
    pub fn fits(self, category: Category) -> bool {
        use Category::*;
        use TypeClass as T;
        let textual = matches!(self, T::Text | T::Document | T::Array | T::Other);
        match category {
            Email | PersonName | PostalAddress | FreeText => textual,
            Phone | Card | BankAccount => textual || self == T::WideNumber,
            NationalId => textual || matches!(self, T::WideNumber | T::Integer),
            BirthDate => textual || self == T::Date,
            IpAddress => textual || self == T::Network,
            Geolocation => textual || matches!(self, T::Float | T::WideNumber | T::Geometric),
            Compensation => matches!(self, T::Integer | T::WideNumber | T::Float),
        }
    }
}

/// One column as the classifier sees it.
#[derive(Debug, Clone)]
pub struct ColumnFacts<'a> {
    pub column: &'a str,
    /// The type as `format_type` prints it.
    pub type_name: &'a str,
    pub class: TypeClass,
    pub comment: Option<&'a str>,
    /// `None` when the column was not sampled (its type, an empty table, a
    /// failed or timed-out sample).
    pub sample: Option<&'a SampleStats>,
}

/// A piece of evidence for a proposal. Never holds a value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// The column comment carries `pii:<tag>`.
    CommentTag { tag: String },
    /// Sampled values are, as a whole, items of one kind.
    Values { kind: &'static str, matching: u64, sampled: u64 },
    /// The name matches a dictionary entry.
    Name { matched: &'static str, people_table: bool },
    /// The comment's words match a dictionary entry.
    Comment { matched: &'static str },
    /// The type holds such data.
    Type { type_name: String },
    /// Sampled values contain detected items within longer text.
    Embedded { kinds: Vec<&'static str>, matching: u64, sampled: u64 },
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::CommentTag { tag } => write!(f, "comment pii:{tag}"),
            Signal::Values { kind, matching, sampled } => {
                write!(f, "sample: {matching} of {sampled} values are {kind} ({})", percent(*matching, *sampled))
            }
            Signal::Name { matched, people_table: true } => write!(f, "name \"{matched}\" in a table of people"),
            Signal::Name { matched, people_table: false } => write!(f, "name \"{matched}\""),
            Signal::Comment { matched } => write!(f, "comment mentions \"{matched}\""),
            Signal::Type { type_name } => write!(f, "type {type_name}"),
            Signal::Embedded { kinds, matching, sampled } => write!(
                f,
                "sample: {matching} of {sampled} values contain {} in longer text ({})",
                kinds.join(", "),
                percent(*matching, *sampled)
            ),
        }
    }
}

/// `n` of `of` as a percentage with one decimal.
pub fn percent(n: u64, of: u64) -> String {
    if of == 0 { "0%".into() } else { format!("{:.1}%", n as f64 * 100.0 / of as f64) }
}

/// Why a signal did not become a proposal, or what to double-check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Note {
    pub text: String,
    /// Worth a human look (listed in the policy's review section).
    pub review: bool,
}

/// The verdict on one column.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Classification {
    /// What to mask it as; `None`: nothing proposed (the policy's default,
    /// `detect`, still scans it).
    pub category: Option<Category>,
    /// The evidence for `category`, strongest first.
    pub signals: Vec<Signal>,
    pub notes: Vec<Note>,
}

/// Words of table names that hold people.
const PEOPLE_TABLES: &[&str] = &[
    "customer",
    "customers",
    "client",
    "clients",
    "cliente",
    "clientes",
    "user",
    "users",
    "usuario",
    "usuarios",
    "utilisateur",
    "utilisateurs",
    "member",
    "members",
    "person",
    "persons",
    "people",
    "personne",
    "personnes",
    "persona",
    "personas",
    "personen",
    "employee",
    "employees",
    "empleado",
    "empleados",
    "employe",
    "employes",
    "salarie",
    "salaries",
    "mitarbeiter",
    "staff",
    "contact",
    "contacts",
    "kontakt",
    "kontakte",
    "patient",
    "patients",
    "paciente",
    "pacientes",
    "student",
    "students",
    "applicant",
    "applicants",
    "candidate",
    "candidates",
    "lead",
    "leads",
    "subscriber",
    "subscribers",
    "guest",
    "guests",
    "passenger",
    "passengers",
    "traveler",
    "travelers",
    "owner",
    "owners",
    "author",
    "authors",
    "kunde",
    "kunden",
    "benutzer",
    "nutzer",
    "account",
    "accounts",
    "profile",
    "profiles",
];

/// Words of table names that hold machines: their IP addresses are not a person's.
const MACHINE_TABLES: &[&str] = &[
    "server",
    "servers",
    "host",
    "hosts",
    "node",
    "nodes",
    "instance",
    "instances",
    "machine",
    "machines",
    "router",
    "routers",
    "switch",
    "switches",
    "cluster",
    "clusters",
    "datacenter",
    "datacenters",
    "vm",
    "vms",
    "appliance",
    "appliances",
];

/// Categories that, found by a strong signal, make a table one of people.
fn marks_people(c: Category) -> bool {
    matches!(c, Category::Email | Category::Phone | Category::PersonName | Category::NationalId | Category::BirthDate)
}

/// What the name, comment, type and sample of one column say, before the
/// table's context is known.
struct Pending {
    tag: Option<(String, Option<Category>)>,
    values: Option<Signal>,
    values_category: Option<Category>,
    name: Option<(Category, &'static str, Strength)>,
    comment: Option<(Category, &'static str, Strength)>,
    notes: Vec<Note>,
}

/// Classifies the columns of one table (or view) named `table`.
pub fn classify_table(table: &str, columns: &[ColumnFacts<'_>]) -> Vec<Classification> {
    let table_words = dictionary::words(table);
    let pending: Vec<Pending> = columns.iter().map(look).collect();
    let people_by_name = table_words.iter().any(|w| PEOPLE_TABLES.contains(&w.as_str()));
    let people_by_columns = pending.iter().any(|p| {
        p.values_category.is_some_and(marks_people)
            || p.name.is_some_and(|(c, _, s)| s == Strength::Strong && marks_people(c))
            || p.tag.as_ref().is_some_and(|(_, c)| c.is_some_and(marks_people))
    });
    let people = people_by_name || people_by_columns;
    let machines = table_words.iter().any(|w| MACHINE_TABLES.contains(&w.as_str()));
    columns.iter().zip(pending).map(|(facts, p)| decide(facts, p, people, machines)).collect()
}

/// Pass one: every signal of a column on its own.
fn look(facts: &ColumnFacts<'_>) -> Pending {
    let mut notes = Vec::new();
    let tag = facts.comment.and_then(pii_tag).map(|t| {
        let c = Category::from_tag(&t);
        (t, c)
    });
    let (values, values_category) = match facts.sample {
        Some(s) => structured(s),
        None => (None, None),
    };
    let name = match dictionary::lookup(&dictionary::words(facts.column)) {
        Verdict::Found(m) => match m.entry.category {
            Some(c) if facts.class.fits(c) => Some((c, m.entry.pattern, m.entry.strength)),
            Some(c) => {
                notes.push(Note {
                    text: format!(
                        "name \"{}\" suggests {}, but type {} cannot hold it",
                        m.entry.pattern,
                        c.rule_name(),
                        facts.type_name
                    ),
                    review: false,
                });
                None
            }
            None => None,
        },
        Verdict::Modified { found, modifier } => {
            if let Some(c) = found.entry.category {
                notes.push(Note {
                    text: format!(
                        "name \"{}\" suggests {}, but \"{modifier}\" says the column describes it",
                        found.entry.pattern,
                        c.rule_name()
                    ),
                    review: false,
                });
            }
            None
        }
        Verdict::Nothing => None,
    };
    let comment = facts.comment.and_then(|text| match dictionary::lookup(&dictionary::words(text)) {
        Verdict::Found(m) => {
            m.entry.category.filter(|c| facts.class.fits(*c)).map(|c| (c, m.entry.pattern, m.entry.strength))
        }
        _ => None,
    });
    Pending { tag, values, values_category, name, comment, notes }
}

/// The sample's verdict when its values are, as a whole, one kind.
fn structured(s: &SampleStats) -> (Option<Signal>, Option<Category>) {
    let whole = s.whole_total();
    if s.values == 0 || (whole as f64) < STRUCTURED_RATIO * s.values as f64 {
        return (None, None);
    }
    // IPv4 and IPv6 together are one category.
    let ip = s.whole[kind_index(PiiKind::Ipv4)] + s.whole[kind_index(PiiKind::Ipv6)];
    let (kind, n) =
        KINDS.iter().map(|k| (*k, s.whole[kind_index(*k)])).max_by_key(|(_, n)| *n).unwrap_or((PiiKind::Email, 0));
    let (kind, n) = if ip > n { (PiiKind::Ipv4, ip) } else { (kind, n) };
    if (n as f64) < DOMINANT_SHARE * whole as f64 {
        let kinds = KINDS.iter().filter(|k| s.whole[kind_index(**k)] > 0).map(|k| kind_plural(*k)).collect();
        return (Some(Signal::Embedded { kinds, matching: whole, sampled: s.values }), Some(Category::FreeText));
    }
    let label = if ip == n && ip > 0 { "IP addresses" } else { kind_plural(kind) };
    (Some(Signal::Values { kind: label, matching: n, sampled: s.values }), Some(kind_category(kind)))
}

/// Pass two: the proposal, now that the table's context is known.
fn decide(facts: &ColumnFacts<'_>, p: Pending, people: bool, machines: bool) -> Classification {
    let mut out = Classification { category: None, signals: Vec::new(), notes: p.notes };
    let name_ok = |(_, _, s): &(Category, &'static str, Strength)| *s == Strength::Strong || people;
    let name = p.name.filter(name_ok);
    let comment = p.comment.filter(name_ok);
    if p.name.is_some()
        && name.is_none()
        && let Some((c, pattern, _)) = p.name
    {
        out.notes.push(Note {
            text: format!("name \"{pattern}\" suggests {} only in a table of people", c.rule_name()),
            review: false,
        });
    }

    if let Some((tag, category)) = &p.tag {
        match category {
            Some(c) => {
                out.category = Some(*c);
                out.signals.push(Signal::CommentTag { tag: tag.clone() });
            }
            None => out.notes.push(Note {
                text: format!(
                    "comment pii:{tag} names no rule discover proposes; the policy redacts it by its comment"
                ),
                review: true,
            }),
        }
    }
    if out.category.is_none()
        && let (Some(signal), Some(c)) = (&p.values, p.values_category)
    {
        out.category = Some(c);
        out.signals.push(signal.clone());
    }
    if out.category.is_none()
        && let Some((c, pattern, _)) = name
    {
        match contradiction(facts, c) {
            Some(note) => out.notes.push(note),
            None => {
                out.category = Some(c);
                out.signals.push(Signal::Name { matched: pattern, people_table: people });
            }
        }
    }
    if out.category.is_none()
        && let Some((c, pattern, _)) = comment
        && contradiction(facts, c).is_none()
    {
        out.category = Some(c);
        out.signals.push(Signal::Comment { matched: pattern });
    }
    if out.category.is_none() && facts.class == TypeClass::Network {
        out.category = Some(Category::IpAddress);
        out.signals.push(Signal::Type { type_name: facts.type_name.to_string() });
    }
    if out.category.is_none()
        && let Some(s) = facts.sample
        && let Some(signal) = embedded(s, facts.class)
    {
        out.category = Some(Category::FreeText);
        out.signals.push(signal);
    }

    // Supporting evidence for what was decided, so the comment shows it.
    if let Some(c) = out.category {
        if let Some((nc, pattern, _)) = name
            && nc == c
            && !out.signals.iter().any(|s| matches!(s, Signal::Name { .. }))
        {
            out.signals.push(Signal::Name { matched: pattern, people_table: people });
        }
        if let (Some(signal), Some(vc)) = (&p.values, p.values_category)
            && vc == c
            && !out.signals.contains(signal)
        {
            out.signals.push(signal.clone());
        }
        if c == Category::IpAddress
            && facts.class == TypeClass::Network
            && !out.signals.iter().any(|s| matches!(s, Signal::Type { .. }))
        {
            out.signals.push(Signal::Type { type_name: facts.type_name.to_string() });
        }
        if let Some((nc, pattern, _)) = name
            && nc != c
        {
            out.notes.push(Note {
                text: format!("name \"{pattern}\" suggests {}, the values say {}", nc.rule_name(), c.rule_name()),
                review: true,
            });
        }
    }

    if out.category == Some(Category::IpAddress) && machines && p.tag.is_none() {
        out.category = None;
        out.signals.clear();
        out.notes.push(Note {
            text: "IP addresses in a table of machines: not a person's; not proposed".into(),
            review: true,
        });
    }
    if out.category.is_none()
        && let Some(s) = facts.sample
    {
        let card = s.whole[kind_index(PiiKind::Card)];
        if card > 0 {
            out.notes.push(Note {
                text: format!(
                    "{card} of {} sampled values pass as card numbers ({}): too few for a card column; ids? \
                     (the default action, detect, masks those that do)",
                    s.values,
                    percent(card, s.values)
                ),
                review: true,
            });
        }
    }
    out
}

/// A note when the sample contradicts a name or comment that says `c`:
/// email or IP address on a text column whose sample holds none.
fn contradiction(facts: &ColumnFacts<'_>, c: Category) -> Option<Note> {
    let s = facts.sample?;
    if s.values < CONTRADICTION_MIN || !matches!(facts.class, TypeClass::Text) {
        return None;
    }
    let holding = match c {
        Category::Email => s.holding(PiiKind::Email),
        Category::IpAddress => s.holding(PiiKind::Ipv4) + s.holding(PiiKind::Ipv6),
        _ => return None,
    };
    (holding == 0).then(|| Note {
        text: format!(
            "the name suggests {}, but none of {} sampled values holds one; not proposed",
            c.rule_name(),
            s.values
        ),
        review: true,
    })
}

/// Free text: values in which the detectors find items inside longer text.
/// One such value is enough in a small sample; in a larger one, two.
fn embedded(s: &SampleStats, class: TypeClass) -> Option<Signal> {
    if !matches!(class, TypeClass::Text | TypeClass::Document | TypeClass::Array | TypeClass::Other) {
        return None;
    }
    let needed = if s.values < 50 { 1 } else { 2 };
    if s.within_any < needed {
        return None;
    }
    let kinds = KINDS.iter().filter(|k| s.within[kind_index(**k)] > 0).map(|k| kind_plural(*k)).collect();
    Some(Signal::Embedded { kinds, matching: s.within_any, sampled: s.values })
}

/// The name after `pii:` in a comment, lower-cased.
fn pii_tag(comment: &str) -> Option<String> {
    let at = comment.as_bytes().windows(4).position(|w| w.eq_ignore_ascii_case(b"pii:"))?;
    let rest = &comment[at + 4..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[&str]) -> SampleStats {
        let mut s = SampleStats::default();
        for v in values {
            s.add(v);
        }
        s
    }

    fn one(
        table: &str,
        column: &str,
        type_name: &str,
        class: TypeClass,
        sample: Option<&SampleStats>,
    ) -> Classification {
        classify_table(table, &[ColumnFacts { column, type_name, class, comment: None, sample }]).remove(0)
    }

    #[test]
    fn sample_counts_whole_and_embedded_values() {
        let s = stats(&[
            "alice@example.com",
            " bob@example.org ",
            "call 555-123-4567 today",
            "nothing",
            "4111 1111 1111 1111",
        ]);
        assert_eq!(s.values, 5);
        assert_eq!(s.whole[kind_index(PiiKind::Email)], 2);
        assert_eq!(s.whole[kind_index(PiiKind::Card)], 1);
        assert_eq!(s.within[kind_index(PiiKind::Phone)], 1);
        assert_eq!(s.within_any, 1);
    }

    #[test]
    fn values_beat_a_lying_name() {
        let emails: Vec<String> = (0..40).map(|i| format!("user{i}@example.com")).collect();
        let s = stats(&emails.iter().map(String::as_str).collect::<Vec<_>>());
        let c = one("newsletter", "address", "text", TypeClass::Text, Some(&s));
        assert_eq!(c.category, Some(Category::Email));
        assert!(matches!(c.signals[0], Signal::Values { matching: 40, sampled: 40, .. }), "{c:?}");
    }

    #[test]
    fn weak_names_need_a_table_of_people() {
        assert_eq!(one("products", "name", "text", TypeClass::Text, None).category, None);
        assert_eq!(one("customers", "name", "text", TypeClass::Text, None).category, Some(Category::PersonName));
        // A table with an email column holds people.
        let cols = [
            ColumnFacts {
                column: "contact_email",
                type_name: "text",
                class: TypeClass::Text,
                comment: None,
                sample: None,
            },
            ColumnFacts { column: "name", type_name: "text", class: TypeClass::Text, comment: None, sample: None },
        ];
        let out = classify_table("signups", &cols);
        assert_eq!(out[1].category, Some(Category::PersonName));
    }

    #[test]
    fn ids_that_pass_luhn_now_and_then_are_not_cards() {
        // 16-digit ids: 1 in 10 valid by chance.
        let ids: Vec<String> = (0..100u64).map(|i| format!("{}", 4_000_000_000_000_000u64 + i * 7_919)).collect();
        let s = stats(&ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(s.whole[kind_index(PiiKind::Card)] > 0);
        let c = one("orders", "order_number", "bigint", TypeClass::WideNumber, Some(&s));
        assert_eq!(c.category, None);
        assert!(c.notes.iter().any(|n| n.review && n.text.contains("card numbers")), "{c:?}");
    }

    #[test]
    fn names_the_values_contradict_are_dropped() {
        let words: Vec<String> = (0..30).map(|i| format!("template {i}")).collect();
        let s = stats(&words.iter().map(String::as_str).collect::<Vec<_>>());
        let c = one("settings", "email", "text", TypeClass::Text, Some(&s));
        assert_eq!(c.category, None);
        assert!(c.notes[0].text.contains("none of 30"));
    }

    #[test]
    fn free_text_and_machines_and_tags() {
        let mut notes: Vec<String> = (0..60).map(|i| format!("called back, ticket {i}")).collect();
        notes.push("customer wrote from alice@example.com".into());
        notes.push("new number +44 20 7946 0958".into());
        let s = stats(&notes.iter().map(String::as_str).collect::<Vec<_>>());
        let c = one("tickets", "body", "text", TypeClass::Text, Some(&s));
        assert_eq!(c.category, Some(Category::FreeText));
        assert_eq!(one("servers", "ip_address", "inet", TypeClass::Network, None).category, None);
        assert_eq!(one("sessions", "client", "inet", TypeClass::Network, None).category, Some(Category::IpAddress));
        let tagged = classify_table(
            "t",
            &[ColumnFacts {
                column: "x",
                type_name: "text",
                class: TypeClass::Text,
                comment: Some("Legacy. pii:national-id"),
                sample: None,
            }],
        );
        assert_eq!(tagged[0].category, Some(Category::NationalId));
        assert_eq!(tagged[0].signals[0].to_string(), "comment pii:national-id");
    }

    #[test]
    fn types_gate_names() {
        assert_eq!(one("customers", "email_verified", "boolean", TypeClass::Boolean, None).category, None);
        assert_eq!(one("customers", "phone", "boolean", TypeClass::Boolean, None).category, None);
        assert_eq!(one("hr", "salary", "numeric", TypeClass::WideNumber, None).category, Some(Category::Compensation));
        assert_eq!(one("hr", "birthday", "date", TypeClass::Date, None).category, Some(Category::BirthDate));
    }
}
