//! Target health: which of an upstream's targets take requests.
//!
//! - **Active** (`health-check = { path, interval, timeout, healthy, unhealthy }`): pingora's HTTP
//!   health check `GET`s `path` on every target each `interval`, on the control thread (never a
//!   proxy worker). `unhealthy` failures in a row take a target out of rotation; `healthy` passes
//!   bring it back. A 2xx or 3xx answer within `timeout` passes.
//! - **Passive** (`passive-health = { failures, eject-for }`): `failures` failed connections in a
//!   row, seen by requests, eject a target for `eject-for`; the first request after that tries it
//!   again.
//!
//! A request goes to a target that is in rotation both ways; when every healthy target is
//! passively ejected, they are tried anyway (a connection attempt beats a certain 503). The
//! whole [`TargetHealth`] of an upstream is kept across reloads that change neither its targets
//! nor its checks, so a reload does not forget a dead target.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::{Backend, HealthRegistry};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{HealthCheckConfig, PassiveHealthConfig};

/// What a [`TargetHealth`] was built for; a reload with the same identity keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Every target's address and the host it was written with.
    pub targets: Vec<(SocketAddr, String)>,
    /// The active checks.
    pub check: Option<HealthCheckConfig>,
    /// The passive ejection settings.
    pub passive: PassiveHealthConfig,
    /// How checks speak TLS: SNI name, CA certificates (PEM), verify.
    pub tls: Option<(Option<String>, Option<Vec<u8>>, bool)>,
}

/// How the active checks reach targets over TLS.
pub struct CheckTls {
    /// The name to send and verify; `None`: each target's host.
    pub sni: Option<String>,
    /// CA certificates; `None`: the system's roots.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Verify the chain and the name.
    pub verify: bool,
}

/// The health of one upstream's targets.
pub struct TargetHealth {
    upstream: String,
    identity: Identity,
    /// Active health, shared with every load balancer built on it (pingora reads it in
    /// `select`). Without `health-check` it holds no check and every target stays healthy.
    registry: Arc<HealthRegistry>,
    /// Time between active check passes; `None`: no active checks.
    interval: Option<Duration>,
    /// Whether the control thread runs this one's active checks.
    checking: AtomicBool,
    passive: PassiveHealthConfig,
    targets: BTreeMap<SocketAddr, Passive>,
}

/// One target's passive health.
#[derive(Default)]
struct Passive {
    /// Failed connections in a row.
    failures: AtomicU32,
    /// Milliseconds since [`EPOCH`] until which the target is ejected; 0: it is not.
    ejected_until: AtomicU64,
}

/// The clock passive ejections are measured on.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl std::fmt::Debug for TargetHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetHealth")
            .field("upstream", &self.upstream)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TargetHealth {
    /// The health of `upstream`'s targets: the `previous` one when it was built for the same
    /// `identity`, else a new one (every target healthy) whose active checks speak `tls`.
    pub fn new_or_kept(
        upstream: &str,
        identity: Identity,
        tls: Option<&CheckTls>,
        previous: Option<&Arc<TargetHealth>>,
    ) -> Arc<TargetHealth> {
        if let Some(previous) = previous.filter(|p| p.identity == identity) {
            return previous.clone();
        }
        let registry = Arc::new(HealthRegistry::new());
        let interval = identity.check.as_ref().map(|check| {
            registry.set_health_check(Box::new(Probe::new(upstream, &identity.targets, check, tls)));
            check.interval.get_ref().0
        });
        let targets = identity
            .targets
            .iter()
            .map(|(addr, _)| (*addr, Passive::default()))
            .collect();
        Arc::new(TargetHealth {
            upstream: upstream.to_owned(),
            passive: identity.passive,
            identity,
            registry,
            interval,
            checking: AtomicBool::new(false),
            targets,
        })
    }

    /// The registry load balancers share for active health.
    pub fn registry(&self) -> &Arc<HealthRegistry> {
        &self.registry
    }

    /// Starts the active checks on the current (control plane) runtime, once; they stop when
    /// no snapshot uses this health any more.
    pub fn start_checks(self: &Arc<Self>) {
        let Some(interval) = self.interval else {
            return;
        };
        if self.checking.swap(true, Relaxed) {
            return;
        }
        let health = Arc::downgrade(self);
        tokio::spawn(run_checks(health, interval));
    }

    /// Whether passive health lets `target` take a request (an ejection that has run out ends
    /// here, logged).
    pub fn in_rotation(&self, target: SocketAddr) -> bool {
        let Some(passive) = self.targets.get(&target) else {
            return true;
        };
        let until = passive.ejected_until.load(Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        if passive
            .ejected_until
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            tracing::info!(upstream = %self.upstream, %target, "target back in rotation after its passive ejection");
        }
        true
    }

    /// A request connected to `target`: its run of failures ends.
    pub fn connected(&self, target: SocketAddr) {
        if let Some(passive) = self.targets.get(&target)
            && passive.failures.load(Relaxed) != 0
        {
            passive.failures.store(0, Relaxed);
        }
    }

    /// A request failed to connect to `target`: after `failures` in a row it is ejected.
    pub fn connect_failed(&self, target: SocketAddr) {
        let Some(passive) = self.targets.get(&target) else {
            return;
        };
        if self.passive.failures == 0 {
            return;
        }
        if passive.failures.fetch_add(1, Relaxed) + 1 >= self.passive.failures {
            passive.failures.store(0, Relaxed);
            let eject_for = self.passive.eject_for.0;
            passive
                .ejected_until
                .store(now_ms() + eject_for.as_millis().max(1) as u64, Relaxed);
            tracing::warn!(
                upstream = %self.upstream,
                %target,
                failures = self.passive.failures,
                eject_for = %humantime::format_duration(eject_for),
                "target ejected: connections to it failed"
            );
        }
    }
}

/// Runs `health`'s active checks every `interval` (the first pass at once) until it is dropped.
async fn run_checks(health: Weak<TargetHealth>, interval: Duration) {
    loop {
        let Some(health) = health.upgrade() else {
            return;
        };
        health.registry.run_health_check(true).await;
        drop(health);
        tokio::time::sleep(interval).await;
    }
}

/// The active check of one upstream: pingora's HTTP check per target (each with its own `Host`
/// and SNI name), bounded as a whole by `timeout`.
struct Probe {
    upstream: String,
    checks: BTreeMap<SocketAddr, HttpHealthCheck>,
    timeout: Duration,
    healthy: usize,
    unhealthy: usize,
}

impl Probe {
    fn new(
        upstream: &str,
        targets: &[(SocketAddr, String)],
        config: &HealthCheckConfig,
        tls: Option<&CheckTls>,
    ) -> Probe {
        let timeout = config.timeout.get_ref().0;
        let checks = targets
            .iter()
            .map(|(addr, host)| {
                let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_else(|| host.clone());
                let host_header = config.host.clone().unwrap_or_else(|| sni.clone());
                let mut check = HttpHealthCheck::new(&host_header, tls.is_some());
                let mut req = RequestHeader::build("GET", config.path.get_ref().as_bytes(), None)
                    .expect("a validated path is a valid request target");
                let _ = req.insert_header("host", &host_header);
                let _ = req.insert_header("user-agent", "sluice-health-check");
                check.req = req;
                let mut peer = HttpPeer::new(*addr, tls.is_some(), if tls.is_some() { sni } else { String::new() });
                if let Some(tls) = tls {
                    peer.options.verify_cert = tls.verify;
                    peer.options.verify_hostname = tls.verify;
                    peer.options.ca = tls.ca.clone();
                }
                peer.options.connection_timeout = Some(timeout);
                peer.options.total_connection_timeout = Some(timeout);
                peer.options.read_timeout = Some(timeout);
                peer.options.write_timeout = Some(timeout);
                check.peer_template = peer;
                check.validator = Some(Box::new(|resp| match resp.status.as_u16() {
                    200..=399 => Ok(()),
                    status => pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("health check status", status),
                        format!("answered {status}"),
                    ),
                }));
                (*addr, check)
            })
            .collect();
        Probe {
            upstream: upstream.to_owned(),
            checks,
            timeout,
            healthy: *config.healthy.get_ref() as usize,
            unhealthy: *config.unhealthy.get_ref() as usize,
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let check = target
            .addr
            .as_inet()
            .and_then(|addr| self.checks.get(addr))
            .ok_or_else(|| pingora::Error::explain(pingora::ErrorType::InternalError, "target not checked"))?;
        match tokio::time::timeout(self.timeout, check.check(target)).await {
            Ok(result) => result,
            Err(_) => pingora::Error::e_explain(
                pingora::ErrorType::ReadTimedout,
                format!("no whole answer within {}", humantime::format_duration(self.timeout)),
            ),
        }
    }

    /// How pingora's log line names a target whose health flipped ("... becomes unhealthy, why").
    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream `{}` target {}", self.upstream, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success { self.healthy } else { self.unhealthy }
    }
}
