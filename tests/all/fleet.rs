//! Components from an OCI registry: a real `docker-registry` (the CNCF distribution registry,
//! started here on a free port; `make test` installs it), artifacts pushed and cosign-signed by
//! `tests/oci_registry.py` (urllib and Python's `cryptography`, not sluice's client), and sluice
//! pulling them by tag and digest, verifying signatures, following a moved tag under load, and
//! starting from its store while the registry is down.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Sluice, component, echo, free_addr, sluice_bin};
use crate::hot_swap::{Load, versions};

/// A `docker-registry` on `addr` storing in `dir`; killed when dropped, restartable on the same
/// port with the same storage.
struct Registry {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `USER:PASSWORD` it requires, if any.
    auth: Option<String>,
}

impl Registry {
    fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry that answers only requests with these credentials (htpasswd, bcrypt).
    fn start_with(auth: Option<(&str, &str)>) -> Registry {
        let mut registry = Registry {
            addr: free_addr(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            auth: auth.map(|(user, password)| format!("{user}:{password}")),
        };
        if let Some((user, password)) = auth {
            let file = registry.dir.path().join("htpasswd");
            helper(&["htpasswd", user, password, file.to_str().unwrap()]);
        }
        registry.resume();
        registry
    }

    fn resume(&mut self) {
        let config = self.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n{}",
                self.dir.path().join("data").display(),
                self.addr,
                match self.auth {
                    Some(_) => format!(
                        "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                        self.dir.path().join("htpasswd").display()
                    ),
                    None => String::new(),
                }
            ),
        )
        .unwrap();
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config);
        self.child = Some(common::spawn_server(&mut command, self.addr, "docker-registry"));
    }

    fn stop(&mut self) {
        common::stop_server(&mut self.child);
    }

    /// `oci://HOST:PORT/REPO:TAG` for sluice's config.
    fn oci(&self, repo_and_tag: &str) -> String {
        format!("oci://{}/{repo_and_tag}", self.addr)
    }

    /// Pushes test component `name` as `repo:tag` with the independent client; its manifest digest.
    fn push(&self, name: &str, repo_and_tag: &str) -> String {
        let target = format!("{}/{repo_and_tag}", self.addr);
        let auth = self.auth.as_deref().map(|auth| ("OCI_AUTH", auth));
        helper_env(&["push", &component(name), &target], auth.as_slice())
            .trim()
            .to_owned()
    }

    /// Signs the artifact `digest` in `repo` with the private key `key`.
    fn sign(&self, repo: &str, digest: &str, key: &Path) {
        helper(&["sign", &format!("{}/{repo}", self.addr), digest, key.to_str().unwrap()]);
    }

    /// The `[registries]` section for it.
    fn section(&self) -> String {
        format!("[registries]\ninsecure = [\"{}\"]\ntimeout = \"2s\"\n", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `tests/oci_registry.py` with `args`; its stdout.
fn helper(args: &[&str]) -> String {
    helper_env(args, &[])
}

fn helper_env(args: &[&str], env: &[(&str, &str)]) -> String {
    common::python_with("oci_registry.py", args, env)
}

/// A key pair (`cosign.key`, `cosign.pub`) in a new directory.
fn keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    helper(&["keygen", dir.path().to_str().unwrap()]);
    dir
}

/// A sluice config: `registry`'s section, a route `/` through middleware `mw` (its `[middleware]`
/// body given) to `upstream`, the admin API on `admin`, and `cache_dir`.
fn config(
    registry: &Registry,
    upstream: SocketAddr,
    mw: &str,
    admin: SocketAddr,
    cache_dir: &Path,
) -> (String, SocketAddr) {
    let addr = free_addr();
    let text = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\nadmin = \"{admin}\"\ncache-dir = {:?}\n\n{}\n\
         [upstreams.u]\ntargets = [\"{upstream}\"]\n\n[middleware.v]\n{mw}\n\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\nmiddleware = [\"v\"]\n",
        cache_dir.display().to_string(),
        registry.section()
    );
    (text, addr)
}

async fn admin_middleware(admin: SocketAddr) -> Value {
    let url = format!("http://{admin}/admin/middleware");
    common::echoed(&common::client(), &url).await["middleware"][0].clone()
}

/// The middleware as `GET /admin/middleware` lists it, once `ready` holds (within 20 s).
async fn listed_when(admin: SocketAddr, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = admin_middleware(admin).await;
        if ready(&listed) {
            return listed;
        }
        assert!(Instant::now() < deadline, "not {what} within 20 s: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the listed middleware serves the artifact with manifest `digest`.
fn serves(listed: &Value, digest: &str) -> bool {
    listed["resolved"]
        .as_str()
        .is_some_and(|r| r.ends_with(&format!("@{digest}")))
}

/// `sluice check` on `config` written in `dir`: (success, output).
fn check(dir: &Path, config: &str) -> (bool, String) {
    check_env(dir, config, &[])
}

fn check_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_pulled_by_tag_and_by_digest_and_the_digest_is_shown() {
    let registry = Registry::start();
    let up = echo().await;
    let digest = registry.push("version_one", "mw/versioned:v1");
    let cache = tempfile::tempdir().unwrap();

    // By tag.
    let admin = free_addr();
    let mw = format!("component = \"{}\"", registry.oci("mw/versioned:v1"));
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    let by_tag = Sluice::start_raw(&text, addr);
    let seen = versions(&common::client(), &by_tag.url("/")).await.unwrap();
    assert_eq!(seen, ("one".to_owned(), "one".to_owned()));
    let listed = admin_middleware(admin).await;
    assert_eq!(
        listed["resolved"],
        format!("oci://{}/mw/versioned@{digest}", registry.addr),
        "{listed}"
    );
    assert_eq!(listed["component"], registry.oci("mw/versioned:v1"));
    assert!(by_tag.stderr().contains(&digest), "the log names the digest");
    drop(by_tag);

    // By digest, with another store: pulled again, and the layer's digest checked.
    let cache = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mw = format!("component = \"{}\"", registry.oci(&format!("mw/versioned@{digest}")));
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    let by_digest = Sluice::start_raw(&text, addr);
    let seen = versions(&common::client(), &by_digest.url("/")).await.unwrap();
    assert_eq!(seen.1, "one");
    assert!(
        admin_middleware(admin).await["resolved"]
            .as_str()
            .unwrap()
            .ends_with(&digest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_push_publishes_what_an_independent_client_reads_as_a_wasm_artifact() {
    let registry = Registry::start();
    let target = registry.oci("pushed/one:v1");
    let out = Command::new(sluice_bin())
        .args(["push", &component("version_one"), &target, "--insecure"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let manifest: Value =
        serde_json::from_str(&helper(&["manifest", &format!("{}/pushed/one:v1", registry.addr)])).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let bytes = std::fs::read(component("version_one")).unwrap();
    let layer = format!("sha256:{}", sluice::live::digest(&bytes));
    assert_eq!(manifest["layers"][0]["digest"], layer);
    assert!(printed.contains("digest: sha256:"), "{printed}");

    // A core module or a text file is refused before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    let not_a_component = dir.path().join("x.wasm");
    std::fs::write(&not_a_component, b"\0asm\x01\0\0\0").unwrap();
    let out = Command::new(sluice_bin())
        .args(["push", not_a_component.to_str().unwrap(), &target, "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly component"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_a_missing_tag_and_a_plain_http_registry_not_listed_are_refused_with_located_errors() {
    let registry = Registry::start();
    registry.push("version_one", "mw/versioned:v1");
    let dir = tempfile::tempdir().unwrap();
    let up = free_addr();
    let wrong = format!("sha256:{}", "0".repeat(64));
    for (mw, expected) in [
        (
            format!("component = \"{}\"", registry.oci(&format!("mw/versioned@{wrong}"))),
            "is not in the registry".to_owned(),
        ),
        (
            format!("component = \"{}\"", registry.oci("mw/versioned:nope")),
            "is not in the registry".to_owned(),
        ),
        (
            format!("component = \"{}\"", registry.oci("mw/versioned")),
            "names no tag or digest".to_owned(),
        ),
        (
            "component = \"oci://mw/versioned:v1\"".to_owned(),
            "name the registry host".to_owned(),
        ),
    ] {
        let (text, _) = config(&registry, up, &mw, free_addr(), dir.path());
        let (ok, out) = check(dir.path(), &text);
        assert!(!ok, "{mw}: {out}");
        assert!(out.contains(&expected), "{mw}: {out}");
        assert!(
            out.contains("sluice.toml:") && out.contains("middleware.v.component"),
            "located: {out}"
        );
    }
    // Without `insecure`, the registry is spoken to over HTTPS, which it does not speak.
    let mw = format!("component = \"{}\"", registry.oci("mw/versioned:v1"));
    let (text, _) = config(&registry, up, &mw, free_addr(), dir.path());
    let text = text.replace(&format!("insecure = [\"{}\"]\n", registry.addr), "");
    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot pull"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_components_signed_with_the_trusted_key_load() {
    let registry = Registry::start();
    let (trusted, other) = (keys(), keys());
    let signed = registry.push("version_one", "mw/signed:v1");
    registry.sign("mw/signed", &signed, &trusted.path().join("cosign.key"));
    let unsigned = registry.push("version_two", "mw/unsigned:v1");
    let wrongly = registry.push("version_two", "mw/wrongly:v1");
    registry.sign("mw/wrongly", &wrongly, &other.path().join("cosign.key"));
    // A signature by the trusted key, but of another artifact, copied under this one's tag.
    let copied = registry.push("version_two", "mw/copied:v1");
    registry.sign("mw/copied", &signed, &trusted.path().join("cosign.key"));
    let sig_of_signed = helper(&[
        "manifest",
        &format!("{}/mw/copied:{}.sig", registry.addr, signed.replace(':', "-")),
    ]);
    let status = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
        ])
        .arg(&sig_of_signed)
        .arg(format!(
            "http://{}/v2/mw/copied/manifests/{}.sig",
            registry.addr,
            copied.replace(':', "-")
        ))
        .status()
        .unwrap();
    assert!(status.success());

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(trusted.path().join("cosign.pub"), dir.path().join("cosign.pub")).unwrap();
    let up = free_addr();
    let verify = "verify = { public-key-file = \"cosign.pub\" }";
    let mw = |reference: &str| format!("component = \"{}\"\n{verify}", registry.oci(reference));
    let (text, _) = config(&registry, up, &mw("mw/signed:v1"), free_addr(), dir.path());
    let (ok, out) = check(dir.path(), &text);
    assert!(ok, "the signed artifact loads: {out}");
    for (reference, why) in [
        ("mw/unsigned:v1", format!("`{unsigned}` is not signed")),
        ("mw/wrongly:v1", "the signature does not match this key".to_owned()),
        (
            "mw/copied:v1",
            format!("a valid signature of another artifact ({signed})"),
        ),
    ] {
        let (text, _) = config(&registry, up, &mw(reference), free_addr(), dir.path());
        let (ok, out) = check(dir.path(), &text);
        assert!(!ok, "{reference} must be refused: {out}");
        assert!(out.contains("is refused: it must be signed with `cosign.pub`"), "{out}");
        assert!(out.contains(&why), "{reference}: {out}");
        assert!(out.contains("middleware.v.component"), "{out}");
    }

    // `[trust]` covers every middleware, files too: a file needs its detached signature.
    let file = dir.path().join("one.wasm");
    std::fs::copy(component("version_one"), &file).unwrap();
    let trust = "[trust]\npublic-key-file = \"cosign.pub\"\n";
    let (text, _) = config(&registry, up, "component = \"one.wasm\"", free_addr(), dir.path());
    let (ok, out) = check(dir.path(), &format!("{text}\n{trust}"));
    assert!(!ok && out.contains("one.wasm.sig"), "{out}");
    helper(&[
        "sign-blob",
        file.to_str().unwrap(),
        other.path().join("cosign.key").to_str().unwrap(),
    ]);
    let (ok, out) = check(dir.path(), &format!("{text}\n{trust}"));
    assert!(!ok && out.contains("does not match this key"), "{out}");
    helper(&[
        "sign-blob",
        file.to_str().unwrap(),
        trusted.path().join("cosign.key").to_str().unwrap(),
    ]);
    let (ok, out) = check(dir.path(), &format!("{text}\n{trust}"));
    assert!(ok, "{out}");
    // Built-in components are part of the binary: no signature needed.
    let (text, _) = config(&registry, up, "component = \"builtin:redact\"", free_addr(), dir.path());
    let (ok, out) = check(dir.path(), &format!("{text}\n{trust}"));
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_a_middleware_that_must_be_signed_is_refused() {
    let registry = Registry::start();
    let keys = keys();
    let digest = registry.push("version_one", "mw/signed:v1");
    registry.sign("mw/signed", &digest, &keys.path().join("cosign.key"));
    let up = echo().await;
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(keys.path().join("cosign.pub"), cache.path().join("cosign.pub")).unwrap();
    let admin = free_addr();
    let mw = format!(
        "component = \"{}\"\nverify = {{ public-key-file = {:?} }}",
        registry.oci("mw/signed:v1"),
        cache.path().join("cosign.pub").display().to_string()
    );
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    let sluice = Sluice::start_raw(&text, addr);
    let resp = common::client()
        .put(format!("http://{admin}/admin/middleware/v/component"))
        .body(std::fs::read(component("version_two")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("carries no signature"),
        "{problem}"
    );
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "one");
    assert!(
        admin_middleware(admin).await["verified-with"]
            .as_str()
            .unwrap()
            .ends_with("cosign.pub")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_pulled_and_swapped_in_under_load_without_a_failed_request() {
    let registry = Registry::start();
    registry.push("version_one", "mw/versioned:live");
    let up = echo().await;
    let cache = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mw = format!("component = \"{}\"\npoll = \"1s\"", registry.oci("mw/versioned:live"));
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    let sluice = Sluice::start_raw(&text, addr);

    let load = Load::start(sluice.url("/"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved_to = registry.push("version_two", "mw/versioned:live");
    listed_when(admin, "the moved tag swapped in", |m| serves(m, &moved_to)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = load.finish().await;
    assert!(served.get("one").is_some_and(|&n| n > 0), "{served:?}");
    assert!(served.get("two").is_some_and(|&n| n > 0), "{served:?}");
    assert!(
        sluice.stderr().contains("trigger=\"poll\"") || sluice.stderr().contains("trigger=poll"),
        "{}",
        sluice.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_down_a_start_serves_the_stored_digest_and_a_poll_keeps_the_old_version() {
    let mut registry = Registry::start();
    let first = registry.push("version_one", "mw/versioned:live");
    let up = echo().await;
    let cache = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mw = format!("component = \"{}\"\npoll = \"1s\"", registry.oci("mw/versioned:live"));
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    drop(Sluice::start_raw(&text, addr)); // pulls into the store

    registry.stop();
    let sluice = Sluice::start_raw(&text, addr);
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "one");
    assert!(
        sluice.stderr().contains("serving the digest the tag last resolved to"),
        "{}",
        sluice.stderr()
    );
    // The poll fails while the registry is down: the version keeps serving, and the admin API says why.
    let listed = listed_when(admin, "a poll error shown", |m| m["last-error"].is_string()).await;
    let error = listed["last-error"].as_str().unwrap();
    assert!(
        error.contains("polling") && error.contains("unreachable") && error.contains(&first),
        "{error}"
    );
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "one");

    // Back, with the tag moved: the next poll swaps it in and clears the error.
    registry.resume();
    let moved_to = registry.push("version_two", "mw/versioned:live");
    listed_when(admin, "swapped in once the registry came back", |m| {
        serves(m, &moved_to) && m["last-error"].is_null()
    })
    .await;
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sluices_following_one_tag_converge_on_the_same_digest() {
    let registry = Registry::start();
    registry.push("version_one", "mw/versioned:live");
    let up = echo().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let cache = tempfile::tempdir().unwrap();
        let admin = free_addr();
        let mw = format!("component = \"{}\"\npoll = \"1s\"", registry.oci("mw/versioned:live"));
        let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
        nodes.push((Sluice::start_raw(&text, addr), admin, cache));
    }
    let moved_to = registry.push("version_two", "mw/versioned:live");
    for (sluice, admin, _) in &nodes {
        listed_when(*admin, "every node on the moved tag", |m| serves(m, &moved_to)).await;
        assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "two");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_pulled_from_with_credentials_from_a_file_or_the_environment() {
    let registry = Registry::start_with(Some(("fleet", "s3cret")));
    registry.push("version_one", "private/one:v1");
    let dir = tempfile::tempdir().unwrap();
    let mw = format!("component = \"{}\"", registry.oci("private/one:v1"));
    let (text, _) = config(&registry, free_addr(), &mw, free_addr(), dir.path());

    let (ok, out) = check(dir.path(), &text);
    assert!(!ok, "anonymous must be refused: {out}");
    assert!(
        out.contains("cannot pull") && out.contains("middleware.v.component"),
        "{out}"
    );

    // A docker-style config.json, named in [registries].
    let auth = base64_of("fleet:s3cret");
    std::fs::write(
        dir.path().join("docker-config.json"),
        format!("{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}", registry.addr),
    )
    .unwrap();
    let with_file = text.replace(
        "[registries]\n",
        "[registries]\ncredentials-file = \"docker-config.json\"\n",
    );
    let (ok, out) = check(dir.path(), &with_file);
    assert!(ok, "{out}");

    // The environment, with a fresh store (nothing cached).
    let store = tempfile::tempdir().unwrap();
    let (text, _) = config(&registry, free_addr(), &mw, free_addr(), store.path());
    let env = [
        ("SLUICE_REGISTRY_USERNAME", "fleet"),
        ("SLUICE_REGISTRY_PASSWORD", "s3cret"),
    ];
    let (ok, out) = check_env(store.path(), &text, &env);
    assert!(ok, "{out}");
    let env = [
        ("SLUICE_REGISTRY_USERNAME", "fleet"),
        ("SLUICE_REGISTRY_PASSWORD", "wrong"),
    ];
    let store = tempfile::tempdir().unwrap();
    let (text, _) = config(&registry, free_addr(), &mw, free_addr(), store.path());
    let (ok, out) = check_env(store.path(), &text, &env);
    assert!(!ok, "{out}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_to_an_unsigned_artifact_is_never_swapped_in() {
    let registry = Registry::start();
    let keys = keys();
    let signed = registry.push("version_one", "mw/signed:live");
    registry.sign("mw/signed", &signed, &keys.path().join("cosign.key"));
    let up = echo().await;
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(keys.path().join("cosign.pub"), cache.path().join("cosign.pub")).unwrap();
    let admin = free_addr();
    let mw = format!(
        "component = \"{}\"\npoll = \"1s\"\nverify = {{ public-key-file = \"cosign.pub\" }}",
        registry.oci("mw/signed:live")
    );
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    // The config goes in `cache` too, where its relative `cosign.pub` is.
    let sluice = Sluice::spawn(&text, addr, cache, &[]);
    let load = Load::start(sluice.url("/"));

    let unsigned = registry.push("version_two", "mw/signed:live");
    let listed = listed_when(admin, "the refusal shown", |m| m["last-error"].is_string()).await;
    let error = listed["last-error"].as_str().unwrap();
    assert!(error.contains(&format!("`{unsigned}` is not signed")), "{error}");
    let served = load.finish().await;
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["one"],
        "only the signed version served"
    );
    assert!(serves(&admin_middleware(admin).await, &signed));

    // Signed now: the next poll swaps it in.
    registry.sign("mw/signed", &unsigned, &keys.path().join("cosign.key"));
    listed_when(admin, "the signed version swapped in", |m| serves(m, &unsigned)).await;
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_from_a_registry_follows_its_own_tag() {
    let registry = Registry::start();
    let first = registry.push("version_two", "mw/versioned:next");
    let up = echo().await;
    let cache = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mw = format!(
        "component = {:?}\npoll = \"1s\"\n\n[middleware.v.canary]\ncomponent = \"{}\"\nweight = 100",
        component("version_one"),
        registry.oci("mw/versioned:next")
    );
    let (text, addr) = config(&registry, up.addr(), &mw, admin, cache.path());
    let sluice = Sluice::start_raw(&text, addr);
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "two");
    let listed = admin_middleware(admin).await;
    assert!(serves(&listed["canary"], &first), "{listed}");
    assert!(listed["resolved"].is_null(), "the primary is a file: {listed}");

    let moved_to = registry.push("version_one", "mw/versioned:next");
    listed_when(admin, "the canary's moved tag swapped in", |m| {
        serves(&m["canary"], &moved_to)
    })
    .await;
    assert_eq!(versions(&common::client(), &sluice.url("/")).await.unwrap().1, "one");
}
