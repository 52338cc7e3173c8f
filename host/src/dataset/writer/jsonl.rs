//! JSON Lines output.

use std::fs::File;
use std::io::{self, BufWriter, Write};

use arrow_array::RecordBatch;
use arrow_json::LineDelimitedWriter;
use arrow_schema::SchemaRef;
use csv::StringRecord;
use serde_json::{Map, Value};

use super::outputs::Outputs;
use super::sink::SinkError;

/// Writes JSONL or CSV rows as JSON lines, a row at a time.
pub(super) struct JsonlSink {
    out: BufWriter<File>,
    /// The CSV header, naming a CSV record's cells.
    columns: Vec<String>,
}

impl JsonlSink {
    /// Writes to `out`; `columns` names the cells of CSV records.
    pub(super) fn new(out: BufWriter<File>, columns: Vec<String>) -> JsonlSink {
        JsonlSink { out, columns }
    }

    /// Writes each JSONL row as read (re-serialised), plus the two columns.
    pub(super) fn write_objects(
        &mut self,
        objects: Vec<Map<String, Value>>,
        outputs: &Outputs,
    ) -> Result<(), SinkError> {
        for (i, mut object) in objects.into_iter().enumerate() {
            outputs.insert_into(i, &mut object);
            self.write_line(&object)?;
        }
        Ok(())
    }

    /// Writes each CSV record as an object of strings keyed by the header,
    /// plus the two columns.
    pub(super) fn write_records(&mut self, records: &[StringRecord], outputs: &Outputs) -> Result<(), SinkError> {
        for (i, record) in records.iter().enumerate() {
            let mut object = Map::with_capacity(self.columns.len() + 2);
            for (name, cell) in self.columns.iter().zip(record.iter()) {
                object.insert(name.clone(), Value::from(cell));
            }
            outputs.insert_into(i, &mut object);
            self.write_line(&object)?;
        }
        Ok(())
    }

    fn write_line(&mut self, object: &Map<String, Value>) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, object)?;
        self.out.write_all(b"\n")
    }

    /// The buffered file (nothing is held back).
    pub(super) fn finish(self) -> BufWriter<File> {
        self.out
    }
}

/// Writes Parquet batches as JSON lines through arrow-json, with explicit
/// nulls, so that every row has every key (the error key included).
pub(super) struct ArrowJsonlSink {
    out: LineDelimitedWriter<BufWriter<File>>,
    /// The input's schema plus the two columns.
    schema: SchemaRef,
}

impl ArrowJsonlSink {
    /// Writes batches of `schema` to `out`.
    pub(super) fn new(out: BufWriter<File>, schema: SchemaRef) -> ArrowJsonlSink {
        ArrowJsonlSink { out: arrow_json::WriterBuilder::new().with_explicit_nulls(true).build(out), schema }
    }

    /// Writes `batches` with the two columns appended.
    pub(super) fn write_batches(&mut self, batches: &[RecordBatch], outputs: &Outputs) -> Result<(), SinkError> {
        outputs.for_each_batch(batches, &self.schema, |batch| Ok(self.out.write(batch)?))
    }

    /// Ends the JSON stream and hands back the buffered file.
    pub(super) fn finish(mut self) -> Result<BufWriter<File>, SinkError> {
        self.out.finish()?;
        Ok(self.out.into_inner())
    }
}
