//! OpenAI's Files and Batch API: lines are uploaded as a `purpose=batch`
//! file, then a batch is created from it; results come back as an output
//! file and an error file.

use super::{Failure, checked, exchange, fatal, generation, json, plain, request, transport, unanswered};
use crate::batchgen::plugin::types::{Generation, RowError};
use crate::config::Plan;
use crate::exports::batchgen::plugin::batch_jobs::{JobError, JobLimits, JobRow, JobState, JobStatus, JobTag};
use crate::providers::{self, HttpReply, openai};
use crate::transfer::{self, Piece};
use crate::url::BaseUrl;
use serde_json::{Value, json};
use wasip2::io::streams::InputStream;

/// The only endpoint batchgen's lines use; each line's `url` must equal it.
const ENDPOINT: &str = "/v1/chat/completions";
/// 50,000 requests and 200 MB per input file. The byte limit is taken as
/// decimal megabytes, the smaller reading, less room for the multipart
/// envelope.
pub const LIMITS: JobLimits = JobLimits { max_requests: 50_000, max_bytes: 199_000_000 };
/// Cannot occur inside JSON lines, whose newlines are escaped.
const BOUNDARY: &str = "batchgen-7c1f0e5a9d3b4e21";
/// Batches listed per page when looking for an unrecorded one.
const PAGE: u32 = 100;

pub fn line(plan: &Plan, row: &JobRow) -> String {
    let body = openai::body(plan, &plan.model_id, &row.input);
    json!({"custom_id": row.custom_id, "method": "POST", "url": ENDPOINT, "body": body}).to_string()
}

/// Uploads the lines, then creates the batch, tagged so that `find` can
/// recognise it.
pub fn submit(
    plan: &Plan,
    base: &BaseUrl,
    tag: &JobTag,
    lines: &InputStream,
    length: u64,
) -> Result<JobStatus, Failure> {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batchgen-{}-{}.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n",
        tag.run, tag.chunk
    )
    .into_bytes();
    let tail = format!("\r\n--{BOUNDARY}--\r\n").into_bytes();
    let total = head.len() as u64 + length + tail.len() as u64;
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let upload = request(base, "/files", false, &[("content-type", &content_type)], Vec::new());
    let mut upload = upload;
    // The declared length is the whole envelope's, not the empty body's.
    upload.headers.retain(|(name, _)| name != "content-length");
    upload.headers.push(("content-length".to_string(), total.to_string().into_bytes()));
    let mut same = |_: &mut Vec<u8>, _: bool| {};
    let pieces = vec![Piece::Bytes(head), Piece::Stream { stream: lines, map: &mut same }, Piece::Bytes(tail)];
    let reply = transfer::upload(&upload, total, pieces, plan.request_timeout_ns).map_err(transport)?;
    let file = json(&checked(plan, reply)?)?;
    let file_id = file["id"].as_str().ok_or_else(|| plain("the uploaded file has no id"))?;
    let create = json!({
        "input_file_id": file_id,
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": {"batchgen_run": tag.run, "batchgen_chunk": tag.chunk.to_string()},
    });
    let reply = exchange(
        plan,
        &request(base, "/batches", false, &[("content-type", "application/json")], create.to_string().into_bytes()),
    )?;
    job_status(&json(&reply)?)
}

/// The batch carrying `tag`'s metadata, among those created since the tag's
/// time (newest first, so the search stops at the first older one).
pub fn find(plan: &Plan, base: &BaseUrl, tag: &JobTag) -> Result<Option<JobStatus>, Failure> {
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/batches?limit={PAGE}&after={}", super::path_id(id)?),
            None => format!("/batches?limit={PAGE}"),
        };
        let page = json(&exchange(plan, &request(base, &path, true, &[], Vec::new()))?)?;
        let data = page["data"].as_array().ok_or_else(|| plain("the batch list has no data"))?;
        for batch in data {
            let metadata = &batch["metadata"];
            if metadata["batchgen_run"] == tag.run.as_str()
                && metadata["batchgen_chunk"] == tag.chunk.to_string().as_str()
            {
                return job_status(batch).map(Some);
            }
            // A minute's slack for clocks that disagree.
            if batch["created_at"].as_u64().is_some_and(|created| created + 60 < tag.since) {
                return Ok(None);
            }
        }
        match (page["has_more"].as_bool(), page["last_id"].as_str()) {
            (Some(true), Some(last)) => after = Some(last.to_string()),
            _ => return Ok(None),
        }
    }
}

/// `GET /batches/{id}`, or with `cancel` `POST /batches/{id}/cancel`.
pub fn status(plan: &Plan, base: &BaseUrl, id: &str, cancel: bool) -> Result<JobStatus, Failure> {
    let request = if cancel {
        request(base, &format!("/batches/{id}/cancel"), false, &[], Vec::new())
    } else {
        request(base, &format!("/batches/{id}"), true, &[], Vec::new())
    };
    job_status(&json(&exchange(plan, &request)?)?)
}

pub fn content_request(base: &BaseUrl, file: &str) -> crate::providers::HttpRequest {
    request(base, &format!("/files/{file}/content"), true, &[], Vec::new())
}

fn job_status(batch: &Value) -> Result<JobStatus, Failure> {
    let id = batch["id"].as_str().ok_or_else(|| plain(format!("not a batch: {}", short(batch))))?;
    let state = match batch["status"].as_str().unwrap_or_default() {
        "validating" => JobState::Validating,
        "in_progress" => JobState::InProgress,
        "finalizing" => JobState::Finalizing,
        "completed" => JobState::Completed,
        "failed" => JobState::Failed,
        "expired" => JobState::Expired,
        "cancelling" => JobState::Canceling,
        "cancelled" => JobState::Canceled,
        other => return Err(plain(format!("batch {id} has an unknown status {other:?}"))),
    };
    let count = |name: &str| batch["request_counts"][name].as_u64().unwrap_or(0).min(u64::from(u32::MAX)) as u32;
    // Either file id is null (or, from some clients' servers, empty) when
    // that file would be empty: an all-failed batch has only an error file.
    let result_files = ["output_file_id", "error_file_id"]
        .iter()
        .filter_map(|name| batch[*name].as_str().filter(|id| !id.is_empty()).map(str::to_string))
        .collect();
    let errors = batch["errors"]["data"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| JobError {
                    line: e["line"].as_u64().map(|line| line as u32),
                    code: e["code"].as_str().unwrap_or_default().to_string(),
                    message: e["message"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(JobStatus {
        id: id.to_string(),
        state,
        total: count("total"),
        succeeded: count("completed"),
        failed: count("failed"),
        result_files,
        errors,
    })
}

/// One line of the output or error file. A request the endpoint answered
/// carries its HTTP status and body in `response`, whatever the status; one
/// it never ran (expired, cancelled) has `response: null` and a top-level
/// `error`.
pub fn outcome(plan: &Plan, line: &Value) -> Result<Generation, Failure> {
    let response = &line["response"];
    if response.is_object() {
        let status = response["status_code"].as_u64().unwrap_or(0) as u16;
        let reply = HttpReply { status, headers: Vec::new(), body: response["body"].to_string().into_bytes() };
        return generation(providers::interpret(plan, crate::models::Provider::Openai, &reply), 1);
    }
    let code = line["error"]["code"].as_str().unwrap_or("no_response");
    let message = line["error"]["message"].as_str().unwrap_or("the line has neither a response nor an error");
    match code {
        "batch_expired" | "batch_cancelled" | "request_timeout" => unanswered(format!("{code}: {message}")),
        _ => Err(fatal(RowError::Provider(crate::batchgen::plugin::types::ProviderError {
            status: 0,
            kind: code.to_string(),
            message: message.to_string(),
        }))),
    }
}

fn short(value: &Value) -> String {
    providers::summary(value.to_string().as_bytes())
}
