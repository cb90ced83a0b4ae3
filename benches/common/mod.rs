//! What the in-process benches share: components loaded through the runtime, as `sluice run` does.

#![allow(dead_code)] // each bench uses its own part

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice::chain::{Artifact, LoadedMiddleware, Policy, Provenance, RequestFacts, Reuse};
use sluice::config::OnError;
use sluice::runtime::{Runtime, Start};
use sluice::state::State;

/// The allocator the sluice binary runs with (src/main.rs): glibc malloc here was a sixth of a
/// reused call's time, which the proxy never pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A test component build.rs compiled (`middleware/test/<name>`).
pub fn test_component(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(sluice::artifacts::COMPONENT_DIR).join(format!("{name}.wasm"))).expect("built component")
}

/// A built-in middleware embedded in the binary (`builtin:<name>`), or with `BUILTIN_DIR` set,
/// the one in that directory (`<name with _ for ->.wasm`): another build of the guests, measured by
/// the same bench binary (e.g. before and after a change to their build flags).
pub fn builtin(name: &str) -> Vec<u8> {
    if let Some(dir) = std::env::var_os("BUILTIN_DIR") {
        let path = Path::new(&dir).join(format!("{}.wasm", name.replace('-', "_")));
        return std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    sluice::artifacts::BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no builtin:{name}"))
        .1
        .to_vec()
}

/// What middleware see of a bench request besides its head, on route `route`.
pub fn facts(route: &str) -> RequestFacts {
    RequestFacts {
        scheme: "http",
        authority: "api.example.com".to_owned(),
        client_addr: "127.0.0.1:1234".to_owned(),
        route: Arc::new(route.to_owned()),
    }
}

/// Instances reused for as long as the bench runs.
pub const REUSE: Option<Reuse> = Some(Reuse {
    max_requests: u32::MAX,
    max_memory: 64 << 20,
});

/// `wasm` loaded as middleware `name` with `config` (JSON, what `init` gets), fresh instances per
/// request or reused ones.
pub fn link(
    rt: &tokio::runtime::Runtime,
    runtime: &Arc<Runtime>,
    name: &str,
    wasm: &[u8],
    config: &str,
    reuse: Option<Reuse>,
) -> Arc<LoadedMiddleware> {
    let state: Arc<State> = Arc::new(State::memory());
    // As sluice loads them: fresh instances from a snapshot, reused ones running `init` once each.
    let start = if reuse.is_some() { Start::Init } else { Start::Snapshot };
    let loaded = rt
        .block_on(runtime.load(name, wasm, config, state.clone(), 64 << 20, start))
        .expect("loads");
    let artifact = Artifact {
        digest: loaded.digest.clone(),
        config_json: config.to_owned(),
        registration: loaded.registration,
        pre: loaded.pre,
        start: loaded.start,
        code: loaded.code,
        initial_memory: loaded.initial_memory,
        component: bytes::Bytes::copy_from_slice(wasm),
    };
    let policy = Policy {
        timeout: Duration::from_secs(1),
        memory_limit: 64 << 20,
        on_error: OnError::Deny,
        reuse,
        outbound: None,
    };
    let provenance = Provenance {
        version: Some("bench".to_owned()),
        configured: loaded.digest,
        source: sluice::chain::Source::Config,
        loaded_at: SystemTime::now(),
        cached: loaded.cached,
        load_time: loaded.took,
        resolved: None,
        verified_with: None,
    };
    Arc::new(LoadedMiddleware::new(
        name.into(),
        artifact,
        policy,
        provenance,
        state,
        runtime.clone(),
    ))
}

pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
