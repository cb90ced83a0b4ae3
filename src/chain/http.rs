//! A standard `wasi:http` link's call: its `handle` gets the request once, and its next hop is
//! the rest of the chain, then the upstream ([`NextHop`]):
//!
//! - a WASI 0.3 `wasi:http/middleware` component's next hop is its imported `handler`; it runs in
//!   its store's concurrent event loop, on the runtime's WASI 0.3 engine, and its instances are
//!   reused within `reuse`'s bounds unless `instances = "fresh"`;
//! - a WASI 0.2 `wasi:http/proxy` component's next hop is a request it sends to the authority of
//!   the request it is handling; it gets an instance per request (the model it is written for).
//!
//! Anything else either sends is outbound HTTP, to its `allow-hosts` only. The instance runs as a
//! task of its own on the worker, so that it can go on writing the response body after it has
//! given the head. Its `timeout` bounds the time it runs (every poll, metered as for any link:
//! [`crate::runtime::budget`]), not the time it waits for its next hop, which the upstream's own
//! timeouts bound. `memory-limit` holds as for any link.
//!
//! A link that keeps failing is quarantined as any link is: its calls take turns until one
//! answers.
//!
//! A failure before it answers follows `on-error`: `deny` fails the request; `allow` sends the
//! request on without it, as it came (its body replayed from what the link had read, up to the
//! route's `max-body`), if the link had not yet sent anything to its next hop. A failure after
//! the head went out ends the response body early (the client sees a truncated response).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tracing::Instrument;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error, WasiBody, WasiHttpView};

use super::LoadedMiddleware;
use super::run::{Bindings, CallRecord, Failure, FailureKind, INSTANTIATE_DEADLINE, Live, failed};
use crate::config::OnError;
use crate::metrics::{Created, Outcome};
use crate::runtime::budget::Meter;
use crate::runtime::host::{HostCalls, HostState, NextHop};
use crate::runtime::{LinkPre, Phase, ProxyPre, ServicePre};

/// What a `wasi:http` link did with a request.
pub enum Handled {
    /// It answered: itself, or with what its next hop answered (changed or not).
    Response(http::Response<WasiBody>),
    /// It failed before answering, and the request fails (`on-error = "deny"`, or `allow` when
    /// the request had already gone on to the next hop and cannot be sent again).
    Fail(Failure),
    /// It failed before answering or sending anything on, and its `on-error` is `allow`: the
    /// request as it came, to go on without it.
    Skip(http::Request<WasiBody>),
}

/// Runs `link`'s `handle` over `request` (an absolute URI: the link reads its authority there),
/// with its requests to that authority going to `next`; records the call in `calls`, under
/// `span`. `max_replay`: how much of the body to keep for a replay (`on-error = "allow"`).
pub async fn handle(
    link: Arc<LoadedMiddleware>,
    scheme: &str,
    request: http::Request<WasiBody>,
    next: NextHop,
    max_replay: u64,
    span: &tracing::Span,
    calls: &mut Vec<CallRecord>,
) -> Handled {
    let started = Instant::now();
    let span = tracing::debug_span!(
        parent: span,
        "middleware",
        name = &*link.name,
        version = link.calls.version(),
        phase = Phase::Handle.as_str(),
        outcome = tracing::field::Empty,
    );
    // What it sent on: a request that went on cannot be sent again without it.
    let forwarded = Arc::new(AtomicBool::new(false));
    let next = NextHop {
        authority: next.authority,
        send: {
            let (forwarded, send) = (forwarded.clone(), next.send);
            Arc::new(move |request| {
                forwarded.store(true, Ordering::Relaxed);
                send(request)
            })
        },
    };
    let (request, replay) = match link.policy.on_error {
        OnError::Allow => {
            let (request, replay) = Replay::tee(request, max_replay);
            (request, Some(replay))
        }
        OnError::Deny => (request, None),
    };
    // A link that keeps failing takes turns, as a `sluice:middleware` link does, until it has
    // answered (its instance's task stays on the worker: its next hop is the rest of the chain).
    let result = match link.quarantine.turn(link.policy.timeout).await {
        Ok(_turn) => run(&link, scheme, request, next).instrument(span.clone()).await,
        Err(kind) => Err(kind),
    };
    link.quarantine.settle(&link.name, &result);
    let (outcome, label, status) = match &result {
        Ok(response) if forwarded.load(Ordering::Relaxed) => (Outcome::Next, "next", Some(response.status().as_u16())),
        Ok(response) => (Outcome::Respond, "respond", Some(response.status().as_u16())),
        Err(kind) => (Outcome::Failed, kind.label(), None),
    };
    link.calls.count(Phase::Handle, outcome, started.elapsed());
    if let (Outcome::Respond, Some(status)) = (outcome, status) {
        link.calls.short_circuit(Phase::Handle, status);
    }
    span.record("outcome", label);
    calls.push(CallRecord {
        middleware: link.name.clone(),
        phase: Phase::Handle,
        outcome: label,
        status: status.filter(|_| label == "respond"),
        host_calls: HostCalls::default(),
    });
    let kind = match result {
        Ok(response) => return Handled::Response(response),
        Err(kind) => kind,
    };
    let failure = failed(&link, kind).unwrap_or_else(|| Failure {
        middleware: link.name.clone(),
        kind,
    });
    if link.policy.on_error == OnError::Deny || forwarded.load(Ordering::Relaxed) {
        return Handled::Fail(failure);
    }
    match replay.and_then(Replay::request) {
        Some(request) => Handled::Skip(request),
        None => Handled::Fail(failure),
    }
}

/// One call of `link`'s `handle` on a new instance: the response head it gave (its body streams
/// on from the instance's task), or why it gave none.
async fn run(
    link: &Arc<LoadedMiddleware>,
    scheme: &str,
    request: http::Request<WasiBody>,
    next: NextHop,
) -> Result<http::Response<WasiBody>, FailureKind> {
    match &link.artifact.pre {
        LinkPre::Proxy(pre) => run_proxy(link, pre, scheme, request, next).await,
        LinkPre::Middleware(pre) => run_middleware(link, pre, request, next).await,
        LinkPre::Sluice(_) => Err(FailureKind::Instantiate),
    }
}

/// [`run`] for a WASI 0.3 `wasi:http/middleware` link: its `handle` runs in the store's
/// concurrent event loop, which goes on (driving the response body, and whatever else the
/// component still does) until the component has nothing left to do. With `reuse` (the default),
/// an instance that served a request without failing goes back to the link's idle ones after it,
/// as `wasmtime serve` and Spin reuse `wasi:http` 0.3 instances.
async fn run_middleware(
    link: &Arc<LoadedMiddleware>,
    pre: &ServicePre<HostState>,
    request: http::Request<WasiBody>,
    next: NextHop,
) -> Result<http::Response<WasiBody>, FailureKind> {
    let idle = link.policy.reuse.and_then(|_| link.idle.take());
    let (mut store, service, served) = match idle {
        Some(Live {
            store,
            bindings: Bindings::Service(service),
            served,
            ..
        }) => (store, Some(service), served),
        _ => {
            let host = link.host();
            (link.runtime.p3_store(host), None, 0)
        }
    };
    store.data_mut().set_next_hop(Some(next));
    store.data_mut().deadline = Instant::now() + INSTANTIATE_DEADLINE.max(link.policy.timeout);
    let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, request);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (pre, link) = (pre.clone(), link.clone());
    let task = Task::spawn(
        link.clone(),
        async move {
            let service = match service {
                Some(service) => service,
                None => match pre.instantiate_async(&mut store).await {
                    Ok(service) => {
                        link.calls.count_created(Created::Request);
                        service
                    }
                    Err(e) => {
                        tracing::warn!(middleware = &*link.name, error = %format!("{e:#}"), "cannot instantiate");
                        return Err(FailureKind::Instantiate);
                    }
                },
            };
            let meter = store.data().meter.clone();
            meter.arm(link.policy.timeout);
            store.set_epoch_deadline(1);
            let host = store.data_mut();
            host.timed_out = false;
            host.limits.refused = false;
            let call = store.run_concurrent(async |accessor| {
                let answer = match service.handle(accessor, request).await? {
                    Ok(response) => accessor
                        .with(|mut store| response.into_http(&mut store, request_io))
                        .map_err(|_| FailureKind::BadOutput),
                    // It answered with an `error-code` rather than a response.
                    Err(_) => Err(FailureKind::BadOutput),
                };
                let _ = sender.send(answer);
                std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                wasmtime::Result::<()>::Ok(())
            });
            let result = metered(&meter, call).await.and_then(|ran| ran);
            let settled = settle(&link, store.data_mut(), result);
            if let (Ok(()), Some(reuse)) = (&settled, link.policy.reuse) {
                store.data_mut().set_next_hop(None);
                let mut live = Live::of(store, Bindings::Service(service));
                live.served = served;
                // Its instances run no `init`: a successor is never asked for.
                let _ = link.idle.give_back(live, reuse, true);
            }
            settled
        }
        .in_current_span(),
    );
    answered(receiver.await, task).await
}

/// What the call's task ended with, from the flags the epoch callback and the memory limiter set.
fn settle(link: &LoadedMiddleware, host: &mut HostState, result: wasmtime::Result<()>) -> Result<(), FailureKind> {
    link.calls.count_host_calls(host.take_calls());
    let kind = match result {
        Ok(()) => return Ok(()),
        Err(_) if host.timed_out => FailureKind::Timeout,
        Err(_) if host.limits.refused => FailureKind::MemoryLimit,
        Err(_) => FailureKind::Trap,
    };
    // After its response head went out, the body ends early; before, `handle` says more.
    tracing::debug!(middleware = &*link.name, failure = %kind, "a `wasi:http` link's call failed");
    Err(kind)
}

/// The response head a link's task `received` (sent), its body kept streaming by `task`; or why
/// there is none.
async fn answered(
    received: Result<Result<http::Response<WasiBody>, FailureKind>, tokio::sync::oneshot::error::RecvError>,
    task: Task,
) -> Result<http::Response<WasiBody>, FailureKind> {
    match received {
        Ok(Ok(response)) => Ok(response.map(|body| Running { body, task: Some(task) }.boxed_unsync_body())),
        Ok(Err(kind)) => Err(kind),
        // It ended without answering: how, its task says.
        Err(_) => match task.finished().await {
            Ok(()) => Err(FailureKind::BadOutput),
            Err(kind) => Err(kind),
        },
    }
}

/// A link's call running as a task of its own: stopped when dropped, unless [`Task::detach`]ed.
struct Task {
    handle: Option<tokio::task::JoinHandle<Result<(), FailureKind>>>,
    link: Arc<LoadedMiddleware>,
}

impl Task {
    fn spawn(
        link: Arc<LoadedMiddleware>,
        call: impl Future<Output = Result<(), FailureKind>> + Send + 'static,
    ) -> Task {
        Task {
            handle: Some(tokio::spawn(call)),
            link,
        }
    }

    /// What the call ended with.
    async fn finished(mut self) -> Result<(), FailureKind> {
        let handle = self.handle.as_mut().expect("a task is only taken by detach or drop");
        match handle.await {
            Ok(ended) => ended,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(FailureKind::Trap),
        }
    }

    /// Lets the call finish on its own once its response body has ended: whatever the instance
    /// still does (its running time within its `timeout`), then putting the instance back with
    /// the idle ones. An instance still at it [`LINGER`] after (waiting on something that does
    /// not come) is stopped, so that it does not hold its pool slot for ever.
    fn detach(mut self) {
        let Some(handle) = self.handle.take() else { return };
        if handle.is_finished() {
            return;
        }
        let (link, linger) = (self.link.clone(), LINGER.max(self.link.policy.timeout));
        tokio::spawn(async move {
            let stop = handle.abort_handle();
            if tokio::time::timeout(linger, handle).await.is_err() {
                stop.abort();
                tracing::warn!(
                    middleware = &*link.name,
                    "a `wasi:http` link was still running {}s after its response ended: stopped",
                    linger.as_secs_f64()
                );
            }
        });
    }
}

/// How long a `wasi:http` link's instance may go on after its response has ended (at least its
/// `timeout`).
const LINGER: Duration = Duration::from_secs(5);

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// [`run`] for a WASI 0.2 `wasi:http/proxy` link: its `incoming-handler.handle` answers through a
/// `response-outparam`, then may go on writing the body.
async fn run_proxy(
    link: &Arc<LoadedMiddleware>,
    pre: &ProxyPre<HostState>,
    scheme: &str,
    request: http::Request<WasiBody>,
    next: NextHop,
) -> Result<http::Response<WasiBody>, FailureKind> {
    let host = link.host();
    let mut store = link.runtime.store(host);
    store.data_mut().set_next_hop(Some(next));
    // Instantiating is the host's work, not the middleware's: bounded, but not by its budget.
    store.data_mut().deadline = Instant::now() + INSTANTIATE_DEADLINE.max(link.policy.timeout);
    let scheme = match scheme {
        "https" => Scheme::Https,
        _ => Scheme::Http,
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let mut http = store.data_mut().http();
    let request = http.new_incoming_request(scheme, request);
    let out = http.new_response_outparam(sender);
    let (Ok(request), Ok(out)) = (request, out) else {
        return Err(FailureKind::Instantiate);
    };
    let (pre, link) = (pre.clone(), link.clone());
    let task = Task::spawn(
        link.clone(),
        async move {
            let proxy = match pre.instantiate_async(&mut store).await {
                Ok(proxy) => {
                    link.calls.count_created(Created::Request);
                    proxy
                }
                Err(e) => {
                    tracing::warn!(middleware = &*link.name, error = %format!("{e:#}"), "cannot instantiate");
                    return Err(FailureKind::Instantiate);
                }
            };
            let meter = store.data().meter.clone();
            meter.arm(link.policy.timeout);
            store.set_epoch_deadline(1);
            let call = proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out);
            let result = metered(&meter, call).await;
            settle(&link, store.data_mut(), result)
        }
        .in_current_span(),
    );
    // An `error-code` rather than a response is a bad answer.
    let received = receiver.await.map(|answer| answer.map_err(|_| FailureKind::BadOutput));
    answered(received, task).await
}

/// `call`, with the time each of its polls runs counted against its budget (the epoch callback
/// stops it once spent). Its waits are not bounded here: they are for its next hop.
async fn metered<T>(meter: &Meter, call: impl Future<Output = T>) -> T {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        meter.enter();
        let polled = call.as_mut().poll(cx);
        meter.leave();
        polled
    })
    .await
}

/// A response body a link's instance is still writing: its task lives as long as the body, is
/// stopped if the body is dropped before its end (e.g. when the client goes away), and is let
/// finish once the body has ended.
struct Running {
    body: WasiBody,
    task: Option<Task>,
}

impl Running {
    fn boxed_unsync_body(self) -> WasiBody {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

impl Body for Running {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if (matches!(polled, Poll::Ready(None)) || self.body.is_end_stream())
            && let Some(task) = self.task.take()
        {
            task.detach();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body as a link reads it, kept (up to a bound) so that the request can go on
/// without the link if it fails: what it read, then what it did not.
struct Replay {
    shared: Arc<Mutex<Teed>>,
    head: http::request::Parts,
}

struct Teed {
    /// The body's unread rest.
    rest: Option<WasiBody>,
    /// The chunks read so far.
    read: Vec<Bytes>,
    /// How many more bytes may be kept; `None` once more was read than that (no replay).
    room: Option<u64>,
}

/// The body the link reads, through [`Replay`].
struct Teeing(Arc<Mutex<Teed>>);

impl Replay {
    /// `request` with its body read through a [`Replay`] of at most `max` bytes.
    fn tee(request: http::Request<WasiBody>, max: u64) -> (http::Request<WasiBody>, Replay) {
        let (head, body) = request.into_parts();
        let shared = Arc::new(Mutex::new(Teed {
            rest: Some(body),
            read: Vec::new(),
            room: Some(max),
        }));
        let teeing = http_body_util::BodyExt::boxed_unsync(Teeing(shared.clone()));
        let request = http::Request::from_parts(head.clone(), teeing);
        (request, Replay { shared, head })
    }

    /// The request as it came, if all the link read of its body was kept.
    fn request(self) -> Option<http::Request<WasiBody>> {
        let mut teed = self.shared.lock().ok()?;
        teed.room?;
        let body = Replayed {
            read: std::mem::take(&mut teed.read).into(),
            rest: teed.rest.take(),
        };
        Some(http::Request::from_parts(
            self.head,
            http_body_util::BodyExt::boxed_unsync(body),
        ))
    }
}

impl Body for Teeing {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Ok(mut teed) = self.0.lock() else {
            return Poll::Ready(None);
        };
        let Some(rest) = teed.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(rest).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            teed.room = teed.room.and_then(|room| room.checked_sub(len));
            if teed.room.is_some() {
                teed.read.push(data.clone());
            } else {
                teed.read.clear();
            }
        }
        Poll::Ready(frame)
    }
}

/// A body replayed: the chunks read before, then the rest.
struct Replayed {
    read: VecDeque<Bytes>,
    rest: Option<WasiBody>,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(chunk) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}
