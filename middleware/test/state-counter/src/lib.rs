//! Counts requests in `state` (key `hits`) and reports the count in request header `x-hits`;
//! `x-last-path` carries the previous request's path, read back with `get`. Three state
//! operations and one log line per request.
use sluice_sdk::*;

struct StateCounter;

impl Middleware for StateCounter {
    fn init(_config: &str) -> Result<(Self, Registration), String> {
        Ok((StateCounter, Registration::phases(Phases::REQUEST_HEADERS)))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let hits = match state::incr("hits", 1, 0) {
            Ok(n) => n.to_string(),
            Err(e) => return RequestDecision::Respond(Response::text(503, format!("state: {e}\n"))),
        };
        let last = state::get("last-path").ok().flatten().unwrap_or_default();
        let _ = state::set("last-path", req.path_with_query.as_bytes(), 0);
        log(Level::Debug, &format!("request {hits}"));
        let mut edits = HeaderEdits::set("x-hits", hits);
        edits.set.push(("x-last-path".to_owned(), last));
        RequestDecision::Next((edits, Vec::new()))
    }
}

export_middleware!(StateCounter);
