//! `fleetledger import FILE`: appends a history file
//! ([`crate::history_file::HistoryLine`]s, e.g. from `fleetledger-bench simulate` or an
//! existing control plane) through `POST /v1/import` with its
//! original times and writers.
//!
//! **Checked first, streamed.** A file is read twice and never held in memory: the first
//! pass checks every line (a malformed line, or a time that goes backwards for a
//! cluster+facet, is refused with its line number before anything is sent); the second
//! sends. Lines are sent in the order of their times (ties in file order), whatever order
//! the file lists them in, so each cluster's records reach the topics in time order across
//! its facets: a file already in time order (the simulator's, an export's) is sent as it
//! is read; any other file is sent through an index of its lines' times and offsets
//! (24 bytes a line, built in a pass of its own). `-` reads standard input in one pass: it must be in time order, and a
//! bad line stops the import there (the rounds before it stay imported).
//!
//! **Resumable.** The n-th line of a cluster+facet becomes its version n: it is sent with
//! `If-Match: n-1` and the idempotency key `import:{cluster}/{facet}/v{n}`, so running the
//! same import again — after an interruption, say — skips what is already in the ledger
//! and never writes a line twice. Import is meant for clusters the ledger does not have
//! yet.
//!
//! **Lanes.** Batches go out [`IMPORT_LANES`] at once, in rounds: a round takes the next
//! lanes × batch lines in time order and gives each lane the lines of its clusters (by a
//! hash of the id). A lane sends its batch of a round once its batch of the round before
//! is answered, so each cluster's lines still reach the ledger in time order while the
//! server commits the lanes' batches together; two rounds are in flight, so the server
//! has the next lines while it commits, and no lane runs ahead of the others in time by
//! more than two rounds. A round of at most one batch (a small file) goes as one
//! batch: a refusal writes nothing of it. In a larger file, a refused line stops every
//! lane; batches already committed stay (run the import again after fixing the line:
//! they are skipped).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::history_file::{HistoryLine, LineChecker, millis_rfc3339};
use crate::{ApiClient, ApiError, ClientError, Result};

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines appended now.
    pub imported: u64,
    /// Lines already in the ledger (an earlier run wrote them).
    pub already: u64,
}

/// Imports `file` (`-`: standard input) in batches of `batch` lines, with progress on
/// stderr. A refused line stops the import with an error naming it; batches before it
/// stay written (run the import again after fixing the line: they are skipped).
pub async fn import_file(
    client: &ApiClient,
    file: &Path,
    batch: usize,
    allow_live_history: bool,
) -> Result<ImportSummary> {
    let batch = batch.max(1);
    if file == Path::new("-") {
        let stdin = BufReader::new(std::io::stdin());
        return send_rounds(client, stdin_lines(stdin), None, batch, allow_live_history).await;
    }
    let open = || {
        File::open(file)
            .map(BufReader::new)
            .map_err(|source| ClientError::Io {
                path: file.to_owned(),
                source,
            })
    };
    let scan = scan_file(open()?, file)?;
    let lines: Box<dyn Iterator<Item = Result<(usize, HistoryLine)>> + Send> = if scan.in_order {
        Box::new(file_lines(open()?, file.to_owned()))
    } else {
        let index = time_index(open()?, file)?;
        Box::new(indexed_lines(open()?, index, file.to_owned()))
    };
    send_rounds(client, lines, Some(scan.lines), batch, allow_live_history).await
}

/// What the checking pass learned of a file.
struct Scan {
    /// Non-blank lines.
    lines: usize,
    /// Whether the lines are in the order of their times already.
    in_order: bool,
}

/// The checking pass: every line parsed and checked, nothing kept but the last time per
/// cluster+facet. A bad line is an error naming `path` and the line.
fn scan_file(reader: impl BufRead, path: &Path) -> Result<Scan> {
    let mut checker = LineChecker::default();
    let mut scan = Scan {
        lines: 0,
        in_order: true,
    };
    let mut prev = i64::MIN;
    for line in numbered_lines(reader, path.to_owned()) {
        let (no, _, raw) = line?;
        let checked = checker
            .check(no, &raw)
            .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
        if let Some((ts, _)) = checked {
            scan.lines += 1;
            scan.in_order &= ts >= prev;
            prev = ts;
        }
    }
    Ok(scan)
}

/// The lines of `reader` with their number (from 1) and byte offset, blank ones skipped;
/// a read error names `path`. Every pass over a history reads through it.
fn numbered_lines(
    mut reader: impl BufRead,
    path: std::path::PathBuf,
) -> impl Iterator<Item = Result<(usize, u64, String)>> {
    let (mut no, mut offset) = (0usize, 0u64);
    std::iter::from_fn(move || {
        loop {
            let mut raw = String::new();
            let at = offset;
            match reader.read_line(&mut raw) {
                Ok(0) => return None,
                Ok(n) => {
                    no += 1;
                    offset += n as u64;
                }
                Err(source) => {
                    return Some(Err(ClientError::Io {
                        path: path.clone(),
                        source,
                    }));
                }
            }
            if !raw.trim().is_empty() {
                return Some(Ok((no, at, raw)));
            }
        }
    })
}

/// The lines of a checked file in file order, numbered.
fn file_lines(
    reader: impl BufRead,
    path: std::path::PathBuf,
) -> impl Iterator<Item = Result<(usize, HistoryLine)>> {
    numbered_lines(reader, path.clone()).map(move |line| {
        let (no, _, raw) = line?;
        serde_json::from_str(&raw)
            .map(|l| (no, l))
            .map_err(|e| changed_under_us(&path, no, &e.to_string()))
    })
}

/// A checked line that no longer reads: the file changed between the passes.
fn changed_under_us(path: &Path, no: usize, e: &str) -> ClientError {
    ClientError::Invalid(format!(
        "{}: line {no} no longer reads ({e}): the file changed during the import",
        path.display()
    ))
}

/// (time, line number, byte offset) of every non-blank line, in time order (ties in file
/// order): a third pass, for a file out of time order only, so that a file in order costs
/// no memory per line.
fn time_index(reader: impl BufRead, path: &Path) -> Result<Vec<(i64, usize, u64)>> {
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: String,
    }
    let mut index = Vec::new();
    for line in numbered_lines(reader, path.to_owned()) {
        let (no, offset, raw) = line?;
        // Checked by the first pass: a line that no longer reads sorts first and fails
        // when it is sent.
        let ts = serde_json::from_str::<Ts>(&raw)
            .ok()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t.ts).ok())
            .map_or(i64::MIN, |t| t.timestamp_millis());
        index.push((ts, no, offset));
    }
    index.sort_unstable();
    Ok(index)
}

/// The lines of a checked file in the order of `index`, read by offset.
fn indexed_lines(
    mut reader: impl BufRead + Seek,
    index: Vec<(i64, usize, u64)>,
    path: std::path::PathBuf,
) -> impl Iterator<Item = Result<(usize, HistoryLine)>> {
    let mut raw = String::new();
    index.into_iter().map(move |(_, no, offset)| {
        raw.clear();
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        reader.seek(SeekFrom::Start(offset)).map_err(io)?;
        reader.read_line(&mut raw).map_err(io)?;
        serde_json::from_str(&raw)
            .map(|l| (no, l))
            .map_err(|e| changed_under_us(&path, no, &e.to_string()))
    })
}

/// Standard input's lines, checked as they come; they must be in time order, since a
/// stream cannot be sorted without holding it.
fn stdin_lines(reader: impl BufRead) -> impl Iterator<Item = Result<(usize, HistoryLine)>> {
    let mut checker = LineChecker::default();
    let mut prev: Option<(usize, i64)> = None;
    numbered_lines(reader, "-".into()).filter_map(move |line| {
        let (no, raw) = match line {
            Ok((no, _, raw)) => (no, raw),
            Err(e) => return Some(Err(e)),
        };
        let (ts, line) = match checker.check(no, &raw) {
            Ok(Some(checked)) => checked,
            Ok(None) => return None,
            Err(e) => return Some(Err(ClientError::Invalid(format!("standard input: {e}")))),
        };
        if let Some((prev_no, prev_ts)) = prev.filter(|(_, p)| *p > ts) {
            return Some(Err(ClientError::Invalid(format!(
                "standard input: line {no}: ts {} is before line {prev_no}'s {}; a history read from standard input must be in time order (import it from a file to have it sorted)",
                line.ts,
                millis_rfc3339(prev_ts)
            ))));
        }
        prev = Some((no, ts));
        Some(Ok((no, line)))
    })
}

/// Numbers each cluster+facet's lines as versions 1, 2, … and makes the import items.
#[derive(Default)]
struct Numbering {
    versions: HashMap<(String, String), i64>,
}

impl Numbering {
    fn item(&mut self, no: usize, l: HistoryLine) -> Value {
        let v = self
            .versions
            .entry((l.cluster_id.clone(), l.facet.clone()))
            .or_insert(0);
        *v += 1;
        json!({
            "line": no,
            "ts": l.ts,
            "idempotency_key": format!("import:{}/{}/v{}", l.cluster_id, l.facet, v),
            "cluster_id": l.cluster_id,
            "facet": l.facet,
            "writer": l.writer,
            "reason": l.reason,
            "state": l.state,
            "expected_version": *v - 1,
        })
    }
}

/// Sends `lines` (in time order) in rounds of [`IMPORT_LANES`] batches. `total` is for
/// the progress line.
async fn send_rounds(
    client: &ApiClient,
    lines: impl Iterator<Item = Result<(usize, HistoryLine)>>,
    total: Option<usize>,
    batch: usize,
    allow_live_history: bool,
) -> Result<ImportSummary> {
    let started = Instant::now();
    let mut summary = ImportSummary::default();
    let mut done = 0;
    let mut numbering = Numbering::default();
    let mut lines = lines.peekable();
    // One lane's lines of a round, in requests of at most `batch` lines (a lane may get
    // more than its share when a few clusters have many lines in the round).
    let send = |lines: Vec<Value>| async move {
        let mut s = ImportSummary::default();
        for chunk in lines.chunks(batch) {
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
    // Rounds in time order; in a round each lane takes its clusters' lines. Two rounds are
    // in flight: a lane sends its lines of a round as soon as its lines of the round before
    // are answered (so a cluster's lines reach the ledger in order), and the next round is
    // read once the one two before it is done, so no lane runs ahead in time of the others
    // by more than two rounds and the server has the next lines while it commits. A bad
    // line stops the import before its round is sent; a refusal stops every lane.
    let mut rounds = futures::stream::FuturesOrdered::new();
    let mut lane_done: Vec<Option<futures::channel::oneshot::Receiver<bool>>> =
        (0..IMPORT_LANES).map(|_| None).collect();
    let mut first = true;
    // A bad line read: the rounds in flight finish, nothing after them is sent.
    let mut bad_line = None;
    loop {
        if bad_line.is_none() && rounds.len() < 2 && lines.peek().is_some() {
            let mut round = Vec::with_capacity(batch * IMPORT_LANES);
            for line in lines.by_ref().take(batch * IMPORT_LANES) {
                match line {
                    Ok((no, line)) => round.push(numbering.item(no, line)),
                    Err(e) => {
                        bad_line = Some(e);
                        break;
                    }
                }
            }
            if bad_line.is_some() {
                continue;
            }
            let n = round.len();
            // A file of one round of at most one batch is one request: a refusal writes
            // nothing of it. Otherwise every round has every lane, so a cluster stays in
            // its lane.
            let n_lanes = match (first, lines.peek().is_none()) {
                (true, true) => IMPORT_LANES.min(n.div_ceil(batch)).max(1),
                _ => IMPORT_LANES,
            };
            first = false;
            let mut lanes: Vec<Vec<Value>> = vec![Vec::new(); n_lanes];
            for item in round {
                let cluster = item["cluster_id"].as_str().unwrap_or_default();
                lanes[lane_of(cluster, n_lanes)].push(item);
            }
            let mut sends = Vec::with_capacity(n_lanes);
            for (lane, lane_lines) in lanes.into_iter().enumerate() {
                let before = lane_done[lane].take();
                let (done_tx, done_rx) = futures::channel::oneshot::channel();
                lane_done[lane] = Some(done_rx);
                sends.push(async move {
                    // The lane's lines of the round before must be answered, and written.
                    if let Some(before) = before
                        && !matches!(before.await, Ok(true))
                    {
                        return Ok(ImportSummary::default());
                    }
                    let answer = if lane_lines.is_empty() {
                        Ok(ImportSummary::default())
                    } else {
                        send(lane_lines).await
                    };
                    let _ = done_tx.send(answer.is_ok());
                    answer
                });
            }
            rounds.push_back(async move { (n, futures::future::try_join_all(sends).await) });
            continue;
        }
        let Some((n, answers)) = futures::StreamExt::next(&mut rounds).await else {
            break;
        };
        // The first refusal stops the import: the lanes' requests still in flight are
        // dropped (what they had written stays; a re-run skips it).
        for s in answers? {
            summary.imported += s.imported;
            summary.already += s.already;
        }
        done += n;
        let of = total.map(|t| format!("/{t}")).unwrap_or_default();
        eprint!(
            "\rimported {done}{of} lines ({:.0} lines/s)   ",
            done as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    match bad_line {
        Some(e) => Err(e),
        None => Ok(summary),
    }
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn line(minute: u32, cluster: &str, facet: &str) -> String {
        format!(
            r#"{{"ts":"2026-01-01T00:{minute:02}:00Z","cluster_id":"{cluster}","facet":"{facet}","writer":"w","state":{{}}}}"#
        )
    }

    fn order(lines: impl Iterator<Item = Result<(usize, HistoryLine)>>) -> Vec<usize> {
        lines.map(|l| l.unwrap().0).collect()
    }

    #[test]
    fn a_file_out_of_time_order_is_sent_in_time_order_through_its_index() {
        let text = [
            line(5, "a", "status"),
            String::new(),
            line(1, "a", "logical"),
            line(5, "b", "logical"),
            line(3, "b", "status"),
        ]
        .join("\n");
        let scan = scan_file(Cursor::new(&text), Path::new("f")).unwrap();
        assert_eq!((scan.lines, scan.in_order), (4, false));
        let index = time_index(Cursor::new(&text), Path::new("f")).unwrap();
        let sent = order(indexed_lines(Cursor::new(&text), index, "f".into()));
        assert_eq!(sent, vec![3, 5, 1, 4], "by time, ties in file order");
    }

    #[test]
    fn a_file_in_time_order_streams_as_it_is() {
        let text = [
            line(1, "a", "logical"),
            line(1, "b", "logical"),
            line(2, "a", "status"),
        ]
        .join("\n")
            + "\n";
        let scan = scan_file(Cursor::new(&text), Path::new("f")).unwrap();
        assert_eq!((scan.lines, scan.in_order), (3, true));
        assert_eq!(
            order(file_lines(Cursor::new(&text), "f".into())),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn the_checking_pass_names_the_bad_line() {
        let text = format!("{}\n{{\"ts\": 1}}\n", line(1, "a", "logical"));
        match scan_file(Cursor::new(&text), Path::new("f")) {
            Err(ClientError::Invalid(e)) => assert!(e.starts_with("f: line 2:"), "{e}"),
            _ => panic!("line 2 is malformed"),
        }
    }

    #[test]
    fn standard_input_must_be_in_time_order_and_stops_at_a_bad_line() {
        let text = [
            line(1, "a", "logical"),
            line(3, "b", "logical"),
            line(2, "c", "logical"),
        ]
        .join("\n");
        let mut lines = stdin_lines(Cursor::new(text));
        assert_eq!(lines.next().unwrap().unwrap().0, 1);
        assert_eq!(lines.next().unwrap().unwrap().0, 2);
        let err = lines.next().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("line 2's") && err.contains("time order"),
            "{err}"
        );
    }

    #[test]
    fn versions_count_per_cluster_and_facet() {
        let mut n = Numbering::default();
        let l = |m, c: &str, f: &str| serde_json::from_str::<HistoryLine>(&line(m, c, f)).unwrap();
        assert_eq!(n.item(1, l(1, "a", "logical"))["expected_version"], 0);
        assert_eq!(n.item(2, l(2, "a", "status"))["expected_version"], 0);
        let third = n.item(3, l(3, "a", "logical"));
        assert_eq!(third["expected_version"], 1);
        assert_eq!(third["idempotency_key"], "import:a/logical/v2");
    }
}
