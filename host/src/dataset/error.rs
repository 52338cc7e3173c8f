//! The error type of the dataset module.

use std::io;
use std::path::PathBuf;

use arrow_schema::{ArrowError, DataType};
use parquet::errors::ParquetError;

/// "row 3 (line 4)" for text formats, "row 3" for Parquet.
fn at(row: u64, line: Option<u64>) -> String {
    match line {
        Some(line) => format!("row {row} (line {line})"),
        None => format!("row {row}"),
    }
}

/// An error reading, validating or writing a dataset. Every message starts
/// with the file's path and names the row (1-based data row, plus the line for
/// text formats) and the column where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The path's extension is not one of the supported formats.
    #[error(
        "{}: unsupported file extension (expected .jsonl, .ndjson, .csv or .parquet)",
        path.display()
    )]
    UnsupportedFormat {
        /// The input or output path whose extension was not recognised.
        path: PathBuf,
    },

    /// The file could not be opened (or created).
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        /// The input file, or the output path when its temporary file could
        /// not be created.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// Reading the file failed.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The input file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// Writing, flushing, syncing or renaming the output failed.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The output path (not the temporary file being written).
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// A JSONL line is not valid JSON.
    #[error("{}: {}: not valid JSON: {message}", path.display(), at(*row, Some(*line)))]
    InvalidJson {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, counting data rows only (not blank lines).
        row: u64,
        /// 1-based line number in the file.
        line: u64,
        /// serde_json's description of the problem, ending with the column.
        message: String,
    },

    /// A JSONL line is valid JSON but not an object.
    #[error("{}: {}: is {found}, expected a JSON object", path.display(), at(*row, Some(*line)))]
    NotAnObject {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, counting data rows only (not blank lines).
        row: u64,
        /// 1-based line number in the file.
        line: u64,
        /// What the line holds instead, e.g. "an array".
        found: &'static str,
    },

    /// A row has no value for the input column.
    #[error("{}: {}: has no value for input column {column:?}", path.display(), at(*row, *line))]
    MissingInput {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, counting data rows only.
        row: u64,
        /// 1-based line where the row starts; `None` for Parquet.
        line: Option<u64>,
        /// The input column.
        column: String,
    },

    /// A row's value in the input column is not a string (e.g. a number, or
    /// null).
    #[error(
        "{}: {}: input column {column:?} is {found}, expected a string",
        path.display(),
        at(*row, *line)
    )]
    InputNotString {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, counting data rows only.
        row: u64,
        /// 1-based line where the row starts; `None` for Parquet.
        line: Option<u64>,
        /// The input column.
        column: String,
        /// What the value is instead, e.g. "a number" or "null".
        found: &'static str,
    },

    /// A CSV record has more or fewer fields than the header.
    #[error(
        "{}: {}: has {found} fields, expected {expected} (one per header column)",
        path.display(),
        at(*row, Some(*line))
    )]
    FieldCount {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, not counting the header.
        row: u64,
        /// 1-based line where the record starts.
        line: u64,
        /// The number of columns in the header.
        expected: u64,
        /// The number of fields in the record.
        found: u64,
    },

    /// A CSV cell is not valid UTF-8.
    #[error(
        "{}: {}: {} is not valid UTF-8",
        path.display(),
        at(*row, Some(*line)),
        match column { Some(c) => format!("column {c:?}"), None => "the header".to_string() }
    )]
    InvalidUtf8 {
        /// The input file.
        path: PathBuf,
        /// 1-based row number, not counting the header; 0 for the header.
        row: u64,
        /// 1-based line where the record starts.
        line: u64,
        /// The bad cell's column; `None` when the header itself is bad.
        column: Option<String>,
    },

    /// Any other CSV error.
    #[error("{}: {source}", path.display())]
    Csv {
        /// The file being read, or the output path when writing.
        path: PathBuf,
        /// The error from the csv crate.
        source: csv::Error,
    },

    /// The CSV header names a column twice.
    #[error("{}: column {column:?} appears more than once in the header", path.display())]
    DuplicateColumn {
        /// The input file.
        path: PathBuf,
        /// The repeated column name.
        column: String,
    },

    /// The input column does not exist.
    #[error(
        "{}: input column {column:?} not found; columns are: {}",
        path.display(),
        columns.join(", ")
    )]
    ColumnNotFound {
        /// The input file.
        path: PathBuf,
        /// The input column that was asked for.
        column: String,
        /// The columns the file does have, in file order.
        columns: Vec<String>,
    },

    /// The (Parquet) input column is not a string column.
    #[error(
        "{}: input column {column:?} has type {data_type}, expected a string type",
        path.display()
    )]
    ColumnType {
        /// The input file.
        path: PathBuf,
        /// The input column.
        column: String,
        /// The column's type in the file.
        data_type: DataType,
    },

    /// The output column or its error column already exists in the input.
    #[error("{}: output column {column:?} already exists in the input", path.display())]
    OutputColumnExists {
        /// The input file.
        path: PathBuf,
        /// The output or error column name that is already taken.
        column: String,
    },

    /// An input column has a type that CSV cannot hold (a nested type).
    #[error(
        "{}: column {column:?} has type {data_type}, which CSV cannot hold",
        path.display()
    )]
    CsvUnsupportedType {
        /// The output path.
        path: PathBuf,
        /// The first input column with a nested type.
        column: String,
        /// That column's type in the input.
        data_type: DataType,
    },

    /// An Arrow error (converting, encoding or decoding batches).
    #[error("{}: {source}", path.display())]
    Arrow {
        /// The file being read, or the output path when writing.
        path: PathBuf,
        /// The error from Arrow.
        source: ArrowError,
    },

    /// A Parquet error (reading or writing).
    #[error("{}: {source}", path.display())]
    Parquet {
        /// The file being read, or the output path when writing.
        path: PathBuf,
        /// The error from the parquet crate.
        source: ParquetError,
    },

    /// `Writer::write_chunk` got a different number of outputs than the
    /// chunk has rows.
    #[error(
        "{}: got {got} outputs for a chunk of {expected} rows starting at row {}",
        path.display(),
        first_row + 1
    )]
    OutputCount {
        /// The output path.
        path: PathBuf,
        /// 0-based index of the chunk's first row in the input.
        first_row: u64,
        /// The number of rows in the chunk.
        expected: usize,
        /// The number of outputs passed.
        got: usize,
    },

    /// `Writer::write_chunk` got a chunk read from an input of another format
    /// than the one the writer was created for.
    #[error(
        "{}: chunk starting at row {} was not read from a {expected:?} input",
        path.display(),
        first_row + 1
    )]
    ChunkFormat {
        /// The output path.
        path: PathBuf,
        /// 0-based index of the chunk's first row in the input.
        first_row: u64,
        /// The input format the writer was created for.
        expected: super::Format,
    },
}

/// "a number", "null", … for messages about JSON values.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
