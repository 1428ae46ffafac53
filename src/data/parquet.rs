//! Parquet data files, the format of datasets on the Hugging Face hub (GSM8K's
//! `main/test-00000-of-00001.parquet`, TRL's conversational sets), read row by row with the
//! `parquet` crate (no arrow). Each row becomes a JSON object with the column names as keys,
//! so a parquet file and a JSONL file with the same fields give the same records.
//!
//! Only the columns a record can use are read: the reader's field names and the columns a
//! [`FieldMap`] names. Strings, integers, floats, booleans, lists and structs convert; other
//! types (decimals, binary data that is not UTF-8) are an error naming the file, row and column.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};

use super::fields::{FieldMap, RECORD_FIELDS};
use crate::error::{Error, Result};

/// Reads the usable columns of every row of a parquet file, with 1-based row numbers.
///
/// Errors: the file is not parquet (naming it), a column the mapping names is missing or no
/// known column exists (listing the file's columns), a value cannot convert (naming the row
/// and column).
pub fn read_parquet_rows(path: &Path, fields: &FieldMap) -> Result<Vec<(usize, Map<String, Value>)>> {
    let bad_file = |e: parquet::errors::ParquetError| Error::Parquet { path: path.to_path_buf(), reason: e.to_string() };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad_file)?;
    let schema = reader.metadata().file_metadata().schema_descr().root_schema();
    let columns = schema.get_fields();
    let describe = || columns.iter().map(|c| format!("{} ({})", c.name(), type_name(c))).collect::<Vec<_>>().join(", ");

    for (field, column) in fields.pairs() {
        if !columns.iter().any(|c| c.name() == column) {
            return Err(Error::config(path, column, format!("no such column (mapped to `{field}`); the file has columns: {}", describe())));
        }
    }
    let wanted = |name: &str| RECORD_FIELDS.contains(&name) || fields.columns().any(|c| c == name);
    let selected: Vec<Arc<Type>> = columns.iter().filter(|c| wanted(c.name())).cloned().collect();
    if selected.is_empty() {
        return Err(Error::config(
            path,
            "<columns>",
            format!(
                "no column lalora reads: expected text, prompt + completion, query + response, context + choices + \
                 label, prompt + answer or messages (or map yours with --field prompt=COLUMN,...); the file has \
                 columns: {}",
                describe()
            ),
        ));
    }
    let projection = Type::group_type_builder(schema.name()).with_fields(selected).build().map_err(bad_file)?;
    let rows = reader.get_row_iter(Some(projection)).map_err(bad_file)?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row_number = i + 1;
        let row = row.map_err(|e| Error::BadRecord { path: path.to_path_buf(), line: row_number, reason: e.to_string() })?;
        let object = row_object(&row).map_err(|reason| Error::BadRecord {
            path: path.to_path_buf(),
            line: row_number,
            reason: format!("row {row_number}: {reason}"),
        })?;
        out.push((row_number, object));
    }
    Ok(out)
}

/// A row as a JSON object; errors name the column.
fn row_object(row: &Row) -> std::result::Result<Map<String, Value>, String> {
    row.get_column_iter()
        .map(|(name, field)| to_json(field).map(|v| (name.clone(), v)).map_err(|e| format!("column `{name}`: {e}")))
        .collect()
}

/// One parquet value as JSON.
fn to_json(field: &Field) -> std::result::Result<Value, String> {
    let float = |x: f64| Number::from_f64(x).map(Value::Number).ok_or_else(|| format!("non-finite number {x}"));
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float16(x) => float(f64::from(x.to_f32()))?,
        Field::Float(x) => float(f64::from(*x))?,
        Field::Double(x) => float(*x)?,
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(bytes) => match std::str::from_utf8(bytes.data()) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => return Err("binary data that is not UTF-8 text".into()),
        },
        Field::Group(row) => Value::Object(row_object(row)?),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect::<std::result::Result<_, _>>()?),
        Field::MapInternal(map) => {
            let mut object = Map::new();
            for (key, value) in map.entries() {
                let Field::Str(key) = key else { return Err("a map whose keys are not strings".into()) };
                object.insert(key.clone(), to_json(value)?);
            }
            Value::Object(object)
        }
        other => return Err(format!("unsupported type ({other}); use strings, numbers, lists or structs")),
    })
}

/// A short description of a column's type for messages: `BYTE_ARRAY String`, `INT64`, `group`.
fn type_name(column: &Type) -> String {
    if !column.is_primitive() {
        return match column.get_basic_info().logical_type_ref() {
            Some(logical) => format!("{logical:?}"),
            None => "struct".into(),
        }
        .split(' ')
        .next()
        .unwrap_or("group")
        .to_string();
    }
    match column.get_basic_info().logical_type_ref() {
        Some(logical) => format!("{} {logical:?}", column.get_physical_type()),
        None => column.get_physical_type().to_string(),
    }
}
