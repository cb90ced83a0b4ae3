//! Prometheus metrics, served as text on the admin listener's `/metrics` (docs/metrics.md).
//!
//! Counters a request touches are resolved when a middleware is loaded ([`CallCounters`]), so the
//! request path only increments an atomic; label sets are built at load, never per request.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::runtime::host::HostCalls;
use crate::runtime::{Phase, Registration};

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
    /// `sluice_middleware_call_duration_seconds{middleware, version, phase}`
    pub call_duration: Family<CallTimeLabels, Histogram, fn() -> Histogram>,
    /// `sluice_middleware_host_calls_total{middleware, version, interface}`
    pub host_calls: Family<HostCallLabels, Counter>,
    /// `sluice_middleware_instances_created_total{middleware, version, path}`
    pub instances: Family<InstanceLabels, Counter>,
    /// `sluice_middleware_short_circuits_total{middleware, version, phase, status}`
    pub short_circuits: Family<ShortCircuitLabels, Counter>,
    /// `sluice_requests_total{route, method, status}`
    pub requests: Family<RequestLabels, Counter>,
    /// `sluice_request_duration_seconds{route}`
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `sluice_upstream_response_seconds{upstream}`: until the response head arrived.
    pub upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    /// `sluice_upstream_errors_total{upstream, kind}`
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `sluice_upstream_target_healthy{upstream, target}`: 1 healthy, 0 not.
    pub target_health: Family<TargetLabels, Gauge>,
    /// `sluice_access_log_dropped_total`: lines the writer could not keep up with.
    pub access_log_dropped: Counter,
    /// `sluice_requests_shed_total`: requests answered 503 at `max-in-flight`.
    pub shed: Counter,
    /// `sluice_request_head_timeouts_total`: connections answered 408 at `header-timeout`.
    pub head_timeouts: Counter,
    /// `sluice_log_lines_held_back_total`: pingora's per-connection warning and error lines not
    /// written (at most one a second goes out).
    pub log_lines_held_back: Counter,
}

/// Labels of `sluice_middleware_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallTimeLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label.
    pub version: String,
    /// The phase.
    pub phase: String,
}

/// Labels of `sluice_middleware_host_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostCallLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label.
    pub version: String,
    /// `state`, `log` or `http` (outbound requests).
    pub interface: &'static str,
}

/// Labels of `sluice_middleware_instances_created_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The middleware's name.
    pub middleware: String,
    /// Its version label.
    pub version: String,
    /// Where it was created: `load`, `ahead` (a reused instance's successor, off the request
    /// path) or `request` (on a request's path: a fresh instance, or no idle one).
    pub path: &'static str,
}

/// Labels of `sluice_middleware_short_circuits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShortCircuitLabels {
    /// The middleware's name.
    pub middleware: Arc<String>,
    /// Its version label.
    pub version: Arc<String>,
    /// The phase that answered.
    pub phase: &'static str,
    /// The status it answered with.
    pub status: u16,
}

/// Labels of `sluice_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name; `-` when no route matched.
    pub route: Arc<String>,
    /// `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`, or `other`.
    pub method: &'static str,
    /// The status sent to the client; 0 when the client went away before one was sent.
    pub status: u16,
}

/// Labels of `sluice_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: Arc<String>,
}

/// Labels of `sluice_upstream_response_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's name.
    pub upstream: Arc<String>,
}

/// Labels of `sluice_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// The upstream's name.
    pub upstream: Arc<String>,
    /// `connect` (refused or unreachable), `timeout`, `broken` (closed or malformed mid-exchange),
    /// `no-target` (none healthy).
    pub kind: &'static str,
}

/// Labels of `sluice_upstream_target_healthy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The upstream's name.
    pub upstream: String,
    /// `ip:port`.
    pub target: String,
}

/// Latency buckets: 100 µs to ~6.5 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
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
    /// `trap`, `timeout`, `memory-limit`, `instantiate`, `bad-output`, `quarantined`.
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
    let call_duration = Family::<CallTimeLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
    registry.register_with_unit(
        "sluice_middleware_call_duration",
        "Middleware phase call latency (instantiation included) by middleware, version and phase",
        prometheus_client::registry::Unit::Seconds,
        call_duration.clone(),
    );
    let host_calls = Family::<HostCallLabels, Counter>::default();
    registry.register(
        "sluice_middleware_host_calls",
        "What middleware asked of the host (state operations, log lines, outbound HTTP requests)",
        host_calls.clone(),
    );
    let instances = Family::<InstanceLabels, Counter>::default();
    registry.register(
        "sluice_middleware_instances_created",
        "Middleware instances created: at load, ahead of a reused instance's retirement, or on a request's path",
        instances.clone(),
    );
    let short_circuits = Family::<ShortCircuitLabels, Counter>::default();
    registry.register(
        "sluice_middleware_short_circuits",
        "Requests a middleware answered itself, by middleware, version, phase and status",
        short_circuits.clone(),
    );
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "sluice_requests",
        "Requests by route, method and the status sent to the client",
        requests.clone(),
    );
    let request_duration = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
    registry.register_with_unit(
        "sluice_request_duration",
        "Request latency by route, from the request head to the last byte sent",
        prometheus_client::registry::Unit::Seconds,
        request_duration.clone(),
    );
    let upstream_duration =
        Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
    registry.register_with_unit(
        "sluice_upstream_response",
        "Upstream latency: from choosing a target to the response head",
        prometheus_client::registry::Unit::Seconds,
        upstream_duration.clone(),
    );
    let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
    registry.register(
        "sluice_upstream_errors",
        "Failed upstream exchanges by upstream and kind",
        upstream_errors.clone(),
    );
    let target_health = Family::<TargetLabels, Gauge>::default();
    registry.register(
        "sluice_upstream_target_healthy",
        "Whether each upstream target is in rotation (1) or ejected (0)",
        target_health.clone(),
    );
    let access_log_dropped = Counter::default();
    registry.register(
        "sluice_access_log_dropped",
        "Access log lines dropped because the writer fell behind",
        access_log_dropped.clone(),
    );
    let shed = Counter::default();
    registry.register(
        "sluice_requests_shed",
        "Requests answered 503 with Retry-After because max-in-flight requests were being served",
        shed.clone(),
    );
    let head_timeouts = Counter::default();
    registry.register(
        "sluice_request_head_timeouts",
        "Client connections answered 408 and closed because a request head took longer than header-timeout",
        head_timeouts.clone(),
    );
    let log_lines_held_back = Counter::default();
    registry.register(
        "sluice_log_lines_held_back",
        "pingora's per-connection warning and error lines not written: at most one goes out a second",
        log_lines_held_back.clone(),
    );
    Metrics {
        registry,
        reloads,
        calls,
        failures,
        versions,
        call_duration,
        host_calls,
        instances,
        short_circuits,
        requests,
        request_duration,
        upstream_duration,
        upstream_errors,
        target_health,
        access_log_dropped,
        shed,
        head_timeouts,
        log_lines_held_back,
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

/// Where a middleware instance was created.
#[derive(Debug, Clone, Copy)]
pub enum Created {
    /// At load: the instance `init` was checked in.
    Load = 0,
    /// Off the request path, as the successor of a reused instance nearing `max-requests`.
    Ahead = 1,
    /// On a request's path: a fresh instance, or a reused one when none was idle.
    Request = 2,
}

const CREATED: [&str; 3] = ["load", "ahead", "request"];

/// One middleware version's call counters and latency histograms, resolved at load for the
/// phases it implements.
#[derive(Debug, Default)]
pub struct CallCounters {
    phases: [Option<[Counter; 3]>; Phase::ALL.len()],
    durations: [Option<Histogram>; Phase::ALL.len()],
    /// By interface: state, log, http.
    host_calls: [Counter; 3],
    /// Instances created, by [`Created`].
    created: [Counter; 3],
    middleware: Arc<String>,
    version: Arc<String>,
}

impl CallCounters {
    /// The counters of `middleware` at `version`, for the phases `registration` declares.
    pub fn new(middleware: &str, version: &str, registration: &Registration) -> Self {
        let phases = Phase::ALL.map(|phase| {
            registration.declares(phase).then(|| {
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
        let durations = Phase::ALL.map(|phase| {
            registration.declares(phase).then(|| {
                METRICS
                    .call_duration
                    .get_or_create(&CallTimeLabels {
                        middleware: middleware.to_owned(),
                        version: version.to_owned(),
                        phase: phase.as_str().to_owned(),
                    })
                    .clone()
            })
        });
        let host_calls = ["state", "log", "http"].map(|interface| {
            METRICS
                .host_calls
                .get_or_create(&HostCallLabels {
                    middleware: middleware.to_owned(),
                    version: version.to_owned(),
                    interface,
                })
                .clone()
        });
        let created = CREATED.map(|path| {
            METRICS
                .instances
                .get_or_create(&InstanceLabels {
                    middleware: middleware.to_owned(),
                    version: version.to_owned(),
                    path,
                })
                .clone()
        });
        CallCounters {
            phases,
            durations,
            host_calls,
            created,
            middleware: Arc::new(middleware.to_owned()),
            version: Arc::new(version.to_owned()),
        }
    }

    /// Counts one call that took `took`.
    pub fn count(&self, phase: Phase, outcome: Outcome, took: Duration) {
        if let Some(counters) = &self.phases[phase as usize] {
            counters[outcome as usize].inc();
        }
        if let Some(histogram) = &self.durations[phase as usize] {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// Counts what one call asked of the host.
    pub fn count_host_calls(&self, calls: HostCalls) {
        for (counter, n) in self.host_calls.iter().zip([calls.state, calls.log, calls.http]) {
            if n > 0 {
                counter.inc_by(u64::from(n));
            }
        }
    }

    /// Counts an instance created.
    pub fn count_created(&self, path: Created) {
        self.created[path as usize].inc();
    }

    /// The version label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Counts a request this middleware answered itself with `status`.
    pub fn short_circuit(&self, phase: Phase, status: u16) {
        METRICS
            .short_circuits
            .get_or_create(&ShortCircuitLabels {
                middleware: self.middleware.clone(),
                version: self.version.clone(),
                phase: phase.as_str(),
                status,
            })
            .inc();
    }

    /// Counts a failed call by kind (rare: the label set is built here).
    pub fn failure(&self, kind: &str, on_error: &str) {
        METRICS
            .failures
            .get_or_create(&FailureLabels {
                middleware: self.middleware.to_string(),
                version: self.version.to_string(),
                kind: kind.to_owned(),
                on_error: on_error.to_owned(),
            })
            .inc();
    }
}

/// The method label of `sluice_requests_total`.
pub fn method_class(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One finished request: counted by route, method and status, timed by route.
pub fn count_request(route: &Arc<String>, method: &http::Method, status: u16, took: Duration) {
    METRICS
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method_class(method),
            status,
        })
        .inc();
    METRICS
        .request_duration
        .get_or_create(&RouteLabels { route: route.clone() })
        .observe(took.as_secs_f64());
}

/// An upstream's response head arrived `took` after its target was chosen.
pub fn upstream_responded(upstream: &Arc<String>, took: Duration) {
    METRICS
        .upstream_duration
        .get_or_create(&UpstreamLabels {
            upstream: upstream.clone(),
        })
        .observe(took.as_secs_f64());
}

/// An upstream exchange failed.
pub fn upstream_failed(upstream: &Arc<String>, kind: &'static str) {
    METRICS
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            upstream: upstream.clone(),
            kind,
        })
        .inc();
}

/// Sets `sluice_upstream_target_healthy` from the live `upstreams`, at scrape time: health lives
/// with the upstreams, and reloads add and remove targets.
/// `targets` are (upstream name, target, in rotation).
pub fn observe_targets(targets: impl Iterator<Item = (String, String, bool)>) {
    METRICS.target_health.clear();
    for (upstream, target, in_rotation) in targets {
        METRICS
            .target_health
            .get_or_create(&TargetLabels { upstream, target })
            .set(i64::from(in_rotation));
    }
}
