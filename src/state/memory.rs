//! The embedded state backend: one map for the process, expired entries dropped lazily.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many writes between sweeps of expired entries.
const SWEEP_EVERY: u32 = 4096;

/// In-process state shared by all worker threads; every operation is atomic.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    writes: u32,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl Inner {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.live(now))
    }

    fn wrote(&mut self, now: Instant) {
        self.writes = self.writes.wrapping_add(1);
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, e| e.live(now));
        }
    }
}

impl MemoryState {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, String> {
        self.inner.lock().map_err(|_| "state store is poisoned".to_owned())
    }

    /// The value of `key`, if present and not expired.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.lock()?.live(key, Instant::now()).map(|e| e.value.clone()))
    }

    /// Sets `key`, expiring after `ttl_ms` (0: never).
    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), String> {
        let now = Instant::now();
        let mut inner = self.lock()?;
        inner.entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires: expiry(now, ttl_ms),
            },
        );
        inner.wrote(now);
        Ok(())
    }

    /// Adds `delta` to the decimal integer at `key` (absent: 0); `ttl_ms` applies when the key is
    /// created.
    pub fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
        let now = Instant::now();
        let mut inner = self.lock()?;
        let (current, expires) = match inner.live(key, now) {
            Some(entry) => {
                let text =
                    std::str::from_utf8(&entry.value).map_err(|_| format!("`{key}` does not hold an integer"))?;
                (
                    text.parse::<i64>()
                        .map_err(|_| format!("`{key}` does not hold an integer"))?,
                    entry.expires,
                )
            }
            None => (0, expiry(now, ttl_ms)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| format!("`{key}` would overflow"))?;
        inner.entries.insert(
            key.to_owned(),
            Entry {
                value: next.to_string().into_bytes(),
                expires,
            },
        );
        inner.wrote(now);
        Ok(next)
    }

    /// Replaces `key`'s value with `new` if it equals `old` (`None`: absent).
    pub fn compare_and_swap(&self, key: &str, old: Option<&[u8]>, new: Vec<u8>, ttl_ms: u64) -> Result<bool, String> {
        let now = Instant::now();
        let mut inner = self.lock()?;
        if inner.live(key, now).map(|e| e.value.as_slice()) != old {
            return Ok(false);
        }
        inner.entries.insert(
            key.to_owned(),
            Entry {
                value: new,
                expires: expiry(now, ttl_ms),
            },
        );
        inner.wrote(now);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn incr_is_atomic_across_threads() {
        let state = Arc::new(MemoryState::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || {
                    (0..1000).for_each(|_| {
                        state.incr("k", 1, 0).unwrap();
                    })
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(state.incr("k", 0, 0).unwrap(), 8000);
    }

    #[test]
    fn entries_expire() {
        let state = MemoryState::default();
        state.set("a", b"1".to_vec(), 30).unwrap();
        assert_eq!(state.get("a").unwrap(), Some(b"1".to_vec()));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(state.get("a").unwrap(), None);
        assert_eq!(
            state.incr("a", 5, 0).unwrap(),
            5,
            "an expired counter starts again at 0"
        );
    }

    #[test]
    fn compare_and_swap_checks_the_current_value() {
        let state = MemoryState::default();
        assert!(state.compare_and_swap("c", None, b"x".to_vec(), 0).unwrap());
        assert!(!state.compare_and_swap("c", None, b"y".to_vec(), 0).unwrap());
        assert!(!state.compare_and_swap("c", Some(b"z"), b"y".to_vec(), 0).unwrap());
        assert!(state.compare_and_swap("c", Some(b"x"), b"y".to_vec(), 0).unwrap());
        assert_eq!(state.get("c").unwrap(), Some(b"y".to_vec()));
        assert!(state.incr("c", 1, 0).is_err(), "not an integer");
    }
}
