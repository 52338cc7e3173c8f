//! Crash-safe runs: saved work survives SIGKILL at any instant, is keyed by
//! what determines a row, and is never requested twice.

use crate::common::*;
use batchgen::journal::{Journal, WorkParams};
use batchgen::run::run;
use batchgen_tests::harness;
use batchgen_tests::provider::{ProviderServer, ServerOptions};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn default_params() -> WorkParams {
    WorkParams {
        provider: "openai".into(),
        model_id: "gpt-4o-mini".into(),
        system_prompt: None,
        temperature: 0.01,
        top_p: 1.0,
        max_tokens: 1024,
        component: None,
        schema: None,
    }
}

/// Prompts whose work the journal at `path` holds.
fn saved_prompts(path: &Path, prompts: &[String]) -> HashSet<String> {
    if !path.exists() {
        return HashSet::new();
    }
    let journal = Journal::open(path, false).unwrap();
    let params = default_params();
    prompts.iter().filter(|p| journal.get(&params.key(p)).unwrap().is_some()).cloned().collect()
}

/// A small deterministic generator for kill points.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn sigkill_at_random_points_loses_and_repeats_nothing() {
    // 400 rows at 16 in flight and 50 ms a request need at least 1.25 s of
    // work; every round is killed within 300 ms, so several kills land.
    let server =
        ProviderServer::start_with(ServerOptions { latency: Duration::from_millis(50), ..ServerOptions::default() });
    let rows = numbered_rows(400);
    let prompts: Vec<String> = rows.iter().map(|r| r["prompt"].as_str().unwrap().to_string()).collect();
    let (_dir, input, output) = dataset(&rows);
    let journal = Journal::path_for(&output);
    let args = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--generation-model",
        "gpt-4o-mini",
        "--input-column",
        "prompt",
        "--output-column",
        "answer",
        "--batch-size",
        "16",
        "--no-preflight",
    ];
    let mut rng = 2026u64;
    let mut kills = 0;
    for round in 0.. {
        assert!(round < 60, "the run never finished");
        let saved_before = saved_prompts(&journal, &prompts);
        server.clear_requests();
        let mut child = harness::batchgen()
            .arg("run")
            .args(args)
            .env("OPENAI_API_KEY", OPENAI_KEY)
            .env("OPENAI_BASE_URL", server.openai_base_url())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let kill_at = Instant::now() + Duration::from_millis(100 + splitmix(&mut rng) % 200);
        let killed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "round {round}");
                break false;
            }
            if Instant::now() >= kill_at {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break true;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for request in server.requests() {
            let prompt = request.prompt().unwrap();
            assert!(!saved_before.contains(&prompt), "round {round}: {prompt:?} was saved, yet requested again");
        }
        if !killed {
            break;
        }
        // A kill that lands after the output was renamed into place (while
        // the process prints its summary and shuts down) finds the run
        // done: the output must then be whole, which the checks below make
        // sure of. Anything else at the output path would be a torn file.
        if output.exists() {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kills landed mid-run");
    let out = read_jsonl(&output);
    assert_eq!(out.len(), rows.len());
    for (i, row) in out.iter().enumerate() {
        assert_eq!(row["id"], i);
        assert_eq!(row["answer"], format!("echo: row {i}"));
        assert!(row["answer_error"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_work_is_keyed_by_what_determines_a_row() {
    let server = ProviderServer::start();
    let mut rows = numbered_rows(10);
    rows[3]["prompt"] = json!("flaky #fail=1:500");
    let (dir, input, output) = dataset(&rows);
    let mut base = job("gpt-4o-mini");
    base.max_attempts = 1;
    let requested = |server: &ProviderServer| {
        let r = server.requests();
        server.clear_requests();
        r.len()
    };

    let first = run(&options(&server, &input, &output, base.clone())).await.unwrap();
    assert_eq!((first.failed, requested(&server)), (1, 10));

    // The same command: only the failed row is sent again.
    let second = run(&options(&server, &input, &output, base.clone())).await.unwrap();
    assert_eq!((second.failed, second.reused, requested(&server)), (0, 9, 1));
    assert_eq!(read_jsonl(&output)[3]["answer"], "echo: flaky #fail=1:500");

    // Renamed output column, reversed rows, two new ones: only the new ones.
    let mut changed: Vec<_> = rows.iter().rev().cloned().collect();
    changed.push(json!({"id": 10, "prompt": "new 10"}));
    changed.insert(0, json!({"id": 11, "prompt": "new 11"}));
    let reordered = dir.path().join("reordered.jsonl");
    write_jsonl(&reordered, &changed);
    let mut renamed = base.clone();
    renamed.output_column = "reply".into();
    let third = run(&options(&server, &reordered, &output, renamed.clone())).await.unwrap();
    assert_eq!((third.reused, requested(&server)), (10, 2));
    let out = read_jsonl(&output);
    assert_eq!(out[0]["reply"], "echo: new 11");
    assert_eq!(out[1]["reply"], "echo: row 9");
    assert_eq!(out[11]["reply"], "echo: new 10");

    // A changed parameter regenerates what it affects: every row.
    let mut warmer = renamed.clone();
    warmer.temperature = 0.5;
    let fourth = run(&options(&server, &reordered, &output, warmer.clone())).await.unwrap();
    assert_eq!((fourth.reused, requested(&server)), (0, 12));
    // Both parameter sets are kept: going back costs nothing.
    let fifth = run(&options(&server, &reordered, &output, renamed)).await.unwrap();
    assert_eq!((fifth.reused, requested(&server)), (12, 0));

    // --fresh ignores saved work.
    let mut fresh = options(&server, &reordered, &output, warmer);
    fresh.fresh = true;
    let sixth = run(&fresh).await.unwrap();
    assert_eq!((sixth.reused, requested(&server)), (0, 12));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_journal_costs_only_its_last_record() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(5));
    let mut job = job("gpt-4o-mini");
    job.batch_size = 1; // one record per batch
    run(&options(&server, &input, &output, job.clone())).await.unwrap();
    let journal = Journal::path_for(&output);
    let length = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(length - 7).unwrap();
    server.clear_requests();
    let summary = run(&options(&server, &input, &output, job)).await.unwrap();
    assert_eq!(summary.reused, 4);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(read_jsonl(&output).len(), 5);
}

#[test]
fn a_second_run_on_the_same_output_is_refused() {
    let (_dir, input, output) = dataset(&numbered_rows(1));
    let _held = Journal::open(&Journal::path_for(&output), false).unwrap();
    let server = ProviderServer::start();
    let ran = cli(
        &server,
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--generation-model",
            "gpt-4o-mini",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
    );
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("in use by another batchgen run"), "{}", ran.stderr);
    assert!(server.requests().is_empty());
}

/// What a component given with `--component` saved is not reused by a run
/// with another component: an untrusted plugin cannot poison later runs.
#[test]
fn work_saved_by_another_component_is_not_reused() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(3));
    let run_with = |component: Option<&str>| {
        let mut args = vec![
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--generation-model",
            "gpt-4o-mini",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ];
        if let Some(path) = component {
            args.extend(["--component", path]);
        }
        let ran = cli(&server, &args);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        read_jsonl(&output).iter().map(|row| row["answer"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    // The hostile component answers without a request: "ok:<input>".
    let planted = run_with(Some(env!("HOSTILE_COMPONENT")));
    assert!(planted.iter().all(|answer| answer.starts_with("ok:")), "{planted:?}");
    assert!(server.requests().is_empty());
    let honest = run_with(None);
    assert!(honest.iter().all(|answer| !answer.starts_with("ok:")), "{honest:?}");
    assert_eq!(server.requests().len(), 3, "every row was generated again");
    // The same component again finds its own work.
    assert_eq!(run_with(Some(env!("HOSTILE_COMPONENT"))), planted);
    assert_eq!(server.requests().len(), 3);
}
