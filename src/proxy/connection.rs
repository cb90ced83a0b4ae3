//! A client's HTTP/1 connection as the proxy sees it. pingora reads and writes it; this layer adds
//! what pingora's per-read timeouts and write buffering leave out:
//!
//! - **a deadline on each request head** (`[server] header-timeout`), from the head's first byte
//!   to its last. A client trickling its head, however steadily, is answered `408` with
//!   `Connection: close` when it passes, and the connection is closed. Idle time between
//!   requests is the keep-alive timeout's, and a request body's pace is the per-read timeout's.
//! - **writes that go out as they are made while a response body streams.** pingora holds a
//!   `Content-Length` body in its write buffer until the body is complete, so a body an upstream
//!   sends slowly would reach the client all at once at its end.
//!
//! [`Front`] wraps each accepted connection in a [`Connection`] and hands it to pingora's HTTP
//! handling; HTTP/2 (by ALPN, or with prior knowledge) has its own framing and is left as it is.
//! The proxy tells the connection where each request stands ([`Connection::of`]).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::Sluice;
use super::problem::Problem;
use crate::live::Snapshot;

/// The proxy service as pingora runs it: each connection wrapped, then pingora's HTTP handling.
pub struct Front {
    proxy: Arc<HttpProxy<Sluice>>,
    live: Arc<ArcSwap<Snapshot>>,
}

impl Front {
    /// `proxy`, with the `header-timeout` of whatever snapshot `live` holds when a connection
    /// arrives.
    pub fn new(proxy: HttpProxy<Sluice>, live: Arc<ArcSwap<Snapshot>>) -> Front {
        Front {
            proxy: Arc::new(proxy),
            live,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let stream: Stream = match stream.selected_alpn_proto() {
            Some(ALPN::H2) => stream,
            _ => {
                let limit = self.live.load().config.server.header_timeout.0;
                Box::new(Connection::new(stream, limit))
            }
        };
        ServerApp::process_new(&self.proxy, stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

/// No byte of the next request head has arrived.
const AWAITING: u8 = 0;
/// A request head is arriving, against the deadline.
const HEAD: u8 = 1;
/// The request head has been parsed; its body and response are under way.
const REQUEST: u8 = 2;
/// HTTP/2 with prior knowledge: no request heads to time here.
const UNTIMED: u8 = 3;

/// What a client whose request head took too long is told before the connection closes: a whole
/// HTTP/1.1 response, problem+json like every answer sluice writes itself.
static TIMED_OUT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = Problem::new(408, "the request head did not arrive within header-timeout").body();
    let head = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), &body].concat()
});

/// A client connection: the stream pingora accepted, with a deadline on each request head and
/// write-through while a response body streams.
#[derive(Debug)]
pub struct Connection {
    inner: Stream,
    /// `header-timeout`.
    limit: Duration,
    /// Where the current request stands: [`AWAITING`], [`HEAD`], [`REQUEST`] or [`UNTIMED`]. The
    /// proxy moves it on through `&self`, from the task that reads.
    phase: AtomicU8,
    /// The head's deadline, while one is arriving.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The deadline passed: every further read fails.
    expired: bool,
    /// Whether anything has been read yet (the HTTP/2 preface comes first or not at all).
    started: bool,
    /// Flush each write: a response body is streaming.
    write_through: AtomicBool,
}

impl Connection {
    fn new(inner: Stream, limit: Duration) -> Connection {
        Connection {
            inner,
            limit,
            phase: AtomicU8::new(AWAITING),
            deadline: None,
            expired: false,
            started: false,
            write_through: AtomicBool::new(false),
        }
    }

    /// The connection `session` is on, for an HTTP/1 request.
    pub fn of(session: &Session) -> Option<&Connection> {
        session.downstream_session.stream()?.as_any().downcast_ref()
    }

    /// The request head has been parsed: its deadline no longer applies.
    pub fn head_received(&self) {
        self.phase.store(REQUEST, Ordering::Relaxed);
    }

    /// The request is over: the next head's deadline starts with its first byte.
    pub fn request_done(&self) {
        self.phase.store(AWAITING, Ordering::Relaxed);
        self.write_through.store(false, Ordering::Relaxed);
    }

    /// A response body is streaming: its writes go out as they are made, until the request is
    /// done.
    pub fn stream_writes(&self) {
        self.write_through.store(true, Ordering::Relaxed);
    }

    /// The head's deadline passed: tells the client (best effort: what fits the socket now) and
    /// fails the read pingora is waiting on.
    fn expire(&mut self, cx: &mut Context<'_>) -> io::Error {
        if !self.expired {
            self.expired = true;
            if let Poll::Ready(Ok(_)) = Pin::new(&mut self.inner).poll_write(cx, &TIMED_OUT) {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
            crate::metrics::metrics().head_timeouts.inc();
            let client = self
                .inner
                .get_socket_digest()
                .and_then(|d| d.peer_addr().map(|a| a.to_string()));
            tracing::info!(client = client.as_deref().unwrap_or("-"), limit = ?self.limit, "a request head took longer than header-timeout: answered 408, connection closed");
        }
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the request head did not arrive within header-timeout ({:?})",
                self.limit
            ),
        )
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(this.expire(cx)));
        }
        match this.phase.load(Ordering::Relaxed) {
            HEAD => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(this.expire(cx)));
                }
            }
            _ => this.deadline = None,
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if !this.started && new.starts_with(b"PRI ") {
                this.phase.store(UNTIMED, Ordering::Relaxed);
            } else if this.phase.load(Ordering::Relaxed) == AWAITING {
                this.phase.store(HEAD, Ordering::Relaxed);
                this.deadline = Some(Box::pin(tokio::time::sleep(this.limit)));
            }
            this.started = true;
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.flush_if_streaming(cx);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.flush_if_streaming(cx);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection {
    /// While a body streams, what was just written goes out now. A flush that cannot finish yet
    /// (the client reads slowly) finishes with the next write or flush.
    fn flush_if_streaming(&mut self, cx: &mut Context<'_>) {
        if self.write_through.load(Ordering::Relaxed) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }
}

// The rest is the accepted stream's, as it is.

#[async_trait]
impl Shutdown for Connection {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Connection {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Connection {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Connection {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Connection {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Connection {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Connection {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
