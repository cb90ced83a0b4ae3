//! Prometheus metrics, served as text on the admin listener's `/metrics` (docs/metrics.md).
//!
//! Counters a request touches are resolved when a middleware is loaded ([`CallCounters`]), so the
//! request path only increments an atomic; label sets are built at load, never per request.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::Registration;

/// Every metric sluice exports.
pub struct Metrics {
    registry: Registry,
    /// `sluice_reloads_total{trigger, result}`
    pub reloads: Family<ReloadLabels, Counter>,
    /// `sluice_middleware_calls_total{middleware, version, phase, outcome}`
    pub calls: Family<CallLabels, Counter>,
    /// `sluice_middleware_failures_total{middleware, version, kind, on_error}`
    pub failures: Family<FailureLabels, Counter>,
    /// `sluice_middleware_version_info{middleware, version, digest, role}`: 1 per live version.
    pub versions: Family<VersionLabels, Gauge>,
}

/// Labels of `sluice_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `file`, `sighup`, `admin`, `upload`, `rollback`.
    pub trigger: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of `sluice_middleware_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label (config `version`, else `sha256:` and the digest's start).
    pub version: String,
    /// `request-headers`, `request-body`, `response-headers`, `response-body`.
    pub phase: String,
    /// `next` (the request goes on), `respond` (the middleware answered), `failed`.
    pub outcome: String,
}

/// Labels of `sluice_middleware_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label.
    pub version: String,
    /// `trap`, `timeout`, `memory-limit`, `instantiate`, `bad-output`.
    pub kind: String,
    /// What `on-error` did: `deny` or `allow`.
    pub on_error: String,
}

/// Labels of `sluice_middleware_version_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label.
    pub version: String,
    /// The component's sha256, hex.
    pub digest: String,
    /// `primary` or `canary`.
    pub role: String,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let reloads = Family::<ReloadLabels, Counter>::default();
    registry.register(
        "sluice_reloads",
        "Snapshot builds (config reloads, uploads, rollbacks) by trigger and result",
        reloads.clone(),
    );
    let calls = Family::<CallLabels, Counter>::default();
    registry.register(
        "sluice_middleware_calls",
        "Middleware phase calls by middleware, version, phase and outcome",
        calls.clone(),
    );
    let failures = Family::<FailureLabels, Counter>::default();
    registry.register(
        "sluice_middleware_failures",
        "Failed middleware calls (trap, timeout, memory limit, ...) and what on-error did",
        failures.clone(),
    );
    let versions = Family::<VersionLabels, Gauge>::default();
    registry.register(
        "sluice_middleware_version_info",
        "The middleware versions serving requests (1 per live version)",
        versions.clone(),
    );
    Metrics {
        registry,
        reloads,
        calls,
        failures,
        versions,
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric in the Prometheus text format.
pub fn encode() -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &METRICS.registry).expect("writing to a String");
    text
}

/// Counts a snapshot build.
pub fn count_reload(trigger: &str, ok: bool) {
    METRICS
        .reloads
        .get_or_create(&ReloadLabels {
            trigger: trigger.to_owned(),
            result: if ok { "ok" } else { "error" }.to_owned(),
        })
        .inc();
}

/// A request phase.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// `on-request-headers`
    RequestHeaders = 0,
    /// `on-request-body`
    RequestBody = 1,
    /// `on-response-headers`
    ResponseHeaders = 2,
    /// `on-response-body`
    ResponseBody = 3,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request-headers",
            Phase::RequestBody => "request-body",
            Phase::ResponseHeaders => "response-headers",
            Phase::ResponseBody => "response-body",
        }
    }

    fn registered(self, registration: &Registration) -> bool {
        match self {
            Phase::RequestHeaders => registration.request_headers,
            Phase::RequestBody => registration.request_body,
            Phase::ResponseHeaders => registration.response_headers,
            Phase::ResponseBody => registration.response_body,
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The request goes on.
    Next = 0,
    /// The middleware answered the client.
    Respond = 1,
    /// The call failed (`on-error` decided).
    Failed = 2,
}

const OUTCOMES: [&str; 3] = ["next", "respond", "failed"];

/// One middleware version's call counters, resolved at load for the phases it implements.
#[derive(Debug, Default)]
pub struct CallCounters {
    phases: [Option<[Counter; 3]>; 4],
    middleware: String,
    version: String,
}

impl CallCounters {
    /// The counters of `middleware` at `version`, for the phases `registration` declares.
    pub fn new(middleware: &str, version: &str, registration: &Registration) -> Self {
        let phases = Phase::ALL.map(|phase| {
            phase.registered(registration).then(|| {
                OUTCOMES.map(|outcome| {
                    METRICS
                        .calls
                        .get_or_create(&CallLabels {
                            middleware: middleware.to_owned(),
                            version: version.to_owned(),
                            phase: phase.as_str().to_owned(),
                            outcome: outcome.to_owned(),
                        })
                        .clone()
                })
            })
        });
        CallCounters {
            phases,
            middleware: middleware.to_owned(),
            version: version.to_owned(),
        }
    }

    /// Counts one call.
    pub fn count(&self, phase: Phase, outcome: Outcome) {
        if let Some(counters) = &self.phases[phase as usize] {
            counters[outcome as usize].inc();
        }
    }

    /// Counts a failed call by kind (rare: the label set is built here).
    pub fn failure(&self, kind: &str, on_error: &str) {
        METRICS
            .failures
            .get_or_create(&FailureLabels {
                middleware: self.middleware.clone(),
                version: self.version.clone(),
                kind: kind.to_owned(),
                on_error: on_error.to_owned(),
            })
            .inc();
    }
}
