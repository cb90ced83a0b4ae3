//! Body phases end to end: whole request and response bodies through real components, a real
//! sluice and a real upstream over TCP.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::Value;

/// A config with route `mw` (`/mw`, through `chain`, `max-body` as given) and route `plain` to
/// `upstream`, with the given middleware sections.
fn config(upstream: std::net::SocketAddr, chain: &[&str], max_body: &str, middleware: &str) -> String {
    let chain: Vec<String> = chain.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n\n[[route]]\nname = \"mw\"\npath-prefix = \"/mw\"\nupstream = \"u\"\nmax-body = \"{max_body}\"\nmiddleware = [{}]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n",
        chain.join(", ")
    )
}

const ALL_PHASES: &str = "\"request-headers\", \"request-body\", \"response-headers\", \"response-body\"";

/// A body streamed in `chunks` pieces of `size` bytes: reqwest sends it chunked, with no length.
fn chunked_body(chunks: usize, size: usize) -> reqwest::Body {
    let pieces = (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![b'x'; size]));
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_phases_run_in_chain_order_then_reverse_with_correct_framing() {
    let up = echo().await;
    let mw = format!("{}{}", stamp("a", ALL_PHASES), stamp("b", ALL_PHASES));
    let sluice = Sluice::start(&config(up.addr(), &["a", "b"], "1MiB", &mw));

    // The upstream echoes the body it received: `hello+a+b`, framed by Content-Length.
    let resp = client()
        .post(sluice.url("/mw/x"))
        .header("x-echo-body", "raw")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let order: Vec<&str> = resp
        .headers()
        .get_all("x-stamp-response")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(order, ["b", "a"]);
    let length = resp.headers()["content-length"].to_str().unwrap().to_owned();
    assert!(resp.headers().get("transfer-encoding").is_none());
    let body = resp.text().await.unwrap();
    assert_eq!(
        body, "hello+a+b+b+a",
        "request body phases in order, response body phases in reverse"
    );
    assert_eq!(length, body.len().to_string());

    // What the upstream saw: the replaced body with its own Content-Length.
    let seen: Value = client()
        .post(sluice.url("/mw/y"))
        .body("hi")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(t.trim_end_matches("+b+a")).unwrap())
        .unwrap();
    assert_eq!(seen["body-bytes"], "hi+a+b".len());
    assert_eq!(seen["headers"]["content-length"], "6");
    assert_eq!(seen["headers"]["x-stamp-request"], "a, b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_rejected_by_a_middleware_never_reaches_the_upstream() {
    let up = echo().await;
    let mw = format!(
        "[middleware.guard]\ncomponent = {:?}\nconfig = {{ header = \"x-block\", status = 422, body-contains = \"forbidden\" }}\n",
        component("short_circuit")
    );
    let sluice = Sluice::start(&config(up.addr(), &["guard"], "1MiB", &mw));
    let resp = client()
        .post(sluice.url("/mw"))
        .body("this body is forbidden here")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.text().await.unwrap(), "blocked: the body contains `forbidden`\n");
    assert_eq!(
        up.connections(),
        0,
        "sluice connected upstream before the body was decided"
    );
    assert_eq!(up.requests(), 0);

    // A large chunked body is read whole before anything goes upstream too.
    let resp = client()
        .post(sluice.url("/mw"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(vec![b'x'; 100_000]),
            Ok(b"forbidden".to_vec()),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(up.connections(), 0);

    // An acceptable body passes, whole.
    let seen: Value = client()
        .post(sluice.url("/mw"))
        .body(chunked_body(20, 10_000))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["body-bytes"], 200_000);
    assert_eq!(seen["headers"]["content-length"], "200000", "re-framed with a length");
    assert!(seen["headers"].get("transfer-encoding").is_none());
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_max_body_is_413_and_never_sent() {
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &["a"], "1KiB", &stamp("a", "\"request-body\"")));

    // Declared too long: answered before reading it.
    let resp = client()
        .post(sluice.url("/mw"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "the request body is over the route's max-body of 1024 bytes"
    );

    // Chunked, found too long while reading.
    let resp = client()
        .post(sluice.url("/mw"))
        .body(chunked_body(4, 512))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(up.connections(), 0);

    // Exactly max-body passes.
    let seen: Value = client()
        .post(sluice.url("/mw"))
        .body(vec![b'x'; 1022])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["body-bytes"], 1024, "1022 bytes + `+a`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &["a"], "1KiB", &stamp("a", "\"request-body\"")));
    let mut conn = TcpStream::connect(sluice.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    conn.write_all(b"POST /mw HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    conn.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(b"hello").unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Over max-body: 413 at once, without asking for the body.
    let mut conn = TcpStream::connect(sluice.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    conn.write_all(b"POST /mw HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_response_body_gets_a_length_even_from_a_streamed_response() {
    let up = echo().await;
    let mw = format!(
        "[middleware.swap]\ncomponent = {:?}\nconfig = {{ response = \"replaced\" }}\n",
        component("replace_body")
    );
    let sluice = Sluice::start(&config(up.addr(), &["swap"], "1MiB", &mw));
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-echo-drip", "3x20ms") // the upstream sends it chunked
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "8");
    assert!(resp.headers().get("transfer-encoding").is_none());
    assert_eq!(resp.text().await.unwrap(), "replaced");

    // No body phase runs where a response has no body.
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-echo-status", "204")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = client().head(sluice.url("/mw")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");

    // A request body no middleware reads is streamed, not held to max-body.
    let seen = client()
        .post(sluice.url("/mw"))
        .body(chunked_body(8, 256 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    assert_eq!(seen.text().await.unwrap(), "replaced");

    // Connections to the upstream are reused.
    let before = up.connections();
    for _ in 0..5 {
        client().get(sluice.url("/mw")).send().await.unwrap();
    }
    assert!(
        up.connections() - before <= 2,
        "{} new connections for 5 requests",
        up.connections() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_max_body_is_502() {
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &["a"], "1KiB", &stamp("a", "\"response-body\"")));
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-echo-size", "4096")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "upstream `u` sent a response body over the route's max-body of 1024 bytes"
    );
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-echo-size", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().len(), 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_body_phase_follows_on_error() {
    for (phase, status) in [("request-body", 500), ("response-body", 502)] {
        let up = echo().await;
        let mw = format!(
            "[middleware.bad]\ncomponent = {:?}\non-error = \"deny\"\nconfig = {{ phase = \"{phase}\" }}\n\
             [middleware.lenient]\ncomponent = {:?}\non-error = \"allow\"\nconfig = {{ phase = \"{phase}\" }}\n",
            component("trap"),
            component("trap")
        );
        let cfg = config(up.addr(), &["bad"], "1MiB", &mw).replace(
            "[[route]]\nname = \"plain\"",
            "[[route]]\nname = \"lenient\"\npath-prefix = \"/lenient\"\nupstream = \"u\"\nmiddleware = [\"lenient\"]\n\n[[route]]\nname = \"plain\"",
        );
        let sluice = Sluice::start(&cfg);
        let resp = client().post(sluice.url("/mw")).body("x").send().await.unwrap();
        assert_eq!(resp.status(), status, "{phase}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["detail"], "middleware `bad` trapped");

        let resp = client()
            .post(sluice.url("/lenient"))
            .header("x-echo-body", "raw")
            .body("kept")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{phase}");
        assert_eq!(
            resp.text().await.unwrap(),
            "kept",
            "{phase}: on-error = allow forwards the body unchanged"
        );
    }
}
