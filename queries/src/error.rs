//! The queries crate's error type.

/// Why a query did not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement would create, change or drop something, or read files.
    #[error("only queries are allowed (SELECT, WITH, EXPLAIN, SHOW TABLES, DESCRIBE): {0}")]
    NotReadOnly(String),
    /// A syntax error, unknown table or column, or type error: the caller's to fix.
    #[error("{0}")]
    Invalid(String),
    /// The query ran longer than the time limit and was stopped.
    #[error(
        "the query ran longer than the limit of {limit_ms} ms and was stopped; narrow it (WHERE, LIMIT) or raise queries.timeout_ms"
    )]
    Timeout {
        /// The limit.
        limit_ms: u64,
    },
    /// The answer has more rows than the row limit.
    #[error(
        "the answer has more than {limit} rows; add a LIMIT or narrow the query (limit: queries.max_rows)"
    )]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
    /// The query needed more memory than the queries' pool has.
    #[error(
        "the query needs more memory than the limit of {limit_mib} MiB for all queries together; narrow it (WHERE, fewer groups) or raise queries.memory_limit_mib"
    )]
    MemoryLimit {
        /// The pool's size.
        limit_mib: usize,
    },
    /// As many queries as allowed are running and none finished in time for this one.
    #[error(
        "{limit} queries are running, the most allowed at once (queries.max_concurrent); retry in a moment"
    )]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// The statement is larger or nested deeper than allowed.
    #[error("{0}")]
    TooComplex(String),
    /// Anything else DataFusion reported.
    #[error("query failed: {0}")]
    Internal(String),
}

/// `Result` with the queries' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
