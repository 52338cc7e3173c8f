//! The test provider server as a process, for benchmarks and trying
//! batchgen by hand. Prints the OpenAI and Anthropic base URLs, then serves
//! until killed.
//!
//! `provider-server [--latency-ms N] [--api-key KEY] [--rate-limit PER_SECOND]
//! [--faults seed=S,429=R,500=R,529=R,reset=R,hang=R,truncate=R,malformed=R]
//! [--overload-burst FIRST:COUNT] [--batch-polls N] [--batch-token-limit TOKENS]`
//!
//! `--batch-polls` is how many fetches of a batch answer `in_progress`
//! (default 1); `--batch-token-limit` is OpenAI's enqueued-token limit per
//! model (default none).

use batchgen_tests::provider::{FaultPlan, ProviderServer, ServerOptions};
use std::time::Duration;

fn main() {
    let mut options = ServerOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--latency-ms" => {
                let value = args.next().and_then(|v| v.parse().ok()).expect("--latency-ms takes a number");
                options.latency = Duration::from_millis(value);
            }
            "--api-key" => options.api_key = Some(args.next().expect("--api-key takes a value")),
            "--rate-limit" => {
                let value = args.next().and_then(|v| v.parse().ok()).expect("--rate-limit takes requests per second");
                options.rate_limit_per_second = Some(value);
            }
            "--faults" => options.faults = faults(&args.next().expect("--faults takes a list")),
            "--overload-burst" => {
                let value = args.next().expect("--overload-burst takes FIRST:COUNT");
                let (first, count) = value.split_once(':').expect("--overload-burst takes FIRST:COUNT");
                options.overload_burst = Some((first.parse().expect("FIRST"), count.parse().expect("COUNT")));
            }
            "--batch-polls" => {
                options.batch_polls = args.next().and_then(|v| v.parse().ok()).expect("--batch-polls takes a number");
            }
            "--batch-token-limit" => {
                let value = args.next().and_then(|v| v.parse().ok()).expect("--batch-token-limit takes a number");
                options.batch_token_limit = Some(value);
            }
            other => panic!("unknown argument {other:?}; see the source's first lines"),
        }
    }
    let server = ProviderServer::start_with(options);
    // One write; a reader that stops after the first line must not kill us.
    let urls =
        format!("OPENAI_BASE_URL={}\nANTHROPIC_BASE_URL={}\n", server.openai_base_url(), server.anthropic_base_url());
    let _ = std::io::Write::write_all(&mut std::io::stdout(), urls.as_bytes());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    loop {
        std::thread::park();
    }
}

/// `seed=S,429=R,...`: a fault plan.
fn faults(list: &str) -> FaultPlan {
    let mut plan = FaultPlan::default();
    for item in list.split(',') {
        let (name, value) = item.split_once('=').expect("faults are NAME=VALUE");
        let rate = || value.parse::<f64>().expect("a rate is a number");
        match name {
            "seed" => plan.seed = value.parse().expect("the seed is a number"),
            "429" => plan.rate_429 = rate(),
            "500" => plan.rate_500 = rate(),
            "529" => plan.rate_529 = rate(),
            "reset" => plan.rate_reset = rate(),
            "hang" => plan.rate_hang = rate(),
            "truncate" => plan.rate_truncate = rate(),
            "malformed" => plan.rate_malformed = rate(),
            other => panic!("unknown fault {other:?}"),
        }
    }
    plan
}
