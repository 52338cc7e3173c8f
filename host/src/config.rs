//! The job's settings: the spec's parameters from a JSON config file and
//! flags, plus where providers live and their keys. Ranges are the
//! component's to check (`check-config`); this module only gathers values
//! and names what is missing.

use crate::bindings::{Config, Endpoints};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The OpenAI API's official base URL.
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The Anthropic API's official base URL.
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// Why a job's settings could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("could not read the config file {path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A key of the config file has a value of the wrong type, or is unknown.
    #[error("config file {path}: field `{field}`: {message}")]
    Field {
        /// The config file.
        path: String,
        /// The key, as a path (`batch_size`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The config file is not a JSON object.
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file `prompt_template` names (`@FILE`) could not be read.
    #[error("prompt_template: could not read {path}: {source}")]
    Template {
        /// The template file.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// Two parameters that exclude each other were both given.
    #[error("set one of {fields}, not both")]
    Conflict {
        /// The two parameters' config keys.
        fields: &'static str,
    },
    /// A parameter without a default was given neither in the file nor as a flag.
    #[error("`{field}` is required: set it in the config file or pass {flag}")]
    Missing {
        /// The parameter's config key.
        field: &'static str,
        /// The flag that sets it.
        flag: &'static str,
    },
}

/// A job's parameters: each one defined here, once.
///
/// The same struct is the `batchgen run` flags (flattened into the CLI), the
/// config file's keys and the library's input, so a new parameter is one new
/// field. Its doc comment is the flag's help; its `default_value_t` is the
/// only place its default is written: [`Job::default`] and the config file
/// take the defaults from clap too, and a test checks the README's table
/// against them. Ranges are the component's to check (`check-config`), so
/// every host of the component applies the same rules.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Job {
    /// Local, Claude 3.5 Haiku, Claude 3.5 Sonnet, OpenAI GPT 4o, OpenAI GPT 4o Mini (any case, or
    /// slugs like gpt-4o-mini). Required.
    #[arg(long, value_name = "NAME", default_value = "", hide_default_value = true)]
    pub generation_model: String,
    /// Sent as the system prompt; blank counts as none.
    #[arg(long, value_name = "TEXT")]
    pub system_prompt: Option<String>,
    /// Column holding each row's input. Required, unless --prompt-template is given instead.
    #[arg(long, value_name = "COL", default_value = "", hide_default_value = true)]
    pub input_column: String,
    /// The user prompt as a Jinja template over the row's columns ("Translate {{ text }} into
    /// {{ language }}"), or @FILE to read it from FILE. Instead of --input-column.
    #[arg(long, value_name = "TEXT|@FILE")]
    pub prompt_template: Option<String>,
    /// A JSON schema (an object schema) every output must match, from FILE; in the config file,
    /// the schema object itself. Outputs are then JSON.
    #[arg(long, value_name = "FILE", value_parser = schema_file)]
    pub json_schema: Option<serde_json::Value>,
    /// With --json-schema: also write each top-level property of the schema as a column of its own
    /// (typed in Parquet), in schema order.
    #[arg(long)]
    pub expand_json: bool,
    /// Column to write; failures go to COL_error. Required.
    #[arg(long, value_name = "COL", default_value = "", hide_default_value = true)]
    pub output_column: String,
    /// Rows per batch, and requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub batch_size: u32,
    /// 0.0 to 2.0 (Claude: to 1.0).
    #[arg(long, value_name = "X", default_value_t = 0.01, allow_negative_numbers = true, value_parser = finite)]
    pub temperature: f64,
    /// 0.0 to 1.0; sent only when not 1.0.
    #[arg(long, value_name = "X", default_value_t = 1.0, allow_negative_numbers = true, value_parser = finite)]
    pub top_p: f64,
    /// 1 to 4096.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_tokens: u32,
    /// Provider model id to request instead of the label's (e.g. a retired model's successor).
    #[arg(long, value_name = "ID")]
    pub model_id: Option<String>,
    /// Attempts per row, retries included.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_attempts: u32,
    /// Per-request deadline in seconds, from when the request is sent (the official SDKs' default).
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = seconds::parse)]
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// Ceiling on requests started per minute, for users who know their tier.
    #[arg(long, value_name = "N")]
    pub max_rpm: Option<u32>,
    /// Ceiling on tokens per minute (prompt estimate plus max_tokens per request).
    #[arg(long, value_name = "N")]
    pub max_tpm: Option<u32>,
    /// Send the rows as provider batch jobs (OpenAI Batch API, Anthropic Message Batches): half the
    /// price, done within 24 hours; rerun the same command to pick the jobs up again. Not for `Local`.
    #[arg(long)]
    pub batch_api: bool,
    /// With --batch-api: seconds between two looks at the jobs.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds::parse)]
    #[serde(with = "seconds")]
    pub poll_interval: Duration,
    /// With --batch-api: requests per job at most [default: the provider's limit, 50,000 or 100,000].
    #[arg(long, value_name = "N")]
    pub batch_max_requests: Option<u32>,
}

impl Default for Job {
    /// The defaults clap declares, so that they are written only once.
    fn default() -> Job {
        crate::defaults::from_clap()
    }
}

impl Job {
    /// Reads a JSON object with the job's keys. Unknown keys are errors, so
    /// a typo never silently falls back to a default.
    pub fn read(path: &Path) -> Result<Job, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Job::parse(&text, &shown)
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Job, ConfigError> {
        let shown = origin.to_string();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let field = error.path().to_string();
            let inner = error.into_inner();
            // Broken JSON has no field to blame, only a line and column.
            let syntax = inner.is_syntax() || inner.is_eof();
            let message = inner.to_string();
            if syntax || field.is_empty() || field == "." {
                ConfigError::Parse { path: shown, message }
            } else {
                ConfigError::Field { path: shown, field, message }
            }
        })
    }

    /// `self` (a config file, or the defaults) with every parameter that was
    /// given on the command line (`given`, by field name) taken from `flags`.
    ///
    /// The merge goes through the config file's form, so a value that form
    /// cannot hold (a NaN) is an error naming its field, as it would be in
    /// a file.
    pub fn overridden_by(self, flags: &Job, given: impl Fn(&str) -> bool) -> Result<Job, ConfigError> {
        let (mut merged, flags) = (to_object(&self), to_object(flags));
        for (field, value) in flags {
            if given(&field) {
                merged.insert(field, value);
            }
        }
        let text = serde_json::Value::from(merged).to_string();
        Job::parse(&text, "the command line")
    }

    /// Names the first required parameter that has no value.
    pub fn check_required(&self) -> Result<(), ConfigError> {
        let input = if self.prompt_template.is_some() { "-" } else { self.input_column.as_str() };
        let required = [
            (self.generation_model.as_str(), "generation_model", "--generation-model"),
            (input, "input_column", "--input-column (or prompt_template, --prompt-template)"),
            (self.output_column.as_str(), "output_column", "--output-column"),
        ];
        if let Some((_, field, flag)) = required.into_iter().find(|(value, _, _)| value.is_empty()) {
            return Err(ConfigError::Missing { field, flag });
        }
        if self.expand_json && self.json_schema.is_none() {
            return Err(ConfigError::Missing { field: "json_schema", flag: "--json-schema (expand_json needs it)" });
        }
        if self.prompt_template.is_some() && !self.input_column.is_empty() {
            return Err(ConfigError::Conflict { fields: "input_column and prompt_template" });
        }
        Ok(())
    }

    /// The prompt template's text: `prompt_template` as it is, or the
    /// contents of the file it names after an `@`.
    pub fn template_text(&self) -> Result<Option<String>, ConfigError> {
        match self.prompt_template.as_deref() {
            Some(reference) if reference.starts_with('@') => {
                let path = &reference[1..];
                std::fs::read_to_string(path)
                    .map(Some)
                    .map_err(|source| ConfigError::Template { path: path.to_string(), source })
            }
            other => Ok(other.map(str::to_string)),
        }
    }

    /// The component's view of this job.
    pub fn component_config(&self, endpoints: &ProviderEndpoints) -> Config {
        Config {
            generation_model: self.generation_model.clone(),
            model_id: self.model_id.clone(),
            system_prompt: self.system_prompt.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            batch_size: self.batch_size,
            max_attempts: self.max_attempts,
            request_timeout_ms: u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
            // Its text, once `template_text` has read an @FILE.
            prompt_template: self.prompt_template.clone(),
            json_schema: self.json_schema.as_ref().map(ToString::to_string),
            endpoints: Endpoints {
                openai_base_url: endpoints.openai_base_url.clone(),
                anthropic_base_url: endpoints.anthropic_base_url.clone(),
                local_base_urls: endpoints.local_urls.clone(),
            },
        }
    }
}

/// `--json-schema FILE`: the schema in FILE, which must be JSON.
fn schema_file(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("could not read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))
}

/// A flag's number, which must be finite: a config file cannot hold NaN or
/// infinity either.
fn finite(text: &str) -> Result<f64, String> {
    text.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| format!("{text:?} is not a finite number"))
}

fn to_object(job: &Job) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(job) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => unreachable!("a job serialises as an object"),
    }
}

/// A duration as a number of seconds, the unit users write in flags and
/// config files.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Parses a flag's value.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
        from_f64(seconds)
    }

    fn from_f64(seconds: f64) -> Result<Duration, String> {
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{seconds} is not a number of seconds"))
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        from_f64(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Where the providers live: the operator's choice (environment or flags),
/// never the component's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEndpoints {
    /// Base of the OpenAI API, including its version segment
    /// (`https://api.openai.com/v1`).
    pub openai_base_url: String,
    /// Base of the Anthropic API, without the version segment
    /// (`https://api.anthropic.com`).
    pub anthropic_base_url: String,
    /// OpenAI-compatible servers that serve `Local` (`--local-url`, which
    /// may repeat), each including its version segment; rows spread over
    /// them. Empty: `Local` is the embedded model.
    pub local_urls: Vec<String>,
}

impl Default for ProviderEndpoints {
    fn default() -> Self {
        ProviderEndpoints {
            openai_base_url: DEFAULT_OPENAI_BASE_URL.to_string(),
            anthropic_base_url: DEFAULT_ANTHROPIC_BASE_URL.to_string(),
            local_urls: Vec::new(),
        }
    }
}

impl ProviderEndpoints {
    /// The endpoints the environment names, as the CLI reads them:
    /// `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL` and `BATCHGEN_LOCAL_URL`
    /// (comma-separated), each defaulting as its flag does. For embedders
    /// without the CLI's flags, such as the Python package.
    pub fn from_env() -> ProviderEndpoints {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        let defaults = ProviderEndpoints::default();
        ProviderEndpoints {
            openai_base_url: var("OPENAI_BASE_URL").unwrap_or(defaults.openai_base_url),
            anthropic_base_url: var("ANTHROPIC_BASE_URL").unwrap_or(defaults.anthropic_base_url),
            local_urls: var("BATCHGEN_LOCAL_URL")
                .map(|urls| urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }
}

/// API keys, by provider. Kept out of `Debug` output.
#[derive(Clone, Default)]
pub struct ApiKeys {
    /// Sent as a bearer token to the OpenAI endpoint only.
    pub openai: Option<String>,
    /// Sent as `x-api-key` to the Anthropic endpoint only.
    pub anthropic: Option<String>,
    /// Sent as a bearer token to the local servers only (vLLM and llama.cpp
    /// servers started with `--api-key` need it).
    pub local: Option<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| if key.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("ApiKeys")
            .field("openai", &shown(&self.openai))
            .field("anthropic", &shown(&self.anthropic))
            .field("local", &shown(&self.local))
            .finish()
    }
}

impl ApiKeys {
    /// From `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` and
    /// `BATCHGEN_LOCAL_API_KEY`; empty counts as unset.
    pub fn from_env() -> ApiKeys {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        ApiKeys {
            openai: var("OPENAI_API_KEY"),
            anthropic: var("ANTHROPIC_API_KEY"),
            local: var("BATCHGEN_LOCAL_API_KEY"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn config_file_errors_name_the_field() {
        let file = write(r#"{"generation_model": "Local", "batch_size": -3}"#);
        let error = Job::read(file.path()).unwrap_err().to_string();
        assert!(error.contains("`batch_size`"), "{error}");
        let file = write(r#"{"temprature": 0.5}"#);
        let error = Job::read(file.path()).unwrap_err().to_string();
        assert!(error.contains("temprature"), "{error}");
        let file = write(r#"{"temperature": "#);
        assert!(matches!(Job::read(file.path()), Err(ConfigError::Parse { .. })));
        let file = write(r#"{"request_timeout": -1}"#);
        let error = Job::read(file.path()).unwrap_err().to_string();
        assert!(error.contains("`request_timeout`"), "{error}");
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = Job::parse(r#"{"generation_model": "Local", "input_column": "q", "output_column": "a", "temperature": 0.5, "top_p": 0.9}"#, "test").unwrap();
        let flags = Job { temperature: 0.7, top_p: 0.2, ..Job::default() };
        let job = file.overridden_by(&flags, |field| field == "temperature").unwrap();
        assert_eq!((job.temperature, job.top_p), (0.7, 0.9));
        assert_eq!((job.batch_size, job.max_tokens, job.request_timeout), (128, 1024, Duration::from_secs(600)));
        assert_eq!(job.input_column, "q");
        job.check_required().unwrap();
        let nan = Job { temperature: f64::NAN, ..Job::default() };
        let error = Job::default().overridden_by(&nan, |field| field == "temperature").unwrap_err();
        assert!(error.to_string().contains("temperature"), "{error}");
        let missing = Job { generation_model: "Local".into(), ..Job::default() }.check_required();
        assert!(missing.unwrap_err().to_string().contains("input_column"));
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let keys = ApiKeys { openai: Some("sk-secret".into()), anthropic: None, local: Some("sk-local".into()) };
        assert!(!format!("{keys:?}").contains("sk-secret"));
        assert!(!format!("{keys:?}").contains("sk-local"));
    }
}
