//! Routes whose chain reads a whole body. sluice proxies these requests itself.
//!
//! pingora's proxy loop sends the request head upstream before it reads the request body, and calls
//! its response body filter synchronously. Neither fits a body phase: the request-body decision
//! must come before any byte goes upstream, and a middleware call is async. So when a route's
//! chain declares a body phase, `request_filter` hands the request to [`proxy`], which
//!
//! 1. reads the whole request body up to the route's `max-body` (413 beyond) and runs
//!    `on-request-body` in chain order, when a middleware declared it;
//! 2. only then takes an upstream connection (from this worker's pool, with the upstream's
//!    timeouts) and sends the head and the body, framed by `Content-Length`;
//! 3. reads the response head and runs `on-response-headers` in reverse order;
//! 4. when a middleware declared `response-body`, buffers the response body up to `max-body`
//!    (502 beyond), runs the phase in reverse order and sends the result with `Content-Length`;
//!    otherwise streams the body through.
//!
//! A body that no middleware declared a phase for is streamed, never buffered. Errors map to the
//! same answers as on the streaming path (`fail_to_proxy`: 502, 504).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;

use super::problem::Problem;
use super::{
    Exchange, client_ip, forward_request_headers, forward_response_headers, response_headers_phase, write_parts,
    write_response,
};
use crate::chain::{ChainRun, Message, Verdict};
use crate::live::Route;
use crate::runtime::Phase;
use crate::telemetry::TraceContext;

/// Attempts at a request whose pooled upstream connection turned out to be closed.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Proxies one request on a route whose chain has a body phase, answering the client. The
/// request-headers phase has already run; `run` holds its instances and context.
pub(super) async fn proxy(
    connector: &Connector,
    session: &mut Session,
    route: &Route,
    run: &mut ChainRun,
    exchange: &mut Exchange,
    trace: Option<&TraceContext>,
) -> Result<()> {
    let chain = &route.chain;
    let request_body = if chain.declares(Phase::RequestBody) {
        let mut body = match read_request_body(session, route.max_body).await? {
            Some(body) => body,
            None => return Ok(()), // too large, answered
        };
        match run.run(Message::RequestBody(session.req_header(), &mut body)).await {
            Verdict::Continue => {}
            Verdict::Respond(response) => return write_response(session, response).await,
            Verdict::Fail(failure) => return Problem::new(500, failure.to_string()).write(session).await,
        }
        Some(Bytes::from(body))
    } else {
        None
    };

    let mut request = session.req_header().clone();
    forward_request_headers(session, &mut request, trace)?;
    request.set_version(http::Version::HTTP_11);
    request.remove_header("expect"); // sluice has the body, or streams it unasked
    if let Some(body) = &request_body {
        let had_body = request.headers.contains_key(CONTENT_LENGTH) || request.headers.contains_key(TRANSFER_ENCODING);
        request.remove_header(&TRANSFER_ENCODING);
        request.remove_header(&CONTENT_LENGTH);
        if had_body || !body.is_empty() {
            request.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        }
    }

    let client = client_ip(session);
    let mut peer = exchange.choose(&route.upstream, client)?;
    let mut attempt = 0;
    let mut upstream = loop {
        attempt += 1;
        let (mut upstream, reused) = match connector.get_http_session(&peer).await {
            Ok(connected) => connected,
            // Nothing was sent: an idempotent request may go to another target.
            Err(e) if exchange.connect_failed(&route.upstream, &session.req_header().method, client, &e) => {
                peer = exchange.choose(&route.upstream, client)?;
                continue;
            }
            Err(e) => return Err(e.into_up()),
        };
        exchange.connected(&route.upstream);
        upstream.set_read_timeout(peer.options.read_timeout);
        upstream.set_write_timeout(peer.options.write_timeout);
        let head_timeout = route.upstream.response_head_timeout;
        match send_request(session, &mut upstream, &request, request_body.as_ref(), head_timeout).await {
            Ok(()) => break upstream,
            Err(e) if e.etype() == &ErrorType::ReadTimedout && e.esource() == &ErrorSource::Upstream => {
                if e.context.as_ref().is_some_and(|c| c.as_str() == RESPONSE_HEAD_TIMEOUT) {
                    exchange.head_timed_out = Some(head_timeout);
                }
                return Err(e);
            }
            // A pooled connection the upstream closed while idle: try another, if the body can
            // be sent again.
            Err(e)
                if reused
                    && e.esource() == &ErrorSource::Upstream
                    && attempt < STALE_CONNECTION_ATTEMPTS
                    && (request_body.is_some() || session.is_body_empty()) =>
            {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on another");
            }
            Err(e) => return Err(e),
        }
    };

    let mut response = upstream
        .response_header()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no response header"))?;
    exchange.responded(&route.upstream.metric_name);
    if chain.declares(Phase::ResponseHeaders)
        && let Some((header, body)) = response_headers_phase(run, session.req_header(), &mut response).await?
    {
        // The upstream's body is not read: its connection is not reused.
        upstream.shutdown().await;
        return write_parts(session, header, body).await;
    }
    forward_response_headers(&mut response)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    let has_body = !head_only && !matches!(response.status.as_u16(), 100..=199 | 204 | 304);

    if chain.declares(Phase::ResponseBody) && has_body {
        let mut body = match read_response_body(&mut upstream, route).await? {
            Some(body) => body,
            None => {
                upstream.shutdown().await;
                let detail = format!(
                    "upstream `{}` sent a response body over the route's max-body of {} bytes",
                    route.upstream.name, route.max_body
                );
                return Problem::new(502, detail).write(session).await;
            }
        };
        connector
            .release_http_session(upstream, &peer, peer.options.idle_timeout)
            .await;
        match run
            .run(Message::ResponseBody(session.req_header(), &response, &mut body))
            .await
        {
            Verdict::Continue => {}
            Verdict::Respond(replacement) => return write_response(session, replacement).await,
            Verdict::Fail(failure) => return Problem::new(502, failure.to_string()).write(session).await,
        }
        response.remove_header(&TRANSFER_ENCODING);
        response.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        session
            .write_response_header(Box::new(response), body.is_empty())
            .await?;
        if !body.is_empty() {
            session.write_response_body(Some(Bytes::from(body)), true).await?;
        }
        return Ok(());
    }

    // Stream the response body through, framed as the upstream framed it (chunked when it gave
    // no length).
    if has_body && !response.headers.contains_key(CONTENT_LENGTH) {
        response.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    session.write_response_header(Box::new(response), !has_body).await?;
    if has_body {
        if let Some(connection) = super::Connection::of(session) {
            connection.stream_writes(); // each chunk goes out as it arrives
        }
        while let Some(chunk) = upstream.read_response_body().await.map_err(|e| e.into_up())? {
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
    }
    if upstream.response_done() {
        connector
            .release_http_session(upstream, &peer, peer.options.idle_timeout)
            .await;
    }
    Ok(())
}

/// Reads the whole request body. `None` when it is over `max` bytes: the client has been
/// answered 413 and the connection will close (the rest of the body is never read).
async fn read_request_body(session: &mut Session, max: u64) -> Result<Option<Vec<u8>>> {
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return too_large(session, max).await.map(|()| None);
    }
    continue_if_expected(session).await?;
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = session.read_request_body().await.map_err(|e| e.into_down())? {
        if (body.len() + chunk.len()) as u64 > max {
            return too_large(session, max).await.map(|()| None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

async fn too_large(session: &mut Session, max: u64) -> Result<()> {
    session.set_keepalive(None);
    let detail = format!("the request body is over the route's max-body of {max} bytes");
    Problem::new(413, detail).write(session).await
}

/// The context of the error a response head that took longer than `response-head-timeout` fails
/// with.
pub(super) const RESPONSE_HEAD_TIMEOUT: &str = "response-head-timeout";

/// Sends the request head and body upstream and reads the response head (past any 1xx), which
/// must arrive within `head_timeout` of the request's last byte.
async fn send_request(
    session: &mut Session,
    upstream: &mut UpstreamSession,
    request: &RequestHeader,
    body: Option<&Bytes>,
    head_timeout: std::time::Duration,
) -> Result<()> {
    let up = |e: Box<Error>| e.into_up();
    upstream
        .write_request_header(Box::new(request.clone()))
        .await
        .map_err(up)?;
    match body {
        Some(body) => {
            if !body.is_empty() {
                upstream.write_request_body(body.clone(), true).await.map_err(up)?;
            }
        }
        None => {
            while let Some(chunk) = session.read_request_body().await.map_err(|e| e.into_down())? {
                upstream.write_request_body(chunk, false).await.map_err(up)?;
            }
        }
    }
    upstream.finish_request_body().await.map_err(up)?;
    read_response_head(upstream, head_timeout).await
}

/// Reads the response head (past any 1xx), which must arrive within `head_timeout`.
pub(super) async fn read_response_head(
    upstream: &mut UpstreamSession,
    head_timeout: std::time::Duration,
) -> Result<()> {
    let read_head = async {
        loop {
            upstream.read_response_header().await.map_err(|e| e.into_up())?;
            let informational = upstream
                .response_header()
                .is_some_and(|h| h.status.is_informational() && h.status != http::StatusCode::SWITCHING_PROTOCOLS);
            if !informational {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(head_timeout, read_head).await {
        Ok(read) => read,
        Err(_) => Err(Error::explain(ErrorType::ReadTimedout, RESPONSE_HEAD_TIMEOUT).into_up()),
    }
}

/// Answers `100 Continue` to a client that waits for it before sending its body.
pub(super) async fn continue_if_expected(session: &mut Session) -> Result<()> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await?;
    }
    Ok(())
}

/// Reads the whole response body, `None` when it is over the route's `max-body`.
async fn read_response_body(upstream: &mut UpstreamSession, route: &Route) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = upstream.read_response_body().await.map_err(|e| e.into_up())? {
        if (body.len() + chunk.len()) as u64 > route.max_body {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
