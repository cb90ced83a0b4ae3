//! Routing over real TCP: host precedence, longest prefix, methods, 404 and 405.

use crate::common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_none_then_longest_prefix() {
    let (exact, wild, any, api) = (echo().await, echo().await, echo().await, echo().await);
    let sluice = Sluice::start(&format!(
        r#"
        [upstreams.exact]
        targets = ["{}"]
        [upstreams.wild]
        targets = ["{}"]
        [upstreams.any]
        targets = ["{}"]
        [upstreams.api]
        targets = ["{}"]

        [[route]]
        name = "any"
        upstream = "any"
        [[route]]
        name = "any-api"
        path-prefix = "/api"
        upstream = "api"
        [[route]]
        name = "wild"
        host = "*.example.com"
        upstream = "wild"
        [[route]]
        name = "exact"
        host = "api.example.com"
        path-prefix = "/v1"
        upstream = "exact"
        "#,
        exact.addr(),
        wild.addr(),
        any.addr(),
        api.addr()
    ));
    let client = client();
    let via = |host: &'static str, path: &'static str| {
        let req = client.get(sluice.url(path)).header("host", host);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{host}{path}");
            resp.json::<Value>().await.unwrap()["upstream"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(via("api.example.com", "/v1/users").await, served_by(&exact));
    assert_eq!(
        via("API.Example.COM:8080", "/v1/users").await,
        served_by(&exact),
        "case and port are ignored"
    );
    assert_eq!(
        via("api.example.com", "/other").await,
        served_by(&wild),
        "exact host without a matching path falls through"
    );
    assert_eq!(via("deep.eu.example.com", "/v1").await, served_by(&wild));
    assert_eq!(
        via("example.com", "/api/x").await,
        served_by(&api),
        "a wildcard does not match its bare suffix"
    );
    assert_eq!(via("other.test", "/api").await, served_by(&api));
    assert_eq!(
        via("other.test", "/apiary").await,
        served_by(&api),
        "prefixes are plain string prefixes"
    );
    assert_eq!(via("other.test", "/").await, served_by(&any));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_problem_json() {
    let up = echo().await;
    let sluice = Sluice::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[route]]\nname = \"users\"\npath-prefix = \"/users\"\nupstream = \"u\"\n",
        up.addr()
    ));
    let resp = client().get(sluice.url("/orders/1")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["title"], "Not Found");
    assert!(body["detail"].as_str().unwrap().contains("/orders/1"), "{body}");
    assert_eq!(up.requests(), 0, "the upstream never saw the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_split_routes_and_others_get_405_with_allow() {
    let (reads, writes) = (echo().await, echo().await);
    let sluice = Sluice::start(&format!(
        r#"
        [upstreams.reads]
        targets = ["{}"]
        [upstreams.writes]
        targets = ["{}"]
        [[route]]
        name = "read"
        path-prefix = "/users"
        methods = ["GET", "HEAD"]
        upstream = "reads"
        [[route]]
        name = "write"
        path-prefix = "/users"
        methods = ["POST"]
        upstream = "writes"
        "#,
        reads.addr(),
        writes.addr()
    ));
    let client = client();
    assert_eq!(
        echoed(&client, &sluice.url("/users/1")).await["upstream"],
        served_by(&reads)
    );
    let post: Value = client
        .post(sluice.url("/users"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(post["upstream"], served_by(&writes));

    let resp = client.delete(sluice.url("/users/1")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD, POST");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 405);
    assert_eq!(
        reads.requests() + writes.requests(),
        2,
        "the 405 never reached an upstream"
    );
}

/// Sends `request` as raw bytes on a new connection; the status line and whatever else came back
/// before the server closed or went quiet.
fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_without_host_or_with_two_is_400_and_never_forwarded() {
    let up = echo().await;
    let sluice = Sluice::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        up.addr()
    ));
    for (request, why) in [
        ("GET /x HTTP/1.1\r\n\r\n", "needs a `Host`"),
        ("GET http://a.test/x HTTP/1.1\r\n\r\n", "needs a `Host`"),
    ] {
        let answer = raw_exchange(sluice.addr, request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?} -> {answer}");
        assert!(
            answer.contains("application/problem+json") && answer.contains(why),
            "{request:?} -> {answer}"
        );
    }
    // Two `Host` headers: pingora's parser already refuses them (a bare 400).
    let answer = raw_exchange(sluice.addr, "GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.requests(), 0, "the upstream saw a request without a valid Host");
    // HTTP/1.0 has no Host requirement; with one Host, HTTP/1.1 is forwarded.
    for request in [
        "GET /x HTTP/1.0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(sluice.addr, request);
        assert!(answer.contains(" 200 "), "{request:?} -> {answer}");
    }
    assert_eq!(up.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    use std::io::{Read, Write};
    let up = echo().await;
    let sluice = Sluice::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        up.addr()
    ));
    // Three requests in one write, the middle one with a body; the last asks to close.
    let pipeline = "GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n\
                    POST /second HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello\
                    GET /third HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let mut stream = std::net::TcpStream::connect(sluice.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream.write_all(pipeline.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("sluice closes after the last request");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200 ").count(), 3, "{answer}");
    let at = |path: &str| {
        answer
            .find(&format!("\"{path}\""))
            .unwrap_or_else(|| panic!("no {path} in {answer}"))
    };
    assert!(at("/first") < at("/second") && at("/second") < at("/third"), "{answer}");
    assert_eq!(up.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_in_flight_a_request_is_shed_with_503_and_retry_after() {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let sluice = Sluice::start_raw(
        &format!(
            "[server]\nlisten = [\"{addr}\"]\nadmin = \"{admin}\"\nmax-in-flight = 2\n[upstreams.u]\ntargets = [\"{}\"]\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
            up.addr()
        ),
        addr,
    );
    // Two slow requests fill sluice...
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let req = client().get(sluice.url("/slow")).header("x-echo-delay", "1s");
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    // (in flight once the upstream has both: it counts a request before its delay)...
    let started = std::time::Instant::now();
    while up.requests() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...so a third is answered at once, told when to come back, and never forwarded.
    let started = std::time::Instant::now();
    let shed = client().get(sluice.url("/third")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem: serde_json::Value = shed.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("max-in-flight of 2"),
        "{problem}"
    );
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(up.requests(), 2);
    assert_eq!(metric_sum(admin, "sluice_requests_shed_total", &[]).await, 1.0);
    // Once they are done, requests are served again.
    assert_eq!(client().get(sluice.url("/after")).send().await.unwrap().status(), 200);
}
