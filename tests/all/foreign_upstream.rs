//! sluice in front of an upstream it did not write: Python's `http.server` (HTTP/1.0, closes
//! every connection, no keep-alive).

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::RngCore;

struct PythonServer(Child);

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_http_server(dir: &std::path::Path) -> (PythonServer, std::net::SocketAddr) {
    let addr = free_addr();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &addr.port().to_string(),
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is needed for this test (scripts/setup.sh installs it)");
    let server = PythonServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "python http.server did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_from_python_http_server_byte_for_byte() {
    let files = tempfile::tempdir().unwrap();
    let mut blob = vec![0u8; 3 << 20];
    rand::rng().fill_bytes(&mut blob);
    std::fs::write(files.path().join("blob.bin"), &blob).unwrap();
    std::fs::write(files.path().join("hello.txt"), "hello from python\n").unwrap();
    let (_python, addr) = python_http_server(files.path());

    let sluice = Sluice::start(&format!(
        "[upstreams.py]\ntargets = [\"{addr}\"]\n[[route]]\nname = \"files\"\nupstream = \"py\"\nmethods = [\"GET\", \"HEAD\"]\n"
    ));
    let client = client();
    for _ in 0..3 {
        // Several requests: each needs a fresh upstream connection, since python closes them.
        let resp = client.get(sluice.url("/hello.txt")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["via"], "1.0 sluice", "python answers in HTTP/1.0");
        assert_eq!(resp.text().await.unwrap(), "hello from python\n");
    }
    let resp = client.get(sluice.url("/blob.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], blob.len().to_string());
    assert!(resp.bytes().await.unwrap() == blob, "the file arrived changed");

    let resp = client.get(sluice.url("/missing")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the upstream's own 404 passes through");
    assert_eq!(
        client.post(sluice.url("/hello.txt")).send().await.unwrap().status(),
        405
    );
}
