//! Allocates 1 MiB at a time and keeps it, without bound, in `on-request-headers`: only the host's
//! memory limit stops it.
use sluice_sdk::*;

struct Hog;

impl Middleware for Hog {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((Hog, Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, _req: Request) -> RequestDecision {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        loop {
            kept.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

export_middleware!(Hog);
