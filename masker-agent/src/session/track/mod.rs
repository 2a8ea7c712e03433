//! Following each result back to the statement that produced it, so that
//! every `DataRow`, `CopyData`, error, notice and notification is masked with
//! the right plan.
//!
//! The client side ([`ClientTracker`]) notes, in order, what each request will
//! be answered with ([`expect::Expect`]); the server side ([`ServerTracker`]) consumes
//! those notes as the answers arrive. This is how a `DataRow` of an `Execute`
//! finds its columns even though no `RowDescription` precedes it: the
//! statement's `Describe`, or one the agent injects itself when the client
//! never asked, gave them earlier, and `Bind` gave the result formats.
//!
//! Both trackers run in the session's task; the queue between them is never
//! contended.

pub mod client;
pub mod expect;
pub mod memo;
pub mod model;
pub mod server;

pub use client::ClientTracker;
pub use expect::ExpectQueue;
pub use server::ServerTracker;
