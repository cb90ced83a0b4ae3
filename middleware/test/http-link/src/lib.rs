//! A standard `wasi:http/proxy` middleware (WASI 0.2), written against the `wasip2` crate's
//! bindings only, as any `wasi:http` proxy is: no sluice SDK, no sluice WIT.
//!
//! - It forwards every request to the authority it was addressed to (in sluice: its next hop,
//!   the rest of the chain), adding `x-link: in`, and streams the request body through.
//! - It answers with what came back, adding `x-link: out` (and `x-link-saw-length` when the
//!   next hop's response had a `content-length`), streaming the response body through.
//! - A request with `x-link-short` is answered here: 403, `stopped by the link`.
//! - A request for a path with `/trap` in it traps before forwarding anything; `/loop` loops
//!   forever; `/hog` allocates until it is refused memory.
//! - A request with `x-link-fetch: URL` is answered here with what fetching `URL` (another
//!   authority: outbound HTTP) gave: `x-link-fetched: STATUS`, or `x-link-fetch-error: CODE`.
use std::io::Write as _;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, OutputStream};

wasip2::http::proxy::export!(Link);

struct Link;

impl wasip2::exports::http::incoming_handler::Guest for Link {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        if path.contains("/trap") {
            panic!("asked to trap");
        }
        if path.contains("/loop") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if path.contains("/hog") {
            let mut held = Vec::new();
            loop {
                held.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&held);
            }
        }
        let headers = request.headers();
        if headers.has("x-link-short") {
            return answer(response_out, 403, b"stopped by the link");
        }
        if let Some(url) = headers.get("x-link-fetch").first() {
            return fetch(response_out, &String::from_utf8_lossy(url));
        }

        let forwarded = Fields::new();
        for (name, value) in headers.entries() {
            // Fields the host forbids (hop-by-hop) are left out.
            let _ = forwarded.append(&name, &value);
        }
        forwarded.append("x-link", b"in").expect("x-link is allowed");
        let outgoing = OutgoingRequest::new(forwarded);
        outgoing.set_method(&request.method()).expect("a method");
        outgoing.set_path_with_query(Some(&path)).expect("a path");
        outgoing.set_scheme(request.scheme().as_ref()).expect("a scheme");
        outgoing
            .set_authority(request.authority().as_deref())
            .expect("an authority");
        let outgoing_body = outgoing.body().expect("the request's body");
        let future = outgoing_handler::handle(outgoing, None).expect("the request is sent");

        let incoming_body = request.consume().expect("the request's body");
        {
            let from = incoming_body.stream().expect("the request body's stream");
            let to = outgoing_body.write().expect("the outgoing body's stream");
            copy(from, to);
        }
        IncomingBody::finish(incoming_body);
        OutgoingBody::finish(outgoing_body, None).expect("the request body ends");

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => {
                return answer(response_out, 502, format!("next hop failed: {code:?}").as_bytes());
            }
            _ => return answer(response_out, 502, b"no response from the next hop"),
        };
        let returned = Fields::new();
        let upstream_headers = response.headers();
        for (name, value) in upstream_headers.entries() {
            let _ = returned.append(&name, &value);
        }
        returned.append("x-link", b"out").expect("x-link is allowed");
        if upstream_headers.has("content-length") {
            returned.append("x-link-saw-length", b"yes").expect("allowed");
        }
        let outgoing = OutgoingResponse::new(returned);
        outgoing.set_status_code(response.status()).expect("a status");
        let body = outgoing.body().expect("the response's body");
        ResponseOutparam::set(response_out, Ok(outgoing));
        let incoming_body = response.consume().expect("the response's body");
        {
            let from = incoming_body.stream().expect("the response body's stream");
            let to = body.write().expect("the response body's stream");
            copy(from, to);
        }
        IncomingBody::finish(incoming_body);
        OutgoingBody::finish(body, None).expect("the response body ends");
    }
}

/// Copies `from` to `to` until `from` ends, in chunks as they come.
fn copy(mut from: InputStream, mut to: OutputStream) {
    std::io::copy(&mut from, &mut to).expect("copying a body");
    to.flush().expect("flushing a body");
}

/// Answers 200 with what a GET of `url` (`http://host:port/path`) gave.
fn fetch(response_out: ResponseOutparam, url: &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let outgoing = OutgoingRequest::new(Fields::new());
    outgoing
        .set_scheme(Some(&wasip2::http::types::Scheme::Http))
        .expect("a scheme");
    outgoing.set_authority(Some(authority)).expect("an authority");
    outgoing.set_path_with_query(Some(&path)).expect("a path");
    let (name, value) = match outgoing_handler::handle(outgoing, None) {
        Err(code) => ("x-link-fetch-error", format!("{code:?}")),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => ("x-link-fetched", response.status().to_string()),
                Some(Ok(Err(code))) => ("x-link-fetch-error", format!("{code:?}")),
                _ => ("x-link-fetch-error", "none".to_owned()),
            }
        }
    };
    let headers = Fields::new();
    headers.append(name, value.as_bytes()).expect("allowed");
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("the response's body");
    ResponseOutparam::set(response_out, Ok(response));
    OutgoingBody::finish(body, None).expect("finishing the body");
}

/// Answers `status` with `body`, here.
fn answer(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    headers.append("content-type", b"text/plain").expect("allowed");
    headers.append("x-link", b"answered").expect("allowed");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a status");
    let outgoing_body = response.body().expect("the response's body");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut out = outgoing_body.write().expect("the body's stream");
        out.write_all(body).expect("writing the body");
        out.flush().expect("flushing the body");
    }
    OutgoingBody::finish(outgoing_body, None).expect("finishing the body");
}
