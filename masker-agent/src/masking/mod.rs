//! The masking engine: what to do with each cell of a result.
//!
//! Pure functions over buffers, no I/O. The session builds a [`RowPlan`] from
//! each RowDescription (one [`ColumnAction`] per output column, from the
//! policy) and calls [`mask_data_row_counted`] for every DataRow; COPY data goes
//! through a [`CopyMasker`]; NotificationResponse payloads through
//! [`mask_notification`] (errors and notices are decided per statement by the
//! session: as sent, or their text withheld).
//!
//! Every masked value stays valid for its column type in both the text and
//! the binary format. When an action cannot be applied (a type the engine
//! does not know, a value it cannot decode), the cell becomes NULL: the
//! engine fails closed, never open.
//!
//! Modules, in the order a value meets them: [`types`] (which codec a type
//! OID selects), `cell` (one action on one value), [`codec`] (text and binary
//! encodings), [`detect`] (content detectors), [`pseudonym`] (keyed tokens),
//! `row` (DataRow), `copy` (COPY TO STDOUT), `scrub` (errors, notices,
//! notifications).

mod action;
mod cell;
pub mod codec;
mod copy;
pub mod detect;
pub mod pseudonym;
mod row;
mod scrub;
pub mod types;

pub use action::{ActionKind, ClassifiedNames, ColumnAction, Generalize, RowStats};
pub use copy::{CopyMasker, CopyOptions, CopyPlan};
pub use pseudonym::Keys;
pub use row::{RowPlan, mask_data_row_counted};
pub use scrub::{mask_notification, scrub_text};

#[cfg(test)]
mod tests;
