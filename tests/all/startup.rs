//! What a start and a reload compile: many middleware of one component share its compiled code
//! (one artifact in the cache, each with its own `init` and config); a reused middleware's new
//! instances run `init` when created; `instances = "fresh"` still gets its snapshot.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Schemas of the JSON-Schema-Test-Suite (the first group of each keyword file without remote
/// references), each with one instance it accepts and one it rejects, from the suite's cases.
fn suite_schemas(count: usize) -> Vec<(String, String, String)> {
    let dir = repo_root().join("target/json-schema-test-suite/tests/draft2020-12");
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh (make test does)",
        dir.display()
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut schemas = Vec::new();
    for file in files {
        let groups: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for group in groups.as_array().unwrap() {
            let Some(keywords) = group["schema"].as_object() else {
                continue;
            };
            let mut keywords = keywords.clone();
            keywords.remove("$schema");
            let references = Value::from(keywords).to_string();
            if references.contains("http") || references.contains("urn:") {
                continue; // remote references: a component has no network
            }
            let schema = group["schema"].to_string();
            let case = |valid: bool| {
                group["tests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["valid"] == valid)
                    .map(|t| t["data"].to_string())
            };
            if let (Some(accepted), Some(rejected)) = (case(true), case(false)) {
                schemas.push((schema, accepted, rejected));
                break;
            }
        }
        if schemas.len() == count {
            break;
        }
    }
    assert_eq!(schemas.len(), count, "the suite has fewer usable schemas");
    schemas
}

/// A config with one `schema-validate` middleware and route per schema (`/s/I/`), its artifact
/// cache in `cache`.
fn config(
    addr: SocketAddr,
    cache: &Path,
    upstream: SocketAddr,
    schemas: &[(String, String, String)],
    extra: &str,
) -> String {
    let mut config = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = 2\ncache-dir = {:?}\n\n[upstreams.u]\ntargets = [\"{upstream}\"]\n",
        cache.display().to_string()
    );
    for (i, (schema, _, _)) in schemas.iter().enumerate() {
        config.push_str(&format!(
            "\n[middleware.s{i}]\ncomponent = \"builtin:schema-validate\"\nconfig = {{ schema = {:?} }}\n{extra}\n\
             [[route]]\nname = \"s{i}\"\npath-prefix = \"/s/{i}/\"\nupstream = \"u\"\nmiddleware = [\"s{i}\"]\n",
            schema
        ));
    }
    config
}

/// Files in the artifact cache with extension `ext`.
fn cached(cache: &Path, ext: &str) -> usize {
    std::fs::read_dir(cache)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|e| e == ext))
        .count()
}

/// Each route accepts its schema's valid instance and rejects its invalid one.
async fn each_route_validates_with_its_own_schema(sluice: &Sluice, schemas: &[(String, String, String)]) {
    let client = client();
    for (i, (schema, accepted, rejected)) in schemas.iter().enumerate() {
        for (body, expected) in [(accepted, 200), (rejected, 400)] {
            let status = client
                .post(sluice.url(&format!("/s/{i}/")))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(
                status,
                expected,
                "/s/{i}/ with schema {schema}: {body}\n{}",
                sluice.stderr()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_middleware_of_one_component_compile_it_once_and_a_reload_adds_one_without_compiling() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let addr = free_addr();
    let schemas = suite_schemas(13);
    let (first, added) = schemas.split_at(12);
    let sluice = Sluice::spawn(&config(addr, &cache, up.addr(), first, ""), addr, dir, &[]);

    // Twelve middleware, one compiled component, no snapshot.
    assert_eq!(cached(&cache, "cwasm"), 1, "{}", sluice.stderr());
    assert_eq!(cached(&cache, "json"), 0, "a snapshot was made");
    each_route_validates_with_its_own_schema(&sluice, first).await;

    // One more schema middleware by a reload: served, and nothing compiled.
    std::fs::write(sluice.config_path(), config(addr, &cache, up.addr(), &schemas, "")).unwrap();
    sluice.signal(nix::sys::signal::Signal::SIGHUP);
    let url = sluice.url("/s/12/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(added[0].2.clone())
            .send()
            .await
            .unwrap();
        if resp.status() == 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the added route never validated:\n{}",
            sluice.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cached(&cache, "cwasm"), 1, "the reload compiled again");
    each_route_validates_with_its_own_schema(&sluice, &schemas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_get_a_snapshot_per_config() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let addr = free_addr();
    let schemas = suite_schemas(2);
    let sluice = Sluice::spawn(
        &config(addr, &cache, up.addr(), &schemas, "instances = \"fresh\"\n"),
        addr,
        dir,
        &[],
    );
    assert_eq!(
        cached(&cache, "json"),
        2,
        "one snapshot per config:\n{}",
        sluice.stderr()
    );
    assert_eq!(cached(&cache, "cwasm"), 2);
    each_route_validates_with_its_own_schema(&sluice, &schemas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_reused_instance_runs_init_with_its_config() {
    // One request per instance: the first is the instance load started, each later one is created
    // by the request and must have run `init` to know the name it stamps.
    let up = echo().await;
    let sluice = Sluice::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n\n{}reuse = {{ max-requests = 1 }}\n\n\
         [[route]]\nname = \"r\"\npath-prefix = \"/\"\nupstream = \"u\"\nmiddleware = [\"named\"]\n",
        up.addr(),
        stamp("named", "\"request-headers\"")
    ));
    let client = client();
    for i in 0..5 {
        let echoed = echoed(&client, &sluice.url("/x")).await;
        assert_eq!(
            echoed["headers"]["x-stamp-request"],
            "named",
            "request {i}: {echoed}\n{}",
            sluice.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluices_starting_at_once_on_one_empty_cache_both_serve_and_leave_it_whole() {
    let up = echo().await;
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("cache");
    let schemas = suite_schemas(3);
    let start = || {
        let addr = free_addr();
        Sluice::spawn(
            &config(addr, &cache, up.addr(), &schemas, ""),
            addr,
            tempfile::tempdir().unwrap(),
            &[],
        )
    };
    // Both compile the component at the same time and write the same entry.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(start);
        let b = s.spawn(start);
        (a.join().unwrap(), b.join().unwrap())
    });
    each_route_validates_with_its_own_schema(&a, &schemas).await;
    each_route_validates_with_its_own_schema(&b, &schemas).await;
    assert_eq!(cached(&cache, "cwasm"), 1);
    assert_eq!(cached(&cache, "tmp"), 0, "a temporary file was left behind");

    // A third start loads what they wrote.
    let c = start();
    each_route_validates_with_its_own_schema(&c, &schemas).await;
    let log = c.stderr();
    assert!(
        log.contains("cached=true") && !log.contains("cached=false"),
        "the third start compiled again:\n{log}"
    );
}
