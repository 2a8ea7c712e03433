//! How `masker explain` names an action and a base column: plain values
//! the resolver fills in while it decides ([`super::lineage`]) and explain
//! prints ([`super::explain`]).

use serde::Serialize;

use crate::masking::{ColumnAction, Generalize};

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
