//! `builtin:redact`: masks personal data in response bodies. JSON stays valid JSON: values of the
//! `json-fields` are masked whole, and patterns are replaced inside string values only, never
//! across structure. Text bodies are masked by pattern. A gzip body is decompressed, masked and
//! compressed again; any other content encoding makes the call fail, so `on-error` decides and the
//! body is never passed through unmasked silently.
//!
//! Docs: docs/middleware/redact.md.
mod mask;

use mask::Masker;
use sluice_sdk::*;

struct Redact(Masker);

impl Middleware for Redact {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let masker = Masker::new(config)?;
        let mut registration = Registration::phases(Phases::RESPONSE_BODY);
        registration.response_headers = Some(vec!["content-type".into(), "content-encoding".into()]);
        registration.request_headers = Some(Vec::new());
        Ok((Redact(masker), registration))
    }

    fn on_response_body(&self, _req: Request, _status: u16, headers: Headers, body: Vec<u8>) -> BodyDecision {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let media_type = header("content-type").map(|ct| ct.split(';').next().unwrap_or("").trim().to_owned());
        let Some(media_type) = media_type.filter(|mt| media_type_matches(&self.0.content_types, mt)) else {
            return BodyDecision::Next;
        };
        let gzip = match header("content-encoding").as_deref() {
            None | Some("identity") | Some("") => false,
            Some("gzip") | Some("x-gzip") => true,
            Some(other) => {
                log(
                    Level::Error,
                    &format!("cannot redact a `{other}`-encoded response; failing the call"),
                );
                panic!("unsupported content encoding `{other}`");
            }
        };
        let json = media_type == "application/json" || media_type.ends_with("+json");
        match self.0.body(&body, json, gzip) {
            Ok(Some(masked)) => BodyDecision::Replace(masked),
            Ok(None) => BodyDecision::Next,
            Err(error) => {
                log(Level::Error, &error);
                panic!("{error}");
            }
        }
    }
}

export_middleware!(Redact);
