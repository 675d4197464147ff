//! Arrow answers as PostgreSQL rows, and PostgreSQL parameters as the engine's values.
//! Each column is sent as the type `pg_catalog::pg_type_of` names, in the format the
//! client asked for (text or binary).

use super::query::Statement;
use super::refusal;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use fleetledger_queries::ScalarValue;
use fleetledger_queries::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray,
};
use fleetledger_queries::arrow::compute::cast;
use fleetledger_queries::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit,
};
use fleetledger_queries::arrow::util::display::{ArrayFormatter, FormatOptions};
use fleetledger_queries::pg_catalog::{self, PgType, pg_type_of};
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use std::sync::Arc;

/// The row description of `schema`, each column in `format`.
pub(super) fn fields_of(schema: &SchemaRef, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let pg = pg_type_of(f.data_type());
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                Type::from_oid(pg.oid).unwrap_or(Type::TEXT),
                format.format_for(i),
            )
            .with_type_size(pg.len)
        })
        .collect()
}

/// One column, converted to what its PostgreSQL type is encoded from.
enum Column {
    Bool(ArrayRef),
    I16(ArrayRef),
    I32(ArrayRef),
    I64(ArrayRef),
    F32(ArrayRef),
    F64(ArrayRef),
    Text(Vec<Option<String>>),
    Bytes(ArrayRef),
    Date(ArrayRef),
    Timestamp(ArrayRef),
    TimestampTz(ArrayRef),
}

fn convert(array: &ArrayRef, pg: PgType) -> PgWireResult<Column> {
    let to = |t: DataType| {
        cast(array, &t)
            .map_err(|e| refusal("XX000", format!("cannot send a column as {}: {e}", pg.name)))
    };
    Ok(match pg {
        pg_catalog::BOOL => Column::Bool(to(DataType::Boolean)?),
        pg_catalog::INT2 => Column::I16(to(DataType::Int16)?),
        pg_catalog::INT4 => Column::I32(to(DataType::Int32)?),
        pg_catalog::INT8 => Column::I64(to(DataType::Int64)?),
        pg_catalog::FLOAT4 => Column::F32(to(DataType::Float32)?),
        pg_catalog::FLOAT8 => Column::F64(to(DataType::Float64)?),
        pg_catalog::BYTEA => Column::Bytes(to(DataType::Binary)?),
        pg_catalog::DATE => Column::Date(to(DataType::Date32)?),
        pg_catalog::TIMESTAMP => {
            Column::Timestamp(to(DataType::Timestamp(TimeUnit::Microsecond, None))?)
        }
        pg_catalog::TIMESTAMPTZ => Column::TimestampTz(to(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        ))?),
        _ => {
            // Text: strings as they are, anything else as Arrow displays it.
            let options = FormatOptions::default();
            let formatter = ArrayFormatter::try_new(array.as_ref(), &options)
                .map_err(|e| refusal("XX000", format!("cannot send a column as text: {e}")))?;
            Column::Text(
                (0..array.len())
                    .map(|i| array.is_valid(i).then(|| formatter.value(i).to_string()))
                    .collect(),
            )
        }
    })
}

fn micros(a: &ArrayRef, i: usize) -> Option<i64> {
    let a = a.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    a.is_valid(i).then(|| a.value(i))
}

/// The rows of `batches`, encoded as `fields` describe.
pub(super) fn rows_of(
    fields: &Arc<Vec<FieldInfo>>,
    batches: &[RecordBatch],
) -> PgWireResult<Vec<DataRow>> {
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::new();
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .map(|a| convert(a, pg_type_of(a.data_type())))
            .collect::<PgWireResult<Vec<Column>>>()?;
        for i in 0..batch.num_rows() {
            for c in &columns {
                let valid = |a: &ArrayRef| a.is_valid(i);
                match c {
                    Column::Bool(a) => {
                        encoder.encode_field(&valid(a).then(|| a.as_boolean().value(i)))?
                    }
                    Column::I16(a) => encoder
                        .encode_field(&valid(a).then(|| a.as_primitive::<Int16Type>().value(i)))?,
                    Column::I32(a) => encoder
                        .encode_field(&valid(a).then(|| a.as_primitive::<Int32Type>().value(i)))?,
                    Column::I64(a) => encoder
                        .encode_field(&valid(a).then(|| a.as_primitive::<Int64Type>().value(i)))?,
                    Column::F32(a) => encoder.encode_field(
                        &valid(a).then(|| a.as_primitive::<Float32Type>().value(i)),
                    )?,
                    Column::F64(a) => encoder.encode_field(
                        &valid(a).then(|| a.as_primitive::<Float64Type>().value(i)),
                    )?,
                    Column::Text(v) => encoder.encode_field(&v[i])?,
                    Column::Bytes(a) => {
                        encoder.encode_field(&valid(a).then(|| a.as_binary::<i32>().value(i)))?
                    }
                    Column::Date(a) => encoder.encode_field(
                        &valid(a)
                            .then(|| a.as_primitive::<Date32Type>().value(i))
                            .and_then(|d| NaiveDate::from_num_days_from_ce_opt(d + 719_163)),
                    )?,
                    Column::Timestamp(a) => encoder.encode_field(
                        &micros(a, i)
                            .and_then(DateTime::from_timestamp_micros)
                            .map(|t| t.naive_utc()),
                    )?,
                    Column::TimestampTz(a) => encoder.encode_field(
                        &micros(a, i).and_then(DateTime::<Utc>::from_timestamp_micros),
                    )?,
                }
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

/// The values of `portal`'s parameters: text as the engine's text (it casts each to the
/// parameter's planned type, as PostgreSQL parses a text parameter), binary decoded as
/// the type the client declared or the plan inferred.
pub(super) fn param_values(
    portal: &Portal<Statement>,
    planned: &[Option<DataType>],
) -> PgWireResult<Vec<ScalarValue>> {
    (0..portal.parameter_len())
        .map(|i| {
            let planned = planned.get(i).cloned().flatten();
            let declared = portal.statement.parameter_types.get(i).cloned().flatten();
            let Some(bytes) = &portal.parameters[i] else {
                return ScalarValue::try_from(planned.unwrap_or(DataType::Utf8))
                    .map_err(|e| refusal("22023", format!("parameter ${}: {e}", i + 1)));
            };
            if portal.parameter_format.is_text(i) {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    refusal("22021", format!("parameter ${} is not valid UTF-8", i + 1))
                })?;
                return Ok(ScalarValue::Utf8(Some(text.to_owned())));
            }
            let ty = declared
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| {
                    planned
                        .as_ref()
                        .and_then(|t| Type::from_oid(pg_type_of(t).oid))
                })
                .unwrap_or(Type::TEXT);
            binary_param(portal, i, &ty)
        })
        .collect()
}

fn binary_param(portal: &Portal<Statement>, i: usize, ty: &Type) -> PgWireResult<ScalarValue> {
    let ts =
        |tz: Option<&str>, t: Option<i64>| ScalarValue::TimestampMicrosecond(t, tz.map(Into::into));
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, ty)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, ty)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, ty)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, ty)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, ty)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, ty)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            ScalarValue::Utf8(portal.parameter::<String>(i, ty)?)
        }
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, ty)?),
        Type::DATE => ScalarValue::Date32(portal.parameter::<NaiveDate>(i, ty)?.map(|d| {
            (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32
        })),
        Type::TIMESTAMP => ts(
            None,
            portal
                .parameter::<NaiveDateTime>(i, ty)?
                .map(|t| t.and_utc().timestamp_micros()),
        ),
        Type::TIMESTAMPTZ => ts(
            Some("UTC"),
            portal
                .parameter::<DateTime<chrono::FixedOffset>>(i, ty)?
                .map(|t| t.timestamp_micros()),
        ),
        ref other => {
            return Err(refusal(
                "22023",
                format!(
                    "parameter ${} is sent in binary as {other}, which is not read in binary; send it as text, or as bool, int2, int4, int8, float4, float8, text, bytea, date, timestamp or timestamptz",
                    i + 1
                ),
            ));
        }
    })
}
