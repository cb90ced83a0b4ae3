// Shared by `version-one` and `version-two` (each sets `VERSION` and includes this file): two
// builds of one middleware that differ only in the version they stamp, for the hot-swap tests.
//
// Request headers: sets `x-version-request: VERSION` for the upstream (the echo upstream shows it
// back). Response headers: sets `x-version: VERSION`. A request that ran both phases on one
// version carries the same value in both. Config: anything (`{}`); `init` keeps nothing of it.
use sluice_sdk::*;

struct Versioned;

impl Middleware for Versioned {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((
            Versioned,
            Registration::phases(Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS),
        ))
    }

    fn on_request_headers(&self, _req: Request) -> RequestDecision {
        let mut edits = HeaderEdits::none();
        edits.set.push(("x-version-request".into(), VERSION.as_bytes().to_vec()));
        RequestDecision::Next((edits, Vec::new()))
    }

    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        let mut edits = HeaderEdits::none();
        edits.set.push(("x-version".into(), VERSION.as_bytes().to_vec()));
        ResponseDecision::Next(edits)
    }
}

export_middleware!(Versioned);
