//! Column plans: what each result column of a statement is masked with,
//! decided from the policy, the server's catalog and the statement's SQL
//! lineage.
//!
//! [`PlanContext`] is what a session plans with; its methods live with the
//! part of the work they do: [`lineage`] (decisions per output column, and
//! the statements refused or held before they run), [`columns`] (the
//! [`crate::masking::RowPlan`] of a RowDescription) and [`copy`] (the plan of
//! a `COPY ... TO STDOUT`). [`catalog`] resolves table oids and relation
//! names with the agent's own connection to the server. [`explain`] is
//! `masker explain`: the same decisions, with their reasons.

pub mod catalog;
pub mod columns;
pub mod copy;
pub mod explain;
pub mod lineage;

use std::sync::Arc;

use crate::addr::TargetAddr;
use crate::policy::SessionPolicy;
use catalog::Catalog;

/// What a session plans with: its policy, the catalog, and where its
/// server is (the destination connected to, and the database).
pub struct PlanContext {
    /// The rules that apply to the session.
    pub policy: Arc<SessionPolicy>,
    /// Catalog look-ups of the agent.
    pub catalog: Arc<Catalog>,
    /// The server the session is connected to (`host:port`).
    pub destination: TargetAddr,
    /// The database of the session.
    pub database: String,
    /// The database user the session logged in as (`$user` in search_path).
    pub user: String,
}
