//! `builtin:rate-limit`: lets a client send `burst` requests at once, then `rate` per `per`, with
//! GCRA (the generic cell rate algorithm) kept in the `state` interface. One state entry per key
//! holds the theoretical arrival time (TAT); it is updated with `compare-and-swap`, so the limit is
//! exact under concurrency across worker threads (and, with the Redis backend, across sluices).
//!
//! Docs: docs/middleware/rate-limit.md.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sluice_sdk::*;

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
enum Missing {
    #[default]
    Deny,
    Allow,
}

enum Key {
    ClientIp,
    Header(String),
    Context(String),
}

struct RateLimit {
    key: Key,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    burst: u32,
    missing: Missing,
}

impl Middleware for RateLimit {
    fn init(config: &str) -> Result<(Self, Registration), String> {
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
        let mut registration = Registration::phases(Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS);
        registration.request_headers = Some(match &key {
            Key::Header(name) => vec![name.clone()],
            _ => Vec::new(),
        });
        registration.response_headers = Some(Vec::new());
        Ok((
            RateLimit {
                key,
                interval,
                burst,
                missing: config.missing,
            },
            registration,
        ))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let key = match &self.key {
            Key::ClientIp => Some(client_ip(&req.client_addr).to_owned()),
            Key::Header(name) => req.header(name).map(|v| String::from_utf8_lossy(v).into_owned()),
            Key::Context(name) => req.context(name).map(str::to_owned),
        };
        let Some(key) = key else {
            return match self.missing {
                Missing::Allow => RequestDecision::Next((HeaderEdits::none(), Vec::new())),
                Missing::Deny => RequestDecision::Respond(Response::problem(
                    400,
                    "Bad Request",
                    &format!("the request has no rate-limit key ({})", self.key_name()),
                )),
            };
        };
        match self.take(&key) {
            Ok(Decision::Allowed { remaining, reset }) => RequestDecision::Next((
                HeaderEdits::none(),
                vec![
                    ("rate-limit.limit".into(), self.burst.to_string()),
                    ("rate-limit.remaining".into(), remaining.to_string()),
                    ("rate-limit.reset".into(), reset.to_string()),
                ],
            )),
            Ok(Decision::Limited { retry_after }) => RequestDecision::Respond(
                Response::problem(
                    429,
                    "Too Many Requests",
                    &format!("rate limit exceeded; retry in {retry_after} s"),
                )
                .with_header("retry-after", retry_after.to_string())
                .with_header("ratelimit-limit", self.burst.to_string())
                .with_header("ratelimit-remaining", "0")
                .with_header("ratelimit-reset", retry_after.to_string()),
            ),
            Err(error) => {
                log(Level::Warn, &format!("rate-limit state unavailable: {error}"));
                // Trapping hands the decision to the middleware's `on-error` policy.
                panic!("rate-limit state unavailable: {error}");
            }
        }
    }

    fn on_response_headers(&self, req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        let mut edits = HeaderEdits::none();
        for (context, header) in [
            ("rate-limit.limit", "ratelimit-limit"),
            ("rate-limit.remaining", "ratelimit-remaining"),
            ("rate-limit.reset", "ratelimit-reset"),
        ] {
            if let Some(value) = req.context(context) {
                edits.set.push((header.into(), value.as_bytes().to_vec()));
            }
        }
        ResponseDecision::Next(edits)
    }
}

enum Decision {
    /// `remaining` more requests may come at once; the quota is whole again in `reset` seconds.
    Allowed { remaining: u64, reset: u64 },
    /// Retry in `retry_after` seconds.
    Limited { retry_after: u64 },
}

impl RateLimit {
    fn key_name(&self) -> String {
        match &self.key {
            Key::ClientIp => "client-ip".into(),
            Key::Header(name) => format!("header `{name}`"),
            Key::Context(name) => format!("context `{name}`"),
        }
    }

    /// GCRA: a request is allowed if, counting it, the TAT is at most `burst` intervals ahead.
    fn take(&self, key: &str) -> Result<Decision, String> {
        let window = self.interval.saturating_mul(u64::from(self.burst));
        let ttl_ms = window / 1_000_000 + 1_000;
        for _ in 0..CAS_ATTEMPTS {
            let now = now_nanos();
            let stored = state::get(key)?;
            let tat = stored.as_deref().and_then(decode).unwrap_or(now).max(now);
            let new_tat = tat + self.interval;
            if new_tat - now > window {
                let wait = new_tat - now - window;
                return Ok(Decision::Limited {
                    retry_after: seconds_up(wait).max(1),
                });
            }
            if state::compare_and_swap(key, stored.as_deref(), &new_tat.to_be_bytes(), ttl_ms)? {
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
fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}

export_middleware!(RateLimit);
