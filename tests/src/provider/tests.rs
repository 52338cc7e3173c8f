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
