//! Everything a run checks before it sends its first request: paths,
//! config, the model, credentials and endpoints, the local model, and a
//! full pass over the input. A run that fails here has sent nothing.

use super::{RunError, RunOptions, load_plugin};
use crate::bindings::{Config, ConfigProblem, ModelInfo, Provider};
use crate::config::Job;
use crate::dataset::{self, Expanded, Format, Input, Kind, Survey};
use crate::local::{EmbeddedModel, LocalModel, embedded};
use crate::outbound::{self, Destination, Origin, Outbound};
use crate::plugin::sandbox::Limits;
use crate::plugin::{Plugin, Session};
use std::path::Path;
use std::sync::Arc;

/// The name users know the local servers' key by.
const LOCAL_KEY: &str = "BATCHGEN_LOCAL_API_KEY";

/// What a checked run starts from.
pub(super) struct Prepared {
    pub plugin: Plugin,
    pub config: Config,
    pub model: ModelInfo,
    pub client: outbound::HttpClient,
    pub destinations: Vec<Destination>,
    pub local: LocalModel,
    pub survey: Survey,
    /// What a row's input is: a column, or the template's columns.
    pub input: Input,
    /// An instance that can reach nothing: it answers questions only.
    pub probe: Session,
}

/// Paths, config, credentials, the local model, and a full pass over the input.
pub(super) async fn prepare(options: &RunOptions) -> Result<Prepared, RunError> {
    options.job.check_required()?;
    Format::from_path(&options.input)?;
    Format::from_path(&options.output)?;
    if same_file(&options.input, &options.output) {
        return Err(RunError::SameFile(options.output.display().to_string()));
    }
    let limits = Limits { batch_size: options.job.batch_size as usize, ..options.limits };
    let plugin = load_plugin(options.component.as_deref(), options.cache_dir.as_deref(), limits)?;
    let mut config = options.job.component_config(&options.endpoints);
    config.prompt_template = options.job.template_text()?;
    let mut probe = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await?;
    let problems = probe.check_config(&config).await?;
    if !problems.is_empty() {
        return Err(RunError::Config(problems));
    }
    let input =
        match &config.prompt_template {
            Some(_) => Input::Columns(probe.template_columns(&config).await?.map_err(|message| {
                RunError::Config(vec![ConfigProblem { field: "prompt_template".into(), message }])
            })?),
            None => Input::Column(options.job.input_column.clone()),
        };
    // The component accepted the config, so it should know the model; one
    // that does not is a broken component, not a reason to panic.
    let generation_model = &options.job.generation_model;
    let model = probe.find_model(generation_model).await?.ok_or_else(|| RunError::NoModel(generation_model.clone()))?;
    if options.job.batch_api && model.provider == Provider::Local {
        return Err(RunError::Batch(format!(
            "--batch-api (batch_api) sends rows to a provider's batch API; {} has none: drop the flag",
            model.label
        )));
    }
    let client = outbound::http_client();
    let (destinations, local) = connections(options, &model)?;
    let survey = dataset::survey_input(&options.input, &input, &options.job.output_column)?;
    Ok(Prepared { plugin, config, model, client, destinations, local, survey, input, probe })
}

/// With `expand_json`, the schema's top-level properties as columns, in
/// schema order, typed by their `type` (a nullable one too).
pub(super) fn expanded_columns(job: &Job) -> Vec<Expanded> {
    let Some(schema) = job.json_schema.as_ref().filter(|_| job.expand_json) else { return Vec::new() };
    let Some(properties) = schema["properties"].as_object() else { return Vec::new() };
    properties
        .iter()
        .map(|(name, property)| {
            let types: Vec<&str> = match &property["type"] {
                serde_json::Value::String(one) => vec![one.as_str()],
                serde_json::Value::Array(many) => {
                    many.iter().filter_map(|t| t.as_str()).filter(|t| *t != "null").collect()
                }
                _ => Vec::new(),
            };
            let kind = match types.as_slice() {
                ["integer"] => Kind::Integer,
                ["number"] => Kind::Number,
                ["boolean"] => Kind::Boolean,
                _ => Kind::Text,
            };
            Expanded { name: name.clone(), kind }
        })
        .collect()
}

/// The destinations this run may reach (the chosen provider's endpoint, or
/// the local servers, each with its key) and the local model.
pub(super) fn connections(options: &RunOptions, model: &ModelInfo) -> Result<(Vec<Destination>, LocalModel), RunError> {
    // A provider: its key variable, the key, its base URL and how the key
    // travels (OpenAI's bearer token, Anthropic's x-api-key).
    type Credential = fn(Origin, Option<&str>) -> Result<Destination, String>;
    let endpoints = &options.endpoints;
    let (variable, key, base_name, base, credential): (_, _, _, _, Credential) = match model.provider {
        Provider::Openai => {
            ("OPENAI_API_KEY", &options.keys.openai, "OPENAI_BASE_URL", &endpoints.openai_base_url, Destination::bearer)
        }
        Provider::Anthropic => (
            "ANTHROPIC_API_KEY",
            &options.keys.anthropic,
            "ANTHROPIC_BASE_URL",
            &endpoints.anthropic_base_url,
            Destination::api_key,
        ),
        Provider::Local if !endpoints.local_urls.is_empty() => {
            let key = options.keys.local.as_deref();
            let destinations = endpoints
                .local_urls
                .iter()
                .map(|url| {
                    Destination::bearer(endpoint("--local-url", url)?, key)
                        .map_err(|message| RunError::InvalidKey { variable: LOCAL_KEY, message })
                })
                .collect::<Result<_, _>>()?;
            return Ok((destinations, LocalModel::Unavailable));
        }
        Provider::Local => return Ok((Vec::new(), embedded_model(options)?)),
    };
    let key = key.as_deref().ok_or_else(|| RunError::MissingKey { variable, model: model.label.clone() })?;
    let destination = credential(endpoint(base_name, base)?, Some(key))
        .map_err(|message| RunError::InvalidKey { variable, message })?;
    Ok((vec![destination], LocalModel::Unavailable))
}

/// `Local` without servers: the GGUF model run in-process.
fn embedded_model(options: &RunOptions) -> Result<LocalModel, RunError> {
    let path = match &options.local_model {
        Some(path) => path.clone(),
        None => embedded::catalog::default_path(options.cache_dir.as_deref())?,
    };
    let model = EmbeddedModel::load(&path, options.seed)?;
    Ok(LocalModel::Embedded(Arc::new(model)))
}

fn endpoint(name: &'static str, url: &str) -> Result<Origin, RunError> {
    Origin::parse(url).map_err(|message| RunError::Endpoint { name, url: url.to_string(), message })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
