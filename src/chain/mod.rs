//! A route's middleware chain and the per-request run of it; the loaded middleware versions it
//! runs. What is live as a whole is [`crate::live::Snapshot`].
//!
//! A [`LoadedMiddleware`] is one `[middleware.NAME]` compiled and initialized at load. A [`Chain`]
//! is a route's list of them. A [`ChainRun`] is one request's pass through a chain: it holds the
//! request's instances (one per middleware, created on first use, serving every phase of that
//! request) and the chain context.

mod run;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use run::{
    BodyOutcome, CallRecord, ChainRun, Failure, FailureKind, IdleInstances, RequestOutcome, ResponseOutcome,
    request_view,
};

use crate::config::OnError;
use crate::runtime::host::HostState;
use crate::runtime::host::Outbound;
use crate::runtime::{MiddlewarePre, Registration, Runtime};
use crate::state::State;

/// One `[middleware.NAME]`, compiled, initialized and ready to instantiate per request.
pub struct LoadedMiddleware {
    /// The middleware's name from config.
    pub name: Arc<str>,
    /// The `version` label from config.
    pub version: Option<String>,
    /// sha256 of the component, hex.
    pub digest: String,
    /// sha256 of the component the config names (differs from `digest` for an upload).
    pub configured: String,
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
    pub state: Arc<State>,
    /// What it may reach with outbound HTTP; `None`: nothing.
    pub outbound: Option<Arc<Outbound>>,
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
    /// How long loading it took.
    pub load_time: Duration,
    /// The component's bytes, kept to load it again with another config (an uploaded component
    /// survives reloads) and to roll back to.
    pub component: bytes::Bytes,
    /// Where the component came from.
    pub source: Source,
    /// The `config` given to `init`, as JSON (with `-file` and `-env` keys resolved).
    pub config_json: String,
    /// Calls counted by phase and outcome, labelled with this version.
    pub calls: crate::metrics::CallCounters,
}

/// Where a loaded component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `component` (or `canary.component`) the config names.
    Config,
    /// Uploaded with `PUT /admin/middleware/NAME/component`.
    Upload,
    /// Put back by `POST /admin/middleware/NAME/rollback`.
    Rollback,
}

impl Source {
    /// The name the admin API shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Upload => "upload",
            Source::Rollback => "rollback",
        }
    }
}

impl LoadedMiddleware {
    /// The version label metrics and logs use: `version` from config, else the digest's start.
    pub fn version_label(&self) -> String {
        version_label(self.version.as_deref(), &self.digest)
    }

    /// This version put back in place of the one the config names (whose digest is
    /// `configured`): the same compiled component, config and counters, labelled as a rollback so
    /// that reloads keep it while the config names the same component. Nothing is compiled.
    pub fn restored(&self, configured: String) -> LoadedMiddleware {
        LoadedMiddleware {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            configured,
            registration: self.registration.clone(),
            pre: self.pre.clone(),
            timeout: self.timeout,
            memory_limit: self.memory_limit,
            on_error: self.on_error,
            state: self.state.clone(),
            outbound: self.outbound.clone(),
            runtime: self.runtime.clone(),
            reuse: self.reuse,
            idle: IdleInstances::default(),
            loaded_at: self.loaded_at,
            cached: self.cached,
            load_time: self.load_time,
            component: self.component.clone(),
            source: Source::Rollback,
            config_json: self.config_json.clone(),
            calls: crate::metrics::CallCounters::new(&self.name, &self.version_label(), &self.registration),
        }
    }
}

/// `version` if given, else `sha256:` and the digest's first 12 hex digits.
pub fn version_label(version: Option<&str>, digest: &str) -> String {
    version.map_or_else(|| format!("sha256:{}", &digest[..12.min(digest.len())]), str::to_owned)
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

/// A middleware as it serves requests: its primary version and, optionally, a canary version that
/// takes `weight` percent of requests.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The version most requests run.
    pub primary: Arc<LoadedMiddleware>,
    /// The canary version, if any.
    pub canary: Option<Canary>,
}

/// A canary version and its share of requests.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The canary version.
    pub version: Arc<LoadedMiddleware>,
    /// Percent of requests (0–100) that run it.
    pub weight: u8,
}

impl Deployment {
    /// A deployment of one version, without a canary.
    pub fn single(primary: Arc<LoadedMiddleware>) -> Self {
        Deployment { primary, canary: None }
    }

    /// The version one request runs: the canary for `weight` percent of requests.
    fn pick(&self) -> (&Arc<LoadedMiddleware>, bool) {
        match &self.canary {
            Some(canary) if fastrand::u8(0..100) < canary.weight => (&canary.version, true),
            _ => (&self.primary, false),
        }
    }

    fn any(&self, phase: impl Fn(&Registration) -> bool) -> bool {
        phase(&self.primary.registration) || self.canary.as_ref().is_some_and(|c| phase(&c.version.registration))
    }
}

/// The ordered middleware of one route.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    links: Vec<Deployment>,
}

impl Chain {
    /// A chain with no middleware: every phase continues unchanged.
    pub fn empty() -> Self {
        Chain::default()
    }

    /// The chain of `links` (one version each, no canary), in order.
    pub fn new(links: Vec<Arc<LoadedMiddleware>>) -> Self {
        Chain {
            links: links.into_iter().map(Deployment::single).collect(),
        }
    }

    /// The chain of `links`, in order.
    pub fn of(links: Vec<Deployment>) -> Self {
        Chain { links }
    }

    /// True when no middleware runs; the proxy then does no per-request chain work at all.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The middleware, in chain order.
    pub fn links(&self) -> &[Deployment] {
        &self.links
    }

    /// Whether any middleware reads the request headers.
    pub fn has_request_headers_phase(&self) -> bool {
        self.links.iter().any(|l| l.any(|r| r.request_headers))
    }

    /// Whether any middleware reads the response headers.
    pub fn has_response_headers_phase(&self) -> bool {
        self.links.iter().any(|l| l.any(|r| r.response_headers))
    }

    /// Whether any middleware reads the whole request body.
    pub fn has_request_body_phase(&self) -> bool {
        self.links.iter().any(|l| l.any(|r| r.request_body))
    }

    /// Whether any middleware reads the whole response body.
    pub fn has_response_body_phase(&self) -> bool {
        self.links.iter().any(|l| l.any(|r| r.response_body))
    }

    /// Whether any middleware reads a whole body: the route is then proxied with buffering.
    pub fn has_body_phase(&self) -> bool {
        self.has_request_body_phase() || self.has_response_body_phase()
    }
}
