//! Upstream health: active health checks take a stopped target out of rotation and bring it back
//! when it answers again (and a reload does not forget), passive ejection after a failed
//! connection, retries of idempotent requests on another target (never of a POST), and 503 when
//! no target is healthy. Targets are real servers on real ports, stopped and started again.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// A target answering 200 with its own name, so a response says who served it.
async fn target(name: &str) -> Canned {
    Canned::start(Reply::Body(200, format!("{{\"target\":\"{name}\"}}").into_bytes())).await
}

fn config(listen: SocketAddr, admin: SocketAddr, upstreams: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 2\nadmin = \"{admin}\"\ncache-dir = {:?}\n\n{upstreams}\n{routes}",
        shared_cache_dir().display().to_string()
    )
}

/// `sluice_upstream_target_healthy` of `target` in upstream `u`, or of `upstream`'s.
async fn in_rotation(admin: SocketAddr, target: SocketAddr) -> f64 {
    in_rotation_of(admin, "u", target).await
}

async fn in_rotation_of(admin: SocketAddr, upstream: &str, target: SocketAddr) -> f64 {
    let labels = [format!("upstream=\"{upstream}\""), format!("target=\"{target}\"")];
    metric_sum(admin, "sluice_upstream_target_healthy", &[&labels[0], &labels[1]]).await
}

/// Waits up to `within` for `target`'s health gauge (upstream `u`) to read `value`; returns how
/// long it took.
async fn wait_for_health(admin: SocketAddr, target: SocketAddr, value: f64, within: Duration) -> Duration {
    let started = Instant::now();
    while in_rotation(admin, target).await != value {
        assert!(
            started.elapsed() < within,
            "{target} did not become {value} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Sends `n` requests with `method` to `url`; returns each one's status and the target that
/// answered (or, when the answer names none, the whole body).
async fn send(method: reqwest::Method, url: &str, n: usize) -> Vec<(u16, String)> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = client.request(method.clone(), url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_else(|e| format!("<{e}>"));
        let target = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| Some(v["target"].as_str()?.to_owned()))
            .unwrap_or(body);
        out.push((status, target));
    }
    out
}

/// An address that refuses connections: a socket bound to it that does not listen (kept until the
/// returned socket is dropped).
fn refusing_addr() -> (SocketAddr, socket2::Socket) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (addr, socket)
}

fn served(results: &[(u16, String)], target: &str) -> usize {
    results
        .iter()
        .filter(|(status, t)| *status == 200 && t == target)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_stopped_target_out_and_bring_it_back() {
    let a = target("a").await;
    let mut b = target("b").await;
    let (listen, admin) = (free_addr(), free_addr());
    // Passive health off and no retries: only the active checks decide.
    let upstream = format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\nretries = 0\npassive-health = {{ failures = 0 }}\n\
         health-check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"200ms\", healthy = 2, unhealthy = 2 }}\n",
        a.addr, b.addr
    );
    let route = "[[route]]\nname = \"all\"\nupstream = \"u\"\n";
    let sluice = Sluice::start_raw(&config(listen, admin, &upstream, route), listen);
    let url = sluice.url("/x");

    let both = send(reqwest::Method::GET, &url, 20).await;
    assert_eq!((served(&both, "a"), served(&both, "b")), (10, 10), "{both:?}");
    // The checks run with no traffic at all.
    let hits = a.hits();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(a.hits() >= hits + 2, "checks every 100 ms: {} -> {}", hits, a.hits());

    b.stop().await;
    // Two failed checks 100 ms apart, each failing at once (connection refused).
    let took = wait_for_health(admin, b.addr, 0.0, Duration::from_secs(3)).await;
    assert!(sluice.stderr().contains("becomes unhealthy"), "{}", sluice.stderr());
    let only_a = send(reqwest::Method::GET, &url, 20).await;
    assert_eq!(
        served(&only_a, "a"),
        20,
        "every request to the healthy target: {only_a:?}"
    );
    assert_eq!(in_rotation(admin, a.addr).await, 1.0);

    // A reload that keeps the upstream as it is keeps its health: b stays out. (It also changes
    // `threads`, which only a restart can: it says so.)
    let path = sluice.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("threads = 2", "threads = 1");
    std::fs::write(
        &path,
        format!("{text}\n[[route]]\nname = \"more\"\npath-prefix = \"/more\"\nupstream = \"u\"\n"),
    )
    .unwrap();
    let reloaded = Instant::now();
    let reloads = || metric_sum(admin, "sluice_reloads_total", &["trigger=\"file\"", "result=\"ok\""]);
    while reloads().await < 1.0 {
        assert!(
            reloaded.elapsed() < Duration::from_secs(10),
            "the reload did not happen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(in_rotation(admin, b.addr).await, 0.0, "the reload forgot b's health");
    assert!(
        sluice.stderr().contains("take effect on restart") && sluice.stderr().contains("server.threads"),
        "{}",
        sluice.stderr()
    );
    assert_eq!(served(&send(reqwest::Method::GET, &url, 10).await, "a"), 10);

    b.resume().await;
    wait_for_health(admin, b.addr, 1.0, Duration::from_secs(3)).await;
    assert!(sluice.stderr().contains("becomes healthy"), "{}", sluice.stderr());
    // Round-robin again (not strictly alternating: skipping b moved pingora's counter).
    let back = send(reqwest::Method::GET, &url, 20).await;
    assert_eq!(served(&back, "a") + served(&back, "b"), 20, "{back:?}");
    assert!(served(&back, "b") >= 8, "{back:?}");
    eprintln!("stopped target out of rotation {took:?} after it stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_ejects_the_target_and_idempotent_requests_retry_elsewhere() {
    let live = target("live").await;
    // Bound but not listening: connections are refused, and no other test's server can take the
    // port while this holds it.
    let (dead, _held) = refusing_addr();
    let (listen, admin) = (free_addr(), free_addr());
    let upstreams = format!(
        "[upstreams.ejecting]\ntargets = [\"{dead}\", \"{live}\"]\npassive-health = {{ failures = 1, eject-for = \"1s\" }}\n\n\
         [upstreams.never-ejecting]\ntargets = [\"{dead}\", \"{live}\"]\npassive-health = {{ failures = 0 }}\n\n\
         [upstreams.no-retries]\ntargets = [\"{dead}\", \"{live}\"]\nretries = 0\npassive-health = {{ failures = 0 }}\n\n\
         [upstreams.all-dead]\ntargets = [\"{dead}\"]\n",
        live = live.addr
    );
    let routes = format!(
        "{}\n[[route]]\nname = \"ejecting\"\npath-prefix = \"/ejecting\"\nupstream = \"ejecting\"\n\n\
         [[route]]\nname = \"buffered\"\npath-prefix = \"/buffered\"\nupstream = \"never-ejecting\"\nmiddleware = [\"body\"]\n\n\
         [[route]]\nname = \"never-ejecting\"\npath-prefix = \"/never\"\nupstream = \"never-ejecting\"\n\n\
         [[route]]\nname = \"no-retries\"\npath-prefix = \"/no-retries\"\nupstream = \"no-retries\"\n\n\
         [[route]]\nname = \"all-dead\"\npath-prefix = \"/all-dead\"\nupstream = \"all-dead\"\n",
        stamp("body", "\"request-body\"")
    );
    let sluice = Sluice::start_raw(&config(listen, admin, &upstreams, &routes), listen);
    let connect_errors = |upstream: &'static str| async move {
        metric_sum(
            admin,
            "sluice_upstream_errors_total",
            &[&format!("upstream=\"{upstream}\""), "kind=\"connect\""],
        )
        .await
    };

    // Every GET is answered by the live target; the dead one is tried once, then ejected.
    let gets = send(reqwest::Method::GET, &sluice.url("/ejecting/x"), 20).await;
    assert_eq!(served(&gets, "live"), 20, "{gets:?}");
    assert_eq!(connect_errors("ejecting").await, 1.0);
    assert_eq!(in_rotation_of(admin, "ejecting", dead).await, 0.0, "ejected");
    assert_eq!(in_rotation_of(admin, "never-ejecting", dead).await, 1.0);
    // After `eject-for` it is tried again (and ejected again); the request still succeeds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        in_rotation_of(admin, "ejecting", dead).await,
        1.0,
        "back in rotation after eject-for"
    );
    let again = send(reqwest::Method::GET, &sluice.url("/ejecting/x"), 4).await;
    assert_eq!(served(&again, "live"), 4, "{again:?}");
    assert_eq!(connect_errors("ejecting").await, 2.0);
    assert!(sluice.stderr().contains("target ejected"), "{}", sluice.stderr());

    // Without ejection, round-robin keeps picking the dead target: GETs are retried on the live
    // one, POSTs are not retried (they fail), also on the route sluice proxies itself.
    for prefix in ["/never", "/buffered"] {
        let gets = send(reqwest::Method::GET, &sluice.url(&format!("{prefix}/x")), 10).await;
        assert_eq!(served(&gets, "live"), 10, "{prefix}: {gets:?}");
        let posts = send(reqwest::Method::POST, &sluice.url(&format!("{prefix}/x")), 10).await;
        let failed = posts.iter().filter(|(status, _)| *status == 502).count();
        assert_eq!(served(&posts, "live") + failed, 10, "{prefix}: {posts:?}");
        assert!(
            (3..=7).contains(&failed),
            "{prefix}: about half the POSTs reach the dead target: {posts:?}"
        );
    }
    // `retries = 0`: a GET that reaches the dead target fails.
    let gets = send(reqwest::Method::GET, &sluice.url("/no-retries/x"), 10).await;
    assert!(gets.iter().any(|(status, _)| *status == 502), "{gets:?}");

    // No target at all: 502 on the failed connection; once ejected it is still tried (a
    // connection attempt beats a certain 503), and still 502.
    let dead_only = send(reqwest::Method::GET, &sluice.url("/all-dead/x"), 3).await;
    assert!(dead_only.iter().all(|(status, _)| *status == 502), "{dead_only:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_target_is_a_503() {
    let mut only = target("only").await;
    let (listen, admin) = (free_addr(), free_addr());
    let upstream = format!(
        "[upstreams.u]\ntargets = [\"{}\"]\nhealth-check = {{ path = \"/healthz\", interval = \"50ms\", unhealthy = 1, healthy = 1 }}\n",
        only.addr
    );
    let sluice = Sluice::start_raw(
        &config(
            listen,
            admin,
            &upstream,
            "[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        ),
        listen,
    );
    assert_eq!(send(reqwest::Method::GET, &sluice.url("/"), 1).await[0].0, 200);
    only.stop().await;
    wait_for_health(admin, only.addr, 0.0, Duration::from_secs(3)).await;
    let resp = client().get(sluice.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["detail"], "upstream `u` has no healthy target");
    assert_eq!(
        metric_sum(admin, "sluice_upstream_errors_total", &["kind=\"no-target\""]).await,
        1.0
    );
    only.resume().await;
    wait_for_health(admin, only.addr, 1.0, Duration::from_secs(3)).await;
    assert_eq!(send(reqwest::Method::GET, &sluice.url("/"), 1).await[0].0, 200);
}
