//! Anthropic's Message Batches: the requests go in the create's JSON body;
//! results come back as one JSONL file at the batch's `results_url`.

use super::{Failure, checked, exchange, fatal, generation, json, plain, request, transport, unanswered};
use crate::batchgen::plugin::types::{Generation, ProviderError, RowError};
use crate::config::Plan;
use crate::exports::batchgen::plugin::batch_jobs::{JobLimits, JobRow, JobState, JobStatus, JobTag};
use crate::models::Provider;
use crate::providers::{self, HttpReply, HttpRequest, anthropic};
use crate::transfer::{self, Piece};
use crate::url::BaseUrl;
use serde_json::{Value, json};
use wasip2::io::streams::InputStream;

/// 100,000 requests or 256 MB per batch, less the create's envelope.
pub const LIMITS: JobLimits = JobLimits { max_requests: 100_000, max_bytes: 255_000_000 };
const HEAD: &[u8] = b"{\"requests\":[";
const TAIL: &[u8] = b"]}";
/// Batches listed per page when looking for an unrecorded one.
const PAGE: u32 = 100;

fn version() -> (&'static str, &'static str) {
    ("anthropic-version", anthropic::VERSION)
}

pub fn line(plan: &Plan, row: &JobRow) -> String {
    json!({"custom_id": row.custom_id, "params": anthropic::body(plan, &row.input)}).to_string()
}

/// Streams the lines into the create's `requests` array: each newline
/// between two lines becomes the comma between two elements (JSON lines
/// hold no raw newline of their own), the last is dropped.
pub fn submit(plan: &Plan, base: &BaseUrl, lines: &InputStream, length: u64) -> Result<JobStatus, Failure> {
    if length == 0 {
        return Err(fatal(RowError::InvalidRequest("a job needs at least one request".into())));
    }
    let total = HEAD.len() as u64 + (length - 1) + TAIL.len() as u64;
    let mut head =
        request(base, "/v1/messages/batches", false, &[version(), ("content-type", "application/json")], Vec::new());
    head.headers.retain(|(name, _)| name != "content-length");
    head.headers.push(("content-length".to_string(), total.to_string().into_bytes()));
    let mut held = false;
    let mut commas = |chunk: &mut Vec<u8>, last: bool| {
        if last {
            return;
        }
        if held && !chunk.is_empty() {
            chunk.insert(0, b'\n');
            held = false;
        }
        if chunk.last() == Some(&b'\n') {
            chunk.pop();
            held = true;
        }
        for byte in chunk.iter_mut() {
            if *byte == b'\n' {
                *byte = b',';
            }
        }
    };
    let pieces = vec![
        Piece::Bytes(HEAD.to_vec()),
        Piece::Stream { stream: lines, map: &mut commas },
        Piece::Bytes(TAIL.to_vec()),
    ];
    let reply = transfer::upload(&head, total, pieces, plan.request_timeout_ns).map_err(transport)?;
    job_status(&json(&checked(plan, reply)?)?)
}

/// Anthropic batches carry no metadata: an unrecorded one is recognised as
/// the only batch with the job's number of requests created since the tag's
/// time. Two such batches are ambiguous, and neither is claimed.
pub fn find(plan: &Plan, base: &BaseUrl, tag: &JobTag) -> Result<Option<JobStatus>, Failure> {
    let mut after: Option<String> = None;
    let mut found: Vec<JobStatus> = Vec::new();
    loop {
        let path = match &after {
            Some(id) => format!("/v1/messages/batches?limit={PAGE}&after_id={}", super::path_id(id)?),
            None => format!("/v1/messages/batches?limit={PAGE}"),
        };
        let page = json(&exchange(plan, &request(base, &path, true, &[version()], Vec::new()))?)?;
        let data = page["data"].as_array().ok_or_else(|| plain("the batch list has no data"))?;
        let mut older = false;
        for batch in data {
            let created = batch["created_at"].as_str().and_then(unix_seconds);
            // A minute's slack for clocks that disagree.
            if created.is_some_and(|created| created + 60 < tag.since) {
                older = true;
                break;
            }
            let status = job_status(batch)?;
            if status.total == tag.requests {
                found.push(status);
            }
        }
        match (older, page["has_more"].as_bool(), page["last_id"].as_str()) {
            (false, Some(true), Some(last)) => after = Some(last.to_string()),
            _ => break,
        }
    }
    Ok(if found.len() == 1 { found.pop() } else { None })
}

/// `GET /v1/messages/batches/{id}`, or with `cancel` its `/cancel`.
pub fn status(plan: &Plan, base: &BaseUrl, id: &str, cancel: bool) -> Result<JobStatus, Failure> {
    let request = if cancel {
        request(base, &format!("/v1/messages/batches/{id}/cancel"), false, &[version()], Vec::new())
    } else {
        request(base, &format!("/v1/messages/batches/{id}"), true, &[version()], Vec::new())
    };
    job_status(&json(&exchange(plan, &request)?)?)
}

/// The request for an absolute `results_url`, as the provider gave it: the
/// host's allowlist decides whether it may be fetched.
pub fn results_request(url: &str) -> Result<HttpRequest, Failure> {
    let target = BaseUrl::parse(url).map_err(|message| plain(format!("results_url: {message}")))?;
    let mut request = request(&target, "", true, &[version()], Vec::new());
    request.headers.push(("accept".to_string(), b"application/binary".to_vec()));
    request.headers.retain(|(name, value)| name != "accept" || value != b"application/json");
    Ok(request)
}

fn job_status(batch: &Value) -> Result<JobStatus, Failure> {
    let id = batch["id"].as_str().ok_or_else(|| plain("not a message batch"))?;
    let count = |name: &str| batch["request_counts"][name].as_u64().unwrap_or(0).min(u64::from(u32::MAX)) as u32;
    let canceled = !batch["cancel_initiated_at"].is_null();
    // `ended` is the only terminal state; a cancel shows only in
    // `cancel_initiated_at` (and the results' types).
    let state = match batch["processing_status"].as_str().unwrap_or_default() {
        "in_progress" => JobState::InProgress,
        "canceling" => JobState::Canceling,
        "ended" if canceled => JobState::Canceled,
        "ended" => JobState::Completed,
        other => return Err(plain(format!("message batch {id} has an unknown processing_status {other:?}"))),
    };
    let (processing, succeeded) = (count("processing"), count("succeeded"));
    let failed = count("errored") + count("canceled") + count("expired");
    Ok(JobStatus {
        id: id.to_string(),
        state,
        total: processing + succeeded + failed,
        succeeded,
        failed,
        result_files: batch["results_url"].as_str().map(str::to_string).into_iter().collect(),
        errors: Vec::new(),
    })
}

/// One results line: `succeeded` carries the message a synchronous call
/// returns; `errored` the error body (`invalid_request_error` is the row's
/// fault, anything else may pass next time); `canceled` and `expired`
/// were never run.
pub fn outcome(plan: &Plan, line: &Value) -> Result<Generation, Failure> {
    let result = &line["result"];
    match result["type"].as_str().unwrap_or_default() {
        "succeeded" => {
            let reply =
                HttpReply { status: 200, headers: Vec::new(), body: result["message"].to_string().into_bytes() };
            generation(providers::interpret(plan, Provider::Anthropic, &reply), 1)
        }
        "errored" => {
            let error = &result["error"]["error"];
            let kind = error["type"].as_str().unwrap_or_default().to_string();
            let message = error["message"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "invalid_request_error" => Err(fatal(RowError::InvalidRequest(message))),
                "authentication_error" | "permission_error" => Err(fatal(RowError::Auth(message))),
                "not_found_error" => Err(fatal(RowError::NotFound(message))),
                _ => Err(Failure {
                    error: RowError::Provider(ProviderError { status: 0, kind, message }),
                    retryable: true,
                }),
            }
        }
        "canceled" => unanswered("canceled: the batch was canceled before this request ran".into()),
        "expired" => unanswered("expired: the batch ended before this request ran".into()),
        other => Err(plain(format!("unknown result type {other:?}"))),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 time
/// (`2025-01-12T05:59:14.154311+00:00`, `...Z`); `None` if it is not one.
fn unix_seconds(text: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    // The offset, if any, after the fraction.
    let rest = &text[19..];
    if let Some(at) = rest.find(['+', '-']) {
        let sign = if rest.as_bytes()[at] == b'-' { -1 } else { 1 };
        let offset = &rest[at + 1..];
        let hours: i64 = offset.get(0..2)?.parse().ok()?;
        let minutes: i64 = offset.get(3..5)?.parse().ok()?;
        seconds -= sign * (hours * 3600 + minutes * 60);
    }
    u64::try_from(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::unix_seconds;

    #[test]
    fn reads_rfc_3339_times() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2025-01-12T05:59:14.154311+00:00"), Some(1_736_661_554));
        assert_eq!(unix_seconds("2025-01-12T06:59:14+01:00"), Some(1_736_661_554));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
