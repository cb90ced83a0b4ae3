//! Stamps its `name` in each phase it runs: request headers get `x-stamp-request: NAME` appended
//! and the context `stamp.path` extended (`a>b`), bodies get `+NAME` appended, response headers get
//! `x-stamp-response: NAME` appended. Config: `{ "name": "a", "phases": ["request-headers", ...] }`
//! (`phases` defaults to all four).
use sluice_sdk::*;

struct Stamp {
    name: String,
}

impl Middleware for Stamp {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let name = config["name"]
            .as_str()
            .ok_or("`name` is required: a string to stamp")?
            .to_owned();
        let mut phases = Phases::all();
        if let Some(list) = config.get("phases") {
            phases = Phases::empty();
            for phase in list.as_array().ok_or("`phases` must be a list")? {
                phases |= match phase.as_str() {
                    Some("request-headers") => Phases::REQUEST_HEADERS,
                    Some("request-body") => Phases::REQUEST_BODY,
                    Some("response-headers") => Phases::RESPONSE_HEADERS,
                    Some("response-body") => Phases::RESPONSE_BODY,
                    _ => return Err(format!("`phases`: unknown phase {phase}")),
                };
            }
        }
        // It reads no header: it is passed none.
        let registration = Registration::phases(phases)
            .with_request_headers(&[])
            .with_response_headers(&[]);
        Ok((Stamp { name }, registration))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let path = match req.context("stamp.path") {
            Some(before) => format!("{before}>{}", self.name),
            None => self.name.clone(),
        };
        let mut edits = HeaderEdits::append("x-stamp-request", &self.name);
        edits
            .set
            .push((format!("x-stamp-saw-{}", self.name), path.clone().into_bytes()));
        RequestDecision::Next((edits, vec![("stamp.path".to_owned(), path)]))
    }

    fn on_request_body(&self, _req: Request, mut body: Vec<u8>) -> BodyDecision {
        body.extend_from_slice(format!("+{}", self.name).as_bytes());
        BodyDecision::Replace(body)
    }

    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        ResponseDecision::Next(HeaderEdits::append("x-stamp-response", &self.name))
    }

    fn on_response_body(&self, _req: Request, _status: u16, _headers: Headers, mut body: Vec<u8>) -> BodyDecision {
        body.extend_from_slice(format!("+{}", self.name).as_bytes());
        BodyDecision::Replace(body)
    }
}

export_middleware!(Stamp);
