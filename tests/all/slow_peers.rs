//! Slow peers over real TCP: an upstream dripping its response head or body, a client trickling
//! its request head. pingora's timeouts are per read; these are the whole-head deadlines on top.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// An upstream that reads each request head, then writes `head` (and `body`) one byte every
/// `every`, on each connection it accepts.
async fn dripping_upstream(head: &'static [u8], body: &'static [u8], every: Duration) -> SocketAddr {
    raw_upstream(move |mut conn, _| async move {
        for byte in head.iter().chain(body) {
            if conn.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
}

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 5\r\n\r\n";

fn upstream_config(addr: SocketAddr, extra: &str) -> String {
    format!("[upstreams.u]\ntargets = [\"{addr}\"]\nread-timeout = \"3s\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dripping_its_response_head_is_504_at_the_response_head_deadline() {
    // Every byte comes well within read-timeout (3s); the whole head would take ~9 s.
    let up = dripping_upstream(HEAD, b"hello", Duration::from_millis(100)).await;
    let config = format!(
        "{}{}\n[[route]]\nname = \"streamed\"\npath-prefix = \"/s\"\nupstream = \"u\"\n\n\
         [[route]]\nname = \"buffered\"\npath-prefix = \"/b\"\nupstream = \"u\"\nmiddleware = [\"body\"]\n",
        upstream_config(up, "response-head-timeout = \"1s\""),
        stamp("body", "\"request-body\""),
    );
    let sluice = Sluice::start(&config);
    // The streamed path (pingora's proxy loop) and the buffered one (a body phase) alike.
    for path in ["/s", "/b"] {
        let started = Instant::now();
        let resp = client().get(sluice.url(path)).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 504, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let detail = resp.text().await.unwrap();
        assert!(detail.contains("response-head-timeout"), "{path}: {detail}");
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
            "{path}: answered after {took:?}"
        );
    }
    assert!(
        sluice.stderr().lines().all(|l| !l.contains("panicked")),
        "{}",
        sluice.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_head_deadline_waits_for_a_slowly_uploaded_request_body() {
    // The upstream answers at once once it has the body; the client takes 1.5 s to send it, longer
    // than response-head-timeout, which counts from the request's last byte.
    let up = echo().await;
    let sluice = Sluice::start(&format!(
        "{}\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        upstream_config(up.addr(), "response-head-timeout = \"1s\"")
    ));
    let mut conn = TcpStream::connect(sluice.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nX-Echo-Body: raw\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for part in [b"ab", b"cd", b"ef"] {
        std::thread::sleep(Duration::from_millis(500));
        conn.write_all(part).unwrap();
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("abcdef"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_body_dripped_by_the_upstream_reaches_the_client_as_it_arrives() {
    // The head comes at once, the five body bytes 400 ms apart.
    let up = raw_upstream(|mut conn, _| async move {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
        for byte in b"hello" {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if conn.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let sluice = Sluice::start(&format!(
        "{}\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        upstream_config(up, "")
    ));
    let started = Instant::now();
    let mut resp = client().get(sluice.url("/drip")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut body = first.to_vec();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let done_at = started.elapsed();
    assert_eq!(body, b"hello");
    // The whole body takes 2 s; a proxy holding it until complete delivers the first byte then.
    assert!(first_at < Duration::from_millis(1200), "first byte after {first_at:?}");
    assert!(done_at >= Duration::from_millis(2000), "whole body after {done_at:?}");
}

fn header_timeout_config(up: SocketAddr, addr: SocketAddr, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nheader-timeout = \"1s\"\n{extra_server}\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
        shared_cache_dir().display().to_string()
    )
}

/// Reads what the server sends until it closes (or 5 s pass).
fn read_until_closed(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_request_head_gets_408_at_the_header_deadline() {
    let up = echo().await;
    let addr = free_addr();
    let sluice = Sluice::start_raw(&header_timeout_config(up.addr(), addr, ""), addr);
    let mut conn = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    // One header byte every 200 ms: each read is quick, the head never ends.
    let mut writer = conn.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for byte in b"X-Slow: ".iter().cycle().take(40) {
            std::thread::sleep(Duration::from_millis(200));
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
        }
    });
    let answer = read_until_closed(&mut conn);
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{answer:?}");
    assert!(head.contains(&format!("content-length: {}", body.len())), "{answer:?}");
    let problem: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["status"], 408);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
    trickle.join().unwrap();
    assert_eq!(up.requests(), 0, "the unfinished request never went upstream");
    let timeouts = sluice.stderr();
    assert!(timeouts.contains("header-timeout"), "{timeouts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_deadline_counts_neither_idle_keepalive_time_nor_a_slow_body() {
    let up = echo().await;
    let addr = free_addr();
    let _sluice = Sluice::start_raw(&header_timeout_config(up.addr(), addr, "h2c = true"), addr);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read_answer = |conn: &mut TcpStream| {
        let mut buf = vec![0u8; 64 * 1024];
        let n = conn.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // A head sent in pieces over 600 ms: within the 1 s deadline.
    for part in [&b"GET /a HTTP/1.1\r\n"[..], b"Host: a\r\n", b"X-A: 1\r\n", b"\r\n"] {
        conn.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(read_answer(&mut conn).starts_with("HTTP/1.1 200"));
    // Idle on the kept-alive connection for longer than the deadline, then a request.
    std::thread::sleep(Duration::from_millis(1500));
    conn.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert!(read_answer(&mut conn).starts_with("HTTP/1.1 200"));
    // A body taking 1.5 s after a quick head.
    conn.write_all(b"POST /c HTTP/1.1\r\nHost: a\r\nX-Echo-Body: raw\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    for byte in b"xyz" {
        std::thread::sleep(Duration::from_millis(500));
        conn.write_all(&[*byte]).unwrap();
    }
    let answer = read_answer(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("xyz"), "{answer}");

    // HTTP/2 with prior knowledge: a connection idle between streams is not cut either.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let url = format!("http://{addr}/h2");
    assert_eq!(h2.get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = h2.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_head_get_a_log_line_a_second_not_one_each() {
    let up = echo().await;
    let (addr, admin) = (free_addr(), free_addr());
    let config = header_timeout_config(up.addr(), addr, &format!("admin = \"{admin}\""));
    let sluice = Sluice::start_raw(&config, addr);
    // 80 clients each send half a request head and hang up: pingora fails each read and logs it.
    let clients: Vec<_> = (0..80)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).unwrap();
                conn.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a\r\nX-Half").as_bytes())
                    .unwrap();
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // The workers still serve, and every hang-up was seen.
    let resp = client().get(format!("http://{addr}/ok")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = 0.0;
    while Instant::now() < deadline {
        held = metric_sum(admin, "sluice_log_lines_held_back_total", &[]).await;
        if held >= 70.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = sluice.stderr();
    let written = log.lines().filter(|line| line.contains("Fail to proxy")).count();
    assert!(
        (1..=4).contains(&written),
        "{written} pingora lines for 80 hang-ups:\n{log}"
    );
    assert!(
        held + written as f64 >= 80.0,
        "{held} held back + {written} written for 80 hang-ups:\n{log}"
    );
}
