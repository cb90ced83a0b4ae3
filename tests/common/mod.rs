//! Shared test helpers: a real `sluice` process on a free port, echo upstreams, clients.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use sluice::echo::EchoServer;

/// A free loopback port (bound, then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
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
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(sluice_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
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
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice did not listen on {} within 300s:\n{}", self.addr, self.stderr());
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
}

impl Drop for Sluice {
    fn drop(&mut self) {
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(sluice_bin())
        .arg(subcommand)
        .arg("--config")
        .arg(&path)
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
    let out = Command::new("python3")
        .arg(repo_root().join("tests").join(script))
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "tests/{script} failed (its Python packages come from scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
