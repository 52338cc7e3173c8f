//! Hostile components and configs are contained: each misbehaviour ends in
//! a clear error on its rows, the host survives, and nothing leaks in or out.

use crate::common::*;
use batchgen_tests::harness;
use batchgen_tests::provider::ProviderServer;
use serde_json::{Value, json};

const HOSTILE: &str = env!("HOSTILE_COMPONENT");

/// Runs the hostile component doing `behaviour` over `prompts`, with tight
/// limits; returns the exit code, stderr and output rows.
fn hostile(
    server: &ProviderServer,
    behaviour: &str,
    prompts: &[&str],
    extra: &[&str],
) -> (Option<i32>, String, Vec<Value>) {
    let rows: Vec<Value> = prompts.iter().enumerate().map(|(i, p)| json!({"id": i, "prompt": p})).collect();
    let (_dir, input, output) = dataset(&rows);
    let mut args = vec![
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--component",
        HOSTILE,
        "--generation-model",
        behaviour,
        "--input-column",
        "prompt",
        "--output-column",
        "answer",
        "--call-timeout",
        "2",
        "--max-memory",
        "64",
    ];
    args.extend_from_slice(extra);
    let ran = cli(server, &args);
    // A host panic would exit 101; every caller checks the code.
    let out = if output.exists() { read_jsonl(&output) } else { Vec::new() };
    (ran.code, ran.stderr, out)
}

fn errors(rows: &[Value]) -> Vec<String> {
    rows.iter().map(|r| r["answer_error"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn runaway_components_are_stopped_and_their_rows_fail_in_place() {
    let server = ProviderServer::start();
    for (behaviour, expected) in [
        ("loop", "call deadline"),
        ("sleep", "call deadline"),
        ("memory", "exceeded --max-memory 64 MiB"),
        ("panic", "component failed: panicked: hostile component panics"),
    ] {
        let (code, stderr, rows) = hostile(&server, behaviour, &["a", "b"], &[]);
        assert_eq!(code, Some(1), "{behaviour}: {stderr}");
        assert_eq!(rows.len(), 2, "{behaviour}: every row keeps its place");
        for error in errors(&rows) {
            assert!(error.starts_with("component: ") && error.contains(expected), "{behaviour}: {error}");
            assert!(!error.contains('\n'), "one line, the backtrace only in the log: {error}");
        }
    }
}

#[test]
fn a_component_that_accepts_a_config_but_finds_no_model_is_an_error_not_a_panic() {
    let server = ProviderServer::start();
    let (code, stderr, rows) = hostile(&server, "nomodel", &["a"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no model") && stderr.contains("nomodel"), "{stderr}");
    assert!(rows.is_empty());
}

#[test]
fn misaligned_batch_request_lines_are_refused_before_anything_is_sent() {
    let server = ProviderServer::start();
    let (code, stderr, rows) = hostile(&server, "misaligned", &["a", "b", "c"], &["--batch-api"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not carry that custom_id"), "{stderr}");
    assert!(rows.is_empty(), "no output is written");
    assert!(server.requests().is_empty(), "nothing was sent");
    // The same component's aligned lines are planned; its refusal to
    // submit then stops the run, naming the job.
    let (code, stderr, _) = hostile(&server, "aligned", &["a", "b"], &["--batch-api"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("job 0: invalid_request: the hostile component sends no batch jobs"), "{stderr}");
}

#[test]
fn fuel_stops_a_busy_component() {
    let server = ProviderServer::start();
    let (code, _, rows) = hostile(&server, "loop", &["a"], &["--fuel", "10000000", "--call-timeout", "600"]);
    assert_eq!(code, Some(1));
    assert!(errors(&rows)[0].contains("ran out of fuel (--fuel 10000000 per call)"), "{:?}", errors(&rows));
}

#[test]
fn a_broken_batch_is_replaced_by_a_fresh_instance() {
    let server = ProviderServer::start();
    let (code, _, rows) = hostile(&server, "boom", &["a", "boom", "c", "d", "e"], &["--batch-size", "2"]);
    assert_eq!(code, Some(1));
    let answers: Vec<&str> = rows.iter().map(|r| r["answer"].as_str().unwrap()).collect();
    assert_eq!(answers, ["", "", "ok:c", "ok:d", "ok:e"]);
    let errors = errors(&rows);
    assert!(errors[0].contains("component failed") && errors[1].contains("component failed"), "{errors:?}");
    assert!(errors[2..].iter().all(String::is_empty));
}

#[test]
fn a_wrong_number_of_results_is_detected() {
    let server = ProviderServer::start();
    for behaviour in ["few", "many"] {
        let (code, _, rows) = hostile(&server, behaviour, &["a", "b", "c"], &[]);
        assert_eq!(code, Some(1), "{behaviour}");
        for error in errors(&rows) {
            assert!(error.contains("results for 3 rows"), "{behaviour}: {error}");
        }
        assert!(rows.iter().all(|r| r["answer"] == ""), "{behaviour}: no output lands anywhere");
    }
}

#[test]
fn requests_outside_the_allowlist_are_denied() {
    let server = ProviderServer::start();
    let allowed = server.addr().to_string();
    let other = ProviderServer::start();
    let outside = other.addr().to_string();
    let (code, stderr, rows) = hostile(&server, "outside", &[&allowed, &outside, "169.254.169.254:80"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(rows[0]["answer"], "status 200", "the configured provider is reachable");
    for row in &rows[1..] {
        assert!(row["answer"].as_str().unwrap().contains("HttpRequestDenied"), "{row}");
    }
    assert!(other.requests().is_empty(), "nothing reached the other server");
}

#[test]
fn a_local_run_reaches_its_local_servers_only_and_only_they_get_the_local_key() {
    let (local, provider) = (ProviderServer::start(), ProviderServer::start());
    let rows = [local.addr().to_string(), provider.addr().to_string(), "169.254.169.254:80".to_string()];
    let rows: Vec<Value> = rows.iter().map(|p| json!({"prompt": p})).collect();
    let (_dir, input, output) = dataset(&rows);
    let ran = harness::run(
        harness::batchgen()
            .args(["run", "--no-preflight", "--component", HOSTILE, "--generation-model", "local-outside"])
            .args(["--input-column", "prompt", "--output-column", "answer", "--local-url"])
            .arg(local.openai_base_url())
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .env("OPENAI_API_KEY", OPENAI_KEY)
            .env("OPENAI_BASE_URL", provider.openai_base_url())
            .env("BATCHGEN_LOCAL_API_KEY", "sk-local"),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let rows = read_jsonl(&output);
    assert_eq!(rows[0]["answer"], "status 200", "the local server is reachable");
    for row in &rows[1..] {
        assert!(row["answer"].as_str().unwrap().contains("HttpRequestDenied"), "{row}");
    }
    assert!(provider.requests().is_empty(), "a Local run does not reach the provider");
    assert_eq!(local.requests()[0].header("authorization"), Some("Bearer sk-local"));
}

#[test]
fn the_component_sees_no_environment_files_or_sockets() {
    let server = ProviderServer::start();
    let target = server.addr().to_string();
    let (code, _, rows) = hostile(&server, "snoop", &[&target], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(rows[0]["answer"], "env=[] args=[] file=false dir=false socket=false");
}

#[test]
fn credentials_are_the_hosts_alone() {
    let server = ProviderServer::start();
    let target = server.addr().to_string();
    let (code, _, rows) = hostile(&server, "authorization", &[&target], &[]);
    assert_eq!(code, Some(0));
    let answer = rows[0]["answer"].as_str().unwrap();
    assert_eq!(
        answer,
        "authorization: headers refused: HeaderError::Forbidden; x-api-key: headers refused: HeaderError::Forbidden; plain: status 200"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "only the plain request left the component");
    assert_eq!(requests[0].header("authorization"), Some(format!("Bearer {OPENAI_KEY}").as_str()));
}

#[test]
fn component_output_goes_to_a_capped_log() {
    let server = ProviderServer::start();
    let rows: Vec<Value> = vec![json!({"prompt": "a"})];
    let (_dir, input, output) = dataset(&rows);
    let ran = harness::run(
        harness::batchgen()
            .args(["run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()])
            .args([
                "--component",
                HOSTILE,
                "--generation-model",
                "chatty",
                "--input-column",
                "prompt",
                "--output-column",
                "answer",
            ])
            .env("OPENAI_API_KEY", OPENAI_KEY)
            .env("OPENAI_BASE_URL", server.openai_base_url())
            .env("BATCHGEN_LOG", "batchgen::guest=info"),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(read_jsonl(&output)[0]["answer"], "ok:a");
    // 4 MiB were written; the log holds at most its 64 KiB cap (plus framing).
    assert!(ran.stderr.contains("xxxxxxxx"), "the output reached the log");
    assert!(ran.stderr.contains("log cap"), "the cap was announced");
    assert!(ran.stderr.len() < 256 << 10, "{} bytes of log", ran.stderr.len());
}

/// The `local-model` import serves an untrusted caller: requests outside the
/// WIT's ranges, prompts too large for the model's context (refused before
/// they are tokenized) and calls with more requests than the batch size are
/// row errors, and the valid request is still answered.
#[test]
fn the_local_model_refuses_what_the_contract_does_not_allow() {
    let server = ProviderServer::start();
    let (code, stderr, rows) =
        hostile(&server, "local-bad", &["a", "b", "c", "d", "e"], &["--max-memory", "128", "--call-timeout", "120"]);
    assert_eq!(code, Some(0), "{stderr}");
    let answers: Vec<&str> = rows.iter().map(|r| r["answer"].as_str().unwrap()).collect();
    assert!(answers[0].contains("err:RowError::InvalidRequest") && answers[0].contains("cannot fit"), "{answers:?}");
    assert!(answers[1].contains("err:RowError::InvalidRequest") && answers[1].contains("max_tokens 0"), "{answers:?}");
    assert!(
        answers[2].contains("err:RowError::InvalidRequest") && answers[2].contains("temperature 7.5"),
        "{answers:?}"
    );
    assert!(answers[3].starts_with("ok:"), "the valid request is answered: {answers:?}");
    assert!(
        answers[4].contains("err:RowError::InvalidRequest") && answers[4].contains("json_schema is"),
        "{answers:?}"
    );

    let (code, stderr, rows) =
        hostile(&server, "local-flood", &["a", "b"], &["--batch-size", "2", "--call-timeout", "120"]);
    assert_eq!(code, Some(0), "{stderr}");
    for row in &rows {
        let answer = row["answer"].as_str().unwrap();
        assert!(answer.contains("err:RowError::InvalidRequest") && answer.contains("at most 2"), "{answer}");
    }
}

/// A component's output is marked as its own, line by line, with control
/// characters escaped: it cannot print a line that passes for the host's.
#[test]
fn the_components_output_cannot_forge_a_host_line() {
    let server = ProviderServer::start();
    let (code, stderr, _) = hostile(&server, "forge", &["a"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let forged: Vec<&str> = stderr.lines().filter(|line| line.contains("forged")).collect();
    assert_eq!(forged.len(), 1, "{stderr}");
    assert!(forged[0].contains("component stderr: 2026-11-30"), "{stderr}");
    assert!(forged[0].contains("\\u{1b}[31m red") && !stderr.contains("\u{1b}[31m red"), "{stderr}");
    assert!(stderr.lines().any(|line| line.ends_with("component stderr: first")), "{stderr}");
}

/// Denied requests cost one log line per destination, however many there
/// are, and the run ends with their count.
#[test]
fn denied_requests_are_counted_not_logged_one_by_one() {
    let server = ProviderServer::start();
    let (code, stderr, rows) = hostile(&server, "knock", &["127.0.0.1:9", "127.0.0.1:9"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        rows.iter().all(|row| row["answer"].as_str().unwrap().matches("HttpRequestDenied").count() == 20),
        "{rows:?}"
    );
    let denied: Vec<&str> = stderr.lines().filter(|line| line.contains("denied")).collect();
    assert_eq!(denied.len(), 2, "the first denial and the count: {stderr}");
    assert!(denied[1].contains("denied 40 request(s) to http://127.0.0.1:9"), "{stderr}");
}

/// What the host may hold beyond `--max-memory` and `--max-host-memory`
/// when a component attacks through host resources, over the peak of a
/// harmless run: allocator slack and the bookkeeping the budget's worst
/// cases leave out. Stated in docs/sandbox.md.
const RSS_SLACK: u64 = 24 << 20;

/// Runs `behaviour` with tight limits and returns its rows' errors (or
/// answers) and the host's peak RSS.
fn measured(
    server: &ProviderServer,
    behaviour: &str,
    prompts: &[&str],
    limits: &[&str],
) -> (Option<i32>, Vec<String>, u64) {
    let rows: Vec<Value> = prompts.iter().enumerate().map(|(i, p)| json!({"id": i, "prompt": p})).collect();
    let (_dir, input, output) = dataset(&rows);
    let mut command = harness::batchgen();
    command
        .args(["run", "--no-preflight", "--component", HOSTILE, "--generation-model", behaviour])
        .args(["--input-column", "prompt", "--output-column", "answer", "--call-timeout", "30"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(limits)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENAI_BASE_URL", server.openai_base_url());
    let (ran, peak) = harness::run_measuring_memory(&mut command);
    assert!(ran.code.is_some_and(|code| code < 100), "{behaviour}: the host must not crash: {}", ran.stderr);
    let rows = if output.exists() { read_jsonl(&output) } else { Vec::new() };
    let texts = rows
        .iter()
        .map(|r| r["answer_error"].as_str().or(r["answer"].as_str()).unwrap_or_default().to_string())
        .collect();
    (ran.code, texts, peak)
}

/// The peak RSS of a harmless run of `behaviour`, taken on a second run so
/// that compiling the component (once, into the cache) is not part of it.
fn baseline(server: &ProviderServer, behaviour: &str, limits: &[&str]) -> u64 {
    measured(server, behaviour, &["a", "b"], limits);
    let (code, texts, peak) = measured(server, behaviour, &["a", "b"], limits);
    assert_eq!((code, texts[0].as_str()), (Some(0), "ok:a"), "{behaviour}");
    peak
}

#[test]
fn host_resources_a_component_hoards_count_against_its_budget() {
    let server = ProviderServer::start();
    for budget in ["16", "256"] {
        let limits = ["--max-memory", "32", "--max-host-memory", budget, "--batch-size", "2"];
        let baseline = baseline(&server, "echo", &limits);
        let ceiling = baseline + (32 << 20) + (budget.parse::<u64>().unwrap() << 20) + RSS_SLACK;
        for behaviour in ["hoard-fields", "hoard-bodies", "hoard-urls"] {
            let (code, errors, peak) = measured(&server, behaviour, &["a", "b"], &limits);
            eprintln!(
                "{behaviour} with --max-host-memory {budget}: peak RSS {} MiB (baseline {} MiB)",
                peak >> 20,
                baseline >> 20
            );
            assert_eq!(code, Some(1), "{behaviour}: {errors:?}");
            let expected = format!("component: the component exceeded --max-host-memory {budget} MiB");
            assert!(errors.iter().all(|e| e.starts_with(&expected)), "{behaviour}: {errors:?}");
            assert!(peak <= ceiling, "{behaviour}: peak RSS {peak} over {ceiling} (baseline {baseline})");
        }
    }
}

#[test]
fn header_fields_over_the_hosts_limit_stop_the_component_with_that_limit_named() {
    let server = ProviderServer::start();
    let (code, _, rows) = hostile(&server, "big-fields", &["a"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        errors(&rows),
        ["component: the component exceeded the host's limit of 8 KiB on one set of header fields"]
    );
}

#[test]
fn every_attack_leaves_the_host_within_its_limits() {
    let server = ProviderServer::start();
    let authority = server.addr().to_string();
    let limits = ["--max-memory", "32", "--max-host-memory", "16", "--batch-size", "2", "--call-timeout", "2"];
    let ceiling = |baseline: u64| baseline + (32 << 20) + (16 << 20) + RSS_SLACK;
    let remote = baseline(&server, "echo", &limits);
    // `local*` behaviours load the embedded model: their baseline does too.
    let local = baseline(&server, "local-echo", &limits);
    for (behaviour, prompts, baseline) in [
        ("memory", ["a", "b"], remote),
        ("loop", ["a", "b"], remote),
        ("chatty", ["a", "b"], remote),
        ("knock", ["10.0.0.1:9", "10.0.0.2:9"], remote),
        ("flood", [authority.as_str(), "b"], remote),
        ("local-bad", ["a", "b"], local),
        ("local-flood", ["a", "b"], local),
    ] {
        let (_, _, peak) = measured(&server, behaviour, &prompts, &limits);
        eprintln!("{behaviour}: peak RSS {} MiB (baseline {} MiB)", peak >> 20, baseline >> 20);
        assert!(
            peak <= ceiling(baseline),
            "{behaviour}: peak RSS {peak} over {} (baseline {baseline})",
            ceiling(baseline)
        );
    }
}

#[test]
fn a_store_has_at_most_its_batch_size_of_requests_in_flight() {
    let server = ProviderServer::start();
    let authority = server.addr().to_string();
    let limits = ["--batch-size", "3", "--max-host-memory", "16"];
    let (code, texts, peak) = measured(&server, "flood", &[authority.as_str(), "b", "c"], &limits);
    eprintln!("flood: peak RSS {} MiB", peak >> 20);
    assert_eq!(code, Some(0), "{texts:?}");
    let outcomes: Vec<&str> = texts[0].split("; ").collect();
    assert_eq!(outcomes.len(), 30);
    assert_eq!(outcomes.iter().filter(|o| **o == "answered").count(), 3, "{outcomes:?}");
    assert!(
        outcomes.iter().filter(|o| **o != "answered").all(|o| o.contains("ConnectionLimitReached")),
        "{outcomes:?}"
    );
    assert!(server.max_in_flight() <= 3);
}

#[test]
fn a_host_budget_too_small_for_the_batch_size_is_refused_before_the_run() {
    let server = ProviderServer::start();
    let (code, stderr, rows) = hostile(&server, "echo", &["a"], &["--max-host-memory", "1", "--batch-size", "64"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-host-memory 1 MiB is too small for a batch size of 64"), "{stderr}");
    assert!(rows.is_empty());
}
