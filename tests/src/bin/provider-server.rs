//! The test provider server as a process, for benchmarks and trying
//! batchgen by hand: `provider-server [--latency-ms N]`. Prints the OpenAI
//! and Anthropic base URLs, then serves until killed.

use batchgen_tests::provider::{ProviderServer, ServerOptions};
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
            other => panic!("unknown argument {other:?}; expected --latency-ms N or --api-key KEY"),
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
