//! Projections of the history topic: the runtime (consume, apply, checkpoint, rebuild) and
//! the projections themselves (`clusters`, `billing_hours`, `audit_log`, per-service views).
//! Projection logic is plain data and functions, testable without Kafka; the runtime is
//! the only part that talks to Kafka and the disk.

pub mod audit;
pub mod billing;
pub mod billing_hours;
pub mod checkpoint;
pub mod clusters;
pub mod hour_amounts;
pub use fleetledger_schemas::diff;
mod error;
mod name;
mod record;
pub mod runtime;
pub mod segments;
pub mod views;

pub use audit::{AuditLog, AuditRow, audit_batch, audit_columns, audit_schema};
pub use billing::ClusterBilling;
pub use billing_hours::{BillingHours, BillingRow};
pub use clusters::{ClusterRow, Clusters};
pub use error::{Error, Result};
pub use name::ProjectionName;
pub use record::HistoryRecord;
pub use runtime::{Progress, Projections, Projector, ProjectorConfig};
pub use views::{CLUSTER_COLUMNS, Cell, Column, ColumnType, ServiceView, ServiceViews};
