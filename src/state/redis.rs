//! The Redis state backend: every sluice pointed at the same server shares the state, so a rate
//! limit holds across all of them.
//!
//! One multiplexed connection ([`ConnectionManager`]: requests from every worker pipelined on it,
//! reconnecting in the background after a failure) driven by a small runtime of its own, so the
//! connection outlives whichever runtime built the snapshot and never runs on a proxy worker.
//! `incr` and `compare-and-swap` are Lua scripts, atomic on the server; TTLs are Redis expiries.
//! Every operation is bounded by `[state] timeout`: Redis down costs a request at most that long,
//! and the guest gets an error to decide on (or trap, handing it to `on-error`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

/// `INCRBY`, with the expiry set only when the key is created (an existing key keeps its own).
const INCR: &str = r"
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
";

/// Sets the key to ARGV[3] if its value is ARGV[2] (ARGV[1] = '1') or it is absent (ARGV[1] = '0').
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// How to reach Redis: `[state] url`, `timeout`, `key-prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Deadline for each operation, connecting included.
    pub timeout: Duration,
    /// Put before every key, so several deployments can share one server.
    pub key_prefix: String,
}

/// State in a Redis server.
pub struct RedisState {
    connection: ConnectionManager,
    settings: RedisSettings,
    incr: Script,
    compare_and_swap: Script,
    /// Whether the last operation failed: failures are logged when they start and when they end,
    /// not once per request.
    down: AtomicBool,
    /// Drives the connection; shut down (without blocking) when the backend is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("server", &self.server())
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// A backend for `settings`. Does not wait for Redis: sluice starts (and serves, with state
    /// calls failing until it is reachable) while Redis is down.
    pub fn connect(settings: RedisSettings) -> Result<RedisState, String> {
        let client = Client::open(settings.url.as_str()).map_err(|e| format!("invalid redis url: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the redis client: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Reconnect attempts back off from 50 ms up to 1 s, so Redis coming back is noticed
            // within a second.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(usize::MAX);
        let connection = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("cannot create the redis client: {e}"))?
        };
        // Connect now, from this runtime (so the connection's tasks live here), without waiting:
        // the first request finds it connected, or Redis down.
        let mut first = connection.clone();
        runtime.spawn(async move {
            let _ = redis::cmd("PING").query_async::<()>(&mut first).await;
        });
        Ok(RedisState {
            connection,
            settings,
            incr: Script::new(INCR),
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
            down: AtomicBool::new(false),
            runtime: Some(runtime),
        })
    }

    /// Whether this backend was made from `settings`.
    pub fn uses(&self, settings: &RedisSettings) -> bool {
        self.settings == *settings
    }

    /// `host:port/db` of the server, without credentials, for logs.
    fn server(&self) -> &str {
        let url = &self.settings.url;
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        rest.rsplit_once('@').map_or(rest, |(_, host)| host)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.settings.key_prefix)
    }

    /// Runs one operation within the timeout, logging when Redis becomes unreachable and when it
    /// is back.
    async fn run<T>(&self, op: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        let result = match tokio::time::timeout(self.settings.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("redis at {} failed: {e}", self.server())),
            Err(_) => Err(format!(
                "redis at {} did not answer within {:?}",
                self.server(),
                self.settings.timeout
            )),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => {
                tracing::info!(server = self.server(), "redis is reachable again");
            }
            Err(error) if !self.down.swap(true, Ordering::Relaxed) => {
                tracing::warn!(server = self.server(), %error, "redis is unreachable; state calls fail until it is back");
            }
            _ => {}
        }
        result
    }

    /// The value of `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut connection = self.connection.clone();
        let key = self.key(key);
        self.run(async move { redis::cmd("GET").arg(&key).query_async(&mut connection).await })
            .await
    }

    /// Sets `key`, expiring after `ttl_ms` (0: never).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("SET");
        command.arg(self.key(key)).arg(value);
        if ttl_ms > 0 {
            command.arg("PX").arg(ttl_ms);
        }
        self.run(async move { command.query_async(&mut connection).await })
            .await
    }

    /// Atomically adds `delta` to the integer at `key` (absent: 0); `ttl_ms` applies when the key
    /// is created.
    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
        let mut connection = self.connection.clone();
        let mut invocation = self.incr.key(self.key(key));
        invocation.arg(delta).arg(ttl_ms);
        self.run(async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    /// Atomically replaces `key`'s value with `new` if it equals `old` (`None`: absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, String> {
        let mut connection = self.connection.clone();
        let mut invocation = self.compare_and_swap.key(self.key(key));
        invocation
            .arg(if old.is_some() { "1" } else { "0" })
            .arg(old.unwrap_or_default())
            .arg(new)
            .arg(ttl_ms);
        self.run(async move { invocation.invoke_async::<i64>(&mut connection).await })
            .await
            .map(|swapped| swapped == 1)
    }
}

impl Drop for RedisState {
    fn drop(&mut self) {
        // May run on a proxy worker (the last snapshot holding it dropped there): never block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
