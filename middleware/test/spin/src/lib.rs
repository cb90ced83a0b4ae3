//! Never returns from `on-request-headers`: only the host's deadline stops it.
use sluice_sdk::*;

struct Spin;

impl Middleware for Spin {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((Spin, Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(req.method.len() as u64));
        }
    }
}

export_middleware!(Spin);
