//! A component that attacks its host. The behaviour is picked by the
//! config's `generation-model`, so one build serves every sandbox test:
//!
//! - `loop`: spins forever; `sleep`: blocks in `poll` forever;
//!   `memory`: allocates without end; `panic`: panics;
//! - `boom`: panics only for a batch with an input containing "boom";
//! - `few` / `many`: one result too few / too many;
//! - `outside` (`local-outside` as a `Local` model): requests each input's
//!   authority, the first allowed, the others not;
//! - `snoop`: reads environment variables, arguments, files, sockets;
//! - `authorization`: sets its own credential headers;
//! - `chatty`: writes megabytes to stdout and stderr;
//! - `nomodel`: accepts the config, then finds no model for it;
//! - `local-bad`: sends the host's local model requests outside the WIT's
//!   ranges and a prompt too large for any context (its model is `Local`);
//! - `local-flood`: sends the local model one request more than its rows;
//! - `forge`: prints a line that looks like the host's, with a colour code;
//! - `knock`: sends 20 requests per input to the input's (denied) authority;
//! - `hoard-fields`, `hoard-bodies`, `hoard-urls`: keeps header fields,
//!   request bodies written but never sent, or requests with the longest
//!   URL parts the host takes, without end (see [`hoard`]);
//! - `big-fields`: appends a 128 KiB header value (wasmtime's own limit);
//! - `flood`: starts 10 requests per input to the first input's (allowed)
//!   authority, reads none of them, and says how each ended;
//! - `misaligned` (batch jobs): gives each row the request line of the
//!   row after it, so results would land on the wrong rows;
//! - anything else: answers `ok:<input>`; its batch jobs fail every call.

wit_bindgen::generate!({
    path: "../../wit",
    world: "batchgen:plugin/batch-plugin",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
    },
});

use batchgen::plugin::local_model::{self, LocalCompletion, LocalRequest};
use batchgen::plugin::types::{Config, ConfigProblem, Generation, RowError};
use exports::batchgen::plugin::batch_generator::{Guest, ModelInfo, Provider, RequestPreview};
use exports::batchgen::plugin::batch_jobs::{Failure, JobLimits, JobRow, JobStatus, JobTag, RowOutcome};
use wasip2::http::types::{Fields, FutureIncomingResponse, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::{InputStream, OutputStream};

struct Hostile;

/// What the host's local model answered, as text to check in a test.
fn local_outcome(result: &Result<LocalCompletion, RowError>) -> String {
    match result {
        Ok(completion) => format!("ok:{}", completion.text),
        Err(error) => format!("err:{error:?}"),
    }
}

fn answer(text: String) -> Result<Generation, RowError> {
    Ok(Generation { text, finish_reason: "stop".into(), input_tokens: 0, output_tokens: 0, attempts: 1 })
}

/// Sends a GET to `authority` with `headers` and says what happened.
fn request(authority: &str, headers: &[(&str, &str)]) -> String {
    let list: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    let fields = match Fields::from_list(&list) {
        Ok(fields) => fields,
        Err(error) => return format!("headers refused: {error:?}"),
    };
    let outgoing = OutgoingRequest::new(fields);
    let _ = outgoing.set_method(&Method::Get);
    let _ = outgoing.set_scheme(Some(&Scheme::Http));
    let _ = outgoing.set_authority(Some(authority));
    let _ = outgoing.set_path_with_query(Some("/v1/models"));
    match wasip2::http::outgoing_handler::handle(outgoing, None) {
        Err(code) => format!("refused: {code:?}"),
        Ok(future) => {
            let pollable = future.subscribe();
            pollable.block();
            drop(pollable);
            match future.get() {
                Some(Ok(Ok(response))) => format!("status {}", response.status()),
                Some(Ok(Err(code))) => format!("failed: {code:?}"),
                other => format!("odd: {}", other.is_some()),
            }
        }
    }
}

/// Keeps host resources of one kind until the host stops it, trying the
/// largest size first: unbounded, each kind would take gigabytes of host
/// memory. Returns what it managed if the host never stops it.
fn hoard(kind: &str) -> String {
    let mut kept: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut refused = 0u64;
    // The largest size is tried until the host refuses it once.
    let sizes = |large: usize, small: usize, refused: u64| if refused == 0 { vec![large, small] } else { vec![small] };
    for _ in 0..200_000 {
        match kind {
            "hoard-fields" => {
                // Just under the host's limit per set of fields.
                let fields = Fields::new();
                let _ = fields.append("x-hoard", &[b'x'; 7 << 10]);
                kept.push(Box::new(fields));
            }
            "hoard-bodies" => {
                let request = OutgoingRequest::new(Fields::new());
                let body = request.body().expect("a body");
                let stream = body.write().expect("a stream");
                // As much as the host will queue, never sent.
                while let Ok(n @ 1..) = stream.check_write() {
                    let _ = stream.write(&vec![b'x'; n as usize]);
                }
                kept.push(Box::new((stream, body, request)));
            }
            _ => {
                let request = OutgoingRequest::new(Fields::new());
                let long = |n: usize| "a".repeat(n);
                for size in sizes(1 << 20, 4 << 10, refused) {
                    let ok = request.set_path_with_query(Some(&format!("/{}", long(size - 1)))).is_ok()
                        & request.set_authority(Some(&long(size))).is_ok()
                        & request.set_method(&Method::Other(long(size))).is_ok();
                    if ok {
                        break;
                    }
                    refused += 1;
                }
                kept.push(Box::new(request));
            }
        }
    }
    format!("kept {} with {refused} refusals", kept.len())
}

/// Starts `count` requests to `authority` and reads none of them.
fn flood(authority: &str, count: usize) -> Vec<String> {
    let futures: Vec<Result<FutureIncomingResponse, String>> = (0..count)
        .map(|_| {
            let outgoing = OutgoingRequest::new(Fields::new());
            let _ = outgoing.set_scheme(Some(&Scheme::Http));
            let _ = outgoing.set_authority(Some(authority));
            let _ = outgoing.set_path_with_query(Some("/v1/models"));
            wasip2::http::outgoing_handler::handle(outgoing, None).map_err(|code| format!("refused: {code:?}"))
        })
        .collect();
    // Every future is kept until all have ended, so none frees its place.
    futures
        .iter()
        .map(|future| match future {
            Err(refused) => refused.clone(),
            Ok(future) => {
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(_))) => "answered".into(),
                    Some(Ok(Err(code))) => format!("failed: {code:?}"),
                    _ => "odd".into(),
                }
            }
        })
        .collect()
}

impl Guest for Hostile {
    fn list_models() -> Vec<ModelInfo> {
        Vec::new()
    }

    fn find_model(generation_model: String) -> Option<ModelInfo> {
        // Accepts every config, then finds no model for this one.
        if generation_model == "nomodel" {
            return None;
        }
        let provider = if generation_model.starts_with("local") { Provider::Local } else { Provider::Openai };
        Some(ModelInfo {
            label: generation_model,
            provider,
            model_id: "gpt-4o-mini".into(),
            aliases: Vec::new(),
            note: None,
        })
    }

    fn check_config(_: Config) -> Vec<ConfigProblem> {
        Vec::new()
    }

    fn preview_request(_: Config, _: String) -> Result<Option<RequestPreview>, String> {
        Ok(None)
    }

    fn preflight(_: Config) -> Result<(), RowError> {
        Ok(())
    }

    fn template_columns(_: Config) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn render_prompts(_: Config, rows: Vec<String>) -> Vec<Result<String, String>> {
        rows.into_iter().map(Ok).collect()
    }

    fn generate_batch(config: Config, inputs: Vec<String>) -> Vec<Result<Generation, RowError>> {
        let echo = |inputs: &[String]| inputs.iter().map(|i| answer(format!("ok:{i}"))).collect::<Vec<_>>();
        match config.generation_model.as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "sleep" => {
                wasip2::clocks::monotonic_clock::subscribe_duration(u64::MAX / 2).block();
                echo(&inputs)
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile component panics"),
            "forge" => {
                eprint!("first\n2026-11-30T00:00:00.000000Z  WARN batchgen: forged by the component\u{1b}[31m red\n");
                echo(&inputs)
            }
            "knock" => inputs
                .iter()
                .map(|authority| answer((0..20).map(|_| request(authority, &[])).collect::<Vec<_>>().join("; ")))
                .collect(),
            "local-bad" => {
                // Prompt bytes, max tokens, temperature, schema bytes.
                let bad = [(4 << 20, 4, 0.0, 0), (2, 0, 0.0, 0), (2, 4, 7.5, 0), (2, 4, 0.0, 0), (2, 4, 0.0, 1 << 20)];
                let requests: Vec<LocalRequest> = bad
                    .iter()
                    .map(|&(bytes, max_tokens, temperature, schema)| LocalRequest {
                        model: None,
                        system_prompt: None,
                        prompt: "x".repeat(bytes),
                        temperature,
                        top_p: 1.0,
                        max_tokens,
                        json_schema: (schema > 0).then(|| format!("{{\"description\":\"{}\"}}", "x".repeat(schema))),
                    })
                    .collect();
                local_model::generate(&requests).iter().take(inputs.len()).map(|r| answer(local_outcome(r))).collect()
            }
            "local-flood" => {
                let request = LocalRequest {
                    model: None,
                    system_prompt: None,
                    prompt: "hi".into(),
                    temperature: 0.0,
                    top_p: 1.0,
                    max_tokens: 2,
                    json_schema: None,
                };
                let results = local_model::generate(&vec![request; inputs.len() + 1]);
                results.iter().take(inputs.len()).map(|r| answer(local_outcome(r))).collect()
            }
            kind @ ("hoard-fields" | "hoard-bodies" | "hoard-urls") => {
                let text = hoard(kind);
                inputs.iter().map(|_| answer(text.clone())).collect()
            }
            "big-fields" => {
                let outcome = Fields::new().append("x-big", &vec![b'x'; 127 << 10]);
                inputs.iter().map(|_| answer(format!("{outcome:?}"))).collect()
            }
            "flood" => {
                let outcomes = flood(&inputs[0], 10 * inputs.len());
                let text = outcomes.join("; ");
                inputs.iter().map(|_| answer(text.clone())).collect()
            }
            "boom" if inputs.iter().any(|i| i.contains("boom")) => panic!("boom"),
            "few" => echo(&inputs[1..]),
            "many" => {
                let mut results = echo(&inputs);
                results.push(answer("extra".into()));
                results
            }
            "outside" | "local-outside" => {
                // The allowed provider is the first input; the second is not allowed.
                inputs.iter().map(|authority| answer(request(authority, &[]))).collect()
            }
            "snoop" => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                let args: Vec<String> = std::env::args().collect();
                let file = std::fs::read_to_string("/etc/passwd").map(|t| t.len());
                let dir = std::fs::read_dir("/").map(|d| d.count());
                let socket = std::net::TcpStream::connect(inputs[0].as_str()).map(|_| ());
                let text = format!(
                    "env={env:?} args={args:?} file={} dir={} socket={}",
                    file.is_ok(),
                    dir.is_ok(),
                    socket.is_ok()
                );
                inputs.iter().map(|_| answer(text.clone())).collect()
            }
            "authorization" => inputs
                .iter()
                .map(|authority| {
                    let bearer = request(authority, &[("authorization", "Bearer stolen")]);
                    let api_key = request(authority, &[("x-api-key", "stolen")]);
                    let plain = request(authority, &[]);
                    answer(format!("authorization: {bearer}; x-api-key: {api_key}; plain: {plain}"))
                })
                .collect(),
            "chatty" => {
                let line = "x".repeat(1023);
                for _ in 0..2048 {
                    println!("{line}");
                    eprintln!("{line}");
                }
                echo(&inputs)
            }
            _ => echo(&inputs),
        }
    }
}

/// Batch jobs: only the request lines are made (misaligned for
/// `misaligned`); every call that would reach a provider fails.
impl exports::batchgen::plugin::batch_jobs::Guest for Hostile {
    fn limits(_: Config) -> Result<JobLimits, String> {
        Ok(JobLimits { max_requests: 1000, max_bytes: 1 << 20 })
    }

    fn request_lines(config: Config, rows: Vec<JobRow>) -> Result<Vec<String>, String> {
        let shift = usize::from(config.generation_model == "misaligned");
        Ok((0..rows.len())
            .map(|i| {
                let row = &rows[(i + shift) % rows.len()];
                format!("{{\"custom_id\":\"{}\",\"input\":{:?}}}", row.custom_id, row.input)
            })
            .collect())
    }

    fn submit(_: Config, _: JobTag, _: InputStream, _: u64) -> Result<JobStatus, Failure> {
        Err(refused())
    }

    fn find(_: Config, _: JobTag) -> Result<Option<JobStatus>, Failure> {
        Err(refused())
    }

    fn status(_: Config, _: String) -> Result<JobStatus, Failure> {
        Err(refused())
    }

    fn cancel(_: Config, _: String) -> Result<JobStatus, Failure> {
        Err(refused())
    }

    fn download(_: Config, _: String, _: OutputStream) -> Result<u64, Failure> {
        Err(refused())
    }

    fn read_results(_: Config, lines: Vec<String>) -> Vec<Result<RowOutcome, String>> {
        lines.iter().map(|_| Err("no results here".to_string())).collect()
    }
}

fn refused() -> Failure {
    Failure { error: RowError::InvalidRequest("the hostile component sends no batch jobs".into()), retryable: false }
}

export!(Hostile);
