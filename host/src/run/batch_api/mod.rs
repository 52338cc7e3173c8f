//! `--batch-api`: the rows go to the provider's batch engine (OpenAI's
//! Batch API, Anthropic's Message Batches) as jobs of up to 50,000 or
//! 100,000 requests, run within a day at half the price.
//!
//! The component speaks the wire protocol (`batch-jobs` in the WIT); this
//! module owns time and durability. Every step that matters is on disk
//! before the next one starts: the job files before the job is recorded,
//! `submitting` before the create, the job id before any wait, each page of
//! results in the journal as soon as it is read, and a follow-up job for
//! the rows worth another try in the same save that drops the job it came
//! from. So a rerun of the same command after Ctrl-C, a kill or a reboot
//! polls the same jobs, never creates a second job for rows a job holds,
//! and loses no row. When every job is collected the output is written as
//! a synchronous run writes it: every input column, input order, atomic.

mod book;
mod plan;

pub use book::BookError;
pub(super) use book::custom_id;

use super::prepare::{Prepared, connections, expanded_columns, prepare};
use super::window::{saved, work_params};
use super::{RunError, RunOptions, load_plugin, prompts};
use crate::bindings::{Config, Failure, Generation, JobState, JobStatus, JobTag};
use crate::dataset::{Input, Reader, Survey, Writer};
use crate::journal::{Journal, WorkKey, WorkParams};
use crate::local::LocalModel;
use crate::outbound::Outbound;
use crate::pace::{PaceSettings, Pacer};
use crate::plugin::{PluginError, Session};
use crate::progress::Progress;
use crate::summary::Summary;
use book::{Book, JobEntry, Phase};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::time::{Duration, Instant};

/// Result files are streamed to disk, never held; this only stops a server
/// that sends without end from filling the disk.
const RESULT_FILE_CAP: usize = 8 << 30;
/// Calls about one job that may fail in a row (network, 5xx, 429) before
/// the run stops; its jobs keep running and a rerun picks them up.
const MAX_FAILED_CALLS: u32 = 20;
/// Result lines per call to `read-results`.
const RESULTS_PAGE: usize = 1000;
/// Rows written to the output per chunk.
const WRITE_CHUNK: usize = 1024;

/// What the user is told when a run stops with its jobs still running.
pub fn resume_hint(output: &std::path::Path) -> String {
    format!(
        "the batch jobs keep running at the provider: rerun the same command to collect them, \
         or stop them with `batchgen cancel --output {}`",
        output.display()
    )
}

/// Runs the job through the provider's batch API.
pub(super) async fn run(options: &RunOptions, progress: &dyn Progress) -> Result<Summary, RunError> {
    let started = Instant::now();
    let job = &options.job;
    let Prepared { plugin, config, model, client, destinations, survey, input, probe, .. } = prepare(options).await?;
    drop(probe);
    let mut book = Book::open(&options.output)?;
    if options.fresh {
        if let Some(sent) = book.sent().next() {
            return Err(RunError::Batch(format!(
                "--fresh would forget job {} of this output's batch run, which the provider may still run; \
                 cancel it first with `batchgen cancel --output {}`",
                sent.chunk,
                options.output.display()
            )));
        }
        book.clear()?;
    }
    let journal = Journal::open(&Journal::path_for(&options.output), options.fresh)?;
    book.set_job(job)?;
    let component = options.component.as_ref().map(|_| plugin.digest());
    let params = work_params(job, &model, "", component);
    let pacer = Pacer::new(PaceSettings {
        max_concurrency: 1,
        max_requests_per_minute: job.max_rpm.filter(|&n| n > 0),
        max_tokens_per_minute: None,
    });
    let outbound = Outbound::new(destinations, client, pacer)
        .with_reply_cap(RESULT_FILE_CAP)
        .with_request_timeout(job.request_timeout);
    let mut session = plugin.instantiate(outbound, LocalModel::Unavailable).await?;
    let mut limits = session.job_limits(&config).await?.map_err(RunError::Batch)?;
    if let Some(most) = job.batch_max_requests {
        limits.max_requests = limits.max_requests.min(most.max(1));
    }
    progress.started(survey.rows);
    let planned =
        plan::plan(&mut session, &config, &options.input, &input, &survey, &params, &journal, &mut book, limits)
            .await?;
    let new_rows: u32 = planned.iter().map(|job| job.requests).sum();
    if !planned.is_empty() {
        progress.job(&format!("planned {} job(s) of {new_rows} row(s)", planned.len()));
    }
    book.add(planned)?;
    let mut driver = Driver {
        session,
        config,
        book,
        journal,
        progress,
        max_attempts: job.max_attempts,
        poll_interval: job.poll_interval,
        failed_calls: HashMap::new(),
        waiting_for_room: HashSet::new(),
        generated: HashSet::new(),
        failed: HashMap::new(),
    };
    driver.drive().await?;
    let Driver { journal, mut generated, failed, book, mut session, config, .. } = driver;
    // Reopened, so that the rows this run saved are looked up too.
    drop(journal);
    let journal = Journal::open(&Journal::path_for(&options.output), false)?;
    let mut summary = Summary {
        model: model.label.clone(),
        provider: model.provider.name().to_string(),
        model_id: params.model_id.clone(),
        total_rows: survey.rows,
        batch_api: true,
        ..Summary::default()
    };
    let output = Output { options, survey: &survey, input: &input, params: &params, journal: &journal };
    output.write(&mut session, &config, &mut generated, &failed, &mut summary, progress, started).await?;
    book.remove()?;
    summary.elapsed = started.elapsed();
    progress.finished(&summary);
    Ok(summary)
}

/// Cancels the jobs of `options.output`'s batch run that the provider has,
/// with the job recorded by the run (`options.job` is not used); returns
/// each job's state after the cancel. A rerun of the run collects what they
/// finished and sends the rest again.
pub async fn cancel(options: &RunOptions) -> Result<Vec<(u32, JobStatus)>, RunError> {
    let book = Book::open(&options.output)?;
    let Some(job) = book.job() else {
        return Err(RunError::Batch(format!("no batch jobs are recorded for {}", options.output.display())));
    };
    // The journal's lock: no run of this output may be going on meanwhile.
    let _journal = Journal::open(&Journal::path_for(&options.output), false)?;
    let options = RunOptions { job: job.clone(), ..options.clone() };
    let plugin = load_plugin(options.component.as_deref(), options.cache_dir.as_deref(), options.limits)?;
    let config = options.job.component_config(&options.endpoints);
    let mut probe = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await?;
    let model = probe
        .find_model(&options.job.generation_model)
        .await?
        .ok_or_else(|| RunError::NoModel(options.job.generation_model.clone()))?;
    let (destinations, _) = connections(&options, &model)?;
    let outbound = Outbound::new(destinations, crate::outbound::http_client(), Pacer::new(PaceSettings::default()))
        .with_request_timeout(options.job.request_timeout);
    let mut session = plugin.instantiate(outbound, LocalModel::Unavailable).await?;
    let mut canceled = Vec::new();
    for entry in book.sent() {
        let id = match &entry.phase {
            Phase::Live { id } => id.clone(),
            Phase::Submitting { since } => {
                let tag = tag(&book, entry, *since);
                match session.find_job(&config, &tag).await?.map_err(|f| failed_call(entry.chunk, &f))? {
                    Some(status) => status.id,
                    None => continue,
                }
            }
            Phase::Planned => continue,
        };
        let status = session.job_status(&config, &id, true).await?.map_err(|f| failed_call(entry.chunk, &f))?;
        canceled.push((entry.chunk, status));
    }
    Ok(canceled)
}

fn tag(book: &Book, entry: &JobEntry, since: u64) -> JobTag {
    JobTag { run: book.run().to_string(), chunk: entry.chunk, requests: entry.requests, since }
}

fn failed_call(chunk: u32, failure: &Failure) -> RunError {
    RunError::Batch(format!("job {chunk}: {}", failure.error.describe()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// One line about a job, for progress.
fn describe(chunk: u32, status: &JobStatus) -> String {
    let state = match status.state {
        JobState::Validating => "validating",
        JobState::InProgress => "in progress",
        JobState::Finalizing => "finalizing",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Expired => "expired",
        JobState::Canceling => "canceling",
        JobState::Canceled => "canceled",
    };
    format!(
        "job {chunk} ({}): {state}, {} of {} requests done, {} failed",
        status.id, status.succeeded, status.total, status.failed
    )
}

fn ended(state: JobState) -> bool {
    matches!(state, JobState::Completed | JobState::Failed | JobState::Expired | JobState::Canceled)
}

/// The loop over the run's jobs: submit, poll, collect, until none is left.
struct Driver<'a> {
    session: Session,
    config: Config,
    book: Book,
    journal: Journal,
    progress: &'a dyn Progress,
    max_attempts: u32,
    poll_interval: Duration,
    /// Failed calls in a row, per job.
    failed_calls: HashMap<u32, u32>,
    /// Jobs refused for the provider's enqueued-token limit: sent again once
    /// another job of the run has ended, without spending an attempt.
    waiting_for_room: HashSet<u32>,
    /// Rows generated by this process (their tokens are this run's).
    generated: HashSet<WorkKey>,
    /// Rows that failed for good, with the text of their error column.
    failed: HashMap<WorkKey, String>,
}

impl Driver<'_> {
    async fn drive(&mut self) -> Result<(), RunError> {
        loop {
            let mut blocked = false;
            for entry in self.book.jobs().to_vec() {
                match entry.phase.clone() {
                    Phase::Submitting { since } => self.recover(&entry, since).await?,
                    Phase::Planned if !self.waiting_for_room.contains(&entry.chunk) => {
                        blocked |= !self.submit(&entry).await?;
                    }
                    Phase::Planned => blocked = true,
                    Phase::Live { id } => {
                        let result = self.session.job_status(&self.config, &id, false).await;
                        if let Some(status) = self.answered(entry.chunk, result)? {
                            self.progress.job(&describe(entry.chunk, &status));
                            if ended(status.state) {
                                self.collect(&entry, status).await?;
                            }
                        }
                    }
                }
            }
            let jobs = self.book.jobs();
            if jobs.is_empty() {
                return Ok(());
            }
            // Follow-up jobs go out at once; a poll waits its interval.
            let live = jobs.iter().any(|job| matches!(job.phase, Phase::Live { .. }));
            if live || blocked {
                tokio::time::sleep(self.poll_interval).await;
            }
        }
    }

    /// A call's answer: `None` for a failure worth trying again later (the
    /// run stops after [`MAX_FAILED_CALLS`] in a row about one job).
    fn answered<T>(
        &mut self,
        chunk: u32,
        result: Result<Result<T, Failure>, PluginError>,
    ) -> Result<Option<T>, RunError> {
        match result? {
            Ok(value) => {
                self.failed_calls.remove(&chunk);
                Ok(Some(value))
            }
            Err(failure) if failure.retryable => {
                let count = self.failed_calls.entry(chunk).or_default();
                *count += 1;
                if *count >= MAX_FAILED_CALLS {
                    return Err(RunError::Batch(format!(
                        "job {chunk}: {MAX_FAILED_CALLS} calls in a row failed, the last with {}",
                        failure.error.describe()
                    )));
                }
                tracing::warn!("job {chunk}: {} (trying again)", failure.error.describe());
                Ok(None)
            }
            Err(failure) => Err(failed_call(chunk, &failure)),
        }
    }

    /// A job whose create may have gone through: the provider's word
    /// decides whether it is live or must be sent again.
    async fn recover(&mut self, entry: &JobEntry, since: u64) -> Result<(), RunError> {
        let tag = tag(&self.book, entry, since);
        let result = self.session.find_job(&self.config, &tag).await;
        match self.answered(entry.chunk, result)? {
            Some(Some(status)) => self.book.set_phase(entry.chunk, Phase::Live { id: status.id })?,
            Some(None) => self.book.set_phase(entry.chunk, Phase::Planned)?,
            None => {}
        }
        Ok(())
    }

    /// Creates a planned job; `false` when the provider could not take it
    /// now.
    async fn submit(&mut self, entry: &JobEntry) -> Result<bool, RunError> {
        let since = unix_now();
        self.book.set_phase(entry.chunk, Phase::Submitting { since })?;
        let tag = tag(&self.book, entry, since);
        let path = self.book.lines_path(entry.chunk);
        let result = self.session.submit_job(&self.config, &tag, &path).await;
        match self.answered(entry.chunk, result)? {
            Some(status) => {
                self.book.set_phase(entry.chunk, Phase::Live { id: status.id.clone() })?;
                self.progress
                    .job(&format!("submitted job {} ({}): {} requests", entry.chunk, status.id, entry.requests));
                Ok(true)
            }
            None => {
                // Not created, as far as a retryable failure tells; the next
                // round looks before it sends again.
                Ok(false)
            }
        }
    }

    /// Reads an ended job's results into the journal and plans a follow-up
    /// job for the rows worth another try.
    async fn collect(&mut self, entry: &JobEntry, status: JobStatus) -> Result<(), RunError> {
        let chunk = entry.chunk;
        let keys = self.book.keys(chunk)?;
        let index: HashMap<String, usize> = keys.iter().enumerate().map(|(i, key)| (custom_id(key), i)).collect();
        // Per row: `None` while unanswered, else the reason to retry it.
        let mut retry: Vec<Option<String>> = vec![Some("missing from the job's results".into()); keys.len()];
        if status.state == JobState::Failed {
            for error in &status.errors {
                let line = error.line.map(|line| format!("line {line}: ")).unwrap_or_default();
                self.progress
                    .job(&format!("job {chunk} ({}) failed: {line}{}: {}", status.id, error.code, error.message));
            }
            let others_live = self.book.sent().any(|job| job.chunk != chunk);
            if others_live && status.errors.iter().any(|e| e.code == "token_limit_exceeded") {
                self.waiting_for_room.insert(chunk);
                return Ok(self.book.set_phase(chunk, Phase::Planned)?);
            }
            let by_line: HashMap<u32, String> = status
                .errors
                .iter()
                .filter_map(|e| Some((e.line?, format!("batch validation: {}: {}", e.code, e.message))))
                .collect();
            let whole: Vec<String> = status.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect();
            for (i, key) in keys.iter().enumerate() {
                match by_line.get(&(i as u32 + 1)) {
                    Some(message) => {
                        self.failed.insert(*key, message.clone());
                        retry[i] = None;
                    }
                    // No line named: the job as a whole was refused.
                    None if by_line.is_empty() => {
                        self.failed.insert(*key, format!("batch job failed: {}", whole.join("; ")));
                        retry[i] = None;
                    }
                    None => retry[i] = Some("sent again: another line of its job failed validation".into()),
                }
            }
        } else {
            for (file_index, file) in status.result_files.iter().enumerate() {
                let path = self.book.results_path(chunk, file_index);
                let downloaded = loop {
                    let result = self.session.download(&self.config, file, &path).await;
                    if let Some(bytes) = self.answered(chunk, result)? {
                        break bytes;
                    }
                    tokio::time::sleep(self.poll_interval.min(Duration::from_secs(5))).await;
                };
                tracing::debug!("job {chunk}: downloaded {downloaded} bytes of {file}");
                self.read(entry, &path, &keys, &index, &mut retry).await?;
                let _ = std::fs::remove_file(&path);
            }
        }
        let follow_up = self.follow_up(entry, &keys, retry)?;
        self.book.replace(chunk, follow_up)?;
        self.waiting_for_room.clear();
        Ok(())
    }

    /// Reads a downloaded result file a page at a time: each answered row
    /// goes to the journal (successes) or is settled (failures) before the
    /// next page is read.
    async fn read(
        &mut self,
        entry: &JobEntry,
        path: &std::path::Path,
        keys: &[WorkKey],
        index: &HashMap<String, usize>,
        retry: &mut [Option<String>],
    ) -> Result<(), RunError> {
        let file =
            std::fs::File::open(path).map_err(|source| BookError { path: path.display().to_string(), source })?;
        let mut lines = std::io::BufReader::new(file).lines();
        loop {
            let mut page = Vec::with_capacity(RESULTS_PAGE);
            for line in lines.by_ref() {
                let line = line.map_err(|source| BookError { path: path.display().to_string(), source })?;
                if !line.trim().is_empty() {
                    page.push(line);
                }
                if page.len() == RESULTS_PAGE {
                    break;
                }
            }
            if page.is_empty() {
                return Ok(());
            }
            let outcomes = self.session.read_results(&self.config, &page).await?;
            let mut saved_now = Vec::new();
            for outcome in outcomes {
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(message) => {
                        tracing::warn!("job {}: {message}", entry.chunk);
                        continue;
                    }
                };
                // Only rows this job holds, once each: a result for any
                // other id is ignored, whatever sent it.
                let Some(&i) = index.get(&outcome.custom_id) else {
                    tracing::warn!(
                        "job {}: a result for {:?}, which the job does not hold",
                        entry.chunk,
                        outcome.custom_id
                    );
                    continue;
                };
                if retry[i].as_deref() != Some("missing from the job's results") {
                    continue;
                }
                match outcome.outcome {
                    Ok(generation) => {
                        let generation = Generation { attempts: entry.attempt, ..generation };
                        saved_now.push((keys[i], saved(&generation)));
                        self.generated.insert(keys[i]);
                        retry[i] = None;
                    }
                    Err(failure) if failure.retryable => retry[i] = Some(failure.error.describe()),
                    Err(failure) => {
                        self.failed.insert(keys[i], failure.error.describe());
                        retry[i] = None;
                    }
                }
            }
            self.journal.append(&saved_now)?;
        }
    }

    /// The rows to send again, as a new job of their own request lines (on
    /// the next attempt); rows out of attempts fail with their last reason.
    fn follow_up(
        &mut self,
        entry: &JobEntry,
        keys: &[WorkKey],
        retry: Vec<Option<String>>,
    ) -> Result<Option<JobEntry>, RunError> {
        if retry.iter().all(Option::is_none) {
            return Ok(None);
        }
        if entry.attempt >= self.max_attempts {
            for (key, reason) in keys.iter().zip(retry) {
                if let Some(reason) = reason {
                    self.failed.insert(*key, format!("{reason} (after {} batch jobs)", entry.attempt));
                }
            }
            return Ok(None);
        }
        let path = self.book.lines_path(entry.chunk);
        let file =
            std::fs::File::open(&path).map_err(|source| BookError { path: path.display().to_string(), source })?;
        let mut files = self.book.start_job(entry.attempt + 1)?;
        for ((line, key), reason) in std::io::BufReader::new(file).lines().zip(keys).zip(&retry) {
            let line = line.map_err(|source| BookError { path: path.display().to_string(), source })?;
            if reason.is_some() {
                files.push(&line, key)?;
            }
        }
        let follow_up = files.finish()?;
        self.progress.job(&format!(
            "job {}: {} row(s) go again in job {} (attempt {})",
            entry.chunk, follow_up.requests, follow_up.chunk, follow_up.attempt
        ));
        Ok(Some(follow_up))
    }
}

/// Writing the output once every job is collected.
struct Output<'a> {
    options: &'a RunOptions,
    survey: &'a Survey,
    input: &'a Input,
    params: &'a WorkParams,
    journal: &'a Journal,
}

impl Output<'_> {
    /// Every input row in order with its saved output, or its error.
    #[expect(clippy::too_many_arguments, reason = "what the run collected, handed over once")]
    async fn write(
        &self,
        session: &mut Session,
        config: &Config,
        generated: &mut HashSet<WorkKey>,
        failed: &HashMap<WorkKey, String>,
        summary: &mut Summary,
        progress: &dyn Progress,
        started: Instant,
    ) -> Result<(), RunError> {
        let job = &self.options.job;
        let mut reader = Reader::open_input(&self.options.input, self.survey, self.input)?;
        let mut writer =
            Writer::create_expanded(&self.options.output, self.survey, &job.output_column, &expanded_columns(job))?;
        while let Some(mut chunk) = reader.next_chunk(WRITE_CHUNK)? {
            let unrendered = prompts::render(session, config, self.input, &mut chunk).await?;
            let mut outputs = Vec::with_capacity(chunk.len());
            for (input, unrendered) in chunk.inputs.iter().zip(unrendered) {
                if let Some(message) = unrendered {
                    summary.failed += 1;
                    outputs.push(Err(message));
                    continue;
                }
                let key = self.params.key(input);
                let output = match self.journal.get(&key)? {
                    // A row's tokens count once, for the first row with its key.
                    Some(saved) if generated.remove(&key) => {
                        summary.count(&Ok(Generation {
                            text: String::new(),
                            finish_reason: saved.finish_reason,
                            input_tokens: saved.input_tokens,
                            output_tokens: saved.output_tokens,
                            attempts: saved.attempts,
                        }));
                        Ok(saved.text)
                    }
                    Some(saved) => {
                        summary.reused += 1;
                        Ok(saved.text)
                    }
                    None => {
                        let error = failed.get(&key).cloned().unwrap_or_else(|| {
                            "batch: the row came back from no job; rerun the same command to send it again".into()
                        });
                        summary.failed += 1;
                        Err(error)
                    }
                };
                outputs.push(output);
            }
            summary.rows += chunk.len() as u64;
            writer.write_chunk(chunk, &outputs)?;
            summary.elapsed = started.elapsed();
            progress.advanced(summary);
        }
        writer.finish()?;
        Ok(())
    }
}
