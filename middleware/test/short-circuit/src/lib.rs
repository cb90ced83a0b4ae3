//! Answers the client itself when the request has header `header`, or (with `body-contains`) when
//! the request body contains that text, or (with `replace-status`) replaces an upstream response
//! of that status; otherwise continues.
//! Config: `{ "header": "x-block", "status": 403, "body-contains": "forbidden", "replace-status": 204 }`.
use sluice_sdk::*;

struct ShortCircuit {
    header: String,
    body_contains: Option<String>,
    replace_status: Option<u16>,
    status: u16,
}

impl Middleware for ShortCircuit {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let header = config["header"]
            .as_str()
            .ok_or("`header` is required")?
            .to_ascii_lowercase();
        let status = config
            .get("status")
            .map_or(Some(403), |s| s.as_u64())
            .ok_or("`status` must be a number")?;
        let body_contains = match config.get("body-contains") {
            None => None,
            Some(text) => Some(
                text.as_str()
                    .filter(|t| !t.is_empty())
                    .ok_or("`body-contains` must be a non-empty string")?
                    .to_owned(),
            ),
        };
        let replace_status = match config.get("replace-status") {
            None => None,
            Some(status) => Some(status.as_u64().ok_or("`replace-status` must be a number")? as u16),
        };
        let mut phases = Phases::REQUEST_HEADERS;
        if body_contains.is_some() {
            phases |= Phases::REQUEST_BODY;
        }
        if replace_status.is_some() {
            phases |= Phases::RESPONSE_HEADERS;
        }
        let mut registration = Registration::phases(phases);
        registration.request_headers = Some(vec![header.clone()]);
        let status = status as u16;
        Ok((
            ShortCircuit {
                header,
                body_contains,
                replace_status,
                status,
            },
            registration,
        ))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        if req.header(&self.header).is_some() {
            return RequestDecision::Respond(Response::text(
                self.status,
                format!("blocked: `{}` is present\n", self.header),
            ));
        }
        RequestDecision::Next((HeaderEdits::none(), Vec::new()))
    }

    fn on_request_body(&self, _req: Request, body: Vec<u8>) -> BodyDecision {
        match &self.body_contains {
            Some(text) if body.windows(text.len()).any(|w| w == text.as_bytes()) => BodyDecision::Respond(
                Response::text(self.status, format!("blocked: the body contains `{text}`\n")),
            ),
            _ => BodyDecision::Next,
        }
    }

    fn on_response_headers(&self, _req: Request, status: u16, _headers: Headers) -> ResponseDecision {
        if self.replace_status == Some(status) {
            return ResponseDecision::Respond(Response::text(self.status, format!("replaced a {status}\n")));
        }
        ResponseDecision::Next(HeaderEdits::none())
    }
}

export_middleware!(ShortCircuit);
