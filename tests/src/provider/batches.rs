//! The providers' batch APIs: OpenAI's Files and Batch API and Anthropic's
//! Message Batches, kept in memory, speaking the real wire formats.
//!
//! Time does not move a batch; fetching it does. Each `GET` of a batch
//! moves it one step, so a test needs no sleeps and every run sees the same
//! sequence:
//!
//! - OpenAI: `validating` (the create's answer) → `in_progress` for
//!   [`ServerOptions::batch_polls`] fetches, `request_counts` growing →
//!   `finalizing` → `completed`. The input is validated at the first fetch,
//!   which may answer `failed` instead (with `errors.data`), and a batch
//!   with an expired line ends `expired` where it would have gone
//!   `finalizing`, as OpenAI expires the whole batch.
//! - Anthropic: `in_progress` (the create's answer and `batch_polls`
//!   fetches, with `request_counts` at `{processing: N}` throughout, as the
//!   real API shows no progress) → `ended`.
//!
//! Each `in_progress` fetch answers the next share of the requests (of N
//! requests and P polls, the i-th answers up to N·i/(P+1)); the step out of
//! `in_progress` answers the rest. A cancel therefore finds some requests
//! answered and some not, as it would for real.
//!
//! Every request is answered exactly as the synchronous route
//! (`/v1/chat/completions`, `/v1/messages`) answers its body: the same
//! checks, echo, prompt directives and seeded fault plan, and the same
//! per-row attempt counters. What a batch cannot do, or does differently:
//!
//! - `#expire` in a prompt makes its request expire unanswered (OpenAI: an
//!   error-file line with code `batch_expired`; Anthropic: an `expired`
//!   result). The synchronous routes take the word for prompt text.
//! - Faults that are about the connection (reset, hang, truncate,
//!   malformed) have no connection to act on, so the request gets the
//!   provider's 500 instead.
//! - The server-wide limits of the synchronous API (rate limit, concurrency,
//!   overload burst, `exhaust_every`) do not apply: batches draw on a
//!   separate pool. Theirs are [`ServerOptions::batch_max_requests`],
//!   [`ServerOptions::anthropic_batch_max_requests`] and
//!   [`ServerOptions::batch_token_limit`].
//!
//! Results come back shuffled, as the real ones come unordered, with a
//! shuffle seeded by the batch id: a client that joins by position fails,
//! and it fails the same way every time for a given id.
//!
//! Ids include the server's port, so two servers (say, before and after a
//! simulated restart) rarely hand out the same id.
//!
//! Statuses, error types and codes are the providers'. Error messages are
//! theirs where a recorded exchange or their documentation shows them; the
//! others, marked *unverified* where they are written, follow each
//! provider's style.

use super::faults::{fnv1a, splitmix64};
use super::wire::{self, Api, ApiError, Completion, Reply};
use super::{Answer, Limits, RecordedRequest, ServerOptions, Shared, decide};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The only endpoint OpenAI batches may name here, and so the only `url`
/// their lines may name.
const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The route an Anthropic batch request is answered as.
const MESSAGES: &str = "/v1/messages";
const DAY: u64 = 86_400;
/// `purpose=batch` files, and the result files, expire after 30 days.
const FILE_LIFETIME: u64 = 30 * DAY;
/// OpenAI's `metadata` takes at most 16 pairs.
const METADATA_PAIRS: usize = 16;

/// A call to one of the batch APIs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    UploadFile,
    File(String),
    FileContent(String),
    DeleteFile(String),
    CreateBatch,
    ListBatches,
    Batch(String),
    CancelBatch(String),
    CreateMessageBatch,
    ListMessageBatches,
    MessageBatch(String),
    CancelMessageBatch(String),
    MessageBatchResults(String),
    DeleteMessageBatch(String),
}

impl Route {
    /// The batch call `method` `path` makes, if it is one. Anything else,
    /// including a known path with the wrong method, is left to the
    /// synchronous routes (which answer the provider's 404).
    pub(super) fn of(method: &str, path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let id = |s: &&str| (*s).to_owned();
        Some(match (method, segments.as_slice()) {
            ("POST", ["v1", "files"]) => Route::UploadFile,
            ("GET", ["v1", "files", file]) => Route::File(id(file)),
            ("GET", ["v1", "files", file, "content"]) => Route::FileContent(id(file)),
            ("DELETE", ["v1", "files", file]) => Route::DeleteFile(id(file)),
            ("POST", ["v1", "batches"]) => Route::CreateBatch,
            ("GET", ["v1", "batches"]) => Route::ListBatches,
            ("GET", ["v1", "batches", batch]) => Route::Batch(id(batch)),
            ("POST", ["v1", "batches", batch, "cancel"]) => Route::CancelBatch(id(batch)),
            ("POST", ["v1", "messages", "batches"]) => Route::CreateMessageBatch,
            ("GET", ["v1", "messages", "batches"]) => Route::ListMessageBatches,
            ("GET", ["v1", "messages", "batches", batch]) => Route::MessageBatch(id(batch)),
            ("DELETE", ["v1", "messages", "batches", batch]) => Route::DeleteMessageBatch(id(batch)),
            ("POST", ["v1", "messages", "batches", batch, "cancel"]) => Route::CancelMessageBatch(id(batch)),
            ("GET", ["v1", "messages", "batches", batch, "results"]) => Route::MessageBatchResults(id(batch)),
            _ => return None,
        })
    }

    fn api(&self) -> Api {
        match self {
            Route::UploadFile
            | Route::File(_)
            | Route::FileContent(_)
            | Route::DeleteFile(_)
            | Route::CreateBatch
            | Route::ListBatches
            | Route::Batch(_)
            | Route::CancelBatch(_) => Api::OpenAi,
            _ => Api::Anthropic,
        }
    }
}

/// Answers one batch call. The store stays locked throughout, so calls on
/// the same server are answered one at a time, in full.
pub(super) fn answer(
    shared: &Shared,
    route: Route,
    request: &RecordedRequest,
    query: Option<&str>,
    raw: &[u8],
) -> Reply {
    let api = route.api();
    let mut store = shared.batches();
    let request_id = format!("req_{}", store.hex_id());
    let query = Query::parse(query.unwrap_or_default());
    let answered = authorize(&shared.options, api, request).and_then(|()| match route {
        Route::UploadFile => store.upload(request.header("content-type").unwrap_or_default(), raw),
        Route::File(id) => store.file(&id).map(|file| Body::Json(file.json())),
        Route::FileContent(id) => store.file(&id).map(File::download),
        Route::DeleteFile(id) => store.delete_file(&id),
        Route::CreateBatch => store.create_batch(raw),
        Route::ListBatches => store.list_batches(&query),
        Route::Batch(id) => store.retrieve_batch(shared, &id),
        Route::CancelBatch(id) => store.cancel_batch(&id),
        Route::CreateMessageBatch => store.create_message_batch(&shared.options, raw),
        Route::ListMessageBatches => store.list_message_batches(shared, &query),
        Route::MessageBatch(id) => store.retrieve_message_batch(shared, &id),
        Route::CancelMessageBatch(id) => store.cancel_message_batch(shared, &id),
        Route::MessageBatchResults(id) => store.message_batch_results(&id),
        Route::DeleteMessageBatch(id) => store.delete_message_batch(&id),
    });
    match answered {
        Ok(body) => body.reply(api, &request_id),
        Err(error) => error.reply(api, &request_id),
    }
}

/// The key check of the synchronous routes, except that Anthropic's batch
/// endpoints also take `Authorization: Bearer KEY`, as the real ones do
/// ("one of x-api-key or Authorization"); then Anthropic's required
/// `anthropic-version`.
fn authorize(options: &ServerOptions, api: Api, request: &RecordedRequest) -> Result<(), ApiError> {
    if let Some(expected) = &options.api_key {
        let bearer = request.header("authorization").map(|v| v.strip_prefix("Bearer ").unwrap_or(v));
        let sent = match api {
            Api::OpenAi => bearer,
            Api::Anthropic => request.header("x-api-key").or(bearer),
        };
        if sent != Some(expected.as_str()) {
            return Err(ApiError::unauthorized(api, sent));
        }
    }
    if api == Api::Anthropic && request.header("anthropic-version").is_none() {
        return Err(invalid("anthropic-version: header is required"));
    }
    Ok(())
}

/// A successful answer, before it gets its headers.
enum Body {
    Json(Value),
    /// A file's bytes: an OpenAI file's content (named, for
    /// `content-disposition`) or Anthropic's results.
    Download {
        content_type: &'static str,
        filename: Option<String>,
        text: String,
    },
}

impl Body {
    fn reply(self, api: Api, request_id: &str) -> Reply {
        let mut reply = match self {
            Body::Json(value) => Reply::json(200, &value),
            Body::Download { content_type, filename, text } => {
                let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
                if let Some(name) = filename {
                    headers.push(("content-disposition".to_owned(), format!("attachment; filename=\"{name}\"")));
                }
                Reply { status: 200, headers, body: text }
            }
        };
        reply.headers.push((wire::request_id_header(api).to_owned(), request_id.to_owned()));
        reply
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "invalid_request_error", message)
}

/// OpenAI's answer to a missing parameter.
fn missing(param: &'static str) -> ApiError {
    invalid(format!("Missing required parameter: '{param}'.")).param(param).code("missing_required_parameter")
}

/// OpenAI's answer to an unknown file id (checked: 404, `param: "id"`).
fn no_file(id: &str) -> ApiError {
    ApiError::new(404, "invalid_request_error", format!("No such File object: {id}")).param("id")
}

/// OpenAI's answer to an unknown batch id, worded like the file one
/// (*unverified*).
fn no_batch(id: &str) -> ApiError {
    ApiError::new(404, "invalid_request_error", format!("No such Batch object: {id}")).param("batch_id")
}

/// Anthropic's answer to an unknown batch id (the message is *unverified*).
fn no_message_batch(id: &str) -> ApiError {
    ApiError::new(404, "not_found_error", format!("message_batch_id: No message batch found with id '{id}'"))
}

/// Seconds since the Unix epoch: OpenAI's timestamps.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Everything the batch APIs hold: files and batches of both providers.
pub(super) struct Store {
    /// Mixed into every id, so servers on other ports hand out other ids.
    salt: u64,
    /// Ids drawn so far.
    drawn: u64,
    /// Batches accepted so far, of both APIs.
    created: usize,
    files: HashMap<String, File>,
    /// Oldest first.
    batches: Vec<Batch>,
    /// Oldest first.
    message_batches: Vec<MessageBatch>,
}

impl Store {
    pub(super) fn new(salt: u64) -> Self {
        Store {
            salt: splitmix64(salt),
            drawn: 0,
            created: 0,
            files: HashMap::new(),
            batches: Vec::new(),
            message_batches: Vec::new(),
        }
    }

    pub(super) fn created(&self) -> usize {
        self.created
    }

    /// The next 64 random-looking bits: a function of the port and of how
    /// many were drawn before.
    fn draw(&mut self) -> u64 {
        self.drawn += 1;
        splitmix64(self.salt ^ splitmix64(self.drawn))
    }

    /// 32 hex digits, the body of OpenAI's batch ids and of request ids.
    fn hex_id(&mut self) -> String {
        format!("{:016x}{:016x}", self.draw(), self.draw())
    }

    /// 22 letters and digits, the body of OpenAI's file ids and Anthropic's
    /// batch ids.
    fn base62_id(&mut self) -> String {
        const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        (0..22).map(|_| char::from(DIGITS[(self.draw() % 62) as usize])).collect()
    }

    fn add_file(&mut self, filename: String, purpose: &'static str, content: String) -> String {
        let id = format!("file-{}", self.base62_id());
        let file = File { id: id.clone(), bytes: content.len(), created_at: unix_now(), filename, purpose, content };
        self.files.insert(id.clone(), file);
        id
    }

    fn file(&self, id: &str) -> Result<&File, ApiError> {
        self.files.get(id).ok_or_else(|| no_file(id))
    }

    /// `POST /v1/files`. As for real, the lines are not looked at here: a
    /// broken line fails the batch later, at validation.
    fn upload(&mut self, content_type: &str, raw: &[u8]) -> Result<Body, ApiError> {
        if !content_type.starts_with("multipart/form-data") {
            let shown = if content_type.is_empty() { "none" } else { content_type };
            return Err(invalid(format!("Invalid Content-Type header ({shown}), expected multipart/form-data.")));
        }
        // (*unverified* wording, as for the other malformed-form answers.)
        let parts = multipart(content_type, raw).ok_or_else(|| invalid("Could not parse multipart form data."))?;
        let field = |name: &str| parts.iter().find(|part| part.name == name);
        let purpose = field("purpose").ok_or_else(|| missing("purpose"))?;
        let file = field("file").ok_or_else(|| missing("file"))?;
        if purpose.data != b"batch" {
            // OpenAI takes other purposes; this stand-in serves batches only.
            let purpose = String::from_utf8_lossy(purpose.data);
            return Err(invalid(format!(
                "Invalid value for 'purpose': '{purpose}'. This test server supports only 'batch'."
            ))
            .param("purpose"));
        }
        let filename = file.filename.clone().unwrap_or_default();
        if !filename.ends_with(".jsonl") {
            // Checked: no param, no code.
            return Err(invalid("Invalid file format for Batch API. Must be .jsonl"));
        }
        let content = String::from_utf8_lossy(file.data).into_owned();
        let id = self.add_file(filename, "batch", content);
        Ok(Body::Json(self.files[&id].json()))
    }

    fn delete_file(&mut self, id: &str) -> Result<Body, ApiError> {
        self.files.remove(id).ok_or_else(|| no_file(id))?;
        Ok(Body::Json(json!({ "id": id, "object": "file", "deleted": true })))
    }

    /// `POST /v1/batches`: checks the parameters and that the file exists,
    /// not its lines (that is the first fetch's work).
    fn create_batch(&mut self, raw: &[u8]) -> Result<Body, ApiError> {
        let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        if !body.is_object() {
            return Err(ApiError::unparsable(Api::OpenAi));
        }
        let input_file_id = body["input_file_id"].as_str().ok_or_else(|| missing("input_file_id"))?;
        let endpoint = body["endpoint"].as_str().ok_or_else(|| missing("endpoint"))?;
        let completion_window = body["completion_window"].as_str().ok_or_else(|| missing("completion_window"))?;
        if endpoint != CHAT_COMPLETIONS {
            // OpenAI also takes /v1/responses, /v1/embeddings and
            // /v1/completions; this stand-in answers chat completions only.
            return Err(invalid(format!("Invalid value: '{endpoint}'. Supported values are: '{CHAT_COMPLETIONS}'."))
                .param("endpoint")
                .code("invalid_value"));
        }
        if completion_window != "24h" {
            return Err(invalid(format!("Invalid value: '{completion_window}'. Supported values are: '24h'."))
                .param("completion_window")
                .code("invalid_value"));
        }
        let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
        let fits = |map: &serde_json::Map<String, Value>| {
            map.len() <= METADATA_PAIRS
                && map.keys().all(|k| k.chars().count() <= 64)
                && map.values().all(|v| v.as_str().is_some_and(|v| v.chars().count() <= 512))
        };
        match &metadata {
            Value::Null => {}
            Value::Object(map) if fits(map) => {}
            _ => {
                return Err(invalid("Invalid 'metadata': expected an object of at most 16 string pairs (keys of at most 64 characters, values of at most 512).")
                    .param("metadata"));
            }
        }
        let file = self.files.get(input_file_id).ok_or_else(|| no_file(input_file_id).param("input_file_id"))?;
        // The model shows on the batch from the start; validation checks
        // that every line names it.
        let model = file
            .content
            .lines()
            .find(|line| !line.trim().is_empty())
            .and_then(|line| serde_json::from_str::<Value>(line).ok())
            .and_then(|line| line["body"]["model"].as_str().map(str::to_owned));
        let batch = Batch {
            id: format!("batch_{}", self.hex_id()),
            input_file_id: input_file_id.to_owned(),
            endpoint: endpoint.to_owned(),
            completion_window: completion_window.to_owned(),
            metadata,
            model,
            status: Status::Validating,
            created_at: unix_now(),
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            errors: None,
            tasks: Tasks::default(),
            output_file_id: None,
            error_file_id: None,
        };
        let answer = batch.json();
        self.batches.push(batch);
        self.created += 1;
        Ok(Body::Json(answer))
    }

    fn batch_index(&self, id: &str) -> Result<usize, ApiError> {
        self.batches.iter().position(|batch| batch.id == id).ok_or_else(|| no_batch(id))
    }

    /// `GET /v1/batches/{id}`: moves the batch one step, then shows it.
    fn retrieve_batch(&mut self, shared: &Shared, id: &str) -> Result<Body, ApiError> {
        let index = self.batch_index(id)?;
        let model = self.batches[index].model.clone();
        // The same model's prompt tokens in other batches still running.
        let enqueued: u64 = self
            .batches
            .iter()
            .filter(|other| other.id != id && other.model == model && other.status.enqueued())
            .map(|other| other.tasks.tokens)
            .sum();
        let Store { files, batches, .. } = &mut *self;
        let batch = &mut batches[index];
        let input = files.get(&batch.input_file_id).map(|file| file.content.as_str());
        if batch.step(shared, input, enqueued) {
            self.write_results(index);
        }
        Ok(Body::Json(self.batches[index].json()))
    }

    /// Writes a batch's answered lines, shuffled, to its output file
    /// (successes) and error file (the rest); a file that would be empty is
    /// not made and its id stays `null`.
    fn write_results(&mut self, index: usize) {
        let batch = &mut self.batches[index];
        let id = batch.id.clone();
        let (mut output, mut errors): (Vec<_>, Vec<_>) =
            std::mem::take(&mut batch.tasks.lines).into_iter().partition(|(outcome, _)| *outcome == Outcome::Succeeded);
        shuffle(&mut output, &id);
        shuffle(&mut errors, &id);
        let jsonl = |lines: Vec<(Outcome, String)>| lines.into_iter().map(|(_, line)| line + "\n").collect::<String>();
        let output_file_id =
            (!output.is_empty()).then(|| self.add_file(format!("{id}_output.jsonl"), "batch_output", jsonl(output)));
        let error_file_id =
            (!errors.is_empty()).then(|| self.add_file(format!("{id}_error.jsonl"), "batch_output", jsonl(errors)));
        let batch = &mut self.batches[index];
        batch.output_file_id = output_file_id;
        batch.error_file_id = error_file_id;
    }

    /// `POST /v1/batches/{id}/cancel`. Requests answered before the cancel
    /// keep their answers and are in the files once the batch is
    /// `cancelled` ("partial results"); the others are in no file.
    fn cancel_batch(&mut self, id: &str) -> Result<Body, ApiError> {
        let index = self.batch_index(id)?;
        let batch = &mut self.batches[index];
        match batch.status {
            Status::Validating | Status::InProgress | Status::Finalizing => {
                batch.status = Status::Cancelling;
                batch.cancelling_at = Some(unix_now());
            }
            // A second cancel answers the same.
            Status::Cancelling => {}
            status @ (Status::Completed | Status::Failed | Status::Expired | Status::Cancelled) => {
                // Checked: 409, no param or code.
                let message = format!("Cannot cancel a batch with status '{}'.", status.name());
                return Err(ApiError::new(409, "invalid_request_error", message));
            }
        }
        Ok(Body::Json(batch.json()))
    }

    /// `GET /v1/batches?limit=&after=`: newest first; does not move any
    /// batch on.
    fn list_batches(&self, query: &Query) -> Result<Body, ApiError> {
        let limit = query.limit(Api::OpenAi, 20, 100)?;
        let newest: Vec<&Batch> = self.batches.iter().rev().collect();
        let ids: Vec<&str> = newest.iter().map(|batch| batch.id.as_str()).collect();
        let (start, end, has_more) = page(&ids, limit, query.get("after"), None);
        let data: Vec<Value> = newest[start..end].iter().map(|batch| batch.json()).collect();
        Ok(Body::Json(json!({
            "object": "list",
            "data": data,
            "first_id": ids[start..end].first(),
            "last_id": ids[start..end].last(),
            "has_more": has_more,
        })))
    }

    /// `POST /v1/messages/batches`: the whole create is refused with the
    /// first problem found, as Anthropic's request validation does; the
    /// requests' own parameters are checked later, each as its synchronous
    /// request would be, and fail only that request.
    fn create_message_batch(&mut self, options: &ServerOptions, raw: &[u8]) -> Result<Body, ApiError> {
        let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        if !body.is_object() {
            return Err(ApiError::unparsable(Api::Anthropic));
        }
        let requests = match &body["requests"] {
            Value::Array(requests) => requests,
            Value::Null => return Err(invalid("requests: Field required")),
            _ => return Err(invalid("requests: Input should be a valid list")),
        };
        let max = options.anthropic_batch_max_requests;
        match requests.len() {
            0 => return Err(invalid("requests: List should have at least 1 item after validation, not 0")),
            n if n > max => {
                return Err(invalid(format!(
                    "requests: List should have at most {max} items after validation, not {n}"
                )));
            }
            _ => {}
        }
        let mut seen = HashSet::new();
        let mut pending = VecDeque::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            if !request.is_object() {
                return Err(invalid(format!("requests.{i}: Input should be a valid dictionary")));
            }
            let id = custom_id(i, &request["custom_id"])?;
            if !seen.insert(id) {
                // (*unverified* wording.)
                return Err(invalid(format!(
                    "requests.{i}.custom_id: Duplicate custom_id '{id}': each request in a batch needs a unique custom_id"
                )));
            }
            check_params(i, &request["params"])?;
            pending.push_back(Task { custom_id: id.to_owned(), body: request["params"].to_string() });
        }
        let created_at = SystemTime::now();
        let batch = MessageBatch {
            id: format!("msgbatch_01{}", self.base62_id()),
            status: Processing::InProgress,
            created_at,
            ended_at: None,
            cancel_initiated_at: None,
            tasks: Tasks { total: pending.len(), pending, ..Tasks::default() },
            results: None,
        };
        self.created += 1;
        // (`results_url` is null until the batch ends, so any address will do.)
        let answer = batch.json("");
        self.message_batches.push(batch);
        Ok(Body::Json(answer))
    }

    fn message_batch_index(&self, id: &str) -> Result<usize, ApiError> {
        self.message_batches.iter().position(|batch| batch.id == id).ok_or_else(|| no_message_batch(id))
    }

    /// `GET /v1/messages/batches/{id}`: moves the batch one step, then
    /// shows it.
    fn retrieve_message_batch(&mut self, shared: &Shared, id: &str) -> Result<Body, ApiError> {
        let index = self.message_batch_index(id)?;
        let batch = &mut self.message_batches[index];
        batch.step(shared);
        Ok(Body::Json(batch.json(&base_url(shared))))
    }

    /// `POST /v1/messages/batches/{id}/cancel`. Requests answered before the
    /// cancel keep their results; the rest are `canceled` when the batch
    /// ends, at the next fetch. Cancelling an ended batch changes nothing
    /// and answers it as it is (*unverified*: the real API may refuse).
    fn cancel_message_batch(&mut self, shared: &Shared, id: &str) -> Result<Body, ApiError> {
        let index = self.message_batch_index(id)?;
        let batch = &mut self.message_batches[index];
        if batch.status == Processing::InProgress {
            batch.status = Processing::Canceling;
            batch.cancel_initiated_at = Some(SystemTime::now());
        }
        Ok(Body::Json(batch.json(&base_url(shared))))
    }

    /// `GET /v1/messages/batches/{id}/results`: the JSONL, once ended.
    fn message_batch_results(&self, id: &str) -> Result<Body, ApiError> {
        let batch = &self.message_batches[self.message_batch_index(id)?];
        let Some(results) = &batch.results else {
            // (*unverified*: the SDK never asks before `ended`.)
            return Err(invalid(format!(
                "Message batch {id} has not finished processing; its results are available once processing_status is 'ended'."
            )));
        };
        // What the results answer carries is *unverified*; this is what the
        // SDK asks for (`Accept: application/binary`).
        Ok(Body::Download { content_type: "application/binary", filename: None, text: results.clone() })
    }

    /// `DELETE /v1/messages/batches/{id}`: only once it ended.
    fn delete_message_batch(&mut self, id: &str) -> Result<Body, ApiError> {
        let index = self.message_batch_index(id)?;
        if self.message_batches[index].status != Processing::Ended {
            // (*unverified* wording.)
            return Err(invalid(format!(
                "Message batch {id} cannot be deleted while it is processing. Cancel it and wait until it has ended."
            )));
        }
        self.message_batches.remove(index);
        Ok(Body::Json(json!({ "id": id, "type": "message_batch_deleted" })))
    }

    /// `GET /v1/messages/batches?limit=&after_id=&before_id=`: newest first;
    /// does not move any batch on.
    fn list_message_batches(&self, shared: &Shared, query: &Query) -> Result<Body, ApiError> {
        let limit = query.limit(Api::Anthropic, 20, 1000)?;
        let newest: Vec<&MessageBatch> = self.message_batches.iter().rev().collect();
        let ids: Vec<&str> = newest.iter().map(|batch| batch.id.as_str()).collect();
        let (start, end, has_more) = page(&ids, limit, query.get("after_id"), query.get("before_id"));
        let base = base_url(shared);
        let data: Vec<Value> = newest[start..end].iter().map(|batch| batch.json(&base)).collect();
        Ok(Body::Json(json!({
            "data": data,
            "has_more": has_more,
            "first_id": ids[start..end].first(),
            "last_id": ids[start..end].last(),
        })))
    }
}

/// `http://127.0.0.1:PORT`, for Anthropic's absolute `results_url`.
fn base_url(shared: &Shared) -> String {
    format!("http://{}", shared.addr)
}

/// One page of `ids` (newest first): `limit` ids right after `after`, or
/// right before `before`, or from the start. Returns the range and whether
/// more lie beyond it in the direction of travel. An id not in the list
/// gives an empty page.
fn page(ids: &[&str], limit: usize, after: Option<&str>, before: Option<&str>) -> (usize, usize, bool) {
    let position = |id: &str| ids.iter().position(|other| *other == id);
    match (after, before) {
        (Some(after), _) => {
            let start = position(after).map_or(ids.len(), |i| i + 1);
            let end = (start + limit).min(ids.len());
            (start, end, end < ids.len())
        }
        (None, Some(before)) => {
            let end = position(before).unwrap_or(0);
            let start = end.saturating_sub(limit);
            (start, end, start > 0)
        }
        (None, None) => {
            let end = limit.min(ids.len());
            (0, end, end < ids.len())
        }
    }
}

/// A query string's parameters (ids need no percent-decoding).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        let pairs = query.split('&').filter(|pair| !pair.is_empty());
        Query(pairs.map(|pair| pair.split_once('=').unwrap_or((pair, ""))).map(|(k, v)| (k.into(), v.into())).collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// `limit`, between 1 and `max`, `default` when absent.
    fn limit(&self, api: Api, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(text) = self.get("limit") else { return Ok(default) };
        match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(match api {
                Api::OpenAi => invalid(format!(
                    "Invalid 'limit': expected an integer between 1 and {max}, but got {text} instead."
                ))
                .param("limit"),
                Api::Anthropic => invalid(format!("limit: Input should be between 1 and {max}")),
            }),
        }
    }
}

/// One part of a `multipart/form-data` body.
struct Part<'a> {
    name: String,
    filename: Option<String>,
    data: &'a [u8],
}

/// The parts of a `multipart/form-data` body (RFC 7578): each starts after
/// a `--BOUNDARY` line and runs, after its headers and a blank line, up to
/// the CRLF before the next; `--BOUNDARY--` closes the body. `None` when it
/// is not such a body, or a part has no `content-disposition` name.
fn multipart<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let boundary = content_type.split(';').map(str::trim).find_map(|p| p.strip_prefix("boundary="))?;
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    let next = format!("\r\n{delimiter}");
    let mut rest = &body[find(body, delimiter.as_bytes())? + delimiter.len()..];
    let mut parts = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n")?;
        let end = find(rest, next.as_bytes())?;
        let (part, after) = rest.split_at(end);
        rest = &after[next.len()..];
        let blank = find(part, b"\r\n\r\n")?;
        let (head, data) = (&part[..blank], &part[blank + 4..]);
        let head = std::str::from_utf8(head).ok()?;
        let disposition = head.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-disposition").then_some(value)
        })?;
        let param = |wanted: &str| {
            disposition.split(';').map(str::trim).find_map(|p| {
                let (name, value) = p.split_once('=')?;
                (name.trim() == wanted).then(|| value.trim().trim_matches('"').to_owned())
            })
        };
        parts.push(Part { name: param("name")?, filename: param("filename"), data });
    }
    Some(parts)
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// A stored file: an uploaded input file, or a batch's output or error file.
struct File {
    id: String,
    bytes: usize,
    created_at: u64,
    filename: String,
    /// `batch` for uploads, `batch_output` for results.
    purpose: &'static str,
    content: String,
}

impl File {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
            "expires_at": self.created_at + FILE_LIFETIME,
        })
    }

    fn download(&self) -> Body {
        let filename = Some(self.filename.clone());
        Body::Download { content_type: "application/octet-stream", filename, text: self.content.clone() }
    }
}

/// An OpenAI batch's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the batch's tokens count against the enqueued-token limit:
    /// validated and not yet over.
    fn enqueued(self) -> bool {
        matches!(self, Status::InProgress | Status::Finalizing | Status::Cancelling)
    }
}

/// An OpenAI batch.
struct Batch {
    id: String,
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Value,
    model: Option<String>,
    status: Status,
    created_at: u64,
    in_progress_at: Option<u64>,
    finalizing_at: Option<u64>,
    completed_at: Option<u64>,
    failed_at: Option<u64>,
    expired_at: Option<u64>,
    cancelling_at: Option<u64>,
    cancelled_at: Option<u64>,
    /// `errors.data` of a batch that failed validation.
    errors: Option<Vec<Value>>,
    tasks: Tasks,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

impl Batch {
    /// One fetch's step. `input` is the input file's text (`None` if it was
    /// deleted), `enqueued` the prompt tokens of the same model's other
    /// running batches. Returns whether the batch has just ended with lines
    /// to write (completed, expired or cancelled).
    fn step(&mut self, shared: &Shared, input: Option<&str>, enqueued: u64) -> bool {
        let now = Some(unix_now());
        match self.status {
            Status::Validating => {
                if let Err(errors) = self.validate(&shared.options, input, enqueued) {
                    self.status = Status::Failed;
                    self.failed_at = now;
                    self.errors = Some(errors);
                    return false;
                }
                self.status = Status::InProgress;
                self.in_progress_at = now;
                self.progress(shared)
            }
            Status::InProgress => self.progress(shared),
            Status::Finalizing => {
                self.status = Status::Completed;
                self.completed_at = now;
                true
            }
            Status::Cancelling => {
                self.status = Status::Cancelled;
                self.cancelled_at = now;
                true
            }
            Status::Completed | Status::Failed | Status::Expired | Status::Cancelled => false,
        }
    }

    /// Answers this fetch's share of the requests; once all are answered,
    /// moves to `finalizing`, or straight to `expired` (with its lines to
    /// write) when some expired.
    fn progress(&mut self, shared: &Shared) -> bool {
        if !self.tasks.work(shared, Api::OpenAi, &self.id) {
            return false;
        }
        if self.tasks.expired > 0 {
            self.status = Status::Expired;
            self.expired_at = Some(unix_now());
            return true;
        }
        self.status = Status::Finalizing;
        self.finalizing_at = Some(unix_now());
        false
    }

    /// Reads the input file into tasks, or says everything wrong with it
    /// in `errors.data` form (line numbers from 1; blank lines are skipped
    /// but counted).
    fn validate(&mut self, options: &ServerOptions, input: Option<&str>, enqueued: u64) -> Result<(), Vec<Value>> {
        let error = |code: &str, line: Option<usize>, message: String, param: Option<&str>| json!({ "code": code, "line": line, "message": message, "param": param });
        let Some(input) = input else {
            // (*unverified*: the input file was deleted before validation.)
            let message = format!("No such File object: {}", self.input_file_id);
            return Err(vec![error("file_not_found", None, message, Some("input_file_id"))]);
        };
        let lines: Vec<(usize, &str)> =
            input.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
        if lines.is_empty() {
            return Err(vec![error("empty_file", None, "The batch input file is empty.".into(), None)]);
        }
        let max = options.batch_max_requests;
        if lines.len() > max {
            let message = format!(
                "The batch input file has {} requests, more than the maximum of {max} requests per batch.",
                lines.len()
            );
            return Err(vec![error("too_many_tasks", None, message, None)]);
        }
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut tasks = VecDeque::with_capacity(lines.len());
        for (number, text) in lines {
            match check_line(text, &self.endpoint, self.model.as_deref(), &mut seen) {
                Ok(task) => tasks.push_back(task),
                Err((code, message, param)) => errors.push(error(code, Some(number), message, param)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let tokens: u64 = tasks
            .iter()
            .map(|task| {
                let body = serde_json::from_str(&task.body).unwrap_or(Value::Null);
                Completion::echo(Api::OpenAi, &body).input_tokens as u64
            })
            .sum();
        if let Some(limit) = options.batch_token_limit
            && enqueued + tokens > limit
        {
            let model = self.model.as_deref().unwrap_or_default();
            let message = format!(
                "Enqueued token limit reached for {model} in organization org-test. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
                thousands(limit)
            );
            return Err(vec![error("token_limit_exceeded", None, message, None)]);
        }
        self.tasks = Tasks { total: tasks.len(), pending: tasks, tokens, ..Tasks::default() };
        Ok(())
    }

    fn json(&self) -> Value {
        let tasks = &self.tasks;
        let (input_tokens, output_tokens) = tasks.usage;
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": self.errors.as_ref().map(|data| json!({ "object": "list", "data": data })),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.name(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + DAY,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": tasks.total,
                "completed": tasks.succeeded,
                "failed": tasks.errored + tasks.expired,
            },
            "metadata": self.metadata,
            "model": self.model,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": { "cached_tokens": 0 },
                "output_tokens": output_tokens,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": input_tokens + output_tokens,
            },
        })
    }
}

/// What is wrong with an input line: code, message and param of its
/// `errors.data` entry.
type LineError = (&'static str, String, Option<&'static str>);

/// One input line as a task, or what is wrong with it. `model` is the
/// batch's (the first line's); `seen` the custom ids so far. (The codes are
/// OpenAI's; of the messages only `invalid_json_line`'s is checked.)
fn check_line(text: &str, endpoint: &str, model: Option<&str>, seen: &mut HashSet<String>) -> Result<Task, LineError> {
    let absent = |param: &'static str| {
        ("missing_required_parameter", format!("Missing required parameter: '{param}'."), Some(param))
    };
    let line: Value = match serde_json::from_str(text) {
        Ok(line @ Value::Object(_)) => line,
        _ => return Err(("invalid_json_line", "This line is not parseable as valid JSON.".into(), None)),
    };
    let custom_id = line["custom_id"].as_str().ok_or_else(|| absent("custom_id"))?;
    let method = line["method"].as_str().ok_or_else(|| absent("method"))?;
    let url = line["url"].as_str().ok_or_else(|| absent("url"))?;
    if !line["body"].is_object() {
        return Err(absent("body"));
    }
    if method != "POST" {
        return Err(("invalid_method", format!("Invalid method '{method}'. Only POST is supported."), Some("method")));
    }
    if url != endpoint {
        let message =
            format!("The URL provided for this request ('{url}') does not match the batch endpoint ('{endpoint}').");
        return Err(("url_mismatch", message, Some("url")));
    }
    let line_model = line["body"]["model"].as_str();
    if line_model.is_none() || line_model != model {
        let message = format!(
            "The model provided for this request ('{}') does not match the model of the other requests in the file ('{}'). A batch may use one model only.",
            line_model.unwrap_or_default(),
            model.unwrap_or_default()
        );
        return Err(("model_mismatch", message, Some("body.model")));
    }
    if !seen.insert(custom_id.to_owned()) {
        let message = format!(
            "The custom_id '{custom_id}' is a duplicate of another request's. The custom_id parameter must be unique for each request in a batch."
        );
        return Err(("duplicate_custom_id", message, Some("custom_id")));
    }
    Ok(Task { custom_id: custom_id.to_owned(), body: line["body"].to_string() })
}

/// `n` with thousands separators, as OpenAI writes limits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// An Anthropic batch's `processing_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Processing {
    InProgress,
    Canceling,
    Ended,
}

/// An Anthropic message batch.
struct MessageBatch {
    id: String,
    status: Processing,
    created_at: SystemTime,
    ended_at: Option<SystemTime>,
    cancel_initiated_at: Option<SystemTime>,
    tasks: Tasks,
    /// The results JSONL, once ended.
    results: Option<String>,
}

impl MessageBatch {
    /// One fetch's step: answers this fetch's share of the requests, or
    /// ends the batch; a canceling batch ends with its unanswered requests
    /// `canceled`.
    fn step(&mut self, shared: &Shared) {
        match self.status {
            Processing::InProgress => {
                if self.tasks.work(shared, Api::Anthropic, &self.id) {
                    self.end();
                }
            }
            Processing::Canceling => {
                self.tasks.cancel_pending();
                self.end();
            }
            Processing::Ended => {}
        }
    }

    fn end(&mut self) {
        self.status = Processing::Ended;
        self.ended_at = Some(SystemTime::now());
        let mut lines = std::mem::take(&mut self.tasks.lines);
        shuffle(&mut lines, &self.id);
        self.results = Some(lines.into_iter().map(|(_, line)| line + "\n").collect());
    }

    /// The MessageBatch object; `base` is the server's URL, for
    /// `results_url`.
    fn json(&self, base: &str) -> Value {
        let tasks = &self.tasks;
        let ended = self.status == Processing::Ended;
        // Before the end, every request counts as processing.
        let request_counts = if ended {
            json!({
                "processing": 0,
                "succeeded": tasks.succeeded,
                "errored": tasks.errored,
                "canceled": tasks.canceled,
                "expired": tasks.expired,
            })
        } else {
            json!({ "processing": tasks.total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0 })
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": match self.status {
                Processing::InProgress => "in_progress",
                Processing::Canceling => "canceling",
                Processing::Ended => "ended",
            },
            "request_counts": request_counts,
            "ended_at": self.ended_at.map(wire::rfc3339),
            "created_at": wire::rfc3339(self.created_at),
            "expires_at": wire::rfc3339(self.created_at + Duration::from_secs(DAY)),
            "archived_at": null,
            "cancel_initiated_at": self.cancel_initiated_at.map(wire::rfc3339),
            "results_url": ended.then(|| format!("{base}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

/// An Anthropic `custom_id`, or the create's 400 for it: 1 to 64 of
/// `[a-zA-Z0-9_-]`.
fn custom_id(i: usize, value: &Value) -> Result<&str, ApiError> {
    let field = format!("requests.{i}.custom_id");
    let id = match value {
        Value::String(id) => id.as_str(),
        Value::Null => return Err(invalid(format!("{field}: Field required"))),
        _ => return Err(invalid(format!("{field}: Input should be a valid string"))),
    };
    let problem = match id.chars().count() {
        0 => Some("String should have at least 1 character"),
        65.. => Some("String should have at most 64 characters"),
        _ if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
            Some("String should match pattern '^[a-zA-Z0-9_-]{1,64}$'")
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(invalid(format!("{field}: {problem}"))),
        None => Ok(id),
    }
}

/// The checks Anthropic makes on a request's `params` when the batch is
/// created: the required fields, and what batches do not take. (Wording
/// in the style of the checked `custom_id` message; *unverified*.)
fn check_params(i: usize, params: &Value) -> Result<(), ApiError> {
    let field = format!("requests.{i}.params");
    if params.is_null() {
        return Err(invalid(format!("{field}: Field required")));
    }
    if !params.is_object() {
        return Err(invalid(format!("{field}: Input should be a valid dictionary")));
    }
    for name in ["model", "max_tokens", "messages"] {
        if params[name].is_null() {
            return Err(invalid(format!("{field}.{name}: Field required")));
        }
    }
    if params["max_tokens"].as_i64().is_some_and(|n| n < 1) {
        return Err(invalid(format!("{field}.max_tokens: Input should be greater than or equal to 1")));
    }
    if params["stream"].as_bool() == Some(true) {
        return Err(invalid(format!("{field}.stream: Message Batches do not support streaming; stream must be false")));
    }
    Ok(())
}

/// One request of a batch, waiting to be answered: its body kept as text,
/// which takes a fraction of the memory of parsed JSON.
struct Task {
    custom_id: String,
    body: String,
}

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Errored,
    Expired,
    Canceled,
}

/// A batch's requests and what became of them, for either API.
#[derive(Default)]
struct Tasks {
    total: usize,
    /// Not yet answered, in input order.
    pending: VecDeque<Task>,
    /// Fetches that answered `in_progress` so far.
    polls: u32,
    /// Result lines in the provider's format, in the order answered, until
    /// they are written out.
    lines: Vec<(Outcome, String)>,
    /// Requests answered so far, by outcome.
    succeeded: usize,
    errored: usize,
    expired: usize,
    canceled: usize,
    /// Prompt tokens of all the requests (OpenAI's enqueued tokens).
    tokens: u64,
    /// Input and output tokens of the successes.
    usage: (u64, u64),
}

impl Tasks {
    fn answered(&self) -> usize {
        self.succeeded + self.errored + self.expired + self.canceled
    }

    /// One fetch's work. While fewer than `batch_polls` fetches have seen
    /// the batch in progress, answers the next share and returns `false`;
    /// then answers the rest and returns `true`.
    fn work(&mut self, shared: &Shared, api: Api, batch_id: &str) -> bool {
        let polls = shared.options.batch_polls;
        if self.polls < polls {
            self.polls += 1;
            let share = self.total * self.polls as usize / (polls as usize + 1);
            self.answer_until(shared, api, batch_id, share);
            return false;
        }
        self.answer_until(shared, api, batch_id, self.total);
        true
    }

    fn answer_until(&mut self, shared: &Shared, api: Api, batch_id: &str, answered: usize) {
        while self.answered() < answered {
            let Some(task) = self.pending.pop_front() else { break };
            let index = self.answered();
            let (outcome, line) = self.run(shared, api, batch_id, index, &task);
            match outcome {
                Outcome::Succeeded => self.succeeded += 1,
                Outcome::Errored => self.errored += 1,
                Outcome::Expired => self.expired += 1,
                Outcome::Canceled => self.canceled += 1,
            }
            self.lines.push((outcome, line));
        }
    }

    /// Gives every request not yet answered a `canceled` result (Anthropic).
    fn cancel_pending(&mut self) {
        for task in std::mem::take(&mut self.pending) {
            let line = json!({ "custom_id": task.custom_id, "result": { "type": "canceled" } });
            self.lines.push((Outcome::Canceled, line.to_string()));
            self.canceled += 1;
        }
    }

    /// Answers one request as its synchronous route would, as a result line
    /// in `api`'s format; `index` numbers it within the batch, for OpenAI's
    /// line ids.
    fn run(&mut self, shared: &Shared, api: Api, batch_id: &str, index: usize, task: &Task) -> (Outcome, String) {
        let body: Value = serde_json::from_str(&task.body).unwrap_or(Value::Null);
        let custom_id = &task.custom_id;
        let line_id = format!("batch_req_{:016x}{:016x}", line_bits(batch_id, index, 0), line_bits(batch_id, index, 1));
        if expires(&body) {
            let line = match api {
                Api::OpenAi => json!({
                    "id": line_id,
                    "custom_id": custom_id,
                    "response": null,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }),
                Api::Anthropic => json!({ "custom_id": custom_id, "result": { "type": "expired" } }),
            };
            return (Outcome::Expired, line.to_string());
        }
        let (status, request_id, answer) = synchronous(shared, api, body);
        let outcome = if status == 200 { Outcome::Succeeded } else { Outcome::Errored };
        if outcome == Outcome::Succeeded {
            let usage = &answer["usage"];
            let (input, output) = match api {
                Api::OpenAi => (&usage["prompt_tokens"], &usage["completion_tokens"]),
                Api::Anthropic => (&usage["input_tokens"], &usage["output_tokens"]),
            };
            self.usage.0 += input.as_u64().unwrap_or(0);
            self.usage.1 += output.as_u64().unwrap_or(0);
        }
        let line = match (api, outcome) {
            (Api::OpenAi, _) => json!({
                "id": line_id,
                "custom_id": custom_id,
                "response": { "status_code": status, "request_id": request_id, "body": answer },
                "error": null,
            }),
            (Api::Anthropic, Outcome::Succeeded) => {
                json!({ "custom_id": custom_id, "result": { "type": "succeeded", "message": answer } })
            }
            // The synchronous error body, request id included.
            (Api::Anthropic, _) => json!({ "custom_id": custom_id, "result": { "type": "errored", "error": answer } }),
        };
        (outcome, line.to_string())
    }
}

/// 64 bits for the id of line `index` of a batch.
fn line_bits(batch_id: &str, index: usize, part: u64) -> u64 {
    splitmix64(fnv1a(batch_id) ^ splitmix64(((index as u64) << 1) | part))
}

/// Whether a request's prompt asks it to expire (`#expire`).
fn expires(body: &Value) -> bool {
    wire::prompt(body).is_some_and(|prompt| prompt.split_whitespace().any(|word| word == "#expire"))
}

/// What the synchronous route answers `body`: (status, request id, JSON
/// body). Counts an attempt for its row as a request would. A connection
/// fault, which a batch has no connection for, becomes the provider's 500.
fn synchronous(shared: &Shared, api: Api, body: Value) -> (u16, String, Value) {
    let path = match api {
        Api::OpenAi => CHAT_COMPLETIONS,
        Api::Anthropic => MESSAGES,
    };
    let key = shared.options.api_key.as_deref();
    let mut headers = Vec::new();
    match api {
        Api::OpenAi => headers.extend(key.map(|key| ("authorization".to_owned(), format!("Bearer {key}")))),
        Api::Anthropic => {
            headers.push(("anthropic-version".to_owned(), "2023-06-01".to_owned()));
            headers.extend(key.map(|key| ("x-api-key".to_owned(), key.to_owned())));
        }
    }
    let raw_body = body.to_string();
    let request = RecordedRequest {
        method: "POST".into(),
        path: path.into(),
        headers,
        body_len: raw_body.len(),
        raw_body,
        body,
        received_at: std::time::Instant::now(),
    };
    let attempt = shared.attempt(request.row_key());
    let reply = match decide(&shared.options, &request, attempt, false, Limits::default()) {
        Answer::Reply(reply) => Some(reply),
        Answer::Truncated(_) | Answer::Reset | Answer::Hang => None,
    };
    let parsed = reply.and_then(|reply| {
        let answer = serde_json::from_str::<Value>(&reply.body).ok()?;
        let header = wire::request_id_header(api);
        let request_id = reply.headers.iter().find(|(name, _)| name == header).map(|(_, id)| id.clone())?;
        Some((reply.status, request_id, answer))
    });
    parsed.unwrap_or_else(|| {
        let request_id = format!("req_{:016x}", splitmix64(fnv1a(&request.raw_body) ^ u64::from(attempt)));
        let model = request.body["model"].as_str().unwrap_or_default();
        let reply = ApiError::for_status(api, 500, model).reply(api, &request_id);
        (500, request_id, serde_json::from_str(&reply.body).unwrap_or(Value::Null))
    })
}

/// Shuffles `items` in place (Fisher–Yates), with draws seeded by `seed`.
fn shuffle<T>(items: &mut [T], seed: &str) {
    let mut state = fnv1a(seed);
    for i in (1..items.len()).rev() {
        state = splitmix64(state);
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_deterministic_permutations() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, "batch_1");
        shuffle(&mut b, "batch_1");
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..100).collect();
        shuffle(&mut c, "batch_2");
        assert_ne!(a, c);
    }

    #[test]
    fn multipart_bodies_are_split_into_parts() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\ncontent-type: application/octet-stream\r\n\r\n{\"a\":1}\n{\"b\":\r\n2}\n\r\n--XyZ--\r\n";
        let parts = multipart("multipart/form-data; boundary=\"XyZ\"", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].filename.as_deref(), parts[0].data),
            ("purpose", None, &b"batch"[..])
        );
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"b\":\r\n2}\n");
        assert!(multipart("multipart/form-data", body).is_none(), "no boundary");
        assert!(multipart("multipart/form-data; boundary=other", body).is_none());
    }

    #[test]
    fn pages_go_both_ways() {
        let ids = ["e", "d", "c", "b", "a"];
        assert_eq!(page(&ids, 2, None, None), (0, 2, true));
        assert_eq!(page(&ids, 2, Some("d"), None), (2, 4, true));
        assert_eq!(page(&ids, 2, Some("b"), None), (4, 5, false));
        assert_eq!(page(&ids, 2, None, Some("b")), (1, 3, true));
        assert_eq!(page(&ids, 2, None, Some("d")), (0, 1, false));
        assert_eq!(page(&ids, 9, Some("zz"), None), (5, 5, false));
    }

    #[test]
    fn limits_are_written_with_thousands_separators() {
        assert_eq!(thousands(2_000_000), "2,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn routes_are_recognised_by_method_and_path() {
        assert_eq!(Route::of("POST", "/v1/files"), Some(Route::UploadFile));
        assert_eq!(Route::of("GET", "/v1/files/file-1/content"), Some(Route::FileContent("file-1".into())));
        assert_eq!(Route::of("POST", "/v1/batches/b/cancel"), Some(Route::CancelBatch("b".into())));
        assert_eq!(Route::of("GET", "/v1/messages/batches/m/results"), Some(Route::MessageBatchResults("m".into())));
        assert_eq!(Route::of("PUT", "/v1/batches"), None);
        assert_eq!(Route::of("POST", "/v1/messages"), None);
        assert_eq!(Route::of("POST", "/v1/chat/completions"), None);
    }
}
