//! The pipelined writer's rule: while one transaction commits, the next group is decided
//! against the index as it will be once that transaction commits ([`InFlight::layered`]).
//! Nothing of that decision is answered or produced before the transaction in flight has
//! committed; if it fails, the group is decided again against what really committed.
//!
//! A proposal whose answer *is* a result of the transaction in flight cannot be decided
//! before that result exists ([`InFlight::depends_on`]): a keyed retry of one of its
//! requests, and a delete of a cluster it changes (deleting a deleted cluster answers the
//! deleting version). A group with such a proposal waits for the commit. Everything else
//! is decided exactly as it would be after the commit; the property test below holds
//! admission to that.

use std::collections::{HashSet, VecDeque};

use fleetledger_schemas::{Facet, StateRecord};

use crate::admission::Proposal;
use crate::append::Appended;
use crate::index::{Head, Heads, Index, Layered, RecentRequest, trim_window};

/// What the transaction in flight will have written once it commits.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// Its last record of every cluster+facet it writes, with the idempotency window that
    /// record will carry. Results not known yet carry offset −1: its own requests', and
    /// those its windows took from the transaction before it; no decision reads them
    /// ([`InFlight::depends_on`]).
    heads: Index,
    /// The client-keyed requests its windows hold whose results are not known yet:
    /// (cluster, facet, request id).
    keyed: HashSet<(String, Facet, String)>,
    /// The clusters whose logical facet it writes.
    logical: HashSet<String>,
}

/// The history offset of a change whose transaction has not committed yet. Committed
/// results always carry their real offset (from the delivery, or from the state topic's
/// window header).
const UNKNOWN_OFFSET: i64 = -1;

/// The idempotency window's limits: at most this many requests, none older than this
/// many milliseconds than the newest.
pub(crate) type WindowLimits = (usize, u64);

impl InFlight {
    /// Adds one change of the transaction (in its order): `record` goes to `partition`;
    /// `keyed` is its client's (request id, body digest) if it entered the idempotency
    /// window. `committed` is what the transaction was decided over.
    pub(crate) fn add(
        &mut self,
        record: &StateRecord,
        partition: i32,
        keyed: Option<(&str, &str)>,
        committed: &(impl Heads + ?Sized),
        window: WindowLimits,
    ) {
        let (cluster, facet) = (&record.meta.cluster_id, record.facet());
        let appended = Appended::of(record, partition, UNKNOWN_OFFSET);
        let mut recent: VecDeque<RecentRequest> = self
            .heads
            .head(cluster, facet)
            .or_else(|| committed.head(cluster, facet))
            .map(|h| h.recent.clone())
            .unwrap_or_default();
        if let Some((request_id, digest)) = keyed {
            recent.push_back(RecentRequest {
                request_id: request_id.to_owned(),
                digest: digest.to_owned(),
                result: appended.clone(),
            });
            trim_window(&mut recent, window.0, window.1);
        }
        // Every request of the window whose result is not known yet: this transaction's,
        // and those of the transaction before it when this one was decided over that one
        // in flight (its window was taken from there).
        for r in recent.iter().filter(|r| r.result.offset == UNKNOWN_OFFSET) {
            self.keyed
                .insert((cluster.clone(), facet, r.request_id.clone()));
        }
        if facet == Facet::Logical {
            self.logical.insert(cluster.clone());
        }
        self.heads.install(Head {
            record: record.clone(),
            appended,
            recent,
        });
    }

    /// Whether `p` must wait for the transaction in flight: its answer would be one of
    /// that transaction's results (a keyed retry of its request, or deleting a cluster it
    /// changes).
    pub(crate) fn depends_on(&self, p: &Proposal) -> bool {
        let cluster = p.cluster_id();
        match p {
            Proposal::Delete(_) if self.logical.contains(cluster) => true,
            _ => p.request_id().is_some_and(|rid| {
                self.keyed
                    .contains(&(cluster.to_owned(), p.facet(), rid.clone()))
            }),
        }
    }

    /// The index as it will be once the transaction commits, over `committed`.
    pub(crate) fn layered<'a>(&'a self, committed: &'a Index) -> Layered<'a> {
        Layered {
            over: &self.heads,
            under: committed,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::admission::tests::{commit, group, keyed_put, rules, t0, written};
    use crate::admission::{Verdict, admit};
    use crate::principals::Ownership;

    /// Window limits that never trim, as the tests' `commit` does not.
    const NO_TRIM: WindowLimits = (usize::MAX, 1 << 40);

    /// The transaction in flight of the changes `v` writes, decided over `committed`.
    fn in_flight(v: &[Verdict], committed: &(impl Heads + ?Sized)) -> InFlight {
        let mut f = InFlight::default();
        for a in written(v) {
            let keyed = a
                .keyed
                .then_some((a.request_id.as_str(), a.digest.as_str()));
            f.add(&a.record, a.partition, keyed, committed, NO_TRIM);
        }
        f
    }

    #[test]
    fn a_retry_of_a_request_in_flight_and_a_delete_of_its_cluster_wait_for_it() {
        let o = Ownership::default();
        let index = Index::default();
        let first = [Proposal::Put(keyed_put("lkc-a", "k1"))];
        let v = admit(&index, &first, &rules(&o, t0()));
        let f = in_flight(&v, &index);
        assert!(f.depends_on(&first[0]), "a keyed retry waits");
        assert!(
            !f.depends_on(&Proposal::Put(keyed_put("lkc-a", "k2"))),
            "another key does not"
        );
        assert!(
            !f.depends_on(&Proposal::Put(keyed_put("lkc-b", "k1"))),
            "the same key of another cluster does not"
        );
        let delete = |cluster: &str| {
            Proposal::Delete(crate::admission::DeleteRequest {
                cluster_id: cluster.into(),
                principal: "frontend".into(),
                expected_version: None,
                request_id: None,
                reason: None,
                scope: crate::principals::Scope::All,
            })
        };
        assert!(f.depends_on(&delete("lkc-a")));
        assert!(!f.depends_on(&delete("lkc-b")));
    }

    #[test]
    fn a_retry_of_a_request_two_transactions_back_waits_while_its_window_is_borrowed() {
        let o = Ownership::default();
        let index = Index::default();
        // N writes k1 on lkc-a; N+1, decided over N in flight, writes lkc-a again (k2), so
        // its window for lkc-a holds k1 with N's result not yet known.
        let n = admit(
            &index,
            &[Proposal::Put(keyed_put("lkc-a", "k1"))],
            &rules(&o, t0()),
        );
        let f_n = in_flight(&n, &index);
        let next = admit(
            &f_n.layered(&index),
            &[Proposal::Put(keyed_put("lkc-a", "k2"))],
            &rules(&o, t0()),
        );
        let f_next = in_flight(&next, &f_n.layered(&index));
        // A retry of k1 decided over N+1 in flight would read k1's unknown result from
        // N+1's window: it waits instead.
        assert!(f_next.depends_on(&Proposal::Put(keyed_put("lkc-a", "k1"))));
        assert!(f_next.depends_on(&Proposal::Put(keyed_put("lkc-a", "k2"))));
        assert!(!f_next.depends_on(&Proposal::Put(keyed_put("lkc-a", "k3"))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A group decided over the transaction in flight gets exactly the verdicts it gets
        /// once that transaction has committed: the same records (versions, times, hashes),
        /// refusals, joins and answers. So does the group after it, decided over the second
        /// transaction while the first has committed and the second is in flight (its
        /// windows borrowed from the first's).
        #[test]
        fn deciding_over_the_transaction_in_flight_is_deciding_after_its_commit(
            seed in group(),
            first in group(),
            next in group(),
            third in group(),
        ) {
            let o = Ownership::default();
            let mut index = Index::default();
            let mut offset = 0;
            let mut commit_all = |index: &mut Index, v: &[Verdict]| {
                for a in written(v) {
                    commit(index, a, offset);
                    offset += 1;
                }
            };
            let v = admit(&index, &seed, &rules(&o, t0()));
            commit_all(&mut index, &v);
            let v1 = admit(&index, &first, &rules(&o, t0()));
            let f1 = in_flight(&v1, &index);
            let next: Vec<Proposal> = next.into_iter().filter(|p| !f1.depends_on(p)).collect();
            let early = admit(&f1.layered(&index), &next, &rules(&o, t0()));
            let f2 = in_flight(&early, &f1.layered(&index));
            commit_all(&mut index, &v1);
            let after = admit(&index, &next, &rules(&o, t0()));
            prop_assert_eq!(format!("{early:?}"), format!("{after:?}"));
            // The first committed, the second in flight.
            let third: Vec<Proposal> = third.into_iter().filter(|p| !f2.depends_on(p)).collect();
            let early = admit(&f2.layered(&index), &third, &rules(&o, t0()));
            commit_all(&mut index, &after);
            let after = admit(&index, &third, &rules(&o, t0()));
            prop_assert_eq!(format!("{early:?}"), format!("{after:?}"));
        }
    }
}
