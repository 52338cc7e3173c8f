use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, LargeStringArray, ListArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value, json};
use tempfile::TempDir;

use super::*;

// ---------------------------------------------------------------- helpers

fn write_text(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path
}

fn write_parquet(dir: &Path, name: &str, batch: &RecordBatch) -> PathBuf {
    let path = dir.join(name);
    let mut writer = ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    path
}

/// Fails rows whose input contains "FAIL"; otherwise outputs "out:<input>".
fn fake_model(inputs: &[String]) -> Vec<Result<String, String>> {
    inputs
        .iter()
        .map(|s| if s.contains("FAIL") { Err(format!("failed: {s}")) } else { Ok(format!("out:{s}")) })
        .collect()
}

/// The whole run loop: survey, read in chunks, write, finish.
fn run(
    input: &Path,
    output: &Path,
    input_column: &str,
    output_column: &str,
    chunk_rows: usize,
) -> Result<Survey, DatasetError> {
    let survey = survey(input, input_column, output_column)?;
    let mut reader = Reader::open(input, &survey, input_column)?;
    let mut writer = Writer::create(output, &survey, output_column)?;
    while let Some(chunk) = reader.next_chunk(chunk_rows)? {
        let outputs = fake_model(&chunk.inputs);
        writer.write_chunk(chunk, &outputs)?;
    }
    writer.finish()?;
    Ok(survey)
}

fn read_parquet(path: &Path) -> (SchemaRef, Vec<RecordBatch>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    let batches = builder.build().unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    (schema, batches)
}

/// Any output file as JSON objects (CSV cells as strings; Parquet through
/// arrow-json with explicit nulls).
fn read_rows(path: &Path) -> Vec<Map<String, Value>> {
    let text = match Format::from_path(path).unwrap() {
        Format::Jsonl => fs::read_to_string(path).unwrap(),
        Format::Csv => {
            let mut reader = csv::Reader::from_path(path).unwrap();
            let headers = reader.headers().unwrap().clone();
            return reader
                .records()
                .map(|r| {
                    let r = r.unwrap();
                    headers.iter().zip(r.iter()).map(|(h, c)| (h.to_string(), Value::from(c))).collect()
                })
                .collect();
        }
        Format::Parquet => {
            let (_, batches) = read_parquet(path);
            let mut writer = arrow_json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
            for b in &batches {
                writer.write(b).unwrap();
            }
            writer.finish().unwrap();
            String::from_utf8(writer.into_inner()).unwrap()
        }
    };
    text.lines()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        })
        .collect()
}

fn keys(row: &Map<String, Value>) -> Vec<&str> {
    row.keys().map(String::as_str).collect()
}

fn csv_header(path: &Path) -> Vec<String> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.headers().unwrap().iter().map(str::to_string).collect()
}

/// Asserts the error message is `<path>: <rest>`.
fn assert_message(err: &DatasetError, path: &Path, rest: &str) {
    assert_eq!(err.to_string(), format!("{}: {rest}", path.display()));
}

// ---------------------------------------------------------------- fixtures

const JSONL: &str = concat!(
    r#"{"id": 1, "prompt": "hello", "tags": ["a", "b"], "meta": {"k": "v"}}"#,
    "\n\n",
    r#"{"id": 2, "prompt": "say \"hi\", ok\nnext", "extra": true}"#,
    "\r\n",
    r#"{"id": 3.5, "prompt": "héllo 世界 FAIL", "tags": null}"#,
    "\n"
);

const JSONL_COLUMNS: [&str; 5] = ["id", "prompt", "tags", "meta", "extra"];

const CSV: &str = "\u{feff}id,prompt,note\r\n\
1,\"He said \"\"hi\"\", then left\",plain\r\n\
2,\"multi\nline\r\ncell\",ünïcödé 🎉\r\n\
3,,\"comma, inside\"\r\n\
4,FAIL me,\"\"\"quoted\"\"\"";

fn csv_rows() -> Vec<[&'static str; 3]> {
    vec![
        ["1", "He said \"hi\", then left", "plain"],
        ["2", "multi\nline\r\ncell", "ünïcödé 🎉"],
        ["3", "", "comma, inside"],
        ["4", "FAIL me", "\"quoted\""],
    ]
}

fn parquet_batch() -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ])
    .with_metadata(std::collections::HashMap::from([("origin".to_string(), "test".to_string())]));
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![10, 20, 30])),
            Arc::new(StringArray::from(vec!["a, \"b\"\nc", "ü 🎉 FAIL", ""])),
            Arc::new(Float64Array::from(vec![Some(0.5), None, Some(-2.25)])),
        ],
    )
    .unwrap()
}

fn expected_output(input: &str) -> (Value, Value) {
    if input.contains("FAIL") {
        (Value::from(""), Value::from(format!("failed: {input}")))
    } else {
        (Value::from(format!("out:{input}")), Value::Null)
    }
}

/// Expected CSV cells for the output/error columns.
fn expected_csv_output(input: &str) -> (Value, Value) {
    let (out, err) = expected_output(input);
    (out, if err.is_null() { Value::from("") } else { err })
}

// ---------------------------------------------------------------- format

#[test]
fn format_from_path() {
    assert_eq!(Format::from_path(Path::new("a.jsonl")).unwrap(), Format::Jsonl);
    assert_eq!(Format::from_path(Path::new("a.NDJSON")).unwrap(), Format::Jsonl);
    assert_eq!(Format::from_path(Path::new("dir.x/a.CsV")).unwrap(), Format::Csv);
    assert_eq!(Format::from_path(Path::new("a.Parquet")).unwrap(), Format::Parquet);
    for bad in ["a.json", "a", "a.csv.gz", "jsonl"] {
        let err = Format::from_path(Path::new(bad)).unwrap_err();
        assert!(matches!(err, DatasetError::UnsupportedFormat { .. }));
        assert_eq!(
            err.to_string(),
            format!("{bad}: unsupported file extension (expected .jsonl, .ndjson, .csv or .parquet)")
        );
    }
    assert_eq!(error_column("answer"), "answer_error");
}

// ---------------------------------------------------------------- JSONL input

#[test]
fn jsonl_survey() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let s = survey(&input, "prompt", "answer").unwrap();
    assert_eq!(s.format, Format::Jsonl);
    assert_eq!(s.rows, 3);
    assert_eq!(s.columns, JSONL_COLUMNS);

    // A UTF-8 BOM at the start is ignored; blank lines are not rows.
    let input = write_text(dir.path(), "bom.jsonl", &format!("\u{feff}{JSONL}\n \t\n"));
    let s = survey(&input, "prompt", "answer").unwrap();
    assert_eq!(s.rows, 3);
    assert_eq!(s.columns, JSONL_COLUMNS);
}

#[test]
fn jsonl_to_jsonl() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let output = dir.path().join("out.jsonl");
    run(&input, &output, "prompt", "answer", 2).unwrap();
    let rows = read_rows(&output);
    let inputs: Vec<Map<String, Value>> =
        JSONL.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    for (row, mut expected) in rows.iter().zip(inputs) {
        let prompt = expected["prompt"].as_str().unwrap().to_string();
        let (out, err) = expected_output(&prompt);
        expected.insert("answer".into(), out);
        expected.insert("answer_error".into(), err);
        assert_eq!(row, &expected);
        // Each object as read (its own keys, in order), then the two columns.
        assert_eq!(keys(row), keys(&expected));
    }
    assert_eq!(keys(&rows[1]), ["id", "prompt", "extra", "answer", "answer_error"]);
}

#[test]
fn jsonl_to_csv() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let output = dir.path().join("out.csv");
    run(&input, &output, "prompt", "answer", 1000).unwrap();
    // Union of the keys in first-seen order.
    assert_eq!(csv_header(&output), ["id", "prompt", "tags", "meta", "extra", "answer", "answer_error"]);
    let rows = read_rows(&output);
    let expected = [
        json!({"id": "1", "prompt": "hello", "tags": "[\"a\",\"b\"]", "meta": "{\"k\":\"v\"}", "extra": "",
               "answer": "out:hello", "answer_error": ""}),
        json!({"id": "2", "prompt": "say \"hi\", ok\nnext", "tags": "", "meta": "", "extra": "true",
               "answer": "out:say \"hi\", ok\nnext", "answer_error": ""}),
        json!({"id": "3.5", "prompt": "héllo 世界 FAIL", "tags": "", "meta": "", "extra": "",
               "answer": "", "answer_error": "failed: héllo 世界 FAIL"}),
    ];
    assert_eq!(rows.len(), 3);
    for (row, expected) in rows.into_iter().zip(expected) {
        assert_eq!(Value::Object(row), expected);
    }
}

#[test]
fn jsonl_to_parquet() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let output = dir.path().join("out.parquet");
    run(&input, &output, "prompt", "answer", 2).unwrap();
    let (schema, _) = read_parquet(&output);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "prompt", "tags", "meta", "extra", "answer", "answer_error"]);
    assert_eq!(schema.field(0).data_type(), &DataType::Float64); // 1, 2 and 3.5
    assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
    assert!(matches!(schema.field(2).data_type(), DataType::List(f) if f.data_type() == &DataType::Utf8));
    assert!(matches!(schema.field(3).data_type(), DataType::Struct(_)));
    assert_eq!(schema.field(4).data_type(), &DataType::Boolean);
    assert!(!schema.field(5).is_nullable());
    assert!(schema.field(6).is_nullable());
    let rows = read_rows(&output);
    let expected = [
        json!({"id": 1.0, "prompt": "hello", "tags": ["a", "b"], "meta": {"k": "v"}, "extra": null,
               "answer": "out:hello", "answer_error": null}),
        json!({"id": 2.0, "prompt": "say \"hi\", ok\nnext", "tags": null, "meta": null, "extra": true,
               "answer": "out:say \"hi\", ok\nnext", "answer_error": null}),
        json!({"id": 3.5, "prompt": "héllo 世界 FAIL", "tags": null, "meta": null, "extra": null,
               "answer": "", "answer_error": "failed: héllo 世界 FAIL"}),
    ];
    assert_eq!(rows.len(), 3);
    for (row, expected) in rows.into_iter().zip(expected) {
        assert_eq!(Value::Object(row), expected);
    }
}

#[test]
fn jsonl_to_parquet_conflicting_types_become_text() {
    let dir = TempDir::new().unwrap();
    let input = write_text(
        dir.path(),
        "in.jsonl",
        concat!(
            r#"{"prompt": "a", "x": 1, "y": {"a": 1}, "z": null, "w": [1, 2], "e": {}, "n": {"p": 1}}"#,
            "\n",
            r#"{"prompt": "b", "x": "str", "y": 5, "z": null, "w": [1.5, null], "e": {}, "n": {"p": "q", "r": [true]}}"#,
            "\n",
            r#"{"prompt": "c", "x": false, "y": [1], "w": [], "n": {"p": {"deep": 1}}}"#,
            "\n",
        ),
    );
    let output = dir.path().join("out.parquet");
    run(&input, &output, "prompt", "answer", 1).unwrap();
    let (schema, _) = read_parquet(&output);
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(types[1], &DataType::Utf8); // x
    assert_eq!(types[2], &DataType::Utf8); // y
    assert_eq!(types[3], &DataType::Utf8); // z: always null
    assert!(matches!(types[4], DataType::List(f) if f.data_type() == &DataType::Float64)); // w
    assert_eq!(types[5], &DataType::Utf8); // e: always {}
    let rows = read_rows(&output);
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"prompt": "a", "x": "1", "y": "{\"a\":1}", "z": null, "w": [1.0, 2.0], "e": "{}",
               "n": {"p": "1", "r": null}, "answer": "out:a", "answer_error": null})
    );
    assert_eq!(
        Value::Object(rows[1].clone()),
        json!({"prompt": "b", "x": "str", "y": "5", "z": null, "w": [1.5, null], "e": "{}",
               "n": {"p": "q", "r": [true]}, "answer": "out:b", "answer_error": null})
    );
    assert_eq!(
        Value::Object(rows[2].clone()),
        json!({"prompt": "c", "x": "false", "y": "[1]", "z": null, "w": [], "e": null,
               "n": {"p": "{\"deep\":1}", "r": null}, "answer": "out:c", "answer_error": null})
    );
}

// ---------------------------------------------------------------- CSV input

#[test]
fn csv_survey_ignores_bom() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", CSV);
    let s = survey(&input, "id", "answer").unwrap();
    assert_eq!(s.format, Format::Csv);
    assert_eq!(s.rows, 4);
    assert_eq!(s.columns, ["id", "prompt", "note"]);
}

#[test]
fn csv_to_csv_round_trips_exactly() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", CSV);
    let output = dir.path().join("out.csv");
    run(&input, &output, "prompt", "answer", 3).unwrap();
    assert_eq!(csv_header(&output), ["id", "prompt", "note", "answer", "answer_error"]);
    let mut reader = csv::Reader::from_path(&output).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 4);
    for (record, expected) in records.iter().zip(csv_rows()) {
        let (out, err) = expected_csv_output(expected[1]);
        let mut cells: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        cells.push(out.as_str().unwrap().to_string());
        cells.push(err.as_str().unwrap().to_string());
        assert_eq!(record.iter().collect::<Vec<_>>(), cells);
    }
    // No BOM is written.
    assert!(fs::read(&output).unwrap().starts_with(b"id,"));
}

#[test]
fn csv_to_jsonl() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", CSV);
    let output = dir.path().join("out.jsonl");
    run(&input, &output, "prompt", "answer", 1).unwrap();
    let rows = read_rows(&output);
    assert_eq!(rows.len(), 4);
    for (row, expected) in rows.iter().zip(csv_rows()) {
        let (out, err) = expected_output(expected[1]);
        let expected = json!({"id": expected[0], "prompt": expected[1], "note": expected[2],
                              "answer": out, "answer_error": err});
        assert_eq!(keys(row), keys(expected.as_object().unwrap()));
        assert_eq!(Value::Object(row.clone()), expected);
    }
}

#[test]
fn csv_to_parquet() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", CSV);
    let output = dir.path().join("out.parquet");
    run(&input, &output, "prompt", "answer", 2).unwrap();
    let (schema, _) = read_parquet(&output);
    let fields: Vec<(&str, &DataType, bool)> =
        schema.fields().iter().map(|f| (f.name().as_str(), f.data_type(), f.is_nullable())).collect();
    assert_eq!(
        fields,
        [
            ("id", &DataType::Utf8, true),
            ("prompt", &DataType::Utf8, true),
            ("note", &DataType::Utf8, true),
            ("answer", &DataType::Utf8, false),
            ("answer_error", &DataType::Utf8, true),
        ]
    );
    let rows = read_rows(&output);
    assert_eq!(rows.len(), 4);
    for (row, expected) in rows.iter().zip(csv_rows()) {
        let (out, err) = expected_output(expected[1]);
        let expected = json!({"id": expected[0], "prompt": expected[1], "note": expected[2],
                              "answer": out, "answer_error": err});
        assert_eq!(Value::Object(row.clone()), expected);
    }
}

#[test]
fn csv_single_column_with_empty_cells() {
    // A one-column CSV whose cell is empty must be written as `""`, or it
    // would read back as a blank line (which is skipped).
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", "prompt\na\n\"\"\nb\n");
    let s = survey(&input, "prompt", "answer").unwrap();
    assert_eq!(s.rows, 3);
    let output = dir.path().join("out.csv");
    run(&input, &output, "prompt", "answer", 10).unwrap();
    let rows = read_rows(&output);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["prompt"], "");
    assert_eq!(rows[1]["answer"], "out:");
}

// ---------------------------------------------------------------- Parquet input

#[test]
fn parquet_to_parquet_keeps_schema_and_arrays() {
    let dir = TempDir::new().unwrap();
    let batch = parquet_batch();
    let input = write_parquet(dir.path(), "in.parquet", &batch);
    let output = dir.path().join("out.parquet");
    let s = run(&input, &output, "prompt", "answer", 2).unwrap();
    assert_eq!(s.rows, 3);
    assert_eq!(s.columns, ["id", "prompt", "score"]);
    let (schema, batches) = read_parquet(&output);
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("answer", DataType::Utf8, false));
    fields.push(Field::new("answer_error", DataType::Utf8, true));
    assert_eq!(schema.fields().iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>(), fields);
    assert_eq!(schema.metadata().get("origin").map(String::as_str), Some("test"));
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 3);
    let all = concat_columns(&batches);
    for (c, column) in all.iter().enumerate().take(3) {
        assert_eq!(column.as_ref(), batch.column(c).as_ref(), "column {c}");
    }
    assert_eq!(all[3].as_string::<i32>().iter().collect::<Vec<_>>(), [Some("out:a, \"b\"\nc"), Some(""), Some("out:")]);
    assert_eq!(all[4].as_string::<i32>().iter().collect::<Vec<_>>(), [None, Some("failed: ü 🎉 FAIL"), None]);
}

/// Concatenates the columns of `batches` (all-string/int/float test data).
fn concat_columns(batches: &[RecordBatch]) -> Vec<ArrayRef> {
    let width = batches[0].num_columns();
    (0..width)
        .map(|c| {
            let data_type = batches[0].column(c).data_type().clone();
            let parts = batches.iter().map(|b| b.column(c).clone());
            match data_type {
                DataType::Int64 => Arc::new(Int64Array::from_iter(
                    parts.flat_map(|a| a.as_primitive::<Int64Type>().iter().collect::<Vec<_>>()),
                )) as ArrayRef,
                DataType::Float64 => Arc::new(Float64Array::from_iter(
                    parts.flat_map(|a| a.as_primitive::<arrow_array::types::Float64Type>().iter().collect::<Vec<_>>()),
                )),
                DataType::Utf8 => Arc::new(StringArray::from_iter(
                    parts.flat_map(|a| a.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect::<Vec<_>>()),
                )),
                other => panic!("unexpected type {other}"),
            }
        })
        .collect()
}

#[test]
fn parquet_to_jsonl() {
    let dir = TempDir::new().unwrap();
    let input = write_parquet(dir.path(), "in.parquet", &parquet_batch());
    let output = dir.path().join("out.jsonl");
    run(&input, &output, "prompt", "answer", 1).unwrap();
    let rows = read_rows(&output);
    let expected = [
        json!({"id": 10, "prompt": "a, \"b\"\nc", "score": 0.5, "answer": "out:a, \"b\"\nc", "answer_error": null}),
        json!({"id": 20, "prompt": "ü 🎉 FAIL", "score": null, "answer": "", "answer_error": "failed: ü 🎉 FAIL"}),
        json!({"id": 30, "prompt": "", "score": -2.25, "answer": "out:", "answer_error": null}),
    ];
    assert_eq!(rows.len(), 3);
    for (row, expected) in rows.iter().zip(expected) {
        assert_eq!(keys(row), keys(expected.as_object().unwrap()));
        assert_eq!(Value::Object(row.clone()), expected);
    }
}

#[test]
fn parquet_to_csv() {
    let dir = TempDir::new().unwrap();
    let input = write_parquet(dir.path(), "in.parquet", &parquet_batch());
    let output = dir.path().join("out.csv");
    run(&input, &output, "prompt", "answer", 1000).unwrap();
    assert_eq!(csv_header(&output), ["id", "prompt", "score", "answer", "answer_error"]);
    let rows = read_rows(&output);
    let expected = [
        json!({"id": "10", "prompt": "a, \"b\"\nc", "score": "0.5", "answer": "out:a, \"b\"\nc", "answer_error": ""}),
        json!({"id": "20", "prompt": "ü 🎉 FAIL", "score": "", "answer": "", "answer_error": "failed: ü 🎉 FAIL"}),
        json!({"id": "30", "prompt": "", "score": "-2.25", "answer": "out:", "answer_error": ""}),
    ];
    assert_eq!(rows.len(), 3);
    for (row, expected) in rows.into_iter().zip(expected) {
        assert_eq!(Value::Object(row), expected);
    }
}

#[test]
fn parquet_large_utf8_and_utf8_view_inputs() {
    let dir = TempDir::new().unwrap();
    let arrays: [(ArrayRef, &str); 2] = [
        (Arc::new(LargeStringArray::from(vec!["x", "y FAIL"])), "large.parquet"),
        (Arc::new(StringViewArray::from(vec!["x", "y FAIL"])), "view.parquet"),
    ];
    for (array, name) in arrays {
        let batch = RecordBatch::try_from_iter([("prompt", array)]).unwrap();
        let input = write_parquet(dir.path(), name, &batch);
        let output = dir.path().join(format!("{name}.jsonl"));
        run(&input, &output, "prompt", "answer", 1).unwrap();
        let rows = read_rows(&output);
        assert_eq!(
            rows.into_iter().map(Value::Object).collect::<Vec<_>>(),
            [
                json!({"prompt": "x", "answer": "out:x", "answer_error": null}),
                json!({"prompt": "y FAIL", "answer": "", "answer_error": "failed: y FAIL"}),
            ]
        );
    }
}

#[test]
fn parquet_nested_column_to_csv_is_an_error() {
    let dir = TempDir::new().unwrap();
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(vec![Some(1)]), None]);
    let batch = RecordBatch::try_from_iter([
        ("prompt", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ("nums", Arc::new(list) as ArrayRef),
    ])
    .unwrap();
    let input = write_parquet(dir.path(), "in.parquet", &batch);
    let output = dir.path().join("out.csv");
    let s = survey(&input, "prompt", "answer").unwrap();
    let err = Writer::create(&output, &s, "answer").err().unwrap();
    assert!(matches!(err, DatasetError::CsvUnsupportedType { ref column, .. } if column == "nums"));
    assert!(err.to_string().starts_with(&format!("{}: column \"nums\" has type List(", output.display())));
    assert!(err.to_string().ends_with("which CSV cannot hold"));
    assert!(!output.exists());
    // JSONL and Parquet can hold it.
    run(&input, &dir.path().join("out.jsonl"), "prompt", "answer", 1).unwrap();
    let rows = read_rows(&dir.path().join("out.jsonl"));
    assert_eq!(rows[0]["nums"], json!([1]));
    run(&input, &dir.path().join("out.parquet"), "prompt", "answer", 1).unwrap();
    let (schema, _) = read_parquet(&dir.path().join("out.parquet"));
    assert_eq!(schema.field(1).data_type(), batch.schema().field(1).data_type());
}

#[test]
fn parquet_many_rows_and_batches() {
    // More rows than a read batch, read in chunks that straddle batches.
    let dir = TempDir::new().unwrap();
    let n = 20_000;
    let prompts: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let batch = RecordBatch::try_from_iter([
        ("n", Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef),
        ("prompt", Arc::new(StringArray::from_iter_values(&prompts)) as ArrayRef),
    ])
    .unwrap();
    let input = write_parquet(dir.path(), "in.parquet", &batch);
    let output = dir.path().join("out.parquet");
    let s = run(&input, &output, "prompt", "answer", 777).unwrap();
    assert_eq!(s.rows, n as u64);
    let (_, batches) = read_parquet(&output);
    let mut i = 0;
    for b in &batches {
        let ns = b.column(0).as_primitive::<Int64Type>();
        let answers = b.column(2).as_string::<i32>();
        for r in 0..b.num_rows() {
            assert_eq!(ns.value(r), i as i64);
            assert_eq!(answers.value(r), format!("out:p{i}"));
            i += 1;
        }
    }
    assert_eq!(i, n);
}

// ---------------------------------------------------------------- chunks

fn all_chunks(input: &Path, chunk_rows: usize) -> Vec<(u64, Vec<String>)> {
    let s = survey(input, "prompt", "answer").unwrap();
    let mut reader = Reader::open(input, &s, "prompt").unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk(chunk_rows).unwrap() {
        assert!(!chunk.is_empty());
        assert!(chunk.len() <= chunk_rows);
        chunks.push((chunk.first_row, chunk.inputs));
    }
    assert!(reader.next_chunk(chunk_rows).unwrap().is_none());
    chunks
}

#[test]
fn chunk_sizes_give_the_same_rows() {
    let dir = TempDir::new().unwrap();
    let inputs = [
        write_text(dir.path(), "in.jsonl", JSONL),
        write_text(dir.path(), "in.csv", CSV),
        write_parquet(dir.path(), "in.parquet", &parquet_batch()),
    ];
    for input in &inputs {
        let mut flat: Option<Vec<String>> = None;
        for size in [1, 2, 1000] {
            let chunks = all_chunks(input, size);
            let mut next = 0;
            for (first_row, rows) in &chunks {
                assert_eq!(*first_row, next);
                next += rows.len() as u64;
            }
            // Chunks are full except the last.
            for (_, rows) in &chunks[..chunks.len() - 1] {
                assert_eq!(rows.len(), size);
            }
            let rows: Vec<String> = chunks.into_iter().flat_map(|(_, r)| r).collect();
            match &flat {
                None => flat = Some(rows),
                Some(first) => {
                    assert_eq!(first, &rows, "{} with chunks of {size}", input.display())
                }
            }
        }
        let expected_rows = if input.ends_with("in.csv") { 4 } else { 3 };
        assert_eq!(flat.unwrap().len(), expected_rows);
    }
    // The outputs are the same whatever the chunk size.
    for input in &inputs {
        for out_ext in ["jsonl", "csv", "parquet"] {
            let mut previous: Option<Vec<Map<String, Value>>> = None;
            for size in [1, 2, 1000] {
                let output = dir.path().join(format!("out-{size}.{out_ext}"));
                run(input, &output, "prompt", "answer", size).unwrap();
                let rows = read_rows(&output);
                if let Some(previous) = &previous {
                    assert_eq!(previous, &rows);
                }
                previous = Some(rows);
            }
        }
    }
}

// ---------------------------------------------------------------- writer

#[test]
fn writer_leaves_nothing_before_finish() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    for ext in ["jsonl", "csv", "parquet"] {
        let output = dir.path().join(format!("out.{ext}"));
        let s = survey(&input, "prompt", "answer").unwrap();
        let mut reader = Reader::open(&input, &s, "prompt").unwrap();
        let mut writer = Writer::create(&output, &s, "answer").unwrap();
        while let Some(chunk) = reader.next_chunk(1).unwrap() {
            let outputs = fake_model(&chunk.inputs);
            writer.write_chunk(chunk, &outputs).unwrap();
            assert!(!output.exists());
        }
        assert!(!output.exists());
        writer.finish().unwrap();
        assert!(output.exists());
        assert_eq!(read_rows(&output).len(), 3);
    }
    // Only the input and the three outputs: no temporary file left behind.
    let mut names: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["in.jsonl", "out.csv", "out.jsonl", "out.parquet"]);
}

#[test]
fn dropped_writer_removes_its_temporary_file() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.csv", CSV);
    let output = dir.path().join("out.parquet");
    let s = survey(&input, "prompt", "answer").unwrap();
    let mut reader = Reader::open(&input, &s, "prompt").unwrap();
    let mut writer = Writer::create(&output, &s, "answer").unwrap();
    let chunk = reader.next_chunk(2).unwrap().unwrap();
    let outputs = fake_model(&chunk.inputs);
    writer.write_chunk(chunk, &outputs).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2); // input + temporary
    drop(writer);
    assert!(!output.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_replaces_an_existing_output() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let output = write_text(dir.path(), "out.jsonl", "old\n");
    let s = survey(&input, "prompt", "answer").unwrap();
    let writer = Writer::create(&output, &s, "answer").unwrap();
    assert_eq!(fs::read_to_string(&output).unwrap(), "old\n");
    drop(writer);
    assert_eq!(fs::read_to_string(&output).unwrap(), "old\n");
    run(&input, &output, "prompt", "answer", 2).unwrap();
    assert_eq!(read_rows(&output).len(), 3);
}

#[test]
fn wrong_number_of_outputs() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let output = dir.path().join("out.jsonl");
    let s = survey(&input, "prompt", "answer").unwrap();
    let mut reader = Reader::open(&input, &s, "prompt").unwrap();
    let mut writer = Writer::create(&output, &s, "answer").unwrap();
    let first = reader.next_chunk(1).unwrap().unwrap();
    writer.write_chunk(first, &[Ok("x".into())]).unwrap();
    let chunk = reader.next_chunk(2).unwrap().unwrap();
    assert_eq!(chunk.first_row, 1);
    let err = writer.write_chunk(chunk, &[Ok("x".into())]).unwrap_err();
    assert!(matches!(err, DatasetError::OutputCount { expected: 2, got: 1, .. }));
    assert_message(&err, &output, "got 1 outputs for a chunk of 2 rows starting at row 2");
}

#[test]
fn chunk_from_another_format_is_rejected() {
    let dir = TempDir::new().unwrap();
    let jsonl = write_text(dir.path(), "in.jsonl", JSONL);
    let csv = write_text(dir.path(), "in.csv", CSV);
    let s_jsonl = survey(&jsonl, "prompt", "answer").unwrap();
    let s_csv = survey(&csv, "prompt", "answer").unwrap();
    let mut reader = Reader::open(&csv, &s_csv, "prompt").unwrap();
    let output = dir.path().join("out.csv");
    let mut writer = Writer::create(&output, &s_jsonl, "answer").unwrap();
    let chunk = reader.next_chunk(1).unwrap().unwrap();
    let outputs = fake_model(&chunk.inputs);
    let err = writer.write_chunk(chunk, &outputs).unwrap_err();
    assert!(matches!(err, DatasetError::ChunkFormat { .. }));
}

#[test]
fn empty_inputs_give_valid_outputs() {
    let dir = TempDir::new().unwrap();
    let empty_batch = RecordBatch::new_empty(parquet_batch().schema());
    let inputs = [
        write_text(dir.path(), "in.jsonl", "\n  \n"),
        write_text(dir.path(), "in.csv", "id,prompt\n"),
        write_parquet(dir.path(), "in.parquet", &empty_batch),
    ];
    for input in &inputs {
        let s = survey(input, "prompt", "answer").unwrap();
        assert_eq!(s.rows, 0);
        for ext in ["jsonl", "csv", "parquet"] {
            let output = dir.path().join(format!("out.{ext}"));
            run(input, &output, "prompt", "answer", 10).unwrap();
            assert!(read_rows(&output).is_empty());
            if ext == "csv" {
                let mut expected = s.columns.clone();
                expected.extend(["answer".to_string(), "answer_error".to_string()]);
                assert_eq!(csv_header(&output), expected, "{}", input.display());
            }
            if ext == "parquet" {
                let (schema, _) = read_parquet(&output);
                let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
                assert_eq!(names.last().unwrap().as_str(), "answer_error");
            }
        }
    }
}

// ---------------------------------------------------------------- errors

#[test]
fn jsonl_invalid_json_names_row_and_line() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.jsonl", "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"}\noops\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert!(matches!(err, DatasetError::InvalidJson { row: 3, line: 4, .. }));
    assert_message(&err, &input, "row 3 (line 4): not valid JSON: expected value at column 1");

    let input = write_text(dir.path(), "trunc.jsonl", "{\"prompt\": \"a\"");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 1 (line 1): not valid JSON: EOF while parsing an object at column 14");
}

#[test]
fn jsonl_non_object_is_an_error() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.jsonl", "{\"prompt\": \"a\"}\n[1, 2]\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 2 (line 2): is an array, expected a JSON object");
}

#[test]
fn jsonl_input_not_a_string() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": 5}\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 2 (line 2): input column \"prompt\" is a number, expected a string");

    let input = write_text(dir.path(), "null.jsonl", "\n{\"prompt\": null}\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 1 (line 2): input column \"prompt\" is null, expected a string");

    let input = write_text(dir.path(), "missing.jsonl", "{\"prompt\": \"a\"}\n{\"other\": \"x\"}\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 2 (line 2): has no value for input column \"prompt\"");
}

/// A JSONL survey that skipped validation (as if the file changed after it).
fn unchecked_jsonl_survey() -> Survey {
    Survey {
        format: Format::Jsonl,
        rows: 0,
        columns: vec![],
        path: PathBuf::new(),
        detail: survey::Detail::Jsonl { types: vec![] },
    }
}

#[test]
fn reader_checks_inputs_too() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": 5}\n");
    let s = unchecked_jsonl_survey();
    let mut reader = Reader::open(&input, &s, "prompt").unwrap();
    let err = reader.next_chunk(10).unwrap_err();
    assert_message(&err, &input, "row 2 (line 2): input column \"prompt\" is a number, expected a string");
}

#[test]
fn csv_record_length_names_row_and_line() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.csv", "a,prompt,c\n1,x,y\n2,\"multi\nline\",z\n3,short\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert!(matches!(err, DatasetError::FieldCount { row: 3, line: 5, expected: 3, found: 2, .. }), "{err:?}");
    assert_message(&err, &input, "row 3 (line 5): has 2 fields, expected 3 (one per header column)");

    let input = write_text(dir.path(), "long.csv", "\u{feff}a,prompt\n1,x,extra\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 1 (line 2): has 3 fields, expected 2 (one per header column)");
}

#[test]
fn csv_invalid_utf8_names_row_line_and_column() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.csv");
    fs::write(&input, b"a,prompt\n1,x\n2,\xff\xfe\n").unwrap();
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "row 2 (line 3): column \"prompt\" is not valid UTF-8");
}

#[test]
fn csv_missing_and_duplicate_columns() {
    let dir = TempDir::new().unwrap();
    let input = write_text(dir.path(), "data.csv", "a,b,c\n1,2,3\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "input column \"prompt\" not found; columns are: a, b, c");

    let input = write_text(dir.path(), "dup.csv", "a,prompt,a\n1,2,3\n");
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "column \"a\" appears more than once in the header");
}

#[test]
fn parquet_column_errors() {
    let dir = TempDir::new().unwrap();
    let batch = RecordBatch::try_from_iter([
        ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ("b", Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef),
        ("c", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
    ])
    .unwrap();
    let input = write_parquet(dir.path(), "data.parquet", &batch);
    let err = survey(&input, "prompt", "answer").unwrap_err();
    assert_message(&err, &input, "input column \"prompt\" not found; columns are: a, b, c");
    let err = survey(&input, "a", "answer").unwrap_err();
    assert_message(&err, &input, "input column \"a\" has type Int64, expected a string type");
    let err = survey(&input, "b", "answer").unwrap_err();
    assert_message(&err, &input, "row 2: input column \"b\" is null, expected a string");
    survey(&input, "c", "answer").unwrap();
}

#[test]
fn output_column_must_be_new() {
    let dir = TempDir::new().unwrap();
    let csv = write_text(dir.path(), "data.csv", "prompt,answer\nx,y\n");
    let err = survey(&csv, "prompt", "answer").unwrap_err();
    assert_message(&err, &csv, "output column \"answer\" already exists in the input");

    let csv = write_text(dir.path(), "data2.csv", "prompt,answer_error\nx,y\n");
    let err = survey(&csv, "prompt", "answer").unwrap_err();
    assert_message(&err, &csv, "output column \"answer_error\" already exists in the input");

    let jsonl = write_text(dir.path(), "data.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"answer_error\": 1}\n");
    let err = survey(&jsonl, "prompt", "answer").unwrap_err();
    assert_message(&err, &jsonl, "output column \"answer_error\" already exists in the input");

    let batch = RecordBatch::try_from_iter([
        ("prompt", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ("answer", Arc::new(StringArray::from(vec!["y"])) as ArrayRef),
    ])
    .unwrap();
    let parquet = write_parquet(dir.path(), "data.parquet", &batch);
    let err = survey(&parquet, "prompt", "answer").unwrap_err();
    assert_message(&err, &parquet, "output column \"answer\" already exists in the input");

    // Writer::create checks its own output column against the survey.
    let s = survey(&parquet, "prompt", "other").unwrap();
    let output = dir.path().join("out.jsonl");
    let err = Writer::create(&output, &s, "answer").err().unwrap();
    assert_message(&err, &parquet, "output column \"answer\" already exists in the input");
    assert!(!output.exists());
}

#[test]
fn io_and_extension_errors() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let err = survey(&missing, "prompt", "answer").unwrap_err();
    assert!(matches!(err, DatasetError::Open { .. }));
    assert!(err.to_string().starts_with(&format!("{}: cannot open: ", missing.display())));
    assert!(std::error::Error::source(&err).is_some());

    let txt = write_text(dir.path(), "data.txt", "x");
    let err = survey(&txt, "prompt", "answer").unwrap_err();
    assert_message(&err, &txt, "unsupported file extension (expected .jsonl, .ndjson, .csv or .parquet)");

    let input = write_text(dir.path(), "in.jsonl", JSONL);
    let s = survey(&input, "prompt", "answer").unwrap();
    let bad_out = dir.path().join("out.xlsx");
    let err = Writer::create(&bad_out, &s, "answer").err().unwrap();
    assert!(matches!(err, DatasetError::UnsupportedFormat { .. }));

    let no_dir = dir.path().join("no/such/dir/out.csv");
    let err = Writer::create(&no_dir, &s, "answer").err().unwrap();
    assert!(err.to_string().starts_with(&format!("{}: cannot open: ", no_dir.display())));

    let not_parquet = write_text(dir.path(), "bad.parquet", "this is not parquet");
    let err = survey(&not_parquet, "prompt", "answer").unwrap_err();
    assert!(matches!(err, DatasetError::Parquet { .. }));
    assert!(err.to_string().starts_with(&format!("{}: ", not_parquet.display())));
}
