//! The Snapshot: routes, upstreams and chains built from one config, swapped in as one value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::chain::Chain;
use crate::config::{Config, ConfigErrors};
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
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            match Upstream::build(name, up) {
                Ok(upstream) => {
                    upstreams.insert(name.as_str(), Arc::new(upstream));
                }
                Err(e) => {
                    let target = &up.targets.get_ref()[e.target];
                    errors.push(config.error_at(
                        target.span(),
                        format!("upstreams.{name}.targets[{}]", e.target),
                        format!("cannot resolve target `{}`: {}", target.get_ref(), e.reason),
                    ));
                }
            }
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        for (index, route) in config.routes.iter().enumerate() {
            if let Some(first) = route.middleware.first() {
                errors.push(config.error_at(
                    first.span(),
                    format!("route[{index}].middleware[0]"),
                    format!(
                        "route `{}` uses middleware `{}`, but this build of sluice cannot run Wasm middleware yet; \
                         remove the route's `middleware` list",
                        route.name.get_ref(),
                        first.get_ref()
                    ),
                ));
            }
            let Some(upstream) = upstreams.get(route.upstream.get_ref().as_str()) else {
                continue; // its upstream failed to load, reported above
            };
            routes.push(Route {
                name: route.name.get_ref().clone(),
                upstream: upstream.clone(),
                chain: Chain::empty(),
                max_body: route.max_body.0,
            });
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(Error::Config(ConfigErrors(errors)));
        }

        Ok(Snapshot {
            router: Router::build(&config.routes),
            routes,
            loaded_at: SystemTime::now(),
        })
    }
}
