//! `cargo xtask bench`: throughput against the stand-in provider, batchgen
//! and what users write instead (the official `openai` SDK's `AsyncOpenAI`
//! under a semaphore, `anchor/openai_sdk.py`) side by side in one run, with
//! no faults, a real rate limit and random transient faults.

use super::{Measured, StandIn, cargo, python_with, root, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Requests in flight, for both.
const BATCH: u64 = 128;
/// Attempts per row, for both (batchgen's default).
const ATTEMPTS: u64 = 5;

struct Scenario {
    name: &'static str,
    rows: u64,
    latency_ms: u64,
    server: &'static [&'static str],
    /// The server's rate limit, requests per second, if any.
    rate: Option<u64>,
}

impl Scenario {
    /// The least time any client can take: `rows / 128 x latency` with
    /// 128 in flight, or under a rate limit, the rows beyond the bucket's
    /// one second's worth at its rate. `None` under random faults, whose
    /// retries have no such bound.
    fn ideal(&self) -> Option<f64> {
        if !self.server.is_empty() && self.rate.is_none() {
            return None;
        }
        let latency = self.rows as f64 / BATCH as f64 * self.latency_ms as f64 / 1000.0;
        let rate = self.rate.map_or(0.0, |rate| self.rows.saturating_sub(rate) as f64 / rate as f64);
        Some(latency.max(rate))
    }
}

const SCENARIOS: [Scenario; 4] = [
    Scenario { name: "no faults, 50 ms", rows: 3000, latency_ms: 50, server: &[], rate: None },
    Scenario { name: "no faults, 200 ms", rows: 3000, latency_ms: 200, server: &[], rate: None },
    Scenario {
        name: "rate limit 300 req/s, 50 ms",
        rows: 3000,
        latency_ms: 50,
        server: &["--rate-limit", "300"],
        rate: Some(300),
    },
    Scenario {
        name: "random faults, 20 ms",
        rows: 1500,
        latency_ms: 20,
        server: &["--faults", "seed=1,429=0.15,500=0.05,529=0.03,malformed=0.02,reset=0.02"],
        rate: None,
    },
];

/// One run's figures.
struct Figures {
    wall: f64,
    failed: u64,
    cpu_per_row_ms: f64,
    /// batchgen only: cuts, mean concurrency, 429/503/529 answers.
    pace: Option<(u64, f64, u64)>,
}

/// Every scenario, or with `ROWS LATENCY_MS` one without faults.
pub fn bench(args: Vec<String>) -> Result<(), String> {
    run(cargo()
        .args(["build", "--locked", "--release", "--package", "batchgen", "--package", "batchgen-tests"])
        .args(["--bin", "batchgen", "--bin", "provider-server"]))?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // The SDK, in a virtual environment the bench makes once.
    let anchor = python_with(&dir, "anchor-venv", "openai", "openai>=1.40,<4", &[]);
    if let Err(reason) = &anchor {
        println!("(no SDK anchor: {reason})");
    }
    let scenarios: Vec<Scenario> = match args.as_slice() {
        [] => SCENARIOS.into_iter().collect(),
        [rows, latency] => {
            let number = |a: &String| a.parse::<u64>().map_err(|e| format!("{a}: {e}"));
            vec![Scenario {
                name: "no faults",
                rows: number(rows)?,
                latency_ms: number(latency)?,
                server: &[],
                rate: None,
            }]
        }
        _ => return Err("usage: cargo xtask bench [ROWS LATENCY_MS]".into()),
    };
    warm_up(&dir)?;
    println!(
        "batch size {BATCH}, {ATTEMPTS} attempts; wall time of the whole process; ideal: the least any client can take"
    );
    println!(
        "{:<30} {:>6} {:>9} {:>6} {:>7} {:>5} {:>9} {:>9} {:>8} | {:>9} {:>7}",
        "scenario", "rows", "batchgen", "ideal", "failed", "cuts", "mean conc", "throttled", "CPU/row", "SDK", "failed"
    );
    for scenario in &scenarios {
        let ours = measure(&dir, scenario, None)?;
        let theirs = anchor.as_ref().ok().map(|python| measure(&dir, scenario, Some(python))).transpose()?;
        let (cuts, mean, throttled) = ours.pace.unwrap_or_default();
        println!(
            "{:<30} {:>6} {:>8.2}s {:>6} {:>7} {:>5} {:>9.1} {:>9} {:>6.3}ms | {:>8} {:>7}",
            scenario.name,
            scenario.rows,
            ours.wall,
            scenario.ideal().map_or("-".into(), |ideal| format!("{:.2}", ideal / ours.wall)),
            ours.failed,
            cuts,
            mean,
            throttled,
            ours.cpu_per_row_ms,
            theirs.as_ref().map_or("-".into(), |t| format!("{:.2}s", t.wall)),
            theirs.as_ref().map_or("-".into(), |t| t.failed.to_string()),
        );
    }
    Ok(())
}

/// Compiles the component into the bench's cache once, so every figure is
/// a steady run's.
fn warm_up(dir: &Path) -> Result<(), String> {
    let mut server = StandIn::start(&release().join("provider-server"))?;
    let input = dir.join("warm-up.jsonl");
    std::fs::write(&input, "{\"prompt\": \"hi\"}\n").map_err(|e| e.to_string())?;
    let result = Measured::run(batchgen(dir, &input, &server.openai_base_url).stdout(Stdio::null()));
    server.stop();
    result.map(|_| ())
}

fn release() -> PathBuf {
    root().join("target/release")
}

/// `batchgen run` over `input` against the server at `base`.
fn batchgen(dir: &Path, input: &Path, base: &str) -> Command {
    let mut command = Command::new(release().join("batchgen"));
    command
        .args(["run", "--input"])
        .arg(input)
        .arg("--output")
        .arg(dir.join("output.jsonl"))
        .arg("--report")
        .arg(dir.join("report.json"))
        .args(["--generation-model", "gpt-4o-mini", "--input-column", "prompt", "--output-column", "answer"])
        .args(["--batch-size", &BATCH.to_string(), "--max-attempts", &ATTEMPTS.to_string()])
        // Every run generates every row: without it, a second run would
        // only read the first one's saved work.
        .arg("--fresh")
        .env("OPENAI_BASE_URL", base)
        .env("OPENAI_API_KEY", "bench-key")
        .env("BATCHGEN_CACHE_DIR", dir.join("component-cache"))
        .stderr(Stdio::null());
    command
}

/// Runs `scenario` on a fresh stand-in server: batchgen, or the anchor
/// with `python`.
fn measure(dir: &Path, scenario: &Scenario, python: Option<&Path>) -> Result<Figures, String> {
    let input = dir.join(format!("input-{}.jsonl", scenario.rows));
    let text: String = (0..scenario.rows)
        .map(|i| format!("{{\"id\": {i}, \"prompt\": \"Write one sentence about the number {i}.\"}}\n"))
        .collect();
    std::fs::write(&input, text).map_err(|e| e.to_string())?;
    let latency = scenario.latency_ms.to_string();
    let mut args = vec!["--latency-ms", latency.as_str()];
    args.extend_from_slice(scenario.server);
    let mut server = StandIn::start_with(&release().join("provider-server"), &args)?;
    let result = match python {
        None => Measured::run(&mut batchgen(dir, &input, &server.openai_base_url)),
        Some(python) => Measured::run(
            Command::new(python)
                .arg(root().join("xtask/anchor/openai_sdk.py"))
                .arg(&input)
                .args([BATCH.to_string(), ATTEMPTS.to_string()])
                .env("OPENAI_BASE_URL", &server.openai_base_url)
                .stdout(std::fs::File::create(dir.join("anchor.json")).map_err(|e| e.to_string())?)
                .stderr(Stdio::null()),
        ),
    };
    server.stop();
    let measured = result?;
    let cpu_per_row_ms = (measured.user + measured.system) * 1000.0 / scenario.rows as f64;
    let read = |name: &str| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        serde_json::from_str(text.trim()).map_err(|e| format!("{name}: {e}"))
    };
    match python {
        None => {
            if measured.exit > 1 {
                return Err(format!("batchgen exited with {} on {}", measured.exit, scenario.name));
            }
            let report = read("report.json")?;
            let number = |key: &str| report[key].as_u64().unwrap_or(0);
            let mean = report["mean_concurrency"].as_f64().unwrap_or(0.0);
            let pace = Some((number("rate_limit_cuts"), mean, number("throttled")));
            Ok(Figures { wall: measured.wall, failed: number("failed"), cpu_per_row_ms, pace })
        }
        Some(_) => {
            let result = read("anchor.json")?;
            let failed = result["failed"].as_u64().unwrap_or(0);
            Ok(Figures { wall: measured.wall, failed, cpu_per_row_ms, pace: None })
        }
    }
}
