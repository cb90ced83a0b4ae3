//! `wasi:http/outgoing-handler` (wasmtime-wasi-http): outbound HTTP, only to a middleware's
//! `allow-hosts`; and, for a standard `wasi:http/proxy` link, its next hop.
//!
//! A `wasi:http/proxy` link's request to the authority of the request it is handling is not
//! outbound: it goes to its [`NextHop`], the rest of the route's chain and then the upstream.
//!
//! A request to any other `host:port` fails with `HTTP-request-denied`, an error the guest sees
//! (never a trap), and a log line. Allowed requests run on the calling worker's runtime as a task
//! of their own (the guest waits on a pollable, which yields to the worker's other requests), are
//! bounded by `outbound-timeout` (connect and first byte; the middleware's call deadline bounds
//! everything), and their response body is capped at `outbound-max-response`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// What one middleware may reach: `[middleware.NAME] allow-hosts`, `outbound-timeout`,
/// `outbound-max-response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The middleware's name, for logs.
    pub middleware: Arc<str>,
    /// `host:port` pairs, hosts lowercase; a request's port defaults by its scheme (80, 443).
    pub allow: Vec<(String, u16)>,
    /// Deadline for connecting and for the response head.
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response: u64,
}

impl Outbound {
    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow
            .iter()
            .any(|(allowed, p)| *p == port && allowed.eq_ignore_ascii_case(host))
    }
}

/// What a request through the rest of the chain comes back with: the response, or why there is
/// none (the guest sees it as an `error-code`).
pub type NextFuture = Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>>;

/// Where a `wasi:http/proxy` link's requests to its own request's authority go: the rest of the
/// route's chain, then the upstream.
#[derive(Clone)]
pub struct NextHop {
    /// The authority (`host[:port]`) of the request the link is handling.
    pub authority: String,
    /// Sends one request on through the rest of the chain.
    pub send: Arc<dyn Fn(http::Request<WasiBody>) -> NextFuture + Send + Sync>,
}

impl NextHop {
    /// Whether a request to `authority` is one to the next hop.
    fn is(&self, authority: Option<&http::uri::Authority>) -> bool {
        authority.is_some_and(|a| a.as_str().eq_ignore_ascii_case(&self.authority))
    }
}

/// The hooks of one instance's `wasi:http`: `policy` `None` denies every request (no
/// `allow-hosts`, and always during `init`).
#[derive(Default)]
pub struct OutboundHooks {
    pub policy: Option<Arc<Outbound>>,
    /// A `wasi:http` link's next hop, while it handles a request.
    pub next: Option<NextHop>,
    /// The request being sent came through a `wasi:http/middleware` link's imported `handler`:
    /// it is for the next hop, whatever its authority.
    pub next_forced: bool,
    /// Requests the guest sent (allowed or not) since [`HostState::take_calls`] last read them.
    ///
    /// [`HostState::take_calls`]: super::HostState::take_calls
    pub sent: u32,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let forced = std::mem::take(&mut self.next_forced);
        if let Some(next) = self.next.as_ref().filter(|next| forced || next.is(uri.authority())) {
            let response = (next.send)(request);
            return Box::new(async move {
                let done = Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>;
                Ok((response.await?, done))
            });
        }
        let host = uri.host().unwrap_or_default().to_owned();
        let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        self.sent += 1;
        let policy = match &self.policy {
            Some(policy) if policy.allows(&host, port) => policy.clone(),
            denied => {
                let middleware = denied.as_ref().map_or("-", |p| &*p.middleware);
                tracing::warn!(middleware, target = %format!("{host}:{port}"), "outbound HTTP denied: not in `allow-hosts`");
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
        };
        let bounded = |asked: Option<Duration>| Some(asked.map_or(policy.timeout, |d| d.min(policy.timeout)));
        let options = RequestOptions {
            connect_timeout: bounded(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: bounded(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: bounded(options.and_then(|o| o.between_bytes_timeout)),
        };
        Box::new(async move {
            let exchange = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = match tokio::time::timeout(policy.timeout, exchange).await {
                Ok(result) => result?,
                Err(_) => return Err(Error::HttpResponseTimeout),
            };
            let cap = policy.max_response;
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|length| length > cap) {
                tracing::warn!(
                    middleware = &*policy.middleware,
                    cap,
                    "outbound HTTP response larger than `outbound-max-response`"
                );
                return Err(Error::HttpResponseBodySize(declared));
            }
            let response = response.map(|body| {
                Capped {
                    inner: body.boxed_unsync(),
                    left: cap,
                    cap,
                }
                .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// A response body that fails past `cap` bytes.
struct Capped {
    inner: WasiBody,
    left: u64,
    cap: u64,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > self.left {
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.cap)))));
            }
            self.left -= len;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
