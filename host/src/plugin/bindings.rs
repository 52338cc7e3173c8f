//! Host bindings for the `batchgen:plugin/batch-plugin` world.
//!
//! WASI interfaces map onto wasmtime-wasi's own bindings so the component's
//! `wasi:http` resources are the ones wasmtime-wasi-http implements.

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
pub use self::exports::batchgen::plugin::batch_generator::ModelInfo;

impl std::fmt::Display for RowError {
    /// `kind: message`, the form written to a row's error column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowError::InvalidRequest(m) => write!(f, "invalid_request: {m}"),
            RowError::Auth(m) => write!(f, "auth: {m}"),
            RowError::NotFound(m) => write!(f, "not_found: {m}"),
            RowError::RateLimited(m) => write!(f, "rate_limited: {m}"),
            RowError::Provider(e) if e.kind.is_empty() => write!(f, "provider: {} {}", e.status, e.message),
            RowError::Provider(e) => write!(f, "provider: {} {}: {}", e.status, e.kind, e.message),
            RowError::Timeout(m) => write!(f, "timeout: {m}"),
            RowError::Transport(m) => write!(f, "transport: {m}"),
            RowError::MalformedReply(m) => write!(f, "malformed_reply: {m}"),
        }
    }
}
