//! Writing the input rows plus the output and error columns.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray};
use arrow_json::LineDelimitedWriter;
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef};
use csv::ByteRecord;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use serde_json::{Map, Value};
use tempfile::TempPath;

use super::reader::Rows;
use super::survey::Detail;
use super::{Chunk, DatasetError, Format, Survey};
use super::{error_column, infer, parquet_io};

const BUFFER: usize = 256 * 1024;

/// Writes the output file: every input column, then the output column, then
/// the error column.
pub struct Writer {
    // `sink` is declared (so dropped) before `temp`, which deletes the
    // temporary file if `finish` was never called.
    sink: Sink,
    temp: TempPath,
    path: PathBuf,
    input_format: Format,
    output_column: String,
    error_column: String,
}

enum Sink {
    /// JSONL or CSV input → JSONL. `columns`: the CSV header.
    Jsonl {
        out: BufWriter<File>,
        columns: Vec<String>,
    },
    /// JSONL or CSV input → CSV. `columns`: the input columns.
    Csv {
        out: csv::Writer<BufWriter<File>>,
        columns: Vec<String>,
        record: ByteRecord,
    },
    /// Parquet → JSONL. `schema`: input schema plus the two columns.
    ArrowJson {
        out: LineDelimitedWriter<BufWriter<File>>,
        schema: SchemaRef,
    },
    /// Parquet → CSV.
    ArrowCsv {
        out: arrow_csv::Writer<BufWriter<File>>,
        schema: SchemaRef,
    },
    /// Any input → Parquet. `json`: for a JSONL input.
    Parquet {
        out: Box<ArrowWriter<BufWriter<File>>>,
        schema: SchemaRef,
        json: Option<JsonDecode>,
    },
}

/// Converts JSONL rows to Arrow for a Parquet output.
struct JsonDecode {
    decoder: arrow_json::reader::Decoder,
    types: HashMap<String, DataType>,
}

impl Writer {
    /// Starts writing `path` (format from its extension) for the input that
    /// `survey` describes. Writes to a temporary file in the output's
    /// directory; nothing appears at `path` until [`Writer::finish`].
    pub fn create(
        path: &Path,
        survey: &Survey,
        output_column: &str,
    ) -> Result<Writer, DatasetError> {
        let output_format = Format::from_path(path)?;
        let error_col = error_column(output_column);
        for column in [output_column, error_col.as_str()] {
            if survey.columns.iter().any(|c| c == column) {
                return Err(DatasetError::OutputColumnExists {
                    path: survey.path.clone(),
                    column: column.to_string(),
                });
            }
        }
        let output_fields = [
            Arc::new(Field::new(output_column, DataType::Utf8, false)),
            Arc::new(Field::new(&error_col, DataType::Utf8, true)),
        ];
        // The Arrow schema of the output, when it is written through Arrow.
        let arrow_schema = match (&survey.detail, output_format) {
            (Detail::Parquet { schema }, _) => {
                if output_format == Format::Csv {
                    if let Some(field) = schema.fields().iter().find(|f| f.data_type().is_nested())
                    {
                        return Err(DatasetError::CsvUnsupportedType {
                            path: path.to_path_buf(),
                            column: field.name().clone(),
                            data_type: field.data_type().clone(),
                        });
                    }
                }
                let fields: Vec<FieldRef> = schema
                    .fields()
                    .iter()
                    .cloned()
                    .chain(output_fields)
                    .collect();
                Some(Arc::new(Schema::new_with_metadata(
                    fields,
                    schema.metadata().clone(),
                )))
            }
            (Detail::Jsonl { types }, Format::Parquet) => {
                let fields: Vec<FieldRef> = survey
                    .columns
                    .iter()
                    .zip(types)
                    .map(|(name, ty)| Arc::new(Field::new(name, ty.clone(), true)))
                    .chain(output_fields)
                    .collect();
                Some(Arc::new(Schema::new(fields)))
            }
            (Detail::Csv, Format::Parquet) => {
                let fields: Vec<FieldRef> = survey
                    .columns
                    .iter()
                    .map(|name| Arc::new(Field::new(name, DataType::Utf8, true)))
                    .chain(output_fields)
                    .collect();
                Some(Arc::new(Schema::new(fields)))
            }
            _ => None,
        };

        let temp = temp_file(path)?;
        let (file, temp) = temp.into_parts();
        let buf = BufWriter::with_capacity(BUFFER, file);
        let sink = match (survey.format, output_format, arrow_schema) {
            (Format::Jsonl | Format::Csv, Format::Jsonl, _) => Sink::Jsonl {
                out: buf,
                columns: survey.columns.clone(),
            },
            (Format::Jsonl | Format::Csv, Format::Csv, _) => {
                let mut out = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(buf);
                let header = survey
                    .columns
                    .iter()
                    .map(String::as_str)
                    .chain([output_column, error_col.as_str()]);
                out.write_record(header)
                    .map_err(|e| csv_write_error(path, e))?;
                Sink::Csv {
                    out,
                    columns: survey.columns.clone(),
                    record: ByteRecord::new(),
                }
            }
            (Format::Parquet, Format::Jsonl, Some(schema)) => Sink::ArrowJson {
                out: arrow_json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(buf),
                schema,
            },
            (Format::Parquet, Format::Csv, Some(schema)) => {
                let mut out = arrow_csv::WriterBuilder::new().with_header(true).build(buf);
                // Writes the header, even if no rows follow.
                out.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| arrow_error(path, e))?;
                Sink::ArrowCsv { out, schema }
            }
            (input_format, Format::Parquet, Some(schema)) => {
                let out = ArrowWriter::try_new(
                    buf,
                    schema.clone(),
                    Some(parquet_io::writer_properties()),
                )
                .map_err(|e| parquet_error(path, e))?;
                let json = match (&survey.detail, input_format) {
                    (Detail::Jsonl { types }, Format::Jsonl) => Some(JsonDecode {
                        decoder: arrow_json::ReaderBuilder::new(schema.clone())
                            .with_coerce_primitive(true)
                            .build_decoder()
                            .map_err(|e| arrow_error(path, e))?,
                        types: survey
                            .columns
                            .iter()
                            .cloned()
                            .zip(types.iter().cloned())
                            .collect(),
                    }),
                    _ => None,
                };
                Sink::Parquet {
                    out: Box::new(out),
                    schema,
                    json,
                }
            }
            (_, _, None) => unreachable!("an Arrow schema is built for every Arrow output"),
        };
        Ok(Writer {
            sink,
            temp,
            path: path.to_path_buf(),
            input_format: survey.format,
            output_column: output_column.to_string(),
            error_column: error_col,
        })
    }

    /// Writes `chunk`'s rows with their outputs: `outputs[i]` belongs to
    /// `chunk.inputs[i]`. `Ok(text)` is the generated output; `Err(message)`
    /// means the row failed: its output is empty and `message` goes into the
    /// error column.
    pub fn write_chunk(
        &mut self,
        chunk: Chunk,
        outputs: &[Result<String, String>],
    ) -> Result<(), DatasetError> {
        if outputs.len() != chunk.len() {
            return Err(DatasetError::OutputCount {
                path: self.path.clone(),
                first_row: chunk.first_row,
                expected: chunk.len(),
                got: outputs.len(),
            });
        }
        let chunk_format = match &chunk.rows {
            Rows::Jsonl(_) => Format::Jsonl,
            Rows::Csv(_) => Format::Csv,
            Rows::Parquet(_) => Format::Parquet,
        };
        if chunk_format != self.input_format {
            return Err(DatasetError::ChunkFormat {
                path: self.path.clone(),
                first_row: chunk.first_row,
                expected: self.input_format,
            });
        }
        let texts: Vec<&str> = outputs
            .iter()
            .map(|o| o.as_ref().map_or("", String::as_str))
            .collect();
        let errors: Vec<Option<&str>> = outputs
            .iter()
            .map(|o| o.as_ref().err().map(String::as_str))
            .collect();
        let path = self.path.as_path();
        let output_column = self.output_column.as_str();
        let error_column = self.error_column.as_str();
        let write_error = |source: std::io::Error| DatasetError::Write {
            path: path.to_path_buf(),
            source,
        };

        match (&mut self.sink, chunk.rows) {
            (Sink::Jsonl { out, .. }, Rows::Jsonl(objects)) => {
                for (i, mut object) in objects.into_iter().enumerate() {
                    object.insert(output_column.to_string(), Value::from(texts[i]));
                    object.insert(
                        error_column.to_string(),
                        errors[i].map_or(Value::Null, Value::from),
                    );
                    write_json_line(out, &object).map_err(write_error)?;
                }
            }
            (Sink::Jsonl { out, columns }, Rows::Csv(records)) => {
                for (i, record) in records.iter().enumerate() {
                    let mut object = Map::with_capacity(columns.len() + 2);
                    for (name, cell) in columns.iter().zip(record.iter()) {
                        object.insert(name.clone(), Value::from(cell));
                    }
                    object.insert(output_column.to_string(), Value::from(texts[i]));
                    object.insert(
                        error_column.to_string(),
                        errors[i].map_or(Value::Null, Value::from),
                    );
                    write_json_line(out, &object).map_err(write_error)?;
                }
            }
            (
                Sink::Csv {
                    out,
                    columns,
                    record,
                },
                Rows::Jsonl(objects),
            ) => {
                for (i, object) in objects.iter().enumerate() {
                    record.clear();
                    for name in columns.iter() {
                        match object.get(name) {
                            None | Some(Value::Null) => record.push_field(b""),
                            Some(Value::String(s)) => record.push_field(s.as_bytes()),
                            Some(other) => record.push_field(other.to_string().as_bytes()),
                        }
                    }
                    record.push_field(texts[i].as_bytes());
                    record.push_field(errors[i].unwrap_or("").as_bytes());
                    out.write_byte_record(record)
                        .map_err(|e| csv_write_error(path, e))?;
                }
            }
            (Sink::Csv { out, record, .. }, Rows::Csv(records)) => {
                for (i, input) in records.iter().enumerate() {
                    record.clear();
                    for cell in input.iter() {
                        record.push_field(cell.as_bytes());
                    }
                    record.push_field(texts[i].as_bytes());
                    record.push_field(errors[i].unwrap_or("").as_bytes());
                    out.write_byte_record(record)
                        .map_err(|e| csv_write_error(path, e))?;
                }
            }
            (Sink::ArrowJson { out, schema }, Rows::Parquet(batches)) => {
                each_with_outputs(batches, schema, &texts, &errors, |batch| out.write(batch))
                    .map_err(|e| arrow_error(path, e))?;
            }
            (Sink::ArrowCsv { out, schema }, Rows::Parquet(batches)) => {
                each_with_outputs(batches, schema, &texts, &errors, |batch| out.write(batch))
                    .map_err(|e| arrow_error(path, e))?;
            }
            (Sink::Parquet { out, schema, json }, rows) => {
                let batches: Vec<RecordBatch> = match rows {
                    Rows::Parquet(batches) => {
                        let mut offset = 0;
                        let mut converted = Vec::with_capacity(batches.len());
                        for batch in batches {
                            let n = batch.num_rows();
                            converted.push(
                                with_outputs(
                                    &batch,
                                    schema,
                                    &texts[offset..offset + n],
                                    &errors[offset..offset + n],
                                )
                                .map_err(|e| arrow_error(path, e))?,
                            );
                            offset += n;
                        }
                        converted
                    }
                    Rows::Csv(records) => {
                        let width = schema.fields().len() - 2;
                        let mut columns: Vec<ArrayRef> = (0..width)
                            .map(|c| {
                                Arc::new(StringArray::from_iter_values(
                                    records.iter().map(|r| r.get(c).unwrap_or("")),
                                )) as ArrayRef
                            })
                            .collect();
                        columns.push(Arc::new(StringArray::from_iter_values(texts.iter())));
                        columns.push(Arc::new(StringArray::from(errors.clone())));
                        vec![
                            RecordBatch::try_new_with_options(
                                schema.clone(),
                                columns,
                                &RecordBatchOptions::new().with_row_count(Some(records.len())),
                            )
                            .map_err(|e| arrow_error(path, e))?,
                        ]
                    }
                    Rows::Jsonl(mut objects) => {
                        let json = json.as_mut().expect("a JSONL input has a decoder");
                        for (i, object) in objects.iter_mut().enumerate() {
                            for (key, value) in object.iter_mut() {
                                if let Some(ty) = json.types.get(key) {
                                    if infer::needs_conform(value, ty) {
                                        *value = infer::conform(std::mem::take(value), ty);
                                    }
                                }
                            }
                            object.insert(output_column.to_string(), Value::from(texts[i]));
                            object.insert(
                                error_column.to_string(),
                                errors[i].map_or(Value::Null, Value::from),
                            );
                        }
                        json.decoder
                            .serialize(&objects)
                            .map_err(|e| arrow_error(path, e))?;
                        drop(objects);
                        json.decoder
                            .flush()
                            .map_err(|e| arrow_error(path, e))?
                            .into_iter()
                            .collect()
                    }
                };
                for batch in &batches {
                    out.write(batch).map_err(|e| parquet_error(path, e))?;
                    if out.in_progress_size() > parquet_io::MAX_IN_PROGRESS_BYTES {
                        out.flush().map_err(|e| parquet_error(path, e))?;
                    }
                }
            }
            _ => unreachable!("the chunk's format was checked above"),
        }
        Ok(())
    }

    /// Flushes everything, fsyncs the temporary file, and renames it onto the
    /// output path atomically.
    pub fn finish(self) -> Result<(), DatasetError> {
        let Writer {
            sink, temp, path, ..
        } = self;
        let write_error = |source: std::io::Error| DatasetError::Write {
            path: path.clone(),
            source,
        };
        let buf = match sink {
            Sink::Jsonl { out, .. } => out,
            Sink::Csv { out, .. } => out.into_inner().map_err(|e| write_error(e.into_error()))?,
            Sink::ArrowJson { mut out, .. } => {
                out.finish().map_err(|e| arrow_error(&path, e))?;
                out.into_inner()
            }
            Sink::ArrowCsv { out, .. } => out.into_inner(),
            Sink::Parquet { out, .. } => out.into_inner().map_err(|e| parquet_error(&path, e))?,
        };
        let file = buf.into_inner().map_err(|e| write_error(e.into_error()))?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        temp.persist(&path).map_err(|e| write_error(e.error))?;
        sync_parent_dir(&path);
        tracing::debug!(path = %path.display(), "wrote output");
        Ok(())
    }
}

/// A new temporary file next to `path`.
fn temp_file(path: &Path) -> Result<tempfile::NamedTempFile, DatasetError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Like a file created normally: 0o666 less the umask.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
        .tempfile_in(dir)
        .map_err(|source| DatasetError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes the rename durable (best effort: not every file system supports
/// syncing a directory).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync directory");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// `batch` with the output and error columns appended, under `schema`.
fn with_outputs(
    batch: &RecordBatch,
    schema: &SchemaRef,
    texts: &[&str],
    errors: &[Option<&str>],
) -> Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from_iter_values(texts.iter())));
    columns.push(Arc::new(StringArray::from(errors.to_vec())));
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

fn write_json_line(out: &mut BufWriter<File>, object: &Map<String, Value>) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, object)?;
    out.write_all(b"\n")
}

fn csv_write_error(path: &Path, error: csv::Error) -> DatasetError {
    if error.is_io_error() {
        if let csv::ErrorKind::Io(source) = error.into_kind() {
            return DatasetError::Write {
                path: path.to_path_buf(),
                source,
            };
        }
        unreachable!()
    }
    DatasetError::Csv {
        path: path.to_path_buf(),
        source: error,
    }
}

fn arrow_error(path: &Path, source: ArrowError) -> DatasetError {
    DatasetError::Arrow {
        path: path.to_path_buf(),
        source,
    }
}

fn parquet_error(path: &Path, source: ParquetError) -> DatasetError {
    DatasetError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// Hands each of `batches`, with its slice of the outputs appended, to `write`.
fn each_with_outputs(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
    texts: &[&str],
    errors: &[Option<&str>],
    mut write: impl FnMut(&RecordBatch) -> Result<(), ArrowError>,
) -> Result<(), ArrowError> {
    let mut offset = 0;
    for batch in batches {
        let n = batch.num_rows();
        write(&with_outputs(&batch, schema, &texts[offset..offset + n], &errors[offset..offset + n])?)?;
        offset += n;
    }
    Ok(())
}
