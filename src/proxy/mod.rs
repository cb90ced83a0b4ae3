//! The pingora `ProxyHttp` implementation: routing, upstream selection, forwarding headers,
//! error answers, and the calls into the route's chain at each phase.

mod buffered;
mod connection;
mod head_deadline;
pub mod headers;
mod nested;
pub mod observe;
pub mod problem;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::ErrorType::{self, ConnectTimedout, HTTPStatus, ReadTimedout, WriteTimedout};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use bytes::Bytes;
use sync_wrapper::SyncWrapper;

use crate::chain::{CallRecord, ChainRun, Message, RequestFacts, Verdict};
use crate::live::{Route, Snapshot};
use crate::router::RouteMatch;
use crate::runtime::Phase;
use crate::runtime::types::Response;
use crate::telemetry::{OncePerSecond, TraceContext};
use crate::upstream::Upstream;
use connection::Connection;
pub use connection::Front;
use head_deadline::HeadDeadline;
use observe::{AccessEntry, AccessLogger};
use problem::Problem;

/// The proxy service: one per process, shared by all worker threads.
pub struct Sluice {
    live: Arc<ArcSwap<Snapshot>>,
    /// Upstream connections for routes sluice proxies itself (body phases, `wasi:http` links);
    /// pingora keeps its own pool for the others.
    connector: Arc<Connector>,
    /// Where access log lines go, when `[server] access-log` is on.
    access: Option<Arc<AccessLogger>>,
}

impl Sluice {
    /// A proxy serving whatever snapshot `live` holds when each request starts, logging requests
    /// to `access` if set.
    pub fn new(live: Arc<ArcSwap<Snapshot>>, access: Option<Arc<AccessLogger>>) -> Self {
        Sluice {
            live,
            connector: Arc::new(Connector::new(None)),
            access,
        }
    }
}

impl Sluice {
    /// The request side of the chain: `on-request-headers`, then, when the chain reads a body,
    /// the whole exchange ([`buffered::proxy`]). `Ok(true)` when the request has been answered.
    async fn run_request_side(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        run: &mut ChainRun,
    ) -> Result<bool> {
        let chain = &route.chain;
        if chain.declares(Phase::RequestHeaders) {
            match run.run(Message::RequestHeaders(session.req_header_mut())).await {
                Verdict::Continue => {}
                Verdict::Respond(response) => {
                    write_response(session, response).await?;
                    return Ok(true);
                }
                Verdict::Fail(failure) => {
                    Problem::new(500, failure.to_string()).write(session).await?;
                    return Ok(true);
                }
            }
        }
        if chain.has_body_phase() {
            buffered::proxy(
                &self.connector,
                session,
                route,
                run,
                &mut ctx.exchange,
                ctx.trace.as_ref(),
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Failed requests' log lines: at most one a second (the access log and the metrics count every
/// one).
static FAILURE_LOG: OncePerSecond = OncePerSecond::new();

/// The route label of a request no route matched.
static NO_ROUTE: LazyLock<Arc<String>> = LazyLock::new(|| Arc::new("-".to_owned()));

/// A request's exchange with its upstream: the targets tried, for retries, metrics and the
/// access log.
#[derive(Default)]
pub struct Exchange {
    /// The target chosen last.
    pub target: Option<SocketAddr>,
    /// The targets whose connection failed, in order (empty unless something failed: no
    /// allocation on the way of a request that goes well).
    pub failed: Vec<SocketAddr>,
    /// When the last target was chosen.
    pub started: Option<Instant>,
    /// The last attempt's failure is already counted (`sluice_upstream_errors_total`).
    failure_counted: bool,
    /// The deadline on the response head, on the streamed path, from the connection on.
    head: Option<HeadDeadline>,
    /// The response head did not arrive within this `response-head-timeout`.
    head_timed_out: Option<std::time::Duration>,
}

impl Exchange {
    /// Picks a target of `upstream` for the request, one that has not failed it.
    fn choose(&mut self, upstream: &Upstream, client: Option<IpAddr>) -> Result<HttpPeer> {
        let peer = upstream.peer(client, &self.failed).ok_or_else(|| {
            crate::metrics::upstream_failed(&upstream.metric_name, "no-target");
            Error::explain(
                ErrorType::HTTPStatus(503),
                format!("upstream `{}` has no healthy target", upstream.name),
            )
        })?;
        use pingora::upstreams::peer::Peer;
        self.target = peer.address().as_inet().copied();
        self.started = Some(Instant::now());
        self.failure_counted = false;
        Ok(peer)
    }

    /// The connection to the chosen target is up.
    fn connected(&self, upstream: &Upstream) {
        if let Some(target) = self.target {
            upstream.health.connected(target);
        }
    }

    /// Connecting to the chosen target failed with `e`: counts it, tells passive health, and
    /// says whether to try another target — for an idempotent `method`, within the upstream's
    /// `retries`, when an untried healthy target is left.
    fn connect_failed(
        &mut self,
        upstream: &Upstream,
        method: &http::Method,
        client: Option<IpAddr>,
        e: &Error,
    ) -> bool {
        let kind = match e.etype() {
            ConnectTimedout => "timeout",
            _ => "connect",
        };
        crate::metrics::upstream_failed(&upstream.metric_name, kind);
        self.failure_counted = true;
        if let Some(target) = self.target {
            upstream.health.connect_failed(target);
            self.failed.push(target);
        }
        let retry = is_idempotent(method)
            && self.failed.len() <= upstream.retries as usize
            && upstream.peer(client, &self.failed).is_some();
        if retry {
            tracing::debug!(upstream = %upstream.name, target = ?self.target, error = %e, "connect failed; retrying on another target");
        }
        retry
    }

    /// The response head arrived from the upstream.
    fn responded(&self, upstream: &Arc<String>) {
        if let Some(started) = self.started {
            crate::metrics::upstream_responded(upstream, started.elapsed());
        }
    }
}

/// Methods a retry cannot make happen twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Requests being served right now, on every worker: a graceful shutdown waits for none.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many requests are being served right now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Counts one request in [`IN_FLIGHT`] for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state, carried across all phases of one request.
pub struct RequestCtx {
    /// Counted in flight until the request is done.
    _in_flight: InFlight,
    /// When the request head arrived.
    started: Instant,
    /// The same, as wall-clock time, for the access log.
    time: SystemTime,
    /// Its trace context (set when routed).
    trace: Option<TraceContext>,
    /// Its `request` span; each middleware call's span is a child.
    span: tracing::Span,
    /// The middleware calls made, for the access log.
    calls: Vec<CallRecord>,
    /// The upstream exchange, if there was one.
    exchange: Exchange,
    /// The snapshot this request started with; kept to its end so a reload never changes it.
    snapshot: Option<Arc<Snapshot>>,
    /// The index of the route serving this request, in `snapshot.routes`.
    route: Option<usize>,
    /// This request's pass through the route's chain (its instances and context), when the chain
    /// has middleware. `SyncWrapper`: only ever used through `&mut`.
    run: Option<SyncWrapper<ChainRun>>,
    /// A response body that replaces the upstream's (a middleware answered in a response phase).
    replacement_body: Option<Bytes>,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        Some(&self.snapshot.as_ref()?.routes[self.route?])
    }

    /// The route's upstream, with the exchange to record on (borrowed apart).
    fn upstream_exchange(&mut self) -> Option<(&Upstream, &mut Exchange)> {
        let route = &self.snapshot.as_ref()?.routes[self.route?];
        Some((&route.upstream, &mut self.exchange))
    }
}

#[async_trait]
impl ProxyHttp for Sluice {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::start(),
            started: Instant::now(),
            time: SystemTime::now(),
            trace: None,
            span: tracing::Span::none(),
            calls: Vec::new(),
            exchange: Exchange::default(),
            snapshot: None,
            route: None,
            run: None,
            replacement_body: None,
        }
    }

    /// No downstream modules: pingora's default adds a disabled compression module whose filters
    /// would still run on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Routes the request and runs the chain's request-headers phase.
    ///
    /// Returns `Ok(true)` when sluice has answered the request itself (no route: 404; wrong
    /// method: 405), `Ok(false)` to go on to the upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(connection) = Connection::of(session) {
            connection.head_received();
        }
        // Pipelined HTTP/1.1 requests (RFC 9112 §9.3.2) are answered in order, one after the
        // other; without this pingora answers the first and closes, dropping the rest.
        session.set_pipelining_enabled(true);
        let snapshot = self.live.load_full();
        let max_in_flight = *snapshot.config.server.max_in_flight.get_ref();
        if in_flight() > max_in_flight {
            // Shed deliberately, before any work: the client is told when to come back.
            crate::metrics::metrics().shed.inc();
            let detail = format!("sluice is serving its max-in-flight of {max_in_flight} requests; retry shortly");
            Problem::new(503, detail)
                .with_header("retry-after", "1")
                .write(session)
                .await?;
            return Ok(true);
        }
        let req = session.req_header();
        let trace = TraceContext::from_header(req.headers.get("traceparent").map(|v| v.as_bytes()));
        ctx.trace = Some(trace);
        if let Some(detail) = host_problem(req) {
            Problem::new(400, detail).write(session).await?;
            return Ok(true);
        }
        let host = request_host(req).map(normalize_host);
        match snapshot.router.route(host.as_deref(), req.uri.path(), &req.method) {
            RouteMatch::Found(index) => {
                ctx.route = Some(index);
                ctx.snapshot = Some(snapshot.clone());
                let route = &snapshot.routes[index];
                let chain = &route.chain;
                ctx.span = tracing::debug_span!(
                    "request",
                    otel.name = %format_args!("{} {}", req.method, route.name),
                    otel.kind = "server",
                    otel.status_code = tracing::field::Empty,
                    route = %route.name,
                    method = %req.method,
                    path = %req.uri,
                    trace_id = tracing::field::Empty,
                    status = tracing::field::Empty,
                );
                if !ctx.span.is_disabled() {
                    // An exported span takes its ids from the SDK: those go upstream and to the log.
                    let trace = match crate::telemetry::exporting() {
                        true => crate::telemetry::join(&ctx.span, trace),
                        false => trace,
                    };
                    ctx.span.record("trace_id", trace.trace_id());
                    ctx.trace = Some(trace);
                }
                if chain.is_empty() {
                    return Ok(false);
                }
                let facts = RequestFacts {
                    scheme: scheme(session),
                    authority: request_host(req).unwrap_or_default().to_owned(),
                    client_addr: session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
                    route: route.name.clone(),
                };
                if !chain.segments().is_empty() {
                    // A `wasi:http` link: sluice proxies the request itself, segment by segment.
                    let connector = self.connector.clone();
                    nested::proxy(&connector, session, ctx, facts).await?;
                    return Ok(true);
                }
                let mut chain_run = ChainRun::new(chain, facts, ctx.span.clone());
                let answered = self.run_request_side(session, ctx, route, &mut chain_run).await;
                if answered.as_ref().is_ok_and(|answered| !answered) && chain.declares(Phase::ResponseHeaders) {
                    // Instances are pooled: keep them through the upstream exchange only if a
                    // response phase will need them.
                    ctx.run = Some(SyncWrapper::new(chain_run));
                } else {
                    ctx.calls = chain_run.take_calls();
                }
                answered
            }
            RouteMatch::MethodNotAllowed { allow } => {
                let detail = format!("method `{}` is not allowed here; allowed: {allow}", req.method);
                Problem::new(405, detail)
                    .with_header("allow", allow)
                    .write(session)
                    .await?;
                Ok(true)
            }
            RouteMatch::NotFound => {
                let detail = format!("no route matches `{}`", req.uri.path());
                Problem::new(404, detail).write(session).await?;
                Ok(true)
            }
        }
    }

    /// Picks a target from the route's upstream: one in rotation, and on a retry one not tried
    /// yet for this request. No healthy target: 503.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let Some((upstream, exchange)) = ctx.upstream_exchange() else {
            return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
        };
        Ok(Box::new(exchange.choose(upstream, client_ip(session))?))
    }

    /// The connection to the target is up: passive health forgets its earlier failures, and the
    /// response head's deadline starts.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some((upstream, exchange)) = ctx.upstream_exchange() else {
            return Ok(());
        };
        exchange.connected(upstream);
        // HTTP/1 only (all sluice speaks upstream): the deadline shuts the whole connection down,
        // which on a multiplexed one would end other requests too.
        #[cfg(unix)]
        if peer.options.alpn == pingora::protocols::ALPN::H1 {
            exchange.head = HeadDeadline::start(fd, upstream.response_head_timeout);
        }
        Ok(())
    }

    /// A request body chunk is on its way upstream: the response head's deadline counts from the
    /// request's last byte.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(head) = &ctx.exchange.head {
            head.push_back();
        }
        Ok(())
    }

    /// An error after the connection was up. When the response head's deadline cut the
    /// connection off, that is the error (a timeout, never retried); otherwise pingora's policy:
    /// an idempotent request whose reused connection turned out closed is tried again.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(head) = ctx.exchange.head.take()
            && head.expired()
        {
            ctx.exchange.head_timed_out = Some(head.limit());
            let mut e = Error::because(ReadTimedout, "response-head-timeout", e);
            e.set_retry(false);
            return e.into_up();
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Connecting to the target failed: passive health counts it, and an idempotent request is
    /// retried on another target (pingora calls `upstream_peer` again) within `retries`.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some((upstream, exchange)) = ctx.upstream_exchange() else {
            return e;
        };
        let retry = exchange.connect_failed(upstream, &session.req_header().method, client_ip(session), &e);
        e.set_retry(retry);
        e
    }

    /// Removes hop-by-hop headers and adds the forwarding headers and `traceparent`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward_request_headers(session, upstream_request, ctx.trace.as_ref())
    }

    /// Times the upstream: its response head arrived.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(head) = &ctx.exchange.head {
            head.arrived();
        }
        if let Some(route) = ctx.route() {
            ctx.exchange.responded(&route.upstream.metric_name);
        }
        Ok(())
    }

    /// Runs the chain's response-headers phase (reverse order), removes hop-by-hop headers and
    /// adds `Via`. A middleware that answers (or fails with `deny`: 502) replaces the upstream's
    /// response; its body is substituted in `response_body_filter`.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        if let (Some(snapshot), Some(index), Some(chain_run)) = (ctx.snapshot.clone(), ctx.route, ctx.run.as_mut()) {
            let chain = &snapshot.routes[index].chain;
            if chain.declares(Phase::ResponseHeaders) {
                let replacement =
                    response_headers_phase(chain_run.get_mut(), session.req_header(), upstream_response).await?;
                if let Some((header, body)) = replacement {
                    let head_only = session.req_header().method == http::Method::HEAD;
                    let bodiless = matches!(upstream_response.status.as_u16(), 204 | 304);
                    if bodiless && !head_only && !body.is_empty() {
                        // pingora would never ask for a body after a 204 or 304: send the whole
                        // replacement now. pingora's own write of the head is then ignored.
                        let mut head = header.clone();
                        forward_response_headers(&mut head)?;
                        session.write_response_header(Box::new(head), false).await?;
                        session.write_response_body(Some(body), true).await?;
                        ctx.replacement_body = Some(Bytes::new());
                        *upstream_response = header;
                        return Ok(());
                    }
                    *upstream_response = header;
                    ctx.replacement_body = Some(if head_only { Bytes::new() } else { body });
                }
            }
        }
        forward_response_headers(upstream_response)
    }

    /// Substitutes the replacement body when a middleware answered in the response phase: the
    /// whole replacement goes with the first chunk, the upstream's chunks are dropped.
    ///
    /// A body that comes in more than one chunk goes to the client as it arrives.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(replacement) = ctx.replacement_body.as_mut() {
            *body = (!replacement.is_empty()).then(|| std::mem::take(replacement));
        } else if !end_of_stream && let Some(connection) = Connection::of(session) {
            connection.stream_writes();
        }
        Ok(None)
    }

    /// Counts the request (`sluice_requests_total`, `sluice_request_duration_seconds`) and writes
    /// its access log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(connection) = Connection::of(session) {
            connection.request_done();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let took = ctx.started.elapsed();
        if !ctx.span.is_disabled() {
            ctx.span.record("status", status);
            if status >= 500 || status == 0 {
                ctx.span.record("otel.status_code", "ERROR");
            }
        }
        let route = ctx.route();
        let req = session.req_header();
        crate::metrics::count_request(route.map_or(&*NO_ROUTE, |r| &r.name), &req.method, status, took);
        let Some(access) = &self.access else {
            return;
        };
        if let Some(run) = ctx.run.as_mut() {
            ctx.calls.extend(run.get_mut().take_calls());
        }
        let route = ctx.route();
        let entry = AccessEntry {
            time: ctx.time,
            route: route.map(|r| r.name.as_str()),
            method: req.method.as_str(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            status,
            duration: took,
            upstream: route
                .filter(|_| ctx.exchange.started.is_some())
                .map(|r| (r.upstream.name.as_str(), ctx.exchange.target)),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            client: session.client_addr().map(|a| a.to_string()),
            trace_id: ctx.trace.map(|t| t.trace_id()).unwrap_or_default(),
            calls: &ctx.calls,
            error: e.map(|e| e.to_string()),
        };
        access.log(entry.to_json());
    }

    /// pingora would log every failed request; sluice logs them from `fail_to_proxy`, sampled.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Answers a request that failed: 504 when the upstream timed out, 502 when it was
    /// unreachable or broke off, 400 for a malformed request, as problem+json.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let upstream = ctx.route().map(|r| r.upstream.name.as_str()).unwrap_or("-");
        if let Some(route) = ctx.route()
            && e.esource() == &ErrorSource::Upstream
            && !ctx.exchange.failure_counted
        {
            let kind = match e.etype() {
                ConnectTimedout | ReadTimedout | WriteTimedout => "timeout",
                ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => "connect",
                _ => "broken",
            };
            crate::metrics::upstream_failed(&route.upstream.metric_name, kind);
        }
        let head_timed_out = ctx.exchange.head_timed_out;
        let (status, detail) = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => (*code, e.context.as_ref().map(|c| c.to_string()).unwrap_or_default()),
            (ConnectTimedout, _) => (
                504,
                format!("upstream `{upstream}` did not accept a connection in time"),
            ),
            (ReadTimedout, ErrorSource::Upstream) if head_timed_out.is_some() => (
                504,
                format!(
                    "upstream `{upstream}` did not send its response head within its response-head-timeout of {:?}",
                    head_timed_out.unwrap_or_default()
                ),
            ),
            (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
                (504, format!("upstream `{upstream}` did not answer in time"))
            }
            (_, ErrorSource::Upstream) => (
                502,
                format!("upstream `{upstream}` is unreachable or broke off the response"),
            ),
            (ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed, ErrorSource::Downstream) => {
                (0, String::new()) // the client is gone; nothing to answer
            }
            (_, ErrorSource::Downstream) => (400, "malformed request".to_owned()),
            _ => (500, "internal error".to_owned()),
        };
        if status >= 500
            && let Some(held) = FAILURE_LOG.admit()
        {
            let req = session.req_header();
            tracing::error!(
                route = ctx.route().map_or("-", |r| r.name.as_str()),
                upstream,
                status,
                error = %e,
                held_back = held,
                "{} {} failed (at most one such line a second: `held_back` counts those not written)",
                req.method,
                req.uri.path(),
            );
        }
        if status > 0 && session.response_written().is_none() {
            // The connection is not reused after a failure: say so (`Connection: close`), so a
            // client does not send its next request on it.
            session.set_keepalive(None);
            let _ = Problem::new(status, detail).write(session).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// Removes hop-by-hop headers from the request going upstream and adds the forwarding headers
/// (`X-Forwarded-*`, `Via`) and `traceparent` (this request's trace, sluice's span as parent).
fn forward_request_headers(
    session: &Session,
    upstream_request: &mut RequestHeader,
    trace: Option<&TraceContext>,
) -> Result<()> {
    forwarding_headers(
        upstream_request,
        trace,
        client_ip(session),
        scheme(session),
        request_host(session.req_header()),
        session.req_header().version,
    )
}

/// [`forward_request_headers`], from what it takes of the client's request: its address,
/// scheme, host and HTTP version.
fn forwarding_headers(
    upstream_request: &mut RequestHeader,
    trace: Option<&TraceContext>,
    client: Option<IpAddr>,
    scheme: &'static str,
    host: Option<&str>,
    version: http::Version,
) -> Result<()> {
    if let Some(trace) = trace {
        upstream_request.insert_header("traceparent", trace.traceparent())?;
    }
    for name in headers::hop_by_hop(&upstream_request.headers) {
        upstream_request.remove_header(&name);
    }
    if let Some(ip) = client {
        let xff = headers::forwarded_for(
            header_bytes(&upstream_request.headers, "x-forwarded-for"),
            &ip.to_string(),
        );
        upstream_request.insert_header("x-forwarded-for", xff)?;
    }
    upstream_request.insert_header("x-forwarded-proto", scheme)?;
    if let Some(host) = host {
        upstream_request.insert_header("x-forwarded-host", host.to_owned())?;
    }
    let via = headers::via(header_bytes(&upstream_request.headers, "via"), version);
    upstream_request.insert_header(http::header::VIA, via)?;
    Ok(())
}

/// Removes hop-by-hop headers from the response going to the client and adds `Via`.
fn forward_response_headers(response: &mut ResponseHeader) -> Result<()> {
    for name in headers::hop_by_hop(&response.headers) {
        response.remove_header(&name);
    }
    let via = headers::via(header_bytes(&response.headers, "via"), response.version);
    response.insert_header(http::header::VIA, via)?;
    Ok(())
}

/// A middleware's response as a head (with correct framing) and a body.
fn response_parts(response: Response) -> Result<(ResponseHeader, Bytes)> {
    let mut header = ResponseHeader::build(response.status, Some(response.headers.len() + 1)).map_err(|_| {
        Error::explain(
            ErrorType::HTTPStatus(502),
            "a middleware answered with an invalid status",
        )
    })?;
    for (name, value) in response.headers {
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            header.append_header(name, value)?;
        }
    }
    header.insert_header(http::header::CONTENT_LENGTH, response.body.len().to_string())?;
    Ok((header, Bytes::from(response.body)))
}

/// Runs the chain's response-headers phase (reverse order) over the upstream's `response` to
/// `request`, for streaming and buffered routes alike: the head is edited in place, or the phase
/// returns what answers the client instead (a middleware's response; a 502 problem when one
/// failed with `on-error = "deny"`).
async fn response_headers_phase(
    run: &mut ChainRun,
    request: &RequestHeader,
    response: &mut ResponseHeader,
) -> Result<Option<(ResponseHeader, Bytes)>> {
    Ok(match run.run(Message::ResponseHeaders(request, response)).await {
        Verdict::Continue => None,
        Verdict::Respond(answer) => Some(response_parts(answer)?),
        Verdict::Fail(failure) => {
            let problem = Problem::new(502, failure.to_string());
            Some((problem.header()?, problem.body()))
        }
    })
}

/// Writes a middleware's answer as the whole response.
async fn write_response(session: &mut Session, response: Response) -> Result<()> {
    match response_parts(response) {
        Ok((header, body)) => write_parts(session, header, body).await,
        Err(_) => {
            Problem::new(500, "a middleware answered with an invalid response")
                .write(session)
                .await
        }
    }
}

/// Writes `header` and `body` as the whole response (the head alone to a `HEAD`).
async fn write_parts(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The host the client addressed: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
}

/// Why a request's `Host` makes it one no server may act on (RFC 9112 §3.2: an HTTP/1.1 request
/// without `Host`, or any request with more than one), if it does.
fn host_problem(req: &RequestHeader) -> Option<&'static str> {
    let hosts = req.headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 {
        Some("the request has more than one `Host` header")
    } else if hosts == 0 && req.version == http::Version::HTTP_11 {
        Some("an HTTP/1.1 request needs a `Host` header")
    } else {
        None
    }
}

/// `Host` without port or userinfo, lower case: what routes match on.
fn normalize_host(host: &str) -> String {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `https` on a TLS listener, else `http`.
fn scheme(session: &Session) -> &'static str {
    match session.digest().and_then(|d| d.ssl_digest.as_ref()) {
        Some(_) => "https",
        None => "http",
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

fn header_bytes<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
