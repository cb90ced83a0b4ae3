//! A standard WASI 0.3 `wasi:http/middleware` component: it exports `wasi:http/handler` and
//! imports one, its next hop. Built with wit-bindgen against the WASI 0.3.0 WIT and the `wasip3`
//! crate's types and `http_compat` helpers, as any 0.3 middleware is: no sluice SDK, no sluice WIT.
//!
//! - It forwards every request to its next hop, adding `x-link: in`; both bodies stream through.
//! - It answers with what came back, adding `x-link: out` and `x-served: N`, the requests this
//!   instance has handled (1 on a fresh instance).
//! - A request with `x-link-short` is answered here: 403, `stopped by the link`.
//! - A request for a path with `/trap` in it traps before forwarding anything; `/loop` loops
//!   forever; `/hog` allocates until it is refused memory.
//! - `/linger` answers `lingering` at once, and its task then waits an hour (for nothing) before
//!   it ends.

use wasip3::http::types::{ErrorCode, Request, Response};
use wasip3::http_compat::{
    http_from_wasi_request, http_from_wasi_response, http_into_wasi_request, http_into_wasi_response,
};

wit_bindgen::generate!({
    path: "wit",
    world: "sluice-test:http-middleware/middleware",
    with: {
        "wasi:http/handler@0.3.0": generate,
        "wasi:http/types@0.3.0": wasip3::http::types,
        "wasi:http/client@0.3.0": wasip3::http::client,
        "wasi:cli/types@0.3.0": wasip3::cli::types,
        "wasi:cli/stdin@0.3.0": wasip3::cli::stdin,
        "wasi:cli/stdout@0.3.0": wasip3::cli::stdout,
        "wasi:cli/stderr@0.3.0": wasip3::cli::stderr,
        "wasi:clocks/types@0.3.0": wasip3::clocks::types,
        "wasi:clocks/monotonic-clock@0.3.0": wasip3::clocks::monotonic_clock,
        "wasi:clocks/system-clock@0.3.0": wasip3::clocks::system_clock,
        "wasi:random/random@0.3.0": wasip3::random::random,
        "wasi:random/insecure@0.3.0": wasip3::random::insecure,
        "wasi:random/insecure-seed@0.3.0": wasip3::random::insecure_seed,
    },
});

struct Middleware;

/// Requests this instance has handled.
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

export!(Middleware);

impl exports::wasi::http::handler::Guest for Middleware {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        if path.contains("/trap") {
            panic!("asked to trap");
        }
        if path.contains("/loop") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if path.contains("/hog") {
            let mut held = Vec::new();
            loop {
                held.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&held);
            }
        }
        if path.contains("/linger") {
            wit_bindgen::spawn_local(async {
                wasip3::clocks::monotonic_clock::wait_for(3_600_000_000_000).await;
            });
            let answer = http::Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body("lingering".to_owned())
                .expect("a response");
            return http_into_wasi_response(answer);
        }
        if request.get_headers().has("x-link-short") {
            let answer = http::Response::builder()
                .status(403)
                .header("content-type", "text/plain")
                .header("x-link", "answered")
                .body("stopped by the link".to_owned())
                .expect("a response");
            return http_into_wasi_response(answer);
        }
        let mut forwarded = http_from_wasi_request(request)?;
        forwarded
            .headers_mut()
            .append("x-link", http::HeaderValue::from_static("in"));
        let response = wasi::http::handler::handle(http_into_wasi_request(forwarded)?).await?;
        let mut returned = http_from_wasi_response(response)?;
        let headers = returned.headers_mut();
        headers.append("x-link", http::HeaderValue::from_static("out"));
        headers.append("x-served", http::HeaderValue::from(served));
        http_into_wasi_response(returned)
    }
}
