//! Splitting the rows that still need an output into jobs: streamed from
//! the dataset a page at a time, each row's request line made by the
//! component, the lines written to job files that stay within the
//! provider's limits.

use super::book::{Book, JobEntry, JobFiles, custom_id};
use crate::bindings::{Config, JobLimits, JobRow};
use crate::dataset::{Input, Reader, Survey};
use crate::journal::{Journal, WorkKey, WorkParams};
use crate::plugin::{PluginError, Session};
use crate::run::{RunError, prompts};
use std::path::Path;

/// Rows per call to `request-lines`.
const PAGE: usize = 1000;

/// Plans jobs for every row of `input` that has no saved work and is not
/// in a job already; rows with the same work key go once. Returns the jobs
/// (their files written and synced, not yet recorded).
#[expect(clippy::too_many_arguments, reason = "the plan reads from all of these and owns none")]
pub(super) async fn plan(
    session: &mut Session,
    config: &Config,
    path: &Path,
    input: &Input,
    survey: &Survey,
    params: &WorkParams,
    journal: &Journal,
    book: &mut Book,
    limits: JobLimits,
) -> Result<Vec<JobEntry>, RunError> {
    let mut covered = book.held()?;
    let mut reader = Reader::open_input(path, survey, input)?;
    let mut planner = Planner { jobs: Vec::new(), open: None, limits };
    let (mut rows, mut keys) = (Vec::with_capacity(PAGE), Vec::with_capacity(PAGE));
    while let Some(mut chunk) = reader.next_chunk(PAGE)? {
        // A row whose template does not render is sent nowhere; the output
        // names its error.
        let failed = prompts::render(session, config, input, &mut chunk).await?;
        for (input, failed) in chunk.inputs.into_iter().zip(failed) {
            let key = params.key(&input);
            if failed.is_some() || covered.contains(&key) || journal.get(&key)?.is_some() {
                continue;
            }
            covered.insert(key);
            rows.push(JobRow { custom_id: custom_id(&key), input });
            keys.push(key);
        }
        if rows.len() >= PAGE {
            planner.add(session, config, book, &std::mem::take(&mut rows), &std::mem::take(&mut keys)).await?;
        }
    }
    planner.add(session, config, book, &rows, &keys).await?;
    if let Some(files) = planner.open.take() {
        planner.jobs.push(files.finish()?);
    }
    Ok(planner.jobs)
}

struct Planner {
    jobs: Vec<JobEntry>,
    open: Option<JobFiles>,
    limits: JobLimits,
}

impl Planner {
    /// Has the component make the rows' lines, checks each names its row,
    /// and appends them to the open job, starting a new one at a limit.
    async fn add(
        &mut self,
        session: &mut Session,
        config: &Config,
        book: &mut Book,
        rows: &[JobRow],
        keys: &[WorkKey],
    ) -> Result<(), RunError> {
        if rows.is_empty() {
            return Ok(());
        }
        let lines = session.request_lines(config, rows).await?.map_err(RunError::Batch)?;
        for ((row, key), line) in rows.iter().zip(keys).zip(&lines) {
            // A line carries its row's id and nothing breaks it across
            // lines, or rows and results would not line up.
            if line.contains('\n') || line_custom_id(line).as_deref() != Some(row.custom_id.as_str()) {
                return Err(RunError::Plugin(PluginError::Trap(format!(
                    "the component's request line for {} does not carry that custom_id on one line",
                    row.custom_id
                ))));
            }
            let full = self.open.as_ref().is_some_and(|files| {
                files.requests >= self.limits.max_requests
                    || files.bytes + line.len() as u64 + 1 > self.limits.max_bytes
            });
            if full && let Some(files) = self.open.take() {
                self.jobs.push(files.finish()?);
            }
            let files = match &mut self.open {
                Some(files) => files,
                None => self.open.insert(book.start_job(1)?),
            };
            files.push(line, key)?;
        }
        Ok(())
    }
}

/// The `custom_id` a request line names.
pub(super) fn line_custom_id(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Line {
        custom_id: String,
    }
    serde_json::from_str::<Line>(line).ok().map(|line| line.custom_id)
}
