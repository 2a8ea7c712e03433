//! The plan of a result's columns: one [`ColumnAction`] per column of a
//! RowDescription, from its origin in the catalog and the statement's
//! lineage.

use std::collections::HashMap;
use std::sync::Arc;

use super::PlanContext;
use super::catalog::CatalogError;
use super::lineage::{Decision, origin_action};
use crate::masking::{ColumnAction, RowPlan};
use crate::session::track::model::SessionModel;
use crate::wire::{FieldDescription, ResultFormats, TableOid};

impl PlanContext {
    /// The masking plan for columns `fields` in `formats` (or the formats
    /// the fields carry). `sql`: the statement text and the index of the
    /// statement in it, for lineage (output columns computed from masked
    /// columns are masked); `None` fails closed on computed columns. When
    /// the catalog cannot be read every table column is masked (fail
    /// closed) and the error is returned with the plan for the caller to
    /// report.
    pub async fn row_plan(
        &self,
        session: &SessionModel,
        fields: &[FieldDescription],
        formats: Option<&ResultFormats>,
        sql: Option<(&str, usize)>,
    ) -> (Arc<RowPlan>, Option<CatalogError>) {
        let decisions = match sql {
            Some((sql, index)) => Some(self.resolver(session).decisions(sql, index, fields.len()).await),
            // No statement text known: fail closed on computed columns.
            None => None,
        };
        let mut tables: Vec<TableOid> = fields.iter().map(|f| f.table).filter(|t| t.0 != 0).collect();
        tables.sort();
        tables.dedup();
        let resolved = if tables.is_empty() {
            Ok(HashMap::new())
        } else {
            self.catalog.resolve(&self.destination, &self.database, &tables).await
        };
        let (resolved, error) = match resolved {
            Ok(r) => (r, None),
            Err(e) => (HashMap::new(), Some(e)),
        };
        let policy = &self.policy;
        let columns = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let decision = decisions.as_ref().and_then(|d| d.get(i));
                let action = if let Some(Decision::Force(a)) = decision {
                    a.clone()
                } else if f.table.0 == 0 || f.column < 0 {
                    // No table, or one of its system columns (`tableoid`,
                    // `ctid`, ...: negative attribute numbers the catalog
                    // does not list): the lineage decides.
                    match decision {
                        Some(Decision::Direct(a)) => a.clone(),
                        _ => ColumnAction::Redact,
                    }
                } else {
                    match resolved.get(&f.table).and_then(|cols| cols.get(&f.column)) {
                        // A view column computed from others: its lineage
                        // says more than its origin.
                        Some(info) if info.derived_from_view && matches!(decision, Some(Decision::Direct(_))) => {
                            match decision {
                                Some(Decision::Direct(a)) => a.clone(),
                                _ => ColumnAction::Redact,
                            }
                        }
                        Some(info) => {
                            let base = info.base.as_deref().unwrap_or(info);
                            if let Some(a) = origin_action(policy, session, &base.schema, &base.table, &base.column) {
                                return (a, f.type_oid, formats.map(|fm| fm.for_column(i)).unwrap_or(f.format));
                            }
                            let action =
                                policy.column_action(&base.schema, &base.table, &base.column, base.comment.as_deref());
                            // A view column computed from other columns gets
                            // at least content detection.
                            if info.derived_from_view && action == ColumnAction::Allow {
                                policy.unclassified_action()
                            } else {
                                action
                            }
                        }
                        // Unknown origin: fail closed.
                        None => ColumnAction::Redact,
                    }
                };
                let format = formats.map(|fm| fm.for_column(i)).unwrap_or(f.format);
                (action, f.type_oid, format)
            })
            .collect();
        let plan = RowPlan::new(columns, policy.keys()).with_names(fields.iter().map(|f| f.name.to_string()).collect());
        (Arc::new(plan), error)
    }
}
