//! The SHA-256 chain per cluster+facet: each record's hash covers its metadata, its
//! state and the previous record's hash, so changing or removing any record breaks every
//! later link.

use fleetledger_schemas::{FacetState, RecordMeta};
use sha2::{Digest, Sha256};

/// The hash of a record whose metadata (except `hash`) and state are given. Canonical
/// input: one field per line in a fixed order, the state as JSON with sorted map keys.
pub fn record_hash(meta: &RecordMeta, state: &FacetState) -> String {
    let mut h = Sha256::new();
    let reason = meta.reason.as_deref().unwrap_or("");
    for part in [
        meta.cluster_id.as_str(),
        state.facet().as_str(),
        &meta.version.to_string(),
        meta.writer.as_str(),
        meta.request_id.as_str(),
        reason,
        &meta.ts.timestamp_millis().to_string(),
        meta.prev_hash.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(state.to_json().to_string().as_bytes());
    hex::encode(h.finalize())
}

/// The SHA-256 of a request body, to tell a repeated idempotency key with the same body
/// from one with a different body.
pub fn body_digest(state: &FacetState, reason: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(state.to_json().to_string().as_bytes());
    h.update([0]);
    h.update(reason.unwrap_or("").as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use fleetledger_schemas::CapacityState;

    fn meta(version: i64, prev: &str) -> RecordMeta {
        RecordMeta {
            cluster_id: "lkc-1".into(),
            version,
            writer: "capacity-controller".into(),
            request_id: "r".into(),
            reason: None,
            ts: Utc::now(),
            prev_hash: prev.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn any_change_changes_the_hash() {
        let s = FacetState::Capacity(CapacityState {
            satellite: "a".into(),
            k8s_cluster: "b".into(),
            node_pool: "c".into(),
        });
        let m = meta(1, "");
        let h = record_hash(&m, &s);
        assert_eq!(h.len(), 64);
        assert_eq!(h, record_hash(&m, &s));
        assert_ne!(h, record_hash(&meta(2, ""), &s));
        assert_ne!(
            h,
            record_hash(
                &RecordMeta {
                    prev_hash: "x".into(),
                    ..m.clone()
                },
                &s
            )
        );
        let s2 = FacetState::Capacity(CapacityState {
            satellite: "a2".into(),
            k8s_cluster: "b".into(),
            node_pool: "c".into(),
        });
        assert_ne!(h, record_hash(&m, &s2));
    }
}
