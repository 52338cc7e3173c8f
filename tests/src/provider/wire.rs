//! The two providers' wire formats: what a request means, and the success
//! bodies, error bodies and headers the real APIs send back.
//!
//! Messages and codes are the ones the real services send, so code that
//! classifies errors by them is exercised for real.

use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which provider's format a request is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Api {
    OpenAi,
    Anthropic,
}

/// A complete answer, before it becomes a hyper response.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub(super) fn json(status: u16, body: &Value) -> Self {
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        Reply { status, headers, body: body.to_string() }
    }

    /// Marks this answer as spending the last request of the budget.
    pub(super) fn exhaust_requests(&mut self, reset: Duration) {
        self.headers
            .retain(|(name, _)| name != "x-ratelimit-remaining-requests" && name != "x-ratelimit-reset-requests");
        self.headers.push(("x-ratelimit-remaining-requests".into(), "0".into()));
        self.headers.push(("x-ratelimit-reset-requests".into(), format!("{}ms", reset.as_millis())));
    }

    /// Drops the rate-limit headers: a 429 that says nothing of the key's
    /// limits.
    pub(super) fn without_limit_headers(mut self) -> Self {
        self.headers.retain(|(name, _)| !name.starts_with("x-ratelimit-") && !name.starts_with("anthropic-ratelimit-"));
        self
    }

    /// Says how many requests the key has left, and when the next comes.
    pub(super) fn requests_left(&mut self, left: u64, per_minute: u64, reset: Duration) {
        self.headers.retain(|(name, _)| !name.contains("ratelimit-") || !name.contains("requests"));
        let reset_ms = format!("{}ms", reset.as_millis().max(1));
        self.headers.push(("x-ratelimit-limit-requests".into(), per_minute.to_string()));
        self.headers.push(("x-ratelimit-remaining-requests".into(), left.to_string()));
        self.headers.push(("x-ratelimit-reset-requests".into(), reset_ms));
        let at = rfc3339(SystemTime::now() + reset);
        self.headers.push(("anthropic-ratelimit-requests-limit".into(), per_minute.to_string()));
        self.headers.push(("anthropic-ratelimit-requests-remaining".into(), left.to_string()));
        self.headers.push(("anthropic-ratelimit-requests-reset".into(), at));
    }

    /// Asks the client to wait `wait` before trying again, in whole seconds
    /// as `retry-after` is written (at least 1).
    pub(super) fn retry_after(&mut self, wait: Duration) {
        self.headers.retain(|(name, _)| name != "retry-after" && name != "retry-after-ms");
        self.headers.push(("retry-after".into(), wait.as_secs_f64().ceil().max(1.0).to_string()));
    }

    fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds the headers every answer carries: the request id and, on
    /// successes and rate-limit errors, the rate-limit headers (plenty left
    /// on a success, none left on a 429).
    fn stamp(mut self, api: Api, request_id: &str) -> Self {
        let limited = match self.status {
            200 => false,
            429 => true,
            _ => return self.with(request_id_header(api), request_id),
        };
        self = self.with(request_id_header(api), request_id);
        let left = |limit: u64| if limited { 0 } else { limit - 1 }.to_string();
        match api {
            Api::OpenAi => {
                for (kind, limit) in [("requests", 10_000), ("tokens", 30_000_000)] {
                    self = self
                        .with(format!("x-ratelimit-limit-{kind}"), limit.to_string())
                        .with(format!("x-ratelimit-remaining-{kind}"), left(limit))
                        .with(format!("x-ratelimit-reset-{kind}"), "1ms");
                }
            }
            Api::Anthropic => {
                let reset = rfc3339(SystemTime::now() + Duration::from_secs(1));
                for (kind, limit) in [
                    ("requests", 4_000),
                    ("tokens", 30_000_000),
                    ("input-tokens", 20_000_000),
                    ("output-tokens", 10_000_000),
                ] {
                    self = self
                        .with(format!("anthropic-ratelimit-{kind}-limit"), limit.to_string())
                        .with(format!("anthropic-ratelimit-{kind}-remaining"), left(limit))
                        .with(format!("anthropic-ratelimit-{kind}-reset"), reset.clone());
                }
            }
        }
        self
    }
}

pub(super) fn request_id_header(api: Api) -> &'static str {
    match api {
        Api::OpenAi => "x-request-id",
        Api::Anthropic => "request-id",
    }
}

/// An API error: status plus the fields of the provider's error body.
#[derive(Debug)]
pub(super) struct ApiError {
    status: u16,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
    /// Anthropic's `error.details.error_code`, which says why a 429 is not
    /// retryable.
    error_code: Option<&'static str>,
    /// Whether the provider sends `retry-after` (and OpenAI `retry-after-ms`).
    retry_after: bool,
}

impl ApiError {
    pub(super) fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError { status, kind, message, param: None, code: None, error_code: None, retry_after: false }
    }

    pub(super) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(super) fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// The provider's real error for `status`. OpenAI never sends 529, so
    /// there it becomes the 503 OpenAI sends when overloaded.
    pub(super) fn for_status(api: Api, status: u16, model: &str) -> Self {
        let error = match api {
            Api::Anthropic => {
                let (kind, message) = match status {
                    400 => ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum".to_owned()),
                    401 => ("authentication_error", "invalid x-api-key".to_owned()),
                    402 => ("billing_error", "Your credit balance is too low to access the Anthropic API.".to_owned()),
                    403 => ("permission_error", "Your API key does not have permission to use the specified resource.".to_owned()),
                    404 => ("not_found_error", format!("model: {model}")),
                    413 => ("request_too_large", "Request exceeds the maximum allowed number of bytes.".to_owned()),
                    429 => ("rate_limit_error", "This request would exceed the rate limit for your organization of 4,000 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.".to_owned()),
                    529 => ("overloaded_error", "Overloaded".to_owned()),
                    500.. => ("api_error", "Internal server error".to_owned()),
                    _ => ("invalid_request_error", "Invalid request".to_owned()),
                };
                ApiError::new(status, kind, message)
            }
            Api::OpenAi => match status {
                400 => ApiError::new(400, "invalid_request_error", "This model's maximum context length is 128000 tokens. However, your messages resulted in 210000 tokens. Please reduce the length of the messages.")
                    .code("context_length_exceeded"),
                401 => ApiError::new(401, "invalid_request_error", "Incorrect API key provided: sk-********test. You can find your API key at https://platform.openai.com/account/api-keys.")
                    .code("invalid_api_key"),
                403 => ApiError::new(403, "request_forbidden", "Country, region, or territory not supported")
                    .code("unsupported_country_region_territory"),
                404 => ApiError::new(404, "invalid_request_error", format!("The model `{model}` does not exist or you do not have access to it."))
                    .code("model_not_found"),
                429 => ApiError::new(429, "requests", format!("Rate limit reached for {model} in organization org-test on requests per min (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 6ms. Visit https://platform.openai.com/account/rate-limits to learn more."))
                    .code("rate_limit_exceeded"),
                503 | 529 => ApiError::new(503, "server_error", "The engine is currently overloaded, please try again later."),
                500.. => ApiError::new(status, "server_error", "The server had an error while processing your request. Sorry about that!"),
                _ => ApiError::new(status, "invalid_request_error", "Invalid request."),
            },
        };
        ApiError { retry_after: error.status == 429, ..error }
    }

    /// The 429 that means the account is out of money: retrying cannot help,
    /// and the provider sends no `retry-after`.
    pub(super) fn quota(api: Api) -> Self {
        match api {
            Api::OpenAi => ApiError::new(429, "insufficient_quota", "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
                .code("insufficient_quota"),
            Api::Anthropic => ApiError {
                error_code: Some("enforced_spend_limit_reached"),
                ..ApiError::new(429, "rate_limit_error", "You have reached your API usage limits (enforced_spend_limit_reached): your organization has crossed its monthly API usage threshold. You will regain access on the first of next month at 00:00 UTC.")
            },
        }
    }

    /// The answer for a missing or wrong API key.
    pub(super) fn unauthorized(api: Api, sent: Option<&str>) -> Self {
        match (api, sent) {
            (Api::OpenAi, None) => ApiError::new(
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            ),
            (Api::OpenAi, Some(key)) => {
                // Like OpenAI, show only the last four characters.
                let tail = key.char_indices().rev().nth(3).map_or(key, |(i, _)| &key[i..]);
                ApiError::new(401, "invalid_request_error", format!("Incorrect API key provided: sk-********{tail}. You can find your API key at https://platform.openai.com/account/api-keys."))
                    .code("invalid_api_key")
            }
            (Api::Anthropic, None) => ApiError::new(401, "authentication_error", "x-api-key header is required"),
            (Api::Anthropic, Some(_)) => ApiError::new(401, "authentication_error", "invalid x-api-key"),
        }
    }

    /// The answer to a body that is not a JSON object.
    pub(super) fn unparsable(api: Api) -> Self {
        let message = match api {
            Api::OpenAi => {
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
            }
            Api::Anthropic => "There was an error parsing the body of your request.",
        };
        ApiError::new(400, "invalid_request_error", message)
    }

    /// The answer for a path the provider does not serve.
    pub(super) fn unknown_route(api: Api, method: &str, path: &str) -> Self {
        match api {
            Api::OpenAi => ApiError::new(404, "invalid_request_error", format!("Invalid URL ({method} {path})")),
            Api::Anthropic => ApiError::new(404, "not_found_error", "Not Found"),
        }
    }

    pub(super) fn reply(self, api: Api, request_id: &str) -> Reply {
        let body = match api {
            Api::OpenAi => json!({ "error": {
                "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
            }}),
            Api::Anthropic => {
                let mut error = json!({ "type": self.kind, "message": self.message });
                if let Some(code) = self.error_code {
                    error["details"] = json!({ "error_code": code });
                }
                json!({ "type": "error", "error": error, "request_id": request_id })
            }
        };
        let mut reply = Reply::json(self.status, &body).stamp(api, request_id);
        if self.retry_after {
            if api == Api::OpenAi {
                reply = reply.with("retry-after-ms", "10");
            }
            reply = reply.with("retry-after", "1");
        }
        reply
    }
}

/// Anthropic ids that have been retired: asking for one is a 404.
const RETIRED: [&str; 3] = ["claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022"];

/// The request-level checks the real API makes before generating anything.
/// `body` is `Null` when the request body was not JSON.
pub(super) fn validate(api: Api, body: &Value) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::new(400, "invalid_request_error", message);
    if !body.is_object() {
        return Err(ApiError::unparsable(api));
    }
    let model = body["model"].as_str();
    let temperature = body["temperature"].as_f64();
    match api {
        Api::OpenAi => {
            let Some(model) = model else {
                return Err(invalid("you must provide a model parameter".into()));
            };
            if !body["messages"].is_array() {
                return Err(invalid("Missing required parameter: 'messages'.".into())
                    .param("messages")
                    .code("missing_required_parameter"));
            }
            if let Some(t) = temperature.filter(|t| !(0.0..=2.0).contains(t)) {
                return Err(invalid(format!("Invalid 'temperature': decimal out of range. Expected a value between 0 and 2, but got {t} instead."))
                    .param("temperature")
                    .code("decimal_out_of_range"));
            }
            // Reasoning models only take `max_completion_tokens`.
            let reasoning = ["o1", "o3", "o4", "gpt-5"].iter().any(|p| model.starts_with(p));
            if reasoning && !body["max_tokens"].is_null() {
                return Err(invalid("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into())
                    .param("max_tokens")
                    .code("unsupported_parameter"));
            }
            for name in ["max_tokens", "max_completion_tokens"] {
                if body[name].as_i64().is_some_and(|n| n < 1) {
                    return Err(invalid(format!(
                        "Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {} instead.",
                        body[name]
                    ))
                    .code("integer_below_min_value"));
                }
            }
        }
        Api::Anthropic => {
            let Some(model) = model else {
                return Err(invalid("model: Field required".into()));
            };
            match body["max_tokens"].as_i64() {
                None => return Err(invalid("max_tokens: Field required".into())),
                Some(n) if n < 1 => {
                    return Err(invalid("max_tokens: Input should be greater than or equal to 1".into()));
                }
                Some(_) => {}
            }
            let Some(messages) = body["messages"].as_array() else {
                return Err(invalid("messages: Field required".into()));
            };
            for (i, message) in messages.iter().enumerate() {
                match message["role"].as_str() {
                    Some("user" | "assistant") => {}
                    Some("system") => return Err(invalid("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".into())),
                    _ => return Err(invalid(format!("messages.{i}.role: Input should be 'user' or 'assistant'"))),
                }
            }
            if temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
                return Err(invalid("temperature: Input should be less than or equal to 1".into()));
            }
            if temperature.is_some() && !body["top_p"].is_null() && rejects_temperature_with_top_p(model) {
                return Err(invalid(
                    "`temperature` and `top_p` cannot both be specified for this model. Please use only one.".into(),
                ));
            }
            if RETIRED.contains(&model) {
                return Err(ApiError::new(404, "not_found_error", format!("model: {model}")));
            }
        }
    }
    Ok(())
}

/// Sonnet 4.5, Haiku 4.5, Opus 4.1 and later take `temperature` or `top_p`,
/// not both. Ids look like `claude-sonnet-4-5[-20250929]`; Sonnet 4 is
/// `claude-sonnet-4-20250514` (a date where the minor version would be).
fn rejects_temperature_with_top_p(model: &str) -> bool {
    let mut parts = model.split('-');
    let (Some("claude"), Some(family), Some(major)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(major) = major.parse::<u32>() else {
        return false;
    };
    let minor = parts.next().filter(|m| m.len() <= 2).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    let family_ok = family.chars().all(|c| c.is_ascii_alphabetic());
    family_ok && (major > 4 || (major == 4 && (minor >= 5 || (family == "opus" && minor >= 1))))
}

/// The text of a message's `content`: a string, or the text blocks of a
/// list of content blocks, joined by newlines.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(blocks) => Some(
            blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

/// The last user message's text, in either format.
pub(super) fn prompt(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    let user = messages.iter().rev().find(|m| m["role"] == "user")?;
    content_text(&user["content"])
}

/// The system prompt: Anthropic's top-level `system`, or OpenAI's
/// `system`/`developer` messages. Empty counts as none.
pub(super) fn system(body: &Value) -> Option<String> {
    let text = match content_text(&body["system"]) {
        Some(text) => text,
        None => body["messages"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "system" || m["role"] == "developer")
            .filter_map(|m| content_text(&m["content"]))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    (!text.trim().is_empty()).then_some(text)
}

/// The echo answer to one request, with whitespace words standing in for
/// tokens so tests can predict every number.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Completion {
    pub text: String,
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Cut short by the output limit.
    pub truncated: bool,
    /// For a structured-output request (OpenAI's `response_format` with a
    /// `json_schema`, Anthropic's forced tool): the JSON answered instead of
    /// the text, and the forced tool's name (Anthropic).
    pub structured: Option<(Value, Option<String>)>,
}

impl Completion {
    pub(super) fn echo(api: Api, body: &Value) -> Self {
        let prompt = prompt(body).unwrap_or_default();
        let system = system(body);
        let words = |s: &str| s.split_whitespace().count();
        let input_tokens = words(&prompt) + system.as_deref().map_or(0, words);
        let text = match &system {
            Some(system) => format!("[{system}] echo: {prompt}"),
            None => format!("echo: {prompt}"),
        };
        let limit = match api {
            Api::OpenAi => body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64()),
            Api::Anthropic => body["max_tokens"].as_u64(),
        };
        let structured = requested_schema(api, body).map(|(schema, tool)| (instance(schema, &prompt), tool));
        match limit.map(|n| n as usize).filter(|n| *n < words(&text)) {
            Some(n) if structured.is_none() => {
                let text = text.split_whitespace().take(n).collect::<Vec<_>>().join(" ");
                Completion { text, input_tokens, output_tokens: n, truncated: true, structured }
            }
            _ => Completion { output_tokens: words(&text), text, input_tokens, truncated: false, structured },
        }
    }

    /// The same answer, off its schema (`#offschema=N`): an object with a
    /// property the schema does not have and none it requires.
    pub(super) fn off_schema(mut self) -> Self {
        if let Some((value, _)) = &mut self.structured {
            *value = json!({"off_schema": true});
        }
        self
    }

    /// The 200 answer; `id` is a per-request hex string.
    pub(super) fn reply(&self, api: Api, model: &str, id: &str) -> Reply {
        let content = match &self.structured {
            Some((value, _)) => value.to_string(),
            None => self.text.clone(),
        };
        let body = match api {
            Api::OpenAi => json!({
                "id": format!("chatcmpl-{id}"),
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": content, "refusal": null },
                    "logprobs": null,
                    "finish_reason": if self.truncated { "length" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens": self.input_tokens,
                    "completion_tokens": self.output_tokens,
                    "total_tokens": self.input_tokens + self.output_tokens,
                },
                "system_fingerprint": "fp_test",
            }),
            Api::Anthropic => json!({
                "id": format!("msg_{id}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": match &self.structured {
                    Some((value, tool)) => json!([{
                        "type": "tool_use",
                        "id": format!("toolu_{id}"),
                        "name": tool.as_deref().unwrap_or_default(),
                        "input": value,
                    }]),
                    None => json!([{ "type": "text", "text": self.text }]),
                },
                "stop_reason": if self.structured.is_some() { "tool_use" } else if self.truncated { "max_tokens" } else { "end_turn" },
                "stop_sequence": null,
                "usage": { "input_tokens": self.input_tokens, "output_tokens": self.output_tokens },
            }),
        };
        Reply::json(200, &body).stamp(api, &format!("req_{id}"))
    }
}

/// The schema a request asks its output to match, and the forced tool's
/// name: OpenAI's `response_format: {type: json_schema, json_schema:
/// {schema}}`, or Anthropic's `tools` with a `tool_choice` naming one.
pub(super) fn requested_schema(api: Api, body: &Value) -> Option<(&Value, Option<String>)> {
    match api {
        Api::OpenAi => {
            let format = &body["response_format"];
            (format["type"] == "json_schema").then(|| (&format["json_schema"]["schema"], None))
        }
        Api::Anthropic => {
            let name = body["tool_choice"]["name"].as_str().filter(|_| body["tool_choice"]["type"] == "tool")?;
            let tool = body["tools"].as_array()?.iter().find(|tool| tool["name"] == name)?;
            Some((&tool["input_schema"], Some(name.to_string())))
        }
    }
}

/// A value that matches `schema`, made from the prompt so that tests can
/// predict it: strings are the prompt (or an enum's first value), integers
/// its word count, numbers half that, booleans true, arrays one item,
/// objects every property.
pub(super) fn instance(schema: &Value, prompt: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    if !schema["const"].is_null() {
        return schema["const"].clone();
    }
    if let Some(first) = schema["anyOf"].as_array().and_then(|options| options.first()) {
        return instance(first, prompt);
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds.iter().find(|k| *k != "null").and_then(Value::as_str).unwrap_or("null"),
        kind => kind.as_str().unwrap_or("object"),
    };
    let words = prompt.split_whitespace().count();
    match kind {
        "string" => json!(prompt),
        "integer" => json!(words),
        "number" => json!(words as f64 / 2.0),
        "boolean" => json!(true),
        "null" => Value::Null,
        "array" => json!([instance(&schema["items"], prompt)]),
        _ => Value::Object(
            schema["properties"]
                .as_object()
                .map(|properties| {
                    properties.iter().map(|(name, property)| (name.clone(), instance(property, prompt))).collect()
                })
                .unwrap_or_default(),
        ),
    }
}

/// A fixed `created` time (2026-01-01), so bodies are reproducible.
const CREATED: u64 = 1_767_225_600;

/// `GET /v1/models`: the current ids, in the provider's list format.
pub(super) fn models(api: Api, id: &str) -> Reply {
    let body = match api {
        Api::OpenAi => json!({
            "object": "list",
            "data": [
                { "id": "gpt-4o", "object": "model", "created": 1_715_367_049, "owned_by": "system" },
                { "id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system" },
            ],
        }),
        Api::Anthropic => json!({
            "data": [
                { "type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z" },
                { "type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z" },
            ],
            "has_more": false,
            "first_id": "claude-haiku-4-5-20251001",
            "last_id": "claude-sonnet-4-5-20250929",
        }),
    };
    Reply::json(200, &body).stamp(api, &format!("req_{id}"))
}

/// `time` as RFC 3339 in UTC, the format of Anthropic's rate-limit resets and batch times.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(CREATED)), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn newer_claude_models_reject_temperature_with_top_p() {
        for model in ["claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-1-20250805", "claude-opus-4-7"] {
            assert!(rejects_temperature_with_top_p(model), "{model}");
        }
        for model in ["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022", "claude-3-opus-20240229", "gpt-4o"] {
            assert!(!rejects_temperature_with_top_p(model), "{model}");
        }
    }

    #[test]
    fn echo_counts_words_and_honours_the_output_limit() {
        let body = json!({ "system": "be brief", "max_tokens": 3,
            "messages": [{ "role": "user", "content": [{ "type": "text", "text": "one two three" }] }] });
        let completion = Completion::echo(Api::Anthropic, &body);
        assert_eq!(completion.text, "[be brief] echo:");
        assert_eq!((completion.input_tokens, completion.output_tokens, completion.truncated), (5, 3, true));
        let body =
            json!({ "messages": [{ "role": "system", "content": "" }, { "role": "user", "content": "hi there" }] });
        let completion = Completion::echo(Api::OpenAi, &body);
        assert_eq!(completion.text, "echo: hi there");
        assert_eq!((completion.input_tokens, completion.output_tokens, completion.truncated), (2, 3, false));
    }
}
