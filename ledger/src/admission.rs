//! Admission: which changes of a group are written, with which versions, times and hashes.
//!
//! One pure function ([`admit`]) over plain data: the index of committed heads, the group
//! of proposed changes in arrival order, and the rules (ownership, partition count, the
//! time now). No I/O, no async, no clock of its own. The writer task only encodes what is
//! admitted, produces, commits and answers; everything that makes the ledger correct —
//! ownership, idempotency window, `If-Match`, gapless versions, monotone time, the hash
//! chain, and deletion against the current state — is decided here and tested without a
//! broker.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fleetledger_schemas::{Facet, FacetState, RecordMeta, StateRecord};

use crate::append::{AppendRequest, Appended};
use crate::error::Error;
use crate::hash_chain::{body_digest, canonical_state, record_hash_of_canonical};
use crate::index::Heads;
use crate::partitioner::partition_for;
use crate::principals::{Ownership, Scope};

/// The body a keyed delete's digest covers: a delete has no state of its own.
const DELETE_BODY: &str = "{\"delete\":true}";

/// Reason recorded for a delete that gives none.
const DELETE_REASON: &str = "deleted";

/// Longest idempotency key (request id), in bytes, on every path (header, batch item,
/// import line): it is stored in every record and in the idempotency window.
pub const MAX_REQUEST_ID_BYTES: usize = 200;

/// Longest reason, in bytes, on every path.
pub const MAX_REASON_BYTES: usize = 1000;

/// Why `p`'s request id or reason is refused, if one is too long or empty.
fn length_refusal(p: &Proposal) -> Option<Error> {
    let reason = match p {
        Proposal::Put(r) => r.reason.as_deref(),
        Proposal::Delete(d) => d.reason.as_deref(),
    };
    for (field, value, max) in [
        (
            "idempotency key",
            p.request_id().map(String::as_str),
            MAX_REQUEST_ID_BYTES,
        ),
        ("reason", reason, MAX_REASON_BYTES),
    ] {
        if let Some(v) = value.filter(|v| v.is_empty() || v.len() > max) {
            return Some(Error::Schema(fleetledger_schemas::Error::Invalid {
                field: field.to_owned(),
                message: format!("must be 1-{max} bytes, got {}", v.len()),
            }));
        }
    }
    None
}

/// Delete a cluster: its logical facet becomes `deleted: true`, decided against the
/// logical state current when the change is admitted (never a copy read earlier).
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteRequest {
    /// The cluster.
    pub cluster_id: String,
    /// The authenticated principal (must own the logical facet).
    pub principal: String,
    /// `If-Match`: the logical version the caller believes is current.
    pub expected_version: Option<i64>,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// Why (default `deleted`).
    pub reason: Option<String>,
    /// The orgs the caller may change (see [`Scope`]).
    pub scope: Scope,
}

/// One proposed change.
#[derive(Debug, Clone)]
pub(crate) enum Proposal {
    /// A facet's full new state.
    Put(AppendRequest),
    /// Delete the cluster.
    Delete(DeleteRequest),
}

impl Proposal {
    /// A line of an import (it carries its original time).
    fn imported(&self) -> bool {
        matches!(self, Proposal::Put(r) if r.ts.is_some())
    }

    pub(crate) fn cluster_id(&self) -> &str {
        match self {
            Proposal::Put(r) => &r.cluster_id,
            Proposal::Delete(d) => &d.cluster_id,
        }
    }

    pub(crate) fn facet(&self) -> Facet {
        match self {
            Proposal::Put(r) => r.state.facet(),
            Proposal::Delete(_) => Facet::Logical,
        }
    }

    fn principal(&self) -> &str {
        match self {
            Proposal::Put(r) => &r.principal,
            Proposal::Delete(d) => &d.principal,
        }
    }

    fn scope(&self) -> &Scope {
        match self {
            Proposal::Put(r) => &r.scope,
            Proposal::Delete(d) => &d.scope,
        }
    }

    pub(crate) fn request_id(&self) -> Option<&String> {
        match self {
            Proposal::Put(r) => r.request_id.as_ref(),
            Proposal::Delete(d) => d.request_id.as_ref(),
        }
    }

    fn expected_version(&self) -> Option<i64> {
        match self {
            Proposal::Put(r) => r.expected_version,
            Proposal::Delete(d) => d.expected_version,
        }
    }
}

/// What admission needs besides the index and the group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// Who owns which facet.
    pub(crate) ownership: &'a Ownership,
    /// Partitions of both topics.
    pub(crate) partitions: i32,
    /// The ledger's clock now.
    pub(crate) now: DateTime<Utc>,
}

/// A change to write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Admitted {
    /// The record, with version, time, `prev_hash` and hash.
    pub(crate) record: StateRecord,
    /// Whether the client gave the idempotency key (only those enter the window: a
    /// generated key names a version, so no retry could ever repeat it).
    pub(crate) keyed: bool,
    /// The request id recorded.
    pub(crate) request_id: String,
    /// Digest of the request's body, for recognising a keyed retry.
    pub(crate) digest: String,
    /// The cluster's partition.
    pub(crate) partition: i32,
}

/// The answer to a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Where the change's record is.
    pub appended: Appended,
    /// `false` when nothing needed writing (deleting a deleted cluster).
    pub written: bool,
}

/// Admission's verdict on one proposal.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Write this record; the caller is answered once its transaction committed.
    Write(Admitted),
    /// The same keyed request (same body) as the proposal at this index of the group,
    /// which is written: answered with its result.
    Join(usize),
    /// Answered now; nothing is written for it.
    Answer(Result<Outcome, Error>),
}

/// What a key looks like after the group's admitted changes so far.
#[derive(Debug, Clone)]
struct Current {
    version: i64,
    hash: String,
    ts: DateTime<Utc>,
    state: Option<FacetState>,
    /// The proposal of this group that wrote it, if one did.
    written_by: Option<usize>,
}

/// The latest `ts` of any facet of `cluster_id`: after the group's admitted changes so
/// far (`in_group`), else as committed.
fn latest_ts(
    in_group: &HashMap<&str, DateTime<Utc>>,
    index: &(impl Heads + ?Sized),
    cluster_id: &str,
) -> Option<DateTime<Utc>> {
    in_group
        .get(cluster_id)
        .copied()
        .or_else(|| index.latest_ts(cluster_id))
}

/// Why a caller of `p`'s scope may not make `p`, if it may not: a cluster whose org (its
/// logical state `org_now`, after the group's changes so far) lies outside the scope is
/// not found for it, and so is a cluster without a logical state unless `p` creates it;
/// a logical state naming an org outside the scope is [`Error::OutOfScope`].
fn scope_refusal(p: &Proposal, org_now: Option<&str>) -> Option<Error> {
    let orgs = p.scope().orgs()?;
    let not_found = || Some(Error::NotFound(p.cluster_id().to_owned()));
    let proposed_org = match p {
        Proposal::Put(AppendRequest {
            state: FacetState::Logical(l),
            ..
        }) => Some(l.org_id.as_str()),
        _ => None,
    };
    // A cluster no logical state names yet is reached only by the change that names it.
    let reachable = p.scope().sees(org_now) || (org_now.is_none() && proposed_org.is_some());
    if !reachable {
        return not_found();
    }
    match proposed_org {
        Some(org) if !orgs.contains(org) => Some(Error::OutOfScope {
            org: org.to_owned(),
            allowed: orgs.iter().cloned().collect::<Vec<_>>().join(", "),
        }),
        _ => None,
    }
}

/// The org of `cluster_id` now: its logical state after the group's admitted changes so
/// far (`current`), else as committed.
fn org_of<'a, 'k>(
    current: &'a HashMap<(&'k str, Facet), Current>,
    index: &'a (impl Heads + ?Sized),
    cluster_id: &'k str,
) -> Option<&'a str> {
    let state = match current.get(&(cluster_id, Facet::Logical)) {
        Some(c) => c.state.as_ref(),
        None => index
            .head(cluster_id, Facet::Logical)
            .map(|h| &h.record.state),
    };
    match state {
        Some(FacetState::Logical(l)) => Some(l.org_id.as_str()),
        _ => None,
    }
}

/// Decides every proposal of a group, in order: each sees the committed `index` plus the
/// changes admitted before it in the group. A refused proposal changes nothing for the
/// proposals after it. The verdicts are in the proposals' order.
pub(crate) fn admit(
    index: &(impl Heads + ?Sized),
    proposals: &[Proposal],
    rules: &Rules<'_>,
) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(proposals.len());
    let mut current: HashMap<(&str, Facet), Current> = HashMap::new();
    let mut cluster_ts: HashMap<&str, DateTime<Utc>> = HashMap::new();
    // Keyed changes admitted so far: (key, request id) → (proposal index, digest).
    let mut keyed: HashMap<(&str, Facet, &str), (usize, String)> = HashMap::new();
    for (i, p) in proposals.iter().enumerate() {
        let (cluster_id, facet) = (p.cluster_id(), p.facet());
        let verdict = (|| {
            let principal = p.principal();
            if !rules.ownership.may_write(principal, facet) {
                return Verdict::Answer(Err(Error::Forbidden {
                    principal: principal.to_owned(),
                    facet,
                    owner: rules.ownership.owner(facet).to_owned(),
                }));
            }
            if let Some(e) = length_refusal(p) {
                return Verdict::Answer(Err(e));
            }
            if let Some(e) = scope_refusal(p, org_of(&current, index, cluster_id)) {
                return Verdict::Answer(Err(e));
            }
            if let Proposal::Put(AppendRequest {
                requires: Some((after, version)),
                ..
            }) = p
            {
                let reached = current
                    .get(&(cluster_id, *after))
                    .map(|c| c.version)
                    .or_else(|| {
                        index
                            .head(cluster_id, *after)
                            .map(|h| h.record.meta.version)
                    })
                    .unwrap_or(0);
                if reached < *version {
                    return Verdict::Answer(Err(Error::PrecedingNotWritten {
                        cluster_id: cluster_id.to_owned(),
                        facet: *after,
                        version: *version,
                    }));
                }
            }
            let head = index.head(cluster_id, facet);
            let (canonical, reason) = match p {
                Proposal::Put(r) => (Some(canonical_state(&r.state)), r.reason.clone()),
                Proposal::Delete(d) => (
                    None,
                    Some(d.reason.clone().unwrap_or_else(|| DELETE_REASON.into())),
                ),
            };
            let digest = match p.request_id() {
                Some(_) => body_digest(
                    canonical.as_deref().unwrap_or(DELETE_BODY),
                    reason.as_deref(),
                ),
                None => String::new(),
            };
            if let Some(rid) = p.request_id() {
                let mismatch = || {
                    Verdict::Answer(Err(Error::IdempotencyMismatch {
                        cluster_id: cluster_id.to_owned(),
                        facet,
                        request_id: rid.clone(),
                    }))
                };
                if let Some(e) = head.and_then(|h| h.recent.iter().find(|r| &r.request_id == rid)) {
                    return if e.digest == digest {
                        Verdict::Answer(Ok(Outcome {
                            appended: e.result.clone(),
                            written: true,
                        }))
                    } else {
                        mismatch()
                    };
                }
                if let Some((j, d)) = keyed.get(&(cluster_id, facet, rid.as_str())) {
                    return if *d == digest {
                        Verdict::Join(*j)
                    } else {
                        mismatch()
                    };
                }
            }
            let cur = current
                .get(&(cluster_id, facet))
                .cloned()
                .unwrap_or_else(|| {
                    head.map_or(
                        Current {
                            version: 0,
                            hash: String::new(),
                            ts: DateTime::<Utc>::MIN_UTC,
                            state: None,
                            written_by: None,
                        },
                        |h| Current {
                            version: h.record.meta.version,
                            hash: h.record.meta.hash.clone(),
                            ts: h.record.meta.ts,
                            state: Some(h.record.state.clone()),
                            written_by: None,
                        },
                    )
                });
            if matches!(p, Proposal::Delete(_)) && cur.state.is_none() {
                return Verdict::Answer(Err(Error::NotFound(cluster_id.to_owned())));
            }
            if let Some(expected) = p.expected_version().filter(|e| *e != cur.version) {
                return Verdict::Answer(Err(Error::Conflict {
                    cluster_id: cluster_id.to_owned(),
                    facet,
                    expected,
                    current: cur.version,
                }));
            }
            let state = match p {
                Proposal::Put(r) => r.state.clone(),
                Proposal::Delete(d) => {
                    let Some(FacetState::Logical(mut logical)) = cur.state.clone() else {
                        return Verdict::Answer(Err(Error::NotFound(cluster_id.to_owned())));
                    };
                    if logical.deleted && d.request_id.is_none() {
                        return match (cur.written_by, head) {
                            (Some(j), _) => Verdict::Join(j),
                            (None, Some(h)) => Verdict::Answer(Ok(Outcome {
                                appended: h.appended.clone(),
                                written: false,
                            })),
                            (None, None) => {
                                Verdict::Answer(Err(Error::NotFound(cluster_id.to_owned())))
                            }
                        };
                    }
                    Arc::make_mut(&mut logical).deleted = true;
                    FacetState::Logical(logical)
                }
            };
            let ts = match p {
                Proposal::Put(AppendRequest { ts: Some(ts), .. }) if *ts < cur.ts => {
                    return Verdict::Answer(Err(Error::TimeBackwards {
                        cluster_id: cluster_id.to_owned(),
                        facet,
                        ts: ts.to_rfc3339(),
                        current: cur.ts.to_rfc3339(),
                    }));
                }
                Proposal::Put(AppendRequest { ts: Some(ts), .. }) => *ts,
                // The wall clock may step back (or another instance's clock be behind);
                // a cluster's time never does, across all its facets.
                _ => {
                    let floor = latest_ts(&cluster_ts, index, cluster_id)
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    rules.now.max(floor).max(cur.ts)
                }
            };
            let ts = DateTime::from_timestamp_millis(ts.timestamp_millis()).unwrap_or(ts);
            let version = cur.version + 1;
            let request_id = p
                .request_id()
                .cloned()
                .unwrap_or_else(|| format!("auto-{cluster_id}-{facet}-{version}"));
            let mut meta = RecordMeta {
                cluster_id: cluster_id.to_owned(),
                version,
                writer: p.principal().to_owned(),
                request_id: request_id.clone(),
                reason,
                ts,
                prev_hash: cur.hash,
                hash: String::new(),
            };
            let canonical = canonical.unwrap_or_else(|| canonical_state(&state));
            meta.hash = record_hash_of_canonical(&meta, facet, &canonical);
            Verdict::Write(Admitted {
                record: StateRecord { meta, state },
                // An imported line is resumed by its version and content (see
                // `crate::import`), not by the idempotency window: it takes no place there.
                keyed: p.request_id().is_some() && !p.imported(),
                request_id,
                digest,
                partition: partition_for(cluster_id, rules.partitions),
            })
        })();
        if let Verdict::Write(a) = &verdict {
            let meta = &a.record.meta;
            current.insert(
                (cluster_id, facet),
                Current {
                    version: meta.version,
                    hash: meta.hash.clone(),
                    ts: meta.ts,
                    state: Some(a.record.state.clone()),
                    written_by: Some(i),
                },
            );
            let latest =
                latest_ts(&cluster_ts, index, cluster_id).map_or(meta.ts, |t| t.max(meta.ts));
            cluster_ts.insert(cluster_id, latest);
            if let Some(rid) = p.request_id() {
                keyed.insert((cluster_id, facet, rid.as_str()), (i, a.digest.clone()));
            }
        }
        verdicts.push(verdict);
    }
    verdicts
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use chrono::TimeDelta;
    use fleetledger_schemas::{LogicalState, StatusState};
    use proptest::prelude::*;

    use super::*;
    use crate::hash_chain::record_hash;
    use crate::index::{Head, Index, RecentRequest};

    pub(crate) fn t0() -> DateTime<Utc> {
        "2026-05-01T00:00:00Z".parse().unwrap()
    }

    fn logical(cku: i32) -> FacetState {
        FacetState::Logical(Arc::new(LogicalState {
            org_id: "org-1".into(),
            env_id: "env-1".into(),
            kind: "kafka".into(),
            name: "orders".into(),
            sku: "dedicated".into(),
            cku,
            cloud: "aws".into(),
            region: "us-east-1".into(),
            network: "public".into(),
            config: BTreeMap::new(),
            deleted: false,
        }))
    }

    fn status(cku: i32) -> FacetState {
        FacetState::Status(Arc::new(StatusState {
            phase: "running".into(),
            cku,
            brokers_ready: 3,
            observed_version: 1,
            message: None,
        }))
    }

    pub(crate) fn put(cluster: &str, state: FacetState) -> AppendRequest {
        let principal = match state.facet() {
            Facet::Logical => "frontend",
            Facet::Status => "sync",
            Facet::Physical => "physical-controller",
            Facet::Capacity => "capacity-controller",
        };
        AppendRequest {
            cluster_id: cluster.into(),
            state,
            principal: principal.into(),
            expected_version: None,
            request_id: None,
            reason: None,
            ts: None,
            scope: Scope::All,
            requires: None,
        }
    }

    /// A change to `cluster`'s logical facet with the idempotency key `key`.
    pub(crate) fn keyed_put(cluster: &str, key: &str) -> AppendRequest {
        let mut r = put(cluster, logical(2));
        r.request_id = Some(key.into());
        r
    }

    /// A committed head as the writer would have installed it after admitting `a`.
    pub(crate) fn commit(index: &mut Index, a: &Admitted, offset: i64) {
        let appended = Appended::of(&a.record, a.partition, offset);
        let mut recent: VecDeque<RecentRequest> = index
            .head(&a.record.meta.cluster_id, a.record.facet())
            .map(|h| h.recent.clone())
            .unwrap_or_default();
        if a.keyed {
            recent.push_back(RecentRequest {
                request_id: a.request_id.clone(),
                digest: a.digest.clone(),
                result: appended.clone(),
            });
        }
        index.install(Head {
            record: a.record.clone(),
            appended,
            recent,
        });
    }

    pub(crate) fn rules(o: &Ownership, now: DateTime<Utc>) -> Rules<'_> {
        Rules {
            ownership: o,
            partitions: 3,
            now,
        }
    }

    pub(crate) fn written(v: &[Verdict]) -> Vec<&Admitted> {
        v.iter()
            .filter_map(|v| match v {
                Verdict::Write(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn scoped(mut r: AppendRequest, orgs: &[&str]) -> AppendRequest {
        r.scope = Scope::Orgs(Arc::new(orgs.iter().map(|o| o.to_string()).collect()));
        r
    }

    fn in_org(cku: i32, org: &str) -> FacetState {
        let FacetState::Logical(mut l) = logical(cku) else {
            unreachable!()
        };
        Arc::make_mut(&mut l).org_id = org.into();
        FacetState::Logical(l)
    }

    fn refusal(v: &Verdict) -> Option<&Error> {
        match v {
            Verdict::Answer(Err(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn a_scoped_caller_reaches_only_its_orgs_clusters() {
        let o = Ownership::default();
        let mut index = Index::default();
        // lkc-a is of org-1 (committed); lkc-b of org-2.
        let first = admit(
            &index,
            &[
                Proposal::Put(put("lkc-a", logical(2))),
                Proposal::Put(put("lkc-b", in_org(2, "org-2"))),
            ],
            &rules(&o, t0()),
        );
        for (i, a) in written(&first).into_iter().enumerate() {
            commit(&mut index, a, i as i64);
        }
        let org1 = ["org-1"];
        let group = [
            // Its own cluster: written.
            Proposal::Put(scoped(put("lkc-a", status(2)), &org1)),
            // Another org's cluster: not found (its existence does not leak).
            Proposal::Put(scoped(put("lkc-b", status(2)), &org1)),
            // Moving its own cluster into another org: out of scope.
            Proposal::Put(scoped(put("lkc-a", in_org(3, "org-2")), &org1)),
            // Creating a cluster in its org, then its status in the same group: written.
            Proposal::Put(scoped(put("lkc-c", logical(1)), &org1)),
            Proposal::Put(scoped(put("lkc-c", status(1)), &org1)),
            // Creating one in another org: out of scope.
            Proposal::Put(scoped(put("lkc-d", in_org(1, "org-2")), &org1)),
            // A status for a cluster no logical state names: not found.
            Proposal::Put(scoped(put("lkc-e", status(1)), &org1)),
            // Deleting another org's cluster: not found.
            Proposal::Delete(DeleteRequest {
                cluster_id: "lkc-b".into(),
                principal: "frontend".into(),
                expected_version: None,
                request_id: None,
                reason: None,
                scope: Scope::Orgs(Arc::new(["org-1".to_owned()].into())),
            }),
            // An unscoped caller reaches every org.
            Proposal::Put(put("lkc-b", status(3))),
        ];
        let v = admit(&index, &group, &rules(&o, t0()));
        assert!(matches!(v[0], Verdict::Write(_)));
        assert!(matches!(refusal(&v[1]), Some(Error::NotFound(c)) if c == "lkc-b"));
        assert!(
            matches!(refusal(&v[2]), Some(Error::OutOfScope { org, allowed }) if org == "org-2" && allowed == "org-1")
        );
        assert!(matches!(v[3], Verdict::Write(_)));
        assert!(matches!(v[4], Verdict::Write(_)), "{:?}", v[4]);
        assert!(matches!(refusal(&v[5]), Some(Error::OutOfScope { .. })));
        assert!(matches!(refusal(&v[6]), Some(Error::NotFound(_))));
        assert!(matches!(refusal(&v[7]), Some(Error::NotFound(_))));
        assert!(matches!(v[8], Verdict::Write(_)));
    }

    #[test]
    fn overlong_or_empty_keys_and_reasons_are_refused_on_every_path() {
        let o = Ownership::default();
        let index = Index::default();
        let with = |key: Option<usize>, reason: Option<usize>| {
            let mut r = put("lkc-a", logical(1));
            r.request_id = key.map(|n| "k".repeat(n));
            r.reason = reason.map(|n| "r".repeat(n));
            Proposal::Put(r)
        };
        let group = [
            with(Some(MAX_REQUEST_ID_BYTES), Some(MAX_REASON_BYTES)),
            with(Some(MAX_REQUEST_ID_BYTES + 1), None),
            with(None, Some(MAX_REASON_BYTES + 1)),
            with(Some(0), None),
        ];
        let v = admit(&index, &group, &rules(&o, t0()));
        assert!(matches!(v[0], Verdict::Write(_)));
        for (i, field) in [
            (1, "idempotency key"),
            (2, "reason"),
            (3, "idempotency key"),
        ] {
            assert!(
                matches!(refusal(&v[i]), Some(Error::Schema(fleetledger_schemas::Error::Invalid { field: f, .. })) if f == field),
                "{i}: {:?}",
                v[i]
            );
        }
    }

    #[test]
    fn a_delete_is_decided_against_the_state_current_at_admission() {
        let o = Ownership::default();
        let mut index = Index::default();
        let first = admit(
            &index,
            &[Proposal::Put(put("lkc-a", logical(2)))],
            &rules(&o, t0()),
        );
        commit(&mut index, written(&first)[0], 0);
        // A change to 4 CKU and a delete in one group: the delete keeps the 4.
        let group = [
            Proposal::Put(put("lkc-a", logical(4))),
            Proposal::Delete(DeleteRequest {
                cluster_id: "lkc-a".into(),
                principal: "frontend".into(),
                expected_version: None,
                request_id: None,
                reason: None,
                scope: Scope::All,
            }),
        ];
        let v = admit(&index, &group, &rules(&o, t0()));
        let w = written(&v);
        assert_eq!(w.len(), 2);
        let FacetState::Logical(l) = &w[1].record.state else {
            panic!()
        };
        assert!(l.deleted);
        assert_eq!(l.cku, 4, "not the stale copy of version 1");
        assert_eq!(w[1].record.meta.version, 3);
        assert_eq!(w[1].record.meta.reason.as_deref(), Some("deleted"));
        commit(&mut index, w[0], 1);
        commit(&mut index, w[1], 2);
        // Deleting again without a key writes nothing and answers the current version.
        let again = admit(&index, &group[1..], &rules(&o, t0()));
        match &again[0] {
            Verdict::Answer(Ok(out)) => assert_eq!((out.written, out.appended.version), (false, 3)),
            other => panic!("{other:?}"),
        }
        // A cluster that does not exist cannot be deleted.
        let Proposal::Delete(mut d) = group[1].clone() else {
            panic!()
        };
        d.cluster_id = "lkc-none".into();
        let v = admit(&index, &[Proposal::Delete(d)], &rules(&o, t0()));
        assert!(matches!(&v[0], Verdict::Answer(Err(Error::NotFound(c))) if c == "lkc-none"));
    }

    #[test]
    fn a_clusters_time_never_goes_below_its_latest_record() {
        let o = Ownership::default();
        let mut index = Index::default();
        let v = admit(
            &index,
            &[Proposal::Put(put("lkc-a", logical(2)))],
            &rules(&o, t0()),
        );
        commit(&mut index, written(&v)[0], 0);
        let back = t0() - TimeDelta::hours(2);
        let v = admit(
            &index,
            &[
                Proposal::Put(put("lkc-a", status(2))),
                Proposal::Put(put("lkc-b", status(2))),
            ],
            &rules(&o, back),
        );
        let w = written(&v);
        assert_eq!(w[0].record.meta.ts, t0(), "another facet of the cluster");
        assert_eq!(w[1].record.meta.ts, back, "another cluster");
    }

    /// A change linked to the one before it is admitted when that one is (in the group, or
    /// committed earlier) and refused when it is not, whatever its own facet.
    #[test]
    fn a_linked_change_follows_the_fate_of_the_one_before_it() {
        let o = Ownership::default();
        let mut index = Index::default();
        let link = |mut r: AppendRequest, facet, version| {
            r.requires = Some((facet, version));
            Proposal::Put(r)
        };
        let mut conflicting = put("lkc-a", logical(2));
        conflicting.expected_version = Some(5);
        let v = admit(
            &index,
            &[
                // Admitted; the status linked to it is admitted in the same group.
                Proposal::Put(put("lkc-a", status(2))),
                link(put("lkc-a", logical(2)), Facet::Status, 1),
                // Refused (a conflict); the status linked to it is refused too, though
                // its own facet would take it.
                Proposal::Put(conflicting),
                link(put("lkc-a", status(3)), Facet::Logical, 2),
            ],
            &rules(&o, t0()),
        );
        assert!(matches!(v[0], Verdict::Write(_)));
        assert!(matches!(v[1], Verdict::Write(_)));
        assert!(matches!(v[2], Verdict::Answer(Err(Error::Conflict { .. }))));
        assert!(
            matches!(
                &v[3],
                Verdict::Answer(Err(Error::PrecedingNotWritten {
                    facet: Facet::Logical,
                    version: 2,
                    ..
                }))
            ),
            "{:?}",
            v[3]
        );
        // Committed in an earlier group counts as reached.
        for (i, a) in written(&v).into_iter().enumerate() {
            commit(&mut index, a, i as i64);
        }
        let v = admit(
            &index,
            &[link(put("lkc-a", status(3)), Facet::Logical, 1)],
            &rules(&o, t0()),
        );
        assert!(matches!(v[0], Verdict::Write(_)));
    }

    /// A live keyed change takes a place in the idempotency window; an imported line
    /// (resumed by version, not by key) does not.
    #[test]
    fn imported_lines_take_no_place_in_the_idempotency_window() {
        let o = Ownership::default();
        let index = Index::default();
        let mut live = put("lkc-a", logical(2));
        live.request_id = Some("k-1".into());
        let mut imported = put("lkc-b", logical(2));
        imported.request_id = Some("import:lkc-b/logical/v1".into());
        imported.ts = Some(t0() - TimeDelta::days(30));
        let v = admit(
            &index,
            &[Proposal::Put(live), Proposal::Put(imported)],
            &rules(&o, t0()),
        );
        let w = written(&v);
        assert!(w[0].keyed);
        assert!(!w[1].keyed);
        assert_eq!(
            w[1].request_id, "import:lkc-b/logical/v1",
            "the id is still recorded"
        );
    }

    /// A random group: changes to two clusters' logical and status facets, some keyed
    /// (keys reused), some with `If-Match`, some by a principal that does not own the facet.
    pub(crate) fn group() -> impl Strategy<Value = Vec<Proposal>> {
        let one = (
            0usize..2,
            any::<bool>(),
            1i32..4,
            prop::option::of(0usize..3),
            prop::option::of(0i64..4),
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(c, is_status, cku, key, expected, foreign, delete)| {
                let cluster = ["lkc-a", "lkc-b"][c];
                if delete {
                    return Proposal::Delete(DeleteRequest {
                        cluster_id: cluster.into(),
                        principal: "frontend".into(),
                        expected_version: expected,
                        request_id: key.map(|k| format!("del-{k}")),
                        reason: None,
                        scope: Scope::All,
                    });
                }
                let mut r = put(cluster, if is_status { status(cku) } else { logical(cku) });
                r.request_id = key.map(|k| format!("k{k}"));
                r.expected_version = expected;
                if foreign {
                    r.principal = "mallory".into();
                }
                Proposal::Put(r)
            });
        proptest::collection::vec(one, 1..24)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn versions_are_gapless_chained_and_refusals_change_nothing(
            seed in group(),
            groups in proptest::collection::vec(group(), 1..4),
        ) {
            let o = Ownership::default();
            let mut index = Index::default();
            let mut offset = 0;
            for g in std::iter::once(seed).chain(groups) {
                let before = index.clone();
                let v = admit(&index, &g, &rules(&o, t0()));
                prop_assert_eq!(v.len(), g.len());
                // Per key: versions follow the committed head without gaps, each record
                // chained to the one before and hashed over its content.
                let mut last: BTreeMap<(String, Facet), (i64, String)> = BTreeMap::new();
                for a in written(&v) {
                    let m = &a.record.meta;
                    let key = (m.cluster_id.clone(), a.record.facet());
                    let (pv, ph) = last.get(&key).cloned().unwrap_or_else(|| {
                        index.head(&key.0, key.1).map_or((0, String::new()), |h| {
                            (h.record.meta.version, h.record.meta.hash.clone())
                        })
                    });
                    prop_assert_eq!(m.version, pv + 1);
                    prop_assert_eq!(&m.prev_hash, &ph);
                    prop_assert_eq!(&m.hash, &record_hash(m, &a.record.state));
                    last.insert(key, (m.version, m.hash.clone()));
                }
                for (i, verdict) in v.iter().enumerate() {
                    match verdict {
                        // A join points back at a written change of the same key: the same
                        // keyed request, or an unkeyed delete of a cluster deleted there.
                        Verdict::Join(j) => {
                            prop_assert!(*j < i);
                            prop_assert!(matches!(v[*j], Verdict::Write(_)));
                            prop_assert_eq!((g[*j].cluster_id(), g[*j].facet()), (g[i].cluster_id(), g[i].facet()));
                            let unkeyed_delete = matches!(&g[i], Proposal::Delete(d) if d.request_id.is_none());
                            prop_assert!(unkeyed_delete || g[*j].request_id() == g[i].request_id());
                        }
                        // A conflict names the version current at that point of the group.
                        Verdict::Answer(Err(Error::Conflict { current, expected, .. })) => {
                            prop_assert_ne!(current, expected);
                            let key = (g[i].cluster_id(), g[i].facet());
                            let at = v[..i].iter().zip(&g[..i]).filter(|(vv, p)| {
                                matches!(vv, Verdict::Write(_)) && (p.cluster_id(), p.facet()) == key
                            }).count() as i64;
                            let head = index.head(key.0, key.1).map_or(0, |h| h.record.meta.version);
                            prop_assert_eq!(*current, head + at);
                        }
                        Verdict::Answer(Err(Error::Forbidden { principal, .. })) => {
                            prop_assert_eq!(principal.as_str(), "mallory");
                        }
                        _ => {}
                    }
                }
                // Removing a refused proposal changes nothing for the others.
                if let Some(r) = v.iter().position(|x| matches!(x, Verdict::Answer(Err(_)))) {
                    let mut without = g.clone();
                    without.remove(r);
                    let again = admit(&index, &without, &rules(&o, t0()));
                    let a: Vec<_> = written(&v).into_iter().map(|a| a.record.clone()).collect();
                    let b: Vec<_> = written(&again).into_iter().map(|a| a.record.clone()).collect();
                    prop_assert_eq!(a, b);
                }
                prop_assert_eq!(&index, &before, "admission changes nothing by itself");
                for a in written(&v) {
                    commit(&mut index, a, offset);
                    offset += 1;
                }
                // A repeated keyed request now answers its original result.
                for (i, p) in g.iter().enumerate() {
                    if let (Some(_), Verdict::Write(a)) = (p.request_id(), &v[i]) {
                        let again = admit(&index, std::slice::from_ref(p), &rules(&o, t0()));
                        let is_original = matches!(&again[0], Verdict::Answer(Ok(out))
                            if out.appended.version == a.record.meta.version);
                        prop_assert!(is_original, "keyed retry answered {:?}", again[0]);
                    }
                }
            }
        }
    }
}
