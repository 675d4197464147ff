//! Encoding and decoding state records in the Confluent Schema Registry wire format
//! (magic byte 0, 4-byte big-endian schema id, Avro binary) through
//! `schema_registry_converter`, which caches each schema, and its resolution, per id.

use std::collections::BTreeMap;
use std::time::Duration;

use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::error::{Error, Result};
use crate::facet::Facet;
use crate::record::{StateRecord, from_avro_value, to_avro_value};

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

fn registry_error(e: SRCError) -> Error {
    let mut message = e.error.clone();
    if let Some(cause) = &e.cause {
        message.push_str(": ");
        message.push_str(cause);
    }
    Error::Registry {
        message,
        retriable: e.retriable,
    }
}

/// Encodes and decodes [`StateRecord`]s against one schema registry. Cheap to share
/// (`Arc`); schemas are fetched once per subject and id, then cached.
#[derive(Debug)]
pub struct RecordCodec {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl RecordCodec {
    /// A codec for the registry at `url` (e.g. `http://127.0.0.1:7070/registry`).
    pub fn new(url: &str) -> Result<Self> {
        let settings = SrSettings::new_builder(url.trim_end_matches('/').to_owned())
            .set_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(registry_error)?;
        Ok(RecordCodec {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
        })
    }

    /// Registers the schema of every facet under its subject (a no-op for a schema that is
    /// already registered) and returns the ids. Fails if the registry refuses a schema,
    /// e.g. because it is incompatible with the subject's latest version.
    pub async fn register_subjects(&self) -> Result<BTreeMap<Facet, u32>> {
        let mut ids = BTreeMap::new();
        for facet in Facet::ALL {
            let supplied = SuppliedSchema::new(
                Some(facet.subject().to_owned()),
                SchemaType::Avro,
                facet.schema_text().to_owned(),
            );
            let registered = post_schema(&self.settings, facet.subject().to_owned(), supplied)
                .await
                .map_err(registry_error)?;
            ids.insert(facet, registered.id);
        }
        Ok(ids)
    }

    /// Encodes `record` with the latest schema of its facet's subject.
    pub async fn encode(&self, record: &StateRecord) -> Result<Vec<u8>> {
        let value = to_avro_value(record)?;
        let strategy = SubjectNameStrategy::RecordNameStrategy(record.facet().subject().to_owned());
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(registry_error)
    }

    /// Decodes a wire-format value; the schema id names the writer schema, whose record
    /// name names the facet. Wrong magic byte, unknown id, foreign record or truncated
    /// payload each give [`Error::Decode`] or [`Error::Registry`].
    pub async fn decode(&self, bytes: &[u8]) -> Result<StateRecord> {
        decode_wire_header(bytes)?;
        let decoded = self
            .decoder
            .decode(Some(bytes))
            .await
            .map_err(registry_error)?;
        let name = decoded
            .name
            .map(|n| n.fullname(None))
            .ok_or_else(|| Error::Decode("writer schema is not a named record".into()))?;
        let facet = Facet::from_subject(&name).ok_or_else(|| {
            Error::Decode(format!("record {name} is not a fleetledger state record"))
        })?;
        from_avro_value(facet, &decoded.value)
    }
}
