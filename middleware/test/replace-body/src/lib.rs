//! Replaces the request body with `request` and the response body with `response` (each when
//! given). Config: `{ "request": "...", "response": "..." }`.
use sluice_sdk::*;

struct ReplaceBody {
    request: Option<String>,
    response: Option<String>,
}

impl Middleware for ReplaceBody {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let text = |key: &str| config.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let (request, response) = (text("request"), text("response"));
        let mut phases = Phases::empty();
        if request.is_some() {
            phases |= Phases::REQUEST_BODY;
        }
        if response.is_some() {
            phases |= Phases::RESPONSE_BODY;
        }
        Ok((ReplaceBody { request, response }, Registration::phases(phases)))
    }

    fn on_request_body(&self, _req: Request, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Replace(self.request.clone().unwrap_or_default().into_bytes())
    }

    fn on_response_body(&self, _req: Request, _status: u16, _headers: Headers, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Replace(self.response.clone().unwrap_or_default().into_bytes())
    }
}

export_middleware!(ReplaceBody);
