//! The Snapshot: routes, upstreams and chains built from one config, swapped in as one value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::chain::Chain;
use crate::config::Config;
use crate::error::Error;
use crate::proxy::router::Router;
use crate::proxy::upstream::Upstream;

/// Everything a request needs, built at load and never changed after.
///
/// A request takes the live snapshot once (`ArcSwap::load_full`) and keeps it to its end.
#[derive(Debug)]
pub struct Snapshot {
    /// Picks a route for a request.
    pub router: Router,
    /// The routes, indexed by what the router returns.
    pub routes: Vec<Route>,
    /// When this snapshot was built.
    pub loaded_at: SystemTime,
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The route's name from config.
    pub name: String,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// The middleware its requests run through.
    pub chain: Chain,
    /// Largest body a body phase will buffer.
    pub max_body: u64,
}

impl Snapshot {
    /// Builds a snapshot from a validated config: resolves targets, builds the balancers and the
    /// route table. Nothing here runs per request.
    pub fn build(config: &Config) -> Result<Snapshot, Error> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, up)| Ok((name.as_str(), Arc::new(Upstream::build(name, up)?))))
            .collect::<Result<BTreeMap<_, _>, Error>>()?;

        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            if let Some(first) = route.middleware.first() {
                return Err(Error::MiddlewareUnsupported {
                    route: route.name.get_ref().clone(),
                    middleware: first.get_ref().clone(),
                });
            }
            routes.push(Route {
                name: route.name.get_ref().clone(),
                upstream: upstreams[route.upstream.get_ref().as_str()].clone(),
                chain: Chain::empty(),
                max_body: route.max_body.0,
            });
        }

        Ok(Snapshot {
            router: Router::build(&config.routes),
            routes,
            loaded_at: SystemTime::now(),
        })
    }
}
