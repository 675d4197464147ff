//! The canonical JSON of a facet state: the bytes the hash chain and the idempotency digest
//! hash. Written straight from the typed state, without a `serde_json::Value` tree: the
//! fields of each state in sorted name order, maps in key order (a `BTreeMap` already is),
//! strings escaped as `serde_json` escapes them (the diff writer's escaping), no whitespace.
//!
//! Every record ever written is chained by these bytes, so they must never change: the
//! property test below holds them equal to `serde_json`'s serialization of the state's
//! JSON value (whose object keys are sorted) for every state, and the ledger's golden
//! vector pins one record's hash.

use std::collections::BTreeMap;

use crate::facet::{CapacityState, FacetState, LogicalState, PhysicalState, StatusState};

/// Appends one JSON value to the canonical output.
trait Canonical {
    fn write(&self, out: &mut String);
}

impl Canonical for str {
    fn write(&self, out: &mut String) {
        crate::diff::write_json_str(out, &[self]);
    }
}

impl Canonical for String {
    fn write(&self, out: &mut String) {
        self.as_str().write(out);
    }
}

impl Canonical for i32 {
    fn write(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(*self));
    }
}

impl Canonical for i64 {
    fn write(&self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(*self));
    }
}

impl Canonical for bool {
    fn write(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl<T: Canonical> Canonical for Option<T> {
    fn write(&self, out: &mut String) {
        match self {
            Some(v) => v.write(out),
            None => out.push_str("null"),
        }
    }
}

impl Canonical for Vec<String> {
    fn write(&self, out: &mut String) {
        out.push('[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            v.write(out);
        }
        out.push(']');
    }
}

impl Canonical for BTreeMap<String, String> {
    fn write(&self, out: &mut String) {
        out.push('{');
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            k.write(out);
            out.push(':');
            v.write(out);
        }
        out.push('}');
    }
}

/// Writes a JSON object of `(name, value)` fields, which the caller lists in sorted name
/// order (the property test fails if one is out of place).
macro_rules! object {
    ($out:expr, $($name:literal => $value:expr),+ $(,)?) => {{
        let out: &mut String = $out;
        out.push('{');
        let mut first = true;
        $(
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str(concat!("\"", $name, "\":"));
            Canonical::write($value, out);
        )+
        let _ = first;
        out.push('}');
    }};
}

impl Canonical for LogicalState {
    fn write(&self, out: &mut String) {
        object!(out,
            "cku" => &self.cku,
            "cloud" => &self.cloud,
            "config" => &self.config,
            "deleted" => &self.deleted,
            "env_id" => &self.env_id,
            "kind" => &self.kind,
            "name" => &self.name,
            "network" => &self.network,
            "org_id" => &self.org_id,
            "region" => &self.region,
            "sku" => &self.sku,
        );
    }
}

impl Canonical for PhysicalState {
    fn write(&self, out: &mut String) {
        object!(out,
            "brokers" => &self.brokers,
            "disk_gb_per_broker" => &self.disk_gb_per_broker,
            "version" => &self.version,
            "zones" => &self.zones,
        );
    }
}

impl Canonical for CapacityState {
    fn write(&self, out: &mut String) {
        object!(out,
            "k8s_cluster" => &self.k8s_cluster,
            "node_pool" => &self.node_pool,
            "satellite" => &self.satellite,
        );
    }
}

impl Canonical for StatusState {
    fn write(&self, out: &mut String) {
        object!(out,
            "brokers_ready" => &self.brokers_ready,
            "cku" => &self.cku,
            "message" => &self.message,
            "observed_version" => &self.observed_version,
            "phase" => &self.phase,
        );
    }
}

impl FacetState {
    /// The state's canonical JSON: its fields in sorted name order, maps in key order, no
    /// whitespace; the same bytes as `self.to_json().to_string()`, written without the
    /// intermediate JSON tree. What the hash chain hashes: it never changes.
    pub fn canonical_json(&self) -> String {
        let mut out = String::with_capacity(256);
        match self {
            FacetState::Logical(s) => s.write(&mut out),
            FacetState::Physical(s) => s.write(&mut out),
            FacetState::Capacity(s) => s.write(&mut out),
            FacetState::Status(s) => s.write(&mut out),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Strings with everything JSON escapes: quotes, backslashes, every control
    /// character, and any other Unicode.
    fn text() -> BoxedStrategy<String> {
        prop_oneof![
            "[a-z0-9.-]{0,12}",
            "[\\x00-\\x1f\"\\\\/a\u{7f}\u{2028}]{0,8}",
            "\\PC{0,6}",
            ".{0,6}",
        ]
        .boxed()
    }

    proptest! {
        /// The canonical bytes are `serde_json`'s serialization of the state's JSON value
        /// (sorted keys) for states of every facet, any strings and any numbers.
        #[test]
        fn canonical_json_is_the_sorted_json_value(
            state in crate::state_strategy::facet_state(
                text(),
                any::<i32>().boxed(),
                any::<i64>().boxed(),
            )
        ) {
            prop_assert_eq!(state.canonical_json(), state.to_json().to_string());
        }
    }
}
