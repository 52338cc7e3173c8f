//! Prompt templates: a row's prompt written from several of its columns,
//! rendered by the component, checked before any request.

use crate::common::*;
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use batchgen_tests::provider::ProviderServer;
use parquet::arrow::ArrowWriter;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `batchgen run` with a template instead of an input column.
fn templated(
    server: &ProviderServer,
    input: &Path,
    output: &Path,
    template: &str,
    extra: &[&str],
) -> batchgen_tests::harness::Ran {
    let mut args = vec![
        "--input",
        path(input),
        "--output",
        path(output),
        "--generation-model",
        "gpt-4o-mini",
        "--output-column",
        "answer",
        "--prompt-template",
        template,
    ];
    args.extend_from_slice(extra);
    cli(server, &args)
}

/// The user prompts the stand-in received, in arrival order.
fn prompts_sent(server: &ProviderServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| r.body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string())
        .collect()
}

const TEMPLATE: &str =
    "Translate {{ text }} into {{ language }} ({{ n }}, {{ ok }}, {{ tags }}, {{ meta }}, [{{ gone }}])";

#[test]
fn several_columns_of_any_type_render_into_the_prompt_byte_for_byte() {
    let server = ProviderServer::start();
    let rows = vec![
        json!({"text": "héllo 🚀", "language": "French", "n": 2, "ok": true, "tags": ["a", "b"], "meta": {"k": 1.5}, "gone": null}),
        json!({"text": "line\nbreak", "language": "日本語", "n": -3.25, "ok": false, "tags": [], "meta": {}}),
    ];
    let (_dir, input, output) = dataset(&rows);
    let ran = templated(&server, &input, &output, TEMPLATE, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let expected = [
        r#"Translate héllo 🚀 into French (2, true, ["a","b"], {"k":1.5}, [])"#,
        "Translate line\nbreak into 日本語 (-3.25, false, [], {}, [])",
    ];
    let mut sent = prompts_sent(&server);
    sent.sort();
    let mut sorted = expected.map(str::to_string).to_vec();
    sorted.sort();
    assert_eq!(sent, sorted);
    let out = read_jsonl(&output);
    for (row, prompt) in out.iter().zip(expected) {
        assert_eq!(row["answer"], format!("echo: {prompt}"));
    }
    // Every input column is kept, in order, untouched.
    assert_eq!(out[0]["tags"], json!(["a", "b"]));
    assert_eq!(out[1]["n"], json!(-3.25));
}

#[test]
fn csv_and_parquet_columns_render_too() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let csv_input = dir.path().join("in.csv");
    let mut writer = csv::Writer::from_path(&csv_input).unwrap();
    writer.write_record(["id", "question", "context"]).unwrap();
    writer.write_record(["7", "why, though?", "a \"quoted\" fact"]).unwrap();
    writer.flush().unwrap();
    let output = dir.path().join("out.csv");
    let template = "Given {{ context }}, answer {{ question }} (#{{ id }})";
    let ran = templated(&server, &csv_input, &output, template, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(prompts_sent(&server), ["Given a \"quoted\" fact, answer why, though? (#7)"]);

    let parquet_input = dir.path().join("in.parquet");
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![Some(1), None])) as Arc<dyn Array>),
        ("question", Arc::new(StringArray::from(vec!["q1", "q2"])) as Arc<dyn Array>),
        ("context", Arc::new(StringArray::from(vec![Some("c1"), None])) as Arc<dyn Array>),
    ])
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&parquet_input).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    server.clear_requests();
    let ran = templated(&server, &parquet_input, &dir.path().join("out.parquet"), template, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut sent = prompts_sent(&server);
    sent.sort();
    // Nulls render as nothing.
    assert_eq!(sent, ["Given , answer q2 (#)", "Given c1, answer q1 (#1)"]);
}

#[test]
fn a_missing_column_or_a_syntax_error_fails_before_any_request() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"text": "a"})]);
    let ran = templated(&server, &input, &output, "{{ text }} {{ language }}", &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("language"), "names the column: {}", ran.stderr);
    let ran = templated(&server, &input, &output, "Hello\n  {{ text ", &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("prompt_template") && ran.stderr.contains("line 2, column"), "{}", ran.stderr);
    // Exactly one of the two ways to say what the input is.
    let ran = templated(&server, &input, &output, "{{ text }}", &["--input-column", "text"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("input_column and prompt_template"), "{}", ran.stderr);
    let ran = cli(
        &server,
        &[
            "--input",
            path(&input),
            "--output",
            path(&output),
            "--generation-model",
            "gpt-4o-mini",
            "--output-column",
            "answer",
        ],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("prompt_template"), "{}", ran.stderr);
    let ran = templated(&server, &input, &output, &format!("@{}", dir.path().join("none.j2").display()), &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("prompt_template: could not read"), "{}", ran.stderr);
    assert!(server.requests().is_empty());
}

#[test]
fn a_template_from_a_file_and_a_row_that_does_not_render_fails_in_place() {
    let server = ProviderServer::start();
    let rows = vec![json!({"n": 1}), json!({"n": "one"}), json!({"n": 3})];
    let (dir, input, output) = dataset(&rows);
    let file = dir.path().join("prompt.j2");
    std::fs::write(&file, "{{ n + 1 }} apples").unwrap();
    let ran = templated(&server, &input, &output, &format!("@{}", file.display()), &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let out = read_jsonl(&output);
    assert_eq!(out[0]["answer"], "echo: 2 apples");
    assert!(out[1]["answer_error"].as_str().unwrap().contains("prompt_template"), "{}", out[1]);
    assert_eq!(out[2]["answer"], "echo: 4 apples");
    assert_eq!(prompts_sent(&server).len(), 2, "the row that did not render went nowhere");
}

#[test]
fn editing_a_template_regenerates_only_the_rows_whose_prompt_changed() {
    let server = ProviderServer::start();
    let rows: Vec<Value> = (0..6).map(|i| json!({"text": format!("t{i}"), "n": i})).collect();
    let (_dir, input, output) = dataset(&rows);
    let first = "{% if n > 3 %}big {{ text }}{% else %}{{ text }}{% endif %}";
    assert_eq!(templated(&server, &input, &output, first, &[]).code, Some(0));
    server.clear_requests();
    let second = "{% if n > 3 %}large {{ text }}{% else %}{{ text }}{% endif %}";
    let ran = templated(&server, &input, &output, second, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut sent = prompts_sent(&server);
    sent.sort();
    assert_eq!(sent, ["large t4", "large t5"]);
    assert_eq!(read_jsonl(&output)[5]["answer"], "echo: large t5");
}

#[test]
fn dry_run_shows_the_rendered_prompt_and_batch_jobs_carry_it() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&[json!({"q": "why?", "n": 1}), json!({"q": "how?", "n": 2})]);
    let ran = templated(&server, &input, &output, "Q{{ n }}: {{ q }}", &["--dry-run"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("Q1: why?"), "{}", ran.stdout);
    assert!(server.requests().is_empty());
    let ran = templated(&server, &input, &output, "Q{{ n }}: {{ q }}", &["--batch-api", "--poll-interval", "0"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let upload = server.requests().into_iter().find(|r| r.path == "/v1/files").unwrap();
    assert!(upload.raw_body.contains("Q2: how?"), "{}", upload.raw_body);
    let out = read_jsonl(&output);
    assert_eq!(
        (out[0]["answer"].as_str(), out[1]["answer"].as_str()),
        (Some("echo: Q1: why?"), Some("echo: Q2: how?"))
    );
}
