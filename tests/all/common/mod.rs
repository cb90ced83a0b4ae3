//! Shared test helpers: a real `sluice` process on a free port, echo upstreams, clients.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use sluice::echo::EchoServer;

/// A loopback address no other caller in this process gets, free when handed out.
///
/// The ports come from below the kernel's ephemeral range (32768-60999 on Linux), one after the
/// other from a per-process start, never from `bind(0)`: a port `bind(0)` returned and released
/// is free for the kernel to hand out again, to another test's `free_addr` or to a client's
/// connection, before the sluice meant to listen on it has bound it. sluice binds with
/// SO_REUSEPORT, so two sluices given one port would both listen on it and the kernel would
/// spread one test's connections over both (CI saw a reset from another test's sluice).
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000; // up to 31999
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < SPAN,
            "free_addr: every port in {FIRST}..{} was handed out",
            FIRST + SPAN
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], FIRST + (start + n) % SPAN));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// An echo upstream on a free port of the current runtime.
pub async fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// A `sluice run` process, killed when dropped.
pub struct Sluice {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr: PathBuf,
}

impl Sluice {
    /// Starts sluice with `config` (everything but `[server]`, which this adds) and waits until it
    /// accepts connections.
    pub fn start(config: &str) -> Sluice {
        let addr = free_addr();
        let full = format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\n\n{config}",
            shared_cache_dir().display().to_string()
        );
        Self::start_raw(&full, addr)
    }

    /// Starts sluice with `config` (everything but `[server]`), with `env` set in its environment,
    /// and the config file in `dir` (so relative `*-file` paths resolve there).
    pub fn start_in(config: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Sluice {
        let addr = free_addr();
        let full = format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\n\n{config}",
            shared_cache_dir().display().to_string()
        );
        Self::spawn(&full, addr, dir, env)
    }

    /// Starts sluice with a whole config that listens on `addr`.
    pub fn start_raw(config: &str, addr: SocketAddr) -> Sluice {
        Self::spawn(config, addr, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts sluice with a whole `config` that listens on `addr`, written to `dir/sluice.toml`,
    /// with `env` set in its environment.
    pub fn spawn(config: &str, addr: SocketAddr, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Sluice {
        Self::launch(Command::new(sluice_bin()), config, addr, dir, env)
    }

    /// Starts sluice with `config` (everything but `[server]`) under an address-space limit of
    /// `kib` KiB (`ulimit -v`).
    pub fn start_with_address_space(config: &str, kib: u64) -> Sluice {
        let addr = free_addr();
        let full = format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\n\n{config}",
            shared_cache_dir().display().to_string()
        );
        let mut shell = Command::new("sh");
        shell.args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\""), sluice_bin()]);
        Self::launch(shell, &full, addr, tempfile::tempdir().unwrap(), &[])
    }

    /// Runs `command` with `run --config <dir>/sluice.toml` added, `config` written there.
    fn launch(
        mut command: Command,
        config: &str,
        addr: SocketAddr,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Sluice {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            // Its default pid file and upgrade socket go in `dir`, removed with it (a killed
            // process leaves them behind).
            .env("TMPDIR", dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn sluice");
        let mut sluice = Sluice {
            child,
            addr,
            dir,
            stderr,
        };
        sluice.wait_ready();
        sluice
    }

    fn wait_ready(&mut self) {
        // Generous: a config with many uncached middleware compiles each (seconds apiece).
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sluice exited with {status} before serving:\n{}", self.stderr());
            }
            if self.listening().iter().all(|addr| TcpStream::connect(addr).is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice did not listen on {} within 300s:\n{}", self.addr, self.stderr());
    }

    /// Every address the config has sluice listen on (`[server] listen` and `tls`), with
    /// `addr`: each worker binds its own socket on each, so one accepting says nothing of the
    /// others.
    fn listening(&self) -> Vec<SocketAddr> {
        let config = std::fs::read_to_string(self.config_path()).unwrap_or_default();
        let server = toml::from_str::<toml::Table>(&config)
            .ok()
            .and_then(|c| c.get("server").and_then(|s| s.as_table()).cloned())
            .unwrap_or_default();
        let listen = server.get("listen").and_then(|l| l.as_array()).into_iter().flatten();
        let tls = server.get("tls").and_then(|l| l.as_array()).into_iter().flatten();
        let mut addrs: Vec<SocketAddr> = listen
            .filter_map(|a| a.as_str())
            .chain(tls.filter_map(|t| t.get("addr").and_then(|a| a.as_str())))
            .filter_map(|a| a.parse().ok())
            .collect();
        addrs.push(self.addr);
        addrs.sort();
        addrs.dedup();
        addrs
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.stderr).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sluice.toml")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends the process `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sluice {
    /// Kills the process. When a test fails while this sluice runs, its state and the end of its
    /// log are printed first: a failure seen once in CI then says what sluice did.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.child.try_wait() {
                Ok(Some(status)) => format!("had exited ({status})"),
                _ => "was running".to_owned(),
            };
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- sluice on {} (pid {}) {state}; the last {} lines of its log:",
                self.addr,
                self.child.id(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("---");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One artifact cache for every test's sluice, so each component and config compiles once per run.
pub fn shared_cache_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sluice-cache")
}

/// The built test component `name` (crate name with `_`), as an absolute path for config files.
pub fn component(name: &str) -> String {
    Path::new(sluice::artifacts::COMPONENT_DIR)
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// Writes `config` to `sluice.toml` in a fresh temporary directory and runs `sluice SUBCOMMAND
/// --config` on it. Returns the directory (keep it alive), the file's path and the output.
pub fn run_on_config(subcommand: &str, config: &str) -> (tempfile::TempDir, PathBuf, std::process::Output) {
    run_on_config_env(subcommand, config, &[])
}

/// [`run_on_config`] with `env` set in sluice's environment.
pub fn run_on_config_env(
    subcommand: &str,
    config: &str,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, PathBuf, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(sluice_bin())
        .arg(subcommand)
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (dir, path, out)
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An HTTP client that talks straight to the address it is given.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on Linux loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(Some(ip.parse().unwrap()))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GETs `url` and returns the echo upstream's JSON description of the request it received.
pub async fn echoed(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json().await.unwrap()
}

/// The `upstream` field of an echo answer: `echo@ADDR`.
pub fn served_by(echo: &EchoServer) -> String {
    format!("echo@{}", echo.addr())
}

/// A `[middleware.NAME]` section running the `stamp` test component in `phases` (a TOML list body,
/// e.g. `"\"request-headers\", \"response-headers\""`).
pub fn stamp(name: &str, phases: &str) -> String {
    format!(
        "[middleware.{name}]\ncomponent = {:?}\nconfig = {{ name = \"{name}\", phases = [{phases}] }}\n",
        component("stamp")
    )
}

/// Runs one of the tests' Python helpers (`tests/<script>`) with `args`; panics with its stderr
/// and where its packages come from when it fails.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) {
    python_with(script, args, &[]);
}

/// [`python`] with `env` set; returns what the helper printed.
pub fn python_with<A: AsRef<std::ffi::OsStr>>(script: &str, args: &[A], env: &[(&str, &str)]) -> String {
    let out = Command::new("python3")
        .arg(repo_root().join("tests").join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "tests/{script} failed (its Python packages come from scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the helper prints text")
}

/// Spawns a server process (`command`, its output discarded) and waits until it accepts
/// connections on `addr`; `name` says what to install when it is missing.
pub fn spawn_server(command: &mut Command, addr: SocketAddr, name: &str) -> Child {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): `make test` installs it (scripts/setup.sh)"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{name} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Kills a server [`spawn_server`] started, if it runs: connections are refused from now on.
pub fn stop_server(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a [`Canned`] server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and body (`application/json`).
    Body(u16, Vec<u8>),
    /// Nothing: it reads the request and holds the connection open.
    Hang,
}

/// Reads a request head (up to its blank line, maybe with bytes after it) from `stream`; `None`
/// when the peer closes first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// A raw TCP upstream: for each connection it accepts, reads one request head and hands the
/// connection and the head to `serve`, for a test to answer however it likes (slowly, wrongly,
/// never).
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut conn).await {
                    serve(conn, head).await;
                }
            });
        }
    });
    addr
}

/// A minimal HTTP/1.1 server answering every request with the current [`Reply`]: an identity
/// provider serving a JWK set, a service that hangs or answers too much. Counts the requests it
/// reads; can be stopped (connections refused) and started again on the same port.
pub struct Canned {
    pub addr: SocketAddr,
    reply: std::sync::Arc<std::sync::Mutex<Reply>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Canned {
    pub async fn start(reply: Reply) -> Canned {
        let mut canned = Canned {
            addr: free_addr(),
            reply: std::sync::Arc::new(std::sync::Mutex::new(reply)),
            hits: Default::default(),
            task: None,
        };
        canned.resume().await;
        canned
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers `reply` from now on.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Requests read so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops listening: connections are refused until [`Canned::resume`].
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let (reply, hits) = (self.reply.clone(), self.hits.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reply, hits) = (reply.clone(), hits.clone());
                tokio::spawn(async move {
                    let Some(mut head) = read_head(&mut stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    // Read the body too: closing with unread request bytes would reset the
                    // connection, and the peer could lose the end of the answer.
                    let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let length: usize = String::from_utf8_lossy(&head[..head_end])
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                        .unwrap_or(0);
                    while head.len() < head_end + length {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let reply = reply.lock().unwrap().clone();
                    match reply {
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Reply::Body(status, body) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&body).await;
                        }
                    }
                });
            }
        }));
    }
}

/// The sum of every sample of metric `name` whose labels contain all of `labels` (e.g.
/// `kind="trap"`), read from the admin listener's `/metrics` at `admin`.
pub async fn metric_sum(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The given quantile (0–1) of `samples`.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}
