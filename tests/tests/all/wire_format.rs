//! The exact requests the component sends for each model and parameter
//! combination, and how replies and provider errors land in the output.

use crate::common::*;
use batchgen::run::run;
use batchgen_tests::provider::{ProviderServer, RecordedRequest};
use serde_json::{Value, json};

/// Runs `job` over one row with `prompt` and returns the requests the server
/// saw and the output row.
async fn one_row(server: &ProviderServer, job: batchgen::config::Job, prompt: &str) -> (Vec<RecordedRequest>, Value) {
    let (_dir, input, output) = dataset(&[json!({"id": 7, "prompt": prompt})]);
    server.clear_requests();
    run(&options(server, &input, &output, job)).await.expect("the run completes");
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), 1);
    (server.requests(), rows[0].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_defaults() {
    let server = ProviderServer::start();
    let (requests, row) = one_row(&server, job("OpenAI GPT 4o Mini"), "hi there").await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-openai"));
    assert_eq!(request.header("x-api-key"), None);
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.body,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}], "temperature": 0.01, "max_tokens": 1024})
    );
    assert_eq!(row, json!({"id": 7, "prompt": "hi there", "answer": "echo: hi there", "answer_error": null}));
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_with_every_parameter() {
    let server = ProviderServer::start();
    let mut job = job("gpt-4o");
    job.system_prompt = Some("Be brief.".into());
    job.temperature = 1.5;
    job.top_p = 0.5;
    job.max_tokens = 64;
    let (requests, row) = one_row(&server, job, "hello").await;
    assert_eq!(
        requests[0].body,
        json!({
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
            "temperature": 1.5,
            "top_p": 0.5,
            "max_tokens": 64
        })
    );
    assert_eq!(row["answer"], "[Be brief.] echo: hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_model_id_override_for_a_reasoning_model() {
    let server = ProviderServer::start();
    let mut job = job("OpenAI GPT 4o");
    job.model_id = Some("gpt-5-mini".into());
    job.temperature = 1.0;
    let (requests, _) = one_row(&server, job, "x").await;
    assert_eq!(requests[0].body["model"], "gpt-5-mini");
    assert_eq!(requests[0].body["max_completion_tokens"], 1024);
    assert!(requests[0].body.get("max_tokens").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_request_shape() {
    let server = ProviderServer::start();
    let mut job = job("Claude 3.5 Sonnet");
    job.model_id = Some("claude-3-5-sonnet-20240620-fake".into());
    job.system_prompt = Some("You are terse.".into());
    job.temperature = 0.7;
    job.top_p = 0.9;
    let (requests, row) = one_row(&server, job, "hello").await;
    let request = &requests[0];
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.header("authorization"), None);
    // Claude 3.x takes temperature and top_p together; the system prompt is top-level.
    assert_eq!(
        request.body,
        json!({
            "model": "claude-3-5-sonnet-20240620-fake",
            "max_tokens": 1024,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0.7,
            "top_p": 0.9
        })
    );
    assert_eq!(row["answer"], "[You are terse.] echo: hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_claude_gets_top_p_alone_when_temperature_is_default() {
    let server = ProviderServer::start();
    let mut job = job("Claude 3.5 Haiku");
    job.model_id = Some("claude-haiku-4-5".into());
    job.top_p = 0.8;
    let (requests, row) = one_row(&server, job, "q").await;
    assert_eq!(
        requests[0].body,
        json!({"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "q"}], "top_p": 0.8})
    );
    assert_eq!(row["answer"], "echo: q");
    assert_eq!(row["answer_error"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn retired_claude_id_fails_with_the_successor_named() {
    let server = ProviderServer::start();
    let (requests, row) = one_row(&server, job("Claude 3.5 Haiku"), "q").await;
    assert_eq!(requests.len(), 1, "a 404 is not retried");
    assert_eq!(requests[0].body["model"], "claude-3-5-haiku-20241022");
    assert_eq!(row["answer"], "");
    let error = row["answer_error"].as_str().unwrap();
    assert!(error.starts_with("not_found: 404"), "{error}");
    assert!(error.contains("retired") && error.contains("--model-id claude-haiku-4-5-20251001"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blank_system_prompt_sends_none() {
    let server = ProviderServer::start();
    let mut job = job("gpt-4o-mini");
    job.system_prompt = Some("   ".into());
    let (requests, _) = one_row(&server, job, "q").await;
    assert_eq!(requests[0].body["messages"], json!([{"role": "user", "content": "q"}]));
}
