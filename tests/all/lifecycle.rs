//! Stopping and replacing a running sluice: `SIGTERM` answers every request it accepted, refuses
//! new connections and exits as soon as it is idle (bounded by `grace-period`); `sluice run
//! --upgrade` takes the listening sockets over from the running process (pingora's fd transfer)
//! so that no connection is refused or reset while the old one finishes and exits.

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn config(listen: SocketAddr, up: SocketAddr, server: &str) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 2\ncache-dir = {:?}\naccess-log = \"access.log\"\n{server}\n\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        shared_cache_dir().display().to_string()
    )
}

/// A client that opens a new connection for every request (none is left idle on a process that
/// is going away).
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// What a load run saw, request by request.
#[derive(Default)]
struct Tally {
    /// A whole 200 answer.
    ok: AtomicU64,
    /// The connection was refused: nothing listened.
    refused: AtomicU64,
    /// The connection closed before a single byte of answer: sluice never read the request (it
    /// was still in the listen queue, or pingora closed the new connection as it stopped).
    unanswered: AtomicU64,
    /// Anything else: an error status, a cut-off answer.
    failed: AtomicU64,
}

/// `clients` loops, each sending `GET /load` (the upstream waits `delay`) on a new connection,
/// over plain TCP, until `stop` is set.
fn load(
    addr: SocketAddr,
    clients: usize,
    delay: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tally = Arc::new(Tally::default());
    let request =
        format!("GET /load HTTP/1.1\r\nhost: load.test\r\nx-echo-delay: {delay}\r\nconnection: close\r\n\r\n");
    let tasks = (0..clients)
        .map(|_| {
            let (stop, tally, request) = (stop.clone(), tally.clone(), request.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut stream = match tokio::net::TcpStream::connect(addr).await {
                        Ok(stream) => stream,
                        Err(_) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    };
                    let mut answer = Vec::new();
                    let read = match stream.write_all(request.as_bytes()).await {
                        Ok(()) => stream.read_to_end(&mut answer).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    let counter = if answer.is_empty() {
                        &tally.unanswered
                    } else if read.is_ok() && whole_200(&answer) {
                        &tally.ok
                    } else {
                        eprintln!("failed request: {read:?} {:?}", String::from_utf8_lossy(&answer));
                        &tally.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tally, tasks)
}

/// A `200` whose body is as long as its `content-length` says.
fn whole_200(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok());
    head.starts_with("HTTP/1.1 200") && length == Some(body.len())
}

/// The statuses in the access log, one per request sluice read.
fn logged_statuses(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_is_in_flight_refuses_new_connections_and_exits_when_idle() {
    let up = echo().await;
    let listen = free_addr();
    let mut sluice = Sluice::start_raw(&config(listen, up.addr(), "grace-period = \"20s\""), listen);

    // Eight slow requests in flight, each on its own connection.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (fresh_connections(), sluice.url("/slow"));
            tokio::spawn(async move {
                let resp = client.get(url).header("x-echo-delay", "1s").send().await.unwrap();
                (resp.status().as_u16(), resp.bytes().await.is_ok())
            })
        })
        .collect();
    while up.requests() < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    sluice.signal(Signal::SIGTERM);

    // New connections are refused once pingora has stopped its listeners.
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(listen).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for request in slow {
        assert_eq!(request.await.unwrap(), (200, true), "an in-flight request was cut off");
    }
    // It exits on its own once they are answered: long before the 20 s grace period.
    let status = sluice
        .wait_exit(Duration::from_secs(5))
        .expect("sluice did not exit once idle");
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        logged_statuses(sluice.dir.path()),
        vec![200; 8],
        "every request logged before exiting"
    );
    assert!(sluice.stderr().contains("drained"), "{}", sluice.stderr());
    eprintln!("SIGTERM to exit with 1 s requests in flight: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_wait() {
    let up = echo().await;
    let listen = free_addr();
    let mut sluice = Sluice::start_raw(&config(listen, up.addr(), "grace-period = \"500ms\""), listen);
    let (client, url) = (fresh_connections(), sluice.url("/stuck"));
    let stuck = tokio::spawn(async move { client.get(url).header("x-echo-delay", "30s").send().await });
    while up.requests() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    sluice.signal(Signal::SIGTERM);
    let status = sluice
        .wait_exit(Duration::from_secs(5))
        .expect("sluice outlived its grace period");
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(
        (Duration::from_millis(450)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the request still running at the end is cut off"
    );
    assert!(sluice.stderr().contains("grace period over"), "{}", sluice.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_request() {
    let up = echo().await;
    let listen = free_addr();
    let mut sluice = Sluice::start_raw(&config(listen, up.addr(), "grace-period = \"10s\""), listen);
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = load(listen, 8, "20ms", stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    sluice.signal(Signal::SIGTERM);
    let status = sluice.wait_exit(Duration::from_secs(10)).expect("sluice did not exit");
    assert!(status.success(), "{status}");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let logged = logged_statuses(sluice.dir.path());
    // Every request sluice read was answered 200, that answer reached its client whole, and
    // every request the upstream got was one of them.
    assert!(logged.iter().all(|&status| status == 200), "{logged:?}");
    assert_eq!(
        logged.len() as u64,
        ok,
        "requests sluice read vs whole answers clients got"
    );
    assert_eq!(up.requests(), ok);
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "a request was cut off or failed"
    );
    assert!(ok > 50, "under load: {ok}");
    assert!(
        tally.refused.load(Ordering::Relaxed) > 0,
        "the clients outlived the process"
    );
    eprintln!(
        "SIGTERM under load: {ok} answered, {} refused after the listeners closed, {} closed unread, 0 failed",
        tally.refused.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed),
    );
}

/// `sluice run --upgrade` on `sluice`'s config, its stderr in `stderr.upgrade.log` beside it.
fn upgrade(sluice: &Sluice) -> KillOnDrop {
    let stderr = sluice.dir.path().join("stderr.upgrade.log");
    let child = Command::new(sluice_bin())
        .args(["run", "--upgrade", "--config"])
        .arg(sluice.config_path())
        .env("RUST_LOG", "info")
        .env("TMPDIR", sluice.dir.path()) // where the running one wrote its pid
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    KillOnDrop(child, stderr)
}

struct KillOnDrop(Child, std::path::PathBuf);

impl KillOnDrop {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_and_resets_no_connection() {
    let up = echo().await;
    let (listen, admin) = (free_addr(), free_addr());
    let mut old = Sluice::start_raw(
        &config(
            listen,
            up.addr(),
            &format!("admin = \"{admin}\"\ngrace-period = \"10s\""),
        ),
        listen,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = load(listen, 8, "10ms", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut new = upgrade(&old);
    let started = Instant::now();
    // The old process hands its sockets over, keeps serving for pingora's 5 s overlap, drains
    // and exits.
    let status = old
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the old sluice did not exit:\n{}\nnew:\n{}", old.stderr(), new.stderr()));
    assert!(status.success(), "{status}");
    let handed_over = started.elapsed();
    let served_before = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new sluice stopped:\n{}",
        new.stderr()
    );
    assert!(
        tally.ok.load(Ordering::Relaxed) > served_before,
        "the new process serves after the old one exited"
    );
    assert_eq!(
        tally.refused.load(Ordering::Relaxed),
        0,
        "a connection was refused during the upgrade"
    );
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "a request failed during the upgrade"
    );
    assert_eq!(
        up.requests(),
        tally.ok.load(Ordering::Relaxed),
        "a request reached the upstream but its answer was lost"
    );
    assert!(
        new.stderr().contains("taking the listening sockets over"),
        "{}",
        new.stderr()
    );

    // The admin API follows: the new process binds it once the old one has let go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client().get(format!("http://{admin}/healthz")).send().await {
            Ok(resp) if resp.status() == 200 => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "no admin API after the upgrade:\n{}",
                    new.stderr()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // And the new process can be upgraded again: it wrote its pid.
    let pid_file = std::fs::read_dir(old.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pid") && p.to_string_lossy().contains("sluice-"))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|pid| pid.trim() == new.0.id().to_string()));
    assert!(pid_file.is_some(), "the new process recorded its pid");
    eprintln!(
        "upgrade under load: {} answered, 0 refused, {} closed unread, 0 failed; old process gone {handed_over:?} after the new one started",
        tally.ok.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed)
    );
}

#[test]
fn an_upgrade_with_nothing_running_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let listen = free_addr();
    std::fs::write(
        &path,
        format!("[server]\nlisten = [\"{listen}\"]\n\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n"),
    )
    .unwrap();
    let out = Command::new(sluice_bin())
        .args(["run", "--upgrade", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: cannot upgrade: cannot read the running sluice's pid from"),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(listen).is_err(), "nothing was started");
}
