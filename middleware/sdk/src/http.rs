//! Outbound HTTP for middleware: one GET or POST, answered whole.
//!
//! Runs over `wasi:http/outgoing-handler`. sluice lets a middleware reach only the `host:port`
//! pairs in its `allow-hosts`; anything else fails with [`HttpError::Denied`]. The host bounds
//! each request (`outbound-timeout`, and the middleware's own `timeout` for the whole call) and
//! the response size (`outbound-max-response`). The call blocks this instance only: sluice's
//! worker serves other requests meanwhile.
//!
//! ```ignore
//! let keys = sluice_sdk::http::get("http://127.0.0.1:9000/jwks.json")?;
//! if keys.status == 200 { /* keys.body */ }
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A whole response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header fields, lowercase names.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host is not in this middleware's `allow-hosts`.
    Denied,
    /// No connection or no answer in time.
    Timeout,
    /// The response body is larger than `outbound-max-response`.
    TooLarge,
    /// The URL is not `http://host[:port]/path` or `https://...`.
    BadUrl(String),
    /// Anything else (connection refused, DNS, TLS, protocol): the WASI error code.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied => f.write_str("denied: the host is not in `allow-hosts`"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::TooLarge => f.write_str("the response is larger than `outbound-max-response`"),
            HttpError::BadUrl(url) => write!(f, "invalid URL `{url}`; expected `http(s)://host[:port]/path`"),
            HttpError::Failed(code) => write!(f, "failed: {code}"),
        }
    }
}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied,
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                HttpError::Timeout
            }
            ErrorCode::HttpResponseBodySize(_) => HttpError::TooLarge,
            other => HttpError::Failed(format!("{other:?}")),
        }
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<HttpResponse, HttpError> {
    send("GET", url, &[], None)
}

/// `POST url` with `body` of type `content_type`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<HttpResponse, HttpError> {
    send("POST", url, &[("content-type", content_type.as_bytes())], Some(body))
}

/// Sends `method url` with `headers` and an optional body, and reads the whole response.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<HttpResponse, HttpError> {
    let (scheme, authority, path) = split_url(url).ok_or_else(|| HttpError::BadUrl(url.to_owned()))?;
    let fields: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
    let fields = Fields::from_list(&fields).map_err(|e| HttpError::Failed(format!("invalid header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |what: &str| HttpError::Failed(format!("invalid {what}"));
    request.set_method(&method).map_err(|()| invalid("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    request.set_path_with_query(Some(path)).map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| invalid("body"))?;

    // Hand the request over before writing the body: the host reads it as it is written.
    let pending = outgoing_handler::handle(request, None)?;
    if let Some(body) = body {
        let stream = outgoing.write().map_err(|()| invalid("body"))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(stream_error)?;
        }
    }
    OutgoingBody::finish(outgoing, None)?;

    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| HttpError::Failed("no response".into()))?
        .map_err(|()| HttpError::Failed("response taken twice".into()))??;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| invalid("response body"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| invalid("response body"))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error(e)),
            }
        }
    }
    IncomingBody::finish(incoming);
    Ok(HttpResponse { status, headers, body })
}

fn stream_error(e: StreamError) -> HttpError {
    match e {
        StreamError::Closed => HttpError::Failed("the connection closed".into()),
        StreamError::LastOperationFailed(error) => match wasip2::http::types::http_error_code(&error) {
            Some(code) => code.into(),
            None => HttpError::Failed(error.to_debug_string()),
        },
    }
}

/// `http://host:port/path?query` as scheme, authority and path (`/` when absent).
fn split_url(url: &str) -> Option<(Scheme, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], &rest[at..]),
        Some(_) | None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((scheme, authority, path))
}
