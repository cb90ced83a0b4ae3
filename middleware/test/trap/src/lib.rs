//! Traps in the phase named by `phase` (default `request-headers`): by panicking (`unreachable`
//! in Wasm), or with `access` by loading from outside its linear memory: `"past-the-end"` (the
//! first byte past its last page) or `"top"` (the last bytes a 32-bit address reaches); a load
//! the host does not trap is answered with a 200 saying what it read, so a test sees it.
//! Config: `{ "phase": "response-headers", "access": "top" }`.
use sluice_sdk::*;

struct Trap {
    /// Where to load from instead of panicking.
    address: Option<Address>,
}

#[derive(Clone, Copy)]
enum Address {
    PastTheEnd,
    Top,
}

impl Trap {
    /// Panics, or makes its load (which must trap) and answers what it read.
    fn trap(&self, phase: &str) -> Response {
        let Some(address) = self.address else {
            panic!("trap in {phase}")
        };
        let address = match address {
            Address::PastTheEnd => core::arch::wasm32::memory_size::<0>() * 65536,
            Address::Top => u32::MAX as usize - 7,
        };
        // SAFETY: none: the load is outside the memory, and the host must trap it.
        let value = unsafe { core::ptr::read_volatile(address as *const u64) };
        Response::text(
            200,
            format!("read {value:#x} at {address:#x}, outside the linear memory, in {phase}"),
        )
    }
}

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
        let address = match config.get("access").and_then(|a| a.as_str()) {
            None => None,
            Some("past-the-end") => Some(Address::PastTheEnd),
            Some("top") => Some(Address::Top),
            Some(other) => return Err(format!("`access`: unknown access `{other}`")),
        };
        Ok((Trap { address }, Registration::phases(phase)))
    }

    fn on_request_headers(&self, _req: Request) -> RequestDecision {
        RequestDecision::Respond(self.trap("on-request-headers"))
    }

    fn on_request_body(&self, _req: Request, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Respond(self.trap("on-request-body"))
    }

    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        ResponseDecision::Respond(self.trap("on-response-headers"))
    }

    fn on_response_body(&self, _req: Request, _status: u16, _headers: Headers, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Respond(self.trap("on-response-body"))
    }
}

export_middleware!(Trap);
