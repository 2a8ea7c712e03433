//! Result rows: the per-result-set plan and the DataRow rewrite.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::action::{ColumnAction, RowStats};
use super::cell::{Outcome, mask_cell};
use super::pseudonym::Keys;
use super::types::{PgType, classify};
use crate::wire::{self, Format, FrameError, TypeOid};

/// Why a message could not be masked. The relay must not forward the
/// original: it refuses the statement instead (fail closed). Never carries a
/// value from the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError {
    kind: MaskErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MaskErrorKind {
    Frame(FrameError),
    ColumnCount { expected: usize, got: usize },
    Copy(&'static str),
    RowTooLarge { limit: usize },
}

impl MaskError {
    pub(crate) fn copy(what: &'static str) -> MaskError {
        MaskError { kind: MaskErrorKind::Copy(what) }
    }

    pub(crate) fn too_large(limit: usize) -> MaskError {
        MaskError { kind: MaskErrorKind::RowTooLarge { limit } }
    }

    /// Whether the message did not match the plan (column count), as opposed
    /// to being malformed.
    #[cfg(test)]
    pub fn is_plan_mismatch(&self) -> bool {
        matches!(self.kind, MaskErrorKind::ColumnCount { .. })
    }
}

impl From<FrameError> for MaskError {
    fn from(e: FrameError) -> Self {
        MaskError { kind: MaskErrorKind::Frame(e) }
    }
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MaskErrorKind::Frame(e) => e.fmt(f),
            MaskErrorKind::ColumnCount { expected, got } => {
                write!(f, "row has {got} columns but the column plan has {expected}")
            }
            MaskErrorKind::Copy(what) => write!(f, "malformed COPY data: {what}"),
            MaskErrorKind::RowTooLarge { limit } => write!(f, "COPY row exceeds the limit of {limit} bytes"),
        }
    }
}

impl std::error::Error for MaskError {}

#[derive(Debug, Clone)]
pub(crate) struct ColPlan {
    pub action: ColumnAction,
    pub ty: PgType,
    pub format: Format,
}

/// How to mask every row of one result set: one action, type and format per
/// output column, in RowDescription order. Built once per RowDescription.
#[derive(Debug, Clone)]
pub struct RowPlan {
    cols: Vec<ColPlan>,
    keys: Keys,
    passthrough: bool,
    /// Output column names (from RowDescription), for per-column counts.
    names: Vec<String>,
}

impl RowPlan {
    /// A plan for columns given as (action, type OID, format). Types the
    /// engine does not know get NULL under any action but `Allow`.
    pub fn new(cols: Vec<(ColumnAction, TypeOid, Format)>, keys: &Keys) -> RowPlan {
        let cols: Vec<ColPlan> =
            cols.into_iter().map(|(action, oid, format)| ColPlan { action, ty: classify(oid), format }).collect();
        let passthrough = cols.iter().all(|c| c.action == ColumnAction::Allow);
        RowPlan { cols, keys: keys.clone(), passthrough, names: Vec::new() }
    }

    /// Names the columns (as RowDescription does) for per-column counts.
    pub fn with_names(mut self, names: Vec<String>) -> RowPlan {
        self.names = names;
        self
    }

    /// The name of column `i`, if the plan was given names.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// Whether every column is allowed: rows can be forwarded untouched.
    pub fn is_passthrough(&self) -> bool {
        self.passthrough
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// The action of column `i`.
    pub fn action(&self, i: usize) -> Option<&ColumnAction> {
        self.cols.get(i).map(|c| &c.action)
    }
}

/// Masks one cell value `v` of column `col`, appending length + value (or -1)
/// to `out` and counting it in `stats`; returns whether it counted (the cell
/// was masked or fell back to NULL).
pub(crate) fn put_masked_cell(col: &ColPlan, keys: &Keys, v: &[u8], out: &mut BytesMut, stats: &mut RowStats) -> bool {
    if col.action == ColumnAction::Allow {
        out.put_i32(v.len() as i32);
        out.extend_from_slice(v);
        return false;
    }
    let len_at = out.len();
    out.put_i32(0);
    let outcome = mask_cell(&col.action, col.ty, col.format, keys, v, out);
    match outcome {
        Outcome::Same => out.extend_from_slice(v),
        Outcome::Wrote { .. } => {}
        Outcome::Null | Outcome::Fallback => {
            out.truncate(len_at);
            out.put_i32(-1);
        }
    }
    let counted = count(col, outcome, stats);
    if !matches!(outcome, Outcome::Null | Outcome::Fallback) {
        let n = (out.len() - len_at - 4) as i32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
    }
    counted
}

/// Counts a cell's outcome in `stats`; returns whether it counted.
pub(crate) fn count(col: &ColPlan, outcome: Outcome, stats: &mut RowStats) -> bool {
    let Some(kind) = col.action.kind() else { return false };
    match outcome {
        Outcome::Same | Outcome::Wrote { changed: false } => {
            if kind == super::action::ActionKind::Detect {
                return false;
            }
            stats.bump(kind);
        }
        Outcome::Wrote { changed: true } | Outcome::Null => stats.bump(kind),
        Outcome::Fallback => stats.fallback_null += 1,
    }
    true
}

/// [`mask_data_row_counted`] without per-column counts.
#[cfg(test)]
pub fn mask_data_row(plan: &RowPlan, body: &[u8], out: &mut BytesMut) -> Result<RowStats, MaskError> {
    mask_data_row_counted(plan, body, out, &mut [])
}

/// Rewrites one DataRow: reads the message *body* and appends a complete
/// DataRow message (tag, length, body) to `out` with every cell masked by
/// `plan`. NULL cells stay NULL. Each column's masked cells (fallback NULLs
/// included) are added to `per_column[i]` (ignored when shorter than the
/// plan).
///
/// On error nothing is appended to `out`; the caller must not forward the
/// original row (fail closed). A row whose cell count differs from the plan
/// is an error. No allocation on the common path (text and scalar values);
/// arrays and detected values in bytea allocate scratch space.
pub fn mask_data_row_counted(
    plan: &RowPlan,
    body: &[u8],
    out: &mut BytesMut,
    per_column: &mut [u64],
) -> Result<RowStats, MaskError> {
    let start = out.len();
    let res = write_row(plan, body, out, per_column);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn write_row(plan: &RowPlan, body: &[u8], out: &mut BytesMut, per_column: &mut [u64]) -> Result<RowStats, MaskError> {
    let (n, mut cells) = wire::data_row_cells(body)?;
    if n as usize != plan.cols.len() {
        return Err(MaskError { kind: MaskErrorKind::ColumnCount { expected: plan.cols.len(), got: n as usize } });
    }
    out.reserve(body.len() + 5 + body.len() / 4);
    let at = wire::begin_message(out, wire::backend::DATA_ROW);
    out.put_i16(n as i16);
    let mut stats = RowStats::default();
    let per_column = if per_column.len() >= plan.cols.len() { per_column } else { &mut [] };
    for (i, col) in plan.cols.iter().enumerate() {
        match cells.next().transpose()?.flatten() {
            None => out.put_i32(-1),
            Some(v) => {
                if put_masked_cell(col, &plan.keys, v, out, &mut stats)
                    && let Some(n) = per_column.get_mut(i)
                {
                    *n += 1;
                }
            }
        }
    }
    if !cells.finished() {
        return Err(FrameError::BadBody { tag: wire::backend::DATA_ROW, what: "bytes after the last column" }.into());
    }
    wire::finish_message(out, at);
    Ok(stats)
}
