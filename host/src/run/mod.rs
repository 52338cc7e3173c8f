//! The batch job: read a dataset a batch at a time, have the component
//! generate, write every row back in place with its output or its error.

use crate::config::{ApiKeys, Job, ProviderEndpoints};
use crate::dataset::{self, Chunk, DatasetError, Format, Reader, Survey, Writer};
use crate::local::{EmbeddedModel, LocalModel, ServerModel, embedded};
use crate::outbound::{self, Destination, Origin, Outbound};
use crate::pace::{PaceSettings, Pacer};
use crate::progress::{Progress, Silent};
use crate::plugin::bindings::{Config, ConfigProblem, Generation, ModelInfo, RequestPreview, RowError};
use crate::plugin::sandbox::Limits;
use crate::plugin::{cache, Plugin, PluginError, Session, EMBEDDED_COMPONENT};
use crate::journal::{Journal, JournalError, Saved, WorkKey, WorkParams};
use std::collections::BTreeMap;
use tokio::task::JoinSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Batches in flight at once. With two, the next batch's requests are
/// already queued at the pacer while the previous batch's slowest ones
/// finish, so the concurrency limit stays full between batches; outputs are
/// still written strictly in order.
const BATCH_WINDOW: usize = 2;
/// An instance is replaced after this many rows, so that anything it or
/// its WASI resources leak (wasmtime-wasi-http 48 leaks a table entry per
/// request in some paths) stays bounded. A new instance costs ~0.1 ms.
const RECYCLE_AFTER_ROWS: u64 = 100_000;

/// Everything a run needs besides the job's parameters.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub job: Job,
    pub endpoints: ProviderEndpoints,
    pub keys: ApiKeys,
    /// An OpenAI-compatible server for `Local` (`--local-url`).
    pub local_url: Option<String>,
    /// A GGUF model for `Local` when there is no server (`--local-model`);
    /// `None` means the default one `cargo xtask setup` fetches.
    pub local_model: Option<PathBuf>,
    /// Seed of the embedded model's sampling (`--seed`).
    pub seed: u64,
    /// Another build of the component instead of the embedded one.
    pub component: Option<PathBuf>,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Ignore (and discard) work saved by earlier runs for this output.
    pub fresh: bool,
    /// What the component may consume.
    pub limits: Limits,
    /// Check credentials and model id with one request before the run.
    pub preflight: bool,
}

impl RunOptions {
    /// A run with the given files and job, everything else from the
    /// environment as the CLI would take it.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>, job: Job) -> RunOptions {
        RunOptions {
            input: input.into(),
            output: output.into(),
            job,
            endpoints: ProviderEndpoints::default(),
            keys: ApiKeys::default(),
            local_url: None,
            local_model: None,
            seed: 0,
            component: None,
            cache_dir: cache::default_dir(),
            fresh: false,
            limits: Limits::default(),
            preflight: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid config:{}", list(.0))]
    Config(Vec<ConfigProblem>),
    #[error("{variable} is not set: {model} needs an API key (export {variable}=...)")]
    MissingKey { variable: &'static str, model: String },
    #[error(transparent)]
    LocalModel(#[from] crate::local::EmbeddedError),
    #[error("{name} {url:?}: {message}")]
    Endpoint { name: &'static str, url: String, message: String },
    #[error("{variable}: {message}")]
    InvalidKey { variable: &'static str, message: String },
    #[error("the output file must differ from the input file ({0})")]
    SameFile(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("preflight check failed (pass --no-preflight to skip it): {0}")]
    Preflight(String),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("\n  {}: {}", p.field, p.message)).collect()
}

/// What a run did. Serialises as the `--report` JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The generation model's label, provider and the id requested.
    pub model: String,
    pub provider: String,
    pub model_id: String,
    /// Rows in the input.
    pub total_rows: u64,
    pub rows: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Rows taken from work saved by an earlier run: no request sent.
    pub reused: u64,
    /// Requests made for successful rows, retries included.
    pub attempts: u64,
    /// Times a 429 or an overload cut the concurrency limit.
    pub rate_limit_cuts: u64,
    /// The lowest concurrency limit of the run.
    pub lowest_concurrency: usize,
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Summary {
    /// Requests beyond the first for rows generated this run.
    pub fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.rows - self.failed - self.reused)
    }

    /// Estimated USD for this run's tokens (see [`crate::cost`]).
    pub fn estimated_cost(&self) -> Option<f64> {
        crate::cost::estimate(&self.provider, &self.model_id, self.input_tokens, self.output_tokens)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} rows, {} failed, {} reused from saved work, tokens in {} / out {}, {} requests, {} rate-limit cuts (lowest concurrency {}), {:.2} s ({:.1} rows/s)",
            self.rows,
            self.failed,
            self.reused,
            self.input_tokens,
            self.output_tokens,
            self.attempts,
            self.rate_limit_cuts,
            self.lowest_concurrency,
            seconds,
            if seconds > 0.0 { self.rows as f64 / seconds } else { 0.0 }
        )
    }
}

/// Loads `component`, or the embedded component when it is `None`.
pub fn load_plugin(component: Option<&Path>, cache_dir: Option<&Path>, limits: Limits) -> Result<Plugin, PluginError> {
    match component {
        Some(path) => Plugin::from_file(path, cache_dir, limits),
        None => Plugin::new(EMBEDDED_COMPONENT, cache_dir, limits),
    }
}

/// The models the component knows, asked of an instance that may send nothing.
pub async fn list_models(plugin: &Plugin) -> Result<Vec<ModelInfo>, PluginError> {
    let mut session = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await?;
    session.list_models().await
}

/// Runs the job. Every check happens before the first request: paths,
/// config, credentials, and a full pass over the input.
pub async fn run(options: &RunOptions) -> Result<Summary, RunError> {
    run_with_progress(options, &Silent).await
}

/// Everything a run checks before it sends its first request.
struct Prepared {
    plugin: Plugin,
    config: Config,
    model: ModelInfo,
    client: outbound::HttpClient,
    destinations: Vec<Destination>,
    local: LocalModel,
    survey: Survey,
    /// An instance that can reach nothing: it answers questions only.
    probe: Session,
}

/// Paths, config, credentials, the local model, and a full pass over the input.
async fn prepare(options: &RunOptions) -> Result<Prepared, RunError> {
    Format::from_path(&options.input)?;
    Format::from_path(&options.output)?;
    if same_file(&options.input, &options.output) {
        return Err(RunError::SameFile(options.output.display().to_string()));
    }
    let plugin = load_plugin(options.component.as_deref(), options.cache_dir.as_deref(), options.limits)?;
    let config = options.job.component_config(&options.endpoints);
    let mut probe = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await?;
    let problems = probe.check_config(&config).await?;
    if !problems.is_empty() {
        return Err(RunError::Config(problems));
    }
    let model = probe
        .find_model(&options.job.generation_model)
        .await?
        .expect("check-config accepted the model, so the component finds it");
    let client = outbound::http_client();
    let (destinations, local) = connections(options, &model, &client)?;
    let survey = dataset::survey(&options.input, &options.job.input_column, &options.job.output_column)?;
    Ok(Prepared { plugin, config, model, client, destinations, local, survey, probe })
}

/// What `--dry-run` shows: everything is checked, nothing is sent.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub rows: u64,
    pub model: ModelInfo,
    /// The first request, without its credential; `None` for `Local`.
    pub request: Option<RequestPreview>,
    /// The header the host would add the key in, if any.
    pub credential_header: Option<String>,
}

/// Checks everything a run would and previews its first request.
pub async fn dry_run(options: &RunOptions) -> Result<DryRun, RunError> {
    let Prepared { config, model, destinations, survey, mut probe, .. } = prepare(options).await?;
    let mut reader = Reader::open(&options.input, &survey, &options.job.input_column)?;
    let request = match reader.next_chunk(1)? {
        Some(chunk) => probe
            .preview_request(&config, &chunk.inputs[0])
            .await?
            .map_err(|message| RunError::Config(vec![ConfigProblem { field: "config".into(), message }]))?,
        None => None,
    };
    let credential_header = destinations.first().and_then(|d| d.credential.as_ref()).map(|(name, _)| name.to_string());
    Ok(DryRun { rows: survey.rows, model, request, credential_header })
}

/// [`run`], reporting progress to `progress` after each batch.
pub async fn run_with_progress(options: &RunOptions, progress: &dyn Progress) -> Result<Summary, RunError> {
    let started = Instant::now();
    let Prepared { plugin, config, model, client, destinations, local, survey, probe } = prepare(options).await?;
    drop(probe);
    let mut journal = Journal::open(&Journal::path_for(&options.output), options.fresh)?;
    let params = WorkParams {
        provider: model.provider.clone(),
        model_id: match (&options.job.model_id, model.provider.as_str()) {
            (Some(id), "local") => format!("{}:{id}", local.identity()),
            (Some(id), _) => id.clone(),
            (None, "local") => local.identity(),
            (None, _) => model.model_id.clone(),
        },
        system_prompt: options.job.system_prompt.clone(),
        temperature: options.job.temperature,
        top_p: options.job.top_p,
        max_tokens: options.job.max_tokens,
    };
    let mut reader = Reader::open(&options.input, &survey, &options.job.input_column)?;
    let mut writer = Writer::create(&options.output, &survey, &options.job.output_column)?;
    let pacer = Pacer::new(PaceSettings {
        max_concurrency: options.job.batch_size as usize,
        max_requests_per_minute: options.job.max_rpm,
        max_tokens_per_minute: options.job.max_tpm,
    });
    let outbound = Outbound::new(destinations, client, std::sync::Arc::clone(&pacer)).with_reply_cap(options.limits.max_reply_bytes)
        .with_request_timeout(options.job.request_timeout);
    let mut idle = Vec::with_capacity(BATCH_WINDOW);
    for _ in 0..BATCH_WINDOW {
        idle.push(plugin.instantiate(outbound.clone(), local.clone()).await?);
    }
    // Fail in a second, not after a batch: credentials and model id.
    if options.preflight {
        idle[0].preflight(&config).await?.map_err(|error| RunError::Preflight(error.describe()))?;
    }

    let mut summary = Summary {
        model: model.label.clone(),
        provider: model.provider.clone(),
        model_id: params.model_id.clone(),
        total_rows: survey.rows,
        ..Summary::default()
    };
    progress.started(survey.rows);
    // Batches read but not yet written, by sequence number; a batch's
    // results arrive in any order but are written strictly in order.
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut tasks: JoinSet<(u64, Session, BatchResults)> = JoinSet::new();
    let (mut next_seq, mut exhausted) = (0u64, false);
    loop {
        while !exhausted && pending.len() < BATCH_WINDOW && !idle.is_empty() {
            let Some(chunk) = reader.next_chunk(options.job.batch_size as usize)? else {
                exhausted = true;
                break;
            };
            let keys: Vec<WorkKey> = chunk.inputs.iter().map(|input| params.key(input)).collect();
            let reused = keys.iter().map(|key| journal.get(key)).collect::<Result<Vec<_>, _>>()?;
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| reused[i].is_none()).collect();
            let results = if missing.is_empty() {
                Some(Vec::new())
            } else {
                let inputs: Vec<String> = missing.iter().map(|&i| chunk.inputs[i].clone()).collect();
                let (mut session, config, seq) = (idle.pop().unwrap(), config.clone(), next_seq);
                tasks.spawn(async move {
                    let results = session.generate_batch(&config, &inputs).await;
                    (seq, session, results)
                });
                None
            };
            pending.insert(next_seq, Pending { chunk, keys, reused, missing, results });
            next_seq += 1;
        }
        while pending.first_key_value().is_some_and(|(_, batch)| batch.results.is_some()) {
            let (_, batch) = pending.pop_first().unwrap();
            write_batch(batch, &mut writer, &mut summary)?;
            summary.elapsed = started.elapsed();
            progress.advanced(&summary);
        }
        if pending.is_empty() {
            if exhausted {
                break;
            }
            continue;
        }
        let joined = tasks.join_next().await.expect("an unwritten batch has a task");
        let (seq, session, results) = joined.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        let batch = pending.get_mut(&seq).expect("a task belongs to a pending batch");
        let results: Vec<Result<Generation, String>> = match results {
            Ok(results) => {
                if session.rows_served() >= RECYCLE_AFTER_ROWS {
                    drop(session);
                    idle.push(plugin.instantiate(outbound.clone(), local.clone()).await?);
                } else {
                    idle.push(session);
                }
                results.into_iter().map(|result| result.map_err(|error| error.describe())).collect()
            }
            // The component broke on this batch: its rows fail in place (and
            // are retried by the next run), and a fresh instance carries on.
            Err(error) => {
                tracing::warn!("rows {} to {}: {error}; continuing with a fresh instance", batch.chunk.first_row + 1, batch.chunk.first_row + batch.chunk.len() as u64);
                drop(session);
                idle.push(plugin.instantiate(outbound.clone(), local.clone()).await?);
                let message = format!("component: {error}");
                batch.missing.iter().map(|_| Err(message.clone())).collect()
            }
        };
        // Durable before anything else happens: a kill from here on repeats
        // none of these rows.
        let saved: Vec<(WorkKey, Saved)> = batch
            .missing
            .iter()
            .zip(&results)
            .filter_map(|(&row, result)| result.as_ref().ok().map(|g| (batch.keys[row], saved(g))))
            .collect();
        journal.append(&saved)?;
        batch.results = Some(results);
    }
    let pace = pacer.stats();
    summary.rate_limit_cuts = pace.cuts;
    summary.lowest_concurrency = pace.lowest_limit;
    writer.finish()?;
    summary.elapsed = started.elapsed();
    progress.finished(&summary);
    Ok(summary)
}

type BatchResults = Result<Vec<Result<Generation, RowError>>, PluginError>;

/// A batch read from the input and not yet written.
struct Pending {
    chunk: Chunk,
    keys: Vec<WorkKey>,
    /// Work saved by earlier runs, per row.
    reused: Vec<Option<Saved>>,
    /// Rows with no saved work, in the order they were sent.
    missing: Vec<usize>,
    /// Results for `missing`, once its task is done: a generation or the
    /// text for the error column.
    results: Option<Vec<Result<Generation, String>>>,
}

fn saved(generation: &Generation) -> Saved {
    Saved {
        text: generation.text.clone(),
        finish_reason: generation.finish_reason.clone(),
        input_tokens: generation.input_tokens,
        output_tokens: generation.output_tokens,
        attempts: generation.attempts,
    }
}

/// Writes a finished batch: new results where rows were sent, saved work
/// everywhere else.
fn write_batch(batch: Pending, writer: &mut Writer, summary: &mut Summary) -> Result<(), RunError> {
    let Pending { chunk, reused, missing, results, .. } = batch;
    let mut fresh = results.expect("only finished batches are written").into_iter();
    let mut missing = missing.into_iter().peekable();
    let mut outputs = Vec::with_capacity(chunk.len());
    for (row, reused) in reused.into_iter().enumerate() {
        let output = if missing.next_if_eq(&row).is_some() {
            match fresh.next().expect("one result per sent row") {
                Ok(generation) => {
                    summary.input_tokens += u64::from(generation.input_tokens);
                    summary.output_tokens += u64::from(generation.output_tokens);
                    summary.attempts += u64::from(generation.attempts);
                    Ok(generation.text)
                }
                Err(error) => {
                    summary.failed += 1;
                    Err(error)
                }
            }
        } else {
            summary.reused += 1;
            Ok(reused.expect("a row not sent has saved work").text)
        };
        outputs.push(output);
    }
    summary.rows += chunk.len() as u64;
    writer.write_chunk(chunk, &outputs)?;
    Ok(())
}

/// The one destination this run may reach (the chosen provider's endpoint,
/// with its key) and the local model.
fn connections(
    options: &RunOptions,
    model: &ModelInfo,
    client: &outbound::HttpClient,
) -> Result<(Vec<Destination>, LocalModel), RunError> {
    let endpoint = |name: &'static str, url: &str| {
        Origin::parse(url).map_err(|message| RunError::Endpoint { name, url: url.to_string(), message })
    };
    // A provider: its key variable, the key, its base URL and how the key
    // travels (OpenAI's bearer token, Anthropic's x-api-key).
    type Credential = fn(Origin, Option<&str>) -> Result<Destination, String>;
    let remote = |variable: &'static str, key: Option<&str>, base_name: &'static str, base: &str, credential: Credential| {
        let key = key.ok_or_else(|| RunError::MissingKey { variable, model: model.label.clone() })?;
        let destination = credential(endpoint(base_name, base)?, Some(key))
            .map_err(|message| RunError::InvalidKey { variable, message })?;
        Ok((vec![destination], LocalModel::Unavailable))
    };
    match model.provider.as_str() {
        "openai" => remote("OPENAI_API_KEY", options.keys.openai.as_deref(), "OPENAI_BASE_URL", &options.endpoints.openai_base_url, Destination::bearer),
        "anthropic" => remote(
            "ANTHROPIC_API_KEY",
            options.keys.anthropic.as_deref(),
            "ANTHROPIC_BASE_URL",
            &options.endpoints.anthropic_base_url,
            Destination::api_key,
        ),
        _ => match options.local_url.as_deref() {
            Some(url) => {
                endpoint("--local-url", url)?;
                Ok((Vec::new(), LocalModel::Server(std::sync::Arc::new(ServerModel::new(url, client.clone())))))
            }
            None => {
                let path = options.local_model.clone().unwrap_or_else(|| PathBuf::from(embedded::DEFAULT_MODEL));
                let model = EmbeddedModel::load(&path, options.cache_dir.as_deref(), options.seed)?;
                Ok((Vec::new(), LocalModel::Embedded(std::sync::Arc::new(model))))
            }
        },
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
