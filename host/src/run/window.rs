//! The batches of a run in flight: read in order, generated concurrently by
//! a small pool of component instances, made durable in the journal as soon
//! as they return, and written to the output strictly in order.

use super::prepare::{Prepared, expanded_columns};
use super::prompts;
use super::{RunError, RunOptions};
use crate::bindings::{Config, Generation, ModelInfo, Provider, RowError};
use crate::config::Job;
use crate::dataset::{Chunk, Input, Reader, Writer};
use crate::journal::{Journal, Saved, WorkKey, WorkParams};
use crate::local::LocalModel;
use crate::outbound::Outbound;
use crate::pace::{PaceSettings, Pacer};
use crate::plugin::{Plugin, PluginError, Session};
use crate::summary::Summary;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Batches in flight at once when rows go over HTTP. A batch's call lasts
/// until its slowest row is done, which under faults means a row or two
/// waiting out a retry backoff of seconds; with several batches open, the
/// later ones' requests (queued first come, first served at the pacer) keep
/// the concurrency limit full meanwhile. Outputs are still written strictly
/// in order, so at most this many batches of rows are held.
const BATCH_WINDOW: usize = 8;
/// Batches in flight at once for the `local-model` import: the embedded
/// model decodes one call at a time, so two keep it busy.
const LOCAL_BATCH_WINDOW: usize = 2;
/// An instance is replaced after this many rows, so that anything it or
/// its WASI resources leak (wasmtime-wasi-http 48 leaks a table entry per
/// request in some paths) stays bounded. A new instance costs ~0.1 ms.
const RECYCLE_AFTER_ROWS: u64 = 100_000;

type BatchResults = Result<Vec<Result<Generation, RowError>>, PluginError>;

/// A run between its checks and its last write.
pub(super) struct Window {
    plugin: Plugin,
    config: Config,
    outbound: Outbound,
    local: LocalModel,
    pacer: Arc<Pacer>,
    journal: Journal,
    params: WorkParams,
    reader: Reader,
    /// What a row's input is, and the instance that renders a template.
    input: Input,
    renderer: Session,
    writer: Writer,
    batch_size: usize,
    /// Batches in flight at most.
    window: usize,
    /// The check of credentials and model id, until it has passed.
    preflight: Option<tokio::task::JoinHandle<Result<Result<(), RowError>, PluginError>>>,
    /// Instances not generating right now.
    idle: Vec<Session>,
    /// Batches read but not yet written, by sequence number; a batch's
    /// results arrive in any order but are written strictly in order.
    pending: BTreeMap<u64, Pending>,
    tasks: JoinSet<(u64, Session, BatchResults)>,
    next_seq: u64,
    exhausted: bool,
    /// What has been written so far.
    pub summary: Summary,
}

impl Window {
    /// Opens the journal, input and output, and starts the instances; with
    /// `options.preflight`, starts the check of credentials and model id
    /// (one request), which the first batch's results wait for.
    pub async fn open(options: &RunOptions, prepared: Prepared) -> Result<Window, RunError> {
        let Prepared { plugin, config, model, client, destinations, local, survey, input, probe } = prepared;
        // `Local` without servers: the local-model import.
        let window = if model.provider == Provider::Local && destinations.is_empty() {
            LOCAL_BATCH_WINDOW
        } else {
            BATCH_WINDOW
        };
        let job = &options.job;
        let journal = Journal::open(&Journal::path_for(&options.output), options.fresh)?;
        let component = options.component.as_ref().map(|_| plugin.digest());
        let params = work_params(job, &model, &backend(options, &local), component);
        let reader = Reader::open_input(&options.input, &survey, &input)?;
        let writer = Writer::create_expanded(&options.output, &survey, &job.output_column, &expanded_columns(job))?;
        let pacer = Pacer::new(PaceSettings {
            max_concurrency: job.batch_size as usize,
            max_requests_per_minute: job.max_rpm.filter(|&n| n > 0),
            max_tokens_per_minute: job.max_tpm.filter(|&n| n > 0),
        });
        let outbound = Outbound::new(destinations, client, Arc::clone(&pacer))
            .with_reply_cap(options.limits.max_reply_bytes)
            .with_request_timeout(job.request_timeout);
        let mut idle = Vec::with_capacity(window);
        for _ in 0..window {
            idle.push(plugin.instantiate(outbound.clone(), local.clone()).await?);
        }
        // Credentials and model id, checked by a request of its own while
        // the first batch goes out: a bad key or model fails every request
        // at no cost, and nothing is written before the check has passed,
        // so a run fails as early, one round trip sooner when it succeeds.
        let preflight = if options.preflight {
            let mut session = plugin.instantiate(outbound.clone(), local.clone()).await?;
            let config = config.clone();
            Some(tokio::spawn(async move { session.preflight(&config).await }))
        } else {
            None
        };
        let summary = Summary {
            model: model.label.clone(),
            provider: model.provider.name().to_string(),
            model_id: params.model_id.clone(),
            total_rows: survey.rows,
            ..Summary::default()
        };
        Ok(Window {
            plugin,
            config,
            outbound,
            local,
            pacer,
            journal,
            params,
            reader,
            input,
            renderer: probe,
            writer,
            batch_size: job.batch_size as usize,
            window,
            preflight,
            idle,
            pending: BTreeMap::new(),
            tasks: JoinSet::new(),
            next_seq: 0,
            exhausted: false,
            summary,
        })
    }

    /// Every row has been read and written.
    pub fn done(&self) -> bool {
        self.exhausted && self.pending.is_empty()
    }

    /// Reads batches while the window has room, and starts generating the
    /// rows of each that have no saved work.
    pub async fn fill(&mut self) -> Result<(), RunError> {
        while !self.exhausted && self.pending.len() < self.window && !self.idle.is_empty() {
            let Some(mut chunk) = self.reader.next_chunk(self.batch_size)? else {
                self.exhausted = true;
                break;
            };
            let failed = prompts::render(&mut self.renderer, &self.config, &self.input, &mut chunk).await?;
            let keys: Vec<WorkKey> = chunk.inputs.iter().map(|input| self.params.key(input)).collect();
            let reused = keys.iter().map(|key| self.journal.get(key)).collect::<Result<Vec<_>, _>>()?;
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| reused[i].is_none() && failed[i].is_none()).collect();
            let results = if missing.is_empty() {
                Some(Vec::new())
            } else {
                let inputs: Vec<String> = missing.iter().map(|&i| chunk.inputs[i].clone()).collect();
                self.spawn(inputs);
                None
            };
            self.pending.insert(self.next_seq, Pending { chunk, keys, reused, failed, missing, results });
            self.next_seq += 1;
        }
        Ok(())
    }

    /// Generates `inputs` as batch `next_seq` on an idle instance.
    fn spawn(&mut self, inputs: Vec<String>) {
        let Some(mut session) = self.idle.pop() else {
            unreachable!("fill only reads a batch when an instance is idle")
        };
        let (config, seq) = (self.config.clone(), self.next_seq);
        self.tasks.spawn(async move {
            let results = session.generate_batch(&config, &inputs).await;
            (seq, session, results)
        });
    }

    /// Writes the oldest batch if its results are in; `false` when it is not
    /// ready (or there is none).
    pub fn write_next(&mut self) -> Result<bool, RunError> {
        if self.pending.first_key_value().is_none_or(|(_, batch)| batch.results.is_none()) {
            return Ok(false);
        }
        let Some((_, batch)) = self.pending.pop_first() else { return Ok(false) };
        batch.write(&mut self.writer, &mut self.summary)?;
        Ok(true)
    }

    /// Waits for one batch to finish generating and makes its outputs
    /// durable in the journal before anything else happens: a kill from then
    /// on repeats none of its rows.
    pub async fn collect(&mut self) -> Result<(), RunError> {
        if let Some(preflight) = self.preflight.take() {
            let checked = preflight.await.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
            checked?.map_err(|error| RunError::Preflight(error.describe()))?;
        }
        let Some(joined) = self.tasks.join_next().await else { return Ok(()) };
        let (seq, session, results) = joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        let results: Vec<Result<Generation, String>> = match results {
            Ok(results) => {
                self.release(session).await?;
                results.into_iter().map(|result| result.map_err(|error| error.describe())).collect()
            }
            // The component broke on this batch: its rows fail in place (and
            // are retried by the next run), and a fresh instance carries on.
            Err(error) => {
                let batch = &self.pending[&seq];
                let (first, last) = (batch.chunk.first_row + 1, batch.chunk.first_row + batch.chunk.len() as u64);
                tracing::warn!("rows {first} to {last}: {error}; continuing with a fresh instance");
                drop(session);
                self.idle.push(self.plugin.instantiate(self.outbound.clone(), self.local.clone()).await?);
                let message = format!("component: {error}");
                batch.missing.iter().map(|_| Err(message.clone())).collect()
            }
        };
        let Some(batch) = self.pending.get_mut(&seq) else { unreachable!("every task belongs to a pending batch") };
        let saved: Vec<(WorkKey, Saved)> = batch
            .missing
            .iter()
            .zip(&results)
            .filter_map(|(&row, result)| result.as_ref().ok().map(|g| (batch.keys[row], saved(g))))
            .collect();
        self.journal.append(&saved)?;
        batch.results = Some(results);
        Ok(())
    }

    /// Returns an instance to the pool, or a fresh one in its place once it
    /// has served [`RECYCLE_AFTER_ROWS`].
    async fn release(&mut self, session: Session) -> Result<(), RunError> {
        if session.rows_served() >= RECYCLE_AFTER_ROWS {
            drop(session);
            self.idle.push(self.plugin.instantiate(self.outbound.clone(), self.local.clone()).await?);
        } else {
            self.idle.push(session);
        }
        Ok(())
    }

    /// Completes the output and the summary.
    pub fn finish(self) -> Result<Summary, RunError> {
        let Window { writer, pacer, outbound, mut summary, .. } = self;
        for (destination, count) in outbound.denials() {
            tracing::warn!("denied {count} request(s) to {destination}: not a configured endpoint");
            summary.denied_requests += count;
        }
        let pace = pacer.stats();
        summary.rate_limit_cuts = pace.cuts;
        summary.lowest_concurrency = pace.lowest_limit;
        summary.mean_concurrency = pace.mean_limit();
        summary.throttled = pace.throttled;
        writer.finish()?;
        Ok(summary)
    }
}

/// What serves `Local`: the servers, in any order, or the local model.
fn backend(options: &RunOptions, local: &LocalModel) -> String {
    if options.endpoints.local_urls.is_empty() {
        return local.identity();
    }
    let mut urls: Vec<&str> = options.endpoints.local_urls.iter().map(|url| url.trim_end_matches('/')).collect();
    urls.sort_unstable();
    urls.dedup();
    format!("servers:{}", urls.join(","))
}

/// What, besides its input, determines a row's output in this run: the key
/// of its saved work.
pub(super) fn work_params(job: &Job, model: &ModelInfo, backend: &str, component: Option<[u8; 32]>) -> WorkParams {
    WorkParams {
        provider: model.provider.name().to_string(),
        // For `Local`, also which backend: a server's URL, or the embedded
        // model's file and seed.
        model_id: match (&job.model_id, model.provider) {
            (Some(id), Provider::Local) => format!("{backend}:{id}"),
            (Some(id), _) => id.clone(),
            (None, Provider::Local) => backend.to_string(),
            (None, _) => model.model_id.clone(),
        },
        system_prompt: job.system_prompt.clone(),
        temperature: job.temperature,
        top_p: job.top_p,
        max_tokens: job.max_tokens,
        component,
        schema: job.json_schema.as_ref().map(ToString::to_string),
    }
}

/// A batch read from the input and not yet written.
struct Pending {
    chunk: Chunk,
    keys: Vec<WorkKey>,
    /// Work saved by earlier runs, per row.
    reused: Vec<Option<Saved>>,
    /// Per row, why it has no prompt (its template failed to render).
    failed: Vec<Option<String>>,
    /// Rows with no saved work, in the order they were sent.
    missing: Vec<usize>,
    /// Results for `missing`, once its task is done: a generation or the
    /// text for the error column.
    results: Option<Vec<Result<Generation, String>>>,
}

impl Pending {
    /// Writes a finished batch: new results where rows were sent, saved work
    /// everywhere else.
    fn write(self, writer: &mut Writer, summary: &mut Summary) -> Result<(), RunError> {
        let Pending { chunk, reused, failed, missing, results, .. } = self;
        let mut fresh = results.unwrap_or_default().into_iter();
        let mut missing = missing.into_iter().peekable();
        let mut outputs = Vec::with_capacity(chunk.len());
        for (row, (reused, failed)) in reused.into_iter().zip(failed).enumerate() {
            let output = match (failed, missing.next_if_eq(&row), reused) {
                (Some(message), _, _) => {
                    summary.failed += 1;
                    Err(message)
                }
                (None, Some(_), _) => {
                    let result = fresh.next().expect("one result per sent row");
                    summary.count(&result);
                    result.map(|generation| generation.text)
                }
                (None, None, Some(saved)) => {
                    summary.reused += 1;
                    Ok(saved.text)
                }
                (None, None, None) => unreachable!("a row not sent has saved work"),
            };
            outputs.push(output);
        }
        summary.rows += chunk.len() as u64;
        writer.write_chunk(chunk, &outputs)?;
        Ok(())
    }
}

pub(super) fn saved(generation: &Generation) -> Saved {
    Saved {
        text: generation.text.clone(),
        finish_reason: generation.finish_reason.clone(),
        input_tokens: generation.input_tokens,
        output_tokens: generation.output_tokens,
        attempts: generation.attempts,
    }
}
