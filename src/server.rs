//! Assembling a pingora server from a loaded config: listeners, worker threads, the proxy service.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::TcpSocketOptions;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

use crate::chain::Snapshot;
use crate::config::Config;
use crate::error::Error;
use crate::proxy::Sluice;
use crate::runtime::Runtime;

/// On SIGTERM pingora stops accepting, then waits this long (always the full time) for in-flight
/// requests before stopping the worker runtimes.
const GRACE_PERIOD_SECONDS: u64 = 5;

/// After the grace period, how long the worker runtimes get to wind down.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 1;

/// Loads everything `config` names (targets, middleware) into a [`Snapshot`], as `sluice run` and
/// `sluice check` do, with the wasmtime runtime caching compiled components in `cache-dir`.
pub fn load(config: &Config) -> Result<Snapshot, Error> {
    let runtime = Runtime::new(config.cache_dir()).map_err(|e| Error::Runtime(e.to_string()))?;
    let loader = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the loader: {e}")))?;
    loader.block_on(Snapshot::build(config, &runtime))
}

/// Builds the snapshot and the pingora server for `config`, ready to [`Server::run_forever`].
///
/// Fails, without starting anything, when the config cannot be loaded or a listen address is
/// taken.
pub fn build(config: &Config) -> Result<Server, Error> {
    let snapshot = load(config)?;
    for addr in config.server.listen.get_ref() {
        // Bind once here to report a taken address clearly; pingora binds again right after.
        std::net::TcpListener::bind(addr.get_ref().0).map_err(|source| Error::Listen {
            addr: addr.get_ref().0,
            source,
        })?;
    }
    if let Some(admin) = &config.server.admin {
        tracing::warn!(admin = %admin.get_ref(), "the admin API is not served by this build yet; `admin` is ignored");
    }

    let conf = ServerConf {
        threads: *config.server.threads.get_ref(),
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
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let mut reuseport = TcpSocketOptions::default();
    reuseport.so_reuseport = Some(true);
    for worker in 0..*config.server.threads.get_ref() {
        let name = format!("sluice-worker-{worker}");
        let mut proxy =
            pingora::proxy::http_proxy_service_with_name(&server.configuration, Sluice::new(live.clone()), &name);
        proxy.threads = Some(1);
        for addr in config.server.listen.get_ref() {
            proxy.add_tcp_with_settings(&addr.get_ref().to_string(), reuseport.clone());
        }
        server.add_service(proxy);
    }
    Ok(server)
}
