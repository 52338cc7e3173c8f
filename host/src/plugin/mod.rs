//! Loading the component and calling it: the wasmtime side of batchgen.
//!
//! One `Plugin` per process (engine, compiled component, pre-linked
//! imports); one `Session` per run (a store and an instance), so that
//! whatever the component learns during a run lasts for that run.

pub mod bindings;
pub mod cache;

use crate::local::LocalModel;
use crate::outbound::Outbound;
use bindings::{BatchPlugin, BatchPluginPre, Config, ConfigProblem, Generation, LocalCompletion, LocalRequest, ModelInfo, RowError};
use std::path::Path;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The component built from `guest/`, embedded at build time.
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/batchgen_guest.wasm"));

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("could not read the component {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("could not set up the wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("not a valid component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("the component does not fit the batchgen:plugin world this host provides: {0:#}")]
    Link(wasmtime::Error),
    #[error("the component failed: {0:#}")]
    Trap(wasmtime::Error),
    #[error("the component returned {returned} results for {expected} rows")]
    WrongCount { expected: usize, returned: usize },
}

/// A compiled, pre-linked component, ready to instantiate cheaply.
pub struct Plugin {
    engine: Engine,
    pre: BatchPluginPre<State>,
}

impl Plugin {
    /// Compiles (or loads from `cache_dir`) and links `wasm`.
    pub fn new(wasm: &[u8], cache_dir: Option<&Path>) -> Result<Plugin, PluginError> {
        let config = wasmtime::Config::new();
        let engine = Engine::new(&config).map_err(PluginError::Engine)?;
        let component = cache::load(&engine, wasm, cache_dir).map_err(PluginError::Compile)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(PluginError::Link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(PluginError::Link)?;
        bindings::batchgen::plugin::types::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(PluginError::Link)?;
        bindings::batchgen::plugin::local_model::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(PluginError::Link)?;
        let pre = linker.instantiate_pre(&component).map_err(PluginError::Link)?;
        let pre = BatchPluginPre::new(pre).map_err(PluginError::Link)?;
        Ok(Plugin { engine, pre })
    }

    /// Reads a component file, e.g. from `--component`.
    pub fn from_file(path: &Path, cache_dir: Option<&Path>) -> Result<Plugin, PluginError> {
        let wasm = std::fs::read(path).map_err(|source| PluginError::Read { path: path.display().to_string(), source })?;
        Plugin::new(&wasm, cache_dir)
    }

    pub async fn instantiate(&self, outbound: Outbound, local: LocalModel) -> Result<Session, PluginError> {
        let state = State {
            // Nothing of the host's leaks in: no environment, arguments,
            // directories, sockets or name lookups.
            wasi: WasiCtxBuilder::new().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound,
            local,
        };
        let mut store = Store::new(&self.engine, state);
        let instance = self.pre.instantiate_async(&mut store).await.map_err(PluginError::Trap)?;
        Ok(Session { store, instance })
    }
}

/// One instance of the component and its store.
pub struct Session {
    store: Store<State>,
    instance: BatchPlugin,
}

impl Session {
    pub async fn list_models(&mut self) -> Result<Vec<ModelInfo>, PluginError> {
        self.instance.batchgen_plugin_batch_generator().call_list_models(&mut self.store).await.map_err(PluginError::Trap)
    }

    pub async fn find_model(&mut self, generation_model: &str) -> Result<Option<ModelInfo>, PluginError> {
        self.instance
            .batchgen_plugin_batch_generator()
            .call_find_model(&mut self.store, generation_model)
            .await
            .map_err(PluginError::Trap)
    }

    pub async fn check_config(&mut self, config: &Config) -> Result<Vec<ConfigProblem>, PluginError> {
        self.instance
            .batchgen_plugin_batch_generator()
            .call_check_config(&mut self.store, config)
            .await
            .map_err(PluginError::Trap)
    }

    /// Generates for `inputs`; a component that answers with the wrong number
    /// of results is an error, never a misaligned output.
    pub async fn generate_batch(&mut self, config: &Config, inputs: &[String]) -> Result<Vec<Result<Generation, RowError>>, PluginError> {
        let results = self
            .instance
            .batchgen_plugin_batch_generator()
            .call_generate_batch(&mut self.store, config, inputs)
            .await
            .map_err(PluginError::Trap)?;
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

impl bindings::batchgen::plugin::types::Host for State {}

impl bindings::batchgen::plugin::local_model::Host for State {
    async fn generate(&mut self, requests: Vec<LocalRequest>) -> Vec<Result<LocalCompletion, RowError>> {
        self.local.generate(requests).await
    }
}
