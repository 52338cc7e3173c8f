//! Decoding speed of the embedded local model: tokens per second for one
//! sequence, for a batch of 8 decoded together, and for 32 (the size the
//! model decodes together): medians over rounds of one run each. Run in release by
//! `cargo xtask bench-local [MODEL]`; with `BENCH_LOCAL_JOB=FILE` it also
//! writes the job of the llama.cpp reference that the xtask runs next.

use batchgen::local::EmbeddedModel;

/// The allocator the `batchgen` binary uses, so that the figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use batchgen::bindings::LocalRequest;
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
    let cache = batchgen::plugin::cache::default_dir();
    let path = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => batchgen::local::embedded::default_model::path(cache.as_deref()).expect("the default model is fetched"),
    };
    let started = Instant::now();
    // The job for the llama.cpp reference that `cargo xtask bench-local`
    // runs next: the same model, the biggest batch's prompts, one by one.
    if let Some(job) = std::env::var_os("BENCH_LOCAL_JOB") {
        let prompts: Vec<String> = requests(32, 64).into_iter().map(|r| r.prompt).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let text = serde_json::json!({"model": path, "max_tokens": 64, "threads": threads, "prompts": prompts});
        std::fs::write(&job, text.to_string()).expect("the reference's job is written");
    }
    let model = EmbeddedModel::load(&path, 1).expect("the model loads");
    println!("load {:.2} s, resident {}", started.elapsed().as_secs_f64(), memory("VmRSS"));
    let max_tokens = 64;
    let sizes = [1usize, 8, 32];
    // Rounds of one run per size, and each ratio taken within its round:
    // the machine's speed drifts over minutes, and runs seconds apart
    // share its state, so a ratio is not skewed by a drift between a slow
    // single run and a fast batch or the reverse.
    let rounds = 5;
    let mut rates = vec![Vec::new(); sizes.len()];
    let mut tokens = vec![0; sizes.len()];
    for _ in 0..rounds {
        for (i, &size) in sizes.iter().enumerate() {
            let requests = requests(size, max_tokens);
            let started = Instant::now();
            let results = model.generate(&requests);
            let seconds = started.elapsed().as_secs_f64();
            tokens[i] = results.iter().map(|r| r.as_ref().expect("generates").output_tokens).sum::<u32>();
            rates[i].push(f64::from(tokens[i]) / seconds);
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    for (i, &size) in sizes.iter().enumerate() {
        let rate = median(rates[i].clone());
        let ratio = if i == 0 {
            String::new()
        } else {
            let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(batch, single)| batch / single).collect();
            let (low, high) = ratios.iter().fold((f64::MAX, 0f64), |(low, high), &r| (low.min(r), high.max(r)));
            format!(", {:.2}x one sequence (rounds {low:.2}–{high:.2})", median(ratios))
        };
        println!("batch {size:>2}: {} tokens per run, {rate:.1} tokens/s{ratio}", tokens[i]);
    }
    println!("medians of {rounds} rounds");
    println!("peak resident memory {}", memory("VmHWM"));
}

/// A line of /proc/self/status (Linux), such as the resident or peak
/// resident memory.
fn memory(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map_or("unknown".into(), |value| value.trim().to_string())
}
