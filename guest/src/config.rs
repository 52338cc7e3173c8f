//! Checks a config against the spec's ranges and each provider's rules, and
//! turns it into a `Plan` the rest of the component can trust.

use crate::batchgen::plugin::types::{Config, ConfigProblem};
use crate::models::{MODELS, Model, Provider};
use crate::schema::{self, Schema};
use crate::url::BaseUrl;

/// The spec's default temperature. Newer Claude models reject `temperature`
/// together with `top_p`; when the user left temperature at this default we
/// can omit it instead of failing.
pub const DEFAULT_TEMPERATURE: f64 = 0.01;
/// Above this a batch would open more connections than any provider tier
/// allows, and the host would hold that many rows in memory per call.
pub const MAX_BATCH_SIZE: u32 = 4096;
pub const MAX_ATTEMPTS: u32 = 100;

/// Where the rows of a batch go.
pub enum Target {
    Local,
    Remote(Remote),
}

/// A provider API and how to reach it: one base URL for the providers,
/// one or more OpenAI-compatible servers for `Local`.
pub struct Remote {
    /// `Local` servers speak OpenAI's wire format.
    pub kind: Provider,
    pub servers: Vec<BaseUrl>,
}

/// More servers than this is a config mistake, not a fleet.
pub const MAX_LOCAL_SERVERS: usize = 256;

/// A validated config.
pub struct Plan {
    pub model: &'static Model,
    pub target: Target,
    /// The id to request: the override, or the label's id.
    pub model_id: String,
    pub system_prompt: Option<String>,
    /// `None` when it must not be sent.
    pub temperature: Option<f64>,
    /// `None` when it must not be sent (it is 1.0, the providers' default).
    pub top_p: Option<f64>,
    /// Always sent as is; kept for the local model, which needs the value.
    pub temperature_value: f64,
    pub top_p_value: f64,
    pub max_tokens: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub request_timeout_ns: u64,
    /// The schema every output must match, if any.
    pub schema: Option<Schema>,
}

impl Plan {
    /// Validates everything at once, so a user fixes all problems in one go.
    pub fn new(config: &Config) -> Result<Plan, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem =
            |field: &str, message: String| problems.push(ConfigProblem { field: field.to_string(), message });

        let model = Model::find(&config.generation_model);
        if model.is_none() {
            let labels: Vec<&str> = MODELS.iter().map(|m| m.label).collect();
            problem(
                "generation_model",
                format!("unknown model {:?}; choose one of: {}", config.generation_model, labels.join(", ")),
            );
        }
        let model_id = match &config.model_id {
            Some(id) if id.trim().is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                problem("model_id", format!("{id:?} is not a model id (empty or containing whitespace)"));
                String::new()
            }
            Some(id) => id.clone(),
            None => model.map(|m| m.model_id.to_string()).unwrap_or_default(),
        };

        let temperature = config.temperature;
        if !(0.0..=2.0).contains(&temperature) {
            problem("temperature", format!("{temperature} is out of range 0.0 to 2.0"));
        }
        let top_p = config.top_p;
        if !(0.0..=1.0).contains(&top_p) {
            problem("top_p", format!("{top_p} is out of range 0.0 to 1.0"));
        }
        if !(1..=4096).contains(&config.max_tokens) {
            problem("max_tokens", format!("{} is out of range 1 to 4096", config.max_tokens));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&config.batch_size) {
            problem("batch_size", format!("{} is out of range 1 to {MAX_BATCH_SIZE}", config.batch_size));
        }
        if !(1..=MAX_ATTEMPTS).contains(&config.max_attempts) {
            problem("max_attempts", format!("{} is out of range 1 to {MAX_ATTEMPTS}", config.max_attempts));
        }
        if let Some(source) = &config.prompt_template
            && let Err(message) = crate::template::columns(source)
        {
            problem("prompt_template", message);
        }
        let parsed_schema = match config.json_schema.as_deref().map(Schema::parse) {
            Some(Err(message)) => {
                problem("json_schema", message);
                None
            }
            Some(Ok(parsed)) => {
                // OpenAI refuses a schema outside its strict mode's rules
                // with a 400 for every row: say so before any request.
                if model.is_some_and(|m| m.provider == Provider::Openai) {
                    for message in schema::strict_problems(&parsed.value) {
                        problem("json_schema", message);
                    }
                }
                Some(parsed)
            }
            None => None,
        };
        if config.request_timeout_ms == 0 {
            problem("request_timeout", "must be at least 1 ms".to_string());
        }

        let mut send_temperature = Some(temperature);
        let send_top_p = (top_p != 1.0).then_some(top_p);
        let mut target = Target::Local;
        if let Some(model) = model {
            let (field, bases) = match model.provider {
                Provider::Openai => ("openai_base_url", std::slice::from_ref(&config.endpoints.openai_base_url)),
                Provider::Anthropic => {
                    ("anthropic_base_url", std::slice::from_ref(&config.endpoints.anthropic_base_url))
                }
                Provider::Local => ("local_base_urls", config.endpoints.local_base_urls.as_slice()),
            };
            if bases.len() > MAX_LOCAL_SERVERS {
                problem(field, format!("{} servers; at most {MAX_LOCAL_SERVERS} are accepted", bases.len()));
            } else if !bases.is_empty() {
                let parsed: Result<Vec<BaseUrl>, String> = bases.iter().map(|base| BaseUrl::parse(base)).collect();
                match parsed {
                    Ok(servers) => target = Target::Remote(Remote { kind: model.provider, servers }),
                    Err(message) => problem(field, message),
                }
            }
            if model.provider == Provider::Anthropic {
                if temperature > 1.0 && temperature <= 2.0 {
                    problem("temperature", format!("{temperature} is above 1.0, the most Anthropic models accept"));
                }
                // Claude models after 3.x reject temperature and top_p together.
                let is_claude_3 = model_id.starts_with("claude-3");
                if !is_claude_3 && send_top_p.is_some() {
                    if temperature == DEFAULT_TEMPERATURE {
                        send_temperature = None;
                    } else {
                        problem(
                            "top_p",
                            format!(
                                "{model_id} does not accept temperature and top_p together; \
                                 leave one of them at its default (temperature 0.01, top_p 1.0)"
                            ),
                        );
                    }
                }
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let model = model.expect("an unknown model is a problem");
        Ok(Plan {
            model,
            target,
            model_id,
            system_prompt: config.system_prompt.clone().filter(|s| !s.trim().is_empty()),
            temperature: send_temperature,
            top_p: send_top_p,
            temperature_value: temperature,
            top_p_value: top_p,
            max_tokens: config.max_tokens,
            concurrency: config.batch_size as usize,
            max_attempts: config.max_attempts,
            request_timeout_ns: config.request_timeout_ms.saturating_mul(1_000_000),
            schema: parsed_schema,
        })
    }
}

/// One line naming every problem, for row errors.
pub fn describe(problems: &[ConfigProblem]) -> String {
    let parts: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
    format!("invalid config: {}", parts.join("; "))
}
