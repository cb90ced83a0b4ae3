//! `sluice demo`, the README's front door: it starts, prints curl lines for its own address, and
//! what they show is true.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_what_it_prints() {
    let addr = free_addr();
    let mut child = Command::new(sluice_bin())
        .args(["demo", "--listen", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Kill(child);

    let printed: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("Ctrl-C"))
        .collect();
    let curls: Vec<&String> = printed.iter().filter(|l| l.trim_start().starts_with("curl ")).collect();
    assert_eq!(curls.len(), 4, "{printed:#?}");
    assert!(
        curls.iter().all(|l| l.contains(&format!("http://{addr}/"))),
        "{curls:#?}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the demo does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = client();
    let url = |p: &str| format!("http://{addr}{p}");

    // 1. Route `users`, round-robin across the two echo targets.
    let first: Value = client.get(url("/users/42")).send().await.unwrap().json().await.unwrap();
    let second: Value = client.get(url("/users/42")).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["path"], "/users/42");
    assert_eq!(first["headers"]["via"], "1.1 sluice");
    assert_ne!(
        first["upstream"], second["upstream"],
        "round-robin should alternate targets"
    );

    // 2. 405 with Allow.
    let resp = client.delete(url("/users/42")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");

    // 3. The wildcard host route.
    let resp = client
        .get(url("/"))
        .header("host", "acme.demo.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tenant: Value = resp.json().await.unwrap();
    assert_eq!(tenant["headers"]["x-forwarded-host"], "acme.demo.test");

    // And what the text says about unrouted paths.
    assert_eq!(client.get(url("/nowhere")).send().await.unwrap().status(), 404);

    // 4. Route `orders`: a body phase decides before anything goes upstream.
    let resp = client.post(url("/orders")).body("forbidden").send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let accepted: Value = client
        .post(url("/orders"))
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["body-bytes"], 8);
}
