//! Fail fast before a large run, and look before sending: the preflight
//! check and `--dry-run`.

use crate::common::*;
use batchgen_tests::harness;
use batchgen_tests::provider::{ProviderServer, ServerOptions};

/// `batchgen run` with the preflight on (unlike `common::cli`).
fn run_checked(server: &ProviderServer, key: &str, args: &[&str]) -> harness::Ran {
    harness::run(
        harness::batchgen()
            .arg("run")
            .args(args)
            .env("OPENAI_API_KEY", key)
            .env("ANTHROPIC_API_KEY", key)
            .env("OPENAI_BASE_URL", server.openai_base_url())
            .env("ANTHROPIC_BASE_URL", server.anthropic_base_url()),
    )
}

fn args<'a>(input: &'a std::path::Path, output: &'a std::path::Path, model: &'a str) -> Vec<&'a str> {
    vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--generation-model",
        model,
        "--input-column",
        "prompt",
        "--output-column",
        "answer",
    ]
}

#[test]
fn a_retired_model_fails_the_run_with_its_successor_named() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(50));
    let ran = run_checked(&server, ANTHROPIC_KEY, &args(&input, &output, "Claude 3.5 Haiku"));
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("preflight") && ran.stderr.contains("claude-haiku-4-5-20251001"), "{}", ran.stderr);
    let requests = server.requests();
    let lists: Vec<_> =
        requests.iter().filter(|r| (r.method.as_str(), r.path.as_str()) == ("GET", "/v1/models")).collect();
    assert_eq!(lists.len(), 1, "the model list was asked for once");
    assert_eq!(lists[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    // The first batch went out beside the check (a 404 costs nothing) and
    // was not retried; nothing was written.
    assert!(requests.len() <= 51, "{} requests", requests.len());
    assert!(!output.exists());
}

#[test]
fn a_rejected_key_fails_before_the_run() {
    let server =
        ProviderServer::start_with(ServerOptions { api_key: Some("the-right-key".into()), ..ServerOptions::default() });
    let (_dir, input, output) = dataset(&numbered_rows(50));
    let ran = run_checked(&server, "a-wrong-key", &args(&input, &output, "gpt-4o-mini"));
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("auth: 401"), "{}", ran.stderr);
    assert!(server.requests().len() <= 51, "at most the first batch, not retried: {}", server.requests().len());
    assert!(!output.exists());
}

#[test]
fn a_listed_model_and_an_alias_pass_the_preflight() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(3));
    let ran = run_checked(&server, OPENAI_KEY, &args(&input, &output, "gpt-4o-mini"));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(server.requests().len(), 1 + 3);
    // Anthropic lists dated ids; the undated alias matches its snapshot.
    let output = output.with_file_name("claude.jsonl");
    let ran = run_checked(
        &server,
        ANTHROPIC_KEY,
        &[&args(&input, &output, "claude 3.5 haiku")[..], &["--model-id", "claude-haiku-4-5"]].concat(),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

#[test]
fn dry_run_shows_the_first_request_and_sends_nothing() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(7));
    let ran = run_checked(
        &server,
        OPENAI_KEY,
        &[&args(&input, &output, "OpenAI GPT 4o Mini")[..], &["--dry-run", "--system-prompt", "Be brief."]].concat(),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("7 rows would be generated"), "{}", ran.stdout);
    assert!(ran.stdout.contains(&format!("POST {}/chat/completions", server.openai_base_url())), "{}", ran.stdout);
    assert!(ran.stdout.contains("\"content\": \"row 0\"") && ran.stdout.contains("Be brief."), "{}", ran.stdout);
    assert!(ran.stdout.contains("authorization: <redacted"), "{}", ran.stdout);
    assert!(!ran.stdout.contains(OPENAI_KEY) && !ran.stderr.contains(OPENAI_KEY), "the key never prints");
    assert!(server.requests().is_empty());
    assert!(!output.exists());
}

/// A flag given on the command line overrides the config file; a flag left
/// at its default does not, and the file's values and the defaults fill in
/// the rest.
#[test]
fn command_line_flags_override_the_config_file_and_defaults_do_not() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&numbered_rows(1));
    let config = dir.path().join("job.json");
    std::fs::write(&config, r#"{"generation_model": "gpt-4o", "temperature": 0.5, "max_tokens": 77, "top_p": 0.9}"#)
        .unwrap();
    let ran = run_checked(
        &server,
        OPENAI_KEY,
        &[
            &args(&input, &output, "OpenAI GPT 4o Mini")[..],
            &["--dry-run", "--config", config.to_str().unwrap(), "--temperature", "0.7"],
        ]
        .concat(),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let body = &ran.stdout[ran.stdout.find('{').unwrap()..];
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini", "the flag, not the file: {body}");
    assert_eq!(body["temperature"], 0.7, "the flag, not the file: {body}");
    assert_eq!((body["max_tokens"].as_u64(), body["top_p"].as_f64()), (Some(77), Some(0.9)), "the file's: {body}");
    assert!(server.requests().is_empty());
}
