//! Reading an input a chunk of rows at a time.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use csv::StringRecord;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Map, Value};

use super::{DatasetError, Format, Input, Survey};
use super::{jsonl, parquet_io, text_csv};

/// Rows per Parquet read batch: the chunk size, within these bounds.
const MIN_PARQUET_BATCH: usize = 16;
const MAX_PARQUET_BATCH: usize = 8192;

/// Consecutive rows of the input, in file order.
#[derive(Debug)]
pub struct Chunk {
    /// 0-based index of the chunk's first row in the file.
    pub first_row: u64,
    /// Each row's input: the input column's text, or (for
    /// [`Input::Columns`]) a JSON object of the columns.
    pub inputs: Vec<String>,
    /// The rows themselves, for the writer.
    pub(crate) rows: Rows,
}

/// A chunk's rows, as read from the input's format.
#[derive(Debug)]
pub(crate) enum Rows {
    Jsonl(Vec<Map<String, Value>>),
    Csv(Vec<StringRecord>),
    /// Slices of Parquet read batches, in order.
    Parquet(Vec<RecordBatch>),
}

impl Rows {
    /// The format of the input the rows were read from.
    pub(crate) fn format(&self) -> Format {
        match self {
            Rows::Jsonl(_) => Format::Jsonl,
            Rows::Csv(_) => Format::Csv,
            Rows::Parquet(_) => Format::Parquet,
        }
    }
}

impl Chunk {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// True if the chunk has no rows (chunks from [`Reader`] never are).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

/// Streams an input file as chunks of rows.
pub struct Reader {
    path: PathBuf,
    input_column: String,
    /// With [`Input::Columns`]: the columns, and their indexes (CSV,
    /// Parquet).
    columns: Option<(Vec<String>, Vec<usize>)>,
    /// Rows returned so far.
    next_row: u64,
    source: Source,
}

enum Source {
    Jsonl(jsonl::JsonLines),
    Csv {
        records: text_csv::CsvRecords,
        input: usize,
    },
    Parquet {
        /// Until the first `next_chunk` (which chooses the batch size).
        builder: Option<ParquetRecordBatchReaderBuilder<File>>,
        reader: Option<ParquetRecordBatchReader>,
        /// The unreturned rest of the last batch read.
        pending: Option<RecordBatch>,
        input: usize,
    },
}

impl Reader {
    /// Opens `path` (which `survey` has checked) for reading.
    pub fn open(path: &Path, survey: &Survey, input_column: &str) -> Result<Reader, DatasetError> {
        Reader::open_input(path, survey, &Input::Column(input_column.to_string()))
    }

    /// [`Reader::open`] for any [`Input`] ([`survey_input`](super::survey_input)
    /// has checked it).
    pub fn open_input(path: &Path, survey: &Survey, input: &Input) -> Result<Reader, DatasetError> {
        let (input_column, wanted) = match input {
            Input::Column(column) => (column.as_str(), None),
            Input::Columns(columns) => ("", Some(columns)),
        };
        let mut indexes = Vec::new();
        let source = match survey.format {
            Format::Jsonl => Source::Jsonl(jsonl::JsonLines::open(path)?),
            Format::Csv => {
                let records = text_csv::CsvRecords::open(path)?;
                let input = match wanted {
                    Some(columns) => {
                        indexes = columns.iter().map(|c| records.column_index(c)).collect::<Result<_, _>>()?;
                        0
                    }
                    None => records.column_index(input_column)?,
                };
                Source::Csv { records, input }
            }
            Format::Parquet => {
                let builder = parquet_io::open(path)?;
                let input = match wanted {
                    Some(columns) => {
                        indexes = parquet_io::column_indexes(path, builder.schema(), columns)?;
                        0
                    }
                    None => parquet_io::input_index(path, builder.schema(), input_column)?,
                };
                Source::Parquet { builder: Some(builder), reader: None, pending: None, input }
            }
        };
        Ok(Reader {
            path: path.to_path_buf(),
            input_column: input_column.to_string(),
            columns: wanted.map(|columns| (columns.clone(), indexes)),
            next_row: 0,
            source,
        })
    }

    /// The next chunk of at most `max_rows` rows (at least 1 is read even if
    /// `max_rows` is 0); `None` at the end of the file. Chunks come in file
    /// order and are never empty.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Chunk>, DatasetError> {
        let want = max_rows.max(1);
        let path = &self.path;
        let column = &self.input_column;
        let columns = self.columns.as_ref();
        let first_row = self.next_row;
        let mut inputs = Vec::with_capacity(want.min(4096));
        let rows = match &mut self.source {
            Source::Jsonl(lines) => {
                let mut rows = Vec::with_capacity(want.min(4096));
                while rows.len() < want {
                    let Some(row) = lines.next_row()? else { break };
                    inputs.push(match columns {
                        Some((names, _)) => jsonl::object_of(&row, names),
                        None => jsonl::input_of(path, &row, column)?,
                    });
                    rows.push(row.object);
                }
                Rows::Jsonl(rows)
            }
            Source::Csv { records, input } => {
                let mut rows = Vec::with_capacity(want.min(4096));
                while rows.len() < want {
                    let Some(record) = records.next_record()? else {
                        break;
                    };
                    inputs.push(match columns {
                        Some((names, indexes)) => text_csv::object_of(&record, names, indexes),
                        None => text_csv::input_of(path, &record, *input, column)?,
                    });
                    rows.push(record.record);
                }
                Rows::Csv(rows)
            }
            Source::Parquet { builder, reader, pending, input } => {
                if let Some(builder) = builder.take() {
                    let batch_size = want.clamp(MIN_PARQUET_BATCH, MAX_PARQUET_BATCH);
                    *reader = Some(
                        builder
                            .with_batch_size(batch_size)
                            .build()
                            .map_err(|source| DatasetError::Parquet { path: path.clone(), source })?,
                    );
                }
                let mut batches = Vec::new();
                let mut got = 0;
                while got < want {
                    let batch = match pending.take() {
                        Some(batch) => batch,
                        None => match reader.as_mut().and_then(|r| r.next()) {
                            None => break,
                            Some(Err(source)) => {
                                return Err(DatasetError::Arrow { path: path.clone(), source });
                            }
                            Some(Ok(batch)) => batch,
                        },
                    };
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let take = (want - got).min(batch.num_rows());
                    if take < batch.num_rows() {
                        *pending = Some(batch.slice(take, batch.num_rows() - take));
                    }
                    let part = batch.slice(0, take);
                    match columns {
                        Some((_, indexes)) => parquet_io::push_objects(path, &part, indexes, &mut inputs)?,
                        None => parquet_io::push_strings(
                            path,
                            column,
                            part.column(*input),
                            first_row + got as u64,
                            &mut inputs,
                        )?,
                    }
                    batches.push(part);
                    got += take;
                }
                Rows::Parquet(batches)
            }
        };
        if inputs.is_empty() {
            return Ok(None);
        }
        self.next_row += inputs.len() as u64;
        Ok(Some(Chunk { first_row, inputs, rows }))
    }
}
