//! Upstreams over real TCP: balancing, failures and timeouts, forwarding headers, hop-by-hop
//! headers, large bodies byte for byte, connection pooling, malformed requests.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use rand::RngCore;
use serde_json::Value;

fn one_route(upstream: &str) -> String {
    format!("{upstream}\n[[route]]\nname = \"all\"\nupstream = \"u\"\n")
}

async fn tally(client: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let who = echoed(client, url).await["upstream"].as_str().unwrap().to_owned();
        *counts.entry(who).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_between_targets() {
    let (a, b) = (echo().await, echo().await);
    let sluice = Sluice::start(&one_route(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\nbalance = \"round-robin\"",
        a.addr(),
        b.addr()
    )));
    let counts = tally(&client(), &sluice.url("/"), 20).await;
    assert_eq!(counts.get(&served_by(&a)), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&served_by(&b)), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_uses_every_target() {
    let (a, b) = (echo().await, echo().await);
    let sluice = Sluice::start(&one_route(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\nbalance = \"random\"",
        a.addr(),
        b.addr()
    )));
    let counts = tally(&client(), &sluice.url("/"), 100).await;
    // Binomial(100, 0.5): fewer than 20 on one side has probability ~1e-9.
    assert!(counts.values().all(|&n| n >= 20) && counts.len() == 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_each_client_on_one_target() {
    let (a, b) = (echo().await, echo().await);
    let sluice = Sluice::start(&one_route(&format!(
        "[upstreams.u]\ntargets = [\"{}\", \"{}\"]\nbalance = \"hash\"",
        a.addr(),
        b.addr()
    )));
    let mut per_target: HashMap<String, usize> = HashMap::new();
    for i in 1..=16 {
        let client = client_from(&format!("127.0.0.{i}"));
        let counts = tally(&client, &sluice.url("/"), 5).await;
        assert_eq!(counts.len(), 1, "client 127.0.0.{i} moved between targets: {counts:?}");
        *per_target.entry(counts.into_keys().next().unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_target.len(),
        2,
        "16 clients all hashed to one target: {per_target:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_problem_json() {
    let closed = free_addr(); // bound and released: nothing listens there
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{closed}\"]")));
    let resp = client().get(sluice.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 502);
    assert!(body["detail"].as_str().unwrap().contains("`u`"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_after_read_timeout() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\nread-timeout = \"300ms\"",
        up.addr()
    )));
    let started = Instant::now();
    let resp = client()
        .get(sluice.url("/slow"))
        .header("x-echo-delay", "3s")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    // A fast request on the same upstream still works.
    assert_eq!(client().get(sluice.url("/fast")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_accepts_is_504_after_connect_timeout() {
    // A listener with a full accept queue: the kernel drops further SYNs, so connects hang.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    std::thread::sleep(Duration::from_millis(100));

    let sluice = Sluice::start(&one_route(&format!(
        "[upstreams.u]\ntargets = [\"{addr}\"]\nconnect-timeout = \"300ms\""
    )));
    let started = Instant::now();
    let resp = client().get(sluice.url("/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504, "after {took:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    drop((socket, fillers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_on_the_way_in_and_via_on_the_way_out() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let resp = client()
        .get(sluice.url("/who"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https") // a client cannot claim TLS it did not use
        .header("via", "1.1 edge")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 sluice");
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["host"], "shop.example.com", "the Host header is passed through");
    assert_eq!(h["via"], "1.1 edge, 1.1 sluice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_proxy() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let resp = client()
        .get(sluice.url("/"))
        .header("connection", "keep-alive, x-client-secret")
        .header("x-client-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-kept", "yes")
        .header("x-echo-response-header", "connection: x-server-secret")
        .header("x-echo-response-header", "x-server-secret: 1")
        .header("x-echo-response-header", "proxy-authenticate: Basic")
        .header("x-echo-response-header", "x-also-kept: yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-server-secret").is_none(), "{:?}", resp.headers());
    assert!(
        resp.headers().get("proxy-authenticate").is_none(),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.headers()["x-also-kept"], "yes");
    let seen: Value = resp.json().await.unwrap();
    let h = seen["headers"].as_object().unwrap();
    for gone in ["x-client-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "upstream saw `{gone}`: {h:?}");
    }
    assert_eq!(h["x-kept"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_bodies_pass_byte_for_byte_both_ways() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let client = client();

    let mut body = vec![0u8; 8 << 20];
    rand::rng().fill_bytes(&mut body);
    let resp = client
        .post(sluice.url("/upload"))
        .header("x-echo-body", "raw")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(back == body, "the echoed body differs from what was sent");

    // A chunked upload (no Content-Length) arrives whole too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures_util_stream(chunks));
    let resp = client
        .post(sluice.url("/upload"))
        .header("x-echo-body", "raw")
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == body, "the chunked upload differs");

    let size = 16 << 20;
    let resp = client
        .get(sluice.url("/download"))
        .header("x-echo-size", size.to_string())
        .send()
        .await
        .unwrap();
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), size);
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8),
        "the download is corrupted"
    );
}

fn futures_util_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send + 'static {
    tokio_stream::iter(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let client = client();
    for _ in 0..50 {
        echoed(&client, &sluice.url("/")).await;
    }
    assert_eq!(up.requests(), 50);
    assert!(
        up.connections() <= 3,
        "50 sequential requests opened {} upstream connections",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let up = echo().await;
    let mut sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let cases = [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00", // a TLS ClientHello on a plain listener
    ];
    for garbage in cases {
        let mut stream = std::net::TcpStream::connect(sluice.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{garbage:?} got {answer:?}");
    }
    assert!(sluice.is_running(), "sluice died:\n{}", sluice.stderr());
    assert_eq!(echoed(&client(), &sluice.url("/")).await["method"], "GET");
    assert_eq!(up.requests(), 1, "no malformed request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_without_buffering() {
    let up = echo().await;
    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{}\"]", up.addr())));
    let started = Instant::now();
    let mut resp = client()
        .get(sluice.url("/drip"))
        .header("x-echo-drip", "4x400ms")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"chunk 0\n");
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let done_at = started.elapsed();
    assert_eq!(rest, b"chunk 1\nchunk 2\nchunk 3\n");
    // The upstream takes 1.2 s to finish; a buffering proxy would deliver the first chunk then too.
    assert!(first_at < Duration::from_millis(600), "first chunk after {first_at:?}");
    assert!(done_at >= Duration::from_millis(1200), "whole body after {done_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_without_buffering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reports when the first body bytes arrive, before the client sends the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (first_seen_tx, first_seen_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut first_seen_tx = Some(first_seen_tx);
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed before the body ended");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("first-part")
                && let Some(tx) = first_seen_tx.take()
            {
                let _ = tx.send(());
            }
            if text.contains("second-part") && text.ends_with("0\r\n\r\n") {
                break;
            }
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    });

    let sluice = Sluice::start(&one_route(&format!("[upstreams.u]\ntargets = [\"{upstream}\"]")));
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<&'static [u8], std::io::Error>>(1);
    let request = tokio::spawn(
        client()
            .post(sluice.url("/upload"))
            .body(reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(
                body_rx,
            )))
            .send(),
    );
    body_tx.send(Ok(b"first-part")).await.unwrap();
    // A buffering proxy would wait for the whole body before the upstream saw any of it.
    tokio::time::timeout(Duration::from_secs(5), first_seen_rx)
        .await
        .expect("the upstream did not see the first part of the body before the rest was sent")
        .unwrap();
    body_tx.send(Ok(b"second-part")).await.unwrap();
    drop(body_tx);
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}
