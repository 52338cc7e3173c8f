//! Arrow schema inference for JSONL inputs (used when writing Parquet).
//!
//! Like `arrow_json::reader::infer_json_schema_from_iterator`, but it never
//! fails: where values disagree in kind the type falls back to `Utf8` and
//! [`conform`] turns the non-string values into their JSON text, so that the
//! arrow-json decoder always accepts the rows.

use std::sync::Arc;

use arrow_schema::{DataType, Field, FieldRef, Fields};
use serde_json::Value;

/// The type of a single value (`Null` for null; nested types are inferred
/// recursively).
pub(crate) fn infer(value: &Value) -> DataType {
    match value {
        Value::Null => DataType::Null,
        Value::Bool(_) => DataType::Boolean,
        Value::Number(n) if n.is_i64() => DataType::Int64,
        Value::Number(_) => DataType::Float64,
        Value::String(_) => DataType::Utf8,
        Value::Array(items) => {
            let mut item = DataType::Null;
            for v in items {
                absorb(&mut item, v);
            }
            DataType::List(Arc::new(Field::new_list_field(item, true)))
        }
        Value::Object(map) => {
            DataType::Struct(map.iter().map(|(k, v)| Field::new(k, infer(v), true)).collect::<Fields>())
        }
    }
}

/// Widens `ty` so that it can also hold `value`.
pub(crate) fn absorb(ty: &mut DataType, value: &Value) {
    match (&mut *ty, value) {
        (_, Value::Null) => {}
        (DataType::Null, v) => *ty = infer(v),
        (DataType::Utf8, _) => {}
        (DataType::Boolean, Value::Bool(_)) => {}
        (DataType::Int64, Value::Number(n)) => {
            if !n.is_i64() {
                *ty = DataType::Float64;
            }
        }
        (DataType::Float64, Value::Number(_)) => {}
        (DataType::List(field), Value::Array(items)) => {
            let mut item = field.data_type().clone();
            for v in items {
                absorb(&mut item, v);
            }
            if &item != field.data_type() {
                *field = Arc::new(Field::new_list_field(item, true));
            }
        }
        (DataType::Struct(fields), Value::Object(map)) => {
            let mut new_fields: Option<Vec<FieldRef>> = None;
            for (k, v) in map {
                let current = new_fields.as_deref().unwrap_or(fields);
                match current.iter().position(|f| f.name() == k) {
                    Some(i) => {
                        let mut t = current[i].data_type().clone();
                        absorb(&mut t, v);
                        if &t != current[i].data_type() {
                            let list = new_fields.get_or_insert_with(|| fields.iter().cloned().collect());
                            list[i] = Arc::new(Field::new(k, t, true));
                        }
                    }
                    None => {
                        let list = new_fields.get_or_insert_with(|| fields.iter().cloned().collect());
                        list.push(Arc::new(Field::new(k, infer(v), true)));
                    }
                }
            }
            if let Some(list) = new_fields {
                *fields = Fields::from(list);
            }
        }
        // The values disagree in kind: store them as (JSON) text.
        _ => *ty = DataType::Utf8,
    }
}

/// Turns the inferred type into one Parquet can store: `Null` (only nulls
/// seen) and empty structs become `Utf8`.
pub(crate) fn finalize(ty: DataType) -> DataType {
    match ty {
        DataType::Null => DataType::Utf8,
        DataType::List(field) => {
            DataType::List(Arc::new(Field::new_list_field(finalize(field.data_type().clone()), true)))
        }
        DataType::Struct(fields) if fields.is_empty() => DataType::Utf8,
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Field::new(f.name(), finalize(f.data_type().clone()), true)).collect::<Fields>(),
        ),
        other => other,
    }
}

/// Makes `value` fit `ty` (a type built by [`infer`]/[`absorb`]/[`finalize`]
/// from, among others, this value): values in a `Utf8` column that are not
/// strings become their JSON text.
pub(crate) fn conform(value: Value, ty: &DataType) -> Value {
    match (ty, value) {
        (_, Value::Null) => Value::Null,
        (DataType::Utf8, Value::String(s)) => Value::String(s),
        (DataType::Utf8, other) => Value::String(other.to_string()),
        (DataType::List(field), Value::Array(items)) => {
            Value::Array(items.into_iter().map(|v| conform(v, field.data_type())).collect())
        }
        (DataType::Struct(fields), Value::Object(map)) => Value::Object(
            map.into_iter()
                .filter_map(|(k, v)| {
                    let (_, field) = fields.find(&k)?;
                    let v = conform(v, field.data_type());
                    Some((k, v))
                })
                .collect(),
        ),
        (_, other) => other,
    }
}

/// True if [`conform`] would change `value` (lets flat rows skip the copy).
pub(crate) fn needs_conform(value: &Value, ty: &DataType) -> bool {
    match (ty, value) {
        (_, Value::Null) => false,
        (DataType::Utf8, v) => !v.is_string(),
        (DataType::List(_) | DataType::Struct(_), _) => true,
        _ => false,
    }
}
