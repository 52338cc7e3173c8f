//! Decoding speed of the embedded local model: tokens per second for one
//! sequence, for a batch of 16 decoded together, and for 32 (the size the
//! model decodes together), each the median of three runs. Run in release by
//! `cargo xtask bench-local [MODEL]`.

use batchgen::local::EmbeddedModel;

/// The allocator the `batchgen` binary uses, so that the figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use batchgen::plugin::bindings::LocalRequest;
use std::path::PathBuf;
use std::time::Instant;

const PROMPTS: [&str; 16] = [
    "Write a short story about a lighthouse keeper.",
    "Explain how rainbows form.",
    "Describe the water cycle for a child.",
    "List some uses of copper.",
    "Tell me about the history of tea.",
    "Why do cats purr?",
    "Describe a busy market in the morning.",
    "Explain what a compiler does.",
    "Write a poem about autumn leaves.",
    "How do bees make honey?",
    "Describe the surface of Mars.",
    "Explain the rules of chess briefly.",
    "What makes bread rise?",
    "Describe a thunderstorm at sea.",
    "Why is exercise good for the heart?",
    "Tell me about the invention of the printing press.",
];

fn requests(count: usize, max_tokens: u32) -> Vec<LocalRequest> {
    // Beyond 16 the prompts repeat: a repeated row costs the same work.
    PROMPTS
        .iter()
        .cycle()
        .take(count)
        .map(|prompt| LocalRequest {
            model: None,
            system_prompt: None,
            prompt: prompt.to_string(),
            // Sampling keeps answers from ending early, as greedy ones may.
            temperature: 0.8,
            top_p: 0.95,
            max_tokens,
        })
        .collect()
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(batchgen::local::embedded::DEFAULT_MODEL));
    let cache = batchgen::plugin::cache::default_dir();
    let started = Instant::now();
    let model = EmbeddedModel::load(&path, cache.as_deref(), 1).expect("the model loads");
    println!("load (converted weights cached)  {:.2} s, resident {}", started.elapsed().as_secs_f64(), memory("VmRSS"));
    let max_tokens = 64;
    let mut single_rate = 0.0;
    for batch in [1usize, 16, 32] {
        let requests = requests(batch, max_tokens);
        // The median of three runs: one run on a shared machine is noisy.
        let mut runs: Vec<(u32, f64)> = (0..3)
            .map(|_| {
                let started = Instant::now();
                let results = model.generate(&requests);
                let seconds = started.elapsed().as_secs_f64();
                (
                    results
                        .iter()
                        .map(|r| r.as_ref().expect("generates").output_tokens)
                        .sum(),
                    seconds,
                )
            })
            .collect();
        runs.sort_by(|a, b| (f64::from(a.0) / a.1).total_cmp(&(f64::from(b.0) / b.1)));
        let (tokens, seconds) = runs[1];
        let rate = f64::from(tokens) / seconds;
        if batch == 1 {
            single_rate = rate;
        }
        println!(
            "batch {batch:>2}: {tokens:>4} tokens in {seconds:.2} s = {rate:.1} tokens/s (median of 3){}",
            if batch > 1 {
                format!(", {:.2}x one sequence", rate / single_rate)
            } else {
                String::new()
            }
        );
    }
    println!("peak resident memory {}", memory("VmHWM"));
}

/// A line of /proc/self/status (Linux), such as the resident or peak
/// resident memory.
fn memory(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')).map_or("unknown".into(), |value| value.trim().to_string())
}
