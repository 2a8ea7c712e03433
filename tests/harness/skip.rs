//! What a test does when the machine cannot give it what it needs: it fails,
//! naming what is missing. Never a silent pass.
//!
//! The one way out is explicit: `MASKER_TESTS_ALLOW_SKIP` lists the kinds of
//! requirement a developer knowingly lacks (comma-separated, e.g.
//! `MASKER_TESTS_ALLOW_SKIP=ebpf,ipv6`, or `all`). A test whose requirement is
//! missing and allowed returns early, says so on stderr and appends a line
//! to the skip log (`<target>/masker-tests/skipped.tsv`, one line per skip:
//! kind, test, reason), which `scripts/test.sh` prints as a summary at the
//! end. CI never sets the variable, so there every test runs or fails.
//!
//! The kinds:
//!
//! - `ebpf`: root, bpffs at `/sys/fs/bpf` and a cgroup v2 mount (the agent
//!   attaches real programs to real cgroups);
//! - `ipv6`: an IPv6 loopback address (`::1`) to listen and connect on;
//! - `docker`: `dockerd` (Debian's docker.io; the Docker tests start a
//!   private daemon), on top of `ebpf`.

use std::io::Write;
use std::path::PathBuf;

/// The environment variable that allows skips, by kind.
pub const ALLOW_VAR: &str = "MASKER_TESTS_ALLOW_SKIP";

/// A kind of requirement a test may be allowed to skip without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Root, bpffs and cgroup v2: loading and attaching eBPF programs.
    Ebpf,
    /// An IPv6 loopback address.
    Ipv6,
    /// `dockerd`.
    Docker,
}

impl Kind {
    /// The name used in [`ALLOW_VAR`] and in the skip log.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ebpf => "ebpf",
            Kind::Ipv6 => "ipv6",
            Kind::Docker => "docker",
        }
    }
}

/// Whether [`ALLOW_VAR`] allows skipping tests of `kind`.
pub fn allowed(kind: Kind) -> bool {
    allowed_in(std::env::var(ALLOW_VAR).ok().as_deref(), kind)
}

fn allowed_in(value: Option<&str>, kind: Kind) -> bool {
    value.is_some_and(|v| v.split(',').map(str::trim).any(|k| k.eq_ignore_ascii_case(kind.name()) || k == "all"))
}

/// Where skips are logged.
pub fn log_path() -> PathBuf {
    crate::target_dir().join("masker-tests").join("skipped.tsv")
}

/// Decides for the running test: `true` when nothing is `missing` (go on);
/// `false` when it is missing and skips of `kind` are allowed (the skip is
/// logged: return now).
///
/// # Panics
///
/// When something is missing and skips of `kind` are not allowed: the
/// message names what is missing and the opt-out.
#[track_caller]
pub fn require(kind: Kind, missing: Option<String>) -> bool {
    let Some(reason) = missing else { return true };
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_owned();
    if !allowed(kind) {
        panic!(
            "{test} cannot run: {reason}. It needs {} (kind `{}`); set {ALLOW_VAR}={} to skip it knowingly \
             (never in CI).",
            describe(kind),
            kind.name(),
            kind.name()
        );
    }
    eprintln!("SKIPPED ({}): {test}: {reason}", kind.name());
    let path = log_path();
    let line = format!("{}\t{test}\t{}\n", kind.name(), reason.replace(['\t', '\n'], " "));
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("{test}: skipped ({reason}) but could not log the skip to {}: {e}", path.display());
    }
    false
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Ebpf => "root, bpffs at /sys/fs/bpf and a cgroup v2 mount",
        Kind::Ipv6 => "an IPv6 loopback address (::1)",
        Kind::Docker => "dockerd (apt-get install docker.io; scripts/setup.sh does)",
    }
}

/// [`require`] for the eBPF tests: root, bpffs, cgroup v2.
#[track_caller]
pub fn ebpf() -> bool {
    require(Kind::Ebpf, crate::agent::ebpf_missing())
}

/// [`require`] for the Docker tests: eBPF, then `dockerd`.
#[track_caller]
pub fn docker() -> bool {
    ebpf() && require(Kind::Docker, crate::docker::dockerd_missing())
}

/// [`require`] for an IPv6 loopback: the address of `cluster` on `::1`.
#[track_caller]
pub fn ipv6(cluster: &crate::PgCluster) -> Option<std::net::SocketAddr> {
    match cluster.addr_v6() {
        Some(addr) => Some(addr),
        None => {
            require(Kind::Ipv6, Some("the host has no IPv6 loopback (::1 cannot be bound)".into()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opt_out_names_kinds() {
        assert!(!allowed_in(None, Kind::Ebpf));
        assert!(!allowed_in(Some(""), Kind::Ebpf));
        assert!(!allowed_in(Some("ipv6"), Kind::Ebpf));
        assert!(!allowed_in(Some("ebpf2"), Kind::Ebpf));
        assert!(allowed_in(Some("ebpf"), Kind::Ebpf));
        assert!(allowed_in(Some(" IPV6 , ebpf"), Kind::Ipv6));
        assert!(allowed_in(Some("all"), Kind::Ipv6));
    }
}
