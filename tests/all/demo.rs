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

/// What each command the demo prints must show, in the order printed: a fragment of the command
/// (to be sure it is the one meant) and what its output contains.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "/users/42",
        &[
            "HTTP/1.1 200",
            "x-stamp-response: demo",
            "\"x-stamp-request\": \"demo\"",
        ],
    ),
    ("x-block: 1", &["HTTP/1.1 403"]),
    ("-X DELETE", &["HTTP/1.1 405", "allow: GET, HEAD"]),
    ("/account", &["HTTP/1.1 401", "www-authenticate: Bearer"]),
    (
        "Bearer $TOKEN",
        &["HTTP/1.1 200", "\"x-user-id\": \"demo-user\"", "ratelimit-remaining: 2"],
    ),
    ("for i in 1 2 3 4", &["200 200 429 429"]),
    (
        "\"items\":[]",
        &["HTTP/1.1 400", "is not of type \\\"integer\\\"", "has less than 1 item"],
    ),
    ("\"sku\":\"A-1\"", &["HTTP/1.1 200", "\"body-bytes\": 40"]),
    (
        "/customers/7",
        &[
            "\"card\":\"[REDACTED]1111\"",
            "\"email\":\"[REDACTED].com\"",
            "\"phone\":\"[REDACTED]0100\"",
        ],
    ),
    (
        "/hello",
        &[
            "x-hello-lang: python\r\nx-hello-lang: javascript\r\nx-hello-lang: rust",
            "\"x-hello\": \"hello, ada\"",
        ],
    ),
    ("-X PUT", &["\"result\": \"ok\"", "\"trigger\": \"upload\""]),
    (
        "/hello",
        &["x-hello-lang: javascript\r\nx-hello-lang: javascript\r\nx-hello-lang: rust"],
    ),
    ("/rollback", &["\"result\": \"ok\"", "\"trigger\": \"rollback\""]),
    ("/admin/middleware", &["\"hello-py\""]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_what_it_prints() {
    // The polyglot chain's components, built and compiled into the shared cache.
    crate::polyglot::polyglot("hello_js");
    let (addr, admin) = (free_addr(), free_addr());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["demo", "--listen", &addr.to_string(), "--admin", &admin.to_string()])
        .arg("--cache-dir")
        .arg(shared_cache_dir())
        .env_remove("SLUICE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Kill(child);

    let printed: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("Ctrl-C"))
        .collect();
    let token = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .unwrap_or_else(|| {
            panic!(
                "the demo printed no token:\n{}",
                std::fs::read_to_string(log.path()).unwrap()
            )
        })
        .to_owned();
    let commands: Vec<&str> = printed
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl ") || l.starts_with("for "))
        .collect();
    assert_eq!(commands.len(), EXPECTED.len(), "{printed:#?}");
    assert!(
        commands
            .iter()
            .all(|l| l.contains(&format!("http://{addr}/")) || l.contains(&format!("http://{admin}/"))),
        "{commands:#?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the demo does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Each command as a user would paste it: bash, and curl as the client.
    for (command, (fragment, shows)) in commands.iter().zip(EXPECTED) {
        assert!(
            command.contains(fragment),
            "`{command}` is not the command meant by `{fragment}`"
        );
        let out = Command::new("bash")
            .args(["-c", command])
            .env("TOKEN", &token)
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{command}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in *shows {
            assert!(
                output.contains(expected),
                "`{command}` shows no `{expected}`:\n{output}"
            );
        }
        if command.contains("/customers/") {
            assert!(
                !output.contains("ada@example.com") && !output.contains("Ada Lovelace"),
                "{output}"
            );
        }
    }

    let client = client();
    let url = |p: &str| format!("http://{addr}{p}");

    // What the closing text says: round-robin across the two echo targets...
    let first: Value = client.get(url("/users/42")).send().await.unwrap().json().await.unwrap();
    let second: Value = client.get(url("/users/42")).send().await.unwrap().json().await.unwrap();
    assert_ne!(
        first["upstream"], second["upstream"],
        "round-robin should alternate targets"
    );
    // ... the wildcard host route, and unrouted paths.
    let resp = client
        .get(url("/"))
        .header("host", "acme.demo.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tenant: Value = resp.json().await.unwrap();
    assert_eq!(tenant["headers"]["x-forwarded-host"], "acme.demo.test");
    assert_eq!(client.get(url("/nowhere")).send().await.unwrap().status(), 404);
}
