//! OpenAI Chat Completions (`POST {base}/chat/completions`).

use super::Completion;
use crate::config::Plan;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Reasoning models (o-series, gpt-5) reject `max_tokens` and take
/// `max_completion_tokens` instead.
fn uses_max_completion_tokens(model_id: &str) -> bool {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    id.starts_with("gpt-5") || (id.starts_with('o') && id[1..].starts_with(|c: char| c.is_ascii_digit()))
}

pub fn body(plan: &Plan, model_id: &str, input: &str) -> Value {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &plan.system_prompt {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": input}));
    let mut body = Map::new();
    body.insert("model".into(), json!(model_id));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(temperature) = plan.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = plan.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    let max_tokens_field = if uses_max_completion_tokens(model_id) { "max_completion_tokens" } else { "max_tokens" };
    body.insert(max_tokens_field.into(), json!(plan.max_tokens));
    if let Some(schema) = &plan.schema {
        body.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "strict": true, "schema": schema.value}}),
        );
    }
    Value::Object(body)
}

#[derive(Deserialize)]
struct Reply {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

pub fn completion(body: &[u8]) -> Result<Completion, String> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| format!("not an OpenAI chat completion ({e}): {}", super::summary(body)))?;
    let choice = reply.choices.into_iter().next().ok_or("OpenAI reply has no choices")?;
    let usage = reply.usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens: 0 });
    // A refusal carries no content; its text is the model's answer for the row.
    let (text, finish_reason) = match (choice.message.content, choice.message.refusal) {
        (Some(content), _) => (content, choice.finish_reason.unwrap_or_default()),
        (None, Some(refusal)) => (refusal, "refusal".to_string()),
        (None, None) => return Err("OpenAI reply has neither content nor refusal".to_string()),
    };
    Ok(Completion { text, finish_reason, input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_models_take_max_completion_tokens() {
        assert!(uses_max_completion_tokens("o3-mini"));
        assert!(uses_max_completion_tokens("gpt-5"));
        assert!(!uses_max_completion_tokens("gpt-4o-mini"));
        assert!(!uses_max_completion_tokens("omni"));
    }

    #[test]
    fn parses_a_reply() {
        let c = completion(br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).unwrap();
        assert_eq!((c.text.as_str(), c.finish_reason.as_str(), c.input_tokens, c.output_tokens), ("hi", "stop", 3, 1));
        assert!(completion(br#"{"choices":[]}"#).is_err());
        assert!(completion(b"{\"choi").is_err());
    }
}
