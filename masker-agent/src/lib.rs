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
//! [`cli`] is the `masker` command line; [`config`] the agent's config file;
//! [`discover`] proposes a policy for a database (`masker discover`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod approvals;
pub mod audit;
pub mod catalog;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod discover;
pub mod guardrails;
pub mod identity;
pub mod interception;
pub mod listener;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod session;
pub mod sql;
pub mod tls;
pub mod wire;

/// This process's uid (the owner of `/proc/self`), without unsafe code;
/// `None` when /proc cannot be read.
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}
