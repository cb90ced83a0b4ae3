//! Computes in `on-request-headers`: forever, or `x-spin: N` iterations (a few nanoseconds each)
//! when the request has that header. Only the host's deadline stops the endless loop.
use sluice_sdk::*;

struct Spin;

impl Middleware for Spin {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((Spin, Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let iterations = req
            .headers
            .iter()
            .find(|(name, _)| name == "x-spin")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let mut n: u64 = 0;
        for _ in 0..iterations {
            n = std::hint::black_box(n.wrapping_add(req.method.len() as u64));
        }
        RequestDecision::Next((HeaderEdits::none(), vec![("spun".into(), n.to_string())]))
    }
}

export_middleware!(Spin);
