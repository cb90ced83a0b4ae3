//! A route's middleware chain and the per-request run of it; the loaded middleware versions it
//! runs. What is live as a whole is [`crate::live::Snapshot`].
//!
//! A [`LoadedMiddleware`] is one `[middleware.NAME]` compiled and initialized at load. A [`Chain`]
//! is a route's list of them. A [`ChainRun`] is one request's pass through a chain: it holds the
//! request's fresh instances (one per middleware with `instances = "fresh"`, created on first use,
//! serving every phase of that request; a reused instance is held for one call only) and the
//! chain context.

mod http;
mod run;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use http::{Handled, handle};
pub use run::{CallRecord, ChainRun, Failure, FailureKind, IdleInstances, Message, Quarantine, RequestFacts, Verdict};

use crate::config::OnError;
use crate::runtime::host::{HostState, Outbound};
use crate::runtime::{HttpWorld, LinkPre, Phase, Registration, Runtime, Start};
use crate::state::State;

/// One version of a `[middleware.NAME]`, compiled, initialized and ready to instantiate per
/// request. Its parts live for different spans: the [`Artifact`] for as long as anything runs that
/// component with that config, the [`Policy`] until the config's settings change, the
/// [`Provenance`] is a record, and the idle instances and counters belong to this version alone.
pub struct LoadedMiddleware {
    /// The middleware's name from config.
    pub name: Arc<str>,
    /// What was compiled and initialized.
    pub artifact: Artifact,
    /// How its calls are bounded, from config.
    pub policy: Policy,
    /// Where it came from and how it was loaded.
    pub provenance: Provenance,
    /// Its state backend.
    pub state: Arc<State>,
    /// The runtime that loaded it.
    pub runtime: Arc<Runtime>,
    /// Idle instances, when `policy.reuse` is set.
    pub idle: IdleInstances,
    /// Calls counted by phase and outcome, labelled with this version.
    pub calls: crate::metrics::CallCounters,
    /// Its run of failed calls; past a few, its calls take turns.
    pub quarantine: Quarantine,
}

/// A component as compiled and initialized with one config.
#[derive(Clone)]
pub struct Artifact {
    /// sha256 of the component, hex.
    pub digest: String,
    /// The `config` given to `init`, as JSON (with `-file` and `-env` keys resolved).
    pub config_json: String,
    /// What its `init` declared.
    pub registration: Registration,
    /// Pre-linked (and, from a snapshot, pre-initialized), as the kind of link it is.
    pub pre: LinkPre,
    /// Whether an instance starts from a snapshot or runs `init(config_json)` when created.
    pub start: Start,
    /// The compiled code `pre` instantiates: held here so that middleware of one component
    /// share one image ([`Runtime`] keeps it only while someone holds it).
    pub code: Arc<wasmtime::component::Component>,
    /// The linear memory an instance starts serving with, in bytes.
    pub initial_memory: u64,
    /// The component's bytes, kept to load it again with another config (an uploaded component
    /// survives reloads) and to roll back to.
    pub component: bytes::Bytes,
}

/// How one middleware's calls are bounded and what a failure does: built once from its config,
/// so that "unchanged on reload" is one comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Deadline per call.
    pub timeout: Duration,
    /// Largest linear memory, in bytes.
    pub memory_limit: u64,
    /// What a failure does to the request.
    pub on_error: OnError,
    /// Instances serve several requests, within these bounds; `None`: a fresh one per request.
    pub reuse: Option<Reuse>,
    /// What it may reach with outbound HTTP; `None`: nothing.
    pub outbound: Option<Arc<Outbound>>,
}

/// Where a loaded version came from and how loading it went.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The `version` label from config.
    pub version: Option<String>,
    /// sha256 of the component the config names (differs from `artifact.digest` for an upload).
    pub configured: String,
    /// Where the component came from.
    pub source: Source,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether the artifact cache served it.
    pub cached: bool,
    /// How long loading it took.
    pub load_time: Duration,
    /// For a component pulled from a registry: `oci://HOST/REPOSITORY@sha256:…`, the manifest
    /// digest its reference resolved to.
    pub resolved: Option<String>,
    /// The public key file its signature was checked with, if one was required.
    pub verified_with: Option<std::path::PathBuf>,
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
    /// A version of middleware `name` from its parts, with no idle instance and its own counters.
    pub fn new(
        name: Arc<str>,
        artifact: Artifact,
        policy: Policy,
        provenance: Provenance,
        state: Arc<State>,
        runtime: Arc<Runtime>,
    ) -> Self {
        let label = version_label(provenance.version.as_deref(), &artifact.digest);
        // Successors are made ahead for instances that run `init` when created.
        let ahead = artifact.start == Start::Init && matches!(artifact.pre, LinkPre::Sluice(_));
        LoadedMiddleware {
            calls: crate::metrics::CallCounters::new(&name, &label, &artifact.registration),
            name,
            artifact,
            policy,
            provenance,
            idle: IdleInstances::new(runtime.idle_slots(), ahead),
            quarantine: Quarantine::default(),
            state,
            runtime,
        }
    }

    /// The version label metrics and logs use: `version` from config, else the digest's start.
    pub fn version_label(&self) -> String {
        version_label(self.provenance.version.as_deref(), &self.artifact.digest)
    }

    /// The state of a new instance's store: its state backend, memory limit and outbound HTTP.
    pub(crate) fn host(&self) -> HostState {
        HostState::new(
            self.name.clone(),
            self.state.clone(),
            self.policy.memory_limit as usize,
            self.policy.outbound.clone(),
        )
    }

    /// What `init` declared.
    pub fn registration(&self) -> &Registration {
        &self.artifact.registration
    }

    /// This version put back in place of the one the config names (`serving`'s `configured`
    /// and `resolved`): the same compiled component, config and policy, labelled as a rollback
    /// so that reloads keep it while the config names the same component. Nothing is compiled.
    pub fn restored(&self, serving: &Provenance) -> LoadedMiddleware {
        let provenance = Provenance {
            configured: serving.configured.clone(),
            resolved: serving.resolved.clone(),
            source: Source::Rollback,
            ..self.provenance.clone()
        };
        LoadedMiddleware::new(
            self.name.clone(),
            self.artifact.clone(),
            self.policy.clone(),
            provenance,
            self.state.clone(),
            self.runtime.clone(),
        )
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
            .field("digest", &self.artifact.digest)
            .field("registration", &self.artifact.registration)
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

impl Reuse {
    /// Requests after which an instance asks for its successor, made off the request path before
    /// it retires: a tenth of `max-requests` ahead, at least one request. `None` with
    /// `max-requests = 1`: each request then creates its instance, as asked.
    pub fn successor_due(&self) -> Option<u32> {
        let lead = (self.max_requests / 10).max(1);
        self.max_requests.checked_sub(lead).filter(|due| *due > 0)
    }
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
    pub fn pick(&self) -> &Arc<LoadedMiddleware> {
        match &self.canary {
            Some(canary) if fastrand::u8(0..100) < canary.weight => &canary.version,
            _ => &self.primary,
        }
    }

    /// The standard `wasi:http` world it runs, if it is such a link rather than a
    /// `sluice:middleware` one (a canary is the same kind: see `live`).
    pub fn http_world(&self) -> Option<HttpWorld> {
        self.primary.artifact.pre.http_world()
    }

    /// Whether either version declares `phase`.
    fn declares(&self, phase: Phase) -> bool {
        self.primary.registration().declares(phase)
            || self
                .canary
                .as_ref()
                .is_some_and(|c| c.version.registration().declares(phase))
    }
}

/// The ordered middleware of one route.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    links: Vec<Deployment>,
    /// The chain cut at its standard `wasi:http` links, when it has any (else empty).
    segments: Arc<[Segment]>,
}

/// A stretch of a chain: `sluice:middleware` links, then a standard `wasi:http` link (whose next
/// hop is the next segment) or, for the last one, the upstream.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The `sluice:middleware` links, in order: their request phases run before `link` (or the
    /// upstream), their response phases after it, in reverse.
    pub phases: Chain,
    /// The `wasi:http` link the segment ends with; `None`: the upstream.
    pub link: Option<Deployment>,
}

impl Chain {
    /// A chain with no middleware: every phase continues unchanged.
    pub fn empty() -> Self {
        Chain::default()
    }

    /// The chain of `links` (one version each, no canary), in order.
    pub fn new(links: Vec<Arc<LoadedMiddleware>>) -> Self {
        Chain::of(links.into_iter().map(Deployment::single).collect())
    }

    /// The chain of `links`, in order.
    pub fn of(links: Vec<Deployment>) -> Self {
        let segments = match links.iter().any(|l| l.http_world().is_some()) {
            false => Arc::from([]),
            true => {
                let mut segments = Vec::new();
                let mut phases = Vec::new();
                for link in &links {
                    match link.http_world() {
                        None => phases.push(link.clone()),
                        Some(_) => segments.push(Segment {
                            phases: Chain::of(std::mem::take(&mut phases)),
                            link: Some(link.clone()),
                        }),
                    }
                }
                segments.push(Segment {
                    phases: Chain::of(phases),
                    link: None,
                });
                Arc::from(segments)
            }
        };
        Chain { links, segments }
    }

    /// True when no middleware runs; the proxy then does no per-request chain work at all.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The middleware, in chain order.
    pub fn links(&self) -> &[Deployment] {
        &self.links
    }

    /// Whether any middleware declares `phase`.
    pub fn declares(&self, phase: Phase) -> bool {
        self.links.iter().any(|l| l.declares(phase))
    }

    /// Whether any middleware reads a whole body: the route is then proxied with buffering.
    pub fn has_body_phase(&self) -> bool {
        self.declares(Phase::RequestBody) || self.declares(Phase::ResponseBody)
    }

    /// The chain cut at its standard `wasi:http` links; empty when it has none. A route whose chain
    /// has one is proxied by sluice itself, one segment inside the other
    /// (`proxy::nested`).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

#[cfg(test)]
mod tests {
    use super::Reuse;

    #[test]
    fn a_successor_is_asked_for_a_tenth_of_max_requests_ahead_and_never_with_one() {
        let due = |max_requests| {
            Reuse {
                max_requests,
                max_memory: u64::MAX,
            }
            .successor_due()
        };
        assert_eq!(due(1), None, "an instance per request: each request creates it");
        assert_eq!(due(2), Some(1));
        assert_eq!(due(3), Some(2));
        assert_eq!(due(25), Some(23));
        assert_eq!(due(1000), Some(900));
    }
}
