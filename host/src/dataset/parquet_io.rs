//! Parquet helpers: opening, locating the input column, extracting strings,
//! writer properties.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::DatasetError;

/// Rows per Parquet row group written.
pub(crate) const MAX_ROW_GROUP_ROWS: usize = 64 * 1024;
/// Flush the in-progress row group once its buffered size exceeds this.
pub(crate) const MAX_IN_PROGRESS_BYTES: usize = 128 * 1024 * 1024;

pub(crate) fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Open { path: path.to_path_buf(), source })?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|source| DatasetError::Parquet { path: path.to_path_buf(), source })
}

/// The index of the (top-level) input column, which must hold strings.
pub(crate) fn input_index(path: &Path, schema: &Schema, column: &str) -> Result<usize, DatasetError> {
    let index =
        schema.fields().iter().position(|f| f.name() == column).ok_or_else(|| DatasetError::ColumnNotFound {
            path: path.to_path_buf(),
            column: column.to_string(),
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })?;
    let data_type = schema.field(index).data_type();
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(index),
        other => Err(DatasetError::ColumnType {
            path: path.to_path_buf(),
            column: column.to_string(),
            data_type: other.clone(),
        }),
    }
}

/// The indexes of the (top-level) `columns`, of any type.
pub(crate) fn column_indexes(path: &Path, schema: &Schema, columns: &[String]) -> Result<Vec<usize>, DatasetError> {
    columns
        .iter()
        .map(|column| {
            schema.fields().iter().position(|f| f.name() == column).ok_or_else(|| DatasetError::ColumnNotFound {
                path: path.to_path_buf(),
                column: column.clone(),
                columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            })
        })
        .collect()
}

/// Each row of `batch`'s `columns` as a JSON object, appended to `out`:
/// arrow-json's rendering (numbers as numbers, lists and structs as JSON),
/// nulls left out.
pub(crate) fn push_objects(
    path: &Path,
    batch: &arrow_array::RecordBatch,
    columns: &[usize],
    out: &mut Vec<String>,
) -> Result<(), DatasetError> {
    let projected =
        batch.project(columns).map_err(|source| DatasetError::Arrow { path: path.to_path_buf(), source })?;
    let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
    writer.write(&projected).map_err(|source| DatasetError::Arrow { path: path.to_path_buf(), source })?;
    writer.finish().map_err(|source| DatasetError::Arrow { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(writer.into_inner()).expect("arrow-json writes UTF-8");
    let before = out.len();
    out.extend(text.lines().map(str::to_string));
    // JSON escapes newlines, so each row is one line.
    assert_eq!(out.len() - before, batch.num_rows(), "arrow-json wrote one line per row");
    Ok(())
}

/// Errors naming the first null of `array` (the input column of the rows
/// starting at 0-based `first_row`), if any.
pub(crate) fn check_no_nulls(path: &Path, column: &str, array: &dyn Array, first_row: u64) -> Result<(), DatasetError> {
    if array.null_count() == 0 {
        return Ok(());
    }
    let i = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
    Err(DatasetError::InputNotString {
        path: path.to_path_buf(),
        row: first_row + i as u64 + 1,
        line: None,
        column: column.to_string(),
        found: "null",
    })
}

/// Appends the strings of `array` (the input column of the rows starting at
/// 0-based `first_row`) to `out`; a null is an error naming its row.
pub(crate) fn push_strings(
    path: &Path,
    column: &str,
    array: &ArrayRef,
    first_row: u64,
    out: &mut Vec<String>,
) -> Result<(), DatasetError> {
    check_no_nulls(path, column, array.as_ref(), first_row)?;
    match array.data_type() {
        DataType::Utf8 => out.extend(array.as_string::<i32>().iter().map(|s| s.unwrap_or("").to_string())),
        DataType::LargeUtf8 => out.extend(array.as_string::<i64>().iter().map(|s| s.unwrap_or("").to_string())),
        DataType::Utf8View => out.extend(array.as_string_view().iter().map(|s| s.unwrap_or("").to_string())),
        other => {
            return Err(DatasetError::ColumnType {
                path: path.to_path_buf(),
                column: column.to_string(),
                data_type: other.clone(),
            });
        }
    }
    Ok(())
}

/// Properties for every Parquet file written: zstd, bounded row groups.
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .build()
}
