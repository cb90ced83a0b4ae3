//! `builtin:rate-limit` end to end: a real sluice with two worker threads, real concurrent clients.

use crate::common;

use common::*;
use serde_json::Value;

fn config(upstream: std::net::SocketAddr, limit: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n[middleware.limit]\ncomponent = \"builtin:rate-limit\"\nconfig = {limit}\n\n[[route]]\nname = \"limited\"\npath-prefix = \"/limited\"\nupstream = \"u\"\nmiddleware = [\"limit\"]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_burst_of_40_concurrent_requests_pass_across_workers() {
    let up = echo().await;
    let sluice = Sluice::start(&config(
        up.addr(),
        r#"{ key = "header:x-api-key", rate = 1, per = "1m", burst = 5 }"#,
    ));
    let url = sluice.url("/limited");
    // 40 requests at once, each on its own connection so both workers serve them.
    let all: Vec<_> = (0..40)
        .map(|_| {
            let req = client().get(&url).header("x-api-key", "team-a");
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let mut passed = 0;
    let mut limited = Vec::new();
    for handle in all {
        let resp = handle.await.unwrap();
        match resp.status().as_u16() {
            200 => passed += 1,
            429 => limited.push(resp),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(passed, 5, "burst 5: exactly 5 of 40 pass");
    assert_eq!(limited.len(), 35);
    assert_eq!(up.requests(), 5, "limited requests never reach the upstream");

    let resp = limited.pop().unwrap();
    let headers = resp.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 429);

    // Another key has its own budget.
    let other = client().get(&url).header("x-api-key", "team-b").send().await.unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["ratelimit-limit"], "5");
    assert_eq!(other.headers()["ratelimit-remaining"], "4");
    let reset: u64 = other.headers()["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!(
        (59..=60).contains(&reset),
        "RateLimit-Reset {reset}: one request at 1 per minute"
    );

    // Routes without the middleware are not limited.
    assert_eq!(client().get(sluice.url("/other")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_refills_at_the_rate() {
    let up = echo().await;
    let sluice = Sluice::start(&config(
        up.addr(),
        r#"{ key = "client-ip", rate = 10, per = "10s", burst = 2 }"#,
    ));
    let client = client();
    let statuses = |n| {
        let client = client.clone();
        let url = sluice.url("/limited");
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(client.get(&url).send().await.unwrap().status().as_u16());
            }
            out
        }
    };
    assert_eq!(statuses(3).await, [200, 200, 429]);
    // One interval (1 s) later, one more request is allowed, and only one.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(statuses(2).await, [200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_key_follows_missing() {
    let up = echo().await;
    let deny = Sluice::start(&config(
        up.addr(),
        r#"{ key = "header:x-api-key", rate = 5, per = "1s" }"#,
    ));
    let resp = client().get(deny.url("/limited")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "the request has no rate-limit key (header `x-api-key`)"
    );

    let allow = Sluice::start(&config(
        up.addr(),
        r#"{ key = "header:x-api-key", rate = 5, per = "1s", missing = "allow" }"#,
    ));
    let resp = client().get(allow.url("/limited")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("ratelimit-limit").is_none());
}

#[test]
fn invalid_config_is_refused_at_load_naming_the_key() {
    let (_dir, _path, out) = run_on_config(
        "check",
        &format!(
            "[server]\ncache-dir = {:?}\n{}",
            shared_cache_dir().display().to_string(),
            config(
                "127.0.0.1:9".parse().unwrap(),
                r#"{ key = "cookie:id", rate = 5, per = "1s" }"#
            )
        ),
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("middleware `limit` rejected its config: `key`: `cookie:id` is not one of `client-ip`, `header:<name>`, `context:<key>`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_value_from_an_earlier_middleware_can_be_the_key() {
    let up = echo().await;
    // `stamp` attaches context `stamp.path` = its name; the limit keys on it.
    let cfg = config(up.addr(), r#"{ key = "context:stamp.path", rate = 1, per = "1m", burst = 2 }"#)
        .replace(
            "middleware = [\"limit\"]",
            "middleware = [\"who\", \"limit\"]",
        )
        .replace(
            "[[route]]\nname = \"limited\"",
            &format!(
                "[middleware.who]\ncomponent = {:?}\nconfig = {{ name = \"tenant-1\", phases = [\"request-headers\"] }}\n\n[[route]]\nname = \"limited\"",
                component("stamp")
            ),
        );
    let sluice = Sluice::start(&cfg);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client()
                .get(sluice.url("/limited"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
}
