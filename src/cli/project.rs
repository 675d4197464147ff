//! `fleetledger project run|rebuild|inspect`: the projections without the HTTP server.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetledger_ledger::{KafkaClients, TopicLayout};
use fleetledger_projectors::{Progress, ProjectionName, Projector};
use fleetledger_schemas::decode_wire_header;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::cli::ProjectCommand;
use crate::cli::serve::shutdown_signal;
use crate::config::Config;
use crate::server::codec_for_command;

async fn open(config: &Config) -> anyhow::Result<Projector> {
    let codec = Arc::new(codec_for_command(config).await?);
    Ok(Projector::open(
        KafkaClients::new(config.kafka.clone()),
        TopicLayout::new(&config.kafka),
        codec,
        config.projector.clone(),
    )?)
}

/// Runs the projections until `shutdown`, then writes a last checkpoint.
pub(crate) async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let projector = open(config).await?;
    eprintln!(
        "projecting {} into {}",
        TopicLayout::new(&config.kafka).history,
        config.projector.dir.display()
    );
    Ok(projector.run(shutdown).await?)
}

fn show(p: Progress) {
    let secs = p.elapsed.as_secs_f64().max(1e-3);
    let rate = p.done as f64 / secs;
    let left = p.total.saturating_sub(p.done) as f64;
    let eta = if rate > 0.0 { left / rate } else { 0.0 };
    let pct = if p.total > 0 {
        100.0 * p.done as f64 / p.total as f64
    } else {
        100.0
    };
    let width = 30usize;
    let filled = ((pct / 100.0) * width as f64).round().min(width as f64) as usize;
    eprint!(
        "\r[{}{}] {:>5.1}% {}/{} records  {:.0} records/s  ETA {:.0} s   ",
        "#".repeat(filled),
        " ".repeat(width - filled),
        pct.min(100.0),
        p.done,
        p.total,
        rate,
        eta
    );
    let _ = std::io::stderr().flush();
}

/// Rebuilds `name` (or `all`) from the beginning of history, with a progress bar, and
/// prints the rate. Other projections keep their state and offsets.
pub(crate) async fn rebuild(config: &Config, name: &str) -> anyhow::Result<()> {
    let projector = open(config).await?;
    let names: Vec<ProjectionName> = if name == "all" {
        ProjectionName::ALL.to_vec()
    } else {
        vec![name.parse()?]
    };
    for n in &names {
        projector.reset(*n).await?;
    }
    let started = std::time::Instant::now();
    let applied = projector.catch_up(show).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    println!(
        "rebuilt {} from {applied} records in {secs:.2} s ({:.0} records/s); peak RSS {:.0} MiB",
        names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        applied as f64 / secs.max(1e-9),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Prints one history record: key, headers, wire header, and the decoded record or why
/// it cannot be decoded.
pub(crate) async fn inspect(config: &Config, partition: i32, offset: i64) -> anyhow::Result<()> {
    let clients = KafkaClients::new(config.kafka.clone());
    let layout = TopicLayout::new(&config.kafka);
    let consumer = clients.consumer("inspect")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&layout.history, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let msg = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .context("no record at that position within 10 s")??;
    println!("topic:     {}", layout.history);
    println!("partition: {}  offset: {}", msg.partition(), msg.offset());
    if msg.offset() != offset {
        println!("(offset {offset} holds no committed record; this is the next one)");
    }
    println!(
        "key:       {}",
        String::from_utf8_lossy(msg.key().unwrap_or_default())
    );
    if let Some(h) = msg.headers() {
        for h in h.iter() {
            println!(
                "header:    {} = {}",
                h.key,
                String::from_utf8_lossy(h.value.unwrap_or_default())
            );
        }
    }
    let Some(payload) = msg.payload() else {
        println!("value:     none (a tombstone)");
        return Ok(());
    };
    let shown: Vec<String> = payload
        .iter()
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect();
    println!(
        "value:     {} bytes: {}{}",
        payload.len(),
        shown.join(" "),
        if payload.len() > 32 { " …" } else { "" }
    );
    match decode_wire_header(payload) {
        Ok((h, _)) => println!("schema id: {}", h.schema_id),
        Err(e) => println!("wire:      {e}"),
    }
    let codec = codec_for_command(config).await?;
    match codec.decode(payload).await {
        Ok(r) => println!(
            "record:    {}",
            serde_json::json!({"cluster_id": r.meta.cluster_id, "facet": r.facet(), "version": r.meta.version,
                "ts": r.meta.ts, "writer": r.meta.writer, "hash": r.meta.hash, "state": r.state.to_json()})
        ),
        Err(e) => println!("decode:    {e}"),
    }
    Ok(())
}

/// This process's peak resident set (VmHWM), in MiB; `None` where /proc is not there.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// `fleetledger project run | rebuild NAME | inspect`.
pub(crate) async fn project(config: &Config, command: ProjectCommand) -> anyhow::Result<()> {
    match command {
        ProjectCommand::Run => {
            let token = CancellationToken::new();
            let signals = tokio::spawn(shutdown_signal(token.clone()));
            let result = run(config, token.clone()).await;
            token.cancel();
            let _ = signals.await;
            result
        }
        ProjectCommand::Rebuild { name } => rebuild(config, &name).await,
        ProjectCommand::Inspect { partition, offset } => inspect(config, partition, offset).await,
    }
}
