//! The `batchgen` binary end to end: dataset formats, config files, exit
//! codes, and every kind of bad input refused before a request is sent.

use crate::common::*;
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use batchgen_tests::provider::ProviderServer;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn base_args<'a>(input: &'a Path, output: &'a Path) -> Vec<&'a str> {
    vec![
        "--input",
        path(input),
        "--output",
        path(output),
        "--generation-model",
        "OpenAI GPT 4o Mini",
        "--input-column",
        "prompt",
        "--output-column",
        "answer",
    ]
}

#[test]
fn jsonl_round_trip_keeps_every_column_and_order() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let rows = vec![
        json!({"z": 1, "prompt": "first", "nested": {"a": [1, 2]}}),
        json!({"prompt": "second", "z": null}),
        json!({"z": 3.5, "prompt": "third ünïcödé 🚀"}),
    ];
    write_jsonl(&input, &rows);
    let before = std::fs::read(&input).unwrap();
    let output = dir.path().join("out.jsonl");
    let ran = cli(&server, &[&base_args(&input, &output)[..], &["--batch-size", "2"]].concat());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("3 rows, 0 failed"), "{}", ran.stderr);
    let out = read_jsonl(&output);
    assert_eq!(
        out[0],
        json!({"z": 1, "prompt": "first", "nested": {"a": [1, 2]}, "answer": "echo: first", "answer_error": null})
    );
    assert_eq!(out[1], json!({"prompt": "second", "z": null, "answer": "echo: second", "answer_error": null}));
    assert_eq!(out[2]["answer"], "echo: third ünïcödé 🚀");
    let keys: Vec<&String> = out[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["z", "prompt", "nested", "answer", "answer_error"]);
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input is never modified");
}

#[test]
fn csv_round_trip_with_quotes_commas_newlines_and_unicode() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let cells = ["plain", "with, comma", "with \"quotes\"", "two\nlines", "日本語 ✓"];
    let mut writer = csv::Writer::from_path(&input).unwrap();
    writer.write_record(["id", "prompt", "note"]).unwrap();
    for (i, cell) in cells.iter().enumerate() {
        writer.write_record([i.to_string().as_str(), cell, &format!("n,{i}")]).unwrap();
    }
    writer.flush().unwrap();
    let output = dir.path().join("out.csv");
    let ran = cli(&server, &base_args(&input, &output));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut reader = csv::Reader::from_path(&output).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["id", "prompt", "note", "answer", "answer_error"]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), cells.len());
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record.iter().collect::<Vec<_>>(),
            vec![i.to_string().as_str(), cells[i], &format!("n,{i}"), &format!("echo: {}", cells[i]), ""]
        );
    }
}

fn write_parquet(path: &Path, ids: Vec<i64>, prompts: Vec<Option<&str>>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(prompts))],
    )
    .unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_round_trip_keeps_types_and_order() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    let n = 300;
    let ids: Vec<i64> = (0..n).map(|i| i * 10).collect();
    let prompts: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    write_parquet(&input, ids.clone(), prompts.iter().map(|p| Some(p.as_str())).collect());
    let output = dir.path().join("out.parquet");
    let ran = cli(&server, &[&base_args(&input, &output)[..], &["--batch-size", "64"]].concat());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&output).unwrap()).unwrap().build().unwrap();
    let mut seen = 0usize;
    for batch in reader {
        let batch = batch.unwrap();
        let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "prompt", "answer", "answer_error"]);
        assert_eq!(batch.schema().field(0).data_type(), &DataType::Int64);
        let id = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let answer = batch.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        let error = batch.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        for row in 0..batch.num_rows() {
            let i = seen + row;
            assert_eq!(id.value(row), ids[i]);
            assert_eq!(answer.value(row), format!("echo: p{i}"));
            assert!(error.is_null(row));
        }
        seen += batch.num_rows();
    }
    assert_eq!(seen, n as usize);
}

#[test]
fn config_file_with_flag_overrides() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&numbered_rows(2));
    let config = dir.path().join("job.json");
    std::fs::write(
        &config,
        r#"{"generation_model": "Claude 3.5 Sonnet", "system_prompt": "S", "input_column": "prompt",
            "output_column": "out", "batch_size": 4, "temperature": 0.2, "top_p": 1.0, "max_tokens": 99}"#,
    )
    .unwrap();
    let ran = cli(
        &server,
        &[
            "--input",
            path(&input),
            "--output",
            path(&output),
            "--config",
            path(&config),
            "--max-tokens",
            "7",
            "--model-id",
            "claude-3-7-sonnet-20250219",
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let body = &server.requests()[0].body;
    assert_eq!(body["model"], "claude-3-7-sonnet-20250219");
    assert_eq!(body["max_tokens"], 7);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["system"], "S");
    assert_eq!(read_jsonl(&output)[1]["out"], "[S] echo: row 1");
}

#[test]
fn failed_rows_exit_1_with_the_output_written() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&[json!({"prompt": "ok"}), json!({"prompt": "nope #status=400"})]);
    let ran = cli(&server, &base_args(&input, &output));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.stderr.contains("2 rows, 1 failed"), "{}", ran.stderr);
    assert_eq!(read_jsonl(&output).len(), 2);
}

/// Runs `batchgen` expecting a refusal before any request: exit 2, a message
/// containing every `needle`, no request, no output file, input untouched.
fn refused(server: &ProviderServer, dir: &Path, args: &[&str], env_without_keys: bool, needles: &[&str]) {
    server.clear_requests();
    let input = args.iter().position(|a| *a == "--input").map(|i| args[i + 1]);
    let before = input.and_then(|p| std::fs::read(p).ok());
    let ran = if env_without_keys {
        batchgen_tests::harness::run(
            batchgen_tests::harness::batchgen()
                .arg("run")
                .args(args)
                .env("OPENAI_BASE_URL", server.openai_base_url())
                .env("ANTHROPIC_BASE_URL", server.anthropic_base_url()),
        )
    } else {
        cli(server, args)
    };
    assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
    for needle in needles {
        assert!(ran.stderr.contains(needle), "{args:?}: expected {needle:?} in: {}", ran.stderr);
    }
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    assert!(server.requests().is_empty(), "{args:?}: no request may be sent");
    assert!(!dir.join("out.jsonl").exists(), "{args:?}: no output may appear");
    assert_eq!(input.and_then(|p| std::fs::read(p).ok()), before, "the input is never modified");
}

#[test]
fn bad_input_is_refused_before_any_request() {
    let server = ProviderServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.jsonl");
    write_jsonl(&good, &numbered_rows(3));
    let out = d.join("out.jsonl");
    let (good, out) = (path(&good), path(&out));
    let run_with = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = base_args(Path::new(good), Path::new(out)).into_iter().map(String::from).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let args = run_with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&server, d, &args, false, needles);
    };
    // Out-of-range parameters, each named.
    check(&["--temperature", "2.5"], &["temperature", "2.5", "0.0 to 2.0"]);
    check(&["--temperature", "-0.1"], &["temperature"]);
    check(&["--top-p", "1.1"], &["top_p", "0.0 to 1.0"]);
    check(&["--max-tokens", "0"], &["max_tokens", "1 to 4096"]);
    check(&["--max-tokens", "5000"], &["max_tokens"]);
    check(&["--batch-size", "0"], &["batch_size"]);
    check(&["--generation-model", "GPT 9"], &["generation_model", "GPT 9", "OpenAI GPT 4o Mini"]);
    check(&["--generation-model", "Claude 3.5 Haiku", "--temperature", "1.5"], &["temperature", "1.0"]);
    check(
        &[
            "--generation-model",
            "Claude 3.5 Haiku",
            "--model-id",
            "claude-haiku-4-5",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
        ],
        &["top_p", "claude-haiku-4-5"],
    );
    // Several problems are reported together.
    check(&["--temperature", "3", "--top-p", "2"], &["temperature", "top_p"]);
    check(&["--input-column", "missing"], &["input column", "missing"]);

    // Dataset problems name the row.
    let bad_row = d.join("bad_row.jsonl");
    std::fs::write(&bad_row, "{\"prompt\": \"a\"}\n{\"other\": 1}\n").unwrap();
    refused(
        &server,
        d,
        &[
            "--input",
            path(&bad_row),
            "--output",
            out,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["row 2", "prompt"],
    );
    let not_string = d.join("not_string.jsonl");
    std::fs::write(&not_string, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": 42}\n").unwrap();
    refused(
        &server,
        d,
        &[
            "--input",
            path(&not_string),
            "--output",
            out,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["row 3", "prompt", "number"],
    );
    let unparsable = d.join("unparsable.jsonl");
    std::fs::write(&unparsable, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n").unwrap();
    refused(
        &server,
        d,
        &[
            "--input",
            path(&unparsable),
            "--output",
            out,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["row 2", "line 2"],
    );
    let missing = d.join("missing.jsonl");
    refused(
        &server,
        d,
        &[
            "--input",
            path(&missing),
            "--output",
            out,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["missing.jsonl"],
    );
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            &format!("{out}.txt"),
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["out.jsonl.txt"],
    );
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            good,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["differ"],
    );
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            out,
            "--generation-model",
            "gpt-4o",
            "--input-column",
            "prompt",
            "--output-column",
            "id",
        ],
        false,
        &["id", "already exists"],
    );

    // Missing keys name the variable.
    refused(&server, d, &run_with(&[]).iter().map(String::as_str).collect::<Vec<_>>(), true, &["OPENAI_API_KEY"]);
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            out,
            "--generation-model",
            "Claude 3.5 Sonnet",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        true,
        &["ANTHROPIC_API_KEY"],
    );
    // Local without a server or a model file.
    let no_model = d.join("no-model.gguf");
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            out,
            "--generation-model",
            "local",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
            "--local-model",
            path(&no_model),
        ],
        true,
        &["--local-url"],
    );

    // Config files: unknown keys and wrong types name the field.
    let config = d.join("bad.json");
    std::fs::write(&config, r#"{"generation_model": "gpt-4o", "temprature": 0.5}"#).unwrap();
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            out,
            "--config",
            path(&config),
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["temprature"],
    );
    std::fs::write(&config, r#"{"generation_model": "gpt-4o", "max_tokens": "many"}"#).unwrap();
    refused(
        &server,
        d,
        &[
            "--input",
            good,
            "--output",
            out,
            "--config",
            path(&config),
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
        ],
        false,
        &["max_tokens"],
    );
    // A required parameter left out.
    refused(
        &server,
        d,
        &["--input", good, "--output", out, "--generation-model", "gpt-4o", "--output-column", "answer"],
        false,
        &["input_column", "--input-column"],
    );
    // A number no config file could hold.
    for value in ["NaN", "inf"] {
        let args = ["--input", good, "--output", out, "--generation-model", "gpt-4o", "--input-column", "prompt"];
        let args = [&args[..], &["--output-column", "answer", "--temperature", value]].concat();
        refused(&server, d, &args, false, &["--temperature", "not a finite number"]);
    }
}

#[test]
fn models_lists_labels_ids_and_retirements() {
    let ran = batchgen_tests::harness::run(batchgen_tests::harness::batchgen().arg("models"));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for needle in [
        "Local",
        "Claude 3.5 Haiku",
        "claude-3-5-haiku-20241022",
        "claude-haiku-4-5-20251001",
        "OpenAI GPT 4o Mini",
        "gpt-4o-mini",
    ] {
        assert!(ran.stdout.contains(needle), "{needle}: {}", ran.stdout);
    }
}

#[test]
fn the_component_is_an_artifact_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("batchgen.wasm");
    let ran =
        batchgen_tests::harness::run(batchgen_tests::harness::batchgen().args(["component", "--out", path(&out)]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes, batchgen::plugin::EMBEDDED_COMPONENT);
    // A component (not a core module): the layer field of the header is 1.
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0");
    let ran =
        batchgen_tests::harness::run(batchgen_tests::harness::batchgen().args(["models", "--component", path(&out)]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("OpenAI GPT 4o Mini"));
}

#[test]
fn the_wit_package_version_follows_the_project_version() {
    let wit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/batchgen.wit")).unwrap();
    let declared =
        wit.lines().find_map(|line| line.strip_prefix("package batchgen:plugin@")).unwrap().trim_end_matches(';');
    assert_eq!(declared, env!("CARGO_PKG_VERSION"), "bump both together: the WIT package is the interface's version");
}

#[test]
fn the_run_reports_usage_and_estimated_cost() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&numbered_rows(4));
    let report = dir.path().join("report.json");
    let ran = cli(&server, &[&base_args(&input, &output)[..], &["--report", path(&report), "--quiet"]].concat());
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("estimated cost") && ran.stderr.contains("gpt-4o-mini"), "{}", ran.stderr);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["model"], "OpenAI GPT 4o Mini");
    assert_eq!(report["model_id"], "gpt-4o-mini");
    assert_eq!(
        (report["rows"].as_u64(), report["failed"].as_u64(), report["retries"].as_u64()),
        (Some(4), Some(0), Some(0))
    );
    // The stand-in counts words: 2 in, 3 out per row ("row N" -> "echo: row N").
    assert_eq!((report["input_tokens"].as_u64(), report["output_tokens"].as_u64()), (Some(8), Some(12)));
    let expected = (8.0 * 0.15 + 12.0 * 0.60) / 1e6;
    assert!((report["estimated_cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{report}");
    assert!(report["prices_as_of"].is_string());
}

#[test]
fn progress_lines_when_stderr_is_not_a_terminal_and_quiet_silences_them() {
    let server = ProviderServer::start();
    let (_dir, input, output) = dataset(&numbered_rows(6));
    let run = |quiet: bool| {
        let mut command = batchgen_tests::harness::batchgen();
        command
            .args(["run", "--no-preflight"])
            .args(base_args(&input, &output))
            .args(["--batch-size", "2", "--fresh"])
            .args(quiet.then_some("--quiet"))
            .env("OPENAI_API_KEY", OPENAI_KEY)
            .env("OPENAI_BASE_URL", server.openai_base_url())
            .env("BATCHGEN_PROGRESS_EVERY", "0");
        batchgen_tests::harness::run(&mut command)
    };
    let ran = run(false);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let lines: Vec<&str> = ran.stderr.lines().filter(|l| l.contains(" rows (")).collect();
    assert_eq!(lines.len(), 3, "one line per batch of 2: {}", ran.stderr);
    assert!(
        lines[2].contains("6/6 rows (100%)") && lines[2].contains("rows/s") && lines[2].contains("0 failed, 0 retries"),
        "{}",
        lines[2]
    );
    let quiet = run(true);
    assert!(!quiet.stderr.contains(" rows ("), "{}", quiet.stderr);
    assert!(quiet.stderr.contains("6 rows, 0 failed"), "the summary still prints: {}", quiet.stderr);
}
