//! Writing the input rows plus the output and error columns.
//!
//! [`Writer`] owns what every output shares: the checks on a chunk, the
//! temporary file, and the fsync-and-rename that publishes it. What goes into
//! that file is up to a sink, one per way of encoding it (see [`sink`]), so a
//! change to one output format stays in that format's module.

mod csv;
mod jsonl;
mod outputs;
mod parquet;
mod sink;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempPath};

pub use self::outputs::{Expanded, Kind};
use self::outputs::{Names, Outputs};
use self::sink::Sink;
use super::survey::Detail;
use super::{Chunk, DatasetError, Format, Survey};

/// The output's write buffer: sinks write many small pieces (a line, a
/// cell), and a large buffer keeps the system calls few.
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
    names: Names,
}

impl Writer {
    /// Starts writing `path` (format from its extension) for the input that
    /// `survey` describes. Writes to a temporary file in the output's
    /// directory; nothing appears at `path` until [`Writer::finish`].
    pub fn create(path: &Path, survey: &Survey, output_column: &str) -> Result<Writer, DatasetError> {
        Writer::create_expanded(path, survey, output_column, &[])
    }

    /// [`Writer::create`], with a column for each of `expanded`: the
    /// top-level properties of the outputs' JSON (`--expand-json`), written
    /// after the input columns, before the output column.
    pub fn create_expanded(
        path: &Path,
        survey: &Survey,
        output_column: &str,
        expanded: &[Expanded],
    ) -> Result<Writer, DatasetError> {
        let output_format = Format::from_path(path)?;
        let names = Names::new(output_column, expanded);
        names.check_new(survey)?;
        // Checked before the temporary file exists, so that a file that can
        // never be written is refused without touching the directory.
        if let (Detail::Parquet { schema }, Format::Csv) = (&survey.detail, output_format) {
            csv::check_flat(path, schema)?;
        }
        let (file, temp) = temp_file(path)?.into_parts();
        let out = BufWriter::with_capacity(BUFFER, file);
        let sink = Sink::create(out, survey, output_format, &names).map_err(|e| e.at(path))?;
        Ok(Writer { sink, temp, path: path.to_path_buf(), input_format: survey.format, names })
    }

    /// Writes `chunk`'s rows with their outputs: `outputs[i]` belongs to
    /// `chunk.inputs[i]`. `Ok(text)` is the generated output; `Err(message)`
    /// means the row failed: its output is empty and `message` goes into the
    /// error column.
    pub fn write_chunk(&mut self, chunk: Chunk, outputs: &[Result<String, String>]) -> Result<(), DatasetError> {
        self.check(&chunk, outputs.len())?;
        let outputs = Outputs::new(&self.names, outputs);
        self.sink.write(chunk.rows, &outputs).map_err(|e| e.at(&self.path))
    }

    /// Errors unless `chunk` has `outputs` rows and was read from an input of
    /// the format this writer was created for (its sink relies on both).
    fn check(&self, chunk: &Chunk, outputs: usize) -> Result<(), DatasetError> {
        if outputs != chunk.len() {
            return Err(DatasetError::OutputCount {
                path: self.path.clone(),
                first_row: chunk.first_row,
                expected: chunk.len(),
                got: outputs,
            });
        }
        if chunk.rows.format() != self.input_format {
            return Err(DatasetError::ChunkFormat {
                path: self.path.clone(),
                first_row: chunk.first_row,
                expected: self.input_format,
            });
        }
        Ok(())
    }

    /// Flushes everything, fsyncs the temporary file, and renames it onto the
    /// output path atomically.
    pub fn finish(self) -> Result<(), DatasetError> {
        let Writer { sink, temp, path, .. } = self;
        let buf = sink.finish().map_err(|e| e.at(&path))?;
        let write_error = |source: std::io::Error| DatasetError::Write { path: path.clone(), source };
        let file = buf.into_inner().map_err(|e| write_error(e.into_error()))?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        temp.persist(&path).map_err(|e| write_error(e.error))?;
        sync_parent_dir(&path);
        tracing::debug!(path = %path.display(), "wrote output");
        Ok(())
    }
}

/// A new temporary file next to `path`, so that the final rename stays on one
/// file system (and so is atomic).
fn temp_file(path: &Path) -> Result<NamedTempFile, DatasetError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Like a file created normally: 0o666 less the umask.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(parent_dir(path)).map_err(|source| DatasetError::Open { path: path.to_path_buf(), source })
}

/// Makes the rename durable (best effort: not every file system supports
/// syncing a directory).
fn sync_parent_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = parent_dir(path);
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync directory");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}
