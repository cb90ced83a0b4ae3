//! Per-request cost of middleware, in process through the runtime: a fresh instance from the
//! pre-initialized snapshot plus the phase calls, as the proxy does it.
//!
//! `cargo bench --bench middleware`. Compared:
//! - `trivial`: the `stamp` component, request-headers and response-headers phases;
//! - `chain-of-4`: four of those on one request;
//! - `trivial/reused`, `chain-of-4/reused`, `regex-init/reused`: the same with `reuse` (an idle
//!   instance per middleware serves the next request);
//! - `regex-init/pre-initialized`: a component whose `init` compiles 200 regexes, served from its
//!   wizer snapshot (what sluice does);
//! - `regex-init/pre-initialized-warm`: the same, with one match run in `init` so the regex
//!   engine's lazy caches are in the snapshot too;
//! - `regex-init/init-per-request`: the same component instantiated without the snapshot, running
//!   `init` on every request (what fresh instances would cost without pre-initialization);
//! - `boundary/response-headers/{empty,full}`: one call straight through the instance's exports
//!   (`stamp` is a `compact-middleware` component: each head is encoded into one byte string),
//!   with empty heads and with a full request and response head: a call's floor, and what the
//!   heads add (docs/benchmarks.md); `boundary/request-body/empty-head-384-bytes`: empty heads
//!   and a 384-byte body, handed back;
//! - `load/*`: loading a middleware, compiled or from the artifact cache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{REUSE, current_thread, facts, link, test_component};
use criterion::{Criterion, criterion_group, criterion_main};
use pingora::http::{RequestHeader, ResponseHeader};
use sluice::chain::{Chain, ChainRun, Message, Reuse};
use sluice::runtime::host::HostState;
use sluice::runtime::types::Request;
use sluice::runtime::{Runtime, Start};
use sluice::state::State;

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/v3/users/42/profile", None).unwrap();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-request-id", "abc"),
    ] {
        req.insert_header(name, value).unwrap();
    }
    req
}

fn one_request(rt: &tokio::runtime::Runtime, chain: &Chain) {
    let mut req = request();
    let mut response = ResponseHeader::build(200, None).unwrap();
    rt.block_on(async {
        let mut run = ChainRun::new(chain, facts("bench"), tracing::Span::none());
        let _ = run.run(Message::RequestHeaders(&mut req)).await;
        let _ = run.run(Message::ResponseHeaders(&req, &mut response)).await;
    });
}

fn per_request(c: &mut Criterion) {
    let rt = current_thread();
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let stamp = test_component("stamp");
    let regex_wasm = test_component("regex_init");
    // Four `stamp` middleware (header phases), with fresh or reused instances.
    let stamps = |reuse: Option<Reuse>| -> Vec<_> {
        ["a", "b", "c", "d"]
            .iter()
            .map(|n| {
                let config = format!(r#"{{"name":"{n}","phases":["request-headers","response-headers"]}}"#);
                link(&rt, &runtime, n, &stamp, &config, reuse)
            })
            .collect()
    };
    let fresh = stamps(None);

    let mut group = c.benchmark_group("middleware");
    let empty = Chain::empty();
    group.bench_function("empty-chain", |b| b.iter(|| one_request(&rt, &empty)));
    let trivial = Chain::new(vec![fresh[0].clone()]);
    group.bench_function("trivial", |b| b.iter(|| one_request(&rt, &trivial)));
    let four = Chain::new(fresh.clone());
    group.bench_function("chain-of-4", |b| b.iter(|| one_request(&rt, &four)));

    let reused = stamps(REUSE);
    let trivial_reused = Chain::new(vec![reused[0].clone()]);
    group.bench_function("trivial/reused", |b| b.iter(|| one_request(&rt, &trivial_reused)));
    let four_reused = Chain::new(reused);
    group.bench_function("chain-of-4/reused", |b| b.iter(|| one_request(&rt, &four_reused)));

    let regex = Chain::new(vec![link(&rt, &runtime, "re", &regex_wasm, "{}", None)]);
    group.bench_function("regex-init/pre-initialized", |b| b.iter(|| one_request(&rt, &regex)));
    let warm = Chain::new(vec![link(
        &rt,
        &runtime,
        "re-warm",
        &regex_wasm,
        r#"{"warm":true}"#,
        None,
    )]);
    group.bench_function("regex-init/pre-initialized-warm", |b| {
        b.iter(|| one_request(&rt, &warm))
    });

    let regex_reused = Chain::new(vec![link(&rt, &runtime, "re-reused", &regex_wasm, "{}", REUSE)]);
    group.bench_function("regex-init/reused", |b| b.iter(|| one_request(&rt, &regex_reused)));

    // Without the snapshot: instantiate the original component and run `init` on every request.
    let raw = runtime.prepare(&regex_wasm).unwrap();
    let state: Arc<State> = Arc::new(State::memory());
    let req = request();
    let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    group.bench_function("regex-init/init-per-request", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut host = HostState::new("re".into(), state.clone(), 64 << 20, None);
                host.deadline = std::time::Instant::now() + Duration::from_secs(10);
                let mut store = runtime.store(host);
                let instance = raw.instantiate_async(&mut store).await.unwrap();
                instance.call_init(&mut store, "{}").await.unwrap().unwrap();
                let view = Request {
                    method: "GET",
                    scheme: "http",
                    authority: "api.example.com",
                    path_with_query: "/api/v3/users/42/profile",
                    headers: &headers,
                    client_addr: "127.0.0.1:1234",
                    route: "bench",
                    context: &[],
                };
                instance.on_request_headers(&mut store, view).await.unwrap();
            })
        })
    });
    group.finish();
}

/// Loading a middleware. With a snapshot (`instances = "fresh"`): `init` under wizer, the snapshot
/// compiled by Cranelift and written to the artifact cache (uncached), or the compiled snapshot read
/// back (cached, what a restart or a reload with an unchanged component does). Without (reused
/// instances): the component compiled as built and cached, or read back, and `init` run once.
fn load(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    let cases = [("stamp", r#"{"name":"a"}"#), ("regex_init", "{}")];
    for ((component, config), start) in cases
        .iter()
        .flat_map(|case| [(case, Start::Snapshot), (case, Start::Init)])
    {
        let (component, config, start) = (*component, *config, start);
        let label = match start {
            Start::Snapshot => component.to_owned(),
            Start::Init => format!("{component}/no-snapshot"),
        };
        let wasm = test_component(component);
        let state: Arc<State> = Arc::new(State::memory());
        group.bench_function(format!("{label}/uncached"), |b| {
            b.iter(|| {
                let cache = tempfile::tempdir().unwrap();
                let runtime = Runtime::new(cache.path().to_owned()).unwrap();
                let loaded = rt
                    .block_on(runtime.load("m", &wasm, config, state.clone(), 64 << 20, start))
                    .unwrap();
                assert!(!loaded.cached);
            })
        });
        let cache = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(cache.path().to_owned()).unwrap();
        rt.block_on(runtime.load("m", &wasm, config, state.clone(), 64 << 20, start))
            .unwrap();
        group.bench_function(format!("{label}/cached"), |b| {
            b.iter(|| {
                let loaded = rt
                    .block_on(runtime.load("m", &wasm, config, state.clone(), 64 << 20, start))
                    .unwrap();
                assert!(loaded.cached);
            })
        });
    }
    group.finish();
}

/// The floor of one phase call: `stamp`'s `on-response-headers` called straight through its
/// exports on one instance (no chain, no budget, no metrics; its heads encoded, as the chain does
/// for a `compact-middleware` component), with a request of empty strings and
/// no headers, and with the bench request's four headers and 8-header response: what crossing
/// the boundary costs before sluice does anything around it.
fn boundary(c: &mut Criterion) {
    let rt = current_thread();
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let stamp = test_component("stamp");
    let state: Arc<State> = Arc::new(State::memory());
    let loaded = rt
        .block_on(runtime.load("b", &stamp, r#"{"name":"b"}"#, state, 64 << 20, Start::Init))
        .unwrap();
    let sluice::runtime::Started { mut store, bindings } = loaded.instance.expect("a sluice:middleware component");
    store.data_mut().deadline = std::time::Instant::now() + Duration::from_secs(3600);
    let empty = Request {
        method: "",
        scheme: "",
        authority: "",
        path_with_query: "",
        headers: &[],
        client_addr: "",
        route: "",
        context: &[],
    };
    let req = request();
    let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let full = Request {
        method: "GET",
        scheme: "http",
        authority: "api.example.com",
        path_with_query: "/api/v3/users/42/profile",
        headers: &headers,
        client_addr: "127.0.0.1:1234",
        route: "bench",
        context: &[("stamp.path", "a")],
    };
    let response: Vec<(&str, &[u8])> = [
        ("server", "nginx"),
        ("date", "Thu, 03 Dec 2026 10:00:00 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "60"),
        ("connection", "keep-alive"),
        ("x-stamp-response", "a"),
        ("x-stamp-response", "b"),
        ("cache-control", "no-store"),
    ]
    .iter()
    .map(|(n, v)| (*n, v.as_bytes()))
    .collect();
    let mut group = c.benchmark_group("boundary");
    group.bench_function("response-headers/empty", |b| {
        b.iter(|| {
            rt.block_on(bindings.on_response_headers(&mut store, empty.clone(), 200, &[]))
                .unwrap()
        })
    });
    group.bench_function("response-headers/full", |b| {
        b.iter(|| {
            rt.block_on(bindings.on_response_headers(&mut store, full.clone(), 200, &response))
                .unwrap()
        })
    });
    // Empty heads and a 384-byte body (about the full head's HTTP/1 size), which `stamp` hands
    // back one byte longer: a byte string crossing both ways.
    let blob = vec![b'x'; 384];
    group.bench_function("request-body/empty-head-384-bytes", |b| {
        b.iter(|| {
            rt.block_on(bindings.on_request_body(&mut store, empty.clone(), &blob))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = per_request, boundary, load
}
criterion_main!(benches);
