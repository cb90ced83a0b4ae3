//! Standard `wasi:http/proxy` components (WASI 0.2) as chain links, end to end: a component built
//! with the `wasip2` crate only (`middleware/test/http-link`: no sluice SDK, no sluice WIT) between
//! `sluice:middleware` links, over real TCP, in front of a real upstream. Its requests to the
//! authority it was given go through the rest of the chain, then the upstream.

use crate::common;

use common::*;
use serde_json::Value;

/// Route `mw` (`/mw`, through `chain`) and route `plain`, to `upstream`, with `middleware`.
fn config(upstream: std::net::SocketAddr, chain: &[&str], middleware: &str) -> String {
    let chain: Vec<String> = chain.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n\n[[route]]\nname = \"mw\"\npath-prefix = \"/mw\"\nupstream = \"u\"\nmax-body = \"8MiB\"\nmiddleware = [{}]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n",
        chain.join(", ")
    )
}

/// `[middleware.NAME]` for the `http-link` component (WASI 0.2 `wasi:http/proxy`).
fn link(name: &str, on_error: &str) -> String {
    link_of("http_link", name, on_error)
}

/// `[middleware.NAME]` for test component `component`.
fn link_of(component_name: &str, name: &str, on_error: &str) -> String {
    format!(
        "[middleware.{name}]\ncomponent = {:?}\non-error = \"{on_error}\"\n",
        component(component_name)
    )
}

const HEADER_PHASES: &str = "\"request-headers\", \"response-headers\"";

fn values(resp: &reqwest::Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_runs_between_sluice_links_both_ways() {
    let up = echo().await;
    let mw = format!(
        "{}{}{}",
        stamp("a", HEADER_PHASES),
        link("link", "deny"),
        stamp("b", HEADER_PHASES)
    );
    let addr = free_addr();
    let server = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\naccess-log = \"access.log\"\n\n",
        shared_cache_dir().display().to_string()
    );
    let config = server + &config(up.addr(), &["a", "link", "b"], &mw);
    let sluice = Sluice::spawn(&config, addr, tempfile::tempdir().unwrap(), &[]);
    let client = client();

    // Request side: `a`, then the link (its request goes on as its next hop), then `b`, then the
    // upstream. Response side: `b`, the link, `a`.
    let resp = client.get(sluice.url("/mw/x?q=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link"), ["out"]);
    assert_eq!(values(&resp, "x-stamp-response"), ["b", "a"]);
    assert_eq!(values(&resp, "x-link-saw-length"), ["yes"]);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/mw/x");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["headers"]["x-link"], "in");
    assert_eq!(seen["headers"]["x-stamp-request"], "a, b");
    assert!(seen["headers"]["x-forwarded-for"].is_string(), "{seen}");
    assert_eq!(up.requests(), 1);

    // A short-circuit: the link answers itself; `b` and the upstream never see the request,
    // and `a`'s response phase runs over the link's answer.
    let resp = client
        .get(sluice.url("/mw/x"))
        .header("x-link-short", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(values(&resp, "x-link"), ["answered"]);
    assert_eq!(values(&resp, "x-stamp-response"), ["a"]);
    assert_eq!(resp.text().await.unwrap(), "stopped by the link");
    assert_eq!(up.requests(), 1);

    // The access log lists every call as it was made, the link's `handle` once it answered.
    let lines = crate::observability::access_log_lines(&sluice, 2).await;
    let calls = |line: &str| -> Vec<String> {
        let entry: Value = serde_json::from_str(line).unwrap();
        let calls = entry["middleware"].as_array().unwrap().iter();
        calls
            .map(|c| {
                format!(
                    "{} {} {}",
                    c["name"].as_str().unwrap(),
                    c["phase"].as_str().unwrap(),
                    c["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        calls(&lines[0]),
        [
            "a request-headers next",
            "b request-headers next",
            "b response-headers next",
            "link handle next",
            "a response-headers next"
        ]
    );
    assert_eq!(
        calls(&lines[1]),
        [
            "a request-headers next",
            "link handle respond",
            "a response-headers next"
        ]
    );

    // The plain route has no middleware at all.
    let resp = client.get(sluice.url("/plain")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-link").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_a_wasi_http_link() {
    let up = echo().await;
    // Streaming a body through is work for the link (each chunk read and written again): a debug
    // build of sluice takes longer than the default 100 ms over 6 MiB.
    let mw = format!(
        "{}{}timeout = \"10s\"\n",
        stamp("a", HEADER_PHASES),
        link("link", "deny")
    );
    let sluice = Sluice::start(&config(up.addr(), &["a", "link"], &mw));
    let client = client();

    // 6 MiB up, sent chunked (no length), echoed back byte for byte.
    const MIB: usize = 1 << 20;
    let pattern: Vec<u8> = (0..6 * MIB).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = pattern.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let resp = client
        .post(sluice.url("/mw/up"))
        .header("x-echo-body", "raw")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        panic!("{}: {}\n{}", resp.status(), resp.text().await.unwrap(), sluice.stderr());
    }
    assert_eq!(values(&resp, "x-link"), ["out"]);
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", sluice.stderr()));
    assert_eq!(body.len(), 6 * MIB);
    assert!(body[..] == pattern[..], "the body came back as it went");

    // 6 MiB down, with a length, and the same with a known length up.
    let resp = client
        .get(sluice.url("/mw/down"))
        .header("x-echo-size", (6 * MIB).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], (6 * MIB).to_string().as_str());
    assert_eq!(resp.bytes().await.unwrap().len(), 6 * MIB);
    let resp = client
        .post(sluice.url("/mw/up"))
        .body(pattern.clone())
        .send()
        .await
        .unwrap();
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["body-bytes"], 6 * MIB);
    assert_eq!(seen["headers"]["content-length"], (6 * MIB).to_string());

    // A response dripped by the upstream arrives as it is sent, not at its end.
    let started = std::time::Instant::now();
    let mut resp = client
        .get(sluice.url("/mw/drip"))
        .header("x-echo-drip", "3x400ms")
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"chunk"), "{first:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(700),
        "the first chunk came after {:?}",
        started.elapsed()
    );
    while resp.chunk().await.unwrap().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_wasi_http_link_fails_per_on_error() {
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &["link"], &link("link", "deny")));
    let resp = client().get(sluice.url("/mw/trap")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `link` trapped");
    assert_eq!(up.requests(), 0);
    // The next request gets a new instance, and goes through.
    let resp = client().get(sluice.url("/mw/fine")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link"), ["out"]);

    // `allow`: the request goes on without the link, its body as it came.
    let up = echo().await;
    let mw = format!("{}{}", link("link", "allow"), stamp("b", HEADER_PHASES));
    let sluice = Sluice::start(&config(up.addr(), &["link", "b"], &mw));
    let resp = client()
        .post(sluice.url("/mw/trap"))
        .header("x-echo-body", "raw")
        .body("the body, replayed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-link").is_none());
    assert_eq!(values(&resp, "x-stamp-response"), ["b"], "the rest of the chain ran");
    assert_eq!(resp.text().await.unwrap(), "the body, replayed");
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wasi_http_link_is_hot_swapped_under_load_without_losing_a_request() {
    const TOKEN: &str = "test-admin-token";
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\nadmin-token-env = \"SLUICE_ADMIN_TOKEN\"\n\n{}",
        shared_cache_dir().display().to_string(),
        config(
            up.addr(),
            &["a", "link"],
            &format!("{}{}", stamp("a", HEADER_PHASES), link("link", "deny"))
        )
    );
    let sluice = Sluice::spawn(
        &config,
        addr,
        tempfile::tempdir().unwrap(),
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );

    // Eight clients back to back; each answer is the forwarding link's (the upstream's JSON,
    // `x-link: out`) or the answering one's (`hello from wasi:http`), never a failure.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, url) = (stop.clone(), sluice.url("/mw/load"));
            tokio::spawn(async move {
                let client = client();
                let (mut forwarded, mut answered) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client
                        .get(&url)
                        .send()
                        .await
                        .expect("a request failed during the swaps");
                    assert_eq!(resp.status(), 200);
                    assert_eq!(values(&resp, "x-stamp-response"), ["a"]);
                    let link = values(&resp, "x-link");
                    let body = resp.text().await.unwrap();
                    if link == ["out"] {
                        let seen: Value = serde_json::from_str(&body).unwrap();
                        assert_eq!(seen["headers"]["x-link"], "in", "{body}");
                        forwarded += 1;
                    } else {
                        assert_eq!(body, "hello from wasi:http");
                        answered += 1;
                    }
                }
                (forwarded, answered)
            })
        })
        .collect();
    let upload = |name: &str| {
        let wasm = std::fs::read(component(name)).unwrap();
        client()
            .put(format!("http://{admin}/admin/middleware/link/component"))
            .bearer_auth(TOKEN)
            .body(wasm)
            .send()
    };
    // Answering (0.2), forwarding (0.3 `wasi:http/middleware`), forwarding (0.2), ...
    for i in 0..21 {
        let next = ["http_proxy", "http_middleware", "http_link"][i % 3];
        let resp = upload(next).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut forwarded, mut answered) = (0, 0);
    for client in clients {
        let (f, a) = client.await.unwrap();
        forwarded += f;
        answered += a;
    }
    eprintln!("forwarded {forwarded}, answered {answered}");
    assert!(
        forwarded > 0 && answered > 0,
        "forwarded {forwarded}, answered {answered}"
    );

    // A `wasi:http` link's calls are counted under `phase="handle"`.
    let next = metric_sum(
        admin,
        "sluice_middleware_calls_total",
        &["middleware=\"link\"", "phase=\"handle\"", "outcome=\"next\""],
    )
    .await;
    let respond = metric_sum(
        admin,
        "sluice_middleware_calls_total",
        &["middleware=\"link\"", "phase=\"handle\"", "outcome=\"respond\""],
    )
    .await;
    assert!(next >= 1.0 && respond >= 1.0, "next {next}, respond {respond}");
}

/// A `wasi:http` link's previous version stays loaded: a rollback puts it back, whatever kind
/// either is, and a second rollback undoes the first. The admin listing says which is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_is_rolled_back_across_kinds() {
    const TOKEN: &str = "test-admin-token";
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\nadmin-token-env = \"SLUICE_ADMIN_TOKEN\"\n\n{}",
        shared_cache_dir().display().to_string(),
        config(up.addr(), &["link"], &link("link", "deny"))
    );
    let sluice = Sluice::spawn(
        &config,
        addr,
        tempfile::tempdir().unwrap(),
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );
    let client = client();
    let admin_call = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        client
            .request(method, format!("http://{admin}{path}"))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
    };
    // Which component answered: the 0.2 forwarding link (`x-link: out`), the 0.3 middleware (it
    // forwards too, and counts in `x-served`) or the 0.2 answering one (its own body).
    let serving = async || -> &'static str {
        let resp = client.get(sluice.url("/mw/r")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let kind = match (values(&resp, "x-served").is_empty(), values(&resp, "x-link") == ["out"]) {
            (false, _) => "http_middleware",
            (true, true) => "http_link",
            (true, false) => "http_proxy",
        };
        if kind == "http_proxy" {
            assert_eq!(resp.text().await.unwrap(), "hello from wasi:http");
        }
        kind
    };
    let digest = |name: &str| {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(component(name)).unwrap(),
        ))
    };
    let live = async || -> (String, String) {
        let listed: Value = admin_call(reqwest::Method::GET, "/admin/middleware", Vec::new())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let link = &listed["middleware"][0];
        (
            link["digest"].as_str().unwrap_or_default().to_owned(),
            link["previous"]["digest"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(serving().await, "http_link");

    for (upload, previous) in [("http_middleware", "http_link"), ("http_proxy", "http_middleware")] {
        let resp = admin_call(
            reqwest::Method::PUT,
            "/admin/middleware/link/component",
            std::fs::read(component(upload)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        assert_eq!(serving().await, upload);
        assert_eq!(live().await, (digest(upload), digest(previous)));
    }
    // Back to the 0.3 middleware, then forward again to the 0.2 answering link.
    for (back_to, previous) in [("http_middleware", "http_proxy"), ("http_proxy", "http_middleware")] {
        let resp = admin_call(reqwest::Method::POST, "/admin/middleware/link/rollback", Vec::new())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        assert_eq!(serving().await, back_to);
        assert_eq!(live().await, (digest(back_to), digest(previous)));
    }
    assert!(up.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_or_hungry_wasi_http_link_is_stopped_at_its_limits() {
    for component_name in ["http_link", "http_middleware"] {
        stopped_at_its_limits(component_name).await;
    }
}

/// A `wasi:http` link of test component `component_name` (both answer `/loop` and `/hog`).
async fn stopped_at_its_limits(component_name: &str) {
    let up = echo().await;
    let mw = format!(
        "{}timeout = \"50ms\"\nmemory-limit = \"16MiB\"\n",
        link_of(component_name, "link", "deny")
    );
    let sluice = Sluice::start(&config(up.addr(), &["link"], &mw));
    let started = std::time::Instant::now();
    let resp = client().get(sluice.url("/mw/loop")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `link` timed out");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let resp = client().get(sluice.url("/mw/hog")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `link` exceeded its memory limit");
    assert_eq!(up.requests(), 0);
    // Every other request is unaffected.
    let resp = client().get(sluice.url("/mw/fine")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link"), ["out"]);
}

/// A WASI 0.3 link may go on after its response has ended (`wit_bindgen::spawn_local`), but not
/// for ever: one still waiting 5 s after its response ended is stopped (and said to be), so that
/// it gives back its pool slot. The client had its whole response at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_that_lingers_after_its_response_is_stopped() {
    let up = echo().await;
    let mw = link_of("http_middleware", "link", "deny");
    let sluice = Sluice::start(&config(up.addr(), &["link"], &mw));
    let started = std::time::Instant::now();
    let resp = client().get(sluice.url("/mw/linger")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "lingering");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let said = "a `wasi:http` link was still running 5s after its response ended: stopped";
    while !sluice.stderr().contains(said) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{}",
            sluice.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    let resp = client().get(sluice.url("/mw/fine")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link"), ["out"]);
}

/// A `wasi:http` link that keeps failing is quarantined as a `sluice:middleware` link is: after
/// five failures in a row its calls take turns (one waiting past its `timeout` fails as
/// `quarantined`), and its first success lifts that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_that_keeps_failing_takes_turns_until_it_answers() {
    for component_name in ["http_link", "http_middleware"] {
        quarantined(component_name).await;
    }
}

async fn quarantined(component_name: &str) {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let mw = format!("{}timeout = \"50ms\"\n", link_of(component_name, "link", "deny"));
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\n\n{}",
        shared_cache_dir().display().to_string(),
        config(up.addr(), &["link"], &mw)
    );
    let sluice = Sluice::spawn(&config, addr, tempfile::tempdir().unwrap(), &[]);
    let client = client();
    let failures = async |kind: &str| {
        let kind = format!("kind=\"{kind}\"");
        metric_sum(
            admin,
            "sluice_middleware_failures_total",
            &["middleware=\"link\"", &kind],
        )
        .await
    };
    let at_once = async |path: &str, n: usize| -> Vec<u16> {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let (client, url) = (client.clone(), sluice.url(path));
                tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect();
        let mut statuses = Vec::new();
        for request in requests {
            statuses.push(request.await.unwrap());
        }
        statuses
    };

    // Concurrent calls of a healthy link do not take turns: loops, each stopped at its 50 ms.
    assert_eq!(at_once("/mw/loop", 6).await, [500; 6]);
    assert_eq!(failures("quarantined").await, 0.0, "{component_name}");
    assert_eq!(client.get(sluice.url("/mw/fine")).send().await.unwrap().status(), 200);

    for _ in 0..5 {
        assert_eq!(client.get(sluice.url("/mw/trap")).send().await.unwrap().status(), 500);
    }
    assert!(
        sluice
            .stderr()
            .contains("middleware keeps failing: its calls now run one at a time until one succeeds"),
        "{component_name}: {}",
        sluice.stderr()
    );
    // Now they take turns: a loop holds its turn for its 50 ms, and one that waited that long
    // for its turn fails without running.
    assert_eq!(at_once("/mw/loop", 6).await, [500; 6]);
    assert!(failures("quarantined").await >= 1.0, "{component_name}");

    // One answer lifts it: calls run side by side again.
    assert_eq!(client.get(sluice.url("/mw/fine")).send().await.unwrap().status(), 200);
    assert_eq!(at_once("/mw/fine", 6).await, [200; 6]);
    let quarantined = failures("quarantined").await;
    assert_eq!(at_once("/mw/loop", 6).await, [500; 6]);
    assert_eq!(failures("quarantined").await, quarantined, "{component_name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_reaches_other_authorities_only_in_its_allow_hosts() {
    let up = echo().await;
    let allowed = Canned::start(Reply::Body(201, b"{}".to_vec())).await;
    let denied = Canned::start(Reply::Body(200, b"{}".to_vec())).await;
    let mw = format!("{}allow-hosts = [\"{}\"]\n", link("link", "deny"), allowed.addr);
    let sluice = Sluice::start(&config(up.addr(), &["link"], &mw));
    let fetch = async |url: String| {
        client()
            .get(sluice.url("/mw/fetch"))
            .header("x-link-fetch", url)
            .send()
            .await
            .unwrap()
    };
    let resp = fetch(allowed.url("/x")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link-fetched"), ["201"]);
    assert_eq!(allowed.hits(), 1);
    let resp = fetch(denied.url("/x")).await;
    assert_eq!(values(&resp, "x-link-fetch-error"), ["ErrorCode::HttpRequestDenied"]);
    assert_eq!(denied.hits(), 0);
    assert_eq!(up.requests(), 0, "the link answered both itself");
}

/// The same for a WASI 0.3 `wasi:http/middleware` component (`middleware/test/http-middleware`:
/// wit-bindgen against the WASI 0.3.0 WIT, the `wasip3` crate's types): its imported `handler`
/// is the rest of the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_middleware_link_runs_between_sluice_links_and_streams() {
    let up = echo().await;
    let mw = format!(
        "{}{}timeout = \"10s\"\n{}",
        stamp("a", HEADER_PHASES),
        link_of("http_middleware", "mw3", "deny"),
        stamp("b", HEADER_PHASES)
    );
    let sluice = Sluice::start(&config(up.addr(), &["a", "mw3", "b"], &mw));
    let client = client();

    let resp = client.get(sluice.url("/mw/x?q=1")).send().await.unwrap();
    if resp.status() != 200 {
        panic!("{}: {}\n{}", resp.status(), resp.text().await.unwrap(), sluice.stderr());
    }
    assert_eq!(values(&resp, "x-link"), ["out"]);
    assert_eq!(values(&resp, "x-stamp-response"), ["b", "a"]);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/mw/x");
    assert_eq!(seen["headers"]["x-link"], "in");
    assert_eq!(seen["headers"]["x-stamp-request"], "a, b");

    let resp = client
        .get(sluice.url("/mw/x"))
        .header("x-link-short", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(values(&resp, "x-stamp-response"), ["a"]);
    assert_eq!(resp.text().await.unwrap(), "stopped by the link");
    assert_eq!(up.requests(), 1);

    // 6 MiB up, chunked, echoed back byte for byte; 6 MiB down.
    const MIB: usize = 1 << 20;
    let pattern: Vec<u8> = (0..6 * MIB).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = pattern.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let resp = client
        .post(sluice.url("/mw/up"))
        .header("x-echo-body", "raw")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", sluice.stderr()));
    assert!(body[..] == pattern[..], "the body came back as it went");
    let resp = client
        .get(sluice.url("/mw/down"))
        .header("x-echo-size", (6 * MIB).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 6 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_wasi_http_middleware_link_fails_per_on_error() {
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &["mw3"], &link_of("http_middleware", "mw3", "deny")));
    let resp = client().get(sluice.url("/mw/trap")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `mw3` trapped");
    assert_eq!(up.requests(), 0);
    let resp = client().get(sluice.url("/mw/fine")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-link"), ["out"]);

    let up = echo().await;
    let mw = format!(
        "{}{}",
        link_of("http_middleware", "mw3", "allow"),
        stamp("b", HEADER_PHASES)
    );
    let sluice = Sluice::start(&config(up.addr(), &["mw3", "b"], &mw));
    let resp = client()
        .post(sluice.url("/mw/trap"))
        .header("x-echo-body", "raw")
        .body("the body, replayed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-link").is_none());
    assert_eq!(values(&resp, "x-stamp-response"), ["b"]);
    assert_eq!(resp.text().await.unwrap(), "the body, replayed");
}

/// A middleware written with the Spin SDK (`middleware/test/spin-middleware`: `spin-sdk` 7 from
/// crates.io, `#[http_service]` and `spin_sdk::http::next`, as Spin 4 middleware are) runs as a
/// link unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_sdk_middleware_runs_as_a_link() {
    let up = echo().await;
    let mw = format!(
        "{}{}{}",
        stamp("a", HEADER_PHASES),
        link_of("spin_middleware", "spin", "deny"),
        stamp("b", HEADER_PHASES)
    );
    let sluice = Sluice::start(&config(up.addr(), &["a", "spin", "b"], &mw));
    let resp = client()
        .post(sluice.url("/mw/spin"))
        .header("x-echo-body", "raw")
        .body("through spin")
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        panic!("{}: {}\n{}", resp.status(), resp.text().await.unwrap(), sluice.stderr());
    }
    assert_eq!(values(&resp, "x-spin"), ["out"]);
    assert_eq!(values(&resp, "x-stamp-response"), ["b", "a"]);
    assert_eq!(resp.text().await.unwrap(), "through spin");
    let seen: Value = client()
        .get(sluice.url("/mw/spin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-spin"], "in");
    assert_eq!(seen["headers"]["x-stamp-request"], "a, b");
}

/// Standard links beside a built-in: `builtin:rate-limit` before a `wasi:http/middleware` link and
/// a `wasi:http/proxy` one. Its RateLimit headers come back through both links, and its 429
/// answers before either sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_links_run_beside_a_built_in() {
    let up = echo().await;
    let mw = format!(
        "[middleware.limit]\ncomponent = \"builtin:rate-limit\"\nconfig = {{ key = \"header:x-api-key\", rate = 1, per = \"1m\", burst = 2 }}\n{}{}",
        link_of("http_middleware", "mw3", "deny"),
        link("link", "deny")
    );
    let sluice = Sluice::start(&config(up.addr(), &["limit", "mw3", "link"], &mw));
    let send = async || {
        client()
            .get(sluice.url("/mw/limited"))
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap()
    };
    for remaining in ["1", "0"] {
        let resp = send().await;
        assert_eq!(resp.status(), 200);
        // Both links forwarded (each adds its `x-link: out` on the way back), and the built-in's
        // response phase ran over what came back through them.
        assert_eq!(values(&resp, "x-link"), ["out", "out"]);
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["headers"]["x-link"], "in, in");
    }
    let resp = send().await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("x-link").is_none());
    assert_eq!(up.requests(), 2);
}

/// A canary of a `wasi:http` link takes its share of requests; one of another kind of link is
/// refused at load, where it is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_link_has_a_canary_of_its_own_kind_only() {
    let up = echo().await;
    let mw = format!(
        "{}[middleware.link.canary]\ncomponent = {:?}\nweight = 50\n",
        link("link", "deny"),
        component("http_proxy")
    );
    let sluice = Sluice::start(&config(up.addr(), &["link"], &mw));
    let (mut forwarded, mut answered) = (0, 0);
    for _ in 0..60 {
        let resp = client().get(sluice.url("/mw/c")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        match values(&resp, "x-link").as_slice() {
            [out] if out == "out" => forwarded += 1,
            _ => {
                assert_eq!(resp.text().await.unwrap(), "hello from wasi:http");
                answered += 1;
            }
        }
    }
    assert!(
        forwarded > 5 && answered > 5,
        "forwarded {forwarded}, answered {answered}"
    );

    let config = format!(
        "[server]\ncache-dir = {:?}\n{}",
        shared_cache_dir().display().to_string(),
        config(
            up.addr(),
            &["link"],
            &format!(
                "{}[middleware.link.canary]\ncomponent = {:?}\nweight = 10\n",
                link("link", "deny"),
                component("version_one")
            )
        )
    );
    let (_dir, _path, out) = run_on_config("check", &config);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`middleware.link.canary.component`"), "{err}");
    assert!(
        err.contains("middleware `link`: the canary is a `sluice:middleware` component and the primary a standard `wasi:http/proxy` component"),
        "{err}"
    );
}

/// A `wasi:http/middleware` link's instances are reused, as a `sluice:middleware` link's are, within
/// `reuse`'s bounds; `instances = "fresh"` gives every request a new one. (`http-middleware` counts
/// the requests its instance handled in `x-served`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_middleware_link_reuses_instances_within_bounds() {
    let up = echo().await;
    let served = async |sluice: &Sluice| -> Vec<String> {
        let mut served = Vec::new();
        for _ in 0..5 {
            let resp = client().get(sluice.url("/mw/n")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            served.push(values(&resp, "x-served").concat());
            // An instance goes back to the idle ones once it has nothing left to do, just after
            // the client has the whole response (on a loaded machine, its task may wait for a
            // core a while).
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        served
    };
    let reused = format!(
        "{}reuse = {{ max-requests = 3 }}\n",
        link_of("http_middleware", "mw3", "deny")
    );
    let sluice = Sluice::start(&config(up.addr(), &["mw3"], &reused));
    assert_eq!(served(&sluice).await, ["1", "2", "3", "1", "2"]);
    let fresh = format!("{}instances = \"fresh\"\n", link_of("http_middleware", "mw3", "deny"));
    let sluice = Sluice::start(&config(up.addr(), &["mw3"], &fresh));
    assert_eq!(served(&sluice).await, ["1", "1", "1", "1", "1"]);
}
