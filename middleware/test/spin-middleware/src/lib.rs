//! A `wasi:http/middleware` component written with the Spin SDK, the way a Spin middleware is:
//! an `#[http_service]` that sends the request on with `spin_sdk::http::next`. It adds
//! `x-spin: in` to the request and `x-spin: out` to the response.

use spin_sdk::http::{HeaderValue, IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn mark(request: Request) -> anyhow::Result<impl IntoResponse> {
    let (mut parts, body) = request.into_parts();
    // Hop-by-hop fields may not be set on a request a component sends.
    parts.headers.remove("host");
    parts.headers.remove("connection");
    parts.headers.append("x-spin", HeaderValue::from_static("in"));
    let mut response = spin_sdk::http::next(Request::from_parts(parts, body)).await?;
    response.headers_mut().append("x-spin", HeaderValue::from_static("out"));
    Ok(response)
}
