//! Property tests for what parses untrusted input: config files, datasets
//! and the component's config check. Whatever the input, no panic, and
//! whatever round-trips comes back exactly.

use crate::common;
use batchgen::bindings::{Config, Endpoints};
use batchgen::config::Job;
use batchgen::dataset::{self, Reader, Writer};
use batchgen::plugin::sandbox::Limits;
use batchgen::plugin::{EMBEDDED_COMPONENT, Plugin};
use batchgen_tests::harness;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::path::Path;

fn config() -> ProptestConfig {
    // Each case touches files: keep CI quick but varied.
    ProptestConfig { cases: 64, ..ProptestConfig::default() }
}

/// Any text but the BOM, which a reader rightly strips from a file's start.
fn cell() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no BOM", |c| *c != '\u{feff}'), 0..12)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Reads `input` and writes `output` with `answer` = the row number.
fn pass_through(input: &Path, output: &Path) -> Result<u64, dataset::DatasetError> {
    let survey = dataset::survey(input, "prompt", "answer")?;
    let mut reader = Reader::open(input, &survey, "prompt")?;
    let mut writer = Writer::create(output, &survey, "answer")?;
    let mut rows = 0;
    while let Some(chunk) = reader.next_chunk(3)? {
        let outputs: Vec<Result<String, String>> =
            (0..chunk.len()).map(|i| Ok((chunk.first_row + i as u64).to_string())).collect();
        rows += chunk.len() as u64;
        writer.write_chunk(chunk, &outputs)?;
    }
    writer.finish()?;
    Ok(rows)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text_never_panics(text in "\\PC*") {
        let _ = Job::parse(&text, "fuzz.json");
    }

    #[test]
    fn config_files_round_trip(
        model in proptest::option::of(cell()),
        system in proptest::option::of(cell()),
        batch in proptest::option::of(any::<u32>()),
        temperature in proptest::option::of(-10.0f64..10.0),
        max_tokens in proptest::option::of(any::<u32>()),
    ) {
        let defaults = Job::default();
        let file = Job {
            generation_model: model.unwrap_or_default(),
            system_prompt: system,
            batch_size: batch.unwrap_or(defaults.batch_size),
            temperature: temperature.unwrap_or(defaults.temperature),
            max_tokens: max_tokens.unwrap_or(defaults.max_tokens),
            ..defaults
        };
        let text = serde_json::to_string(&file).unwrap();
        prop_assert_eq!(Job::parse(&text, "round-trip.json").unwrap(), file);
    }

    #[test]
    fn csv_cells_round_trip(rows in proptest::collection::vec((cell(), cell()), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        let mut writer = csv::Writer::from_path(&input).unwrap();
        writer.write_record(["prompt", "other"]).unwrap();
        for (prompt, other) in &rows {
            writer.write_record([prompt, other]).unwrap();
        }
        writer.flush().unwrap();
        drop(writer);
        let output = dir.path().join("out.csv");
        prop_assert_eq!(pass_through(&input, &output).unwrap(), rows.len() as u64);
        let mut reader = csv::Reader::from_path(&output).unwrap();
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        prop_assert_eq!(records.len(), rows.len());
        for (i, (record, (prompt, other))) in records.iter().zip(&rows).enumerate() {
            let expected = [prompt.clone(), other.clone(), i.to_string(), String::new()];
            prop_assert_eq!(record.iter().collect::<Vec<_>>(), expected.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn jsonl_values_round_trip(rows in proptest::collection::vec((cell(), cell(), any::<i64>(), -1e300f64..1e300), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let values: Vec<serde_json::Value> = rows.iter().map(|(p, o, n, x)| serde_json::json!({"n": n, "x": x, "prompt": p, "other": o})).collect();
        common::write_jsonl(&input, &values);
        let output = dir.path().join("out.jsonl");
        pass_through(&input, &output).unwrap();
        let out = common::read_jsonl(&output);
        for (i, (row, value)) in out.iter().zip(&values).enumerate() {
            let mut expected = value.clone();
            expected["answer"] = serde_json::json!(i.to_string());
            expected["answer_error"] = serde_json::Value::Null;
            prop_assert_eq!(row, &expected);
        }
    }

    #[test]
    fn arbitrary_dataset_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), csv_file in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join(if csv_file { "in.csv" } else { "in.jsonl" });
        std::fs::write(&input, &bytes).unwrap();
        let _ = pass_through(&input, &dir.path().join("out.jsonl"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_component_checks_any_config_without_failing() {
    let plugin = Plugin::new(EMBEDDED_COMPONENT, Some(&harness::cache_dir()), Limits::default()).unwrap();
    let mut session = plugin
        .instantiate(batchgen::outbound::Outbound::deny_all(), batchgen::local::LocalModel::Unavailable)
        .await
        .unwrap();
    let strategy = (
        prop_oneof![
            Just("gpt-4o".to_string()),
            Just("Claude 3.5 Haiku".to_string()),
            Just("local".to_string()),
            cell()
        ],
        proptest::option::of(cell()),
        prop_oneof![any::<f64>(), -1.0f64..3.0],
        prop_oneof![any::<f64>(), -1.0f64..2.0],
        any::<u32>(),
        any::<u32>(),
        cell(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 256, ..ProptestConfig::default() });
    let configs: Vec<Config> = (0..256)
        .map(|_| {
            let (model, model_id, temperature, top_p, max_tokens, batch_size, url) =
                strategy.new_tree(&mut runner).unwrap().current();
            Config {
                generation_model: model,
                model_id,
                system_prompt: None,
                temperature,
                top_p,
                max_tokens,
                batch_size,
                max_attempts: 3,
                request_timeout_ms: 1000,
                endpoints: Endpoints {
                    openai_base_url: url.clone(),
                    anthropic_base_url: url,
                    local_base_urls: Vec::new(),
                },
                prompt_template: None,
                json_schema: None,
            }
        })
        .collect();
    for config in configs {
        let problems = session.check_config(&config).await.expect("check-config never traps");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        if !(0.0..=2.0).contains(&config.temperature) {
            assert!(fields.contains(&"temperature"), "{config:?}: {fields:?}");
        }
        if !(0.0..=1.0).contains(&config.top_p) {
            assert!(fields.contains(&"top_p"), "{config:?}: {fields:?}");
        }
        if !(1..=4096).contains(&config.max_tokens) {
            assert!(fields.contains(&"max_tokens"), "{config:?}: {fields:?}");
        }
    }
}
