//! Reading input datasets and writing them back out with a generated column.
//!
//! The run loop uses this module in four steps:
//!
//! 1. [`survey`] streams the whole input once (a validation pre-pass): the file
//!    must parse, every row must hold a string in the input column, and neither
//!    the output column nor its error column ([`error_column`]) may already
//!    exist. The input is never modified.
//! 2. [`Reader::open`] + [`Reader::next_chunk`] stream the rows again, a chunk
//!    at a time, in file order.
//! 3. [`Writer::create`] + [`Writer::write_chunk`] write every chunk with its
//!    outputs to a temporary file next to the output path.
//! 4. [`Writer::finish`] flushes, fsyncs and atomically renames the temporary
//!    file onto the output path. Until then nothing appears at that path; a
//!    `Writer` dropped without `finish` removes its temporary file.
//!
//! Files may be larger than memory: every pair of formats streams, and memory
//! is bounded by the chunk size (plus one Parquet read batch and the Parquet
//! writer's in-progress row group, which is flushed as it grows).
//!
//! # Formats
//!
//! The format of a file is chosen by its extension, case-insensitively:
//! `.jsonl` or `.ndjson` ([`Format::Jsonl`]), `.csv` ([`Format::Csv`]),
//! `.parquet` ([`Format::Parquet`]). The output format is the output path's
//! extension; input and output formats may differ (all 3×3 pairs work).
//!
//! Every input column is written unchanged, in input order, followed by
//! `<output>` and then `<output>_error`. Row order is preserved. The error
//! column is always present: null (JSONL, Parquet) or empty (CSV) when the row
//! succeeded, the error message when it failed (the output is then empty).
//!
//! ## JSONL
//!
//! Each non-blank line is a JSON object; anything else (invalid JSON, or JSON
//! that is not an object) is an error naming the row and the line. Blank
//! (whitespace-only) lines are skipped and are not rows, and a UTF-8 BOM at the
//! start of the file is ignored. Keys keep their order. Different rows may have
//! different keys. JSONL→JSONL writes each object as read (re-serialised by
//! `serde_json`) plus `"<output>": text, "<output>_error": null | message`.
//!
//! ## CSV
//!
//! A header row is required; cells are strings. Record lengths are strict: a
//! record with more or fewer fields than the header is an error naming the row
//! and line. Quotes, commas, newlines inside cells and unicode round-trip
//! exactly; a UTF-8 BOM at the start is ignored. An empty cell in the input
//! column is an empty string (allowed). A header naming the same column twice
//! is rejected (the columns could not be told apart in JSONL or Parquet).
//!
//! ## Parquet
//!
//! Read with `ParquetRecordBatchReaderBuilder` in batches (the file is never
//! loaded whole; `survey` reads only the input column). The input column must
//! be a top-level `Utf8`, `LargeUtf8` or `Utf8View` column; a null in it is an
//! error naming the row. Written with `ArrowWriter` (zstd), with row groups of
//! at most 65 536 rows, flushed early when the in-progress row group grows
//! large, so the writer's memory stays bounded.
//!
//! ## Conversions
//!
//! * Parquet→Parquet keeps the input schema (including metadata) and arrays
//!   exactly and appends two columns: `<output>` (`Utf8`, non-null) and
//!   `<output>_error` (`Utf8`, nullable).
//! * Parquet→JSONL: arrow-json's `LineDelimitedWriter` on each batch with the
//!   two columns appended, with explicit nulls (so a null input value is
//!   written as `null` and the error key is always present).
//! * Parquet→CSV: arrow-csv's writer on each batch with the two columns
//!   appended (nulls become empty cells). A nested column (list, struct, map,
//!   …), which CSV cannot hold, is rejected by [`Writer::create`] with an
//!   error naming the column.
//! * JSONL/CSV→JSONL/CSV go row by row. CSV cells from JSON values: strings as
//!   they are, null or missing → empty, anything else → its JSON text. The CSV
//!   header for a JSONL source is the union of the keys over the whole file in
//!   first-seen order (collected by `survey`). CSV→JSONL writes every cell as a
//!   JSON string.
//! * CSV→Parquet: every input column is `Utf8` (nullable; cells are written as
//!   strings, empty cells as empty strings).
//! * JSONL→Parquet: the schema is inferred by `survey` over all rows, in
//!   first-seen key order, all columns nullable: booleans → `Boolean`, integers
//!   → `Int64`, other numbers (or a mix of integers and other numbers) →
//!   `Float64`, strings → `Utf8`, arrays → `List` of the merged element type,
//!   objects → `Struct` of the merged fields. A column (or nested field) whose
//!   values disagree in kind (e.g. a number in one row and a string or object in
//!   another), that is always null, or that is always an empty object, becomes
//!   `Utf8`, and its non-string values are stored as their JSON text. Rows are
//!   then converted with arrow-json's `Decoder` (`serialize` + `flush`).

mod error;
mod infer;
mod jsonl;
mod parquet_io;
mod reader;
mod survey;
mod text_csv;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::DatasetError;
pub use reader::{Chunk, Reader};
pub use survey::{survey, survey_input};
pub use writer::{Expanded, Kind, Writer};

/// A dataset file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines: one JSON object per line (`.jsonl`, `.ndjson`).
    Jsonl,
    /// Comma-separated values with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`).
    Parquet,
}

impl Format {
    /// The format of `path`, by its extension (case-insensitive): `.jsonl` or
    /// `.ndjson`, `.csv`, `.parquet`.
    pub fn from_path(path: &Path) -> Result<Format, DatasetError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("parquet") => Ok(Format::Parquet),
            _ => Err(DatasetError::UnsupportedFormat { path: path.to_path_buf() }),
        }
    }
}

/// What a row's input is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One column's text, which every row must have as a string.
    Column(String),
    /// The columns a prompt template reads, passed on as one JSON object per
    /// row; any type, and a missing or null value is left out.
    Columns(Vec<String>),
}

/// The name of the column that holds a row's error message:
/// `"<output_column>_error"`.
pub fn error_column(output_column: &str) -> String {
    format!("{output_column}_error")
}

/// What [`survey`] learnt about an input file, needed by [`Reader::open`] and
/// [`Writer::create`].
#[derive(Debug, Clone)]
pub struct Survey {
    /// The input's format.
    pub format: Format,
    /// The number of data rows.
    pub rows: u64,
    /// The input's columns, in order. For JSONL: the union of the keys over
    /// all rows, in first-seen order.
    pub columns: Vec<String>,
    /// The surveyed input file.
    path: PathBuf,
    /// Format-specific details the writer needs.
    detail: survey::Detail,
}
