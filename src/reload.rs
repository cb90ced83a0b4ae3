//! Hot swap: every change to what is live (a config reload, an uploaded component, a rollback)
//! builds a complete new [`Snapshot`] off the request path and stores it with one `ArcSwap::store`.
//! A request keeps the snapshot it started with, so all its phases run on the same versions. A
//! build that fails changes nothing: the old snapshot keeps serving, and the error is logged,
//! counted (`sluice_reloads_total{result="error"}`) and shown by `GET /admin/middleware`.
//!
//! Triggers: the config file or a file it references changes ([`watch`]), `SIGHUP`,
//! `POST /admin/reload`, `PUT /admin/middleware/NAME/component`,
//! `POST /admin/middleware/NAME/rollback`. One reload runs at a time. Docs: docs/hot-swap.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::chain::{Deployment, LoadedMiddleware, Source};
use crate::config::{self, ComponentRef, Config};
use crate::error::Error;
use crate::live::{Loader, Pin, Snapshot};
use crate::metrics::{self, VersionLabels};
use crate::runtime::Runtime;

/// What started a snapshot build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The config file or a file it references changed.
    File,
    /// `SIGHUP`.
    Sighup,
    /// `POST /admin/reload`.
    Admin,
    /// `PUT /admin/middleware/NAME/component`.
    Upload,
    /// `POST /admin/middleware/NAME/rollback`.
    Rollback,
    /// `sluice run` starting.
    Start,
    /// A polled OCI tag moved (`poll`).
    Poll,
}

impl Trigger {
    /// The metric label and the name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Sighup => "sighup",
            Trigger::Admin => "admin",
            Trigger::Upload => "upload",
            Trigger::Rollback => "rollback",
            Trigger::Start => "start",
            Trigger::Poll => "poll",
        }
    }
}

/// The last snapshot build, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it finished.
    pub at: SystemTime,
    /// What started it.
    pub trigger: Trigger,
    /// How long building (and swapping) took.
    pub took: Duration,
    /// Why it failed; `None`: it is live.
    pub error: Option<String>,
    /// The middleware whose versions it changed.
    pub changed: Vec<String>,
}

/// Why an upload or a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No `[middleware.NAME]` is live.
    #[error("no middleware named `{0}`")]
    UnknownMiddleware(String),
    /// The uploaded component cannot serve (not a component, wrong world, `init` rejects the config).
    #[error("{0}")]
    Rejected(String),
    /// Rollback without an earlier version.
    #[error("middleware `{0}` has no previous version to roll back to")]
    NoPrevious(String),
}

/// Builds and swaps snapshots; the only writer of the live [`Snapshot`].
pub struct Reloader {
    live: Arc<ArcSwap<Snapshot>>,
    runtime: Arc<Runtime>,
    path: PathBuf,
    /// The `[server]` settings the process started with that only a restart changes.
    started_with: RestartOnly,
    /// Held for the whole of a build and swap: one at a time.
    versions: tokio::sync::Mutex<Versions>,
    status: Mutex<Status>,
}

/// What the reloader remembers across snapshots.
#[derive(Default)]
struct Versions {
    /// What the live snapshot was built from ([`fingerprint_of`] its config before the build
    /// read the files): the watcher reloads only content that differs from it.
    built_from: Fingerprint,
    /// Components replacing what the config names (uploads, rollbacks), by middleware.
    pins: BTreeMap<String, Pin>,
    /// The version each middleware served before its last change, kept loaded for rollback.
    previous: BTreeMap<String, Arc<LoadedMiddleware>>,
}

#[derive(Default, Clone)]
struct Status {
    last: Option<Attempt>,
    /// The last failed build's errors about each middleware, until a build succeeds.
    errors: BTreeMap<String, String>,
    /// Why the last poll of each middleware's tag failed, until one succeeds.
    poll_errors: BTreeMap<String, String>,
}

/// One middleware as the admin API lists it.
#[derive(Debug, Clone)]
pub struct MiddlewareStatus {
    /// Its name.
    pub name: String,
    /// The primary version.
    pub primary: Arc<LoadedMiddleware>,
    /// The canary version and its weight.
    pub canary: Option<(Arc<LoadedMiddleware>, u8)>,
    /// The version a rollback would restore.
    pub previous: Option<Arc<LoadedMiddleware>>,
    /// Why the last build failed for this middleware, if it did.
    pub last_error: Option<String>,
}

impl Reloader {
    /// A reloader for the config file at `path`, whose snapshot `live` serves, built from
    /// `built_from` ([`fingerprint_of`] its config, taken before the load).
    pub fn new(
        live: Arc<ArcSwap<Snapshot>>,
        runtime: Arc<Runtime>,
        path: PathBuf,
        built_from: Fingerprint,
    ) -> Arc<Self> {
        let started_with = RestartOnly::of(&live.load().config.server);
        let reloader = Arc::new(Reloader {
            live,
            runtime,
            path,
            started_with,
            versions: tokio::sync::Mutex::new(Versions {
                built_from,
                ..Versions::default()
            }),
            status: Mutex::new(Status::default()),
        });
        reloader.publish_versions(&reloader.live.load());
        reloader
    }

    /// What the live snapshot was built from (waits for a build in progress).
    pub async fn built_from(&self) -> Fingerprint {
        self.versions.lock().await.built_from.clone()
    }

    /// The snapshot serving new requests.
    pub fn live(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The last build, if any since start.
    pub fn last_attempt(&self) -> Option<Attempt> {
        self.status.lock().ok().and_then(|s| s.last.clone())
    }

    /// Every live middleware with its versions and last error.
    pub async fn middleware(&self) -> Vec<MiddlewareStatus> {
        let versions = self.versions.lock().await;
        let (errors, poll_errors) = self
            .status
            .lock()
            .map(|s| (s.errors.clone(), s.poll_errors.clone()))
            .unwrap_or_default();
        let live = self.live();
        live.middleware
            .iter()
            .map(|(name, deployment)| MiddlewareStatus {
                name: name.clone(),
                primary: deployment.primary.clone(),
                canary: deployment.canary.as_ref().map(|c| (c.version.clone(), c.weight)),
                previous: versions.previous.get(name).cloned(),
                last_error: errors.get(name).or(poll_errors.get(name)).cloned(),
            })
            .collect()
    }

    /// Reads the config file again and swaps in what it describes. Middleware whose component,
    /// config and settings did not change keep serving as they are.
    pub async fn reload(&self, trigger: Trigger) -> Result<Attempt, Error> {
        let started = Instant::now();
        let mut versions = self.versions.lock().await;
        // A file caught between an editor's truncate and write is empty: never swap that in.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == 0) {
            let error = Error::EmptyConfig(self.path.clone());
            self.failed(trigger, started, error.to_string(), None);
            return Err(error);
        }
        let current = self.live.load_full();
        let built = match config::load(&self.path) {
            Ok(config) => {
                let read = fingerprint_off_thread(&config).await;
                let next = Snapshot::rebuild(Arc::new(config), &self.runtime, Some(&current), &versions.pins).await;
                next.map(|next| (next, read))
            }
            Err(errors) => Err(Error::Config(errors)),
        };
        match built {
            Ok((next, read)) => {
                versions.built_from = read;
                let pending = self.started_with.changed(&RestartOnly::of(&next.config.server));
                if !pending.is_empty() {
                    tracing::warn!(
                        keys = %pending.iter().map(|k| format!("server.{k}")).collect::<Vec<_>>().join(", "),
                        "the reload changed settings that take effect on restart (or `sluice run --upgrade`); the rest is live"
                    );
                }
                // A pin lasts while the config names what it replaced; the build dropped the others.
                versions.pins.retain(|name, _| {
                    next.middleware
                        .get(name)
                        .is_some_and(|d| d.primary.provenance.source != Source::Config)
                });
                Ok(self.swap(&mut versions, &current, next, trigger, started))
            }
            Err(error) => {
                let mut per_middleware = BTreeMap::new();
                if let Error::Config(errors) = &error {
                    for e in &errors.0 {
                        if let Some(name) = &e.middleware {
                            per_middleware.insert(name.clone(), e.to_string());
                        }
                    }
                }
                self.failed(trigger, started, error.to_string(), Some(per_middleware));
                Err(error)
            }
        }
    }

    /// Swaps in `component` as middleware `name`'s primary version, once it has loaded and its
    /// `init` accepted the config. It stays until the config names another component for `name`.
    pub async fn upload(&self, name: &str, component: Bytes) -> Result<Attempt, SwapError> {
        let started = Instant::now();
        let mut versions = self.versions.lock().await;
        let current = self.live.load_full();
        let (Some(deployment), Some(mw)) = (current.middleware.get(name), current.config.middleware.get(name)) else {
            return Err(SwapError::UnknownMiddleware(name.to_owned()));
        };
        if let Some(key) = current.config.public_key_for(name) {
            let message = format!(
                "middleware `{name}` only loads components signed with `{}`, and an upload carries no signature: publish it and sign it (docs/fleet.md), or name a signed file in the config",
                key.get_ref().display()
            );
            self.failed(Trigger::Upload, started, message.clone(), None);
            return Err(SwapError::Rejected(message));
        }
        let loader = Loader {
            config: &current.config,
            name,
            mw,
            runtime: &self.runtime,
            state: &current.state,
            registry: current.registry.as_ref(),
        };
        let replaces = deployment.primary.provenance.configured.clone();
        let resolved = deployment.primary.provenance.resolved.clone();
        let loaded = match loader.upload(component.clone(), replaces.clone(), resolved).await {
            Ok(loaded) => loaded,
            Err(e) => {
                let message = format!("the uploaded component cannot serve as `{name}`: {e}");
                self.failed(Trigger::Upload, started, message.clone(), None);
                return Err(SwapError::Rejected(message));
            }
        };
        versions.pins.insert(
            name.to_owned(),
            Pin {
                component,
                source: Source::Upload,
                replaces,
                version: None,
            },
        );
        let next = current.with_primary(name, loaded);
        Ok(self.swap(&mut versions, &current, next, Trigger::Upload, started))
    }

    /// Swaps middleware `name`'s previous version back in (it is still loaded: instant).
    pub async fn rollback(&self, name: &str) -> Result<Attempt, SwapError> {
        let started = Instant::now();
        let mut versions = self.versions.lock().await;
        let current = self.live.load_full();
        let Some(deployment) = current.middleware.get(name) else {
            return Err(SwapError::UnknownMiddleware(name.to_owned()));
        };
        let Some(previous) = versions.previous.get(name).cloned() else {
            return Err(SwapError::NoPrevious(name.to_owned()));
        };
        let configured = &deployment.primary.provenance.configured;
        let previous = if previous.provenance.source == Source::Config && previous.provenance.configured == *configured
        {
            versions.pins.remove(name);
            previous
        } else {
            let pin = Pin {
                component: previous.artifact.component.clone(),
                source: Source::Rollback,
                replaces: configured.clone(),
                version: previous.provenance.version.clone(),
            };
            versions.pins.insert(name.to_owned(), pin);
            Arc::new(previous.restored(&deployment.primary.provenance))
        };
        let next = current.with_primary(name, previous);
        Ok(self.swap(&mut versions, &current, next, Trigger::Rollback, started))
    }

    /// Stores `next`; what it replaced becomes each changed middleware's previous version.
    fn swap(
        &self,
        versions: &mut Versions,
        current: &Snapshot,
        next: Snapshot,
        trigger: Trigger,
        started: Instant,
    ) -> Attempt {
        let mut changed = Vec::new();
        for (name, deployment) in &next.middleware {
            let before = current.middleware.get(name);
            if let Some(before) = before
                && !Arc::ptr_eq(&before.primary, &deployment.primary)
            {
                versions.previous.insert(name.clone(), before.primary.clone());
            }
            let canary = |d: &Deployment| d.canary.as_ref().map(|c| c.version.clone());
            let unchanged = before.is_some_and(|before| {
                Arc::ptr_eq(&before.primary, &deployment.primary)
                    && match (canary(before), canary(deployment)) {
                        (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
                        (a, b) => a.is_none() && b.is_none(),
                    }
            });
            if !unchanged {
                changed.push(name.clone());
            }
        }
        versions.previous.retain(|name, _| next.middleware.contains_key(name));
        self.publish_versions(&next);
        start_health_checks(&next);
        self.live.store(Arc::new(next));
        let attempt = Attempt {
            at: SystemTime::now(),
            trigger,
            took: started.elapsed(),
            error: None,
            changed,
        };
        metrics::count_reload(trigger.as_str(), true);
        tracing::info!(
            trigger = trigger.as_str(),
            changed = %attempt.changed.join(", "),
            took_ms = attempt.took.as_secs_f64() * 1e3,
            "new snapshot serving"
        );
        if let Ok(mut status) = self.status.lock() {
            status.last = Some(attempt.clone());
            status.errors.clear();
        }
        attempt
    }

    fn failed(
        &self,
        trigger: Trigger,
        started: Instant,
        error: String,
        per_middleware: Option<BTreeMap<String, String>>,
    ) {
        metrics::count_reload(trigger.as_str(), false);
        tracing::error!(
            trigger = trigger.as_str(),
            "reload failed, the running config keeps serving:\n{error}"
        );
        if let Ok(mut status) = self.status.lock() {
            status.last = Some(Attempt {
                at: SystemTime::now(),
                trigger,
                took: started.elapsed(),
                error: Some(error),
                changed: Vec::new(),
            });
            if let Some(per_middleware) = per_middleware {
                status.errors = per_middleware;
            }
        }
    }

    /// Records how polling middleware `name`'s tag went, for `GET /admin/middleware`: why it
    /// failed, until a poll succeeds.
    fn polled(&self, name: &str, failure: Option<String>) {
        if let Some(message) = &failure {
            tracing::warn!(middleware = name, "{message}");
        }
        if let Ok(mut status) = self.status.lock() {
            match failure {
                Some(message) => status.poll_errors.insert(name.to_owned(), message),
                None => status.poll_errors.remove(name),
            };
        }
    }

    /// `sluice_middleware_version_info`: the versions `snapshot` serves.
    fn publish_versions(&self, snapshot: &Snapshot) {
        let family = &metrics::metrics().versions;
        family.clear();
        for (name, deployment) in &snapshot.middleware {
            let canary = deployment.canary.as_ref().map(|c| (&c.version, "canary"));
            for (version, role) in std::iter::once((&deployment.primary, "primary")).chain(canary) {
                family
                    .get_or_create(&VersionLabels {
                        middleware: name.clone(),
                        version: version.version_label(),
                        digest: version.artifact.digest.clone(),
                        role: role.to_owned(),
                    })
                    .set(1);
            }
        }
    }
}

/// The files whose change triggers a reload: the config file, every component file it names
/// (with its `.sig` when it must be signed), every public key, and every `-file` key in a
/// middleware's `config`.
pub fn watched_files(config: &Config) -> BTreeSet<PathBuf> {
    let base = config.base_dir();
    let mut files = BTreeSet::from([config.path.clone()]);
    for (name, mw) in &config.middleware {
        if let Some(key) = config.public_key_for(name) {
            files.insert(base.join(key.get_ref()));
        }
        let components = std::iter::once(&mw.component).chain(mw.canary.as_ref().map(|c| &c.component));
        for component in components {
            if let ComponentRef::File(file) = component.get_ref() {
                files.insert(base.join(file));
                if config.public_key_for(name).is_some() {
                    files.insert(base.join(format!("{}.sig", file.display())));
                }
            }
        }
        for (key, value) in mw.config.get_ref() {
            if key.ends_with("-file")
                && let Some(path) = value.as_str()
            {
                files.insert(base.join(path));
            }
        }
    }
    for tls in &config.server.tls {
        files.insert(base.join(&tls.get_ref().cert));
        files.insert(base.join(&tls.get_ref().key));
    }
    for up in config.upstreams.values() {
        if let Some(ca) = &up.ca_file {
            files.insert(base.join(ca.get_ref()));
        }
    }
    files.into_iter().filter_map(|f| canonical(&f)).collect()
}

/// `path` with its directory resolved (the file itself may be replaced, or missing for a while).
fn canonical(path: &Path) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(dir.canonicalize().ok()?.join(path.file_name()?))
}

/// How long every watched file must stay unchanged before the watcher reloads: a save written in
/// parts (truncate, then several writes), or a deploy copying a config and its components one by
/// one, is read once it has settled, not halfway.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What the watched files hold, as far as a reload cares: each one's length and sha256, `None`
/// while it is missing.
pub type Fingerprint = BTreeMap<PathBuf, Option<(u64, [u8; 32])>>;

/// What `config`'s files ([`watched_files`]) hold: the config file as it was parsed, the others
/// as they are now. Taken before a build reads them, it is what the build read or older, so that
/// whatever changes after it is a change.
pub fn fingerprint_of(config: &Config) -> Fingerprint {
    as_parsed(read_fingerprint(&watched_files(config)), config)
}

/// [`fingerprint_of`], its reads off the async threads: components are large.
async fn fingerprint_off_thread(config: &Config) -> Fingerprint {
    as_parsed(fingerprint(&watched_files(config)).await, config)
}

/// `fingerprint` with `config`'s own file as it was parsed.
fn as_parsed(mut fingerprint: Fingerprint, config: &Config) -> Fingerprint {
    if let Some(path) = canonical(&config.path) {
        fingerprint.insert(path, Some(content_of(config.source().as_bytes())));
    }
    fingerprint
}

fn content_of(bytes: &[u8]) -> (u64, [u8; 32]) {
    (bytes.len() as u64, Sha256::digest(bytes).into())
}

fn read_fingerprint(files: &BTreeSet<PathBuf>) -> Fingerprint {
    files
        .iter()
        .map(|path| (path.clone(), std::fs::read(path).ok().map(|bytes| content_of(&bytes))))
        .collect()
}

/// [`read_fingerprint`], off the async threads: components are large.
async fn fingerprint(files: &BTreeSet<PathBuf>) -> Fingerprint {
    let files = files.clone();
    tokio::task::spawn_blocking(move || read_fingerprint(&files))
        .await
        .unwrap_or_default()
}

/// Whether a file event can mean new content. Opening and reading (what every reload itself does
/// to the config and its components), and metadata changes (`touch`, `chmod`), cannot.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        EventKind::Access(access) => matches!(access, AccessKind::Close(AccessMode::Write)),
    }
}

/// Reloads whenever the content of a file of [`watched_files`] differs from what the live snapshot
/// was built from ([`Reloader::built_from`], whichever reload built it), once it has
/// [settled](SETTLE), until the process ends. Directories are watched, so files replaced by a
/// rename (what editors and deploy tools do) are seen too. Content is compared, not events
/// counted: a file rewritten with the same bytes, or only opened, reloads nothing, nor does a
/// change another reload (`SIGHUP`, the admin API) already loaded.
pub async fn watch(reloader: Arc<Reloader>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let check = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && may_change_content(&event.kind)
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
            return;
        }
    };
    let mut dirs = BTreeSet::new();
    // The files of the live config, their directories watched: after any reload, what it names.
    let mut rewatch = |dirs: &mut BTreeSet<PathBuf>| {
        let files = watched_files(&reloader.live().config);
        for dir in files.iter().filter_map(|f| f.parent()) {
            if !dirs.contains(dir) {
                match watcher.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        dirs.insert(dir.to_owned());
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
                }
            }
        }
        files
    };
    let mut files = rewatch(&mut dirs);
    // A change made between the load and the directories being watched sent no event: look once.
    if let Some(file) = files.first() {
        let _ = check.send(file.clone());
    }
    // What this watcher's last reload failed on: not tried again until it changes.
    let mut failed: Option<Fingerprint> = None;
    while let Some(path) = rx.recv().await {
        files = rewatch(&mut dirs);
        if !files.contains(&path) {
            continue;
        }
        let mut seen = fingerprint(&files).await;
        loop {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let now = fingerprint(&files).await;
            if now == seen {
                break;
            }
            seen = now;
        }
        if seen == reloader.built_from().await || failed.as_ref() == Some(&seen) {
            continue;
        }
        failed = match reloader.reload(Trigger::File).await {
            Ok(_) => None,
            Err(_) => Some(seen),
        };
    }
}

/// How often [`poll`] looks for a middleware whose `poll` interval is up.
const POLL_TICK: Duration = Duration::from_millis(250);

/// Follows the OCI tags of every middleware with `poll`, until the process ends: when a tag
/// resolves to another digest than the one serving, the config is reloaded, which pulls, checks
/// and swaps in the new version like any reload (in-flight requests finish on theirs). A registry
/// that cannot be reached, or a new version that fails to load, leaves the serving one in place;
/// why is the middleware's `last-error` in `GET /admin/middleware`.
pub async fn poll(reloader: Arc<Reloader>) {
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::time::sleep(POLL_TICK).await;
        let live = reloader.live();
        let Some(registry) = live.registry.clone() else {
            continue;
        };
        let now = Instant::now();
        let mut moved = Vec::new();
        for (name, mw) in &live.config.middleware {
            let (Some(every), Some(deployment)) = (&mw.poll, live.middleware.get(name)) else {
                continue;
            };
            let next = due.entry(name.clone()).or_insert(now + every.get_ref().0);
            if now < *next {
                continue;
            }
            *next = now + every.get_ref().0;
            let canary = mw
                .canary
                .as_ref()
                .zip(deployment.canary.as_ref())
                .map(|(config, canary)| (&config.component, &canary.version));
            for (component, serving) in std::iter::once((&mw.component, &deployment.primary)).chain(canary) {
                let ComponentRef::Oci(reference) = component.get_ref() else {
                    continue;
                };
                if reference.digest().is_some() {
                    continue;
                }
                let serving = serving.provenance.resolved.as_deref().unwrap_or("");
                match registry.resolve(reference).await {
                    Ok(digest) => {
                        reloader.polled(name, None);
                        if !serving.ends_with(&format!("@{digest}")) {
                            moved.push(format!("{name}: {} -> {digest}", component.get_ref()));
                        }
                    }
                    Err(e) => reloader.polled(
                        name,
                        Some(format!(
                            "polling `{}` failed, `{serving}` keeps serving: {e}",
                            component.get_ref()
                        )),
                    ),
                }
            }
        }
        due.retain(|name, _| live.config.middleware.contains_key(name));
        if !moved.is_empty() {
            tracing::info!(moved = %moved.join(", "), "a polled tag moved; reloading");
            let _ = reloader.reload(Trigger::Poll).await;
        }
    }
}

/// Reloads on every `SIGHUP` that `hangups` hears, until the process ends.
pub async fn on_sighup(reloader: Arc<Reloader>, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        let _ = reloader.reload(Trigger::Sighup).await;
    }
}

/// Starts the active health checks of `snapshot`'s upstreams that are not running yet (a kept
/// upstream's keep running), on the current runtime: the control plane's.
pub fn start_health_checks(snapshot: &Snapshot) {
    for upstream in snapshot.upstreams.values() {
        upstream.health.start_checks();
    }
}

/// The `[server]` settings a reload cannot change (listeners, threads, the admin API, the access
/// log, process settings); TLS certificates reload, the TLS addresses do not.
#[derive(Debug, PartialEq)]
struct RestartOnly {
    listen: Vec<std::net::SocketAddr>,
    tls: BTreeSet<std::net::SocketAddr>,
    threads: usize,
    admin: Option<std::net::SocketAddr>,
    admin_token_env: Option<String>,
    access_log: config::AccessLog,
    h2c: bool,
    grace_period: config::AnyDuration,
    upgrade_sock: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    watch: bool,
    otlp: Option<config::OtlpConfig>,
}

impl RestartOnly {
    fn of(server: &config::ServerConfig) -> Self {
        RestartOnly {
            listen: server.listen.get_ref().iter().map(|a| a.get_ref().0).collect(),
            tls: server.tls.iter().map(|t| t.get_ref().addr.0).collect(),
            threads: *server.threads.get_ref(),
            admin: server.admin.as_ref().map(|a| a.get_ref().0),
            admin_token_env: server.admin_token_env.clone(),
            access_log: server.access_log.clone(),
            h2c: server.h2c,
            grace_period: server.grace_period,
            upgrade_sock: server.upgrade_sock.clone(),
            pid_file: server.pid_file.clone(),
            cache_dir: server.cache_dir.clone(),
            watch: server.watch,
            otlp: server.otlp.as_ref().map(|o| o.get_ref().clone()),
        }
    }

    /// The keys whose value differs in `next`.
    fn changed(&self, next: &RestartOnly) -> Vec<&'static str> {
        [
            ("listen", self.listen != next.listen),
            ("tls", self.tls != next.tls),
            ("threads", self.threads != next.threads),
            ("admin", self.admin != next.admin),
            ("admin-token-env", self.admin_token_env != next.admin_token_env),
            ("access-log", self.access_log != next.access_log),
            ("h2c", self.h2c != next.h2c),
            ("grace-period", self.grace_period != next.grace_period),
            ("upgrade-sock", self.upgrade_sock != next.upgrade_sock),
            ("pid-file", self.pid_file != next.pid_file),
            ("cache-dir", self.cache_dir != next.cache_dir),
            ("watch", self.watch != next.watch),
            ("otlp", self.otlp != next.otlp),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}
