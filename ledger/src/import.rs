//! Import of history kept elsewhere (another control plane, `fleetledger simulate`): lines
//! that carry their original time and writer, appended through the normal admission.
//!
//! The rules, in one place for the HTTP endpoint and the CLI that calls it:
//! - every line is checked before anything is written: its writer must own the facet and
//!   be a service (not `import` or `recovery`); the first bad line refuses the batch;
//! - each cluster's lines are appended in the order of their times (ties in line order),
//!   so a cluster's records reach the topics in time order across its facets, as a live
//!   history does. They are queued together, each linked to the one before it
//!   ([`AppendRequest::requires`]): the writer admits them in that order, mostly in one
//!   transaction, and a line it refuses stops the later ones. Clusters go in parallel;
//! - a line's time must lie between `ledger.import_earliest` and the ledger's clock plus
//!   `ledger.import_max_skew_ms`;
//! - a cluster+facet whose history was written live (not by an import) is not imported
//!   into, unless the caller says `allow_live_history`;
//! - a line whose version is already in the ledger (a resumed import) is `Already` if the
//!   stored record has the same state, time, writer and reason, and refused
//!   ([`Error::ImportDiffers`]) if not; a line that fails skips the rest of its cluster.

use std::collections::BTreeMap;

use fleetledger_schemas::StateRecord;

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

/// The request id of imported records start with this (the import's idempotency keys are
/// `import:{cluster}/{facet}/v{n}`): what tells imported history from live history.
const IMPORT_KEY_PREFIX: &str = "import:";

/// Checks one line: a time in the sane range, and a writer that owns the facet and is a
/// service.
fn check_line(ledger: &Ledger, l: &ImportLine) -> Result<()> {
    let r = &l.request;
    let facet = r.state.facet();
    let Some(ts) = r.ts else {
        return Err(Error::Config(
            "an imported line needs its original ts".into(),
        ));
    };
    let latest = ledger.clock.now()
        + chrono::TimeDelta::milliseconds(
            i64::try_from(ledger.config.import_max_skew_ms).unwrap_or(i64::MAX),
        );
    if ts > latest {
        return Err(Error::ImportTime {
            ts: ts.to_rfc3339(),
            why: format!(
                "in the future: an imported change must have happened by now (at most {} ms ahead of the ledger's clock, {})",
                ledger.config.import_max_skew_ms,
                ledger.clock.now().to_rfc3339()
            ),
        });
    }
    if ts < ledger.config.import_earliest {
        return Err(Error::ImportTime {
            ts: ts.to_rfc3339(),
            why: format!(
                "before {} (ledger.import_earliest): no control plane history is that old",
                ledger.config.import_earliest.to_rfc3339()
            ),
        });
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

/// What differs between the record stored at a line's version and the line, if anything.
pub fn differs(stored: &StateRecord, line: &AppendRequest) -> Option<&'static str> {
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    if stored.state != line.state {
        Some("state")
    } else if line.ts.map(ms) != Some(ms(stored.meta.ts)) {
        Some("ts")
    } else if stored.meta.writer != line.principal {
        Some("writer")
    } else if stored.meta.reason != line.reason {
        Some("reason")
    } else {
        None
    }
}

impl Ledger {
    /// Imports a batch of lines (see the module's rules). Answers per line, by line
    /// number; [`ImportRefused`] if a line is bad, with nothing written.
    pub async fn import_lines(
        &self,
        lines: Vec<ImportLine>,
        allow_live_history: bool,
    ) -> std::result::Result<Vec<(usize, ImportAnswer)>, ImportRefused> {
        let mut checked = std::collections::BTreeSet::new();
        for l in &lines {
            check_line(self, l).map_err(|error| ImportRefused {
                line: l.line,
                error,
            })?;
            let facet = l.request.state.facet();
            // Each cluster+facet's head once, not once per line.
            if allow_live_history || !checked.insert((l.request.cluster_id.as_str(), facet)) {
                continue;
            }
            let live = self
                .current(&l.request.cluster_id)
                .await
                .remove(&facet)
                .filter(|h| !h.record.meta.request_id.starts_with(IMPORT_KEY_PREFIX));
            if let Some(h) = live {
                return Err(ImportRefused {
                    line: l.line,
                    error: Error::LiveHistory {
                        cluster_id: l.request.cluster_id.clone(),
                        facet,
                        version: h.record.meta.version,
                    },
                });
            }
        }
        let chains = by_cluster_in_time_order(lines)
            .into_values()
            .map(|lines| self.import_chain(lines));
        let mut answers: Vec<(usize, ImportAnswer)> = futures::future::join_all(chains)
            .await
            .into_iter()
            .flatten()
            .collect();
        answers.sort_by_key(|(line, _)| *line);
        Ok(answers)
    }

    /// One cluster's lines, in time order. Lines whose version is already written (a
    /// resumed import) are compared with what is stored; the others are all queued at once,
    /// in order, each linked to the line before it ([`AppendRequest::requires`]), so the
    /// writer admits each against the one before it in the same group and a cluster's
    /// lines cost one transaction, not one each, while a refused line still stops the
    /// later ones. After the first line that fails, the cluster's later lines are answered
    /// [`ImportAnswer::Skipped`] when they were refused, and with their own answer when
    /// they may have been written (written, or an unknown outcome): nothing written is
    /// ever answered as skipped.
    async fn import_chain(&self, lines: Vec<ImportLine>) -> Vec<(usize, ImportAnswer)> {
        let heads = self
            .current(lines.first().map_or("", |l| l.request.cluster_id.as_str()))
            .await;
        let head_of = |facet| heads.get(&facet).map_or(0, |h| h.record.meta.version);
        // Each line's answer, in order: known now for the lines already written (a resumed
        // import), `None` for the new ones until they are answered.
        let mut answers: Vec<Option<ImportAnswer>> = Vec::with_capacity(lines.len());
        let mut first_failure = None;
        for (i, l) in lines.iter().enumerate() {
            let expected = l.request.expected_version.unwrap_or(0);
            let facet = l.request.state.facet();
            let current = head_of(facet);
            if current <= expected {
                answers.push(None);
                continue;
            }
            let answer = if first_failure.is_some() {
                ImportAnswer::Skipped
            } else {
                self.already(&l.request, heads.get(&facet), current).await
            };
            if first_failure.is_none() && matches!(answer, ImportAnswer::Failed(_)) {
                first_failure = Some(i);
            }
            answers.push(Some(answer));
        }
        let cut = first_failure.unwrap_or(lines.len());
        let new: Vec<usize> = (0..cut).filter(|&i| answers[i].is_none()).collect();
        // Each line is linked to the one before it: if that one is not written, neither is
        // this one, as if it had waited for it.
        let linked = |i: usize| {
            let mut request = lines[i].request.clone();
            request.requires = i.checked_sub(1).map(|j| {
                let before = &lines[j].request;
                (
                    before.state.facet(),
                    before.expected_version.unwrap_or(0) + 1,
                )
            });
            request
        };
        let written = self
            .import_linked(new.iter().map(|&i| linked(i)).collect())
            .await;
        for (i, result) in new.into_iter().zip(written) {
            let expected = lines[i].request.expected_version.unwrap_or(0);
            answers[i] = Some(match result {
                Ok(a) => ImportAnswer::Imported(a),
                Err(Error::Conflict { current, .. }) if current > expected => {
                    ImportAnswer::Already {
                        current_version: current,
                    }
                }
                Err(e) => ImportAnswer::Failed(e),
            });
        }
        let mut failed = false;
        lines
            .into_iter()
            .zip(answers)
            .map(|(l, answer)| {
                let answer = match answer.unwrap_or(ImportAnswer::Skipped) {
                    a @ ImportAnswer::Imported(_) => a,
                    a @ ImportAnswer::Failed(Error::OutcomeUnknown(_)) => {
                        failed = true;
                        a
                    }
                    _ if failed => ImportAnswer::Skipped,
                    a => {
                        failed = matches!(a, ImportAnswer::Failed(_) | ImportAnswer::Skipped);
                        a
                    }
                };
                (l.line, answer)
            })
            .collect()
    }

    /// The answer to a line whose version `current` has passed: the record stored at the
    /// line's version must be the line (`head` is the facet's current record).
    async fn already(
        &self,
        request: &AppendRequest,
        head: Option<&crate::index::Head>,
        current: i64,
    ) -> ImportAnswer {
        let facet = request.state.facet();
        let version = request.expected_version.unwrap_or(0) + 1;
        let stored = match head.filter(|h| h.record.meta.version == version) {
            Some(h) => Ok(Some(h.record.clone())),
            None => self.history(&request.cluster_id, None).await.map(|hist| {
                hist.entries()
                    .iter()
                    .find(|e| e.record.facet() == facet && e.record.meta.version == version)
                    .map(|e| e.record.clone())
            }),
        };
        match stored {
            Ok(Some(r)) => match differs(&r, request) {
                None => ImportAnswer::Already {
                    current_version: current,
                },
                Some(what) => ImportAnswer::Failed(Error::ImportDiffers {
                    cluster_id: request.cluster_id.clone(),
                    facet,
                    version,
                    what,
                }),
            },
            // Erased (a tombstone): nothing to compare with.
            Ok(None) => ImportAnswer::Already {
                current_version: current,
            },
            Err(e) => ImportAnswer::Failed(e),
        }
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
                scope: crate::Scope::All,
                requires: None,
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
