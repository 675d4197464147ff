//! `fleetledger audit` and `fleetledger recover` output, and `audit --verify` over the
//! whole history topic (which runs against Kafka directly: it reads everything anyway).

use std::io::Write;
use std::sync::Arc;

use fleetledger_ledger::{ChainReport, KafkaClients, TopicLayout, VerifyProgress, verify_history};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{ApiArgs, load_config, print_answer};
use crate::config::Config;
use crate::server::codec_for_command;

/// A diff object (`{"field": {"from", "to"}}`) as `field: from → to, …`.
pub(crate) fn diff_text(diff: &Value) -> String {
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
pub(crate) fn timeline_table(answer: &Value) -> String {
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
pub(crate) fn recovery_text(answer: &Value) -> String {
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

/// A verification report in words: what was checked, and every broken link.
pub(crate) fn report_text(report: &ChainReport) -> String {
    let mut out = format!(
        "checked {} records in {} chains of {} clusters: ",
        report.records, report.chains, report.clusters
    );
    if report.is_intact() {
        out.push_str("every hash and every link holds\n");
    } else {
        out.push_str(&format!("{} broken link(s)\n", report.broken.len()));
        for b in &report.broken {
            out.push_str(&format!("  broken: {b}\n"));
        }
    }
    out
}

/// Checks every hash chain of the history topic, with progress on stderr. Returns the
/// report (the caller exits non-zero when it is not intact).
pub async fn verify_topic(config: &Config) -> anyhow::Result<ChainReport> {
    let codec = Arc::new(codec_for_command(config).await?);
    let layout = TopicLayout::new(&config.kafka);
    let clients = KafkaClients::new(config.kafka.clone());
    let result = verify_history(&clients, &layout, &codec, |p: VerifyProgress| {
        eprint!(
            "\rverified {}/{} partitions, {} records, {:.0} records/s   ",
            p.partitions_done,
            p.partitions,
            p.records,
            p.records as f64 / p.elapsed.as_secs_f64().max(1e-3)
        );
        let _ = std::io::stderr().flush();
    })
    .await;
    eprintln!();
    Ok(result?)
}

/// `audit`'s time and facet filters.
pub(crate) struct AuditFilter {
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
    pub(crate) facet: Option<String>,
}

/// `fleetledger audit`: a cluster's timeline, or a verification (exit 1 when broken).
pub(crate) async fn audit(
    api: &ApiArgs,
    config_file: Option<&std::path::Path>,
    cluster: Option<&str>,
    filter: AuditFilter,
    format: &str,
    verify: bool,
) -> anyhow::Result<ExitCode> {
    if !matches!(format, "table" | "json") {
        anyhow::bail!("unknown format {format:?}: expected table or json");
    }
    let report = match (cluster, verify) {
        (None, false) => {
            eprintln!(
                "error: name a cluster (audit CLUSTER), or check every chain with audit --verify"
            );
            return Ok(ExitCode::from(2));
        }
        (Some(c), false) => {
            let answer = api
                .client()
                .audit(
                    c,
                    filter.since.as_deref(),
                    filter.until.as_deref(),
                    filter.facet.as_deref(),
                )
                .await;
            return match (answer, format) {
                (Ok(v), "table") => {
                    print!("{}", timeline_table(&v));
                    Ok(ExitCode::SUCCESS)
                }
                (other, _) => print_answer(other),
            };
        }
        (Some(c), true) => {
            let answer = api.client().verify(c).await;
            let v = match answer {
                Ok(v) => v,
                Err(e) => return print_answer(Err(e)),
            };
            serde_json::from_value(v["report"].clone()).context("the server's verify report")?
        }
        (None, true) => {
            let config = load_config(config_file, serde_json::json!({}))?;
            verify_topic(&config).await?
        }
    };
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_text(&report));
    }
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
