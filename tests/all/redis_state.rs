//! The Redis state backend against a real `redis-server` (started here on a free port; `make
//! test` installs it): the backend's semantics, a rate limit shared by two sluice processes, and
//! Redis going away and coming back under traffic.

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use sluice::state::{RedisSettings, RedisState};

/// A `redis-server` process on `addr`, no persistence; killed when dropped.
struct Redis {
    addr: SocketAddr,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis {
            addr: free_addr(),
            child: None,
        };
        redis.resume();
        redis
    }

    /// Starts the server (again) on the same port, empty.
    fn resume(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"]);
        self.child = Some(common::spawn_server(&mut command, self.addr, "redis-server"));
    }

    /// Kills the server: connections are refused until [`Redis::resume`].
    fn stop(&mut self) {
        common::stop_server(&mut self.child);
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// The raw value and remaining TTL (ms) of `key`, read with another client.
    async fn inspect(&self, key: &str) -> (Option<Vec<u8>>, i64) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        (value, ttl)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_is_atomic_on_the_server_with_redis_expiries() {
    let redis = Redis::start();
    let state = RedisState::connect(RedisSettings {
        url: redis.url(),
        timeout: Duration::from_secs(2),
        key_prefix: "test:".into(),
    })
    .unwrap();

    assert_eq!(state.get("absent").await.unwrap(), None);
    state.set("k", b"v1".to_vec(), 5_000).await.unwrap();
    assert_eq!(state.get("k").await.unwrap(), Some(b"v1".to_vec()));
    let (raw, ttl) = redis.inspect("test:k").await;
    assert_eq!(raw.as_deref(), Some(&b"v1"[..]), "keys carry the prefix");
    assert!((1..=5_000).contains(&ttl), "a TTL is a Redis expiry: PTTL {ttl}");
    state.set("forever", b"x".to_vec(), 0).await.unwrap();
    assert_eq!(redis.inspect("test:forever").await.1, -1, "ttl 0: no expiry");

    // incr: the TTL applies when the key is created, and is kept after.
    assert_eq!(state.incr("n", 5, 10_000).await.unwrap(), 5);
    assert_eq!(state.incr("n", -2, 1).await.unwrap(), 3);
    let ttl = redis.inspect("test:n").await.1;
    assert!(ttl > 5_000, "a later incr keeps the first expiry: PTTL {ttl}");
    assert!(state.incr("k", 1, 0).await.is_err(), "not an integer");

    // compare-and-swap: on the value, or on absence.
    assert!(state.compare_and_swap("c", None, b"a".to_vec(), 0).await.unwrap());
    assert!(!state.compare_and_swap("c", None, b"b".to_vec(), 0).await.unwrap());
    assert!(!state.compare_and_swap("c", Some(b"z"), b"b".to_vec(), 0).await.unwrap());
    assert!(
        state
            .compare_and_swap("c", Some(b"a"), b"b".to_vec(), 2_000)
            .await
            .unwrap()
    );
    assert_eq!(state.get("c").await.unwrap(), Some(b"b".to_vec()));
    assert!(redis.inspect("test:c").await.1 > 0);

    // Expiry.
    state.set("short", b"x".to_vec(), 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(state.get("short").await.unwrap(), None);

    // Atomic under concurrency: 8 tasks x 100 increments.
    let state = std::sync::Arc::new(state);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    state.incr("counter", 1, 0).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(state.incr("counter", 0, 0).await.unwrap(), 800);
}

/// Two rate-limited routes on Redis: `/deny` fails closed, `/allow` open. `state_timeout` bounds
/// each Redis operation.
fn limited(upstream: SocketAddr, redis: &Redis, burst: u32, state_timeout: &str) -> String {
    format!(
        r#"[state]
backend = "redis"
url = "{url}"
timeout = "{state_timeout}"

[upstreams.u]
targets = ["{upstream}"]

[middleware.limit-deny]
component = "builtin:rate-limit"
config = {{ key = "header:x-client", rate = 1, per = "1h", burst = {burst} }}
on-error = "deny"
# 120 requests at once on one key retry their compare-and-swap many times on 2 shared cores:
# exactness is tested here, not the deadline.
timeout = "2s"

[middleware.limit-allow]
component = "builtin:rate-limit"
config = {{ key = "header:x-client", rate = 1, per = "1h", burst = {burst} }}
on-error = "allow"
timeout = "2s"

[[route]]
name = "deny"
path-prefix = "/deny"
upstream = "u"
middleware = ["limit-deny"]

[[route]]
name = "allow"
path-prefix = "/allow"
upstream = "u"
middleware = ["limit-allow"]
"#,
        url = redis.url()
    )
}

async fn statuses(urls: Vec<String>, client_key: &str) -> Vec<u16> {
    let client = client();
    let all: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let req = client.get(url).header("x-client", client_key);
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for handle in all {
        statuses.push(handle.await.unwrap());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_two_sluices_sharing_redis() {
    let redis = Redis::start();
    let up = echo().await;
    // 120 requests at once, with every other test of the suite sharing 2 cores: each Redis
    // operation may wait for a CPU longer than the default 250 ms. Exactness is tested here.
    let config = limited(up.addr(), &redis, 20, "2s");
    let (a, b) = (Sluice::start(&config), Sluice::start(&config));

    // 120 requests at once, alternating between the two processes: exactly the burst passes.
    let urls = (0..120)
        .map(|i| if i % 2 == 0 { a.url("/deny/x") } else { b.url("/deny/x") })
        .collect();
    let got = statuses(urls, "shared-client").await;
    // On failure, say why from both processes' logs (a 500 is a state error under `deny`).
    let logs = || format!("{got:?}\n--- a:\n{}\n--- b:\n{}", a.stderr(), b.stderr());
    assert_eq!(count(&got, 200), 20, "{}", logs());
    assert_eq!(count(&got, 429), 100, "{}", logs());
    assert_eq!(up.requests(), 20);

    // Each sluice alone now refuses that client, and still serves another.
    for sluice in [&a, &b] {
        assert_eq!(statuses(vec![sluice.url("/deny/x")], "shared-client").await, [429]);
        assert_eq!(statuses(vec![sluice.url("/deny/x")], "another-client").await[0], 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_follows_on_error_and_limits_resume_when_it_is_back() {
    let mut redis = Redis::start();
    let up = echo().await;
    let mut sluice = Sluice::start(&limited(up.addr(), &redis, 5, "250ms"));

    let got = statuses(vec![sluice.url("/deny/x"); 8], "c1").await;
    assert_eq!((count(&got, 200), count(&got, 429)), (5, 3), "{got:?}");

    redis.stop();
    let started = Instant::now();
    // Fail closed: 500, quickly (the state timeout is 250 ms), and the upstream is not reached.
    let before = up.requests();
    let got = statuses(vec![sluice.url("/deny/x"); 6], "c2").await;
    assert!(got.iter().all(|&s| s == 500), "{got:?}");
    assert_eq!(up.requests(), before);
    // Fail open: the request goes on.
    let got = statuses(vec![sluice.url("/allow/x"); 6], "c2").await;
    assert!(got.iter().all(|&s| s == 200), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(sluice.is_running());

    redis.resume();
    // The backend reconnects in the background (backoff up to 1 s): limits resume, from an empty
    // server.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = statuses(vec![sluice.url("/deny/x")], "c3").await;
        if got == [200] {
            break;
        }
        assert!(Instant::now() < deadline, "still {got:?} 10 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = statuses(vec![sluice.url("/deny/x"); 6], "c3").await;
    assert_eq!((count(&got, 200), count(&got, 429)), (4, 2), "{got:?}");
    assert!(sluice.is_running());

    let log = sluice.stderr();
    assert!(log.contains("redis is unreachable"), "{log}");
    assert!(log.contains("redis is reachable again"), "{log}");
}
