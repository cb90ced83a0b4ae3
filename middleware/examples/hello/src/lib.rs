//! A sluice middleware in Rust: greets the client by the name in `x-name`.
//!
//! Request: sets `x-hello: GREETING, NAME` for the upstream and attaches `hello.name` for later
//! middleware; a name over 64 characters is answered 400 (problem+json). Response: appends
//! `x-hello-lang: rust`. Config: `{ "greeting": "hello" }` (optional).
//!
//! Build: cargo build --release --target wasm32-wasip2
use sluice_sdk::*;

struct Hello {
    greeting: String,
}

impl Middleware for Hello {
    fn init(config: &str) -> Result<(Self, Registration), String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let greeting = match config.get("greeting") {
            None => "hello",
            Some(value) => value.as_str().ok_or("`greeting` must be a string")?,
        };
        // The one request header this middleware reads; none of the response's.
        let registration = Registration::phases(Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS)
            .with_request_headers(&["x-name"])
            .with_response_headers(&[]);
        Ok((
            Hello {
                greeting: greeting.to_owned(),
            },
            registration,
        ))
    }

    fn on_request_headers(&self, req: Request) -> RequestDecision {
        let name = req.header("x-name").map(String::from_utf8_lossy);
        let name = name.as_deref().unwrap_or("world");
        if name.chars().count() > 64 {
            let problem = Response::problem(400, "Name too long", "x-name is limited to 64 characters");
            return RequestDecision::Respond(problem);
        }
        let edits = HeaderEdits::set("x-hello", format!("{}, {name}", self.greeting));
        RequestDecision::Next((edits, vec![("hello.name".to_owned(), name.to_owned())]))
    }

    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        ResponseDecision::Next(HeaderEdits::append("x-hello-lang", "rust"))
    }
}

export_middleware!(Hello);
