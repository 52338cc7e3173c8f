//! Backends of the `local-model` import: what `Local` means on this host.

pub mod embedded;

pub use embedded::{EmbeddedError, EmbeddedModel};

use crate::bindings::{LocalCompletion, LocalRequest, RowError};
use crate::calls::Ticket;
use std::sync::Arc;

/// The local model a run uses.
#[derive(Clone)]
pub enum LocalModel {
    /// No local model is configured: `Local` rows fail with a clear error.
    Unavailable,
    /// A GGUF model run in-process (`--local-model`, or the default one).
    Embedded(Arc<EmbeddedModel>),
}

impl LocalModel {
    /// Generates for every request, one result each, in request order.
    /// The requests come from the component, so they are checked first: a
    /// call with more than `max_requests` (the run's batch size) fails every
    /// row, and a request outside the WIT's ranges, or whose prompt cannot
    /// fit the model, fails its own row. With no local model configured,
    /// every request fails. Decoding stops once `call` has ended.
    pub async fn generate(
        &self,
        requests: Vec<LocalRequest>,
        max_requests: usize,
        call: Ticket,
    ) -> Vec<Result<LocalCompletion, RowError>> {
        if requests.len() > max_requests {
            let message = format!(
                "a local-model call may carry at most {max_requests} requests (the batch size); this one carried {}",
                requests.len()
            );
            return requests.iter().map(|_| Err(RowError::InvalidRequest(message.clone()))).collect();
        }
        let max_prompt_bytes = match self {
            LocalModel::Embedded(model) => model.max_prompt_bytes(),
            _ => usize::MAX,
        };
        // The import's input comes from the component, which may be hostile:
        // only requests within the documented ranges reach a backend.
        let mut results: Vec<Option<Result<LocalCompletion, RowError>>> = Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for request in requests {
            match check(&request, max_prompt_bytes) {
                Ok(()) => {
                    results.push(None);
                    valid.push(request);
                }
                Err(message) => results.push(Some(Err(RowError::InvalidRequest(message)))),
            }
        }
        let mut answers = self.generate_valid(valid, call).await.into_iter();
        // A backend that answers fewer requests than it was given fails the
        // rest, rather than the host.
        let missing = || Err(RowError::Transport("the local model gave no answer for this request".into()));
        results.into_iter().map(|result| result.unwrap_or_else(|| answers.next().unwrap_or_else(missing))).collect()
    }

    async fn generate_valid(
        &self,
        requests: Vec<LocalRequest>,
        call: Ticket,
    ) -> Vec<Result<LocalCompletion, RowError>> {
        if requests.is_empty() {
            return Vec::new();
        }
        match self {
            LocalModel::Unavailable => {
                requests.iter().map(|_| Err(RowError::InvalidRequest("no local model is configured".into()))).collect()
            }
            LocalModel::Embedded(model) => {
                let model = Arc::clone(model);
                let count = requests.len();
                // The component's call ends at its deadline too, or when the
                // run stops: decoding stops before its next step then.
                let stop = move || !call.is_live();
                // The model computes on the CPU: keep it off the async workers.
                tokio::task::spawn_blocking(move || model.generate_until(&requests, &stop)).await.unwrap_or_else(
                    |error| {
                        let message = format!("the local model failed: {error}");
                        (0..count).map(|_| Err(RowError::Transport(message.clone()))).collect()
                    },
                )
            }
        }
    }

    /// What distinguishes this backend's output in saved work.
    pub fn identity(&self) -> String {
        match self {
            LocalModel::Unavailable => String::new(),
            LocalModel::Embedded(model) => model.identity().to_string(),
        }
    }
}

/// The largest schema the local model compiles into a grammar: far above
/// any output schema a user writes, and a bound on what a component can make
/// the host compile per row.
const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// The ranges the WIT documents for a `local-request`, and a prompt that
/// could fit the model at all.
fn check(request: &LocalRequest, max_prompt_bytes: usize) -> Result<(), String> {
    if !(1..=4096).contains(&request.max_tokens) {
        return Err(format!("max_tokens {} is out of range 1 to 4096", request.max_tokens));
    }
    if !(0.0..=2.0).contains(&request.temperature) {
        return Err(format!("temperature {} is out of range 0.0 to 2.0", request.temperature));
    }
    if !(0.0..=1.0).contains(&request.top_p) {
        return Err(format!("top_p {} is out of range 0.0 to 1.0", request.top_p));
    }
    if let Some(schema) = &request.json_schema
        && schema.len() > MAX_SCHEMA_BYTES
    {
        return Err(format!("json_schema is {} bytes; the local model takes at most {MAX_SCHEMA_BYTES}", schema.len()));
    }
    let bytes = request.prompt.len() + request.system_prompt.as_deref().map_or(0, str::len);
    if bytes > max_prompt_bytes {
        return Err(format!(
            "the prompt ({bytes} bytes) cannot fit the local model's context (at most {max_prompt_bytes} bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> LocalRequest {
        LocalRequest {
            model: None,
            system_prompt: Some("s".into()),
            prompt: "p".repeat(10),
            temperature: 0.5,
            top_p: 0.9,
            max_tokens: 16,
            json_schema: None,
        }
    }

    #[test]
    fn requests_outside_the_documented_ranges_are_refused() {
        assert_eq!(check(&request(), 100), Ok(()));
        for bad in [
            LocalRequest { max_tokens: 0, ..request() },
            LocalRequest { max_tokens: 4097, ..request() },
            LocalRequest { temperature: -0.1, ..request() },
            LocalRequest { temperature: f64::NAN, ..request() },
            LocalRequest { top_p: 1.5, ..request() },
            LocalRequest { top_p: f64::INFINITY, ..request() },
        ] {
            assert!(check(&bad, 100).is_err(), "{bad:?}");
        }
        assert!(check(&request(), 10).unwrap_err().contains("11 bytes"));
    }

    #[tokio::test]
    async fn too_many_requests_fail_every_row_and_bad_ones_fail_in_place() {
        let local = LocalModel::Unavailable;
        let scope = crate::calls::CallScope::default();
        scope.begin();
        let results = local.generate(vec![request(); 3], 2, scope.ticket()).await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| matches!(r, Err(RowError::InvalidRequest(m)) if m.contains("at most 2"))));
        let results = local
            .generate(vec![request(), LocalRequest { max_tokens: 0, ..request() }, request()], 3, scope.ticket())
            .await;
        assert!(matches!(&results[1], Err(RowError::InvalidRequest(m)) if m.contains("max_tokens")), "{results:?}");
        assert!(matches!(&results[0], Err(RowError::InvalidRequest(m)) if m.contains("no local model")));
        assert!(matches!(&results[2], Err(RowError::InvalidRequest(m)) if m.contains("no local model")));
    }
}
