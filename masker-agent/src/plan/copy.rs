//! The plan of a `COPY ... TO STDOUT`: one action (and type) per column of
//! the data — a table's columns (from the statement and the catalog, or the
//! session's own temporary table) or a query's output columns (from its
//! lineage) — in the layout the statement asked for.

use super::PlanContext;
use super::lineage::Decision;
use crate::masking::{self, ColumnAction, CopyMasker};
use crate::session::track::model::SessionModel;
use crate::sql::copy::{CopyFormat, CopyParseError, CopySource, parse_copy_to_stdout};
use crate::wire::{Cursor, FrameError, TypeOid, backend};

/// Why a COPY's output cannot be masked; the client is told, with no value
/// in the message.
#[derive(Debug, thiserror::Error)]
pub enum CopyPlanError {
    /// The statement is not a form masker masks.
    #[error("{0}")]
    Statement(#[from] CopyParseError),
    /// The server's CopyOutResponse is malformed.
    #[error("{0}")]
    Response(#[from] FrameError),
    /// The table or its columns could not be resolved.
    #[error("the table's columns cannot be resolved")]
    Columns,
    /// The data's columns do not match the statement's.
    #[error("the server sends {sent} columns where the statement has {planned}")]
    Count { sent: usize, planned: usize },
    /// The statement that answers with COPY data is not known.
    #[error("the COPY statement is unknown")]
    UnknownStatement,
}

impl PlanContext {
    /// The masker for the COPY data that answers statement `index` of
    /// `sql`, whose CopyOutResponse body is `response`.
    pub async fn copy_masker(
        &self,
        session: &SessionModel,
        sql: &str,
        index: usize,
        response: &[u8],
    ) -> Result<CopyMasker, CopyPlanError> {
        let copy = parse_copy_to_stdout(sql, index)?;
        let mut cur = Cursor::new(response, backend::COPY_OUT_RESPONSE);
        let overall = cur.u8()?;
        let sent = usize::try_from(cur.i16()?).unwrap_or(0);
        let resolver = self.resolver(session);
        let plan: Vec<(ColumnAction, TypeOid)> = match &copy.source {
            CopySource::Table { relation, columns } => {
                resolver.copy_columns(relation, columns.as_deref()).await.ok_or(CopyPlanError::Columns)?
            }
            CopySource::Query => {
                let analysis = crate::sql::analyze(sql);
                let stmt = analysis
                    .as_ref()
                    .as_ref()
                    .ok()
                    .and_then(|a| a.statements.get(index))
                    .ok_or(CopyPlanError::UnknownStatement)?;
                let types = resolver.output_types(stmt, sent).await;
                resolver
                    .decisions_for(stmt, sent)
                    .await
                    .into_iter()
                    .zip(types)
                    .map(|(d, ty)| match d {
                        // A column that is exactly a table column has its
                        // type; for a computed one none is known, and a
                        // masked value the type needs becomes NULL.
                        Decision::Direct(a) | Decision::Force(a) => (a, ty.unwrap_or(TypeOid(0))),
                    })
                    .collect()
            }
        };
        if plan.len() != sent {
            return Err(CopyPlanError::Count { sent, planned: plan.len() });
        }
        let mut options = match (overall, copy.format) {
            (1, _) | (_, CopyFormat::Binary) => masking::CopyOptions::binary(),
            (_, CopyFormat::Csv { header }) => masking::CopyOptions { header, ..masking::CopyOptions::csv() },
            (_, CopyFormat::Text) => masking::CopyOptions { header: copy.text_header, ..masking::CopyOptions::text() },
        };
        if let Some(d) = copy.delimiter {
            options.delimiter = d;
        }
        if let Some(n) = copy.null {
            options.null = n;
        }
        if let Some(q) = copy.quote {
            options.quote = q;
            // ESCAPE defaults to QUOTE.
            options.escape = q;
        }
        if let Some(e) = copy.escape {
            options.escape = e;
        }
        Ok(CopyMasker::new(masking::CopyPlan::new(options, plan, self.policy.keys())))
    }
}
