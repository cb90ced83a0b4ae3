//! Assembling a pingora server from a loaded config: listeners (plain, h2c, TLS), worker threads,
//! the proxy service, the control thread, graceful shutdown, and the zero-downtime upgrade.
//!
//! **Shutdown.** On `SIGTERM` pingora stops accepting and closes idle keep-alive connections;
//! sluice then exits as soon as no request is in flight, at the latest after `grace-period`.
//!
//! **Upgrade.** `sluice run --upgrade` loads everything first (compiling components while the old
//! process keeps serving), then sends the old process (found by `pid-file`) `SIGQUIT` and
//! receives its listening sockets over `upgrade-sock` (pingora's fd transfer). The sockets are
//! never closed, so no connection is refused; the old process finishes its in-flight requests
//! and exits. Docs: docs/operations.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server};

use crate::admin::Admin;
use crate::config::{Config, ConfigErrors};
use crate::error::Error;
use crate::live::Snapshot;
use crate::proxy::observe::AccessLogger;
use crate::proxy::{Front, Sluice};
use crate::reload::{self, Reloader};
use crate::runtime::Runtime;
use crate::tls::SniResolver;

/// After the grace period, how long the worker runtimes get to wind down.
const RUNTIME_SHUTDOWN_SECONDS: u64 = 1;

/// How long no request must be in flight before a draining process exits: a request whose head
/// was being read as the listeners closed gets counted within it.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// How `sluice run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Bind the listen addresses.
    #[default]
    Fresh,
    /// Take the listening sockets over from the running sluice (`sluice run --upgrade`).
    Upgrade,
}

/// TLS listeners need no post-handshake callbacks.
struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

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
/// starts the control plane (config watcher, `SIGHUP`, admin API, health checks) on a thread of
/// its own. With [`Start::Upgrade`], takes the listening sockets over from the running sluice.
///
/// Fails, without starting anything, when the config cannot be loaded, a listen address is
/// taken, the admin API would be exposed without a token, or (upgrade) no sluice is running.
pub fn build(config: Config, start: Start) -> Result<Server, Error> {
    let admin = admin_listener(&config, start)?;
    let tls_addrs: BTreeSet<SocketAddr> = config.server.tls.iter().map(|t| t.get_ref().addr.0).collect();
    let listen: Vec<SocketAddr> = config.server.listen.get_ref().iter().map(|a| a.get_ref().0).collect();
    if start == Start::Fresh {
        for &addr in listen.iter().chain(&tls_addrs) {
            check_free(addr).map_err(|source| Error::Listen { addr, source })?;
        }
    }
    let (upgrade_sock, pid_file) = config.upgrade_paths();
    let old_pid = match start {
        Start::Fresh => None,
        Start::Upgrade => Some(running_pid(&pid_file)?),
    };
    let h2c = config.server.h2c;
    let grace = config.server.grace_period.0;
    let threads = *config.server.threads.get_ref();
    let watch = config.server.watch;
    let access = AccessLogger::start(&config.server.access_log, config.base_dir()).map_err(|e| {
        Error::Runtime(format!(
            "cannot open the access log {:?}: {e}",
            config.server.access_log
        ))
    })?;
    let path = config.path.clone();
    let routes = config.routes.len();
    // Read before the load reads the files: a change made while it runs is a change.
    let built_from = if watch {
        reload::fingerprint_of(&config)
    } else {
        reload::Fingerprint::default()
    };
    let (snapshot, runtime) = load(config)?;
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let reloader = Reloader::new(live.clone(), runtime, path.clone(), built_from);

    let conf = ServerConf {
        threads,
        work_stealing: false,
        // pingora waits this long at most; sluice exits once nothing is in flight.
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECONDS),
        upgrade_sock: upgrade_sock.to_string_lossy().into_owned(),
        pid_file: pid_file.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: start == Start::Upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if let Some(old) = old_pid {
        // The old process sends its sockets once it gets SIGQUIT; pingora waits for them
        // (retrying for a few seconds) in its bootstrap service, which the workers wait for.
        tracing::info!(pid = old, sock = %upgrade_sock.display(), "taking the listening sockets over from the running sluice");
        signal_when_listening(old, upgrade_sock.clone());
    }
    // As a service, so that pingora knows every listen address first and closes an inherited
    // socket no worker claims (it would take connections nobody accepts).
    let bootstrap = server.bootstrap_as_a_service();
    control_plane(reloader, admin, watch)?;
    let mut addresses: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    addresses.extend(tls_addrs.iter().map(|a| format!("{a} (tls)")));
    tracing::info!(config = %path.display(), listen = %addresses.join(", "), routes, "sluice is serving");

    // One single-threaded proxy service per worker, each with its own SO_REUSEPORT socket on
    // every address, the way nginx runs workers: each worker has its own upstream connection
    // pool, so reusing a pooled connection never wakes another thread. With one service of N
    // threads sharing one pool, every reuse cost two cross-thread wakeups and sometimes lost the
    // connection to a race in the pool (docs/benchmarks.md has the figures).
    let mut reuseport = TcpSocketOptions::default();
    reuseport.so_reuseport = Some(true);
    for worker in 0..threads {
        let name = format!("sluice-worker-{worker}");
        let mut app = pingora::proxy::http_proxy(&server.configuration, Sluice::new(live.clone(), access.clone()));
        if h2c {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
        let mut proxy = pingora::services::listening::Service::new(name, Front::new(app, live.clone()));
        proxy.threads = Some(1);
        for addr in &listen {
            proxy.add_tcp_with_settings(&worker_address(*addr, worker), reuseport.clone());
        }
        for addr in &tls_addrs {
            // Certificates come from the live snapshot at each handshake: reloads change them.
            let mut tls = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(NoCallbacks))
                .map_err(|e| Error::Runtime(format!("cannot set up TLS on {addr}: {e}")))?;
            let (at, live) = (*addr, live.clone());
            let current = Box::new(move || live.load().certs.get(&at).cloned());
            tls.set_cert_resolver(Arc::new(SniResolver::new(at, current)));
            tls.enable_h2();
            proxy.add_tls_with_settings(&worker_address(*addr, worker), Some(reuseport.clone()), tls);
        }
        server.add_service(proxy).add_dependency(&bootstrap);
    }
    lifecycle(&server, grace, access, pid_file);
    Ok(server)
}

/// `addr` as worker `worker` names it to pingora: its port with `worker` leading zeros
/// (`127.0.0.1:08080` for worker 1).
///
/// pingora keeps one socket per address *as written* (its table of listening sockets, which an
/// upgrade hands over): workers naming the same string would share one socket, and each would
/// close it on shutdown (a double close). Spelled apart, every worker binds a socket of its own
/// (SO_REUSEPORT: the kernel spreads connections over them) and an upgrade hands each one over.
fn worker_address(addr: SocketAddr, worker: usize) -> String {
    let ip = match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    format!("{ip}:{}{}", "0".repeat(worker), addr.port())
}

/// The pid in `pid_file`, if that process is running.
fn running_pid(pid_file: &Path) -> Result<i32, Error> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        Error::Upgrade(format!(
            "cannot read the running sluice's pid from `{}` ({e}); is one running with this config?",
            pid_file.display()
        ))
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| Error::Upgrade(format!("`{}` holds no pid", pid_file.display())))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).map_err(|e| {
        Error::Upgrade(format!(
            "the sluice with pid {pid} (from `{}`) is not running: {e}",
            pid_file.display()
        ))
    })?;
    Ok(pid)
}

/// Once this process listens on `sock` for the old process's sockets, asks the old process (`pid`)
/// to send them (`SIGQUIT`).
fn signal_when_listening(pid: i32, sock: PathBuf) {
    // pingora removes a stale socket file before binding it: remove it here, so its appearing
    // means this process listens.
    let _ = std::fs::remove_file(&sock);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT) {
            tracing::error!(pid, error = %e, "cannot signal the old sluice to hand over its sockets");
        }
    });
}

/// Records this process's pid for a later `sluice run --upgrade`.
fn write_pid(pid_file: &Path) {
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the pid file; `sluice run --upgrade` will not find this process");
    }
}

/// Follows pingora's execution phases on a thread of its own: once the server runs (listening,
/// sockets taken over on an upgrade), writes the pid file; once pingora has stopped the
/// listeners (`SIGTERM`, or `SIGQUIT` after handing the sockets over), exits as soon as no
/// request has been in flight for [`DRAIN_QUIET`], or when `grace` is over, flushing the access
/// log and removing the pid file if it is still this process's.
fn lifecycle(server: &Server, grace: Duration, access: Option<Arc<AccessLogger>>, pid_file: PathBuf) {
    let mut phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("sluice-lifecycle".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::Running) => write_pid(&pid_file),
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            drain(grace);
            if let Some(access) = access {
                access.flush(Duration::from_secs(1));
            }
            crate::telemetry::flush();
            if std::fs::read_to_string(&pid_file).is_ok_and(|pid| pid.trim() == std::process::id().to_string()) {
                let _ = std::fs::remove_file(&pid_file);
            }
            std::process::exit(0);
        })
        .expect("spawning a thread");
}

/// Waits until no request has been in flight for [`DRAIN_QUIET`], at most `grace`.
fn drain(grace: Duration) {
    let started = Instant::now();
    tracing::info!(in_flight = crate::proxy::in_flight(), grace = %humantime::format_duration(grace), "draining: no new connections; waiting for in-flight requests");
    let mut quiet_since: Option<Instant> = None;
    loop {
        if crate::proxy::in_flight() == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= DRAIN_QUIET {
                tracing::info!(took = ?started.elapsed(), "drained: every request answered; exiting");
                return;
            }
        } else {
            quiet_since = None;
        }
        if started.elapsed() >= grace {
            tracing::warn!(
                in_flight = crate::proxy::in_flight(),
                "grace period over; exiting with requests in flight"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The admin API: its address, token, and listener (bound now; on an upgrade, bound once the old
/// process lets go of it). A non-loopback address needs a token, and a named token variable must
/// be set.
struct AdminListener {
    addr: SocketAddr,
    token: Option<String>,
    listener: Option<std::net::TcpListener>,
}

/// Fails the way binding `addr` for listening would (taken, not this machine's, not allowed),
/// without listening: pingora's workers bind it right after, and a socket listening here, closed
/// again, would accept a client that connects in between and then reset it.
fn check_free(addr: SocketAddr) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    // As `TcpListener::bind` and pingora do: a port a closed connection of an earlier run still
    // holds (TIME_WAIT) is free to listen on; one another socket listens on is not.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// Checks the admin settings and binds the admin listener before anything starts.
fn admin_listener(config: &Config, start: Start) -> Result<Option<AdminListener>, Error> {
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
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(listener) => Some(listener),
        // The old process still serves it; it is taken once that one exits.
        Err(e) if start == Start::Upgrade && e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(source) => return Err(Error::Listen { addr, source }),
    };
    Ok(Some(AdminListener { addr, token, listener }))
}

/// Starts the thread that reloads (config watcher, `SIGHUP`), serves the admin API and runs the
/// active health checks. Builds (compiling components) and checks run here, never on a proxy
/// worker.
fn control_plane(reloader: Arc<Reloader>, admin: Option<AdminListener>, watch: bool) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-control")
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the control plane: {e}")))?;
    // Heard from here on, before anything serves: a SIGHUP sent as soon as sluice answers
    // reloads (unheard, it would end the process).
    let hangups = {
        let _runtime = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::Runtime(format!("cannot listen for SIGHUP: {e}")))?
    };
    std::thread::Builder::new()
        .name("sluice-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                reload::start_health_checks(&reloader.live());
                tokio::spawn(reload::on_sighup(reloader.clone(), hangups));
                tokio::spawn(reload::poll(reloader.clone()));
                if watch {
                    tokio::spawn(reload::watch(reloader.clone()));
                }
                if let Some(admin) = admin {
                    if admin.token.is_none() {
                        tracing::warn!("the admin API has no token (`admin-token-env`): anyone on this machine can reload and swap middleware");
                    }
                    tokio::spawn(serve_admin(reloader, admin));
                }
                std::future::pending::<()>().await
            })
        })
        .map_err(|e| Error::Runtime(format!("cannot start the control plane: {e}")))?;
    Ok(())
}

/// Serves the admin API, first binding its address if an upgrade's old process still held it.
async fn serve_admin(reloader: Arc<Reloader>, admin: AdminListener) {
    let listener = match admin.listener {
        Some(listener) => listener,
        None => loop {
            match std::net::TcpListener::bind(admin.addr) {
                Ok(listener) => {
                    tracing::info!(addr = %admin.addr, "admin API taken over from the old process");
                    break listener;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        },
    };
    Admin::new(reloader, admin.token.as_deref(), admin.addr)
        .serve(listener)
        .await;
}
