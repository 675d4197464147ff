//! Field-level diffs between two versions of a facet's state, for the audit log and recovery.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

/// `v` as a leaf of the flattened view: anything but an object, or an empty object below
/// the top (an empty map is a value of its own, `{}`).
fn leaf<'a>(prefix: &str, v: Option<&'a Value>) -> Option<&'a Value> {
    match v {
        Some(Value::Object(m)) if !m.is_empty() || prefix.is_empty() => None,
        other => other,
    }
}

/// The entries of `v` when it is an object that is expanded into `prefix.key` fields.
fn expanded<'a>(prefix: &str, v: Option<&'a Value>) -> Option<&'a Map<String, Value>> {
    match v {
        Some(Value::Object(m)) if !m.is_empty() || prefix.is_empty() => Some(m),
        _ => None,
    }
}

fn diff_into(
    prefix: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Map<String, Value>,
) {
    let (from, to) = (leaf(prefix, before), leaf(prefix, after));
    if (from.is_some() || to.is_some())
        && from.unwrap_or(&Value::Null) != to.unwrap_or(&Value::Null)
    {
        out.insert(
            prefix.to_owned(),
            json!({"from": from.cloned().unwrap_or(Value::Null), "to": to.cloned().unwrap_or(Value::Null)}),
        );
    }
    let (b, a) = (expanded(prefix, before), expanded(prefix, after));
    if b.is_none() && a.is_none() {
        return;
    }
    // Both maps iterate in key order (serde_json's map is a BTreeMap: the crate does not
    // enable `preserve_order`; the property test below would catch it), so one merge walk
    // pairs their keys: no key set, no lookups.
    let empty = Map::new();
    let mut before_fields = b.unwrap_or(&empty).iter().peekable();
    let mut after_fields = a.unwrap_or(&empty).iter().peekable();
    loop {
        let order = match (before_fields.peek(), after_fields.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((kb, _)), Some((ka, _))) => kb.as_str().cmp(ka.as_str()),
        };
        let (k, x, y) = match order {
            Ordering::Less => {
                let (k, x) = before_fields.next().expect("peeked");
                (k, Some(x), None)
            }
            Ordering::Greater => {
                let (k, y) = after_fields.next().expect("peeked");
                (k, None, Some(y))
            }
            Ordering::Equal => {
                let (k, x) = before_fields.next().expect("peeked");
                let (_, y) = after_fields.next().expect("peeked");
                (k, Some(x), Some(y))
            }
        };
        // Equal subtrees have no differences: skip them without building their names.
        if x.is_some() && x == y {
            continue;
        }
        let key = if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        };
        diff_into(&key, x, y, out);
    }
}

/// `{"field": {"from": old, "to": new}}` for every field whose value differs; nested maps
/// (e.g. `config`) are compared per key as `config.key`. Fields absent on one side are
/// `null` there. `previous = None` (the first version) lists every field from `null`.
/// Only differing fields are copied: equal fields cost a comparison, no allocation.
pub fn field_diff(previous: Option<&Value>, current: &Value) -> Value {
    let mut out = Map::new();
    diff_into("", previous, Some(current), &mut out);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The definition: flatten both sides to `a.b` keys, compare key by key.
    fn reference_diff(previous: Option<&Value>, current: &Value) -> Value {
        fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
            match v {
                Value::Object(m) => {
                    if m.is_empty() && !prefix.is_empty() {
                        out.insert(prefix.to_owned(), json!({}));
                    }
                    for (k, v) in m {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flatten(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_owned(), other.clone());
                }
            }
        }
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        if let Some(p) = previous {
            flatten("", p, &mut before);
        }
        flatten("", current, &mut after);
        let mut out = Map::new();
        for k in before.keys().chain(after.keys()) {
            let from = before.get(k).cloned().unwrap_or(Value::Null);
            let to = after.get(k).cloned().unwrap_or(Value::Null);
            if from != to {
                out.insert(k.clone(), json!({"from": from, "to": to}));
            }
        }
        Value::Object(out)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop::collection::btree_map("[abc]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn json_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[abcd]", json_value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn agrees_with_the_flattening_definition(a in json_object(), b in json_object(), first in any::<bool>()) {
            let previous = (!first).then_some(&a);
            prop_assert_eq!(field_diff(previous, &b), reference_diff(previous, &b));
        }
    }

    #[test]
    fn one_field_several_fields_nested_and_first_version() {
        let a = json!({"cku": 2, "name": "x", "config": {"a": "1"}, "deleted": false});
        let b = json!({"cku": 4, "name": "x", "config": {"a": "1"}, "deleted": false});
        assert_eq!(
            field_diff(Some(&a), &b),
            json!({"cku": {"from": 2, "to": 4}})
        );
        let c = json!({"cku": 4, "name": "y", "config": {"a": "2", "b": "3"}, "deleted": true});
        assert_eq!(
            field_diff(Some(&b), &c),
            json!({
                "config.a": {"from": "1", "to": "2"},
                "config.b": {"from": null, "to": "3"},
                "deleted": {"from": false, "to": true},
                "name": {"from": "x", "to": "y"}
            })
        );
        assert_eq!(field_diff(Some(&c), &c), json!({}));
        let first = field_diff(None, &json!({"cku": 1}));
        assert_eq!(first, json!({"cku": {"from": null, "to": 1}}));
    }
}
