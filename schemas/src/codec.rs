//! Encoding and decoding state records in the Confluent Schema Registry wire format
//! (magic byte 0, 4-byte big-endian schema id, Avro binary). Schemas come from a
//! [`SchemaSource`]: the embedded registry in process, or an external one over HTTP.
//! Encoding writes with the schemas this build ships, under the ids registered for them.
//!
//! Decoding is the hot path of every projection rebuild, so it does its per-schema work
//! once per schema id, not once per record: the writer schema is fetched from the registry
//! and parsed on first sight of its id, its named types are resolved once
//! ([`WriterSchema`]), and each record is then read straight from the Avro bytes into the
//! typed record by serde (no intermediate `apache_avro::types::Value` tree, whose field
//! names alone cost an allocation each). The typed records name their fields, so a writer
//! schema that lacks an optional field (`#[serde(default)]`) still decodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use std::future::Future;
use std::pin::Pin;

use crate::error::{Error, Result};
use crate::facet::{Facet, FacetState};
use crate::record::{
    AvroRecord, CapacityRecord, LogicalRecord, PhysicalRecord, StateRecord, StatusRecord,
};

/// The first byte of every Confluent wire-format value.
pub const MAGIC_BYTE: u8 = 0;

/// The 5-byte prefix of a wire-format value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireHeader {
    /// The registry's schema id.
    pub schema_id: u32,
}

/// Prefixes an Avro payload with the wire-format header of `schema_id`.
pub fn encode_wire(schema_id: u32, avro: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + avro.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(avro);
    out
}

/// Splits a wire-format value into its header and Avro payload; refuses a wrong magic byte
/// or a value shorter than the header.
pub fn decode_wire_header(bytes: &[u8]) -> Result<(WireHeader, &[u8])> {
    match bytes {
        [MAGIC_BYTE, a, b, c, d, rest @ ..] => Ok((
            WireHeader {
                schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
            },
            rest,
        )),
        [m, ..] if *m != MAGIC_BYTE => Err(Error::Decode(format!(
            "magic byte is {m}, expected {MAGIC_BYTE} (Confluent wire format)"
        ))),
        _ => Err(Error::Decode(format!(
            "value of {} bytes is shorter than the 5-byte wire-format header",
            bytes.len()
        ))),
    }
}

/// A writer schema as the decoder uses it: parsed once, its named types resolved once,
/// and the facet its record name names.
pub struct WriterSchema {
    facet: Facet,
    reader: GenericDatumReader<'static>,
    /// The schema is the one this build ships for its facet (same Parsing Canonical
    /// Form), so records are read by [`crate::binary::decode_own`] without a schema walk.
    own: bool,
}

impl std::fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSchema")
            .field("facet", &self.facet)
            .finish_non_exhaustive()
    }
}

impl WriterSchema {
    /// Parses `text` (the registry's schema of one id) into a decoder. The schema must be a
    /// record named like one of our facets' records. The parsed schema lives as long as
    /// the process: there is one per schema id the registry ever handed out, a handful.
    pub fn parse(text: &str) -> Result<Self> {
        let schema = Schema::parse_str(text)
            .map_err(|e| Error::Decode(format!("writer schema does not parse: {e}")))?;
        let name = match &schema {
            Schema::Record(r) => r.name.fullname(None),
            _ => return Err(Error::Decode("writer schema is not a named record".into())),
        };
        let facet = Facet::from_subject(&name).ok_or_else(|| {
            Error::Decode(format!("record {name} is not a fleetledger state record"))
        })?;
        let own = Schema::parse_str(facet.schema_text())
            .is_ok_and(|ours| ours.canonical_form() == schema.canonical_form());
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| Error::Decode(format!("writer schema does not resolve: {e}")))?;
        Ok(WriterSchema { facet, reader, own })
    }

    /// The facet of this schema's records.
    pub fn facet(&self) -> Facet {
        self.facet
    }

    /// Reads one record from `avro` (the payload after the wire header). A payload that
    /// ends early, or has bytes left over after the record, is [`Error::Decode`].
    pub fn decode(&self, avro: &[u8]) -> Result<StateRecord> {
        if self.own {
            return crate::binary::decode_own(self.facet, avro);
        }
        self.decode_resolving(avro)
    }

    /// [`WriterSchema::decode`] through apache-avro's schema-aware reader, for any writer
    /// schema of our record names.
    fn decode_resolving(&self, avro: &[u8]) -> Result<StateRecord> {
        fn read<R: serde::de::DeserializeOwned + Into<AvroRecord<S>>, S>(
            reader: &GenericDatumReader<'static>,
            avro: &[u8],
        ) -> Result<AvroRecord<S>> {
            let mut rest = avro;
            let record = reader
                .read_deser::<R>(&mut rest)
                .map_err(|e| Error::Decode(e.to_string()))?
                .into();
            if !rest.is_empty() {
                return Err(Error::Decode(format!(
                    "{} bytes left over after the record: the payload is longer than its schema says",
                    rest.len()
                )));
            }
            Ok(record)
        }
        let (meta, state) = match self.facet {
            Facet::Logical => {
                let (m, s) = read::<LogicalRecord, _>(&self.reader, avro)?.into_parts()?;
                (m, FacetState::Logical(Arc::new(s)))
            }
            Facet::Physical => {
                let (m, s) = read::<PhysicalRecord, _>(&self.reader, avro)?.into_parts()?;
                (m, FacetState::Physical(Arc::new(s)))
            }
            Facet::Capacity => {
                let (m, s) = read::<CapacityRecord, _>(&self.reader, avro)?.into_parts()?;
                (m, FacetState::Capacity(Arc::new(s)))
            }
            Facet::Status => {
                let (m, s) = read::<StatusRecord, _>(&self.reader, avro)?.into_parts()?;
                (m, FacetState::Status(Arc::new(s)))
            }
        };
        Ok(StateRecord { meta, state })
    }
}

/// A boxed future, for the object-safe [`SchemaSource`].
pub type SchemaFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Where a [`RecordCodec`] gets schemas: the embedded registry in process (the
/// `fleetledger-registry` crate implements it over its registry), or an external
/// Confluent-compatible registry over HTTP (`fleetledger_registry::HttpSchemaSource`).
pub trait SchemaSource: Send + Sync + std::fmt::Debug {
    /// Registers `schema` under `subject` (nothing new if it is registered already) and
    /// returns its id; a refused schema (e.g. incompatible) is [`Error::Registry`].
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> SchemaFuture<'a, u32>;
    /// The schema text of `id`; an unknown id is [`Error::Registry`].
    fn schema_by_id(&self, id: u32) -> SchemaFuture<'_, String>;
}

/// The id the schema this build writes one facet with has in the registry (the record is
/// written by [`crate::binary::encode_own`]).
#[derive(Debug)]
struct OwnSchema {
    id: u32,
}

/// Encodes and decodes [`StateRecord`]s against one schema source. Cheap to share
/// (`Arc`).
///
/// Encoding uses only the schemas this build ships, under the ids
/// [`RecordCodec::register_subjects`] got for them: never "whatever is latest under the
/// subject", so a schema registered later by someone else cannot change what we write.
/// Decoding fetches a writer schema once per id and caches it.
#[derive(Debug)]
pub struct RecordCodec {
    source: Arc<dyn SchemaSource>,
    own: RwLock<BTreeMap<Facet, Arc<OwnSchema>>>,
    writers: RwLock<HashMap<u32, Arc<WriterSchema>>>,
}

impl RecordCodec {
    /// A codec over `source`.
    pub fn with_source(source: Arc<dyn SchemaSource>) -> Self {
        RecordCodec {
            source,
            own: RwLock::new(BTreeMap::new()),
            writers: RwLock::new(HashMap::new()),
        }
    }

    /// Registers the schema of every facet under its subject (a no-op for a schema that is
    /// already registered), remembers the ids for encoding and returns them. Fails if the
    /// registry refuses a schema, e.g. because it is incompatible with the subject's
    /// latest version.
    pub async fn register_subjects(&self) -> Result<BTreeMap<Facet, u32>> {
        let mut ids = BTreeMap::new();
        for facet in Facet::ALL {
            let id = self
                .source
                .register(facet.subject(), facet.schema_text())
                .await?;
            let known = self
                .own
                .read()
                .ok()
                .and_then(|o| o.get(&facet).map(|s| s.id));
            if known != Some(id)
                && let Ok(mut own) = self.own.write()
            {
                own.insert(facet, Arc::new(OwnSchema { id }));
            }
            ids.insert(facet, id);
        }
        Ok(ids)
    }

    /// Encodes `record` with the schema this build ships for its facet, under the id it
    /// was registered with (registered now if [`RecordCodec::register_subjects`] has not
    /// run yet).
    pub async fn encode(&self, record: &StateRecord) -> Result<Vec<u8>> {
        let facet = record.facet();
        let own = match self.own.read().ok().and_then(|o| o.get(&facet).cloned()) {
            Some(o) => o,
            None => {
                self.register_subjects().await?;
                self.own
                    .read()
                    .ok()
                    .and_then(|o| o.get(&facet).cloned())
                    .ok_or_else(|| Error::Encode(format!("no schema id for {facet}")))?
            }
        };
        // Written directly in the shipped schema's field order (no Avro `Value` tree); the
        // tests hold it equal to the library's encoding.
        Ok(encode_wire(own.id, &crate::binary::encode_own(record)))
    }

    /// Decodes a wire-format value; the schema id names the writer schema, whose record
    /// name names the facet. Wrong magic byte, unknown id, foreign record or truncated
    /// payload each give [`Error::Decode`] or [`Error::Registry`].
    pub async fn decode(&self, bytes: &[u8]) -> Result<StateRecord> {
        let (header, avro) = decode_wire_header(bytes)?;
        self.writer_schema(header.schema_id).await?.decode(avro)
    }

    /// [`RecordCodec::decode`] of a record keyed under `facet` (when its key names one):
    /// a record whose writer schema is another facet's record is [`Error::Decode`], not
    /// read as that other facet — a schema registered under our names cannot move a record
    /// from one facet to another.
    pub async fn decode_as(&self, bytes: &[u8], facet: Option<Facet>) -> Result<StateRecord> {
        let (header, avro) = decode_wire_header(bytes)?;
        let writer = self.writer_schema(header.schema_id).await?;
        if let Some(keyed) = facet.filter(|f| *f != writer.facet()) {
            return Err(Error::Decode(format!(
                "the record is keyed under facet {keyed} but its writer schema (id {}) is the {} record; refused",
                header.schema_id,
                writer.facet()
            )));
        }
        writer.decode(avro)
    }

    /// The decoder of schema `id`: from the cache, or fetched from the source and parsed
    /// once (an unknown id is [`Error::Registry`] and is not cached).
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>> {
        if let Some(w) = self.writers.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(w);
        }
        let text = self.source.schema_by_id(id).await?;
        let parsed = Arc::new(WriterSchema::parse(&text)?);
        let mut writers = self
            .writers
            .write()
            .map_err(|_| Error::Decode("the schema cache was poisoned".into()))?;
        Ok(writers.entry(id).or_insert(parsed).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::to_avro_value;
    use crate::record::{RecordMeta, from_avro_value};
    use chrono::{TimeZone, Utc};

    fn samples() -> Vec<StateRecord> {
        let states = [
            (
                Facet::Logical,
                r#"{"org_id":"o1","env_id":"e1","kind":"kafka","name":"n","sku":"dedicated","cku":4,
                "cloud":"aws","region":"us-east-1","network":"private-link",
                "config":{"retention.ms":"-1","a":"b"},"deleted":true}"#,
            ),
            (
                Facet::Physical,
                r#"{"brokers":6,"disk_gb_per_broker":500,"zones":["a","b","c"],"version":"3.9"}"#,
            ),
            (
                Facet::Capacity,
                r#"{"satellite":"sat-1","k8s_cluster":"k8s-2","node_pool":"pool-3"}"#,
            ),
            (
                Facet::Status,
                r#"{"phase":"running","cku":4,"brokers_ready":6,"observed_version":9,"message":"ok ü"}"#,
            ),
            (
                Facet::Status,
                r#"{"phase":"provisioning","cku":0,"brokers_ready":0,"observed_version":1}"#,
            ),
        ];
        states
            .iter()
            .enumerate()
            .map(|(i, (facet, json))| StateRecord {
                meta: RecordMeta {
                    cluster_id: format!("lkc-{i}"),
                    version: 7 + i as i64,
                    writer: "frontend".into(),
                    request_id: format!("req-{i}"),
                    reason: (i % 2 == 0).then(|| "because".to_owned()),
                    ts: Utc
                        .timestamp_millis_opt(1_700_000_000_123 + i as i64)
                        .unwrap(),
                    prev_hash: "ab".repeat(32),
                    hash: "cd".repeat(32),
                },
                state: FacetState::from_json(*facet, json.as_bytes()).unwrap(),
            })
            .collect()
    }

    fn avro_bytes(r: &StateRecord) -> (Schema, Vec<u8>) {
        let schema = Schema::parse_str(r.facet().schema_text()).unwrap();
        #[expect(deprecated, reason = "the generic writer is the reference here")]
        let bytes = apache_avro::to_avro_datum(&schema, to_avro_value(r).unwrap()).unwrap();
        (schema, bytes)
    }

    /// A registry that hands out ids from 100 on, and tells the schema of each.
    #[derive(Debug, Default)]
    struct CountingSource {
        schemas: std::sync::Mutex<Vec<String>>,
    }

    impl SchemaSource for CountingSource {
        fn register<'a>(&'a self, _subject: &'a str, schema: &'a str) -> SchemaFuture<'a, u32> {
            Box::pin(async move {
                let mut s = self.schemas.lock().unwrap();
                if let Some(i) = s.iter().position(|x| x == schema) {
                    return Ok(100 + i as u32);
                }
                s.push(schema.to_owned());
                Ok(99 + s.len() as u32)
            })
        }

        fn schema_by_id(&self, id: u32) -> SchemaFuture<'_, String> {
            Box::pin(async move {
                self.schemas
                    .lock()
                    .unwrap()
                    .get(id.wrapping_sub(100) as usize)
                    .cloned()
                    .ok_or_else(|| Error::Registry {
                        message: format!("schema {id} not found"),
                        retriable: false,
                    })
            })
        }
    }

    #[test]
    fn encoding_uses_the_ids_registered_for_the_shipped_schemas() {
        futures::executor::block_on(async {
            let source = Arc::new(CountingSource::default());
            let codec = RecordCodec::with_source(source.clone());
            let ids = codec.register_subjects().await.unwrap();
            assert_eq!(
                ids.values().copied().collect::<Vec<_>>(),
                vec![100, 101, 102, 103]
            );
            // A schema registered later (by anyone) does not change what is written.
            source
                .register("fleetledger.v1.LogicalRecord", "\"string\"")
                .await
                .unwrap();
            for record in samples() {
                let bytes = codec.encode(&record).await.unwrap();
                let (header, _) = decode_wire_header(&bytes).unwrap();
                assert_eq!(header.schema_id, ids[&record.facet()]);
                assert_eq!(codec.decode(&bytes).await.unwrap(), record);
            }
        });
    }

    #[test]
    fn a_record_keyed_under_another_facet_than_its_schema_is_refused() {
        futures::executor::block_on(async {
            let codec = RecordCodec::with_source(Arc::new(CountingSource::default()));
            codec.register_subjects().await.unwrap();
            for record in samples() {
                let bytes = codec.encode(&record).await.unwrap();
                let facet = record.facet();
                assert_eq!(codec.decode_as(&bytes, Some(facet)).await.unwrap(), record);
                assert_eq!(codec.decode_as(&bytes, None).await.unwrap(), record);
                let other = Facet::ALL.into_iter().find(|f| *f != facet).unwrap();
                let err = codec
                    .decode_as(&bytes, Some(other))
                    .await
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("keyed under facet {other}"))
                        && err.contains(facet.as_str()),
                    "{err}"
                );
            }
        });
    }

    #[test]
    fn compiled_decoder_agrees_with_the_generic_one() {
        for r in samples() {
            let (schema, bytes) = avro_bytes(&r);
            let writer = WriterSchema::parse(r.facet().schema_text()).unwrap();
            assert_eq!(writer.facet(), r.facet());
            let fast = writer.decode(&bytes).unwrap();
            #[expect(deprecated, reason = "the generic reader is the reference here")]
            let value = apache_avro::from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
            let generic = from_avro_value(r.facet(), &value).unwrap();
            assert_eq!(fast, r);
            assert_eq!(generic, r);
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof!["[a-z0-9-]{0,12}", "\\PC{0,6}"]
    }

    fn any_record() -> impl proptest::strategy::Strategy<Value = StateRecord> {
        use proptest::prelude::*;
        let state = crate::state_strategy::facet_state(
            text().boxed(),
            any::<i32>().boxed(),
            any::<i64>().boxed(),
        );
        let meta = (
            text(),
            any::<i64>(),
            text(),
            text(),
            prop::option::of(text()),
            -4_000_000_000_000i64..4_000_000_000_000,
            text(),
            text(),
        );
        (meta, state).prop_map(
            |((cluster_id, version, writer, request_id, reason, ts, prev_hash, hash), state)| {
                StateRecord {
                    meta: RecordMeta {
                        cluster_id,
                        version,
                        writer,
                        request_id,
                        reason,
                        ts: Utc.timestamp_millis_opt(ts).unwrap(),
                        prev_hash,
                        hash,
                    },
                    state,
                }
            },
        )
    }

    proptest::proptest! {
        /// The direct reader of our own schemas and the schema-resolving reader agree on
        /// every record, and on every damaged payload: both refuse it, or both read the
        /// same record.
        #[test]
        fn own_schema_reader_agrees_with_the_resolving_reader(
            r in any_record(),
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 0..3),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let (_, bytes) = avro_bytes(&r);
            let writer = WriterSchema::parse(r.facet().schema_text()).unwrap();
            proptest::prop_assert!(writer.own);
            proptest::prop_assert_eq!(&writer.decode(&bytes).unwrap(), &r);
            proptest::prop_assert_eq!(&writer.decode_resolving(&bytes).unwrap(), &r);
            let mut damaged = bytes.clone();
            for (at, x) in &flips {
                let i = at.index(damaged.len());
                damaged[i] ^= x;
            }
            let cut_at = if flips.is_empty() { cut.index(bytes.len()) } else { damaged.len() };
            let damaged = &damaged[..cut_at];
            match (writer.decode(damaged), writer.decode_resolving(damaged)) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b),
                (Err(Error::Decode(_)), Err(Error::Decode(_))) => {}
                (a, b) => proptest::prop_assert!(false, "own reader {:?}, resolving reader {:?}", a, b),
            }
        }
    }

    proptest::proptest! {
        /// The direct writer writes what the library writes: the same bytes for every
        /// record whose maps have at most one entry (the library writes a map in a hash
        /// map's order), and for every record bytes that the library's resolving reader
        /// and our reader read back as the record.
        #[test]
        fn the_direct_writer_writes_what_the_library_writes(r in any_record()) {
            let (_, library) = avro_bytes(&r);
            let direct = crate::binary::encode_own(&r);
            let one_entry_maps = match &r.state {
                FacetState::Logical(l) => l.config.len() <= 1,
                _ => true,
            };
            if one_entry_maps {
                proptest::prop_assert_eq!(&direct, &library);
            } else {
                proptest::prop_assert_eq!(direct.len(), library.len());
            }
            let writer = WriterSchema::parse(r.facet().schema_text()).unwrap();
            proptest::prop_assert_eq!(&writer.decode_resolving(&direct).unwrap(), &r);
            proptest::prop_assert_eq!(&writer.decode(&direct).unwrap(), &r);
        }
    }

    #[test]
    fn an_older_writer_schema_without_optional_fields_decodes_with_defaults() {
        let mut r = samples().remove(0);
        let FacetState::Logical(l) = &mut r.state else {
            unreachable!()
        };
        let l = std::sync::Arc::make_mut(l);
        l.config.clear();
        l.deleted = false;
        // The logical schema as it might have been before `config` and `deleted`.
        let mut old: serde_json::Value =
            serde_json::from_str(Facet::Logical.schema_text()).unwrap();
        let fields = old["fields"].as_array_mut().unwrap();
        let state = fields.iter_mut().find(|f| f["name"] == "state").unwrap();
        state["type"]["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "config" && f["name"] != "deleted");
        let old_schema = Schema::parse_str(&old.to_string()).unwrap();
        let mut value = to_avro_value(&r).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value
            && let Some((_, apache_avro::types::Value::Record(state))) =
                fields.iter_mut().find(|(n, _)| n == "state")
        {
            state.retain(|(n, _)| n != "config" && n != "deleted");
        }
        #[expect(deprecated, reason = "the generic writer is the reference here")]
        let bytes = apache_avro::to_avro_datum(&old_schema, value).unwrap();
        let writer = WriterSchema::parse(&old.to_string()).unwrap();
        assert!(
            !writer.own,
            "another schema is read by the resolving reader"
        );
        assert_eq!(writer.decode(&bytes).unwrap(), r);
    }

    #[test]
    fn truncated_or_overlong_payloads_and_foreign_schemas_are_refused() {
        let r = &samples()[0];
        let (_, bytes) = avro_bytes(r);
        let writer = WriterSchema::parse(r.facet().schema_text()).unwrap();
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(writer.decode(&bytes[..cut]), Err(Error::Decode(_))),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = writer.decode(&longer).unwrap_err();
        assert!(e.to_string().contains("1 bytes left over"), "{e}");
        let foreign = r#"{"type":"record","name":"Other","namespace":"x","fields":[]}"#;
        assert!(
            WriterSchema::parse(foreign)
                .unwrap_err()
                .to_string()
                .contains("x.Other is not a fleetledger state record")
        );
        assert!(WriterSchema::parse(r#""string""#).is_err());
    }
}
