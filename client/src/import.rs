//! `fleetledger import FILE`: appends a history file
//! ([`crate::history_file::HistoryLine`]s, e.g. from `fleetledger-bench simulate` or an
//! existing control plane) through `POST /v1/import` with its
//! original times and writers.
//!
//! The whole file is checked before anything is sent (a malformed line, or a time that goes
//! backwards for a cluster+facet, is refused with its line number). Lines are sent in the
//! order of their times (ties in file order), whatever order the file lists them in, so
//! each cluster's records reach the topics in time order across its facets. The n-th line of a
//! cluster+facet becomes its version n: it is sent with `If-Match: n-1` and the
//! idempotency key `import:{cluster}/{facet}/v{n}`, so running the same import again —
//! after an interruption, say — skips what is already in the ledger and never writes a
//! line twice. Import is meant for clusters the ledger does not have yet.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::history_file::{in_time_order, parse_lines};
use crate::{ApiClient, ApiError, ClientError, Result};

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines appended now.
    pub imported: u64,
    /// Lines already in the ledger (an earlier run wrote them).
    pub already: u64,
}

/// Imports `file` in batches of `batch` lines, with progress on stderr. A refused line
/// stops the import with an error naming it; batches before it stay written (run the
/// import again after fixing the line: they are skipped).
pub async fn import_file(
    client: &ApiClient,
    file: &Path,
    batch: usize,
    allow_live_history: bool,
) -> Result<ImportSummary> {
    let text = std::fs::read_to_string(file).map_err(|source| ClientError::Io {
        path: file.to_owned(),
        source,
    })?;
    let lines =
        parse_lines(&text).map_err(|e| ClientError::Invalid(format!("{}: {e}", file.display())))?;
    // A cluster's lines reach the ledger in the order of their times across facets, so
    // the topics read as a live history does (a history file may list facets apart).
    let lines = in_time_order(lines);
    let mut versions: HashMap<(String, String), i64> = HashMap::new();
    let items: Vec<Value> = lines
        .into_iter()
        .map(|(no, l)| {
            let v = versions
                .entry((l.cluster_id.clone(), l.facet.clone()))
                .or_insert(0);
            *v += 1;
            json!({
                "line": no,
                "ts": l.ts,
                "cluster_id": l.cluster_id,
                "facet": l.facet,
                "writer": l.writer,
                "reason": l.reason,
                "state": l.state,
                "expected_version": *v - 1,
                "idempotency_key": format!("import:{}/{}/v{}", l.cluster_id, l.facet, v),
            })
        })
        .collect();
    let total = items.len();
    let started = Instant::now();
    let mut summary = ImportSummary::default();
    for (i, chunk) in items.chunks(batch.max(1)).enumerate() {
        let answer = client.import_with(chunk, allow_live_history).await?;
        for r in answer.results {
            match r.status {
                201 => summary.imported += 1,
                200 => summary.already += 1,
                status => {
                    let body = r.body.unwrap_or(Value::Null);
                    return Err(ApiError {
                        status,
                        body: json!({
                            "error": body["error"],
                            "message": format!("line {}: {}", r.line, body["message"].as_str().unwrap_or("")),
                        }),
                    }
                    .into());
                }
            }
        }
        let done = ((i + 1) * batch.max(1)).min(total);
        eprint!(
            "\rimported {done}/{total} lines ({:.0} lines/s)   ",
            done as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    Ok(summary)
}
