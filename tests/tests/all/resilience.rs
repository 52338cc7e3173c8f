//! Faults, rate limits and pacing: every row ends correct or as a row error
//! in its own place, and rate limits slow the run down instead of failing it.

use crate::common::*;
use batchgen::run::run;
use batchgen_tests::provider::{FaultPlan, ProviderServer, RecordedRequest, ServerOptions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

fn requests_per_prompt(requests: &[RecordedRequest]) -> HashMap<String, Vec<&RecordedRequest>> {
    let mut map: HashMap<String, Vec<&RecordedRequest>> = HashMap::new();
    for request in requests {
        map.entry(request.prompt().unwrap_or_default()).or_default().push(request);
    }
    map
}

/// Rows `0..n`; every 25th a permanent 400, every 25th + 12 a permanent 401.
fn rows_with_permanent_failures(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let prompt = match i % 25 {
                0 => format!("row {i} #status=400"),
                12 => format!("row {i} #status=401"),
                _ => format!("row {i}"),
            };
            json!({"id": i, "prompt": prompt})
        })
        .collect()
}

async fn survive_random_faults(model: &str, rows: usize, faults: FaultPlan) {
    let server = ProviderServer::start_with(ServerOptions { faults, ..ServerOptions::default() });
    let input_rows = rows_with_permanent_failures(rows);
    let (_dir, input, output) = dataset(&input_rows);
    let mut job = job(model);
    if model.starts_with("Claude") {
        // The label's own id is retired; the stand-in answers 404 for it.
        job.model_id = Some("claude-sonnet-4-5-20250929".into());
    }
    job.batch_size = 32;
    job.max_attempts = 12;
    // Hung requests end at the deadline and are retried.
    job.request_timeout = Duration::from_secs(1);
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();

    let out = read_jsonl(&output);
    assert_eq!(out.len(), rows, "{model}: one output row per input row");
    let requests = server.requests();
    let per_prompt = requests_per_prompt(&requests);
    let mut failed = 0;
    for (i, (row, input)) in out.iter().zip(&input_rows).enumerate() {
        assert_eq!(row["id"], i, "{model}: rows stay in order");
        let prompt = input["prompt"].as_str().unwrap();
        assert_eq!(row["prompt"], prompt);
        let attempts = per_prompt.get(prompt).map_or(0, Vec::len);
        if prompt.contains("#status=") {
            failed += 1;
            let error = row["answer_error"].as_str().unwrap_or_default();
            let expected = if prompt.ends_with("400") { "invalid_request: 400" } else { "auth: 401" };
            assert!(error.starts_with(expected), "{model}: {prompt}: {error}");
            assert_eq!(row["answer"], "", "{model}: {prompt}");
            assert_eq!(attempts, 1, "{model}: {prompt} is not retried");
        } else {
            assert_eq!(row["answer"], format!("echo: {prompt}"), "{model}: {prompt} (after {attempts} requests)");
            assert!(row["answer_error"].is_null(), "{model}: {prompt}");
            assert!(attempts >= 1);
        }
    }
    assert_eq!(summary.failed, failed);
    let retried = per_prompt.values().filter(|r| r.len() > 1).count();
    assert!(retried > rows / 10, "{model}: the fault plan must actually bite ({retried} rows retried)");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_rows_survive_random_faults() {
    let faults = FaultPlan {
        seed: 7,
        rate_429: 0.08,
        rate_500: 0.08,
        rate_529: 0.06,
        rate_reset: 0.05,
        rate_hang: 0.02,
        rate_truncate: 0.05,
        rate_malformed: 0.05,
    };
    survive_random_faults("OpenAI GPT 4o Mini", 250, faults).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_rows_survive_random_faults() {
    // Anthropic's 429s carry `retry-after: 1` and a spent budget that
    // resets in a second, so there are fewer of them here.
    let faults = FaultPlan {
        seed: 11,
        rate_429: 0.02,
        rate_500: 0.08,
        rate_529: 0.08,
        rate_reset: 0.05,
        rate_hang: 0.02,
        rate_truncate: 0.05,
        rate_malformed: 0.05,
    };
    survive_random_faults("Claude 3.5 Sonnet", 100, faults).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_limit_becomes_steady_throughput() {
    // The provider takes 8 requests at a time and answers 429 beyond that;
    // batchgen starts at 64 in flight.
    let server = ProviderServer::start_with(ServerOptions {
        max_concurrent: Some(8),
        latency: Duration::from_millis(20),
        ..ServerOptions::default()
    });
    let rows = 200;
    let (_dir, input, output) = dataset(&numbered_rows(rows));
    let mut job = job("gpt-4o-mini");
    job.batch_size = 64;
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.failed, 0, "with the default 5 attempts every row gets through");
    assert!(summary.rate_limit_cuts >= 1);
    assert!(summary.lowest_concurrency <= 8, "lowest limit {}", summary.lowest_concurrency);
    let requests = server.requests().len();
    // A client that kept 64 in flight would get 56 429s per round and run
    // out of attempts; AIMD settles near the limit after a few rounds.
    assert!(requests < rows * 2, "{requests} requests for {rows} rows: a retry storm");
    for (i, row) in read_jsonl(&output).iter().enumerate() {
        assert_eq!(row["answer"], format!("echo: row {i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_pauses_until_its_reset() {
    let reset = Duration::from_millis(300);
    let server =
        ProviderServer::start_with(ServerOptions { exhaust_every: Some((3, reset)), ..ServerOptions::default() });
    let (_dir, input, output) = dataset(&numbered_rows(7));
    let mut job = job("gpt-4o-mini");
    job.batch_size = 1;
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.failed, 0);
    let requests = server.requests();
    assert_eq!(requests.len(), 7);
    // One request at a time: after the 3rd and 6th answers nothing may start
    // before the reset.
    for spent in [2, 5] {
        let gap = requests[spent + 1].received_at - requests[spent].received_at;
        assert!(gap >= reset, "request {} came {gap:?} after a spent budget", spent + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rpm_spaces_request_starts() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(6));
    let mut job = job("gpt-4o-mini");
    job.max_rpm = Some(600);
    run(&options(&server, &input, &output, job)).await.unwrap();
    let requests = server.requests();
    let span = requests[5].received_at - requests[0].received_at;
    // Starts 100 ms apart; the first request's own transit is the only slack.
    assert!(span >= Duration::from_millis(450), "6 requests within {span:?} at 600 rpm");
}

#[tokio::test(flavor = "multi_thread")]
async fn next_batch_starts_while_a_slow_row_finishes() {
    let server = ProviderServer::start();
    let rows =
        [json!({"prompt": "slow #hang=1"}), json!({"prompt": "b"}), json!({"prompt": "c"}), json!({"prompt": "d"})];
    let (_dir, input, output) = dataset(&rows);
    let mut job = job("gpt-4o-mini");
    job.batch_size = 2;
    job.request_timeout = Duration::from_secs(1);
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.failed, 0);
    let order: Vec<String> = server.requests().iter().map(|r| r.prompt().unwrap()).collect();
    let retry = order.iter().rposition(|p| p == "slow #hang=1").unwrap();
    let c = order.iter().position(|p| p == "c").unwrap();
    assert!(c < retry, "the second batch waited for the first batch's slow row: {order:?}");
    let out = read_jsonl(&output);
    assert_eq!(
        out.iter().map(|r| r["answer"].as_str().unwrap()).collect::<Vec<_>>(),
        ["echo: slow #hang=1", "echo: b", "echo: c", "echo: d"]
    );
}

/// A run of `rows` rows at batch size `batch` against `server`; every row
/// must get through.
async fn settled(server: &ProviderServer, rows: usize, batch: u32) -> batchgen::summary::Summary {
    let (_dir, input, output) = dataset(&numbered_rows(rows));
    let mut job = job("gpt-4o-mini");
    job.batch_size = batch;
    job.max_attempts = 10;
    let summary = run(&options(server, &input, &output, job)).await.unwrap();
    eprintln!(
        "{} cuts, lowest {}, mean concurrency {:.1}, {} throttled, {} requests",
        summary.rate_limit_cuts,
        summary.lowest_concurrency,
        summary.mean_concurrency,
        summary.throttled,
        summary.attempts
    );
    assert_eq!(summary.failed, 0, "{summary:?}");
    for (i, row) in read_jsonl(&output).iter().enumerate() {
        assert_eq!(row["answer"], format!("echo: row {i}"));
    }
    summary
}

#[tokio::test(flavor = "multi_thread")]
async fn random_429s_without_limit_headers_do_not_slow_the_run() {
    // 15% of answers are 429s that name no spent limit, and 3% are 529s:
    // a provider shedding load at random, not our key's limit.
    let faults = FaultPlan { seed: 3, rate_429: 0.15, rate_529: 0.03, ..FaultPlan::default() };
    let server = ProviderServer::start_with(ServerOptions { faults, ..ServerOptions::default() });
    let summary = settled(&server, 600, 64).await;
    assert!(summary.throttled > 60, "the faults must bite: {summary:?}");
    assert_eq!(summary.rate_limit_cuts, 0, "{summary:?}");
    assert!(summary.mean_concurrency >= 63.0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_overloads_slows_the_run_down() {
    // The first 300 generation requests all get 529: the provider is down.
    let server = ProviderServer::start_with(ServerOptions {
        overload_burst: Some((0, 300)),
        latency: Duration::from_millis(5),
        ..ServerOptions::default()
    });
    let summary = settled(&server, 200, 64).await;
    assert!(summary.rate_limit_cuts >= 2, "{summary:?}");
    assert!(summary.lowest_concurrency <= 16, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_bucket_limit_is_followed_with_few_429s() {
    // 100 requests per second, one second's worth in the bucket; at 20 ms a
    // request, 64 in flight would ask for 3,200 a second.
    let server = ProviderServer::start_with(ServerOptions {
        rate_limit_per_second: Some(100.0),
        latency: Duration::from_millis(20),
        ..ServerOptions::default()
    });
    let rows = 300;
    let summary = settled(&server, rows, 64).await;
    let requests = server.requests().iter().filter(|r| r.method == "POST").count();
    assert!(requests - rows < rows / 2, "{requests} requests for {rows} rows: hammering the limit");
    assert!(summary.mean_concurrency < 40.0, "{summary:?}");
}
