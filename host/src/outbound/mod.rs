//! Every request the component makes passes through here: the operator's
//! allowlist, the credentials, and one pooled client.
//!
//! The component never holds an API key and never decides where it may
//! connect. It asks; this module checks the request's origin against the
//! provider endpoints the operator configured, adds that provider's key, and
//! sends it over a keep-alive connection pool (HTTP/2 where the server
//! offers it through ALPN, rustls for TLS).

mod allowlist;
mod client;

pub use allowlist::{Allowlist, CREDENTIAL_HEADERS, Denials, Denied, Destination, Origin};
pub use client::{HttpClient, IN_FLIGHT_WINDOW, download_client, full_body, http_client};

use crate::calls::CallScope;
use crate::pace::Pacer;
use bytes::Bytes;
use client::client_error;
use http_body_util::BodyExt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks,
};

/// Used when nobody sets a timeout: the official SDKs' ten minutes.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest write to an outgoing body. wasmtime queues one chunk and accepts
/// one more, so a body that is never sent holds at most two on the host.
/// A body larger than a chunk streams after its request is handed over.
pub const BODY_CHUNK_BYTES: usize = 4 << 10;

/// Most of a request body read before the pacer admits it, to estimate its
/// tokens; the rest streams on unread.
const PEEK_BYTES: usize = IN_FLIGHT_WINDOW;

/// The `wasi:http` hooks of one store.
#[derive(Clone)]
pub struct Outbound {
    allowlist: Allowlist,
    denials: Denials,
    /// The calls of the store these hooks serve: a request belongs to the
    /// call that made it.
    scope: CallScope,
    /// The store's requests queued or in flight.
    in_flight: InFlight,
    client: HttpClient,
    pacer: Arc<Pacer>,
    max_reply_bytes: usize,
    request_timeout: Duration,
}

impl Outbound {
    /// Hooks allowing `destinations`, sending through `client` at the pace
    /// `pacer` sets. Clones share all three: one run, one pool, one pace.
    pub fn new(destinations: Vec<Destination>, client: HttpClient, pacer: Arc<Pacer>) -> Outbound {
        Outbound {
            allowlist: Allowlist::new(destinations),
            denials: Denials::default(),
            scope: CallScope::default(),
            in_flight: InFlight::new(usize::MAX),
            client,
            pacer,
            max_reply_bytes: usize::MAX,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The deadline of each request, from its admission by the pacer to the
    /// end of its body, unless the component sets a first-byte timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Outbound {
        self.request_timeout = timeout;
        self
    }

    /// Replies whose body exceeds `bytes` fail with `HttpResponseBodySize`
    /// instead of reaching the component.
    pub fn with_reply_cap(mut self, bytes: usize) -> Outbound {
        self.max_reply_bytes = bytes;
        self
    }

    /// These hooks for one more store: the allowlist, pool, pace and
    /// denial counts are shared with `self`; the calls in progress and the
    /// requests in flight, at most `max_in_flight`, are the new store's own.
    pub fn for_store(&self, max_in_flight: usize) -> (Outbound, CallScope) {
        let scope = CallScope::default();
        (Outbound { scope: scope.clone(), in_flight: InFlight::new(max_in_flight), ..self.clone() }, scope)
    }

    /// The requests denied so far, per destination (shared by every clone).
    pub fn denials(&self) -> Vec<(String, u64)> {
        self.denials.tally()
    }

    /// Hooks that deny every request: for instances that only answer
    /// questions (`check-config`, `list-models`).
    pub fn deny_all() -> Outbound {
        Outbound::new(Vec::new(), http_client(), Pacer::new(Default::default()))
    }
}

impl WasiHttpHooks for Outbound {
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name| DEFAULT_FORBIDDEN_HEADERS.contains(name) || CREDENTIAL_HEADERS.contains(&name.as_str()))
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        // Held until the reply's body is read or dropped: a store has at
        // most its batch size of requests queued or in flight.
        let Some(slot) = self.in_flight.take() else {
            tracing::debug!("refused a request: the store already has {} in flight", self.in_flight.max);
            return Box::new(async { Err(HttpError::ConnectionLimitReached) });
        };
        let decision = self.allowlist.authorize(&mut request).map_err(|denied| match denied {
            Denied::InvalidUri => HttpError::HttpRequestUriInvalid,
            Denied::NotAllowed(origin) => {
                if self.denials.count(&origin) {
                    tracing::warn!("denied a request to {origin}: not a configured endpoint (counted from now on)");
                }
                HttpError::HttpRequestDenied
            }
        });
        let client = self.client.clone();
        let pacer = Arc::clone(&self.pacer);
        let cap = self.max_reply_bytes;
        // A component's first-byte timeout, else the run's request timeout,
        // bounds the whole exchange, body included.
        let timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(self.request_timeout);
        // A request belongs to the call that made it: one still waiting (on
        // the pacer, say) when that call has ended is never sent.
        let call = self.scope.ticket();
        let ended = || {
            tracing::debug!("dropped a request whose call has ended");
            HttpError::HttpRequestDenied
        };
        Box::new(async move {
            decision?;
            if !call.is_live() {
                return Err(ended());
            }
            let (request, tokens) = if pacer.counts_tokens() { estimate_tokens(request).await? } else { (request, 0) };
            let permit = pacer.admit(tokens).await;
            if !call.is_live() {
                return Err(ended());
            }
            // The deadline runs from admission: time spent waiting on the
            // pacer is not the provider's.
            let deadline = tokio::time::Instant::now() + timeout;
            let response = tokio::time::timeout_at(deadline, client.request(request))
                .await
                .map_err(|_| HttpError::HttpResponseTimeout)?
                .map_err(client_error)?;
            pacer.observe(response.status().as_u16(), response.headers(), permit.admitted_at());
            drop(permit);
            let response = response.map(|body| {
                Guarded {
                    inner: body.map_err(HttpError::from),
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    remaining: cap,
                    _slot: slot,
                }
                .boxed_unsync()
            });
            // The pool drives connections on its own tasks: nothing to await.
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// A store's requests queued or in flight, counted against a cap.
#[derive(Clone)]
struct InFlight {
    max: usize,
    count: Arc<AtomicUsize>,
}

impl InFlight {
    fn new(max: usize) -> InFlight {
        InFlight { max, count: Arc::default() }
    }

    /// A slot, if one is free; it frees itself when dropped.
    fn take(&self) -> Option<Slot> {
        self.count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(Slot(Arc::clone(&self.count)))
    }
}

/// One request's place among a store's requests in flight.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body held to its request's deadline and to the reply cap, so
/// a server that stalls mid-body or sends without end cannot hold a row past
/// its timeout or fill the component's memory. It keeps its request's slot
/// until the component has read it or let it go.
struct Guarded<B> {
    inner: B,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    remaining: usize,
    _slot: Slot,
}

impl<B> hyper::body::Body for Guarded<B>
where
    B: hyper::body::Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref().map_or(0, |d| d.len()))) {
                if data > self.remaining {
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
                }
                self.remaining -= data;
            }
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a request counts against a tokens-per-minute limit, as the
/// providers' limiters count it: the prompt (about four bytes a token) plus
/// the most it may generate. Reads at most [`PEEK_BYTES`] of the body and
/// puts them back in front of the rest: the prompt's size is then the
/// `content-length` the component declared, and `max_tokens` comes first in
/// the component's (key-sorted) JSON.
async fn estimate_tokens(request: http::Request<WasiBody>) -> Result<(http::Request<WasiBody>, u32), HttpError> {
    let (parts, mut body) = request.into_parts();
    let mut head = bytes::BytesMut::new();
    let mut ended = true;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            head.extend_from_slice(&data);
        }
        if head.len() >= PEEK_BYTES {
            ended = false;
            break;
        }
    }
    let head = head.freeze();
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let size = declared.unwrap_or(head.len() as u64).max(head.len() as u64);
    let tokens = (size / 4).saturating_add(max_tokens_in(&head));
    let rest = if ended { full_body(head) } else { prefixed(head, body) };
    Ok((http::Request::from_parts(parts, rest), u32::try_from(tokens).unwrap_or(u32::MAX)))
}

/// The `max_tokens` (or `max_completion_tokens`) a request body asks for, 0
/// if its start does not say.
fn max_tokens_in(head: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(head);
    ["\"max_tokens\":", "\"max_completion_tokens\":"]
        .iter()
        .find_map(|key| {
            let after = text[text.find(key)? + key.len()..].trim_start();
            after[..after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len())].parse().ok()
        })
        .unwrap_or(0)
}

/// A body whose first bytes were read already: `head`, then the rest.
struct Prefixed {
    head: Option<Bytes>,
    rest: WasiBody,
}

fn prefixed(head: Bytes, rest: WasiBody) -> WasiBody {
    Prefixed { head: Some(head), rest }.boxed_unsync()
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        match self.head.take() {
            Some(head) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(head)))),
            None => std::pin::Pin::new(&mut self.rest).poll_frame(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request to the allowed origin, through these hooks, polled only
    /// after `between` ran.
    async fn send_after(between: impl FnOnce(&CallScope)) -> Result<(), HttpError> {
        let origin = Origin::parse("http://127.0.0.1:9").unwrap();
        let template = Outbound::new(
            vec![Destination::bearer(origin, None).unwrap()],
            http_client(),
            Pacer::new(Default::default()),
        );
        let (mut hooks, scope) = template.for_store(usize::MAX);
        scope.begin();
        let request = http::Request::post("http://127.0.0.1:9/v1/chat/completions").body(full_body("{}")).unwrap();
        let sending = hooks.send_request(request, None, Box::new(async { Ok(()) }));
        between(&scope);
        Box::into_pin(sending).await.map(|_| ())
    }

    #[tokio::test]
    async fn a_request_whose_call_has_ended_is_never_sent() {
        let result = send_after(CallScope::end).await;
        assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{result:?}");
        // Nor one from an earlier call while a later one runs.
        let result = send_after(|scope| {
            scope.end();
            scope.begin();
        })
        .await;
        assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{result:?}");
        // While its call runs it goes out (port 9 refuses: the error is the connection's).
        let result = send_after(|_| {}).await;
        assert!(matches!(result, Err(HttpError::ConnectionRefused)), "{result:?}");
    }

    #[tokio::test]
    async fn a_large_body_is_sized_from_its_declared_length_and_sent_whole() {
        let json = format!("{{\"max_tokens\":100,\"messages\":\"{}\"}}", "x".repeat(1 << 20));
        let length = json.len();
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, HttpError>> = json
            .as_bytes()
            .chunks(4096)
            .map(|chunk| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed_unsync();
        let request = http::Request::post("http://x/").header("content-length", length).body(body).unwrap();
        let (request, tokens) = estimate_tokens(request).await.unwrap();
        assert_eq!(tokens as usize, length / 4 + 100);
        let sent = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), length, "the peeked head goes out in front of the rest");
        assert_eq!(max_tokens_in(br#"{"max_completion_tokens": 7,"#), 7);
        assert_eq!(max_tokens_in(b"{}"), 0);
    }

    #[test]
    fn a_store_gets_no_more_slots_than_its_cap() {
        let in_flight = InFlight::new(2);
        let (a, b) = (in_flight.take().unwrap(), in_flight.take().unwrap());
        assert!(in_flight.take().is_none());
        drop(a);
        let c = in_flight.take();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(in_flight.count.load(Ordering::SeqCst), 0);
    }
}
