//! The batchgen component: turns dataset rows into provider requests and
//! provider replies into one result per row.
//!
//! Everything provider-specific lives here, so that any host speaking the
//! `batchgen:plugin` WIT world gets the same behaviour. The host owns the
//! rest: files, credentials, network policy and the local model.

mod config;
mod engine;
mod http;
mod local;
mod models;
mod providers;
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
use exports::batchgen::plugin::batch_generator::{Guest, ModelInfo};

struct Component;

impl Guest for Component {
    fn list_models() -> Vec<ModelInfo> {
        models::MODELS.iter().map(models::Model::info).collect()
    }

    fn find_model(generation_model: String) -> Option<ModelInfo> {
        models::Model::find(&generation_model).map(models::Model::info)
    }

    fn check_config(config: Config) -> Vec<ConfigProblem> {
        match config::Plan::new(&config) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    fn generate_batch(config: Config, inputs: Vec<String>) -> Vec<Result<Generation, RowError>> {
        let plan = match config::Plan::new(&config) {
            Ok(plan) => plan,
            Err(problems) => {
                let message = config::describe(&problems);
                return inputs
                    .iter()
                    .map(|_| Err(RowError::InvalidRequest(message.clone())))
                    .collect();
            }
        };
        match plan.target {
            config::Target::Local => local::generate(&plan, &inputs),
            config::Target::Remote(ref provider) => engine::generate(&plan, provider, &inputs),
        }
    }
}

export!(Component);
