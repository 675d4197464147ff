//! An embedded, Confluent-compatible Schema Registry, and the in-process
//! [`SchemaSource`] of the codec.
//!
//! [`SchemaRegistry`] keeps subjects, versions, ids and compatibility settings in memory
//! and writes every change to a [`RegistryJournal`] (in production a compacted Kafka
//! topic, `_schemas` by default) *before* it becomes visible, so an acknowledged
//! registration survives a restart with the same subject, version and id, and a refused
//! request stores nothing. Journal entries use the key/value JSON layout of Confluent's
//! own `_schemas` topic. [`http::router`] serves the REST API.

mod client;
pub mod http;

pub use client::{HttpSchemaSource, http_codec};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use fleetledger_schemas::{SchemaFuture, SchemaSource};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

/// A registry error with Confluent's HTTP status and `error_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    /// HTTP status.
    pub status: u16,
    /// Confluent error code (40401 subject not found, 42201 invalid schema, …).
    pub error_code: u32,
    /// Human text.
    pub message: String,
}

impl RegistryError {
    fn new(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            error_code,
            message: message.into(),
        }
    }
    /// 404 / 40401.
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    /// 404 / 40402.
    pub fn version_not_found(version: &str) -> Self {
        Self::new(404, 40402, format!("Version {version} not found."))
    }
    /// 404 / 40403.
    pub fn schema_not_found(what: &str) -> Self {
        Self::new(404, 40403, format!("Schema {what} not found"))
    }
    /// 422 / 42201.
    pub fn invalid_schema(why: &str) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {why}"))
    }
    /// 422 / 42202.
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    /// 422 / 42203.
    pub fn invalid_compatibility(level: &str) -> Self {
        Self::new(
            422,
            42203,
            format!(
                "Invalid compatibility level: {level}. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
            ),
        )
    }
    /// 409 / 409: the schema is incompatible with earlier versions.
    pub fn incompatible(subject: &str, level: Compatibility, why: &str) -> Self {
        Self::new(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level}): {why}"
            ),
        )
    }
    /// 404 / 40408.
    pub fn subject_config_not_found(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    /// 500 / 50001: the journal refused the write; nothing was stored.
    pub fn store(why: &str) -> Self {
        Self::new(
            500,
            50001,
            format!("Error in the backend data store: {why}"),
        )
    }
}

/// `Result` of registry operations.
pub type RegistryResult<T> = Result<T, RegistryError>;

/// Compatibility levels, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No check.
    None,
    /// The new schema can read data written with the latest.
    Backward,
    /// The new schema can read data written with every earlier version.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl Compatibility {
    /// Parses a level case-insensitively, as Confluent does.
    pub fn parse(s: &str) -> RegistryResult<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
            .map_err(|_| RegistryError::invalid_compatibility(s))
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// Checks `new` against `old` at this level; `Err` says why not.
    fn check(self, new: &Schema, old: &Schema) -> Result<(), String> {
        let backward = || {
            SchemaCompatibility::can_read(old, new)
                .map(|_| ())
                .map_err(|e| {
                    format!("the new schema cannot read data written with an earlier one: {e}")
                })
        };
        let forward = || {
            SchemaCompatibility::can_read(new, old)
                .map(|_| ())
                .map_err(|e| {
                    format!("an earlier schema cannot read data written with the new one: {e}")
                })
        };
        match self {
            Compatibility::None => Ok(()),
            Compatibility::Backward | Compatibility::BackwardTransitive => backward(),
            Compatibility::Forward | Compatibility::ForwardTransitive => forward(),
            Compatibility::Full | Compatibility::FullTransitive => {
                backward().and_then(|_| forward())
            }
        }
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// One change of the registry, as written to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// A schema registered under a subject.
    Schema {
        /// Subject.
        subject: String,
        /// Version within the subject, from 1.
        version: u32,
        /// Global schema id.
        id: u32,
        /// The schema's JSON.
        schema: String,
    },
    /// A compatibility setting; `subject: None` is the global one.
    Config {
        /// Subject, or `None` for global.
        subject: Option<String>,
        /// The level.
        compatibility: Compatibility,
    },
}

#[derive(Serialize, Deserialize)]
struct JournalKey {
    keytype: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    magic: u32,
}

#[derive(Serialize, Deserialize)]
struct SchemaValue {
    subject: String,
    version: u32,
    id: u32,
    schema: String,
    #[serde(default)]
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigValue {
    compatibility_level: Compatibility,
}

impl JournalEntry {
    /// The entry as a Kafka key and value (Confluent's `_schemas` layout).
    pub fn to_key_value(&self) -> (Vec<u8>, Vec<u8>) {
        let (key, value) = match self {
            JournalEntry::Schema {
                subject,
                version,
                id,
                schema,
            } => (
                JournalKey {
                    keytype: "SCHEMA".into(),
                    subject: Some(subject.clone()),
                    version: Some(*version),
                    magic: 1,
                },
                serde_json::to_vec(&SchemaValue {
                    subject: subject.clone(),
                    version: *version,
                    id: *id,
                    schema: schema.clone(),
                    deleted: false,
                }),
            ),
            JournalEntry::Config {
                subject,
                compatibility,
            } => (
                JournalKey {
                    keytype: "CONFIG".into(),
                    subject: subject.clone(),
                    version: None,
                    magic: 0,
                },
                serde_json::to_vec(&ConfigValue {
                    compatibility_level: *compatibility,
                }),
            ),
        };
        // Structs of strings and integers always serialize.
        (
            serde_json::to_vec(&key).unwrap_or_default(),
            value.unwrap_or_default(),
        )
    }

    /// Parses a journal record; `Ok(None)` for record kinds this registry ignores (Confluent's
    /// NOOP, DELETE_SUBJECT, …) and tombstones.
    pub fn from_key_value(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, String> {
        let key: JournalKey =
            serde_json::from_slice(key).map_err(|e| format!("bad journal key: {e}"))?;
        let Some(value) = value else { return Ok(None) };
        match key.keytype.as_str() {
            "SCHEMA" => {
                let v: SchemaValue =
                    serde_json::from_slice(value).map_err(|e| format!("bad schema entry: {e}"))?;
                if v.deleted {
                    return Ok(None);
                }
                Ok(Some(JournalEntry::Schema {
                    subject: v.subject,
                    version: v.version,
                    id: v.id,
                    schema: v.schema,
                }))
            }
            "CONFIG" => {
                let v: ConfigValue =
                    serde_json::from_slice(value).map_err(|e| format!("bad config entry: {e}"))?;
                Ok(Some(JournalEntry::Config {
                    subject: key.subject,
                    compatibility: v.compatibility_level,
                }))
            }
            _ => Ok(None),
        }
    }
}

/// Durable storage of registry changes. `append` returns only once the entry is durable
/// (for Kafka: acknowledged by all in-sync replicas); an error means it was not stored.
pub trait RegistryJournal: Send + Sync + fmt::Debug {
    /// Stores one entry durably.
    fn append<'a>(
        &'a self,
        entry: &'a JournalEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// A journal that keeps nothing: for tests of the registry logic alone.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    entries: std::sync::Mutex<Vec<JournalEntry>>,
}

impl MemoryJournal {
    /// Every entry appended so far, in order.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl RegistryJournal for MemoryJournal {
    fn append<'a>(
        &'a self,
        entry: &'a JournalEntry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.entries
                .lock()
                .map_err(|_| "journal lock poisoned".to_owned())?
                .push(entry.clone());
            Ok(())
        })
    }
}

/// A registered schema as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    /// Subject.
    pub subject: String,
    /// Version within the subject.
    pub version: u32,
    /// Global id.
    pub id: u32,
    /// Schema JSON.
    pub schema: String,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// subject → ids in version order (version = index + 1).
    subjects: BTreeMap<String, Vec<u32>>,
    /// id → schema JSON.
    schemas: BTreeMap<u32, String>,
    /// schema JSON → id (for deduplication across subjects, as Confluent does).
    ids_by_schema: HashMap<String, u32>,
    configs: BTreeMap<String, Compatibility>,
    global: Option<Compatibility>,
}

impl RegistryState {
    fn apply(&mut self, entry: &JournalEntry) {
        match entry {
            JournalEntry::Schema {
                subject,
                version,
                id,
                schema,
            } => {
                self.schemas.insert(*id, schema.clone());
                self.ids_by_schema.entry(schema.clone()).or_insert(*id);
                let versions = self.subjects.entry(subject.clone()).or_default();
                let idx = (*version as usize).saturating_sub(1);
                if idx < versions.len() {
                    versions[idx] = *id;
                } else {
                    versions.push(*id);
                }
            }
            JournalEntry::Config {
                subject: Some(s),
                compatibility,
            } => {
                self.configs.insert(s.clone(), *compatibility);
            }
            JournalEntry::Config {
                subject: None,
                compatibility,
            } => self.global = Some(*compatibility),
        }
    }

    fn version(&self, subject: &str, version: &str) -> RegistryResult<SubjectVersion> {
        let ids = self
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::subject_not_found(subject))?;
        let n = match version {
            "latest" | "-1" => ids.len() as u32,
            v => match v.parse::<u32>() {
                Ok(n) if n >= 1 && n <= i32::MAX as u32 => n,
                _ => return Err(RegistryError::invalid_version(v)),
            },
        };
        let id = *ids
            .get((n as usize).wrapping_sub(1))
            .ok_or_else(|| RegistryError::version_not_found(version))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: n,
            id,
            schema: self.schemas.get(&id).cloned().unwrap_or_default(),
        })
    }
}

/// The registry. All methods are safe to call concurrently; writes are serialised so ids
/// and versions are assigned without gaps or duplicates.
#[derive(Debug)]
pub struct SchemaRegistry {
    state: RwLock<RegistryState>,
    write_lock: Mutex<()>,
    journal: Arc<dyn RegistryJournal>,
    default_compatibility: Compatibility,
}

/// Parses schema text and returns the normalised JSON under which it is stored.
fn normalise(schema: &str) -> RegistryResult<(Schema, String)> {
    let parsed =
        Schema::parse_str(schema).map_err(|e| RegistryError::invalid_schema(&e.to_string()))?;
    let json = serde_json::to_string(&parsed)
        .map_err(|e| RegistryError::invalid_schema(&e.to_string()))?;
    Ok((parsed, json))
}

impl SchemaRegistry {
    /// A registry whose state is `replayed` (the journal's entries in order) and which
    /// writes new entries to `journal`. `default_compatibility` applies where neither a
    /// subject nor a global level is set (BACKWARD, as in Confluent's registry).
    pub fn new(
        journal: Arc<dyn RegistryJournal>,
        replayed: impl IntoIterator<Item = JournalEntry>,
        default_compatibility: Compatibility,
    ) -> Self {
        let mut state = RegistryState::default();
        for e in replayed {
            state.apply(&e);
        }
        SchemaRegistry {
            state: RwLock::new(state),
            write_lock: Mutex::new(()),
            journal,
            default_compatibility,
        }
    }

    async fn persist(&self, entry: JournalEntry) -> RegistryResult<()> {
        self.journal
            .append(&entry)
            .await
            .map_err(|e| RegistryError::store(&e))?;
        self.state.write().await.apply(&entry);
        Ok(())
    }

    /// The compatibility level in force for `subject`.
    pub async fn compatibility(&self, subject: &str) -> Compatibility {
        let st = self.state.read().await;
        st.configs
            .get(subject)
            .copied()
            .or(st.global)
            .unwrap_or(self.default_compatibility)
    }

    /// Registers `schema` under `subject`; returns the existing id if this exact schema is
    /// already a version of the subject. Refuses invalid and incompatible schemas (nothing
    /// is stored then).
    pub async fn register(&self, subject: &str, schema: &str) -> RegistryResult<u32> {
        let (parsed, json) = normalise(schema)?;
        let _guard = self.write_lock.lock().await;
        let (version, id) = {
            let st = self.state.read().await;
            let existing = st.subjects.get(subject).cloned().unwrap_or_default();
            if let Some(id) = existing.iter().find(|id| st.schemas.get(id) == Some(&json)) {
                return Ok(*id);
            }
            let level = st
                .configs
                .get(subject)
                .copied()
                .or(st.global)
                .unwrap_or(self.default_compatibility);
            Self::check_against(&st, subject, &existing, &parsed, level)?;
            let id = match st.ids_by_schema.get(&json) {
                Some(id) => *id,
                None => st.schemas.keys().next_back().map_or(1, |m| m + 1),
            };
            (existing.len() as u32 + 1, id)
        };
        self.persist(JournalEntry::Schema {
            subject: subject.to_owned(),
            version,
            id,
            schema: json,
        })
        .await?;
        tracing::info!(subject, version, id, "schema registered");
        Ok(id)
    }

    fn check_against(
        st: &RegistryState,
        subject: &str,
        existing: &[u32],
        new: &Schema,
        level: Compatibility,
    ) -> RegistryResult<()> {
        let olds: &[u32] = if level.transitive() {
            existing
        } else {
            existing.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        for id in olds {
            let Some(text) = st.schemas.get(id) else {
                continue;
            };
            let old = Schema::parse_str(text).map_err(|e| RegistryError::store(&e.to_string()))?;
            level
                .check(new, &old)
                .map_err(|why| RegistryError::incompatible(subject, level, &why))?;
        }
        Ok(())
    }

    /// Whether `schema` could be registered as the next version of `subject` at its
    /// compatibility level (`version` is "latest" or a number: the version to check against).
    pub async fn is_compatible(
        &self,
        subject: &str,
        version: &str,
        schema: &str,
    ) -> RegistryResult<Result<(), String>> {
        let (parsed, _) = normalise(schema)?;
        let level = self.compatibility(subject).await;
        let st = self.state.read().await;
        let target = st.version(subject, version)?;
        let old =
            Schema::parse_str(&target.schema).map_err(|e| RegistryError::store(&e.to_string()))?;
        Ok(level.check(&parsed, &old))
    }

    /// The subject's version of an identical schema (Confluent's `POST /subjects/{s}`).
    pub async fn lookup(&self, subject: &str, schema: &str) -> RegistryResult<SubjectVersion> {
        let (_, json) = normalise(schema)?;
        let st = self.state.read().await;
        let ids = st
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::subject_not_found(subject))?;
        let idx = ids
            .iter()
            .position(|id| st.schemas.get(id) == Some(&json))
            .ok_or_else(|| RegistryError::schema_not_found("not registered under this subject;"))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: idx as u32 + 1,
            id: ids[idx],
            schema: json,
        })
    }

    /// A version ("latest" or a number) of a subject.
    pub async fn version(&self, subject: &str, version: &str) -> RegistryResult<SubjectVersion> {
        self.state.read().await.version(subject, version)
    }

    /// Every version number of a subject.
    pub async fn versions(&self, subject: &str) -> RegistryResult<Vec<u32>> {
        let st = self.state.read().await;
        let ids = st
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::subject_not_found(subject))?;
        Ok((1..=ids.len() as u32).collect())
    }

    /// Every subject, sorted.
    pub async fn subjects(&self) -> Vec<String> {
        self.state.read().await.subjects.keys().cloned().collect()
    }

    /// The schema with global id `id`.
    pub async fn schema_by_id(&self, id: u32) -> RegistryResult<String> {
        self.state
            .read()
            .await
            .schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| RegistryError::schema_not_found(&id.to_string()))
    }

    /// The subject-level setting, if any.
    pub async fn subject_config(&self, subject: &str) -> Option<Compatibility> {
        self.state.read().await.configs.get(subject).copied()
    }

    /// The global level.
    pub async fn global_config(&self) -> Compatibility {
        self.state
            .read()
            .await
            .global
            .unwrap_or(self.default_compatibility)
    }

    /// Sets the level of a subject, or the global one with `None`.
    pub async fn set_config(
        &self,
        subject: Option<&str>,
        compatibility: Compatibility,
    ) -> RegistryResult<()> {
        let _guard = self.write_lock.lock().await;
        self.persist(JournalEntry::Config {
            subject: subject.map(str::to_owned),
            compatibility,
        })
        .await
    }
}

/// The embedded registry as the codec's schema source: in process, no HTTP round trip.
impl SchemaSource for SchemaRegistry {
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> SchemaFuture<'a, u32> {
        Box::pin(async move {
            SchemaRegistry::register(self, subject, schema)
                .await
                .map_err(RegistryError::into_codec_error)
        })
    }

    fn schema_by_id(&self, id: u32) -> SchemaFuture<'_, String> {
        Box::pin(async move {
            SchemaRegistry::schema_by_id(self, id)
                .await
                .map_err(RegistryError::into_codec_error)
        })
    }
}

impl RegistryError {
    /// The codec's view of this error: retriable when the registry's store failed (5xx).
    fn into_codec_error(self) -> fleetledger_schemas::Error {
        fleetledger_schemas::Error::Registry {
            retriable: self.status >= 500,
            message: self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const V2_OK: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;
    const V2_BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#;

    fn registry() -> (SchemaRegistry, Arc<MemoryJournal>) {
        let j = Arc::new(MemoryJournal::default());
        (
            SchemaRegistry::new(j.clone(), [], Compatibility::Backward),
            j,
        )
    }

    #[tokio::test]
    async fn ids_versions_and_dedup() {
        let (r, _) = registry();
        let id1 = r.register("s", V1).await.unwrap();
        assert_eq!(r.register("s", V1).await.unwrap(), id1);
        let id2 = r.register("s", V2_OK).await.unwrap();
        assert_ne!(id1, id2);
        assert_eq!(r.versions("s").await.unwrap(), vec![1, 2]);
        // The same schema under another subject keeps its id, as in Confluent's registry.
        assert_eq!(r.register("t", V1).await.unwrap(), id1);
        assert_eq!(r.version("t", "latest").await.unwrap().version, 1);
    }

    #[tokio::test]
    async fn incompatible_is_refused_and_nothing_stored() {
        let (r, j) = registry();
        r.register("s", V1).await.unwrap();
        let err = r.register("s", V2_BAD).await.unwrap_err();
        assert_eq!((err.status, err.error_code), (409, 409));
        assert_eq!(j.entries().len(), 1);
        assert_eq!(r.versions("s").await.unwrap(), vec![1]);
        assert!(
            r.is_compatible("s", "latest", V2_BAD)
                .await
                .unwrap()
                .is_err()
        );
        r.set_config(Some("s"), Compatibility::None).await.unwrap();
        assert!(r.register("s", V2_BAD).await.is_ok());
    }

    #[tokio::test]
    async fn replay_restores_everything() {
        let (r, j) = registry();
        r.register("a", V1).await.unwrap();
        r.register("a", V2_OK).await.unwrap();
        r.set_config(None, Compatibility::Full).await.unwrap();
        let entries: Vec<_> = j
            .entries()
            .iter()
            .map(|e| {
                let (k, v) = e.to_key_value();
                JournalEntry::from_key_value(&k, Some(&v)).unwrap().unwrap()
            })
            .collect();
        let r2 = SchemaRegistry::new(
            Arc::new(MemoryJournal::default()),
            entries,
            Compatibility::Backward,
        );
        assert_eq!(
            r2.version("a", "2").await.unwrap(),
            r.version("a", "2").await.unwrap()
        );
        assert_eq!(r2.global_config().await, Compatibility::Full);
    }

    #[tokio::test]
    async fn errors_carry_confluent_codes() {
        let (r, _) = registry();
        assert_eq!(
            r.version("nope", "latest").await.unwrap_err().error_code,
            40401
        );
        r.register("s", V1).await.unwrap();
        assert_eq!(r.version("s", "7").await.unwrap_err().error_code, 40402);
        assert_eq!(r.version("s", "x").await.unwrap_err().error_code, 42202);
        assert_eq!(r.schema_by_id(99).await.unwrap_err().error_code, 40403);
        assert_eq!(
            r.register("s", "{not json").await.unwrap_err().error_code,
            42201
        );
        assert_eq!(
            Compatibility::parse("sideways").unwrap_err().error_code,
            42203
        );
        assert_eq!(
            Compatibility::parse("backward").unwrap(),
            Compatibility::Backward
        );
    }
}
