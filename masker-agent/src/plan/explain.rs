//! `masker explain`: the decision the agent makes for a statement, with its
//! reasons.
//!
//! Nothing here decides anything of its own: the refusal, the approval hold,
//! clean or tainted, and the action of each result column come from the
//! calls the session makes ([`Resolver::refusal`], [`Resolver::approval`],
//! [`Resolver::taint`], [`PlanContext::row_plan`]) on a session model that
//! follows the statements as the agent's does. What explain adds is the
//! *why* the resolver records along the way ([`Reason`], the base columns
//! and their rules), and the server's own description of the result
//! columns: a [`Describer`] asks the server to `Parse` and `Describe` each
//! statement (which does not run it) on a connection of the catalog role,
//! so the RowDescription the agent would plan with is the one explained.
//! When the server cannot describe a statement (it names the session's own
//! objects, a prepared statement or cursor, a relation the catalog role
//! cannot see), the columns are those the statement and the catalog name,
//! each with the decision the resolver makes for it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::NoTls;

use super::PlanContext;
use super::catalog::CatalogAccess;
use super::lineage::{Decision, REFUSAL_HINT, Reason, Resolver};
use crate::addr::TargetAddr;
use crate::masking::{ColumnAction, Generalize};
use crate::session::track::model::SessionModel;
use crate::sql::{self, Effect, How, Statement, TransactionStep};
use crate::wire::{FieldDescription, Format, TableOid, TypeOid};

/// An action as `masker explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionText {
    /// Its name in the policy file (`allow`, `redact`, `pseudonymize`, ...).
    pub name: &'static str,
    /// What it does, with its parameters.
    pub detail: String,
}

impl ActionText {
    /// The text of `action`.
    pub fn of(action: &ColumnAction) -> ActionText {
        let name = action.kind().map_or("allow", |k| k.as_str());
        let detail = match action {
            ColumnAction::Allow => "as the server sends it".to_string(),
            ColumnAction::Redact => "a fixed placeholder valid for the type ('REDACTED', 0, 1970-01-01, ...)".into(),
            ColumnAction::Null => "SQL NULL".into(),
            ColumnAction::Partial { first: 0, last } => format!("keep the last {last} characters, '*' before"),
            ColumnAction::Partial { first, last: 0 } => format!("keep the first {first} characters, '*' after"),
            ColumnAction::Partial { first, last } => {
                format!("keep the first {first} and the last {last} characters, '*' between")
            }
            ColumnAction::Email => "keep the domain of an email address".into(),
            ColumnAction::Pseudonymize { format_preserving: false } => "a keyed deterministic token".into(),
            ColumnAction::Pseudonymize { format_preserving: true } => {
                "a keyed deterministic token that keeps the format".into()
            }
            ColumnAction::Generalize(g) => match g {
                Generalize::Hour => "to the hour".into(),
                Generalize::Day => "to the day".into(),
                Generalize::Month => "to the month".into(),
                Generalize::Year => "to the year".into(),
                Generalize::Network { v4, v6 } => format!("to the network (/{v4} for IPv4, /{v6} for IPv6)"),
                Generalize::Bucket(size) => format!("to the floor of its bucket of {size}"),
            },
            ColumnAction::Detect => "the content detectors mask what they find".into(),
            ColumnAction::Definition(_) => "SQL text: literals against classified columns replaced by '***'".into(),
        };
        ActionText { name, detail }
    }
}

/// A base column a value derives from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseColumn {
    /// `schema.table.column` (or `a catalog definition`).
    pub column: String,
    /// Where its action comes from: `table` (the policy), `catalog`,
    /// `catalog definition`, `catalog value` or `session data`.
    pub origin: &'static str,
    /// Its action.
    pub action: ActionText,
    /// What decides the action (`rule email`, `column comment pii:x`,
    /// `defaults.action`, or what the catalog origin means).
    pub rule: String,
    /// A rule or a `pii:` comment classifies it (or it is catalog text that
    /// can embed values).
    pub classified: bool,
}

/// The explanation of one text for one session.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The workload identity.
    pub identity: String,
    /// The target as given (`host:port`): the policy's `targets` match it.
    pub target: String,
    /// The session's database.
    pub database: String,
    /// The session's database user.
    pub user: String,
    /// `enforce`, or `observe` when the identity's block says so: then
    /// nothing below happens to the workload; it is recorded instead.
    pub mode: &'static str,
    /// The `[[identity]]` block that applies (its `name`), if any.
    pub identity_block: Option<String>,
    /// `defaults.refuse_inference`: tests on classified columns are refused.
    pub refuse_inference: bool,
    /// Why a session of this identity would be refused when it starts
    /// (SQLSTATE 28000).
    pub connect_refusal: Option<String>,
    /// Why the catalog could not be read (every table column is masked then,
    /// as in the agent).
    pub catalog_error: Option<String>,
    /// PostgreSQL's parser rejects the text: it goes to the server, which
    /// answers a syntax error.
    pub parse_error: Option<String>,
    /// The `--after` texts the agent would refuse (they do not run, so
    /// what they create does not exist).
    pub after_refused: Vec<AfterRefused>,
    /// The text is refused before it runs (nothing of it runs).
    pub refusal: Option<Refusal>,
    /// An `[[approval]]` rule holds the text until an operator decides.
    pub approval: Option<Hold>,
    /// Each statement of the text, in order.
    pub statements: Vec<StatementExplanation>,
}

/// An `--after` text the agent would refuse.
#[derive(Debug, Serialize)]
pub struct AfterRefused {
    /// Its position among the `--after` texts (from 0).
    pub after: usize,
    /// The refusal.
    pub message: String,
}

/// A refusal before the text runs.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// `guardrail` (the identity's block) or `lineage` (where data would go).
    pub kind: &'static str,
    /// The SQLSTATE the client gets.
    pub sqlstate: &'static str,
    /// The message the client gets.
    pub message: String,
    /// The hint the client gets.
    pub hint: &'static str,
}

/// An approval hold.
#[derive(Debug, Serialize)]
pub struct Hold {
    /// The `[[approval]]` rule.
    pub rule: String,
    /// How long the client waits for an operator (agent mode; `masker
    /// proxy` has no operator and refuses at once).
    pub timeout_secs: u64,
}

/// The explanation of one statement.
#[derive(Debug, Serialize)]
pub struct StatementExplanation {
    /// 0-based position in the text.
    pub index: usize,
    /// The statement with every literal replaced.
    pub statement: String,
    /// Its class, as `deny_classes` names it.
    pub class: &'static str,
    /// It reads classified data or something masker cannot trace.
    pub tainted: bool,
    /// The first thing it reads that is not allowed.
    pub taint: Option<String>,
    /// What happens to its errors, notices and reported settings.
    pub messages: &'static str,
    /// Its result columns (`None`: it returns no rows).
    pub columns: Option<Vec<ColumnExplanation>>,
    /// Where the columns come from: `server` (the server described the
    /// statement: its RowDescription, as the agent plans with), `statement`
    /// (the statement and the catalog name them), `unknown` (they cannot be
    /// listed: one entry stands for every column).
    pub columns_from: &'static str,
    /// Why the server could not describe it.
    pub describe_error: Option<String>,
    /// Values that flow into channels other than the rows.
    pub sinks: Vec<SinkExplanation>,
    /// What a data-moving statement copies, and whether that is refused.
    pub moves: Option<MoveExplanation>,
    /// Classified columns the statement tests (WHERE, JOIN, GROUP BY, ...):
    /// refused under `defaults.refuse_inference` (except equality with a
    /// constant on a pseudonymized column).
    pub tests: Vec<BaseColumn>,
    /// It also tests values masker cannot trace (refused under
    /// `defaults.refuse_inference` when the statement is tainted).
    pub tests_untraced: bool,
}

/// One result column.
#[derive(Debug, Serialize)]
pub struct ColumnExplanation {
    /// 0-based position in the result.
    pub position: usize,
    /// Its name (the server's when described).
    pub name: String,
    /// What is done to its values.
    pub action: ActionText,
    /// The action changes values (anything but `allow`).
    pub masked: bool,
    /// The case of the decision that applied (see [`Reason`]).
    pub reason: &'static str,
    /// That case, for people.
    pub why: &'static str,
    /// What decides the action.
    pub rule: String,
    /// The column the server names as its origin (table OID and attribute
    /// in the RowDescription), when it names one.
    pub origin: Option<String>,
    /// The base columns it derives from.
    pub derived_from: Vec<BaseColumn>,
    /// Part of it could not be followed to base columns.
    pub untraced: bool,
}

/// A value flowing into a side channel.
#[derive(Debug, Serialize)]
pub struct SinkExplanation {
    /// The channel.
    pub channel: &'static str,
    /// The function or statement that feeds it.
    pub through: String,
    /// What reaches it.
    pub derived_from: Vec<BaseColumn>,
    /// Part of it could not be followed to base columns.
    pub untraced: bool,
    /// Why the statement is refused for it, if it is.
    pub refusal: Option<String>,
}

/// What a data-moving statement copies.
#[derive(Debug, Serialize)]
pub struct MoveExplanation {
    /// The base columns of the data it moves.
    pub derived_from: Vec<BaseColumn>,
    /// Part of it could not be followed to base columns.
    pub untraced: bool,
    /// Why it is refused, if it is.
    pub refusal: Option<String>,
}

/// Who the session is, for the explanation's header.
pub struct Who<'a> {
    /// The workload identity.
    pub identity: &'a str,
}

/// Asks the server to describe statements without running them, on a
/// connection of the catalog role.
pub struct Describer {
    client: tokio_postgres::Client,
}

impl Describer {
    /// Connects to `database` on `destination` as `access` (plain TCP, as
    /// the agent's catalog connection).
    pub async fn connect(
        access: &CatalogAccess,
        destination: &TargetAddr,
        database: &str,
    ) -> Result<Describer, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(destination.host())
            .port(destination.port())
            .user(&access.user)
            .dbname(database)
            .application_name("masker-explain")
            .connect_timeout(Duration::from_secs(10));
        if let Some(pw) = &access.password {
            config.password(pw);
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Describer { client })
    }

    /// The result columns of statement `text` as the server describes them
    /// (`Parse` and `Describe`: nothing runs), with unqualified names
    /// searched in `schemas` as the session searches them.
    async fn describe(&self, text: &str, schemas: Option<&[String]>) -> Result<Vec<FieldDescription>, String> {
        let error = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        if let Some(schemas) = schemas {
            let path = schemas.iter().map(|s| format!("\"{}\"", s.replace('"', "\"\""))).collect::<Vec<_>>().join(", ");
            self.client.execute("SELECT set_config('search_path', $1, false)", &[&path]).await.map_err(error)?;
        }
        let statement = self.client.prepare(text).await.map_err(error)?;
        Ok(statement
            .columns()
            .iter()
            .map(|c| FieldDescription {
                name: c.name().to_string(),
                table: TableOid(c.table_oid().unwrap_or(0)),
                column: c.column_id().unwrap_or(0),
                type_oid: TypeOid(c.type_().oid()),
                type_size: 0,
                type_modifier: -1,
                format: Format::Text,
            })
            .collect())
    }
}

/// What a tainted statement's messages become, and a clean one's.
const CLEAN_MESSAGES: &str =
    "errors, notices and the settings the server reports after it reach the client as the server sends them";
const TAINTED_MESSAGES: &str = "errors and notices keep their severity and SQLSTATE and get masker's text \
     ('masker: <condition> (<SQLSTATE>); the message text is withheld ...') unless the server locates them in the \
     statement text before it runs; settings reported after it lose free-text values (application_name)";

impl PlanContext {
    /// Explains `sql` for this session, as if the session had first run
    /// the texts of `after` (statements the agent would refuse do not
    /// run). `describer` asks the server for the result columns.
    pub async fn explain(
        &self,
        who: &Who<'_>,
        sql: &str,
        after: &[String],
        describer: Option<&Describer>,
    ) -> Explanation {
        let guardrails = self.policy.guardrails();
        let target = self.destination.to_string();
        let mut out = Explanation {
            identity: who.identity.to_string(),
            target: target.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            mode: guardrails.map_or(crate::policy::guardrails::Mode::Enforce, |g| g.mode).as_str(),
            identity_block: guardrails.map(|g| g.name.clone()),
            refuse_inference: self.policy.refuses_inference(),
            connect_refusal: guardrails
                .and_then(|g| g.connect_refusal(who.identity, &[target.as_str()], &self.database, &self.user)),
            catalog_error: None,
            parse_error: None,
            after_refused: Vec::new(),
            refusal: None,
            approval: None,
            statements: Vec::new(),
        };
        let mut model = SessionModel::default();
        for (i, text) in after.iter().enumerate() {
            if let Some((_, message)) = self.resolver(&model).refusal(text).await {
                out.after_refused.push(AfterRefused { after: i, message });
                continue;
            }
            if let Ok(a) = sql::analyze(text).as_ref() {
                for stmt in &a.statements {
                    follow(&mut model, stmt, false);
                }
            }
        }
        // A look-up the resolver makes too: whether the catalog can be read.
        if let Err(e) = self.catalog.default_search_path(&self.destination, &self.database, &self.user).await {
            out.catalog_error = Some(e.to_string());
        }
        let analysis = sql::analyze(sql);
        let analysis = match analysis.as_ref() {
            Ok(a) => a,
            Err(e) => {
                out.parse_error = Some(e.to_string());
                return out;
            }
        };
        if let Some((kind, message)) = self.resolver(&model).refusal(sql).await {
            out.refusal = Some(Refusal { kind, sqlstate: "42501", message, hint: REFUSAL_HINT });
        } else if let Some(rule) = self.resolver(&model).approval(sql).await {
            out.approval = Some(Hold { rule: rule.name.clone(), timeout_secs: rule.timeout.as_secs() });
        }
        let texts = pg_query::split_with_parser(sql).ok().filter(|t| t.len() == analysis.statements.len());
        for (index, stmt) in analysis.statements.iter().enumerate() {
            let text = texts.as_ref().and_then(|t| t.get(index)).copied();
            let explained = self.explain_statement(&model, sql, index, stmt, text, describer).await;
            out.statements.push(explained);
            follow(&mut model, stmt, out.statements[index].tainted);
        }
        out
    }

    async fn explain_statement(
        &self,
        model: &SessionModel,
        sql: &str,
        index: usize,
        stmt: &Statement,
        text: Option<&str>,
        describer: Option<&Describer>,
    ) -> StatementExplanation {
        let r = self.resolver(model);
        let taint = r.taint(stmt).await;
        // The server resolves names without the session's own objects:
        // describe only statements that name none of them.
        let own = stmt.relations.iter().any(|rel| model.relation(rel).is_some());
        // `EXECUTE`/`FETCH` run the session's prepared statements and
        // cursors: on another connection the server answers NoData.
        let stored = matches!(stmt.effect, Some(Effect::Execute { .. } | Effect::Fetch { .. }));
        let mut describe_error = None;
        let fields = match (describer, text) {
            (Some(_), Some(_)) if stored => {
                describe_error = Some("it runs a prepared statement or cursor of the session".into());
                None
            }
            (Some(d), Some(text)) if !own => {
                let schemas = r.schemas_searched().await;
                match d.describe(text, schemas.as_deref()).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        describe_error = Some(e);
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                describe_error = Some("it names relations the session created, which the server does not know".into());
                None
            }
            (Some(_), None) => {
                describe_error = Some("the text cannot be split into its statements".into());
                None
            }
            (None, _) => None,
        };
        let (columns, columns_from) = match fields {
            Some(fields) => (self.described_columns(&r, model, sql, index, stmt, &fields).await, "server"),
            None => match r.output_names(stmt).await {
                Some(names) if names.is_empty() => (None, "statement"),
                Some(names) => (Some(self.named_columns(&r, stmt, &names).await), "statement"),
                None => (Some(self.named_columns(&r, stmt, &["(every column)".to_string()]).await), "unknown"),
            },
        };
        let mut sinks = Vec::with_capacity(stmt.sinks.len());
        for sink in &stmt.sinks {
            let bases = r.lineage_bases(&sink.lineage).await;
            sinks.push(SinkExplanation {
                channel: sink.kind.describe(),
                through: sink.function.clone(),
                derived_from: r.describe_bases(&bases),
                untraced: bases.unknown,
                refusal: r.sink_refused(stmt, sink).await,
            });
        }
        let moves = match &stmt.moves {
            Some(l) => {
                let bases = r.lineage_bases(l).await;
                Some(MoveExplanation {
                    derived_from: r.describe_bases(&bases),
                    untraced: bases.unknown || l.how == How::Unknown,
                    refusal: r.move_refused(stmt).await,
                })
            }
            None => None,
        };
        let mut tests = Vec::new();
        let mut seen = BTreeSet::new();
        let mut tests_untraced = false;
        for cond in &stmt.filters {
            let bases = r.lineage_bases(&cond.lineage).await;
            tests_untraced |= bases.unknown;
            for b in r.describe_bases(&bases) {
                if b.classified && seen.insert(b.column.clone()) {
                    tests.push(b);
                }
            }
        }
        StatementExplanation {
            index,
            statement: sql::normalize(text.unwrap_or(if index == 0 { sql } else { "" })),
            class: stmt.class.name(),
            tainted: taint.is_some(),
            messages: if taint.is_some() { TAINTED_MESSAGES } else { CLEAN_MESSAGES },
            taint,
            columns,
            columns_from,
            describe_error,
            sinks,
            moves,
            tests,
            tests_untraced,
        }
    }

    /// The columns of a RowDescription, planned as the session plans them
    /// ([`PlanContext::row_plan`]), with the resolver's reasons.
    async fn described_columns(
        &self,
        r: &Resolver<'_>,
        model: &SessionModel,
        sql: &str,
        index: usize,
        stmt: &Statement,
        fields: &[FieldDescription],
    ) -> Option<Vec<ColumnExplanation>> {
        if fields.is_empty() {
            return None;
        }
        let (plan, _) = self.row_plan(model, fields, None, Some((sql, index))).await;
        let whys = r.decisions_why(stmt, fields.len()).await;
        let mut tables: Vec<TableOid> = fields.iter().map(|f| f.table).filter(|t| t.0 != 0).collect();
        tables.sort();
        tables.dedup();
        let origins = match tables.is_empty() {
            true => Default::default(),
            false => self.catalog.resolve(&self.destination, &self.database, &tables).await.unwrap_or_default(),
        };
        let mut out = Vec::with_capacity(fields.len());
        for (position, (field, (decision, why))) in fields.iter().zip(whys).enumerate() {
            let action = plan.action(position).cloned().unwrap_or(ColumnAction::Redact);
            let info = origins.get(&field.table).and_then(|cols| cols.get(&field.column));
            let origin = info.map(|info| {
                let name = format!("{}.{}.{}", info.schema, info.table, info.column);
                match &info.base {
                    Some(b) => format!("{name} (a view column passing {}.{}.{})", b.schema, b.table, b.column),
                    None => name,
                }
            });
            let derived_from = r.describe_bases(&why.bases);
            // How the session plans it: a `Direct` decision of a column the
            // RowDescription names goes by that origin (unless it is a view
            // column computed from others: then the lineage decides).
            let rule = match (&decision, field.table.0 != 0, info) {
                (Decision::Direct(_), true, None) => {
                    "the server names a column the catalog does not know: fail closed".into()
                }
                (Decision::Direct(_), true, Some(info)) if !info.derived_from_view => {
                    let base = info.base.as_deref().unwrap_or(info);
                    let name = format!("{}.{}.{}", base.schema, base.table, base.column);
                    if ["pg_catalog", "information_schema"].contains(&base.schema.as_str()) {
                        format!("catalog column {name}")
                    } else if base.schema.starts_with("pg_temp") {
                        format!("{name}, a temporary table of the session")
                    } else {
                        let rule =
                            self.policy.rule_name(&base.schema, &base.table, &base.column, base.comment.as_deref());
                        format!("{rule} ({name}, as the server names it)")
                    }
                }
                _ => rule_of(why.reason, &derived_from),
            };
            out.push(ColumnExplanation {
                position,
                name: field.name.clone(),
                masked: action != ColumnAction::Allow,
                action: ActionText::of(&action),
                reason: why.reason.name(),
                why: why.reason.describe(),
                rule,
                origin,
                untraced: why.bases.unknown,
                derived_from,
            });
        }
        Some(out)
    }

    /// Columns named by the statement (not described by the server): each
    /// with the resolver's decision (a `Direct` decision is the action of
    /// the one base column, which is what its origin gives for a table).
    async fn named_columns(&self, r: &Resolver<'_>, stmt: &Statement, names: &[String]) -> Vec<ColumnExplanation> {
        let whys = r.decisions_why(stmt, names.len()).await;
        names
            .iter()
            .zip(whys)
            .enumerate()
            .map(|(position, (name, (decision, why)))| {
                let action = match decision {
                    Decision::Direct(a) | Decision::Force(a) => a,
                };
                let derived_from = r.describe_bases(&why.bases);
                ColumnExplanation {
                    position,
                    name: name.clone(),
                    masked: action != ColumnAction::Allow,
                    action: ActionText::of(&action),
                    reason: why.reason.name(),
                    why: why.reason.describe(),
                    rule: rule_of(why.reason, &derived_from),
                    origin: None,
                    untraced: why.bases.unknown,
                    derived_from,
                }
            })
            .collect()
    }
}

/// What decides a column's action, in words.
fn rule_of(reason: Reason, bases: &[BaseColumn]) -> String {
    match reason {
        Reason::Exact => match bases.first() {
            Some(b) => format!("{} ({})", b.rule, b.column),
            None => "fail closed".into(),
        },
        Reason::ComputedClassified => bases
            .iter()
            .find(|b| b.classified)
            .map_or_else(|| "fail closed".into(), |b| format!("{} ({})", b.rule, b.column)),
        Reason::ComputedUnclassified => "defaults.action".into(),
        Reason::Constant | Reason::ComputedAllowed | Reason::UntracedClean => "none: nothing masked is read".into(),
        Reason::ExplainPlan => "the statement is tainted".into(),
        Reason::Untracked | Reason::Unmatched => "clean or tainted, as the statement is".into(),
        Reason::Untraced | Reason::UncleanFunction | Reason::ComputedUnknown | Reason::UnknownStored => {
            "fail closed".into()
        }
    }
}

/// The session model after `stmt` ran (and succeeded), as the agent's
/// server side follows it at CommandComplete.
fn follow(model: &mut SessionModel, stmt: &Statement, tainted: bool) {
    model.apply(stmt);
    let opaque = stmt.reads.iter().any(|l| l.sources.contains(&sql::Source::Opaque));
    if opaque || (tainted && !stmt.functions.is_empty()) {
        model.opaque_code_ran();
    }
    match &stmt.effect {
        Some(Effect::Transaction(TransactionStep::Commit)) => model.command_complete(b"COMMIT"),
        Some(Effect::Transaction(TransactionStep::Rollback)) => model.command_complete(b"ROLLBACK"),
        _ => {}
    }
}
