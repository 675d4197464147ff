//! fleetledger's benchmarks, outside the service binary: the fleet simulator (the history
//! every benchmark and the import tests load), the drivers that load a running server and
//! measure the raw Kafka baselines beside it, and the report writer.

pub mod drivers;
pub mod report;
pub mod simulate;
