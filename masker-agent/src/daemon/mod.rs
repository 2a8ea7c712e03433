//! The daemons: `masker agent` and `masker proxy`.

pub mod accept;
pub mod admin;
pub mod agent;
pub mod config;
pub mod metrics;
pub mod registry;
