//! masker: a host agent that relays PostgreSQL connections from tagged
//! workloads and masks personal data in everything that flows back.
//!
//! The modules follow one connection along the data path:
//!
//! 1. [`interception`]: eBPF programs redirect tagged cgroups' connections to
//!    the agent and record the original destination, cgroup and pid.
//! 2. `identity`: the workload identity of a tag, backed by a verified
//!    OIDC token.
//! 3. `session`: one connection, from its first packets (TLS towards the
//!    client, the server connection and login) through the relay of both
//!    directions; its trackers follow each result back to its request.
//! 4. `wire`: PostgreSQL message framing and typed message views, pure
//!    functions over buffers.
//! 5. `plan`: what each result column is masked with, from the `policy`,
//!    the server's catalog and the statement's lineage ([`sql`]).
//! 6. `masking`: per-cell masking of rows, COPY data, errors and notices.
//! 7. `approvals` and `audit`: statements held for an operator, and the
//!    record of every session and statement.
//!
//! Around them, `daemon` starts `masker agent` and `masker proxy` the same
//! way (one session context, one accept loop) and serves the admin socket
//! and metrics; [`cli`] is the `masker` command line, the only place that
//! uses `anyhow`. `addr` (host:port) and `rfc3339` (timestamps) are shared
//! by many. `fuzzing` (hidden) is the way in for the fuzz targets in `fuzz/`.
//!
//! `discover` proposes a policy for a database (`masker discover`): it
//! reuses the masking detectors and the policy loader, and nothing on the
//! data path uses it.
//!
//! No file imports, directly or through other files, a file that imports it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod addr;
pub(crate) mod approvals;
pub(crate) mod audit;
pub mod cli;
pub(crate) mod daemon;
pub(crate) mod discover;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod identity;
pub mod interception;
pub(crate) mod masking;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod rfc3339;
pub(crate) mod session;
pub mod sql;
pub(crate) mod wire;

/// This process's uid (the owner of `/proc/self`), without unsafe code;
/// `None` when /proc cannot be read.
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}
