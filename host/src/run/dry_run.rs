//! `--dry-run`: everything a run checks, and the first request it would
//! send, shown and not sent.

use super::batch_api::custom_id;
use super::prepare::{Prepared, prepare};
use super::window::work_params;
use super::{RunError, RunOptions, prompts};
use crate::bindings::{ConfigProblem, JobRow, ModelInfo, RequestPreview};
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
    /// With `--batch-api`: the first row's line of the first job file.
    pub batch_line: Option<String>,
}

/// Checks everything a run would and previews its first request.
pub async fn dry_run(options: &RunOptions) -> Result<DryRun, RunError> {
    let Prepared { plugin, config, model, destinations, survey, input, mut probe, .. } = prepare(options).await?;
    let mut reader = Reader::open_input(&options.input, &survey, &input)?;
    let problem = |message| RunError::Config(vec![ConfigProblem { field: "config".into(), message }]);
    let first = match reader.next_chunk(1)? {
        Some(mut chunk) => {
            if let Some(message) = prompts::render(&mut probe, &config, &input, &mut chunk).await?.swap_remove(0) {
                return Err(RunError::Config(vec![ConfigProblem {
                    field: "prompt_template".into(),
                    message: format!("row 1: {message}"),
                }]));
            }
            Some(chunk.inputs.swap_remove(0))
        }
        None => None,
    };
    let request = match &first {
        Some(input) => probe.preview_request(&config, input).await?.map_err(problem)?,
        None => None,
    };
    let batch_line = match &first {
        Some(input) if options.job.batch_api => {
            let component = options.component.as_ref().map(|_| plugin.digest());
            let key = work_params(&options.job, &model, "", component).key(input);
            let row = JobRow { custom_id: custom_id(&key), input: input.clone() };
            probe.request_lines(&config, &[row]).await?.map_err(problem)?.pop()
        }
        _ => None,
    };
    let credential_header = destinations.first().and_then(|d| d.credential.as_ref()).map(|(name, _)| name.to_string());
    Ok(DryRun { rows: survey.rows, model, request, credential_header, batch_line })
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
        if let Some(line) = &self.batch_line {
            writeln!(f, "rows go to the provider's batch API (--batch-api); the first line of the first job file:")?;
            return writeln!(f, "{line}");
        }
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
