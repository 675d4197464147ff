//! A proptest strategy for facet states of every facet, shared by the diff and codec
//! tests: each says which strings and numbers its fields draw from.

use proptest::prelude::*;

use crate::{CapacityState, FacetState, LogicalState, PhysicalState, StatusState};

/// States of all four facets whose strings come from `text`, whose `int` fields come from
/// `int` and whose `long` fields come from `long`; maps and lists hold up to three items.
pub(crate) fn facet_state(
    text: BoxedStrategy<String>,
    int: BoxedStrategy<i32>,
    long: BoxedStrategy<i64>,
) -> impl Strategy<Value = FacetState> {
    let t = || text.clone();
    let logical = (
        (t(), t(), t(), t(), t()),
        (int.clone(), t(), t(), t()),
        prop::collection::btree_map(t(), t(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(
                (org_id, env_id, kind, name, sku),
                (cku, cloud, region, network),
                config,
                deleted,
            )| {
                FacetState::Logical(std::sync::Arc::new(LogicalState {
                    org_id,
                    env_id,
                    kind,
                    name,
                    sku,
                    cku,
                    cloud,
                    region,
                    network,
                    config,
                    deleted,
                }))
            },
        );
    let physical = (
        int.clone(),
        int.clone(),
        prop::collection::vec(t(), 0..4),
        t(),
    )
        .prop_map(|(brokers, disk_gb_per_broker, zones, version)| {
            FacetState::Physical(std::sync::Arc::new(PhysicalState {
                brokers,
                disk_gb_per_broker,
                zones,
                version,
            }))
        });
    let capacity = (t(), t(), t()).prop_map(|(satellite, k8s_cluster, node_pool)| {
        FacetState::Capacity(std::sync::Arc::new(CapacityState {
            satellite,
            k8s_cluster,
            node_pool,
        }))
    });
    let status = (t(), int.clone(), int, long, prop::option::of(t())).prop_map(
        |(phase, cku, brokers_ready, observed_version, message)| {
            FacetState::Status(std::sync::Arc::new(StatusState {
                phase,
                cku,
                brokers_ready,
                observed_version,
                message,
            }))
        },
    );
    prop_oneof![logical, physical, capacity, status]
}
