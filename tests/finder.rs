//! The finder's own tests, end to end: a deliberately leaking relay
//! ([`masker_tests::leaky`]) adds one seeded value to a clean session, in one
//! form and one channel, and the attack pipeline (the same clients, channel
//! split and finder as the corpora) must report it there. One case per form
//! and per channel, and a clean control (the relay adding nothing: nothing
//! found anywhere).
//!
//! A form or channel the finder misses makes its case fail, naming it, so a
//! corpus can never be blind to it unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use masker_tests::attack::{self, Attack, Channel, Client};
use masker_tests::finder::{self, Finder, Form, Found};
use masker_tests::fixture::PersonalValues;
use masker_tests::leaky::{self, Inject, LeakyRelay};
use masker_tests::{PgCluster, within};

const LIMIT: Duration = Duration::from_secs(300);

struct Env {
    values: PersonalValues,
    finder: Finder,
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    let values = PersonalValues::load(PgCluster::shared()).expect("seeded values");
    let finder = Finder::new(&values, |_, _| false);
    Env { values, finder }
});

/// The first seeded value of `kind` matching `pred`.
fn value(kind: &str, pred: impl Fn(&str) -> bool) -> String {
    ENV.values.of_kind(kind).find(|v| pred(v)).unwrap_or_else(|| panic!("no seeded {kind}")).to_owned()
}

fn email() -> String {
    value("email", |v| !v.ends_with("@work.example"))
}

/// Runs `sql` through every client against a relay injecting `inject` and
/// returns where the finder found something.
async fn through(inject: Inject, sql: &str) -> BTreeMap<(Client, Channel), Found> {
    let cluster = PgCluster::shared();
    let relay = LeakyRelay::start(cluster.addr(), inject).expect("leaking relay");
    let target = cluster.app().at(relay.addr());
    let attacks = [Attack::new("finder case", "", sql)];
    let results = attack::run(&target, &attacks, &Client::ALL).await.expect("client runs");
    for (client, seen) in &results[0] {
        assert!(seen.failure.is_none(), "{}: {:?}", client.name(), seen.failure);
    }
    attack::scan(&ENV.finder, &attacks[0], &results[0])
}

/// Asserts that the leak was found in every `(client, channel)` of `want`,
/// with a hit of `form`.
#[track_caller]
fn assert_found(case: &str, got: &BTreeMap<(Client, Channel), Found>, want: &[(Client, Channel)], form: Form) {
    for key in want {
        let Some(found) = got.get(key) else {
            panic!("{case}: nothing found in {} / {}; found: {:?}", key.0.name(), key.1.name(), keys(got));
        };
        assert!(
            found.hits.iter().any(|h| h.form == form),
            "{case}: {} / {}: found {found}, not the form {}",
            key.0.name(),
            key.1.name(),
            form.name()
        );
    }
}

fn keys(got: &BTreeMap<(Client, Channel), Found>) -> Vec<String> {
    got.iter().map(|((c, ch), f)| format!("{}/{}: {f}", c.name(), ch.name())).collect()
}

fn every_client(channel: Channel) -> Vec<(Client, Channel)> {
    Client::ALL.iter().flat_map(|&c| [(c, channel), (c, Channel::Wire)]).collect()
}

#[tokio::test]
async fn a_transparent_relay_shows_nothing() {
    within(LIMIT, "clean control", async {
        for sql in ["SELECT 'clean'::text AS c", "SELECT 1 AS one", "COPY (SELECT 'clean') TO STDOUT"] {
            let got = through(Inject::Nothing, sql).await;
            assert!(got.is_empty(), "{sql}: found {:?}", keys(&got));
        }
    })
    .await
}

/// Each form, in a notice every client shows: the finder must name the form.
#[tokio::test]
async fn every_form_is_found() {
    within(LIMIT, "forms", async {
        let email = email();
        let (local, _) = email.split_once('@').expect("an email");
        let ssn = value("ssn", |_| true);
        let phone = value("phone", |v| v.starts_with("+44"));
        let name = value("full_name", |v| v.split(' ').nth(1).is_some_and(|last| last.len() >= 6));
        let last = name.split(' ').nth(1).expect("a last name");
        let date = value("birth_date", |v| !v.ends_with("-01-01"));
        let (y, m, d) = (&date[..4], &date[5..7], &date[8..]);
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        let long = format!("{} and {} and {}", email.to_uppercase(), email, email.to_uppercase());
        let wrapped: String =
            finder::base64(long.as_bytes()).as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c) + "\n").collect();
        let cases: Vec<(&str, String, Form)> = vec![
            ("upper case", format!("contact {}", email.to_uppercase()), Form::Value),
            ("reversed", email.chars().rev().collect(), Form::Reversed),
            ("hex of the value, upper-case digits", finder::hex(email.as_bytes()).to_uppercase(), Form::Value),
            (
                "hex of the upper-cased value, unaligned",
                format!("0{}", finder::hex(email.to_uppercase().as_bytes())),
                Form::Value,
            ),
            ("base64, aligned", finder::base64(email.as_bytes()), Form::Value),
            (
                "base64 of the upper-cased value, unaligned",
                finder::base64(format!("x{}", email.to_uppercase()).as_bytes()),
                Form::Value,
            ),
            ("base64, wrapped at 76 columns", wrapped, Form::Value),
            ("digits only", format!("ssn {}", digits(&ssn)), Form::Digits),
            ("digits reversed", digits(&phone).chars().rev().collect(), Form::ReversedDigits),
            ("email local part", format!("user {local} asked"), Form::EmailLocalPart),
            ("last name", format!("Dear {},", last.to_uppercase()), Form::NamePart),
            ("date as MM/DD/YYYY", format!("born {m}/{d}/{y}"), Form::DateFormat),
            ("date as DD.MM.YYYY", format!("born {d}.{m}.{y}"), Form::DateFormat),
            ("date as YYYYMMDD", format!("born {y}{m}{d}"), Form::DateFormat),
        ];
        let mut missed = Vec::new();
        for (case, text, form) in cases {
            let got = through(Inject::Notice(text.clone()), "SELECT 1 AS one").await;
            for key in every_client(Channel::Notice) {
                let ok = got.get(&key).is_some_and(|f| f.hits.iter().any(|h| h.form == form));
                if !ok {
                    missed.push(format!(
                        "{case} ({}) in {} / {}: {:?}",
                        form.name(),
                        key.0.name(),
                        key.1.name(),
                        got.get(&key)
                    ));
                }
            }
        }
        assert!(missed.is_empty(), "forms the pipeline missed:\n{}", missed.join("\n"));
    })
    .await
}

/// `(case, what the relay adds, the query, where it must be found, its form)`.
type ChannelCase = (&'static str, Inject, &'static str, Vec<(Client, Channel)>, Form);

/// The plain value in each channel: the clients that show that channel must
/// report it there, and the raw bytes must show it for every client.
#[tokio::test]
async fn every_channel_is_scanned() {
    within(LIMIT, "channels", async {
        let email = email();
        let ip = value("ip", |v| v.starts_with("10."));
        let uuid = value("external_id", |_| true);
        let date = value("birth_date", |v| !v.ends_with("-01-01"));
        let binary = [Client::TokioBinary, Client::PsycopgBinary];
        let cases: Vec<ChannelCase> = vec![
            (
                "text cell",
                Inject::Cell(email.clone().into_bytes()),
                "SELECT 'clean'::text AS c",
                every_client(Channel::Rows),
                Form::Value,
            ),
            (
                "binary date cell",
                Inject::Cell(leaky::binary_date(&date)),
                "SELECT date '2000-01-01' AS d",
                binary.iter().map(|&c| (c, Channel::Rows)).collect(),
                Form::Value,
            ),
            (
                "binary inet cell",
                Inject::Cell(leaky::binary_inet(&ip)),
                "SELECT inet '192.0.2.1' AS i",
                binary.iter().map(|&c| (c, Channel::Rows)).collect(),
                Form::Value,
            ),
            (
                "binary uuid cell",
                Inject::Cell(leaky::binary_uuid(&uuid)),
                "SELECT '00000000-0000-0000-0000-000000000000'::uuid AS u",
                binary.iter().map(|&c| (c, Channel::Rows)).collect(),
                Form::Value,
            ),
            (
                "error",
                Inject::Error(format!("no such user {email}")),
                "SELECT 1 AS one",
                every_client(Channel::Error),
                Form::Value,
            ),
            (
                "notice",
                Inject::Notice(format!("hello {email}")),
                "SELECT 1 AS one",
                every_client(Channel::Notice),
                Form::Value,
            ),
            (
                "notification",
                Inject::Notification(email.clone()),
                "SELECT 1 AS one",
                every_client(Channel::Notification),
                Form::Value,
            ),
            (
                "ParameterStatus",
                Inject::ParameterStatus("application_name".into(), email.clone()),
                "SELECT 1 AS one",
                vec![
                    (Client::PsycopgText, Channel::ParameterStatus),
                    (Client::PsycopgBinary, Channel::ParameterStatus),
                    (Client::Psql, Channel::Wire),
                    (Client::TokioBinary, Channel::Wire),
                ],
                Form::Value,
            ),
            (
                "COPY data",
                Inject::Copy(format!("{email}\n").into_bytes()),
                "COPY (SELECT 'clean') TO STDOUT",
                [Client::TokioBinary, Client::PsycopgText, Client::PsycopgBinary]
                    .iter()
                    .map(|&c| (c, Channel::Copy))
                    .chain([(Client::Psql, Channel::Rows)])
                    .collect(),
                Form::Value,
            ),
        ];
        for (case, inject, sql, want, form) in cases {
            let got = through(inject, sql).await;
            assert_found(case, &got, &want, form);
        }
        // A message no client shows (a ParameterStatus nobody asks for):
        // only the raw bytes can catch it, and they do, for every client.
        let got = through(Inject::ParameterStatus("masker_test_leak".into(), email.clone()), "SELECT 1 AS one").await;
        let channels: BTreeSet<Channel> = got.keys().map(|(_, ch)| *ch).collect();
        assert_eq!(channels, BTreeSet::from([Channel::Wire]), "{:?}", keys(&got));
        assert_found("raw bytes only", &got, &Client::ALL.map(|c| (c, Channel::Wire)), Form::Value);
    })
    .await
}
