//! Host bindings for the `batchgen:plugin/batch-plugin` world.
//!
//! A module of their own, as in Zed's extension host: `plugin` calls the
//! component's exports and `local` serves its `local-model` import, and both
//! speak these types without importing each other.
//!
//! WASI interfaces map onto wasmtime-wasi's own bindings so the component's
//! `wasi:http` resources are the ones wasmtime-wasi-http implements.

// The generated items carry the WIT file's doc comments where bindgen
// keeps them; the rest (accessors, linker glue) has none to carry.
#![expect(missing_docs, reason = "generated from wit/batchgen.wit, which is the documentation")]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "batchgen:plugin/batch-plugin",
    imports: { default: async },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

pub use self::batchgen::plugin::local_model::{LocalCompletion, LocalRequest};
pub use self::batchgen::plugin::types::{Config, ConfigProblem, Endpoints, Generation, ProviderError, RowError};
pub use self::exports::batchgen::plugin::batch_generator::{ModelInfo, Provider, RequestPreview};
pub use self::exports::batchgen::plugin::batch_jobs::{
    Failure, JobError, JobLimits, JobRow, JobState, JobStatus, JobTag, RowOutcome,
};

impl RowError {
    /// `kind: message`, the form written to a row's error column. (The
    /// generated `Display` is bindgen's debug rendering.)
    pub fn describe(&self) -> String {
        match self {
            RowError::InvalidRequest(m) => format!("invalid_request: {m}"),
            RowError::Auth(m) => format!("auth: {m}"),
            RowError::NotFound(m) => format!("not_found: {m}"),
            RowError::RateLimited(m) => format!("rate_limited: {m}"),
            RowError::Provider(e) if e.kind.is_empty() => format!("provider: {} {}", e.status, e.message),
            RowError::Provider(e) => format!("provider: {} {}: {}", e.status, e.kind, e.message),
            RowError::Timeout(m) => format!("timeout: {m}"),
            RowError::Transport(m) => format!("transport: {m}"),
            RowError::MalformedReply(m) => format!("malformed_reply: {m}"),
        }
    }
}

impl Provider {
    /// `openai`, `anthropic` or `local`: how reports, prices and saved work
    /// name the provider.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Local => "local",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
