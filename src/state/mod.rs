//! Middleware state backends: the store behind the WIT `state` interface.
//!
//! `memory` is embedded and shared by every worker thread of one process; `redis` is shared by
//! every sluice using the same server. Keys arrive already namespaced by middleware
//! (`NAME:key`), so middleware never see each other's state. Errors are strings the guest sees;
//! a backend never makes a guest trap.

mod memory;
mod redis;

pub use memory::MemoryState;
pub use redis::{RedisSettings, RedisState};

/// The configured backend.
#[derive(Debug)]
pub enum State {
    /// In-process.
    Memory(MemoryState),
    /// A Redis server.
    Redis(RedisState),
}

impl State {
    /// An empty in-process store.
    pub fn memory() -> State {
        State::Memory(MemoryState::default())
    }

    /// The value of `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            State::Memory(m) => m.get(key),
            State::Redis(r) => r.get(key).await,
        }
    }

    /// Sets `key`, expiring after `ttl_ms` (0: never).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), String> {
        match self {
            State::Memory(m) => m.set(key, value, ttl_ms),
            State::Redis(r) => r.set(key, value, ttl_ms).await,
        }
    }

    /// Atomically adds `delta` to the decimal integer at `key` (absent: 0); `ttl_ms` applies when
    /// the key is created.
    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
        match self {
            State::Memory(m) => m.incr(key, delta, ttl_ms),
            State::Redis(r) => r.incr(key, delta, ttl_ms).await,
        }
    }

    /// Atomically replaces `key`'s value with `new` if it equals `old` (`None`: absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, String> {
        match self {
            State::Memory(m) => m.compare_and_swap(key, old, new, ttl_ms),
            State::Redis(r) => r.compare_and_swap(key, old, new, ttl_ms).await,
        }
    }
}
