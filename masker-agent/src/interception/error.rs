//! The error of every interception operation: what kind of failure, and a
//! message that says what to do about it.
use std::error::Error;
use std::fmt;
use std::io;

use crate::interception::cgroup::CgroupError;

/// What went wrong, for callers that react differently (e.g. the lead's
/// session refuses a connection on [`ErrorKind::NotRedirected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Missing privileges: not root, or lacking CAP_BPF / CAP_NET_ADMIN /
    /// CAP_SYS_ADMIN, or BPF disabled for this context.
    NotPermitted,
    /// No bpf filesystem where the pins go.
    BpffsMissing,
    /// No cgroup v2 hierarchy.
    CgroupV2Missing,
    /// The named cgroup does not exist or is outside the intercepted subtree.
    CgroupMissing,
    /// Bad argument (identity too long, ...).
    InvalidInput,
    /// No redirect record for this peer: the connection was not redirected by
    /// masker (or its record was already taken).
    NotRedirected,
    /// Loading, attaching or pinning the eBPF programs or maps failed.
    Bpf,
    /// Another I/O error.
    Io,
}

/// An interception failure. `Display` gives the full message, including the
/// underlying cause.
#[derive(Debug)]
pub struct InterceptionError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl InterceptionError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self { kind, message: message.into(), source: Some(Box::new(source)) }
    }

    /// A BPF syscall failure: classified as [`ErrorKind::NotPermitted`] (with
    /// the advice to run as root) when the kernel said EPERM. (EACCES from a
    /// program load is the verifier's rejection, not a privilege problem.)
    pub(crate) fn bpf(what: impl Into<String>, source: impl Error + Send + Sync + 'static) -> Self {
        let what = what.into();
        if permission_denied(&source) {
            Self::with_source(
                ErrorKind::NotPermitted,
                format!(
                    "{what}: permission denied; loading and attaching cgroup eBPF programs needs root \
                     (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN)"
                ),
                source,
            )
        } else {
            Self::with_source(ErrorKind::Bpf, what, source)
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::with_source(ErrorKind::Io, what, source)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for InterceptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // Include the causes: aya's messages (syscall, errno, verifier log)
        // are the useful part when loading fails.
        let mut cause = self.source.as_deref().map(|e| e as &(dyn Error + 'static));
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl Error for InterceptionError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl From<CgroupError> for InterceptionError {
    fn from(e: CgroupError) -> Self {
        let kind = match &e {
            CgroupError::V2NotMounted => ErrorKind::CgroupV2Missing,
            CgroupError::Missing(_) | CgroupError::NotACgroup(..) => ErrorKind::CgroupMissing,
            CgroupError::Io { source, .. } if is_eperm(source) => ErrorKind::NotPermitted,
            CgroupError::Io { .. } => ErrorKind::Io,
        };
        Self { kind, message: e.to_string(), source: None }
    }
}

fn is_eperm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Whether an EPERM is somewhere in the chain of causes.
fn permission_denied(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}
