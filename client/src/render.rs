//! Answers of the API as text for people: a timeline with its diffs, a recovery plan.

use serde_json::Value;

/// A diff object (`{"field": {"from", "to"}}`) as `field: from → to, …`.
pub fn diff_text(diff: &Value) -> String {
    let Some(map) = diff.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(field, change)| {
            let show = |v: Option<&Value>| match v {
                None | Some(Value::Null) => "∅".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            format!(
                "{field}: {} → {}",
                show(change.get("from")),
                show(change.get("to"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The timeline of `GET /v1/clusters/{id}/audit` as an aligned table: time, facet,
/// version, writer, reason, diff.
pub fn timeline_table(answer: &Value) -> String {
    let mut rows = vec![[
        "time".to_owned(),
        "facet".to_owned(),
        "version".to_owned(),
        "writer".to_owned(),
        "reason".to_owned(),
        "diff".to_owned(),
    ]];
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    for e in answer["entries"].as_array().into_iter().flatten() {
        rows.push([
            text(&e["ts"]),
            text(&e["facet"]),
            e["version"].to_string(),
            text(&e["writer"]),
            e["reason"].as_str().unwrap_or("").to_owned(),
            diff_text(&e["diff"]),
        ]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (w, c) in widths.iter().zip(r.iter()) {
            out.push_str(c);
            out.push_str(&" ".repeat(w - c.chars().count() + 2));
        }
        out.push_str(&r[5]);
        out.push('\n');
    }
    out
}

/// The plan of a recovery, facet by facet, with the difference from the current state.
pub fn recovery_text(answer: &Value) -> String {
    let mut out = format!(
        "{} {} {}\n",
        if answer["dry_run"].as_bool() == Some(true) {
            "would recover"
        } else {
            "recovered"
        },
        answer["cluster_id"].as_str().unwrap_or(""),
        answer["point"].as_str().unwrap_or("")
    );
    for f in answer["facets"].as_array().into_iter().flatten() {
        let facet = f["facet"].as_str().unwrap_or("");
        if f["unchanged"].as_bool() == Some(true) {
            out.push_str(&format!(
                "  {facet}: unchanged (v{} equals v{})\n",
                f["current_version"], f["source_version"]
            ));
        } else {
            out.push_str(&format!(
                "  {facet}: v{} restores v{} — {}\n",
                f["current_version"],
                f["source_version"],
                diff_text(&f["diff"])
            ));
        }
    }
    for a in answer["appended"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  appended {} v{} at partition {} offset {}\n",
            a["facet"].as_str().unwrap_or(""),
            a["version"],
            a["partition"],
            a["offset"]
        ));
    }
    out.push_str(&format!(
        "  reason: {}\n",
        answer["reason"].as_str().unwrap_or("")
    ));
    out
}
