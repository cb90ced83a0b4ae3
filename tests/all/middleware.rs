//! The Wasm middleware chain end to end: real components, a real sluice, real TCP.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A config with one route `mw` through `chain` to `upstream`, and the given middleware sections.
fn config(upstream: std::net::SocketAddr, chain: &[&str], middleware: &str) -> String {
    let chain: Vec<String> = chain.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n\n[[route]]\nname = \"mw\"\npath-prefix = \"/mw\"\nupstream = \"u\"\nmiddleware = [{}]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n",
        chain.join(", ")
    )
}

const HEADER_PHASES: &str = "\"request-headers\", \"response-headers\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_phases_run_in_order_response_phases_in_reverse_with_context() {
    let up = echo().await;
    let mw = format!("{}{}", stamp("a", HEADER_PHASES), stamp("b", HEADER_PHASES));
    let sluice = Sluice::start(&config(up.addr(), &["a", "b"], &mw));
    let resp = client().get(sluice.url("/mw/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let order: Vec<&str> = resp
        .headers()
        .get_all("x-stamp-response")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["b", "a"], "response phases run in reverse chain order");
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-stamp-request"], "a, b", "request phases run in chain order");
    assert_eq!(h["x-stamp-saw-a"], "a");
    assert_eq!(h["x-stamp-saw-b"], "a>b", "b read the context a attached");

    // The route without middleware is untouched.
    let plain: Value = client()
        .get(sluice.url("/other"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain["headers"].get("x-stamp-request").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_not_declared_is_never_called() {
    let up = echo().await;
    let sluice = Sluice::start(&config(
        up.addr(),
        &["only-response"],
        &stamp("only-response", "\"response-headers\""),
    ));
    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.headers()["x-stamp-response"], "only-response");
    let seen: Value = resp.json().await.unwrap();
    assert!(
        seen["headers"].get("x-stamp-request").is_none(),
        "on-request-headers ran: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_circuit_stops_the_chain_and_the_upstream_never_sees_the_request() {
    let up = echo().await;
    let mw = format!(
        "[middleware.block]\ncomponent = {:?}\nconfig = {{ header = \"x-block\", status = 403 }}\n{}",
        component("short_circuit"),
        stamp("after", HEADER_PHASES)
    );
    let sluice = Sluice::start(&config(up.addr(), &["block", "after"], &mw));
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-block", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("x-stamp-response").is_none(), "later middleware ran");
    assert_eq!(resp.text().await.unwrap(), "blocked: `x-block` is present\n");
    assert_eq!(up.requests(), 0, "the upstream saw a short-circuited request");

    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_across_requests_and_instances() {
    let up = echo().await;
    let mw = format!("[middleware.count]\ncomponent = {:?}\n", component("state_counter"));
    let sluice = Sluice::start(&config(up.addr(), &["count"], &mw));
    let client = client();
    let mut seen = Vec::new();
    for path in ["/mw/1", "/mw/2", "/mw/3"] {
        let body: Value = client.get(sluice.url(path)).send().await.unwrap().json().await.unwrap();
        seen.push((
            body["headers"]["x-hits"].as_str().unwrap().to_owned(),
            body["headers"]["x-last-path"].clone(),
        ));
    }
    assert_eq!(seen[0].0, "1");
    assert_eq!(seen[1].0, "2");
    assert_eq!(seen[2].0, "3");
    assert_eq!(seen[2].1, "/mw/2", "get reads what the previous request's instance set");
}

async fn misbehaving(component_name: &str, extra: &str, on_error: &str) -> (Sluice, common::EchoServer) {
    let up = echo().await;
    let mw = format!(
        "[middleware.bad]\ncomponent = {:?}\non-error = \"{on_error}\"\n{extra}\n",
        component(component_name)
    );
    (Sluice::start(&config(up.addr(), &["bad"], &mw)), up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_the_request_under_deny_and_is_skipped_under_allow() {
    let (sluice, up) = misbehaving("trap", "", "deny").await;
    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `bad` trapped");
    assert_eq!(up.requests(), 0);

    let (sluice, up) = misbehaving("trap", "", "allow").await;
    assert_eq!(client().get(sluice.url("/mw")).send().await.unwrap().status(), 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_the_response_phase_is_a_502_under_deny() {
    let (sluice, up) = misbehaving("trap", "config = { phase = \"response-headers\" }", "deny").await;
    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `bad` trapped");
    assert_eq!(
        up.requests(),
        1,
        "the upstream answered before the response phase failed"
    );
}

/// A load from outside a middleware's linear memory traps, whether sluice runs the guests without
/// bounds checks (4 GiB of address space reserved per memory, the default: the hardware faults)
/// or, under an address-space limit that cannot hold that, with them (1 GiB per memory, and a
/// warning saying so). Either way the other middleware still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_outside_the_memory_traps_with_or_without_bounds_checks() {
    let up = echo().await;
    let mut mw = stamp("ok", HEADER_PHASES);
    for access in ["past-the-end", "top"] {
        mw += &format!(
            "[middleware.{access}]\ncomponent = {:?}\nconfig = {{ access = \"{access}\" }}\n",
            component("trap")
        );
    }
    let routes = "[[route]]\nname = \"past-the-end\"\npath-prefix = \"/past-the-end\"\nupstream = \"u\"\nmiddleware = [\"past-the-end\"]\n\n\
                  [[route]]\nname = \"top\"\npath-prefix = \"/top\"\nupstream = \"u\"\nmiddleware = [\"top\"]\n";
    let config = format!("{}\n{routes}", config(up.addr(), &["ok"], &mw));
    let warning = "cannot reserve 4 GiB of address space per Wasm memory";
    // 8 TiB: room for the pools at 1 GiB a memory (~5 TiB), not at 4 GiB (~20 TiB).
    for (sluice, limited) in [
        (Sluice::start(&config), false),
        (Sluice::start_with_address_space(&config, 8 << 30), true),
    ] {
        assert_eq!(sluice.stderr().contains(warning), limited, "{}", sluice.stderr());
        for path in ["/past-the-end", "/top"] {
            let resp = client().get(sluice.url(path)).send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert_eq!(status, 500, "{path} (limited: {limited}): {body}");
            assert!(body.contains("trapped"), "{body}");
        }
        let resp = client().get(sluice.url("/mw")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-stamp-response"], "ok");
    }
    assert_eq!(up.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_stops_at_the_memory_limit() {
    let (mut sluice, up) = misbehaving("hog", "memory-limit = \"16MiB\"\ntimeout = \"2s\"", "deny").await;
    let started = Instant::now();
    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "middleware `bad` exceeded its memory limit");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(sluice.is_running());
    assert_eq!(up.requests(), 0);
    assert_eq!(client().get(sluice.url("/plain")).send().await.unwrap().status(), 200);

    let (sluice, up) = misbehaving("hog", "memory-limit = \"16MiB\"\ntimeout = \"2s\"", "allow").await;
    let resp = client().get(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "on-error = allow: the request goes on without the middleware"
    );
    assert_eq!(up.requests(), 1);
}

fn check_config(body: &str) -> String {
    check_config_raw(&format!(
        "[server]\ncache-dir = {:?}\n{body}",
        shared_cache_dir().display().to_string()
    ))
}

/// `sluice check`'s complaint about `config`, which it must refuse.
fn check_config_raw(config: &str) -> String {
    let (_dir, _path, out) = run_on_config("check", config);
    assert!(!out.status.success(), "sluice check accepted:\n{config}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn the_wrong_world_and_a_rejected_config_are_refused_at_load() {
    let upstream = "[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n";
    let err = check_config(&format!(
        "{upstream}[middleware.odd]\ncomponent = {:?}\n",
        component("wrong_world")
    ));
    assert!(
        err.contains("`middleware.odd.component`: middleware `odd`: component"),
        "{err}"
    );
    assert!(
        err.contains("does not implement the `sluice:middleware/middleware@0.1.0` or `compact-middleware` world"),
        "{err}"
    );

    // A WASI 0.3 `wasi:http/service` component (built with the `wasip3` crate, no sluice SDK) is
    // named for what it is, with where to read on. (A `wasi:http/proxy` or `wasi:http/middleware`
    // one is a chain link: tests/all/wasi_http.rs.)
    let err = check_config(&format!(
        "{upstream}[middleware.web3]\ncomponent = {:?}\n",
        component("http_handler")
    ));
    assert!(
        err.contains(":6:13: `middleware.web3.component`: middleware `web3`: component `"),
        "{err}"
    );
    assert!(
        err.contains("it is a standard `wasi:http/service` component (WASI 0.3"),
        "{err}"
    );
    assert!(
        err.contains("not a service that has no next hop (docs/middleware.md)"),
        "{err}"
    );

    let err = check_config(&format!(
        "{upstream}[middleware.s]\ncomponent = {:?}\nconfig = {{ nom = \"typo\" }}\n",
        component("stamp")
    ));
    assert!(
        err.contains(":7:10: `middleware.s.config`: middleware `s` rejected its config: `name` is required"),
        "{err}"
    );

    let err = check_config(&format!("{upstream}[middleware.junk]\ncomponent = \"sluice.toml\"\n"));
    assert!(
        err.contains(
            "`middleware.junk.component`: middleware `junk`: component `sluice.toml` not a valid WebAssembly component"
        ),
        "{err}"
    );
}

/// What the `remember` middleware told the upstream: (`x-served`, `x-previous`).
async fn remembered(sluice: &Sluice, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = client().get(sluice.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let seen: Value = request.send().await.unwrap().json().await.unwrap();
    let header = |name: &str| seen["headers"][name].as_str().unwrap_or("-").to_owned();
    (header("x-served"), header("x-previous"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_never_see_an_earlier_request() {
    let up = echo().await;
    let mw = format!(
        "[middleware.mem]\ncomponent = {:?}\ninstances = \"fresh\"\n",
        component("remember")
    );
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    for i in 0..5 {
        let seen = remembered(&sluice, &format!("/mw/{i}"), &[]).await;
        assert_eq!(seen, ("1".to_owned(), "none".to_owned()), "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_reused_by_default_within_bounds() {
    let up = echo().await;
    let mw = format!("[middleware.mem]\ncomponent = {:?}\n", component("remember"));
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    let mut served = Vec::new();
    for i in 0..3 {
        served.push(remembered(&sluice, &format!("/mw/{i}"), &[]).await);
    }
    let counts: Vec<&str> = served.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(counts, ["1", "2", "3"], "one instance serves request after request");
    assert_eq!(served[2].1, "/mw/1");
    // Retired after a failed call, as with explicit `reuse` bounds.
    assert_eq!(remembered(&sluice, "/mw/trap", &[("x-trap", "1")]).await.0, "-");
    assert_eq!(remembered(&sluice, "/mw/after", &[]).await.0, "1");

    // The default `max-memory` follows where an instance starts: ~1.1 MiB here, over half of a
    // 2 MiB `memory-limit`, and still reused.
    let mw = format!(
        "[middleware.mem]\ncomponent = {:?}\nmemory-limit = \"2MiB\"\n",
        component("remember")
    );
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    let mut counts = Vec::new();
    for i in 0..3 {
        counts.push(remembered(&sluice, &format!("/mw/{i}"), &[]).await.0);
    }
    assert_eq!(counts, ["1", "2", "3"], "reused under a tight memory-limit");

    // A `max-memory` below that can never let an instance be reused: said at load.
    let mw = format!(
        "[middleware.mem]\ncomponent = {:?}\nreuse = {{ max-memory = \"1MiB\" }}\n",
        component("remember")
    );
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    assert!(
        sluice.stderr().contains(
            "`reuse.max-memory` is below what an instance starts with: every instance is retired after one request"
        ),
        "{}",
        sluice.stderr()
    );
    assert_eq!(remembered(&sluice, "/mw/a", &[]).await.0, "1");
    assert_eq!(remembered(&sluice, "/mw/b", &[]).await.0, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_is_held_for_a_call_not_for_the_request() {
    let up = echo().await;
    let mw = format!("[middleware.mem]\ncomponent = {:?}\n", component("remember"));
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    // A request waiting 1 s for its upstream, after its middleware call, holds no instance: the
    // next request's call runs on the one the slow request's call used.
    let (slow, next) = tokio::join!(remembered(&sluice, "/mw/slow", &[("x-echo-delay", "1s")]), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        remembered(&sluice, "/mw/next", &[]).await
    });
    assert_eq!(next, ("2".to_owned(), "/mw/slow".to_owned()));
    assert_eq!(slow.0, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_instances_serve_max_requests_then_retire() {
    let up = echo().await;
    let mw = format!(
        // Filling 10 MiB on a loaded CI machine can take longer than the default 100ms deadline;
        // this test is about retirement, not speed.
        "[middleware.mem]\ncomponent = {:?}\non-error = \"allow\"\ntimeout = \"5s\"\nreuse = {{ max-requests = 3, max-memory = \"8MiB\" }}\n",
        component("remember")
    );
    let sluice = Sluice::start(&config(up.addr(), &["mem"], &mw));
    let mut served = Vec::new();
    for i in 0..7 {
        served.push(remembered(&sluice, &format!("/mw/{i}"), &[]).await);
    }
    let counts: Vec<&str> = served.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(counts, ["1", "2", "3", "1", "2", "3", "1"], "retired after 3 requests");
    assert_eq!(
        served[1].1, "/mw/0",
        "a reused instance keeps what the last request left"
    );

    // An instance whose call trapped is not reused.
    assert_eq!(remembered(&sluice, "/mw/a", &[]).await.0, "2");
    assert_eq!(remembered(&sluice, "/mw/trap", &[("x-trap", "1")]).await.0, "-");
    assert_eq!(
        remembered(&sluice, "/mw/b", &[]).await,
        ("1".to_owned(), "none".to_owned())
    );

    // Nor one that grew past max-memory.
    let grew = remembered(&sluice, "/mw/grow", &[("x-grow", "10")]).await;
    assert_eq!(grew.0, "2", "sluice said:\n{}", sluice.stderr());
    assert_eq!(remembered(&sluice, "/mw/c", &[]).await.0, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_instances_successor_runs_its_init_off_the_request_path() {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    // `init` computes for 250 ms here, as one compiling many schemas might; every instance
    // serves 3 requests.
    let mw = format!(
        "[middleware.mem]\ncomponent = {:?}\nconfig = {{ init-ms = 250 }}\nreuse = {{ max-requests = 3 }}\n",
        component("remember")
    );
    let full = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\nadmin = \"{admin}\"\ncache-dir = {:?}\n\n{}",
        shared_cache_dir().display().to_string(),
        config(up.addr(), &["mem"], &mw)
    );
    let sluice = Sluice::start_raw(&full, addr);
    let mut counts = Vec::new();
    for i in 0..9 {
        let started = Instant::now();
        counts.push(remembered(&sluice, &format!("/mw/{i}"), &[]).await.0);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "request {i} took {took:?}: it waited for an `init`"
        );
        // The time a client takes between requests: the successor's `init` runs meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        counts,
        ["1", "2", "3", "1", "2", "3", "1", "2", "3"],
        "each instance still retires after max-requests"
    );
    let created = |path: &'static str| {
        let path = format!("path=\"{path}\"");
        async move {
            metric_sum(
                admin,
                "sluice_middleware_instances_created_total",
                &["middleware=\"mem\"", &path],
            )
            .await
        }
    };
    assert_eq!(created("load").await, 1.0);
    assert_eq!(created("ahead").await, 3.0, "one successor per instance, made ahead");
    assert_eq!(created("request").await, 0.0, "no request created one");
}

#[test]
fn reuse_bounds_are_checked_at_load() {
    let err = check_config(&format!(
        "[middleware.mem]\ncomponent = {:?}\nmemory-limit = \"16MiB\"\nreuse = {{ max-requests = 0, max-memory = \"32MiB\" }}\n",
        component("remember")
    ));
    assert!(
        err.contains(":6:9: `middleware.mem.reuse`: `reuse.max-requests` must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains(
            "`reuse.max-memory` (32.0 MiB) is over `memory-limit` (16.0 MiB): an instance never grows that far"
        ),
        "{err}"
    );

    let err = check_config(&format!(
        "[middleware.mem]\ncomponent = {:?}\ninstances = \"fresh\"\nreuse = {{ max-requests = 10 }}\n",
        component("remember")
    ));
    assert!(
        err.contains(":6:9: `middleware.mem.reuse`: `reuse` bounds a reused instance's life, and `instances = \"fresh\"` reuses none"),
        "{err}"
    );
    let err = check_config(&format!(
        "[middleware.mem]\ncomponent = {:?}\ninstances = \"shared\"\n",
        component("remember")
    ));
    assert!(
        err.contains(":5:13: `middleware.mem.instances`: unknown variant `shared`, expected `reused` or `fresh`"),
        "{err}"
    );
}

#[test]
fn a_memory_limit_below_what_an_instance_starts_with_is_refused_at_load_even_from_the_cache() {
    // `remember`'s snapshot, made (and cached) under the default limit, starts at ~1.1 MiB.
    let body = |limit: &str| {
        format!(
            "[server]\ncache-dir = {:?}\n[middleware.mem]\ncomponent = {:?}\nconfig = {{ tag = \"cached\" }}\n{limit}",
            shared_cache_dir().display().to_string(),
            component("remember")
        )
    };
    let (_dir, _path, out) = run_on_config("check", &body(""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = check_config_raw(&body("memory-limit = \"1MiB\"\n"));
    assert!(
        err.contains(":4:13: `middleware.mem.component`: middleware `mem`: component")
            && err.contains("cannot start within its `memory-limit` of 1.0 MiB: an instance starts with 1.1 MiB"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_phase_answer_replaces_even_a_bodiless_upstream_response() {
    let up = echo().await;
    let mw = format!(
        "[middleware.swap]\ncomponent = {:?}\nconfig = {{ header = \"x-block\", status = 200, replace-status = 204 }}\n",
        component("short_circuit")
    );
    let sluice = Sluice::start(&config(up.addr(), &["swap"], &mw));
    let client = client(); // one connection, kept alive across the requests
    for _ in 0..2 {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(sluice.url("/mw")).header("x-echo-status", "204").send(),
        )
        .await
        .expect("answered in time")
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "15");
        let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
            .await
            .expect("body in time");
        assert_eq!(body.unwrap(), "replaced a 204\n");
    }
    let resp = client
        .get(sluice.url("/mw"))
        .header("x-echo-status", "404")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "other statuses pass");
}
