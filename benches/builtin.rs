//! Per-request cost of the four built-in middleware, in process through the runtime (what the
//! proxy runs for one request, without the network), and for auth-jwt HS256 and schema-validate
//! the same work done natively with the same crates: the ratio is the Wasm tax.
//!
//! For redact and rate-limit, `native` runs the components' own code (`mask.rs`, `limit.rs`,
//! which the components compile too) natively; rate-limit's state is sluice's in-memory backend,
//! as the component's `state` calls reach it.
//!
//! `cargo bench --bench builtin`. For each middleware: `fresh` (`instances = "fresh"`: a new
//! instance from the pre-initialized snapshot per request), `reused` (the default: an idle instance
//! serves the next request, here without limit) and `new-instance-each-request` (`max-requests =
//! 1`: what replacing a retired instance costs, a new instance and its `init`, which the default
//! pays once every `max-requests`). `all-four` runs auth-jwt, rate-limit, schema-validate and redact on
//! one request: the route `benches/load.sh` measures over the network. Every iteration checks the
//! request passed, so a misconfigured case cannot measure a cheap rejection.
//!
//! Every request carries the same token, which auth-jwt verifies once and then remembers
//! (`token-cache`); `auth-jwt/reused-verifying-every-token` turns that off, for the cost of a token
//! seen for the first time, which is what `auth-jwt/native` does on every request.
//!
//! The request: `POST /orders` with an HS256 bearer token and a 1 KiB JSON order
//! (`benches/data/order.json`, valid against `order.schema.json`); the response: an 842-byte JSON
//! page of customer records full of PII (`customers.json`).

mod common;

// The built-ins' own code, compiled for the host. Not every item is used outside the component.
#[allow(dead_code)]
#[path = "../middleware/builtin/rate-limit/src/limit.rs"]
mod limit;
#[allow(dead_code)]
#[path = "../middleware/builtin/redact/src/mask.rs"]
mod mask;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{REUSE, builtin, current_thread, facts, link};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::{Map, Value, json};
use sluice::chain::{Chain, ChainRun, LoadedMiddleware, Message, Reuse, Verdict};
use sluice::runtime::Runtime;
use sluice::state::MemoryState;

const SECRET: &str = "a 32-byte secret for HS256 tokens";
const ORDER: &[u8] = include_bytes!("data/order.json");
const SCHEMA: &str = include_str!("data/order.schema.json");
const CUSTOMERS: &[u8] = include_bytes!("data/customers.json");

fn token() -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({
        "sub": "user-48213", "iss": "https://id.example.com", "aud": "orders",
        "exp": exp, "iat": exp - 3600, "scope": "orders:write", "tenant": "acme",
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn config(name: &str) -> String {
    match name {
        "auth-jwt" => json!({
            "algorithms": ["HS256"], "secret": SECRET, "issuer": "https://id.example.com",
            "audience": "orders", "forward-claims": { "sub": "x-user-id" },
        }),
        // Never limits here: the cost of the state round trip and the headers is what counts.
        "rate-limit" => json!({ "key": "client-ip", "rate": 1_000_000_000, "per": "1s", "burst": 1_000_000_000 }),
        "schema-validate" => json!({ "schema": SCHEMA }),
        "redact" => json!({
            "patterns": ["email", "credit-card", "phone", "ipv4", "ipv6"],
            "json-fields": ["password"],
        }),
        other => panic!("no config for {other}"),
    }
    .to_string()
}

fn request(token: &str) -> RequestHeader {
    let mut req = RequestHeader::build("POST", b"/orders", None).unwrap();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", &ORDER.len().to_string()),
        ("authorization", &format!("Bearer {token}")),
        ("x-request-id", "abc"),
    ] {
        req.insert_header(name.to_owned(), value).unwrap();
    }
    req
}

fn response() -> ResponseHeader {
    let mut response = ResponseHeader::build(200, None).unwrap();
    response.insert_header("content-type", "application/json").unwrap();
    response
        .insert_header("content-length", CUSTOMERS.len().to_string())
        .unwrap();
    response
}

/// One request through every phase of `chain`, as the proxy's buffered path runs them.
fn one_request(rt: &tokio::runtime::Runtime, chain: &Chain, req: &RequestHeader) {
    let facts = facts("orders");
    let mut upstream = req.clone();
    let mut body = ORDER.to_vec();
    let mut response = response();
    let mut response_body = CUSTOMERS.to_vec();
    rt.block_on(async {
        let mut run = ChainRun::new(chain, facts, tracing::Span::none());
        let verdict = run.run(Message::RequestHeaders(&mut upstream)).await;
        assert!(matches!(verdict, Verdict::Continue));
        for message in [
            Message::RequestBody(&upstream, &mut body),
            Message::ResponseHeaders(&upstream, &mut response),
        ] {
            assert!(matches!(run.run(message).await, Verdict::Continue));
        }
        let message = Message::ResponseBody(&upstream, &response, &mut response_body);
        assert!(matches!(run.run(message).await, Verdict::Continue));
    });
}

/// What auth-jwt does per request, natively: find and verify the token, then turn its claims into
/// the context entries and forwarded headers the component produces.
struct NativeJwt {
    key: DecodingKey,
    validation: Validation,
}

impl NativeJwt {
    fn new() -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&["https://id.example.com"]);
        validation.set_audience(&["orders"]);
        validation.leeway = 30;
        Self {
            key: DecodingKey::from_secret(SECRET.as_bytes()),
            validation,
        }
    }

    fn verify(&self, req: &RequestHeader) -> (Vec<(String, String)>, Option<String>) {
        let value = req.headers.get("authorization").unwrap().to_str().unwrap().trim();
        let (scheme, token) = value.split_once(' ').unwrap();
        assert!(scheme.eq_ignore_ascii_case("bearer"));
        let header = decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        let claims = decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .unwrap()
            .claims;
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let forwarded = claims.get("sub").map(text);
        let context = claims.iter().map(|(k, v)| (format!("jwt.{k}"), text(v))).collect();
        (context, forwarded)
    }
}

/// What rate-limit does per request, natively: the key, the GCRA step against the in-memory
/// state (keys namespaced as the host does), the context entries, then the response headers.
struct NativeRateLimit {
    limiter: limit::Limiter,
    state: MemoryState,
}

impl limit::Store for MemoryState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        MemoryState::get(self, &format!("rate-limit:{key}"))
    }

    fn compare_and_swap(&self, key: &str, old: Option<&[u8]>, new: &[u8], ttl_ms: u64) -> Result<bool, String> {
        MemoryState::compare_and_swap(self, &format!("rate-limit:{key}"), old, new.to_vec(), ttl_ms)
    }
}

impl NativeRateLimit {
    fn new() -> Self {
        NativeRateLimit {
            limiter: limit::Limiter::new(&config("rate-limit")).unwrap(),
            state: MemoryState::default(),
        }
    }

    fn allow(&self, client_addr: &str) -> Vec<(String, Vec<u8>)> {
        let key = limit::client_ip(client_addr);
        let limit::Decision::Allowed { remaining, reset } = self.limiter.take(&self.state, key).unwrap() else {
            panic!("limited");
        };
        let context = [
            ("rate-limit.limit", self.limiter.burst.to_string()),
            ("rate-limit.remaining", remaining.to_string()),
            ("rate-limit.reset", reset.to_string()),
        ];
        let headers = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
        headers
            .iter()
            .zip(context)
            .map(|(header, (_, value))| (header.to_string(), value.into_bytes()))
            .collect()
    }
}

fn per_middleware(c: &mut Criterion) {
    let rt = current_thread();
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(cache.path().to_owned()).unwrap();
    let load = |name: &str, reuse: Option<Reuse>| -> Arc<LoadedMiddleware> {
        link(&rt, &runtime, name, &builtin(name), &config(name), reuse)
    };
    let req = request(&token());

    let mut group = c.benchmark_group("builtin");
    let empty = Chain::empty();
    group.bench_function("empty-chain", |b| b.iter(|| one_request(&rt, &empty, &req)));

    let names = ["auth-jwt", "rate-limit", "schema-validate", "redact"];
    for name in names {
        for (mode, reuse) in [("fresh", None), ("reused", REUSE)] {
            let chain = Chain::new(vec![load(name, reuse)]);
            group.bench_function(format!("{name}/{mode}"), |b| b.iter(|| one_request(&rt, &chain, &req)));
        }
    }
    // What replacing a retired instance costs (a new instance and its `init`), which a reused
    // instance pays once every `max-requests` requests: every request on a new instance.
    let retired_each_request = REUSE.map(|reuse| Reuse {
        max_requests: 1,
        ..reuse
    });
    for name in names {
        let chain = Chain::new(vec![load(name, retired_each_request)]);
        group.bench_function(format!("{name}/new-instance-each-request"), |b| {
            b.iter(|| one_request(&rt, &chain, &req))
        });
    }
    // auth-jwt remembers the tokens it verified (`token-cache`): the rows above send one token
    // again and again. This one verifies it every time, as for a token seen for the first time:
    // the work `auth-jwt/native` does.
    let mut every_time: Value = serde_json::from_str(&config("auth-jwt")).unwrap();
    every_time["token-cache"] = 0.into();
    let chain = Chain::new(vec![link(
        &rt,
        &runtime,
        "auth-jwt",
        &builtin("auth-jwt"),
        &every_time.to_string(),
        REUSE,
    )]);
    group.bench_function("auth-jwt/reused-verifying-every-token", |b| {
        b.iter(|| one_request(&rt, &chain, &req))
    });
    for (mode, reuse) in [("fresh", None), ("reused", REUSE)] {
        let chain = Chain::new(names.iter().map(|name| load(name, reuse)).collect());
        group.bench_function(format!("all-four/{mode}"), |b| {
            b.iter(|| one_request(&rt, &chain, &req))
        });
    }

    // The same work natively, with the crates the components use.
    let jwt = NativeJwt::new();
    group.bench_function("auth-jwt/native", |b| {
        b.iter(|| {
            let (context, forwarded) = jwt.verify(&req);
            assert_eq!(forwarded.as_deref(), Some("user-48213"));
            context
        })
    });
    let validator = jsonschema::validator_for(&serde_json::from_str(SCHEMA).unwrap()).unwrap();
    group.bench_function("schema-validate/native", |b| {
        b.iter(|| {
            let instance: Value = serde_json::from_slice(ORDER).unwrap();
            assert!(validator.is_valid(&instance));
        })
    });
    let rate_limit = NativeRateLimit::new();
    group.bench_function("rate-limit/native", |b| {
        b.iter(|| assert_eq!(rate_limit.allow("127.0.0.1:1234").len(), 3))
    });
    let masker = mask::Masker::new(&config("redact")).unwrap();
    group.bench_function("redact/native", |b| {
        b.iter(|| {
            let masked = masker.body(CUSTOMERS, true, false).unwrap().expect("something masked");
            assert!(masked.windows(10).any(|w| w == b"[REDACTED]"));
            masked
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = per_middleware
}
criterion_main!(benches);
