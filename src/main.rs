//! The `fleetledger` command: parses the command line and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetledger::{Config, server};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

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
            let config = Config::load(cli.config.as_deref(), args.overrides())
                .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
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
    }
}
