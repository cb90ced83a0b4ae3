//! Upstreams: a pool of targets behind pingora's load balancer, and how to reach them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use pingora::lb::LoadBalancer;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Balance, UpstreamConfig};

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

/// Bound on the consistent-hash ring walk when looking for a usable target.
const MAX_SELECT_ITERATIONS: usize = 256;

/// One `[upstreams.NAME]`, ready to pick targets.
pub struct Upstream {
    /// The upstream's name from config.
    pub name: String,
    /// The same, as the `upstream` label of its metrics.
    pub metric_name: std::sync::Arc<String>,
    balancer: Balancer,
    connect_timeout: Duration,
    read_timeout: Duration,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<Consistent>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Resolves the targets (once, here) and builds the balancer.
    pub fn build(name: &str, config: &UpstreamConfig) -> Result<Upstream, ResolveError> {
        let mut addrs = BTreeSet::new();
        for (index, target) in config.targets.get_ref().iter().enumerate() {
            let target = target.get_ref();
            let resolved = (target.host.as_str(), target.port)
                .to_socket_addrs()
                .map_err(|e| ResolveError {
                    target: index,
                    reason: e.to_string(),
                })?;
            addrs.extend(resolved);
        }
        // Resolved addresses need no lookup, so building the static pool cannot fail or block.
        let resolve_failed = |e: std::io::Error| ResolveError {
            target: 0,
            reason: e.to_string(),
        };
        let balancer = match config.balance {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::try_from_iter(&addrs).map_err(resolve_failed)?),
            Balance::Random => Balancer::Random(LoadBalancer::try_from_iter(&addrs).map_err(resolve_failed)?),
            Balance::Hash => Balancer::Hash(LoadBalancer::try_from_iter(&addrs).map_err(resolve_failed)?),
        };
        Ok(Upstream {
            name: name.to_owned(),
            metric_name: std::sync::Arc::new(name.to_owned()),
            balancer,
            connect_timeout: config.connect_timeout.0,
            read_timeout: config.read_timeout.0,
        })
    }

    /// Picks a target for a request from `client` and describes how to reach it.
    ///
    /// `None` when the upstream has no usable target.
    pub fn peer(&self, client: Option<IpAddr>) -> Option<HttpPeer> {
        let key = match client {
            Some(IpAddr::V4(ip)) => ip.octets().to_vec(),
            Some(IpAddr::V6(ip)) => ip.octets().to_vec(),
            None => Vec::new(),
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select(&key, MAX_SELECT_ITERATIONS),
            Balancer::Random(lb) => lb.select(&key, MAX_SELECT_ITERATIONS),
            Balancer::Hash(lb) => lb.select(&key, MAX_SELECT_ITERATIONS),
        }?;
        let addr: SocketAddr = *backend.addr.as_inet()?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        Some(peer)
    }

    /// The read timeout, for error messages.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }
}
