//! Provider failures become row errors in place; retryable ones are retried;
//! nothing moves between rows.

use crate::common::*;
use batchgen::run::run;
use batchgen_tests::provider::{ProviderServer, ServerOptions};
use serde_json::json;

fn attempts_for(server: &ProviderServer, prompt: &str) -> usize {
    server.requests().iter().filter(|r| r.prompt().as_deref() == Some(prompt)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_keep_their_rows_and_the_rest_succeed() {
    let server = ProviderServer::start();
    let prompts = [
        "fine 0",
        "bad request #status=400",
        "fine 1",
        "no auth #status=401",
        "quota #quota",
        "flaky #fail=2:500",
        "overloaded #fail=1:529",
        "limited #fail=1:429",
        "fine 2",
    ];
    for model in ["OpenAI GPT 4o Mini", "claude-3-5-sonnet"] {
        let rows: Vec<_> = prompts.iter().enumerate().map(|(i, p)| json!({"id": i, "prompt": p})).collect();
        let (_dir, input, output) = dataset(&rows);
        server.clear_requests();
        let mut job = job(model);
        if model.starts_with("claude") {
            job.model_id = Some("claude-sonnet-4-5-20250929".into());
        }
        let summary = run(&options(&server, &input, &output, job)).await.unwrap();
        let out = read_jsonl(&output);
        assert_eq!(out.len(), prompts.len());
        for (i, row) in out.iter().enumerate() {
            assert_eq!(row["id"], i, "{model}: row order");
            assert_eq!(row["prompt"], prompts[i]);
        }
        let error = |i: usize| out[i]["answer_error"].as_str().unwrap_or_default().to_string();
        for i in [0, 2, 5, 6, 7, 8] {
            assert_eq!(out[i]["answer"], format!("echo: {}", prompts[i]), "{model}: row {i}");
            assert!(out[i]["answer_error"].is_null(), "{model}: row {i}");
        }
        assert!(error(1).starts_with("invalid_request: 400"), "{model}: {}", error(1));
        assert!(error(3).starts_with("auth: 401"), "{model}: {}", error(3));
        assert!(error(4).starts_with("rate_limited: 429") && error(4).contains("not retried"), "{model}: {}", error(4));
        for i in [1, 3, 4] {
            assert_eq!(out[i]["answer"], "", "{model}: a failed row has an empty output");
            assert_eq!(attempts_for(&server, prompts[i]), 1, "{model}: {} is not retried", prompts[i]);
        }
        assert_eq!(attempts_for(&server, "flaky #fail=2:500"), 3, "{model}");
        assert_eq!(attempts_for(&server, "overloaded #fail=1:529"), 2, "{model}");
        assert_eq!(attempts_for(&server, "limited #fail=1:429"), 2, "{model}");
        assert_eq!((summary.rows, summary.failed), (9, 3), "{model}");
        assert_eq!(summary.attempts, 3 + 3 + 2 + 2, "{model}: successful rows' requests, retries included");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_max_attempts() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&[json!({"prompt": "down #status=500"})]);
    let mut job = job("gpt-4o-mini");
    job.max_attempts = 2;
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.failed, 1);
    assert_eq!(server.requests().len(), 2);
    let error = read_jsonl(&output)[0]["answer_error"].as_str().unwrap().to_string();
    assert!(error.starts_with("provider: 500"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_cut_off_replies_are_retried() {
    let server = ProviderServer::start();
    let rows =
        [json!({"prompt": "a #malformed=1"}), json!({"prompt": "b #truncate=1"}), json!({"prompt": "c #reset=1"})];
    let (_dir, input, output) = dataset(&rows);
    let summary = run(&options(&server, &input, &output, job("gpt-4o-mini"))).await.unwrap();
    let out = read_jsonl(&output);
    assert_eq!(summary.failed, 0, "{out:?}");
    for (row, prompt) in out.iter().zip(["a #malformed=1", "b #truncate=1", "c #reset=1"]) {
        assert_eq!(row["answer"], format!("echo: {prompt}"));
        assert_eq!(attempts_for(&server, prompt), 2, "{prompt}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_sent_concurrently() {
    // The server holds every answer until 8 requests are in flight at once:
    // a component sending one request at a time would never get there.
    let server =
        ProviderServer::start_with(ServerOptions { hold_until_in_flight: Some(8), ..ServerOptions::default() });
    let (_dir, input, output) = dataset(&numbered_rows(8));
    let mut job = job("gpt-4o-mini");
    job.batch_size = 8;
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.failed, 0);
    assert_eq!(server.max_in_flight(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_stay_aligned_across_batches() {
    let server = ProviderServer::start();
    let rows = numbered_rows(23);
    let (_dir, input, output) = dataset(&rows);
    let mut job = job("gpt-4o-mini");
    job.batch_size = 5;
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!((summary.rows, summary.failed), (23, 0));
    let out = read_jsonl(&output);
    for (i, row) in out.iter().enumerate() {
        assert_eq!(row["id"], i);
        assert_eq!(row["answer"], format!("echo: row {i}"));
    }
    assert_eq!(server.requests().len(), 23);
}
