//! `[[approval]]` rules: which statements wait for an operator (the waiting
//! itself is [`crate::approvals`]).

use super::glob::{Glob, TableGlob};
use crate::sql::StatementClass;

/// An `[[approval]]` rule: statements that wait for an operator's decision
/// (`masker approvals approve|deny`) before they run. A statement is held
/// when every condition the rule lists holds for one of its statements.
#[derive(Debug, Clone)]
pub struct ApprovalRule {
    /// Named in `masker approvals list`, audit events and errors.
    pub name: String,
    pub(crate) identities: Option<Vec<Glob>>,
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

/// How long a client waits for an approval unless the rule says otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The longest wait a rule may ask for (clients and poolers give up sooner).
pub(crate) const MAX_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
