//! A local stand-in for the OpenAI Chat Completions API and the Anthropic
//! Messages API, for integration tests and benchmarks.
//!
//! It speaks both real wire formats (paths, headers, JSON bodies, error
//! bodies and statuses), so the code under test runs exactly as it would
//! against the providers, while every answer stays predictable:
//!
//! - a success echoes the prompt (`echo: {prompt}`, or `[{system}] echo:
//!   {prompt}`) and counts whitespace words as tokens, so a test can tell
//!   whether output rows line up with their inputs;
//! - faults come from directives written in the prompt (`#status=NNN`,
//!   `#quota`, `#fail=N:STATUS`, `#reset=N`, `#hang=N`, `#truncate=N`,
//!   `#malformed=N`), or at random from a seeded [`FaultPlan`] whose draws
//!   depend only on (seed, path, prompt, attempt), never on arrival order;
//! - every request is recorded before it is answered, so a test can count
//!   attempts per prompt with [`ProviderServer::requests`].
//!
//! The server runs on its own thread with its own tokio runtime, so plain
//! `#[test]`s and async tests can both use it, and it stops when dropped.
//!
//! Besides the faults asked for, requests are checked the way the real
//! APIs check them (see `wire::validate`): a missing `max_tokens` or
//! `anthropic-version`, a `system` role in Anthropic `messages`,
//! `temperature` out of range, `temperature` with `top_p` on Claude 4.5
//! models, `max_tokens` on OpenAI reasoning models, and retired Claude ids
//! all get the provider's real error.
//!
//! Both providers' batch APIs are served too (OpenAI's Files and Batch API,
//! Anthropic's Message Batches), in memory and with the real lifecycle, but
//! moving one step per fetch instead of with the clock; each batch line is
//! answered as the synchronous route answers it. See `batches`.

mod batches;
mod faults;
mod wire;

#[cfg(test)]
mod tests;

use faults::Fault;
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use wire::{Api, ApiError, Completion, Reply};

/// How long [`ServerOptions::hold_until_in_flight`] waits before answering
/// anyway, so a client that never gets there fails its test instead of
/// hanging it.
const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// A running test provider on `127.0.0.1`. Dropping it shuts the server
/// down: its runtime stops and every open connection is closed.
pub struct ProviderServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How the server behaves; the default answers everything at once.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Added before every answer (errors and faults included).
    pub latency: Duration,
    /// When set, requests must carry this key (OpenAI: `authorization:
    /// Bearer KEY`; Anthropic: `x-api-key: KEY`) or get the provider's real
    /// 401. When unset any key, or none, is accepted, as a local
    /// OpenAI-compatible server (vLLM, llama.cpp) does.
    pub api_key: Option<String>,
    /// When `Some(n)`, answers are held until `n` requests have been in
    /// flight at once; from then on nothing is held. This lets a test prove
    /// a client sends requests concurrently without timing assertions:
    /// check [`ProviderServer::max_in_flight`] afterwards. If `n` is not
    /// reached within 10 s the server answers anyway (and stops holding),
    /// so a sequential client makes the test fail rather than hang.
    pub hold_until_in_flight: Option<usize>,
    /// Random retryable faults.
    pub faults: FaultPlan,
    /// When `Some(n)`, a generation request arriving while `n` others are
    /// already being handled gets a 429 (`rate_limit_exceeded` /
    /// `rate_limit_error`), as a provider enforcing a concurrency limit would.
    pub max_concurrent: Option<usize>,
    /// When `Some((n, reset))`, every `n`-th successful OpenAI answer says
    /// the request budget is spent: `x-ratelimit-remaining-requests: 0` and
    /// `x-ratelimit-reset-requests` of `reset`.
    pub exhaust_every: Option<(u32, Duration)>,
    /// A real rate limit: a token bucket of generation requests refilled at
    /// this many per second, holding at most one second's worth. A request
    /// finding it empty gets the provider's 429 with `retry-after` (whole
    /// seconds) and the limit's headers saying none are left until the next
    /// token; successes say how many are left.
    pub rate_limit_per_second: Option<f64>,
    /// When `Some((first, count))`, the generation requests numbered
    /// `first` to `first + count - 1` (in arrival order, from 0) get an
    /// overload: Anthropic's 529 `overloaded_error`, OpenAI's 503.
    pub overload_burst: Option<(u64, u64)>,
    /// How many fetches of a batch answer `in_progress` before it moves on
    /// (to `finalizing` on OpenAI, to `ended` on Anthropic). Each of them
    /// answers the next share of the batch's requests, so OpenAI's
    /// `request_counts` grow from fetch to fetch. Default 1.
    pub batch_polls: u32,
    /// The most requests an OpenAI batch may hold; more fail the batch at
    /// validation with `too_many_tasks`. Default 50,000, OpenAI's limit.
    pub batch_max_requests: usize,
    /// The most requests an Anthropic batch create may hold; more get a 400.
    /// Default 100,000, Anthropic's limit.
    pub anthropic_batch_max_requests: usize,
    /// OpenAI's enqueued-token limit for one model: when the prompt tokens
    /// (whitespace words, as the echo counts them) of a batch being
    /// validated plus those of the same model's batches still in progress
    /// exceed it, the batch fails with `token_limit_exceeded`. Default none.
    pub batch_token_limit: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            latency: Duration::ZERO,
            api_key: None,
            hold_until_in_flight: None,
            faults: FaultPlan::default(),
            max_concurrent: None,
            exhaust_every: None,
            rate_limit_per_second: None,
            overload_burst: None,
            batch_polls: 1,
            batch_max_requests: 50_000,
            anthropic_batch_max_requests: 100_000,
            batch_token_limit: None,
        }
    }
}

/// Random *retryable* faults on generation requests. Each rate is the
/// chance that a request gets that fault (the rates should sum to at most
/// 1). Draws come from SplitMix64 over (seed, path, prompt, attempt
/// number), so a given row meets the same faults on the same attempts in
/// every run, however requests interleave. Directives in a prompt take
/// precedence over the plan.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    pub seed: u64,
    /// 429 rate-limit error with `retry-after: 1` (and OpenAI's
    /// `retry-after-ms: 10`) but no rate-limit headers: the provider
    /// shedding load it does not put down to the key's limits.
    pub rate_429: f64,
    /// 500 (`api_error` / `server_error`).
    pub rate_500: f64,
    /// Anthropic 529 `overloaded_error`; on OpenAI paths a 503
    /// `server_error`, as OpenAI never sends 529.
    pub rate_529: f64,
    /// Close the connection without any response.
    pub rate_reset: f64,
    /// Never answer (until the client gives up or the server is dropped).
    pub rate_hang: f64,
    /// A 200 whose `content-length` promises more bytes than are sent
    /// before the connection closes.
    pub rate_truncate: f64,
    /// A 200 whose body is not JSON (the first half of the real body).
    pub rate_malformed: f64,
}

/// How much of a batch upload's body is recorded: a 50,000-row input file
/// or message batch runs to tens of megabytes, and a benchmark uploading a
/// few of them should not keep copies of them all in the request log.
const RECORDED_UPLOAD_LIMIT: usize = 64 * 1024;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, without any query string.
    pub path: String,
    /// In arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as text. For batch uploads (`POST /v1/files`, `POST
    /// /v1/messages/batches`) larger than 64 KiB, only the first 64 KiB.
    pub raw_body: String,
    /// The body parsed as JSON, `Null` if it is not JSON or was cut short.
    pub body: Value,
    /// The length of the whole body in bytes, even when `raw_body` is cut.
    pub body_len: usize,
    /// When the request (its whole body) had arrived.
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    fn new(head: &hyper::http::request::Parts, raw: &[u8]) -> Self {
        let headers = head
            .headers
            .iter()
            .map(|(name, value)| {
                (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect();
        let path = head.uri.path().to_owned();
        let upload = head.method == "POST" && matches!(path.as_str(), "/v1/files" | "/v1/messages/batches");
        let (raw_body, body) = if upload && raw.len() > RECORDED_UPLOAD_LIMIT {
            (String::from_utf8_lossy(&raw[..RECORDED_UPLOAD_LIMIT]).into_owned(), Value::Null)
        } else {
            (String::from_utf8_lossy(raw).into_owned(), serde_json::from_slice(raw).unwrap_or(Value::Null))
        };
        RecordedRequest {
            method: head.method.to_string(),
            path,
            headers,
            raw_body,
            body,
            body_len: raw.len(),
            received_at: std::time::Instant::now(),
        }
    }

    /// The first value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The text of the last user message, in either wire format (string
    /// content, or text blocks joined by newlines).
    pub fn prompt(&self) -> Option<String> {
        wire::prompt(&self.body)
    }

    /// What identifies "the same row" for directive counters and fault
    /// draws: the prompt, or the raw body when there is no prompt.
    fn row_key(&self) -> (String, String) {
        (self.path.clone(), self.prompt().unwrap_or_else(|| self.raw_body.clone()))
    }
}

impl ProviderServer {
    /// Starts a server with default options.
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Binds `127.0.0.1:0` here, so the address is known (and connections
    /// are accepted by the kernel) before this returns, then serves on a
    /// thread of its own.
    pub fn start_with(options: ServerOptions) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("make the listener non-blocking");
        let addr = listener.local_addr().expect("listener address");
        let full_bucket = options.rate_limit_per_second.unwrap_or(0.0);
        let shared = Arc::new(Shared {
            options,
            addr,
            log: Mutex::default(),
            batches: Mutex::new(batches::Store::new(u64::from(addr.port()))),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
            generations: AtomicU64::new(0),
            // Full: one second's worth of requests.
            bucket: Mutex::new((full_bucket, std::time::Instant::now())),
            released: watch::Sender::new(false),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("provider-server-{}", addr.port()))
            .spawn({
                let shared = shared.clone();
                move || run(listener, shared, stopped)
            })
            .expect("spawn the provider server thread");
        ProviderServer { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, what OpenAI clients take as base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, what Anthropic clients take as base URL.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order, including those
    /// answered with errors or faults.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log().requests.clone()
    }

    /// Forgets the recorded requests. Directive counters are kept: a
    /// `#fail=1:500` row that already failed once keeps succeeding.
    pub fn clear_requests(&self) {
        self.shared.log().requests.clear();
    }

    /// The highest number of requests handled at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Batches created so far through either batch API (OpenAI `POST
    /// /v1/batches`, Anthropic `POST /v1/messages/batches`), counting only
    /// the creates that were accepted; deleting a batch does not lower it.
    pub fn batches_created(&self) -> usize {
        self.shared.batches().created()
    }
}

impl Drop for ProviderServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// State shared between the handle and the server thread.
struct Shared {
    options: ServerOptions,
    /// Where the server listens, for the absolute URLs it hands out
    /// (Anthropic's `results_url`).
    addr: SocketAddr,
    log: Mutex<Log>,
    /// Uploaded files and batches of both batch APIs.
    batches: Mutex<batches::Store>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Successful generation answers, for `exhaust_every`.
    successes: AtomicUsize,
    /// Generation requests so far, for `overload_burst`.
    generations: AtomicU64,
    /// The token bucket of `rate_limit_per_second`: tokens, and when counted.
    bucket: Mutex<(f64, std::time::Instant)>,
    /// Becomes `true`, for good, once `hold_until_in_flight` is reached.
    released: watch::Sender<bool>,
}

#[derive(Default)]
struct Log {
    requests: Vec<RecordedRequest>,
    /// Requests seen per (path, prompt).
    attempts: HashMap<(String, String), u32>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panicking test thread must not take every later assertion down.
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `request` and returns which attempt (1-based) it is for its
    /// row. Both happen under one lock, so attempt numbers follow the order
    /// of [`ProviderServer::requests`].
    fn record(&self, request: &RecordedRequest) -> u32 {
        let mut log = self.log();
        log.requests.push(request.clone());
        let attempt = log.attempts.entry(request.row_key()).or_default();
        *attempt += 1;
        *attempt
    }

    /// Counts one more attempt for a row answered inside a batch, and
    /// returns its number. A batch line is not an HTTP request, so it is not
    /// recorded, but it shares the per-row counters of the synchronous
    /// route: a `#fail=1:500` row that failed in a batch succeeds when
    /// resubmitted, in a batch or not.
    fn attempt(&self, row: (String, String)) -> u32 {
        let mut log = self.log();
        let attempt = log.attempts.entry(row).or_default();
        *attempt += 1;
        *attempt
    }

    fn batches(&self) -> MutexGuard<'_, batches::Store> {
        self.batches.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn hold(&self) {
        let mut released = self.released.subscribe();
        let timed_out = tokio::time::timeout(HOLD_LIMIT, released.wait_for(|open| *open)).await.is_err();
        if timed_out {
            self.released.send_replace(true);
        }
    }
}

/// Counts a request as in flight for as long as it is alive, including
/// when hyper drops it half-way.
struct InFlight<'a>(&'a Shared, usize);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if shared.options.hold_until_in_flight.is_some_and(|n| now >= n) {
            shared.released.send_replace(true);
        }
        InFlight(shared, now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The server thread: a single-threaded runtime is plenty for a stand-in
/// whose work per request is building a small JSON body.
fn run(listener: std::net::TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build the provider server runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
        loop {
            let stream = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| serve(shared.clone(), request));
                // Errors are clients going away, or injected resets.
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    // Dropping the runtime here drops every connection task, closing the
    // sockets of hung and idle connections alike.
}

/// What to do with one request.
enum Answer {
    Reply(Reply),
    /// Send the reply's head and half its body, then close the connection.
    Truncated(Reply),
    /// Close the connection without a response.
    Reset,
    /// Never answer.
    Hang,
}

async fn serve(shared: Arc<Shared>, request: Request<Incoming>) -> io::Result<Response<ReplyBody>> {
    let in_flight = InFlight::enter(&shared);
    let (head, body) = request.into_parts();
    let raw = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let request = RecordedRequest::new(&head, &raw);
    let attempt = shared.record(&request);
    if shared.options.hold_until_in_flight.is_some() {
        shared.hold().await;
    }
    if !shared.options.latency.is_zero() {
        tokio::time::sleep(shared.options.latency).await;
    }
    if let Some(route) = batches::Route::of(&request.method, &request.path) {
        let reply = batches::answer(&shared, route, &request, head.uri.query(), &raw);
        return Ok(response(reply, false));
    }
    let over_limit = shared.options.max_concurrent.is_some_and(|n| in_flight.1 > n);
    let generates =
        request.method == "POST" && matches!(request.path.as_str(), "/v1/chat/completions" | "/v1/messages");
    let limits = if generates { shared.limits() } else { Limits::default() };
    match decide(&shared.options, &request, attempt, over_limit, limits) {
        Answer::Reply(mut reply) => {
            if let (Some(rate), Some(left)) = (shared.options.rate_limit_per_second, limits.left) {
                let per_minute = (rate * 60.0) as u64;
                match limits.wait {
                    Some(wait) => {
                        reply.requests_left(0, per_minute, wait);
                        reply.retry_after(wait);
                    }
                    None => reply.requests_left(left, per_minute, Duration::from_secs_f64(1.0 / rate)),
                }
            }
            if let Some((n, reset)) = shared.options.exhaust_every {
                let generated =
                    reply.status == 200 && request.method == "POST" && request.path == "/v1/chat/completions";
                if generated && (shared.successes.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(n as usize) {
                    reply.exhaust_requests(reset);
                }
            }
            Ok(response(reply, false))
        }
        Answer::Truncated(reply) => Ok(response(reply, true)),
        // An error from the service makes hyper drop the connection unanswered.
        Answer::Reset => Err(io::Error::new(io::ErrorKind::ConnectionReset, "injected reset")),
        Answer::Hang => std::future::pending().await,
    }
}

/// What the server-wide limits say of one generation request.
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    /// Requests left in the bucket after this one, under a rate limit.
    left: Option<u64>,
    /// The bucket was empty: wait this long for the next token.
    wait: Option<Duration>,
    /// Within the overload burst.
    overloaded: bool,
}

impl Shared {
    /// Counts a generation request against the burst and the bucket.
    fn limits(&self) -> Limits {
        let n = self.generations.fetch_add(1, Ordering::SeqCst);
        let overloaded = self.options.overload_burst.is_some_and(|(first, count)| (first..first + count).contains(&n));
        let Some(rate) = self.options.rate_limit_per_second else { return Limits { overloaded, ..Limits::default() } };
        let mut bucket = self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(rate);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Limits { left: Some((tokens - 1.0) as u64), wait: None, overloaded }
        } else {
            *bucket = (tokens, now);
            Limits { left: Some(0), wait: Some(Duration::from_secs_f64((1.0 - tokens) / rate)), overloaded }
        }
    }
}

/// The answer to the `attempt`-th request for this request's row, given
/// the server-wide `limits`: a pure function, so the same inputs always get
/// the same answer.
fn decide(
    options: &ServerOptions,
    request: &RecordedRequest,
    attempt: u32,
    over_limit: bool,
    limits: Limits,
) -> Answer {
    let (path, row) = request.row_key();
    let seed = faults::fnv1a(&format!("{path}\n{row}")) ^ u64::from(attempt);
    let id = format!("{:016x}{:08x}", faults::splitmix64(seed), faults::splitmix64(!seed) >> 32);
    let request_id = format!("req_{id}");

    let anthropic_headers = request.header("anthropic-version").is_some() || request.header("x-api-key").is_some();
    let by_headers = if anthropic_headers { Api::Anthropic } else { Api::OpenAi };
    let (api, generates) = match (request.method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => (Api::OpenAi, true),
        ("POST", "/v1/messages") => (Api::Anthropic, true),
        ("GET", "/v1/models") => (by_headers, false),
        (method, path) => {
            let error = ApiError::unknown_route(by_headers, method, path);
            return Answer::Reply(error.reply(by_headers, &request_id));
        }
    };
    let fail = |error: ApiError| Answer::Reply(error.reply(api, &request_id));

    if let Some(expected) = &options.api_key {
        let sent = match api {
            Api::OpenAi => request.header("authorization").map(|v| v.strip_prefix("Bearer ").unwrap_or(v)),
            Api::Anthropic => request.header("x-api-key"),
        };
        if sent != Some(expected.as_str()) {
            return fail(ApiError::unauthorized(api, sent));
        }
    }
    if api == Api::Anthropic && request.header("anthropic-version").is_none() {
        return fail(ApiError::new(400, "invalid_request_error", "anthropic-version: header is required"));
    }
    if !generates {
        return Answer::Reply(wire::models(api, &id));
    }
    if let Err(error) = wire::validate(api, &request.body) {
        return fail(error);
    }

    let model = request.body["model"].as_str().unwrap_or_default();
    let success = || {
        let completion = Completion::echo(api, &request.body);
        let completion = if faults::off_schema(&row, attempt) { completion.off_schema() } else { completion };
        completion.reply(api, model, &id)
    };
    let fault = faults::directive(&row, attempt)
        .or_else(|| (over_limit || limits.wait.is_some()).then_some(Fault::Status(429)))
        .or_else(|| limits.overloaded.then_some(Fault::Status(529)))
        .or_else(|| options.faults.draw(&format!("{path}\n{row}"), attempt));
    match fault {
        None => Answer::Reply(success()),
        Some(Fault::Status(status)) => fail(ApiError::for_status(api, status, model)),
        Some(Fault::Throttled) => {
            Answer::Reply(ApiError::for_status(api, 429, model).reply(api, &request_id).without_limit_headers())
        }
        Some(Fault::Quota) => fail(ApiError::quota(api)),
        Some(Fault::Reset) => Answer::Reset,
        Some(Fault::Hang) => Answer::Hang,
        Some(Fault::Truncate) => Answer::Truncated(success()),
        Some(Fault::Malformed) => {
            let mut reply = success();
            // Half a JSON object is never JSON.
            reply.body.truncate(reply.body.floor_char_boundary(reply.body.len() / 2));
            Answer::Reply(reply)
        }
    }
}

fn response(reply: Reply, truncated: bool) -> Response<ReplyBody> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let body = Bytes::from(reply.body);
    let body = if truncated {
        builder = builder.header("content-length", body.len());
        ReplyBody { data: Some(body.slice(..body.len() / 2)), break_off: true, flushed: false }
    } else {
        ReplyBody { data: Some(body), break_off: false, flushed: false }
    };
    builder.body(body).expect("a well-formed response")
}

/// A response body sent whole, or broken off for the truncate fault.
///
/// Broken off, it yields its bytes, then `Pending` once (waking itself) so
/// hyper flushes them to the socket, then an error, on which hyper closes
/// the connection short of the `content-length` it sent. Failing at once
/// would make hyper drop the buffered bytes too, which is a reset, not a
/// truncation. (The flush is whole only while the body fits the socket
/// buffer, which replies here always do.)
struct ReplyBody {
    data: Option<Bytes>,
    break_off: bool,
    flushed: bool,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if !this.break_off {
            return Poll::Ready(None);
        }
        if !this.flushed {
            this.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "injected truncation"))))
    }

    fn is_end_stream(&self) -> bool {
        !self.break_off && self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, self.break_off) {
            // Unknown, so hyper frames the body by our `content-length`.
            (_, true) => SizeHint::default(),
            (Some(data), false) => SizeHint::with_exact(data.len() as u64),
            (None, false) => SizeHint::with_exact(0),
        }
    }
}
