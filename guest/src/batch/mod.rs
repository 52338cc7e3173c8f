//! Provider batch jobs: the `batch-jobs` export. Each call is one short
//! exchange with the provider (or none); the host keeps every bit of state
//! between calls, so a call can be repeated after a crash at no risk.
//!
//! The request inside each line is built by the same code as a synchronous
//! request (`providers::{openai, anthropic}::body`), so a row sends the
//! same parameters whichever way it goes.

mod anthropic;
mod openai;

use crate::batchgen::plugin::types::{Config, Generation, RowError};
use crate::config::{self, Plan, Target};
use crate::exports::batchgen::plugin::batch_jobs::{Failure, Guest, JobLimits, JobRow, JobStatus, JobTag, RowOutcome};
use crate::http;
use crate::models::Provider;
use crate::providers::{self, HttpReply, HttpRequest, Verdict};
use crate::transfer;
use crate::url::BaseUrl;
use wasip2::io::streams::{InputStream, OutputStream};

/// A provider's batch API, reached at `base`.
enum Api {
    OpenAi(BaseUrl),
    Anthropic(BaseUrl),
}

impl Api {
    fn of(config: &Config) -> Result<(Plan, Api), Failure> {
        let plan =
            Plan::new(config).map_err(|problems| fatal(RowError::InvalidRequest(config::describe(&problems))))?;
        let api = match &plan.target {
            Target::Remote(remote) if remote.kind == Provider::Openai => Api::OpenAi(remote.servers[0].clone()),
            Target::Remote(remote) if remote.kind == Provider::Anthropic => Api::Anthropic(remote.servers[0].clone()),
            _ => {
                return Err(fatal(RowError::InvalidRequest(format!(
                    "{} has no batch API: batch jobs serve the OpenAI and Anthropic models",
                    plan.model.label
                ))));
            }
        };
        Ok((plan, api))
    }
}

fn fatal(error: RowError) -> Failure {
    Failure { error, retryable: false }
}

fn plain(message: impl Into<String>) -> Failure {
    fatal(RowError::MalformedReply(message.into()))
}

/// Sends `request` and returns a 2xx reply; anything else is a failure,
/// retryable when the provider or the network may do better next time.
fn exchange(plan: &Plan, request: &HttpRequest) -> Result<HttpReply, Failure> {
    let reply = http::fetch(request, plan.request_timeout_ns).map_err(transport)?;
    checked(plan, reply)
}

fn checked(plan: &Plan, reply: HttpReply) -> Result<HttpReply, Failure> {
    if (200..300).contains(&reply.status) {
        return Ok(reply);
    }
    // A job or file id the provider does not know: not the model's fault,
    // so without the synchronous path's hint about retired model ids. The
    // providers answer 404 for a moment after a create (their own SDKs
    // retry it), so it is worth another look.
    if reply.status == 404 {
        let message = providers::summary(&reply.body);
        return Err(Failure { error: RowError::NotFound(format!("404 {message}")), retryable: true });
    }
    Err(match providers::classify_error(plan, &reply) {
        Verdict::Retry { error, .. } => Failure { error, retryable: true },
        Verdict::Done(Err(error)) => fatal(error),
        Verdict::Done(Ok(_)) => unreachable!("an error status is never a completion"),
    })
}

fn transport(failure: http::Failure) -> Failure {
    match http::transport_verdict(failure) {
        Verdict::Retry { error, .. } => Failure { error, retryable: true },
        Verdict::Done(Err(error)) => fatal(error),
        Verdict::Done(Ok(_)) => unreachable!("a transport failure is never a completion"),
    }
}

fn json(reply: &HttpReply) -> Result<serde_json::Value, Failure> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| plain(format!("not the provider's JSON ({e}): {}", providers::summary(&reply.body))))
}

/// A request to `base` + `path`, with the provider's headers.
fn request(base: &BaseUrl, path: &str, get: bool, headers: &[(&str, &str)], body: Vec<u8>) -> HttpRequest {
    let mut all: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect();
    all.push(("accept".to_string(), b"application/json".to_vec()));
    all.push(("user-agent".to_string(), concat!("batchgen/", env!("CARGO_PKG_VERSION")).as_bytes().to_vec()));
    if !get {
        all.push(("content-length".to_string(), body.len().to_string().into_bytes()));
    }
    HttpRequest { get, https: base.https, authority: base.authority.clone(), path: base.join(path), headers: all, body }
}

/// A generation from a completion in a result line.
fn generation(verdict: Verdict, attempts: u32) -> Result<Generation, Failure> {
    match verdict {
        Verdict::Done(Ok(c)) => Ok(Generation {
            text: c.text,
            finish_reason: c.finish_reason,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            attempts,
        }),
        Verdict::Done(Err(error)) => Err(fatal(error)),
        Verdict::Retry { error, .. } => Err(Failure { error, retryable: true }),
    }
}

/// An id the provider gave us, checked before it goes into a path: a
/// hostile or broken server must not steer requests elsewhere.
fn path_id(id: &str) -> Result<&str, Failure> {
    if !id.is_empty() && id.len() <= 256 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(id)
    } else {
        Err(plain(format!("{id:?} is not a job or file id")))
    }
}

impl Guest for crate::Component {
    fn limits(config: Config) -> Result<JobLimits, String> {
        let (_, api) = Api::of(&config).map_err(|f| describe(&f.error))?;
        Ok(match api {
            Api::OpenAi(_) => openai::LIMITS,
            Api::Anthropic(_) => anthropic::LIMITS,
        })
    }

    fn request_lines(config: Config, rows: Vec<JobRow>) -> Result<Vec<String>, String> {
        let (plan, api) = Api::of(&config).map_err(|f| describe(&f.error))?;
        Ok(rows
            .iter()
            .map(|row| match api {
                Api::OpenAi(_) => openai::line(&plan, row),
                Api::Anthropic(_) => anthropic::line(&plan, row),
            })
            .collect())
    }

    fn submit(config: Config, tag: JobTag, lines: InputStream, length: u64) -> Result<JobStatus, Failure> {
        let (plan, api) = Api::of(&config)?;
        match api {
            Api::OpenAi(base) => openai::submit(&plan, &base, &tag, &lines, length),
            Api::Anthropic(base) => anthropic::submit(&plan, &base, &lines, length),
        }
    }

    fn find(config: Config, tag: JobTag) -> Result<Option<JobStatus>, Failure> {
        let (plan, api) = Api::of(&config)?;
        match api {
            Api::OpenAi(base) => openai::find(&plan, &base, &tag),
            Api::Anthropic(base) => anthropic::find(&plan, &base, &tag),
        }
    }

    fn status(config: Config, id: String) -> Result<JobStatus, Failure> {
        let (plan, api) = Api::of(&config)?;
        match api {
            Api::OpenAi(base) => openai::status(&plan, &base, path_id(&id)?, false),
            Api::Anthropic(base) => anthropic::status(&plan, &base, path_id(&id)?, false),
        }
    }

    fn cancel(config: Config, id: String) -> Result<JobStatus, Failure> {
        let (plan, api) = Api::of(&config)?;
        match api {
            Api::OpenAi(base) => openai::status(&plan, &base, path_id(&id)?, true),
            Api::Anthropic(base) => anthropic::status(&plan, &base, path_id(&id)?, true),
        }
    }

    fn download(config: Config, file: String, sink: OutputStream) -> Result<u64, Failure> {
        let (plan, api) = Api::of(&config)?;
        let request = match api {
            Api::OpenAi(base) => openai::content_request(&base, path_id(&file)?),
            Api::Anthropic(_) => anthropic::results_request(&file)?,
        };
        match transfer::download(&request, &sink, plan.request_timeout_ns).map_err(transport)? {
            transfer::Downloaded::Written(bytes) => Ok(bytes),
            transfer::Downloaded::Refused(reply) => {
                Err(checked(&plan, reply).err().unwrap_or_else(|| plain("the download answered 2xx after all")))
            }
        }
    }

    fn read_results(config: Config, lines: Vec<String>) -> Vec<Result<RowOutcome, String>> {
        let (plan, api) = match Api::of(&config) {
            Ok(found) => found,
            Err(failure) => return lines.iter().map(|_| Err(describe(&failure.error))).collect(),
        };
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    format!("result line {} is not JSON ({e}): {}", i + 1, providers::summary(line.as_bytes()))
                })?;
                let custom_id = value["custom_id"]
                    .as_str()
                    .ok_or_else(|| format!("result line {} has no custom_id", i + 1))?
                    .to_string();
                let outcome = match api {
                    Api::OpenAi(_) => openai::outcome(&plan, &value),
                    Api::Anthropic(_) => anthropic::outcome(&plan, &value),
                };
                Ok(RowOutcome { custom_id, outcome })
            })
            .collect()
    }
}

/// A row error in one line, for messages that are not about a row.
fn describe(error: &RowError) -> String {
    match error {
        RowError::InvalidRequest(m)
        | RowError::Auth(m)
        | RowError::NotFound(m)
        | RowError::RateLimited(m)
        | RowError::Timeout(m)
        | RowError::Transport(m)
        | RowError::MalformedReply(m) => m.clone(),
        RowError::Provider(e) => format!("{} {}: {}", e.status, e.kind, e.message),
    }
}

/// A row that came back without an answer for a reason of the job's (it
/// expired or was cancelled before the provider reached it): worth another job.
fn unanswered(message: String) -> Result<Generation, Failure> {
    Err(Failure { error: RowError::Timeout(message), retryable: true })
}
