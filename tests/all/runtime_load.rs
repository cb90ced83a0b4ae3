//! Loading real compiled components: init runs once under wizer, the snapshot is cached, bad
//! components and rejected configs are refused with a reason.

use std::path::PathBuf;
use std::sync::Arc;

use sluice::runtime::{LoadError, Runtime};
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
    let first = runtime.load("a", &bytes, STAMP_A, state(), 64 << 20).await.unwrap();
    assert!(!first.cached);
    let r = &first.registration;
    assert!(
        r.request_headers && r.response_body && !r.request_body && !r.response_headers,
        "{r:?}"
    );
    assert_eq!(first.digest.len(), 64);

    // A second runtime (a restart) with the same cache directory loads the compiled snapshot.
    let restarted = Runtime::new(cache.path().to_owned()).unwrap();
    let again = restarted.load("a", &bytes, STAMP_A, state(), 64 << 20).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.registration, first.registration);
    eprintln!("stamp: first load {:?}, cached load {:?}", first.took, again.took);

    // Another config is another snapshot.
    let other = restarted
        .load("b", &bytes, r#"{"name":"b"}"#, state(), 64 << 20)
        .await
        .unwrap();
    assert!(!other.cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_init_rejects_is_refused_with_its_message() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let err = runtime
        .load("a", &component("stamp"), "{}", state(), 64 << 20)
        .await
        .err()
        .expect("must be refused");
    assert!(
        matches!(&err, LoadError::InitRejected(m) if m.contains("`name` is required")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_world_and_garbage_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let err = runtime
        .load("w", &component("wrong_world"), "{}", state(), 64 << 20)
        .await
        .err()
        .expect("must be refused");
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    let err = runtime
        .load("g", b"not wasm at all", "{}", state(), 64 << 20)
        .await
        .err()
        .expect("must be refused");
    assert!(matches!(err, LoadError::WrongWorld(_) | LoadError::Invalid(_)), "{err}");
}
