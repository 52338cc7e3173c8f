//! The batchgen component: turns dataset rows into provider requests and
//! provider replies into one result per row.
//!
//! Everything provider-specific lives here, so that any host speaking the
//! `batchgen:plugin` WIT world gets the same behaviour. The host owns the
//! rest: files, credentials, network policy and the local model.

mod batch;
mod config;
mod engine;
mod http;
mod local;
mod models;
mod providers;
mod schema;
mod servers;
mod template;
mod transfer;
mod url;

wit_bindgen::generate!({
    path: "../wit",
    world: "batchgen:plugin/batch-plugin",
    // Reuse the wasip2 crate's WASI bindings rather than generating a second,
    // incompatible copy of every WASI type.
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
    },
});

use batchgen::plugin::types::{Config, ConfigProblem, Generation, RowError};
use exports::batchgen::plugin::batch_generator::{Guest, ModelInfo, RequestPreview};

struct Component;

impl Guest for Component {
    fn list_models() -> Vec<ModelInfo> {
        models::MODELS.iter().map(models::Model::info).collect()
    }

    fn find_model(generation_model: String) -> Option<ModelInfo> {
        models::Model::find(&generation_model).map(models::Model::info)
    }

    fn preview_request(config: Config, input: String) -> Result<Option<RequestPreview>, String> {
        let plan = config::Plan::new(&config).map_err(|problems| config::describe(&problems))?;
        let config::Target::Remote(remote) = &plan.target else { return Ok(None) };
        let model = servers::preview_model(&plan, remote);
        let request = providers::build_request(&plan, remote.kind, &remote.servers[0], &model, &input);
        Ok(Some(RequestPreview {
            method: "POST".into(),
            url: format!("{}://{}{}", if request.https { "https" } else { "http" }, request.authority, request.path),
            headers: request
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
                .collect(),
            body: String::from_utf8_lossy(&request.body).into_owned(),
        }))
    }

    fn preflight(config: Config) -> Result<(), RowError> {
        let plan =
            config::Plan::new(&config).map_err(|problems| RowError::InvalidRequest(config::describe(&problems)))?;
        let config::Target::Remote(remote) = &plan.target else { return Ok(()) };
        remote.servers.iter().try_for_each(|server| preflight_one(&plan, remote, server))
    }

    fn check_config(config: Config) -> Vec<ConfigProblem> {
        match config::Plan::new(&config) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    fn template_columns(config: Config) -> Result<Vec<String>, String> {
        config.prompt_template.as_deref().map_or(Ok(Vec::new()), template::columns)
    }

    fn render_prompts(config: Config, rows: Vec<String>) -> Vec<Result<String, String>> {
        match config.prompt_template.as_deref() {
            Some(source) => template::render(source, &rows),
            None => rows.iter().map(|_| Err("the config has no prompt_template".to_string())).collect(),
        }
    }

    fn generate_batch(config: Config, inputs: Vec<String>) -> Vec<Result<Generation, RowError>> {
        let plan = match config::Plan::new(&config) {
            Ok(plan) => plan,
            Err(problems) => {
                let message = config::describe(&problems);
                return inputs.iter().map(|_| Err(RowError::InvalidRequest(message.clone()))).collect();
            }
        };
        match plan.target {
            config::Target::Local => local::generate(&plan, &inputs),
            config::Target::Remote(ref provider) => engine::generate(&plan, provider, &inputs),
        }
    }
}

/// One server's model list: reachable, credentials accepted, and the
/// config's model id listed (a local server without one in the config may
/// list anything).
fn preflight_one(plan: &config::Plan, remote: &config::Remote, server: &url::BaseUrl) -> Result<(), RowError> {
    let reply = match http::fetch(&providers::models_request(remote.kind, server), plan.request_timeout_ns) {
        Ok(reply) => reply,
        Err(failure) => {
            return Err(match http::transport_verdict(failure) {
                providers::Verdict::Done(Err(error)) | providers::Verdict::Retry { error, .. } => error,
                providers::Verdict::Done(Ok(_)) => unreachable!("a transport failure is never a completion"),
            });
        }
    };
    match reply.status {
        // A server without a model list (some compatible ones) cannot
        // be checked; the run will tell.
        404 => Ok(()),
        200..=299 if plan.model_id.is_empty() => Ok(()),
        200..=299 => match providers::lists_model(&reply.body, &plan.model_id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RowError::NotFound(plan.model.not_found_hint(&plan.model_id))),
            Err(message) => Err(RowError::MalformedReply(message)),
        },
        _ => match providers::interpret(plan, remote.kind, &reply) {
            providers::Verdict::Done(Err(error)) | providers::Verdict::Retry { error, .. } => Err(error),
            providers::Verdict::Done(Ok(_)) => Ok(()),
        },
    }
}

export!(Component);
