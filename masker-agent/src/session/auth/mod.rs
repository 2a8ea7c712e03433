//! How the workload's authentication reaches the server: relayed
//! (passthrough) or done by the agent itself (injection).
//!
//! **Passthrough** (the default): the client's own authentication exchange
//! (SCRAM-SHA-256, md5, password) is relayed unchanged, with one exception:
//! `SCRAM-SHA-256-PLUS` is removed from the server's list of SASL
//! mechanisms. Channel binding ties the SCRAM exchange to the TLS connection
//! it runs over; with masker in between, the client's TLS connection ends at
//! masker and the server's starts there, so a client that chose the `-PLUS`
//! variant would always fail. Without it, libpq (`channel_binding=prefer`,
//! the default) and other drivers fall back to plain SCRAM-SHA-256; clients
//! that set `channel_binding=require` cannot connect through masker.
//!
//! **Injection** (a `[[credential]]` of the agent config, or `masker proxy
//! --credential-user`): for a target and an identity the agent holds a
//! database user's password and logs in itself, so the workload needs none.
//! The client's StartupMessage must name the credential's `user` (anything
//! else is refused with SQLSTATE 28000 naming the allowed user); it is sent
//! to the server as the client wrote it (database, options,
//! application_name, ...). The agent answers the server's authentication
//! request ([`inject::Injector`]: SCRAM-SHA-256 (channel binding below), md5 or
//! cleartext password), and from `AuthenticationOk` on everything the server
//! sends goes to the client through the normal relay. The client is never
//! asked for a password. A failed login reaches the client as the server's
//! own ErrorResponse (28P01), through the same scrubbing as every other
//! error. The secret itself lives only in a [`secret::Secret`], whose `Debug` shows
//! nothing, and is never put in a log line, an error, the audit trail or
//! `masker status`.
//!
//! SCRAM over a TLS server leg uses channel binding when the server offers
//! `SCRAM-SHA-256-PLUS`: `tls-server-end-point`, the hash of the server's
//! certificate as masker received it ([`tls_server_end_point`]), so the
//! server checks that the login ran over its own TLS connection (a
//! man-in-the-middle with another certificate fails, even with `tls =
//! "require"`, which does not verify the certificate). Otherwise (a
//! plain-text leg, no `-PLUS` offered, or a certificate whose signature
//! hash is not one RFC 5929 defines here) SCRAM runs with the GS2 flag `n`,
//! which servers accept over TLS too. Either way, the client needs no
//! setting at all; only `channel_binding=require` on the client cannot
//! work, because the client itself does no SCRAM.

pub mod der;
pub mod inject;
pub mod passthrough;
pub mod secret;

pub use der::tls_server_end_point;
pub use inject::{InjectError, InjectOutcome, inject};
pub use passthrough::NoChannelBinding;
pub use secret::{Credential, CredentialError, Credentials, SecretSource, load};
