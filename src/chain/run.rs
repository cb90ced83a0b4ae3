//! One request's pass through a chain: one phase loop for the four phases.
//!
//! A phase is a [`Message`] (what the phase reads and may change). [`ChainRun::run`] calls every
//! link that declares the phase, in chain order (reverse for the response phases), turns each
//! answer into one [`Decision`], applies it to the message and stops at the first `respond` or at
//! a failure whose `on-error` is `deny`. What is specific to a kind of link (how a phase reaches a
//! `sluice:middleware` component) is [`Bindings::call`]; a second kind of link (a standard
//! `wasi:http` component, a native built-in) is a variant there, not a copy of the loop.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use tracing::Instrument;
use wasmtime::Store;

use super::{Chain, LoadedMiddleware, Reuse};
use crate::config::OnError;
use crate::metrics::{Created, Outcome};
use crate::runtime::Registration;
use crate::runtime::budget::Meter;
use crate::runtime::host::{HostCalls, HostState, Outbound};
use crate::runtime::types::{BodyDecision, HeaderEdits, Request, RequestDecision, Response, ResponseDecision};
use crate::runtime::{Exports, IdleSlots, LinkPre, Phase, Service, Start, Started};
use crate::telemetry::OncePerSecond;

/// How long creating an instance may take (at least the middleware's `timeout`): the host's work,
/// microseconds normally, so only a broken host exceeds it.
pub(super) const INSTANTIATE_DEADLINE: Duration = Duration::from_secs(1);

/// Headers a middleware may not edit: message framing belongs to the proxy.
const PROTECTED: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

/// Why a middleware call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It did not return before its `timeout`.
    Timeout,
    /// It tried to grow its memory past `memory-limit`.
    MemoryLimit,
    /// It trapped (a panic, `unreachable`, a bad memory access...).
    Trap,
    /// It could not be instantiated (e.g. the instance pool is exhausted).
    Instantiate,
    /// It answered with something sluice cannot use (e.g. an invalid header).
    BadOutput,
    /// It kept failing, so its calls run one at a time ([`Quarantine`]), and this one waited for
    /// its turn past its `timeout`.
    Quarantined,
}

impl FailureKind {
    /// How many kinds there are (the last one's index, plus one: checked below).
    const COUNT: usize = 6;

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::Trap => "trap",
            FailureKind::Instantiate => "instantiate",
            FailureKind::BadOutput => "bad-output",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

const _: () = assert!(FailureKind::Quarantined as usize + 1 == FailureKind::COUNT);

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::Timeout => "timed out",
            FailureKind::MemoryLimit => "exceeded its memory limit",
            FailureKind::Trap => "trapped",
            FailureKind::Instantiate => "could not be instantiated",
            FailureKind::BadOutput => "returned an invalid answer",
            FailureKind::Quarantined => "kept failing, and this call waited for its turn past its timeout",
        })
    }
}

/// A middleware that failed and whose `on-error` is `deny`: the request is answered with an error.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The middleware's name.
    pub middleware: Arc<str>,
    /// What went wrong.
    pub kind: FailureKind,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "middleware `{}` {}", self.middleware, self.kind)
    }
}

/// What a chain phase decided, whatever the phase.
#[derive(Debug)]
pub enum Verdict {
    /// Go on: to the upstream for a request phase, to the client for a response phase, with the
    /// message as the middleware changed it.
    Continue,
    /// A middleware answered; this response goes to the client instead.
    Respond(Response),
    /// A middleware failed with `on-error = "deny"`.
    Fail(Failure),
}

/// What one phase of the chain reads and may change. Every phase sees the request head as the
/// request-headers phase left it (the edits of the middleware before it applied).
pub enum Message<'a> {
    /// The request head going upstream (header edits; context for later middleware).
    RequestHeaders(&'a mut RequestHeader),
    /// The whole request body (a `replace` changes it for the next middleware and the upstream).
    RequestBody(&'a RequestHeader, &'a mut Vec<u8>),
    /// The response head going to the client (header edits).
    ResponseHeaders(&'a RequestHeader, &'a mut ResponseHeader),
    /// The whole response body, under its head.
    ResponseBody(&'a RequestHeader, &'a ResponseHeader, &'a mut Vec<u8>),
}

impl Message<'_> {
    /// The phase this message is for.
    pub fn phase(&self) -> Phase {
        match self {
            Message::RequestHeaders(_) => Phase::RequestHeaders,
            Message::RequestBody(..) => Phase::RequestBody,
            Message::ResponseHeaders(..) => Phase::ResponseHeaders,
            Message::ResponseBody(..) => Phase::ResponseBody,
        }
    }

    /// The request head.
    fn request(&self) -> &RequestHeader {
        match self {
            Message::RequestHeaders(head) => head,
            Message::RequestBody(head, _) | Message::ResponseHeaders(head, _) | Message::ResponseBody(head, ..) => head,
        }
    }
}

/// What one link answered in one phase, whatever the phase and the kind of link.
#[derive(Debug)]
enum Decision {
    /// Go on, after these changes.
    Next {
        /// Header edits (header phases).
        edits: Option<HeaderEdits>,
        /// Context for later middleware (request headers).
        context: Vec<(String, String)>,
        /// The body to go on with (body phases): `None` keeps it.
        body: Option<Vec<u8>>,
    },
    /// Answer the client with this response.
    Respond(Response),
}

impl Decision {
    fn next() -> Self {
        Decision::Next {
            edits: None,
            context: Vec::new(),
            body: None,
        }
    }
}

impl From<RequestDecision> for Decision {
    fn from(decision: RequestDecision) -> Self {
        match decision {
            RequestDecision::Next((edits, context)) => Decision::Next {
                edits: Some(edits),
                context,
                body: None,
            },
            RequestDecision::Respond(response) => Decision::Respond(response),
        }
    }
}

impl From<ResponseDecision> for Decision {
    fn from(decision: ResponseDecision) -> Self {
        match decision {
            ResponseDecision::Next(edits) => Decision::Next {
                edits: Some(edits),
                context: Vec::new(),
                body: None,
            },
            ResponseDecision::Respond(response) => Decision::Respond(response),
        }
    }
}

impl From<BodyDecision> for Decision {
    fn from(decision: BodyDecision) -> Self {
        match decision {
            BodyDecision::Next => Decision::next(),
            BodyDecision::Replace(body) => Decision::Next {
                edits: None,
                context: Vec::new(),
                body: Some(body),
            },
            BodyDecision::Respond(response) => Decision::Respond(response),
        }
    }
}

/// How a phase call reaches one kind of link.
pub(super) enum Bindings {
    /// A `sluice:middleware` component (either world): one export per phase.
    Sluice(Exports),
    /// A WASI 0.3 `wasi:http/middleware` component: its `handle` (`chain::http`), no phase.
    Service(Service),
}

impl Bindings {
    /// Calls `message`'s phase with what `link` asked to see of it: the request (its headers
    /// narrowed to what `init` registered), the chain's context and, in a response phase, the
    /// response head (narrowed the same way). The arguments borrow from the heads: a typed-world
    /// component gets them lowered straight into its memory, a compact one gets each head encoded
    /// once (`runtime::head`).
    async fn call(
        &self,
        store: &mut Store<HostState>,
        link: &LoadedMiddleware,
        facts: &RequestFacts,
        context: &[(String, String)],
        message: &Message<'_>,
    ) -> wasmtime::Result<Decision> {
        let head = message.request();
        let registration = &link.artifact.registration;
        let headers = HeaderView::Request.select(registration, &head.headers);
        let context: Vec<(&str, &str)> = context.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let request = Request {
            method: head.method.as_str(),
            scheme: facts.scheme,
            authority: &facts.authority,
            path_with_query: head
                .uri
                .path_and_query()
                .map_or_else(|| head.uri.path(), |pq| pq.as_str()),
            headers: &headers,
            client_addr: &facts.client_addr,
            route: &facts.route,
            context: &context,
        };
        match self {
            Bindings::Service(_) => Err(wasmtime::format_err!("a `wasi:http` link declares no phase")),
            Bindings::Sluice(bindings) => Ok(match message {
                Message::RequestHeaders(_) => bindings.on_request_headers(store, request).await?.into(),
                Message::RequestBody(_, body) => bindings.on_request_body(store, request, body).await?.into(),
                Message::ResponseHeaders(_, head) => bindings
                    .on_response_headers(
                        store,
                        request,
                        head.status.as_u16(),
                        &HeaderView::Response.select(registration, &head.headers),
                    )
                    .await?
                    .into(),
                Message::ResponseBody(_, head, body) => bindings
                    .on_response_body(
                        store,
                        request,
                        head.status.as_u16(),
                        &HeaderView::Response.select(registration, &head.headers),
                        body,
                    )
                    .await?
                    .into(),
            }),
        }
    }
}

/// Which head's headers a middleware is passed.
#[derive(Clone, Copy)]
enum HeaderView {
    Request,
    Response,
}

impl HeaderView {
    /// The fields of `headers` `registration` asked for (all of them when it named none), as
    /// borrowed name/value pairs, in the order the names were registered.
    fn select<'a>(self, registration: &'a Registration, headers: &'a HeaderMap) -> Vec<(&'a str, &'a [u8])> {
        let names = match self {
            HeaderView::Request => registration.request_header_names.as_deref(),
            HeaderView::Response => registration.response_header_names.as_deref(),
        };
        match names {
            None => headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect(),
            Some(names) => names
                .iter()
                .flat_map(|name| {
                    let values = headers.get_all(name.as_str()).iter();
                    values.map(|value| (name.as_str(), value.as_bytes()))
                })
                .collect(),
        }
    }
}

/// A link's instance serving a request.
pub(super) struct Live {
    pub(super) store: Store<HostState>,
    pub(super) bindings: Bindings,
    /// The running budget of its calls (also in the store's `HostState`).
    meter: Arc<Meter>,
    /// Requests that began on it (reused instances).
    pub(super) served: u32,
    /// False while a call runs and after one failed: such an instance is never reused.
    reusable: bool,
    /// It asked for its successor (see [`IdleInstances`]).
    successor_asked: bool,
}

impl Live {
    /// A new instance, not yet serving.
    fn new(store: Store<HostState>, bindings: Exports) -> Self {
        Live::of(store, Bindings::Sluice(bindings))
    }

    /// A new instance of a link of any kind, not yet serving.
    pub(super) fn of(store: Store<HostState>, bindings: Bindings) -> Self {
        Live {
            meter: store.data().meter.clone(),
            store,
            bindings,
            served: 0,
            reusable: true,
            successor_asked: false,
        }
    }
}

/// A middleware's idle instances, when its instances are reused: taken by a request, given back
/// after it. Each holds one of the runtime's [`IdleSlots`].
///
/// An instance nearing `max-requests` asks for its successor, which is created and initialized
/// off the request path (on the standby thread) while it serves on, and waits idle below the
/// others; when it retires at `max-requests`, the successor takes over. So no request pays a
/// replacement's `init` (milliseconds for a component that compiles schemas or regexes in it).
pub struct IdleInstances {
    idle: Mutex<Vec<Live>>,
    slots: Arc<IdleSlots>,
    /// Whether retiring instances get a successor made ahead (instances that run `init`).
    ahead: bool,
    /// A successor is being made (one at a time per middleware version).
    preparing: AtomicBool,
}

impl std::fmt::Debug for IdleInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_tuple("IdleInstances").field(&idle).finish()
    }
}

impl IdleInstances {
    /// Idle instances kept per middleware, at most; more are dropped.
    const MAX_IDLE: usize = 64;

    /// None idle yet, holding slots of `slots`; with `ahead`, successors are made ahead.
    pub fn new(slots: Arc<IdleSlots>, ahead: bool) -> Self {
        IdleInstances {
            idle: Mutex::default(),
            slots,
            ahead,
            preparing: AtomicBool::new(false),
        }
    }

    /// Keeps `instance`, started at load, as the first idle one, with outbound HTTP to `outbound`.
    pub fn adopt(&self, instance: Started, outbound: Option<Arc<Outbound>>, reuse: Reuse) {
        let Started { mut store, bindings } = instance;
        store.data_mut().set_outbound(outbound);
        store.data_mut().take_calls();
        let asks = self.give_back(Live::new(store, bindings), reuse, false);
        debug_assert!(!asks, "an instance that served nothing asks for no successor");
    }

    pub(super) fn take(&self) -> Option<Live> {
        let live = self.idle.lock().ok()?.pop()?;
        self.slots.release(1);
        Some(live)
    }

    /// Keeps `live` for another call, unless it failed, served its `max-requests` or grew past
    /// `max-memory`, or the idle instances already fill their share of the pool. `began` counts a
    /// request that began on it. True when it asks for its successor: the caller starts making it
    /// ([`give_back`]).
    #[must_use]
    pub(super) fn give_back(&self, mut live: Live, reuse: Reuse, began: bool) -> bool {
        live.served += u32::from(began);
        let asks = self.ahead
            && live.reusable
            && !live.successor_asked
            && reuse.successor_due().is_some_and(|due| live.served >= due)
            && self.preparing.compare_exchange(false, true, Acquire, Acquire).is_ok();
        live.successor_asked |= asks;
        let grown = live.store.data().limits.memory_high_water as u64 > reuse.max_memory;
        if !live.reusable || live.served >= reuse.max_requests || grown {
            return asks;
        }
        let Ok(mut idle) = self.idle.lock() else { return asks };
        if idle.len() < Self::MAX_IDLE && self.slots.try_hold() {
            idle.push(live);
        }
        asks
    }

    /// Takes in a successor made ahead (`None`: making it failed): below the other idle ones, so
    /// that the instance it succeeds, on top, serves on until it retires.
    fn deliver(&self, successor: Option<Live>) {
        if let Some(live) = successor
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::MAX_IDLE
            && self.slots.try_hold()
        {
            idle.insert(0, live);
        }
        self.preparing.store(false, Release);
    }
}

/// Gives `live` back to `link`'s idle instances and, when it asks for its successor, starts making
/// that on the standby thread.
pub(super) fn give_back(link: &Arc<LoadedMiddleware>, live: Live, reuse: Reuse, began: bool) {
    if !link.idle.give_back(live, reuse, began) {
        return;
    }
    let link = link.clone();
    background(Background::Standby).spawn(async move {
        let successor = new_instance(&link).await.ok();
        if successor.is_some() {
            link.calls.count_created(Created::Ahead);
        }
        link.idle.deliver(successor);
    });
}

impl Drop for IdleInstances {
    /// A retired version's idle instances leave the pool's count.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |idle| idle.len());
        self.slots.release(idle);
    }
}

/// What middleware see of a request besides its head, fixed for the whole request.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The host the client addressed (`Host` or the URI authority), with port if given.
    pub authority: String,
    /// The client's `ip:port`.
    pub client_addr: String,
    /// The route serving the request.
    pub route: Arc<String>,
}

/// One request's pass through a chain: the version of each link it runs, their fresh instances
/// (created on first use and kept for every phase of the request; a reused instance is taken for a
/// call and given back right after it), what middleware see of the request besides its head, and
/// the context they attached.
pub struct ChainRun {
    slots: Vec<Slot>,
    facts: RequestFacts,
    /// What middleware attached for later ones, in order.
    context: Vec<(String, String)>,
    /// The request's span: each call's `middleware` span is its child.
    span: tracing::Span,
    /// Every call made so far, for the access log.
    calls: Vec<CallRecord>,
}

/// One middleware call of a request, as the access log shows it.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The middleware's name.
    pub middleware: Arc<str>,
    /// The phase.
    pub phase: Phase,
    /// `next`, `respond`, or the failure: `trap`, `timeout`, `memory-limit`, ...
    pub outcome: &'static str,
    /// The status it answered with, for `respond`.
    pub status: Option<u16>,
    /// What it asked of the host (state, log, outbound HTTP) during the call.
    pub host_calls: HostCalls,
}

/// One link of the chain, for one request.
struct Slot {
    /// The version this request runs (the canary's, for its share of requests: picked once, so
    /// every phase runs the same version).
    link: Arc<LoadedMiddleware>,
    /// A fresh instance: created on first use, kept for the request. A reused one: only while a
    /// call runs.
    live: Option<Live>,
    /// Whether a call of this link was made for this request (a reused instance counts the
    /// requests that began on it).
    began: bool,
}

impl ChainRun {
    /// A run of `chain` over the request `facts` describe, with middleware spans under `span`.
    pub fn new(chain: &Chain, facts: RequestFacts, span: tracing::Span) -> Self {
        ChainRun {
            slots: chain
                .links()
                .iter()
                .map(|deployment| Slot {
                    link: deployment.pick().clone(),
                    live: None,
                    began: false,
                })
                .collect(),
            facts,
            context: Vec::new(),
            span,
            calls: Vec::new(),
        }
    }

    /// Starts with the context earlier links attached (a segment after a `wasi:http` link).
    pub fn with_context(mut self, context: Vec<(String, String)>) -> Self {
        self.context = context;
        self
    }

    /// What the links attached for later ones so far.
    pub fn context(&self) -> &[(String, String)] {
        &self.context
    }

    /// The calls made so far (taken: the run keeps none).
    pub fn take_calls(&mut self) -> Vec<CallRecord> {
        std::mem::take(&mut self.calls)
    }

    /// Runs `message`'s phase: every link that declares it, in chain order (reverse for a
    /// response phase), each seeing the message as the links before it left it.
    pub async fn run(&mut self, mut message: Message<'_>) -> Verdict {
        let phase = message.phase();
        let count = self.slots.len();
        for step in 0..count {
            let index = if phase.is_response() { count - 1 - step } else { step };
            if !self.slots[index].link.artifact.registration.declares(phase) {
                continue;
            }
            let decided = match self.call(index, &message).await {
                Ok(decision) => self.apply(decision, &mut message),
                Err(kind) => Err(kind),
            };
            match decided {
                Ok(None) => {}
                Ok(Some(response)) => return Verdict::Respond(response),
                Err(kind) => {
                    if let Some(failure) = failed(&self.slots[index].link, kind) {
                        return Verdict::Fail(failure);
                    }
                }
            }
        }
        Verdict::Continue
    }

    /// Calls the `index`th link in `message`'s phase on this request's instance of it (created on
    /// first use), under its deadline, inside a `middleware` span, and records the call.
    async fn call(&mut self, index: usize, message: &Message<'_>) -> Result<Decision, FailureKind> {
        let phase = message.phase();
        let started = Instant::now();
        let Slot { link, live, began } = &mut self.slots[index];
        let span = tracing::debug_span!(
            parent: &self.span,
            "middleware",
            name = &*link.name,
            version = link.calls.version(),
            phase = phase.as_str(),
            outcome = tracing::field::Empty,
        );
        // A middleware that keeps failing runs one call at a time: what it burns (a memory bomb's
        // page faults and resets, a loop's CPU up to its deadline) stays on at most one worker.
        let turn = match link.quarantine.turn(link.policy.timeout).await {
            Ok(turn) => turn,
            Err(kind) => {
                let call = Call {
                    phase,
                    took: started.elapsed(),
                    host_calls: HostCalls::default(),
                };
                let result = Err(kind);
                record(&mut self.calls, link, call, &result, &span);
                return result;
            }
        };
        let (result, host_calls) = match turn {
            None => run_call(live, link, &self.facts, &self.context, message, &span).await,
            // Quarantined: the call runs on the quarantine thread, never on a proxy worker, so
            // what it burns (a memory bomb's page faults, a loop up to its deadline) delays no
            // other request. Its inputs are copied there: this is the rare path.
            Some(turn) => {
                let mut owned = OwnedMessage::of(message);
                let (link, facts, context, span) =
                    (link.clone(), self.facts.clone(), self.context.clone(), span.clone());
                let mut slot = live.take();
                // The thread runs only when the CPU has nothing else to do: under load, the
                // request waits for it at most as long as the call may take in all.
                let most = INSTANTIATE_DEADLINE.max(link.policy.timeout) + link.policy.timeout;
                let (tx, rx) = tokio::sync::oneshot::channel();
                background(Background::Quarantine).spawn(async move {
                    // The turn lasts as long as the call, whether its request waits for it or
                    // not: one call of the middleware at a time on the thread, one instance.
                    let _turn = turn;
                    let message = owned.view();
                    let ran = run_call(&mut slot, &link, &facts, &context, &message, &span).await;
                    // Its request gave up waiting (the thread got no CPU for that long): what
                    // the call found still counts, and a success lifts the quarantine.
                    if let Err(((result, _), _)) = tx.send((ran, slot)) {
                        link.quarantine.settle(&link.name, &result);
                    }
                });
                match tokio::time::timeout(most, rx).await {
                    Ok(Ok((ran, slot))) => {
                        *live = slot;
                        ran
                    }
                    Ok(Err(_)) => (Err(FailureKind::Trap), HostCalls::default()),
                    Err(_) => (Err(FailureKind::Quarantined), HostCalls::default()),
                }
            }
        };
        let call = Call {
            phase,
            took: started.elapsed(),
            host_calls,
        };
        record(&mut self.calls, link, call, &result, &span);
        link.quarantine.settle(&link.name, &result);
        // A reused instance goes back to the idle ones after each call, not after the request: a
        // request waiting on its upstream holds none, so a worker's calls keep running on the
        // same few (cache-hot) instances whatever the number of requests in flight.
        if let Some(reuse) = link.policy.reuse
            && let Some(instance) = live.take()
        {
            give_back(link, instance, reuse, !*began);
        }
        *began = true;
        result
    }

    /// Applies a link's decision to `message` (and the chain's view of the request): `Some` is
    /// the response that answers the client instead.
    fn apply(&mut self, decision: Decision, message: &mut Message<'_>) -> Result<Option<Response>, FailureKind> {
        let (edits, context, replacement) = match decision {
            Decision::Respond(response) => return Ok(Some(response)),
            Decision::Next { edits, context, body } => (edits, context, body),
        };
        match message {
            Message::RequestHeaders(upstream) => {
                if let Some(edits) = &edits {
                    apply_edits(edits, |op| match op {
                        Edit::Remove(name) => drop(upstream.remove_header(&name)),
                        Edit::Set(name, value) => upstream.insert_header(name, value).map(drop).unwrap_or(()),
                        Edit::Append(name, value) => upstream.append_header(name, value).map(drop).unwrap_or(()),
                    })?;
                }
                for (key, value) in context {
                    // A key attached again replaces its value: a reader sees the latest.
                    match self.context.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => entry.1 = value,
                        None => self.context.push((key, value)),
                    }
                }
            }
            Message::ResponseHeaders(_, response) => {
                if let Some(edits) = &edits {
                    apply_edits(edits, |op| match op {
                        Edit::Remove(name) => drop(response.remove_header(&name)),
                        Edit::Set(name, value) => response.insert_header(name, value).map(drop).unwrap_or(()),
                        Edit::Append(name, value) => response.append_header(name, value).map(drop).unwrap_or(()),
                    })?;
                }
            }
            Message::RequestBody(_, body) | Message::ResponseBody(_, _, body) => {
                if let Some(replacement) = replacement {
                    **body = replacement;
                }
            }
        }
        Ok(None)
    }
}

/// One call's measurements, for [`record`].
struct Call {
    phase: Phase,
    took: Duration,
    host_calls: HostCalls,
}

/// Counts and records one `call` of `link`.
fn record(
    calls: &mut Vec<CallRecord>,
    link: &LoadedMiddleware,
    Call {
        phase,
        took,
        host_calls,
    }: Call,
    result: &Result<Decision, FailureKind>,
    span: &tracing::Span,
) {
    let (outcome, label, status) = match result {
        Ok(Decision::Respond(response)) => (Outcome::Respond, "respond", Some(response.status)),
        Ok(Decision::Next { .. }) => (Outcome::Next, "next", None),
        Err(kind) => (Outcome::Failed, kind.label(), None),
    };
    link.calls.count(phase, outcome, took);
    link.calls.count_host_calls(host_calls);
    if let Some(status) = status {
        link.calls.short_circuit(phase, status);
    }
    span.record("outcome", label);
    calls.push(CallRecord {
        middleware: link.name.clone(),
        phase,
        outcome: label,
        status,
        host_calls,
    });
}

/// Whether `slot` holds the request's instance of `link`, after taking an idle one into it if
/// it held none and the link reuses instances.
fn claim(slot: &mut Option<Live>, link: &LoadedMiddleware) -> bool {
    if slot.is_none()
        && link.policy.reuse.is_some()
        && let Some(live) = link.idle.take()
    {
        *slot = Some(live);
    }
    slot.is_some()
}

/// A new instance of `link` for the request, in `slot`.
async fn create<'a>(slot: &'a mut Option<Live>, link: &LoadedMiddleware) -> Result<&'a mut Live, FailureKind> {
    let live = new_instance(link).await?;
    link.calls.count_created(Created::Request);
    Ok(slot.insert(live))
}

/// A new instance of `link`, initialized if its instances run `init`.
async fn new_instance(link: &LoadedMiddleware) -> Result<Live, FailureKind> {
    let host = link.host();
    let LinkPre::Sluice(pre) = &link.artifact.pre else {
        // A `wasi:http` link declares no phase: the chain never calls it here.
        return Err(FailureKind::Instantiate);
    };
    let mut store = link.runtime.store(host);
    // Instantiating is the host's work, not the middleware's: bounded, but not by its budget.
    store.data_mut().deadline = Instant::now() + INSTANTIATE_DEADLINE.max(link.policy.timeout);
    let bindings = pre.instantiate_async(&mut store).await.map_err(|e| {
        tracing::warn!(middleware = &*link.name, error = %format!("{e:#}"), "cannot instantiate");
        FailureKind::Instantiate
    })?;
    if link.artifact.start == Start::Init {
        init(&mut store, &bindings, link).await?;
    }
    Ok(Live::new(store, bindings))
}

/// One call of `link` on its instance in `slot` (created first if there is none), bounded by its
/// deadline; with what it asked of the host.
async fn run_call(
    slot: &mut Option<Live>,
    link: &LoadedMiddleware,
    facts: &RequestFacts,
    context: &[(String, String)],
    message: &Message<'_>,
    span: &tracing::Span,
) -> (Result<Decision, FailureKind>, HostCalls) {
    // The futures of creating an instance and of the call itself are boxed: held inline, their
    // kilobytes of state would be copied at every level of this call's futures, on every call.
    // An instance already there (the request's own, or an idle one) needs no future at all.
    let live = if claim(slot, link) {
        Ok(slot.as_mut().expect("claimed"))
    } else {
        Box::pin(create(slot, link)).await
    };
    match live {
        Ok(live) => {
            arm(live, link);
            let call = Box::pin(live.bindings.call(&mut live.store, link, facts, context, message));
            let result = bounded(&live.meter, link.policy.timeout, call)
                .instrument(span.clone())
                .await;
            let (result, host_calls) = (settle(live, result), live.store.data_mut().take_calls());
            if result.is_err() {
                // A failed instance is discarded, here, on the thread the call ran on: dropping
                // it resets its memory (a quarantined memory bomb's megabytes, freed on the
                // quarantine thread, not on a worker). An instance that trapped cannot be entered
                // again, so a later phase of the request gets a new one.
                *slot = None;
            }
            (result, host_calls)
        }
        Err(kind) => (Err(kind), HostCalls::default()),
    }
}

/// A [`Message`] copied, for a call that runs on another thread.
enum OwnedMessage {
    RequestHeaders(RequestHeader),
    RequestBody(RequestHeader, Vec<u8>),
    ResponseHeaders(RequestHeader, ResponseHeader),
    ResponseBody(RequestHeader, ResponseHeader, Vec<u8>),
}

impl OwnedMessage {
    fn of(message: &Message<'_>) -> OwnedMessage {
        match message {
            Message::RequestHeaders(head) => OwnedMessage::RequestHeaders((**head).clone()),
            Message::RequestBody(head, body) => OwnedMessage::RequestBody((*head).clone(), body.to_vec()),
            Message::ResponseHeaders(head, response) => {
                OwnedMessage::ResponseHeaders((*head).clone(), (**response).clone())
            }
            Message::ResponseBody(head, response, body) => {
                OwnedMessage::ResponseBody((*head).clone(), (*response).clone(), body.to_vec())
            }
        }
    }

    fn view(&mut self) -> Message<'_> {
        match self {
            OwnedMessage::RequestHeaders(head) => Message::RequestHeaders(head),
            OwnedMessage::RequestBody(head, body) => Message::RequestBody(head, body),
            OwnedMessage::ResponseHeaders(head, response) => Message::ResponseHeaders(head, response),
            OwnedMessage::ResponseBody(head, response, body) => Message::ResponseBody(head, response, body),
        }
    }
}

/// The threads that run middleware work off the proxy workers, each started on first use.
#[derive(Debug, Clone, Copy)]
enum Background {
    /// Quarantined middleware's calls (one at a time per middleware already), at idle priority:
    /// what they burn delays no other request.
    Quarantine,
    /// Successors of reused instances nearing `max-requests`, created and initialized there so
    /// that no request waits for an `init`. Normal priority: under load it must keep up.
    Standby,
}

/// The runtime of `thread`.
fn background(thread: Background) -> &'static tokio::runtime::Handle {
    static QUARANTINE: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    static STANDBY: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    let (handle, name) = match thread {
        Background::Quarantine => (&QUARANTINE, "sluice-quarantine"),
        Background::Standby => (&STANDBY, "sluice-standby"),
    };
    handle.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .expect("a tokio runtime for a background thread");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Background::Quarantine = thread {
                    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
                    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
                    let native = thread_priority::thread_native_id();
                    if let Err(e) = thread_priority::set_thread_priority_and_policy(native, ThreadPriority::Min, idle) {
                        tracing::warn!(error = ?e, "the quarantine thread runs at normal priority");
                    }
                }
                runtime.block_on(std::future::pending::<()>())
            })
            .expect("spawning a background thread");
        handle
    })
}

/// Runs `init` in a new instance, as at load (where it succeeded with the same config), under the
/// instantiation deadline and without outbound HTTP.
async fn init(store: &mut Store<HostState>, bindings: &Exports, link: &LoadedMiddleware) -> Result<(), FailureKind> {
    let outbound = store.data_mut().set_outbound(None);
    let result = bindings.call_init(&mut *store, &link.artifact.config_json).await;
    store.data_mut().set_outbound(outbound);
    store.data_mut().take_calls();
    let message = match result {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(message)) => message,
        Err(e) => format!("{e:#}"),
    };
    tracing::warn!(middleware = &*link.name, error = %message, "`init` failed in a new instance");
    Err(FailureKind::Instantiate)
}

/// Gives the call its budget, and its first check of it at the next epoch tick. (Left at what an
/// earlier call set, the deadline of an instance that served a while ago would have passed: the
/// call would stop and yield the worker at its first instruction, every time.)
fn arm(live: &mut Live, link: &LoadedMiddleware) {
    live.reusable = false;
    live.meter.arm(link.policy.timeout);
    live.store.set_epoch_deadline(1);
    let host = live.store.data_mut();
    host.timed_out = false;
    host.limits.refused = false;
}

/// The call waited in the host for longer than its `timeout`.
struct WaitedTooLong;

/// `call`, within the middleware's two budgets of `timeout` ([`crate::runtime::budget`]): the
/// time its polls run, metered here and enforced by the epoch callback, and the time it waits in
/// the host (outbound HTTP, the state backend, a WASI clock), enforced here with a timer. Time the
/// worker spends on other requests between polls counts against neither. The timer exists only
/// once the call waits.
async fn bounded<T>(
    meter: &Meter,
    timeout: Duration,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<wasmtime::Result<T>, WaitedTooLong> {
    let mut call = std::pin::pin!(call);
    let mut waited = Duration::ZERO;
    let mut waiting_since: Option<Instant> = None;
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Some(since) = waiting_since.take() {
            waited += since.elapsed();
        }
        meter.enter();
        let polled = call.as_mut().poll(cx);
        let yielded = meter.leave();
        if let Poll::Ready(result) = polled {
            return Poll::Ready(Ok(result));
        }
        if yielded {
            return Poll::Pending; // ready again at once: not waiting
        }
        let Some(left) = timeout.checked_sub(waited).filter(|left| !left.is_zero()) else {
            return Poll::Ready(Err(WaitedTooLong));
        };
        let now = Instant::now();
        waiting_since = Some(now);
        let deadline = tokio::time::Instant::from_std(now + left);
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(WaitedTooLong)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A call's result; a successful call leaves its instance reusable. A call stopped while waiting
/// (its future dropped) leaves the instance unusable, and it is never reused.
fn settle<T>(live: &mut Live, result: Result<wasmtime::Result<T>, WaitedTooLong>) -> Result<T, FailureKind> {
    match result {
        Ok(Ok(value)) => {
            live.reusable = true;
            Ok(value)
        }
        Ok(Err(_)) => Err(classify(live)),
        Err(_) => Err(FailureKind::Timeout),
    }
}

/// What stopped a call, from the flags the epoch callback and the memory limiter set.
fn classify(live: &Live) -> FailureKind {
    let host = live.store.data();
    if host.timed_out {
        FailureKind::Timeout
    } else if host.limits.refused {
        FailureKind::MemoryLimit
    } else {
        FailureKind::Trap
    }
}

/// Consecutive failed calls (traps, timeouts, memory limits) after which a middleware is
/// quarantined.
const QUARANTINE_AFTER: u32 = 5;

/// A middleware's run of failed calls. After [`QUARANTINE_AFTER`] in a row its calls take turns,
/// one at a time across the workers, each waiting at most its `timeout` for its turn; the first
/// call that succeeds lifts it. A healthy middleware never waits here.
pub struct Quarantine {
    failures: std::sync::atomic::AtomicU32,
    turn: Arc<tokio::sync::Semaphore>,
    /// The failures' log lines, per kind: at most one a second each (a middleware failing every
    /// request would write a line per request; the metrics count every one).
    lines: [OncePerSecond; FailureKind::COUNT],
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            failures: Default::default(),
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            lines: std::array::from_fn(|_| OncePerSecond::new()),
        }
    }
}

impl std::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quarantine")
            .field("failures", &self.failures.load(std::sync::atomic::Ordering::Relaxed))
            .finish()
    }
}

impl Quarantine {
    fn active(&self) -> bool {
        self.failures.load(std::sync::atomic::Ordering::Relaxed) >= QUARANTINE_AFTER
    }

    /// Waits for this call's turn when quarantined (`None` when not).
    pub(super) async fn turn(
        &self,
        timeout: Duration,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, FailureKind> {
        if !self.active() {
            return Ok(None);
        }
        match tokio::time::timeout(timeout, self.turn.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(FailureKind::Quarantined),
        }
    }

    /// Counts a call's result: a success lifts the quarantine, a failure of the middleware's own
    /// making (not a bad answer, not a wait for its turn) adds to the run.
    pub(super) fn settle<T>(&self, name: &str, result: &Result<T, FailureKind>) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(_) => {
                if self.failures.swap(0, Relaxed) >= QUARANTINE_AFTER {
                    tracing::info!(
                        middleware = name,
                        "middleware answered again: its calls run concurrently again"
                    );
                }
            }
            Err(FailureKind::Trap | FailureKind::Timeout | FailureKind::MemoryLimit) => {
                if self.failures.fetch_add(1, Relaxed) + 1 == QUARANTINE_AFTER {
                    tracing::warn!(
                        middleware = name,
                        failures = QUARANTINE_AFTER,
                        "middleware keeps failing: its calls now run one at a time until one succeeds"
                    );
                }
            }
            Err(_) => {}
        }
    }
}

/// Logs a failure and applies `on-error`: `Some` to deny the request, `None` to carry on.
pub(super) fn failed(link: &LoadedMiddleware, kind: FailureKind) -> Option<Failure> {
    let deny = link.policy.on_error == OnError::Deny;
    let on_error = if deny { "deny" } else { "allow" };
    link.calls.failure(kind.label(), on_error);
    if let Some(held_back) = link.quarantine.lines[kind as usize].admit() {
        tracing::warn!(
            middleware = &*link.name,
            failure = %kind,
            on_error,
            held_back,
            "middleware call failed (at most one such line a second per kind: `held_back` counts those not written)"
        );
    }
    deny.then(|| Failure {
        middleware: link.name.clone(),
        kind,
    })
}

enum Edit {
    Remove(HeaderName),
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
}

/// Validates `edits` and applies them in order (remove, set, append) through `apply`. Edits of
/// framing headers are ignored; an invalid name or value is a bad answer.
fn apply_edits(edits: &HeaderEdits, mut apply: impl FnMut(Edit)) -> Result<(), FailureKind> {
    let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| FailureKind::BadOutput);
    let value = |v: &[u8]| HeaderValue::from_bytes(v).map_err(|_| FailureKind::BadOutput);
    let allowed = |n: &HeaderName| !PROTECTED.contains(&n.as_str());
    let mut ops = Vec::with_capacity(edits.remove.len() + edits.set.len() + edits.append.len());
    for n in &edits.remove {
        let n = name(n)?;
        if allowed(&n) {
            ops.push(Edit::Remove(n));
        }
    }
    let mut set_once = Vec::new();
    for (n, v) in &edits.set {
        let n = name(n)?;
        if allowed(&n) {
            // A name set twice keeps both values: the first replaces, the rest append.
            let op = if set_once.contains(&n) {
                Edit::Append(n.clone(), value(v)?)
            } else {
                Edit::Set(n.clone(), value(v)?)
            };
            set_once.push(n);
            ops.push(op);
        }
    }
    for (n, v) in &edits.append {
        let n = name(n)?;
        if allowed(&n) {
            ops.push(Edit::Append(n, value(v)?));
        }
    }
    ops.into_iter().for_each(&mut apply);
    Ok(())
}
