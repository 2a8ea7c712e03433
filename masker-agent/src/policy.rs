//! The policy file: what to mask for whom.
//!
//! A TOML file (see `examples/policy.toml` for a complete, commented one):
//!
//! ```toml
//! version = 1
//! [defaults]
//! action = "detect"               # unclassified columns: detect | allow | redact
//! comment_classification = true   # a column comment "pii:<name>" applies rule <name>
//! [pseudonymize]
//! key_env = "MASKER_PSEUDONYM_KEY" # or key_file = "/etc/masker/pseudonym.key"
//! [[rule]]
//! name = "email"
//! columns = ["public.customers.email"]   # schema.table.column, globs * and ?
//! column_names = ["*email*"]            # column name alone, any table
//! action = "email"
//! identities = ["ci-*"]                  # optional, default: every identity
//! targets = ["db.internal:5432"]         # optional, default: every target
//! claims = { ref = "refs/heads/main" }   # optional: verified token claims
//! ```
//!
//! # Precedence
//!
//! Rules are tried in file order and the **first matching rule wins**; list
//! identity-specific rules before general ones. A rule matches a column when
//! it applies to the session (its `identities` and `targets` globs and its
//! `claims` match, or are absent) and any of its `columns` or `column_names` globs match, or the
//! column's comment carries `pii:<rule name>`. When no rule matches, a
//! `pii:<tag>` comment naming an action (`redact`, `null`, `email`,
//! `pseudonymize`, `detect`) applies it; any other `pii:` tag redacts (the DBA
//! said it is personal data; fail closed). Otherwise `defaults.action`
//! applies. Globs are ASCII case-insensitive; `*` matches any run of
//! characters, `?` one character.
//!
//! # Claims
//!
//! `claims = { name = "pattern", ... }` (on a rule or an `[[identity]]`
//! block) matches the claims of the OIDC token verified when the session's
//! cgroup was tagged: every listed claim must be present and match, string
//! claims by glob **case-sensitively**, other values as their JSON text. A
//! session without a verified token never matches (fail closed), not even
//! `claims = {}`, which means "any verified token".

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::masking::{ColumnAction, Generalize, Keys};
use crate::sql::StatementClass;

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    origin: String,
    defaults: Defaults,
    rules: Vec<Rule>,
    /// `[[identity]]` blocks in file order: the first whose pattern matches
    /// a session's identity applies to it.
    identities: Vec<(Glob, Option<ClaimsMatch>, Arc<Guardrails>)>,
    /// `[[approval]]` rules in file order.
    approvals: Vec<Arc<ApprovalRule>>,
    keys: Keys,
}

/// An `[[approval]]` rule: statements that wait for an operator's decision
/// (`masker approvals approve|deny`) before they run. A statement is held
/// when every condition the rule lists holds for one of its statements.
#[derive(Debug, Clone)]
pub struct ApprovalRule {
    /// Named in `masker approvals list`, audit events and errors.
    pub name: String,
    identities: Option<Vec<Glob>>,
    /// Statement classes held (any when empty).
    pub(crate) classes: Vec<StatementClass>,
    /// The statement reads or writes one of these tables (any when empty).
    pub(crate) tables: Vec<TableGlob>,
    /// An output column is exactly, or is derived from, one of these
    /// `schema.table.column` patterns (any when empty).
    pub(crate) columns: Vec<[Glob; 3]>,
    /// How long a client waits for a decision before it gets an error.
    pub timeout: std::time::Duration,
}

/// What an `[[identity]]` block allows its workloads to run (evaluated by
/// [`crate::guardrails`]).
#[derive(Debug, Clone)]
pub struct Guardrails {
    /// The block's identity pattern, named in refusals.
    pub name: String,
    /// Refuse everything that is not known to only read.
    pub read_only: bool,
    pub(crate) deny_classes: Vec<StatementClass>,
    pub(crate) deny_tables: Vec<TableGlob>,
    pub(crate) deny_functions: Vec<Glob>,
    /// Functions that count as writes under `read_only` (`nextval`, an
    /// application's `refund_order`, ...).
    pub(crate) writing_functions: Vec<Glob>,
    /// Where the identity may connect at all (`None`: anywhere): targets
    /// (`host:port` globs), databases and database users (globs).
    pub(crate) targets: Option<Vec<Glob>>,
    pub(crate) databases: Option<Vec<Glob>>,
    pub(crate) users: Option<Vec<Glob>>,
    /// `egress = "targets-only"`: the identity's workloads may connect only
    /// to masker's targets and to `allow_egress` (enforced in the kernel).
    pub egress: Option<crate::interception::EgressLock>,
}

impl Guardrails {
    /// Why a session of `identity` to `targets` (the names a target goes
    /// by: its configured `host:port` and the address connected to; any
    /// may match), `database` as `user` may not start, or `None` when the
    /// block allows it. The message is what the client sees (SQLSTATE
    /// 28000).
    pub fn connect_refusal(&self, identity: &str, targets: &[&str], database: &str, user: &str) -> Option<String> {
        let allows = |globs: &Option<Vec<Glob>>, s: &[&str]| {
            globs.as_ref().is_none_or(|g| g.iter().any(|g| s.iter().any(|s| g.matches(s))))
        };
        let what = if !allows(&self.targets, targets) {
            format!("target {}", targets.first().copied().unwrap_or_default())
        } else if !allows(&self.databases, &[database]) {
            format!("database {database}")
        } else if !allows(&self.users, &[user]) {
            format!("database user {user}")
        } else {
            return None;
        };
        Some(format!("masker: identity {identity} may not connect to {what} (rule: identity {})", self.name))
    }
}

/// A `deny_tables` pattern: `table` or `schema.table`, each part a glob.
#[derive(Debug, Clone)]
pub(crate) struct TableGlob {
    pub(crate) schema: Option<Glob>,
    pub(crate) table: Glob,
}

impl TableGlob {
    /// Whether relation `schema.name` matches; a relation the agent could not
    /// resolve (`schema` is `None`) matches on its name alone (fail closed).
    pub(crate) fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        self.table.matches(name) && self.schema.as_ref().is_none_or(|s| schema.is_none_or(|rs| s.matches(rs)))
    }
}

#[derive(Debug, Clone)]
struct Defaults {
    action: ColumnAction,
    comment_classification: bool,
    refuse_inference: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    columns: Vec<[Glob; 3]>,
    column_names: Vec<Glob>,
    action: ColumnAction,
    identities: Option<Vec<Glob>>,
    targets: Option<Vec<Glob>>,
    claims: Option<ClaimsMatch>,
}

/// The rules of a policy that apply to one session (identity and target).
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    defaults: Defaults,
    rules: Vec<Rule>,
    guardrails: Option<Arc<Guardrails>>,
    approvals: Vec<Arc<ApprovalRule>>,
    keys: Keys,
}

/// A policy file that cannot be used: where, what is wrong and what was expected.
///
/// Displays as `file:line:column: message`. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    origin: String,
    /// 1-based line and column, when the problem has a place in the file.
    at: Option<(usize, usize)>,
    message: String,
}

impl PolicyError {
    /// The file (or origin name) the policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// 1-based line of the problem, if it has one.
    pub fn line(&self) -> Option<usize> {
        self.at.map(|a| a.0)
    }

    /// 1-based column of the problem, if it has one.
    pub fn column(&self) -> Option<usize> {
        self.at.map(|a| a.1)
    }

    /// What is wrong and what was expected, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Builds errors located in one policy text.
struct Errors<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Errors<'_> {
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let mut offset = span.start.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyError { origin: self.origin.to_owned(), at: Some((line, col)), message: message.into() }
    }

    fn whole(&self, message: impl Into<String>) -> PolicyError {
        PolicyError { origin: self.origin.to_owned(), at: None, message: message.into() }
    }
}

// ---------------------------------------------------------------- file format

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    defaults: RawDefaults,
    pseudonymize: Option<Spanned<RawPseudonymize>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    identity: Vec<Spanned<RawIdentity>>,
    #[serde(default)]
    approval: Vec<Spanned<RawApproval>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    name: Spanned<String>,
    #[allow(dead_code)]
    description: Option<String>,
    identities: Option<Spanned<Vec<Spanned<String>>>>,
    classes: Option<Spanned<Vec<Spanned<String>>>>,
    tables: Option<Spanned<Vec<Spanned<String>>>>,
    columns: Option<Spanned<Vec<Spanned<String>>>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    name: Spanned<String>,
    claims: Option<Spanned<RawClaims>>,
    #[serde(default)]
    read_only: bool,
    deny_classes: Option<Spanned<Vec<Spanned<String>>>>,
    deny_tables: Option<Spanned<Vec<Spanned<String>>>>,
    deny_functions: Option<Spanned<Vec<Spanned<String>>>>,
    writing_functions: Option<Spanned<Vec<Spanned<String>>>>,
    targets: Option<Spanned<Vec<Spanned<String>>>>,
    databases: Option<Spanned<Vec<Spanned<String>>>>,
    users: Option<Spanned<Vec<Spanned<String>>>>,
    egress: Option<Spanned<String>>,
    allow_egress: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    action: Option<DefaultAction>,
    comment_classification: Option<bool>,
    refuse_inference: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum DefaultAction {
    Detect,
    Allow,
    Redact,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPseudonymize {
    key_env: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[allow(dead_code)]
    description: Option<String>,
    columns: Option<Spanned<Vec<Spanned<String>>>>,
    column_names: Option<Spanned<Vec<Spanned<String>>>>,
    action: Spanned<ActionName>,
    keep_first: Option<Spanned<u16>>,
    keep_last: Option<Spanned<u16>>,
    format_preserving: Option<Spanned<bool>>,
    to: Option<Spanned<GeneralizeTo>>,
    bucket: Option<Spanned<u64>>,
    ipv4_prefix: Option<Spanned<u8>>,
    ipv6_prefix: Option<Spanned<u8>>,
    identities: Option<Spanned<Vec<Spanned<String>>>>,
    targets: Option<Spanned<Vec<Spanned<String>>>>,
    claims: Option<Spanned<RawClaims>>,
}

/// `claims = { name = "pattern", ... }` as written.
type RawClaims = std::collections::BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    Redact,
    Null,
    Partial,
    Email,
    Pseudonymize,
    Generalize,
    Detect,
    Allow,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum GeneralizeTo {
    Hour,
    Day,
    Month,
    Year,
    Network,
    Bucket,
}

/// Looks up an environment variable (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Policy {
    /// Reads, parses and validates the policy file at `path`, and loads the
    /// pseudonymisation key it names (from the environment or a key file).
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        Policy::from_file_with_env(path, &process_env)
    }

    /// [`Policy::from_file`] with environment variables looked up by `env`.
    pub fn from_file_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            at: None,
            message: format!("cannot read the policy file: {e}"),
        })?;
        Policy::parse_with_env(&text, &origin, env)
    }

    /// Parses and validates a policy; `origin` names it in errors (a path).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_env(text, origin, &process_env)
    }

    /// [`Policy::parse`] with environment variables looked up by `env`.
    pub fn parse_with_env(text: &str, origin: &str, env: EnvLookup<'_>) -> Result<Policy, PolicyError> {
        let errs = Errors { origin, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => errs.at(span, e.message().trim_end().to_owned()),
            None => errs.whole(e.message().trim_end().to_owned()),
        })?;
        if *raw.version.get_ref() != 1 {
            return Err(errs
                .at(raw.version.span(), format!("unsupported policy version {}; expected 1", raw.version.get_ref())));
        }
        let defaults = Defaults {
            action: match raw.defaults.action.unwrap_or(DefaultAction::Detect) {
                DefaultAction::Detect => ColumnAction::Detect,
                DefaultAction::Allow => ColumnAction::Allow,
                DefaultAction::Redact => ColumnAction::Redact,
            },
            comment_classification: raw.defaults.comment_classification.unwrap_or(true),
            refuse_inference: raw.defaults.refuse_inference.unwrap_or(false),
        };
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut pseudonymized_at = None;
        for r in &raw.rule {
            let rule = compile_rule(r.get_ref(), &defaults, &errs)?;
            if matches!(rule.action, ColumnAction::Pseudonymize { .. }) && pseudonymized_at.is_none() {
                pseudonymized_at = Some(r.get_ref().action.span());
            }
            rules.push(rule);
        }
        let keys = load_keys(raw.pseudonymize.as_ref(), pseudonymized_at, &errs, env)?;
        let identities = raw.identity.iter().map(|i| compile_identity(i.get_ref(), &errs)).collect::<Result<_, _>>()?;
        let approvals = raw
            .approval
            .iter()
            .map(|a| compile_approval(a.get_ref(), &errs).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Policy { origin: origin.to_owned(), defaults, rules, identities, approvals, keys })
    }

    /// The rules that apply to sessions of `identity` towards `target`
    /// (`host:port` as the workload dialled it), in file order. `claims` are
    /// those of the token verified for the identity, `None` without one: a
    /// rule or `[[identity]]` block with `claims` never applies then.
    pub fn for_session(
        &self,
        identity: &str,
        claims: Option<&crate::identity::Claims>,
        target: &str,
    ) -> Arc<SessionPolicy> {
        let applies =
            |globs: &Option<Vec<Glob>>, s: &str| globs.as_ref().is_none_or(|g| g.iter().any(|g| g.matches(s)));
        let claims_match = |m: &Option<ClaimsMatch>| m.as_ref().is_none_or(|m| m.matches(claims));
        let rules = self
            .rules
            .iter()
            .filter(|r| applies(&r.identities, identity) && applies(&r.targets, target) && claims_match(&r.claims))
            .cloned()
            .collect();
        let guardrails =
            self.identities.iter().find(|(g, c, _)| g.matches(identity) && claims_match(c)).map(|(_, _, g)| g.clone());
        let approvals = self.approvals.iter().filter(|a| applies(&a.identities, identity)).cloned().collect();
        Arc::new(SessionPolicy {
            defaults: self.defaults.clone(),
            rules,
            guardrails,
            approvals,
            keys: self.keys.clone(),
        })
    }

    /// The egress lock of `identity` (with its verified `claims`): that of
    /// the first `[[identity]]` block that applies to it, as for guardrails.
    pub fn egress_for(
        &self,
        identity: &str,
        claims: Option<&crate::identity::Claims>,
    ) -> Option<crate::interception::EgressLock> {
        let claims_match = |m: &Option<ClaimsMatch>| m.as_ref().is_none_or(|m| m.matches(claims));
        self.identities
            .iter()
            .find(|(g, c, _)| g.matches(identity) && claims_match(c))
            .and_then(|(_, _, g)| g.egress.clone())
    }

    /// The keys for the masking engine.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Where the policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A one-line description for `masker policy check` and logs.
    pub fn summary(&self) -> String {
        format!(
            "{} rule(s); {} approval rule(s); unclassified columns: {}; column comments: {}; pseudonymisation key: {}",
            self.rules.len(),
            self.approvals.len(),
            self.defaults.action.kind().map_or("allow", |k| k.as_str()),
            if self.defaults.comment_classification { "on" } else { "off" },
            if self.keys.has_pseudonym_key() { "loaded" } else { "none" },
        )
    }
}

impl SessionPolicy {
    /// A policy that masks, refuses and holds nothing: what a session
    /// without a policy follows its statements with (for the audit trail).
    pub fn allow_all() -> Arc<SessionPolicy> {
        Arc::new(SessionPolicy {
            defaults: Defaults { action: ColumnAction::Allow, comment_classification: false, refuse_inference: false },
            rules: Vec::new(),
            guardrails: None,
            approvals: Vec::new(),
            keys: Keys::default(),
        })
    }

    /// The action for a base column `schema.table.column`; `comment` is the
    /// column's catalog comment, which may carry `pii:<name>`.
    pub fn column_action(&self, schema: &str, table: &str, column: &str, comment: Option<&str>) -> ColumnAction {
        let tag = if self.defaults.comment_classification { comment.and_then(pii_tag) } else { None };
        if let Some(r) = self.matching_rule(schema, table, column, tag) {
            return r.action.clone();
        }
        match tag {
            Some(t) => match t.to_ascii_lowercase().as_str() {
                "null" => ColumnAction::Null,
                "email" => ColumnAction::Email,
                "pseudonymize" => ColumnAction::Pseudonymize { format_preserving: false },
                "detect" => ColumnAction::Detect,
                _ => ColumnAction::Redact,
            },
            None => self.defaults.action.clone(),
        }
    }

    /// The first rule that selects `schema.table.column` (by path, by name or
    /// by the column's `pii:<name>` comment `tag`).
    fn matching_rule(&self, schema: &str, table: &str, column: &str, tag: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.columns.iter().any(|[s, t, c]| s.matches(schema) && t.matches(table) && c.matches(column))
                || r.column_names.iter().any(|g| g.matches(column))
                || tag.is_some_and(|t| t.eq_ignore_ascii_case(&r.name))
        })
    }

    /// What decides the action of `schema.table.column`, for messages that
    /// name it: `rule <name>`, the column comment, or the default. (No
    /// quotes: refusals reach the client as server errors, whose quoted
    /// strings are scrubbed as possible values.)
    pub fn rule_name(&self, schema: &str, table: &str, column: &str, comment: Option<&str>) -> String {
        let tag = if self.defaults.comment_classification { comment.and_then(pii_tag) } else { None };
        match (self.matching_rule(schema, table, column, tag), tag) {
            (Some(r), _) => format!("rule {}", r.name),
            (None, Some(t)) => format!("column comment pii:{t}"),
            (None, None) => "defaults.action".to_string(),
        }
    }

    /// The guardrails of the session's identity (its `[[identity]]` block).
    pub fn guardrails(&self) -> Option<&Guardrails> {
        self.guardrails.as_deref()
    }

    /// The `[[approval]]` rules for the session's identity, in file order.
    pub fn approvals(&self) -> &[Arc<ApprovalRule>] {
        &self.approvals
    }

    /// Whether statements that filter, group or order on masked columns are
    /// refused (`defaults.refuse_inference`).
    pub fn refuses_inference(&self) -> bool {
        self.defaults.refuse_inference
    }

    /// The action for output columns no rule classifies (`defaults.action`:
    /// detect, allow or redact).
    pub fn unclassified_action(&self) -> ColumnAction {
        self.defaults.action.clone()
    }

    /// Whether any rule applies to this session.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The keys for the masking engine.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The name after `pii:` in a column comment (`"Contact. pii:email"` → `email`).
fn pii_tag(comment: &str) -> Option<&str> {
    let lower = comment.as_bytes();
    let at = lower.windows(4).position(|w| w.eq_ignore_ascii_case(b"pii:"))?;
    let rest = &comment[at + 4..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn compile_rule(r: &RawRule, defaults: &Defaults, errs: &Errors<'_>) -> Result<Rule, PolicyError> {
    let name = r.name.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(errs.at(
            r.name.span(),
            "invalid rule name; expected letters, digits, `_` or `-` (it is the tag in `pii:<name>` comments)",
        ));
    }
    let action_name = *r.action.get_ref();
    let only = |field: &str, span: Option<Range<usize>>, wanted: ActionName, what: &str| -> Result<(), PolicyError> {
        match span {
            Some(span) if action_name != wanted => {
                Err(errs.at(span, format!("`{field}` applies only to action \"{what}\"")))
            }
            _ => Ok(()),
        }
    };
    only("keep_first", r.keep_first.as_ref().map(Spanned::span), ActionName::Partial, "partial")?;
    only("keep_last", r.keep_last.as_ref().map(Spanned::span), ActionName::Partial, "partial")?;
    only(
        "format_preserving",
        r.format_preserving.as_ref().map(Spanned::span),
        ActionName::Pseudonymize,
        "pseudonymize",
    )?;
    only("to", r.to.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("bucket", r.bucket.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("ipv4_prefix", r.ipv4_prefix.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;
    only("ipv6_prefix", r.ipv6_prefix.as_ref().map(Spanned::span), ActionName::Generalize, "generalize")?;

    let action = match action_name {
        ActionName::Allow => ColumnAction::Allow,
        ActionName::Redact => ColumnAction::Redact,
        ActionName::Null => ColumnAction::Null,
        ActionName::Email => ColumnAction::Email,
        ActionName::Detect => ColumnAction::Detect,
        ActionName::Pseudonymize => {
            ColumnAction::Pseudonymize { format_preserving: r.format_preserving.as_ref().is_some_and(|s| *s.get_ref()) }
        }
        ActionName::Partial => {
            if r.keep_first.is_none() && r.keep_last.is_none() {
                return Err(errs.at(
                    r.action.span(),
                    "action \"partial\" needs `keep_first` and/or `keep_last` (characters kept)",
                ));
            }
            ColumnAction::Partial {
                first: r.keep_first.as_ref().map_or(0, |s| *s.get_ref()),
                last: r.keep_last.as_ref().map_or(0, |s| *s.get_ref()),
            }
        }
        ActionName::Generalize => ColumnAction::Generalize(generalize(r, errs)?),
    };

    let globs = |list: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| -> Result<Option<Vec<Glob>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(errs.at(list.span(), format!("empty `{what}` list matches nothing; remove it or add patterns")));
        }
        list.get_ref()
            .iter()
            .map(|p| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern")))
            .collect::<Result<_, _>>()
            .map(Some)
    };
    let columns = match &r.columns {
        Some(list) => list.get_ref().iter().map(|p| column_glob(p, errs)).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let column_names = globs(&r.column_names, "column_names")?.unwrap_or_default();
    if columns.is_empty() && column_names.is_empty() && !defaults.comment_classification {
        return Err(errs.at(
            r.name.span(),
            "rule selects no column; expected `columns` or `column_names` (or defaults.comment_classification = true to apply it through `pii:<name>` comments)",
        ));
    }
    Ok(Rule {
        name: name.clone(),
        columns,
        column_names,
        action,
        identities: globs(&r.identities, "identities")?,
        targets: globs(&r.targets, "targets")?,
        claims: r.claims.as_ref().map(|c| compile_claims(c, errs)).transpose()?,
    })
}

/// What `claims` of a rule or `[[identity]]` block require of a session's
/// verified token: every listed claim present and matching its pattern.
#[derive(Debug, Clone)]
struct ClaimsMatch(Vec<(String, ClaimGlob)>);

impl ClaimsMatch {
    /// Whether `claims` (of a verified token; `None` without one) satisfy
    /// every pattern. String claims are matched as they are, any other
    /// value as its JSON text (`42`, `true`, `["a","b"]`); a missing claim
    /// does not match.
    fn matches(&self, claims: Option<&crate::identity::Claims>) -> bool {
        let Some(claims) = claims else { return false };
        self.0.iter().all(|(name, pattern)| match claims.get(name) {
            Some(serde_json::Value::String(s)) => pattern.matches(s),
            Some(other) => pattern.matches(&other.to_string()),
            None => false,
        })
    }
}

fn compile_claims(raw: &Spanned<RawClaims>, errs: &Errors<'_>) -> Result<ClaimsMatch, PolicyError> {
    let mut out = Vec::with_capacity(raw.get_ref().len());
    for (name, value) in raw.get_ref() {
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(errs.at(
                    value.span(),
                    format!(
                        "claim `{name}`: expected a string pattern (globs * and ?), found {}",
                        match other {
                            toml::Value::Array(_) => "an array",
                            toml::Value::Table(_) => "a table",
                            toml::Value::Float(_) => "a float",
                            _ => "a date-time",
                        }
                    ),
                ));
            }
        };
        if text.is_empty() {
            return Err(errs.at(value.span(), format!("claim `{name}`: empty pattern")));
        }
        out.push((name.clone(), ClaimGlob::new(&text)));
    }
    Ok(ClaimsMatch(out))
}

fn compile_identity(
    i: &RawIdentity,
    errs: &Errors<'_>,
) -> Result<(Glob, Option<ClaimsMatch>, Arc<Guardrails>), PolicyError> {
    let pattern = Glob::new(i.name.get_ref()).ok_or_else(|| errs.at(i.name.span(), "empty identity pattern"))?;
    let claims = i.claims.as_ref().map(|c| compile_claims(c, errs)).transpose()?;
    let list = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| list_of(l, what, errs);
    let glob = |p: &Spanned<String>| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern"));
    let deny_classes =
        list(&i.deny_classes, "deny_classes")?.iter().map(|c| statement_class(c, errs)).collect::<Result<_, _>>()?;
    let deny_tables =
        list(&i.deny_tables, "deny_tables")?.iter().map(|t| table_glob(t, errs)).collect::<Result<_, _>>()?;
    let deny_functions = list(&i.deny_functions, "deny_functions")?.iter().map(glob).collect::<Result<_, _>>()?;
    let writing_functions =
        list(&i.writing_functions, "writing_functions")?.iter().map(glob).collect::<Result<_, _>>()?;
    // Absent: anywhere. Present: at least one pattern (an empty list would
    // refuse every session, which is what removing the block's identity
    // from the runner is for).
    let allow = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| -> Result<Option<Vec<Glob>>, PolicyError> {
        match l {
            None => Ok(None),
            Some(_) => Ok(Some(list(l, what)?.iter().map(glob).collect::<Result<_, _>>()?)),
        }
    };
    let targets = allow(&i.targets, "targets")?;
    if let Some(list) = &i.targets {
        for t in list.get_ref() {
            if !t.get_ref().contains(':') {
                return Err(
                    errs.at(t.span(), "expected a \"host:port\" glob (e.g. \"db.internal:5432\" or \"*:5432\")")
                );
            }
        }
    }
    let databases = allow(&i.databases, "databases")?;
    let users = allow(&i.users, "users")?;
    let egress = match i.egress.as_ref().map(|e| (e, e.get_ref().as_str())) {
        None | Some((_, "open")) => {
            if let Some(a) = &i.allow_egress {
                return Err(errs.at(a.span(), "`allow_egress` needs `egress = \"targets-only\"` on the same identity"));
            }
            None
        }
        Some((_, "targets-only")) => {
            let mut allow = Vec::new();
            if let Some(a) = &i.allow_egress {
                for n in a.get_ref() {
                    let parsed = n
                        .get_ref()
                        .parse::<crate::interception::NetPort>()
                        .map_err(|e| errs.at(n.span(), e.to_string()))?;
                    allow.push(parsed);
                }
            }
            Some(crate::interception::EgressLock { allow })
        }
        Some((e, _)) => return Err(errs.at(e.span(), "expected \"targets-only\" or \"open\"")),
    };
    Ok((
        pattern,
        claims,
        Arc::new(Guardrails {
            name: i.name.get_ref().clone(),
            read_only: i.read_only,
            deny_classes,
            deny_tables,
            deny_functions,
            writing_functions,
            targets,
            databases,
            users,
            egress,
        }),
    ))
}

/// The entries of an optional list (none when absent; an empty list is an
/// error: it would silently match nothing).
fn list_of(
    l: &Option<Spanned<Vec<Spanned<String>>>>,
    what: &str,
    errs: &Errors<'_>,
) -> Result<Vec<Spanned<String>>, PolicyError> {
    match l {
        None => Ok(Vec::new()),
        Some(l) if l.get_ref().is_empty() => {
            Err(errs.at(l.span(), format!("empty `{what}` list; remove it or add entries")))
        }
        Some(l) => Ok(l.get_ref().clone()),
    }
}

/// A `schema.table.column` pattern.
fn column_glob(p: &Spanned<String>, errs: &Errors<'_>) -> Result<[Glob; 3], PolicyError> {
    let parts: Vec<&str> = p.get_ref().split('.').collect();
    let [s, t, c] = parts.as_slice() else {
        return Err(errs.at(p.span(), "expected \"schema.table.column\" (globs * and ? allowed, e.g. \"*.*.email\")"));
    };
    let g = |x: &str| Glob::new(x).ok_or_else(|| errs.at(p.span(), "empty part in \"schema.table.column\""));
    Ok([g(s)?, g(t)?, g(c)?])
}

/// A `table` or `schema.table` pattern.
fn table_glob(t: &Spanned<String>, errs: &Errors<'_>) -> Result<TableGlob, PolicyError> {
    let (schema, table) = match t.get_ref().split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, t.get_ref().as_str()),
    };
    let bad = || errs.at(t.span(), "expected `table` or `schema.table` (globs allowed)");
    Ok(TableGlob {
        schema: schema.map(|s| Glob::new(s).ok_or_else(bad)).transpose()?,
        table: Glob::new(table).filter(|_| !table.contains('.')).ok_or_else(bad)?,
    })
}

/// A statement class name.
fn statement_class(c: &Spanned<String>, errs: &Errors<'_>) -> Result<StatementClass, PolicyError> {
    StatementClass::from_name(c.get_ref()).ok_or_else(|| {
        errs.at(
            c.span(),
            format!("unknown statement class {:?}; expected one of {}", c.get_ref(), StatementClass::NAMES.join(", ")),
        )
    })
}

/// How long a client waits for an approval unless the rule says otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The longest wait a rule may ask for (clients and poolers give up sooner).
const MAX_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

fn compile_approval(a: &RawApproval, errs: &Errors<'_>) -> Result<ApprovalRule, PolicyError> {
    let name = a.name.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(errs.at(a.name.span(), "invalid approval name; expected letters, digits, `_` or `-`"));
    }
    let list = |l: &Option<Spanned<Vec<Spanned<String>>>>, what: &str| list_of(l, what, errs);
    let identities = match &a.identities {
        None => None,
        Some(_) => Some(
            list(&a.identities, "identities")?
                .iter()
                .map(|p| Glob::new(p.get_ref()).ok_or_else(|| errs.at(p.span(), "empty pattern")))
                .collect::<Result<_, _>>()?,
        ),
    };
    let classes =
        list(&a.classes, "classes")?.iter().map(|c| statement_class(c, errs)).collect::<Result<Vec<_>, _>>()?;
    let tables = list(&a.tables, "tables")?.iter().map(|t| table_glob(t, errs)).collect::<Result<Vec<_>, _>>()?;
    let columns = list(&a.columns, "columns")?.iter().map(|p| column_glob(p, errs)).collect::<Result<Vec<_>, _>>()?;
    if classes.is_empty() && tables.is_empty() && columns.is_empty() {
        return Err(errs.at(
            a.name.span(),
            "approval rule holds nothing; expected `classes`, `tables` and/or `columns` (all listed must match)",
        ));
    }
    let timeout = match &a.timeout {
        None => DEFAULT_APPROVAL_TIMEOUT,
        Some(t) => {
            let d = crate::approvals::parse_duration(t.get_ref()).map_err(|e| errs.at(t.span(), e))?;
            if d.is_zero() || d > MAX_APPROVAL_TIMEOUT {
                return Err(errs.at(t.span(), "`timeout` must be between 1s and 1h"));
            }
            d
        }
    };
    Ok(ApprovalRule { name: name.clone(), identities, classes, tables, columns, timeout })
}

fn generalize(r: &RawRule, errs: &Errors<'_>) -> Result<Generalize, PolicyError> {
    let Some(to) = &r.to else {
        return Err(errs.at(
            r.action.span(),
            "action \"generalize\" needs `to`; expected one of hour, day, month, year, network, bucket",
        ));
    };
    let to = *to.get_ref();
    let not_for = |field: &str, span: Option<Range<usize>>, wanted: &str| match span {
        Some(span) => Err(errs.at(span, format!("`{field}` applies only to to = \"{wanted}\""))),
        None => Ok(()),
    };
    if to != GeneralizeTo::Bucket {
        not_for("bucket", r.bucket.as_ref().map(Spanned::span), "bucket")?;
    }
    if to != GeneralizeTo::Network {
        not_for("ipv4_prefix", r.ipv4_prefix.as_ref().map(Spanned::span), "network")?;
        not_for("ipv6_prefix", r.ipv6_prefix.as_ref().map(Spanned::span), "network")?;
    }
    Ok(match to {
        GeneralizeTo::Hour => Generalize::Hour,
        GeneralizeTo::Day => Generalize::Day,
        GeneralizeTo::Month => Generalize::Month,
        GeneralizeTo::Year => Generalize::Year,
        GeneralizeTo::Network => {
            let v4 = r.ipv4_prefix.as_ref().map_or(Ok(24), |p| {
                if *p.get_ref() <= 32 {
                    Ok(*p.get_ref())
                } else {
                    Err(errs.at(p.span(), "expected a prefix length of 0 to 32"))
                }
            })?;
            let v6 = r.ipv6_prefix.as_ref().map_or(Ok(64), |p| {
                if *p.get_ref() <= 128 {
                    Ok(*p.get_ref())
                } else {
                    Err(errs.at(p.span(), "expected a prefix length of 0 to 128"))
                }
            })?;
            Generalize::Network { v4, v6 }
        }
        GeneralizeTo::Bucket => match &r.bucket {
            Some(b) if *b.get_ref() > 0 => Generalize::Bucket(*b.get_ref()),
            Some(b) => return Err(errs.at(b.span(), "expected a bucket size greater than 0")),
            None => return Err(errs.at(r.action.span(), "to = \"bucket\" needs `bucket` = size (e.g. 1000)")),
        },
    })
}

fn load_keys(
    raw: Option<&Spanned<RawPseudonymize>>,
    used_at: Option<Range<usize>>,
    errs: &Errors<'_>,
    env: EnvLookup<'_>,
) -> Result<Keys, PolicyError> {
    use crate::masking::pseudonym::MIN_KEY_LEN;
    let Some(raw) = raw else {
        return match used_at {
            Some(span) => Err(errs.at(
                span,
                "action \"pseudonymize\" needs a key; expected a [pseudonymize] table with key_env or key_file",
            )),
            None => Ok(Keys::none()),
        };
    };
    let p = raw.get_ref();
    let (secret, span, source) = match (&p.key_env, &p.key_file) {
        (Some(_), Some(file)) => return Err(errs.at(file.span(), "set either key_env or key_file, not both")),
        (None, None) => return Err(errs.at(raw.span(), "[pseudonymize] needs key_env or key_file")),
        (Some(var), None) => (env(var.get_ref()), var.span(), format!("environment variable {}", var.get_ref())),
        (None, Some(file)) => {
            let secret = match std::fs::read_to_string(file.get_ref()) {
                Ok(s) => Some(s),
                Err(e) if used_at.is_some() => {
                    return Err(errs.at(file.span(), format!("cannot read key file {}: {}", file.get_ref(), e.kind())));
                }
                Err(_) => None,
            };
            (secret, file.span(), format!("key file {}", file.get_ref()))
        }
    };
    let Some(secret) = secret else {
        return match used_at {
            Some(_) => Err(errs.at(span, format!("{source} is not set; action \"pseudonymize\" needs its key"))),
            None => Ok(Keys::none()),
        };
    };
    Keys::new(secret.trim().as_bytes())
        .ok_or_else(|| errs.at(span, format!("the key in {source} is shorter than {MIN_KEY_LEN} bytes")))
}

// ---------------------------------------------------------------- globs

/// A glob over identifiers: `*` any run, `?` one character, ASCII
/// case-insensitive.
#[derive(Debug, Clone)]
pub(crate) struct Glob(Box<[u8]>);

impl Glob {
    pub(crate) fn new(pattern: &str) -> Option<Glob> {
        (!pattern.is_empty()).then(|| Glob(pattern.to_ascii_lowercase().into_bytes().into_boxed_slice()))
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        glob_match(&self.0, s.as_bytes(), true)
    }
}

/// A glob over claim values: `*` any run, `?` one byte, **case-sensitive**
/// (`refs/heads/MAIN` is not `refs/heads/main`: git refs, repository paths
/// and ids differ by case, and folding would let a look-alike branch pass).
#[derive(Debug, Clone)]
struct ClaimGlob(Box<[u8]>);

impl ClaimGlob {
    fn new(pattern: &str) -> ClaimGlob {
        ClaimGlob(pattern.as_bytes().into())
    }

    fn matches(&self, s: &str) -> bool {
        glob_match(&self.0, s.as_bytes(), false)
    }
}

/// Whether `s` matches pattern `p` (`*`, `?`); with `fold`, `p` is lower
/// case and `s` is compared ASCII case-insensitively.
fn glob_match(p: &[u8], s: &[u8], fold: bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let lower = |c: u8| if fold { c.to_ascii_lowercase() } else { c };
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == lower(s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn key_env(name: &str) -> Option<String> {
        (name == "MASKER_PSEUDONYM_KEY").then(|| "test-key-0123456789abcdef".to_owned())
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_env(text, "policy.toml", &key_env)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn example_policy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
        let p = Policy::from_file_with_env(&path, &key_env).unwrap();
        assert!(p.keys().has_pseudonym_key());
        let main = claims(&[
            ("repository", json!("acme/shop")),
            ("ref", json!("refs/heads/main")),
            ("environment", json!("production")),
        ]);
        let email = |c| p.for_session("ci-deploy", c, "db:5432").column_action("public", "customers", "email", None);
        assert_eq!(email(Some(&main)), ColumnAction::Allow);
        assert_eq!(email(None), ColumnAction::Pseudonymize { format_preserving: true });
        assert!(p.summary().contains("rule(s)"));
        let ci = p.for_session("ci-build", None, "10.0.0.5:5432");
        let g = ci.guardrails().unwrap();
        let t = ["db.internal:5432", "10.0.0.5:5432"];
        assert_eq!(g.connect_refusal("ci-build", &t, "app_test_1", "ci_reader"), None);
        assert_eq!(
            g.connect_refusal("ci-build", &t, "prod_admin", "ci_reader").unwrap(),
            "masker: identity ci-build may not connect to database prod_admin (rule: identity ci-*)"
        );
        // Without the key the error names the variable, not a value.
        let e = Policy::from_file_with_env(&path, &no_env).unwrap_err();
        assert!(e.message().contains("MASKER_PSEUDONYM_KEY is not set"), "{e}");
        assert!(e.line().is_some());
    }

    #[test]
    fn refuse_inference_and_rule_names() {
        let text = "version = 1\n[defaults]\nrefuse_inference = true\n[[rule]]\nname = \"national-id\"\n\
                    column_names = [\"ssn\"]\naction = \"null\"\n";
        let s = parse(text).unwrap().for_session("ci", None, "db:5432");
        assert!(s.refuses_inference());
        assert_eq!(s.rule_name("public", "customers", "ssn", None), "rule national-id");
        assert_eq!(s.rule_name("public", "customers", "x", Some("pii:email")), "column comment pii:email");
        assert_eq!(s.rule_name("public", "customers", "x", None), "defaults.action");
        assert!(!parse("version = 1\n").unwrap().for_session("ci", None, "db:5432").refuses_inference());
        let e = err("version = 1\n[defaults]\nrefuse_inference = \"yes\"\n");
        assert!(e.starts_with("policy.toml:3:20: invalid type"), "{e}");
    }

    #[test]
    fn errors_have_exact_positions() {
        let text = "version = 1\n\n[[rule]]\nname = \"emails\"\ncolumn_names = [\"*email*\"]\naction = \"redakt\"\n";
        let e = err(text);
        assert!(e.starts_with("policy.toml:6:10: unknown variant `redakt`, expected one of"), "{e}");
        assert!(e.contains("`redact`"), "{e}");

        let e = err("version = 1\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\nacton = \"redact\"\n");
        assert!(e.starts_with("policy.toml:5:1: unknown field `acton`"), "{e}");

        let e = err("version = 2\n");
        assert_eq!(e, "policy.toml:1:11: unsupported policy version 2; expected 1");

        let e = err("version = 1\n[[rule]]\nname = \"x\"\ncolumns = [\"customers.email\"]\naction = \"null\"\n");
        assert_eq!(e, "policy.toml:4:12: expected \"schema.table.column\" (globs * and ? allowed, e.g. \"*.*.email\")");

        let e =
            err("version = 1\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\naction = \"redact\"\nkeep_first = 2\n");
        assert_eq!(e, "policy.toml:6:14: `keep_first` applies only to action \"partial\"");

        let e = err("version = 1\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\naction = \"generalize\"\n");
        assert!(e.starts_with("policy.toml:5:10: action \"generalize\" needs `to`"), "{e}");

        let e = err("version = 1\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\naction = \"pseudonymize\"\n");
        assert!(e.starts_with("policy.toml:5:10: action \"pseudonymize\" needs a key"), "{e}");

        let e = err("version = 1\n[defaults]\naction = \"email\"\n");
        assert!(
            e.starts_with("policy.toml:3:10: unknown variant `email`, expected one of `detect`, `allow`, `redact`"),
            "{e}"
        );

        let e =
            err("version = 1\n[[rule]]\nname = \"x\"\nidentities = []\ncolumn_names = [\"a\"]\naction = \"null\"\n");
        assert!(e.starts_with("policy.toml:4:14: empty `identities` list"), "{e}");

        let e = err("version = 1\n[[rule]\n");
        assert!(e.starts_with("policy.toml:2:"), "{e}");

        assert!(parse("version = 1\n[[rule]]\nname = \"x\"\naction = \"null\"\n").is_ok());
        let e =
            err("version = 1\n[defaults]\ncomment_classification = false\n[[rule]]\nname = \"x\"\naction = \"null\"\n");
        assert!(e.starts_with("policy.toml:5:8: rule selects no column"), "{e}");
    }

    #[test]
    fn precedence_identity_target_and_comments() {
        let p = parse(
            r#"
version = 1
[defaults]
action = "detect"
[pseudonymize]
key_env = "MASKER_PSEUDONYM_KEY"
[[rule]]
name = "email"
identities = ["ci-*"]
column_names = ["*email*"]
action = "pseudonymize"
format_preserving = true
[[rule]]
name = "email"
columns = ["public.*.email", "crm.contacts.mail"]
action = "email"
[[rule]]
name = "card"
column_names = ["card_number"]
targets = ["db.internal:5432"]
action = "partial"
keep_last = 4
[[rule]]
name = "birthday"
action = "generalize"
to = "year"
"#,
        )
        .unwrap();
        let ci = p.for_session("ci-build-1", None, "db.internal:5432");
        let dev = p.for_session("agent", None, "other:5432");
        assert_eq!(
            ci.column_action("public", "customers", "Email", None),
            ColumnAction::Pseudonymize { format_preserving: true }
        );
        assert_eq!(dev.column_action("public", "customers", "email", None), ColumnAction::Email);
        assert_eq!(dev.column_action("crm", "contacts", "mail", None), ColumnAction::Email);
        assert_eq!(dev.column_action("crm", "contacts", "work_email", None), ColumnAction::Detect);
        assert_eq!(ci.column_action("s", "t", "card_number", None), ColumnAction::Partial { first: 0, last: 4 });
        assert_eq!(dev.column_action("s", "t", "card_number", None), ColumnAction::Detect);
        // Comments classify: by rule name, by action name, unknown tags redact.
        assert_eq!(
            dev.column_action("s", "t", "dob", Some("Date of birth. PII:birthday")),
            ColumnAction::Generalize(Generalize::Year)
        );
        assert_eq!(dev.column_action("s", "t", "x", Some("pii:null")), ColumnAction::Null);
        assert_eq!(dev.column_action("s", "t", "x", Some("pii:mystery")), ColumnAction::Redact);
        assert_eq!(dev.column_action("s", "t", "x", Some("no tag")), ColumnAction::Detect);
        assert_eq!(dev.unclassified_action(), ColumnAction::Detect);
    }

    fn claims(pairs: &[(&str, serde_json::Value)]) -> crate::identity::Claims {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn claims_select_rules_and_identity_blocks() {
        let p = parse(
            r#"
version = 1
[defaults]
action = "redact"
[[rule]]
name = "main-sees-emails"
identities = ["ci-*"]
claims = { repository = "acme/*", ref = "refs/heads/main", run_attempt = 1, fork = false }
column_names = ["email"]
action = "allow"
[[rule]]
name = "verified-sees-cities"
claims = {}
column_names = ["city"]
action = "allow"
[[identity]]
name = "ci-*"
claims = { ref = "refs/heads/main" }
[[identity]]
name = "ci-*"
read_only = true
"#,
        )
        .unwrap();
        let main = claims(&[
            ("repository", json!("acme/shop")),
            ("ref", json!("refs/heads/main")),
            ("run_attempt", json!(1)),
            ("fork", json!(false)),
        ]);
        let email = |identity: &str, c: Option<&crate::identity::Claims>| {
            p.for_session(identity, c, "db:5432").column_action("public", "customers", "email", None)
        };
        assert_eq!(email("ci-build", Some(&main)), ColumnAction::Allow);
        // Every listed claim must match.
        let mut feature = main.clone();
        feature.insert("ref".into(), json!("refs/heads/feature"));
        assert_eq!(email("ci-build", Some(&feature)), ColumnAction::Redact);
        // Claim patterns are case-sensitive (unlike identity globs).
        let mut shouting = main.clone();
        shouting.insert("ref".into(), json!("refs/heads/MAIN"));
        assert_eq!(email("CI-build", Some(&shouting)), ColumnAction::Redact);
        assert_eq!(email("CI-build", Some(&main)), ColumnAction::Allow);
        // Non-string claims compare as their JSON text; a missing claim or
        // one of another value does not match.
        let mut retried = main.clone();
        retried.insert("run_attempt".into(), json!(2));
        assert_eq!(email("ci-build", Some(&retried)), ColumnAction::Redact);
        let mut no_fork = main.clone();
        no_fork.remove("fork");
        assert_eq!(email("ci-build", Some(&no_fork)), ColumnAction::Redact);
        // The identity globs still apply.
        assert_eq!(email("agent", Some(&main)), ColumnAction::Redact);
        // Fail closed: without a verified token no rule with `claims`
        // applies, not even `claims = {}`.
        assert_eq!(email("ci-build", None), ColumnAction::Redact);
        let city = |c: Option<&crate::identity::Claims>| {
            p.for_session("anyone", c, "db:5432").column_action("s", "t", "city", None)
        };
        let none = claims(&[]);
        assert_eq!(city(Some(&none)), ColumnAction::Allow);
        assert_eq!(city(None), ColumnAction::Redact);
        // `[[identity]]` blocks: the first whose name and claims match.
        let read_only = |c: Option<&crate::identity::Claims>| {
            p.for_session("ci-build", c, "db:5432").guardrails().map(|g| g.read_only)
        };
        assert_eq!(read_only(Some(&main)), Some(false));
        assert_eq!(read_only(Some(&feature)), Some(true));
        assert_eq!(read_only(None), Some(true));
    }

    #[test]
    fn bad_claim_values_have_exact_errors() {
        let rule = |claims: &str| {
            err(&format!(
                "version = 1\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\naction = \"allow\"\nclaims = {claims}\n"
            ))
        };
        assert_eq!(
            rule("{ ref = [\"refs/heads/main\"] }"),
            "policy.toml:6:18: claim `ref`: expected a string pattern (globs * and ?), found an array"
        );
        assert_eq!(
            rule("{ repository = { name = \"acme\" } }"),
            "policy.toml:6:25: claim `repository`: expected a string pattern (globs * and ?), found a table"
        );
        assert_eq!(rule("{ ref = \"\" }"), "policy.toml:6:18: claim `ref`: empty pattern");
        assert_eq!(
            rule("{ ratio = 1.5 }"),
            "policy.toml:6:20: claim `ratio`: expected a string pattern (globs * and ?), found a float"
        );
        let e = rule("\"refs/heads/main\"");
        assert!(e.starts_with("policy.toml:6:10: invalid type: string"), "{e}");
        let e = err("version = 1\n[[identity]]\nname = \"ci\"\nclaims = { ref = [] }\n");
        assert_eq!(e, "policy.toml:4:18: claim `ref`: expected a string pattern (globs * and ?), found an array");
    }

    #[test]
    fn key_file_and_short_keys() {
        let dir = std::env::temp_dir().join(format!("masker-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "short\n").unwrap();
        let text = format!(
            "version = 1\n[pseudonymize]\nkey_file = \"{}\"\n[[rule]]\nname = \"x\"\ncolumn_names = [\"a\"]\naction = \"pseudonymize\"\n",
            key.display()
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message().contains("shorter than 16 bytes") && !e.message().contains("short\n"), "{e}");
        std::fs::write(&key, "a-much-longer-secret-key-value\n").unwrap();
        assert!(parse(&text).unwrap().keys().has_pseudonym_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_egress_lock_and_allowlist() {
        let p = parse(
            "version = 1\n[[identity]]\nname = \"ci-*\"\negress = \"targets-only\"\n\
             allow_egress = [\"10.0.0.53/32:53\", \"0.0.0.0/0:443\"]\n[[identity]]\nname = \"*\"\n",
        )
        .unwrap();
        let lock = p.egress_for("ci-job", None).expect("ci-job is locked");
        let allowed: Vec<String> = lock.allow.iter().map(|n| n.to_string()).collect();
        assert_eq!(allowed, ["10.0.0.53/32:53", "0.0.0.0/0:443"]);
        assert_eq!(p.egress_for("dev", None), None, "the second block has no lock");
        let locked_only = parse("version = 1\n[[identity]]\nname = \"a\"\negress = \"targets-only\"\n").unwrap();
        assert_eq!(locked_only.egress_for("a", None), Some(crate::interception::EgressLock { allow: vec![] }));

        assert_eq!(
            err("version = 1\n[[identity]]\nname = \"a\"\negress = \"closed\"\n"),
            "policy.toml:4:10: expected \"targets-only\" or \"open\""
        );
        assert!(
            err("version = 1\n[[identity]]\nname = \"a\"\nallow_egress = [\"*:53\"]\n").contains("needs `egress"),
            "allow_egress without the lock"
        );
        let e = err(
            "version = 1\n[[identity]]\nname = \"a\"\negress = \"targets-only\"\nallow_egress = [\"10.0.0.1/8:53\"]\n",
        );
        assert!(e.starts_with("policy.toml:5:") && e.contains("host bits"), "{e}");
    }

    #[test]
    fn identity_targets_databases_users() {
        let p = parse(
            "version = 1\n[[identity]]\nname = \"ci-read\"\ntargets = [\"db.internal:5432\"]\n\
             databases = [\"app\", \"app_*\"]\nusers = [\"reader\"]\n[[identity]]\nname = \"*\"\n",
        )
        .unwrap();
        let s = p.for_session("ci-read", None, "10.0.0.5:5432");
        let g = s.guardrails().unwrap();
        let t = ["db.internal:5432", "10.0.0.5:5432"];
        assert_eq!(g.connect_refusal("ci-read", &t, "app_test", "reader"), None);
        assert_eq!(
            g.connect_refusal("ci-read", &t, "prod_admin", "reader").unwrap(),
            "masker: identity ci-read may not connect to database prod_admin (rule: identity ci-read)"
        );
        assert_eq!(
            g.connect_refusal("ci-read", &t, "app", "postgres").unwrap(),
            "masker: identity ci-read may not connect to database user postgres (rule: identity ci-read)"
        );
        assert_eq!(
            g.connect_refusal("ci-read", &["other:5432", "10.0.0.6:5432"], "app", "reader").unwrap(),
            "masker: identity ci-read may not connect to target other:5432 (rule: identity ci-read)"
        );
        // The address connected to matches as well as the configured name.
        assert_eq!(g.connect_refusal("ci-read", &["x:1", "db.internal:5432"], "app", "reader"), None);
        // A block without the keys allows everything.
        let other = p.for_session("release", None, "10.0.0.5:5432");
        assert_eq!(other.guardrails().unwrap().connect_refusal("release", &t, "prod_admin", "postgres"), None);
        // Bad values are precise errors.
        assert_eq!(
            err("version = 1\n[[identity]]\nname = \"a\"\ndatabases = []\n"),
            "policy.toml:4:13: empty `databases` list; remove it or add entries"
        );
        assert_eq!(
            err("version = 1\n[[identity]]\nname = \"a\"\ntargets = [\"db\"]\n"),
            "policy.toml:4:12: expected a \"host:port\" glob (e.g. \"db.internal:5432\" or \"*:5432\")"
        );
        assert_eq!(err("version = 1\n[[identity]]\nname = \"a\"\nusers = [\"\"]\n"), "policy.toml:4:10: empty pattern");
        assert!(err("version = 1\n[[identity]]\nname = \"a\"\nusers = \"x\"\n").starts_with("policy.toml:4:9:"));
    }

    #[test]
    fn globs() {
        let g = Glob::new("*email*").unwrap();
        assert!(g.matches("email") && g.matches("Work_EMAIL_addr") && !g.matches("mail"));
        let g = Glob::new("ci-?-*").unwrap();
        assert!(g.matches("ci-a-build") && !g.matches("ci-ab-build"));
        assert!(Glob::new("*").unwrap().matches(""));
    }

    #[test]
    fn approval_rules() {
        let p = parse(
            r#"version = 1
[[approval]]
name = "orders-writes"
identities = ["ci-*"]
classes = ["update", "delete"]
tables = ["public.orders"]
timeout = "90s"
[[approval]]
name = "raw-ssn"
columns = ["public.customers.ssn"]
"#,
        )
        .unwrap();
        let ci = p.for_session("ci-bot", None, "db:5432");
        let names: Vec<&str> = ci.approvals().iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["orders-writes", "raw-ssn"]);
        assert_eq!(ci.approvals()[0].timeout, std::time::Duration::from_secs(90));
        assert_eq!(ci.approvals()[1].timeout, DEFAULT_APPROVAL_TIMEOUT);
        let other = p.for_session("release", None, "db:5432");
        assert_eq!(other.approvals().len(), 1, "identities limit a rule");

        let head = "version = 1\n[[approval]]\nname = \"a\"\n";
        assert!(err(head).contains("approval rule holds nothing"), "{}", err(head));
        let e = err(&format!("{head}classes = [\"writes\"]"));
        assert!(e.contains("4:") && e.contains("unknown statement class"), "{e}");
        let e = err(&format!("{head}classes = [\"update\"]\ntimeout = \"5x\""));
        assert!(e.contains("invalid duration"), "{e}");
        let e = err(&format!("{head}classes = [\"update\"]\ntimeout = \"2h\""));
        assert!(e.contains("between 1s and 1h"), "{e}");
        let e = err(&format!("{head}columns = [\"customers.ssn\"]"));
        assert!(e.contains("schema.table.column"), "{e}");
        let e = err(&format!("{head}tables = []"));
        assert!(e.contains("empty `tables` list"), "{e}");
        let e = err("version = 1\n[[approval]]\nname = \"a b\"\nclasses = [\"update\"]");
        assert!(e.contains("invalid approval name"), "{e}");
    }
}
