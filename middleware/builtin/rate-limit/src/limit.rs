//! What `builtin:rate-limit` decides, without the middleware around it: compiled into the
//! component (`lib.rs`) and, for the Wasm-tax baseline, natively into `benches/builtin.rs`
//! (against sluice's in-memory state backend instead of the `state` interface).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Attempts at the compare-and-swap before a request is refused as contended.
const CAS_ATTEMPTS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    key: String,
    rate: u32,
    per: String,
    burst: Option<u32>,
    #[serde(default)]
    missing: Missing,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    #[default]
    Deny,
    Allow,
}

pub enum Key {
    ClientIp,
    Header(String),
    Context(String),
}

/// The compiled configuration.
pub struct Limiter {
    pub key: Key,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    pub burst: u32,
    pub missing: Missing,
}

/// The state the limiter keeps its TATs in: the `state` interface in the component.
pub trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn compare_and_swap(&self, key: &str, old: Option<&[u8]>, new: &[u8], ttl_ms: u64) -> Result<bool, String>;
}

pub enum Decision {
    /// `remaining` more requests may come at once; the quota is whole again in `reset` seconds.
    Allowed { remaining: u64, reset: u64 },
    /// Retry in `retry_after` seconds.
    Limited { retry_after: u64 },
}

impl Limiter {
    /// Checks and compiles `config` (the middleware's JSON config).
    pub fn new(config: &str) -> Result<Limiter, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let key = match config.key.as_str() {
            "client-ip" => Key::ClientIp,
            other => match other.split_once(':') {
                Some(("header", name)) if !name.is_empty() => Key::Header(name.to_ascii_lowercase()),
                Some(("context", name)) if !name.is_empty() => Key::Context(name.to_owned()),
                _ => {
                    return Err(format!(
                        "`key`: `{other}` is not one of `client-ip`, `header:<name>`, `context:<key>`"
                    ));
                }
            },
        };
        if config.rate == 0 {
            return Err("`rate` must be at least 1".into());
        }
        let per = humantime::parse_duration(&config.per).map_err(|e| {
            format!(
                "`per`: `{}` is not a duration ({e}); write e.g. \"1s\", \"1m\"",
                config.per
            )
        })?;
        if per.is_zero() {
            return Err("`per` must be longer than 0".into());
        }
        let burst = config.burst.unwrap_or(config.rate);
        if burst == 0 {
            return Err("`burst` must be at least 1".into());
        }
        let interval = (per.as_nanos() / u128::from(config.rate)).max(1) as u64;
        Ok(Limiter {
            key,
            interval,
            burst,
            missing: config.missing,
        })
    }

    pub fn key_name(&self) -> String {
        match &self.key {
            Key::ClientIp => "client-ip".into(),
            Key::Header(name) => format!("header `{name}`"),
            Key::Context(name) => format!("context `{name}`"),
        }
    }

    /// GCRA: a request is allowed if, counting it, the TAT is at most `burst` intervals ahead.
    pub fn take(&self, store: &impl Store, key: &str) -> Result<Decision, String> {
        let window = self.interval.saturating_mul(u64::from(self.burst));
        let ttl_ms = window / 1_000_000 + 1_000;
        for _ in 0..CAS_ATTEMPTS {
            let now = now_nanos();
            let stored = store.get(key)?;
            let tat = stored.as_deref().and_then(decode).unwrap_or(now).max(now);
            let new_tat = tat + self.interval;
            if new_tat - now > window {
                let wait = new_tat - now - window;
                return Ok(Decision::Limited {
                    retry_after: seconds_up(wait).max(1),
                });
            }
            if store.compare_and_swap(key, stored.as_deref(), &new_tat.to_be_bytes(), ttl_ms)? {
                return Ok(Decision::Allowed {
                    remaining: (window - (new_tat - now)) / self.interval,
                    reset: seconds_up(new_tat - now),
                });
            }
        }
        Err(format!("`{key}` is contended past {CAS_ATTEMPTS} attempts"))
    }
}

fn decode(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

fn seconds_up(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

/// The address part of `ip:port` or `[ipv6]:port`.
pub fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}
