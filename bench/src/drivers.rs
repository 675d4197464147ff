//! The `fleetledger-bench` drivers: load against a running server over HTTP and the raw
//! Kafka baselines beside it, printing numbers. Throughput of `POST /v1/batch`, latency
//! percentiles of single appends at a few concurrency levels, the raw transactional
//! produce and `read_committed` consume rates of the same records, SQL and recovery
//! latency. Requests are bounded in count; nothing runs unbounded.
//!
//! Every figure is printed, and appended as one JSON line to the file named by
//! `FLEETLEDGER_BENCH_RESULTS` when it is set: the input of `fleetledger-bench report`
//! (see [`crate::report`]), which `deploy/local/bench` runs after several rounds.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetledger_ledger::KafkaConfig;
use serde_json::{Value, json};

/// Where figures go: stdout, and the JSON-lines file named by `FLEETLEDGER_BENCH_RESULTS`.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    path: Option<PathBuf>,
    /// Put before every name: the scale of a run that measures several
    /// (`FLEETLEDGER_BENCH_FIGURE_PREFIX`, e.g. `fleet.10m.`).
    prefix: String,
}

impl Figures {
    /// Figures that also go to `$FLEETLEDGER_BENCH_RESULTS`, if set, named with
    /// `$FLEETLEDGER_BENCH_FIGURE_PREFIX` first, if set.
    pub fn from_env() -> Self {
        Figures {
            path: std::env::var_os("FLEETLEDGER_BENCH_RESULTS").map(PathBuf::from),
            prefix: std::env::var("FLEETLEDGER_BENCH_FIGURE_PREFIX").unwrap_or_default(),
        }
    }

    /// Names what the figures under `prefix` measure (shown in the report).
    pub fn describe(&self, prefix: &str, label: &str) -> anyhow::Result<()> {
        self.write(json!({"name": format!("{}{prefix}", self.prefix), "label": label}))
    }

    /// Records one measurement `name` (e.g. `append.batch`) of `value` in `unit`.
    pub fn record(&self, name: &str, value: f64, unit: &str) -> anyhow::Result<()> {
        self.write(json!({"name": format!("{}{name}", self.prefix), "value": value, "unit": unit}))
    }

    fn write(&self, line: Value) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
    }
}

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
    /// Runs the benchmark and prints (and records) one line per figure.
    pub async fn run(&self, figures: &Figures) -> anyhow::Result<()> {
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
        figures.record("append.batch", accepted as f64 / secs, "changes/s")?;

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
            let p50 = percentile(&all, 50.0).as_secs_f64() * 1e3;
            let p99 = percentile(&all, 99.0).as_secs_f64() * 1e3;
            figures.record(&format!("append.single.c{level}.p50"), p50, "ms")?;
            figures.record(&format!("append.single.c{level}.p99"), p99, "ms")?;
        }
        Ok(())
    }
}

/// The raw consume rate of the history topic: a plain `read_committed` consumer from the
/// one client factory, counting records and bytes to the end of every partition, no
/// decoding. The baseline a projection rebuild is compared with.
pub async fn raw_consume(config: &KafkaConfig, figures: &Figures) -> anyhow::Result<(u64, f64)> {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let clients = fleetledger_ledger::KafkaClients::new(config.clone());
    let layout = fleetledger_ledger::TopicLayout::new(config);
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
    figures.record("consume.raw", records as f64 / secs, "records/s")?;
    Ok((records, secs))
}

/// Deletes the topics of the service under test (`FLEETLEDGER_KAFKA__TOPIC_PREFIX`'s state,
/// history and registry topics, and the raw produce's scratch topics under
/// `{prefix}.bench-raw`), so that a benchmark leaves no data in the broker. A topic that
/// does not exist is skipped; any other refusal is an error naming the topic.
pub async fn drop_topics(config: &KafkaConfig) -> anyhow::Result<()> {
    use rdkafka::admin::AdminOptions;
    use rdkafka::types::RDKafkaErrorCode;

    let clients = fleetledger_ledger::KafkaClients::new(config.clone());
    let mut scratch = config.clone();
    scratch.topic_prefix = format!("{}.bench-raw", config.topic_prefix);
    scratch.schemas_topic = format!("{}.bench-raw._schemas", config.topic_prefix);
    let mut topics = Vec::new();
    for c in [config, &scratch] {
        let l = fleetledger_ledger::TopicLayout::new(c);
        topics.extend([l.state, l.history, l.schemas]);
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let admin = clients.admin()?;
    let mut dropped = 0;
    for r in admin.delete_topics(&names, &AdminOptions::new()).await? {
        match r {
            Ok(_) => dropped += 1,
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => anyhow::bail!("cannot delete topic {topic}: {code}"),
        }
    }
    println!("dropped {dropped} topics of {}", config.topic_prefix);
    Ok(())
}

/// The raw transactional produce rate of the same records the ledger wrote: reads the
/// first `changes` history records (key, value, partition) and writes each one twice, as
/// the ledger does (history and state topic), to scratch topics of the same layout under
/// `{topic_prefix}.bench-raw`, with one transactional producer (`acks=all`, idempotent)
/// and `per_txn` changes per transaction, one transaction after another. No validation,
/// encoding or HTTP: the ceiling the batch append path is compared with.
/// Up to `changes` records of the history topic under test, as (partition, key, value).
async fn history_sample(
    config: &KafkaConfig,
    changes: usize,
) -> anyhow::Result<Vec<(i32, Vec<u8>, Vec<u8>)>> {
    use fleetledger_ledger::{KafkaClients, TopicLayout};
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let clients = KafkaClients::new(config.clone());
    let layout = TopicLayout::new(config);
    let consumer = clients.consumer("bench-raw-read")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..layout.partitions {
        tpl.add_partition_offset(&layout.history, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut records: Vec<(i32, Vec<u8>, Vec<u8>)> = Vec::with_capacity(changes);
    let mut open = layout.partitions;
    while open > 0 && records.len() < changes {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Err(_) => anyhow::bail!("no history record for 10 s"),
            Ok(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(m)) => {
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    records.push((m.partition(), k.to_vec(), v.to_vec()));
                }
            }
        }
    }
    anyhow::ensure!(!records.is_empty(), "{} holds no records", layout.history);
    Ok(across_partitions(records))
}

/// The records in turns over their partitions (the first of each partition, then the
/// second of each, ...). A consumer hands out a partition's records in long runs, so in
/// read order a raw transaction of a thousand records would touch one or two partitions;
/// the ledger's transactions of a thousand clusters touch every partition, and the
/// baseline must write the same shape: one produce request, and one partition added to the
/// transaction, per partition.
fn across_partitions(records: Vec<(i32, Vec<u8>, Vec<u8>)>) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    let mut by_partition: std::collections::BTreeMap<i32, std::collections::VecDeque<_>> =
        std::collections::BTreeMap::new();
    let n = records.len();
    for r in records {
        by_partition.entry(r.0).or_default().push_back(r);
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for queue in by_partition.values_mut() {
            if let Some(r) = queue.pop_front() {
                out.push(r);
            }
        }
    }
    out
}

/// The scratch topics the raw baselines write to, beside the ones under test.
async fn scratch_layout(
    config: &KafkaConfig,
) -> anyhow::Result<(
    fleetledger_ledger::KafkaClients,
    fleetledger_ledger::TopicLayout,
)> {
    let clients = fleetledger_ledger::KafkaClients::new(config.clone());
    let mut scratch = config.clone();
    scratch.topic_prefix = format!("{}.bench-raw", config.topic_prefix);
    scratch.schemas_topic = format!("{}.bench-raw._schemas", config.topic_prefix);
    let target = fleetledger_ledger::TopicLayout::new(&scratch);
    target.ensure(&clients).await?;
    Ok((clients, target))
}

/// The two records of one change, as the ledger writes them: the history record, and the
/// same value under the state key (the history key without its version).
fn change_records<'a>(
    target: &'a fleetledger_ledger::TopicLayout,
    (partition, key, value): &'a (i32, Vec<u8>, Vec<u8>),
) -> [rdkafka::producer::FutureRecord<'a, [u8], [u8]>; 2] {
    use rdkafka::producer::FutureRecord;
    let state_key = key.rsplitn(2, |b| *b == b'/').nth(1).unwrap_or(key);
    [
        FutureRecord::to(&target.history)
            .key(key.as_slice())
            .payload(value.as_slice())
            .partition(*partition),
        FutureRecord::to(&target.state)
            .key(state_key)
            .payload(value.as_slice())
            .partition(*partition),
    ]
}

/// Waits (at most 50 ms) until librdkafka has released every delivered message, as the
/// ledger's writer does before each commit: otherwise `commit_transaction`'s flush may poll
/// for 100 ms for a message already delivered, and the baseline would carry a stall the
/// ledger does not have.
fn settle(producer: &rdkafka::producer::FutureProducer) {
    use rdkafka::producer::Producer;
    let deadline = Instant::now() + Duration::from_millis(50);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A transactional producer of `txn_id`, initialised.
async fn raw_producer(
    clients: &fleetledger_ledger::KafkaClients,
    txn_id: &str,
) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    use rdkafka::producer::Producer;
    let producer = clients.transactional_producer("bench-raw", txn_id)?;
    let (p, timeout) = (producer.clone(), clients.config().request_timeout());
    tokio::task::spawn_blocking(move || p.init_transactions(timeout)).await??;
    Ok(producer)
}

/// One raw transaction of `changes` (each its history record and state copy), committed.
async fn raw_transaction(
    producer: &rdkafka::producer::FutureProducer,
    target: &fleetledger_ledger::TopicLayout,
    changes: &[(i32, Vec<u8>, Vec<u8>)],
    timeout: Duration,
) -> anyhow::Result<()> {
    use rdkafka::producer::Producer;
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.begin_transaction()).await??;
    let mut pending = Vec::with_capacity(changes.len() * 2);
    for change in changes {
        for rec in change_records(target, change) {
            pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || {
        settle(&p);
        p.commit_transaction(timeout)
    })
    .await??;
    Ok(())
}

/// Raw rdkafka transactional produce of `changes` changes of the history under test
/// (history record and state copy each), `per_txn` per transaction: the physical limit
/// the ledger's batch appends are compared with.
pub async fn raw_produce(
    config: &KafkaConfig,
    changes: usize,
    per_txn: usize,
    figures: &Figures,
) -> anyhow::Result<f64> {
    let records = history_sample(config, changes).await?;
    let (clients, target) = scratch_layout(config).await?;
    let txn_id = format!("{}-bench-raw-{}", config.client_id, std::process::id());
    let producer = raw_producer(&clients, &txn_id).await?;
    let timeout = clients.config().request_timeout();
    let started = Instant::now();
    for chunk in records.chunks(per_txn.max(1)) {
        raw_transaction(&producer, &target, chunk, timeout).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = records.len() as f64 / secs;
    println!(
        "raw produce: {} changes ({} records, {per_txn} changes per transaction) in {secs:.2} s = {rate:.0} changes/s",
        records.len(),
        records.len() * 2
    );
    figures.record("produce.raw", rate, "changes/s")?;
    Ok(rate)
}

/// The floor under a single append: raw rdkafka transactions of one change each (its
/// history record and state copy, as the ledger writes them), `transactions` in all, at
/// each concurrency of `levels` (a transactional producer per concurrent writer, as
/// transactions cannot overlap on one). Records p50 and p99 of the whole transaction,
/// begin to committed, as `produce.raw.single.c{level}.p50|p99` (ms).
pub async fn raw_single_commits(
    config: &KafkaConfig,
    levels: &[usize],
    transactions: usize,
    figures: &Figures,
) -> anyhow::Result<()> {
    let records = std::sync::Arc::new(history_sample(config, transactions).await?);
    let (clients, target) = scratch_layout(config).await?;
    let timeout = clients.config().request_timeout();
    for &level in levels {
        let level = level.max(1);
        let mut workers = Vec::new();
        for w in 0..level {
            let txn_id = format!(
                "{}-bench-single-{}-{level}-{w}",
                config.client_id,
                std::process::id()
            );
            let producer = raw_producer(&clients, &txn_id).await?;
            let (records, target) = (records.clone(), target.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for change in records.iter().skip(w).step_by(level) {
                    let started = Instant::now();
                    raw_transaction(&producer, &target, std::slice::from_ref(change), timeout)
                        .await?;
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for w in workers {
            latencies.extend(w.await??);
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let (p50, p99) = (at(0.5), at(0.99));
        println!(
            "raw single transactions at concurrency {level}: {} transactions, p50 {p50:.2} ms, p99 {p99:.2} ms",
            latencies.len()
        );
        figures.record(&format!("produce.raw.single.c{level}.p50"), p50, "ms")?;
        figures.record(&format!("produce.raw.single.c{level}.p99"), p99, "ms")?;
    }
    Ok(())
}

/// Recovery of one cluster among many, once for each of `ids` over HTTP: deletes it (as
/// the frontend), then times the audit timeline, a dry run and the real recovery (as the
/// recovery principal). The clusters must exist and be live (e.g. written by
/// `bench-append` or imported from a simulated fleet).
pub async fn recovery_latency(url: &str, ids: &[String], figures: &Figures) -> anyhow::Result<()> {
    let frontend = fleetledger_client::ApiClient::new(url, Some("dev-frontend".into()));
    let recovery = fleetledger_client::ApiClient::new(url, Some("dev-recovery".into()));
    let (mut audit, mut dry, mut real) = (Vec::new(), Vec::new(), Vec::new());
    for (run, cluster) in ids.iter().enumerate() {
        frontend
            .delete(cluster, Some("bench: delete before recovery"))
            .await?;
        let t = Instant::now();
        let timeline = frontend.audit(cluster, None, None, None).await?;
        audit.push(t.elapsed());
        let t = Instant::now();
        recovery.recover(cluster, None, None, true, false).await?;
        dry.push(t.elapsed());
        let t = Instant::now();
        recovery.recover(cluster, None, None, false, false).await?;
        real.push(t.elapsed());
        if run == 0 {
            let entries = timeline["entries"].as_array().map_or(0, Vec::len);
            println!("recovery of {cluster}: {entries} history records");
        }
    }
    for (name, label, lat) in [
        ("recover.audit", "audit timeline of one cluster", &mut audit),
        (
            "recover.dry_run",
            "recovery plan (dry run) of one cluster",
            &mut dry,
        ),
        (
            "recover.apply",
            "recovery of one cluster, appended and committed",
            &mut real,
        ),
    ] {
        lat.sort();
        let p50 = percentile(lat, 50.0).as_secs_f64() * 1e3;
        let max = lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3;
        println!(
            "{label}: p50 {p50:.1} ms, max {max:.1} ms ({} runs)",
            lat.len()
        );
        figures.describe(name, label)?;
        figures.record(name, p50, "ms")?;
    }
    Ok(())
}

/// The README's SQL examples, each `runs` times over HTTP against a running server,
/// printing p50/p99 per example.
pub async fn sql_latency(
    url: &str,
    token: &str,
    runs: usize,
    figures: &Figures,
) -> anyhow::Result<()> {
    let readme = include_str!("../../README.md");
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
    for (n, (title, sql)) in examples.into_iter().enumerate() {
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
        let name = format!("sql.{}", n + 1);
        figures.describe(&name, &title)?;
        figures.record(
            &format!("{name}.p50"),
            percentile(&lat, 50.0).as_secs_f64() * 1e3,
            "ms",
        )?;
        figures.record(
            &format!("{name}.p99"),
            percentile(&lat, 99.0).as_secs_f64() * 1e3,
            "ms",
        )?;
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

    #[test]
    fn the_raw_sample_takes_turns_over_partitions() {
        // As a consumer reads: runs of one partition.
        let read: Vec<(i32, Vec<u8>, Vec<u8>)> = [(0, 1), (0, 2), (0, 3), (1, 1), (2, 1), (2, 2)]
            .into_iter()
            .map(|(p, i)| (p, vec![i], vec![]))
            .collect();
        let order: Vec<(i32, u8)> = across_partitions(read)
            .into_iter()
            .map(|(p, k, _)| (p, k[0]))
            .collect();
        assert_eq!(order, [(0, 1), (1, 1), (2, 1), (0, 2), (2, 2), (0, 3)]);
    }
}
