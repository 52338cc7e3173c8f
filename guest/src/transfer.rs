//! Requests whose bodies do not fit in memory: an upload streamed from a
//! host `input-stream`, a download streamed into a host `output-stream`.
//! Batch files run to hundreds of megabytes; the component only ever holds
//! one chunk of them.

use crate::http::{self, Failure};
use crate::providers::{HttpReply, HttpRequest};
use wasip2::http::types::{ErrorCode, FutureIncomingResponse, IncomingResponse};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// `blocking-write-and-flush` accepts at most this many bytes per call.
const MAX_BLOCKING_WRITE: usize = 4096;
/// Error replies are read whole; a result file never is.
const MAX_ERROR_BODY: usize = 1 << 20;

/// One piece of an upload body: bytes the component made, or the rest of
/// the host's stream, passed through `map` on the way.
pub enum Piece<'a> {
    Bytes(Vec<u8>),
    Stream { stream: &'a InputStream, map: &'a mut dyn FnMut(&mut Vec<u8>, bool) },
}

/// Sends `head` (its `body` ignored) with a body of `length` bytes made of
/// `pieces`, and reads the whole (small) reply. A stream that ends early or
/// runs past `length` fails the upload rather than sending a body that
/// disagrees with its declared length.
pub fn upload(head: &HttpRequest, length: u64, pieces: Vec<Piece<'_>>, timeout_ns: u64) -> Result<HttpReply, Failure> {
    let deadline = wasip2::clocks::monotonic_clock::now().saturating_add(timeout_ns);
    let (outgoing, body) = http::outgoing(head)?;
    let future = wasip2::http::outgoing_handler::handle(outgoing, None).map_err(Failure::Http)?;
    let stream = body.write().map_err(|()| Failure::Other("could not open the upload's body".into()))?;
    let mut sent: u64 = 0;
    let mut write = |bytes: &[u8]| -> Result<(), Failure> {
        for chunk in bytes.chunks(MAX_BLOCKING_WRITE) {
            stream.blocking_write_and_flush(chunk).map_err(|e| write_failure(&future, e))?;
        }
        sent += bytes.len() as u64;
        Ok(())
    };
    pieces.into_iter().try_for_each(|piece| send_piece(piece, &mut write))?;
    if sent != length {
        return Err(Failure::Other(format!("the job file held {sent} bytes of upload, not the {length} declared")));
    }
    drop(stream);
    wasip2::http::types::OutgoingBody::finish(body, None).map_err(Failure::Http)?;
    let response = wait(&future, deadline)?;
    read_small(response, deadline)
}

/// Writes one piece of an upload with `write`.
fn send_piece(piece: Piece<'_>, write: &mut dyn FnMut(&[u8]) -> Result<(), Failure>) -> Result<(), Failure> {
    let (source, map) = match piece {
        Piece::Bytes(bytes) => return write(&bytes),
        Piece::Stream { stream, map } => (stream, map),
    };
    loop {
        match source.blocking_read(64 * 1024) {
            Ok(mut chunk) => {
                map(&mut chunk, false);
                write(&chunk)?;
            }
            Err(StreamError::Closed) => {
                let mut tail = Vec::new();
                map(&mut tail, true);
                return write(&tail);
            }
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(Failure::Other(format!("reading the job file failed: {}", error.to_debug_string())));
            }
        }
    }
}

/// A failed body write: the reason is the response's when it has one (the
/// server refused the upload early).
fn write_failure(future: &FutureIncomingResponse, error: StreamError) -> Failure {
    if let Some(Ok(Err(code))) = future.get() {
        return Failure::Http(code);
    }
    match error {
        StreamError::LastOperationFailed(error) => match wasip2::http::types::http_error_code(&error) {
            Some(code) => Failure::Http(code),
            None => Failure::CutOff(format!("sending the upload failed: {}", error.to_debug_string())),
        },
        StreamError::Closed => Failure::CutOff("the connection closed during the upload".into()),
    }
}

/// What a download ended with.
pub enum Downloaded {
    /// A 2xx reply, its body written to the sink: this many bytes.
    Written(u64),
    /// Any other reply, read whole (it is an error message).
    Refused(HttpReply),
}

/// Sends `request` and streams a 2xx reply's body into `sink`.
pub fn download(request: &HttpRequest, sink: &OutputStream, timeout_ns: u64) -> Result<Downloaded, Failure> {
    let deadline = wasip2::clocks::monotonic_clock::now().saturating_add(timeout_ns);
    let (outgoing, body) = http::outgoing(request)?;
    wasip2::http::types::OutgoingBody::finish(body, None).map_err(Failure::Http)?;
    let future = wasip2::http::outgoing_handler::handle(outgoing, None).map_err(Failure::Http)?;
    let response = wait(&future, deadline)?;
    if !(200..300).contains(&response.status()) {
        return read_small(response, deadline).map(Downloaded::Refused);
    }
    let incoming = response.consume().map_err(|()| Failure::Other("response body taken twice".into()))?;
    let stream = incoming.stream().map_err(|()| Failure::Other("response body stream taken twice".into()))?;
    let mut written = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                write_all(sink, &chunk)?;
                written += chunk.len() as u64;
            }
            Err(StreamError::Closed) => {
                sink.blocking_flush().map_err(refused)?;
                break;
            }
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(match wasip2::http::types::http_error_code(&error) {
                    Some(code) => Failure::Http(code),
                    None => Failure::CutOff(format!("the download broke off: {}", error.to_debug_string())),
                });
            }
        }
    }
    drop(stream);
    drop(incoming);
    Ok(Downloaded::Written(written))
}

/// Hands `bytes` to the host as fast as it takes them: as much as it has
/// room for at each write, waiting only when it has none.
fn write_all(sink: &OutputStream, mut bytes: &[u8]) -> Result<(), Failure> {
    while !bytes.is_empty() {
        let room = usize::try_from(sink.check_write().map_err(refused)?).unwrap_or(usize::MAX);
        if room == 0 {
            sink.subscribe().block();
            continue;
        }
        let (now, rest) = bytes.split_at(room.min(bytes.len()));
        sink.write(now).map_err(refused)?;
        bytes = rest;
    }
    Ok(())
}

fn refused(error: StreamError) -> Failure {
    Failure::Other(format!("the host refused the download's bytes: {error:?}"))
}

/// Waits for the response head, at most until `deadline`.
fn wait(future: &FutureIncomingResponse, deadline: u64) -> Result<IncomingResponse, Failure> {
    loop {
        if let Some(outcome) = future.get() {
            return match outcome {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(code)) => Err(Failure::Http(code)),
                Err(()) => Err(Failure::Other("response taken twice".into())),
            };
        }
        let now = wasip2::clocks::monotonic_clock::now();
        if now >= deadline {
            return Err(Failure::Http(ErrorCode::HttpResponseTimeout));
        }
        let pollable = future.subscribe();
        let timer = wasip2::clocks::monotonic_clock::subscribe_duration(deadline - now);
        wasip2::io::poll::poll(&[&pollable, &timer]);
    }
}

/// Reads a reply that should be small (a job object, an error) whole.
fn read_small(response: IncomingResponse, deadline: u64) -> Result<HttpReply, Failure> {
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| Failure::Other("response body taken twice".into()))?;
    let stream = incoming.stream().map_err(|()| Failure::Other("response body stream taken twice".into()))?;
    let mut bytes = Vec::new();
    loop {
        if wasip2::clocks::monotonic_clock::now() >= deadline {
            return Err(Failure::Http(ErrorCode::HttpResponseTimeout));
        }
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_ERROR_BODY {
                    return Err(Failure::Http(ErrorCode::HttpResponseBodySize(Some(bytes.len() as u64))));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(Failure::CutOff(format!("reading the reply failed: {}", error.to_debug_string())));
            }
        }
    }
    drop(stream);
    drop(incoming);
    Ok(HttpReply { status, headers, body: bytes })
}
