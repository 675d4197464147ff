//! End-to-end tests against the real local broker (`deploy/local/kafka start`), one test
//! binary with a module per capability. Every test makes its own topic prefix, so tests
//! run in parallel and never see each other's data.

mod append;
mod auth;
mod billing;
pub(crate) mod faults;
mod foundation;
mod hostile;
mod import;
mod kafka_security;
mod metrics;
mod openapi;
mod postgres;
mod projections;
mod recovery;
mod replication;
mod sql;
mod support;
mod ui;
mod watch;
