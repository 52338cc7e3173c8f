//! Helpers shared by the integration tests.

use batchgen::config::{ApiKeys, Job, ProviderEndpoints};
use batchgen::run::RunOptions;
use batchgen_tests::harness;
use batchgen_tests::provider::ProviderServer;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const OPENAI_KEY: &str = "sk-test-openai";
pub const ANTHROPIC_KEY: &str = "sk-ant-test";

/// A job with the spec's defaults for `model`, reading `prompt` into `answer`.
pub fn job(model: &str) -> Job {
    Job {
        generation_model: model.to_string(),
        input_column: "prompt".into(),
        output_column: "answer".into(),
        ..Job::default()
    }
}

/// Library-level run options pointed at `server`, with both keys set.
pub fn options(server: &ProviderServer, input: &Path, output: &Path, job: Job) -> RunOptions {
    RunOptions {
        endpoints: ProviderEndpoints {
            openai_base_url: server.openai_base_url(),
            anthropic_base_url: server.anthropic_base_url(),
            local_urls: Vec::new(),
        },
        keys: ApiKeys { openai: Some(OPENAI_KEY.into()), anthropic: Some(ANTHROPIC_KEY.into()), local: None },
        cache_dir: Some(harness::cache_dir()),
        // Tests count requests per row and use model ids the stand-in does
        // not list; the preflight has tests of its own.
        preflight: false,
        ..RunOptions::new(input, output, job)
    }
}

/// Writes `rows` as JSONL.
pub fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|row| format!("{row}\n")).collect();
    std::fs::write(path, text).unwrap();
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `n` rows `{"id": i, "prompt": "row i"}`.
pub fn numbered_rows(n: usize) -> Vec<Value> {
    (0..n).map(|i| serde_json::json!({"id": i, "prompt": format!("row {i}")})).collect()
}

/// A temporary directory with `input.jsonl` holding `rows`; returns it and
/// the input and output paths.
pub fn dataset(rows: &[Value]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    write_jsonl(&input, rows);
    let output = dir.path().join("output.jsonl");
    (dir, input, output)
}

/// `batchgen run` against `server` with both keys set, plus `args`.
pub fn cli(server: &ProviderServer, args: &[&str]) -> harness::Ran {
    harness::run(
        harness::batchgen()
            .arg("run")
            .arg("--no-preflight")
            .args(args)
            .env("OPENAI_API_KEY", OPENAI_KEY)
            .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
            .env("OPENAI_BASE_URL", server.openai_base_url())
            .env("ANTHROPIC_BASE_URL", server.anthropic_base_url()),
    )
}
