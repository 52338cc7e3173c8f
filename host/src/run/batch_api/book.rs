//! The durable record of a batch-API run, in a folder beside the output
//! (`<output>.batchgen-batches/`): `state.json` lists the jobs not yet
//! collected, each with its phase, and every job has its request lines
//! (`job-N.jsonl`, what is uploaded) and its rows' work keys
//! (`job-N.keys`, one per line, in the same order).
//!
//! A job moves `planned` → `submitting` → `live` and is dropped from the
//! state once its results are in the journal. `state.json` is replaced
//! atomically (written aside, synced, renamed, the folder synced), so
//! whatever kills the process, a rerun finds each job in a phase it knows
//! what to do with: `submitting` is the only uncertain one (the create may
//! or may not have gone through) and is resolved by asking the provider
//! (`batch-jobs.find`) before anything is sent again.

use crate::config::Job;
use crate::journal::WorkKey;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Bumped when the state file's meaning changes.
const VERSION: u32 = 1;

/// An I/O error on the run's batch files.
#[derive(Debug, thiserror::Error)]
#[error("batch job files {path}: {source}")]
pub struct BookError {
    /// The file or folder.
    pub path: String,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BookError + '_ {
    move |source| BookError { path: path.display().to_string(), source }
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Its files are written; nothing was sent.
    Planned,
    /// Its create was started at `since` (Unix seconds) and may have gone
    /// through without its id being recorded.
    Submitting {
        /// When the create started.
        since: u64,
    },
    /// The provider has it under `id`.
    Live {
        /// The provider's job id.
        id: String,
    },
}

/// A job of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEntry {
    /// The job's number within the run, unique; names its files.
    pub chunk: u32,
    /// Its rows.
    pub requests: u32,
    /// The attempt its rows are on (1 for a first job, +1 for each
    /// follow-up job of rows that failed in a way worth retrying).
    pub attempt: u32,
    /// Where it stands.
    #[serde(flatten)]
    pub phase: Phase,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    /// The run's id, sent as job metadata so an unrecorded job can be found.
    run: String,
    /// The job's parameters, for `batchgen cancel`, which has only the
    /// output's name to go on.
    job: Option<Job>,
    next_chunk: u32,
    jobs: Vec<JobEntry>,
}

/// The run's jobs and their files.
pub struct Book {
    dir: PathBuf,
    state: State,
}

impl Book {
    /// The folder that goes with `output`.
    pub fn dir_for(output: &Path) -> PathBuf {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".batchgen-batches");
        output.with_file_name(name)
    }

    /// Opens the record of `output`'s batch run, or starts an empty one
    /// (not written until [`Book::save`]).
    pub fn open(output: &Path) -> Result<Book, BookError> {
        let dir = Book::dir_for(output);
        let path = dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|e| BookError {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                State { version: VERSION, run: new_run_id(), job: None, next_chunk: 0, jobs: Vec::new() }
            }
            Err(error) => return Err(io(&path)(error)),
        };
        if state.version != VERSION {
            return Err(BookError {
                path: path.display().to_string(),
                source: std::io::Error::other(format!("state version {} is not {VERSION}", state.version)),
            });
        }
        Ok(Book { dir, state })
    }

    /// The run's id.
    pub fn run(&self) -> &str {
        &self.state.run
    }

    /// The parameters of the run that recorded these jobs.
    pub fn job(&self) -> Option<&Job> {
        self.state.job.as_ref()
    }

    /// Records the run's parameters and saves.
    pub fn set_job(&mut self, job: &Job) -> Result<(), BookError> {
        self.state.job = Some(job.clone());
        self.save()
    }

    /// Deletes the record: every job is collected and the output written.
    pub fn remove(self) -> Result<(), BookError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io(&self.dir)(error)),
            _ => Ok(()),
        }
    }

    /// The jobs not yet collected, oldest first.
    pub fn jobs(&self) -> &[JobEntry] {
        &self.state.jobs
    }

    /// Jobs the provider has or may have.
    pub fn sent(&self) -> impl Iterator<Item = &JobEntry> {
        self.state.jobs.iter().filter(|job| job.phase != Phase::Planned)
    }

    /// Forgets every job and its files: `--fresh` with nothing sent.
    pub fn clear(&mut self) -> Result<(), BookError> {
        for job in std::mem::take(&mut self.state.jobs) {
            self.delete_files(job.chunk);
        }
        self.save()
    }

    /// Writes the state durably: aside, synced, renamed over, folder synced.
    pub fn save(&self) -> Result<(), BookError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("state.json");
        let aside = self.dir.join("state.json.new");
        let mut file = File::create(&aside).map_err(io(&aside))?;
        let text = serde_json::to_vec_pretty(&self.state).expect("the state serialises");
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(io(&aside))?;
        std::fs::rename(&aside, &path).map_err(io(&path))?;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(io(&self.dir))
    }

    /// Sets a job's phase and saves.
    pub fn set_phase(&mut self, chunk: u32, phase: Phase) -> Result<(), BookError> {
        if let Some(job) = self.state.jobs.iter_mut().find(|job| job.chunk == chunk) {
            job.phase = phase;
        }
        self.save()
    }

    /// Drops a collected job and adds its follow-up, if any, in one save;
    /// then deletes the job's files.
    pub fn replace(&mut self, chunk: u32, follow_up: Option<JobEntry>) -> Result<(), BookError> {
        self.state.jobs.retain(|job| job.chunk != chunk);
        self.state.jobs.extend(follow_up);
        self.save()?;
        self.delete_files(chunk);
        Ok(())
    }

    /// Adds planned jobs (their files written) and saves.
    pub fn add(&mut self, jobs: Vec<JobEntry>) -> Result<(), BookError> {
        self.state.jobs.extend(jobs);
        self.save()
    }

    fn delete_files(&self, chunk: u32) {
        for path in [self.lines_path(chunk), self.keys_path(chunk)] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The request lines of job `chunk`.
    pub fn lines_path(&self, chunk: u32) -> PathBuf {
        self.dir.join(format!("job-{chunk}.jsonl"))
    }

    fn keys_path(&self, chunk: u32) -> PathBuf {
        self.dir.join(format!("job-{chunk}.keys"))
    }

    /// Where result file `index` of job `chunk` is downloaded.
    pub fn results_path(&self, chunk: u32, index: usize) -> PathBuf {
        self.dir.join(format!("job-{chunk}.results-{index}.jsonl"))
    }

    /// The work keys of job `chunk`'s rows, in line order.
    pub fn keys(&self, chunk: u32) -> Result<Vec<WorkKey>, BookError> {
        let path = self.keys_path(chunk);
        let file = File::open(&path).map_err(io(&path))?;
        BufReader::new(file)
            .lines()
            .map(|line| {
                let line = line.map_err(io(&path))?;
                WorkKey::from_hex(line.trim()).ok_or_else(|| BookError {
                    path: path.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{line:?} is not a work key")),
                })
            })
            .collect()
    }

    /// Every row some uncollected job holds: these are not planned again.
    pub fn held(&self) -> Result<HashSet<WorkKey>, BookError> {
        let mut held = HashSet::new();
        for job in &self.state.jobs {
            held.extend(self.keys(job.chunk)?);
        }
        Ok(held)
    }

    /// Starts the files of a new job on `attempt`.
    pub fn start_job(&mut self, attempt: u32) -> Result<JobFiles, BookError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let chunk = self.state.next_chunk;
        self.state.next_chunk += 1;
        let (lines_path, keys_path) = (self.lines_path(chunk), self.keys_path(chunk));
        let lines = BufWriter::new(File::create(&lines_path).map_err(io(&lines_path))?);
        let keys = BufWriter::new(File::create(&keys_path).map_err(io(&keys_path))?);
        Ok(JobFiles { chunk, attempt, lines, keys, lines_path, keys_path, requests: 0, bytes: 0 })
    }
}

/// The files of a job being planned.
pub struct JobFiles {
    chunk: u32,
    attempt: u32,
    lines: BufWriter<File>,
    keys: BufWriter<File>,
    lines_path: PathBuf,
    keys_path: PathBuf,
    /// Lines written.
    pub requests: u32,
    /// Bytes written, newlines included.
    pub bytes: u64,
}

impl JobFiles {
    /// Adds a row's request line.
    pub fn push(&mut self, line: &str, key: &WorkKey) -> Result<(), BookError> {
        self.lines
            .write_all(line.as_bytes())
            .and_then(|()| self.lines.write_all(b"\n"))
            .map_err(io(&self.lines_path))?;
        writeln!(self.keys, "{}", key.to_hex()).map_err(io(&self.keys_path))?;
        self.requests += 1;
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Flushes and syncs both files: the job they describe can be recorded.
    pub fn finish(self) -> Result<JobEntry, BookError> {
        for (writer, path) in [(self.lines, &self.lines_path), (self.keys, &self.keys_path)] {
            let file = writer.into_inner().map_err(|e| io(path)(e.into_error()))?;
            file.sync_all().map_err(io(path))?;
        }
        Ok(JobEntry { chunk: self.chunk, requests: self.requests, attempt: self.attempt, phase: Phase::Planned })
    }
}

/// A run id unlikely to repeat: the time and the process.
fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// A row's `custom_id`: `r` and the first 16 bytes of its work key in hex,
/// 33 characters that fit both providers' rules. Results are joined back
/// through the job's key file, which holds the whole key.
pub fn custom_id(key: &WorkKey) -> String {
    format!("r{}", &key.to_hex()[..32])
}
