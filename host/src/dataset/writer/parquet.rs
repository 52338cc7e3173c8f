//! Parquet output, through Arrow's `ArrowWriter` (see
//! [`parquet_io::writer_properties`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_json::reader::Decoder;
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};
use csv::StringRecord;
use parquet::arrow::ArrowWriter;
use serde_json::{Map, Value};

use super::outputs::{Names, Outputs, batch_of};
use super::sink::SinkError;
use crate::dataset::{infer, parquet_io};

/// Writes Parquet or CSV rows as Parquet.
pub(super) struct ParquetSink {
    // Boxed: the writer is large, and the other sinks are small.
    out: Box<ArrowWriter<BufWriter<File>>>,
    /// The input columns plus the two output columns.
    schema: SchemaRef,
}

impl ParquetSink {
    /// Writes batches of `schema` to `out`.
    pub(super) fn create(out: BufWriter<File>, schema: SchemaRef) -> Result<ParquetSink, SinkError> {
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(parquet_io::writer_properties()))?;
        Ok(ParquetSink { out: Box::new(writer), schema })
    }

    /// Writes the rows of a CSV input with header `columns`: every column is
    /// text (nullable, as in any column a JSONL or Parquet input could give).
    pub(super) fn for_csv(out: BufWriter<File>, columns: &[String], names: &Names) -> Result<ParquetSink, SinkError> {
        let fields: Vec<FieldRef> =
            columns.iter().map(|name| Arc::new(Field::new(name, DataType::Utf8, true))).chain(names.fields()).collect();
        ParquetSink::create(out, Arc::new(Schema::new(fields)))
    }

    /// Writes Parquet `batches` with the two columns appended.
    pub(super) fn write_batches(&mut self, batches: &[RecordBatch], outputs: &Outputs) -> Result<(), SinkError> {
        outputs.for_each_batch(batches, &self.schema, |batch| write(&mut self.out, batch))
    }

    /// Writes CSV `records` as one batch of text columns plus the two
    /// columns.
    pub(super) fn write_records(&mut self, records: &[StringRecord], outputs: &Outputs) -> Result<(), SinkError> {
        // The schema's last two fields are the output columns.
        let width = self.schema.fields().len() - 2;
        let mut columns: Vec<ArrayRef> = (0..width)
            .map(|c| {
                Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.get(c).unwrap_or("")))) as ArrayRef
            })
            .collect();
        columns.extend(outputs.arrays(0..records.len()));
        let batch = batch_of(&self.schema, columns, records.len())?;
        self.write(&batch)
    }

    /// Writes `batch` (see [`write`]).
    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        write(&mut self.out, batch)
    }

    /// Writes the last row group and the footer, and hands back the buffered
    /// file.
    pub(super) fn finish(self) -> Result<BufWriter<File>, SinkError> {
        Ok(self.out.into_inner()?)
    }
}

/// Writes JSONL rows as Parquet: arrow-json's decoder turns them into batches
/// of the schema `survey` inferred.
pub(super) struct JsonlParquetSink {
    parquet: ParquetSink,
    decoder: Decoder,
    /// The inferred type of each input column, to make its values fit.
    types: HashMap<String, DataType>,
}

impl JsonlParquetSink {
    /// Writes the rows of a JSONL input whose keys `columns` have the
    /// inferred `types` (aligned).
    pub(super) fn create(
        out: BufWriter<File>,
        columns: &[String],
        types: &[DataType],
        names: &Names,
    ) -> Result<JsonlParquetSink, SinkError> {
        let fields: Vec<FieldRef> = columns
            .iter()
            .zip(types)
            .map(|(name, ty)| Arc::new(Field::new(name, ty.clone(), true)))
            .chain(names.fields())
            .collect();
        let parquet = ParquetSink::create(out, Arc::new(Schema::new(fields)))?;
        let decoder =
            arrow_json::ReaderBuilder::new(parquet.schema.clone()).with_coerce_primitive(true).build_decoder()?;
        let types = columns.iter().cloned().zip(types.iter().cloned()).collect();
        Ok(JsonlParquetSink { parquet, decoder, types })
    }

    /// Writes `objects`, conformed to the inferred types, plus the two
    /// columns, as one batch.
    pub(super) fn write_objects(
        &mut self,
        mut objects: Vec<Map<String, Value>>,
        outputs: &Outputs,
    ) -> Result<(), SinkError> {
        for (i, object) in objects.iter_mut().enumerate() {
            self.conform(object);
            outputs.insert_into(i, object);
        }
        self.decoder.serialize(&objects)?;
        // The rows are in the decoder now: free them before it builds the batch.
        drop(objects);
        match self.decoder.flush()? {
            Some(batch) => self.parquet.write(&batch),
            None => Ok(()),
        }
    }

    /// Makes `object`'s values fit their column's inferred type (see
    /// [`infer::conform`]), which the decoder would otherwise reject.
    fn conform(&self, object: &mut Map<String, Value>) {
        for (key, value) in object.iter_mut() {
            if let Some(ty) = self.types.get(key)
                && infer::needs_conform(value, ty)
            {
                *value = infer::conform(std::mem::take(value), ty);
            }
        }
    }

    /// Writes the last row group and the footer, and hands back the buffered
    /// file.
    pub(super) fn finish(self) -> Result<BufWriter<File>, SinkError> {
        self.parquet.finish()
    }
}

/// Writes `batch`, and flushes the row group in progress once it is large, so
/// that memory stays bounded however wide the rows.
fn write(out: &mut ArrowWriter<BufWriter<File>>, batch: &RecordBatch) -> Result<(), SinkError> {
    out.write(batch)?;
    if out.in_progress_size() > parquet_io::MAX_IN_PROGRESS_BYTES {
        out.flush()?;
    }
    Ok(())
}
