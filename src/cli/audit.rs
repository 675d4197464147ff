//! `fleetledger audit`: a cluster's timeline, or the verification of hash chains (one
//! cluster through the API, or the whole history topic directly: it reads everything
//! anyway).

use std::io::Write;
use std::sync::Arc;

use fleetledger_ledger::{ChainReport, KafkaClients, TopicLayout, VerifyProgress, verify_history};
use std::process::ExitCode;

use anyhow::Context;

use fleetledger_client::render::timeline_table;

use crate::cli::{ApiArgs, load_config, print_answer};
use crate::config::Config;
use crate::server::codec_for_command;

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
