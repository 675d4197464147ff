//! `fleetledger bench append`: load against a running server over HTTP, printing numbers.
//! Throughput of `POST /v1/batch` and latency percentiles of single appends at a few
//! concurrency levels. Requests are bounded in count; nothing runs unbounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
pub struct AppendBench {
    /// API base URL.
    pub url: String,
    /// Token of the `frontend` principal.
    pub token: String,
    /// Distinct clusters written to.
    pub clusters: usize,
    /// Items per `POST /v1/batch`.
    pub batch_size: usize,
    /// Number of batches.
    pub batches: usize,
    /// Batches in flight at once.
    pub batch_concurrency: usize,
    /// Single appends per concurrency level.
    pub singles: usize,
    /// Concurrency levels of single appends.
    pub levels: Vec<usize>,
    /// Cluster id prefix (a fresh one per run keeps runs apart).
    pub prefix: String,
}

fn logical(i: usize, cku: usize) -> Value {
    json!({"org_id": format!("org-{}", i % 97), "env_id": "env-1", "kind": "kafka",
        "name": format!("cluster-{i}"), "sku": "dedicated", "cku": 1 + cku % 8, "cloud": "aws",
        "region": "us-east-1", "network": "private-link"})
}

/// The p-th percentile (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl AppendBench {
    /// Runs the benchmark and prints one line per figure.
    pub async fn run(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        // Batches.
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.batch_concurrency.max(1) {
            let (http, next, me) = (http.clone(), next.clone(), self.clone());
            tasks.spawn(async move {
                let mut ok = 0usize;
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= me.batches {
                        return Ok::<_, anyhow::Error>(ok);
                    }
                    let items: Vec<Value> = (0..me.batch_size)
                        .map(|j| {
                            let i = (b * me.batch_size + j) % me.clusters;
                            json!({"cluster_id": format!("{}-{i}", me.prefix), "facet": "logical", "state": logical(i, b)})
                        })
                        .collect();
                    let resp: Value = http
                        .post(format!("{}/v1/batch", me.url))
                        .bearer_auth(&me.token)
                        .json(&json!({ "items": items }))
                        .send()
                        .await?
                        .json()
                        .await?;
                    ok += resp["results"]
                        .as_array()
                        .context("batch answer without results")?
                        .iter()
                        .filter(|r| r["status"] == 201)
                        .count();
                }
            });
        }
        let mut accepted = 0;
        while let Some(r) = tasks.join_next().await {
            accepted += r??;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "batch: {accepted} changes accepted in {secs:.2} s = {:.0} changes/s (batch size {}, {} in flight)",
            accepted as f64 / secs,
            self.batch_size,
            self.batch_concurrency
        );

        // Single appends.
        for &level in &self.levels {
            let per_worker = (self.singles / level.max(1)).max(1);
            let mut tasks = tokio::task::JoinSet::new();
            let started = Instant::now();
            for w in 0..level.max(1) {
                let (http, me) = (http.clone(), self.clone());
                tasks.spawn(async move {
                    let mut lat = Vec::with_capacity(per_worker);
                    for k in 0..per_worker {
                        let i = (w * per_worker + k) % me.clusters;
                        let t = Instant::now();
                        let resp = http
                            .post(format!("{}/v1/clusters/{}-{i}/logical", me.url, me.prefix))
                            .bearer_auth(&me.token)
                            .json(&logical(i, k + level))
                            .send()
                            .await?;
                        anyhow::ensure!(
                            resp.status().as_u16() == 201,
                            "append answered {}",
                            resp.status()
                        );
                        lat.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(lat)
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r??);
            }
            let secs = started.elapsed().as_secs_f64();
            all.sort();
            println!(
                "single: concurrency {level}: {} appends, p50 {:.2} ms, p99 {:.2} ms, {:.0} appends/s",
                all.len(),
                percentile(&all, 50.0).as_secs_f64() * 1e3,
                percentile(&all, 99.0).as_secs_f64() * 1e3,
                all.len() as f64 / secs
            );
        }
        Ok(())
    }
}

/// The raw consume rate of the history topic: a plain `read_committed` consumer from the
/// one client factory, counting records and bytes to the end of every partition, no
/// decoding. The baseline a projection rebuild is compared with.
pub async fn raw_consume(config: &crate::Config) -> anyhow::Result<(u64, f64)> {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let clients = fleetledger_ledger::KafkaClients::new(config.kafka.clone());
    let layout = fleetledger_ledger::TopicLayout::new(&config.kafka);
    let consumer = clients.consumer("bench-raw")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..layout.partitions {
        tpl.add_partition_offset(&layout.history, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut records, mut bytes, mut open) = (0u64, 0u64, layout.partitions);
    while open > 0 {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Err(_) => anyhow::bail!("no record for 10 s with {open} partitions not at their end"),
            Ok(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(m)) => {
                records += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw consume: {records} records, {:.1} MB in {secs:.2} s = {:.0} records/s",
        bytes as f64 / 1e6,
        records as f64 / secs
    );
    Ok((records, secs))
}

/// The README's SQL examples, each `runs` times over HTTP against a running server,
/// printing p50/p99 per example.
pub async fn sql_latency(url: &str, token: &str, runs: usize) -> anyhow::Result<()> {
    let readme = include_str!("../README.md");
    let mut examples = Vec::new();
    for part in readme.split("\n-- ").skip(1) {
        let Some((title, rest)) = part.split_once('\n') else {
            continue;
        };
        let Some((sql, _)) = rest.split_once(';') else {
            continue;
        };
        if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
            examples.push((title.trim().to_owned(), sql.trim().to_owned()));
        }
    }
    anyhow::ensure!(!examples.is_empty(), "no SQL examples found in README.md");
    let http = reqwest::Client::new();
    for (title, sql) in examples {
        let mut lat = Vec::with_capacity(runs);
        let mut rows = 0;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let resp = http
                .post(format!("{url}/v1/sql"))
                .bearer_auth(token)
                .json(&json!({ "sql": sql }))
                .send()
                .await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "{title}: {}",
                resp.text().await?
            );
            let v: Value = resp.json().await?;
            lat.push(t.elapsed());
            rows = v["row_count"].as_u64().unwrap_or(0);
        }
        lat.sort();
        println!(
            "sql: {title}: p50 {:.1} ms, p99 {:.1} ms ({} runs, {rows} rows)",
            percentile(&lat, 50.0).as_secs_f64() * 1e3,
            percentile(&lat, 99.0).as_secs_f64() * 1e3,
            lat.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
