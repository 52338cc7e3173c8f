//! Backends of the `local-model` import: what `Local` means on this host.

pub mod embedded;
mod server;

pub use embedded::{EmbeddedError, EmbeddedModel};
pub use server::ServerModel;

use crate::bindings::{LocalCompletion, LocalRequest, RowError};
use std::sync::Arc;

/// The local model a run uses.
#[derive(Clone)]
pub enum LocalModel {
    /// No local model is configured: `Local` rows fail with a clear error.
    Unavailable,
    /// An OpenAI-compatible server (vLLM, llama.cpp, Ollama) at `--local-url`.
    Server(Arc<ServerModel>),
    /// A GGUF model run in-process (`--local-model`, or the default one).
    Embedded(Arc<EmbeddedModel>),
}

impl LocalModel {
    /// Generates for every request, one result each, in request order.
    /// With no local model configured, every request fails.
    pub async fn generate(&self, requests: Vec<LocalRequest>) -> Vec<Result<LocalCompletion, RowError>> {
        match self {
            LocalModel::Unavailable => {
                requests.iter().map(|_| Err(RowError::InvalidRequest("no local model is configured".into()))).collect()
            }
            LocalModel::Server(server) => server.generate(requests).await,
            LocalModel::Embedded(model) => {
                let model = Arc::clone(model);
                let count = requests.len();
                // The model computes on the CPU: keep it off the async workers.
                tokio::task::spawn_blocking(move || model.generate(&requests)).await.unwrap_or_else(|error| {
                    let message = format!("the local model failed: {error}");
                    (0..count).map(|_| Err(RowError::Transport(message.clone()))).collect()
                })
            }
        }
    }

    /// What distinguishes this backend's output in saved work.
    pub fn identity(&self) -> String {
        match self {
            LocalModel::Unavailable => String::new(),
            LocalModel::Server(server) => format!("server:{}", server.base()),
            LocalModel::Embedded(model) => model.identity().to_string(),
        }
    }
}
