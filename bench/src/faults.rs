//! The fault suite's report: `deploy/local/faults` runs the fault scenarios of the e2e
//! tests (`tests/e2e/faults.rs`) at their long settings; each scenario appends one JSON
//! line of figures, and [`fault_report`] turns those lines (and the run's `meta` lines)
//! into `faults/REPORT.md`.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// How long after the fault ends the first write must succeed again.
pub const RECOVERY_LIMIT_S: f64 = 10.0;

/// How long after the writer is killed or cut off a standby must accept writes.
pub const TAKEOVER_LIMIT_S: f64 = 15.0;

/// Whether a scenario kept every promise, and if not, which it broke.
pub fn broken_promises(s: &Value) -> Vec<String> {
    let mut broken = Vec::new();
    let count = |k: &str| s[k].as_u64().unwrap_or(0);
    for (key, what) in [
        ("lost", "acknowledged changes lost"),
        ("duplicated", "changes written twice"),
        (
            "wrong_version",
            "changes under another version than answered",
        ),
        ("gaps", "version gaps"),
        (
            "not_written_but_written",
            "changes answered \"not written\" that are in history",
        ),
        ("fenced", "answers \"fenced\" with no other writer"),
    ] {
        if count(key) > 0 {
            broken.push(format!("{} {what}", count(key)));
        }
    }
    if s["acknowledged"].as_u64().unwrap_or(0) == 0 {
        broken.push("nothing was acknowledged: the load did not run".into());
    }
    match s["recovery_s"].as_f64() {
        None => broken.push("writes never came back".into()),
        Some(r) if s["kind"] == "broker_outage" && r > RECOVERY_LIMIT_S => broken.push(format!(
            "writes came back after {r:.1} s (limit {RECOVERY_LIMIT_S} s)"
        )),
        Some(r) if s["kind"] == "writer_failover" && r > TAKEOVER_LIMIT_S => broken.push(format!(
            "a standby took writes after {r:.1} s (limit {TAKEOVER_LIMIT_S} s)"
        )),
        _ => {}
    }
    if s["kind"] == "broker_outage" && s["not_ready_after_s"].is_null() {
        broken.push("/readyz never said not ready during the outage".into());
    }
    if s["projections_equal_rebuild"] == false {
        broken.push(format!(
            "projections differ from a clean rebuild: {}",
            s["projections_detail"]
                .as_str()
                .unwrap_or("their rows differ")
        ));
    }
    if s["kind"] == "serve_term" && s["exit"] != 0 {
        broken.push(format!("serve exited with {} on SIGTERM", s["exit"]));
    }
    broken
}

fn seconds(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |s| format!("{s:.1}"))
}

/// `faults/REPORT.md` from the suite's JSON lines: scenario lines (with `scenario`) and
/// `{"meta", "value"}` lines.
pub fn fault_report(lines: &[Value]) -> String {
    let mut md = String::from(
        "# Fault suite\n\n\
         Produced by `deploy/local/faults` (a release build against the local broker; the \
         scenarios are the e2e tests in `tests/e2e/faults.rs` at their long settings). Each \
         scenario runs a keyed write load, does the fault, lets the clients retry what they \
         did not get an answer to with the same Idempotency-Key, and then counts every \
         request against history. Regenerate with `deploy/local/faults`.\n\n",
    );
    let meta: Vec<&Value> = lines.iter().filter(|l| l.get("meta").is_some()).collect();
    if !meta.is_empty() {
        md.push_str("| condition | value |\n|---|---|\n");
        for m in meta {
            md.push_str(&format!(
                "| {} | {} |\n",
                m["meta"].as_str().unwrap_or_default(),
                m["value"].as_str().unwrap_or_default()
            ));
        }
        md.push('\n');
    }
    let scenarios: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("scenario").is_some())
        .collect();
    md.push_str(
        "| scenario | faults | answers | acknowledged | lost | duplicated | \"not written\" but written | recovery (s) | projections = clean rebuild | holds |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let count = |s: &Value, k: &str| s[k].as_u64().map_or("—".into(), |n| n.to_string());
    for s in &scenarios {
        let broken = broken_promises(s);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s["scenario"].as_str().unwrap_or_default(),
            count(s, "faults"),
            count(s, "answers"),
            count(s, "acknowledged"),
            count(s, "lost"),
            count(s, "duplicated"),
            count(s, "not_written_but_written"),
            seconds(&s["recovery_s"]),
            match s["projections_equal_rebuild"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
            if broken.is_empty() { "yes" } else { "**no**" },
        ));
    }
    md.push_str(
        "\n*Recovery* is the seconds from the fault's end (the broker answering again, or \
         serve restarted) to the first write answered 201; for SIGTERM, from the signal to \
         a restarted serve being ready; for a writer failover, from the writer's pause or \
         kill to the first write another instance answered 201. *Answers* counts every request of the load; those \
         not acknowledged were refused as not written (503 `unavailable` or `no_writer`: \
         checked absent from history) or resolved by a keyed retry.\n\n## Per scenario\n\n",
    );
    for s in &scenarios {
        md.push_str(&format!(
            "### {}\n\n",
            s["scenario"].as_str().unwrap_or_default()
        ));
        let mut facts = Vec::new();
        facts.push(format!(
            "{} requests, {} acknowledged, {} answered \"not written\" (none of which is in history unless said below), {} outcomes unknown at first (each resolved by a keyed retry).",
            count(s, "answers"),
            count(s, "acknowledged"),
            count(s, "not_written"),
            s["outcome_unknown"].as_u64().unwrap_or(0),
        ));
        if !s["not_ready_after_s"].is_null() {
            facts.push(format!(
                "`/readyz` said not ready {} s after the fault began.",
                seconds(&s["not_ready_after_s"])
            ));
        }
        if let Some(per) = s["unavailable_s_per_broker"].as_array() {
            let list: Vec<String> = per.iter().map(seconds).collect();
            facts.push(format!(
                "Longest time without a successful write while each broker restarted: {} s.",
                list.join(", ")
            ));
        }
        if !s["old_writer_stood_down_s"].is_null() {
            facts.push(format!(
                "The paused writer, resumed, stood down {} s later (fenced, it committed nothing).",
                seconds(&s["old_writer_stood_down_s"])
            ));
        }
        if let Some(r) = s["refusals"].as_object().filter(|r| !r.is_empty()) {
            let list: Vec<String> = r.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            facts.push(format!("Other final answers: {}.", list.join(", ")));
        }
        if !s["drain_s"].is_null() {
            facts.push(format!(
                "serve drained and exited {} s after SIGTERM, with status {}.",
                seconds(&s["drain_s"]),
                s["exit"]
            ));
        }
        if let Some(w) = s["written_unacknowledged"].as_u64().filter(|w| *w > 0) {
            facts.push(format!(
                "{w} changes are in history that no client was told about (their connection broke with the process); a keyed retry returns them."
            ));
        }
        let broken = broken_promises(s);
        if broken.is_empty() {
            facts.push("Every promise held.".into());
        } else {
            facts.push(format!("**Broken:** {}.", broken.join("; ")));
        }
        for f in facts {
            md.push_str(&format!("- {f}\n"));
        }
        md.push('\n');
    }
    let checks: Vec<&Value> = lines.iter().filter(|l| l.get("check").is_some()).collect();
    if !checks.is_empty() {
        md.push_str("## Every test the suite ran\n\n| test | result |\n|---|---|\n");
        for c in checks {
            md.push_str(&format!(
                "| `{}` | {} |\n",
                c["check"].as_str().unwrap_or_default(),
                if c["passed"] == true {
                    "passed"
                } else {
                    "**failed**"
                }
            ));
        }
    }
    md
}

/// Reads the suite's JSON lines from `results` and writes `out` (Markdown).
pub fn write_fault_report(results: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("cannot read {}", results.display()))?;
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", results.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    std::fs::write(out, fault_report(&lines))
        .with_context(|| format!("cannot write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn outage() -> Value {
        json!({"scenario": "broker SIGKILLed for 10 s", "kind": "broker_outage", "faults": 1,
            "answers": 500, "acknowledged": 400, "lost": 0, "duplicated": 0,
            "wrong_version": 0, "gaps": 0, "not_written": 100, "not_written_but_written": 0,
            "outcome_unknown": 2, "fenced": 0, "not_ready_after_s": 3.2, "recovery_s": 1.5,
            "projections_equal_rebuild": true, "projections_detail": null})
    }

    #[test]
    fn a_scenario_that_kept_its_promises_holds_and_each_broken_one_is_named() {
        assert!(broken_promises(&outage()).is_empty());
        let mut s = outage();
        s["lost"] = json!(2);
        s["recovery_s"] = json!(12.5);
        s["not_ready_after_s"] = Value::Null;
        let broken = broken_promises(&s);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].contains("2 acknowledged changes lost"));
        assert!(broken[1].contains("12.5 s"));
        assert!(broken[2].contains("/readyz"));
        // Writes that never came back are broken whatever the scenario.
        let mut s = outage();
        s["kind"] = json!("serve_kill");
        s["recovery_s"] = Value::Null;
        assert_eq!(broken_promises(&s), vec!["writes never came back"]);
    }

    #[test]
    fn the_report_has_a_row_per_scenario_and_the_conditions() {
        let mut bad = outage();
        bad["scenario"] = json!("broker stopped for 600 s");
        bad["duplicated"] = json!(1);
        let md = fault_report(&[
            json!({"meta": "commit", "value": "abc"}),
            outage(),
            bad,
            json!({"check": "faults::x", "passed": false}),
        ]);
        assert!(md.contains("| `faults::x` | **failed** |"), "{md}");
        assert!(md.contains("| commit | abc |"));
        assert!(
            md.contains(
                "| broker SIGKILLed for 10 s | 1 | 500 | 400 | 0 | 0 | 0 | 1.5 | yes | yes |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| broker stopped for 600 s | 1 | 500 | 400 | 0 | 1 | 0 | 1.5 | yes | **no** |"
            ),
            "{md}"
        );
        assert!(md.contains("**Broken:** 1 changes written twice."), "{md}");
    }
}
