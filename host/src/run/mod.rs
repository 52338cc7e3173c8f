//! The batch job: read a dataset a batch at a time, have the component
//! generate, write every row back in place with its output or its error.

mod batch_api;
mod dry_run;
mod prepare;
mod prompts;
mod window;

pub use batch_api::{BookError, cancel, resume_hint};
pub use dry_run::{DryRun, dry_run};

use crate::bindings::{ConfigProblem, ModelInfo};
use crate::config::{ApiKeys, ConfigError, Job, ProviderEndpoints};
use crate::dataset::DatasetError;
use crate::journal::JournalError;
use crate::local::LocalModel;
use crate::outbound::Outbound;
use crate::plugin::sandbox::Limits;
use crate::plugin::{EMBEDDED_COMPONENT, Plugin, PluginError, cache};
use crate::progress::{Progress, Silent};
use crate::summary::Summary;
use std::path::{Path, PathBuf};
use std::time::Instant;
use window::Window;

/// Everything a run needs besides the job's parameters.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The dataset to read; its format comes from its extension.
    pub input: PathBuf,
    /// Where to write the result, format from its extension; must not be
    /// the input file. The journal of saved work sits next to it.
    pub output: PathBuf,
    /// The spec's parameters: model, columns, sampling, batch size, ...
    pub job: Job,
    /// Where provider requests go.
    pub endpoints: ProviderEndpoints,
    /// API keys; only the chosen model's provider's key is sent.
    pub keys: ApiKeys,
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

/// Why a run could not start or finish. Row failures are not run errors:
/// they are written next to their rows.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A required parameter is missing, or the config file is unreadable.
    #[error(transparent)]
    Job(#[from] ConfigError),
    /// The component's `check-config` found problems, each naming its field.
    #[error("invalid config:{}", list(.0))]
    Config(Vec<ConfigProblem>),
    /// The component accepted the config but knows no model for it.
    #[error("the component accepted the config but has no model for generation_model {0:?}")]
    NoModel(String),
    /// The model's provider needs an API key and none was given.
    #[error("{variable} is not set: {model} needs an API key (export {variable}=...)")]
    MissingKey {
        /// The environment variable that holds the key (`OPENAI_API_KEY`).
        variable: &'static str,
        /// The model's label.
        model: String,
    },
    /// The embedded local model is missing or could not be loaded.
    #[error(transparent)]
    LocalModel(#[from] crate::local::EmbeddedError),
    /// The provider's base URL, or `--local-url`, is not an http(s) URL with
    /// a host.
    #[error("{name} {url:?}: {message}")]
    Endpoint {
        /// The setting it came from (`OPENAI_BASE_URL`, `--local-url`, ...).
        name: &'static str,
        /// The value given.
        url: String,
        /// Why it was rejected.
        message: String,
    },
    /// The API key cannot be sent in an HTTP header.
    #[error("{variable}: {message}")]
    InvalidKey {
        /// The environment variable that holds the key.
        variable: &'static str,
        /// Why it was rejected.
        message: String,
    },
    /// The output path names the input file.
    #[error("the output file must differ from the input file ({0})")]
    SameFile(String),
    /// Reading, checking or writing the dataset failed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Loading, instantiating or calling the component failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The journal of saved work could not be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A batch-API run could not go on: a call about its jobs failed for
    /// good, or its state does not allow what was asked.
    #[error("{0}")]
    Batch(String),
    /// The files that record a batch-API run's jobs could not be read or written.
    #[error(transparent)]
    Book(#[from] BookError),
    /// The preflight request failed: the provider refused the credentials or
    /// does not know the model id.
    #[error("preflight check failed (pass --no-preflight to skip it): {0}")]
    Preflight(String),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("\n  {}: {}", p.field, p.message)).collect()
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

/// Every problem with `config`, asked of an instance that may send nothing.
pub async fn check_config(
    plugin: &Plugin,
    config: &crate::bindings::Config,
) -> Result<Vec<ConfigProblem>, PluginError> {
    let mut session = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await?;
    session.check_config(config).await
}

/// Runs the job. Every check happens before the first request: paths,
/// config, credentials, and a full pass over the input.
pub async fn run(options: &RunOptions) -> Result<Summary, RunError> {
    run_with_progress(options, &Silent).await
}

/// [`run`], reporting progress to `progress` after each batch.
pub async fn run_with_progress(options: &RunOptions, progress: &dyn Progress) -> Result<Summary, RunError> {
    if options.job.batch_api {
        return batch_api::run(options, progress).await;
    }
    let started = Instant::now();
    let mut window = Window::open(options, prepare::prepare(options).await?).await?;
    progress.started(window.summary.total_rows);
    while !window.done() {
        window.fill().await?;
        while window.write_next()? {
            window.summary.elapsed = started.elapsed();
            progress.advanced(&window.summary);
        }
        window.collect().await?;
    }
    let mut summary = window.finish()?;
    summary.elapsed = started.elapsed();
    progress.finished(&summary);
    Ok(summary)
}
