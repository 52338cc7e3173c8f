//! Embedding batchgen in a Rust program: the same run as the CLI, driven
//! through the library.
//!
//! `cargo run --release --example embed` after `batchgen fetch-model`: it
//! generates answers for `examples/questions.jsonl` with the embedded
//! `Local` model and prints the summary. Point `RunOptions` at a provider
//! (`job.generation_model`, `keys`, `endpoints`) to use one instead.

use batchgen::config::Job;
use batchgen::run::{RunOptions, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let job = Job {
        generation_model: "Local".into(),
        system_prompt: Some("Answer in one short sentence.".into()),
        input_column: "question".into(),
        output_column: "answer".into(),
        max_tokens: 24,
        ..Job::default()
    };
    let options =
        RunOptions { fresh: true, ..RunOptions::new("examples/questions.jsonl", "target/embed-answers.jsonl", job) };
    let summary = run(&options).await?;
    println!("{summary}");
    for line in std::fs::read_to_string(&options.output)?.lines().take(3) {
        println!("{line}");
    }
    Ok(())
}
