//! The command line: what `fleetledger` accepts, and one module per kind of command. A
//! command parses, calls one library or API operation, prints, and says how it ended
//! ([`std::process::ExitCode`]: 0 done, 1 failed, 2 refused by the server as the caller's
//! fault); only `main` exits.

pub(crate) mod audit;
mod project;
mod serve;
mod sql;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetledger_client::{ApiClient, ClientError};
use serde_json::{Map, Value, json};

use crate::Config;

#[derive(Debug, Parser)]
#[command(
    name = "fleetledger",
    version,
    about = "System of record for a cloud control plane"
)]
pub struct Cli {
    /// TOML configuration file (layered under FLEETLEDGER_* environment and flags).
    #[arg(long, global = true, env = "FLEETLEDGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Import a history file with its original times, as the `import` principal (locally
    /// dev-import); running it again resumes without duplicates.
    Import {
        #[command(flatten)]
        api: ApiArgs,
        /// JSON lines: {ts, cluster_id, facet, writer, reason?, state}; `-` reads standard
        /// input, which must then be in time order.
        file: PathBuf,
        /// Lines per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Import even into cluster+facets whose history was written live (refused
        /// otherwise: an import would interleave with what the control plane wrote).
        #[arg(long)]
        allow_live_history: bool,
    },
    /// Make a token for a principal, or hash one, for the tokens file (which holds only
    /// hashes).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
pub(crate) enum TokenCommand {
    /// Print a new random token for PRINCIPAL, and the line of its hash for the tokens file.
    Create {
        /// The principal the token authenticates (e.g. frontend, sync, registry-admin).
        principal: String,
        /// Limit the token to this org (repeat for several): it then sees and changes only
        /// their clusters, history, audit and billing. Without it, every org.
        #[arg(long = "org")]
        orgs: Vec<String>,
    },
    /// Read a token on standard input and print its hash (the tokens file's key).
    Hash,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
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
pub(crate) struct PointArgs {
    /// A time: RFC 3339 (2026-11-25T10:00:00Z) or ms since the epoch.
    #[arg(long, conflicts_with = "version")]
    pub(crate) as_of: Option<String>,
    /// A version: N (of the logical facet) or FACET:N.
    #[arg(long)]
    pub(crate) version: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// URL of the fleetledger API.
    #[arg(long, env = "FLEETLEDGER_URL", default_value = "http://127.0.0.1:7070")]
    pub(crate) url: String,
    /// Bearer token (locally: dev-<principal>).
    #[arg(long, env = "FLEETLEDGER_TOKEN")]
    pub(crate) token: Option<String>,
}

impl ApiArgs {
    fn client(&self) -> ApiClient {
        ApiClient::new(&self.url, self.token.clone())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<String>,
    /// Address of the PostgreSQL protocol [default: 127.0.0.1:5433; empty: off].
    #[arg(long)]
    pg_listen: Option<String>,
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
        if let Some(v) = &self.pg_listen {
            top.insert("pg_listen".into(), json!(v));
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

/// An answer as JSON to print.
fn as_json<T: serde::Serialize>(answer: Result<T, ClientError>) -> Result<Value, ClientError> {
    answer.map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
}

/// Prints an API answer. A refusal is printed to stderr and ends with 2 (the caller's
/// fault, 4xx) or 1 (the server's, 5xx); an unreachable server is an error.
fn print_answer(answer: Result<Value, ClientError>) -> anyhow::Result<ExitCode> {
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Api(api)) => {
            eprintln!("error: {api}");
            Ok(ExitCode::from(if api.status < 500 { 2 } else { 1 }))
        }
        Err(e) => Err(e.into()),
    }
}

fn load_config(file: Option<&std::path::Path>, overrides: Value) -> anyhow::Result<Config> {
    Config::load(file, overrides).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

impl Cli {
    /// Whether the command is `serve`.
    pub fn runs_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config_file = self.config.as_deref();
        match self.command {
            Command::Serve(args) => {
                serve::serve(load_config(config_file, args.overrides())?).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Append {
                api,
                cluster,
                facet,
                file,
                expect,
                key,
                reason,
            } => print_answer(as_json(
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
            )),
            Command::Sql { api, sql, format } => sql::sql(&api.client(), sql, &format).await,
            Command::Project { command } => {
                project::project(&load_config(config_file, json!({}))?, command).await?;
                Ok(ExitCode::SUCCESS)
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
                        print!("{}", fleetledger_client::render::recovery_text(&v));
                        Ok(ExitCode::SUCCESS)
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
                let filter = audit::AuditFilter {
                    since,
                    until,
                    facet,
                };
                audit::audit(
                    &api,
                    config_file,
                    cluster.as_deref(),
                    filter,
                    &format,
                    verify,
                )
                .await
            }
            Command::Import {
                api,
                file,
                batch,
                allow_live_history,
            } => {
                let client = api.client();
                let imported = fleetledger_client::import::import_file(
                    &client,
                    &file,
                    batch,
                    allow_live_history,
                )
                .await;
                match imported {
                    Ok(s) => {
                        println!(
                            "imported {} lines; {} were already in the ledger",
                            s.imported, s.already
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => print_answer(Err(e)),
                }
            }
            Command::Token { command } => {
                match command {
                    TokenCommand::Create { principal, orgs } => token::create(&principal, &orgs)?,
                    TokenCommand::Hash => token::hash()?,
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Get { api, cluster } => print_answer(api.client().get(&cluster).await),
            Command::History { api, cluster } => print_answer(api.client().history(&cluster).await),
            Command::Delete {
                api,
                cluster,
                reason,
            } => print_answer(as_json(
                api.client().delete(&cluster, reason.as_deref()).await,
            )),
        }
    }
}
