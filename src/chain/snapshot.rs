//! The Snapshot: routes, upstreams and chains built from one config, swapped in as one value.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::chain::{Chain, IdleInstances, LoadedMiddleware, Reuse};
use crate::config::{Config, ConfigError, ConfigErrors, MiddlewareConfig, StateBackend as StateKind};
use crate::error::Error;
use crate::proxy::router::Router;
use crate::proxy::upstream::Upstream;
use crate::runtime::{LoadError, Runtime};
use crate::state::{MemoryState, StateBackend};

/// Everything a request needs, built at load and never changed after.
///
/// A request takes the live snapshot once (`ArcSwap::load_full`) and keeps it to its end.
#[derive(Debug)]
pub struct Snapshot {
    /// Picks a route for a request.
    pub router: Router,
    /// The routes, indexed by what the router returns.
    pub routes: Vec<Route>,
    /// Every `[middleware.NAME]`, loaded.
    pub middleware: BTreeMap<String, Arc<LoadedMiddleware>>,
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
    /// Builds a snapshot from a validated config: resolves targets, builds the balancers, loads
    /// every middleware (compiled and initialized, or from the artifact cache) and builds the route
    /// table. Nothing here runs per request. Every problem is reported, located in the config.
    pub async fn build(config: &Config, runtime: &Arc<Runtime>) -> Result<Snapshot, Error> {
        let mut errors = Vec::new();
        let state: Arc<dyn StateBackend> = match config.state.backend.get_ref() {
            StateKind::Memory => Arc::new(MemoryState::default()),
            StateKind::Redis => {
                errors.push(config.error_at(
                    config.state.backend.span(),
                    "state.backend",
                    "the `redis` state backend is not available in this build yet; use `memory`",
                ));
                Arc::new(MemoryState::default())
            }
        };

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

        let mut middleware = BTreeMap::new();
        for (name, mw) in &config.middleware {
            match load_middleware(config, name, mw, runtime, &state).await {
                Ok(loaded) => {
                    middleware.insert(name.clone(), Arc::new(loaded));
                }
                Err(e) => errors.push(e),
            }
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let mut links = Vec::new();
            for name in &route.middleware {
                let Some(loaded) = middleware.get(name.get_ref()) else {
                    continue;
                }; // reported above
                links.push(loaded.clone());
            }
            let Some(upstream) = upstreams.get(route.upstream.get_ref().as_str()) else {
                continue; // its upstream failed to load, reported above
            };
            routes.push(Route {
                name: route.name.get_ref().clone(),
                upstream: upstream.clone(),
                chain: Chain::new(links),
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
            middleware,
            loaded_at: SystemTime::now(),
        })
    }
}

/// Reads, compiles and initializes one middleware; problems are located at its keys.
async fn load_middleware(
    config: &Config,
    name: &str,
    mw: &MiddlewareConfig,
    runtime: &Arc<Runtime>,
    state: &Arc<dyn StateBackend>,
) -> Result<LoadedMiddleware, ConfigError> {
    let at_component =
        |message: String| config.error_at(mw.component.span(), format!("middleware.{name}.component"), message);
    if let Some(canary) = &mw.canary {
        return Err(config.error_at(
            canary.component.span(),
            format!("middleware.{name}.canary"),
            "canary versions are not available in this build yet",
        ));
    }
    if let Some(host) = mw.allow_hosts.first() {
        return Err(config.error_at(
            host.span(),
            format!("middleware.{name}.allow-hosts"),
            "outbound HTTP is not available in this build yet; remove `allow-hosts`",
        ));
    }
    let component = mw.component.get_ref();
    let bytes: Cow<'static, [u8]> = match component.strip_prefix("builtin:") {
        Some(builtin) => crate::artifacts::BUILTIN
            .iter()
            .find(|(name, _)| *name == builtin)
            .map(|(_, bytes)| Cow::Borrowed(*bytes))
            .ok_or_else(|| at_component(format!("unknown built-in middleware `{component}`")))?,
        None => {
            let path = config.base_dir().join(component);
            let bytes = std::fs::read(&path);
            Cow::Owned(bytes.map_err(|e| at_component(format!("cannot read `{}`: {e}", path.display())))?)
        }
    };
    let resolved = resolve_config(config, name, mw)?;
    let config_json = serde_json::to_string(&resolved).unwrap_or_else(|_| "{}".to_owned());

    let loaded = runtime
        .load(name, &bytes, &config_json, state.clone(), mw.memory_limit.0)
        .await
        .map_err(|e| match e {
            LoadError::InitRejected(message) => {
                let span = if mw.config.span().is_empty() {
                    mw.component.span()
                } else {
                    mw.config.span()
                };
                config.error_at(
                    span,
                    format!("middleware.{name}.config"),
                    format!("middleware `{name}` rejected its config: {message}"),
                )
            }
            other => at_component(format!("middleware `{name}`: component `{component}` {other}")),
        })?;
    tracing::info!(
        middleware = name,
        digest = &loaded.digest[..12],
        cached = loaded.cached,
        took_ms = loaded.took.as_secs_f64() * 1e3,
        "middleware loaded"
    );
    Ok(LoadedMiddleware {
        name: name.into(),
        version: mw.version.clone(),
        digest: loaded.digest,
        registration: loaded.registration,
        pre: loaded.pre,
        timeout: mw.timeout.0,
        memory_limit: mw.memory_limit.0,
        on_error: mw.on_error,
        state: state.clone(),
        runtime: runtime.clone(),
        reuse: mw.reuse.as_ref().map(|reuse| Reuse {
            max_requests: reuse.get_ref().max_requests,
            max_memory: reuse.get_ref().max_memory.map_or(mw.memory_limit.0 / 2, |m| m.0),
        }),
        idle: IdleInstances::default(),
        loaded_at: SystemTime::now(),
        cached: loaded.cached,
    })
}

/// A middleware's `config` with the host's indirections resolved, at the top level: `KEY-file` (a
/// path relative to the config file) becomes `KEY` with the file's content, and `KEY-env` becomes
/// `KEY` with that environment variable's value. The component itself never gets a file or the
/// environment.
fn resolve_config(config: &Config, name: &str, mw: &MiddlewareConfig) -> Result<toml::Table, ConfigError> {
    let mut resolved = toml::Table::new();
    for (key, value) in mw.config.get_ref() {
        let error =
            |message: String| config.error_at(mw.config.span(), format!("middleware.{name}.config.{key}"), message);
        let (target, content) = if let Some(base) = key.strip_suffix("-file") {
            let path = value
                .as_str()
                .ok_or_else(|| error(format!("`{key}` must be a path (a string)")))?;
            let full = config.base_dir().join(path);
            let content =
                std::fs::read_to_string(&full).map_err(|e| error(format!("cannot read `{}`: {e}", full.display())))?;
            (base, content)
        } else if let Some(base) = key.strip_suffix("-env") {
            let var = value
                .as_str()
                .ok_or_else(|| error(format!("`{key}` must name an environment variable (a string)")))?;
            let content = std::env::var(var).map_err(|_| error(format!("environment variable `{var}` is not set")))?;
            (base, content)
        } else {
            if resolved.contains_key(key) {
                return Err(error(format!(
                    "`{key}` is given twice (directly and through `-file` or `-env`)"
                )));
            }
            resolved.insert(key.clone(), value.clone());
            continue;
        };
        if resolved.contains_key(target) || mw.config.get_ref().contains_key(target) {
            return Err(error(format!("give one of `{target}` and `{key}`")));
        }
        resolved.insert(target.to_owned(), toml::Value::String(content));
    }
    Ok(resolved)
}
