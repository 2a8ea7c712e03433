//! masker: a host agent that relays PostgreSQL connections from tagged
//! workloads and masks personal data in everything that flows back.
//!
//! Modules follow one connection along the data path:
//!
//! 1. [`interception`]: eBPF programs redirect tagged cgroups' connections to
//!    the agent and record the original destination, cgroup and pid.
//! 2. [`listener`]: accepts connections (transparent agent mode or explicit
//!    proxy mode) and learns where each one was going.
//! 3. [`session`]: startup handshake, upstream connection, the relay loop.
//! 4. [`wire`]: PostgreSQL message framing, pure functions over buffers.
//! 5. [`masking`]: column plans and per-cell masking of result data.
//! 6. [`policy`]: the policy file that says what to mask for whom.
//!
//! [`cli`] is the `masker` command line; [`config`] the agent's config file.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod addr;
pub(crate) mod approvals;
pub(crate) mod audit;
pub mod cli;
pub(crate) mod daemon;
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
