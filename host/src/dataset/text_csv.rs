//! Streaming CSV records (header row required, strict record lengths).

use std::fs::File;
use std::path::{Path, PathBuf};

use csv::StringRecord;

use super::DatasetError;

/// Reads a CSV file a record at a time.
pub(crate) struct CsvRecords {
    path: PathBuf,
    reader: csv::Reader<File>,
    /// The header's cells.
    pub headers: Vec<String>,
    row: u64,
}

/// One CSV record.
pub(crate) struct Record {
    /// 1-based data row.
    pub row: u64,
    /// 1-based line where the record starts.
    pub line: u64,
    pub record: StringRecord,
}

impl CsvRecords {
    pub fn open(path: &Path) -> Result<CsvRecords, DatasetError> {
        let file = File::open(path).map_err(|source| DatasetError::Open { path: path.to_path_buf(), source })?;
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(false).buffer_capacity(64 * 1024).from_reader(file);
        let headers = match reader.headers() {
            Ok(h) => h.iter().map(str::to_string).collect(),
            Err(e) => return Err(csv_error(path, e, &[])),
        };
        Ok(CsvRecords { path: path.to_path_buf(), reader, headers, row: 0 })
    }

    /// The next record; `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record>, DatasetError> {
        let mut record = StringRecord::new();
        match self.reader.read_record(&mut record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                self.row += 1;
                let line = record.position().map_or(0, |p| p.line());
                Ok(Some(Record { row: self.row, line, record }))
            }
            Err(e) => Err(csv_error(&self.path, e, &self.headers)),
        }
    }

    /// The index of the input column, or an error listing the columns.
    pub fn column_index(&self, column: &str) -> Result<usize, DatasetError> {
        self.headers.iter().position(|h| h == column).ok_or_else(|| DatasetError::ColumnNotFound {
            path: self.path.clone(),
            column: column.to_string(),
            columns: self.headers.clone(),
        })
    }
}

/// The record's cells in `columns` (at `indexes`) as a JSON object of
/// strings: CSV has no other type.
pub(crate) fn object_of(record: &Record, columns: &[String], indexes: &[usize]) -> String {
    let picked: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .zip(indexes)
        .filter_map(|(c, &i)| record.record.get(i).map(|v| (c.clone(), serde_json::Value::from(v))))
        .collect();
    serde_json::Value::Object(picked).to_string()
}

/// The input cell of a record (always present with strict record lengths).
pub(crate) fn input_of(path: &Path, record: &Record, index: usize, column: &str) -> Result<String, DatasetError> {
    record.record.get(index).map(str::to_string).ok_or_else(|| DatasetError::MissingInput {
        path: path.to_path_buf(),
        row: record.row,
        line: Some(record.line),
        column: column.to_string(),
    })
}

/// Maps a `csv` error to one naming the row, line and column. The csv crate
/// counts the header as record 0, so a record number is the 1-based data row.
pub(crate) fn csv_error(path: &Path, error: csv::Error, headers: &[String]) -> DatasetError {
    let path = path.to_path_buf();
    match error.kind() {
        csv::ErrorKind::Io(_) => match error.into_kind() {
            csv::ErrorKind::Io(source) => DatasetError::Read { path, source },
            _ => unreachable!(),
        },
        csv::ErrorKind::UnequalLengths { pos: Some(pos), expected_len, len } => {
            DatasetError::FieldCount { path, row: pos.record(), line: pos.line(), expected: *expected_len, found: *len }
        }
        csv::ErrorKind::Utf8 { pos: Some(pos), err } => DatasetError::InvalidUtf8 {
            path,
            row: pos.record(),
            line: pos.line(),
            column: if pos.record() == 0 {
                None
            } else {
                Some(headers.get(err.field()).cloned().unwrap_or_else(|| format!("#{}", err.field() + 1)))
            },
        },
        _ => DatasetError::Csv { path, source: error },
    }
}
