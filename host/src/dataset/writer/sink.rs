//! The sinks: one type per way of encoding an output, and the dispatch to
//! them.
//!
//! A sink is chosen by the input's format as well as the output's, because
//! that decides how rows become output: JSONL and CSV rows go row by row,
//! Parquet batches go through Arrow's own writers, and Parquet output goes
//! through Arrow whatever the input.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use arrow_schema::ArrowError;
use parquet::errors::ParquetError;

use super::csv::{ArrowCsvSink, CsvSink};
use super::jsonl::{ArrowJsonlSink, JsonlSink};
use super::outputs::{Names, Outputs};
use super::parquet::{JsonlParquetSink, ParquetSink};
use crate::dataset::reader::Rows;
use crate::dataset::survey::Detail;
use crate::dataset::{DatasetError, Format, Survey};

/// The sink a [`Writer`](super::Writer) writes its temporary file through.
pub(super) enum Sink {
    /// JSONL or CSV rows → JSONL.
    Jsonl(JsonlSink),
    /// Parquet batches → JSONL.
    ArrowJsonl(ArrowJsonlSink),
    /// JSONL or CSV rows → CSV.
    Csv(CsvSink),
    /// Parquet batches → CSV.
    ArrowCsv(ArrowCsvSink),
    /// Parquet or CSV rows → Parquet.
    Parquet(ParquetSink),
    /// JSONL rows → Parquet.
    JsonlParquet(JsonlParquetSink),
}

impl Sink {
    /// The sink that writes the rows of the input `survey` describes to `out`
    /// as `format`.
    pub(super) fn create(
        out: BufWriter<File>,
        survey: &Survey,
        format: Format,
        names: &Names,
    ) -> Result<Sink, SinkError> {
        let columns = &survey.columns;
        Ok(match (&survey.detail, format) {
            (Detail::Jsonl { .. } | Detail::Csv, Format::Jsonl) => Sink::Jsonl(JsonlSink::new(out, columns.clone())),
            (Detail::Jsonl { .. } | Detail::Csv, Format::Csv) => Sink::Csv(CsvSink::create(out, columns, names)?),
            (Detail::Parquet { schema }, Format::Jsonl) => {
                Sink::ArrowJsonl(ArrowJsonlSink::new(out, names.append_to(schema)))
            }
            (Detail::Parquet { schema }, Format::Csv) => {
                Sink::ArrowCsv(ArrowCsvSink::create(out, names.append_to(schema))?)
            }
            (Detail::Parquet { schema }, Format::Parquet) => {
                Sink::Parquet(ParquetSink::create(out, names.append_to(schema))?)
            }
            (Detail::Csv, Format::Parquet) => Sink::Parquet(ParquetSink::for_csv(out, columns, names)?),
            (Detail::Jsonl { types }, Format::Parquet) => {
                Sink::JsonlParquet(JsonlParquetSink::create(out, columns, types, names)?)
            }
        })
    }

    /// Writes a chunk's `rows`, which `Writer::write_chunk` has checked come
    /// from the input this sink was created for.
    pub(super) fn write(&mut self, rows: Rows, outputs: &Outputs) -> Result<(), SinkError> {
        match (self, rows) {
            (Sink::Jsonl(sink), Rows::Jsonl(objects)) => sink.write_objects(objects, outputs),
            (Sink::Jsonl(sink), Rows::Csv(records)) => sink.write_records(&records, outputs),
            (Sink::ArrowJsonl(sink), Rows::Parquet(batches)) => sink.write_batches(&batches, outputs),
            (Sink::Csv(sink), Rows::Jsonl(objects)) => sink.write_objects(&objects, outputs),
            (Sink::Csv(sink), Rows::Csv(records)) => sink.write_records(&records, outputs),
            (Sink::ArrowCsv(sink), Rows::Parquet(batches)) => sink.write_batches(&batches, outputs),
            (Sink::Parquet(sink), Rows::Parquet(batches)) => sink.write_batches(&batches, outputs),
            (Sink::Parquet(sink), Rows::Csv(records)) => sink.write_records(&records, outputs),
            (Sink::JsonlParquet(sink), Rows::Jsonl(objects)) => sink.write_objects(objects, outputs),
            (_, rows) => unreachable!("{:?} rows reached a sink made for another input", rows.format()),
        }
    }

    /// Ends the encoding (footers, buffered row groups) and hands back the
    /// buffered file.
    pub(super) fn finish(self) -> Result<BufWriter<File>, SinkError> {
        match self {
            Sink::Jsonl(sink) => Ok(sink.finish()),
            Sink::ArrowJsonl(sink) => sink.finish(),
            Sink::Csv(sink) => sink.finish(),
            Sink::ArrowCsv(sink) => Ok(sink.finish()),
            Sink::Parquet(sink) => sink.finish(),
            Sink::JsonlParquet(sink) => sink.finish(),
        }
    }
}

/// A sink's error, before the writer names its output path.
#[derive(Debug)]
pub(super) enum SinkError {
    /// Writing the file failed.
    Io(io::Error),
    /// Encoding CSV failed (other than in writing).
    Csv(csv::Error),
    /// Converting or encoding Arrow batches failed.
    Arrow(ArrowError),
    /// Encoding Parquet failed.
    Parquet(ParquetError),
}

impl SinkError {
    /// The error, naming `path`.
    pub(super) fn at(self, path: &Path) -> DatasetError {
        let path = path.to_path_buf();
        match self {
            SinkError::Io(source) => DatasetError::Write { path, source },
            SinkError::Csv(source) => DatasetError::Csv { path, source },
            SinkError::Arrow(source) => DatasetError::Arrow { path, source },
            SinkError::Parquet(source) => DatasetError::Parquet { path, source },
        }
    }
}

impl From<io::Error> for SinkError {
    fn from(source: io::Error) -> SinkError {
        SinkError::Io(source)
    }
}

/// An I/O error inside a `csv::Error` is reported as one, like any other
/// failed write.
impl From<csv::Error> for SinkError {
    fn from(error: csv::Error) -> SinkError {
        if !error.is_io_error() {
            return SinkError::Csv(error);
        }
        match error.into_kind() {
            csv::ErrorKind::Io(source) => SinkError::Io(source),
            _ => unreachable!("csv::Error::is_io_error() guarantees ErrorKind::Io"),
        }
    }
}

impl From<ArrowError> for SinkError {
    fn from(source: ArrowError) -> SinkError {
        SinkError::Arrow(source)
    }
}

impl From<ParquetError> for SinkError {
    fn from(source: ParquetError) -> SinkError {
        SinkError::Parquet(source)
    }
}
