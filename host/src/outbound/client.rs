//! The one HTTP client of a run: a keep-alive pool (HTTP/2 where the server
//! offers it through ALPN, rustls for TLS), and how its failures read to
//! the component.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The most a request in flight buffers on the host, each way it can: the
/// HTTP/1 read buffer, the HTTP/2 stream window (the protocol's own
/// default). Replies the component does not read wait at the server.
pub const IN_FLIGHT_WINDOW: usize = 64 << 10;

/// The pooled client shared by every request of a run.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, WasiBody>;

/// A client for provider requests, trusting the webpki roots as the
/// official SDKs trust their bundled roots.
pub fn http_client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http1_max_buf_size(IN_FLIGHT_WINDOW)
        .http2_initial_stream_window_size(IN_FLIGHT_WINDOW as u32)
        .build(https)
}

/// Maps a pooled-client failure to the `wasi:http` error the guest sees.
pub(super) fn client_error(error: hyper_util::client::legacy::Error) -> HttpError {
    if error.is_connect() {
        tracing::debug!("connect error: {error:?}");
        return HttpError::ConnectionRefused;
    }
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        if let Some(hyper) = inner.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                return HttpError::HttpResponseIncomplete;
            }
            if hyper.is_timeout() {
                return HttpError::HttpResponseTimeout;
            }
        }
        source = inner.source();
    }
    tracing::debug!("request failed: {error:?}");
    HttpError::ConnectionTerminated
}

/// Bodies the host itself sends (the local-model forwarder) use the same client.
pub fn full_body(bytes: impl Into<Bytes>) -> WasiBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A client for downloads the host makes for itself (the default model):
/// it trusts the system's roots as well as the webpki ones, so that it
/// works behind the TLS-inspecting proxies that package mirrors often sit
/// behind.
pub fn download_client() -> Result<Client<HttpsConnector<HttpConnector>, http_body_util::Empty<Bytes>>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    // Unreadable system certificates only narrow the trust to webpki's.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
