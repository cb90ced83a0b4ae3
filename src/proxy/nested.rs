//! Routes whose chain has a standard `wasi:http` link. sluice proxies these requests itself, one
//! segment of the chain inside the other.
//!
//! The chain is cut at its `wasi:http` links ([`crate::chain::Segment`]): the
//! `sluice:middleware` links up to a `wasi:http` link, then that link; the last segment ends with
//! the upstream. [`serve`] runs one segment over a request:
//!
//! 1. the request phases of its `sluice:middleware` links, in chain order (`on-request-body` reads
//!    the body whole, up to the route's `max-body`: 413 beyond);
//! 2. its `wasi:http` link, whose requests to the authority it was given are the next segment (its
//!    next hop), as many times as it sends one; or, in the last segment, the upstream (load
//!    balancing, retries on connect failures, timeouts, upstream TLS, as for any route);
//! 3. the response phases of its `sluice:middleware` links over what came back, in reverse.
//!
//! So a response flows back through every earlier link, whatever the kind. Bodies stream through
//! both ways unless a `sluice:middleware` link declared a body phase. The link sees the request
//! with an absolute URI (`scheme://authority/path`) and without hop-by-hop fields; what goes
//! upstream carries the forwarding headers, as on every route.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use wasmtime_wasi_http::WasiBody;

use super::problem::Problem;
use super::{Exchange, RequestCtx, forward_response_headers, forwarding_headers, response_parts};
use crate::chain::{CallRecord, ChainRun, Handled, Message, RequestFacts, Segment, Verdict};
use crate::live::{Route, Snapshot};
use crate::runtime::Phase;
use crate::runtime::host::NextHop;
use crate::telemetry::TraceContext;

/// What every segment of one request's pass needs, shared with the links' next hops.
struct Pass {
    snapshot: Arc<Snapshot>,
    route: usize,
    connector: Arc<Connector>,
    facts: RequestFacts,
    span: tracing::Span,
    trace: Option<TraceContext>,
    client: Option<IpAddr>,
    /// The client's HTTP version, for `Via`.
    version: http::Version,
    /// The calls of every segment, for the access log.
    calls: Mutex<Vec<CallRecord>>,
    /// The last upstream exchange, for the access log.
    exchange: Mutex<Option<Exchange>>,
}

impl Pass {
    fn route(&self) -> &Route {
        &self.snapshot.routes[self.route]
    }
}

/// A response being built: a head and a body that may still stream.
type Response = http::Response<WasiBody>;

/// Proxies one request on a route whose chain has a `wasi:http` link, answering the client. The
/// request is routed; no chain phase has run.
pub(super) async fn proxy(
    connector: &Arc<Connector>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    facts: RequestFacts,
) -> Result<()> {
    let (Some(snapshot), Some(route)) = (ctx.snapshot.clone(), ctx.route) else {
        return Err(Error::explain(ErrorType::InternalError, "no route chosen"));
    };
    let head = session.req_header();
    let mut parts = head.as_owned_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = match format!("{}://{}{path}", facts.scheme, facts.authority).parse() {
        Ok(uri) => uri,
        Err(_) => {
            return Problem::new(400, "the request's authority is not valid")
                .write(session)
                .await;
        }
    };
    let pass = Arc::new(Pass {
        snapshot,
        route,
        connector: connector.clone(),
        facts,
        span: ctx.span.clone(),
        trace: ctx.trace,
        client: super::client_ip(session),
        version: head.version,
        calls: Mutex::default(),
        exchange: Mutex::default(),
    });
    let (sender, body) = Channel::new(1);
    let request = http::Request::from_parts(parts, body.boxed_unsync());

    // The request body is read as the chain reads it, while it runs.
    let mut serving = std::pin::pin!(serve(pass.clone(), 0, Vec::new(), request));
    let mut whole_body_read = false;
    let response = {
        let mut reading = std::pin::pin!(read_body(session, sender));
        let mut reading_done = false;
        loop {
            tokio::select! {
                response = &mut serving => break response,
                read = &mut reading, if !reading_done => {
                    reading_done = true;
                    whole_body_read = read?;
                }
            }
        }
    };
    if !whole_body_read && !session.is_body_done() {
        // Answered before the whole request body was read: the connection cannot be reused.
        session.set_keepalive(None);
    }
    ctx.calls = std::mem::take(&mut *pass.calls.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(exchange) = pass.exchange.lock().unwrap_or_else(|e| e.into_inner()).take() {
        ctx.exchange = exchange;
    }
    write(session, response).await
}

/// Feeds the request body to `sender` as it arrives; true when it was read whole (false when
/// nothing reads it any more).
async fn read_body(session: &mut Session, mut sender: Sender<Bytes, wasmtime_wasi_http::Error>) -> Result<bool> {
    super::buffered::continue_if_expected(session).await?;
    while let Some(chunk) = session.read_request_body().await.map_err(|e| e.into_down())? {
        if sender.send_data(chunk).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `response` to the client, streaming its body, framed by its `Content-Length` when it
/// has one, else chunked.
async fn write(session: &mut Session, response: Response) -> Result<()> {
    let (parts, mut body) = response.into_parts();
    let mut head = ResponseHeader::from(parts);
    forward_response_headers(&mut head)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    let has_body = !head_only && !matches!(head.status.as_u16(), 100..=199 | 204 | 304);
    if has_body && !head.headers.contains_key(CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(length) => head.insert_header(CONTENT_LENGTH, length.to_string())?,
            None => head.insert_header(TRANSFER_ENCODING, "chunked")?,
        }
    }
    session.write_response_header(Box::new(head), !has_body).await?;
    if !has_body {
        return Ok(());
    }
    if let Some(connection) = super::Connection::of(session) {
        connection.stream_writes(); // each chunk goes out as it arrives
    }
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::explain(ErrorType::ReadError, format!("the response body ended early: {e}")))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            session.write_response_body(Some(data), false).await?;
        }
    }
    session.write_response_body(None, true).await?;
    Ok(())
}

/// Runs segment `index` of the route's chain over `request`, the links before it having attached
/// `context`: what comes back.
fn serve(
    pass: Arc<Pass>,
    index: usize,
    context: Vec<(String, String)>,
    request: http::Request<WasiBody>,
) -> Pin<Box<dyn Future<Output = Response> + Send>> {
    Box::pin(async move {
        let segment = &pass.route().chain.segments()[index];
        let mut run = ChainRun::new(&segment.phases, pass.facts.clone(), pass.span.clone()).with_context(context);
        let response = through(&pass, index, segment, &mut run, request).await;
        pass.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(run.take_calls());
        response
    })
}

/// [`serve`]'s steps, on `run` (the segment's `sluice:middleware` links).
async fn through(
    pass: &Arc<Pass>,
    index: usize,
    segment: &Segment,
    run: &mut ChainRun,
    request: http::Request<WasiBody>,
) -> Response {
    let phases = &segment.phases;
    let max_body = pass.route().max_body;
    let (parts, body) = request.into_parts();
    let mut head = RequestHeader::from(parts);
    if phases.declares(Phase::RequestHeaders) {
        match run.run(Message::RequestHeaders(&mut head)).await {
            Verdict::Continue => {}
            Verdict::Respond(answer) => return answered(answer),
            Verdict::Fail(failure) => return problem(Problem::new(500, failure.to_string())),
        }
    }
    let body = if phases.declares(Phase::RequestBody) {
        let mut bytes = match collect(body, max_body).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let detail = format!("the request body is over the route's max-body of {max_body} bytes");
                return problem(Problem::new(413, detail));
            }
            Err(e) => return problem(Problem::new(400, format!("the request body could not be read: {e}"))),
        };
        match run.run(Message::RequestBody(&head, &mut bytes)).await {
            Verdict::Continue => {}
            Verdict::Respond(answer) => return answered(answer),
            Verdict::Fail(failure) => return problem(Problem::new(500, failure.to_string())),
        }
        head.remove_header(&TRANSFER_ENCODING);
        if let Err(e) = head.insert_header(CONTENT_LENGTH, bytes.len().to_string()) {
            return problem(Problem::new(500, e.to_string()));
        }
        full(Bytes::from(bytes))
    } else {
        body
    };
    // The access log lists calls as they were made: this segment's request side before what the
    // link (or the upstream) does, its response side after.
    pass.calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(run.take_calls());
    let responds = phases.declares(Phase::ResponseHeaders) || phases.declares(Phase::ResponseBody);
    let request_head = responds.then(|| head.clone());
    let response = match &segment.link {
        Some(deployment) => {
            let link = deployment.pick().clone();
            let next = next_hop(pass, index + 1, run.context().to_vec());
            let request = http::Request::from_parts(head.into(), body);
            let mut calls = Vec::new();
            let scheme = pass.facts.scheme;
            let handled = crate::chain::handle(link, scheme, request, next, max_body, &pass.span, &mut calls).await;
            pass.calls.lock().unwrap_or_else(|e| e.into_inner()).extend(calls);
            match handled {
                Handled::Response(response) => response,
                Handled::Fail(failure) => problem(Problem::new(500, failure.to_string())),
                Handled::Skip(request) => serve(pass.clone(), index + 1, run.context().to_vec(), request).await,
            }
        }
        None => upstream(pass, head, body).await,
    };
    let Some(request_head) = request_head else {
        return response;
    };
    let (parts, mut body) = response.into_parts();
    let mut response_head = ResponseHeader::from(parts);
    if phases.declares(Phase::ResponseHeaders) {
        match super::response_headers_phase(run, &request_head, &mut response_head).await {
            Ok(None) => {}
            Ok(Some((head, body))) => return http::Response::from_parts(head.into(), full(body)),
            Err(e) => return problem(Problem::new(500, e.to_string())),
        }
    }
    let has_body =
        request_head.method != http::Method::HEAD && !matches!(response_head.status.as_u16(), 100..=199 | 204 | 304);
    if phases.declares(Phase::ResponseBody) && has_body {
        let mut bytes = match collect(body, max_body).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let detail = format!("the response body is over the route's max-body of {max_body} bytes");
                return problem(Problem::new(502, detail));
            }
            Err(e) => return problem(Problem::new(502, format!("the response body could not be read: {e}"))),
        };
        match run
            .run(Message::ResponseBody(&request_head, &response_head, &mut bytes))
            .await
        {
            Verdict::Continue => {}
            Verdict::Respond(answer) => return answered(answer),
            Verdict::Fail(failure) => return problem(Problem::new(502, failure.to_string())),
        }
        response_head.remove_header(&TRANSFER_ENCODING);
        if let Err(e) = response_head.insert_header(CONTENT_LENGTH, bytes.len().to_string()) {
            return problem(Problem::new(502, e.to_string()));
        }
        body = full(Bytes::from(bytes));
    }
    http::Response::from_parts(response_head.into(), body)
}

/// The next hop of a link in segment `index - 1`: segment `index`, with `context`.
fn next_hop(pass: &Arc<Pass>, index: usize, context: Vec<(String, String)>) -> NextHop {
    let to = pass.clone();
    NextHop {
        authority: pass.facts.authority.clone(),
        send: Arc::new(move |request| {
            let response = serve(to.clone(), index, context.clone(), request);
            Box::pin(async move { Ok(response.await) })
        }),
    }
}

/// Reads `body` whole; `None` when it is over `max` bytes.
async fn collect(mut body: WasiBody, max: u64) -> std::result::Result<Option<Vec<u8>>, wasmtime_wasi_http::Error> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (bytes.len() + data.len()) as u64 > max {
                return Ok(None);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Some(bytes))
}

fn full(bytes: Bytes) -> WasiBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// A `sluice:middleware` link's answer as a response.
fn answered(answer: crate::runtime::types::Response) -> Response {
    match response_parts(answer) {
        Ok((head, body)) => http::Response::from_parts(head.into(), full(body)),
        Err(_) => problem(Problem::new(500, "a middleware answered with an invalid response")),
    }
}

/// A problem sluice answers with, as a response.
fn problem(problem: Problem) -> Response {
    match problem.header() {
        Ok(head) => http::Response::from_parts(head.into(), full(problem.body())),
        Err(_) => {
            let mut response = http::Response::new(full(Bytes::new()));
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// The request body's next non-empty chunk; `None` at its end.
async fn next_chunk(body: &mut WasiBody) -> Result<Option<Bytes>> {
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::explain(ErrorType::ReadError, format!("the request body: {e}")).into_down())?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Attempts at a request whose pooled upstream connection turned out to be closed.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Sends `request` to the route's upstream: its response, or a problem (502, 503, 504).
async fn upstream(pass: &Arc<Pass>, request: RequestHeader, body: WasiBody) -> Response {
    let mut exchange = Exchange::default();
    let sent = send(pass, &mut exchange, request, body).await;
    *pass.exchange.lock().unwrap_or_else(|e| e.into_inner()) = Some(exchange);
    sent.unwrap_or_else(|e| {
        let status = match e.etype() {
            ErrorType::HTTPStatus(status) => *status,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => 502,
        };
        let upstream = &pass.route().upstream.name;
        problem(Problem::new(status, format!("upstream `{upstream}`: {e}")))
    })
}

async fn send(
    pass: &Arc<Pass>,
    exchange: &mut Exchange,
    mut request: RequestHeader,
    mut body: WasiBody,
) -> Result<Response> {
    use pingora::protocols::http::client::HttpSession as UpstreamSession;
    let route = pass.route();
    let upstream_config = &route.upstream;
    // Origin-form upstream, whatever form the links used.
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let authority = request.uri.authority().map(|a| a.as_str().to_owned());
    request.set_uri(
        target
            .parse()
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "invalid request target"))?,
    );
    if !request.headers.contains_key(http::header::HOST) {
        request.insert_header(
            http::header::HOST,
            authority.unwrap_or_else(|| pass.facts.authority.clone()),
        )?;
    }
    forwarding_headers(
        &mut request,
        pass.trace.as_ref(),
        pass.client,
        pass.facts.scheme,
        Some(&pass.facts.authority),
        pass.version,
    )?;
    request.set_version(http::Version::HTTP_11);
    request.remove_header("expect");
    // Framed by its `Content-Length`, else chunked if it has a body at all (its first chunk
    // says, read before the head goes).
    let mut first = None;
    if !request.headers.contains_key(CONTENT_LENGTH) {
        request.remove_header(&TRANSFER_ENCODING);
        first = next_chunk(&mut body).await?;
        if first.is_some() {
            request.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
    }
    let method = request.method.clone();
    let mut peer = exchange.choose(upstream_config, pass.client)?;
    let mut attempt = 0;
    let mut session: UpstreamSession = loop {
        attempt += 1;
        let (mut session, reused) = match pass.connector.get_http_session(&peer).await {
            Ok(connected) => connected,
            Err(e) if exchange.connect_failed(upstream_config, &method, pass.client, &e) => {
                peer = exchange.choose(upstream_config, pass.client)?;
                continue;
            }
            Err(e) => return Err(e.into_up()),
        };
        exchange.connected(upstream_config);
        session.set_read_timeout(peer.options.read_timeout);
        session.set_write_timeout(peer.options.write_timeout);
        match session.write_request_header(Box::new(request.clone())).await {
            Ok(_) => break session,
            // A pooled connection the upstream closed while idle: try another (nothing of the
            // body was read yet).
            Err(e) if reused && attempt < STALE_CONNECTION_ATTEMPTS => {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on another");
            }
            Err(e) => return Err(e.into_up()),
        }
    };
    let up = |e: Box<Error>| e.into_up();
    if let Some(chunk) = first {
        session.write_request_body(chunk, false).await.map_err(up)?;
    }
    while let Some(chunk) = next_chunk(&mut body).await? {
        session.write_request_body(chunk, false).await.map_err(up)?;
    }
    session.finish_request_body().await.map_err(up)?;
    let head_timeout = upstream_config.response_head_timeout;
    if let Err(e) = super::buffered::read_response_head(&mut session, head_timeout).await {
        if e.context
            .as_ref()
            .is_some_and(|c| c.as_str() == super::buffered::RESPONSE_HEAD_TIMEOUT)
        {
            exchange.head_timed_out = Some(head_timeout);
        }
        return Err(e);
    }
    let head = session
        .response_header()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no response header"))?;
    exchange.responded(&upstream_config.metric_name);
    let has_body = method != http::Method::HEAD && !matches!(head.status.as_u16(), 100..=199 | 204 | 304);
    let connector = pass.connector.clone();
    if !has_body {
        connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        return Ok(http::Response::from_parts(head.into(), full(Bytes::new())));
    }
    // The body streams from a task of its own, which gives the connection back when it is done.
    let (mut sender, body) = Channel::new(1);
    tokio::spawn(async move {
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) => {
                    if sender.send_data(chunk).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    sender.abort(wasmtime_wasi_http::Error::HttpResponseIncomplete);
                    return;
                }
            }
        }
        drop(sender);
        if session.response_done() {
            connector
                .release_http_session(session, &peer, peer.options.idle_timeout)
                .await;
        }
    });
    Ok(http::Response::from_parts(head.into(), body.boxed_unsync()))
}
