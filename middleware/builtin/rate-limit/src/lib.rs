//! `builtin:rate-limit`: lets a client send `burst` requests at once, then `rate` per `per`, with
//! GCRA (the generic cell rate algorithm) kept in the `state` interface. One state entry per key
//! holds the theoretical arrival time (TAT); it is updated with `compare-and-swap`, so the limit is
//! exact under concurrency across worker threads (and, with the Redis backend, across sluices).
//!
//! Docs: docs/middleware/rate-limit.md.
mod limit;

use limit::{Key, Limiter, Missing, client_ip};
use sluice_sdk::*;

struct RateLimit(Limiter);

/// The limiter's TATs, in the `state` interface.
struct State;

impl limit::Store for State {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        state::get(key)
    }

    fn compare_and_swap(&self, key: &str, old: Option<&[u8]>, new: &[u8], ttl_ms: u64) -> Result<bool, String> {
        state::compare_and_swap(key, old, new, ttl_ms)
    }
}

impl Middleware for RateLimit {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let limiter = Limiter::new(config)?;
        let mut registration = Registration::phases(Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS);
        registration.request_headers = Some(match &limiter.key {
            Key::Header(name) => vec![name.clone()],
            _ => Vec::new(),
        });
        registration.response_headers = Some(Vec::new());
        Ok((RateLimit(limiter), registration))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let key = match &self.0.key {
            Key::ClientIp => Some(client_ip(&req.client_addr).to_owned()),
            Key::Header(name) => req.header(name).map(|v| String::from_utf8_lossy(v).into_owned()),
            Key::Context(name) => req.context(name).map(str::to_owned),
        };
        let Some(key) = key else {
            return match self.0.missing {
                Missing::Allow => RequestDecision::Next((HeaderEdits::none(), Vec::new())),
                Missing::Deny => RequestDecision::Respond(Response::problem(
                    400,
                    "Bad Request",
                    &format!("the request has no rate-limit key ({})", self.0.key_name()),
                )),
            };
        };
        match self.0.take(&State, &key) {
            Ok(limit::Decision::Allowed { remaining, reset }) => RequestDecision::Next((
                HeaderEdits::none(),
                vec![
                    ("rate-limit.limit".into(), self.0.burst.to_string()),
                    ("rate-limit.remaining".into(), remaining.to_string()),
                    ("rate-limit.reset".into(), reset.to_string()),
                ],
            )),
            Ok(limit::Decision::Limited { retry_after }) => RequestDecision::Respond(
                Response::problem(
                    429,
                    "Too Many Requests",
                    &format!("rate limit exceeded; retry in {retry_after} s"),
                )
                .with_header("retry-after", retry_after.to_string())
                .with_header("ratelimit-limit", self.0.burst.to_string())
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

export_middleware!(RateLimit);
