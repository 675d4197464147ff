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
    /// When the ledger wrote it (ms since the epoch): the Kafka record timestamp, which
    /// the writer sets from its clock when it forms the transaction. Differs from the
    /// record's `ts` (its event time) for imported history. Records written before the
    /// writer set it carry their `ts` there.
    pub written_at_ms: i64,
}
