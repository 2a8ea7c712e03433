//! The plan of a `COPY ... TO STDOUT`: the table's columns (from the
//! statement and the catalog) with their actions, in the format the server
//! announced.

use super::PlanContext;
use super::catalog::{CatalogError, ColumnInfo};
use crate::masking::{self, CopyMasker};
use crate::sql::copy::{CopyFormat, CopyParseError, parse_copy_to_stdout};
use crate::wire::{Cursor, FrameError, TypeOid, backend};

/// Why a COPY's output cannot be masked; the client is told, with no value
/// in the message.
#[derive(Debug, thiserror::Error)]
pub enum CopyPlanError {
    /// The statement is not a form whose columns are exactly a table's.
    #[error("{0}")]
    Statement(#[from] CopyParseError),
    /// The server's CopyOutResponse is malformed.
    #[error("{0}")]
    Response(#[from] FrameError),
    /// The table's columns could not be read.
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    /// The column list names a column the table does not have.
    #[error("unknown column {0:?}")]
    UnknownColumn(String),
    /// The statement that answers with COPY data is not known.
    #[error("the COPY statement is unknown")]
    UnknownStatement,
}

impl PlanContext {
    /// The masker for the COPY data that answers `sql`, whose
    /// CopyOutResponse body is `response`.
    pub async fn copy_masker(&self, sql: &str, response: &[u8]) -> Result<CopyMasker, CopyPlanError> {
        let copy = parse_copy_to_stdout(sql)?;
        let mut cur = Cursor::new(response, backend::COPY_OUT_RESPONSE);
        let overall = cur.u8()?;
        let columns = self
            .catalog
            .relation_columns(&self.destination, &self.database, copy.schema.as_deref(), &copy.table)
            .await?;
        let selected: Vec<&(String, TypeOid, ColumnInfo)> = match &copy.columns {
            None => columns.iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| columns.iter().find(|c| &c.0 == n).ok_or_else(|| CopyPlanError::UnknownColumn(n.clone())))
                .collect::<Result<_, _>>()?,
        };
        let policy = &self.policy;
        let plan = selected
            .iter()
            .map(|(_, ty, info)| {
                let base = info.base.as_deref().unwrap_or(info);
                (policy.column_action(&base.schema, &base.table, &base.column, base.comment.as_deref()), *ty)
            })
            .collect();
        let options = match (overall, copy.format) {
            (1, _) | (_, CopyFormat::Binary) => masking::CopyOptions::binary(),
            (_, CopyFormat::Csv { header }) => masking::CopyOptions { header, ..masking::CopyOptions::csv() },
            (_, CopyFormat::Text) => masking::CopyOptions::text(),
        };
        Ok(CopyMasker::new(masking::CopyPlan::new(options, plan, policy.keys())))
    }
}
