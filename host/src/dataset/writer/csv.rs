//! CSV output.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use csv::{ByteRecord, StringRecord};
use serde_json::{Map, Value};

use super::outputs::{Names, Outputs};
use super::sink::SinkError;
use crate::dataset::DatasetError;

/// Errors naming the first nested column (list, struct, map, …) of `schema`:
/// a CSV cell cannot hold one.
pub(super) fn check_flat(path: &Path, schema: &Schema) -> Result<(), DatasetError> {
    match schema.fields().iter().find(|f| f.data_type().is_nested()) {
        Some(field) => Err(DatasetError::CsvUnsupportedType {
            path: path.to_path_buf(),
            column: field.name().clone(),
            data_type: field.data_type().clone(),
        }),
        None => Ok(()),
    }
}

/// Writes JSONL or CSV rows as CSV records, a row at a time.
pub(super) struct CsvSink {
    out: csv::Writer<BufWriter<File>>,
    /// The input columns: for a JSONL input, the union of its keys.
    columns: Vec<String>,
    /// Reused for every record written.
    record: ByteRecord,
}

impl CsvSink {
    /// Writes the header to `out`: `columns`, then the two output columns.
    pub(super) fn create(out: BufWriter<File>, columns: &[String], names: &Names) -> Result<CsvSink, SinkError> {
        let mut out = csv::WriterBuilder::new().has_headers(false).from_writer(out);
        out.write_record(columns.iter().map(String::as_str).chain(names.all()))?;
        Ok(CsvSink { out, columns: columns.to_vec(), record: ByteRecord::new() })
    }

    /// Writes each JSONL row's values in column order, plus the two columns.
    /// A string is written as it is, null or a missing key as an empty cell,
    /// anything else as its JSON text.
    pub(super) fn write_objects(&mut self, objects: &[Map<String, Value>], outputs: &Outputs) -> Result<(), SinkError> {
        for (i, object) in objects.iter().enumerate() {
            self.record.clear();
            for name in &self.columns {
                match object.get(name) {
                    None | Some(Value::Null) => self.record.push_field(b""),
                    Some(Value::String(s)) => self.record.push_field(s.as_bytes()),
                    Some(other) => self.record.push_field(other.to_string().as_bytes()),
                }
            }
            self.write_with_outputs(outputs, i)?;
        }
        Ok(())
    }

    /// Writes each CSV record's cells unchanged, plus the two columns.
    pub(super) fn write_records(&mut self, records: &[StringRecord], outputs: &Outputs) -> Result<(), SinkError> {
        for (i, input) in records.iter().enumerate() {
            self.record.clear();
            for cell in input.iter() {
                self.record.push_field(cell.as_bytes());
            }
            self.write_with_outputs(outputs, i)?;
        }
        Ok(())
    }

    /// Appends row `i`'s two cells to the record built so far and writes it.
    fn write_with_outputs(&mut self, outputs: &Outputs, i: usize) -> Result<(), SinkError> {
        for cell in outputs.cells(i) {
            self.record.push_field(&cell);
        }
        Ok(self.out.write_byte_record(&self.record)?)
    }

    /// Flushes the CSV writer and hands back the buffered file.
    pub(super) fn finish(self) -> Result<BufWriter<File>, SinkError> {
        self.out.into_inner().map_err(|e| SinkError::Io(e.into_error()))
    }
}

/// Writes Parquet batches as CSV through arrow-csv (nulls become empty cells).
pub(super) struct ArrowCsvSink {
    out: arrow_csv::Writer<BufWriter<File>>,
    /// The input's schema plus the two columns.
    schema: SchemaRef,
}

impl ArrowCsvSink {
    /// Writes the header of `schema` to `out`.
    pub(super) fn create(out: BufWriter<File>, schema: SchemaRef) -> Result<ArrowCsvSink, SinkError> {
        let mut out = arrow_csv::WriterBuilder::new().with_header(true).build(out);
        // arrow-csv writes the header with the first batch; an empty one makes
        // sure it is there even if no rows follow.
        out.write(&RecordBatch::new_empty(schema.clone()))?;
        Ok(ArrowCsvSink { out, schema })
    }

    /// Writes `batches` with the two columns appended.
    pub(super) fn write_batches(&mut self, batches: &[RecordBatch], outputs: &Outputs) -> Result<(), SinkError> {
        outputs.for_each_batch(batches, &self.schema, |batch| Ok(self.out.write(batch)?))
    }

    /// Hands back the buffered file (arrow-csv holds nothing back).
    pub(super) fn finish(self) -> BufWriter<File> {
        self.out.into_inner()
    }
}
