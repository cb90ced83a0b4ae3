//! Cranelift's results per function, kept for the process's lifetime, so compiling a component
//! whose functions were compiled before costs their translation, not their code generation.
//!
//! With `instances = "fresh"` every distinct `config` is its own snapshot, and a snapshot is a new
//! component: wizer compiles it instrumented, then the snapshot is compiled, and `init` changed its
//! data, not its functions. Measured with four `schema-validate` snapshots: after the first, ~95%
//! of each one's functions are hits and a load takes a third of the time. wasmtime computes the
//! keys (a sha256 of the function and the compiler's settings) and checks what it gets back.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

/// Compiled functions by wasmtime's key, in memory.
#[derive(Debug, Default)]
pub struct FunctionCache {
    compiled: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled.get(key).map(|value| Cow::Owned(value.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled.entry(key.to_vec()).or_insert(value);
        true
    }
}
