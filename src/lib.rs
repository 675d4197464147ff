//! The `fleetledger` service and command line: wiring only. Configuration, the HTTP
//! server with its routes, and start-up and shutdown live here; everything they do is
//! in the library crates (`schemas ← ledger ← projectors ← queries`).

mod api;
pub mod audit;
pub mod bench;
pub mod bench_report;
pub mod client;
pub mod config;
pub mod import;
pub mod project;
pub mod server;
pub mod simulate;

pub use config::Config;
