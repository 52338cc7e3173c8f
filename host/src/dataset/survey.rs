//! The validation pre-pass over an input file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ProjectionMask;

use super::{DatasetError, Format, Survey};
use super::{error_column, infer, jsonl, parquet_io, text_csv};

/// Format-specific facts the writer needs.
#[derive(Debug, Clone)]
pub(crate) enum Detail {
    /// The inferred Arrow type of each column (aligned with
    /// `Survey::columns`), for writing Parquet.
    Jsonl {
        types: Vec<DataType>,
    },
    Csv,
    /// The input's Arrow schema.
    Parquet {
        schema: SchemaRef,
    },
}

/// Streams the whole input once and checks that it parses, that every row
/// has a string value in `input_column` (present, not null, a string), and
/// that neither `output_column` nor [`error_column`]`(output_column)` already
/// exist. Never modifies the input.
pub fn survey(
    path: &Path,
    input_column: &str,
    output_column: &str,
) -> Result<Survey, DatasetError> {
    let format = Format::from_path(path)?;
    let error_col = error_column(output_column);
    let check_new = |column: &str| -> Result<(), DatasetError> {
        if column == output_column || column == error_col {
            Err(DatasetError::OutputColumnExists {
                path: path.to_path_buf(),
                column: column.to_string(),
            })
        } else {
            Ok(())
        }
    };
    let survey = match format {
        Format::Jsonl => {
            let mut lines = jsonl::JsonLines::open(path)?;
            let mut columns: Vec<String> = Vec::new();
            let mut types: Vec<DataType> = Vec::new();
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut rows = 0;
            while let Some(row) = lines.next_row()? {
                jsonl::input_of(path, &row, input_column)?;
                for (key, value) in &row.object {
                    match index.get(key) {
                        Some(&i) => infer::absorb(&mut types[i], value),
                        None => {
                            check_new(key)?;
                            index.insert(key.clone(), columns.len());
                            columns.push(key.clone());
                            types.push(infer::infer(value));
                        }
                    }
                }
                rows = row.row;
            }
            let types = types.into_iter().map(infer::finalize).collect();
            Survey {
                format,
                rows,
                columns,
                path: path.to_path_buf(),
                detail: Detail::Jsonl { types },
            }
        }
        Format::Csv => {
            let mut records = text_csv::CsvRecords::open(path)?;
            let columns = records.headers.clone();
            let mut seen = HashSet::new();
            for column in &columns {
                if !seen.insert(column.as_str()) {
                    return Err(DatasetError::DuplicateColumn {
                        path: path.to_path_buf(),
                        column: column.clone(),
                    });
                }
            }
            let input = records.column_index(input_column)?;
            for column in &columns {
                check_new(column)?;
            }
            let mut rows = 0;
            while let Some(record) = records.next_record()? {
                text_csv::input_of(path, &record, input, input_column)?;
                rows = record.row;
            }
            Survey {
                format,
                rows,
                columns,
                path: path.to_path_buf(),
                detail: Detail::Csv,
            }
        }
        Format::Parquet => {
            let builder = parquet_io::open(path)?;
            let schema = builder.schema().clone();
            let input = parquet_io::input_index(path, &schema, input_column)?;
            let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            for column in &columns {
                check_new(column)?;
            }
            // Only the input column needs reading.
            let mask = ProjectionMask::roots(builder.parquet_schema(), [input]);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(8192)
                .build()
                .map_err(|source| DatasetError::Parquet {
                    path: path.to_path_buf(),
                    source,
                })?;
            let mut rows: u64 = 0;
            for batch in reader {
                let batch = batch.map_err(|source| DatasetError::Arrow {
                    path: path.to_path_buf(),
                    source,
                })?;
                parquet_io::check_no_nulls(path, input_column, batch.column(0).as_ref(), rows)?;
                rows += batch.num_rows() as u64;
            }
            Survey {
                format,
                rows,
                columns,
                path: path.to_path_buf(),
                detail: Detail::Parquet { schema },
            }
        }
    };
    tracing::debug!(
        path = %path.display(),
        format = ?survey.format,
        rows = survey.rows,
        columns = survey.columns.len(),
        "surveyed input"
    );
    Ok(survey)
}
