//! The address of a database server, `host:port`: a configured target
//! (`db.internal:5432`), the proxy's upstream, or the original destination
//! the kernel recorded for a redirected connection (`10.0.0.5:5432`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// A database server's `host:port` (`[v6]:port` for IPv6 literals), kept as
/// written: it names the target in messages, policy globs and audit events.
/// Cheap to clone.
#[derive(Clone)]
pub struct TargetAddr {
    text: Arc<str>,
    /// Where the host ends in `text` (brackets excluded), and where it starts.
    host: (usize, usize),
    port: u16,
    /// The address itself when the host is an IP literal (no resolver needed).
    socket: Option<SocketAddr>,
}

/// Text that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not \"host:port\"")]
pub struct AddrError(pub String);

impl TargetAddr {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Result<TargetAddr, AddrError> {
        let bad = || AddrError(text.to_string());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let (start, end) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(_) => (1, host.len() - 1),
            None => (0, host.len()),
        };
        Ok(TargetAddr { text: text.into(), host: (start, end), port, socket: text.parse().ok() })
    }

    /// The host (name or IP literal, without brackets).
    pub fn host(&self) -> &str {
        &self.text[self.host.0..self.host.1]
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket
    }
}

impl From<SocketAddr> for TargetAddr {
    fn from(addr: SocketAddr) -> TargetAddr {
        let text: Arc<str> = addr.to_string().into();
        let host = match addr {
            SocketAddr::V4(_) => (0, text.rfind(':').unwrap_or(text.len())),
            SocketAddr::V6(_) => (1, text.rfind("]:").unwrap_or(text.len())),
        };
        TargetAddr { text, host, port: addr.port(), socket: Some(addr) }
    }
}

impl FromStr for TargetAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<TargetAddr, AddrError> {
        TargetAddr::parse(s)
    }
}

impl TryFrom<String> for TargetAddr {
    type Error = AddrError;
    fn try_from(s: String) -> Result<TargetAddr, AddrError> {
        TargetAddr::parse(&s)
    }
}

impl PartialEq for TargetAddr {
    fn eq(&self, other: &TargetAddr) -> bool {
        self.text == other.text
    }
}

impl Eq for TargetAddr {}

impl AsRef<str> for TargetAddr {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<&str> for TargetAddr {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl std::hash::Hash for TargetAddr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl serde::Serialize for TargetAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let a = TargetAddr::parse("db.internal:5432").unwrap();
        assert_eq!((a.host(), a.port(), a.socket_addr()), ("db.internal", 5432, None));
        let a = TargetAddr::parse("[::1]:5433").unwrap();
        assert_eq!((a.host(), a.port()), ("::1", 5433));
        assert_eq!(a.socket_addr(), Some("[::1]:5433".parse().unwrap()));
        assert_eq!(a.to_string(), "[::1]:5433");
        assert!(TargetAddr::parse("nohost").is_err());
        assert!(TargetAddr::parse("h:notaport").is_err());
        assert_eq!(TargetAddr::parse("h:99999").unwrap_err().to_string(), "\"h:99999\" is not \"host:port\"");
    }

    #[test]
    fn socket_addresses_keep_their_text() {
        for text in ["10.0.0.5:5432", "[2001:db8::1]:6432"] {
            let from: TargetAddr = text.parse::<SocketAddr>().unwrap().into();
            let parsed = TargetAddr::parse(text).unwrap();
            assert_eq!(from, parsed);
            assert_eq!((from.host(), from.port()), (parsed.host(), parsed.port()));
            assert_eq!(from.as_str(), text);
        }
        let a = TargetAddr::parse("DB.internal:5432").unwrap();
        assert_ne!(a, TargetAddr::parse("db.internal:5432").unwrap(), "kept as written");
    }
}
