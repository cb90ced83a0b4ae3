//! `sluice:middleware/state`: the configured state backend, namespaced per middleware.
//! A backend failure is a `result` error the guest handles, never a trap.

use super::HostState;
use crate::runtime::bindings::state::Host;

impl Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.calls.state += 1;
        self.state.get(&self.namespaced(&key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), String> {
        self.calls.state += 1;
        self.state.set(&self.namespaced(&key), value, ttl_ms).await
    }

    async fn incr(&mut self, key: String, delta: i64, ttl_ms: u64) -> Result<i64, String> {
        self.calls.state += 1;
        self.state.incr(&self.namespaced(&key), delta, ttl_ms).await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        old: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, String> {
        self.calls.state += 1;
        self.state
            .compare_and_swap(&self.namespaced(&key), old.as_deref(), new, ttl_ms)
            .await
    }
}
