//! What is live: the [`Snapshot`] (state, upstreams and their health, middleware deployments,
//! routes with their chains, certificates) built from one config, swapped in as one value, and
//! the [`Loader`] that loads one middleware version for it (pins, wanted versions, `*-file`
//! resolution). Built off the request path by `reload`; read once per request by `proxy`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::chain::{Artifact, Canary, Chain, Deployment, LoadedMiddleware, Policy, Provenance, Reuse, Source};
use crate::config::{ComponentRef, Config, ConfigError, ConfigErrors, Instances, MiddlewareConfig};
use crate::error::Error;
use crate::oci::{PublicKey, Registry};
use crate::router::Router;
use crate::runtime::host::Outbound;
use crate::runtime::{LoadError, Runtime, Start};
use crate::state::{RedisState, State};
use crate::upstream::{Upstream, UpstreamTls};

/// Everything a request needs, built at load and never changed after.
///
/// A request takes the live snapshot once (`ArcSwap::load_full`) and keeps it to its end.
#[derive(Debug)]
pub struct Snapshot {
    /// Picks a route for a request.
    pub router: Arc<Router>,
    /// The routes, indexed by what the router returns.
    pub routes: Vec<Route>,
    /// Every `[middleware.NAME]`, loaded, with its canary if it has one.
    pub middleware: BTreeMap<String, Deployment>,
    /// The config this was built from.
    pub config: Arc<Config>,
    /// The state backend every middleware shares; a reload keeps it (and so the rate limits).
    pub state: Arc<State>,
    /// Every `[upstreams.NAME]`, by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The TLS listeners' certificates, by address (reloaded with the config).
    pub certs: BTreeMap<std::net::SocketAddr, Arc<crate::tls::CertSet>>,
    /// When this snapshot was built.
    pub loaded_at: SystemTime,
    /// The client for the config's `oci://` components (none if it names none); kept across
    /// reloads while `[registries]` does not change.
    pub registry: Option<Arc<Registry>>,
}

/// One route, ready to serve.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name from config (also its metrics' `route` label, and what middleware see).
    pub name: Arc<String>,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// The middleware its requests run through.
    pub chain: Chain,
    /// Largest body a body phase will buffer.
    pub max_body: u64,
}

/// A component that replaces the one the config names for a middleware (an upload, or a version
/// rolled back to), for as long as the config names the same component.
#[derive(Debug, Clone)]
pub struct Pin {
    /// The component.
    pub component: Bytes,
    /// Where it came from.
    pub source: Source,
    /// sha256 of what the config named when it was pinned: once the config names something else
    /// (another path, or the same file with new content), the pin is dropped.
    pub replaces: String,
    /// Its version label: none for an upload, the label it had for a version rolled back to.
    pub version: Option<String>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config: resolves targets, builds the balancers, loads
    /// every middleware (compiled and initialized, or from the artifact cache) and builds the route
    /// table. Nothing here runs per request. Every problem is reported, located in the config.
    pub async fn build(config: Config, runtime: &Arc<Runtime>) -> Result<Snapshot, Error> {
        Snapshot::rebuild(Arc::new(config), runtime, None, &BTreeMap::new()).await
    }

    /// Builds the snapshot of `config` to replace `current`: a middleware identical to a live
    /// one (same component, config and settings) is taken over as it is, with its idle
    /// instances; the state backend is kept; a middleware with a [`Pin`] whose `replaces` still
    /// matches what the config names loads the pinned component instead.
    pub async fn rebuild(
        config: Arc<Config>,
        runtime: &Arc<Runtime>,
        current: Option<&Snapshot>,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<Snapshot, Error> {
        let mut errors = Vec::new();
        // The backend is kept across reloads while its settings do not change: in-process rate
        // limits survive, and Redis keeps its connection.
        let kept = current
            .map(|c| &c.state)
            .filter(|state| match (&***state, config.state.redis()) {
                (State::Memory(_), None) => true,
                (State::Redis(redis), Some(settings)) => redis.uses(&settings),
                _ => false,
            });
        let state = match (kept, config.state.redis()) {
            (Some(state), _) => state.clone(),
            (None, None) => Arc::new(State::memory()),
            (None, Some(settings)) => match RedisState::connect(settings) {
                Ok(redis) => Arc::new(State::Redis(redis)),
                Err(message) => {
                    let at = config
                        .state
                        .url
                        .as_ref()
                        .map_or(config.state.backend.span(), |u| u.span());
                    errors.push(config.error_at(at, "state.url", message));
                    Arc::new(State::memory())
                }
            },
        };

        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let tls = match (up.tls, &up.ca_file) {
                (false, _) => None,
                (true, None) => Some(UpstreamTls {
                    sni: up.sni.clone(),
                    ca: None,
                    ca_pem: None,
                    verify: up.verify,
                }),
                (true, Some(path)) => match crate::tls::load_ca(&config.base_dir().join(path.get_ref())) {
                    Ok((ca, pem)) => Some(UpstreamTls {
                        sni: up.sni.clone(),
                        ca: Some(ca),
                        ca_pem: Some(pem),
                        verify: up.verify,
                    }),
                    Err(message) => {
                        errors.push(config.error_at(path.span(), format!("upstreams.{name}.ca-file"), message));
                        continue;
                    }
                },
            };
            let previous = current.and_then(|c| c.upstreams.get(name));
            match Upstream::build(name, up, tls, previous.map(|p| &**p)).await {
                Ok(upstream) => {
                    upstreams.insert(name.clone(), Arc::new(upstream));
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

        let registry = match registry_for(&config, current) {
            Ok(registry) => registry,
            Err(message) => {
                let at = config.registries.credentials_file.as_ref().map_or(0..0, |f| f.span());
                errors.push(config.error_at(at, "registries", message));
                None
            }
        };
        let mut middleware = BTreeMap::new();
        for (name, mw) in &config.middleware {
            let live = current.and_then(|c| c.middleware.get(name));
            let loader = Loader {
                config: &config,
                name,
                mw,
                runtime,
                state: &state,
                registry: registry.as_ref(),
            };
            let primary = loader
                .load(
                    &mw.component,
                    mw.version.clone(),
                    pins.get(name),
                    live.map(|d| &d.primary),
                )
                .await;
            let canary = match &mw.canary {
                None => Ok(None),
                Some(canary) => {
                    let live = live.and_then(|d| d.canary.as_ref()).map(|c| &c.version);
                    loader
                        .load(&canary.component, canary.version.clone(), None, live)
                        .await
                        .map(|version| {
                            Some(Canary {
                                version,
                                weight: canary.weight.0,
                            })
                        })
                }
            };
            match (primary, canary) {
                (Ok(primary), Ok(Some(canary)))
                    if canary.version.artifact.pre.http_world() != primary.artifact.pre.http_world() =>
                {
                    let kind = |m: &LoadedMiddleware| match m.artifact.pre.http_world() {
                        Some(world) => world.describe(),
                        None => "a `sluice:middleware` component",
                    };
                    let at = mw.canary.as_ref().map_or(0..0, |c| c.component.span());
                    let message = format!(
                        "middleware `{name}`: the canary is {} and the primary {}: a canary must be the same kind of link",
                        kind(&canary.version),
                        kind(&primary)
                    );
                    errors.push(config.error_at(at, format!("middleware.{name}.canary.component"), message));
                }
                (Ok(primary), Ok(canary)) => {
                    middleware.insert(name.clone(), Deployment { primary, canary });
                }
                (primary, canary) => errors.extend(primary.err().into_iter().chain(canary.err())),
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
                name: Arc::new(route.name.get_ref().clone()),
                upstream: upstream.clone(),
                chain: Chain::of(links),
                max_body: route.max_body.0,
            });
        }
        let certs = match crate::tls::load_certs(&config.server.tls, config.base_dir()) {
            Ok(certs) => certs,
            Err(problems) => {
                for (index, message) in problems {
                    errors.push(config.error_at(
                        config.server.tls[index].span(),
                        format!("server.tls[{index}]"),
                        message,
                    ));
                }
                BTreeMap::new()
            }
        };
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(Error::Config(ConfigErrors(errors)));
        }

        Ok(Snapshot {
            router: Arc::new(Router::build(&config.routes)),
            routes,
            middleware,
            config,
            state,
            upstreams,
            certs,
            loaded_at: SystemTime::now(),
            registry,
        })
    }

    /// This snapshot with middleware `name`'s primary version replaced by `primary` (an upload or
    /// a rollback), in every chain that runs it. Routes, upstreams and the other middleware are
    /// shared as they are.
    pub fn with_primary(&self, name: &str, primary: Arc<LoadedMiddleware>) -> Snapshot {
        let mut middleware = self.middleware.clone();
        if let Some(deployment) = middleware.get_mut(name) {
            deployment.primary = primary.clone();
        }
        let routes = self
            .routes
            .iter()
            .map(|route| {
                let links = route
                    .chain
                    .links()
                    .iter()
                    .map(|link| match &*link.primary.name == name {
                        true => Deployment {
                            primary: primary.clone(),
                            canary: link.canary.clone(),
                        },
                        false => link.clone(),
                    })
                    .collect();
                Route {
                    chain: Chain::of(links),
                    ..route.clone()
                }
            })
            .collect();
        Snapshot {
            router: self.router.clone(),
            routes,
            middleware,
            config: self.config.clone(),
            state: self.state.clone(),
            upstreams: self.upstreams.clone(),
            certs: self.certs.clone(),
            loaded_at: SystemTime::now(),
            registry: self.registry.clone(),
        }
    }
}

/// The registry client for `config`: `current`'s if its settings are the same, a new one if the
/// config names an `oci://` component, else none.
fn registry_for(config: &Config, current: Option<&Snapshot>) -> Result<Option<Arc<Registry>>, String> {
    let names_oci = config.middleware.values().any(|mw| {
        std::iter::once(&mw.component)
            .chain(mw.canary.as_ref().map(|c| &c.component))
            .any(|c| matches!(c.get_ref(), ComponentRef::Oci(_)))
    });
    if !names_oci {
        return Ok(None);
    }
    let settings = config.registry_settings();
    let cache_dir = config.cache_dir();
    if let Some(kept) = current.and_then(|c| c.registry.as_ref())
        && kept.uses(&settings, &cache_dir)
    {
        return Ok(Some(kept.clone()));
    }
    Registry::new(settings, &cache_dir)
        .map(|r| Some(Arc::new(r)))
        .map_err(|e| e.to_string())
}

/// sha256 of `bytes`, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Loads the versions of one `[middleware.NAME]`; problems are located at its keys.
pub struct Loader<'a> {
    /// The config being loaded.
    pub config: &'a Config,
    /// The middleware's name.
    pub name: &'a str,
    /// Its config.
    pub mw: &'a MiddlewareConfig,
    /// The runtime.
    pub runtime: &'a Arc<Runtime>,
    /// The state backend.
    pub state: &'a Arc<State>,
    /// The registry client, if the config names `oci://` components.
    pub registry: Option<&'a Arc<Registry>>,
}

impl Loader<'_> {
    /// Reads, compiles and initializes the version `component` names (or the pinned one), unless
    /// `live` is already exactly that.
    async fn load(
        &self,
        component: &toml::Spanned<ComponentRef>,
        version: Option<String>,
        pin: Option<&Pin>,
        live: Option<&Arc<LoadedMiddleware>>,
    ) -> Result<Arc<LoadedMiddleware>, ConfigError> {
        let (config, name) = (self.config, self.name);
        let at_component = |message: String| {
            config
                .error_at(component.span(), format!("middleware.{name}.component"), message)
                .in_middleware(name)
        };
        let (bytes, resolved) = self.fetch(component.get_ref()).await.map_err(&at_component)?;
        let verified_with = self.verify(component.get_ref(), &bytes, resolved.as_ref()).await?;
        let pulled = resolved
            .map(|(reference, digest)| format!("oci://{}/{}@{digest}", reference.registry(), reference.repository()));
        let configured = digest(&bytes);
        let (bytes, source, version) = match pin {
            Some(pin) if pin.replaces == configured => (pin.component.clone(), pin.source.clone(), pin.version.clone()),
            _ => (bytes, Source::Config, version),
        };
        let resolved = resolve_config(config, name, self.mw)?;
        let config_json = serde_json::to_string(&resolved).unwrap_or_else(|_| "{}".to_owned());
        let wanted = Wanted {
            digest: digest(&bytes),
            configured,
            version,
            config_json,
            source,
            resolved: pulled,
            verified_with,
        };
        if let Some(live) = live
            && wanted.matches(live, self.mw, self.state)
        {
            return Ok(live.clone());
        }
        self.instantiate(bytes, wanted).await.map_err(|e| match e {
            LoadError::InitRejected(message) => {
                let span = if self.mw.config.span().is_empty() {
                    component.span()
                } else {
                    self.mw.config.span()
                };
                config
                    .error_at(
                        span,
                        format!("middleware.{name}.config"),
                        format!("middleware `{name}` rejected its config: {message}"),
                    )
                    .in_middleware(name)
            }
            other => at_component(format!(
                "middleware `{name}`: component `{}` {other}",
                component.get_ref()
            )),
        })
    }

    /// Loads `bytes` as an uploaded version of this middleware (the config's `version` label does
    /// not describe it, so it has none), replacing the component the config names (whose digest
    /// is `replaces`, and for an `oci://` one, what it `resolved` to).
    pub async fn upload(
        &self,
        bytes: Bytes,
        replaces: String,
        resolved: Option<String>,
    ) -> Result<Arc<LoadedMiddleware>, LoadError> {
        let config = resolve_config(self.config, self.name, self.mw).map_err(|e| LoadError::InitRejected(e.message))?;
        let wanted = Wanted {
            digest: digest(&bytes),
            configured: replaces,
            version: None,
            config_json: serde_json::to_string(&config).unwrap_or_else(|_| "{}".to_owned()),
            source: Source::Upload,
            resolved,
            verified_with: None,
        };
        self.instantiate(bytes, wanted).await
    }

    /// The bytes of `component`; for an OCI reference, with what it resolved to.
    async fn fetch(
        &self,
        component: &ComponentRef,
    ) -> Result<(Bytes, Option<(oci_client::Reference, String)>), String> {
        match component {
            ComponentRef::Builtin(builtin) => crate::artifacts::BUILTIN
                .iter()
                .find(|(name, _)| name == builtin)
                .map(|(_, bytes)| (Bytes::from_static(bytes), None))
                .ok_or_else(|| format!("unknown built-in middleware `builtin:{builtin}`")),
            ComponentRef::File(file) => {
                let path = self.config.base_dir().join(file);
                let bytes = std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                Ok((Bytes::from(bytes), None))
            }
            ComponentRef::Oci(reference) => {
                let registry = self.registry.ok_or("no registry client")?;
                let pulled = registry
                    .pull(reference)
                    .await
                    .map_err(|e| format!("cannot pull `{component}`: {e}"))?;
                if let Some(why) = &pulled.offline {
                    tracing::warn!(
                        middleware = self.name,
                        reference = %component,
                        digest = %pulled.digest,
                        reason = %why,
                        "serving the digest the tag last resolved to"
                    );
                }
                tracing::info!(
                    middleware = self.name,
                    reference = %component,
                    digest = %pulled.digest,
                    stored = pulled.stored,
                    "component pulled"
                );
                Ok((pulled.component, Some((reference.clone(), pulled.digest))))
            }
        }
    }

    /// Checks `component`'s signature when a key is required for this middleware (`verify` or
    /// `[trust]`); returns the key file it was checked with. Built-in components are part of the
    /// binary and need none.
    async fn verify(
        &self,
        component: &ComponentRef,
        bytes: &[u8],
        resolved: Option<&(oci_client::Reference, String)>,
    ) -> Result<Option<std::path::PathBuf>, ConfigError> {
        let (config, name) = (self.config, self.name);
        let Some(key_file) = config.public_key_for(name) else {
            return Ok(None);
        };
        if matches!(component, ComponentRef::Builtin(_)) {
            return Ok(None);
        }
        let key_key = match self.mw.verify.is_some() {
            true => format!("middleware.{name}.verify.public-key-file"),
            false => "trust.public-key-file".to_owned(),
        };
        let path = config.base_dir().join(key_file.get_ref());
        let key = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
            .and_then(|pem| PublicKey::from_pem(&pem))
            .map_err(|message| config.error_at(key_file.span(), &key_key, message).in_middleware(name))?;
        let checked = match (component, resolved) {
            (ComponentRef::Oci(_), Some((reference, digest))) => match self.registry {
                Some(registry) => registry
                    .signatures(reference, digest)
                    .await
                    .map_err(|e| format!("cannot fetch its signatures: {e}"))
                    .and_then(|signatures| key.verify_artifact(digest, &signatures)),
                None => Err("no registry client".to_owned()),
            },
            (ComponentRef::File(file), _) => {
                let sig_path = config.base_dir().join(format!("{}.sig", file.display()));
                std::fs::read_to_string(&sig_path)
                    .map_err(|e| {
                        format!(
                            "its detached signature `{}` cannot be read ({e}); sign it with `cosign sign-blob --key cosign.key --output-signature {}.sig`",
                            sig_path.display(),
                            file.display()
                        )
                    })
                    .and_then(|signature| key.verify_blob(bytes, &signature))
            }
            _ => Ok(()),
        };
        checked.map(|()| Some(path.clone())).map_err(|reason| {
            config
                .error_at(
                    self.mw.component.span(),
                    format!("middleware.{name}.component"),
                    format!(
                        "middleware `{name}`: component `{component}` is refused: it must be signed with `{}`: {reason}",
                        key_file.get_ref().display()
                    ),
                )
                .in_middleware(name)
        })
    }

    async fn instantiate(&self, bytes: Bytes, wanted: Wanted) -> Result<Arc<LoadedMiddleware>, LoadError> {
        let (name, mw) = (self.name, self.mw);
        // A fresh instance per request needs `init` done beforehand, in a snapshot; a reused one
        // runs it when created, and spares compiling the component again for each config.
        let start = match mw.instances {
            Instances::Fresh => Start::Snapshot,
            Instances::Reused => Start::Init,
        };
        let loaded = self
            .runtime
            .load(
                name,
                &bytes,
                &wanted.config_json,
                self.state.clone(),
                mw.memory_limit.0,
                start,
            )
            .await?;
        tracing::info!(
            middleware = name,
            digest = &loaded.digest[..12],
            cached = loaded.cached,
            start = ?loaded.start,
            initial_memory = loaded.initial_memory,
            took_ms = loaded.took.as_secs_f64() * 1e3,
            "middleware loaded"
        );
        let artifact = Artifact {
            digest: loaded.digest,
            config_json: wanted.config_json,
            registration: loaded.registration,
            pre: loaded.pre,
            start: loaded.start,
            code: loaded.code,
            initial_memory: loaded.initial_memory,
            component: bytes,
        };
        let policy = policy(name, mw, artifact.initial_memory);
        if let Some(reuse) = policy.reuse
            && reuse.max_memory < artifact.initial_memory
        {
            tracing::warn!(
                middleware = name,
                max_memory = reuse.max_memory,
                initial_memory = artifact.initial_memory,
                "`reuse.max-memory` is below what an instance starts with: every instance is retired after one request"
            );
        }
        let provenance = Provenance {
            version: wanted.version,
            configured: wanted.configured,
            source: wanted.source,
            loaded_at: SystemTime::now(),
            cached: loaded.cached,
            load_time: loaded.took,
            resolved: wanted.resolved,
            verified_with: wanted.verified_with,
        };
        let loaded_middleware = LoadedMiddleware::new(
            name.into(),
            artifact,
            policy,
            provenance,
            self.state.clone(),
            self.runtime.clone(),
        );
        // The instance load started (and ran `init` in) serves first: no request waits for it.
        if let (Some(reuse), Some(instance)) = (loaded_middleware.policy.reuse, loaded.instance) {
            let outbound = loaded_middleware.policy.outbound.clone();
            loaded_middleware.idle.adopt(instance, outbound, reuse);
            loaded_middleware.calls.count_created(crate::metrics::Created::Load);
        }
        Ok(Arc::new(loaded_middleware))
    }
}

/// What a middleware version is to be: compared with a live one to skip loading it again.
struct Wanted {
    digest: String,
    configured: String,
    version: Option<String>,
    config_json: String,
    source: Source,
    resolved: Option<String>,
    verified_with: Option<std::path::PathBuf>,
}

impl Wanted {
    fn matches(&self, live: &LoadedMiddleware, mw: &MiddlewareConfig, state: &Arc<State>) -> bool {
        live.artifact.digest == self.digest
            && live.artifact.config_json == self.config_json
            && live.provenance.configured == self.configured
            && live.provenance.source == self.source
            && live.provenance.version == self.version
            && live.provenance.resolved == self.resolved
            && live.provenance.verified_with == self.verified_with
            && live.policy == policy(&live.name, mw, live.artifact.initial_memory)
            && Arc::ptr_eq(&live.state, state)
    }
}

/// How `mw`'s calls are bounded, from its config and what an instance starts with.
fn policy(name: &str, mw: &MiddlewareConfig, initial_memory: u64) -> Policy {
    Policy {
        timeout: mw.timeout.0,
        memory_limit: mw.memory_limit.0,
        on_error: mw.on_error,
        reuse: reuse(mw, initial_memory),
        outbound: outbound(name, mw),
    }
}

/// What `mw` may reach with outbound HTTP: `None` without `allow-hosts`.
fn outbound(name: &str, mw: &MiddlewareConfig) -> Option<Arc<Outbound>> {
    (!mw.allow_hosts.is_empty()).then(|| {
        Arc::new(Outbound {
            middleware: name.into(),
            allow: mw
                .allow_hosts
                .iter()
                .map(|t| (t.get_ref().host.to_ascii_lowercase(), t.get_ref().port))
                .collect(),
            timeout: mw.outbound_timeout.unwrap_or(mw.timeout).0,
            max_response: mw.outbound_max_response.0,
        })
    })
}

/// The bounds on `mw`'s reused instances; `None` for fresh instances. `max-memory` defaults to
/// halfway from what an instance starts with (`initial_memory`) to `memory-limit`: an instance
/// retires once it has grown by half of the room it had, however large its snapshot.
fn reuse(mw: &MiddlewareConfig, initial_memory: u64) -> Option<Reuse> {
    if mw.instances == Instances::Fresh {
        return None;
    }
    let reuse = mw.reuse.as_ref().map(|reuse| *reuse.get_ref()).unwrap_or_default();
    let limit = mw.memory_limit.0;
    let halfway = initial_memory + limit.saturating_sub(initial_memory) / 2;
    Some(Reuse {
        max_requests: reuse.max_requests,
        max_memory: reuse.max_memory.map_or(halfway, |m| m.0),
    })
}

/// A middleware's `config` with the host's indirections resolved, at the top level: `KEY-file` (a
/// path relative to the config file) becomes `KEY` with the file's content, and `KEY-env` becomes
/// `KEY` with that environment variable's value. The component itself never gets a file or the
/// environment.
fn resolve_config(config: &Config, name: &str, mw: &MiddlewareConfig) -> Result<toml::Table, ConfigError> {
    let mut resolved = toml::Table::new();
    for (key, value) in mw.config.get_ref() {
        let error = |message: String| {
            config
                .error_at(mw.config.span(), format!("middleware.{name}.config.{key}"), message)
                .in_middleware(name)
        };
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
