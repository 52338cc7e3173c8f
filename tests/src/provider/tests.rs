//! The server over real sockets, driven by a minimal HTTP/1.1 client.

use super::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;

/// A response as it came off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request on a fresh connection and reads until the server
/// closes it. `Err` when the server closed without answering.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> io::Result<Raw> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8(bytes).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Raw { status, headers, body: body.to_owned() })
}

fn openai(server: &ProviderServer, key: Option<&str>, body: Value) -> io::Result<Raw> {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.as_deref().map(|a| ("authorization", a)));
    send(server.addr(), "POST", "/v1/chat/completions", &headers, &body.to_string())
}

fn anthropic(server: &ProviderServer, key: Option<&str>, body: Value) -> io::Result<Raw> {
    let mut headers = vec![("content-type", "application/json"), ("anthropic-version", "2023-06-01")];
    headers.extend(key.map(|k| ("x-api-key", k)));
    send(server.addr(), "POST", "/v1/messages", &headers, &body.to_string())
}

fn chat(prompt: &str) -> Value {
    json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": prompt }] })
}

fn message(prompt: &str) -> Value {
    json!({ "model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{ "role": "user", "content": prompt }] })
}

#[test]
fn openai_success_has_the_real_shape() {
    let server = ProviderServer::start();
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            { "role": "system", "content": "Be terse." },
            { "role": "user", "content": [{ "type": "text", "text": "hello  world" }] },
        ],
        "max_tokens": 50,
    });
    let reply = openai(&server, Some("anything"), body).unwrap();
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(json["created"].is_u64());
    let mut expected = json!({
        "id": json["id"], "object": "chat.completion", "created": json["created"], "model": "gpt-4o",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": "[Be terse.] echo: hello  world", "refusal": null },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": { "prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9 },
        "system_fingerprint": "fp_test",
    });
    assert_eq!(json, expected);
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(reply.header("x-ratelimit-reset-requests"), Some("1ms"));
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].header("Authorization"), Some("Bearer anything"));
    assert_eq!(recorded[0].prompt().as_deref(), Some("hello  world"));

    // The same request is answered the same way, and `max_tokens` cuts.
    let cut = openai(
        &server,
        None,
        json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "a b c" }], "max_completion_tokens": 2 }),
    )
    .unwrap()
    .json();
    expected = json!({ "role": "assistant", "content": "echo: a", "refusal": null });
    assert_eq!(cut["choices"][0]["message"], expected);
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 2);
}

#[test]
fn anthropic_success_has_the_real_shape() {
    let server = ProviderServer::start();
    let body = json!({
        "model": "claude-sonnet-4-5-20250929", "max_tokens": 3, "system": "Be terse.",
        "messages": [{ "role": "user", "content": "hello world" }],
    });
    let reply = anthropic(&server, None, body).unwrap();
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert!(json["id"].as_str().unwrap().starts_with("msg_"));
    let expected = json!({
        "id": json["id"], "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [{ "type": "text", "text": "[Be terse.] echo:" }],
        "stop_reason": "max_tokens", "stop_sequence": null,
        "usage": { "input_tokens": 4, "output_tokens": 3 },
    });
    assert_eq!(json, expected);
    assert!(reply.header("request-id").unwrap().starts_with("req_"));
    assert_eq!(reply.header("anthropic-ratelimit-requests-remaining"), Some("3999"));

    let json = anthropic(&server, None, message("hi")).unwrap().json();
    assert_eq!(json["content"][0]["text"], "echo: hi");
    assert_eq!(json["stop_reason"], "end_turn");
}

#[test]
fn error_bodies_are_the_providers() {
    let server = ProviderServer::start();

    let reply = anthropic(&server, None, message("row #status=429")).unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let json = reply.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["request_id"].as_str(), reply.header("request-id"));

    let reply = openai(&server, None, chat("row #quota")).unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);
    let expected = json!({ "error": {
        "message": reply.json()["error"]["message"], "type": "insufficient_quota", "param": null, "code": "insufficient_quota",
    }});
    assert_eq!(reply.json(), expected);

    let reply = openai(&server, None, chat("#status=529")).unwrap();
    assert_eq!((reply.status, reply.json()["error"]["type"].as_str()), (503, Some("server_error")));

    let mut body = message("hi");
    body["model"] = json!("claude-3-5-sonnet-20241022");
    let reply = anthropic(&server, None, body).unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["error"],
        json!({ "type": "not_found_error", "message": "model: claude-3-5-sonnet-20241022" })
    );

    let reply = send(server.addr(), "POST", "/v1/messages", &[], &message("hi").to_string()).unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["message"], "anthropic-version: header is required");

    let mut body = message("hi");
    body.as_object_mut().unwrap().remove("max_tokens");
    let reply = anthropic(&server, None, body).unwrap();
    assert_eq!((reply.status, reply.json()["error"]["message"].as_str()), (400, Some("max_tokens: Field required")));

    let reply = send(server.addr(), "GET", "/v2/nothing", &[], "").unwrap();
    assert_eq!((reply.status, reply.json()["error"]["type"].as_str()), (404, Some("invalid_request_error")));
    assert_eq!(server.requests().len(), 7, "errors are recorded too");
}

#[test]
fn fail_directive_fails_the_first_attempts_only() {
    let server = ProviderServer::start();
    let first = openai(&server, None, chat("row 1 #fail=1:500")).unwrap();
    assert_eq!(first.status, 500);
    assert_eq!(first.json()["error"]["type"], "server_error");
    let second = openai(&server, None, chat("row 1 #fail=1:500")).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["choices"][0]["message"]["content"], "echo: row 1 #fail=1:500");
    // Counters are per prompt and per path.
    assert_eq!(anthropic(&server, None, message("row 1 #fail=1:500")).unwrap().status, 500);
    let prompts: Vec<_> = server.requests().iter().map(|r| r.prompt().unwrap()).collect();
    assert_eq!(prompts, ["row 1 #fail=1:500"; 3]);
}

#[test]
fn api_key_is_checked_when_set() {
    let server =
        ProviderServer::start_with(ServerOptions { api_key: Some("sk-test-1234".into()), ..Default::default() });
    let missing = openai(&server, None, chat("hi")).unwrap();
    assert_eq!((missing.status, missing.json()["error"]["code"].clone()), (401, Value::Null));
    let wrong = openai(&server, Some("sk-other-9999"), chat("hi")).unwrap();
    assert_eq!((wrong.status, wrong.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert!(wrong.json()["error"]["message"].as_str().unwrap().contains("9999"));
    assert_eq!(openai(&server, Some("sk-test-1234"), chat("hi")).unwrap().status, 200);

    let wrong = anthropic(&server, Some("sk-test-0000"), message("hi")).unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], json!({ "type": "authentication_error", "message": "invalid x-api-key" }));
    assert_eq!(anthropic(&server, Some("sk-test-1234"), message("hi")).unwrap().status, 200);
}

#[test]
fn models_are_listed_in_each_format() {
    let server = ProviderServer::start();
    let openai = send(server.addr(), "GET", "/v1/models", &[], "").unwrap().json();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["id"], "gpt-4o");
    let headers = [("x-api-key", "k"), ("anthropic-version", "2023-06-01")];
    let anthropic = send(server.addr(), "GET", "/v1/models", &headers, "").unwrap().json();
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["data"][0]["type"], "model");
    assert_eq!(anthropic["first_id"], anthropic["data"][0]["id"]);
}

#[test]
fn hold_until_in_flight_answers_once_requests_overlap() {
    let server = ProviderServer::start_with(ServerOptions { hold_until_in_flight: Some(3), ..Default::default() });
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let server = &server;
        let threads: Vec<_> = (0..3)
            .map(|i| scope.spawn(move || openai(server, None, chat(&format!("row {i}"))).unwrap().status))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 3]);
    assert_eq!(server.max_in_flight(), 3);
    // Released for good: a lone request is not held.
    assert_eq!(openai(&server, None, chat("late")).unwrap().status, 200);
}

#[test]
fn connection_faults_happen_on_the_wire() {
    let server = ProviderServer::start();
    assert!(openai(&server, None, chat("#reset=1")).is_err(), "closed without a response");
    assert_eq!(openai(&server, None, chat("#reset=1")).unwrap().status, 200);

    let cut = anthropic(&server, None, message("#truncate=1")).unwrap();
    assert_eq!(cut.status, 200);
    let promised: usize = cut.header("content-length").unwrap().parse().unwrap();
    assert!(!cut.body.is_empty() && cut.body.len() < promised, "{} of {promised} bytes", cut.body.len());

    let garbled = openai(&server, None, chat("#malformed=1")).unwrap();
    assert_eq!(garbled.status, 200);
    assert!(serde_json::from_str::<Value>(&garbled.body).is_err());
    assert_eq!(openai(&server, None, chat("#malformed=1")).unwrap().json()["object"], "chat.completion");
}

#[test]
fn dropping_the_server_closes_hung_connections() {
    let server = ProviderServer::start();
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    let body = chat("#hang=1").to_string();
    write!(stream, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    // Wait until the request has been received, so the drop hits a hung request.
    while server.requests().is_empty() {
        std::thread::yield_now();
    }
    drop(server);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no answer, just a closed connection");
}

#[test]
fn the_fault_plan_injects_faults() {
    let faults = FaultPlan { seed: 1, rate_529: 1.0, ..Default::default() };
    let server = ProviderServer::start_with(ServerOptions { faults, ..Default::default() });
    let reply = anthropic(&server, None, message("hi")).unwrap();
    assert_eq!((reply.status, reply.json()["error"]["type"].as_str()), (529, Some("overloaded_error")));
}

// The batch APIs, driven through whole lifecycles.

fn get(server: &ProviderServer, path: &str) -> Raw {
    send(server.addr(), "GET", path, &[], "").unwrap()
}

/// `POST /v1/files` with `purpose=batch` and `jsonl` as the file.
fn upload(server: &ProviderServer, filename: &str, jsonl: &str) -> Raw {
    let boundary = "batchgen-test-7c1f";
    let body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         content-type: application/octet-stream\r\n\r\n{jsonl}\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    send(server.addr(), "POST", "/v1/files", &[("content-type", &content_type)], &body).unwrap()
}

fn batch_line(custom_id: &str, prompt: &str) -> String {
    json!({ "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": chat(prompt) }).to_string()
}

/// Uploads `lines` and creates a batch of them; the create's answer.
fn create_batch(server: &ProviderServer, lines: &[String]) -> Value {
    let file = upload(server, "input.jsonl", &(lines.join("\n") + "\n")).json();
    let body = json!({
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "metadata": { "run": "t1" },
    });
    let created =
        send(server.addr(), "POST", "/v1/batches", &[("content-type", "application/json")], &body.to_string()).unwrap();
    assert_eq!(created.status, 200, "{}", created.body);
    created.json()
}

fn poll_batch(server: &ProviderServer, batch: &Value) -> Value {
    get(server, &format!("/v1/batches/{}", batch["id"].as_str().unwrap())).json()
}

/// The lines of a JSONL body, by `custom_id`, checking none is repeated.
fn by_custom_id(jsonl: &str) -> HashMap<String, Value> {
    let mut lines = HashMap::new();
    for line in jsonl.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let id = line["custom_id"].as_str().unwrap().to_owned();
        assert!(lines.insert(id, line).is_none(), "a repeated custom_id");
    }
    lines
}

fn file_content(server: &ProviderServer, id: &Value) -> Raw {
    get(server, &format!("/v1/files/{}/content", id.as_str().unwrap()))
}

#[test]
fn openai_batch_runs_its_whole_lifecycle() {
    let server = ProviderServer::start();
    let lines = [
        batch_line("r0", "alpha beta"),
        batch_line("r1", "bad #status=400"),
        batch_line("r2", "cut #reset=1"),
        batch_line("r3", "flaky #fail=1:500"),
        batch_line("r4", "omega"),
    ];
    let jsonl = lines.join("\n") + "\n";
    let file = upload(&server, "input.jsonl", &jsonl);
    assert_eq!(file.status, 200, "{}", file.body);
    let file = file.json();
    assert!(file["id"].as_str().unwrap().starts_with("file-"));
    let expected = json!({
        "id": file["id"], "object": "file", "bytes": jsonl.len(), "created_at": file["created_at"],
        "filename": "input.jsonl", "purpose": "batch", "status": "processed", "status_details": null,
        "expires_at": file["created_at"].as_u64().unwrap() + 30 * 86_400,
    });
    assert_eq!(file, expected);
    assert_eq!(get(&server, &format!("/v1/files/{}", file["id"].as_str().unwrap())).json(), file);
    let content = file_content(&server, &file["id"]);
    assert_eq!(
        (content.body.as_str(), content.header("content-type")),
        (jsonl.as_str(), Some("application/octet-stream"))
    );

    let body = json!({ "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h" });
    let batch = send(server.addr(), "POST", "/v1/batches", &[], &body.to_string()).unwrap().json();
    assert!(batch["id"].as_str().unwrap().starts_with("batch_"));
    assert_eq!((batch["object"].as_str(), batch["status"].as_str()), (Some("batch"), Some("validating")));
    assert_eq!(batch["request_counts"], json!({ "total": 0, "completed": 0, "failed": 0 }));
    assert_eq!((batch["model"].as_str(), &batch["metadata"]), (Some("gpt-4o-mini"), &Value::Null));
    assert_eq!(batch["expires_at"].as_u64(), batch["created_at"].as_u64().map(|t| t + 86_400));
    for field in ["errors", "output_file_id", "error_file_id", "in_progress_at", "completed_at", "cancelled_at"] {
        assert!(batch[field].is_null(), "{field}");
    }
    assert_eq!(server.batches_created(), 1);

    let first = poll_batch(&server, &batch);
    assert_eq!(first["status"], "in_progress");
    assert!(first["in_progress_at"].is_u64());
    let counts = &first["request_counts"];
    assert_eq!(
        (counts["total"].as_u64(), counts["completed"].as_u64(), counts["failed"].as_u64()),
        (Some(5), Some(1), Some(1))
    );
    let second = poll_batch(&server, &batch);
    assert_eq!(second["status"], "finalizing");
    assert_eq!(second["request_counts"], json!({ "total": 5, "completed": 2, "failed": 3 }));
    assert!(second["output_file_id"].is_null(), "files come at the end");
    let done = poll_batch(&server, &batch);
    assert_eq!(done["status"], "completed");
    assert!(done["completed_at"].is_u64() && done["finalizing_at"].is_u64());
    let usage = json!({
        "input_tokens": 3, "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": 5, "output_tokens_details": { "reasoning_tokens": 0 }, "total_tokens": 8,
    });
    assert_eq!(done["usage"], usage);
    assert_eq!(poll_batch(&server, &batch), done, "a completed batch stays as it is");

    let output = file_content(&server, &done["output_file_id"]);
    let name = format!("{}_output.jsonl", batch["id"].as_str().unwrap());
    assert_eq!(output.header("content-disposition"), Some(format!("attachment; filename=\"{name}\"").as_str()));
    let output = by_custom_id(&output.body);
    assert_eq!(output.len(), 2);
    let r0 = &output["r0"];
    assert!(r0["id"].as_str().unwrap().starts_with("batch_req_"));
    assert_eq!((r0["response"]["status_code"].as_u64(), &r0["error"]), (Some(200), &Value::Null));
    assert!(r0["response"]["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(r0["response"]["body"]["object"], "chat.completion");
    assert_eq!(r0["response"]["body"]["choices"][0]["message"]["content"], "echo: alpha beta");
    assert_eq!(output["r4"]["response"]["body"]["choices"][0]["message"]["content"], "echo: omega");

    let errors = by_custom_id(&file_content(&server, &done["error_file_id"]).body);
    let status = |id: &str| (errors[id]["response"]["status_code"].as_u64(), errors[id]["error"].is_null());
    assert_eq!([status("r1"), status("r2"), status("r3")], [(Some(400), true), (Some(500), true), (Some(500), true)]);
    assert_eq!(errors["r1"]["response"]["body"]["error"]["code"], "context_length_exceeded");
    assert_eq!(errors["r2"]["response"]["body"]["error"]["type"], "server_error", "a reset becomes a 500");
    assert_eq!(errors.len(), 3);
    let error_file = get(&server, &format!("/v1/files/{}", done["error_file_id"].as_str().unwrap())).json();
    assert_eq!(error_file["purpose"], "batch_output");

    // Batch lines count attempts per row with the synchronous route.
    assert_eq!(openai(&server, None, chat("flaky #fail=1:500")).unwrap().status, 200);
    assert_eq!(server.requests().iter().filter(|r| r.path == "/v1/chat/completions").count(), 1);

    let deleted = send(server.addr(), "DELETE", &format!("/v1/files/{}", file["id"].as_str().unwrap()), &[], "");
    assert_eq!(deleted.unwrap().json(), json!({ "id": file["id"], "object": "file", "deleted": true }));
    let gone = get(&server, &format!("/v1/files/{}", file["id"].as_str().unwrap()));
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["message"], format!("No such File object: {}", file["id"].as_str().unwrap()));
}

#[test]
fn openai_batch_validation_fails_the_batch() {
    let options = ServerOptions { batch_max_requests: 5, batch_token_limit: Some(10), ..Default::default() };
    let server = ProviderServer::start_with(options);
    let validated = |lines: &[String]| {
        let batch = create_batch(&server, lines);
        poll_batch(&server, &batch)
    };
    let mut other_model = chat("four");
    other_model["model"] = json!("gpt-4o");
    let broken = validated(&[
        batch_line("a", "one"),
        "{not json".to_owned(),
        batch_line("a", "two"),
        json!({ "custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": chat("three") }).to_string(),
        json!({ "custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": other_model }).to_string(),
    ]);
    assert_eq!(broken["status"], "failed");
    assert!(broken["failed_at"].is_u64() && broken["in_progress_at"].is_null());
    assert_eq!(broken["errors"]["object"], "list");
    let found: Vec<_> = broken["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap(), e["param"].clone()))
        .collect();
    let expected = [
        (2, "invalid_json_line", Value::Null),
        (3, "duplicate_custom_id", json!("custom_id")),
        (4, "url_mismatch", json!("url")),
        (5, "model_mismatch", json!("body.model")),
    ];
    assert_eq!(found, expected);
    assert_eq!(broken["errors"]["data"][0]["message"], "This line is not parseable as valid JSON.");
    assert_eq!((broken["output_file_id"].is_null(), broken["request_counts"]["total"].as_u64()), (true, Some(0)));

    let only_error = |batch: &Value| (batch["status"].clone(), batch["errors"]["data"][0].clone());
    let (status, error) = only_error(&validated(&[String::new()]));
    assert_eq!((status, error["code"].as_str(), &error["line"]), (json!("failed"), Some("empty_file"), &Value::Null));
    let six: Vec<String> = (0..6).map(|i| batch_line(&format!("r{i}"), "x")).collect();
    let (_, error) = only_error(&validated(&six));
    assert_eq!((error["code"].as_str(), &error["line"]), (Some("too_many_tasks"), &Value::Null));

    // The enqueued-token limit counts the model's other running batches.
    let words = |i: usize| batch_line(&format!("w{i}"), "w w w w");
    let running = validated(&[words(0), words(1)]);
    assert_eq!(running["status"], "in_progress");
    let (status, error) = only_error(&validated(&[words(2)]));
    assert_eq!(
        (status, error["code"].as_str(), &error["line"]),
        (json!("failed"), Some("token_limit_exceeded"), &Value::Null)
    );
    assert_eq!(
        error["message"],
        "Enqueued token limit reached for gpt-4o-mini in organization org-test. Limit: 10 enqueued tokens. Please try again once some in_progress batches have been completed."
    );
    assert_eq!(poll_batch(&server, &running)["status"], "finalizing");
    assert_eq!(poll_batch(&server, &running)["status"], "completed");
    assert_eq!(validated(&[words(2)])["status"], "in_progress", "room again once the other one is done");

    // Refused at once: a file that is not .jsonl, a create without a file,
    // a file or batch that does not exist.
    let txt = upload(&server, "input.txt", &batch_line("a", "one"));
    let expected = json!({ "error": {
        "message": "Invalid file format for Batch API. Must be .jsonl", "type": "invalid_request_error", "param": null, "code": null,
    }});
    assert_eq!((txt.status, txt.json()), (400, expected));
    let body = json!({ "endpoint": "/v1/chat/completions", "completion_window": "24h" }).to_string();
    let missing = send(server.addr(), "POST", "/v1/batches", &[], &body).unwrap();
    let expected = json!({ "error": {
        "message": "Missing required parameter: 'input_file_id'.", "type": "invalid_request_error",
        "param": "input_file_id", "code": "missing_required_parameter",
    }});
    assert_eq!((missing.status, missing.json()), (400, expected));
    let body = json!({ "input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h" });
    assert_eq!(send(server.addr(), "POST", "/v1/batches", &[], &body.to_string()).unwrap().status, 404);
    assert_eq!(get(&server, "/v1/batches/batch_nope").status, 404);
}

#[test]
fn openai_batches_cancel_and_expire() {
    let server = ProviderServer::start();
    let lines: Vec<String> = ["a", "b", "c", "d"].iter().map(|id| batch_line(id, &format!("row {id}"))).collect();
    let batch = create_batch(&server, &lines);
    assert_eq!(poll_batch(&server, &batch)["request_counts"]["completed"], 2);
    let cancel = || {
        let path = format!("/v1/batches/{}/cancel", batch["id"].as_str().unwrap());
        send(server.addr(), "POST", &path, &[], "").unwrap()
    };
    let cancelling = cancel().json();
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());
    assert_eq!(cancel().json(), cancelling, "a second cancel answers the same");
    let cancelled = poll_batch(&server, &batch);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelled_at"].is_u64());
    assert_eq!(cancelled["request_counts"], json!({ "total": 4, "completed": 2, "failed": 0 }));
    assert!(cancelled["error_file_id"].is_null());
    let output = by_custom_id(&file_content(&server, &cancelled["output_file_id"]).body);
    let mut answered: Vec<_> = output.keys().cloned().collect();
    answered.sort();
    assert_eq!(answered, ["a", "b"], "what was answered before the cancel, nothing else");
    let refused = cancel();
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"]["message"], "Cannot cancel a batch with status 'cancelled'.");

    let batch = create_batch(&server, &[batch_line("x", "kept"), batch_line("y", "late #expire")]);
    assert_eq!(poll_batch(&server, &batch)["status"], "in_progress");
    let expired = poll_batch(&server, &batch);
    assert_eq!(expired["status"], "expired");
    assert!(expired["expired_at"].is_u64() && expired["finalizing_at"].is_null());
    assert_eq!(expired["request_counts"], json!({ "total": 2, "completed": 1, "failed": 1 }));
    let output = by_custom_id(&file_content(&server, &expired["output_file_id"]).body);
    assert_eq!(output["x"]["response"]["body"]["choices"][0]["message"]["content"], "echo: kept");
    let errors = by_custom_id(&file_content(&server, &expired["error_file_id"]).body);
    let expected = json!({
        "id": errors["y"]["id"], "custom_id": "y", "response": null,
        "error": { "code": "batch_expired", "message": "This request could not be executed before the completion window expired." },
    });
    assert_eq!(errors["y"], expected);
}

#[test]
fn openai_batches_are_listed_newest_first() {
    let server = ProviderServer::start();
    let ids: Vec<String> = (0..3)
        .map(|i| create_batch(&server, &[batch_line("a", &format!("batch {i}"))])["id"].as_str().unwrap().to_owned())
        .collect();
    let page = get(&server, "/v1/batches?limit=2").json();
    let listed = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(listed(&page), [ids[2].clone(), ids[1].clone()]);
    assert_eq!((page["object"].as_str(), page["has_more"].as_bool()), (Some("list"), Some(true)));
    assert_eq!((page["first_id"].as_str(), page["last_id"].as_str()), (Some(ids[2].as_str()), Some(ids[1].as_str())));
    let next = get(&server, &format!("/v1/batches?limit=2&after={}", ids[1])).json();
    assert_eq!((listed(&next), next["has_more"].as_bool()), (vec![ids[0].clone()], Some(false)));
    assert_eq!(listed(&get(&server, "/v1/batches").json()).len(), 3);
    assert_eq!(page["data"][0]["status"], "validating", "listing moves nothing on");
    assert_eq!(get(&server, "/v1/batches?limit=0").status, 400);
}

/// A call to an Anthropic batch endpoint with a version header and no key.
fn anthropic_call(server: &ProviderServer, method: &str, path: &str, body: &str) -> Raw {
    let headers = [("content-type", "application/json"), ("anthropic-version", "2023-06-01")];
    send(server.addr(), method, path, &headers, body).unwrap()
}

fn create_message_batch(server: &ProviderServer, requests: Value) -> Raw {
    anthropic_call(server, "POST", "/v1/messages/batches", &json!({ "requests": requests }).to_string())
}

fn batch_request(custom_id: &str, prompt: &str) -> Value {
    json!({ "custom_id": custom_id, "params": message(prompt) })
}

#[test]
fn anthropic_batch_runs_its_whole_lifecycle() {
    let key = "sk-ant-test";
    let options = ServerOptions { api_key: Some(key.into()), batch_polls: 2, ..Default::default() };
    let server = ProviderServer::start_with(options);
    let bearer = format!("Bearer {key}");
    let call = |method: &str, path: &str, body: &str| {
        let headers = [("authorization", bearer.as_str()), ("anthropic-version", "2023-06-01")];
        send(server.addr(), method, path, &headers, body).unwrap()
    };
    let mut hot = message("too hot");
    hot["temperature"] = json!(1.5);
    let requests = json!([
        batch_request("r-0", "hello there"),
        batch_request("r_1", "busy #status=529"),
        { "custom_id": "r2", "params": hot },
        batch_request("R3", "late #expire"),
        batch_request("r4", "stuck #hang=1"),
        batch_request("r5", "fine"),
    ]);
    let created = call("POST", "/v1/messages/batches", &json!({ "requests": requests }).to_string());
    assert_eq!(created.status, 200, "{}", created.body);
    let batch = created.json();
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));
    let counts = |processing: u64, succeeded: u64, errored: u64, canceled: u64, expired: u64| json!({ "processing": processing, "succeeded": succeeded, "errored": errored, "canceled": canceled, "expired": expired });
    let expected = json!({
        "id": id, "type": "message_batch", "processing_status": "in_progress", "request_counts": counts(6, 0, 0, 0, 0),
        "ended_at": null, "created_at": batch["created_at"], "expires_at": batch["expires_at"],
        "archived_at": null, "cancel_initiated_at": null, "results_url": null,
    });
    assert_eq!(batch, expected);
    assert!(batch["created_at"].as_str().unwrap().ends_with('Z'));
    let results_path = format!("/v1/messages/batches/{id}/results");
    assert_eq!(call("GET", &results_path, "").status, 400, "no results before the end");

    let path = format!("/v1/messages/batches/{id}");
    for _ in 0..2 {
        let polled = call("GET", &path, "").json();
        assert_eq!(polled["processing_status"], "in_progress");
        assert_eq!(polled["request_counts"], counts(6, 0, 0, 0, 0), "no progress shows before the end");
    }
    // The key goes as x-api-key too; without it, or the version, no answer.
    let headers = [("x-api-key", key), ("anthropic-version", "2023-06-01")];
    let ended = send(server.addr(), "GET", &path, &headers, "").unwrap().json();
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(ended["request_counts"], counts(0, 2, 3, 0, 1));
    assert!(ended["ended_at"].is_string());
    assert_eq!(ended["results_url"], format!("http://{}{results_path}", server.addr()));
    let unauthorized = anthropic_call(&server, "GET", &path, "");
    assert_eq!(
        (unauthorized.status, unauthorized.json()["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(send(server.addr(), "GET", &path, &[("x-api-key", key)], "").unwrap().status, 400);

    let results = call("GET", &results_path, "");
    assert_eq!(results.status, 200);
    let results = by_custom_id(&results.body);
    assert_eq!(results.len(), 6);
    let result = |id: &str| results[id]["result"].clone();
    assert_eq!(result("r-0")["type"], "succeeded");
    assert_eq!(result("r-0")["message"]["type"], "message");
    assert_eq!(result("r-0")["message"]["content"][0]["text"], "echo: hello there");
    assert_eq!(result("r5")["message"]["content"][0]["text"], "echo: fine");
    let error = |id: &str| {
        let result = result(id);
        assert_eq!((result["type"].as_str(), result["error"]["type"].as_str()), (Some("errored"), Some("error")));
        assert!(result["error"]["request_id"].as_str().unwrap().starts_with("req_"));
        result["error"]["error"].clone()
    };
    assert_eq!(error("r_1")["type"], "overloaded_error");
    assert_eq!(
        error("r2"),
        json!({ "type": "invalid_request_error", "message": "temperature: Input should be less than or equal to 1" })
    );
    assert_eq!(error("r4")["type"], "api_error", "a hang becomes a 500");
    assert_eq!(result("R3"), json!({ "type": "expired" }));

    let deleted = call("DELETE", &path, "").json();
    assert_eq!(deleted, json!({ "id": id, "type": "message_batch_deleted" }));
    let gone = call("GET", &path, "");
    assert_eq!((gone.status, gone.json()["error"]["type"].as_str()), (404, Some("not_found_error")));
    assert_eq!(server.batches_created(), 1);
}

#[test]
fn anthropic_batch_creates_are_checked() {
    let options = ServerOptions { anthropic_batch_max_requests: 3, ..Default::default() };
    let server = ProviderServer::start_with(options);
    let refused = |requests: Value| {
        let reply = create_message_batch(&server, requests);
        assert_eq!(reply.status, 400, "{}", reply.body);
        let json = reply.json();
        assert_eq!(
            (json["type"].as_str(), json["error"]["type"].as_str()),
            (Some("error"), Some("invalid_request_error"))
        );
        json["error"]["message"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        refused(json!([batch_request("ok", "a"), batch_request("row/1", "b")])),
        "requests.1.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"
    );
    assert_eq!(
        refused(json!([batch_request(&"x".repeat(65), "a")])),
        "requests.0.custom_id: String should have at most 64 characters"
    );
    assert!(refused(json!([batch_request("a", "1"), batch_request("a", "2")])).starts_with("requests.1.custom_id: "));
    let mut streamed = batch_request("s", "a");
    streamed["params"]["stream"] = json!(true);
    assert!(refused(json!([streamed])).starts_with("requests.0.params.stream: "));
    let four: Vec<Value> = (0..4).map(|i| batch_request(&format!("r{i}"), "a")).collect();
    assert_eq!(refused(json!(four)), "requests: List should have at most 3 items after validation, not 4");
    assert_eq!(refused(json!([])), "requests: List should have at least 1 item after validation, not 0");
    assert_eq!(server.batches_created(), 0);
}

#[test]
fn anthropic_batches_cancel_list_and_delete() {
    let server = ProviderServer::start();
    let create = |ids: &[&str]| {
        let requests: Vec<Value> = ids.iter().map(|id| batch_request(id, &format!("row {id}"))).collect();
        create_message_batch(&server, json!(requests)).json()["id"].as_str().unwrap().to_owned()
    };
    let first = create(&["a", "b", "c"]);
    let cancel_path = format!("/v1/messages/batches/{first}/cancel");
    let canceling = anthropic_call(&server, "POST", &cancel_path, "").json();
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    assert_eq!(anthropic_call(&server, "POST", &cancel_path, "").json(), canceling);
    let ended = anthropic_call(&server, "GET", &format!("/v1/messages/batches/{first}"), "").json();
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(ended["request_counts"]["canceled"], 3);
    let results = anthropic_call(&server, "GET", &format!("/v1/messages/batches/{first}/results"), "");
    let results = by_custom_id(&results.body);
    assert_eq!(results.len(), 3);
    assert!(results.values().all(|line| line["result"] == json!({ "type": "canceled" })));

    let second = create(&["d"]);
    let delete = anthropic_call(&server, "DELETE", &format!("/v1/messages/batches/{second}"), "");
    assert_eq!(delete.status, 400, "not before it ended");
    let third = create(&["e"]);

    let list = |query: &str| anthropic_call(&server, "GET", &format!("/v1/messages/batches{query}"), "").json();
    let ids = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect()
    };
    let page = list("?limit=2");
    assert_eq!(ids(&page), [third.clone(), second.clone()]);
    assert_eq!(
        (page["has_more"].as_bool(), page["first_id"].as_str(), page["last_id"].as_str()),
        (Some(true), Some(third.as_str()), Some(second.as_str()))
    );
    let next = list(&format!("?limit=2&after_id={second}"));
    assert_eq!((ids(&next), next["has_more"].as_bool()), (vec![first.clone()], Some(false)));
    let back = list(&format!("?limit=1&before_id={first}"));
    assert_eq!((ids(&back), back["has_more"].as_bool()), (vec![second.clone()], Some(true)));
    assert_eq!(ids(&list("")).len(), 3);
    assert_eq!(list("")["data"][0]["processing_status"], "in_progress", "listing moves nothing on");
}

#[test]
fn large_batch_uploads_are_recorded_cut_short() {
    let server = ProviderServer::start();
    let lines: Vec<String> = (0..400).map(|i| batch_line(&format!("r{i}"), &"word ".repeat(40))).collect();
    let jsonl = lines.join("\n");
    assert!(jsonl.len() > 64 * 1024);
    let file = upload(&server, "big.jsonl", &jsonl).json();
    assert_eq!(file["bytes"], jsonl.len());
    let recorded = &server.requests()[0];
    assert_eq!((recorded.raw_body.len(), &recorded.body), (64 * 1024, &Value::Null));
    assert!(recorded.body_len > jsonl.len());
    assert_eq!(file_content(&server, &file["id"]).body, jsonl, "the file itself is whole");
}
