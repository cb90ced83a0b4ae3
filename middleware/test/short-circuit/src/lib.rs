//! Answers the client itself when the request has header `header`; otherwise continues.
//! Config: `{ "header": "x-block", "status": 403 }`.
use sluice_sdk::*;

struct ShortCircuit {
    header: String,
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
        let mut registration = Registration::phases(Phases::REQUEST_HEADERS);
        registration.request_headers = Some(vec![header.clone()]);
        Ok((
            ShortCircuit {
                header,
                status: status as u16,
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
}

export_middleware!(ShortCircuit);
