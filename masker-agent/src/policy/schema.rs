//! The policy file as written: serde types with the spans of every value,
//! so that [`super::compile`] can say where a problem is.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: Spanned<i64>,
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    pub(super) pseudonymize: Option<Spanned<RawPseudonymize>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub(super) identity: Vec<Spanned<RawIdentity>>,
    #[serde(default)]
    pub(super) approval: Vec<Spanned<RawApproval>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    pub(super) name: Spanned<String>,
    #[allow(dead_code)]
    pub(super) description: Option<String>,
    pub(super) identities: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) classes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) tables: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) columns: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) name: Spanned<String>,
    pub(super) claims: Option<Spanned<RawClaims>>,
    #[serde(default)]
    pub(super) read_only: bool,
    pub(super) deny_classes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) deny_tables: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) deny_functions: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) writing_functions: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) databases: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) users: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) notifications: Option<Spanned<String>>,
    pub(super) egress: Option<Spanned<String>>,
    pub(super) allow_egress: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) mode: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) action: Option<DefaultAction>,
    pub(super) comment_classification: Option<bool>,
    pub(super) refuse_inference: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum DefaultAction {
    Detect,
    Allow,
    Redact,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPseudonymize {
    pub(super) key_env: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    #[allow(dead_code)]
    pub(super) description: Option<String>,
    pub(super) columns: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) column_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) action: Spanned<ActionName>,
    pub(super) keep_first: Option<Spanned<u16>>,
    pub(super) keep_last: Option<Spanned<u16>>,
    pub(super) format_preserving: Option<Spanned<bool>>,
    pub(super) to: Option<Spanned<GeneralizeTo>>,
    pub(super) bucket: Option<Spanned<u64>>,
    pub(super) ipv4_prefix: Option<Spanned<u8>>,
    pub(super) ipv6_prefix: Option<Spanned<u8>>,
    pub(super) identities: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) claims: Option<Spanned<RawClaims>>,
}

/// `claims = { name = "pattern", ... }` as written.
pub(super) type RawClaims = std::collections::BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum ActionName {
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
pub(super) enum GeneralizeTo {
    Hour,
    Day,
    Month,
    Year,
    Network,
    Bucket,
}
