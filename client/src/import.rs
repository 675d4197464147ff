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
//!
//! **Lanes.** Batches go out [`IMPORT_LANES`] at once, in rounds: a round takes the next
//! lanes × batch lines in time order and gives each lane the lines of its clusters (by a
//! hash of the id), so each cluster's lines still reach the ledger in time order while
//! the server commits the lanes' batches together, and no lane runs ahead of the others
//! in time by more than a round. A file of at most one batch goes as one
//! batch: a refusal writes nothing of it. In a larger file, a refused line stops every
//! lane; batches already committed stay (run the import again after fixing the line:
//! they are skipped).

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
    // A file of one batch stays one batch: refused whole or written whole.
    let n_lanes = IMPORT_LANES.min(total.div_ceil(batch.max(1))).max(1);
    let started = Instant::now();
    let mut summary = ImportSummary::default();
    let mut done = 0;
    // One lane's lines of a round, in requests of at most `batch` lines (a lane may get
    // more than its share when a few clusters have many lines in the round).
    let send = |lines: Vec<Value>| async move {
        let mut s = ImportSummary::default();
        for chunk in lines.chunks(batch.max(1)) {
            let answer = client.import_with(chunk, allow_live_history).await?;
            for r in answer.results {
                match r.status {
                    201 => s.imported += 1,
                    200 => s.already += 1,
                    status => {
                        let body = r.body.unwrap_or(Value::Null);
                        return Err(ClientError::from(ApiError {
                            status,
                            body: json!({
                                "error": body["error"],
                                "message": format!("line {}: {}", r.line, body["message"].as_str().unwrap_or("")),
                            }),
                        }));
                    }
                }
            }
        }
        Ok(s)
    };
    // Rounds of `n_lanes` batches in time order; in a round each lane takes its clusters'
    // lines and the lanes go at once. The next round starts when the round is done, so
    // no lane runs ahead in time of the others by more than a round.
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut lanes: Vec<Vec<Value>> = vec![Vec::new(); n_lanes];
        for item in items.by_ref().take(batch.max(1) * n_lanes) {
            let cluster = item["cluster_id"].as_str().unwrap_or_default();
            lanes[lane_of(cluster, n_lanes)].push(item);
        }
        let n: usize = lanes.iter().map(Vec::len).sum();
        // The first refusal stops the import: the other lanes' requests of the round are
        // dropped (what they had written stays; a re-run skips it).
        let answers =
            futures::future::try_join_all(lanes.into_iter().filter(|l| !l.is_empty()).map(send))
                .await?;
        for s in answers {
            summary.imported += s.imported;
            summary.already += s.already;
        }
        done += n;
        eprint!(
            "\rimported {done}/{total} lines ({:.0} lines/s)   ",
            done as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    Ok(summary)
}

/// Batches an import has in flight at once, one per lane.
pub const IMPORT_LANES: usize = 4;

/// The lane of `cluster_id` among `lanes`: a stable hash (FNV-1a), so a re-run uses the
/// same lanes.
fn lane_of(cluster_id: &str, lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}
