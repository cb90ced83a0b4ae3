//! The config file's schema: one struct per section, mirroring the file (`deny_unknown_fields`,
//! kebab-case keys), with the defaults of every key that has one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::Locator;
use super::{
    AnyDuration, ByteSize, ComponentRef, ConfigError, Duration, HostPattern, ListenAddr, Method, PathPrefix, Percent,
    Target,
};

/// Built-in middleware names, usable as `component = "builtin:<name>"`.
pub const BUILTIN_MIDDLEWARE: &[&str] = crate::artifacts::BUILTIN_NAMES;

/// A whole, validated config file.
#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from, as named to sluice.
    pub path: PathBuf,
    /// The file's text, to locate problems found after parsing (at load).
    pub(super) source: String,
    /// `[server]`
    pub server: ServerConfig,
    /// `[state]`
    pub state: StateConfig,
    /// `[upstreams.NAME]`, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[middleware.NAME]`, by name.
    pub middleware: BTreeMap<String, MiddlewareConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[registries]`
    pub registries: RegistriesConfig,
    /// `[trust]`
    pub trust: TrustConfig,
}

impl Config {
    /// The file's text, as loaded.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The directory relative paths in this file are relative to.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// Where compiled components are cached: `cache-dir`, relative to the config file; default
    /// `.sluice-cache` beside it.
    pub fn cache_dir(&self) -> PathBuf {
        self.base_dir()
            .join(self.server.cache_dir.as_deref().unwrap_or(Path::new(".sluice-cache")))
    }

    /// An error at `span` of this file, for problems found after parsing (e.g. while loading).
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        Locator::new(&self.path, &self.source, None).error_with_key(span, key.into(), message)
    }
}

/// `[server]`: listeners and process settings.
///
/// ```toml
/// [server]
/// listen = ["127.0.0.1:8080"]    # one or more
/// threads = 2                    # worker threads; default: the number of CPUs
/// admin = "127.0.0.1:9090"       # admin API; absent = disabled
/// admin-token-env = "SLUICE_ADMIN_TOKEN"  # bearer token for mutating admin calls
/// watch = true                   # reload when the config or a file it names changes
/// header-timeout = "10s"         # a client's whole request head; past it: 408
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Addresses to accept HTTP on.
    #[serde(default = "default_listen")]
    pub listen: Spanned<Vec<Spanned<ListenAddr>>>,
    /// Worker threads.
    #[serde(default = "default_threads")]
    pub threads: Spanned<usize>,
    /// Admin API address; absent = disabled.
    pub admin: Option<Spanned<ListenAddr>>,
    /// Environment variable holding the bearer token for mutating admin calls.
    pub admin_token_env: Option<String>,
    /// Where precompiled component artifacts are kept (relative to the config file).
    pub cache_dir: Option<PathBuf>,
    /// Reload when the config file or a file it names changes.
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Where the access log goes: `off`, `stdout`, or a file path (relative to the config file).
    #[serde(default)]
    pub access_log: AccessLog,
    /// TLS listeners: one entry per certificate; entries sharing an `addr` are one listener that
    /// picks the certificate by SNI (the first is the default).
    #[serde(default)]
    pub tls: Vec<Spanned<TlsListener>>,
    /// Plain listeners also accept HTTP/2 with prior knowledge (h2c).
    #[serde(default)]
    pub h2c: bool,
    /// How long `SIGTERM` (and the old process of an upgrade) waits for in-flight requests.
    #[serde(default = "default_grace_period")]
    pub grace_period: AnyDuration,
    /// Deadline for a client's whole request head, from its first byte; past it: 408, closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Requests served at once, past which a new one is answered 503 with `Retry-After`.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: Spanned<usize>,
    /// The Unix socket an upgrade hands the listening sockets over on (default: in the temporary
    /// directory, named after the config file's path).
    pub upgrade_sock: Option<PathBuf>,
    /// Where the running process writes its pid, for `sluice run --upgrade` to find it (default:
    /// beside the upgrade socket).
    pub pid_file: Option<PathBuf>,
    /// Export the request and middleware spans with OTLP.
    pub otlp: Option<Spanned<OtlpConfig>>,
}

/// `[server] otlp`: the request and middleware spans, exported with OTLP over HTTP (protobuf) to a
/// collector, typically an agent on the same host.
///
/// ```toml
/// otlp = { endpoint = "http://127.0.0.1:4318/v1/traces", service-name = "sluice", sample-ratio = 0.1 }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OtlpConfig {
    /// The collector's traces URL, `http://` only.
    pub endpoint: Spanned<String>,
    /// The `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share (0–1) of traces sluice starts that are exported; a client's `traceparent`
    /// sampled flag is followed as it is.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Spanned<f64>,
    /// Deadline for one export.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: Duration,
}

fn default_service_name() -> String {
    "sluice".to_owned()
}

fn default_sample_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

fn default_otlp_timeout() -> Duration {
    Duration::from_millis(5_000)
}

impl Config {
    /// `[server] upgrade-sock` and `pid-file`, defaults filled in: both in the temporary directory,
    /// named after a digest of the config file's absolute path, so every config has its own.
    pub fn upgrade_paths(&self) -> (PathBuf, PathBuf) {
        use sha2::Digest;
        let absolute = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let digest = sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes());
        let stem = std::env::temp_dir().join(format!("sluice-{}", hex::encode(&digest[..6])));
        let base = self.base_dir();
        let sock = self
            .server
            .upgrade_sock
            .as_ref()
            .map_or_else(|| stem.with_extension("sock"), |p| base.join(p));
        let pid = self
            .server
            .pid_file
            .as_ref()
            .map_or_else(|| stem.with_extension("pid"), |p| base.join(p));
        (sock, pid)
    }
}

fn default_max_in_flight() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}

fn default_header_timeout() -> Duration {
    Duration::from_millis(10_000)
}

fn default_grace_period() -> AnyDuration {
    AnyDuration(std::time::Duration::from_millis(5_000))
}

/// `[server] tls = [{ addr, cert, key }]`: one certificate of a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsListener {
    /// The address to accept TLS on.
    pub addr: ListenAddr,
    /// PEM certificate chain, leaf first (relative to the config file).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[server] access-log`: one JSON line per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    #[default]
    Off,
    /// To standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            "" => return Err(serde::de::Error::custom("expected \"off\", \"stdout\" or a file path")),
            path => AccessLog::File(PathBuf::from(path)),
        })
    }
}

fn default_watch() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            threads: default_threads(),
            admin: None,
            admin_token_env: None,
            cache_dir: None,
            watch: true,
            access_log: AccessLog::Off,
            tls: Vec::new(),
            h2c: false,
            grace_period: default_grace_period(),
            header_timeout: default_header_timeout(),
            max_in_flight: default_max_in_flight(),
            upgrade_sock: None,
            pid_file: None,
            otlp: None,
        }
    }
}

fn default_listen() -> Spanned<Vec<Spanned<ListenAddr>>> {
    let addr = ListenAddr("127.0.0.1:8080".parse().expect("a valid literal address"));
    Spanned::new(0..0, vec![Spanned::new(0..0, addr)])
}

fn default_threads() -> Spanned<usize> {
    Spanned::new(0..0, std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `[registries]`: how components named `oci://…` are pulled.
///
/// ```toml
/// [registries]
/// insecure = ["127.0.0.1:5000"]              # reached over plain http://; everything else is HTTPS
/// credentials-file = "docker-config.json"    # docker-style: {"auths": {"HOST": {"auth": "…"}}}
/// timeout = "30s"                            # to connect, and per read
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistriesConfig {
    /// `HOST[:PORT]`s spoken to over `http://`.
    #[serde(default)]
    pub insecure: Vec<Spanned<String>>,
    /// A docker-style `config.json` with each registry's credentials (relative to the config
    /// file); absent: anonymous, unless `SLUICE_REGISTRY_CONFIG` names one.
    pub credentials_file: Option<Spanned<PathBuf>>,
    /// Deadline to connect to a registry, and for each read.
    #[serde(default = "default_registry_timeout")]
    pub timeout: Duration,
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        RegistriesConfig {
            insecure: Vec::new(),
            credentials_file: None,
            timeout: default_registry_timeout(),
        }
    }
}

fn default_registry_timeout() -> Duration {
    Duration::from_millis(30_000)
}

impl Config {
    /// How this config's `oci://` components are pulled; `cache-dir` holds what was pulled.
    pub fn registry_settings(&self) -> crate::oci::Settings {
        let from_env = || std::env::var_os("SLUICE_REGISTRY_CONFIG").map(PathBuf::from);
        crate::oci::Settings {
            insecure: self.registries.insecure.iter().map(|h| h.get_ref().clone()).collect(),
            credentials_file: self
                .registries
                .credentials_file
                .as_ref()
                .map(|f| self.base_dir().join(f.get_ref()))
                .or_else(from_env),
            timeout: self.registries.timeout.0,
        }
    }

    /// The public key `[middleware.NAME]`'s components must be signed with: its `verify`, else
    /// `[trust]`'s; with the key (where it is written, for errors).
    pub fn public_key_for(&self, middleware: &str) -> Option<&Spanned<PathBuf>> {
        let own = self.middleware.get(middleware).and_then(|mw| mw.verify.as_ref());
        own.map(|v| &v.get_ref().public_key_file)
            .or(self.trust.public_key_file.as_ref())
    }
}

/// `[trust]`: every component that is not built in must carry a valid cosign signature by this
/// key (`verify` on a middleware overrides it).
///
/// ```toml
/// [trust]
/// public-key-file = "cosign.pub"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrustConfig {
    /// PEM public key (what `cosign generate-key-pair` writes to `cosign.pub`), relative to the
    /// config file.
    pub public_key_file: Option<Spanned<PathBuf>>,
}

/// `[middleware.NAME] verify`: the key its components must be signed with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyConfig {
    /// PEM public key, relative to the config file.
    pub public_key_file: Spanned<PathBuf>,
}

/// `[state]`: where middleware state lives.
///
/// ```toml
/// [state]
/// backend = "redis"                  # "memory" (default) | "redis"
/// url = "redis://127.0.0.1:6379/0"   # with backend = "redis"
/// timeout = "250ms"                  # per Redis operation, connecting included
/// key-prefix = "sluice:"             # before every key
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateConfig {
    /// The backend.
    #[serde(default = "spanned_default")]
    pub backend: Spanned<StateBackend>,
    /// The Redis URL, with `backend = "redis"`.
    pub url: Option<Spanned<String>>,
    /// Deadline for each Redis operation.
    #[serde(default = "default_state_timeout")]
    pub timeout: Duration,
    /// Put before every Redis key.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: spanned_default(),
            url: None,
            timeout: default_state_timeout(),
            key_prefix: default_key_prefix(),
        }
    }
}

impl StateConfig {
    /// The Redis settings, with `backend = "redis"`.
    pub fn redis(&self) -> Option<crate::state::RedisSettings> {
        match (self.backend.get_ref(), &self.url) {
            (StateBackend::Redis, Some(url)) => Some(crate::state::RedisSettings {
                url: url.get_ref().clone(),
                timeout: self.timeout.0,
                key_prefix: self.key_prefix.clone(),
            }),
            _ => None,
        }
    }
}

fn default_state_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_key_prefix() -> String {
    "sluice:".to_owned()
}

/// A default value for a key that was left out (its span is empty).
fn spanned_default<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

/// `[state] backend`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackend {
    /// In-process, shared by all worker threads.
    #[default]
    Memory,
    /// A Redis server, shared by every sluice instance using it.
    Redis,
}

/// `[upstreams.NAME]`: a pool of targets.
///
/// ```toml
/// [upstreams.users]
/// targets = ["127.0.0.1:3000", "127.0.0.1:3001"]
/// balance = "round-robin"      # | "random" | "hash" (on the client address)
/// connect-timeout = "1s"
/// read-timeout = "30s"
/// response-head-timeout = "60s"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// `host:port` targets; at least one.
    pub targets: Spanned<Vec<Spanned<Target>>>,
    /// How a target is picked for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Deadline for establishing a connection to a target.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Deadline for each read from a target (the response head, and each body chunk).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Deadline for the whole response head, from the request's last byte sent; default: the
    /// longer of 60 s and `read-timeout`.
    pub response_head_timeout: Option<Duration>,
    /// Connect to the targets with TLS.
    #[serde(default)]
    pub tls: bool,
    /// The server name to send and verify (default: the target's host as written).
    pub sni: Option<String>,
    /// PEM CA certificates to verify the targets with, instead of the system's roots.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Verify the targets' certificates; `false` only by explicit choice.
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// How many times an idempotent request whose connection failed is tried again, each time
    /// on another target.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Active health checks: each target is asked for `path` every `interval`.
    pub health_check: Option<Spanned<HealthCheckConfig>>,
    /// Passive health: a target that fails `failures` connections in a row is taken out of
    /// rotation for `eject-for`.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
}

fn default_verify() -> bool {
    true
}

fn default_retries() -> u32 {
    1
}

/// `[upstreams.NAME] health-check`: active HTTP checks of every target.
///
/// ```toml
/// health-check = { path = "/healthz", interval = "5s", timeout = "1s", healthy = 2, unhealthy = 3 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthCheckConfig {
    /// The path (and query) to `GET`; a 2xx or 3xx answer is a pass.
    pub path: Spanned<String>,
    /// Time between the checks of a target.
    #[serde(default = "default_check_interval")]
    pub interval: Spanned<Duration>,
    /// Deadline for one check: connecting, the answer and its body.
    #[serde(default = "default_check_timeout")]
    pub timeout: Spanned<Duration>,
    /// Passes in a row that bring an unhealthy target back.
    #[serde(default = "default_healthy")]
    pub healthy: Spanned<u32>,
    /// Failures in a row that take a healthy target out of rotation.
    #[serde(default = "default_unhealthy")]
    pub unhealthy: Spanned<u32>,
    /// The `Host` header of the check; default: `sni`, else the target's host as written.
    pub host: Option<String>,
}

fn default_check_interval() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_millis(5_000))
}

fn default_check_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_millis(1_000))
}

fn default_healthy() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

fn default_unhealthy() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

/// `[upstreams.NAME] passive-health`: ejection after connection failures seen by requests.
///
/// ```toml
/// passive-health = { failures = 1, eject-for = "10s" }   # failures = 0 turns it off
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PassiveHealthConfig {
    /// Failed connections in a row that eject a target; 0: never.
    #[serde(default = "default_passive_failures")]
    pub failures: u32,
    /// How long an ejected target stays out of rotation.
    #[serde(default = "default_eject_for")]
    pub eject_for: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            failures: default_passive_failures(),
            eject_for: default_eject_for(),
        }
    }
}

fn default_passive_failures() -> u32 {
    1
}

fn default_eject_for() -> Duration {
    Duration::from_millis(10_000)
}

fn default_connect_timeout() -> Duration {
    Duration::from_millis(1_000)
}

fn default_read_timeout() -> Duration {
    Duration::from_millis(30_000)
}

/// `[upstreams.NAME] balance`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// A target chosen at random per request.
    Random,
    /// Consistent hashing on the client address: one client sticks to one target.
    Hash,
}

/// `[middleware.NAME]`: a named, configured instance of a component.
///
/// ```toml
/// [middleware.jwt]
/// component = "builtin:auth-jwt"   # or a path to a .wasm component, relative to the config file
/// config = { issuer = "https://id.example.com" }
/// on-error = "deny"                # | "allow"
/// timeout = "20ms"
/// memory-limit = "32MiB"
/// allow-hosts = []                  # "host:port" it may call with outbound HTTP
/// outbound-timeout = "1s"          # connect + response head; default: `timeout`
/// outbound-max-response = "1MiB"   # largest outbound response body
/// instances = "reused"             # | "fresh": a new instance per request
/// reuse = { max-requests = 10000 } # bounds on a reused instance's life
/// poll = "30s"                     # with component = "oci://…:TAG": follow the tag
/// verify = { public-key-file = "cosign.pub" }  # only components signed with this key
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MiddlewareConfig {
    /// `builtin:<name>` or a path to a `.wasm` component.
    pub component: Spanned<ComponentRef>,
    /// An optional version label, shown by the admin API.
    pub version: Option<String>,
    /// The component's own configuration, given to its `init` as JSON.
    #[serde(default = "spanned_default")]
    pub config: Spanned<toml::Table>,
    /// What a trap, timeout or bad output does to the request.
    #[serde(default)]
    pub on_error: OnError,
    /// Deadline per call.
    #[serde(default = "default_middleware_timeout")]
    pub timeout: Duration,
    /// Largest linear memory the component may grow to.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// `host:port` pairs the component may reach with outbound HTTP; empty = none.
    #[serde(default)]
    pub allow_hosts: Vec<Spanned<Target>>,
    /// Deadline for an outbound request's connection and response head; default: `timeout`.
    pub outbound_timeout: Option<Duration>,
    /// Largest outbound response body accepted.
    #[serde(default = "default_outbound_max_response")]
    pub outbound_max_response: ByteSize,
    /// A second version taking a share of requests.
    pub canary: Option<CanaryConfig>,
    /// Reused instances (the default) or a fresh instance per request.
    #[serde(default)]
    pub instances: Instances,
    /// Bounds on a reused instance's life; default: [`ReuseConfig::default`].
    pub reuse: Option<Spanned<ReuseConfig>>,
    /// How often an `oci://…:TAG` component's tag is checked; a moved tag is pulled and swapped in.
    pub poll: Option<Spanned<Duration>>,
    /// Only components signed with this key load (overrides `[trust]`).
    pub verify: Option<Spanned<VerifyConfig>>,
}

/// `[middleware.NAME] instances`: how much one request's call is isolated from the next's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// An instance serves request after request, within the `reuse` bounds, and is retired after a
    /// failed call: what a request leaves in its memory, a later one can see.
    #[default]
    Reused,
    /// A fresh instance from the initialized snapshot for every request: nothing one request
    /// leaves behind is visible to another. For middleware handling one tenant's data that must
    /// never reach another's.
    Fresh,
}

/// `[middleware.NAME] reuse`: how long a reused instance serves.
///
/// ```toml
/// reuse = { max-requests = 10000, max-memory = "32MiB" }
/// ```
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReuseConfig {
    /// Requests one instance serves before it is retired.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// An instance whose linear memory has grown past this is retired after its request;
    /// default: halfway from the memory an instance starts with to `memory-limit`.
    pub max_memory: Option<ByteSize>,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        ReuseConfig {
            max_requests: default_max_requests(),
            max_memory: None,
        }
    }
}

/// Each retirement costs a successor's `init` (milliseconds for a component that compiles
/// schemas or regexes), amortized over the requests its instance served: at 1,000 that was ~10 µs
/// of CPU a request for the four built-ins in the proxy, 9% of their route (docs/benchmarks.md).
fn default_max_requests() -> u32 {
    10_000
}

fn default_outbound_max_response() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_middleware_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_memory_limit() -> ByteSize {
    ByteSize(64 << 20)
}

/// `[middleware.NAME] on-error`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: the request is answered with an error.
    #[default]
    Deny,
    /// Fail open: the request continues as if the middleware had said "next".
    Allow,
}

/// `[middleware.NAME.canary]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CanaryConfig {
    /// The canary's component.
    pub component: Spanned<ComponentRef>,
    /// Percent of requests (0–100) that run the canary.
    pub weight: Percent,
    /// An optional version label.
    pub version: Option<String>,
}

/// `[[route]]`: which requests go where, through which middleware.
///
/// ```toml
/// [[route]]
/// name = "users"
/// host = "api.example.com"     # optional; exact or "*.example.com"
/// path-prefix = "/users"       # default "/"
/// methods = ["GET", "POST"]    # optional; default: any
/// upstream = "users"
/// middleware = ["jwt"]         # optional; run in this order
/// max-body = "1MiB"            # largest body a body phase buffers
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteConfig {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Host to match; absent = any host.
    pub host: Option<Spanned<HostPattern>>,
    /// Path prefix to match.
    #[serde(default = "spanned_default")]
    pub path_prefix: Spanned<PathPrefix>,
    /// Methods to match; absent = any method.
    pub methods: Option<Spanned<Vec<Spanned<Method>>>>,
    /// The upstream to send matching requests to.
    pub upstream: Spanned<String>,
    /// Middleware to run, in order.
    #[serde(default)]
    pub middleware: Vec<Spanned<String>>,
    /// Largest request or response body a body phase will buffer.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
