//! Traps (panics, which is `unreachable` in Wasm) in the phase named by `phase`
//! (default `request-headers`). Config: `{ "phase": "response-headers" }`.
use sluice_sdk::*;

struct Trap;

impl Middleware for Trap {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let phase = match config
            .get("phase")
            .and_then(|p| p.as_str())
            .unwrap_or("request-headers")
        {
            "request-headers" => Phases::REQUEST_HEADERS,
            "request-body" => Phases::REQUEST_BODY,
            "response-headers" => Phases::RESPONSE_HEADERS,
            "response-body" => Phases::RESPONSE_BODY,
            other => return Err(format!("`phase`: unknown phase `{other}`")),
        };
        Ok((Trap, Registration::phases(phase)))
    }

    fn on_request_headers(&self, _req: Request) -> RequestDecision {
        panic!("trap in on-request-headers")
    }

    fn on_request_body(&self, _req: Request, _body: Vec<u8>) -> BodyDecision {
        panic!("trap in on-request-body")
    }

    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        panic!("trap in on-response-headers")
    }

    fn on_response_body(&self, _req: Request, _status: u16, _headers: Headers, _body: Vec<u8>) -> BodyDecision {
        panic!("trap in on-response-body")
    }
}

export_middleware!(Trap);
