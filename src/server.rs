//! Assembling a pingora server from a loaded config: listeners, worker threads, the proxy service.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::TcpSocketOptions;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

use crate::admin::Admin;
use crate::chain::Snapshot;
use crate::config::{Config, ConfigErrors};
use crate::error::Error;
use crate::proxy::Sluice;
use crate::proxy::observe::AccessLogger;
use crate::reload::{self, Reloader};
use crate::runtime::Runtime;

/// On SIGTERM pingora stops accepting, then waits this long (always the full time) for in-flight
/// requests before stopping the worker runtimes.
const GRACE_PERIOD_SECONDS: u64 = 5;

/// After the grace period, how long the worker runtimes get to wind down.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 1;

/// Loads everything `config` names (targets, middleware) into a [`Snapshot`], as `sluice run` and
/// `sluice check` do, with the wasmtime runtime caching compiled components in `cache-dir`.
pub fn load(config: Config) -> Result<(Snapshot, Arc<Runtime>), Error> {
    let runtime = Runtime::new(config.cache_dir()).map_err(|e| Error::Runtime(e.to_string()))?;
    let loader = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the loader: {e}")))?;
    let snapshot = loader.block_on(Snapshot::build(config, &runtime))?;
    Ok((snapshot, runtime))
}

/// Builds the snapshot and the pingora server for `config`, ready to [`Server::run_forever`], and
/// starts the control plane (config watcher, `SIGHUP`, admin API) on a thread of its own.
///
/// Fails, without starting anything, when the config cannot be loaded, a listen address is
/// taken, or the admin API would be exposed without a token.
pub fn build(config: Config) -> Result<Server, Error> {
    let admin = admin_listener(&config)?;
    for addr in config.server.listen.get_ref() {
        // Bind once here to report a taken address clearly; pingora binds again right after.
        std::net::TcpListener::bind(addr.get_ref().0).map_err(|source| Error::Listen {
            addr: addr.get_ref().0,
            source,
        })?;
    }
    let threads = *config.server.threads.get_ref();
    let listen: Vec<String> = config
        .server
        .listen
        .get_ref()
        .iter()
        .map(|a| a.get_ref().to_string())
        .collect();
    let watch = config.server.watch;
    let access = AccessLogger::start(&config.server.access_log, config.base_dir()).map_err(|e| {
        Error::Runtime(format!(
            "cannot open the access log {:?}: {e}",
            config.server.access_log
        ))
    })?;
    let path = config.path.clone();
    let routes = config.routes.len();
    let (snapshot, runtime) = load(config)?;
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let reloader = Reloader::new(live.clone(), runtime, path.clone());
    control_plane(reloader, admin, watch)?;
    tracing::info!(config = %path.display(), listen = %listen.join(", "), routes, "sluice is serving");

    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One single-threaded proxy service per worker, all listening on the same addresses with
    // SO_REUSEPORT, the way nginx runs workers: each worker has its own upstream connection pool,
    // so reusing a pooled connection never wakes another thread. With one service of N threads
    // sharing one pool, every reuse cost two cross-thread wakeups and sometimes lost the
    // connection to a race in the pool (docs/benchmarks.md has the figures).
    let mut reuseport = TcpSocketOptions::default();
    reuseport.so_reuseport = Some(true);
    for worker in 0..threads {
        let name = format!("sluice-worker-{worker}");
        let mut proxy = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            Sluice::new(live.clone(), access.clone()),
            &name,
        );
        proxy.threads = Some(1);
        for addr in &listen {
            proxy.add_tcp_with_settings(addr, reuseport.clone());
        }
        server.add_service(proxy);
    }
    Ok(server)
}

/// The admin API's listener and token, checked before anything starts: a non-loopback address
/// needs a token, and a named token variable must be set.
fn admin_listener(config: &Config) -> Result<Option<(std::net::TcpListener, Option<String>)>, Error> {
    let Some(admin) = &config.server.admin else {
        return Ok(None);
    };
    let addr = admin.get_ref().0;
    let at = |message: String| {
        Error::Config(ConfigErrors(vec![config.error_at(
            admin.span(),
            "server.admin",
            message,
        )]))
    };
    let token = match &config.server.admin_token_env {
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            _ => {
                return Err(at(format!(
                    "`admin-token-env` names `{var}`, which is not set (or empty); the admin API needs its token"
                )));
            }
        },
        None if crate::admin::needs_token(addr) => {
            return Err(at(format!(
                "the admin API on `{addr}` (not a loopback address) needs `admin-token-env`: anyone who can reach it could swap middleware"
            )));
        }
        None => None,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
    Ok(Some((listener, token)))
}

/// Starts the thread that reloads (config watcher, `SIGHUP`) and serves the admin API. Builds
/// (compiling components) run here, never on a proxy worker.
fn control_plane(
    reloader: Arc<Reloader>,
    admin: Option<(std::net::TcpListener, Option<String>)>,
    watch: bool,
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-control")
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the control plane: {e}")))?;
    std::thread::Builder::new()
        .name("sluice-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(reload::on_sighup(reloader.clone()));
                if watch {
                    tokio::spawn(reload::watch(reloader.clone()));
                }
                if let Some((listener, token)) = admin {
                    if token.is_none() {
                        tracing::warn!("the admin API has no token (`admin-token-env`): anyone on this machine can reload and swap middleware");
                    }
                    tokio::spawn(Admin::new(reloader, token.as_deref()).serve(listener));
                }
                std::future::pending::<()>().await
            })
        })
        .map_err(|e| Error::Runtime(format!("cannot start the control plane: {e}")))?;
    Ok(())
}
