//! The `fleetledger` command: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetledger::bench::Figures;
use fleetledger::client::{ApiClient, ApiError};
use fleetledger::{Config, server};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: see `Cargo.toml` for the profiles behind it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fleetledger",
    version,
    about = "System of record for a cloud control plane"
)]
struct Cli {
    /// TOML configuration file (layered under FLEETLEDGER_* environment and flags).
    #[arg(long, global = true, env = "FLEETLEDGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (and the embedded schema registry).
    Serve(ServeArgs),
    /// Append a facet's new state: `append CLUSTER FACET --file STATE.json`.
    Append {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
        /// logical | physical | capacity | status.
        facet: String,
        /// JSON file with the facet's full state.
        #[arg(long)]
        file: PathBuf,
        /// Expected current version (If-Match; 0 = must not exist yet).
        #[arg(long)]
        expect: Option<i64>,
        /// Idempotency key.
        #[arg(long)]
        key: Option<String>,
        /// Why (recorded in history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print every facet's current state and version.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
    },
    /// Print a cluster's accepted records, oldest first.
    History {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
    },
    /// Run read-only SQL over the projections; without SQL, an interactive prompt.
    Sql {
        #[command(flatten)]
        api: ApiArgs,
        /// The query; omit it for a prompt with history.
        sql: Option<String>,
        /// table, json or csv.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// The projections: run them alone, rebuild one, or inspect a history record.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Measure the README's SQL examples against a running server (p50/p99).
    BenchSql {
        #[command(flatten)]
        api: ApiArgs,
        /// Runs per example.
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Measure the raw consume rate of the history topic (plain consumer, no decoding).
    BenchConsume,
    /// Measure a running server: batch throughput and single-append latency.
    BenchAppend {
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
    BenchProduce {
        /// Changes to write (each as two records).
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Changes per transaction (the ledger's `batch_max`).
        #[arg(long, default_value_t = 1000)]
        per_txn: usize,
    },
    /// Measure recovery of one cluster among many: delete `{prefix}-{i}`, then time its
    /// audit timeline, a dry run and the recovery.
    BenchRecover {
        #[command(flatten)]
        api: ApiArgs,
        /// Prefix of the existing clusters (as given to `bench-append --prefix`).
        #[arg(long)]
        prefix: String,
        /// How many clusters exist under the prefix.
        #[arg(long, default_value_t = 10_000)]
        clusters: usize,
        /// Clusters recovered (each one once).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Write bench/REPORT.md and bench/report.json from the figures of several runs
    /// (the JSON lines of FLEETLEDGER_BENCH_RESULTS): medians, ratios and goals.
    BenchReport {
        /// The JSON-lines figures.
        #[arg(long)]
        results: PathBuf,
        /// Directory of REPORT.md and report.json.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
    },
    /// Print every facet as it was at a point, reconstructed from history.
    State {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
        #[command(flatten)]
        point: PointArgs,
    },
    /// Restore a deleted cluster's desired facets (default: as just before the deletion),
    /// appended as the `recovery` principal (token of `recovery`, locally dev-recovery).
    Recover {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
        #[command(flatten)]
        point: PointArgs,
        /// Show what would be restored and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Recover even from a history whose hash chain does not verify.
        #[arg(long)]
        force: bool,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Print a cluster's timeline with field-level diffs; with --verify, check hash chains
    /// (of one cluster through the API, or of the whole history topic directly).
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id (required unless --verify).
        cluster: Option<String>,
        /// Only changes at or after this time (RFC 3339 or ms since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// Only changes at or before this time.
        #[arg(long)]
        until: Option<String>,
        /// Only this facet.
        #[arg(long)]
        facet: Option<String>,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Check every record's hash, every prev_hash link and that versions have no gaps;
        /// exits 1 naming the first broken link.
        #[arg(long)]
        verify: bool,
    },
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
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a history file with its original times, as the `import` principal (locally
    /// dev-import); running it again resumes without duplicates.
    Import {
        #[command(flatten)]
        api: ApiArgs,
        /// JSON lines: {ts, cluster_id, facet, principal, reason?, state}.
        file: PathBuf,
        /// Lines per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Delete a cluster (its logical facet becomes `deleted: true`).
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// Cluster id.
        cluster: String,
        /// Why (recorded in history).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Run the projections (without the HTTP API) until SIGINT/SIGTERM.
    Run,
    /// Rebuild a projection (clusters, billing_hours, audit_log, or all) from the beginning.
    Rebuild {
        /// Projection name or `all`.
        name: String,
    },
    /// Print one history record and why it does or does not decode.
    Inspect {
        /// Partition.
        #[arg(long)]
        partition: i32,
        /// Offset.
        #[arg(long)]
        offset: i64,
    },
}

/// A point in a cluster's history.
#[derive(Debug, clap::Args)]
struct PointArgs {
    /// A time: RFC 3339 (2026-11-25T10:00:00Z) or ms since the epoch.
    #[arg(long, conflicts_with = "version")]
    as_of: Option<String>,
    /// A version: N (of the logical facet) or FACET:N.
    #[arg(long)]
    version: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// URL of the fleetledger API.
    #[arg(long, env = "FLEETLEDGER_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// Bearer token (locally: dev-<principal>).
    #[arg(long, env = "FLEETLEDGER_TOKEN")]
    token: Option<String>,
}

impl ApiArgs {
    fn client(&self) -> ApiClient {
        ApiClient::new(&self.url, self.token.clone())
    }
}

/// Prints an API answer; a refused request exits with 2 (client error) or 1.
fn print_answer(answer: anyhow::Result<serde_json::Value>) -> anyhow::Result<()> {
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Err(e) => match e.downcast_ref::<ApiError>() {
            Some(api) => {
                eprintln!("error: {api}");
                std::process::exit(if api.status < 500 { 2 } else { 1 });
            }
            None => Err(e),
        },
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<String>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Topic prefix [default: fleet].
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Partitions of the state and history topics [default: 6].
    #[arg(long)]
    partitions: Option<i32>,
    /// Use this external schema registry instead of the embedded one.
    #[arg(long)]
    schema_registry_url: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Value {
        let mut top = Map::new();
        let mut kafka = Map::new();
        if let Some(v) = &self.listen {
            top.insert("listen".into(), json!(v));
        }
        if let Some(v) = &self.schema_registry_url {
            top.insert("schema_registry_url".into(), json!(v));
        }
        if let Some(v) = &self.bootstrap_servers {
            kafka.insert("bootstrap_servers".into(), json!(v));
        }
        if let Some(v) = &self.topic_prefix {
            kafka.insert("topic_prefix".into(), json!(v));
        }
        if let Some(v) = self.partitions {
            kafka.insert("partitions".into(), json!(v));
        }
        if !kafka.is_empty() {
            top.insert("kafka".into(), Value::Object(kafka));
        }
        Value::Object(top)
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
        _ = token.cancelled() => return,
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// The interactive prompt: one statement per line (end with `;` to span lines), history
/// in `~/.fleetledger_sql_history`, errors printed and the prompt kept.
async fn sql_prompt(client: &ApiClient, format: &str) -> anyhow::Result<()> {
    let mut rl = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".fleetledger_sql_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "fleetledger> "
        } else {
            "        ...> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if statement.is_empty() && matches!(trimmed, "quit" | "exit" | "\\q") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        statement.push_str(&line);
        statement.push('\n');
        if !trimmed.ends_with(';')
            && !statement
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("show")
        {
            continue;
        }
        let sql = statement.trim().trim_end_matches(';').to_owned();
        statement.clear();
        let _ = rl.add_history_entry(sql.as_str());
        match client.sql(&sql, format).await {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

fn load_config(
    file: Option<&std::path::Path>,
    overrides: serde_json::Value,
) -> anyhow::Result<Config> {
    Config::load(file, overrides).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// The start of a simulation.
fn chrono_start(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    fleetledger_ledger::parse_time(text).map_err(|e| anyhow::anyhow!("--start: {e}"))
}

/// `audit`'s time and facet filters.
struct AuditFilter {
    since: Option<String>,
    until: Option<String>,
    facet: Option<String>,
}

/// `fleetledger audit`: a cluster's timeline, or a verification (exit 1 when broken).
async fn audit(
    api: &ApiArgs,
    config_file: Option<&std::path::Path>,
    cluster: Option<&str>,
    filter: AuditFilter,
    format: &str,
    verify: bool,
) -> anyhow::Result<()> {
    if !matches!(format, "table" | "json") {
        anyhow::bail!("unknown format {format:?}: expected table or json");
    }
    let report = match (cluster, verify) {
        (None, false) => {
            eprintln!(
                "error: name a cluster (audit CLUSTER), or check every chain with audit --verify"
            );
            std::process::exit(2);
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
                    print!("{}", fleetledger::audit::timeline_table(&v));
                    Ok(())
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
            fleetledger::audit::verify_topic(&config).await?
        }
    };
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", fleetledger::audit::report_text(&report));
    }
    if !report.is_intact() {
        std::process::exit(1);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETLEDGER_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(cli.config.as_deref(), args.overrides())?;
            let token = CancellationToken::new();
            let running = server::start(config, token.clone())
                .await
                .context("starting the server")?;
            println!("fleetledger listening on http://{}", running.addr);
            let signals = tokio::spawn(shutdown_signal(token.clone()));
            let result = running.wait().await;
            token.cancel();
            let _ = signals.await;
            result
        }
        Command::Append {
            api,
            cluster,
            facet,
            file,
            expect,
            key,
            reason,
        } => print_answer(
            api.client()
                .append(
                    &cluster,
                    &facet,
                    &file,
                    expect,
                    key.as_deref(),
                    reason.as_deref(),
                )
                .await,
        ),
        Command::Sql { api, sql, format } => {
            let client = api.client();
            match sql {
                Some(q) => {
                    let answer = client.sql(&q, &format).await.map(serde_json::Value::String);
                    match answer {
                        Ok(serde_json::Value::String(text)) => {
                            println!("{text}");
                            Ok(())
                        }
                        other => print_answer(other),
                    }
                }
                None => sql_prompt(&client, &format).await,
            }
        }
        Command::Project { command } => {
            let config = load_config(cli.config.as_deref(), serde_json::json!({}))?;
            match command {
                ProjectCommand::Run => {
                    let token = CancellationToken::new();
                    let signals = tokio::spawn(shutdown_signal(token.clone()));
                    let result = fleetledger::project::run(&config, token.clone()).await;
                    token.cancel();
                    let _ = signals.await;
                    result
                }
                ProjectCommand::Rebuild { name } => {
                    fleetledger::project::rebuild(&config, &name).await
                }
                ProjectCommand::Inspect { partition, offset } => {
                    fleetledger::project::inspect(&config, partition, offset).await
                }
            }
        }
        Command::BenchSql { api, runs } => {
            let token = api.token.clone().unwrap_or_else(|| "dev-frontend".into());
            fleetledger::bench::sql_latency(&api.url, &token, runs, &Figures::from_env()).await
        }
        Command::BenchConsume => {
            let config = load_config(cli.config.as_deref(), serde_json::json!({}))?;
            fleetledger::bench::raw_consume(&config, &Figures::from_env())
                .await
                .map(|_| ())
        }
        Command::BenchProduce { changes, per_txn } => {
            let config = load_config(cli.config.as_deref(), serde_json::json!({}))?;
            fleetledger::bench::raw_produce(&config, changes, per_txn, &Figures::from_env())
                .await
                .map(|_| ())
        }
        Command::BenchRecover {
            api,
            prefix,
            clusters,
            runs,
        } => {
            fleetledger::bench::recovery_latency(
                &api.url,
                &prefix,
                clusters,
                runs,
                &Figures::from_env(),
            )
            .await
        }
        Command::BenchReport { results, out } => {
            fleetledger::bench_report::write_report(&results, &out)
        }
        Command::BenchAppend {
            api,
            clusters,
            batch_size,
            batches,
            batch_concurrency,
            singles,
            levels,
            prefix,
        } => {
            let prefix = prefix.unwrap_or_else(|| format!("bench-{}", std::process::id()));
            fleetledger::bench::AppendBench {
                url: api.url.clone(),
                token: api.token.clone().unwrap_or_else(|| "dev-frontend".into()),
                clusters,
                batch_size,
                batches,
                batch_concurrency,
                singles,
                levels,
                prefix,
            }
            .run(&Figures::from_env())
            .await
        }
        Command::State {
            api,
            cluster,
            point,
        } => print_answer(
            api.client()
                .state(&cluster, point.as_of.as_deref(), point.version.as_deref())
                .await,
        ),
        Command::Recover {
            api,
            cluster,
            point,
            dry_run,
            force,
            format,
        } => {
            let answer = api
                .client()
                .recover(
                    &cluster,
                    point.as_of.as_deref(),
                    point.version.as_deref(),
                    dry_run,
                    force,
                )
                .await;
            match (answer, format.as_str()) {
                (Ok(v), "table") => {
                    print!("{}", fleetledger::audit::recovery_text(&v));
                    Ok(())
                }
                (other, _) => print_answer(other),
            }
        }
        Command::Audit {
            api,
            cluster,
            since,
            until,
            facet,
            format,
            verify,
        } => {
            audit(
                &api,
                cli.config.as_deref(),
                cluster.as_deref(),
                AuditFilter {
                    since,
                    until,
                    facet,
                },
                &format,
                verify,
            )
            .await
        }
        Command::Simulate {
            clusters,
            days,
            seed,
            start,
            out,
        } => {
            let start = chrono_start(&start)?;
            let sim = fleetledger::simulate::Simulation {
                clusters,
                days,
                seed,
                start,
            };
            let lines = match out {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = sim.write(&mut w)?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    let n = sim.write(&mut w)?;
                    std::io::Write::flush(&mut w)?;
                    n
                }
            };
            eprintln!("simulated {lines} changes of {clusters} clusters over {days} days");
            Ok(())
        }
        Command::Import { api, file, batch } => {
            match fleetledger::import::import_file(&api.client(), &file, batch).await {
                Ok(s) => {
                    println!(
                        "imported {} lines; {} were already in the ledger",
                        s.imported, s.already
                    );
                    Ok(())
                }
                Err(e) => print_answer(Err(e)),
            }
        }
        Command::Get { api, cluster } => print_answer(api.client().get(&cluster).await),
        Command::History { api, cluster } => print_answer(api.client().history(&cluster).await),
        Command::Delete {
            api,
            cluster,
            reason,
        } => print_answer(api.client().delete(&cluster, reason.as_deref()).await),
    }
}
