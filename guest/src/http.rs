//! Non-blocking `wasi:http` plumbing: start a request, then advance it each
//! time its pollable fires, so one `poll` call can wait on a whole batch.

use crate::batchgen::plugin::types::RowError;
use crate::providers::{HttpReply, HttpRequest, Verdict};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::poll::Pollable;
use wasip2::io::streams::{InputStream, StreamError};

/// Replies beyond this are not LLM completions; refusing them keeps a broken
/// or hostile server from exhausting the component's memory.
const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;
/// `blocking-write-and-flush` accepts at most this many bytes per call.
const MAX_BLOCKING_WRITE: usize = 4096;

/// Why an attempt ended without a reply.
pub enum Failure {
    Http(ErrorCode),
    /// The reply broke off mid-body for a reason the host did not map to an
    /// error code: a network fault, so worth another attempt.
    CutOff(String),
    /// The request could not be made at all: retrying cannot help.
    Other(String),
}

/// A request on the wire.
pub enum InFlight {
    Head {
        // Declared first so it drops before the future it watches.
        pollable: Pollable,
        future: FutureIncomingResponse,
    },
    Body(Reading),
}

/// A reply whose body is arriving. Fields drop in declaration order, which
/// is the order WASI requires: each child before its parent.
pub struct Reading {
    pollable: Pollable,
    stream: InputStream,
    #[expect(dead_code, reason = "held only so that it outlives the stream")]
    body: IncomingBody,
    #[expect(dead_code, reason = "held only so that it outlives the body")]
    response: IncomingResponse,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    bytes: Vec<u8>,
}

pub enum Step {
    Pending(InFlight),
    Done(Result<HttpReply, Failure>),
}

impl InFlight {
    /// Sends `request`. The body is written before `handle` when the host's
    /// buffer takes it whole, so starting a request never waits on the network.
    pub fn start(request: &HttpRequest) -> Result<InFlight, Failure> {
        let other = |what: &str| Failure::Other(format!("could not build the request: {what}"));
        let (outgoing, body) = outgoing(request)?;
        let stream = body.write().map_err(|()| other("body stream"))?;
        let permit = stream.check_write().map_err(|e| Failure::Other(format!("body stream: {e:?}")))?;
        let future = if permit as usize >= request.body.len() {
            stream.write(&request.body).map_err(|e| Failure::Other(format!("body write: {e:?}")))?;
            drop(stream);
            OutgoingBody::finish(body, None).map_err(Failure::Http)?;
            outgoing_handler::handle(outgoing, None).map_err(Failure::Http)?
        } else {
            // Larger than the host buffers: hand over the request first so the
            // host drains the stream while we write.
            let future = outgoing_handler::handle(outgoing, None).map_err(Failure::Http)?;
            for chunk in request.body.chunks(MAX_BLOCKING_WRITE) {
                stream.blocking_write_and_flush(chunk).map_err(|e| Failure::Other(format!("body write: {e:?}")))?;
            }
            drop(stream);
            OutgoingBody::finish(body, None).map_err(Failure::Http)?;
            future
        };
        Ok(InFlight::Head { pollable: future.subscribe(), future })
    }

    pub fn pollable(&self) -> &Pollable {
        match self {
            InFlight::Head { pollable, .. } => pollable,
            InFlight::Body(reading) => &reading.pollable,
        }
    }

    /// Makes whatever progress is possible without blocking.
    pub fn advance(self) -> Step {
        match self {
            InFlight::Head { pollable, future } => {
                let Some(outcome) = future.get() else {
                    return Step::Pending(InFlight::Head { pollable, future });
                };
                drop(pollable);
                let response = match outcome {
                    Ok(Ok(response)) => response,
                    Ok(Err(code)) => return Step::Done(Err(Failure::Http(code))),
                    Err(()) => return Step::Done(Err(Failure::Other("response taken twice".into()))),
                };
                let status = response.status();
                let headers = response.headers().entries();
                let Ok(body) = response.consume() else {
                    return Step::Done(Err(Failure::Other("response body taken twice".into())));
                };
                let Ok(stream) = body.stream() else {
                    return Step::Done(Err(Failure::Other("response body stream taken twice".into())));
                };
                let reading = Reading {
                    pollable: stream.subscribe(),
                    stream,
                    body,
                    response,
                    status,
                    headers,
                    bytes: Vec::new(),
                };
                InFlight::Body(reading).advance()
            }
            InFlight::Body(mut reading) => loop {
                match reading.stream.read(64 * 1024) {
                    Ok(chunk) if chunk.is_empty() => return Step::Pending(InFlight::Body(reading)),
                    Ok(chunk) => {
                        reading.bytes.extend_from_slice(&chunk);
                        if reading.bytes.len() > MAX_REPLY_BYTES {
                            let size = reading.bytes.len() as u64;
                            return Step::Done(Err(Failure::Http(ErrorCode::HttpResponseBodySize(Some(size)))));
                        }
                    }
                    Err(StreamError::Closed) => {
                        let reply = HttpReply {
                            status: reading.status,
                            headers: std::mem::take(&mut reading.headers),
                            body: std::mem::take(&mut reading.bytes),
                        };
                        return Step::Done(Ok(reply));
                    }
                    Err(StreamError::LastOperationFailed(error)) => {
                        let failure = match wasip2::http::types::http_error_code(&error) {
                            Some(code) => Failure::Http(code),
                            None => Failure::CutOff(format!("reading the reply failed: {}", error.to_debug_string())),
                        };
                        return Step::Done(Err(failure));
                    }
                }
            },
        }
    }
}

/// `request`'s head as a `wasi:http` request, and its body to write.
pub fn outgoing(request: &HttpRequest) -> Result<(OutgoingRequest, OutgoingBody), Failure> {
    let other = |what: &str| Failure::Other(format!("could not build the request: {what}"));
    let headers = Fields::from_list(&request.headers)
        .map_err(|e| Failure::Other(format!("the host refused a request header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = if request.get { Method::Get } else { Method::Post };
    outgoing.set_method(&method).map_err(|()| other("method"))?;
    let scheme = if request.https { Scheme::Https } else { Scheme::Http };
    outgoing.set_scheme(Some(&scheme)).map_err(|()| other("scheme"))?;
    outgoing.set_authority(Some(&request.authority)).map_err(|()| other("authority"))?;
    outgoing.set_path_with_query(Some(&request.path)).map_err(|()| other("path"))?;
    // No request-options: wasmtime-wasi-http 48's `handle` never frees
    // them (one leaked table entry per request). Timeouts are the host's to
    // apply; the component's own deadline backs them up.
    let body = outgoing.body().map_err(|()| other("body"))?;
    Ok((outgoing, body))
}

/// Sends one request and waits for its whole reply, at most `timeout_ns`.
pub fn fetch(request: &HttpRequest, timeout_ns: u64) -> Result<HttpReply, Failure> {
    let deadline = wasip2::clocks::monotonic_clock::now().saturating_add(timeout_ns);
    let mut flight = InFlight::start(request)?;
    loop {
        let now = wasip2::clocks::monotonic_clock::now();
        if now >= deadline {
            return Err(Failure::Http(ErrorCode::HttpResponseTimeout));
        }
        let timer = wasip2::clocks::monotonic_clock::subscribe_duration(deadline - now);
        wasip2::io::poll::poll(&[flight.pollable(), &timer]);
        drop(timer);
        match flight.advance() {
            Step::Pending(next) => flight = next,
            Step::Done(result) => return result,
        }
    }
}

/// Which transport failures are worth another attempt. Policy denials and
/// malformed requests never are: repeating them cannot change the answer.
pub fn transport_verdict(failure: Failure) -> Verdict {
    let code = match failure {
        Failure::Other(message) => return Verdict::Done(Err(RowError::Transport(message))),
        Failure::CutOff(message) => return Verdict::Retry { error: RowError::Transport(message), after_ns: None },
        Failure::Http(code) => code,
    };
    let retry = |error| Verdict::Retry { error, after_ns: None };
    match code {
        ErrorCode::HttpRequestDenied => Verdict::Done(Err(RowError::Transport(
            "request denied by the host's network policy (HttpRequestDenied)".into(),
        ))),
        ErrorCode::HttpResponseBodySize(size) => Verdict::Done(Err(RowError::Transport(format!(
            "reply body too large ({} bytes)",
            size.map_or_else(|| "unknown".to_string(), |s| s.to_string())
        )))),
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::ConfigurationError
        | ErrorCode::TlsCertificateError
        | ErrorCode::LoopDetected => Verdict::Done(Err(RowError::Transport(format!("{code:?}")))),
        ErrorCode::DnsTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => retry(RowError::Timeout(format!("{code:?}"))),
        other => retry(RowError::Transport(format!("{other:?}"))),
    }
}
