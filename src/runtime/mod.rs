//! The wasmtime runtime: one `Engine` for the process, components compiled and initialized once at
//! load, a fresh instance per request.
//!
//! - **Engine**: component model, async, the pooling allocator (instantiation in microseconds),
//!   epoch interruption driven by a 1 ms ticker thread. Every call gets a budget of running time
//!   ([`budget`]); on each tick past it the call traps, and before it the call yields to the
//!   worker's other requests, so a looping component never starves them. Fuel is not used (it
//!   roughly doubles execution time).
//! - **Load** ([`Runtime::load`], two ways: [`Start`]). For reused instances (the default) the
//!   component is compiled once, whatever its config, and stored in the [`ArtifactCache`]; each
//!   instance runs `init(config)` when created, the first one at load. For fresh instances
//!   `init(config)` runs once under `wasmtime-wizer`, and the initialized state is snapshotted into
//!   a new component, compiled and cached under a key with the config. A restart or reload with
//!   the same component (and, for a snapshot, config) loads the compiled code from disk and skips
//!   Cranelift. Functions compiled once are kept (`functions.rs`), so another snapshot of the same
//!   code compiles only what differs.
//! - **Instances**: by default an instance serves request after request within bounds (see
//!   `chain::IdleInstances`); with `instances = "fresh"` every request gets a new one from the
//!   snapshot, with `init`'s work already in its memory, and nothing one request leaves behind is
//!   visible to the next.
//! - **Capabilities**: WASI clocks and random, nothing else (see [`host::HostState::new`]); the
//!   `state` and `log` interfaces; `wasi:http` outbound requests to the middleware's
//!   `allow-hosts` only, never during `init` (which runs at load, and may be snapshotted).

mod bindings;
pub mod budget;
mod cache;
mod functions;
pub mod head;
pub mod host;
mod world;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, Val};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

pub use bindings::types;
pub use bindings::{Exports, Fields, SluicePre};
pub use cache::ArtifactCache;
use functions::FunctionCache;
use host::HostState;
/// A `wasi:http/proxy` (WASI 0.2) component, pre-linked: a chain link of the standard kind.
pub use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
/// A `wasi:http/middleware` (WASI 0.3) component, pre-linked (its export is a `service`'s).
pub use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};
pub use world::{HttpWorld, interface};

use crate::state::State;

/// How often the epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The deadline for `init`, which may do real work (compiling schemas, parsing keys).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest linear memory any middleware may have; `memory-limit` is capped at this.
pub const MAX_MEMORY: u64 = 1 << 30;

/// The address space reserved for each linear memory: all of what a 32-bit index can reach, so
/// Cranelift compiles no bounds check into the guests' loads and stores (an access past the
/// memory's end lands on inaccessible pages and traps). With the 1 GiB of [`MAX_MEMORY`] every
/// access was checked: the four built-ins cost 14% more per request (`cargo bench --bench builtin`,
/// docs/benchmarks.md). Address space only: the two engines' 5,000 pooled memories reserve ~20 TiB
/// of the 128 TiB a 64-bit Linux process has, and commit nothing.
const MEMORY_RESERVATION: u64 = 1 << 32;

/// Component instances the engine's pool holds, live and idle together.
const POOLED_INSTANCES: u32 = 2_000;

/// The slots of the engine's instance pool that idle (reused) instances may hold, shared by every
/// middleware of one [`Runtime`]: half the pool, so a request always finds a free slot for an
/// instance it must create.
#[derive(Debug)]
pub struct IdleSlots {
    held: AtomicUsize,
    max: usize,
}

impl IdleSlots {
    /// Takes a slot for one more idle instance; false when they are all held.
    pub fn try_hold(&self) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    /// Gives back `n` slots (idle instances taken or dropped).
    pub fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Bumped when the snapshot recipe changes, so old cache entries are not reused.
const SNAPSHOT_FORMAT: &str = "sluice-snapshot-1";

/// Bumped when how a component's own code is compiled changes (its cache entries hold no snapshot).
const CODE_FORMAT: &str = "sluice-code-1";

/// How a loaded component's instances start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the snapshot `init` left at load: instantiating is all. Each config is its own
    /// component, compiled on its first load: what `instances = "fresh"` needs, where every
    /// request gets a new instance.
    Snapshot,
    /// From the component as built: each instance runs `init(config)` once, when created. The code
    /// is compiled once per component whatever the config, so fifty middleware of one component
    /// load in the time of one. What reused instances use: they are created rarely.
    Init,
}

/// What `init` declared: the phases to call and the headers to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Call `on-request-headers`.
    pub request_headers: bool,
    /// Call `on-request-body` (the request body is buffered).
    pub request_body: bool,
    /// Call `on-response-headers`.
    pub response_headers: bool,
    /// Call `on-response-body` (the response body is buffered).
    pub response_body: bool,
    /// A standard `wasi:http` link: its `handle` gets the request, once.
    #[serde(default)]
    pub handle: bool,
    /// Request headers to pass; `None`: all.
    pub request_header_names: Option<Vec<String>>,
    /// Response headers to pass; `None`: all.
    pub response_header_names: Option<Vec<String>>,
}

impl From<bindings::types::Registration> for Registration {
    fn from(r: bindings::types::Registration) -> Self {
        use bindings::types::Phases;
        let lowercase =
            |names: Option<Vec<String>>| names.map(|names| names.into_iter().map(|n| n.to_ascii_lowercase()).collect());
        Registration {
            request_headers: r.phases.contains(Phases::REQUEST_HEADERS),
            request_body: r.phases.contains(Phases::REQUEST_BODY),
            response_headers: r.phases.contains(Phases::RESPONSE_HEADERS),
            response_body: r.phases.contains(Phases::RESPONSE_BODY),
            handle: false,
            request_header_names: lowercase(r.request_headers),
            response_header_names: lowercase(r.response_headers),
        }
    }
}

impl Registration {
    /// What a standard `wasi:http` link declares: no `sluice:middleware` phase, its `handle`.
    pub fn http() -> Self {
        Registration {
            request_headers: false,
            request_body: false,
            response_headers: false,
            response_body: false,
            handle: true,
            request_header_names: None,
            response_header_names: None,
        }
    }

    /// Whether `init` asked for `phase`: the one place a phase maps to its flag.
    pub fn declares(&self, phase: Phase) -> bool {
        match phase {
            Phase::RequestHeaders => self.request_headers,
            Phase::RequestBody => self.request_body,
            Phase::ResponseHeaders => self.response_headers,
            Phase::ResponseBody => self.response_body,
            Phase::Handle => self.handle,
        }
    }
}

/// A request phase a middleware can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `on-request-headers`
    RequestHeaders = 0,
    /// `on-request-body`
    RequestBody = 1,
    /// `on-response-headers`
    ResponseHeaders = 2,
    /// `on-response-body`
    ResponseBody = 3,
    /// A standard `wasi:http` link's `handle`: the whole exchange, its next hop's included.
    Handle = 4,
}

impl Phase {
    /// Every phase, in the order a request meets them (`handle` spans the others).
    pub const ALL: [Phase; 5] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::Handle,
    ];

    /// The phase's name, as in the WIT, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request-headers",
            Phase::RequestBody => "request-body",
            Phase::ResponseHeaders => "response-headers",
            Phase::ResponseBody => "response-body",
            Phase::Handle => "handle",
        }
    }

    /// Whether the phase sees the response: the chain then runs in reverse order.
    pub fn is_response(self) -> bool {
        matches!(self, Phase::ResponseHeaders | Phase::ResponseBody)
    }
}

/// Why a component could not be loaded. Messages are lowercase and name what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component implements neither `sluice:middleware` world (nor a standard `wasi:http` one).
    #[error("does not implement the `sluice:middleware/middleware@0.1.0` or `compact-middleware` world: {0}")]
    WrongWorld(String),
    /// `init` returned an error: the config is rejected.
    #[error("rejected its config: {0}")]
    InitRejected(String),
    /// `init` trapped or ran out of time or memory.
    #[error("failed in `init`: {0}")]
    InitFailed(String),
    /// An instance starts with more linear memory than `memory-limit` allows.
    #[error(
        "cannot start within its `memory-limit` of {}: an instance starts with {} (raise `memory-limit`)",
        mib(*limit),
        mib(*needs)
    )]
    MemoryLimit {
        /// `memory-limit`, in bytes.
        limit: u64,
        /// The initial memory an instance asked for when refused, in bytes.
        needs: u64,
    },
    /// The engine or the artifact cache failed.
    #[error("{0}")]
    Internal(String),
}

/// A component compiled, initialized (in a snapshot, or once to check it: [`Start`]) and ready to
/// instantiate.
pub struct Loaded {
    /// sha256 of the component's bytes, hex.
    pub digest: String,
    /// What `init` declared.
    pub registration: Registration,
    /// Pre-linked (and with [`Start::Snapshot`], pre-initialized): instantiating costs
    /// microseconds.
    pub pre: LinkPre,
    /// How its instances start.
    pub start: Start,
    /// Its compiled code, shared by every middleware loaded from the same component with
    /// [`Start::Init`]; whoever keeps `pre` keeps this too.
    pub code: Arc<Component>,
    /// The instance load started under `memory-limit` (and with [`Start::Init`], ran `init` in):
    /// a reused middleware's first idle instance. `None` for a `wasi:http` link (an instance per
    /// request).
    pub instance: Option<Started>,
    /// The linear memory an instance starts serving with (its largest memory, in bytes): what
    /// `init` left, measured on `instance`.
    pub initial_memory: u64,
    /// Whether the compiled code came from the artifact cache.
    pub cached: bool,
    /// How long loading took.
    pub took: Duration,
}

/// A component pre-linked as the kind of chain link it is.
#[derive(Clone)]
pub enum LinkPre {
    /// A `sluice:middleware` component (either world): one export per phase.
    Sluice(SluicePre),
    /// A standard `wasi:http/proxy` component (WASI 0.2): one `handle` per request, whose outgoing
    /// requests to the request's own authority are the rest of the chain.
    Proxy(ProxyPre<HostState>),
    /// A standard `wasi:http/middleware` component (WASI 0.3): one `handle` per request, whose
    /// imported `handler` is the rest of the chain. Instantiated on the runtime's WASI 0.3 engine.
    Middleware(ServicePre<HostState>),
}

impl LinkPre {
    /// The standard `wasi:http` world it implements, if it is not a `sluice:middleware` one.
    pub fn http_world(&self) -> Option<HttpWorld> {
        match self {
            LinkPre::Sluice(_) => None,
            LinkPre::Proxy(_) => Some(HttpWorld::Proxy),
            LinkPre::Middleware(_) => Some(HttpWorld::Middleware),
        }
    }
}

/// An instance and its store.
pub struct Started {
    /// Its store.
    pub store: Store<HostState>,
    /// Its exports.
    pub bindings: Exports,
}

/// The instantiation or `init` of `store`'s instance was refused memory past `limit`.
fn memory_refused(store: &Store<HostState>, limit: u64) -> LoadError {
    LoadError::MemoryLimit {
        limit,
        needs: store.data().limits.refused_size as u64,
    }
}

/// The process's wasmtime engine, linker and artifact cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// The engine and linker of WASI 0.3 `wasi:http/middleware` links: with concurrency support,
    /// which the main engine leaves off (it costs every `sluice:middleware` call).
    p3: (Engine, Linker<HostState>),
    cache: ArtifactCache,
    /// Components compiled as built, by cache key, while some loaded middleware holds them: every
    /// middleware of one component shares one compiled image.
    code: Mutex<HashMap<String, Weak<Component>>>,
    idle_slots: Arc<IdleSlots>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.cache.dir())
            .finish_non_exhaustive()
    }
}

/// With `SLUICE_PERF_MAP` set, wasmtime writes `/tmp/perf-<pid>.map`, naming each compiled guest
/// function for `perf report` (docs/benchmarks.md, "Profiling a guest"). Off by default: it writes a line
/// per function at every load.
fn profile_guests(config: &mut wasmtime::Config) {
    if std::env::var_os("SLUICE_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
}

impl Runtime {
    /// Creates the engine (and its epoch ticker thread) with artifacts cached in `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Result<Arc<Runtime>, LoadError> {
        let engine = pooled_engine(POOLED_INSTANCES, |config| {
            config
                // With concurrency support on (wasmtime 50's default wherever
                // component-model-async is compiled in), `call_async` runs every call through the
                // component-model-async task machinery: +1.4 µs per call for a
                // `sluice:middleware` component, which needs none of it (benches/middleware.rs
                // `boundary`, docs/benchmarks.md).
                .concurrency_support(false)
                .enable_incremental_compilation(Arc::new(FunctionCache::default()))
                .map(drop)
        })?;
        // A pool of its own (an instance per request: creating one from the pool is microseconds,
        // mapping and unmapping its memory is not), a quarter of the main one.
        let p3_engine = pooled_engine(POOLED_INSTANCES / 4, |config| {
            config.wasm_component_model_async(true).concurrency_support(true);
            Ok(())
        })?;

        let tickers = [engine.weak(), p3_engine.weak()];
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = tickers[0].upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    if let Some(engine) = tickers[1].upgrade() {
                        engine.increment_epoch();
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| LoadError::Internal(format!("cannot start the epoch thread: {e}")))?;

        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(internal)?;
        let mut p3_linker = Linker::new(&p3_engine);
        host::add_p3_to_linker(&mut p3_linker).map_err(internal)?;
        let cache = ArtifactCache::new(cache_dir.clone())
            .map_err(|e| LoadError::Internal(format!("cannot use cache-dir `{}`: {e}", cache_dir.display())))?;
        let idle_slots = Arc::new(IdleSlots {
            held: AtomicUsize::new(0),
            max: POOLED_INSTANCES as usize / 2,
        });
        Ok(Arc::new(Runtime {
            engine,
            linker,
            p3: (p3_engine, p3_linker),
            cache,
            code: Mutex::default(),
            idle_slots,
        }))
    }

    /// The pool slots idle instances of every middleware share.
    pub fn idle_slots(&self) -> Arc<IdleSlots> {
        self.idle_slots.clone()
    }

    /// A store for one instance, with `state` behind its `state` interface and calls limited by
    /// memory and time: a call by the time it runs ([`HostState::meter`], armed before each
    /// call), `init` and instantiation by [`HostState::deadline`].
    pub fn store(&self, host: HostState) -> Store<HostState> {
        Self::limited_store(&self.engine, host)
    }

    /// A store on the WASI 0.3 engine, limited as [`Runtime::store`]'s: for a `wasi:http/middleware`
    /// link's instance.
    pub fn p3_store(&self, host: HostState) -> Store<HostState> {
        Self::limited_store(&self.p3.0, host)
    }

    fn limited_store(engine: &Engine, host: HostState) -> Store<HostState> {
        let mut store = Store::new(engine, host);
        store.limiter(|host| &mut host.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let host = ctx.data_mut();
            // A call is bounded by the time it runs; `init` and instantiation by the clock.
            let over = match host.meter.polling() {
                true => host.meter.spent(),
                false => Instant::now() >= host.deadline,
            };
            if over {
                host.timed_out = true;
                return Err(wasmtime::format_err!("deadline exceeded"));
            }
            host.meter.yielded();
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// Loads `bytes` with `config_json` for instances that start as `start` says: with
    /// [`Start::Snapshot`], compiles it, runs `init(config_json)` once and snapshots the result;
    /// with [`Start::Init`], compiles it (once per component) and runs `init` once to check it.
    /// Compiled code comes from the artifact cache when it is there.
    pub async fn load(
        &self,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        state: Arc<State>,
        memory_limit: u64,
        start: Start,
    ) -> Result<Loaded, LoadError> {
        let started = Instant::now();
        // A standard `wasi:http` component is told apart before any compiling, and said to be one.
        match interface(bytes)
            .ok()
            .and_then(|(imports, exports)| HttpWorld::of(&imports, &exports))
        {
            None => {}
            Some(HttpWorld::Proxy) => return self.load_proxy(name, bytes, state, memory_limit, started).await,
            Some(HttpWorld::Middleware) => {
                return self.load_middleware(name, bytes, state, memory_limit, started).await;
            }
            Some(world) => {
                return Err(LoadError::WrongWorld(format!(
                    "it is {}; sluice runs `sluice:middleware`, WASI 0.2 `wasi:http/proxy` and WASI \
                     0.3 `wasi:http/middleware` components as chain links, not a service that has \
                     no next hop (docs/middleware.md)",
                    world.describe()
                )));
            }
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let limit = memory_limit.min(MAX_MEMORY);
        let (code, pre, instance, registration, cached) = match start {
            Start::Snapshot => {
                let (component, registration, cached) =
                    self.snapshot(name, &digest, bytes, config_json, &state, limit).await?;
                let pre = self.pre(&component)?;
                let instance = self.first_instance(name, &pre, state, limit).await?;
                (Arc::new(component), pre, instance, registration, cached)
            }
            Start::Init => {
                let (code, cached) = self.code(&self.engine, &digest, bytes)?;
                let pre = self.pre(&code)?;
                let mut instance = self.first_instance(name, &pre, state, limit).await?;
                let registration = self.init(&mut instance, config_json, limit).await?;
                (code, pre, instance, registration, cached)
            }
        };
        let initial_memory = instance.store.data().limits.memory_high_water as u64;
        Ok(Loaded {
            digest,
            registration,
            pre: LinkPre::Sluice(pre),
            start,
            code,
            instance: Some(instance),
            initial_memory,
            cached,
            took: started.elapsed(),
        })
    }

    /// Loads a `wasi:http/proxy` component: compiled as built (once, whatever its config: it has
    /// no `init`), pre-linked, and instantiated once under `memory_limit` to check that it can be.
    /// It declares no `sluice:middleware` phase; the chain calls its `handle` once per request.
    async fn load_proxy(
        &self,
        name: &str,
        bytes: &[u8],
        state: Arc<State>,
        memory_limit: u64,
        started: Instant,
    ) -> Result<Loaded, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let limit = memory_limit.min(MAX_MEMORY);
        let (code, cached) = self.code(&self.engine, &digest, bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&code)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let mut store = self.store(HostState::new(name.into(), state, limit as usize, None));
        store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
        let instantiated = pre.instantiate_async(&mut store).await;
        let initial_memory = http_instantiated(&store, limit, instantiated)?;
        Ok(http_loaded(
            digest,
            LinkPre::Proxy(pre),
            code,
            initial_memory,
            cached,
            started,
        ))
    }

    /// Loads a `wasi:http/middleware` component on the WASI 0.3 engine: compiled (or from the
    /// artifact cache, under a key of that engine's), pre-linked (its imported `handler` bound to
    /// the next hop), and instantiated once under `memory_limit` to check that it can be.
    async fn load_middleware(
        &self,
        name: &str,
        bytes: &[u8],
        state: Arc<State>,
        memory_limit: u64,
        started: Instant,
    ) -> Result<Loaded, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let limit = memory_limit.min(MAX_MEMORY);
        let (engine, linker) = &self.p3;
        let (code, cached) = self.code(engine, &digest, bytes)?;
        let instance_pre = linker
            .instantiate_pre(&code)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = ServicePre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let mut store = self.p3_store(HostState::new(name.into(), state, limit as usize, None));
        store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
        let instantiated = pre.instantiate_async(&mut store).await;
        let initial_memory = http_instantiated(&store, limit, instantiated)?;
        let pre = LinkPre::Middleware(pre);
        Ok(http_loaded(digest, pre, code, initial_memory, cached, started))
    }

    /// `bytes` initialized with `config_json` by wizer and compiled, from the artifact cache or
    /// made (and cached): the component, what `init` returned, and whether it was cached.
    async fn snapshot(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
        config_json: &str,
        state: &Arc<State>,
        limit: u64,
    ) -> Result<(Component, Registration, bool), LoadError> {
        let key = cache_key(&self.engine, SNAPSHOT_FORMAT, digest, config_json);
        if let Some((component, registration)) = self.cache.get(&self.engine, &key) {
            return Ok((component, registration, true));
        }
        let host = HostState::new(name.into(), state.clone(), limit as usize, None);
        let mut store = self.store(host);
        let mut wizer = wasmtime_wizer::Wizer::new();
        wizer.init_func(format!("init({})", wave_string(config_json)));
        let linker = &self.linker;
        let (snapshot, results) = wizer
            .run_component(&mut store, bytes, async |store, component| {
                // wizer has compiled the component by now (seconds for a large one): the
                // deadline covers instantiation and `init` only.
                store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
                linker.instantiate_async(store, component).await
            })
            .await
            .map_err(|e| classify_init_error(e, store.data().timed_out))?;
        let registration = registration_from(&results)?;
        let component = Component::new(&self.engine, &snapshot).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let compiled = component.serialize().map_err(internal)?;
        if let Err(e) = self.cache.put(&key, &compiled, Some(&registration)) {
            tracing::warn!(middleware = name, error = %e, "cannot write the artifact cache; the next start compiles again");
            return Ok((component, registration, false));
        }
        // Served from the file: its code is paged in as it runs (and shared by every sluice using the
        // cache) instead of held whole in this process's memory, as after a start from the cache.
        let component = self.cache.get_code(&self.engine, &key).unwrap_or(component);
        Ok((component, registration, false))
    }

    /// `bytes` compiled as built for `engine`: the image a loaded middleware already holds, else
    /// from the artifact cache, else compiled (and cached); and whether it was not compiled now.
    fn code(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> Result<(Arc<Component>, bool), LoadError> {
        let key = cache_key(engine, CODE_FORMAT, digest, "");
        let held = self
            .code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(Weak::upgrade);
        if let Some(code) = held {
            return Ok((code, true));
        }
        let (component, cached) = match self.cache.get_code(engine, &key) {
            Some(component) => (component, true),
            None => {
                let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
                let compiled = component.serialize().map_err(internal)?;
                match self.cache.put(&key, &compiled, None) {
                    // Served from the file, as after a start from the cache (see `snapshot`).
                    Ok(()) => (self.cache.get_code(engine, &key).unwrap_or(component), false),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the artifact cache; the next start compiles again");
                        (component, false)
                    }
                }
            }
        };
        let code = Arc::new(component);
        let mut held = self.code.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, code| code.strong_count() > 0);
        held.insert(key, Arc::downgrade(&code));
        Ok((code, cached))
    }

    /// `component` pre-linked as the `sluice:middleware` world its exports take: heads encoded
    /// (`compact-middleware`, what the Rust SDK builds), else typed (`middleware`).
    fn pre(&self, component: &Component) -> Result<SluicePre, LoadError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        if let Ok(pre) = bindings::CompactMiddlewarePre::new(instance_pre.clone()) {
            return Ok(SluicePre::Compact(pre));
        }
        bindings::MiddlewarePre::new(instance_pre)
            .map(SluicePre::Typed)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))
    }

    /// Starts one instance of `pre` under `limit`, as a request would: what it needs is known at
    /// load (a cached snapshot was made under whatever limit its first load had).
    async fn first_instance(
        &self,
        name: &str,
        pre: &SluicePre,
        state: Arc<State>,
        limit: u64,
    ) -> Result<Started, LoadError> {
        let mut store = self.store(HostState::new(name.into(), state, limit as usize, None));
        store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
        match pre.instantiate_async(&mut store).await {
            Ok(bindings) => Ok(Started { store, bindings }),
            Err(_) if store.data().limits.refused => Err(memory_refused(&store, limit)),
            Err(e) => Err(LoadError::Internal(format!("cannot instantiate: {e:#}"))),
        }
    }

    /// Runs `init(config_json)` in `instance`, as every instance of a [`Start::Init`] middleware
    /// will when created: what it registered.
    async fn init(&self, instance: &mut Started, config_json: &str, limit: u64) -> Result<Registration, LoadError> {
        let Started { store, bindings } = instance;
        store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
        match bindings.call_init(&mut *store, config_json).await {
            Ok(Ok(registration)) => Ok(registration.into()),
            Ok(Err(message)) => Err(LoadError::InitRejected(message)),
            Err(_) if store.data().limits.refused => Err(memory_refused(store, limit)),
            Err(e) => Err(classify_init_error(e, store.data().timed_out)),
        }
    }

    /// Compiles `bytes` without running `init` or snapshotting: every instance then needs its
    /// own `init` call. Not used to serve; benches use it to measure what pre-initialization saves.
    pub fn prepare(&self, bytes: &[u8]) -> Result<SluicePre, LoadError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.pre(&component)
    }
}

/// An artifact's cache key: what kind it is, the component's digest, `init`'s config for a
/// snapshot, and the settings `engine` compiles with (the WASI 0.3 engine's differ from the main
/// one's).
fn cache_key(engine: &Engine, format: &str, digest: &str, config_json: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut engine_hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hasher);
    let mut key = Sha256::new();
    for part in [format, digest, config_json, &engine_hasher.finish().to_string()] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    hex::encode(key.finalize())
}

/// The load-time instantiation of a `wasi:http` link's component in `store`, checked: the memory
/// an instance starts with, or why it cannot start (within `limit`, or at all).
fn http_instantiated<T>(
    store: &Store<HostState>,
    limit: u64,
    instantiated: wasmtime::Result<T>,
) -> Result<u64, LoadError> {
    match instantiated {
        Ok(_) => Ok(store.data().limits.memory_high_water as u64),
        Err(_) if store.data().limits.refused => Err(memory_refused(store, limit)),
        Err(e) => Err(LoadError::Internal(format!("cannot instantiate: {e:#}"))),
    }
}

/// A `wasi:http` link's component as loaded: no `init`, no `sluice:middleware` phase, an instance
/// per request (or from its idle ones).
fn http_loaded(
    digest: String,
    pre: LinkPre,
    code: Arc<Component>,
    initial_memory: u64,
    cached: bool,
    started: Instant,
) -> Loaded {
    Loaded {
        digest,
        registration: Registration::http(),
        pre,
        start: Start::Snapshot,
        code,
        instance: None,
        initial_memory,
        cached,
        took: started.elapsed(),
    }
}

fn internal(e: wasmtime::Error) -> LoadError {
    LoadError::Internal(format!("{e:#}"))
}

/// An engine for components with a pool of `instances` component instances (and core instances,
/// memories, tables and stacks in proportion), epoch interruption, and what `configure` adds.
/// Each memory gets [`MEMORY_RESERVATION`] of address space if the process can reserve it; under
/// an address-space limit (`ulimit -v`) it gets [`MAX_MEMORY`] instead, and the guests run with
/// bounds checks, slower but the same.
fn pooled_engine(
    instances: u32,
    configure: impl Fn(&mut wasmtime::Config) -> wasmtime::Result<()>,
) -> Result<Engine, LoadError> {
    let engine = |reservation: u64| {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * 10)
            .total_memories(instances * 2)
            .total_tables(instances * 10)
            .total_stacks(instances)
            .max_memory_size(MAX_MEMORY as usize)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64);
        // Reset each instance's tables in place instead of with madvise: -20% per request for a
        // trivial middleware (benches/middleware.rs; memory kept resident did not help).
        pool.table_keep_resident(64 << 10);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_reservation(reservation)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        configure(&mut config)?;
        profile_guests(&mut config);
        Engine::new(&config)
    };
    engine(MEMORY_RESERVATION).or_else(|e| {
        tracing::warn!(
            error = %format!("{e:#}"),
            "cannot reserve 4 GiB of address space per Wasm memory (is `ulimit -v` set? the pools take ~21 TiB); \
             reserving 1 GiB: middleware run with bounds checks, ~14% slower"
        );
        engine(MAX_MEMORY).map_err(internal)
    })
}

/// `bytes` as MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `init`'s error, told apart: a missing `init` export (wrong world), a deadline, anything else.
fn classify_init_error(e: wasmtime::Error, timed_out: bool) -> LoadError {
    let message = format!("{e:#}");
    if timed_out {
        LoadError::InitFailed(format!("did not return within {}s", INIT_TIMEOUT.as_secs()))
    } else if message.contains("wasm validation failed") {
        LoadError::Invalid(message.trim_start_matches("wasm validation failed: ").to_owned())
    } else if message.contains("does export the function") || message.contains("failed to compile") {
        // wizer's own words for a component without an `init` export, or one that is not valid.
        LoadError::WrongWorld("it has no `init` export".into())
    } else {
        LoadError::InitFailed(message)
    }
}

/// `init`'s result: `result<registration, string>`.
fn registration_from(results: &[Val]) -> Result<Registration, LoadError> {
    let bad = || LoadError::WrongWorld("`init` returned an unexpected type".into());
    let Some(Val::Result(result)) = results.first() else {
        return Err(bad());
    };
    let record = match result {
        Ok(Some(record)) => record,
        Err(Some(message)) => {
            return Err(LoadError::InitRejected(match &**message {
                Val::String(s) => s.clone(),
                other => format!("{other:?}"),
            }));
        }
        _ => return Err(bad()),
    };
    let Val::Record(fields) = &**record else {
        return Err(bad());
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let Some(Val::Flags(phases)) = field("phases") else {
        return Err(bad());
    };
    let names = |name: &str| -> Result<Option<Vec<String>>, LoadError> {
        match field(name) {
            Some(Val::Option(None)) => Ok(None),
            Some(Val::Option(Some(list))) => match &**list {
                Val::List(items) => items
                    .iter()
                    .map(|v| match v {
                        Val::String(s) => Ok(s.to_ascii_lowercase()),
                        _ => Err(bad()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    };
    let has = |phase: Phase| phases.iter().any(|p| p == phase.as_str());
    Ok(Registration {
        request_headers: has(Phase::RequestHeaders),
        request_body: has(Phase::RequestBody),
        response_headers: has(Phase::ResponseHeaders),
        response_body: has(Phase::ResponseBody),
        handle: false,
        request_header_names: names("request-headers")?,
        response_header_names: names("response-headers")?,
    })
}

/// `s` as a WAVE string literal, for wizer's `init("...")` call.
fn wave_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::{IdleSlots, wave_string};

    #[test]
    fn wave_strings_escape_json() {
        assert_eq!(wave_string(r#"{"a":"b\"c"}"#), r#""{\"a\":\"b\\\"c\"}""#);
        assert_eq!(wave_string("x\ny\u{1}"), "\"x\\ny\\u{1}\"");
    }

    #[test]
    fn idle_slots_are_bounded_and_come_back() {
        let slots = IdleSlots {
            held: Default::default(),
            max: 2,
        };
        assert!(slots.try_hold() && slots.try_hold());
        assert!(!slots.try_hold(), "all held");
        slots.release(1);
        assert!(slots.try_hold(), "one came back");
        assert!(!slots.try_hold());
    }
}
