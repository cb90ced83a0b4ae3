//! The admin API on `[server] admin` (docs/admin.md): health, metrics, the live config and
//! middleware versions, and the calls that change what is live (reload, upload, rollback).
//!
//! Mutating calls (`POST`, `PUT`) need `Authorization: Bearer <token>` when `admin-token-env` names
//! a token; without one, sluice refuses to serve the admin API on anything but a loopback address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::chain::LoadedMiddleware;
use crate::config::redact::redact_secrets;
use crate::reload::{Attempt, Reloader, SwapError, Trigger};

/// Largest component `PUT /admin/middleware/NAME/component` accepts.
pub const MAX_UPLOAD: usize = 256 << 20;

/// Uploads read at the same time; another one meanwhile is answered 429 with `Retry-After`.
const CONCURRENT_UPLOADS: usize = 1;

/// How long an upload's body may take to arrive: a slow client does not hold the upload slot.
const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The admin API's settings.
#[derive(Clone)]
pub struct Admin {
    reloader: Arc<Reloader>,
    /// sha256 of the bearer token mutating calls need; `None`: no token (loopback only).
    token: Option<[u8; 32]>,
    /// Whether reading calls need the token too: the admin API is not on a loopback address.
    guard_reads: bool,
    /// Upload slots ([`CONCURRENT_UPLOADS`]).
    uploads: Arc<tokio::sync::Semaphore>,
}

impl Admin {
    /// An admin API on `addr` over `reloader`, requiring `token` (if any) for mutating calls, and
    /// for every call when `addr` is not a loopback address.
    pub fn new(reloader: Arc<Reloader>, token: Option<&str>, addr: SocketAddr) -> Self {
        Admin {
            reloader,
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            guard_reads: needs_token(addr),
            uploads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_UPLOADS)),
        }
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: std::net::TcpListener) {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the admin API");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let mutating = matches!(*req.method(), Method::POST | Method::PUT);
        if (mutating || self.guard_reads) && !self.authorized(&req) {
            let mut response = problem(StatusCode::UNAUTHORIZED, "a bearer token is required for this call");
            response.headers_mut().insert(
                "www-authenticate",
                "Bearer realm=\"sluice-admin\"".parse().expect("a valid header"),
            );
            return response;
        }
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (Method::GET, ["metrics"]) => {
                let live = self.reloader.live();
                crate::metrics::observe_targets(live.upstreams.values().flat_map(|upstream| {
                    upstream
                        .targets_in_rotation()
                        .into_iter()
                        .map(|(target, up)| (upstream.name.clone(), target.to_string(), up))
                }));
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::metrics::encode(),
                )
            }
            (Method::GET, ["admin", "config"]) => {
                let live = self.reloader.live();
                text(StatusCode::OK, "application/toml", redact_secrets(live.config.source()))
            }
            (Method::GET, ["admin", "middleware"]) => self.list().await,
            (Method::POST, ["admin", "reload"]) => match self.reloader.reload(Trigger::Admin).await {
                Ok(attempt) => json_response(StatusCode::OK, attempt_json(&attempt)),
                Err(e) => problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("the config was not loaded; the running one keeps serving:\n{e}"),
                ),
            },
            (Method::PUT, ["admin", "middleware", name, "component"]) => {
                let name = name.to_string();
                self.upload(&name, req).await
            }
            (Method::POST, ["admin", "middleware", name, "rollback"]) => swapped(self.reloader.rollback(name).await),
            (_, ["healthz" | "metrics"] | ["admin", "config" | "middleware" | "reload"])
            | (_, ["admin", "middleware", _, "component" | "rollback"]) => {
                problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
            }
            _ => problem(StatusCode::NOT_FOUND, "no such admin endpoint (see docs/admin.md)"),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            return true; // no token configured: loopback only (checked at start)
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        // Comparing digests: the time taken says nothing about how much of the token matched.
        given.is_some_and(|token| Sha256::digest(token.as_bytes()).as_slice() == expected)
    }

    async fn list(&self) -> Response<Full<Bytes>> {
        let live = self.reloader.live();
        let middleware: Vec<Value> = self
            .reloader
            .middleware()
            .await
            .into_iter()
            .map(|m| {
                let mut entry = version_json(&m.primary);
                entry["name"] = json!(m.name);
                entry["component"] = json!(
                    live.config
                        .middleware
                        .get(&m.name)
                        .map(|c| c.component.get_ref().to_string())
                );
                entry["canary"] = m.canary.map_or(Value::Null, |(version, weight)| {
                    let mut canary = version_json(&version);
                    canary["weight"] = json!(weight);
                    canary
                });
                entry["previous"] = m.previous.as_deref().map_or(Value::Null, version_json);
                entry["last-error"] = json!(m.last_error);
                entry
            })
            .collect();
        let last = self.reloader.last_attempt();
        json_response(
            StatusCode::OK,
            json!({ "middleware": middleware, "last-reload": last.as_ref().map(attempt_json) }),
        )
    }
}

/// The admin listener's address is acceptable without a token only on loopback.
pub fn needs_token(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

fn swapped(result: Result<Attempt, SwapError>) -> Response<Full<Bytes>> {
    match result {
        Ok(attempt) => json_response(StatusCode::OK, attempt_json(&attempt)),
        Err(e @ SwapError::UnknownMiddleware(_)) => problem(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ SwapError::Rejected(_)) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ SwapError::NoPrevious(_)) => problem(StatusCode::CONFLICT, &e.to_string()),
    }
}

impl Admin {
    /// `PUT /admin/middleware/NAME/component`: refused on its `Content-Length` when that is too
    /// large, one at a time, the body spooled to a temporary file as it arrives.
    async fn upload(&self, name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(len) = declared.filter(|&len| len > MAX_UPLOAD as u64) {
            return too_large(&format!("the component is {len} bytes"));
        }
        let Ok(_slot) = self.uploads.clone().try_acquire_owned() else {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "another component upload is being read; try again when it is done",
            );
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            return response;
        };
        let component = match tokio::time::timeout(UPLOAD_DEADLINE, spool(req.into_body())).await {
            Ok(Ok(component)) => component,
            Ok(Err(Spool::TooLarge)) => return too_large("the component is larger"),
            Ok(Err(Spool::Read(e))) => {
                return problem(StatusCode::BAD_REQUEST, &format!("cannot read the component: {e}"));
            }
            Err(_) => {
                let detail = format!("the component did not arrive within {}s", UPLOAD_DEADLINE.as_secs());
                return problem(StatusCode::REQUEST_TIMEOUT, &detail);
            }
        };
        swapped(self.reloader.upload(name, component).await)
    }
}

/// Why an upload's body could not be read.
enum Spool {
    /// Over [`MAX_UPLOAD`].
    TooLarge,
    /// The client broke off, or the temporary file failed.
    Read(String),
}

/// The upload's body, written to an unnamed temporary file as it arrives and read back once: the
/// process holds the component once, never its chunks and a copy of them.
async fn spool(mut body: Incoming) -> Result<Bytes, Spool> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let io = |e: std::io::Error| Spool::Read(e.to_string());
    let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(io)?);
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Spool::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if len > MAX_UPLOAD {
                return Err(Spool::TooLarge);
            }
            file.write_all(&data).await.map_err(io)?;
        }
    }
    file.rewind().await.map_err(io)?;
    let mut component = Vec::with_capacity(len);
    file.read_to_end(&mut component).await.map_err(io)?;
    Ok(Bytes::from(component))
}

fn too_large(what: &str) -> Response<Full<Bytes>> {
    let detail = format!("{what}; an upload is at most {MAX_UPLOAD} bytes (256 MiB)");
    problem(StatusCode::PAYLOAD_TOO_LARGE, &detail)
}

fn version_json(version: &LoadedMiddleware) -> Value {
    json!({
        "digest": version.artifact.digest,
        "version": version.provenance.version,
        "version-label": version.version_label(),
        "source": version.provenance.source.as_str(),
        "loaded-at": rfc3339(version.provenance.loaded_at),
        "load-ms": version.provenance.load_time.as_secs_f64() * 1e3,
        "cached": version.provenance.cached,
        "resolved": version.provenance.resolved,
        "verified-with": version.provenance.verified_with.as_ref().map(|key| key.display().to_string()),
    })
}

fn attempt_json(attempt: &Attempt) -> Value {
    json!({
        "at": rfc3339(attempt.at),
        "trigger": attempt.trigger.as_str(),
        "result": if attempt.error.is_some() { "error" } else { "ok" },
        "took-ms": attempt.took.as_secs_f64() * 1e3,
        "changed": attempt.changed,
        "error": attempt.error,
    })
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{body:#}\n"))
}

fn problem(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    text(status, "application/problem+json", format!("{body:#}\n"))
}
