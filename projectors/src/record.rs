//! A history record as projections see it: the decoded record and where it was read.

use fleetledger_schemas::StateRecord;

/// One record of the history topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The decoded record.
    pub record: StateRecord,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}
