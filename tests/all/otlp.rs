//! OTLP trace export (`[server] otlp`): an OTLP/HTTP receiver here decodes what sluice sends with
//! the OpenTelemetry project's own protobuf types: a server span per request that joins the
//! client's W3C trace, a span per middleware call under it, the span id sluice sends upstream as
//! `traceparent`, and the client's sampling decision followed.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the receiver got: every span, with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on a free port: answers every `POST` with an empty 200 and keeps the
/// decoded spans.
async fn receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Default::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then `content-length` bytes of protobuf.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
                    let export = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
                    for resource_spans in export.resource_spans {
                        let service = resource_spans
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for scope in resource_spans.scope_spans {
                            for span in scope.spans {
                                store.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value of attribute `key` of `span`, as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

/// The spans of trace `trace_id` (hex) received so far.
fn spans_of(received: &Received, trace_id: &str) -> Vec<(String, Span)> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, span)| hex::encode(&span.trace_id) == trace_id)
        .cloned()
        .collect()
}

/// Waits (15 s at most) until each `(trace, n)` of `traces` has at least `n` spans received.
async fn exported(received: &Received, traces: &[(&str, usize)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while traces.iter().any(|(trace, n)| spans_of(received, trace).len() < *n) {
        assert!(
            Instant::now() < deadline,
            "spans not exported: {:?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The middleware call spans among `spans`, each checked to be under `request`'s span.
fn calls_under<'a>(spans: &'a [(String, Span)], request: &'a Span) -> impl Iterator<Item = &'a Span> {
    spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "middleware")
        .inspect(|s| {
            assert_eq!(
                s.parent_span_id, request.span_id,
                "a middleware span is under its request's"
            );
        })
}

/// GETs `path` with `traceparent` if given; returns the `traceparent` the upstream received.
async fn traced(sluice: &Sluice, path: &str, traceparent: Option<&str>) -> String {
    let mut req = client().get(sluice.url(path));
    if let Some(traceparent) = traceparent {
        req = req.header("traceparent", traceparent);
    }
    let seen: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    seen["headers"]["traceparent"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_middleware_spans_are_exported_in_the_clients_trace() {
    let (collector, received) = receiver().await;
    let up = echo().await;
    let listen = free_addr();
    let sluice = Sluice::start_raw(
        &format!(
            "[server]\nlisten = [\"{listen}\"]\nthreads = 2\ncache-dir = {cache:?}\n\
             otlp = {{ endpoint = \"http://{collector}/v1/traces\", service-name = \"sluice-test\" }}\n\n\
             {stamp}\n[upstreams.u]\ntargets = [\"{up}\"]\n\n\
             [[route]]\nname = \"api\"\npath-prefix = \"/api\"\nupstream = \"u\"\nmiddleware = [\"tag\"]\n",
            cache = shared_cache_dir().display().to_string(),
            stamp = stamp("tag", "\"request-headers\", \"response-headers\""),
            up = up.addr(),
        ),
        listen,
    );

    // A client's trace it does not sample: followed, nothing exported.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let sent = traced(&sluice, "/api/quiet", Some(unsampled)).await;
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && sent.ends_with("-00"),
        "{sent}"
    );

    // A client's sampled trace: sluice's span is its child, and the upstream's parent.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let upstream_saw = traced(
        &sluice,
        "/api/x",
        Some(&format!("00-{client_trace}-00f067aa0ba902b7-01")),
    )
    .await;
    // No traceparent: sluice starts the trace.
    let started = traced(&sluice, "/api/y", None).await;
    let started_trace = &started[3..35];

    exported(&received, &[(client_trace, 3), (started_trace, 3)]).await;

    let spans = spans_of(&received, client_trace);
    let (service, request) = spans
        .iter()
        .find(|(_, s)| s.name == "GET api")
        .expect("the request span");
    assert_eq!(service, "sluice-test");
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        hex::encode(&request.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    assert_eq!(attribute(request, "route").as_deref(), Some("api"));
    assert_eq!(attribute(request, "path").as_deref(), Some("/api/x"));
    assert_eq!(attribute(request, "status").as_deref(), Some("200"));
    assert_eq!(
        upstream_saw,
        format!("00-{client_trace}-{}-01", hex::encode(&request.span_id)),
        "the upstream's parent is sluice's exported span"
    );
    let mut calls: Vec<(String, String)> = calls_under(&spans, request)
        .map(|s| {
            assert_eq!(attribute(s, "name").as_deref(), Some("tag"));
            assert_eq!(attribute(s, "outcome").as_deref(), Some("next"));
            (attribute(s, "phase").unwrap(), attribute(s, "version").unwrap())
        })
        .collect();
    calls.sort();
    assert_eq!(
        calls.iter().map(|(phase, _)| phase.as_str()).collect::<Vec<_>>(),
        ["request-headers", "response-headers"]
    );
    assert!(calls[0].1.starts_with("sha256:"), "{calls:?}");

    let roots = spans_of(&received, started_trace);
    let root = roots
        .iter()
        .find(|(_, s)| s.name == "GET api")
        .expect("the started trace's span");
    assert!(root.1.parent_span_id.is_empty(), "sluice started this trace");
    assert_eq!(
        started,
        format!("00-{started_trace}-{}-01", hex::encode(&root.1.span_id))
    );

    assert!(
        spans_of(&received, "0af7651916cd43dd8448eb211c80319c").is_empty(),
        "an unsampled trace was exported"
    );
}

/// A route with standard `wasi:http` links is proxied by sluice itself (`proxy::nested`): its
/// links' calls are spans under the request's as well, `phase="handle"`, and the upstream's
/// parent is still the request's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_http_links_calls_are_spans_in_the_request_trace() {
    let (collector, received) = receiver().await;
    let up = echo().await;
    let listen = free_addr();
    let link = |name: &str, component_name: &str| {
        format!("[middleware.{name}]\ncomponent = {:?}\n", component(component_name))
    };
    let sluice = Sluice::start_raw(
        &format!(
            "[server]\nlisten = [\"{listen}\"]\nthreads = 2\ncache-dir = {cache:?}\n\
             otlp = {{ endpoint = \"http://{collector}/v1/traces\", service-name = \"sluice-test\" }}\n\n\
             {stamp}\n{p2}\n{p3}\n[upstreams.u]\ntargets = [\"{up}\"]\n\n\
             [[route]]\nname = \"api\"\npath-prefix = \"/api\"\nupstream = \"u\"\n\
             middleware = [\"tag\", \"p2\", \"p3\"]\n",
            cache = shared_cache_dir().display().to_string(),
            stamp = stamp("tag", "\"request-headers\", \"response-headers\""),
            p2 = link("p2", "http_link"),
            p3 = link("p3", "http_middleware"),
            up = up.addr(),
        ),
        listen,
    );

    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let upstream_saw = traced(&sluice, "/api/x", Some(&format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    exported(&received, &[(trace, 5)]).await;
    let spans = spans_of(&received, trace);
    let (_, request) = spans
        .iter()
        .find(|(_, s)| s.name == "GET api")
        .expect("the request span");
    assert_eq!(attribute(request, "status").as_deref(), Some("200"));
    assert_eq!(
        upstream_saw,
        format!("00-{trace}-{}-01", hex::encode(&request.span_id)),
        "the upstream's parent is the request's span"
    );
    let mut calls: Vec<(u64, String, String, String)> = calls_under(&spans, request)
        .map(|s| {
            (
                s.start_time_unix_nano,
                attribute(s, "name").unwrap(),
                attribute(s, "phase").unwrap(),
                attribute(s, "outcome").unwrap(),
            )
        })
        .collect();
    calls.sort();
    let calls: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|(_, name, phase, outcome)| (name.as_str(), phase.as_str(), outcome.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("tag", "request-headers", "next"),
            ("p2", "handle", "next"),
            ("p3", "handle", "next"),
            ("tag", "response-headers", "next"),
        ]
    );
}

#[test]
fn a_bad_otlp_endpoint_is_a_located_config_error() {
    let (_dir, path, out) = run_on_config(
        "check",
        "[server]\notlp = { endpoint = \"https://collector:4318\", sample-ratio = 2.0 }\n\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n\n[[route]]\nname = \"r\"\nupstream = \"u\"\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:2:21: `server.otlp.endpoint`: invalid otlp endpoint `https://collector:4318`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`server.otlp.sample-ratio`: `sample-ratio` must be between 0 and 1, not `2`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    let up = echo().await;
    let (listen, dead) = (free_addr(), free_addr());
    let sluice = Sluice::start_raw(
        &format!(
            "[server]\nlisten = [\"{listen}\"]\nthreads = 2\ncache-dir = {cache:?}\n\
             otlp = {{ endpoint = \"http://{dead}/v1/traces\", timeout = \"200ms\" }}\n\n\
             [upstreams.u]\ntargets = [\"{up}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
            cache = shared_cache_dir().display().to_string(),
            up = up.addr(),
        ),
        listen,
    );
    let client = client();
    for _ in 0..200 {
        assert_eq!(client.get(sluice.url("/")).send().await.unwrap().status(), 200);
    }
    // Exports kept failing meanwhile (every second); the proxy served on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.get(sluice.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(up.requests(), 201);
}
