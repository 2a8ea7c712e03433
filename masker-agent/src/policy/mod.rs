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

pub mod approval;
mod compile;
pub mod error;
pub mod glob;
pub mod guardrails;
mod schema;

use std::sync::Arc;

use crate::masking::{ColumnAction, Keys};
use approval::ApprovalRule;
use glob::{ClaimsMatch, Glob};
use guardrails::Guardrails;

pub use error::PolicyError;

/// Looks up an environment variable (injectable for tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    defaults: Defaults,
    rules: Vec<Rule>,
    /// `[[identity]]` blocks in file order: the first whose pattern matches
    /// a session's identity applies to it.
    identities: Vec<(Glob, Option<ClaimsMatch>, Arc<Guardrails>)>,
    /// `[[approval]]` rules in file order.
    approvals: Vec<Arc<ApprovalRule>>,
    keys: Keys,
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
    /// Column names the rules mask (for scrubbing definitions).
    classified: crate::masking::ClassifiedNames,
}

/// The column names that masking rules select, for scrubbing definitions.
fn classified_names(rules: &[Rule]) -> crate::masking::ClassifiedNames {
    let globs: Vec<Glob> = rules
        .iter()
        .filter(|r| r.action != ColumnAction::Allow)
        .flat_map(|r| r.columns.iter().map(|[_, _, c]| c.clone()).chain(r.column_names.iter().cloned()))
        .collect();
    crate::masking::ClassifiedNames::new(move |c| globs.iter().any(|g| g.matches(c)))
}

/// How a base column is classified: its action, and whether a rule or a
/// `pii:` comment (not `defaults.action`) decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// What is done to the column's values.
    pub action: ColumnAction,
    /// A rule or a column comment chose the action.
    pub classified: bool,
}

impl Policy {
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
        let rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| applies(&r.identities, identity) && applies(&r.targets, target) && claims_match(&r.claims))
            .cloned()
            .collect();
        let guardrails =
            self.identities.iter().find(|(g, c, _)| g.matches(identity) && claims_match(c)).map(|(_, _, g)| g.clone());
        let approvals = self.approvals.iter().filter(|a| applies(&a.identities, identity)).cloned().collect();
        let classified = classified_names(&rules);
        Arc::new(SessionPolicy {
            defaults: self.defaults.clone(),
            rules,
            guardrails,
            approvals,
            keys: self.keys.clone(),
            classified,
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
    #[cfg(test)]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The `[[identity]]` blocks (their `name` patterns, in file order) whose
    /// sessions are only observed (`mode = "observe"`): relayed unchanged,
    /// with what enforcing would do recorded. A block with `claims` applies
    /// only to tokens that match them (`name` is followed by ` (claims)`).
    pub fn observing(&self) -> Vec<String> {
        self.identities
            .iter()
            .filter(|(_, _, g)| g.mode == guardrails::Mode::Observe)
            .map(|(_, c, g)| if c.is_some() { format!("{} (claims)", g.name) } else { g.name.clone() })
            .collect()
    }

    /// A one-line description for `masker policy check` and logs.
    #[cfg(test)]
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
            classified: classified_names(&[]),
        })
    }

    /// The action for `schema.table.column` and whether a rule or a column
    /// comment (rather than `defaults.action`) chose it.
    pub fn classification(&self, schema: &str, table: &str, column: &str, comment: Option<&str>) -> Classification {
        let tag = if self.defaults.comment_classification { comment.and_then(pii_tag) } else { None };
        let classified = self.matching_rule(schema, table, column, tag).is_some() || tag.is_some();
        Classification { action: self.column_action(schema, table, column, comment), classified }
    }

    /// The column names masking rules select, for scrubbing literals out of
    /// catalog definitions.
    pub fn classified_names(&self) -> crate::masking::ClassifiedNames {
        self.classified.clone()
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

    /// Whether the session's identity block says `mode = "observe"`: relay
    /// everything unchanged and record what enforcing would have done.
    pub fn observes(&self) -> bool {
        self.guardrails.as_ref().is_some_and(|g| g.mode == guardrails::Mode::Observe)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::Generalize;
    use approval::DEFAULT_APPROVAL_TIMEOUT;
    use serde_json::json;
    use std::path::Path;

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
        // The rollout block observes; the others enforce.
        assert!(p.for_session("ci-newteam-7", None, "db:5432").observes());
        assert!(!ci.observes());
        assert_eq!(p.observing(), ["ci-newteam-*"]);
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
    fn identity_mode_enforce_or_observe() {
        let p = parse(
            "version = 1\n[[identity]]\nname = \"ci-rollout-*\"\nmode = \"observe\"\n\
             [[identity]]\nname = \"ci-*\"\nmode = \"enforce\"\n[[identity]]\nname = \"main\"\n\
             claims = { ref = \"refs/heads/main\" }\nmode = \"observe\"\n",
        )
        .unwrap();
        assert!(p.for_session("ci-rollout-1", None, "db:5432").observes());
        assert!(!p.for_session("ci-build", None, "db:5432").observes());
        // No block, or a block without `mode`: enforce (the default).
        assert!(!p.for_session("release", None, "db:5432").observes());
        assert!(!parse("version = 1\n[[identity]]\nname = \"x\"\n").unwrap().for_session("x", None, "d:1").observes());
        // A block with claims observes only sessions whose token matches.
        let main = claims(&[("ref", json!("refs/heads/main"))]);
        assert!(p.for_session("main", Some(&main), "db:5432").observes());
        assert!(!p.for_session("main", None, "db:5432").observes());
        assert_eq!(p.observing(), ["ci-rollout-*", "main (claims)"]);
        assert_eq!(
            err("version = 1\n[[identity]]\nname = \"a\"\nmode = \"audit\"\n"),
            "policy.toml:4:8: expected \"enforce\" (the default) or \"observe\""
        );
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
