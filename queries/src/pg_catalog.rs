//! What PostgreSQL clients ask of a server besides the query itself: the `pg_catalog`
//! tables a driver or BI tool reads to list tables and columns, the few catalog functions
//! their queries call, and the PostgreSQL type of each Arrow column.
//!
//! The catalog describes the caller's own session: the tables it can query (a tenant's
//! scoped session lists only the tables it sees) and their columns, in one schema,
//! `public`. Every table is a plain table (`relkind = 'r'`); there are no indexes, views,
//! users or comments to list. Object ids are stable for a given set of tables: a table's
//! oid is 16384 plus its place in the sorted list of tables.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float32Array, Int16Array, Int32Array};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};

/// The database name clients connect to and `current_database()` answers.
pub const DATABASE: &str = "fleetledger";

/// Oid of the `pg_catalog` namespace.
const PG_CATALOG_OID: i32 = 11;
/// Oid of the `public` namespace, where every fleetledger table is.
const PUBLIC_OID: i32 = 2200;
/// Oid of the `information_schema` namespace.
const INFORMATION_SCHEMA_OID: i32 = 13_000;
/// Oid of the role that owns everything.
const OWNER_OID: i32 = 10;
/// Oid of `pg_class` itself (`'pg_class'::regclass`).
pub const PG_CLASS_OID: i32 = 1259;
/// The first oid PostgreSQL gives user objects.
const FIRST_USER_OID: i32 = 16_384;

/// A PostgreSQL type a column is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    /// `pg_type.oid`, the number the wire protocol carries.
    pub oid: u32,
    /// `pg_type.typname`.
    pub name: &'static str,
    /// `pg_type.typlen`: bytes of a value, or -1 for a variable length.
    pub len: i16,
    /// `pg_type.typcategory`.
    category: &'static str,
}

const fn pg(oid: u32, name: &'static str, len: i16, category: &'static str) -> PgType {
    PgType {
        oid,
        name,
        len,
        category,
    }
}

/// `boolean`.
pub const BOOL: PgType = pg(16, "bool", 1, "B");
/// `bytea`.
pub const BYTEA: PgType = pg(17, "bytea", -1, "U");
/// `bigint`.
pub const INT8: PgType = pg(20, "int8", 8, "N");
/// `smallint`.
pub const INT2: PgType = pg(21, "int2", 2, "N");
/// `integer`.
pub const INT4: PgType = pg(23, "int4", 4, "N");
/// `text`.
pub const TEXT: PgType = pg(25, "text", -1, "S");
/// `real`.
pub const FLOAT4: PgType = pg(700, "float4", 4, "N");
/// `double precision`.
pub const FLOAT8: PgType = pg(701, "float8", 8, "N");
/// `date`.
pub const DATE: PgType = pg(1082, "date", 4, "D");
/// `timestamp` (without time zone).
pub const TIMESTAMP: PgType = pg(1114, "timestamp", 8, "D");
/// `timestamp with time zone`.
pub const TIMESTAMPTZ: PgType = pg(1184, "timestamptz", 8, "D");
/// `numeric`.
pub const NUMERIC: PgType = pg(1700, "numeric", -1, "N");

/// Every type a column may be sent as, in `pg_type`.
const TYPES: [PgType; 12] = [
    BOOL,
    BYTEA,
    INT8,
    INT2,
    INT4,
    TEXT,
    FLOAT4,
    FLOAT8,
    DATE,
    TIMESTAMP,
    TIMESTAMPTZ,
    NUMERIC,
];

/// The PostgreSQL type a column of Arrow type `t` is sent as. Unsigned integers widen to
/// the next signed type; `UInt64` and decimals are sent as their exact decimal `text`
/// (cast them to `DOUBLE` for a number); types PostgreSQL has no plain equivalent for
/// (lists, structs, intervals, durations) are sent as their text.
pub fn pg_type_of(t: &DataType) -> PgType {
    match t {
        DataType::Boolean => BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => INT2,
        DataType::Int32 | DataType::UInt16 => INT4,
        DataType::Int64 | DataType::UInt32 => INT8,
        DataType::Float16 | DataType::Float32 => FLOAT4,
        DataType::Float64 => FLOAT8,
        DataType::Date32 | DataType::Date64 => DATE,
        DataType::Timestamp(_, None) => TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => TIMESTAMPTZ,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => BYTEA,
        _ => TEXT,
    }
}

/// The Arrow type a parameter declared by a client as PostgreSQL type `oid` binds as, if
/// it is one of [`TYPES`].
pub fn arrow_type_of(oid: u32) -> Option<DataType> {
    Some(match oid {
        16 => DataType::Boolean,
        17 => DataType::Binary,
        20 => DataType::Int64,
        21 => DataType::Int16,
        23 => DataType::Int32,
        25 | 1043 => DataType::Utf8,
        700 => DataType::Float32,
        701 | 1700 => DataType::Float64,
        1082 => DataType::Date32,
        1114 => DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
        1184 => DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        ),
        _ => return None,
    })
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn ints(v: impl IntoIterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(v))
}

fn table(columns: Vec<(&str, DataType, ArrayRef)>) -> DfResult<Arc<MemTable>> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t, _)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, _, a)| a).collect(),
    )?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The `pg_catalog` schema of a session whose tables are `tables` (name and schema):
/// `pg_namespace`, `pg_class`, `pg_attribute`, `pg_type`, `pg_database`, `pg_description`,
/// `pg_attrdef`, `pg_am`, `pg_settings`, `pg_roles` and `pg_user` (the last two with one
/// role, `fleetledger`).
pub fn pg_catalog_of(tables: &[(String, SchemaRef)]) -> DfResult<Arc<dyn SchemaProvider>> {
    let mut sorted: Vec<&(String, SchemaRef)> = tables.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let oid_of = |i: usize| FIRST_USER_OID + i as i32;
    let schema = MemorySchemaProvider::new();
    let n = sorted.len();

    schema.register_table(
        "pg_namespace".into(),
        table(vec![
            (
                "oid",
                DataType::Int32,
                ints([PG_CATALOG_OID, PUBLIC_OID, INFORMATION_SCHEMA_OID]),
            ),
            (
                "nspname",
                DataType::Utf8,
                strings(["pg_catalog", "public", "information_schema"]),
            ),
            ("nspowner", DataType::Int32, ints([OWNER_OID; 3])),
        ])?,
    )?;
    schema.register_table(
        "pg_class".into(),
        table(vec![
            ("oid", DataType::Int32, ints((0..n).map(oid_of))),
            (
                "relname",
                DataType::Utf8,
                strings(sorted.iter().map(|t| t.0.as_str())),
            ),
            (
                "relnamespace",
                DataType::Int32,
                ints(std::iter::repeat_n(PUBLIC_OID, n)),
            ),
            (
                "relkind",
                DataType::Utf8,
                strings(std::iter::repeat_n("r", n)),
            ),
            (
                "relowner",
                DataType::Int32,
                ints(std::iter::repeat_n(OWNER_OID, n)),
            ),
            (
                "relpersistence",
                DataType::Utf8,
                strings(std::iter::repeat_n("p", n)),
            ),
            (
                "relnatts",
                DataType::Int16,
                Arc::new(Int16Array::from_iter_values(
                    sorted.iter().map(|t| t.1.fields().len() as i16),
                )),
            ),
            (
                "reltuples",
                DataType::Float32,
                Arc::new(Float32Array::from(vec![-1.0; n])),
            ),
            (
                "relhasindex",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false; n])),
            ),
            (
                "relispartition",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false; n])),
            ),
            ("reltype", DataType::Int32, ints(std::iter::repeat_n(0, n))),
            ("relam", DataType::Int32, ints(std::iter::repeat_n(0, n))),
        ])?,
    )?;
    let columns: Vec<(i32, i16, &Field)> = sorted
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            t.1.fields()
                .iter()
                .enumerate()
                .map(move |(j, f)| (oid_of(i), j as i16 + 1, f.as_ref()))
        })
        .collect();
    let types: Vec<PgType> = columns
        .iter()
        .map(|(_, _, f)| pg_type_of(f.data_type()))
        .collect();
    let m = columns.len();
    schema.register_table(
        "pg_attribute".into(),
        table(vec![
            (
                "attrelid",
                DataType::Int32,
                ints(columns.iter().map(|c| c.0)),
            ),
            (
                "attname",
                DataType::Utf8,
                strings(columns.iter().map(|c| c.2.name().as_str())),
            ),
            (
                "atttypid",
                DataType::Int32,
                ints(types.iter().map(|t| t.oid as i32)),
            ),
            (
                "attnum",
                DataType::Int16,
                Arc::new(Int16Array::from_iter_values(columns.iter().map(|c| c.1))),
            ),
            (
                "attlen",
                DataType::Int16,
                Arc::new(Int16Array::from_iter_values(types.iter().map(|t| t.len))),
            ),
            (
                "atttypmod",
                DataType::Int32,
                ints(std::iter::repeat_n(-1, m)),
            ),
            (
                "attnotnull",
                DataType::Boolean,
                Arc::new(BooleanArray::from_iter(
                    columns.iter().map(|c| Some(!c.2.is_nullable())),
                )),
            ),
            (
                "attisdropped",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false; m])),
            ),
            (
                "atthasdef",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false; m])),
            ),
            (
                "attidentity",
                DataType::Utf8,
                strings(std::iter::repeat_n("", m)),
            ),
            (
                "attgenerated",
                DataType::Utf8,
                strings(std::iter::repeat_n("", m)),
            ),
            (
                "attcollation",
                DataType::Int32,
                ints(std::iter::repeat_n(0, m)),
            ),
        ])?,
    )?;
    schema.register_table(
        "pg_type".into(),
        table(vec![
            (
                "oid",
                DataType::Int32,
                ints(TYPES.iter().map(|t| t.oid as i32)),
            ),
            (
                "typname",
                DataType::Utf8,
                strings(TYPES.iter().map(|t| t.name)),
            ),
            (
                "typnamespace",
                DataType::Int32,
                ints(std::iter::repeat_n(PG_CATALOG_OID, TYPES.len())),
            ),
            (
                "typowner",
                DataType::Int32,
                ints(std::iter::repeat_n(OWNER_OID, TYPES.len())),
            ),
            (
                "typlen",
                DataType::Int16,
                Arc::new(Int16Array::from_iter_values(TYPES.iter().map(|t| t.len))),
            ),
            (
                "typtype",
                DataType::Utf8,
                strings(std::iter::repeat_n("b", TYPES.len())),
            ),
            (
                "typcategory",
                DataType::Utf8,
                strings(TYPES.iter().map(|t| t.category)),
            ),
            (
                "typbasetype",
                DataType::Int32,
                ints(std::iter::repeat_n(0, TYPES.len())),
            ),
            (
                "typtypmod",
                DataType::Int32,
                ints(std::iter::repeat_n(-1, TYPES.len())),
            ),
            (
                "typnotnull",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false; TYPES.len()])),
            ),
            (
                "typrelid",
                DataType::Int32,
                ints(std::iter::repeat_n(0, TYPES.len())),
            ),
            (
                "typelem",
                DataType::Int32,
                ints(std::iter::repeat_n(0, TYPES.len())),
            ),
            (
                "typarray",
                DataType::Int32,
                ints(std::iter::repeat_n(0, TYPES.len())),
            ),
        ])?,
    )?;
    schema.register_table(
        "pg_database".into(),
        table(vec![
            ("oid", DataType::Int32, ints([1])),
            ("datname", DataType::Utf8, strings([DATABASE])),
            ("datdba", DataType::Int32, ints([OWNER_OID])),
            ("encoding", DataType::Int32, ints([6])),
            ("datcollate", DataType::Utf8, strings(["C"])),
            ("datctype", DataType::Utf8, strings(["C"])),
            (
                "datistemplate",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![false])),
            ),
            (
                "datallowconn",
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![true])),
            ),
        ])?,
    )?;
    schema.register_table(
        "pg_description".into(),
        table(vec![
            ("objoid", DataType::Int32, ints([])),
            ("classoid", DataType::Int32, ints([])),
            ("objsubid", DataType::Int32, ints([])),
            ("description", DataType::Utf8, strings([])),
        ])?,
    )?;
    schema.register_table(
        "pg_attrdef".into(),
        table(vec![
            ("oid", DataType::Int32, ints([])),
            ("adrelid", DataType::Int32, ints([])),
            (
                "adnum",
                DataType::Int16,
                Arc::new(Int16Array::from_iter_values([])),
            ),
            ("adbin", DataType::Utf8, strings([])),
        ])?,
    )?;
    schema.register_table(
        "pg_am".into(),
        table(vec![
            ("oid", DataType::Int32, ints([])),
            ("amname", DataType::Utf8, strings([])),
            ("amtype", DataType::Utf8, strings([])),
        ])?,
    )?;
    let settings = SETTINGS;
    schema.register_table(
        "pg_settings".into(),
        table(vec![
            (
                "name",
                DataType::Utf8,
                strings(settings.iter().map(|s| s.0)),
            ),
            (
                "setting",
                DataType::Utf8,
                strings(settings.iter().map(|s| s.1)),
            ),
        ])?,
    )?;
    for name in ["pg_roles", "pg_user"] {
        let key = if name == "pg_roles" {
            "rolname"
        } else {
            "usename"
        };
        schema.register_table(
            name.into(),
            table(vec![
                ("oid", DataType::Int32, ints([OWNER_OID])),
                (key, DataType::Utf8, strings([DATABASE])),
            ])?,
        )?;
    }
    Ok(Arc::new(schema))
}

/// The settings `SHOW` and `pg_settings` report, as a PostgreSQL 16 server in UTF-8 with
/// ISO dates in UTC would.
pub const SETTINGS: [(&str, &str); 10] = [
    ("server_version", "16.0"),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("search_path", "public"),
    ("transaction_isolation", "read committed"),
];

/// The value of setting `name` (case-insensitive), if it is one of [`SETTINGS`].
pub fn setting(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The catalog functions by name, with the qualified name drivers also call them by.
const QUALIFIED: [(&str, &str); 10] = [
    ("current_database", "pg_catalog.current_database"),
    ("current_schema", "pg_catalog.current_schema"),
    ("version", "pg_catalog.version"),
    ("pg_table_is_visible", "pg_catalog.pg_table_is_visible"),
    ("pg_get_userbyid", "pg_catalog.pg_get_userbyid"),
    ("obj_description", "pg_catalog.obj_description"),
    ("col_description", "pg_catalog.col_description"),
    ("pg_get_expr", "pg_catalog.pg_get_expr"),
    ("pg_encoding_to_char", "pg_catalog.pg_encoding_to_char"),
    ("format_type", "pg_catalog.format_type"),
];

/// `udf`, also callable as `pg_catalog.<name>`.
fn qualified(udf: datafusion::logical_expr::ScalarUDF) -> datafusion::logical_expr::ScalarUDF {
    match QUALIFIED.iter().find(|(n, _)| *n == udf.name()) {
        Some((_, alias)) => udf.with_aliases([*alias]),
        None => udf,
    }
}

fn constant(
    name: &str,
    inputs: Vec<DataType>,
    value: ScalarValue,
) -> datafusion::logical_expr::ScalarUDF {
    let out = value.data_type();
    create_udf(
        name,
        inputs,
        out,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(value.clone()))),
    )
}

/// Registers `pg_catalog` (see [`pg_catalog_of`]) and the catalog functions drivers call:
/// `current_database()`, `current_schema()`, `version()`, `pg_table_is_visible(oid)`,
/// `pg_get_userbyid(oid)`, `format_type(oid, typmod)`, `obj_description(oid, name)`,
/// `col_description(oid, n)`, `pg_get_expr(expr, oid)`, `pg_encoding_to_char(n)`.
pub(crate) fn register(ctx: &SessionContext, tables: &[(String, SchemaRef)]) -> DfResult<()> {
    if let Some(catalog) = ctx.catalog(&ctx.copied_config().options().catalog.default_catalog) {
        catalog.register_schema("pg_catalog", pg_catalog_of(tables)?)?;
    }
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_owned()));
    let null = ScalarValue::Utf8(None);
    for udf in [
        constant("current_database", vec![], text(DATABASE)),
        constant("current_schema", vec![], text("public")),
        constant(
            "version",
            vec![],
            text(&format!(
                "PostgreSQL 16.0 (fleetledger {}, Apache DataFusion)",
                env!("CARGO_PKG_VERSION")
            )),
        ),
        constant(
            "pg_table_is_visible",
            vec![DataType::Int64],
            ScalarValue::Boolean(Some(true)),
        ),
        constant("pg_get_userbyid", vec![DataType::Int64], text(DATABASE)),
        constant(
            "obj_description",
            vec![DataType::Int64, DataType::Utf8],
            null.clone(),
        ),
        constant(
            "col_description",
            vec![DataType::Int64, DataType::Int64],
            null.clone(),
        ),
        constant("pg_get_expr", vec![DataType::Utf8, DataType::Int64], null),
        constant("pg_encoding_to_char", vec![DataType::Int64], text("UTF8")),
    ] {
        ctx.register_udf(qualified(udf));
    }
    let names: HashMap<i64, &'static str> = TYPES.iter().map(|t| (t.oid as i64, t.name)).collect();
    ctx.register_udf(qualified(create_udf(
        "format_type",
        vec![DataType::Int64, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = datafusion::common::cast::as_int64_array(&arrays[0])?;
            let out: StringArray = oids
                .iter()
                .map(|o| o.and_then(|o| names.get(&o).copied()))
                .collect();
            let out: ArrayRef = Arc::new(out);
            Ok(
                if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
                } else {
                    ColumnarValue::Array(out)
                },
            )
        }),
    )));
    Ok(())
}

/// Oids of the catalog tables a driver names with `'name'::regclass`.
const CATALOG_OIDS: [(&str, i32); 5] = [
    ("pg_class", PG_CLASS_OID),
    ("pg_type", 1247),
    ("pg_attribute", 1249),
    ("pg_proc", 1255),
    ("pg_namespace", 2615),
];

/// `sql` with the PostgreSQL casts drivers send in their catalog queries that DataFusion
/// has no type for: `'pg_class'::regclass` (and the other catalog tables of
/// [`CATALOG_OIDS`]) becomes the table's oid, `::oid` becomes `::INT`, the parameterless
/// `current_catalog` becomes `current_database()`, `OPERATOR(pg_catalog.~)` becomes `~`
/// and `COLLATE pg_catalog.default` is dropped (psql's `\d`). Text in string
/// literals, quoted identifiers and comments is left as it is; other casts are left to
/// the engine (which names the type it does not know).
pub(crate) fn pg_dialect(sql: &str) -> std::borrow::Cow<'_, str> {
    let lower = sql.to_ascii_lowercase();
    if ![
        "::regclass",
        "::oid",
        "current_catalog",
        "operator(",
        "collate",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return std::borrow::Cow::Borrowed(sql);
    }
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut i, mut literal_start) = (0, None::<usize>);
    let ends_word = |j: usize| {
        !bytes
            .get(j)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                let end = sql[i + 1..]
                    .find(c as char)
                    .map_or(sql.len(), |e| i + 1 + e + 1);
                if c == b'\'' {
                    literal_start = Some(out.len());
                }
                out.push_str(&sql[i..end]);
                i = end;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(sql.len(), |e| i + e);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b':' if lower[i..].starts_with("::regclass") && ends_word(i + 10) => {
                let oid = literal_start.filter(|s| out.len() > *s).and_then(|s| {
                    let name = out[s..]
                        .trim_matches('\'')
                        .trim_start_matches("pg_catalog.");
                    CATALOG_OIDS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, o)| (s, *o))
                });
                match oid {
                    Some((s, o)) => {
                        out.truncate(s);
                        out.push_str(&o.to_string());
                    }
                    None => out.push_str("::regclass"),
                }
                i += 10;
            }
            b':' if lower[i..].starts_with("::oid") && ends_word(i + 5) => {
                out.push_str("::INT");
                i += 5;
            }
            c if (c.is_ascii_alphabetic() || c == b'_')
                && (i == 0 || ends_word(i - 1) && bytes[i - 1] != b'.') =>
            {
                let len = sql[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(sql.len() - i);
                let word = &sql[i..i + len];
                let rest = &lower[i + len..];
                if word.eq_ignore_ascii_case("current_catalog") {
                    out.push_str("current_database()");
                } else if word.eq_ignore_ascii_case("operator")
                    && rest.starts_with("(pg_catalog.")
                    && let Some(end) = rest.find(')')
                {
                    // OPERATOR(pg_catalog.~) is the operator itself.
                    out.push_str(&sql[i + len + 12..i + len + end]);
                    i += end + 1;
                } else if word.eq_ignore_ascii_case("collate")
                    && rest.trim_start().starts_with("pg_catalog.default")
                {
                    // The default collation is the only one there is.
                    let skipped = rest.len() - rest.trim_start().len() + "pg_catalog.default".len();
                    i += skipped;
                } else {
                    out.push_str(word);
                }
                i += len;
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        if !matches!(c, b'\'' | b'"') {
            literal_start = None;
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_casts_become_what_datafusion_reads_and_literals_stay() {
        assert_eq!(
            pg_dialect("SELECT 1 WHERE d.classoid = 'pg_class'::regclass AND c.oid::oid = 1"),
            "SELECT 1 WHERE d.classoid = 1259 AND c.oid::INT = 1"
        );
        assert_eq!(
            pg_dialect("SELECT '::oid', \"x::regclass\" -- ::oid\nFROM t"),
            "SELECT '::oid', \"x::regclass\" -- ::oid\nFROM t"
        );
        // A relation the catalog has no oid for is left for the engine to refuse by name.
        assert_eq!(
            pg_dialect("SELECT 'clusters'::regclass"),
            "SELECT 'clusters'::regclass"
        );
        assert_eq!(pg_dialect("SELECT x::oidx"), "SELECT x::oidx");
        assert_eq!(
            pg_dialect("select current_catalog, t.current_catalog, current_catalogs"),
            "select current_database(), t.current_catalog, current_catalogs"
        );
        // psql's \d: a regular expression operator spelled out, the default collation.
        assert_eq!(
            pg_dialect("WHERE c.relname OPERATOR(pg_catalog.~) '^(x)$' COLLATE pg_catalog.default"),
            "WHERE c.relname ~ '^(x)$' "
        );
        assert!(matches!(
            pg_dialect("SELECT 1"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn every_arrow_type_of_the_tables_has_a_pg_type_that_binds_back() {
        for t in [
            DataType::Boolean,
            DataType::Int64,
            DataType::Int32,
            DataType::Float64,
            DataType::Utf8,
        ] {
            let pg = pg_type_of(&t);
            assert_eq!(arrow_type_of(pg.oid), Some(t.clone()), "{t}");
        }
        let ts = DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            Some("UTC".into()),
        );
        assert_eq!(pg_type_of(&ts), TIMESTAMPTZ);
        assert_eq!(pg_type_of(&DataType::Utf8View), TEXT);
        assert_eq!(arrow_type_of(26), None);
        assert_eq!(setting("datestyle"), Some("ISO, MDY"));
        assert_eq!(setting("work_mem"), None);
    }
}
