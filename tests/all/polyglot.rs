//! Middleware written in JavaScript and Python, with their SDKs (`middleware/sdk-js`,
//! `middleware/sdk-python`), built by their own toolchains (componentize-js, componentize-py)
//! into components, run by a real sluice over real TCP next to a Rust one.
//!
//! The components are `middleware/probe/probe.{js,py}` (one config-driven probe per language:
//! stamps, short-circuits, body edits, a trap and a loop) and each SDK's example, built by
//! `scripts/build-polyglot.sh` into `target/polyglot/`.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The built JavaScript or Python component `name` (`probe_js`, `hello_py`, ...), as an absolute
/// path. Builds what is out of date first, and compiles every one of them into the shared
/// artifact cache once, so no test waits on (or races) another's first compile of an
/// interpreter (~20 s each).
pub fn polyglot(name: &str) -> String {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/build-polyglot.sh"))
            .output()
            .expect("run scripts/build-polyglot.sh");
        assert!(
            out.status.success(),
            "scripts/build-polyglot.sh failed (its toolchains come from scripts/setup.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config = format!(
            "[server]\ncache-dir = {:?}\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n",
            shared_cache_dir().display().to_string()
        );
        let names = ["probe_js", "probe_py", "hello_js", "hello_py"];
        for name in names {
            config += &format!(
                "[middleware.{name}]\ncomponent = {:?}\nconfig = {{ name = \"{name}\" }}\n",
                path(name)
            );
        }
        config += &format!("[[route]]\nname = \"r\"\nupstream = \"u\"\nmiddleware = {names:?}\n");
        let (_dir, _path, out) = run_on_config("check", &config);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
    path(name)
}

fn path(name: &str) -> String {
    repo_root()
        .join("target/polyglot")
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// `[middleware.NAME]` running the `lang` probe (`js` or `py`) with `extra` config keys
/// (a TOML inline-table body) and `section` lines.
fn probe(name: &str, lang: &str, extra: &str, section: &str) -> String {
    format!(
        "[middleware.{name}]\ncomponent = {:?}\nconfig = {{ name = \"{name}\"{extra} }}\n{section}\n",
        polyglot(&format!("probe_{lang}"))
    )
}

fn route(upstream: std::net::SocketAddr, chain: &[&str], middleware: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n[[route]]\nname = \"mw\"\nupstream = \"u\"\nmiddleware = {chain:?}\n"
    )
}

/// Routes `/js` and `/py` to `upstream`, each through the middleware of that name in `middleware`.
fn per_language(upstream: std::net::SocketAddr, middleware: &str) -> String {
    let mut config = format!("[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n");
    for lang in ["js", "py"] {
        config += &format!(
            "[[route]]\nname = \"{lang}\"\npath-prefix = \"/{lang}\"\nupstream = \"u\"\nmiddleware = [\"{lang}\"]\n\n"
        );
    }
    config
}

fn values<'a>(resp: &'a reqwest::Response, name: &str) -> Vec<&'a str> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_javascript_and_python_run_as_one_chain_each_reading_the_context_of_the_one_before() {
    let up = echo().await;
    let mw = stamp("rs", "\"request-headers\", \"response-headers\"")
        + &probe("js", "js", "", "")
        + &probe("py", "py", "", "");
    let sluice = Sluice::start(&route(up.addr(), &["rs", "js", "py"], &mw));

    let resp = client().get(sluice.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", sluice.stderr());
    assert_eq!(
        values(&resp, "x-stamp-response"),
        ["py", "js", "rs"],
        "response phases in reverse chain order, each language's edit applied"
    );
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-stamp-request"], "rs, js, py", "request phases in chain order");
    assert_eq!(
        h["x-stamp-saw-js"], "rs>js",
        "JavaScript read the context Rust attached"
    );
    assert_eq!(
        h["x-stamp-saw-py"], "rs>js>py",
        "Python read the context JavaScript attached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_answer_the_client_themselves() {
    let up = echo().await;
    let mw = probe("js", "js", ", block-header = \"x-block-js\", block-status = 403", "")
        + &probe("py", "py", ", block-header = \"x-block-py\", block-status = 451", "");
    let sluice = Sluice::start(&route(up.addr(), &["js", "py"], &mw));

    for (header, status, by) in [("x-block-js", 403, "js"), ("x-block-py", 451, "py")] {
        let resp = client().get(sluice.url("/x")).header(header, "1").send().await.unwrap();
        assert_eq!(resp.status(), status, "{header}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert!(
            resp.headers().get("x-stamp-response").is_none(),
            "no response phase runs for a request answered by middleware"
        );
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["detail"], format!("{by} blocks requests with {header}"));
    }
    assert_eq!(up.requests(), 0, "the upstream never saw a blocked request");

    let resp = client().get(sluice.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_replace_request_and_response_bodies() {
    let up = echo().await;
    let all = ", phases = [\"request-headers\", \"request-body\", \"response-headers\", \"response-body\"]";
    let mw = probe("js", "js", all, "") + &probe("py", "py", all, "");
    let sluice = Sluice::start(&route(up.addr(), &["js", "py"], &mw));

    let resp = client()
        .post(sluice.url("/x"))
        .header("x-echo-body", "raw")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", sluice.stderr());
    let length: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let body = resp.text().await.unwrap();
    assert_eq!(
        body, "hello+js+py+py+js",
        "request bodies edited in chain order, response bodies in reverse"
    );
    assert_eq!(length, body.len(), "sluice fixed the framing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_and_a_loop_in_javascript_or_python_fail_that_request_per_on_error_and_no_other() {
    let up = echo().await;
    let watch = ", trap-header = \"x-trap\", loop-header = \"x-loop\"";
    let mw = probe("js", "js", watch, "timeout = \"50ms\"")
        + &probe("py", "py", watch, "timeout = \"50ms\"\non-error = \"allow\"");
    let sluice = Sluice::start(&per_language(up.addr(), &mw));

    for fault in ["x-trap", "x-loop"] {
        // `js` denies: the request fails with a 500 naming the middleware, within its deadline.
        let resp = faulty(&sluice, "/js/x", fault).await;
        assert_eq!(resp.status(), 500, "{fault}");
        let problem: Value = resp.json().await.unwrap();
        let failure = if fault == "x-trap" { "trapped" } else { "timed out" };
        assert_eq!(problem["detail"], format!("middleware `js` {failure}"));

        // `py` allows: the request goes on without it.
        let resp = faulty(&sluice, "/py/x", fault).await;
        assert_eq!(resp.status(), 200, "{fault}: on-error = allow skips the failed phase");
        let seen: Value = resp.json().await.unwrap();
        assert!(
            seen["headers"]["x-stamp-request"].is_null(),
            "{fault}: the failed phase's edits never reached the upstream: {seen}"
        );

        // The next request through each is served by a working instance.
        for lang in ["js", "py"] {
            let resp = client().get(sluice.url(&format!("/{lang}/x"))).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{lang} after {fault}");
            assert_eq!(values(&resp, "x-stamp-response"), [lang]);
        }
    }
    assert!(sluice.stderr().contains("middleware=\"py\" failure=timed out"));
}

/// GETs `path` with header `fault` set; the answer must come within the middleware's deadline
/// (50 ms) and far below the client's 30 s: a loop that was not stopped would hold it.
async fn faulty(sluice: &Sluice, path: &str, fault: &str) -> reqwest::Response {
    let started = Instant::now();
    let resp = client().get(sluice.url(path)).header(fault, "1").send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{path} {fault}: {:?}",
        started.elapsed()
    );
    resp
}

const TOKEN: &str = "test-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_middleware_is_hot_swapped_under_load_without_a_failed_request() {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\nadmin-token-env = \"SLUICE_ADMIN_TOKEN\"\n\n{}",
        shared_cache_dir().display().to_string(),
        route(up.addr(), &["py"], &probe("py", "py", "", ""))
    );
    let sluice = Sluice::spawn(
        &config,
        addr,
        tempfile::tempdir().unwrap(),
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );

    // Four clients on their own connections, back to back: each response is the probe's
    // (`x-stamp-response: py`) or the example's (`x-hello-lang: python`), never a failure.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), sluice.url("/x"));
            tokio::spawn(async move {
                let client = client();
                let (mut probe, mut hello) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let resp = client.get(&url).send().await.expect("a request failed");
                    assert_eq!(resp.status(), 200, "a request failed during the swap");
                    match (
                        resp.headers().get("x-stamp-response"),
                        resp.headers().get("x-hello-lang"),
                    ) {
                        (Some(_), None) => probe += 1,
                        (None, Some(_)) => hello += 1,
                        other => panic!("one request ran neither or both versions: {other:?}"),
                    }
                    resp.bytes().await.unwrap();
                }
                (probe, hello)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let wasm = std::fs::read(polyglot("hello_py")).unwrap();
    let resp = client()
        .put(format!("http://{admin}/admin/middleware/py/component"))
        .bearer_auth(TOKEN)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let after: Value = client()
        .get(sluice.url("/x"))
        .header("x-name", "swap")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["headers"]["x-hello"], "hello, swap", "the new version serves");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut probe_served, mut hello_served) = (0, 0);
    for client in clients {
        let (probe, hello) = client.await.unwrap();
        probe_served += probe;
        hello_served += hello;
    }
    assert!(
        probe_served > 0 && hello_served > 0,
        "{probe_served} before, {hello_served} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_sees_no_environment_and_no_filesystem_of_the_host() {
    let up = echo().await;
    let mw = probe("py", "py", ", inspect-header = \"x-inspect\"", "");
    let sluice = Sluice::start_in(
        &route(up.addr(), &["py"], &mw),
        tempfile::tempdir().unwrap(),
        &[("SLUICE_SECRET_FOR_PROBE", "must-not-leak")],
    );
    let resp = client()
        .get(sluice.url("/x"))
        .header("x-inspect", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "printing to stdout and stderr is harmless");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-probe-env"], "0",
        "no environment variable of sluice's"
    );
    let fs = seen["headers"]["x-probe-fs"].as_str().unwrap();
    assert!(
        fs.starts_with("denied") && fs.ends_with(")") && !fs.contains("read"),
        "no directory is preopened: {fs}"
    );
}

#[test]
fn a_javascript_or_python_init_that_refuses_its_config_is_a_located_config_error() {
    let config = format!(
        "[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\n{}{}[[route]]\nname = \"r\"\nupstream = \"u\"\nmiddleware = [\"js\", \"py\"]\n",
        // `nam`: a typo for `name`, which the probe requires.
        probe("js", "js", "", "").replace("name = \"js\"", "nam = \"js\""),
        probe("py", "py", ", phases = [\"request-headerz\"]", ""),
    );
    let (_dir, path, out) = run_on_config(
        "check",
        &format!("[server]\ncache-dir = {:?}\n{config}", shared_cache_dir()),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    assert!(
        stderr.contains(&format!(
            "{file}:8:10: `middleware.js.config`: middleware `js` rejected its config: `name` is required: a string to stamp"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`middleware.py.config`: middleware `py` rejected its config: unknown phase 'request-headerz'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_count_in_the_shared_state_and_log_through_sluice() {
    let up = echo().await;
    let counting = ", count-header = \"x-count\"";
    let mw = probe("js", "js", counting, "") + &probe("py", "py", counting, "");
    let sluice = Sluice::start(&per_language(up.addr(), &mw));
    for lang in ["js", "py"] {
        for expected in 1..=3 {
            let resp = client()
                .get(sluice.url(&format!("/{lang}/x")))
                .header("x-count", "1")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{}", sluice.stderr());
            let seen: Value = resp.json().await.unwrap();
            assert_eq!(seen["headers"]["x-probe-count"], expected.to_string(), "{lang}");
        }
    }
    let log = sluice.stderr();
    for lang in ["js", "py"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("middleware=\"{lang}\"")) && l.contains("hit 3")),
            "{lang} logged through sluice:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_middleware_runs_off_the_workers_and_its_answer_still_applies() {
    let up = echo().await;
    let mw = probe("js", "js", ", trap-header = \"x-trap\"", "");
    let sluice = Sluice::start(&route(up.addr(), &["js"], &mw));
    let client = client();
    // Five failures in a row quarantine it: its calls take turns on the quarantine thread.
    for _ in 0..6 {
        let resp = client.get(sluice.url("/x")).header("x-trap", "1").send().await.unwrap();
        assert_eq!(resp.status(), 500);
    }
    assert!(
        sluice
            .stderr()
            .contains("middleware keeps failing: its calls now run one at a time until one succeeds"),
        "{}",
        sluice.stderr()
    );
    // A call that succeeds there has its edits applied as on a worker, and lifts the quarantine.
    // The thread runs only when no worker wants a CPU: on a machine as busy as the suite's, a
    // call may wait past its turn and fail as `quarantined`, and as nothing else (its time there
    // waiting for a CPU is not its running time).
    let started = Instant::now();
    let resp = loop {
        let resp = client.get(sluice.url("/x")).send().await.unwrap();
        if resp.status() == 200 {
            break resp;
        }
        let body = resp.text().await.unwrap();
        assert!(body.contains("waited for its turn past its timeout"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(30), "{}", sluice.stderr());
    };
    assert_eq!(values(&resp, "x-stamp-response"), ["js"]);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-stamp-request"], "js", "{seen}");
    assert!(
        sluice.stderr().contains("middleware answered again"),
        "{}",
        sluice.stderr()
    );
}

/// A failed call discards its instance, also a request's own fresh one: the request's later
/// phases run on a new instance (one that trapped cannot be entered again), and the failure is
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fresh_instance_is_replaced_for_the_requests_later_phases() {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let mw = probe(
        "js",
        "js",
        ", trap-header = \"x-trap\"",
        "instances = \"fresh\"\non-error = \"allow\"",
    );
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\n\n{}",
        shared_cache_dir().display().to_string(),
        route(up.addr(), &["js"], &mw)
    );
    let sluice = Sluice::start_raw(&config, addr);
    let client = client();

    // The request phase throws; `allow` lets the request through, and the response phase runs
    // on a new instance and stamps the response.
    let resp = client.get(sluice.url("/x")).header("x-trap", "1").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-stamp-response"), ["js"]);
    let seen: Value = resp.json().await.unwrap();
    assert!(seen["headers"]["x-stamp-request"].is_null(), "{seen}");

    let calls = async |phase: &str, outcome: &str| {
        let (phase, outcome) = (format!("phase=\"{phase}\""), format!("outcome=\"{outcome}\""));
        metric_sum(
            admin,
            "sluice_middleware_calls_total",
            &["middleware=\"js\"", &phase, &outcome],
        )
        .await
    };
    assert_eq!(calls("request-headers", "failed").await, 1.0);
    assert_eq!(calls("response-headers", "next").await, 1.0);
    assert_eq!(calls("response-headers", "failed").await, 0.0);
    let failures = metric_sum(admin, "sluice_middleware_failures_total", &["middleware=\"js\""]).await;
    assert_eq!(failures, 1.0, "one trap, counted once");
}
