//! The audit trail: one structured event per session start and end, per
//! statement, per denial and per approval decision, as JSON Lines.
//!
//! # Schema (version 1)
//!
//! Every line is one JSON object with these common fields:
//!
//! | field      | type   | meaning                                               |
//! |------------|--------|-------------------------------------------------------|
//! | `v`        | number | schema version, `1`                                   |
//! | `ts`       | string | UTC time the event was recorded, RFC 3339 (ms)        |
//! | `event`    | string | `session_start`, `session_end`, `statement`, `denial`, `approval` |
//! | `session`  | number | session id (as `masker sessions` shows it)            |
//! | `identity` | string or null | workload identity                             |
//! | `mode`     | string | `observe` on every event of a session whose identity is in observe mode (`mode = "observe"` in its `[[identity]]` block); absent otherwise |
//!
//! `session_start`: `client`, `destination`, `cgroup_id`, `cgroup_path`,
//! `pid`, `executable` (from `/proc/PID/exe`; null when unknown, e.g. in proxy
//! mode), `user`, `database`, `tls` (`{"client": bool, "server": bool}`),
//! `issuer` (the `iss` of the OIDC token behind the identity, null without
//! one) and `claims` (an object with the claims the issuer's `audit_claims`
//! name, default `sub`, `repository`, `ref`, as the token has them; null
//! without a token). Claims describing a person cannot be listed there.
//!
//! `session_end`: the `session_start` fields (without `issuer` and `claims`)
//! plus `bytes_from_client`, `bytes_to_client`, `statements`, `rows`,
//! `masked_cells`, `duration_ms`, `outcome` (`ok` or `error`) and `error`
//! (scrubbed, null when ok).
//!
//! `statement`: `statement` (normalized text: every literal replaced by a
//! placeholder, comments removed, at most 4096 bytes), `class` (`select`,
//! `insert`, `ddl`, ... or `unknown`), `tables` (relations as written),
//! `rows` (rows returned), `masked_cells`, `masked` (`{action: count}`),
//! `masked_columns` (`[{"position", "column", "action", "cells"}]`: the
//! result columns with masked cells, by name as the server sent it; cells
//! that fell back to NULL are included; COPY data counts per action only),
//! `outcome` (`ok` or `error`), `command` (the CommandComplete tag's verb),
//! `sqlstate` (on error), `error` (scrubbed message, on error), `duration_ms`.
//! In observe mode nothing is masked (`masked_cells` 0, `masked` and
//! `masked_columns` empty) and `would_mask` says what enforcing would have
//! masked: `{"cells", "by_action", "columns"}`, the same shapes as
//! `masked_cells`, `masked` and `masked_columns`.
//!
//! `denial`: `statement`, `class`, `rule`, `reason`, `sqlstate`. A session
//! refused at its start by its identity's `targets`, `databases` or `users`
//! is a denial with `class` `connect`, `rule` `identity`, an empty
//! `statement` and `sqlstate` `28000`; one from a cgroup whose tag was
//! removed (`masker untag`) the same with `rule` `revoked` (its `identity`
//! is the removed tag's; the `reason` names the tagged cgroup and the pid,
//! and the `session_end` that follows has the connecting task's
//! `cgroup_id`, `cgroup_path` and `pid`).
//! With `mode` `observe` it records what
//! enforcing would have refused or held (`rule` `approval`: an approval
//! rule would have held it; `fast-path`, `replication`: message types a
//! masked session may not use), with the reason and SQLSTATE the client
//! would have got: the statement (or session) went on.
//!
//! `approval`: `approval` (id, as `masker approvals list` shows it), `rule`
//! (the `[[approval]]` rule), `statement`, `class`, `decision` (`requested`
//! when the statement starts to wait, then `approved`, `denied` or `timeout`;
//! `granted` when a standing approval (`--for`) let it run without waiting,
//! with the id of that approval; `abandoned` when the client hung up while
//! it waited: it did not run), `approver`, `reason` (denials; scrubbed).
//!
//! # Guarantees
//!
//! An event never carries a raw value: statements are normalized, error
//! messages are scrubbed with [`crate::masking::scrub_text`], and nothing from rows is
//! recorded but counts. Writing never blocks a session: events go through a
//! bounded channel to a writer thread; when it is full the event is dropped
//! and counted (`masker_audit_events_dropped_total`).

mod event;
pub mod trail;
mod writer;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use event::{ApprovalStep, Event, Outcome, SessionFields, Tls, What, millis};
pub use writer::{AuditError, AuditSettings};

/// The audit trail of one agent or proxy. Disabled until [`Audit::start`].
#[derive(Debug, Default)]
pub struct Audit {
    tx: OnceLock<tokio::sync::mpsc::Sender<String>>,
    /// Events dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Events queued for writing.
    pub written: AtomicU64,
}

impl Audit {
    /// Opens the sinks of `settings` and starts the writer thread (nothing
    /// when no sink is configured). The file is opened now so that a bad
    /// path fails at startup, with its name.
    pub fn start(&self, settings: &AuditSettings) -> Result<(), AuditError> {
        if !settings.enabled() {
            return Ok(());
        }
        if self.tx.get().is_some() {
            return Err(AuditError::AlreadyStarted);
        }
        let tx = writer::start(settings)?;
        self.tx.set(tx).map_err(|_| AuditError::AlreadyStarted)
    }

    /// Whether events are recorded at all (skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Records `event` without waiting; drops (and counts) it when the
    /// writer is behind.
    pub fn emit(&self, event: &Event<'_>) {
        let Some(tx) = self.tx.get() else { return };
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("audit event not serializable: {e}");
                return;
            }
        };
        match tx.try_send(line) {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
