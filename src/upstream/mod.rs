//! Upstreams: a pool of targets behind pingora's load balancer, and how to reach them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, HealthRegistry, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;

pub mod health;

use crate::config::{Balance, UpstreamConfig};
use health::{CheckTls, Identity, TargetHealth};

/// A target that could not be resolved: its index in `targets` and why.
#[derive(Debug)]
pub struct ResolveError {
    /// Index into the upstream's `targets`.
    pub target: usize,
    /// What the resolver said.
    pub reason: String,
}

/// How long an idle pooled connection to a target is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `response-head-timeout` when unset (or `read-timeout`, when that is longer).
const DEFAULT_RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on the consistent-hash ring walk when looking for a usable target.
const MAX_SELECT_ITERATIONS: usize = 256;

/// One `[upstreams.NAME]`, ready to pick targets.
pub struct Upstream {
    /// The upstream's name from config.
    pub name: String,
    /// The same, as the `upstream` label of its metrics.
    pub metric_name: Arc<String>,
    balancer: Balancer,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Deadline for the whole response head, from the request's last byte.
    pub response_head_timeout: Duration,
    /// Each target's host as written in the config (the default SNI name).
    hosts: BTreeMap<SocketAddr, String>,
    /// How to speak TLS to the targets, when `tls = true`.
    tls: Option<UpstreamTls>,
    /// Connect-failure retries of an idempotent request, each on another target.
    pub retries: u32,
    /// Which targets are in rotation (kept across reloads that keep the targets and checks).
    pub health: Arc<TargetHealth>,
}

/// `[upstreams.NAME] tls = true, sni, ca-file, verify`.
pub struct UpstreamTls {
    /// The name to send and verify; `None`: each target's host.
    pub sni: Option<String>,
    /// CA certificates to verify with; `None`: the system's roots.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The CA file's content, to tell whether a reload changed it.
    pub ca_pem: Option<Vec<u8>>,
    /// Verify the certificate chain and the name.
    pub verify: bool,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<Consistent>),
}

impl Balancer {
    /// The first target the policy yields that `accept` takes (given whether active health
    /// checks have it in rotation).
    fn select(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Hash(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Hash(lb) => lb.backends(),
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A load balancer over `backends` whose health lives in `registry`, with its selector built.
async fn balancer<S>(backends: &BTreeSet<Backend>, registry: &Arc<HealthRegistry>) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let view = Backends::new_with_health_registry(Static::new(backends.clone()), registry.clone());
    let lb = LoadBalancer::from_backends(view);
    // Static discovery neither blocks nor fails.
    let _ = lb.update().await;
    lb
}

impl Upstream {
    /// Resolves the targets (once, here) and builds the balancer on the target health of
    /// `previous` (the live snapshot's upstream of this name) when it was built for the same
    /// targets and checks.
    pub async fn build(
        name: &str,
        config: &UpstreamConfig,
        tls: Option<UpstreamTls>,
        previous: Option<&Upstream>,
    ) -> Result<Upstream, ResolveError> {
        let mut hosts = BTreeMap::new();
        for (index, target) in config.targets.get_ref().iter().enumerate() {
            let target = target.get_ref();
            let resolved = (target.host.as_str(), target.port)
                .to_socket_addrs()
                .map_err(|e| ResolveError {
                    target: index,
                    reason: e.to_string(),
                })?;
            for addr in resolved {
                hosts.entry(addr).or_insert_with(|| target.host.clone());
            }
        }
        let identity = Identity {
            targets: hosts.iter().map(|(addr, host)| (*addr, host.clone())).collect(),
            check: config.health_check.as_ref().map(|c| c.get_ref().clone()),
            passive: config.passive_health,
            tls: tls.as_ref().map(|t| (t.sni.clone(), t.ca_pem.clone(), t.verify)),
        };
        let check_tls = tls.as_ref().map(|t| CheckTls {
            sni: t.sni.clone(),
            ca: t.ca.clone(),
            verify: t.verify,
        });
        let health = TargetHealth::new_or_kept(name, identity, check_tls.as_ref(), previous.map(|p| &p.health));
        let backends: BTreeSet<Backend> = hosts
            .keys()
            .map(|addr| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*addr),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        let registry = health.registry();
        let balancer = match config.balance {
            Balance::RoundRobin => Balancer::RoundRobin(balancer(&backends, registry).await),
            Balance::Random => Balancer::Random(balancer(&backends, registry).await),
            Balance::Hash => Balancer::Hash(balancer(&backends, registry).await),
        };
        Ok(Upstream {
            name: name.to_owned(),
            metric_name: Arc::new(name.to_owned()),
            balancer,
            connect_timeout: config.connect_timeout.0,
            read_timeout: config.read_timeout.0,
            response_head_timeout: config
                .response_head_timeout
                .map_or(DEFAULT_RESPONSE_HEAD_TIMEOUT.max(config.read_timeout.0), |t| t.0),
            hosts,
            tls,
            retries: config.retries,
            health,
        })
    }

    /// Picks a target for a request from `client`, other than those in `tried` (that failed it),
    /// and describes how to reach it.
    ///
    /// A target must pass its active health checks and not be passively ejected; when every
    /// healthy target is ejected, an ejected one is tried rather than none. `None` when no
    /// healthy target is left.
    pub fn peer(&self, client: Option<IpAddr>, tried: &[SocketAddr]) -> Option<HttpPeer> {
        // The hash balancer's key: the client's address bytes, on the stack.
        let mut bytes = [0u8; 16];
        let key: &[u8] = match client {
            Some(IpAddr::V4(ip)) => {
                bytes[..4].copy_from_slice(&ip.octets());
                &bytes[..4]
            }
            Some(IpAddr::V6(ip)) => {
                bytes = ip.octets();
                &bytes
            }
            None => &[],
        };
        let untried = |backend: &Backend| backend.addr.as_inet().is_some_and(|addr| !tried.contains(addr));
        let backend = self
            .balancer
            .select(key, |backend, healthy| {
                healthy && untried(backend) && backend.addr.as_inet().is_some_and(|a| self.health.in_rotation(*a))
            })
            .or_else(|| {
                self.balancer
                    .select(key, |backend, healthy| healthy && untried(backend))
            })?;
        let addr: SocketAddr = *backend.addr.as_inet()?;
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                let sni = tls
                    .sni
                    .clone()
                    .or_else(|| self.hosts.get(&addr).cloned())
                    .unwrap_or_else(|| addr.ip().to_string());
                let mut peer = HttpPeer::new(addr, true, sni);
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = tls.ca.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Some(peer)
    }

    /// Every target and whether it is in rotation now (active and passive health).
    pub fn targets_in_rotation(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|backend| {
                let addr = *backend.addr.as_inet()?;
                Some((addr, backends.ready(backend) && self.health.in_rotation(addr)))
            })
            .collect()
    }

    /// The read timeout, for error messages.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }
}
