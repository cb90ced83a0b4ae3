//! A route's middleware chain, the per-request run of it, and the [`Snapshot`] of everything live.
//!
//! A [`LoadedMiddleware`] is one `[middleware.NAME]` compiled and initialized at load. A [`Chain`]
//! is a route's list of them. A [`ChainRun`] is one request's pass through a chain: it holds the
//! request's instances (one per middleware, created on first use, serving every phase of that
//! request) and the chain context.

mod run;
mod snapshot;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use run::{
    BodyOutcome, ChainRun, Failure, FailureKind, IdleInstances, RequestOutcome, ResponseOutcome, request_view,
};
pub use snapshot::{Route, Snapshot};

use crate::config::OnError;
use crate::runtime::host::HostState;
use crate::runtime::{MiddlewarePre, Registration, Runtime};
use crate::state::StateBackend;

/// One `[middleware.NAME]`, compiled, initialized and ready to instantiate per request.
pub struct LoadedMiddleware {
    /// The middleware's name from config.
    pub name: Arc<str>,
    /// The `version` label from config.
    pub version: Option<String>,
    /// sha256 of the component, hex.
    pub digest: String,
    /// What its `init` declared.
    pub registration: Registration,
    /// Pre-linked and pre-initialized.
    pub pre: MiddlewarePre<HostState>,
    /// Deadline per call.
    pub timeout: Duration,
    /// Largest linear memory, in bytes.
    pub memory_limit: u64,
    /// What a failure does to the request.
    pub on_error: OnError,
    /// Its state backend.
    pub state: Arc<dyn StateBackend>,
    /// The runtime that loaded it.
    pub runtime: Arc<Runtime>,
    /// Instances serve several requests, within these bounds; `None`: a fresh one per request.
    pub reuse: Option<Reuse>,
    /// Idle instances, when `reuse` is set.
    pub idle: IdleInstances,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether the artifact cache served it.
    pub cached: bool,
}

impl std::fmt::Debug for LoadedMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedMiddleware")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

/// Bounds on a reused instance (`reuse` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is retired.
    pub max_requests: u32,
    /// Linear memory size past which an instance is retired after its request, in bytes.
    pub max_memory: u64,
}

/// The ordered middleware of one route.
#[derive(Debug, Default)]
pub struct Chain {
    links: Vec<Arc<LoadedMiddleware>>,
}

impl Chain {
    /// A chain with no middleware: every phase continues unchanged.
    pub fn empty() -> Self {
        Chain::default()
    }

    /// The chain of `links`, in order.
    pub fn new(links: Vec<Arc<LoadedMiddleware>>) -> Self {
        Chain { links }
    }

    /// True when no middleware runs; the proxy then does no per-request chain work at all.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The middleware, in chain order.
    pub fn links(&self) -> &[Arc<LoadedMiddleware>] {
        &self.links
    }

    /// Whether any middleware reads the request headers.
    pub fn has_request_headers_phase(&self) -> bool {
        self.links.iter().any(|l| l.registration.request_headers)
    }

    /// Whether any middleware reads the response headers.
    pub fn has_response_headers_phase(&self) -> bool {
        self.links.iter().any(|l| l.registration.response_headers)
    }

    /// Whether any middleware reads the whole request body.
    pub fn has_request_body_phase(&self) -> bool {
        self.links.iter().any(|l| l.registration.request_body)
    }

    /// Whether any middleware reads the whole response body.
    pub fn has_response_body_phase(&self) -> bool {
        self.links.iter().any(|l| l.registration.response_body)
    }

    /// Whether any middleware reads a whole body: the route is then proxied with buffering.
    pub fn has_body_phase(&self) -> bool {
        self.has_request_body_phase() || self.has_response_body_phase()
    }
}
