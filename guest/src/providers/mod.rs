//! Provider wire formats: how a row becomes a request and how a reply becomes
//! a result, and which failures are worth another attempt.

pub mod anthropic;
pub mod openai;

use crate::batchgen::plugin::types::{ProviderError, RowError};
use crate::config::Plan;
use crate::models::Provider;
use crate::url::BaseUrl;

/// A request ready for `wasi:http`, without credentials: the host adds those.
pub struct HttpRequest {
    /// `GET` when true, else `POST`.
    pub get: bool,
    pub https: bool,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// A complete reply.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

/// A successful generation, before attempts are counted.
pub struct Completion {
    pub text: String,
    pub finish_reason: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// What to do with a finished attempt.
pub enum Verdict {
    Done(Result<Completion, RowError>),
    /// Worth another attempt; `after_ns` is the provider's requested wait.
    Retry {
        error: RowError,
        after_ns: Option<u64>,
    },
}

/// The request for `input` to `server`, asking for `model_id` (the plan's,
/// or the one a local server was found to serve).
pub fn build_request(plan: &Plan, kind: Provider, server: &BaseUrl, model_id: &str, input: &str) -> HttpRequest {
    let (path, mut headers, body) = match kind {
        // Local servers are OpenAI-compatible.
        Provider::Openai | Provider::Local => ("/chat/completions", Vec::new(), openai::body(plan, model_id, input)),
        Provider::Anthropic => (
            "/v1/messages",
            vec![("anthropic-version".to_string(), anthropic::VERSION.as_bytes().to_vec())],
            anthropic::body(plan, input),
        ),
    };
    headers.push(("content-type".to_string(), b"application/json".to_vec()));
    headers.push(("accept".to_string(), b"application/json".to_vec()));
    headers.push(("user-agent".to_string(), concat!("batchgen/", env!("CARGO_PKG_VERSION")).as_bytes().to_vec()));
    let body = serde_json::to_vec(&body).expect("a JSON value serialises");
    // A declared length spares servers a chunked body, and lets the host
    // size the request without reading it whole.
    headers.push(("content-length".to_string(), body.len().to_string().into_bytes()));
    HttpRequest {
        get: false,
        https: server.https,
        authority: server.authority.clone(),
        path: server.join(path),
        headers,
        body,
    }
}

/// The provider's model list (`GET /v1/models`), for the preflight check
/// and to find the model a local server serves.
pub fn models_request(kind: Provider, server: &BaseUrl) -> HttpRequest {
    let (path, mut headers) = match kind {
        Provider::Openai | Provider::Local => ("/models", Vec::new()),
        // Anthropic pages the list; one page of the maximum size holds it.
        Provider::Anthropic => {
            ("/v1/models?limit=1000", vec![("anthropic-version".to_string(), anthropic::VERSION.as_bytes().to_vec())])
        }
    };
    headers.push(("accept".to_string(), b"application/json".to_vec()));
    headers.push(("user-agent".to_string(), concat!("batchgen/", env!("CARGO_PKG_VERSION")).as_bytes().to_vec()));
    HttpRequest {
        get: true,
        https: server.https,
        authority: server.authority.clone(),
        path: server.join(path),
        headers,
        body: Vec::new(),
    }
}

/// The first model a model list (`{"data":[{"id":...}]}`) offers: what a
/// local server serves when the config names none.
pub fn first_model(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["data"].as_array()?.iter().find_map(|m| m["id"].as_str()).map(str::to_string)
}

/// Whether a model list (`{"data":[{"id":...}]}`) offers `model_id`,
/// directly or as the alias of a dated snapshot (`claude-haiku-4-5` for
/// `claude-haiku-4-5-20251001`, `gpt-4o` for `gpt-4o-2024-08-06`).
pub fn lists_model(body: &[u8], model_id: &str) -> Result<bool, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the model list is not JSON ({e}): {}", summary(body)))?;
    let data = value["data"].as_array().ok_or_else(|| format!("the model list has no data: {}", summary(body)))?;
    let dated = |rest: &str| {
        rest.strip_prefix('-').is_some_and(|date| {
            date.chars().all(|c| c.is_ascii_digit() || c == '-')
                && date.chars().filter(char::is_ascii_digit).count() == 8
        })
    };
    Ok(data
        .iter()
        .filter_map(|m| m["id"].as_str())
        .any(|id| id == model_id || id.strip_prefix(model_id).is_some_and(dated)))
}

pub fn interpret(plan: &Plan, kind: Provider, reply: &HttpReply) -> Verdict {
    if (200..300).contains(&reply.status) {
        let parsed = match kind {
            Provider::Openai | Provider::Local => openai::completion(&reply.body),
            Provider::Anthropic => anthropic::completion(&reply.body),
        };
        return match parsed {
            // Whatever the provider promised, the output must match the
            // schema; one that does not is retried like a garbled reply.
            Ok(completion) => match plan.schema.as_ref().map(|schema| schema.check(&completion.text)) {
                Some(Err(message)) => Verdict::Retry { error: RowError::MalformedReply(message), after_ns: None },
                _ => Verdict::Done(Ok(completion)),
            },
            // A cut-off or garbled 2xx body is a transport fault in practice.
            Err(message) => Verdict::Retry { error: RowError::MalformedReply(message), after_ns: None },
        };
    }
    classify_error(plan, reply)
}

/// The provider's error `type`/`code` and message, from either format:
/// OpenAI `{"error":{"message","type","code"}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`.
fn error_details(body: &[u8]) -> (String, String, String) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = &value["error"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let message = match error["message"].as_str() {
        Some(message) => message.to_string(),
        None => summary(body),
    };
    (text(&error["type"]), text(&error["code"]), message)
}

/// A short printable rendering of a body that is not the expected JSON.
pub fn summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".to_string();
    }
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

pub fn classify_error(plan: &Plan, reply: &HttpReply) -> Verdict {
    let status = reply.status;
    let (kind, code, message) = error_details(&reply.body);
    let with_status = |message: &str| format!("{status} {message}");
    let done = |error| Verdict::Done(Err(error));
    let retry = |error| Verdict::Retry { error, after_ns: retry_after_ns(reply) };
    match status {
        400 | 413 | 422 => done(RowError::InvalidRequest(with_status(&message))),
        401 | 403 => done(RowError::Auth(with_status(&message))),
        404 => done(RowError::NotFound(format!(
            "{}: {}",
            with_status(&message),
            plan.model.not_found_hint(&plan.model_id)
        ))),
        429 if is_quota(&kind, &code, &message) => {
            done(RowError::RateLimited(format!("{} (a quota or spend limit: not retried)", with_status(&message))))
        }
        429 => retry(RowError::RateLimited(with_status(&message))),
        408 | 409 | 500..=599 => retry(RowError::Provider(ProviderError { status, kind, message })),
        _ => done(RowError::Provider(ProviderError { status, kind, message })),
    }
}

/// Quota and spend limits do not lift on a retry.
fn is_quota(kind: &str, code: &str, message: &str) -> bool {
    kind == "insufficient_quota"
        || code == "insufficient_quota"
        || message.contains("enforced_spend_limit_reached")
        || message.contains("insufficient_quota")
}

/// The wait a provider asked for: OpenAI's `retry-after-ms`, else the
/// standard `retry-after` in seconds. HTTP-date values are ignored (the
/// providers send seconds), as are absurd ones.
fn retry_after_ns(reply: &HttpReply) -> Option<u64> {
    const MAX_NS: f64 = 600.0 * 1e9;
    let parse = |name: &str, scale: f64| {
        reply
            .header(name)
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite() && *value >= 0.0)
            .map(|value| (value * scale).min(MAX_NS) as u64)
    };
    parse("retry-after-ms", 1e6).or_else(|| parse("retry-after", 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> HttpReply {
        HttpReply {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        assert_eq!(
            retry_after_ns(&reply(429, &[("retry-after-ms", "250"), ("retry-after", "1")], "")),
            Some(250_000_000)
        );
        assert_eq!(retry_after_ns(&reply(429, &[("Retry-After", "2")], "")), Some(2_000_000_000));
        assert_eq!(retry_after_ns(&reply(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "")), None);
    }

    #[test]
    fn quota_errors_are_recognised_in_both_formats() {
        let (kind, code, message) = error_details(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert!(is_quota(&kind, &code, &message));
        let (kind, code, message) = error_details(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"enforced_spend_limit_reached: limit hit"}}"#,
        );
        assert!(is_quota(&kind, &code, &message));
        let (kind, code, message) = error_details(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        );
        assert!(!is_quota(&kind, &code, &message));
    }

    #[test]
    fn model_lists_match_ids_and_undated_aliases() {
        let list = br#"{"data":[{"id":"claude-haiku-4-5-20251001"},{"id":"gpt-4o"},{"id":"gpt-4.1-2025-04-14"}],"has_more":false}"#;
        assert_eq!(lists_model(list, "gpt-4.1"), Ok(true));
        assert_eq!(lists_model(list, "gpt-4o"), Ok(true));
        assert_eq!(lists_model(list, "claude-haiku-4-5"), Ok(true));
        assert_eq!(lists_model(list, "claude-haiku-4"), Ok(false), "only a date may follow an alias");
        assert_eq!(lists_model(list, "claude-3-5-haiku-20241022"), Ok(false));
        assert_eq!(lists_model(list, "gpt-4"), Ok(false));
        assert!(lists_model(b"<html>", "gpt-4o").is_err());
    }

    #[test]
    fn unparsable_error_bodies_are_summarised() {
        let (_, _, message) = error_details(b"<html>bad gateway</html>");
        assert_eq!(message, "<html>bad gateway</html>");
        assert_eq!(summary(b"  "), "empty body");
    }
}
