//! Structured output: `--json-schema`, in each provider's wire form, every
//! output validated, retried when off the schema.

use crate::common::*;
use batchgen_tests::harness::Ran;
use batchgen_tests::provider::ProviderServer;
use serde_json::{Value, json};
use std::path::Path;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A label, a score and a reason: an enum, an integer and a string.
fn label_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "score": {"type": "integer", "minimum": 0, "maximum": 10},
            "reason": {"type": "string"}
        },
        "required": ["label", "score", "reason"],
        "additionalProperties": false
    })
}

/// `batchgen run --json-schema` with `schema` written to a file.
fn structured(
    server: &ProviderServer,
    dir: &Path,
    input: &Path,
    output: &Path,
    model: &str,
    schema: &Value,
    extra: &[&str],
) -> Ran {
    let file = dir.join("schema.json");
    std::fs::write(&file, schema.to_string()).unwrap();
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
        "--json-schema",
        path(&file),
    ];
    if model.starts_with("claude") {
        args.extend(["--model-id", "claude-haiku-4-5-20251001"]);
    }
    args.extend_from_slice(extra);
    cli(server, &args)
}

#[test]
fn openai_gets_a_strict_response_format_and_outputs_are_the_json() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"prompt": "great film"})]);
    let ran = structured(&server, dir.path(), &input, &output, "gpt-4o-mini", &label_schema(), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let body = &server.requests()[0].body;
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "strict": true, "schema": label_schema()}})
    );
    let answer: Value = serde_json::from_str(read_jsonl(&output)[0]["answer"].as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({"label": "positive", "score": 2, "reason": "great film"}));
}

#[test]
fn anthropic_gets_one_forced_tool_and_the_output_is_its_input() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"prompt": "dull film"})]);
    let ran = structured(&server, dir.path(), &input, &output, "claude-3-5-haiku", &label_schema(), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let body = &server.requests()[0].body;
    assert_eq!(body["tools"][0]["input_schema"], label_schema());
    assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    assert_eq!(body["tool_choice"], json!({"type": "tool", "name": body["tools"][0]["name"]}));
    let answer: Value = serde_json::from_str(read_jsonl(&output)[0]["answer"].as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({"label": "positive", "score": 2, "reason": "dull film"}));
}

#[test]
fn a_reply_off_the_schema_is_retried_then_reported() {
    for model in ["gpt-4o-mini", "claude-3-5-haiku"] {
        let server = ProviderServer::start();
        let rows = [json!({"prompt": "once #offschema=1"}), json!({"prompt": "always #offschema=9"})];
        let (dir, input, output) = dataset(&rows);
        let report = dir.path().join("report.json");
        let ran = structured(
            &server,
            dir.path(),
            &input,
            &output,
            model,
            &label_schema(),
            &["--max-attempts", "3", "--report", path(&report)],
        );
        assert_eq!(ran.code, Some(1), "{model}: {}", ran.stderr);
        let out = read_jsonl(&output);
        let first: Value = serde_json::from_str(out[0]["answer"].as_str().unwrap()).unwrap();
        assert_eq!(first["reason"], "once #offschema=1", "{model}: the second attempt matched");
        let error = out[1]["answer_error"].as_str().unwrap();
        assert!(
            error.starts_with("malformed_reply:") && error.contains("does not match json_schema"),
            "{model}: {error}"
        );
        let attempts = server.requests().iter().filter(|r| r.raw_body.contains("always #offschema")).count();
        assert_eq!(attempts, 3, "{model}");
    }
}

#[test]
fn schemas_a_provider_would_refuse_are_refused_before_any_request() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"prompt": "x"})]);
    let mut loose = label_schema();
    loose.as_object_mut().unwrap().remove("additionalProperties");
    loose["properties"]["reason"]["minLength"] = json!(3);
    loose["required"] = json!(["label", "score"]);
    let ran = structured(&server, dir.path(), &input, &output, "gpt-4o-mini", &loose, &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    for needle in [
        "json_schema: the root: strict mode needs \"additionalProperties\": false",
        "`reason` is not",
        "/properties/reason: `minLength` is not supported",
    ] {
        assert!(ran.stderr.contains(needle), "{needle}: {}", ran.stderr);
    }
    // Anthropic takes it (a tool's input schema has no strict mode), but
    // no provider takes a root that is not an object.
    let ran = structured(&server, dir.path(), &input, &output, "claude-3-5-haiku", &json!({"type": "string"}), &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("json_schema: the root must be an object schema"), "{}", ran.stderr);
    assert!(server.requests().is_empty());
}

#[test]
fn local_servers_get_the_openai_form_and_batch_jobs_carry_the_schema() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"prompt": "a b c"})]);
    let ran = structured(
        &server,
        dir.path(),
        &input,
        &output,
        "Local",
        &label_schema(),
        &["--local-url", &server.openai_base_url(), "--model-id", "served-model"],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(server.requests()[0].body["response_format"]["json_schema"]["schema"], label_schema());
    let answer: Value = serde_json::from_str(read_jsonl(&output)[0]["answer"].as_str().unwrap()).unwrap();
    assert_eq!(answer["score"], 3);
    server.clear_requests();
    let ran = structured(
        &server,
        dir.path(),
        &input,
        &dir.path().join("batched.jsonl"),
        "gpt-4o-mini",
        &label_schema(),
        &["--batch-api", "--poll-interval", "0"],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let upload = server.requests().into_iter().find(|r| r.path == "/v1/files").unwrap();
    assert!(upload.raw_body.contains("\"response_format\""), "{}", upload.raw_body);
    let answer: Value =
        serde_json::from_str(read_jsonl(&dir.path().join("batched.jsonl"))[0]["answer"].as_str().unwrap()).unwrap();
    assert_eq!(answer["reason"], "a b c");
}

#[test]
fn the_schema_is_part_of_the_saved_works_key() {
    let server = ProviderServer::start();
    let (dir, input, output) = dataset(&[json!({"prompt": "p"})]);
    assert_eq!(
        cli(
            &server,
            &[
                "--input",
                path(&input),
                "--output",
                path(&output),
                "--generation-model",
                "gpt-4o-mini",
                "--input-column",
                "prompt",
                "--output-column",
                "answer"
            ]
        )
        .code,
        Some(0)
    );
    let ran = structured(&server, dir.path(), &input, &output, "gpt-4o-mini", &label_schema(), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(server.requests().len(), 2, "the free answer was not reused for the structured one");
    assert!(read_jsonl(&output)[0]["answer"].as_str().unwrap().starts_with('{'));
}

#[test]
fn expand_json_writes_each_property_as_a_typed_column_in_every_format() {
    use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow_schema::DataType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let schema = json!({
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["positive", "negative"]},
            "score": {"type": "integer"},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["label", "score", "ratio", "ok", "tags"],
        "additionalProperties": false
    });
    let server = ProviderServer::start();
    let (dir, input, _) =
        dataset(&[json!({"id": 1, "prompt": "good day"}), json!({"id": 2, "prompt": "bad #status=400"})]);
    let columns = ["id", "prompt", "label", "score", "ratio", "ok", "tags", "answer", "answer_error"];
    for format in ["jsonl", "csv", "parquet"] {
        let output = dir.path().join(format!("out.{format}"));
        let ran = structured(&server, dir.path(), &input, &output, "gpt-4o-mini", &schema, &["--expand-json"]);
        assert_eq!(ran.code, Some(1), "{format}: {}", ran.stderr);
        match format {
            "jsonl" => {
                let rows = read_jsonl(&output);
                assert_eq!(rows[0].as_object().unwrap().keys().collect::<Vec<_>>(), columns);
                assert_eq!(
                    (&rows[0]["label"], &rows[0]["score"], &rows[0]["ratio"], &rows[0]["ok"], &rows[0]["tags"]),
                    (&json!("positive"), &json!(2), &json!(1.0), &json!(true), &json!("[\"good day\"]"))
                );
                assert_eq!((&rows[1]["label"], &rows[1]["score"]), (&Value::Null, &Value::Null), "a failed row");
            }
            "csv" => {
                let mut reader = csv::Reader::from_path(&output).unwrap();
                assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), columns);
                let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
                assert_eq!(
                    &rows[0].iter().collect::<Vec<_>>()[2..7],
                    ["positive", "2", "1.0", "true", "[\"good day\"]"]
                );
                assert_eq!(&rows[1].iter().collect::<Vec<_>>()[2..7], ["", "", "", "", ""]);
            }
            _ => {
                let batch = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&output).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap();
                let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                assert_eq!(names, columns);
                let types: Vec<_> = batch.schema().fields()[2..7].iter().map(|f| f.data_type().clone()).collect();
                assert_eq!(
                    types,
                    [DataType::Utf8, DataType::Int64, DataType::Float64, DataType::Boolean, DataType::Utf8]
                );
                let column = |name: &str| batch.column_by_name(name).unwrap().clone();
                assert_eq!(column("label").as_any().downcast_ref::<StringArray>().unwrap().value(0), "positive");
                assert_eq!(column("score").as_any().downcast_ref::<Int64Array>().unwrap().value(0), 2);
                assert_eq!(column("ratio").as_any().downcast_ref::<Float64Array>().unwrap().value(0), 1.0);
                assert!(column("ok").as_any().downcast_ref::<BooleanArray>().unwrap().value(0));
                assert!(column("score").is_null(1), "a failed row's properties are null");
            }
        }
    }
    // --expand-json needs a schema.
    let ran = cli(
        &server,
        &[
            "--input",
            path(&input),
            "--output",
            path(&dir.path().join("x.jsonl")),
            "--generation-model",
            "gpt-4o-mini",
            "--input-column",
            "prompt",
            "--output-column",
            "answer",
            "--expand-json",
        ],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("json_schema"), "{}", ran.stderr);
}
