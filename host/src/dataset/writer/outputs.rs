//! The two columns every output gains: the generated text and the error.
//!
//! Every sink appends the same two values to each row, whatever its format;
//! keeping their names, types and values here keeps the formats in agreement.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef};
use serde_json::{Map, Value};

use crate::dataset::{DatasetError, Survey, error_column};

/// The names of the output column and its error column.
pub(super) struct Names {
    output: String,
    error: String,
}

impl Names {
    /// The names for output column `output`.
    pub(super) fn new(output: &str) -> Names {
        Names { output: output.to_string(), error: error_column(output) }
    }

    /// Errors if the input already has either column: its values would be
    /// overwritten, or written twice.
    pub(super) fn check_new(&self, survey: &Survey) -> Result<(), DatasetError> {
        for column in [&self.output, &self.error] {
            if survey.columns.contains(column) {
                return Err(DatasetError::OutputColumnExists { path: survey.path.clone(), column: column.clone() });
            }
        }
        Ok(())
    }

    /// Both names, in the order they are written.
    pub(super) fn both(&self) -> [&str; 2] {
        [&self.output, &self.error]
    }

    /// The two Arrow fields: the output is never null (a failed row's is
    /// empty); the error is null when the row succeeded.
    pub(super) fn fields(&self) -> [FieldRef; 2] {
        [
            Arc::new(Field::new(&self.output, DataType::Utf8, false)),
            Arc::new(Field::new(&self.error, DataType::Utf8, true)),
        ]
    }

    /// `schema` with the two fields appended, keeping its metadata.
    pub(super) fn append_to(&self, schema: &Schema) -> SchemaRef {
        let fields: Vec<FieldRef> = schema.fields().iter().cloned().chain(self.fields()).collect();
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }
}

/// A chunk's values for the two columns, row by row.
pub(super) struct Outputs<'a> {
    names: &'a Names,
    /// The generated text; empty for a failed row.
    texts: Vec<&'a str>,
    /// The error message; `None` for a row that succeeded.
    errors: Vec<Option<&'a str>>,
}

impl<'a> Outputs<'a> {
    /// Splits `Writer::write_chunk`'s results into the two columns.
    pub(super) fn new(names: &'a Names, outputs: &'a [Result<String, String>]) -> Outputs<'a> {
        Outputs {
            names,
            texts: outputs.iter().map(|o| o.as_ref().map_or("", String::as_str)).collect(),
            errors: outputs.iter().map(|o| o.as_ref().err().map(String::as_str)).collect(),
        }
    }

    /// Adds row `i`'s two values to `object`: the text, and the message or
    /// null.
    pub(super) fn insert_into(&self, i: usize, object: &mut Map<String, Value>) {
        object.insert(self.names.output.clone(), Value::from(self.texts[i]));
        object.insert(self.names.error.clone(), self.errors[i].map_or(Value::Null, Value::from));
    }

    /// Row `i`'s two CSV cells (a success's error cell is empty).
    pub(super) fn cells(&self, i: usize) -> [&[u8]; 2] {
        [self.texts[i].as_bytes(), self.errors[i].unwrap_or("").as_bytes()]
    }

    /// The two columns of `rows` as Arrow arrays.
    pub(super) fn arrays(&self, rows: Range<usize>) -> [ArrayRef; 2] {
        [
            Arc::new(StringArray::from_iter_values(self.texts[rows.clone()].iter())),
            Arc::new(StringArray::from(self.errors[rows].to_vec())),
        ]
    }

    /// Hands each of `batches` (the chunk's rows, in order) to `write` with
    /// its rows' two columns appended, under `schema`.
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
