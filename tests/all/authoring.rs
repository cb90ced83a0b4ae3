//! The authoring loop of docs/authoring.md, step by step, in each language: `sluice new
//! middleware`, `make`, run it in sluice, change it, `make` again, and the running sluice swaps
//! the new version in while requests keep flowing, none failing.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Runs `make` in `project` (with `vars`), panicking with its output when it fails.
fn make(project: &Path, vars: &[&str]) {
    let out = Command::new("make")
        .current_dir(project)
        .args(vars)
        // What the outer cargo set for this test must not leak into the project's own build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make in {} failed:\n{}\n{}",
        project.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn greeting(client: &reqwest::Client, url: &str) -> (String, String) {
    let resp = client.get(url).header("x-name", "ada").send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    let lang = resp.headers()["x-hello-lang"].to_str().unwrap().to_owned();
    let seen: Value = resp.json().await.unwrap();
    (seen["headers"]["x-hello"].as_str().unwrap_or_default().to_owned(), lang)
}

/// The loop for `lang`, whose source file `source` holds the default greeting as `default`.
async fn authoring_loop(lang: &str, source: &str, default: &str, make_vars: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("greet");

    // 1. sluice new middleware greet --lang LANG
    let out = Command::new(sluice_bin())
        .current_dir(work.path())
        .args(["new", "middleware", "greet", "--lang", lang])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cd greet && make"));

    // 2. make
    make(&project, make_vars);
    assert!(project.join("greet.wasm").exists());

    // 3. Run it in sluice, in front of an upstream.
    let up = echo().await;
    let config = format!(
        "[upstreams.api]\ntargets = [\"{}\"]\n\n[middleware.greet]\ncomponent = {:?}\n\n[[route]]\nname = \"api\"\nupstream = \"api\"\nmiddleware = [\"greet\"]\n",
        up.addr(),
        project.join("greet.wasm").display().to_string()
    );
    let sluice = Sluice::start(&config);
    let client = client();
    assert_eq!(
        greeting(&client, &sluice.url("/")).await,
        ("hello, ada".to_owned(), lang_name(lang).to_owned()),
        "{}",
        sluice.stderr()
    );

    // 4. Change it and make again while requests flow: sluice swaps the new version in.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, served, url) = (stop.clone(), served.clone(), sluice.url("/"));
        tokio::spawn(async move {
            let client = common::client();
            while !stop.load(Ordering::Relaxed) {
                let resp = client.get(&url).send().await.expect("a request failed during the swap");
                let status = resp.status();
                let body = resp.text().await.unwrap();
                if status != 200 {
                    return Err(format!("a request failed during the swap: {status} {body}"));
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let path = project.join(source);
    let code = std::fs::read_to_string(&path).unwrap();
    assert!(code.contains(default), "{source} holds `{default}`");
    std::fs::write(&path, code.replacen(default, &default.replace("hello", "howdy"), 1)).unwrap();
    make(&project, make_vars);
    let started = Instant::now();
    loop {
        if greeting(&client, &sluice.url("/")).await.0 == "howdy, ada" {
            break;
        }
        // The first load of a new component compiles it: seconds for Rust, tens for an interpreter.
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the changed middleware was not serving:\n{}",
            sluice.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(failed) = load.await.unwrap() {
        panic!("{failed}\n{}", sluice.stderr());
    }
    assert!(served.load(Ordering::Relaxed) > 0);
}

fn lang_name(lang: &str) -> &'static str {
    match lang {
        "rust" => "rust",
        "js" => "javascript",
        _ => "python",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_middleware_builds_runs_and_is_swapped_by_make() {
    // One target directory for every run of this test: the SDK's dependencies compile once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("authoring-rust-target");
    let var = format!("TARGET_DIR={}", target.display());
    authoring_loop("rust", "src/lib.rs", "None => \"hello\"", &[&var]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_middleware_builds_runs_and_is_swapped_by_make() {
    authoring_loop("js", "app.js", "config.greeting ?? \"hello\"", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_middleware_builds_runs_and_is_swapped_by_make() {
    authoring_loop("python", "app.py", "config.get(\"greeting\", \"hello\")", &[]).await;
}
