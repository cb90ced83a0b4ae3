//! TLS termination and HTTP/2, with a CA and certificates generated here (rcgen): SNI picks the
//! certificate, ALPN offers h2 (checked with curl, a client sluice did not write), h2c on a plain
//! listener, certificates reload with the config, and TLS to upstreams is verified (a TLS upstream
//! here is another sluice, terminating TLS in front of an echo server).

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;

/// A test CA, writing certificates it signs into a directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes `dir/<file>.pem` and `dir/<file>.key` for `names`; returns the certificate's DER.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }
}

/// A client trusting only `ca`, reaching every name at `addr`.
fn tls_client(ca: &Ca, names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true);
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().unwrap()
}

/// The certificate the server presented for `url`.
async fn presented(client: &reqwest::Client, url: &str) -> (Vec<u8>, Value) {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap().clone();
    (info.peer_certificate().unwrap().to_vec(), resp.json().await.unwrap())
}

fn tls_config(listen: SocketAddr, tls: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"[server]
listen = ["{listen}"]
threads = 2
cache-dir = {cache:?}
h2c = true
tls = [
  {{ addr = "{tls}", cert = "a.pem", key = "a.key" }},
  {{ addr = "{tls}", cert = "b.pem", key = "b.key" }},
]
{extra}

[upstreams.u]
targets = ["{upstream}"]

[[route]]
name = "all"
upstream = "u"
"#,
        cache = shared_cache_dir().display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_offers_http2() {
    let up = echo().await;
    let ca = Ca::new("sluice test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = ca.issue(dir.path(), "a", &["a.test", "www.a.test"]);
    let b = ca.issue(dir.path(), "b", &["*.b.test"]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let (listen, tls) = (free_addr(), free_addr());
    let sluice = Sluice::spawn(&tls_config(listen, tls, up.addr(), ""), listen, dir, &[]);
    let client = tls_client(&ca, &["a.test", "www.a.test", "api.b.test", "other.test"], tls);
    let port = tls.port();

    let (cert, seen) = presented(&client, &format!("https://a.test:{port}/x")).await;
    assert_eq!(cert, a);
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(presented(&client, &format!("https://www.a.test:{port}/")).await.0, a);
    assert_eq!(
        presented(&client, &format!("https://api.b.test:{port}/")).await.0,
        b,
        "wildcard"
    );
    // No certificate for the name: the first one (the name check is the client's, so this one
    // checks no name).
    let unchecked = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve("other.test", tls)
        .build()
        .unwrap();
    assert_eq!(presented(&unchecked, &format!("https://other.test:{port}/")).await.0, a);

    // curl, over HTTP/2 by ALPN, and HTTP/1.1 when it asks for it.
    let ca_file = sluice.dir.path().join("ca.pem");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca_file)
            .args([
                "--resolve",
                &format!("a.test:{port}:127.0.0.1"),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(args)
            .arg(format!("https://a.test:{port}/h2"))
            .output()
            .expect("curl is installed by scripts/setup.sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl(&["--http2"]), "2 200");
    assert_eq!(curl(&["--http1.1"]), "1.1 200");
    // A TLS 1.2-only client is served too.
    assert_eq!(curl(&["--http2", "--tls-max", "1.2"]), "2 200");

    // h2c with prior knowledge on the plain listener.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(sluice.url("/h2c"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that does not trust the CA is refused by the client itself.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .resolve("a.test", tls)
        .build()
        .unwrap();
    assert!(untrusting.get(format!("https://a.test:{port}/")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_with_the_config_and_a_bad_one_changes_nothing() {
    let up = echo().await;
    let ca = Ca::new("sluice test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "a", &["a.test"]);
    ca.issue(dir.path(), "b", &["b.test"]);
    let (listen, tls) = (free_addr(), free_addr());
    let sluice = Sluice::spawn(&tls_config(listen, tls, up.addr(), ""), listen, dir, &[]);
    let client = tls_client(&ca, &["a.test"], tls);
    let url = format!("https://a.test:{}/", tls.port());
    assert_eq!(presented(&client, &url).await.0, first);

    // A renewed certificate, written in place: the watcher reloads, new handshakes get it.
    let renewed = ca.issue(sluice.dir.path(), "a", &["a.test"]);
    assert_ne!(renewed, first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = tls_client(&ca, &["a.test"], tls); // a new connection, a new handshake
        if presented(&fresh, &url).await.0 == renewed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A broken key: the reload fails, located, and the renewed certificate keeps being served.
    std::fs::write(sluice.dir.path().join("a.key"), "not a key").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sluice.stderr().contains("server.tls[0]") {
        assert!(std::time::Instant::now() < deadline, "{}", sluice.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let fresh = tls_client(&ca, &["a.test"], tls);
    assert_eq!(presented(&fresh, &url).await.0, renewed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let up = echo().await;
    let ca = Ca::new("upstream CA");
    let other = Ca::new("another CA");
    // The TLS upstream: a sluice terminating TLS for `upstream.test` in front of the echo.
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "a", &["upstream.test"]);
    ca.issue(dir.path(), "b", &["127.0.0.1"]);
    let (listen, tls) = (free_addr(), free_addr());
    let _terminator = Sluice::spawn(&tls_config(listen, tls, up.addr(), ""), listen, dir, &[]);

    let front = |upstream: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("other.pem"), other.pem()).unwrap();
        let addr = free_addr();
        let config = format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\n\n[upstreams.u]\ntargets = [\"{tls}\"]\n{upstream}\n\n[[route]]\nname = \"all\"\nupstream = \"u\"\n",
            shared_cache_dir().display().to_string()
        );
        Sluice::spawn(&config, addr, dir, &[])
    };
    let status = |sluice: &Sluice| {
        let url = sluice.url("/through");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };

    let verified = front("tls = true\nsni = \"upstream.test\"\nca-file = \"ca.pem\"");
    assert_eq!(status(&verified).await, 200);
    let seen = echoed(&client(), &verified.url("/x")).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "the terminator saw TLS");
    // The target's IP as the name: the `b` certificate is for 127.0.0.1.
    assert_eq!(status(&front("tls = true\nca-file = \"ca.pem\"")).await, 200);
    // The wrong name, or the wrong CA: refused (502), not proxied.
    assert_eq!(
        status(&front("tls = true\nsni = \"wrong.test\"\nca-file = \"ca.pem\"")).await,
        502
    );
    assert_eq!(
        status(&front("tls = true\nsni = \"upstream.test\"\nca-file = \"other.pem\"")).await,
        502
    );
    // verify = false, by explicit choice.
    assert_eq!(
        status(&front(
            "tls = true\nsni = \"upstream.test\"\nca-file = \"other.pem\"\nverify = false"
        ))
        .await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_only_tls_listeners_serves_https_only() {
    let up = echo().await;
    let ca = Ca::new("sluice test CA");
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "a", &["a.test"]);
    ca.issue(dir.path(), "b", &["b.test"]);
    let tls = free_addr();
    // `tls_config` without its `listen` line (and h2c, which is for plain listeners).
    let config = tls_config(free_addr(), tls, up.addr(), "")
        .lines()
        .filter(|l| !l.starts_with("listen =") && !l.starts_with("h2c"))
        .collect::<Vec<_>>()
        .join("\n");
    let sluice = Sluice::spawn(&config, tls, dir, &[]);
    let client = tls_client(&ca, &["a.test"], tls);
    presented(&client, &format!("https://a.test:{}/x", tls.port())).await;
    let serving = sluice
        .stderr()
        .lines()
        .find(|l| l.contains("sluice is serving"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{}", sluice.stderr()));
    assert!(
        serving.contains(&format!("listen={tls} (tls)")) || serving.contains(&format!("listen=\"{tls} (tls)\"")),
        "{serving}"
    );
    assert!(!serving.contains("8080"), "a plain listener was opened too: {serving}");
}
