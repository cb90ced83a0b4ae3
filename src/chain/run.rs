//! One request's pass through a chain.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use tracing::Instrument;
use wasmtime::Store;

use super::{Chain, Deployment, LoadedMiddleware, Reuse};
use crate::config::OnError;
use crate::metrics::{Outcome, Phase};
use crate::runtime::Middleware;
use crate::runtime::host::HostState;
use crate::runtime::types::{BodyDecision, HeaderEdits, Request, RequestDecision, Response, ResponseDecision};

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
}

impl FailureKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory-limit",
            FailureKind::Trap => "trap",
            FailureKind::Instantiate => "instantiate",
            FailureKind::BadOutput => "bad-output",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::Timeout => "timed out",
            FailureKind::MemoryLimit => "exceeded its memory limit",
            FailureKind::Trap => "trapped",
            FailureKind::Instantiate => "could not be instantiated",
            FailureKind::BadOutput => "returned an invalid answer",
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

/// What the request-headers phase decided.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Go on to the upstream (header edits are applied to the request).
    Continue,
    /// A middleware answered; nothing goes upstream.
    Respond(Response),
    /// A middleware failed with `on-error = "deny"`.
    Fail(Failure),
}

/// What the response-headers phase decided.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// Send the upstream's response (header edits are applied).
    Continue,
    /// Send this response instead.
    Respond(Response),
    /// A middleware failed with `on-error = "deny"`.
    Fail(Failure),
}

/// What a body phase decided.
#[derive(Debug)]
pub enum BodyOutcome {
    /// Forward the body (as replaced by the middleware, if one did).
    Continue,
    /// Answer with this response instead.
    Respond(Response),
    /// A middleware failed with `on-error = "deny"`.
    Fail(Failure),
}

/// A middleware instance serving a request.
struct Live {
    store: Store<HostState>,
    bindings: Middleware,
    /// Requests it served before this one (reused instances).
    served: u32,
    /// False while a call runs and after one failed: such an instance is never reused.
    reusable: bool,
    /// The middleware to give it back to after the request, when it has `reuse`.
    home: Option<Arc<LoadedMiddleware>>,
}

/// A middleware's idle instances, when it has `reuse`: taken by a request, given back after it.
#[derive(Default)]
pub struct IdleInstances(Mutex<Vec<Live>>);

impl std::fmt::Debug for IdleInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |idle| idle.len());
        f.debug_tuple("IdleInstances").field(&idle).finish()
    }
}

impl IdleInstances {
    /// Idle instances kept per middleware, at most; more are dropped. Each holds a slot of the
    /// engine's instance pool.
    const MAX_IDLE: usize = 64;

    fn take(&self) -> Option<Live> {
        self.0.lock().ok()?.pop()
    }

    /// Keeps `live` for another request, unless it failed, served its `max-requests` or grew past
    /// `max-memory`.
    fn give_back(&self, mut live: Live, reuse: Reuse) {
        live.served += 1;
        let grown = live.store.data().limits.memory_high_water as u64 > reuse.max_memory;
        if !live.reusable || live.served >= reuse.max_requests || grown {
            return;
        }
        if let Ok(mut idle) = self.0.lock()
            && idle.len() < Self::MAX_IDLE
        {
            idle.push(live);
        }
    }
}

/// Calls one phase of `$link` (the chain's `$index`th middleware) on this request's instance of
/// it (created on first use): sets the deadline, calls with the wall-clock bound, inside a
/// `middleware` span, and records the call (metrics, the request's call list).
macro_rules! call_phase {
    ($run:ident, $index:expr, $link:expr, $phase:expr, $call:ident($($arg:expr),*)) => {{
        let started = Instant::now();
        let span = tracing::debug_span!(
            parent: &$run.span,
            "middleware",
            name = &*$link.name,
            version = $link.calls.version(),
            phase = $phase.as_str(),
            outcome = tracing::field::Empty,
        );
        let result = match instance(&mut $run.slots[$index].live, $link).await {
            Ok(live) => {
                arm(live, $link);
                let call = live.bindings.$call(&mut live.store, $($arg),*);
                let result = bounded($link, call).instrument(span.clone()).await;
                settle(live, result)
            }
            Err(kind) => Err(kind),
        };
        $run.record($link, $phase, &result, started.elapsed(), &span);
        result
    }};
}

/// One request's pass through a chain: its instances (one per middleware, created on first use and
/// kept for every phase of the request) and its view of the request, with the context.
pub struct ChainRun {
    slots: Vec<Slot>,
    request: Request,
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
}

/// One middleware of the chain, for one request: which version it runs and that version's instance.
struct Slot {
    /// The canary version serves this request (picked once, so every phase runs the same version).
    canary: bool,
    /// Created on first use.
    live: Option<Live>,
}

/// The version of `deployment` a request runs.
fn chosen(deployment: &Deployment, canary: bool) -> &Arc<LoadedMiddleware> {
    match &deployment.canary {
        Some(c) if canary => &c.version,
        _ => &deployment.primary,
    }
}

impl ChainRun {
    /// A run for `chain` over `request`, with middleware spans under `span`.
    pub fn new(chain: &Chain, request: Request, span: tracing::Span) -> Self {
        ChainRun {
            slots: chain
                .links()
                .iter()
                .map(|deployment| Slot {
                    canary: deployment.pick().1,
                    live: None,
                })
                .collect(),
            request,
            span,
            calls: Vec::new(),
        }
    }

    /// The calls made so far (taken: the run keeps none).
    pub fn take_calls(&mut self) -> Vec<CallRecord> {
        std::mem::take(&mut self.calls)
    }

    /// Counts and records one call of `link` in `phase` that took `took`.
    fn record<D: Decision>(
        &mut self,
        link: &LoadedMiddleware,
        phase: Phase,
        result: &Result<D, FailureKind>,
        took: Duration,
        span: &tracing::Span,
    ) {
        let (outcome, label, status) = match result {
            Ok(decision) => match decision.responds() {
                Some(status) => (Outcome::Respond, "respond", Some(status)),
                None => (Outcome::Next, "next", None),
            },
            Err(kind) => (Outcome::Failed, kind.label(), None),
        };
        link.calls.count(phase, outcome, took);
        if let Some(status) = status {
            link.calls.short_circuit(phase, status);
        }
        span.record("outcome", label);
        self.calls.push(CallRecord {
            middleware: link.name.clone(),
            phase,
            outcome: label,
            status,
        });
    }

    /// Runs `on-request-headers` in chain order, applying header edits to `upstream` (the request
    /// that will go upstream) and collecting context for later middleware.
    pub async fn on_request_headers(&mut self, chain: &Chain, upstream: &mut RequestHeader) -> RequestOutcome {
        for (index, deployment) in chain.links().iter().enumerate() {
            let link = chosen(deployment, self.slots[index].canary);
            if !link.registration.request_headers {
                continue;
            }
            let result = {
                let request = view(&self.request, link.registration.request_header_names.as_deref());
                call_phase!(
                    self,
                    index,
                    link,
                    Phase::RequestHeaders,
                    call_on_request_headers(&request)
                )
            };
            match result {
                Ok(RequestDecision::Next((edits, context))) => {
                    if let Err(kind) = apply_request_edits(&edits, upstream, &mut self.request) {
                        if let Some(failure) = failed(link, kind) {
                            return RequestOutcome::Fail(failure);
                        }
                        continue;
                    }
                    self.request.context.extend(context);
                }
                Ok(RequestDecision::Respond(response)) => return RequestOutcome::Respond(response),
                Err(kind) => {
                    if let Some(failure) = failed(link, kind) {
                        return RequestOutcome::Fail(failure);
                    }
                }
            }
        }
        RequestOutcome::Continue
    }

    /// Runs `on-response-headers` in reverse chain order, applying header edits to `response`.
    pub async fn on_response_headers(&mut self, chain: &Chain, response: &mut ResponseHeader) -> ResponseOutcome {
        for (index, deployment) in chain.links().iter().enumerate().rev() {
            let link = chosen(deployment, self.slots[index].canary);
            if !link.registration.response_headers {
                continue;
            }
            let result = {
                let request = view(&self.request, link.registration.request_header_names.as_deref());
                let headers = header_list(&response.headers, link.registration.response_header_names.as_deref());
                let status = response.status.as_u16();
                call_phase!(
                    self,
                    index,
                    link,
                    Phase::ResponseHeaders,
                    call_on_response_headers(&request, status, &headers)
                )
            };
            match result {
                Ok(ResponseDecision::Next(edits)) => {
                    if let Err(kind) = apply_edits(&edits, |op| match op {
                        Edit::Remove(name) => drop(response.remove_header(&name)),
                        Edit::Set(name, value) => response.insert_header(name, value).map(drop).unwrap_or(()),
                        Edit::Append(name, value) => response.append_header(name, value).map(drop).unwrap_or(()),
                    }) && let Some(failure) = failed(link, kind)
                    {
                        return ResponseOutcome::Fail(failure);
                    }
                }
                Ok(ResponseDecision::Respond(replacement)) => return ResponseOutcome::Respond(replacement),
                Err(kind) => {
                    if let Some(failure) = failed(link, kind) {
                        return ResponseOutcome::Fail(failure);
                    }
                }
            }
        }
        ResponseOutcome::Continue
    }

    /// Runs `on-request-body` in chain order over the whole request body; a `replace` changes
    /// `body` for the next middleware and the upstream.
    pub async fn on_request_body(&mut self, chain: &Chain, body: &mut Vec<u8>) -> BodyOutcome {
        for (index, deployment) in chain.links().iter().enumerate() {
            let link = chosen(deployment, self.slots[index].canary);
            if !link.registration.request_body {
                continue;
            }
            let result = {
                let request = view(&self.request, link.registration.request_header_names.as_deref());
                call_phase!(
                    self,
                    index,
                    link,
                    Phase::RequestBody,
                    call_on_request_body(&request, body)
                )
            };
            if let Some(outcome) = body_decided(link, result, body) {
                return outcome;
            }
        }
        BodyOutcome::Continue
    }

    /// Runs `on-response-body` in reverse chain order over the whole response body of `response`.
    pub async fn on_response_body(
        &mut self,
        chain: &Chain,
        response: &ResponseHeader,
        body: &mut Vec<u8>,
    ) -> BodyOutcome {
        for (index, deployment) in chain.links().iter().enumerate().rev() {
            let link = chosen(deployment, self.slots[index].canary);
            if !link.registration.response_body {
                continue;
            }
            let result = {
                let request = view(&self.request, link.registration.request_header_names.as_deref());
                let headers = header_list(&response.headers, link.registration.response_header_names.as_deref());
                let status = response.status.as_u16();
                call_phase!(
                    self,
                    index,
                    link,
                    Phase::ResponseBody,
                    call_on_response_body(&request, status, &headers, body)
                )
            };
            if let Some(outcome) = body_decided(link, result, body) {
                return outcome;
            }
        }
        BodyOutcome::Continue
    }
}

/// The request's instance of `link` in `slot`: created (or taken from the idle ones) on first use.
async fn instance<'a>(slot: &'a mut Option<Live>, link: &Arc<LoadedMiddleware>) -> Result<&'a mut Live, FailureKind> {
    if slot.is_none()
        && link.reuse.is_some()
        && let Some(live) = link.idle.take()
    {
        *slot = Some(live);
    }
    if slot.is_none() {
        let host = HostState::new(
            link.name.clone(),
            link.state.clone(),
            link.memory_limit as usize,
            link.outbound.clone(),
        );
        let mut store = link.runtime.store(host);
        store.data_mut().deadline = Instant::now() + link.timeout;
        let bindings = link.pre.instantiate_async(&mut store).await.map_err(|e| {
            tracing::warn!(middleware = &*link.name, error = %format!("{e:#}"), "cannot instantiate");
            FailureKind::Instantiate
        })?;
        *slot = Some(Live {
            store,
            bindings,
            served: 0,
            reusable: true,
            home: link.reuse.is_some().then(|| link.clone()),
        });
    }
    Ok(slot.as_mut().expect("just created"))
}

/// Applies one body call's result: `None` to go on to the next middleware.
fn body_decided(
    link: &LoadedMiddleware,
    result: Result<BodyDecision, FailureKind>,
    body: &mut Vec<u8>,
) -> Option<BodyOutcome> {
    match result {
        Ok(BodyDecision::Next) => None,
        Ok(BodyDecision::Replace(replacement)) => {
            *body = replacement;
            None
        }
        Ok(BodyDecision::Respond(response)) => Some(BodyOutcome::Respond(response)),
        Err(kind) => failed(link, kind).map(BodyOutcome::Fail),
    }
}

impl Drop for ChainRun {
    /// Gives reused instances back to their middleware.
    fn drop(&mut self) {
        for live in self.slots.iter_mut().filter_map(|slot| slot.live.take()) {
            if let Some(home) = live.home.clone()
                && let Some(reuse) = home.reuse
            {
                home.idle.give_back(live, reuse);
            }
        }
    }
}

/// Whether a decision answers the client, and with which status.
trait Decision {
    fn responds(&self) -> Option<u16>;
}

impl Decision for RequestDecision {
    fn responds(&self) -> Option<u16> {
        match self {
            RequestDecision::Respond(response) => Some(response.status),
            RequestDecision::Next(_) => None,
        }
    }
}

impl Decision for ResponseDecision {
    fn responds(&self) -> Option<u16> {
        match self {
            ResponseDecision::Respond(response) => Some(response.status),
            ResponseDecision::Next(_) => None,
        }
    }
}

impl Decision for BodyDecision {
    fn responds(&self) -> Option<u16> {
        match self {
            BodyDecision::Respond(response) => Some(response.status),
            _ => None,
        }
    }
}

/// Sets the call's deadline.
fn arm(live: &mut Live, link: &LoadedMiddleware) {
    live.reusable = false;
    let host = live.store.data_mut();
    host.deadline = Instant::now() + link.timeout;
    host.timed_out = false;
}

/// `call`, bounded by the middleware's deadline in wall-clock time as well: the epoch deadline
/// stops a component that computes, this one a component waiting in the host (on an outbound
/// request, the state backend, a WASI clock). The timer is only registered if the call does not
/// finish at its first poll.
async fn bounded<T>(
    link: &LoadedMiddleware,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<wasmtime::Result<T>, tokio::time::error::Elapsed> {
    tokio::time::timeout(link.timeout, call).await
}

/// A call's result; a successful call leaves its instance reusable. A call stopped while waiting
/// (its future dropped) leaves the instance unusable, and it is never reused.
fn settle<T>(
    live: &mut Live,
    result: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
) -> Result<T, FailureKind> {
    match result {
        Ok(Ok(value)) => {
            live.reusable = true;
            Ok(value)
        }
        Ok(Err(e)) => Err(classify(live, &e)),
        Err(_) => Err(FailureKind::Timeout),
    }
}

fn classify(live: &Live, error: &wasmtime::Error) -> FailureKind {
    let message = format!("{error:#}");
    if live.store.data().timed_out {
        FailureKind::Timeout
    } else if message.contains("forcing trap when growing memory") || message.contains("memory allocation") {
        FailureKind::MemoryLimit
    } else {
        FailureKind::Trap
    }
}

/// Logs a failure and applies `on-error`: `Some` to deny the request, `None` to carry on.
fn failed(link: &LoadedMiddleware, kind: FailureKind) -> Option<Failure> {
    let deny = link.on_error == OnError::Deny;
    link.calls.failure(kind.label(), if deny { "deny" } else { "allow" });
    tracing::warn!(middleware = &*link.name, failure = %kind, on_error = if deny { "deny" } else { "allow" }, "middleware call failed");
    deny.then(|| Failure {
        middleware: link.name.clone(),
        kind,
    })
}

/// The request as `names` lets this middleware see it (all headers when `None`).
fn view<'a>(request: &'a Request, names: Option<&[String]>) -> Cow<'a, Request> {
    let Some(names) = names else {
        return Cow::Borrowed(request);
    };
    Cow::Owned(Request {
        method: request.method.clone(),
        scheme: request.scheme.clone(),
        authority: request.authority.clone(),
        path_with_query: request.path_with_query.clone(),
        headers: request
            .headers
            .iter()
            .filter(|(name, _)| names.iter().any(|n| n == name))
            .cloned()
            .collect(),
        client_addr: request.client_addr.clone(),
        route: request.route.clone(),
        context: request.context.clone(),
    })
}

fn header_list(headers: &http::HeaderMap, names: Option<&[String]>) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| names.is_none_or(|names| names.iter().any(|n| n == name.as_str())))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// The WIT view of a request head (`scheme`: `http` or `https`): what every middleware of the
/// chain starts from.
pub fn request_view(req: &RequestHeader, scheme: &str, authority: &str, client_addr: String, route: &str) -> Request {
    Request {
        method: req.method.as_str().to_owned(),
        scheme: scheme.to_owned(),
        authority: authority.to_owned(),
        path_with_query: req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: header_list(&req.headers, None),
        client_addr,
        route: route.to_owned(),
        context: Vec::new(),
    }
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

/// Applies edits to the request going upstream and to the chain's view of it.
fn apply_request_edits(
    edits: &HeaderEdits,
    upstream: &mut RequestHeader,
    view: &mut Request,
) -> Result<(), FailureKind> {
    apply_edits(edits, |op| match op {
        Edit::Remove(name) => {
            upstream.remove_header(&name);
            view.headers.retain(|(n, _)| n != name.as_str());
        }
        Edit::Set(name, value) => {
            view.headers.retain(|(n, _)| n != name.as_str());
            view.headers.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
            let _ = upstream.insert_header(name, value);
        }
        Edit::Append(name, value) => {
            view.headers.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
            let _ = upstream.append_header(name, value);
        }
    })
}
