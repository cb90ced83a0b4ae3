//! What an operator sees of the traffic: Prometheus metrics changing as requests flow (parsed from
//! the exposition text), one JSON access log line per request, and W3C `traceparent` accepted and
//! propagated upstream.

use crate::common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;

/// A sluice with an admin listener and an access log file, routes `api` (stamp, and a
/// short-circuit answering 403 to `x-block`) and `dead` (an upstream nobody listens on).
fn start(up: SocketAddr) -> (Sluice, SocketAddr) {
    let (addr, admin) = (free_addr(), free_addr());
    let dead = free_addr();
    let config = format!(
        r#"[server]
listen = ["{addr}"]
threads = 2
admin = "{admin}"
cache-dir = {cache:?}
access-log = "access.log"

[upstreams.u]
targets = ["{up}"]

[upstreams.dead]
targets = ["{dead}"]
connect-timeout = "500ms"

{stamp}
[middleware.block]
component = {block:?}
config = {{ header = "x-block", status = 403 }}

[[route]]
name = "api"
path-prefix = "/api"
upstream = "u"
middleware = ["tag", "block"]

[[route]]
name = "dead"
path-prefix = "/dead"
upstream = "dead"
"#,
        cache = shared_cache_dir().display().to_string(),
        stamp = stamp("tag", "\"request-headers\", \"response-headers\""),
        block = component("short_circuit"),
    );
    (Sluice::start_raw(&config, addr), admin)
}

/// The lines of `sluice`'s `access.log` once there are `n` (written by a background thread: it is
/// given a second).
pub(crate) async fn access_log_lines(sluice: &Sluice, n: usize) -> Vec<String> {
    let path = sluice.dir.path().join("access.log");
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_middleware_calls_and_upstreams_as_they_flow() {
    let up = echo().await;
    let (sluice, admin) = start(up.addr());
    let client = client();
    let requests = |labels: &'static [&'static str]| metric_sum(admin, "sluice_requests_total", labels);
    assert_eq!(requests(&["route=\"api\""]).await, 0.0);

    for _ in 0..7 {
        assert_eq!(client.get(sluice.url("/api/x")).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        let resp = client
            .post(sluice.url("/api/x"))
            .header("x-block", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    assert_eq!(client.get(sluice.url("/dead")).send().await.unwrap().status(), 502);
    assert_eq!(client.get(sluice.url("/nowhere")).send().await.unwrap().status(), 404);
    // A request is counted when it ends, just after its answer went out: wait for all 12.
    settle(|| requests(&[]), 12.0).await;

    assert_eq!(
        requests(&["route=\"api\"", "method=\"GET\"", "status=\"200\""]).await,
        7.0
    );
    assert_eq!(
        requests(&["route=\"api\"", "method=\"POST\"", "status=\"403\""]).await,
        3.0
    );
    assert_eq!(requests(&["route=\"dead\"", "status=\"502\""]).await, 1.0);
    assert_eq!(requests(&["route=\"-\"", "status=\"404\""]).await, 1.0);
    let timed = metric_sum(admin, "sluice_request_duration_seconds_count", &["route=\"api\""]).await;
    assert_eq!(timed, 10.0);
    let slow = metric_sum(
        admin,
        "sluice_request_duration_seconds_bucket",
        &["route=\"api\"", "le=\"+Inf\""],
    )
    .await;
    assert_eq!(slow, 10.0);

    // The chain: `tag` ran 10 times on the request side and 7 on the response side (the blocked
    // requests never reached it); `block` answered 3 times with 403.
    let calls =
        |labels: &'static [&'static str]| metric_sum(admin, "sluice_middleware_call_duration_seconds_count", labels);
    assert_eq!(calls(&["middleware=\"tag\"", "phase=\"request-headers\""]).await, 10.0);
    assert_eq!(calls(&["middleware=\"tag\"", "phase=\"response-headers\""]).await, 7.0);
    let blocked = metric_sum(
        admin,
        "sluice_middleware_short_circuits_total",
        &["middleware=\"block\"", "phase=\"request-headers\"", "status=\"403\""],
    )
    .await;
    assert_eq!(blocked, 3.0);

    // Upstreams: 7 responses timed; one connect failure.
    let upstream = metric_sum(admin, "sluice_upstream_response_seconds_count", &["upstream=\"u\""]).await;
    assert_eq!(upstream, 7.0);
    let errors = metric_sum(
        admin,
        "sluice_upstream_errors_total",
        &["upstream=\"dead\"", "kind=\"connect\""],
    )
    .await;
    assert_eq!(errors, 1.0);
    assert_eq!(up.requests(), 7);

    // More traffic moves the counters.
    for _ in 0..5 {
        client.get(sluice.url("/api/y")).send().await.unwrap();
    }
    settle(|| requests(&[]), 17.0).await;
    assert_eq!(requests(&["route=\"api\"", "status=\"200\""]).await, 12.0);
}

/// Waits (up to 5 s) until `count` reaches `want`: a request is counted when it ends, just after
/// its answer went out, so a client can see the answer before the counter moves.
async fn settle<F, Fut>(count: F, want: f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count().await < want {
        assert!(std::time::Instant::now() < deadline, "not every request was counted");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_access_log_line_and_its_trace_is_propagated() {
    let up = echo().await;
    let (sluice, _admin) = start(up.addr());
    let client = client();

    // A client's trace is continued: same trace id upstream, sluice's span as the parent.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen: Value = client
        .get(sluice.url("/api/traced?q=1"))
        .header("traceparent", parent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields.len(), 4, "{sent}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    );
    assert_ne!(
        fields[2], "00f067aa0ba902b7",
        "sluice's own span is the upstream's parent"
    );
    // Without one, sluice starts a trace.
    let seen: Value = client
        .get(sluice.url("/api/fresh"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert!(
        started.len() == 55 && started.starts_with("00-") && started.ends_with("-01"),
        "{started}"
    );
    assert_eq!(
        client
            .get(sluice.url("/api/b"))
            .header("x-block", "1")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(client.get(sluice.url("/dead")).send().await.unwrap().status(), 502);
    assert_eq!(client.get(sluice.url("/nowhere")).send().await.unwrap().status(), 404);

    // Five requests, five lines (written by a background thread: give it a moment).
    let lines = access_log_lines(&sluice, 5).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    // Each line is written when its request ends, by the worker that served it: order them.
    let mut entries: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let order = ["/api/traced?q=1", "/api/fresh", "/api/b", "/dead", "/nowhere"];
    entries.sort_by_key(|e| order.iter().position(|p| e["path"] == *p));

    let traced = &entries[0];
    assert_eq!(traced["route"], "api");
    assert_eq!(traced["method"], "GET");
    assert_eq!(traced["path"], "/api/traced?q=1");
    assert_eq!(traced["status"], 200);
    assert_eq!(traced["upstream"], "u");
    assert_eq!(traced["target"], up.addr().to_string());
    assert_eq!(traced["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(traced["bytes_out"].as_u64().unwrap() > 0);
    assert!(traced["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(traced["time"].as_str().unwrap().ends_with('Z'));
    assert!(traced["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let calls: Vec<(String, String, String)> = traced["middleware"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["phase"].as_str().unwrap().into(),
                c["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let call = |n: &str, p: &str, o: &str| (n.to_owned(), p.to_owned(), o.to_owned());
    assert_eq!(
        calls,
        [
            call("tag", "request-headers", "next"),
            call("block", "request-headers", "next"),
            call("tag", "response-headers", "next"),
        ]
    );
    assert_eq!(entries[1]["trace_id"].as_str().unwrap(), &started[3..35]);

    let blocked = &entries[2];
    assert_eq!(blocked["status"], 403);
    assert_eq!(blocked["upstream"], Value::Null, "never went upstream");
    assert_eq!(blocked["middleware"][1]["outcome"], "respond");
    assert_eq!(blocked["middleware"][1]["status"], 403);

    assert_eq!(entries[3]["route"], "dead");
    assert_eq!(entries[3]["status"], 502);
    assert!(entries[3]["error"].is_string(), "{}", entries[3]);
    assert_eq!(entries[4]["route"], Value::Null);
    assert_eq!(entries[4]["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_have_no_colour_codes_and_json_logs_are_one_object_a_line() {
    let echo = common::echo().await;
    let config = format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n[[route]]\nname = \"all\"\nupstream = \"echo\"\n",
        echo.addr()
    );
    let text = common::Sluice::start_in(&config, tempfile::tempdir().unwrap(), &[]);
    let json = common::Sluice::start_in(&config, tempfile::tempdir().unwrap(), &[("SLUICE_LOG_FORMAT", "json")]);
    for sluice in [&text, &json] {
        assert_eq!(
            common::client().get(sluice.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    let logged = text.stderr();
    assert!(logged.contains("sluice is serving"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "escape codes in a log file:\n{logged}");
    let logged = json.stderr();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "sluice is serving" && l["level"] == "INFO"),
        "{logged}"
    );

    let (_dir, _path, out) = common::run_on_config_env("check", &config, &[("SLUICE_LOG_FORMAT", "yaml")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`SLUICE_LOG_FORMAT` is `yaml`"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_middleware_ask_of_the_host_is_counted_per_call_in_metrics_and_the_access_log() {
    let fetched = Canned::start(Reply::Body(200, b"{}".to_vec())).await;
    let (addr, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"[server]
listen = ["{addr}"]
admin = "{admin}"
cache-dir = {cache:?}
access-log = "access.log"

[upstreams.u]
targets = ["{dead}"]

[middleware.count]
component = {count:?}

[middleware.snoop]
component = {snoop:?}
allow-hosts = ["{fetched}"]

{stamp}
[[route]]
name = "api"
upstream = "u"
middleware = ["tag", "count", "snoop"]
"#,
        cache = shared_cache_dir().display().to_string(),
        dead = free_addr(),
        count = component("state_counter"),
        snoop = component("snoop"),
        fetched = fetched.addr,
        stamp = stamp("tag", "\"request-headers\""),
    );
    let sluice = Sluice::start_raw(&config, addr);
    let client = client();
    for _ in 0..2 {
        // `snoop` answers itself, after fetching what `x-fetch` names.
        let resp = client
            .get(sluice.url("/"))
            .header("x-fetch", fetched.url("/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(fetched.hits(), 2);

    // Per middleware and interface: `count` makes 3 state operations and logs a line per request,
    // `snoop` sends one outbound request, `tag` asks nothing.
    let host_calls = |labels: &'static [&'static str]| metric_sum(admin, "sluice_middleware_host_calls_total", labels);
    assert_eq!(host_calls(&["middleware=\"count\"", "interface=\"state\""]).await, 6.0);
    assert_eq!(host_calls(&["middleware=\"count\"", "interface=\"log\""]).await, 2.0);
    assert_eq!(host_calls(&["middleware=\"count\"", "interface=\"http\""]).await, 0.0);
    assert_eq!(host_calls(&["middleware=\"snoop\"", "interface=\"http\""]).await, 2.0);
    assert_eq!(host_calls(&["middleware=\"snoop\"", "interface=\"state\""]).await, 0.0);
    assert_eq!(host_calls(&["middleware=\"tag\""]).await, 0.0);

    // The access log line of each request says the same, call by call.
    let lines = access_log_lines(&sluice, 2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap();
        let calls: Vec<(&str, &Value)> = entry["middleware"]
            .as_array()
            .unwrap()
            .iter()
            .map(|call| (call["name"].as_str().unwrap(), &call["host_calls"]))
            .collect();
        assert_eq!(
            calls,
            [
                ("tag", &serde_json::json!({ "state": 0, "log": 0, "http": 0 })),
                ("count", &serde_json::json!({ "state": 3, "log": 1, "http": 0 })),
                ("snoop", &serde_json::json!({ "state": 0, "log": 0, "http": 1 })),
            ],
            "{line}"
        );
    }
}
