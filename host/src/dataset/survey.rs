//! The validation pre-pass over an input file.
//!
//! One function per format reads the whole file, checks every row, and
//! gathers what the reader and writer need later; [`survey`] picks the
//! function by extension.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use super::{DatasetError, Format, Input, Survey};
use super::{error_column, infer, jsonl, parquet_io, text_csv};

/// Rows per batch when counting a Parquet file's rows (only the input column
/// is read, so batches are cheap).
const PARQUET_BATCH: usize = 8192;

/// Format-specific facts the writer needs.
#[derive(Debug, Clone)]
pub(crate) enum Detail {
    /// The inferred Arrow type of each column (aligned with
    /// `Survey::columns`), for writing Parquet.
    Jsonl { types: Vec<DataType> },
    /// Nothing: every CSV column is text.
    Csv,
    /// The input's Arrow schema.
    Parquet { schema: SchemaRef },
}

/// What a format's survey found, before it becomes a [`Survey`].
struct Found {
    rows: u64,
    columns: Vec<String>,
    detail: Detail,
}

/// Streams the whole input once and checks that it parses, that every row
/// has a string value in `input_column` (present, not null, a string), and
/// that neither `output_column` nor [`error_column`]`(output_column)` already
/// exist. Never modifies the input.
pub fn survey(path: &Path, input_column: &str, output_column: &str) -> Result<Survey, DatasetError> {
    survey_input(path, &Input::Column(input_column.to_string()), output_column)
}

/// [`survey`] for any [`Input`]: with [`Input::Columns`], each named column
/// must exist (for JSONL, in some row), in any type.
pub fn survey_input(path: &Path, input: &Input, output_column: &str) -> Result<Survey, DatasetError> {
    let format = Format::from_path(path)?;
    let new = NewColumns { path, output: output_column, error: error_column(output_column) };
    let Found { rows, columns, detail } = match format {
        Format::Jsonl => survey_jsonl(path, input, &new)?,
        Format::Csv => survey_csv(path, input, &new)?,
        Format::Parquet => survey_parquet(path, input, &new)?,
    };
    let survey = Survey { format, rows, columns, path: path.to_path_buf(), detail };
    tracing::debug!(
        path = %path.display(),
        format = ?survey.format,
        rows = survey.rows,
        columns = survey.columns.len(),
        "surveyed input"
    );
    Ok(survey)
}

/// The two columns the output adds, which no input column may be named.
struct NewColumns<'a> {
    path: &'a Path,
    output: &'a str,
    error: String,
}

impl NewColumns<'_> {
    /// Errors if input column `column` is one of the two.
    fn check(&self, column: &str) -> Result<(), DatasetError> {
        if column == self.output || column == self.error {
            return Err(DatasetError::OutputColumnExists { path: self.path.to_path_buf(), column: column.to_string() });
        }
        Ok(())
    }
}

/// JSONL: the columns are the union of the rows' keys, and their types are
/// inferred from every value, since a later row may widen them.
fn survey_jsonl(path: &Path, input: &Input, new: &NewColumns) -> Result<Found, DatasetError> {
    let mut lines = jsonl::JsonLines::open(path)?;
    let mut keys = KeyUnion::default();
    let mut rows = 0;
    while let Some(row) = lines.next_row()? {
        if let Input::Column(input_column) = input {
            jsonl::input_of(path, &row, input_column)?;
        }
        keys.add(&row.object, new)?;
        rows = row.row;
    }
    if let Input::Columns(wanted) = input
        && let Some(column) = wanted.iter().find(|c| !keys.index.contains_key(*c))
    {
        return Err(DatasetError::ColumnNotFound {
            path: path.to_path_buf(),
            column: column.clone(),
            columns: keys.columns,
        });
    }
    let types = keys.types.into_iter().map(infer::finalize).collect();
    Ok(Found { rows, columns: keys.columns, detail: Detail::Jsonl { types } })
}

/// The keys of JSONL rows in first-seen order, each with the type inferred
/// so far.
#[derive(Default)]
struct KeyUnion {
    columns: Vec<String>,
    /// Aligned with `columns`.
    types: Vec<DataType>,
    /// Where each key is in `columns`.
    index: HashMap<String, usize>,
}

impl KeyUnion {
    /// Adds `object`'s keys and widens their types to hold its values; a new
    /// key must not be one of the output's columns.
    fn add(&mut self, object: &Map<String, Value>, new: &NewColumns) -> Result<(), DatasetError> {
        for (key, value) in object {
            match self.index.get(key) {
                Some(&i) => infer::absorb(&mut self.types[i], value),
                None => {
                    new.check(key)?;
                    self.index.insert(key.clone(), self.columns.len());
                    self.columns.push(key.clone());
                    self.types.push(infer::infer(value));
                }
            }
        }
        Ok(())
    }
}

/// CSV: the header gives the columns, which must be unique, since JSONL and
/// Parquet outputs could not tell two of the same name apart.
fn survey_csv(path: &Path, input: &Input, new: &NewColumns) -> Result<Found, DatasetError> {
    let mut records = text_csv::CsvRecords::open(path)?;
    let columns = records.headers.clone();
    let mut seen = HashSet::new();
    if let Some(column) = columns.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(DatasetError::DuplicateColumn { path: path.to_path_buf(), column: column.clone() });
    }
    let checked = match input {
        Input::Column(column) => Some((records.column_index(column)?, column)),
        Input::Columns(wanted) => {
            wanted.iter().try_for_each(|column| records.column_index(column).map(drop))?;
            None
        }
    };
    columns.iter().try_for_each(|c| new.check(c))?;
    let mut rows = 0;
    while let Some(record) = records.next_record()? {
        if let Some((index, column)) = checked {
            text_csv::input_of(path, &record, index, column)?;
        }
        rows = record.row;
    }
    Ok(Found { rows, columns, detail: Detail::Csv })
}

/// Parquet: the schema gives the columns; only the input column is read.
fn survey_parquet(path: &Path, input: &Input, new: &NewColumns) -> Result<Found, DatasetError> {
    let builder = parquet_io::open(path)?;
    let schema = builder.schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows = match input {
        Input::Column(input_column) => {
            let index = parquet_io::input_index(path, &schema, input_column)?;
            columns.iter().try_for_each(|c| new.check(c))?;
            count_parquet_rows(path, builder, index, input_column)?
        }
        Input::Columns(wanted) => {
            parquet_io::column_indexes(path, &schema, wanted)?;
            columns.iter().try_for_each(|c| new.check(c))?;
            u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0)
        }
    };
    Ok(Found { rows, columns, detail: Detail::Parquet { schema } })
}

/// The number of rows, reading only the input column (top-level column
/// `input`) and checking that it holds no null.
fn count_parquet_rows(
    path: &Path,
    builder: ParquetRecordBatchReaderBuilder<File>,
    input: usize,
    input_column: &str,
) -> Result<u64, DatasetError> {
    let mask = ProjectionMask::roots(builder.parquet_schema(), [input]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(PARQUET_BATCH)
        .build()
        .map_err(|source| DatasetError::Parquet { path: path.to_path_buf(), source })?;
    let mut rows: u64 = 0;
    for batch in reader {
        let batch = batch.map_err(|source| DatasetError::Arrow { path: path.to_path_buf(), source })?;
        parquet_io::check_no_nulls(path, input_column, batch.column(0).as_ref(), rows)?;
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}
