//! Timeouts and memory limits as an operator writes them: `[limits]` in the
//! agent configuration, or the same names as `masker proxy` flags
//! (`--partial-message-timeout-secs 30`). Every field is optional; what is
//! not given keeps its default ([`Limits::default`]).
//!
//! | setting | default | what it bounds |
//! |---|---|---|
//! | `startup_timeout_secs` | 30 | accept to the client's startup packet (TLS included) |
//! | `connect_timeout_secs` | 10 | connecting to the server |
//! | `tls_timeout_secs` | 10 | a TLS handshake, with the client or the server |
//! | `auth_timeout_secs` | 60 | the login: startup packet sent to the server's first ReadyForQuery |
//! | `partial_message_timeout_secs` | 30 | a client leaving a message half sent (never an idle session) |
//! | `catalog_timeout_secs` | 5 | one catalog look-up (also the catalog connection's `statement_timeout`) |
//! | `drain_secs` | 30 | on SIGTERM, how long running statements may finish before 57P01 |
//! | `memory_budget_mib` | 256 | partial messages of all sessions together |
//! | `session_buffer_mib` | 64 | partial messages of one session |

use std::time::Duration;

use serde::Deserialize;

use crate::session::context::Limits;

/// `[limits]` of the agent configuration and the proxy's flags of the same
/// names.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Seconds from accept to the client's startup packet, TLS included [default: 30].
    #[arg(long, value_name = "SECS")]
    pub startup_timeout_secs: Option<u64>,
    /// Seconds connecting to the database server may take [default: 10].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Seconds a TLS handshake may take, with the client or the server [default: 10].
    #[arg(long, value_name = "SECS")]
    pub tls_timeout_secs: Option<u64>,
    /// Seconds the login may take, up to the server's first ReadyForQuery [default: 60].
    #[arg(long, value_name = "SECS")]
    pub auth_timeout_secs: Option<u64>,
    /// Seconds a client may leave a message half sent; an idle session has no timeout [default: 30].
    #[arg(long, value_name = "SECS")]
    pub partial_message_timeout_secs: Option<u64>,
    /// Seconds one catalog look-up may take; on expiry the statement is refused [default: 5].
    #[arg(long, value_name = "SECS")]
    pub catalog_timeout_secs: Option<u64>,
    /// On SIGTERM, seconds running statements may take to finish before their sessions get 57P01 [default: 30].
    #[arg(long, value_name = "SECS")]
    pub drain_secs: Option<u64>,
    /// MiB that partial messages of all sessions may hold together [default: 256].
    #[arg(long, value_name = "MIB")]
    pub memory_budget_mib: Option<u64>,
    /// MiB that partial messages of one session may hold [default: 64].
    #[arg(long, value_name = "MIB")]
    pub session_buffer_mib: Option<u64>,
}

/// A limit that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("limits: {name} = {value}: {why}")]
pub struct LimitsError {
    /// The setting, as written.
    pub name: &'static str,
    /// Its value.
    pub value: u64,
    /// What is wrong.
    pub why: &'static str,
}

impl LimitsConfig {
    /// The limits, with defaults for what is not set.
    pub fn limits(&self) -> Result<Limits, LimitsError> {
        let mut l = Limits::default();
        let secs = |name, value: Option<u64>, into: &mut Duration| -> Result<(), LimitsError> {
            match value {
                Some(0) => Err(LimitsError { name, value: 0, why: "must be at least 1" }),
                Some(v) if v > 86_400 => Err(LimitsError { name, value: v, why: "must be at most 86400 (a day)" }),
                Some(v) => {
                    *into = Duration::from_secs(v);
                    Ok(())
                }
                None => Ok(()),
            }
        };
        secs("startup_timeout_secs", self.startup_timeout_secs, &mut l.startup_timeout)?;
        secs("connect_timeout_secs", self.connect_timeout_secs, &mut l.connect_timeout)?;
        secs("tls_timeout_secs", self.tls_timeout_secs, &mut l.tls_timeout)?;
        secs("auth_timeout_secs", self.auth_timeout_secs, &mut l.auth_timeout)?;
        secs("partial_message_timeout_secs", self.partial_message_timeout_secs, &mut l.partial_message_timeout)?;
        secs("catalog_timeout_secs", self.catalog_timeout_secs, &mut l.catalog_timeout)?;
        // A drain of 0 is allowed: stop at once.
        match self.drain_secs {
            Some(v) if v > 86_400 => {
                return Err(LimitsError { name: "drain_secs", value: v, why: "must be at most 86400 (a day)" });
            }
            Some(v) => l.drain = Duration::from_secs(v),
            None => {}
        }
        let mib = |name, value: Option<u64>, into: &mut usize| -> Result<(), LimitsError> {
            match value {
                Some(0) => Err(LimitsError { name, value: 0, why: "must be at least 1" }),
                Some(v) if v > 1 << 20 => Err(LimitsError { name, value: v, why: "must be at most 1048576 (1 TiB)" }),
                Some(v) => {
                    *into = usize::try_from(v << 20).unwrap_or(usize::MAX);
                    Ok(())
                }
                None => Ok(()),
            }
        };
        mib("memory_budget_mib", self.memory_budget_mib, &mut l.memory_budget)?;
        mib("session_buffer_mib", self.session_buffer_mib, &mut l.session_buffer)?;
        if l.session_buffer > l.memory_budget {
            return Err(LimitsError {
                name: "session_buffer_mib",
                value: (l.session_buffer >> 20) as u64,
                why: "must not exceed memory_budget_mib",
            });
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_refusals() {
        let l = LimitsConfig::default().limits().unwrap();
        assert_eq!(l.partial_message_timeout, Duration::from_secs(30));
        assert_eq!(l.memory_budget, 256 << 20);
        let c: LimitsConfig =
            toml::from_str("catalog_timeout_secs = 2\ndrain_secs = 0\nsession_buffer_mib = 8").unwrap();
        let l = c.limits().unwrap();
        assert_eq!((l.catalog_timeout, l.drain, l.session_buffer), (Duration::from_secs(2), Duration::ZERO, 8 << 20));
        let zero: LimitsConfig = toml::from_str("auth_timeout_secs = 0").unwrap();
        assert_eq!(zero.limits().unwrap_err().to_string(), "limits: auth_timeout_secs = 0: must be at least 1");
        let big: LimitsConfig = toml::from_str("session_buffer_mib = 512").unwrap();
        assert!(big.limits().unwrap_err().to_string().contains("must not exceed memory_budget_mib"));
        assert!(toml::from_str::<LimitsConfig>("idle_timeout_secs = 5").is_err(), "unknown settings are refused");
    }
}
