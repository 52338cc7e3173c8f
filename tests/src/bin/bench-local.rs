//! Decoding speed of the embedded local model beside llama.cpp as users run
//! it, on one job: the same model file, the same 32 prompts, greedy, at most
//! 64 new tokens each, the same number of threads.
//!
//! - batchgen's engine answers the 32 prompts in calls of 1, 8 and 32 rows
//!   (what `--batch-size` gives it);
//! - llama.cpp through llama-cpp-python, one prompt after another
//!   (`BENCH_LOCAL_PYTHON`: a Python with `llama_cpp`; `BENCH_LOCAL_SCRIPT`:
//!   xtask/anchor/llama_cpp_python.py);
//! - llama.cpp's own server with continuous batching (`BENCH_LOCAL_SERVER`:
//!   a `llama-server` binary), one per batch size N with N slots, sent the
//!   prompts by N clients at once: the batch size matched. (With more slots
//!   than clients the server spreads requests over its slots, and the gaps
//!   between them split its passes: a handicap, not a setting users pick.)
//!
//! Rounds interleave every engine and size, and the figures are medians:
//! the machine's speed drifts over minutes, and runs seconds apart share its
//! state. Greedy decoding makes the engines' texts comparable: the bench
//! prints how many of llama.cpp's answers equal batchgen's. Run in release
//! by `cargo xtask bench-local [MODEL]`, which builds the references.

use batchgen::bindings::LocalRequest;
use batchgen::local::EmbeddedModel;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The allocator the `batchgen` binary uses, so that the figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPICS: [&str; 16] = [
    "a lighthouse keeper",
    "how rainbows form",
    "the water cycle",
    "the uses of copper",
    "the history of tea",
    "why cats purr",
    "a busy market in the morning",
    "what a compiler does",
    "autumn leaves",
    "how bees make honey",
    "the surface of Mars",
    "the rules of chess",
    "what makes bread rise",
    "a thunderstorm at sea",
    "why exercise is good for the heart",
    "the invention of the printing press",
];
const MAX_TOKENS: u32 = 64;
/// Rounds by default; `BENCH_LOCAL_ROUNDS` sets more, for a narrower
/// median of a small difference.
const ROUNDS: usize = 5;

/// The prompts of one round: each new from its first word, as the rows of a
/// job are, so that no engine answers from a cache of the prompts it saw
/// before. What every prompt of a job shares, the chat template and system
/// prompt, both may reuse. The row number goes first: with the topic first
/// and a variant number last, as here before, prompt 17 began as prompt 1
/// did, and llama.cpp's server, which keeps past prompts' caches in RAM
/// (`--cache-ram`) and starts from the one that shares the most, decoded 30%
/// fewer prompt tokens than batchgen, which keeps the last prompt's: a
/// repetition of the bench, not of a job (docs/benchmarks.md).
fn prompts(round: usize) -> Vec<String> {
    (0..32).map(|i| format!("Row {}: write two sentences about {}.", round * 32 + i + 1, TOPICS[i % 16])).collect()
}

/// One timed run: output tokens, seconds, and the texts in prompt order.
struct Run {
    tokens: u64,
    seconds: f64,
    texts: Vec<String>,
}

impl Run {
    /// Output tokens per second.
    fn rate(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
}

fn main() {
    let cache = batchgen::plugin::cache::default_dir();
    let path = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => {
            batchgen::local::embedded::catalog::default_path(cache.as_deref()).expect("the default model is fetched")
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let model = EmbeddedModel::load(&path, 1).expect("the model loads");
    println!("batchgen: load {:.2} s, resident {} KiB", started.elapsed().as_secs_f64(), memory(None, "VmRSS"));
    let mut python = std::env::var_os("BENCH_LOCAL_PYTHON").map(|python| {
        let script = std::env::var_os("BENCH_LOCAL_SCRIPT").expect("BENCH_LOCAL_SCRIPT names the reference script");
        Reference::start(Path::new(&python), Path::new(&script), &path, threads)
    });
    // BENCH_LOCAL_SIZES (say `32`) narrows a run to some sizes, e.g. for a profiler.
    let sizes: Vec<usize> = std::env::var("BENCH_LOCAL_SIZES")
        .map(|list| list.split(',').map(|n| n.trim().parse().expect("BENCH_LOCAL_SIZES: sizes like 1,8,32")).collect())
        .unwrap_or_else(|_| vec![1, 8, 32]);
    // One server per size; idle, they wait without using the CPU.
    let servers: Vec<Server> = std::env::var_os("BENCH_LOCAL_SERVER")
        .map(|binary| sizes.iter().map(|&size| Server::start(Path::new(&binary), &path, threads, size)).collect())
        .unwrap_or_default();
    let mut ours: Vec<Vec<Run>> = sizes.iter().map(|_| Vec::new()).collect();
    let mut theirs_one: Vec<Run> = Vec::new();
    let mut theirs_server: Vec<Vec<Run>> = sizes.iter().map(|_| Vec::new()).collect();
    let rounds: usize = std::env::var("BENCH_LOCAL_ROUNDS")
        .map(|n| n.trim().parse().ok().filter(|&n| n > 0).expect("BENCH_LOCAL_ROUNDS: a number of rounds, 1 or more"))
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        let prompts = prompts(round);
        // Who goes first alternates between rounds, so that neither engine
        // always runs in the other's wake.
        let server_first = round % 2 == 1;
        for (i, &size) in sizes.iter().enumerate() {
            let server_run = |theirs: &mut Vec<Run>| {
                if let Some(server) = servers.get(i) {
                    theirs.push(server.run(&prompts, size));
                }
            };
            if server_first {
                server_run(&mut theirs_server[i]);
            }
            ours[i].push(batchgen_run(&model, &prompts, size));
            if !server_first {
                server_run(&mut theirs_server[i]);
            }
        }
        if let Some(python) = python.as_mut() {
            theirs_one.push(python.run(&prompts));
        }
        eprintln!("bench-local: round {} of {rounds} done", round + 1);
    }

    let cpu = std::env::var("BENCH_LOCAL_CPU").unwrap_or_else(|_| "as built".into());
    let repack = if no_repack() { ", references without repacked weights" } else { "" };
    println!(
        "\n32 prompts per round, greedy, at most {MAX_TOKENS} new tokens each, {threads} threads, {cpu} build{repack}; output tokens/s, median of {rounds} rounds (range); texts compared in the first round"
    );
    let reference_texts = &ours[0][0].texts;
    for (i, &size) in sizes.iter().enumerate() {
        report(&format!("batchgen embedded, batch size {size}"), &ours[i], reference_texts);
    }
    if !theirs_one.is_empty() {
        report("llama.cpp via llama-cpp-python, one at a time", &theirs_one, reference_texts);
    }
    if !servers.is_empty() {
        for (i, &size) in sizes.iter().enumerate() {
            report(&format!("llama.cpp server, {size} slots, {size} clients"), &theirs_server[i], reference_texts);
        }
        // Each round runs batchgen and the server back to back, so the ratio
        // within a round leaves out the drift between rounds.
        println!("\nbatchgen ÷ server, round by round: median (range)");
        for (i, &size) in sizes.iter().enumerate() {
            let (median, low, high) =
                spread(ours[i].iter().zip(&theirs_server[i]).map(|(a, b)| a.rate() / b.rate()).collect());
            println!("  batch size {size:<3} {median:.3}  ({low:.3}–{high:.3})");
        }
    }
    println!("\npeak resident memory (KiB)");
    println!("  batchgen embedded            {}", memory(None, "VmHWM"));
    if let Some(python) = python.as_mut() {
        println!("  llama-cpp-python             {}", python.peak_rss_kib);
    }
    for (server, size) in servers.iter().zip(&sizes) {
        println!("  llama.cpp server, {size:>2} slots    {}", memory(Some(server.child.id()), "VmHWM"));
    }
}

fn report(label: &str, runs: &[Run], reference_texts: &[String]) {
    let (median, low, high) = spread(runs.iter().map(Run::rate).collect());
    let same = runs[0].texts.iter().zip(reference_texts).filter(|(a, b)| a.trim() == b.trim()).count();
    println!(
        "  {label:<48} {median:>7.1}  ({low:.1}–{high:.1})  {} tokens, {same}/{} texts equal batchgen's",
        runs[0].tokens,
        reference_texts.len()
    );
}

/// The median of `values`, and their lowest and highest.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn requests(prompts: &[String]) -> Vec<LocalRequest> {
    prompts
        .iter()
        .map(|prompt| LocalRequest {
            model: None,
            system_prompt: None,
            prompt: prompt.clone(),
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: MAX_TOKENS,
            json_schema: None,
        })
        .collect()
}

/// The prompts in calls of `size` rows, as `batchgen run --batch-size size`
/// hands them to the engine.
fn batchgen_run(model: &EmbeddedModel, prompts: &[String], size: usize) -> Run {
    let requests = requests(prompts);
    let started = Instant::now();
    let mut run = Run { tokens: 0, seconds: 0.0, texts: Vec::new() };
    for chunk in requests.chunks(size) {
        for result in model.generate(chunk) {
            let completion = result.expect("the embedded model generates");
            run.tokens += u64::from(completion.output_tokens);
            run.texts.push(completion.text);
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

/// llama-cpp-python in a child process, driven one round at a time.
struct Reference {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    peak_rss_kib: u64,
}

impl Reference {
    fn start(python: &Path, script: &Path, model: &Path, threads: usize) -> Reference {
        let job = std::env::temp_dir().join(format!("bench-local-{}.json", std::process::id()));
        let text = serde_json::json!({
            "model": model, "max_tokens": MAX_TOKENS, "threads": threads, "no_repack": no_repack(),
        });
        std::fs::write(&job, text.to_string()).expect("the reference's job is written");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&job)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the llama-cpp-python reference starts");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the reference starts");
        assert_eq!(line.trim(), "ready", "the reference did not load the model");
        Reference { _child: child, stdin, stdout, peak_rss_kib: 0 }
    }

    fn run(&mut self, prompts: &[String]) -> Run {
        writeln!(self.stdin, "{}", serde_json::json!(prompts)).expect("the reference reads");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the reference answers");
        let value: serde_json::Value = serde_json::from_str(&line).expect("the reference answers in JSON");
        self.peak_rss_kib = value["peak_rss_kib"].as_u64().unwrap_or(0);
        Run {
            tokens: value["tokens"].as_u64().unwrap_or(0),
            seconds: value["seconds"].as_f64().unwrap_or(f64::NAN),
            texts: value["texts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t.as_str().unwrap_or("").to_string())
                .collect(),
        }
    }
}

/// llama.cpp's server with `slots` slots on a free local port.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(binary: &Path, model: &Path, threads: usize, slots: usize) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let threads = threads.to_string();
        let child = Command::new(binary)
            .arg("--model")
            .arg(model)
            .args(["--port", &port.to_string(), "--threads", &threads, "--threads-batch", &threads])
            // Slots of 256 tokens each, enough for a prompt and its answer.
            .args(["--parallel", &slots.to_string(), "--ctx-size", &(256 * slots).to_string()])
            .args(["--cont-batching", "--no-webui"])
            .args(no_repack().then_some("--no-repack"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let server = Server { child, port };
        for _ in 0..600 {
            if server.get("/health").is_some_and(|body| body.contains("ok")) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("llama-server did not become ready within 60 s");
    }

    /// The prompts sent by `clients` clients at once, each taking the next
    /// prompt as soon as its last one is answered.
    fn run(&self, prompts: &[String], clients: usize) -> Run {
        let next = AtomicUsize::new(0);
        let mut answers: Vec<Option<(u64, String)>> = vec![None; prompts.len()];
        let started = Instant::now();
        let answered: Vec<Vec<(usize, u64, String)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..clients)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(prompt) = prompts.get(i) else { return mine };
                            let body = serde_json::json!({
                                "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": MAX_TOKENS,
                                "temperature": 0.0,
                            });
                            let reply = self.post("/v1/chat/completions", &body.to_string());
                            let value: serde_json::Value =
                                serde_json::from_str(&reply).expect("llama-server answers JSON");
                            // llama-server counts the end token among the completion
                            // tokens of an answer that stopped; batchgen, like the
                            // providers, does not: counted alike, equal texts have
                            // equal counts.
                            let stopped = value["choices"][0]["finish_reason"] == "stop";
                            let tokens = value["usage"]["completion_tokens"]
                                .as_u64()
                                .expect("llama-server reports usage")
                                .saturating_sub(u64::from(stopped));
                            let text = value["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
                            mine.push((i, tokens, text));
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("a client thread")).collect()
        });
        let seconds = started.elapsed().as_secs_f64();
        for (i, tokens, text) in answered.into_iter().flatten() {
            answers[i] = Some((tokens, text));
        }
        let answers: Vec<(u64, String)> = answers.into_iter().map(|a| a.expect("every prompt answered")).collect();
        Run { tokens: answers.iter().map(|a| a.0).sum(), seconds, texts: answers.into_iter().map(|a| a.1).collect() }
    }

    fn get(&self, path: &str) -> Option<String> {
        self.exchange(&format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
    }

    fn post(&self, path: &str, body: &str) -> String {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        self.exchange(&request).expect("llama-server answers")
    }

    /// One HTTP/1.1 exchange on its own connection: the body of the answer.
    fn exchange(&self, request: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the references run without llama.cpp's repacked weight buffers
/// (`BENCH_LOCAL_NO_REPACK`, set by xtask where a native build's AMX path
/// would take them and crash).
fn no_repack() -> bool {
    std::env::var_os("BENCH_LOCAL_NO_REPACK").is_some()
}

/// A line of /proc/PID/status (Linux; this process without a PID), such as
/// the resident or peak resident memory, in KiB.
fn memory(pid: Option<u32>, field: &str) -> String {
    let file = pid.map_or("/proc/self/status".to_string(), |pid| format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(file).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
