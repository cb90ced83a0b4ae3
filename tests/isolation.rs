//! Isolation under a misbehaving middleware: a component that loops forever is cut at its
//! deadline, and requests on other routes keep being served meanwhile. A test binary of its own,
//! so no other test competes for the two cores while eight loops spin.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(upstream: std::net::SocketAddr, middleware: &str) -> String {
    format!(
        "[upstreams.u]\ntargets = [\"{upstream}\"]\n\n{middleware}\n\n[[route]]\nname = \"mw\"\npath-prefix = \"/mw\"\nupstream = \"u\"\nmiddleware = [\"bad\"]\n\n[[route]]\nname = \"plain\"\nupstream = \"u\"\n"
    )
}

async fn misbehaving(component_name: &str, extra: &str, on_error: &str) -> (Sluice, EchoServer) {
    let up = echo().await;
    let mw = format!(
        "[middleware.bad]\ncomponent = {:?}\non-error = \"{on_error}\"\n{extra}\n",
        component(component_name)
    );
    (Sluice::start(&config(up.addr(), &mw)), up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_cut_at_its_timeout_and_other_routes_stay_fast() {
    // The loops are given two seconds: a worker blocked by them would hold plain requests that
    // long. Calls yield at every epoch tick (1 ms), so plain requests only wait their turn.
    let (mut sluice, up) = misbehaving("spin", "timeout = \"2s\"", "deny").await;
    // Eight looping requests at once, across both workers...
    let looping = tokio::spawn({
        let url = sluice.url("/mw");
        async move {
            let client = client();
            let started = Instant::now();
            let all = (0..8).map(|_| {
                let req = client.get(&url);
                tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
            });
            let mut statuses = Vec::new();
            for h in all.collect::<Vec<_>>() {
                statuses.push(h.await.unwrap());
            }
            (statuses, started.elapsed())
        }
    });
    // ...while plain requests on the other route keep being answered promptly.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let client = client();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(client.get(sluice.url("/plain")).send().await.unwrap().status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let (statuses, took) = looping.await.unwrap();
    assert!(statuses.iter().all(|&s| s == 500), "{statuses:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "8 looping requests took {took:?} (timeout 2s)"
    );
    assert!(
        slowest < Duration::from_millis(1000),
        "a plain request waited {slowest:?} behind looping middleware"
    );
    assert!(sluice.is_running());
    assert_eq!(up.requests(), 10, "only the plain requests reached the upstream");

    let (sluice, _up) = misbehaving("spin", "timeout = \"50ms\"", "allow").await;
    for _ in 0..2 {
        assert_eq!(
            client.get(sluice.url("/mw")).send().await.unwrap().status(),
            200,
            "on-error = allow"
        );
    }
}
