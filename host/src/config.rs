//! The job's settings: the spec's parameters from a JSON config file and
//! flags, plus where providers live. Ranges are the component's to check
//! (`check-config`); this module only gathers values and names what is
//! missing.

use crate::plugin::bindings::{Config, Endpoints};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_BATCH_SIZE: u32 = 128;
pub const DEFAULT_TEMPERATURE: f64 = 0.01;
pub const DEFAULT_TOP_P: f64 = 1.0;
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The official SDKs' default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: field `{field}`: {message}")]
    Field { path: String, field: String, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("`{field}` is required: set it in the config file or pass {flag}")]
    Missing { field: &'static str, flag: &'static str },
}

/// The spec's parameters as a config file (or flags) gives them; every field
/// is optional so that flags can fill in or override any of them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub generation_model: Option<String>,
    pub system_prompt: Option<String>,
    pub input_column: Option<String>,
    pub output_column: Option<String>,
    pub batch_size: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Replaces the provider id of `generation_model` (e.g. a successor).
    pub model_id: Option<String>,
    pub max_attempts: Option<u32>,
    /// Per-request deadline in seconds.
    pub request_timeout: Option<f64>,
    /// Ceiling on requests started per minute.
    pub max_rpm: Option<u32>,
    /// Ceiling on tokens (prompt estimate plus max_tokens) per minute.
    pub max_tpm: Option<u32>,
}

impl JobFile {
    /// Reads a JSON object with the spec's keys. Unknown keys are errors, so
    /// a typo never silently falls back to a default.
    pub fn read(path: &Path) -> Result<JobFile, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        JobFile::parse(&text, &shown)
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<JobFile, ConfigError> {
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

    /// `self` with every field `overrides` sets replaced.
    pub fn merge(self, overrides: JobFile) -> JobFile {
        JobFile {
            generation_model: overrides.generation_model.or(self.generation_model),
            system_prompt: overrides.system_prompt.or(self.system_prompt),
            input_column: overrides.input_column.or(self.input_column),
            output_column: overrides.output_column.or(self.output_column),
            batch_size: overrides.batch_size.or(self.batch_size),
            temperature: overrides.temperature.or(self.temperature),
            top_p: overrides.top_p.or(self.top_p),
            max_tokens: overrides.max_tokens.or(self.max_tokens),
            model_id: overrides.model_id.or(self.model_id),
            max_attempts: overrides.max_attempts.or(self.max_attempts),
            request_timeout: overrides.request_timeout.or(self.request_timeout),
            max_rpm: overrides.max_rpm.or(self.max_rpm),
            max_tpm: overrides.max_tpm.or(self.max_tpm),
        }
    }
}

/// A complete job: every parameter has a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub generation_model: String,
    pub system_prompt: Option<String>,
    pub input_column: String,
    pub output_column: String,
    pub batch_size: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: u32,
    pub model_id: Option<String>,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    pub max_rpm: Option<u32>,
    pub max_tpm: Option<u32>,
}

impl Job {
    /// Fills in the spec's defaults; names the first required field missing.
    pub fn from_file(file: JobFile) -> Result<Job, ConfigError> {
        let required = |value: Option<String>, field, flag| value.ok_or(ConfigError::Missing { field, flag });
        let request_timeout = match file.request_timeout {
            None => DEFAULT_REQUEST_TIMEOUT,
            // Out-of-range values become 0, which `check-config` rejects by name.
            Some(seconds) => Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO),
        };
        Ok(Job {
            generation_model: required(file.generation_model, "generation_model", "--generation-model")?,
            input_column: required(file.input_column, "input_column", "--input-column")?,
            output_column: required(file.output_column, "output_column", "--output-column")?,
            system_prompt: file.system_prompt,
            batch_size: file.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            temperature: file.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: file.top_p.unwrap_or(DEFAULT_TOP_P),
            max_tokens: file.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            model_id: file.model_id,
            max_attempts: file.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            request_timeout,
            max_rpm: file.max_rpm.filter(|&n| n > 0),
            max_tpm: file.max_tpm.filter(|&n| n > 0),
        })
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
            endpoints: Endpoints {
                openai_base_url: endpoints.openai_base_url.clone(),
                anthropic_base_url: endpoints.anthropic_base_url.clone(),
            },
        }
    }
}

/// Where the providers live: the operator's choice (environment or flags),
/// never the component's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEndpoints {
    pub openai_base_url: String,
    pub anthropic_base_url: String,
}

impl Default for ProviderEndpoints {
    fn default() -> Self {
        ProviderEndpoints {
            openai_base_url: DEFAULT_OPENAI_BASE_URL.to_string(),
            anthropic_base_url: DEFAULT_ANTHROPIC_BASE_URL.to_string(),
        }
    }
}

/// API keys, by provider. Kept out of `Debug` output.
#[derive(Clone, Default)]
pub struct ApiKeys {
    pub openai: Option<String>,
    pub anthropic: Option<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| if key.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("ApiKeys").field("openai", &shown(&self.openai)).field("anthropic", &shown(&self.anthropic)).finish()
    }
}

impl ApiKeys {
    /// From `OPENAI_API_KEY` and `ANTHROPIC_API_KEY`; empty counts as unset.
    pub fn from_env() -> ApiKeys {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        ApiKeys { openai: var("OPENAI_API_KEY"), anthropic: var("ANTHROPIC_API_KEY") }
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
        let error = JobFile::read(file.path()).unwrap_err().to_string();
        assert!(error.contains("`batch_size`"), "{error}");
        let file = write(r#"{"temprature": 0.5}"#);
        let error = JobFile::read(file.path()).unwrap_err().to_string();
        assert!(error.contains("temprature"), "{error}");
        let file = write(r#"{"temperature": "#);
        assert!(matches!(JobFile::read(file.path()), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = JobFile {
            generation_model: Some("Local".into()),
            input_column: Some("q".into()),
            output_column: Some("a".into()),
            temperature: Some(0.5),
            ..JobFile::default()
        };
        let job = Job::from_file(file.merge(JobFile { temperature: Some(0.7), ..JobFile::default() })).unwrap();
        assert_eq!(job.temperature, 0.7);
        assert_eq!((job.batch_size, job.top_p, job.max_tokens), (128, 1.0, 1024));
        let missing = Job::from_file(JobFile { generation_model: Some("Local".into()), ..JobFile::default() });
        assert!(missing.unwrap_err().to_string().contains("input_column"));
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let keys = ApiKeys { openai: Some("sk-secret".into()), anthropic: None };
        assert!(!format!("{keys:?}").contains("sk-secret"));
    }
}
