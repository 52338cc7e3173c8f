//! `Local` with OpenAI-compatible servers: the component reaches them over
//! `wasi:http` with its own client (retries, timeouts, preflight), the host
//! allows them like the providers' endpoints and adds their key.

use crate::common::*;
use batchgen::run::run;
use batchgen_tests::provider::{ProviderServer, ServerOptions};
use serde_json::json;
use std::time::Duration;

/// Library options for `Local` served by `servers`, with no provider key.
fn local_options(
    servers: &[&ProviderServer],
    input: &std::path::Path,
    output: &std::path::Path,
) -> batchgen::run::RunOptions {
    let mut options = options(servers[0], input, output, job("Local"));
    options.endpoints.local_urls = servers.iter().map(|server| server.openai_base_url()).collect();
    options.keys = Default::default();
    options
}

fn completions(server: &ProviderServer) -> Vec<batchgen_tests::provider::RecordedRequest> {
    server.requests().into_iter().filter(|r| r.path == "/v1/chat/completions").collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_goes_through_the_component_to_an_openai_compatible_server() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(3));
    let mut options = local_options(&[&server], &input, &output);
    options.job.system_prompt = Some("sys".into());
    options.preflight = true;
    let summary = run(&options).await.unwrap();
    assert_eq!(summary.failed, 0);
    assert_eq!(read_jsonl(&output)[2]["answer"], "[sys] echo: row 2");
    let sent = completions(&server);
    assert_eq!(sent.len(), 3);
    // No model configured: the server's first listed model is used.
    assert_eq!(sent[0].body["model"], "gpt-4o");
    assert_eq!(sent[0].header("authorization"), None, "no key is set, so none is sent");
    assert_eq!(sent[0].header("content-length"), Some(sent[0].raw_body.len().to_string().as_str()));
    assert_eq!(sent[0].body["messages"][0], json!({"role": "system", "content": "sys"}));
    // The preflight asked the server for its models, as for a provider.
    assert!(server.requests().iter().any(|r| r.method == "GET" && r.path == "/v1/models"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_spread_over_several_servers_and_a_retry_goes_to_the_next() {
    let (a, b) = (ProviderServer::start(), ProviderServer::start());
    let (_dir, input, output) = dataset(&numbered_rows(10));
    run(&local_options(&[&a, &b], &input, &output)).await.unwrap();
    assert_eq!((completions(&a).len(), completions(&b).len()), (5, 5), "rows alternate between the servers");

    // A server that is down costs its rows one attempt each: the retry goes
    // to the other one, and nothing is lost or moved.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}/v1", down.local_addr().unwrap());
    drop(down);
    let (_dir, input, output) = dataset(&numbered_rows(6));
    let mut options = local_options(&[&b], &input, &output);
    options.endpoints.local_urls.insert(0, down_url);
    b.clear_requests();
    let summary = run(&options).await.unwrap();
    assert_eq!(summary.failed, 0);
    let rows = read_jsonl(&output);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["answer"], format!("echo: row {i}"));
    }
    assert_eq!(completions(&b).len(), 6, "every row ends on the server that is up");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_key_is_added_by_the_host_for_local_servers_only() {
    let key = "sk-local-test";
    let server = ProviderServer::start_with(ServerOptions { api_key: Some(key.into()), ..Default::default() });
    let (_dir, input, output) = dataset(&numbered_rows(2));
    let mut options = local_options(&[&server], &input, &output);
    options.keys.local = Some(key.into());
    options.keys.openai = Some(OPENAI_KEY.into());
    let summary = run(&options).await.unwrap();
    assert_eq!(summary.failed, 0);
    let sent = completions(&server);
    assert!(sent.iter().all(|r| r.header("authorization") == Some("Bearer sk-local-test")), "{sent:?}");

    // Without it, the server's 401 is each row's error, not retried.
    let (_dir, input, output) = dataset(&numbered_rows(2));
    let summary = run(&local_options(&[&server], &input, &output)).await.unwrap();
    assert_eq!(summary.failed, 2);
    let errors: Vec<String> = read_jsonl(&output).iter().map(|r| r["answer_error"].to_string()).collect();
    assert!(errors.iter().all(|e| e.contains("auth") && e.contains("401")), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_timeout_and_retries_hold_for_local_servers() {
    let slow = ProviderServer::start_with(ServerOptions { latency: Duration::from_secs(5), ..Default::default() });
    let (_dir, input, output) = dataset(&numbered_rows(2));
    let mut options = local_options(&[&slow], &input, &output);
    options.job.request_timeout = Duration::from_millis(200);
    options.job.max_attempts = 2;
    options.job.model_id = Some("served-model".into());
    let summary = run(&options).await.unwrap();
    assert_eq!(summary.failed, 2);
    for row in read_jsonl(&output) {
        assert!(row["answer_error"].as_str().unwrap().starts_with("timeout"), "{row}");
    }
    assert_eq!(completions(&slow).len(), 4, "each row was tried twice");
    assert!(completions(&slow).iter().all(|r| r.body["model"] == "served-model"));
}

#[test]
fn the_cli_takes_several_local_urls_by_flag_or_environment() {
    let (a, b) = (ProviderServer::start(), ProviderServer::start());
    let (_dir, input, output) = dataset(&numbered_rows(4));
    let args = |output: &std::path::Path| {
        vec![
            "--input".to_string(),
            input.display().to_string(),
            "--output".to_string(),
            output.display().to_string(),
            "--generation-model".to_string(),
            "Local".to_string(),
            "--input-column".to_string(),
            "prompt".to_string(),
            "--output-column".to_string(),
            "answer".to_string(),
        ]
    };
    let mut flags = args(&output);
    flags.extend(["--local-url".into(), a.openai_base_url(), "--local-url".into(), b.openai_base_url()]);
    let ran = cli(&a, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!((completions(&a).len(), completions(&b).len()), (2, 2));

    let other = output.with_file_name("other.jsonl");
    let ran = harness_with_env(&a, &args(&other), &format!("{},{}", a.openai_base_url(), b.openai_base_url()));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!((completions(&a).len(), completions(&b).len()), (4, 4));
}

fn harness_with_env(server: &ProviderServer, args: &[String], urls: &str) -> batchgen_tests::harness::Ran {
    batchgen_tests::harness::run(
        batchgen_tests::harness::batchgen()
            .arg("run")
            .arg("--no-preflight")
            .args(args)
            .env("BATCHGEN_LOCAL_URL", urls)
            .env("OPENAI_BASE_URL", server.openai_base_url()),
    )
}
