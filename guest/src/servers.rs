//! `Local` through OpenAI-compatible servers: which model to ask each one
//! for when the config names none.

use crate::config::{Plan, Remote};
use crate::http;
use crate::models::Provider;
use crate::providers;
use crate::url::BaseUrl;
use std::sync::Mutex;

/// Sent when a server lists no model: llama.cpp serves one model and
/// ignores the name.
const FALLBACK_MODEL: &str = "default";
/// Finding a server's model waits at most this long: a server that does not
/// answer its model list fails its rows on their own deadline anyway.
const LOOKUP_TIMEOUT_NS: u64 = 30_000_000_000;

/// The model id to request from each of `remote`'s servers, in order: the
/// config's, or for `Local` without one, the first model each server
/// lists (vLLM and Ollama need a served model's name, and users rarely
/// know it offhand).
pub fn models(plan: &Plan, remote: &Remote) -> Vec<String> {
    if remote.kind != Provider::Local || !plan.model_id.is_empty() {
        return vec![plan.model_id.clone(); remote.servers.len()];
    }
    remote.servers.iter().map(|server| served_model(plan, remote.kind, server)).collect()
}

/// What a preview shows for a local server's model before asking it.
pub fn preview_model(plan: &Plan, remote: &Remote) -> String {
    if remote.kind == Provider::Local && plan.model_id.is_empty() {
        "<the first model the server lists>".to_string()
    } else {
        plan.model_id.clone()
    }
}

/// A server's first listed model, asked once per instance; a failed
/// lookup is not remembered, so a server that comes up later is asked again.
fn served_model(plan: &Plan, kind: Provider, server: &BaseUrl) -> String {
    static KNOWN: Mutex<Vec<(BaseUrl, String)>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, model)) = known.iter().find(|(base, _)| base == server) {
        return model.clone();
    }
    let timeout = plan.request_timeout_ns.min(LOOKUP_TIMEOUT_NS);
    let listed = http::fetch(&providers::models_request(kind, server), timeout)
        .ok()
        .filter(|reply| (200..300).contains(&reply.status))
        .and_then(|reply| providers::first_model(&reply.body));
    match listed {
        Some(model) => {
            known.push((server.clone(), model.clone()));
            model
        }
        None => FALLBACK_MODEL.to_string(),
    }
}
