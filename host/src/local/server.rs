//! `Local` through an OpenAI-compatible server: each request of the batch is
//! sent at once, and the server's own batching (vLLM's and llama.cpp's
//! continuous batching) does the rest.

use crate::bindings::{LocalCompletion, LocalRequest, ProviderError, RowError};
use crate::outbound::{HttpClient, full_body};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Model name sent when neither the config nor the server names one;
/// llama.cpp ignores the field.
const FALLBACK_MODEL: &str = "default";

/// An OpenAI-compatible server (vLLM, llama.cpp, Ollama) that serves `Local`.
pub struct ServerModel {
    /// Base URL including the version segment, e.g. `http://localhost:8000/v1`.
    base: String,
    client: HttpClient,
    /// The first model the server lists, asked once per run: vLLM and Ollama
    /// need a served model's name, and users rarely know it offhand.
    default_model: OnceCell<String>,
}

impl ServerModel {
    /// A server at `base`, the URL up to and including its version segment
    /// (`http://localhost:8000/v1`); a trailing `/` is dropped.
    pub fn new(base: &str, client: HttpClient) -> ServerModel {
        ServerModel { base: base.trim_end_matches('/').to_string(), client, default_model: OnceCell::new() }
    }

    /// The base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends every request at once and returns one result each, in request
    /// order.
    pub async fn generate(self: &Arc<Self>, requests: Vec<LocalRequest>) -> Vec<Result<LocalCompletion, RowError>> {
        let count = requests.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (index, request) in requests.into_iter().enumerate() {
            let this = Arc::clone(self);
            tasks.spawn(async move { (index, this.complete(request).await) });
        }
        let mut results: Vec<Option<Result<LocalCompletion, RowError>>> = (0..count).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                Err(error) => tracing::error!("local request task failed: {error}"),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RowError::Transport("the local request was lost".into()))))
            .collect()
    }

    async fn model(&self) -> &str {
        self.default_model
            .get_or_init(|| async {
                match self.get_json(&format!("{}/models", self.base)).await {
                    Ok(value) => value["data"][0]["id"].as_str().unwrap_or(FALLBACK_MODEL).to_string(),
                    Err(error) => {
                        tracing::debug!("could not list the local server's models: {error}");
                        FALLBACK_MODEL.to_string()
                    }
                }
            })
            .await
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let request = http::Request::get(url).body(full_body(Vec::new())).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    async fn complete(&self, request: LocalRequest) -> Result<LocalCompletion, RowError> {
        let model = match request.model {
            Some(model) => model,
            None => self.model().await.to_string(),
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &request.system_prompt {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": request.prompt}));
        let mut body = json!({
            "model": model,
            "messages": messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        });
        if request.top_p != 1.0 {
            body["top_p"] = json!(request.top_p);
        }
        let url = format!("{}/chat/completions", self.base);
        let http_request = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(full_body(serde_json::to_vec(&body).expect("JSON serialises")))
            .map_err(|e| RowError::InvalidRequest(format!("local URL {url:?}: {e}")))?;
        let response = self
            .client
            .request(http_request)
            .await
            .map_err(|e| RowError::Transport(format!("local server at {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RowError::Transport(format!("local server reply cut off: {e}")))?
            .to_bytes();
        if !(200..300).contains(&status) {
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(match status {
                400 | 422 => RowError::InvalidRequest(format!("{status} {message}")),
                401 | 403 => RowError::Auth(format!("{status} {message}")),
                404 => RowError::NotFound(format!("{status} {message}")),
                _ => RowError::Provider(ProviderError {
                    status,
                    kind: value["error"]["type"].as_str().unwrap_or_default().to_string(),
                    message,
                }),
            });
        }
        parse_completion(&bytes)
    }
}

#[derive(Deserialize)]
struct Reply {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn parse_completion(bytes: &[u8]) -> Result<LocalCompletion, RowError> {
    let reply: Reply = serde_json::from_slice(bytes)
        .map_err(|e| RowError::MalformedReply(format!("local server reply is not a chat completion: {e}")))?;
    let choice = reply
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| RowError::MalformedReply("local server reply has no choices".into()))?;
    Ok(LocalCompletion {
        text: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason.unwrap_or_default(),
        input_tokens: reply.usage.prompt_tokens,
        output_tokens: reply.usage.completion_tokens,
    })
}
