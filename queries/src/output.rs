//! Answers as JSON rows, CSV, or an Arrow IPC stream.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// `{"columns": [{"name", "type"}], "rows": [{column: value}]}`.
pub fn to_json_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        w.write_batches(&refs).map_err(internal)?;
        w.finish().map_err(internal)?;
    }
    let rows: serde_json::Value = if buf.is_empty() {
        serde_json::json!([])
    } else {
        serde_json::from_slice(&buf).map_err(internal)?
    };
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    Ok(serde_json::json!({"columns": columns, "rows": rows}))
}

/// CSV with a header line.
pub fn to_csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut buf);
        if batches.is_empty() {
            w.write(&RecordBatch::new_empty(schema.clone()))
                .map_err(internal)?;
        }
        for b in batches {
            w.write(b).map_err(internal)?;
        }
    }
    Ok(buf)
}

/// An Arrow IPC stream.
pub fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)
            .map_err(internal)?;
        for b in batches {
            w.write(b).map_err(internal)?;
        }
        w.finish().map_err(internal)?;
    }
    Ok(buf)
}

/// Decodes an Arrow IPC stream and formats it as an aligned text table.
pub fn ipc_to_table(bytes: &[u8]) -> Result<String> {
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(internal)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(internal)?;
    let table =
        datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(internal)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(format!(
        "{table}\n({rows} row{})",
        if rows == 1 { "" } else { "s" }
    ))
}
