//! Import of history kept elsewhere (another control plane, `fleetledger simulate`): lines
//! that carry their original time and writer, appended through the normal admission.
//!
//! The rules, in one place for the HTTP endpoint and the CLI that calls it:
//! - every line is checked before anything is written: its writer must own the facet and
//!   be a service (not `import` or `recovery`); the first bad line refuses the batch;
//! - each cluster's lines are appended one after the other in the order of their times
//!   (ties in line order), so a cluster's records reach the topics in time order across
//!   its facets, as a live history does; clusters go in parallel;
//! - a line whose version is already in the ledger (a resumed import) is `Already`; a line
//!   that fails skips the rest of its cluster.

use std::collections::BTreeMap;

use crate::append::{AppendRequest, Appended, Ledger};
use crate::error::{Error, Result};
use crate::principals::{IMPORT, RECOVERY};

/// One line to import: its number in the source and the change, with `ts` set to the
/// original time, `principal` to the original writer, and `expected_version` to the
/// version before it (the n-th line of a cluster+facet is its version n).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportLine {
    /// Line number in the source (1-based).
    pub line: usize,
    /// The change.
    pub request: AppendRequest,
}

/// What became of one line.
#[derive(Debug)]
pub enum ImportAnswer {
    /// Written now.
    Imported(Appended),
    /// Its version was already in the ledger (an earlier run wrote it).
    Already {
        /// The cluster+facet's version now.
        current_version: i64,
    },
    /// Refused or not written.
    Failed(Error),
    /// Not tried: an earlier line of the same cluster failed.
    Skipped,
}

/// A batch refused before anything was written, because of this line.
#[derive(Debug)]
pub struct ImportRefused {
    /// The line.
    pub line: usize,
    /// Why.
    pub error: Error,
}

/// Checks one line: a time, and a writer that owns the facet and is a service.
fn check_line(ledger: &Ledger, l: &ImportLine) -> Result<()> {
    let r = &l.request;
    let facet = r.state.facet();
    if r.ts.is_none() {
        return Err(Error::Config(
            "an imported line needs its original ts".into(),
        ));
    }
    if r.principal == IMPORT
        || r.principal == RECOVERY
        || !ledger.ownership().may_write(&r.principal, facet)
    {
        return Err(Error::Forbidden {
            principal: r.principal.clone(),
            facet,
            owner: ledger.ownership().owner(facet).to_owned(),
        });
    }
    Ok(())
}

/// The lines grouped by cluster, each cluster's in the order of their times (ties in line
/// order).
pub fn by_cluster_in_time_order(lines: Vec<ImportLine>) -> BTreeMap<String, Vec<ImportLine>> {
    let mut out: BTreeMap<String, Vec<ImportLine>> = BTreeMap::new();
    for l in lines {
        out.entry(l.request.cluster_id.clone()).or_default().push(l);
    }
    for lines in out.values_mut() {
        lines.sort_by_key(|l| (l.request.ts, l.line));
    }
    out
}

impl Ledger {
    /// Imports a batch of lines (see the module's rules). Answers per line, by line
    /// number; [`ImportRefused`] if a line is bad, with nothing written.
    pub async fn import_lines(
        &self,
        lines: Vec<ImportLine>,
    ) -> std::result::Result<Vec<(usize, ImportAnswer)>, ImportRefused> {
        for l in &lines {
            check_line(self, l).map_err(|error| ImportRefused {
                line: l.line,
                error,
            })?;
        }
        let chains = by_cluster_in_time_order(lines)
            .into_values()
            .map(|lines| async move {
                let mut out = Vec::with_capacity(lines.len());
                let mut failed = false;
                for ImportLine { line, request } in lines {
                    if failed {
                        out.push((line, ImportAnswer::Skipped));
                        continue;
                    }
                    let expected = request.expected_version.unwrap_or(0);
                    let head = self
                        .current(&request.cluster_id)
                        .await
                        .get(&request.state.facet())
                        .map_or(0, |h| h.record.meta.version);
                    if head > expected {
                        out.push((
                            line,
                            ImportAnswer::Already {
                                current_version: head,
                            },
                        ));
                        continue;
                    }
                    let answer = match self.import(request).await {
                        Ok(a) => ImportAnswer::Imported(a),
                        Err(Error::Conflict { current, .. }) if current > expected => {
                            ImportAnswer::Already {
                                current_version: current,
                            }
                        }
                        Err(e) => {
                            failed = true;
                            ImportAnswer::Failed(e)
                        }
                    };
                    out.push((line, answer));
                }
                out
            });
        let mut answers: Vec<(usize, ImportAnswer)> = futures::future::join_all(chains)
            .await
            .into_iter()
            .flatten()
            .collect();
        answers.sort_by_key(|(line, _)| *line);
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use fleetledger_schemas::{FacetState, StatusState};

    use super::*;

    fn line(line: usize, cluster: &str, ts: &str) -> ImportLine {
        ImportLine {
            line,
            request: AppendRequest {
                cluster_id: cluster.into(),
                state: FacetState::Status(Arc::new(StatusState {
                    phase: "running".into(),
                    cku: 1,
                    brokers_ready: 1,
                    observed_version: 1,
                    message: None,
                })),
                principal: "sync".into(),
                expected_version: Some(0),
                request_id: None,
                reason: None,
                ts: Some(ts.parse::<DateTime<Utc>>().unwrap()),
            },
        }
    }

    #[test]
    fn each_clusters_lines_go_in_time_order_ties_in_line_order() {
        let grouped = by_cluster_in_time_order(vec![
            line(1, "lkc-b", "2026-01-01T03:00:00Z"),
            line(2, "lkc-a", "2026-01-01T02:00:00Z"),
            line(3, "lkc-a", "2026-01-01T01:00:00Z"),
            line(4, "lkc-a", "2026-01-01T02:00:00Z"),
            line(5, "lkc-b", "2026-01-01T00:30:00Z"),
        ]);
        let order: Vec<(&str, Vec<usize>)> = grouped
            .iter()
            .map(|(c, ls)| (c.as_str(), ls.iter().map(|l| l.line).collect()))
            .collect();
        assert_eq!(order, vec![("lkc-a", vec![3, 2, 4]), ("lkc-b", vec![5, 1])]);
    }
}
