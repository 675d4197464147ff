//! fleetledger's benchmarks, outside the service binary: the fleet simulator (the history
//! every benchmark and the import tests load), the drivers that load a running server and
//! measure the raw Kafka baselines beside it, the report writer, and the fault suite's
//! report writer.

pub mod drivers;
pub mod encode;
pub mod faults;
pub mod report;
pub mod simulate;
