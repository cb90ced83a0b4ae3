//! Outbound HTTP from middleware (`wasi:http/outgoing-handler`): only to the `allow-hosts` of the
//! middleware, bounded in time and size, and never holding up the worker's other requests.
//! The `snoop` test component fetches the URL in `x-fetch` and reports what happened.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn config(upstream: std::net::SocketAddr, middleware: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n[middleware.snoop]\ncomponent = {:?}\n{middleware}\n\n[[route]]\nname = \"mw\"\npath-prefix = \"/mw\"\nupstream = \"u\"\nmiddleware = [\"snoop\"]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n",
        component("snoop")
    )
}

/// What `snoop` reported for fetching `url`.
async fn fetch(sluice: &Sluice, url: &str) -> Value {
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-fetch", url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    report["http"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_hosts_are_reached() {
    let allowed = Canned::start(Reply::Body(200, br#"{"keys":[]}"#.to_vec())).await;
    let other = Canned::start(Reply::Body(200, b"secret".to_vec())).await;
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), &format!("allow-hosts = [\"{}\"]", allowed.addr)));

    let got = fetch(&sluice, &allowed.url("/jwks.json")).await;
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["bytes"], 11, "{got}");
    assert_eq!(allowed.hits(), 1);

    for denied in [
        other.url("/"),
        // The same server under another name, or the allowed host on another port or scheme.
        format!("http://localhost:{}/", allowed.addr.port()),
        format!("http://{}:{}/", allowed.addr.ip(), other.addr.port()),
        format!("https://{}/", allowed.addr.ip()),
    ] {
        let got = fetch(&sluice, &denied).await;
        assert_eq!(got["denied"], true, "{denied}: {got}");
        assert!(got["error"].as_str().unwrap().contains("allow-hosts"), "{got}");
    }
    assert_eq!(other.hits(), 0, "a host not allowed was never contacted");
    assert_eq!(allowed.hits(), 1);
    let log = sluice.stderr();
    assert!(
        log.contains("outbound HTTP denied") && log.contains(&format!("127.0.0.1:{}", other.addr.port())),
        "a denied request is logged with its target:\n{log}"
    );
    assert_eq!(up.requests(), 0, "snoop answers every request itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_are_bounded_in_time_and_size_without_blocking_the_worker() {
    let hang = Canned::start(Reply::Hang).await;
    let big = Canned::start(Reply::Body(200, vec![b'x'; 2 << 20])).await;
    let small = Canned::start(Reply::Body(200, vec![b'x'; 1000])).await;
    let up = echo().await;
    let mw = format!(
        "timeout = \"5s\"\nallow-hosts = [\"{}\", \"{}\", \"{}\"]\noutbound-timeout = \"1s\"\noutbound-max-response = \"1MiB\"",
        hang.addr, big.addr, small.addr
    );
    let sluice = Sluice::start(&config(up.addr(), &mw));

    let started = Instant::now();
    let got = fetch(&sluice, &hang.url("/")).await;
    let took = started.elapsed();
    assert_eq!(got["error"], "timed out", "{got}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "outbound-timeout 1s, took {took:?}"
    );

    let got = fetch(&sluice, &big.url("/")).await;
    assert!(got["error"].as_str().unwrap().contains("larger"), "{got}");
    let got = fetch(&sluice, &small.url("/")).await;
    assert_eq!(got["bytes"], 1000, "{got}");

    // Four requests wait on the hanging service at once, on both workers; plain requests on the
    // same workers are answered meanwhile.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (url, target) = (sluice.url("/mw"), hang.url("/"));
            tokio::spawn(async move {
                let resp = client().get(url).header("x-fetch", target).send().await.unwrap();
                resp.json::<Value>().await.unwrap()["http"]["error"].clone()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = client();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(client.get(sluice.url("/plain")).send().await.unwrap().status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a plain request waited {slowest:?} behind outbound calls"
    );
    for handle in waiting {
        assert_eq!(handle.await.unwrap(), "timed out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_waiting_in_the_host_is_stopped_at_its_deadline() {
    // `x-sleep-ms` makes snoop sleep on the WASI clock: it waits in the host, where the epoch
    // deadline never fires. The wall-clock bound on every call stops it at `timeout`.
    let up = echo().await;
    let sluice = Sluice::start(&config(up.addr(), "timeout = \"200ms\"\non-error = \"deny\""));
    let started = Instant::now();
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-sleep-ms", "5000")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 500);
    assert!(
        resp.text().await.unwrap().contains("timed out"),
        "the problem names the failure"
    );
    assert!(took < Duration::from_millis(1500), "timeout 200ms, took {took:?}");

    let sluice = Sluice::start(&config(up.addr(), "timeout = \"200ms\"\non-error = \"allow\""));
    let resp = client()
        .get(sluice.url("/mw"))
        .header("x-sleep-ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(
        seen["path"], "/mw",
        "on-error = allow: the request went on to the upstream"
    );
}
