//! Loading real compiled components: init runs once under wizer, the snapshot is cached, bad
//! components and rejected configs are refused with a reason.

use std::path::PathBuf;
use std::sync::Arc;

use sluice::runtime::{LoadError, Runtime, Start};
use sluice::state::State;

fn component(name: &str) -> Vec<u8> {
    let path = PathBuf::from(sluice::artifacts::COMPONENT_DIR).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `stamp`'s config for the cache test: two of its four phases.
const STAMP_A: &str = r#"{"name":"a","phases":["request-headers","response-body"]}"#;

fn state() -> Arc<State> {
    Arc::new(State::memory())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_once_and_the_snapshot_is_cached() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let bytes = component("stamp");
    let first = runtime
        .load("a", &bytes, STAMP_A, state(), 64 << 20, Start::Snapshot)
        .await
        .unwrap();
    assert!(!first.cached);
    let r = &first.registration;
    assert!(
        r.request_headers && r.response_body && !r.request_body && !r.response_headers,
        "{r:?}"
    );
    assert_eq!(first.digest.len(), 64);

    // A second runtime (a restart) with the same cache directory loads the compiled snapshot.
    let restarted = Runtime::new(cache.path().to_owned()).unwrap();
    let again = restarted
        .load("a", &bytes, STAMP_A, state(), 64 << 20, Start::Snapshot)
        .await
        .unwrap();
    assert!(again.cached);
    assert_eq!(again.registration, first.registration);
    eprintln!("stamp: first load {:?}, cached load {:?}", first.took, again.took);

    // Another config is another snapshot.
    let other = restarted
        .load("b", &bytes, r#"{"name":"b"}"#, state(), 64 << 20, Start::Snapshot)
        .await
        .unwrap();
    assert!(!other.cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_snapshot_a_component_is_compiled_once_whatever_its_config() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let bytes = component("stamp");
    let first = runtime
        .load("a", &bytes, STAMP_A, state(), 64 << 20, Start::Init)
        .await
        .unwrap();
    assert!(!first.cached);
    assert_eq!(first.start, Start::Init);
    let r = &first.registration;
    assert!(
        r.request_headers && r.response_body && !r.request_body && !r.response_headers,
        "init ran at load and registered its phases: {r:?}"
    );
    assert!(first.initial_memory > 0);

    // Another config of the same component: the same compiled code, `init` run with the new config.
    let other = runtime
        .load("b", &bytes, r#"{"name":"b"}"#, state(), 64 << 20, Start::Init)
        .await
        .unwrap();
    assert!(other.cached, "a second config compiled the component again");
    assert!(
        std::sync::Arc::ptr_eq(&first.code, &other.code),
        "two images of one component"
    );
    assert_ne!(other.registration, first.registration);

    // A restart: the code from the artifact cache, for a config it never saw.
    drop((first, other));
    let restarted = Runtime::new(cache.path().to_owned()).unwrap();
    let again = restarted
        .load("c", &bytes, r#"{"name":"c"}"#, state(), 64 << 20, Start::Init)
        .await
        .unwrap();
    assert!(again.cached);
    eprintln!("stamp without a snapshot: cached load {:?}", again.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_init_rejects_is_refused_with_its_message() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    for start in [Start::Snapshot, Start::Init] {
        let err = runtime
            .load("a", &component("stamp"), "{}", state(), 64 << 20, start)
            .await
            .err()
            .expect("must be refused");
        assert!(
            matches!(&err, LoadError::InitRejected(m) if m.contains("`name` is required")),
            "{start:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_world_and_garbage_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    for start in [Start::Snapshot, Start::Init] {
        let refused = async |bytes: &[u8]| {
            let loaded = runtime.load("x", bytes, "{}", state(), 64 << 20, start).await;
            loaded.err().expect("must be refused")
        };
        let err = refused(&component("wrong_world")).await;
        assert!(matches!(err, LoadError::WrongWorld(_)), "{start:?}: {err}");
        // A standard `wasi:http/proxy` component loads as the link kind it is, with no phase of
        // the `sluice:middleware` world and its `handle`.
        let loaded = runtime
            .load("x", &component("http_proxy"), "{}", state(), 64 << 20, start)
            .await
            .expect("a wasi:http/proxy component loads");
        assert_eq!(loaded.pre.http_world(), Some(sluice::runtime::HttpWorld::Proxy));
        assert!(loaded.registration.handle && !loaded.registration.request_headers);
        assert!(loaded.instance.is_none());
        // So does a WASI 0.3 `wasi:http/middleware` one (it imports the handler it exports).
        let loaded = runtime
            .load("x", &component("http_middleware"), "{}", state(), 64 << 20, start)
            .await
            .expect("a wasi:http/middleware component loads");
        assert_eq!(loaded.pre.http_world(), Some(sluice::runtime::HttpWorld::Middleware));
        // A WASI 0.3 `wasi:http/service` one is said to be one, not to lack an `init` (built with the `wasip3` crate).
        let err = refused(&component("http_handler")).await;
        assert!(matches!(err, LoadError::WrongWorld(_)), "{start:?}: {err}");
        assert!(
            err.to_string()
                .contains("it is a standard `wasi:http/service` component (WASI 0.3: it exports `wasi:http/handler`)"),
            "{start:?}: {err}"
        );
        let err = refused(b"not wasm at all").await;
        assert!(
            matches!(err, LoadError::WrongWorld(_) | LoadError::Invalid(_)),
            "{start:?}: {err}"
        );
    }
}

/// A standard `wasi:http` component's compiled code is cached as a `sluice:middleware`
/// component's is, for the engine it runs on (WASI 0.3 components have one of their own): a
/// restart loads it from the cache rather than compiling it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_component_is_compiled_once_and_cached() {
    let cache = tempfile::tempdir().unwrap();
    for name in ["http_link", "http_middleware"] {
        let bytes = component(name);
        let runtime = Runtime::new(cache.path().to_owned()).unwrap();
        let first = runtime
            .load("l", &bytes, "{}", state(), 64 << 20, Start::Snapshot)
            .await
            .unwrap();
        assert!(!first.cached, "{name}");
        let restarted = Runtime::new(cache.path().to_owned()).unwrap();
        let again = restarted
            .load("l", &bytes, "{}", state(), 64 << 20, Start::Snapshot)
            .await
            .unwrap();
        assert!(again.cached, "{name} was compiled again");
        eprintln!("{name}: first load {:?}, cached load {:?}", first.took, again.took);
    }
}

/// The Rust SDK builds `compact-middleware` components (heads cross as one byte string each); a
/// component of the typed `middleware` world (the JavaScript SDK's) still loads, as that world.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sluice_world_loads_as_itself() {
    use sluice::runtime::{LinkPre, SluicePre};
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let js = std::fs::read(env!("CARGO_MANIFEST_DIR").to_owned() + "/target/polyglot/probe_js.wasm")
        .expect("scripts/build-polyglot.sh builds the JavaScript probe");
    for (bytes, config, compact) in [
        (component("stamp"), r#"{"name":"a"}"#, true),
        (
            component("auth_jwt"),
            r#"{"secret":"s3cr3t-s3cr3t-s3cr3t-s3cr3t","algorithms":["HS256"]}"#,
            true,
        ),
        (js, r#"{"name":"js"}"#, false),
    ] {
        for start in [Start::Snapshot, Start::Init] {
            let loaded = runtime
                .load("x", &bytes, config, state(), 64 << 20, start)
                .await
                .unwrap();
            let LinkPre::Sluice(pre) = &loaded.pre else {
                panic!("a sluice:middleware component")
            };
            assert_eq!(matches!(pre, SluicePre::Compact(_)), compact, "{config} {start:?}");
        }
    }
}
