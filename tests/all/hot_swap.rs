//! Hot swap under load, over real TCP: a component swapped between two versions by file change and
//! by upload, bad uploads and bad config edits, rollback, SIGHUP and the admin reload, a canary's
//! share of traffic, and the admin API's guard. Eight connections stay busy throughout; every
//! request must succeed and carry one version in both of its phases.
//!
//! `version_one` and `version_two` are the same middleware built twice: each sets
//! `x-version-request` for the upstream (the echo upstream shows it back) and `x-version` on the
//! response.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{EchoServer, Sluice, component, echo, free_addr, shared_cache_dir};
use serde_json::Value;

const TOKEN: &str = "test-admin-token";

struct Proxy {
    sluice: Sluice,
    admin: std::net::SocketAddr,
    _echo: EchoServer,
}

fn server(addr: std::net::SocketAddr, admin: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\nadmin = \"{admin}\"\nadmin-token-env = \"SLUICE_ADMIN_TOKEN\"\n{extra}\n",
        shared_cache_dir().display().to_string()
    )
}

fn body(echo: &EchoServer, middleware: &str) -> String {
    format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n\n{middleware}\n[[route]]\nname = \"all\"\nupstream = \"echo\"\nmiddleware = [\"ver\"]\n",
        echo.addr()
    )
}

/// Compiles both versions into the shared artifact cache first, so swap times are what a swap to
/// a known version costs (the first load of a component compiles it: seconds, not the subject).
fn prewarm() {
    for version in ["version_one", "version_two"] {
        let config = format!(
            "[server]\ncache-dir = {:?}\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[middleware.ver]\ncomponent = {:?}\n[[route]]\nname = \"r\"\nupstream = \"u\"\nmiddleware = [\"ver\"]\n",
            shared_cache_dir().display().to_string(),
            component(version)
        );
        let (_dir, _path, out) = common::run_on_config("check", &config);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// sluice with middleware `ver` running `v.wasm` in its directory (a copy of `initial`).
async fn start(initial: &str, server_extra: &str, middleware_extra: &str) -> Proxy {
    prewarm();
    let echo = echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component(initial), dir.path().join("v.wasm")).unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let middleware = format!("[middleware.ver]\ncomponent = \"v.wasm\"\n{middleware_extra}\n");
    let config = server(addr, admin, server_extra) + &body(&echo, &middleware);
    let sluice = Sluice::spawn(&config, addr, dir, &[("SLUICE_ADMIN_TOKEN", TOKEN)]);
    Proxy {
        sluice,
        admin,
        _echo: echo,
    }
}

/// Replaces `to` with `from` the way deploy tools do: write beside it, then rename over it.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// One request's versions: (request phase, response phase); `Err` for a failed request.
type Seen = Result<(String, String), String>;

pub(crate) async fn versions(client: &reqwest::Client, url: &str) -> Seen {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let response_version = resp
        .headers()
        .get("x-version")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    let request_version = body["headers"]["x-version-request"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((request_version, response_version))
}

/// Eight clients, each on its own connection, sending requests back to back until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
}

impl Load {
    pub(crate) fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..8)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let client = common::client();
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.push(versions(&client, &url).await);
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients; asserts every request succeeded with one version in both phases, and
    /// returns how many requests each version served.
    pub(crate) async fn finish(self) -> BTreeMap<String, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut served = BTreeMap::new();
        let mut total = 0;
        for task in self.tasks {
            for result in task.await.unwrap() {
                total += 1;
                let (request, response) = result.unwrap_or_else(|e| panic!("a request failed during the swaps: {e}"));
                assert_eq!(request, response, "one request ran two versions");
                *served.entry(response).or_insert(0) += 1;
            }
        }
        assert!(total > 100, "the load ran only {total} requests");
        served
    }
}

impl Proxy {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = common::client()
            .request(method, self.admin_url(path))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn upload(&self, wasm: Vec<u8>) -> (u16, Value) {
        self.admin(reqwest::Method::PUT, "/admin/middleware/ver/component", wasm)
            .await
    }

    async fn middleware(&self) -> Value {
        self.admin(reqwest::Method::GET, "/admin/middleware", Vec::new())
            .await
            .1
    }

    async fn version_now(&self) -> String {
        versions(&common::client(), &self.sluice.url("/now")).await.unwrap().1
    }

    /// Waits until a new request sees `version`; returns how long that took.
    async fn wait_for(&self, version: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.version_now().await == version {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "version `{version}` not serving after {within:?}:\n{}",
                self.sluice.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The admin API's `/metrics` text.
    async fn metrics_text(&self) -> String {
        common::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, line_start: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_swaps_by_file_and_fifty_by_upload_lose_no_request() {
    let proxy = start("version_one", "", "").await;
    let file = proxy.sluice.dir.path().join("v.wasm");
    let load = Load::start(proxy.sluice.url("/load"));
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let next = if i % 2 == 0 { "version_two" } else { "version_one" };
        replace_file(Path::new(&component(next)), &file);
        slowest = slowest.max(
            proxy
                .wait_for(&next.replace("version_", ""), Duration::from_secs(5))
                .await,
        );
    }
    assert!(
        slowest <= Duration::from_secs(1),
        "a file swap took {slowest:?} to serve"
    );
    for i in 0..50 {
        let next = if i % 2 == 0 { "version_two" } else { "version_one" };
        let (status, answer) = proxy.upload(wasm(next)).await;
        assert_eq!(status, 200, "{answer}");
        // The upload answers once the new snapshot is live: the very next request runs it.
        assert_eq!(proxy.version_now().await, next.replace("version_", ""));
    }
    let served = load.finish().await;
    eprintln!("slowest file swap: {slowest:?}; requests served by version: {served:?}");
    assert!(
        served.get("one").is_some_and(|&n| n > 0) && served.get("two").is_some_and(|&n| n > 0),
        "{served:?}"
    );
    assert_eq!(
        proxy
            .metric("sluice_reloads_total{trigger=\"upload\",result=\"ok\"}")
            .await,
        50.0
    );
    assert!(
        proxy
            .metric("sluice_reloads_total{trigger=\"file\",result=\"ok\"}")
            .await
            >= 50.0
    );
    let listed = proxy.middleware().await;
    let ver = &listed["middleware"][0];
    assert_eq!(ver["source"], "upload", "{listed}");
    assert_eq!(ver["digest"].as_str().unwrap().len(), 64, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_and_bad_config_edits_change_nothing_and_rollback_is_instant() {
    let proxy = start("version_one", "", "version = \"v1\"").await;
    let load = Load::start(proxy.sluice.url("/load"));

    // Not wasm, the wrong world, a component whose `init` rejects this config (`stamp` needs `name`).
    for (bad, expect) in [
        (b"not a component".to_vec(), "cannot serve as `ver`"),
        (wasm("wrong_world"), "cannot serve as `ver`"),
        (wasm("stamp"), "`name` is required"),
    ] {
        let (status, answer) = proxy.upload(bad).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["detail"].as_str().unwrap().contains(expect), "{answer}");
        assert_eq!(proxy.version_now().await, "one");
    }
    let (status, _) = proxy
        .admin(
            reqwest::Method::PUT,
            "/admin/middleware/nope/component",
            wasm("version_two"),
        )
        .await;
    assert_eq!(status, 404);
    let unauthorized = common::client()
        .put(proxy.admin_url("/admin/middleware/ver/component"))
        .body(wasm("version_two"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert!(unauthorized.headers().contains_key("www-authenticate"));
    assert_eq!(proxy.version_now().await, "one");

    // A broken config edit: the watcher's reload fails, the old snapshot keeps serving, and the
    // admin API says why, at the file, line and key.
    let path = proxy.sluice.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("component = \"v.wasm\"", "component = \"v.wasm\"\ntimeout = \"soon\""),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let listed = proxy.middleware().await;
        if listed["last-reload"]["trigger"] == "file" {
            assert_eq!(listed["last-reload"]["result"], "error", "{listed}");
            let error = listed["last-reload"]["error"].as_str().unwrap();
            assert!(
                error.contains("sluice.toml:") && error.contains("middleware.ver.timeout"),
                "{error}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the broken edit was not noticed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.version_now().await, "one");
    assert_eq!(
        proxy
            .metric("sluice_reloads_total{trigger=\"file\",result=\"error\"}")
            .await,
        1.0
    );

    // A config naming a component that fails to load: also nothing changes.
    std::fs::write(proxy.sluice.dir.path().join("broken.wasm"), b"\0asm broken").unwrap();
    std::fs::write(&path, good.replace("\"v.wasm\"", "\"broken.wasm\"")).unwrap();
    let (status, answer) = proxy.admin(reqwest::Method::POST, "/admin/reload", Vec::new()).await;
    assert_eq!(status, 422, "{answer}");
    let listed = proxy.middleware().await;
    assert!(
        listed["middleware"][0]["last-error"]
            .as_str()
            .is_some_and(|e| e.contains("middleware.ver.component")),
        "{listed}\n{}",
        proxy.sluice.stderr()
    );
    assert_eq!(proxy.version_now().await, "one");

    // A good edit: version two, labelled v2.
    std::fs::copy(component("version_two"), proxy.sluice.dir.path().join("v2.wasm")).unwrap();
    std::fs::write(
        &path,
        good.replace("\"v.wasm\"", "\"v2.wasm\"").replace("\"v1\"", "\"v2\""),
    )
    .unwrap();
    proxy.wait_for("two", Duration::from_secs(5)).await;
    let listed = proxy.middleware().await;
    assert_eq!(listed["middleware"][0]["version"], "v2", "{listed}");
    assert_eq!(listed["middleware"][0]["previous"]["version"], "v1", "{listed}");
    assert_eq!(listed["middleware"][0]["last-error"], Value::Null, "{listed}");

    // Rollback: the previous version is still loaded; the next request runs it. Twice: back again.
    let (status, answer) = proxy
        .admin(reqwest::Method::POST, "/admin/middleware/ver/rollback", Vec::new())
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.version_now().await, "one");
    // A reload while the config still names v2 keeps the version rolled back to, and what the
    // next rollback restores.
    let (status, answer) = proxy.admin(reqwest::Method::POST, "/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.version_now().await, "one");
    let listed = proxy.middleware().await;
    assert_eq!(listed["middleware"][0]["version"], "v1", "{listed}");
    assert_eq!(listed["middleware"][0]["previous"]["version"], "v2", "{listed}");
    let (status, _) = proxy
        .admin(reqwest::Method::POST, "/admin/middleware/ver/rollback", Vec::new())
        .await;
    assert_eq!(status, 200);
    assert_eq!(proxy.version_now().await, "two");

    let served = load.finish().await;
    assert!(served.contains_key("one") && served.contains_key("two"), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_takes_its_weight_and_metrics_are_split_by_version() {
    let canary = format!(
        "version = \"stable\"\n[middleware.ver.canary]\ncomponent = {:?}\nweight = 30\nversion = \"canary\"\n",
        component("version_two")
    );
    let proxy = start("version_one", "", &canary).await;
    let url = proxy.sluice.url("/canary");
    let mut served = BTreeMap::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = common::client();
                let mut seen = Vec::new();
                for _ in 0..250 {
                    seen.push(versions(&client, &url).await.unwrap());
                }
                seen
            })
        })
        .collect();
    for task in tasks {
        for (request, response) in task.await.unwrap() {
            assert_eq!(request, response, "one request ran two versions");
            *served.entry(response).or_insert(0u32) += 1;
        }
    }
    let share = f64::from(served["two"]) / 2000.0 * 100.0;
    assert!(
        (25.0..=35.0).contains(&share),
        "canary share {share:.1}% for weight 30: {served:?}"
    );
    let calls = |version: &str| {
        format!(
            "sluice_middleware_calls_total{{middleware=\"ver\",version=\"{version}\",phase=\"response-headers\",outcome=\"next\"}}"
        )
    };
    assert_eq!(proxy.metric(&calls("canary")).await, f64::from(served["two"]));
    assert_eq!(proxy.metric(&calls("stable")).await, f64::from(served["one"]));
    let listed = proxy.middleware().await;
    assert_eq!(listed["middleware"][0]["canary"]["weight"], 30, "{listed}");
    assert_eq!(listed["middleware"][0]["canary"]["version"], "canary", "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_and_the_admin_api_reload_when_watching_is_off() {
    let proxy = start("version_one", "watch = false", "").await;
    let path = proxy.sluice.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::copy(component("version_two"), proxy.sluice.dir.path().join("v2.wasm")).unwrap();
    std::fs::write(&path, good.replace("\"v.wasm\"", "\"v2.wasm\"")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.version_now().await, "one", "reloaded without being asked");

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &proxy.sluice.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    proxy.wait_for("two", Duration::from_secs(5)).await;

    std::fs::write(&path, &good).unwrap();
    let (status, answer) = proxy.admin(reqwest::Method::POST, "/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"][0], "ver", "{answer}");
    assert_eq!(proxy.version_now().await, "one");
    assert_eq!(
        proxy
            .metric("sluice_reloads_total{trigger=\"sighup\",result=\"ok\"}")
            .await,
        1.0
    );

    // The config as loaded, and health.
    let config = common::client()
        .get(proxy.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(config.text().await.unwrap(), good);
    let health = common::client().get(proxy.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn the_admin_api_is_not_exposed_without_a_token() {
    let config = |admin: &str, token: &str| {
        format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{admin}\"\n{token}\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[[route]]\nname = \"r\"\nupstream = \"u\"\n",
            free_addr()
        )
    };
    for (config, expect) in [
        (config("0.0.0.0:0", ""), "needs `admin-token-env`"),
        (
            config("127.0.0.1:0", "admin-token-env = \"SLUICE_TEST_UNSET_TOKEN\""),
            "`SLUICE_TEST_UNSET_TOKEN`, which is not set",
        ),
    ] {
        let (_dir, _path, out) = common::run_on_config("run", &config);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("sluice.toml:3:") && stderr.contains("server.admin") && stderr.contains(expect),
            "{stderr}"
        );
    }
}

/// Every `sluice_reloads_total` series, by its labels.
async fn reload_counts(proxy: &Proxy) -> BTreeMap<String, f64> {
    proxy
        .metrics_text()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("sluice_reloads_total"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_every_kind_of_reload_an_idle_sluice_reloads_nothing_more() {
    let proxy = start("version_one", "", "").await;
    let path = proxy.sluice.config_path();
    // The admin API, SIGHUP and a content change each reload once ...
    let (status, answer) = proxy.admin(reqwest::Method::POST, "/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{answer}");
    proxy.sluice.signal(nix::sys::signal::Signal::SIGHUP);
    // The SIGHUP reload reads the file: let it finish before the edit below truncates it.
    let started = Instant::now();
    while proxy.metric("sluice_reloads_total{trigger=\"sighup\"").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("# edited\n{text}")).unwrap();
    let started = Instant::now();
    while proxy.metric("sluice_reloads_total{trigger=\"file\"").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the edit did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and what only touches the files (opening, reading, `touch`, the same bytes again) none.
    let component = proxy.sluice.dir.path().join("v.wasm");
    for file in [&path, &component] {
        let f = std::fs::File::options().append(true).open(file).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        let _ = std::fs::read(file).unwrap();
    }
    std::fs::write(&path, std::fs::read(&path).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let counts = reload_counts(&proxy).await;
    let expected: BTreeMap<String, f64> = [
        ("{trigger=\"admin\",result=\"ok\"}".to_owned(), 1.0),
        ("{trigger=\"file\",result=\"ok\"}".to_owned(), 1.0),
        ("{trigger=\"sighup\",result=\"ok\"}".to_owned(), 1.0),
    ]
    .into();
    assert_eq!(counts, expected, "{}", proxy.sluice.stderr());
}

/// A change another reload already loaded (the admin API's, right after the edit) is not loaded
/// again by the watcher: it compares with what the live snapshot was built from, whichever reload
/// built it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_the_admin_api_already_loaded_is_not_loaded_again_by_the_watcher() {
    let proxy = start("version_one", "", "").await;
    let path = proxy.sluice.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("# edited\n{text}")).unwrap();
    let (status, answer) = proxy.admin(reqwest::Method::POST, "/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{answer}");
    // Well past the watcher's settling time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = reload_counts(&proxy).await;
    let expected: BTreeMap<String, f64> = [("{trigger=\"admin\",result=\"ok\"}".to_owned(), 1.0)].into();
    assert_eq!(counts, expected, "{}", proxy.sluice.stderr());
}

/// A change made while sluice starts (after it parsed the config, before its watcher is up) is a
/// change: what the first snapshot was built from is read before the load, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_sluice_starts_is_reloaded() {
    let echo = echo().await;
    let (addr, admin, upstream) = (free_addr(), free_addr(), echo.addr());
    // `b` (JavaScript, its `init` run at load) loads for tens of milliseconds after `a`: the
    // change lands then.
    let config = |stamp: &str| {
        format!(
            "{}[upstreams.echo]\ntargets = [\"{upstream}\"]\n\n[middleware.a]\ncomponent = {:?}\nconfig = {{ name = \"{stamp}\", phases = [\"response-headers\"] }}\n\n[middleware.b]\ncomponent = {:?}\nconfig = {{ name = \"b\" }}\n\n[[route]]\nname = \"all\"\nupstream = \"echo\"\nmiddleware = [\"a\", \"b\"]\n",
            server(addr, admin, ""),
            component("stamp"),
            crate::polyglot::polyglot("probe_js"),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, stderr) = (dir.path().join("sluice.toml"), dir.path().join("stderr.log"));
    let first = config("before");
    let starting = std::thread::spawn(move || Sluice::spawn(&first, addr, dir, &[("SLUICE_ADMIN_TOKEN", TOKEN)]));
    let started = Instant::now();
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("middleware loaded middleware=\"a\"")
    {
        assert!(started.elapsed() < Duration::from_secs(60), "`a` did not load");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    std::fs::write(&path, config("after")).unwrap();
    let proxy = Proxy {
        sluice: starting.join().unwrap(),
        admin,
        _echo: echo,
    };
    let client = common::client();
    let started = Instant::now();
    loop {
        let resp = client.get(proxy.sluice.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let stamps: Vec<_> = resp.headers().get_all("x-stamp-response").iter().cloned().collect();
        if stamps.contains(&reqwest::header::HeaderValue::from_static("after")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change made while sluice started was never loaded: {stamps:?}\n{}",
            proxy.sluice.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = reload_counts(&proxy).await;
    let expected: BTreeMap<String, f64> = [("{trigger=\"file\",result=\"ok\"}".to_owned(), 1.0)].into();
    assert_eq!(counts, expected, "{}", proxy.sluice.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_saved_in_parts_is_served_only_once_whole() {
    let echo = echo().await;
    let (addr, admin, upstream) = (free_addr(), free_addr(), echo.addr());
    let parts = |i: usize| {
        [
            format!("# save {i}\n{}[upstreams.echo]\ntargets = [\"{}\"]\n\n", server(addr, admin, ""), upstream),
            "[[route]]\nname = \"a\"\npath-prefix = \"/a\"\nupstream = \"echo\"\n\n[[route]]\nname = \"b\"\npath-prefix = \"/b\"\nupstream = \"echo\"\n\n".to_owned(),
            "[[route]]\nname = \"c\"\npath-prefix = \"/c\"\nupstream = \"echo\"\n".to_owned(),
        ]
    };
    let sluice = Sluice::spawn(
        &parts(0).concat(),
        addr,
        tempfile::tempdir().unwrap(),
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );
    let proxy = Proxy {
        sluice,
        admin,
        _echo: echo,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|n| {
            let (stop, base) = (stop.clone(), proxy.sluice.url(""));
            tokio::spawn(async move {
                let client = common::client();
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let route = ["a", "b", "c"][n % 3];
                    match client.get(format!("{base}/{route}/x")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!("/{route}: {}", r.status())),
                        Err(e) => failed.push(format!("/{route}: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let path = proxy.sluice.config_path();
    for i in 1..=20 {
        // What an editor without atomic saves does: truncate, then write, here in three parts.
        let mut file = std::fs::File::create(&path).unwrap();
        for (n, part) in parts(i).iter().enumerate() {
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::io::Write::write_all(&mut file, part.as_bytes()).unwrap();
        }
        drop(file);
        let started = Instant::now();
        while proxy
            .metric("sluice_reloads_total{trigger=\"file\",result=\"ok\"}")
            .await
            < i as f64
        {
            assert!(started.elapsed() < Duration::from_secs(5), "save {i} was not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 100, "the load ran only {ok} requests");
    let counts = reload_counts(&proxy).await;
    assert_eq!(
        counts.values().sum::<f64>(),
        20.0,
        "one reload per save, none failed: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_no_secret_and_off_loopback_every_call_needs_the_token() {
    let echo = echo().await;
    let addr = free_addr();
    let port = free_addr().port();
    let config = format!(
        "[server]\nlisten = [\"{addr}\"]\ncache-dir = {:?}\nadmin = \"0.0.0.0:{port}\"\nadmin-token-env = \"SLUICE_ADMIN_TOKEN\"\n\n\
         [upstreams.echo]\ntargets = [\"{}\"]\n\n\
         [middleware.jwt]\ncomponent = \"builtin:auth-jwt\"\nconfig = {{ algorithms = [\"HS256\"], secret = \"hmac-secret-never-shown\" }}\n\n\
         [[route]]\nname = \"all\"\nupstream = \"echo\"\nmiddleware = [\"jwt\"]\n",
        shared_cache_dir().display().to_string(),
        echo.addr()
    );
    let sluice = Sluice::spawn(
        &config,
        addr,
        tempfile::tempdir().unwrap(),
        &[("SLUICE_ADMIN_TOKEN", TOKEN)],
    );
    let admin = format!("http://127.0.0.1:{port}");
    let client = common::client();
    for path in ["/healthz", "/metrics", "/admin/config", "/admin/middleware"] {
        let anonymous = client.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path} answered without a token");
        let wrong = client
            .get(format!("{admin}{path}"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} answered to a wrong token");
        let authorized = client
            .get(format!("{admin}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(authorized.status(), 200, "{path}");
        let text = authorized.text().await.unwrap();
        assert!(
            !text.contains("hmac-secret-never-shown"),
            "{path} shows the secret:\n{text}"
        );
        if path == "/admin/config" {
            assert!(text.contains("secret = \"<redacted>\""), "{text}");
            assert!(text.contains("admin-token-env = \"SLUICE_ADMIN_TOKEN\""), "{text}");
        }
    }
    drop(sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_on_their_length_read_one_at_a_time_and_never_held_whole() {
    use std::io::{Read, Write};
    let proxy = start("version_one", "", "version = \"v1\"").await;
    let head = |len: u64| {
        format!(
            "PUT /admin/middleware/ver/component HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let answer_of = |stream: &mut std::net::TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = vec![0; 4096];
        let n = stream.read(&mut answer).expect("an answer without the body being sent");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };

    // 300 MB announced, nothing sent: 413 at once, from the head alone.
    let mut big = std::net::TcpStream::connect(proxy.admin).unwrap();
    big.write_all(head(300_000_000).as_bytes()).unwrap();
    let answer = answer_of(&mut big);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("300000000 bytes"), "{answer}");

    // One upload arriving slowly holds the upload slot: a second one meanwhile is 429. (Should the
    // second be read first, on a busy machine, it holds the slot and the slow one is refused:
    // then the second gets its body and an answer, and both try again, further apart.)
    let mut wait = Duration::from_millis(200);
    let (slow, answer) = loop {
        let mut slow = std::net::TcpStream::connect(proxy.admin).unwrap();
        slow.write_all(head(1 << 20).as_bytes()).unwrap();
        slow.write_all(&[0; 1024]).unwrap();
        tokio::time::sleep(wait).await;
        let mut second = std::net::TcpStream::connect(proxy.admin).unwrap();
        second.write_all(head(10).as_bytes()).unwrap();
        second.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = vec![0; 4096];
        match second.read(&mut answer) {
            Ok(n) => break (slow, String::from_utf8_lossy(&answer[..n]).into_owned()),
            Err(_) => {
                assert!(wait < Duration::from_secs(5), "the slow upload never held the slot");
                second.write_all(&[0; 10]).unwrap();
                let _ = answer_of(&mut second);
                wait *= 4;
            }
        }
    };
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");

    // The slow client gives up: its slot is free again (once sluice has seen it go: a 429 until
    // then, which says when to try again), and a real upload swaps in.
    drop(slow);
    let started = Instant::now();
    let (status, answer) = loop {
        let (status, answer) = proxy.upload(wasm("version_two")).await;
        if status != 429 || started.elapsed() > Duration::from_secs(10) {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{answer}");
    proxy.wait_for("two", Duration::from_secs(5)).await;
}
