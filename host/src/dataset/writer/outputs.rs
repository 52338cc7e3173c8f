//! The columns every output gains: the generated text and the error, and
//! with `--expand-json` one column per top-level property of the output's
//! JSON schema.
//!
//! Every sink appends the same values to each row, whatever its format;
//! keeping their names, types and values here keeps the formats in agreement.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef};
use serde_json::{Map, Value};

use crate::dataset::{DatasetError, Survey, error_column};

/// A top-level property of structured outputs written as a column of its
/// own (`--expand-json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expanded {
    /// The property's name, and the column's.
    pub name: String,
    /// Its column's type.
    pub kind: Kind,
}

/// The type of an expanded column, from the property's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `"type": "integer"`: Int64 in Parquet.
    Integer,
    /// `"type": "number"`: Float64.
    Number,
    /// `"type": "boolean"`: Boolean.
    Boolean,
    /// Strings as they are; any other value (objects, arrays, unions) as
    /// compact JSON text.
    Text,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Integer => DataType::Int64,
            Kind::Number => DataType::Float64,
            Kind::Boolean => DataType::Boolean,
            Kind::Text => DataType::Utf8,
        }
    }

    /// `value` as this column holds it (null where it does not fit).
    fn conform(self, value: Option<&Value>) -> Value {
        match (self, value) {
            (_, None | Some(Value::Null)) => Value::Null,
            (Kind::Integer, Some(v)) => v.as_i64().map_or(Value::Null, Value::from),
            (Kind::Number, Some(v)) => v.as_f64().map_or(Value::Null, Value::from),
            (Kind::Boolean, Some(v)) => v.as_bool().map_or(Value::Null, Value::from),
            (Kind::Text, Some(Value::String(text))) => Value::from(text.as_str()),
            (Kind::Text, Some(other)) => Value::from(other.to_string()),
        }
    }
}

/// The names of the output column, its error column and the expanded ones.
pub(super) struct Names {
    output: String,
    error: String,
    expanded: Vec<Expanded>,
}

impl Names {
    /// The names for output column `output`, and the `expanded` properties.
    pub(super) fn new(output: &str, expanded: &[Expanded]) -> Names {
        Names { output: output.to_string(), error: error_column(output), expanded: expanded.to_vec() }
    }

    /// Errors if the input already has any of the new columns: its values
    /// would be overwritten, or written twice.
    pub(super) fn check_new(&self, survey: &Survey) -> Result<(), DatasetError> {
        for column in self.all() {
            if survey.columns.iter().any(|c| c == column) || self.all().filter(|c| *c == column).count() > 1 {
                return Err(DatasetError::OutputColumnExists { path: survey.path.clone(), column: column.to_string() });
            }
        }
        Ok(())
    }

    /// Every new column's name, in the order they are written: the expanded
    /// properties (in schema order), the output, the error.
    pub(super) fn all(&self) -> impl Iterator<Item = &str> {
        self.expanded.iter().map(|e| e.name.as_str()).chain([self.output.as_str(), self.error.as_str()])
    }

    /// The new Arrow fields: an expanded property is null where the row
    /// failed; the output is never null (a failed row's is empty); the error
    /// is null when the row succeeded.
    pub(super) fn fields(&self) -> Vec<FieldRef> {
        self.expanded
            .iter()
            .map(|e| Arc::new(Field::new(&e.name, e.kind.data_type(), true)))
            .chain([
                Arc::new(Field::new(&self.output, DataType::Utf8, false)),
                Arc::new(Field::new(&self.error, DataType::Utf8, true)),
            ])
            .collect()
    }

    /// `schema` with the new fields appended, keeping its metadata.
    pub(super) fn append_to(&self, schema: &Schema) -> SchemaRef {
        let fields: Vec<FieldRef> = schema.fields().iter().cloned().chain(self.fields()).collect();
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }
}

/// A chunk's values for the new columns, row by row.
pub(super) struct Outputs<'a> {
    names: &'a Names,
    /// The generated text; empty for a failed row.
    texts: Vec<&'a str>,
    /// The error message; `None` for a row that succeeded.
    errors: Vec<Option<&'a str>>,
    /// Per expanded column, each row's value as the column holds it.
    expanded: Vec<Vec<Value>>,
}

impl<'a> Outputs<'a> {
    /// Splits `Writer::write_chunk`'s results into the new columns.
    pub(super) fn new(names: &'a Names, outputs: &'a [Result<String, String>]) -> Outputs<'a> {
        let parsed: Vec<Option<Map<String, Value>>> = if names.expanded.is_empty() {
            Vec::new()
        } else {
            outputs
                .iter()
                .map(|o| o.as_ref().ok().and_then(|text| serde_json::from_str::<Map<String, Value>>(text).ok()))
                .collect()
        };
        let expanded = names
            .expanded
            .iter()
            .map(|e| parsed.iter().map(|row| e.kind.conform(row.as_ref().and_then(|r| r.get(&e.name)))).collect())
            .collect();
        Outputs {
            names,
            texts: outputs.iter().map(|o| o.as_ref().map_or("", String::as_str)).collect(),
            errors: outputs.iter().map(|o| o.as_ref().err().map(String::as_str)).collect(),
            expanded,
        }
    }

    /// Adds row `i`'s new values to `object`: the expanded properties, the
    /// text, and the message or null.
    pub(super) fn insert_into(&self, i: usize, object: &mut Map<String, Value>) {
        for (e, values) in self.names.expanded.iter().zip(&self.expanded) {
            object.insert(e.name.clone(), values[i].clone());
        }
        object.insert(self.names.output.clone(), Value::from(self.texts[i]));
        object.insert(self.names.error.clone(), self.errors[i].map_or(Value::Null, Value::from));
    }

    /// Row `i`'s new CSV cells (null and a success's error are empty).
    pub(super) fn cells(&self, i: usize) -> Vec<Cow<'_, [u8]>> {
        let expanded = self.expanded.iter().map(|values| match &values[i] {
            Value::Null => Cow::Borrowed(&b""[..]),
            Value::String(text) => Cow::Borrowed(text.as_bytes()),
            other => Cow::Owned(other.to_string().into_bytes()),
        });
        expanded
            .chain([Cow::Borrowed(self.texts[i].as_bytes()), Cow::Borrowed(self.errors[i].unwrap_or("").as_bytes())])
            .collect()
    }

    /// The new columns of `rows` as Arrow arrays.
    pub(super) fn arrays(&self, rows: Range<usize>) -> Vec<ArrayRef> {
        let expanded = self.names.expanded.iter().zip(&self.expanded).map(|(e, values)| {
            let values = &values[rows.clone()];
            let array: ArrayRef = match e.kind {
                Kind::Integer => Arc::new(values.iter().map(Value::as_i64).collect::<Int64Array>()),
                Kind::Number => Arc::new(values.iter().map(Value::as_f64).collect::<Float64Array>()),
                Kind::Boolean => Arc::new(values.iter().map(Value::as_bool).collect::<BooleanArray>()),
                Kind::Text => Arc::new(values.iter().map(Value::as_str).collect::<StringArray>()),
            };
            array
        });
        expanded
            .chain([
                Arc::new(StringArray::from_iter_values(self.texts[rows.clone()].iter())) as ArrayRef,
                Arc::new(StringArray::from(self.errors[rows.clone()].to_vec())),
            ])
            .collect()
    }

    /// Hands each of `batches` (the chunk's rows, in order) to `write` with
    /// its rows' new columns appended, under `schema`.
    pub(super) fn for_each_batch<E: From<ArrowError>>(
        &self,
        batches: &[RecordBatch],
        schema: &SchemaRef,
        mut write: impl FnMut(&RecordBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut offset = 0;
        for batch in batches {
            let rows = offset..offset + batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns.extend(self.arrays(rows.clone()));
            write(&batch_of(schema, columns, rows.len())?)?;
            offset = rows.end;
        }
        Ok(())
    }
}

/// A batch of `schema` made of `columns`, each `rows` long.
pub(super) fn batch_of(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows)))
}
