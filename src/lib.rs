//! The `fleetledger` service and command line: wiring only. The command line ([`cli`]),
//! the HTTP API ([`http`]), the PostgreSQL protocol (`postgres`), start-up and shutdown ([`server`]) and configuration live
//! here; everything they do is in the library crates
//! (`schemas ← registry ← ledger ← projectors ← queries`, with `client` beside them).

pub mod cli;
pub mod config;
pub mod http;
pub(crate) mod postgres;
pub mod server;

pub use cli::audit::verify_topic;
pub use config::Config;
