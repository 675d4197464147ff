//! Field-level diffs between two versions of a facet's state, for the audit log and recovery.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

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

/// `{"field": {"from": old, "to": new}}` for every field whose value differs; nested maps
/// (e.g. `config`) are compared per key as `config.key`. Fields absent on one side are
/// `null` there. `previous = None` (the first version) lists every field from `null`.
pub fn field_diff(previous: Option<&Value>, current: &Value) -> Value {
    let mut before = BTreeMap::new();
    if let Some(p) = previous {
        flatten("", p, &mut before);
    }
    let mut after = BTreeMap::new();
    flatten("", current, &mut after);
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Map::new();
    for k in keys {
        let from = before.get(k).cloned().unwrap_or(Value::Null);
        let to = after.get(k).cloned().unwrap_or(Value::Null);
        if from != to {
            out.insert(k.clone(), json!({"from": from, "to": to}));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
