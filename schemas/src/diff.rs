//! Field-level diffs between two versions of a facet's state, for the audit log and recovery.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Map, Value, json};

use crate::FacetState;

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

/// The entries of two maps that iterate in key order, paired by key in one merge walk:
/// each key once, with its value on either side (`None` where it is absent).
fn merge_by_key<'a, V: 'a>(
    before: impl Iterator<Item = (&'a String, &'a V)>,
    after: impl Iterator<Item = (&'a String, &'a V)>,
) -> impl Iterator<Item = (&'a String, Option<&'a V>, Option<&'a V>)> {
    let (mut b, mut a) = (before.peekable(), after.peekable());
    std::iter::from_fn(move || {
        let order = match (b.peek(), a.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((kb, _)), Some((ka, _))) => kb.as_str().cmp(ka.as_str()),
        };
        Some(match order {
            Ordering::Less => b.next().map(|(k, x)| (k, Some(x), None))?,
            Ordering::Greater => a.next().map(|(k, y)| (k, None, Some(y)))?,
            Ordering::Equal => {
                let (k, x) = b.next()?;
                let (_, y) = a.next()?;
                (k, Some(x), Some(y))
            }
        })
    })
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
    for (k, x, y) in merge_by_key(b.unwrap_or(&empty).iter(), a.unwrap_or(&empty).iter()) {
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

/// One field of a facet state as the flattened JSON view sees it.
#[derive(Clone, Copy)]
enum FieldValue<'a> {
    /// A string.
    Str(&'a str),
    /// An optional string (`null` when absent).
    OptStr(Option<&'a str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list of strings (a leaf: lists are compared whole).
    Strings(&'a [String]),
    /// A string map, expanded into `name.key` fields (`{}` when empty).
    Map(&'a BTreeMap<String, String>),
}

/// Most fields a facet state has.
const MAX_FIELDS: usize = 11;

/// The fields of `state` in the byte order of their names, which is the order the JSON
/// view ([`FacetState::to_json`]) sorts them in (`state_diff_json_matches_field_diff`
/// checks that the two views agree); on the stack, since every audited record needs them.
fn fields(state: &FacetState) -> ([(&'static str, FieldValue<'_>); MAX_FIELDS], usize) {
    use FieldValue::*;
    fn padded<'a, const N: usize>(
        named: [(&'static str, FieldValue<'a>); N],
    ) -> ([(&'static str, FieldValue<'a>); MAX_FIELDS], usize) {
        let mut all = [("", Int(0)); MAX_FIELDS];
        all[..N].copy_from_slice(&named);
        (all, N)
    }
    match state {
        FacetState::Logical(s) => padded([
            ("cku", Int(s.cku.into())),
            ("cloud", Str(&s.cloud)),
            ("config", Map(&s.config)),
            ("deleted", Bool(s.deleted)),
            ("env_id", Str(&s.env_id)),
            ("kind", Str(&s.kind)),
            ("name", Str(&s.name)),
            ("network", Str(&s.network)),
            ("org_id", Str(&s.org_id)),
            ("region", Str(&s.region)),
            ("sku", Str(&s.sku)),
        ]),
        FacetState::Physical(s) => padded([
            ("brokers", Int(s.brokers.into())),
            ("disk_gb_per_broker", Int(s.disk_gb_per_broker.into())),
            ("version", Str(&s.version)),
            ("zones", Strings(&s.zones)),
        ]),
        FacetState::Capacity(s) => padded([
            ("k8s_cluster", Str(&s.k8s_cluster)),
            ("node_pool", Str(&s.node_pool)),
            ("satellite", Str(&s.satellite)),
        ]),
        FacetState::Status(s) => padded([
            ("brokers_ready", Int(s.brokers_ready.into())),
            ("cku", Int(s.cku.into())),
            ("message", OptStr(s.message.as_deref())),
            ("observed_version", Int(s.observed_version)),
            ("phase", Str(&s.phase)),
        ]),
    }
}

/// A leaf value of the flattened view; `Null` stands for absent too.
#[derive(PartialEq)]
enum Leaf<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Strings(&'a [String]),
    EmptyMap,
}

impl Leaf<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Leaf::Null => out.push_str("null"),
            Leaf::Str(s) => write_json_str(out, &[s]),
            Leaf::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Leaf::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Leaf::Strings(items) => {
                out.push('[');
                for (i, s) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_str(out, &[s]);
                }
                out.push(']');
            }
            Leaf::EmptyMap => out.push_str("{}"),
        }
    }
}

/// Writes the concatenation of `parts` as one JSON string, escaped as serde_json escapes.
pub(crate) fn write_json_str(out: &mut String, parts: &[&str]) {
    out.push('"');
    for part in parts {
        let mut start = 0;
        for (i, b) in part.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            out.push_str(&part[start..i]);
            if escape.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(escape);
            }
            start = i + 1;
        }
        out.push_str(&part[start..]);
    }
    out.push('"');
}

/// Appends `"name":{"from":from,"to":to}`, the name being the concatenation of
/// `name_parts` (after a comma unless it is the first).
fn write_change(out: &mut String, name_parts: &[&str], from: &Leaf, to: &Leaf) {
    if !out.ends_with('{') {
        out.push(',');
    }
    write_json_str(out, name_parts);
    out.push_str(":{\"from\":");
    from.write(out);
    out.push_str(",\"to\":");
    to.write(out);
    out.push('}');
}

/// The diff of two string maps named `name`, flattened as [`field_diff`] flattens them.
fn write_map_diff(
    out: &mut String,
    name: &str,
    before: Option<&BTreeMap<String, String>>,
    after: &BTreeMap<String, String>,
) {
    let as_leaf = |m: Option<&BTreeMap<String, String>>| match m {
        Some(m) if m.is_empty() => Leaf::EmptyMap,
        _ => Leaf::Null,
    };
    let (from, to) = (as_leaf(before), as_leaf(Some(after)));
    if from != to {
        write_change(out, &[name], &from, &to);
    }
    let empty = BTreeMap::new();
    for (k, x, y) in merge_by_key(before.unwrap_or(&empty).iter(), after.iter()) {
        let from = x.map_or(Leaf::Null, |v| Leaf::Str(v));
        let to = y.map_or(Leaf::Null, |v| Leaf::Str(v));
        if from != to {
            write_change(out, &[name, ".", k], &from, &to);
        }
    }
}

/// Appends to `out` the JSON text of
/// `field_diff(previous.map(FacetState::to_json), current.to_json())`, the same bytes,
/// without building either JSON tree: for the audit log, which diffs every record.
/// `previous` of another facet than `current` counts as no previous version.
pub fn write_state_diff(out: &mut String, previous: Option<&FacetState>, current: &FacetState) {
    let previous = previous.filter(|p| p.facet() == current.facet());
    let before = previous.map(fields);
    let (after, n) = fields(current);
    out.push('{');
    for (i, &(name, to)) in after[..n].iter().enumerate() {
        let from = before.as_ref().map(|(b, _)| &b[i].1);
        fn leaf<'a>(v: Option<&FieldValue<'a>>) -> Leaf<'a> {
            match v {
                None | Some(FieldValue::OptStr(None)) => Leaf::Null,
                Some(FieldValue::Str(s) | FieldValue::OptStr(Some(s))) => Leaf::Str(s),
                Some(FieldValue::Int(n)) => Leaf::Int(*n),
                Some(FieldValue::Bool(b)) => Leaf::Bool(*b),
                Some(FieldValue::Strings(v)) => Leaf::Strings(v),
                // Maps are diffed by write_map_diff before this is reached.
                Some(FieldValue::Map(_)) => Leaf::EmptyMap,
            }
        }
        if let FieldValue::Map(after) = to {
            let before = match from {
                Some(FieldValue::Map(m)) => Some(*m),
                _ => None,
            };
            write_map_diff(out, name, before, after);
            continue;
        }
        let (from, to) = (leaf(from), leaf(Some(&to)));
        if from != to {
            write_change(out, &[name], &from, &to);
        }
    }
    out.push('}');
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

    /// Strings with the characters JSON escapes, and some it does not.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{0,3}",
            "[a\\\"\\\\\\n\\t\\u{1}\\u{8}\\u{c}\\r\\u{1f}\\u{7f}é€😀.]{0,4}",
        ]
    }

    fn facet_state() -> impl Strategy<Value = FacetState> {
        crate::state_strategy::facet_state(text().boxed(), (-1i32..3).boxed(), (0i64..3).boxed())
    }

    /// The same facet with some fields taken from `a`, some from `b`: mostly small diffs.
    fn related_pair() -> impl Strategy<Value = (FacetState, FacetState)> {
        (facet_state(), facet_state(), any::<u16>()).prop_map(|(a, b, mask)| {
            let mut fa = a.to_json();
            let fb = b.to_json();
            if a.facet() == b.facet()
                && let (Value::Object(ma), Value::Object(mb)) = (&mut fa, &fb)
            {
                for (i, (k, v)) in mb.iter().enumerate() {
                    if mask & (1 << (i % 16)) != 0 {
                        ma.insert(k.clone(), v.clone());
                    }
                }
            }
            let mixed = FacetState::from_json(a.facet(), fa.to_string().as_bytes())
                .or_else(|_| parse_unchecked(a.facet(), &fa))
                .expect("a facet's own JSON parses");
            (mixed, a)
        })
    }

    /// Parses a state without the domain checks (the generated values break them).
    fn parse_unchecked(facet: crate::Facet, v: &Value) -> serde_json::Result<FacetState> {
        use crate::Facet;
        Ok(match facet {
            Facet::Logical => FacetState::Logical(serde_json::from_value(v.clone())?),
            Facet::Physical => FacetState::Physical(serde_json::from_value(v.clone())?),
            Facet::Capacity => FacetState::Capacity(serde_json::from_value(v.clone())?),
            Facet::Status => FacetState::Status(serde_json::from_value(v.clone())?),
        })
    }

    proptest! {
        #[test]
        fn state_diff_json_matches_field_diff((a, b) in related_pair(), first in any::<bool>()) {
            let previous = (!first).then_some(&a);
            let mut typed = String::from("prefix:");
            write_state_diff(&mut typed, previous, &b);
            let json = field_diff(previous.map(FacetState::to_json).as_ref(), &b.to_json());
            prop_assert_eq!(typed, format!("prefix:{json}"));
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
