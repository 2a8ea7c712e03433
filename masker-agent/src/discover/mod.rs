//! `masker discover`: propose a policy for a database.
//!
//! Connects like `psql` (same options and `PG*` variables; the password
//! comes from `PGPASSWORD`, a `.pgpass` file or a connection string in an
//! environment variable, never from the command line), lists every column
//! of every table, view and materialized view the role can read, samples a
//! bounded number of rows per relation (`TABLESAMPLE SYSTEM` on large
//! tables, a row budget and a time budget, in a read-only transaction), and
//! classifies each column from its name, comment, type and the detectors'
//! verdict on its values ([`classify`]). The result is a policy whose rules
//! carry the evidence in comments (signals, match ratio, sample size), a
//! table on the terminal, optionally JSON and `COMMENT ON COLUMN` SQL.
//!
//! **No sampled value leaves this module**: values are read into
//! [`classify::SampleStats`] counters and dropped; the policy, the table,
//! the JSON, the SQL, logs and errors carry names, types and counts only
//! (server errors during sampling are scrubbed like any the agent relays).
//!
//! Modules in the order a run uses them: [`connect`] (psql-compatible
//! connection options), [`inventory`] (what the role can read), [`sample`]
//! (bounded, read-only sampling), [`dictionary`] and [`classify`]
//! (evidence to proposals), [`report`] (policy, SQL, table, JSON).

pub mod classify;
pub mod connect;
pub mod dictionary;
pub mod error;
pub mod inventory;
pub mod report;
pub mod sample;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

pub use error::DiscoverError;

/// A kind of personal data discover proposes a rule for. The rule names
/// ([`Category::rule_name`]) are also the `pii:<rule>` tags of the
/// `--comments` SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Email,
    Phone,
    PersonName,
    NationalId,
    Card,
    BankAccount,
    BirthDate,
    IpAddress,
    PostalAddress,
    Geolocation,
    Compensation,
    FreeText,
}

impl Category {
    /// Every category, in the order the policy lists them.
    pub const ALL: [Category; 12] = [
        Category::Email,
        Category::Phone,
        Category::PersonName,
        Category::NationalId,
        Category::Card,
        Category::BankAccount,
        Category::BirthDate,
        Category::IpAddress,
        Category::PostalAddress,
        Category::Geolocation,
        Category::Compensation,
        Category::FreeText,
    ];

    /// The rule's name in the proposed policy (and its `pii:` tag).
    pub fn rule_name(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::PersonName => "person-name",
            Category::NationalId => "national-id",
            Category::Card => "card",
            Category::BankAccount => "bank-account",
            Category::BirthDate => "birth-date",
            Category::IpAddress => "ip-address",
            Category::PostalAddress => "postal-address",
            Category::Geolocation => "geolocation",
            Category::Compensation => "compensation",
            Category::FreeText => "free-text",
        }
    }

    /// The rule's `description`.
    pub fn description(self) -> &'static str {
        match self {
            Category::Email => "Email addresses: the domain stays visible",
            Category::Phone => "Phone numbers: the last two digits stay visible",
            Category::PersonName => "Names of people",
            Category::NationalId => "National identifiers: SSNs, passports, tax and social security numbers",
            Category::Card => "Payment card numbers",
            Category::BankAccount => "Bank accounts and IBANs",
            Category::BirthDate => "Dates of birth, generalized to the year",
            Category::IpAddress => "IP addresses, generalized to their network",
            Category::PostalAddress => "Street addresses and postcodes",
            Category::Geolocation => "Geographic coordinates",
            Category::Compensation => "Salaries and pay, generalized to buckets of 10000",
            Category::FreeText => "Free text in which the detectors found personal data: scanned and masked in place",
        }
    }

    /// The rule's action lines (TOML).
    pub fn action_toml(self) -> &'static str {
        match self {
            Category::Email => "action = \"email\"",
            Category::Phone => "action = \"partial\"\nkeep_last = 2",
            Category::BirthDate => "action = \"generalize\"\nto = \"year\"",
            Category::IpAddress => "action = \"generalize\"\nto = \"network\"",
            Category::Compensation => "action = \"generalize\"\nto = \"bucket\"\nbucket = 10000",
            Category::FreeText => "action = \"detect\"",
            Category::PersonName
            | Category::NationalId
            | Category::Card
            | Category::BankAccount
            | Category::PostalAddress
            | Category::Geolocation => "action = \"redact\"",
        }
    }

    /// The action in a few words, for the terminal table.
    pub fn action_label(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "partial (last 2)",
            Category::BirthDate => "generalize year",
            Category::IpAddress => "generalize network",
            Category::Compensation => "generalize bucket",
            Category::FreeText => "detect",
            _ => "redact",
        }
    }

    /// The category a `pii:<tag>` comment names: a rule name of this list,
    /// or a common short form.
    pub fn from_tag(tag: &str) -> Option<Category> {
        let tag = tag.to_ascii_lowercase();
        if let Some(c) = Category::ALL.iter().find(|c| c.rule_name() == tag) {
            return Some(*c);
        }
        Some(match tag.as_str() {
            "name" => Category::PersonName,
            "ssn" | "passport" | "tax-id" => Category::NationalId,
            "iban" => Category::BankAccount,
            "dob" | "birthday" => Category::BirthDate,
            "ip" => Category::IpAddress,
            "address" => Category::PostalAddress,
            "salary" => Category::Compensation,
            "detect" => Category::FreeText,
            _ => return None,
        })
    }
}

/// `masker discover`'s options.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub connection: connect::ConnectionArgs,
    /// Write the proposed policy (TOML) to FILE; `-` writes it to standard
    /// output (the table then goes to standard error).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write `COMMENT ON COLUMN ... IS '... pii:<rule>'` statements to FILE,
    /// for a DBA to classify the columns in the database itself.
    #[arg(long, value_name = "FILE")]
    pub comments: Option<PathBuf>,
    /// Only schemas matching this glob (`*`, `?`; repeatable). Default: all
    /// but pg_catalog, information_schema and pg_toast.
    #[arg(long = "schema", value_name = "GLOB")]
    pub schemas: Vec<String>,
    /// Rows sampled per table or view; 0 classifies from names, types and
    /// comments alone.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub sample_rows: u32,
    /// Time budget for sampling one table or view (e.g. 10s, 1m); a sample
    /// cut short classifies from what it read.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout)]
    pub table_timeout: Duration,
    /// Print the report as JSON on standard output instead of the table.
    #[arg(long, conflicts_with = "all")]
    pub json: bool,
    /// List every column in the table, not only the proposed ones.
    #[arg(long)]
    pub all: bool,
    /// Print help (`-h` is the host, as in psql).
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::approvals::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() { Err("the table timeout must be at least 1s".into()) } else { Ok(d) }
}

/// One column in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnReport {
    pub schema: String,
    pub table: String,
    pub column: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// `table`, `view`, `materialized view`, `partitioned table`, `foreign table`.
    pub relation_kind: &'static str,
    /// The proposed rule, if any.
    pub rule: Option<&'static str>,
    pub category: Option<Category>,
    pub signals: Vec<String>,
    pub notes: Vec<String>,
    /// Whether a note asks for a human look.
    pub review: bool,
    /// Non-null values sampled (counts only; `None`: not sampled).
    pub sampled_values: Option<u64>,
    /// The column's comment already carries a `pii:` tag.
    #[serde(skip)]
    pub tagged: bool,
    #[serde(skip)]
    pub comment: Option<String>,
}

/// How sampling one relation went.
#[derive(Debug, Clone, Serialize)]
pub struct RelationReport {
    pub schema: String,
    pub name: String,
    pub kind: &'static str,
    /// `sampled`, `timed_out`, `skipped` or `failed`.
    pub outcome: &'static str,
    /// How, in words: `500 rows (tablesample)`, `timed out after 120 rows`,
    /// `not sampled: ...`, `sampling failed: SQLSTATE ...` (scrubbed).
    pub sample: String,
    pub rows: u64,
}

/// The whole result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    /// `user@host:port/database`.
    pub database: String,
    pub sample_rows: u32,
    pub table_timeout_secs: u64,
    pub relations: Vec<RelationReport>,
    pub columns: Vec<ColumnReport>,
}

impl Report {
    /// Columns with a proposal.
    pub fn proposed(&self) -> impl Iterator<Item = &ColumnReport> {
        self.columns.iter().filter(|c| c.category.is_some())
    }
}

/// Runs `masker discover`.
pub async fn run(args: DiscoverArgs) -> Result<ExitCode, DiscoverError> {
    if args.json && args.output.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        return Err(DiscoverError::Options(
            "--json and --output - both write to standard output; write the policy to a file".into(),
        ));
    }
    let globs = args
        .schemas
        .iter()
        .map(|s| {
            crate::policy::glob::Glob::new(s).ok_or_else(|| DiscoverError::Options("--schema: empty pattern".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = connect::Target::from_args(&args.connection)?;
    let client = target.connect().await?;
    let relations = inventory::list(&client, &globs).await.map_err(DiscoverError::Catalog)?;
    tracing::info!(relations = relations.len(), "discover: sampling");

    let budget = sample::Budget { rows: args.sample_rows, timeout: args.table_timeout };
    let mut progress = report::Progress::new(relations.len());
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION"),
        database: target.describe(),
        sample_rows: args.sample_rows,
        table_timeout_secs: args.table_timeout.as_secs(),
        relations: Vec::with_capacity(relations.len()),
        columns: Vec::new(),
    };
    for (i, rel) in relations.iter().enumerate() {
        progress.show(i, &rel.qualified());
        let (outcome, stats) = sample::sample(&client, rel, &budget).await;
        tracing::debug!(relation = %rel.qualified(), outcome = %outcome, "sampled");
        let facts: Vec<classify::ColumnFacts<'_>> = rel
            .columns
            .iter()
            .zip(&stats)
            .map(|(c, s)| classify::ColumnFacts {
                column: &c.name,
                type_name: &c.type_name,
                class: c.class,
                comment: c.comment.as_deref(),
                sample: s.as_ref(),
            })
            .collect();
        let verdicts = classify::classify_table(&rel.name, &facts);
        for ((col, verdict), s) in rel.columns.iter().zip(verdicts).zip(&stats) {
            report.columns.push(ColumnReport {
                schema: rel.schema.clone(),
                table: rel.name.clone(),
                column: col.name.clone(),
                type_name: col.type_name.clone(),
                relation_kind: rel.kind.label(),
                rule: verdict.category.map(Category::rule_name),
                category: verdict.category,
                signals: verdict.signals.iter().map(ToString::to_string).collect(),
                review: verdict.notes.iter().any(|n| n.review),
                notes: verdict.notes.into_iter().map(|n| n.text).collect(),
                sampled_values: s.as_ref().map(|s| s.values),
                tagged: col.comment.as_deref().is_some_and(|c| c.to_ascii_lowercase().contains("pii:")),
                comment: col.comment.clone(),
            });
        }
        report.relations.push(RelationReport {
            schema: rel.schema.clone(),
            name: rel.name.clone(),
            kind: rel.kind.label(),
            outcome: outcome.kind(),
            sample: outcome.to_string(),
            rows: outcome.rows(),
        });
    }
    progress.finish();

    if let Some(path) = &args.comments {
        write_file(path, &report::comments_sql(&report))?;
    }
    let policy = report::policy_toml(&report);
    let policy_to_stdout = args.output.as_deref().is_some_and(|p| p.as_os_str() == "-");
    match &args.output {
        Some(_) if policy_to_stdout => {}
        Some(path) => write_file(path, &policy)?,
        None => {}
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        let table = report::table(&report, args.all, args.output.as_deref(), args.comments.as_deref());
        if policy_to_stdout {
            eprint!("{table}");
        } else {
            write!(stdout, "{table}")?;
        }
    }
    if policy_to_stdout {
        write!(stdout, "{policy}")?;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to `path` (the default mode: it holds names and counts,
/// no value).
fn write_file(path: &std::path::Path, text: &str) -> Result<(), DiscoverError> {
    std::fs::write(path, text).map_err(|source| DiscoverError::Write { path: path.to_path_buf(), source })
}
