//! `--dry-run`: everything a run checks, and the first request it would
//! send, shown and not sent.

use super::prepare::{Prepared, prepare};
use super::{RunError, RunOptions};
use crate::bindings::{ConfigProblem, ModelInfo, RequestPreview};
use crate::dataset::Reader;
use std::fmt;

/// What `--dry-run` shows: everything is checked, nothing is sent.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Rows the input holds.
    pub rows: u64,
    /// The model the job selects.
    pub model: ModelInfo,
    /// The first request, without its credential; `None` for `Local`.
    pub request: Option<RequestPreview>,
    /// The header the host would add the key in, if any.
    pub credential_header: Option<String>,
}

/// Checks everything a run would and previews its first request.
pub async fn dry_run(options: &RunOptions) -> Result<DryRun, RunError> {
    let Prepared { config, model, destinations, survey, mut probe, .. } = prepare(options).await?;
    let mut reader = Reader::open(&options.input, &survey, &options.job.input_column)?;
    let request = match reader.next_chunk(1)? {
        Some(chunk) => probe
            .preview_request(&config, &chunk.inputs[0])
            .await?
            .map_err(|message| RunError::Config(vec![ConfigProblem { field: "config".into(), message }]))?,
        None => None,
    };
    let credential_header = destinations.first().and_then(|d| d.credential.as_ref()).map(|(name, _)| name.to_string());
    Ok(DryRun { rows: survey.rows, model, request, credential_header })
}

impl fmt::Display for DryRun {
    /// The request as a user would read it: method and URL, headers (the
    /// credential redacted) and the body as indented JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let model = &self.model;
        let id = if model.model_id.is_empty() { String::new() } else { format!(", {}", model.model_id) };
        writeln!(
            f,
            "dry run: {} rows would be generated with {} ({}{id}); nothing was sent",
            self.rows, model.label, model.provider
        )?;
        let Some(request) = &self.request else {
            return writeln!(f, "rows go to the local model; no HTTP request is made");
        };
        writeln!(f, "first request:\n{} {}", request.method, request.url)?;
        for (name, value) in &request.headers {
            writeln!(f, "{name}: {value}")?;
        }
        if let Some(name) = &self.credential_header {
            writeln!(f, "{name}: <redacted: added by the host>")?;
        }
        let body: serde_json::Value =
            serde_json::from_str(&request.body).unwrap_or_else(|_| request.body.clone().into());
        writeln!(f, "\n{}", serde_json::to_string_pretty(&body).unwrap_or_default())
    }
}
