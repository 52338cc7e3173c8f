//! What structured output costs on the embedded model: the same 16 review
//! prompts decoded together, greedy, at most 96 new tokens each, with and
//! without a JSON schema (a string enum, a bounded integer, a bounded
//! string) constraining the decoding. Rounds interleave the two and the
//! figures are medians. Run in release by `cargo xtask bench-schema`.
//!
//! Tokens per second are per generated token; the rows write different
//! numbers of tokens with and without the schema (JSON is longer than a
//! free answer, or shorter), which the bench prints beside them.

use batchgen::bindings::LocalRequest;
use batchgen::local::EmbeddedModel;
use std::time::Instant;

/// The allocator the `batchgen` binary uses, so that the figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 5;
const ROWS: usize = 16;
const MAX_TOKENS: u32 = 96;

fn main() {
    let path = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => batchgen::local::embedded::catalog::default_path(batchgen::plugin::cache::default_dir().as_deref())
            .expect("the default model is fetched"),
    };
    let model = EmbeddedModel::load(&path, 0).expect("the model loads");
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "topic": {"type": "string", "maxLength": 24}
        },
        "required": ["sentiment", "stars", "topic"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let subjects = ["film", "meal", "hotel", "phone", "book", "concert", "game", "car"];
    let prompts: Vec<String> = (0..ROWS)
        .map(|i| format!("Review: I {} the {}. Rate it.", if i % 2 == 0 { "loved" } else { "hated" }, subjects[i % 8]))
        .collect();
    let requests = |schema: Option<String>| -> Vec<LocalRequest> {
        prompts
            .iter()
            .map(|prompt| LocalRequest {
                model: None,
                system_prompt: Some("Rate the review.".into()),
                prompt: prompt.clone(),
                temperature: 0.0,
                top_p: 1.0,
                max_tokens: MAX_TOKENS,
                json_schema: schema.clone(),
            })
            .collect()
    };
    // A first call builds the schema's token index (once per model).
    let _ = model.generate(&requests(Some(schema.to_string()))[..1]);
    let mut rates = [Vec::new(), Vec::new()];
    let mut tokens_per_row = [0.0, 0.0];
    let mut valid = 0;
    for _ in 0..ROUNDS {
        for (which, schema) in [None, Some(schema.to_string())].into_iter().enumerate() {
            let constrained = schema.is_some();
            let batch = requests(schema);
            let started = Instant::now();
            let results = model.generate(&batch);
            let seconds = started.elapsed().as_secs_f64();
            let completions: Vec<_> = results.into_iter().map(|r| r.expect("a row decodes")).collect();
            let tokens: u32 = completions.iter().map(|c| c.output_tokens).sum();
            rates[which].push(f64::from(tokens) / seconds);
            tokens_per_row[which] = f64::from(tokens) / ROWS as f64;
            if constrained {
                valid += completions
                    .iter()
                    .filter(|c| serde_json::from_str(&c.text).is_ok_and(|v| validator.is_valid(&v)))
                    .count();
            }
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (free, constrained) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("{ROWS} prompts decoded together, greedy, at most {MAX_TOKENS} tokens, {ROUNDS} rounds (medians)");
    println!("{:<22} {:>12} {:>16}", "", "tokens/s", "tokens per row");
    println!("{:<22} {free:>12.1} {:>16.1}", "free text", tokens_per_row[0]);
    println!("{:<22} {constrained:>12.1} {:>16.1}", "under the schema", tokens_per_row[1]);
    println!("valid JSON under the schema: {valid}/{}", ROUNDS * ROWS);
    println!("cost of the constraint: {:+.1}% tokens/s", (constrained / free - 1.0) * 100.0);
}
