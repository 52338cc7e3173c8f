//! `batchgen._core`: the batchgen host as a Python module. A run is started
//! here and waited on from Python (`Run.wait`), so that the Python layer
//! (`batchgen/__init__.py`) keeps the GIL free while it waits, updates its
//! progress bar, and sees Ctrl-C as a `KeyboardInterrupt` between two waits,
//! which cancels the run with its saved work kept.
//!
//! Keys come from the environment only, as in the CLI: no function here
//! takes one, so none ends up in a notebook.

use batchgen::config::{ApiKeys, ConfigError as JobError, Job, ProviderEndpoints};
use batchgen::plugin::cache;
use batchgen::plugin::sandbox::Limits;
use batchgen::progress::Progress;
use batchgen::run::{self, RunError, RunOptions};
use batchgen::summary::Summary;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(_core, BatchgenError, PyException, "A run could not start or finish; the message says why.");
create_exception!(
    _core,
    ConfigError,
    BatchgenError,
    "The job's parameters have problems: args[1] lists them as (field, message) pairs."
);

/// A `ConfigError` carrying its problems, each naming its field.
fn config_error(problems: Vec<(String, String)>) -> PyErr {
    let message = problems.iter().map(|(field, message)| format!("{field}: {message}")).collect::<Vec<_>>().join("; ");
    ConfigError::new_err((format!("invalid config: {message}"), problems))
}

/// The field a job error is about, for `ConfigError`.
fn job_problem(error: &JobError) -> (String, String) {
    let field = match error {
        JobError::Field { field, .. } => field.clone(),
        JobError::Missing { field, .. } => (*field).to_string(),
        JobError::Template { .. } => "prompt_template".into(),
        JobError::Conflict { .. } => "input_column".into(),
        _ => "config".into(),
    };
    (field, error.to_string())
}

fn run_error(error: RunError) -> PyErr {
    match error {
        RunError::Config(problems) => config_error(problems.into_iter().map(|p| (p.field, p.message)).collect()),
        RunError::Job(error) => config_error(vec![job_problem(&error)]),
        other => BatchgenError::new_err(other.to_string()),
    }
}

/// The job from the parameters' JSON (the config file's keys), checked for
/// what is required.
fn job(params: &str) -> Result<Job, PyErr> {
    let job = Job::parse(params, "the parameters").map_err(|e| config_error(vec![job_problem(&e)]))?;
    job.check_required().map_err(|e| config_error(vec![job_problem(&e)]))?;
    Ok(job)
}

/// Progress as counters the Python side reads between waits.
#[derive(Default)]
struct Counters {
    total: AtomicU64,
    rows: AtomicU64,
    failed: AtomicU64,
}

impl Progress for Counters {
    fn started(&self, rows: u64) {
        self.total.store(rows, Ordering::Relaxed);
    }

    fn advanced(&self, so_far: &Summary) {
        self.rows.store(so_far.rows, Ordering::Relaxed);
        self.failed.store(so_far.failed, Ordering::Relaxed);
    }
}

/// What a run's thread hands back.
#[derive(Default)]
struct Outcome {
    result: Mutex<Option<Result<Summary, RunError>>>,
    ready: Condvar,
}

/// A run in progress on a thread of its own.
#[pyclass(module = "batchgen._core")]
struct Run {
    counters: Arc<Counters>,
    outcome: Arc<Outcome>,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[pymethods]
impl Run {
    /// Waits at most `timeout` seconds, without the GIL; true once the run
    /// has ended.
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        let outcome = Arc::clone(&self.outcome);
        py.detach(move || {
            let guard = outcome.result.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = outcome
                .ready
                .wait_timeout_while(guard, Duration::from_secs_f64(timeout.max(0.0)), |result| result.is_none())
                .unwrap_or_else(|p| p.into_inner());
            guard.is_some()
        })
    }

    /// `(rows written, rows in the input, rows failed)` so far.
    fn progress(&self) -> (u64, u64, u64) {
        let c = &self.counters;
        (c.rows.load(Ordering::Relaxed), c.total.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
    }

    /// Stops the run: what was generated is in its saved work already.
    fn cancel(&mut self, py: Python<'_>) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        if let Some(thread) = self.thread.take() {
            py.detach(move || {
                let _ = thread.join();
            });
        }
    }

    /// The summary's report (JSON) once the run has ended; the run's error
    /// as an exception otherwise.
    fn result(&mut self, py: Python<'_>) -> PyResult<String> {
        if let Some(thread) = self.thread.take() {
            py.detach(move || {
                let _ = thread.join();
            });
        }
        let taken = self.outcome.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(Ok(summary)) => Ok(summary.report().to_string()),
            Some(Err(error)) => Err(run_error(error)),
            None => Err(BatchgenError::new_err("the run was cancelled")),
        }
    }
}

/// Starts the CLI's file job (`batchgen run`): `params` is a JSON object of
/// the config file's keys; endpoints and keys come from the environment.
#[pyfunction]
#[pyo3(signature = (input, output, params, *, local_model=None, seed=0, fresh=false))]
fn start(
    input: PathBuf,
    output: PathBuf,
    params: &str,
    local_model: Option<PathBuf>,
    seed: u64,
    fresh: bool,
) -> PyResult<Run> {
    let options = RunOptions {
        endpoints: ProviderEndpoints::from_env(),
        keys: ApiKeys::from_env(),
        local_model: local_model.or_else(|| std::env::var_os("BATCHGEN_LOCAL_MODEL").map(PathBuf::from)),
        seed,
        fresh,
        ..RunOptions::new(input, output, job(params)?)
    };
    let counters = Arc::new(Counters::default());
    let outcome = Arc::new(Outcome::default());
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let thread = {
        let (counters, outcome) = (Arc::clone(&counters), Arc::clone(&outcome));
        std::thread::Builder::new()
            .name("batchgen-run".into())
            .spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
                let result = runtime.block_on(async {
                    tokio::select! {
                        summary = run::run_with_progress(&options, counters.as_ref()) => Some(summary),
                        _ = cancelled => None,
                    }
                });
                if let Some(result) = result {
                    *outcome.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
                outcome.ready.notify_all();
            })
            .map_err(|e| BatchgenError::new_err(format!("could not start the run: {e}")))?
    };
    Ok(Run { counters, outcome, cancel: Some(cancel), thread: Some(thread) })
}

/// The models the component knows, as JSON.
#[pyfunction]
fn models(py: Python<'_>) -> PyResult<String> {
    py.detach(|| {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
        runtime.block_on(async {
            let plugin = run::load_plugin(None, cache::default_dir().as_deref(), Limits::default())
                .map_err(|e| BatchgenError::new_err(e.to_string()))?;
            let models = run::list_models(&plugin).await.map_err(|e| BatchgenError::new_err(e.to_string()))?;
            let listed: Vec<serde_json::Value> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "label": m.label,
                        "provider": m.provider.name(),
                        "model_id": m.model_id,
                        "aliases": m.aliases,
                        "note": m.note,
                    })
                })
                .collect();
            Ok(serde_json::Value::from(listed).to_string())
        })
    })
}

/// Every problem with `params` (the config file's keys, as JSON), each as
/// `(field, message)`; empty when a run would accept them. Sends nothing.
#[pyfunction]
fn check_config(py: Python<'_>, params: &str) -> PyResult<Vec<(String, String)>> {
    let job = match Job::parse(params, "the parameters").and_then(|job| job.check_required().map(|()| job)) {
        Ok(job) => job,
        Err(error) => return Ok(vec![job_problem(&error)]),
    };
    py.detach(|| {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
        runtime.block_on(async {
            let plugin = run::load_plugin(None, cache::default_dir().as_deref(), Limits::default())
                .map_err(|e| BatchgenError::new_err(e.to_string()))?;
            let mut config = job.component_config(&ProviderEndpoints::from_env());
            match job.template_text() {
                Ok(text) => config.prompt_template = text,
                Err(error) => return Ok(vec![job_problem(&error)]),
            }
            let problems =
                run::check_config(&plugin, &config).await.map_err(|e| BatchgenError::new_err(e.to_string()))?;
            Ok(problems.into_iter().map(|p| (p.field, p.message)).collect())
        })
    })
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // At import, before any run starts a thread of ours.
    batchgen::local::embedded::prepare_environment();
    module.add_function(wrap_pyfunction!(start, module)?)?;
    module.add_function(wrap_pyfunction!(models, module)?)?;
    module.add_function(wrap_pyfunction!(check_config, module)?)?;
    module.add_class::<Run>()?;
    module.add("BatchgenError", module.py().get_type::<BatchgenError>())?;
    module.add("ConfigError", module.py().get_type::<ConfigError>())?;
    Ok(())
}
