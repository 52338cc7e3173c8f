//! Anthropic Messages (`POST {base}/v1/messages`).

use super::Completion;
use crate::config::Plan;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub const VERSION: &str = "2023-06-01";
/// The forced tool of a structured-output request.
const TOOL: &str = "output";

pub fn body(plan: &Plan, input: &str) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(plan.model_id));
    body.insert("max_tokens".into(), json!(plan.max_tokens));
    // The system prompt is a top-level field here, not a message.
    if let Some(system) = &plan.system_prompt {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), json!([{"role": "user", "content": input}]));
    if let Some(temperature) = plan.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = plan.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    // Structured output: one tool whose input is the schema, forced; the
    // output is the tool call's input.
    if let Some(schema) = &plan.schema {
        body.insert(
            "tools".into(),
            json!([{"name": TOOL, "description": "Record the output for this request.", "input_schema": schema.value}]),
        );
        body.insert("tool_choice".into(), json!({"type": "tool", "name": TOOL}));
    }
    Value::Object(body)
}

#[derive(Deserialize)]
struct Reply {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    /// A `tool_use` block's arguments.
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

pub fn completion(body: &[u8]) -> Result<Completion, String> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| format!("not an Anthropic message ({e}): {}", super::summary(body)))?;
    // A forced tool's call is the output (structured output); else the text.
    let text: String = match reply.content.iter().find(|block| block.kind == "tool_use") {
        Some(Block { input: Some(input), .. }) => input.to_string(),
        _ => reply
            .content
            .iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text.as_deref())
            .collect(),
    };
    let usage = reply.usage.unwrap_or(Usage { input_tokens: 0, output_tokens: 0 });
    Ok(Completion {
        text,
        finish_reason: reply.stop_reason.unwrap_or_default(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_text_blocks() {
        let c = completion(br#"{"content":[{"type":"text","text":"a"},{"type":"thinking","thinking":"x"},{"type":"text","text":"b"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_str(), c.input_tokens, c.output_tokens),
            ("ab", "end_turn", 5, 2)
        );
    }
}
