//! The embedded echo upstream: answers every request with a JSON description of what it received.
//!
//! `sluice demo` runs it behind the proxy, and the tests use it as their upstream. Request headers
//! steer it, so a test can ask for any upstream behaviour through the proxy:
//!
//! | header                                | effect                                                 |
//! | ------------------------------------- | ------------------------------------------------------ |
//! | `x-echo-status: 503`                  | answer with this status                                |
//! | `x-echo-delay: 200ms`                 | wait this long before answering                        |
//! | `x-echo-body: raw`                    | answer with the request body itself, byte for byte     |
//! | `x-echo-size: 1048576`                | answer with this many bytes of a fixed pattern         |
//! | `x-echo-drip: 5x200ms`                | answer with 5 chunks (`chunk N\n`), 200ms apart         |
//! | `x-echo-response-header: name: value` | add this header to the response (repeatable)           |
//!
//! The JSON answer: `{"upstream", "method", "path", "query", "version", "headers", "body-bytes"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A running echo server.
pub struct EchoServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
}

impl EchoServer {
    /// Binds `addr` (port 0 for any free port) and serves on the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let name: Arc<str> = format!("echo@{addr}").into();
        let task = tokio::spawn(accept_loop(listener, name, counters.clone()));
        Ok(EchoServer { addr, counters, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs echo servers on `addrs` on a background thread with its own runtime, for `sluice demo`.
///
/// Returns once every address is bound, or with the first bind error.
pub fn spawn_background(addrs: Vec<SocketAddr>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("echo-upstream".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut servers = Vec::new();
                for addr in addrs {
                    match EchoServer::start(addr).await {
                        Ok(server) => servers.push(server),
                        Err(e) => {
                            let _ = ready_tx.send(Err(std::io::Error::new(
                                e.kind(),
                                format!("echo upstream on {addr}: {e}"),
                            )));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                std::future::pending::<()>().await;
            });
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("echo upstream thread exited")))
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        counters.connections.fetch_add(1, Ordering::SeqCst);
        let (name, counters) = (name.clone(), counters.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| echo(req, name.clone(), counters.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn echo(req: Request<Incoming>, name: Arc<str>, counters: Arc<Counters>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let control = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());

    if let Some(delay) = control("x-echo-delay").and_then(|d| humantime::parse_duration(d).ok()) {
        tokio::time::sleep(delay).await;
    }
    let status = control("x-echo-status").and_then(|s| s.parse().ok()).unwrap_or(200);

    if let Some((count, gap)) = control("x-echo-drip").and_then(parse_drip) {
        let chunks = futures_stream(count, gap);
        let body = BodyExt::boxed(StreamBody::new(chunks));
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(body)
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad echo control\n")).boxed())));
    }

    let (content_type, payload) = if control("x-echo-body") == Some("raw") {
        let ct = control("content-type").unwrap_or("application/octet-stream").to_owned();
        (ct, body)
    } else if let Some(size) = control("x-echo-size").and_then(|s| s.parse::<usize>().ok()) {
        let pattern: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        ("application/octet-stream".to_owned(), Bytes::from(pattern))
    } else {
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<String> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.insert(name.to_string(), values.join(", ").into());
        }
        let description = serde_json::json!({
            "upstream": &*name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body-bytes": body.len(),
        });
        let mut json = serde_json::to_vec_pretty(&description).unwrap_or_default();
        json.push(b'\n');
        ("application/json".to_owned(), Bytes::from(json))
    };

    let mut response = Response::builder().status(status).header("content-type", content_type);
    for extra in parts.headers.get_all("x-echo-response-header") {
        if let Some((k, v)) = extra.to_str().ok().and_then(|s| s.split_once(':')) {
            response = response.header(k.trim(), v.trim());
        }
    }
    Ok(response
        .body(Full::new(payload).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad echo control\n")).boxed())))
}

/// `5x200ms` → (5, 200ms).
fn parse_drip(spec: &str) -> Option<(usize, std::time::Duration)> {
    let (count, gap) = spec.split_once('x')?;
    Some((count.trim().parse().ok()?, humantime::parse_duration(gap.trim()).ok()?))
}

/// `count` body frames, the first at once, then one every `gap`.
fn futures_stream(
    count: usize,
    gap: std::time::Duration,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..count {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let frame = hyper::body::Frame::data(Bytes::from(format!("chunk {i}\n")));
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
