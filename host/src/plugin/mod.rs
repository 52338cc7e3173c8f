//! Loading the component and calling it: the wasmtime side of batchgen.
//!
//! One `Plugin` per process (engine, compiled component, pre-linked
//! imports); one `Session` per run (a store and an instance), so that
//! whatever the component learns during a run lasts for that run.

pub mod cache;
pub mod host_memory;
mod jobs;
pub mod sandbox;

use crate::bindings::{
    BatchPlugin, BatchPluginPre, Config, ConfigProblem, Generation, LocalCompletion, LocalRequest, ModelInfo,
    RequestPreview, RowError,
};
use crate::calls::CallScope;
use crate::local::LocalModel;
use crate::outbound::Outbound;
use sandbox::{EpochTicker, GuestLog, Limits, StderrTail};
use sha2::Digest;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The component built from `guest/`, embedded at build time.
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/batchgen_guest.wasm"));

/// An error loading the component, instantiating it or calling it.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The component file could not be read.
    #[error("could not read the component {path}: {source}")]
    Read {
        /// The component file.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Wasmtime rejected the engine configuration, or a store's fuel could
    /// not be set.
    #[error("could not set up the wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    /// The bytes could not be compiled as a component.
    #[error("not a valid component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component's imports or exports do not match the `batch-plugin`
    /// world this host provides.
    #[error("the component does not fit the batchgen:plugin world this host provides: {0:#}")]
    Link(wasmtime::Error),
    /// Instantiating or calling the component trapped for a reason no limit
    /// explains; the cause, in one line (the backtrace goes to the log).
    #[error("the component failed: {0}")]
    Trap(String),
    /// The component panicked; its panic message, from its stderr.
    #[error("the component failed: panicked: {0}")]
    Panic(String),
    /// The component's linear memory would have passed `--max-memory`.
    #[error("the component exceeded --max-memory {0} MiB")]
    Memory(usize),
    /// A table of the component would have passed `--max-table-elements`.
    #[error("the component exceeded --max-table-elements {0}")]
    Table(usize),
    /// The component held more host resources at once than its share of
    /// `--max-host-memory` allows.
    #[error("the component exceeded --max-host-memory {budget} MiB (more than {entries} host resources at once)")]
    HostMemory {
        /// The budget, in MiB.
        budget: usize,
        /// The resource table entries it allows.
        entries: usize,
    },
    /// A set of header fields would have passed the host's limit on one.
    #[error("the component exceeded the host's limit of {} KiB on one set of header fields", .0 >> 10)]
    Fields(usize),
    /// `--max-host-memory` cannot hold what a batch of this size needs.
    #[error(
        "--max-host-memory {budget} MiB is too small for a batch size of {batch_size}: it needs at least {needed} MiB"
    )]
    HostBudgetTooSmall {
        /// The budget, in MiB.
        budget: usize,
        /// The run's batch size.
        batch_size: usize,
        /// The smallest budget that would do, in MiB.
        needed: usize,
    },
    /// The component used up its fuel for the call.
    #[error("the component ran out of fuel (--fuel {0} per call)")]
    Fuel(u64),
    /// Instantiating or calling the component took longer than the call
    /// deadline (`--call-timeout`).
    #[error("the component did not return within the call deadline of {} s (--call-timeout)", .0.as_secs_f64())]
    Deadline(Duration),
    /// `generate_batch` got back a different number of results than it sent
    /// inputs.
    #[error("the component returned {returned} results for {expected} rows")]
    WrongCount {
        /// The number of inputs sent.
        expected: usize,
        /// The number of results returned.
        returned: usize,
    },
}

/// A compiled, pre-linked component, ready to instantiate cheaply.
pub struct Plugin {
    engine: Engine,
    digest: [u8; 32],
    pre: BatchPluginPre<State>,
    limits: Limits,
    _ticker: EpochTicker,
}

impl Plugin {
    /// Compiles (or loads from `cache_dir`) and links `wasm`; its instances
    /// get `limits`.
    pub fn new(wasm: &[u8], cache_dir: Option<&Path>, limits: Limits) -> Result<Plugin, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel.is_some());
        let engine = Engine::new(&config).map_err(PluginError::Engine)?;
        let component = cache::load(&engine, wasm, cache_dir).map_err(PluginError::Compile)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(PluginError::Link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(PluginError::Link)?;
        host_memory::cap_url_parts(&mut linker).map_err(PluginError::Link)?;
        crate::bindings::batchgen::plugin::types::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(PluginError::Link)?;
        crate::bindings::batchgen::plugin::local_model::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| {
            state
        })
        .map_err(PluginError::Link)?;
        let pre = linker.instantiate_pre(&component).map_err(PluginError::Link)?;
        let pre = BatchPluginPre::new(pre).map_err(PluginError::Link)?;
        let ticker = EpochTicker::start(&engine);
        let digest = sha2::Sha256::digest(wasm).into();
        Ok(Plugin { engine, digest, pre, limits, _ticker: ticker })
    }

    /// The SHA-256 of the component's bytes: what identifies it in saved
    /// work.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Reads a component file, e.g. from `--component`.
    pub fn from_file(path: &Path, cache_dir: Option<&Path>, limits: Limits) -> Result<Plugin, PluginError> {
        let wasm =
            std::fs::read(path).map_err(|source| PluginError::Read { path: path.display().to_string(), source })?;
        Plugin::new(&wasm, cache_dir, limits)
    }

    /// A fresh instance for one run: its HTTP requests go through
    /// `outbound`, and `local` serves its `local-model` import.
    pub async fn instantiate(&self, outbound: Outbound, local: LocalModel) -> Result<Session, PluginError> {
        let budget = self.limits.host_budget()?;
        let (stdout, stderr) = GuestLog::pair(self.limits.log_bytes);
        let stderr_tail = stderr.tail();
        let (outbound, scope) = outbound.for_store(budget.in_flight);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(host_memory::FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(budget.entries);
        let state = State {
            // Nothing of the host's leaks in: no environment, arguments,
            // directories, sockets or name lookups; output goes to the log.
            wasi: WasiCtxBuilder::new()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .stdout(stdout)
                .stderr(stderr)
                .build(),
            http,
            table,
            outbound,
            local,
            batch_size: self.limits.batch_size,
            scope: scope.clone(),
            limits: self.limits.store_limits(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to the runtime every tick, so a busy component cannot hold a
        // worker thread and the call deadline below can always fire.
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        if let Some(fuel) = self.limits.fuel {
            store.set_fuel(fuel).map_err(PluginError::Engine)?;
        }
        let instance = within(&self.limits, &stderr_tail, &scope, self.pre.instantiate_async(&mut store)).await?;
        Ok(Session { store, instance, limits: self.limits, stderr_tail, scope, rows: 0 })
    }
}

/// One instance of the component and its store.
///
/// After any error from a call the instance may be in a broken state (a
/// trap, a call cut off at its deadline): drop the session and instantiate
/// a fresh one.
pub struct Session {
    store: Store<State>,
    instance: BatchPlugin,
    limits: Limits,
    /// The last lines the component wrote to stderr: its panic message.
    stderr_tail: StderrTail,
    /// Marks the calls, so that a request outlives none.
    scope: CallScope,
    rows: u64,
}

/// Runs a call into the component under the call deadline; a failure is
/// named by the limit that stopped it.
async fn within<T>(
    limits: &Limits,
    stderr: &StderrTail,
    scope: &CallScope,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, PluginError> {
    scope.begin();
    let result = tokio::time::timeout(limits.call_timeout, call).await;
    scope.end();
    match result {
        Ok(result) => result.map_err(|error| failure(error, limits, stderr)),
        Err(_) => Err(PluginError::Deadline(limits.call_timeout)),
    }
}

/// What stopped a call, first and in one line: the limit it hit, or the
/// component's own panic message; the whole error, backtrace included, goes
/// to the log only.
fn failure(error: wasmtime::Error, limits: &Limits, stderr: &StderrTail) -> PluginError {
    tracing::debug!("the component failed: {error:?}");
    let chain = format!("{error:#}");
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => return PluginError::Fuel(limits.fuel.unwrap_or_default()),
        // Rust components abort on panic with `unreachable`, after printing
        // the message.
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            if let Some(message) = stderr.panic_message() {
                return PluginError::Panic(message);
            }
        }
        _ => {}
    }
    if chain.contains("forcing trap when growing memory") {
        return PluginError::Memory(limits.memory_bytes >> 20);
    }
    if chain.contains("forcing trap when growing table") {
        return PluginError::Table(limits.table_elements);
    }
    if chain.contains("size of fields exceeds limit") {
        return PluginError::Fields(host_memory::FIELDS_BYTES);
    }
    if let Some(wasmtime::component::ResourceTableError::Full) = error.downcast_ref() {
        let entries = limits.host_budget().map_or(0, |budget| budget.entries);
        return PluginError::HostMemory { budget: limits.host_memory_bytes >> 20, entries };
    }
    let cause = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    PluginError::Trap(cause.lines().next().unwrap_or_default().to_string())
}

impl Session {
    /// Rows this instance has been given. Hosts may retire an instance after
    /// many rows: whatever a component or its WASI resources leak dies with
    /// its store.
    pub fn rows_served(&self) -> u64 {
        self.rows
    }

    /// Fuel is per call: a long run must not starve on a budget meant to
    /// stop one runaway call.
    fn refuel(&mut self) -> Result<(), PluginError> {
        match self.limits.fuel {
            Some(fuel) => self.store.set_fuel(fuel).map_err(PluginError::Engine),
            None => Ok(()),
        }
    }

    /// The models the component supports.
    pub async fn list_models(&mut self) -> Result<Vec<ModelInfo>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_list_models(&mut self.store)).await
    }

    /// The model a `generation_model` value selects, matched as the config's
    /// is; `None` when no model matches.
    pub async fn find_model(&mut self, generation_model: &str) -> Result<Option<ModelInfo>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_find_model(&mut self.store, generation_model))
            .await
    }

    /// The request `generate_batch` would send for `input` under `config`,
    /// without credentials; `Ok(None)` for the local model. Sends nothing.
    pub async fn preview_request(
        &mut self,
        config: &Config,
        input: &str,
    ) -> Result<Result<Option<RequestPreview>, String>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_preview_request(&mut self.store, config, input),
        )
        .await
    }

    /// Checks before a run, with one request to the provider, that the
    /// credentials are accepted and the model id exists. The local model
    /// passes without a request.
    pub async fn preflight(&mut self, config: &Config) -> Result<Result<(), RowError>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_preflight(&mut self.store, config)).await
    }

    /// Every problem with `config`, each naming its field; empty when the
    /// config is usable. Sends nothing.
    pub async fn check_config(&mut self, config: &Config) -> Result<Vec<ConfigProblem>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_check_config(&mut self.store, config)).await
    }

    /// The columns the config's prompt template reads, or its syntax error.
    pub async fn template_columns(&mut self, config: &Config) -> Result<Result<Vec<String>, String>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        within(&self.limits, &self.stderr_tail, &self.scope, exports.call_template_columns(&mut self.store, config))
            .await
    }

    /// The config's prompt template rendered over each row (a JSON object of
    /// its columns); one result per row, or an error.
    pub async fn render_prompts(
        &mut self,
        config: &Config,
        rows: &[String],
    ) -> Result<Vec<Result<String, String>>, PluginError> {
        self.refuel()?;
        let exports = self.instance.batchgen_plugin_batch_generator();
        let prompts = within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_render_prompts(&mut self.store, config, rows),
        )
        .await?;
        if prompts.len() != rows.len() {
            return Err(PluginError::WrongCount { expected: rows.len(), returned: prompts.len() });
        }
        Ok(prompts)
    }

    /// Generates for `inputs`; a component that answers with the wrong number
    /// of results is an error, never a misaligned output.
    pub async fn generate_batch(
        &mut self,
        config: &Config,
        inputs: &[String],
    ) -> Result<Vec<Result<Generation, RowError>>, PluginError> {
        self.refuel()?;
        self.rows += inputs.len() as u64;
        let exports = self.instance.batchgen_plugin_batch_generator();
        let results = within(
            &self.limits,
            &self.stderr_tail,
            &self.scope,
            exports.call_generate_batch(&mut self.store, config, inputs),
        )
        .await?;
        if results.len() != inputs.len() {
            return Err(PluginError::WrongCount { expected: inputs.len(), returned: results.len() });
        }
        Ok(results)
    }
}

/// What the component's imports reach on the host.
pub struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    local: LocalModel,
    /// Requests one `local-model` call may carry.
    batch_size: usize,
    /// The calls into this store's component: the local model's work
    /// belongs to the call that asked for it.
    scope: CallScope,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

impl crate::bindings::batchgen::plugin::types::Host for State {}

impl crate::bindings::batchgen::plugin::local_model::Host for State {
    async fn generate(&mut self, requests: Vec<LocalRequest>) -> Vec<Result<LocalCompletion, RowError>> {
        self.local.generate(requests, self.batch_size, self.scope.ticket()).await
    }
}
