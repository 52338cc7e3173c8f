//! Streaming JSONL rows: one JSON object per non-blank line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::DatasetError;
use super::error::json_kind;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One JSONL row.
pub(crate) struct Row {
    /// 1-based data row.
    pub row: u64,
    /// 1-based line.
    pub line: u64,
    pub object: Map<String, Value>,
}

/// Reads a JSONL file a line at a time.
pub(crate) struct JsonLines {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line: u64,
    row: u64,
}

impl JsonLines {
    pub fn open(path: &Path) -> Result<JsonLines, DatasetError> {
        let file = File::open(path).map_err(|source| DatasetError::Open { path: path.to_path_buf(), source })?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(64 * 1024, file),
            buf: Vec::new(),
            line: 0,
            row: 0,
        })
    }

    /// The next row, skipping blank lines; `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Row>, DatasetError> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| DatasetError::Read { path: self.path.clone(), source })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut bytes = &self.buf[..];
            if self.line == 1 && bytes.starts_with(BOM) {
                bytes = &bytes[BOM.len()..];
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.row += 1;
            let value: Value = serde_json::from_slice(bytes).map_err(|e| DatasetError::InvalidJson {
                path: self.path.clone(),
                row: self.row,
                line: self.line,
                message: json_message(&e),
            })?;
            return match value {
                Value::Object(object) => Ok(Some(Row { row: self.row, line: self.line, object })),
                other => Err(DatasetError::NotAnObject {
                    path: self.path.clone(),
                    row: self.row,
                    line: self.line,
                    found: json_kind(&other),
                }),
            };
        }
    }
}

/// serde_json's message without its "at line 1 column N" suffix (the line is
/// always 1 as each line is parsed alone), plus "at column N".
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    if e.column() > 0 { format!("{text} at column {}", e.column()) } else { text.to_string() }
}

/// The row's `columns` as a JSON object, as the values are; a missing one
/// is left out.
pub(crate) fn object_of(row: &Row, columns: &[String]) -> String {
    let picked: Map<String, Value> =
        columns.iter().filter_map(|c| row.object.get(c).map(|v| (c.clone(), v.clone()))).collect();
    Value::Object(picked).to_string()
}

/// The string in `column` of a JSONL row, or the error saying why not.
pub(crate) fn input_of(path: &Path, row: &Row, column: &str) -> Result<String, DatasetError> {
    match row.object.get(column) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(DatasetError::MissingInput {
            path: path.to_path_buf(),
            row: row.row,
            line: Some(row.line),
            column: column.to_string(),
        }),
        Some(other) => Err(DatasetError::InputNotString {
            path: path.to_path_buf(),
            row: row.row,
            line: Some(row.line),
            column: column.to_string(),
            found: json_kind(other),
        }),
    }
}
