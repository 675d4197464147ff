//! The history-file format that `fleetledger import` reads and the simulator writes: one
//! JSON object per line, `{"ts": RFC 3339, "cluster_id", "facet", "writer", "state",
//! "reason"?}` (`principal` is read for `writer`, the name older files used).

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of a history file: a facet's full new state at a time, by its writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryLine {
    /// When the change happened (RFC 3339).
    pub ts: String,
    /// Cluster.
    pub cluster_id: String,
    /// logical | physical | capacity | status.
    pub facet: String,
    /// The principal that made the change (must own the facet). Older files call it
    /// `principal`, which is read too.
    #[serde(alias = "principal")]
    pub writer: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The facet's full state.
    pub state: Value,
}

/// Checks a history file one line at a time, holding only the last time of each
/// cluster+facet: the one rule for what a good line is, whether the file is read whole
/// ([`parse_lines`]) or streamed (`fleetledger import`).
#[derive(Debug, Default)]
pub struct LineChecker {
    last: HashMap<(String, String), i64>,
}

impl LineChecker {
    /// Parses line `no` (1-based). `Ok(None)` for a blank line; an error names the line and
    /// says what a good one looks like, or which earlier time it goes back from. Returns
    /// the line with its time in Unix milliseconds.
    pub fn check(&mut self, no: usize, raw: &str) -> Result<Option<(i64, HistoryLine)>, String> {
        if raw.trim().is_empty() {
            return Ok(None);
        }
        let line: HistoryLine = serde_json::from_str(raw).map_err(|e| {
            format!("line {no}: not a history line ({e}); expected {{\"ts\", \"cluster_id\", \"facet\", \"writer\", \"reason\"?, \"state\"}}")
        })?;
        let ts = DateTime::parse_from_rfc3339(&line.ts)
            .map_err(|e| format!("line {no}: ts {:?} is not RFC 3339 ({e})", line.ts))?
            .timestamp_millis();
        let key = (line.cluster_id.clone(), line.facet.clone());
        match self.last.get_mut(&key) {
            Some(prev) if *prev > ts => {
                return Err(format!(
                    "line {no}: ts {} of {}/{} goes backwards (an earlier line has {}); times must not decrease per cluster and facet",
                    line.ts,
                    key.0,
                    key.1,
                    millis_rfc3339(*prev)
                ));
            }
            Some(prev) => *prev = ts,
            None => {
                self.last.insert(key, ts);
            }
        }
        Ok(Some((ts, line)))
    }
}

/// `ms` (Unix milliseconds) as RFC 3339 with milliseconds, UTC.
pub fn millis_rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Parses a history file's lines, refusing the first malformed one with its (1-based)
/// number, and times that go backwards for a cluster+facet.
pub fn parse_lines(text: &str) -> Result<Vec<(usize, HistoryLine)>, String> {
    let mut checker = LineChecker::default();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if let Some((_, line)) = checker.check(i + 1, raw)? {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_files_name_the_writer_principal_and_facets_may_interleave_in_time() {
        let ok = r#"{"ts":"2026-01-01T00:10:00Z","cluster_id":"lkc-1","facet":"status","writer":"sync","state":{}}"#;
        let other = r#"{"ts":"2026-01-01T00:01:00Z","cluster_id":"lkc-1","facet":"logical","principal":"frontend","state":{}}"#;
        let lines = parse_lines(&format!("{ok}\n{other}\n")).unwrap();
        assert_eq!(lines[1].1.writer, "frontend", "principal is read as writer");
        let mut checker = LineChecker::default();
        let (ts, _) = checker.check(7, other).unwrap().unwrap();
        assert_eq!(millis_rfc3339(ts), "2026-01-01T00:01:00.000Z");
        assert!(
            checker.check(8, "  ").unwrap().is_none(),
            "blank lines are skipped"
        );
    }

    #[test]
    fn malformed_and_backwards_lines_are_named() {
        let err = parse_lines("{\"ts\": 1}\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
        let ok = r#"{"ts":"2026-01-01T00:10:00Z","cluster_id":"lkc-1","facet":"status","writer":"sync","state":{}}"#;
        let back = r#"{"ts":"2026-01-01T00:05:00Z","cluster_id":"lkc-1","facet":"status","writer":"sync","state":{}}"#;
        let err = parse_lines(&format!("{ok}\n\n{back}\n")).unwrap_err();
        assert!(
            err.starts_with("line 3:") && err.contains("goes backwards"),
            "{err}"
        );
    }
}
