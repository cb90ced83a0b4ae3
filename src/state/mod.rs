//! Middleware state backends: the store behind the WIT `state` interface.
//!
//! `memory` is embedded and shared by every worker thread of one process. Keys arrive already
//! namespaced by middleware (`NAME\0key`), so middleware never see each other's state.

mod memory;

pub use memory::MemoryState;

/// What the `state` interface needs from a backend. Errors are strings the guest sees.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// The value of `key`, if present and not expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets `key`, expiring after `ttl_ms` (0: never).
    fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), String>;
    /// Atomically adds `delta` to the decimal integer at `key` (absent: 0); `ttl_ms` applies when
    /// the key is created.
    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String>;
    /// Atomically replaces `key`'s value with `new` if it equals `old` (`None`: absent).
    fn compare_and_swap(&self, key: &str, old: Option<&[u8]>, new: Vec<u8>, ttl_ms: u64) -> Result<bool, String>;
}
