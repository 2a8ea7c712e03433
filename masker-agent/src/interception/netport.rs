//! Destinations given by network and port: `*:5432`, `172.16.0.0/12:5432`,
//! `[fd00::/8]:5432`, `10.0.0.53/32:53`, `0.0.0.0/0:443`, and (egress
//! allowlists only) `10.0.0.0/8:*` for every port.
//!
//! Targets of a container job often have no name the host can resolve and no
//! address known in advance (a service container gets one when the job
//! starts), so a target may be a whole network on a port. The kernel keeps
//! them in LPM tries keyed by port, then address (IPv4 in its IPv4-mapped
//! IPv6 form, so one entry matches `AF_INET` and dual-stack sockets).
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address prefix and a port. Port 0 means "every port" (egress
/// allowlists only; a target always names its port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetPort {
    /// The network's first address: IPv4 networks as IPv4-mapped IPv6, bits
    /// past the prefix zero.
    addr: Ipv6Addr,
    /// Prefix length over the 128-bit (mapped) address: `a.b.c.d/n` is
    /// `96 + n`; `*` is 0 (every IPv4 and IPv6 address).
    prefix: u8,
    /// Port, host byte order; 0 = every port.
    port: u16,
}

impl NetPort {
    /// Exactly `addr` (IPv4 stored mapped).
    pub fn exact(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self { addr: ip, prefix: 128, port: addr.port() }
    }

    /// The network's address (mapped) as the kernel stores it.
    pub fn addr_bytes(&self) -> [u8; 16] {
        self.addr.octets()
    }

    /// Prefix length over the 128-bit address.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The port (0 = every port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this covers every port.
    pub fn any_port(&self) -> bool {
        self.port == 0
    }

    /// Whether `dst` falls in this network and port.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        let ip = match dst.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        (self.port == 0 || self.port == dst.port()) && mask(ip, self.prefix) == self.addr
    }

    /// Parses a target: like [`FromStr`], but the port is required.
    pub fn parse_target(text: &str) -> Result<Self, NetPortError> {
        let parsed: NetPort = text.parse()?;
        if parsed.any_port() {
            return Err(NetPortError::new(text, "a target needs a port (e.g. \"*:5432\")"));
        }
        Ok(parsed)
    }

    /// Whether `text` is written as a network (`*`, `/len`) rather than a
    /// `host:port` to resolve.
    pub fn looks_like_network(text: &str) -> bool {
        text.starts_with("*:") || text.contains('/')
    }
}

impl FromStr for NetPort {
    type Err = NetPortError;

    fn from_str(text: &str) -> Result<Self, NetPortError> {
        let err = |why: &str| NetPortError::new(text, why);
        let (net, port) = if let Some(rest) = text.strip_prefix('[') {
            let (net, port) = rest.split_once("]:").ok_or_else(|| err("expected [ADDRESS/LEN]:PORT"))?;
            (net, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| err("expected NETWORK:PORT, e.g. 172.16.0.0/12:5432 or *:5432"))?
        };
        let port = match port {
            "*" => 0,
            p => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(err("the port must be 1 to 65535, or * for every port")),
                Ok(p) => p,
            },
        };
        if net == "*" {
            return Ok(Self { addr: Ipv6Addr::UNSPECIFIED, prefix: 0, port });
        }
        let (ip, len) = match net.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (net, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| err("not an IP address (names are resolved only in host:port)"))?;
        let (mapped, max, base) = match ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 32u8, 96u8),
            IpAddr::V6(v6) => (v6, 128u8, 0u8),
        };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(err(&format!("the prefix length must be 0 to {max}"))),
            },
        };
        let prefix = base + len;
        if mask(mapped, prefix) != mapped {
            return Err(err(&format!("host bits set after /{len}; write the network's first address")));
        }
        Ok(Self { addr: mapped, prefix, port })
    }
}

impl fmt::Display for NetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 { "*".to_string() } else { self.port.to_string() };
        if self.prefix == 0 {
            return write!(f, "*:{port}");
        }
        match self.addr.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => write!(f, "{v4}/{}:{port}", self.prefix - 96),
            _ => write!(f, "[{}/{}]:{port}", self.addr, self.prefix),
        }
    }
}

fn mask(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let keep = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
    Ipv6Addr::from(bits & keep)
}

/// A network:port that does not parse, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {why}")]
pub struct NetPortError {
    text: String,
    why: String,
}

impl NetPortError {
    fn new(text: &str, why: &str) -> Self {
        Self { text: text.to_string(), why: why.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_ports_and_wildcards() {
        let n: NetPort = "172.16.0.0/12:5432".parse().unwrap();
        assert_eq!(n.prefix(), 108);
        assert!(n.contains(sa("172.17.0.2:5432")));
        assert!(n.contains(sa("[::ffff:172.31.255.1]:5432")));
        assert!(!n.contains(sa("172.32.0.1:5432")));
        assert!(!n.contains(sa("172.17.0.2:5433")));
        assert_eq!(n.to_string(), "172.16.0.0/12:5432");

        let any: NetPort = "*:5432".parse().unwrap();
        assert!(any.contains(sa("10.1.2.3:5432")) && any.contains(sa("[fd00::1]:5432")));
        assert!(!any.contains(sa("10.1.2.3:5433")));
        assert_eq!(any.to_string(), "*:5432");

        let v4_all: NetPort = "0.0.0.0/0:443".parse().unwrap();
        assert!(v4_all.contains(sa("1.2.3.4:443")));
        assert!(!v4_all.contains(sa("[2001:db8::1]:443")), "an IPv4 network matches IPv4 only");

        let v6: NetPort = "[fd00::/8]:5432".parse().unwrap();
        assert!(v6.contains(sa("[fd12::3]:5432")) && !v6.contains(sa("[fe80::1]:5432")));
        assert_eq!(v6.to_string(), "[fd00::/8]:5432");

        let host: NetPort = "10.0.0.53:53".parse().unwrap();
        assert_eq!((host.prefix(), host.port()), (128, 53));
        assert_eq!(host, NetPort::exact(sa("10.0.0.53:53")));

        let every_port: NetPort = "10.0.0.0/8:*".parse().unwrap();
        assert!(every_port.any_port() && every_port.contains(sa("10.9.9.9:1")));
        assert_eq!(every_port.to_string(), "10.0.0.0/8:*");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (text, why) in [
            ("172.16.0.1/12:5432", "host bits"),
            ("10.0.0.0/33:5432", "prefix length"),
            ("db.internal/24:5432", "not an IP address"),
            ("10.0.0.0/8", "expected NETWORK:PORT"),
            ("10.0.0.0/8:0", "port must be"),
            ("10.0.0.0/8:99999", "port must be"),
            ("[fd00::/8:5432", "expected [ADDRESS/LEN]:PORT"),
        ] {
            let e = text.parse::<NetPort>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        let e = NetPort::parse_target("*:*").unwrap_err().to_string();
        assert!(e.contains("needs a port"), "{e}");
        assert!(NetPort::looks_like_network("*:5432") && NetPort::looks_like_network("10.0.0.0/8:5432"));
        assert!(!NetPort::looks_like_network("db.internal:5432") && !NetPort::looks_like_network("[::1]:5432"));
    }
}
