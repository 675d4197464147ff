//! The history-file format that `fleetledger import` reads and the simulator writes: one
//! JSON object per line, `{"ts": RFC 3339, "cluster_id", "facet", "writer", "state",
//! "reason"?}` (`principal` is read for `writer`, the name older files used).

use std::collections::BTreeMap;

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

/// `lines` in the order of their times (ties keep their order): the order a live ledger
/// would have written them in. Each cluster+facet's lines keep their order, since
/// [`parse_lines`] refuses times that go backwards within one.
pub fn in_time_order(mut lines: Vec<(usize, HistoryLine)>) -> Vec<(usize, HistoryLine)> {
    lines.sort_by_cached_key(|(no, l)| {
        let ts = DateTime::parse_from_rfc3339(&l.ts).map(|t| t.timestamp_millis());
        (ts.unwrap_or(i64::MIN), *no)
    });
    lines
}

/// Parses a history file's lines, refusing the first malformed one with its (1-based)
/// number, and times that go backwards for a cluster+facet.
pub fn parse_lines(text: &str) -> Result<Vec<(usize, HistoryLine)>, String> {
    let mut out = Vec::new();
    let mut last: BTreeMap<(String, String), DateTime<Utc>> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: HistoryLine = serde_json::from_str(raw).map_err(|e| {
            format!("line {no}: not a history line ({e}); expected {{\"ts\", \"cluster_id\", \"facet\", \"writer\", \"reason\"?, \"state\"}}")
        })?;
        let ts = DateTime::parse_from_rfc3339(&line.ts)
            .map_err(|e| format!("line {no}: ts {:?} is not RFC 3339 ({e})", line.ts))?
            .with_timezone(&Utc);
        let key = (line.cluster_id.clone(), line.facet.clone());
        if let Some(prev) = last.get(&key).filter(|p| **p > ts) {
            return Err(format!(
                "line {no}: ts {} of {}/{} goes backwards (an earlier line has {}); times must not decrease per cluster and facet",
                line.ts,
                key.0,
                key.1,
                prev.to_rfc3339_opts(SecondsFormat::Millis, true)
            ));
        }
        last.insert(key, ts);
        out.push((no, line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_files_name_the_writer_principal_and_lines_go_in_time_order() {
        let ok = r#"{"ts":"2026-01-01T00:10:00Z","cluster_id":"lkc-1","facet":"status","writer":"sync","state":{}}"#;
        let other = r#"{"ts":"2026-01-01T00:01:00Z","cluster_id":"lkc-1","facet":"logical","principal":"frontend","state":{}}"#;
        let lines = parse_lines(&format!("{ok}\n{other}\n")).unwrap();
        assert_eq!(lines[1].1.writer, "frontend", "principal is read as writer");
        let ordered: Vec<usize> = in_time_order(lines).into_iter().map(|(n, _)| n).collect();
        assert_eq!(ordered, vec![2, 1]);
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
