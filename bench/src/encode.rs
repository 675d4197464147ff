//! `fleetledger-bench encode`: the CPU cost of encoding a simulated fleet's records (every
//! writer, as the simulator makes them) in Avro, written directly
//! ([`fleetledger_schemas::binary::encode_own`], what the writer does) and the library's
//! way (an Avro `Value` tree through apache-avro's datum writer, what it did before), in
//! nanoseconds per record, best of several rounds. No broker.

use std::time::Instant;

use chrono::{DateTime, Utc};
use fleetledger_schemas::binary::{encode_own, encode_with_schema};
use fleetledger_schemas::{Facet, FacetState, RecordMeta, StateRecord};

use crate::simulate::Simulation;

/// The records of a simulated fleet of `clusters` over `days`, with the metadata the
/// ledger gives them (versions, request ids, hashes of the real length).
pub fn simulated_records(clusters: usize, days: u32) -> anyhow::Result<Vec<StateRecord>> {
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse()?;
    let mut text = Vec::new();
    Simulation {
        clusters,
        days,
        seed: 7,
        start,
        fleet: 0,
    }
    .write(&mut text)?;
    let mut versions = std::collections::HashMap::new();
    String::from_utf8(text)?
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let facet: Facet = v["facet"].as_str().unwrap_or_default().parse()?;
            let state = FacetState::from_json(facet, &serde_json::to_vec(&v["state"])?)?;
            let cluster_id = v["cluster_id"].as_str().unwrap_or_default().to_owned();
            let version = versions.entry((cluster_id.clone(), facet)).or_insert(0i64);
            *version += 1;
            Ok(StateRecord {
                meta: RecordMeta {
                    cluster_id,
                    version: *version,
                    writer: v["writer"].as_str().unwrap_or_default().to_owned(),
                    request_id: format!("import-{i}"),
                    reason: v["reason"].as_str().map(str::to_owned),
                    ts: v["ts"].as_str().unwrap_or_default().parse()?,
                    prev_hash: format!("{:064x}", i),
                    hash: format!("{:064x}", i + 1),
                },
                state,
            })
        })
        .collect()
}

/// Prints the direct and the library encoding's cost per record over `records`.
pub fn encode_speed(records: &[StateRecord], rounds: usize) -> anyhow::Result<()> {
    let schemas: std::collections::HashMap<Facet, apache_avro::Schema> = Facet::ALL
        .iter()
        .map(|f| Ok((*f, apache_avro::Schema::parse_str(f.schema_text())?)))
        .collect::<anyhow::Result<_>>()?;
    let mut bytes = 0usize;
    let time = |f: &mut dyn FnMut(&StateRecord) -> anyhow::Result<usize>| {
        let mut best = f64::MAX;
        for _ in 0..rounds.max(1) {
            let t = Instant::now();
            for r in records {
                std::hint::black_box(f(r)?);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        anyhow::Ok(best * 1e9 / records.len().max(1) as f64)
    };
    let direct = time(&mut |r| {
        let b = encode_own(r);
        bytes += b.len();
        Ok(b.len())
    })?;
    let library = time(&mut |r| Ok(encode_with_schema(&schemas[&r.facet()], r)?.len()))?;
    println!(
        "encode: {} records ({:.0} bytes each): direct {direct:.0} ns/record, library {library:.0} ns/record ({:.1}x)",
        records.len(),
        bytes as f64 / (records.len() * rounds.max(1)).max(1) as f64,
        library / direct
    );
    Ok(())
}
