//! The one `Config`: defaults that work locally, then an optional TOML file, then
//! `FLEETLEDGER_*` environment variables (nested keys with `__`, e.g.
//! `FLEETLEDGER_KAFKA__BOOTSTRAP_SERVERS`), then command-line flags. Unknown keys are
//! refused.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use std::path::PathBuf;

use fleetledger_ledger::{KafkaConfig, LedgerConfig};
use fleetledger_projectors::ProjectorConfig;
use serde::{Deserialize, Serialize};

/// Everything the service can be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// The URL other instances redirect writes to while this one is the writer (and
    /// clients are sent to): how this instance's HTTP API is reached from where they
    /// are. Default: `http://` and the address `listen` bound (right for one machine;
    /// behind a load balancer or in a container, set it to the instance's own address).
    pub advertised_url: Option<String>,
    /// Address the PostgreSQL protocol listens on (psql, drivers, BI tools; the same
    /// read-only SQL as `/v1/sql`); empty: not served.
    pub pg_listen: String,
    /// PostgreSQL sessions open at once; one more is refused at login (SQLSTATE 53300).
    pub pg_max_connections: usize,
    /// Kafka connection and topic layout.
    pub kafka: KafkaConfig,
    /// Serve the embedded Confluent-compatible schema registry under `/registry`.
    /// Ignored (off) when `schema_registry_url` is set.
    pub embedded_registry: bool,
    /// URL of an external schema registry to use instead of the embedded one.
    pub schema_registry_url: Option<String>,
    /// How long shutdown waits for in-flight requests and tasks, in milliseconds; never
    /// less than a commit may take (three `kafka.request_timeout_ms`, plus 5 s), so a
    /// SIGTERM never cuts a transaction whose outcome its callers wait for.
    pub shutdown_timeout_ms: u64,
    /// Largest accepted request body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// API requests served at once; one more is answered 503 `overloaded` with
    /// `Retry-After` at once, so that one caller's flood cannot queue the others out.
    pub max_concurrent_requests: usize,
    /// Watch streams open at once (each holds a Kafka consumer); one more is answered 503
    /// `overloaded` with `Retry-After`.
    pub max_watches: usize,
    /// Longest a read (a GET, or SQL) may take, in milliseconds (longer: 504; a write's
    /// limit is `ledger.answer_timeout_ms`, since a write cut short may have committed).
    pub read_timeout_ms: u64,
    /// Tokens and facet ownership.
    pub auth: AuthConfig,
    /// The append path.
    pub ledger: LedgerConfig,
    /// The projections (checkpoint directory and frequency).
    pub projector: ProjectorConfig,
    /// SQL limits and the per-service views.
    pub queries: QueriesConfig,
}

/// SQL over the projections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueriesConfig {
    /// Longest a query may run, in milliseconds.
    pub timeout_ms: u64,
    /// Most rows an answer may have.
    pub max_rows: usize,
    /// Memory all running queries may hold together, in MiB (nothing spills to disk).
    pub memory_limit_mib: usize,
    /// Memory kept between queries for the projection files' footers and page indexes,
    /// in MiB.
    pub metadata_cache_mib: usize,
    /// Queries running at once; more wait `queue_wait_ms`, then get 429.
    pub max_concurrent: usize,
    /// Longest a query waits for a turn, in milliseconds.
    pub queue_wait_ms: u64,
    /// Longest statement, in bytes.
    pub max_sql_bytes: usize,
    /// Deepest nesting of parentheses (expressions, subqueries).
    pub max_depth: usize,
    /// Most operators (`+`, `=`, `AND`, …) in one statement.
    pub max_operators: usize,
    /// TOML file of per-service views. None: the shipped defaults
    /// (`deploy/local/views.toml`).
    pub views_file: Option<PathBuf>,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        QueriesConfig {
            timeout_ms: 10_000,
            max_rows: 100_000,
            memory_limit_mib: 512,
            metadata_cache_mib: fleetledger_queries::DEFAULT_METADATA_CACHE_MIB,
            max_concurrent: 4,
            queue_wait_ms: 2_000,
            max_sql_bytes: 16 * 1024,
            max_depth: 32,
            max_operators: 128,
            views_file: None,
        }
    }
}

/// Who is who and who owns what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// TOML file with `[tokens]` `"sha256:<hex>" = "principal"` (token hashes; `fleetledger
    /// token create PRINCIPAL` makes a token and its line). Without it the service does
    /// not start, unless `development_tokens` is on.
    pub tokens_file: Option<PathBuf>,
    /// Accept the development tokens `dev-<principal>` when there is no tokens file. Only
    /// on a loopback listen address: anywhere else the service refuses to start.
    pub development_tokens: bool,
    /// TOML file with `[owners]` `facet = "principal"`. None: the defaults of DESIGN.md.
    pub ownership_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".into(),
            advertised_url: None,
            pg_listen: "127.0.0.1:5433".into(),
            pg_max_connections: 64,
            kafka: KafkaConfig::default(),
            embedded_registry: true,
            schema_registry_url: None,
            shutdown_timeout_ms: 10_000,
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 512,
            max_watches: 64,
            read_timeout_ms: 30_000,
            auth: AuthConfig::default(),
            ledger: LedgerConfig::default(),
            projector: ProjectorConfig::default(),
            queries: QueriesConfig::default(),
        }
    }
}

/// Top-level keys, so unrelated `FLEETLEDGER_*` variables (the CLI's `FLEETLEDGER_URL`,
/// the scripts' `FLEETLEDGER_KAFKA_PORT`) are not mistaken for configuration.
const KEYS: &[&str] = &[
    "listen",
    "advertised_url",
    "pg_listen",
    "pg_max_connections",
    "kafka",
    "embedded_registry",
    "schema_registry_url",
    "shutdown_timeout_ms",
    "max_body_bytes",
    "max_concurrent_requests",
    "max_watches",
    "read_timeout_ms",
    "auth",
    "ledger",
    "projector",
    "queries",
];

impl Config {
    /// Layers defaults, `file` (if given), the environment and `overrides` (from flags,
    /// as a JSON object of the keys they set). Fails on unknown keys or wrong types.
    pub fn load(
        file: Option<&Path>,
        overrides: serde_json::Value,
    ) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig
            .merge(Env::prefixed("FLEETLEDGER_").split("__").filter(|k| {
                // Depending on figment's order the key may or may not be split yet.
                let k = k.as_str().to_ascii_lowercase().replace("__", ".");
                KEYS.contains(&k.split('.').next().unwrap_or(""))
            }))
            .merge(Serialized::defaults(overrides));
        fig.extract().map_err(Box::new)
    }

    /// The registry URL the codec talks to: the external one, or our own embedded one.
    pub fn registry_url(&self) -> String {
        match &self.schema_registry_url {
            Some(u) => u.clone(),
            None => format!("http://{}/registry", self.listen),
        }
    }

    /// Whether this process serves the embedded registry.
    pub fn serves_registry(&self) -> bool {
        self.embedded_registry && self.schema_registry_url.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_then_flags_and_refuses_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("fl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\n[kafka]\npartitions = 3\n").unwrap();
        #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
        figment::Jail::expect_with(|jail| {
            // Without the caller's own FLEETLEDGER_* variables (a shell set up to run the
            // service): the defaults are what is checked. The jail restores them.
            jail.clear_env();
            let c = Config::load(Some(&f), serde_json::json!({"listen": "127.0.0.1:2"})).unwrap();
            assert_eq!(c.listen, "127.0.0.1:2");
            assert_eq!(c.kafka.partitions, 3);
            assert_eq!(c.kafka.topic_prefix, "fleet");
            jail.set_env("FLEETLEDGER_KAFKA__TOPIC_PREFIX", "envp");
            jail.set_env("FLEETLEDGER_LISTEN", "127.0.0.1:3");
            jail.set_env("FLEETLEDGER_URL", "http://not-config");
            jail.set_env("FLEETLEDGER_KAFKA_PORT", "9999");
            let c = Config::load(None, serde_json::json!({})).expect("env layered");
            assert_eq!(c.kafka.topic_prefix, "envp");
            assert_eq!(c.listen, "127.0.0.1:3");
            Ok(())
        });
        std::fs::write(&f, "colour = \"red\"\n").unwrap();
        let err = Config::load(Some(&f), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    /// The writer's transactional id is derived from the topic prefix: a configuration
    /// that tries to set another one (which would let two writers commit on the same
    /// topics) is refused.
    #[test]
    fn the_transactional_id_cannot_be_configured() {
        // In a jail: another test sets FLEETLEDGER_* variables in one, and the jails'
        // lock keeps this test from seeing them.
        #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
        figment::Jail::expect_with(|jail| {
            // Nor the caller's own FLEETLEDGER_* variables: the prefix is the default one.
            jail.clear_env();
            let err = Config::load(
                None,
                serde_json::json!({"ledger": {"transactional_id": "my-own"}}),
            )
            .unwrap_err();
            assert!(err.to_string().contains("transactional_id"), "{err}");
            let c = Config::load(None, serde_json::json!({})).unwrap();
            assert_eq!(
                fleetledger_ledger::append::writer_transactional_id(&c.kafka.topic_prefix),
                "fleetledger-fleet-writer"
            );
            Ok(())
        });
    }
}
