//! Backends of the `local-model` import: what `Local` means on this host.

mod server;

pub use server::ServerModel;

use crate::plugin::bindings::{LocalCompletion, LocalRequest, RowError};
use std::sync::Arc;

/// The local model a run uses.
#[derive(Clone)]
pub enum LocalModel {
    /// No local model is configured: `Local` rows fail with a clear error.
    Unavailable,
    /// An OpenAI-compatible server (vLLM, llama.cpp, Ollama) at `--local-url`.
    Server(Arc<ServerModel>),
}

impl LocalModel {
    pub async fn generate(&self, requests: Vec<LocalRequest>) -> Vec<Result<LocalCompletion, RowError>> {
        match self {
            LocalModel::Unavailable => requests
                .iter()
                .map(|_| {
                    Err(RowError::InvalidRequest(
                        "no local model is configured: pass --local-url (or set BATCHGEN_LOCAL_URL)".into(),
                    ))
                })
                .collect(),
            LocalModel::Server(server) => server.generate(requests).await,
        }
    }
}
