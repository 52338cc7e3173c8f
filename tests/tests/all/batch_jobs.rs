//! `--batch-api`: runs through the providers' batch APIs, against the
//! stand-in's real lifecycle (a batch moves one step per fetch, results
//! come back shuffled), with the real binary and real files.

use crate::common::*;
use arrow_array::{Array, RecordBatch, StringArray};
use batchgen_tests::harness;
use batchgen_tests::provider::{ProviderServer, ServerOptions};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-3-5-haiku"];

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `batchgen run --batch-api` over `input` into `output` with `model`,
/// polling without pause unless `extra` says otherwise.
fn batch_args<'a>(input: &'a Path, output: &'a Path, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--input",
        path(input),
        "--output",
        path(output),
        "--generation-model",
        model,
        "--input-column",
        "prompt",
        "--output-column",
        "answer",
        "--batch-api",
        "--poll-interval",
        "0",
    ];
    // Claude 3.5 Haiku's own id is retired (the stand-in answers 404, as
    // Anthropic does): its successor, as users pass it.
    if model.starts_with("claude") {
        args.extend(["--model-id", "claude-haiku-4-5-20251001"]);
    }
    args.extend_from_slice(extra);
    args
}

fn batch(server: &ProviderServer, input: &Path, output: &Path, model: &str, extra: &[&str]) -> harness::Ran {
    cli(server, &batch_args(input, output, model, extra))
}

/// The same run as a child process, to be killed or interrupted.
fn spawn(server: &ProviderServer, input: &Path, output: &Path, model: &str, extra: &[&str]) -> Child {
    harness::batchgen()
        .arg("run")
        .args(batch_args(input, output, model, extra))
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("OPENAI_BASE_URL", server.openai_base_url())
        .env("ANTHROPIC_BASE_URL", server.anthropic_base_url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The run's recorded state, once a job in it is live (its id on disk).
fn wait_until_live(output: &Path, child: &mut Child) -> Value {
    let state = PathBuf::from(format!("{}.batchgen-batches/state.json", output.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&state)
            && let Ok(value) = serde_json::from_str::<Value>(&text)
            && value["jobs"].as_array().is_some_and(|jobs| jobs.iter().any(|job| job["phase"] == "live"))
        {
            return value;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before a job was live");
        assert!(Instant::now() < deadline, "no job went live");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `(answer, error)` of every output row, in order, whatever the format.
fn outcomes(output: &Path) -> Vec<(Option<String>, Option<String>)> {
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    match output.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => {
            read_jsonl(output).iter().map(|row| (text(&row["answer"]), text(&row["answer_error"]))).collect()
        }
        Some("csv") => {
            let mut reader = csv::Reader::from_path(output).unwrap();
            let headers = reader.headers().unwrap().clone();
            let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
            let (answer, error) = (at("answer"), at("answer_error"));
            let cell = |record: &csv::StringRecord, i: usize| Some(record[i].to_string()).filter(|s| !s.is_empty());
            reader.records().map(|r| r.unwrap()).map(|r| (cell(&r, answer), cell(&r, error))).collect()
        }
        _ => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(output).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let mut rows = Vec::new();
            for batch in reader {
                let batch = batch.unwrap();
                let column = |name: &str| {
                    batch.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone()
                };
                let (answer, error) = (column("answer"), column("answer_error"));
                for i in 0..batch.num_rows() {
                    let get = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
                    rows.push((get(&answer), get(&error)));
                }
            }
            rows
        }
    }
}

/// Writes `prompts` with an `id` column as `path`'s format.
fn write_dataset(path: &Path, prompts: &[String]) {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => {
            let rows: Vec<Value> = prompts.iter().enumerate().map(|(i, p)| json!({"id": i, "prompt": p})).collect();
            write_jsonl(path, &rows);
        }
        Some("csv") => {
            let mut writer = csv::Writer::from_path(path).unwrap();
            writer.write_record(["id", "prompt"]).unwrap();
            for (i, prompt) in prompts.iter().enumerate() {
                writer.write_record([i.to_string().as_str(), prompt]).unwrap();
            }
            writer.flush().unwrap();
        }
        _ => {
            let ids = arrow_array::Int64Array::from((0..prompts.len() as i64).collect::<Vec<_>>());
            let texts = StringArray::from(prompts.iter().map(String::as_str).collect::<Vec<_>>());
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(ids) as Arc<dyn Array>),
                ("prompt", Arc::new(texts) as Arc<dyn Array>),
            ])
            .unwrap();
            let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }
}

fn prompts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("row {i}")).collect()
}

/// Every row answered with its own echo, in input order.
fn assert_all_echoed(output: &Path, prompts: &[String]) {
    let rows = outcomes(output);
    assert_eq!(rows.len(), prompts.len());
    for (i, (answer, error)) in rows.iter().enumerate() {
        assert_eq!(answer.as_deref(), Some(format!("echo: {}", prompts[i]).as_str()), "row {i}: {error:?}");
        assert_eq!(error, &None, "row {i}");
    }
}

#[test]
fn both_providers_and_every_format_complete_in_order() {
    for model in MODELS {
        for format in ["jsonl", "csv", "parquet"] {
            // Results come back shuffled, and a request moves on only as
            // it is fetched: three polls in progress.
            let server = ProviderServer::start_with(ServerOptions { batch_polls: 3, ..ServerOptions::default() });
            let dir = tempfile::tempdir().unwrap();
            let (input, output) = (dir.path().join(format!("in.{format}")), dir.path().join(format!("out.{format}")));
            let prompts = prompts(40);
            write_dataset(&input, &prompts);
            let ran = batch(&server, &input, &output, model, &["--report", path(&dir.path().join("report.json"))]);
            assert_eq!(ran.code, Some(0), "{model} {format}: {}", ran.stderr);
            assert_all_echoed(&output, &prompts);
            assert_eq!(server.batches_created(), 1, "{model} {format}");
            assert!(ran.stderr.contains("submitted job 0"), "{}", ran.stderr);
            assert!(ran.stderr.contains("in progress"), "polled while in progress: {}", ran.stderr);
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
            assert_eq!(report["batch_api"], true);
            assert_eq!(report["rows"], 40);
            // 40 prompts of two words, each echoed in four.
            assert_eq!(report["input_tokens"], 80);
            assert!(
                !output.with_file_name(format!("out.{format}.batchgen-batches")).exists(),
                "the job record is gone"
            );
        }
    }
}

#[test]
fn usage_is_priced_at_half_the_list_price() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&numbered_rows(10));
    let report = dir.path().join("report.json");
    let ran = batch(&server, &input, &output, "gpt-4o-mini", &["--report", path(&report)]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let (input_tokens, output_tokens) =
        (report["input_tokens"].as_f64().unwrap(), report["output_tokens"].as_f64().unwrap());
    let list = (input_tokens * 0.15 + output_tokens * 0.60) / 1e6;
    assert!((report["estimated_cost_usd"].as_f64().unwrap() - list / 2.0).abs() < 1e-12, "{report}");
}

#[test]
fn a_kill_while_polling_then_a_rerun_creates_no_second_job() {
    for model in MODELS {
        let server = ProviderServer::start_with(ServerOptions { batch_polls: 5, ..ServerOptions::default() });
        let (_dir, input, output) = dataset(&numbered_rows(30));
        let mut child = spawn(&server, &input, &output, model, &["--poll-interval", "600"]);
        wait_until_live(&output, &mut child);
        kill(&mut child);
        assert_eq!(server.batches_created(), 1);
        let ran = batch(&server, &input, &output, model, &[]);
        assert_eq!(ran.code, Some(0), "{model}: {}", ran.stderr);
        assert_eq!(server.batches_created(), 1, "{model}: the rerun polled the same job");
        assert_all_echoed(&output, &prompts(30));
    }
}

#[test]
fn a_job_whose_id_was_never_recorded_is_found_not_sent_again() {
    for model in MODELS {
        let server = ProviderServer::start_with(ServerOptions { batch_polls: 5, ..ServerOptions::default() });
        let (_dir, input, output) = dataset(&numbered_rows(12));
        let mut child = spawn(&server, &input, &output, model, &["--poll-interval", "600"]);
        let mut state = wait_until_live(&output, &mut child);
        kill(&mut child);
        // As if the process had died between the create's answer and
        // writing its id down.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        state["jobs"][0] = json!({"chunk": 0, "requests": 12, "attempt": 1, "phase": "submitting", "since": now - 5});
        let state_path = PathBuf::from(format!("{}.batchgen-batches/state.json", output.display()));
        std::fs::write(&state_path, state.to_string()).unwrap();
        let ran = batch(&server, &input, &output, model, &[]);
        assert_eq!(ran.code, Some(0), "{model}: {}", ran.stderr);
        assert_eq!(server.batches_created(), 1, "{model}: found, not created again");
        assert_all_echoed(&output, &prompts(12));
    }
}

#[test]
fn per_row_errors_are_retried_in_a_follow_up_job_and_invalid_rows_are_not() {
    for model in MODELS {
        let server = ProviderServer::start();
        let prompts = ["fine".to_string(), "flaky #fail=1:500".into(), "bad #status=400".into(), "also fine".into()];
        let rows: Vec<Value> = prompts.iter().map(|p| json!({"prompt": p})).collect();
        let (_dir, input, output) = dataset(&rows);
        let ran = batch(&server, &input, &output, model, &[]);
        assert_eq!(ran.code, Some(1), "{model}: one row failed: {}", ran.stderr);
        assert_eq!(server.batches_created(), 2, "{model}: the flaky row went again, alone");
        let rows = outcomes(&output);
        assert_eq!(rows[0].0.as_deref(), Some("echo: fine"));
        assert_eq!(rows[1].0.as_deref(), Some("echo: flaky #fail=1:500"));
        assert_eq!(rows[3].0.as_deref(), Some("echo: also fine"));
        assert_eq!(rows[2].0, None);
        let error = rows[2].1.as_deref().unwrap();
        assert!(error.starts_with("invalid_request:"), "{model}: {error}");
        assert!(ran.stderr.contains("1 row(s) go again in job 1 (attempt 2)"), "{}", ran.stderr);
    }
}

#[test]
fn expired_rows_are_sent_again_until_max_attempts() {
    for model in MODELS {
        let server = ProviderServer::start();
        let rows = vec![json!({"prompt": "on time"}), json!({"prompt": "too slow #expire"})];
        let (_dir, input, output) = dataset(&rows);
        let ran = batch(&server, &input, &output, model, &["--max-attempts", "3"]);
        assert_eq!(ran.code, Some(1), "{}", ran.stderr);
        assert_eq!(server.batches_created(), 3, "{model}: the expired row was tried three times");
        let rows = outcomes(&output);
        assert_eq!(rows[0].0.as_deref(), Some("echo: on time"));
        let error = rows[1].1.as_deref().unwrap();
        assert!(error.contains("expired") && error.contains("after 3 batch jobs"), "{model}: {error}");
    }
}

#[test]
fn rows_are_split_into_jobs_at_the_request_limit() {
    for model in MODELS {
        let server = ProviderServer::start();
        let (_dir, input, output) = dataset(&numbered_rows(25));
        let ran = batch(&server, &input, &output, model, &["--batch-max-requests", "10"]);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        assert_eq!(server.batches_created(), 3, "{model}: 10 + 10 + 5");
        assert_all_echoed(&output, &prompts(25));
    }
}

#[test]
fn a_job_failed_at_validation_reports_the_providers_errors() {
    // The provider's own limit is lower than the one batchgen plans for.
    let server = ProviderServer::start_with(ServerOptions { batch_max_requests: 5, ..ServerOptions::default() });
    let (_dir, input, output) = dataset(&numbered_rows(8));
    let ran = batch(&server, &input, &output, "gpt-4o-mini", &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.stderr.contains("failed: too_many_tasks"), "{}", ran.stderr);
    for (answer, error) in outcomes(&output) {
        assert_eq!(answer, None);
        assert!(error.unwrap().contains("too_many_tasks"));
    }
}

#[test]
fn a_job_over_the_enqueued_token_limit_waits_for_the_others() {
    // Two jobs of 5 rows of 2 words: one fits the limit, not both at once.
    let server = ProviderServer::start_with(ServerOptions {
        batch_polls: 3,
        batch_token_limit: Some(15),
        ..ServerOptions::default()
    });
    let (_dir, input, output) = dataset(&numbered_rows(10));
    let ran = batch(&server, &input, &output, "gpt-4o-mini", &["--batch-max-requests", "5", "--max-attempts", "1"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("token_limit_exceeded"), "{}", ran.stderr);
    assert_eq!(server.batches_created(), 3, "the refused job went again once the other had ended");
    assert_all_echoed(&output, &prompts(10));
}

#[test]
fn saved_work_and_duplicate_rows_are_not_sent_again() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (first, input, output) =
        (dir.path().join("first.jsonl"), dir.path().join("input.jsonl"), dir.path().join("output.jsonl"));
    write_jsonl(&first, &numbered_rows(6));
    // Six rows generated synchronously into the same output's saved work.
    let ran = cli(&server, &batch_args(&first, &output, "gpt-4o-mini", &[])[..10]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut rows = numbered_rows(10);
    rows.push(json!({"id": 10, "prompt": "row 8"}));
    write_jsonl(&input, &rows);
    server.clear_requests();
    let ran = batch(&server, &input, &output, "gpt-4o-mini", &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let uploads: Vec<_> = server.requests().into_iter().filter(|r| r.path == "/v1/files").collect();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].raw_body.matches("\"custom_id\"").count(), 4, "rows 6 to 9, the second row 8 not");
    let mut expected = prompts(10);
    expected.push("row 8".into());
    assert_all_echoed(&output, &expected);
}

#[test]
fn dry_run_shows_the_first_request_line_and_sends_nothing() {
    for (model, needle) in [("gpt-4o-mini", "\"url\":\"/v1/chat/completions\""), ("claude-3-5-haiku", "\"params\":")] {
        let server = ProviderServer::start();
        let (_dir, input, output) = dataset(&numbered_rows(3));
        let ran = batch(&server, &input, &output, model, &["--dry-run"]);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        assert!(ran.stdout.contains(needle) && ran.stdout.contains("\"custom_id\":\"r"), "{}", ran.stdout);
        assert!(ran.stdout.contains("row 0"), "{}", ran.stdout);
        assert!(server.requests().is_empty());
    }
}

#[test]
fn local_is_refused_naming_the_flag() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(2));
    let ran = batch(&server, &input, &output, "Local", &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("--batch-api"), "{}", ran.stderr);
    assert!(server.requests().is_empty());
}

#[test]
fn ctrl_c_leaves_the_jobs_running_and_a_rerun_collects_them() {
    let server = ProviderServer::start_with(ServerOptions { batch_polls: 4, ..ServerOptions::default() });
    let (_dir, input, output) = dataset(&numbered_rows(7));
    let mut child = spawn(&server, &input, &output, "claude-3-5-haiku", &["--poll-interval", "600"]);
    wait_until_live(&output, &mut child);
    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let ran = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("rerun the same command") && stderr.contains("batchgen cancel"), "{stderr}");
    let ran = batch(&server, &input, &output, "claude-3-5-haiku", &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(server.batches_created(), 1);
    assert_all_echoed(&output, &prompts(7));
}

#[test]
fn cancel_then_rerun_finishes_the_rows_the_job_did_not() {
    for model in MODELS {
        let server = ProviderServer::start_with(ServerOptions { batch_polls: 50, ..ServerOptions::default() });
        let (_dir, input, output) = dataset(&numbered_rows(20));
        let mut child = spawn(&server, &input, &output, model, &["--poll-interval", "600"]);
        wait_until_live(&output, &mut child);
        kill(&mut child);
        let canceled = harness::run(
            harness::batchgen()
                .args(["cancel", "--output", path(&output)])
                .env("OPENAI_API_KEY", OPENAI_KEY)
                .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
                .env("OPENAI_BASE_URL", server.openai_base_url())
                .env("ANTHROPIC_BASE_URL", server.anthropic_base_url()),
        );
        assert_eq!(canceled.code, Some(0), "{}", canceled.stderr);
        assert!(canceled.stderr.contains("1 job(s) canceled"), "{}", canceled.stderr);
        let ran = batch(&server, &input, &output, model, &[]);
        assert_eq!(ran.code, Some(0), "{model}: {}", ran.stderr);
        assert_eq!(server.batches_created(), 2, "{model}: the unfinished rows went in one follow-up job");
        assert_all_echoed(&output, &prompts(20));
    }
}
