//! A direct writer and reader of the Avro binary encoding of our own record schemas.
//!
//! The writer ([`encode_own`]) writes a record's fields in the order of the schema this
//! build ships, with no `Value` tree and no schema walk; its bytes equal the library's
//! encoding of the same record (maps, which the library writes in a hash map's order,
//! are written in key order; the tests check both read back the same). For the reader: for a writer
//! schema whose Parsing Canonical Form equals that of the schema this build ships
//! (`schemas/avro/*.avsc`), the layout of every record is known at compile time, so the
//! fields are read straight into the typed record in schema order, with no schema walk
//! per record. Any other writer schema (an older or newer version of a subject) goes
//! through the schema-resolving decoder in [`crate::codec::WriterSchema`]. The tests check
//! that both agree on every record and refuse the same malformed payloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::facet::{CapacityState, Facet, FacetState, LogicalState, PhysicalState, StatusState};
use crate::record::{AvroRecord, StateRecord};

/// A cursor over Avro binary data.
struct Cursor<'a> {
    buf: &'a [u8],
}

fn ended() -> Error {
    Error::Decode("the payload ends early: it is shorter than its schema says".into())
}

impl<'a> Cursor<'a> {
    /// A zig-zag varint `long` (at most 10 bytes).
    fn long(&mut self) -> Result<i64> {
        let mut value: u64 = 0;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        if self.buf.len() >= 10 {
            Err(Error::Decode("a long takes more than 10 bytes".into()))
        } else {
            Err(ended())
        }
    }

    /// An `int`: a `long` that fits 32 bits.
    fn int(&mut self) -> Result<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| Error::Decode(format!("int {v} is out of range")))
    }

    fn boolean(&mut self) -> Result<bool> {
        let (&b, rest) = self.buf.split_first().ok_or_else(ended)?;
        self.buf = rest;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::Decode(format!(
                "boolean byte is {other}, not 0 or 1"
            ))),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| Error::Decode(format!("string length {len} is negative")))?;
        if len > self.buf.len() {
            return Err(ended());
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| Error::Decode(format!("a string is not UTF-8: {e}")))
    }

    /// `["null", "string"]`.
    fn optional_string(&mut self) -> Result<Option<String>> {
        match self.long()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            i => Err(Error::Decode(format!(
                "union index {i} is out of range for [null, string]"
            ))),
        }
    }

    /// The item count of the next block of an array or map; 0 ends it.
    fn block_count(&mut self) -> Result<u64> {
        let count = self.long()?;
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            self.long()?;
        }
        Ok(count.unsigned_abs())
    }

    /// `{"type": "map", "values": "string"}`.
    fn string_map(&mut self) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(map);
            }
            for _ in 0..n {
                let k = self.string()?;
                let v = self.string()?;
                map.insert(k, v);
            }
        }
    }

    /// `{"type": "array", "items": "string"}`.
    fn string_array(&mut self) -> Result<Vec<String>> {
        let mut items = Vec::new();
        loop {
            let n = self.block_count()?;
            if n == 0 {
                return Ok(items);
            }
            for _ in 0..n {
                items.push(self.string()?);
            }
        }
    }

    fn logical(&mut self) -> Result<LogicalState> {
        Ok(LogicalState {
            org_id: self.string()?,
            env_id: self.string()?,
            kind: self.string()?,
            name: self.string()?,
            sku: self.string()?,
            cku: self.int()?,
            cloud: self.string()?,
            region: self.string()?,
            network: self.string()?,
            config: self.string_map()?,
            deleted: self.boolean()?,
        })
    }

    fn physical(&mut self) -> Result<PhysicalState> {
        Ok(PhysicalState {
            brokers: self.int()?,
            disk_gb_per_broker: self.int()?,
            zones: self.string_array()?,
            version: self.string()?,
        })
    }

    fn capacity(&mut self) -> Result<CapacityState> {
        Ok(CapacityState {
            satellite: self.string()?,
            k8s_cluster: self.string()?,
            node_pool: self.string()?,
        })
    }

    fn status(&mut self) -> Result<StatusState> {
        Ok(StatusState {
            phase: self.string()?,
            cku: self.int()?,
            brokers_ready: self.int()?,
            observed_version: self.long()?,
            message: self.optional_string()?,
        })
    }

    /// The metadata fields, then the state read by `state`.
    fn record<S>(&mut self, state: impl FnOnce(&mut Self) -> Result<S>) -> Result<AvroRecord<S>> {
        Ok(AvroRecord {
            cluster_id: self.string()?,
            version: self.long()?,
            writer: self.string()?,
            request_id: self.string()?,
            reason: self.optional_string()?,
            ts: self.long()?,
            prev_hash: self.string()?,
            hash: self.string()?,
            state: state(self)?,
        })
    }
}

/// Avro binary output, appended to a buffer.
struct Out {
    buf: Vec<u8>,
}

impl Out {
    /// A zig-zag varint `long`.
    fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }

    fn int(&mut self, v: i32) {
        self.long(i64::from(v));
    }

    fn boolean(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// `["null", "string"]`: the branch index, then the string.
    fn optional_string(&mut self, s: Option<&str>) {
        match s {
            None => self.long(0),
            Some(s) => {
                self.long(1);
                self.string(s);
            }
        }
    }

    /// A map of strings: one block of every entry (none when empty), then the end mark.
    fn string_map(&mut self, map: &BTreeMap<String, String>) {
        if !map.is_empty() {
            self.long(map.len() as i64);
            for (k, v) in map {
                self.string(k);
                self.string(v);
            }
        }
        self.long(0);
    }

    /// An array of strings, as a map is written.
    fn string_array(&mut self, items: &[String]) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for i in items {
                self.string(i);
            }
        }
        self.long(0);
    }

    fn meta(&mut self, m: &crate::record::RecordMeta) {
        self.string(&m.cluster_id);
        self.long(m.version);
        self.string(&m.writer);
        self.string(&m.request_id);
        self.optional_string(m.reason.as_deref());
        self.long(m.ts.timestamp_millis());
        self.string(&m.prev_hash);
        self.string(&m.hash);
    }
}

/// The Avro binary encoding of `record` with the schema this build ships for its facet
/// (no wire-format header), written directly.
pub fn encode_own(record: &StateRecord) -> Vec<u8> {
    let mut o = Out {
        buf: Vec::with_capacity(256),
    };
    o.meta(&record.meta);
    match &record.state {
        FacetState::Logical(s) => {
            o.string(&s.org_id);
            o.string(&s.env_id);
            o.string(&s.kind);
            o.string(&s.name);
            o.string(&s.sku);
            o.int(s.cku);
            o.string(&s.cloud);
            o.string(&s.region);
            o.string(&s.network);
            o.string_map(&s.config);
            o.boolean(s.deleted);
        }
        FacetState::Physical(s) => {
            o.int(s.brokers);
            o.int(s.disk_gb_per_broker);
            o.string_array(&s.zones);
            o.string(&s.version);
        }
        FacetState::Capacity(s) => {
            o.string(&s.satellite);
            o.string(&s.k8s_cluster);
            o.string(&s.node_pool);
        }
        FacetState::Status(s) => {
            o.string(&s.phase);
            o.int(s.cku);
            o.int(s.brokers_ready);
            o.long(s.observed_version);
            o.optional_string(s.message.as_deref());
        }
    }
    o.buf
}

/// Reads one record of `facet` written with the schema this build ships. A payload that
/// ends early, has bytes left over, or holds an invalid value is [`Error::Decode`].
pub(crate) fn decode_own(facet: Facet, avro: &[u8]) -> Result<StateRecord> {
    let mut c = Cursor { buf: avro };
    let (meta, state) = match facet {
        Facet::Logical => {
            let (m, s) = c.record(Cursor::logical)?.into_parts()?;
            (m, FacetState::Logical(Arc::new(s)))
        }
        Facet::Physical => {
            let (m, s) = c.record(Cursor::physical)?.into_parts()?;
            (m, FacetState::Physical(Arc::new(s)))
        }
        Facet::Capacity => {
            let (m, s) = c.record(Cursor::capacity)?.into_parts()?;
            (m, FacetState::Capacity(Arc::new(s)))
        }
        Facet::Status => {
            let (m, s) = c.record(Cursor::status)?.into_parts()?;
            (m, FacetState::Status(Arc::new(s)))
        }
    };
    if !c.buf.is_empty() {
        return Err(Error::Decode(format!(
            "{} bytes left over after the record: the payload is longer than its schema says",
            c.buf.len()
        )));
    }
    Ok(StateRecord { meta, state })
}

/// [`encode_own`] the library's way: the record as an Avro `Value` tree, written by
/// apache-avro's datum writer against the parsed schema. The reference the direct writer
/// is tested against and measured beside (`fleetledger-bench encode`).
pub fn encode_with_library(record: &StateRecord) -> Result<Vec<u8>> {
    let schema = apache_avro::Schema::parse_str(record.facet().schema_text())
        .map_err(|e| Error::Encode(e.to_string()))?;
    encode_with_schema(&schema, record)
}

/// [`encode_with_library`] with the schema parsed already.
pub fn encode_with_schema(schema: &apache_avro::Schema, record: &StateRecord) -> Result<Vec<u8>> {
    let value = crate::record::to_avro_value(record)?;
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| Error::Encode(e.to_string()))
}
