//! `fleetledger-bench`: simulate a fleet, load a running `fleetledger serve`, measure the
//! raw Kafka baselines, and write the report. `deploy/local/bench` runs it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetledger_bench::drivers::{self, AppendBench, Figures};
use fleetledger_bench::simulate::{Simulated, Simulation};
use fleetledger_ledger::KafkaConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "fleetledger-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the API under test is and who we are.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// URL of the fleetledger API.
    #[arg(long, env = "FLEETLEDGER_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// Bearer token (locally: dev-<principal>; default dev-frontend).
    #[arg(long, env = "FLEETLEDGER_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a deterministic, realistic fleet history as JSON lines (the import format).
    Simulate {
        /// Clusters.
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// Days of history.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Seed: the same seed gives byte-identical output.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Start of the history (RFC 3339).
        #[arg(long, default_value = "2026-01-01T00:00:00Z")]
        start: String,
        /// Which fleet: fleets of different numbers have distinct cluster ids (0:
        /// `lkc-sim000123`, n: `lkc-sim{n}-000123`).
        #[arg(long, default_value_t = 0)]
        fleet: u32,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure the CPU cost of encoding a simulated fleet's records in Avro, directly and
    /// the library's way (no broker).
    Encode {
        /// Clusters of the simulated fleet.
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// Days of its history.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Rounds over the records (the best is printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Measure the README's SQL examples against a running server (p50/p99).
    Sql {
        #[command(flatten)]
        api: ApiArgs,
        /// Runs per example.
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Measure the raw consume rate of the history topic (plain consumer, no decoding).
    Consume,
    /// Delete the topics of the service under test (its topic prefix's, and the raw
    /// produce's scratch topics) so that a benchmark leaves no data in the broker.
    DropTopics,
    /// Measure a running server: batch throughput and single-append latency.
    Append {
        #[command(flatten)]
        api: ApiArgs,
        /// Distinct clusters.
        #[arg(long, default_value_t = 10_000)]
        clusters: usize,
        /// Items per batch.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Number of batches.
        #[arg(long, default_value_t = 200)]
        batches: usize,
        /// Batches in flight.
        #[arg(long, default_value_t = 4)]
        batch_concurrency: usize,
        /// Single appends per concurrency level.
        #[arg(long, default_value_t = 2000)]
        singles: usize,
        /// Concurrency levels for single appends, comma-separated.
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        levels: Vec<usize>,
        /// Cluster ids are `{prefix}-{i}`; default `bench-{pid}`, fresh per run.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Measure the raw transactional produce rate of the history's first records, written
    /// again (history and state copy) to scratch topics `{topic_prefix}.bench-raw.*`.
    Produce {
        /// Changes to write (each as two records).
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Changes per transaction (the ledger's `batch_max`).
        #[arg(long, default_value_t = 1000)]
        per_txn: usize,
        /// Then this many single-change transactions at each of `--levels` (the floor
        /// under a single append); 0 skips them.
        #[arg(long, default_value_t = 0)]
        singles: usize,
        /// Concurrency levels of the single-change transactions.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        levels: Vec<usize>,
    },
    /// Measure recovery of one cluster among many: delete `{prefix}-{i}` (or each of
    /// `--ids`), then time its audit timeline, a dry run and the recovery.
    Recover {
        #[command(flatten)]
        api: ApiArgs,
        /// Prefix of the existing clusters (as given to `append --prefix`).
        #[arg(long, required_unless_present = "ids")]
        prefix: Option<String>,
        /// The clusters to delete and recover, comma-separated (instead of --prefix).
        #[arg(long, value_delimiter = ',')]
        ids: Vec<String>,
        /// How many clusters exist under the prefix.
        #[arg(long, default_value_t = 10_000)]
        clusters: usize,
        /// Clusters recovered (each one once).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Write bench/REPORT.md and bench/report.json from the figures of several runs
    /// (the JSON lines of FLEETLEDGER_BENCH_RESULTS): medians, ratios and goals.
    Report {
        /// The JSON-lines figures.
        #[arg(long)]
        results: PathBuf,
        /// Directory of REPORT.md and report.json.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
    },
    /// Write the fault suite's report from its scenarios' JSON lines (deploy/local/faults).
    FaultReport {
        /// The scenarios' JSON lines.
        #[arg(long)]
        results: PathBuf,
        /// The Markdown report to write.
        #[arg(long, default_value = "faults/REPORT.md")]
        out: PathBuf,
    },
}

/// The Kafka settings of the service under test, from the same `FLEETLEDGER_KAFKA__*`
/// environment the service reads.
fn kafka_config() -> anyhow::Result<KafkaConfig> {
    use figment::Figment;
    use figment::providers::{Env, Serialized};
    Figment::from(Serialized::defaults(KafkaConfig::default()))
        .merge(Env::prefixed("FLEETLEDGER_KAFKA__"))
        .extract()
        .context("the FLEETLEDGER_KAFKA__* settings")
}

fn simulate(sim: Simulation, out: Option<PathBuf>) -> anyhow::Result<Simulated> {
    let mut w: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::new(&mut w);
    let n = sim.write(&mut w)?;
    std::io::Write::flush(&mut w)?;
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETLEDGER_LOG")
                .unwrap_or_else(|_| "warn,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let token = |api: &ApiArgs| api.token.clone().unwrap_or_else(|| "dev-frontend".into());
    match Cli::parse().command {
        Command::Encode {
            clusters,
            days,
            rounds,
        } => {
            let records = fleetledger_bench::encode::simulated_records(clusters, days)?;
            fleetledger_bench::encode::encode_speed(&records, rounds)
        }
        Command::Simulate {
            clusters,
            days,
            seed,
            start,
            fleet,
            out,
        } => {
            let start = chrono::DateTime::parse_from_rfc3339(&start)
                .with_context(|| format!("--start {start:?} is not RFC 3339"))?
                .to_utc();
            let sim = Simulation {
                clusters,
                days,
                seed,
                start,
                fleet,
            };
            let done = simulate(sim, out)?;
            eprintln!(
                "simulated {} changes of {} clusters ({clusters} at a time) over {days} days: {:.2} records per live cluster and day",
                done.lines, done.clusters, done.per_cluster_day
            );
            Ok(())
        }
        Command::Sql { api, runs } => {
            drivers::sql_latency(&api.url, &token(&api), runs, &Figures::from_env()).await
        }
        Command::DropTopics => drivers::drop_topics(&kafka_config()?).await,
        Command::Consume => drivers::raw_consume(&kafka_config()?, &Figures::from_env())
            .await
            .map(|_| ()),
        Command::Produce {
            changes,
            per_txn,
            singles,
            levels,
        } => {
            let (config, figures) = (kafka_config()?, Figures::from_env());
            drivers::raw_produce(&config, changes, per_txn, &figures).await?;
            if singles > 0 {
                drivers::raw_single_commits(&config, &levels, singles, &figures).await?;
            }
            Ok(())
        }
        Command::Recover {
            api,
            prefix,
            ids,
            clusters,
            runs,
        } => {
            let ids = match prefix {
                // Spread over the id space, away from the clusters of earlier rounds.
                Some(prefix) if ids.is_empty() => (0..runs)
                    .map(|run| {
                        let i = (run * 7919 + std::process::id() as usize) % clusters.max(1);
                        format!("{prefix}-{i}")
                    })
                    .collect(),
                _ => ids,
            };
            drivers::recovery_latency(&api.url, &ids, &Figures::from_env()).await
        }
        Command::Report { results, out } => fleetledger_bench::report::write_report(&results, &out),
        Command::FaultReport { results, out } => {
            fleetledger_bench::faults::write_fault_report(&results, &out)
        }
        Command::Append {
            api,
            clusters,
            batch_size,
            batches,
            batch_concurrency,
            singles,
            levels,
            prefix,
        } => {
            AppendBench {
                url: api.url.clone(),
                token: token(&api),
                clusters,
                batch_size,
                batches,
                batch_concurrency,
                singles,
                levels,
                prefix: prefix.unwrap_or_else(|| format!("bench-{}", std::process::id())),
            }
            .run(&Figures::from_env())
            .await
        }
    }
}
