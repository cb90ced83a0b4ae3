//! The guest SDK for sluice middleware.
//!
//! A middleware is a type implementing [`Middleware`]: `init` parses the config once per load and
//! says which phases to call; every phase has a default that continues unchanged, so a middleware
//! implements only what it needs. [`export_middleware!`] makes it a component:
//!
//! ```ignore
//! use sluice_sdk::*;
//!
//! struct AddHeader { value: Vec<u8> }
//!
//! impl Middleware for AddHeader {
//!     fn init(config: &str) -> Result<(Self, Registration), String> {
//!         Ok((AddHeader { value: config.as_bytes().to_vec() }, Registration::phases(Phases::REQUEST_HEADERS)))
//!     }
//!     fn on_request_headers(&self, _req: Request) -> RequestDecision {
//!         RequestDecision::Next((HeaderEdits::set("x-added", &self.value), vec![]))
//!     }
//! }
//!
//! export_middleware!(AddHeader);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to name in sluice's config.

#[doc(hidden)]
pub mod head;
pub mod http;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated lowering code for the world's exports
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        // Heads cross as one encoded byte string each (`head`), not a string or list per field.
        world: "compact-middleware",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "sluice_sdk::bindings",
        generate_all,
    });
}

pub use bindings::sluice::middleware::log::{Level, log};
pub use bindings::sluice::middleware::state;
pub use bindings::sluice::middleware::types::{
    BodyDecision, Context, HeaderEdits, Headers, Phases, Registration, Request, RequestDecision, Response,
    ResponseDecision,
};

/// A middleware: configured once by `init`, then called once per declared phase per request.
///
/// Every phase defaults to "continue unchanged"; sluice calls only the phases `init` declared.
pub trait Middleware: Sized + Send + Sync + 'static {
    /// Parses `config` (the TOML `config` table, as JSON) and declares the phases. An `Err`
    /// rejects the config; say which key is wrong.
    fn init(config: &str) -> Result<(Self, Registration), String>;

    /// The request head. Runs in chain order.
    fn on_request_headers(&self, _req: Request) -> RequestDecision {
        RequestDecision::Next((HeaderEdits::none(), Vec::new()))
    }

    /// The whole request body. Runs in chain order before anything goes upstream.
    fn on_request_body(&self, _req: Request, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Next
    }

    /// The response head. Runs in reverse chain order.
    fn on_response_headers(&self, _req: Request, _status: u16, _headers: Headers) -> ResponseDecision {
        ResponseDecision::Next(HeaderEdits::none())
    }

    /// The whole response body. Runs in reverse chain order.
    fn on_response_body(&self, _req: Request, _status: u16, _headers: Headers, _body: Vec<u8>) -> BodyDecision {
        BodyDecision::Next
    }
}

impl Registration {
    /// These phases, with every header passed.
    pub fn phases(phases: Phases) -> Self {
        Registration {
            phases,
            request_headers: None,
            response_headers: None,
        }
    }

    /// Passes only these request headers (lowercase names) to every phase; `&[]` passes none.
    /// Every header passed is copied into the component on every call: a middleware that reads
    /// two headers should ask for two.
    pub fn with_request_headers(mut self, names: &[&str]) -> Self {
        self.request_headers = Some(names.iter().map(|n| n.to_ascii_lowercase()).collect());
        self
    }

    /// Passes only these response headers (lowercase names) to the response phases; `&[]`
    /// passes none.
    pub fn with_response_headers(mut self, names: &[&str]) -> Self {
        self.response_headers = Some(names.iter().map(|n| n.to_ascii_lowercase()).collect());
        self
    }
}

impl HeaderEdits {
    /// No changes.
    pub fn none() -> Self {
        HeaderEdits {
            set: Vec::new(),
            append: Vec::new(),
            remove: Vec::new(),
        }
    }

    /// Sets one header (replacing any of that name).
    pub fn set(name: &str, value: impl AsRef<[u8]>) -> Self {
        HeaderEdits {
            set: vec![(name.to_owned(), value.as_ref().to_vec())],
            ..Self::none()
        }
    }

    /// Appends one header field.
    pub fn append(name: &str, value: impl AsRef<[u8]>) -> Self {
        HeaderEdits {
            append: vec![(name.to_owned(), value.as_ref().to_vec())],
            ..Self::none()
        }
    }
}

impl Response {
    /// A response with a text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            headers: vec![("content-type".to_owned(), b"text/plain; charset=utf-8".to_vec())],
            body: body.into().into_bytes(),
        }
    }
}

impl Response {
    /// An RFC 9457 `application/problem+json` response: sluice's own error format.
    pub fn problem(status: u16, title: &str, detail: &str) -> Self {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
        })
        .to_string();
        Response {
            status,
            headers: vec![
                ("content-type".to_owned(), b"application/problem+json".to_vec()),
                ("cache-control".to_owned(), b"no-store".to_vec()),
            ],
            body: body.into_bytes(),
        }
    }

    /// This response with header `name: value` added.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }
}

/// Whether `media_type` (lowercase, without parameters) is one of `accepted`, where `*` in an
/// entry matches any run of characters: `application/*+json` matches `application/problem+json`.
pub fn media_type_matches(accepted: &[String], media_type: &str) -> bool {
    accepted.iter().any(|a| match a.split_once('*') {
        Some((prefix, suffix)) => {
            media_type.len() > prefix.len() + suffix.len()
                && media_type.starts_with(prefix)
                && media_type.ends_with(suffix)
        }
        None => a == media_type,
    })
}

impl Request {
    /// The first value of header `name` (lowercase), if the component was given it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The value of context key `key`, if an earlier middleware attached it.
    pub fn context(&self, key: &str) -> Option<&str> {
        self.context.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Makes `$ty` (a [`Middleware`]) the component's implementation of the `middleware` world.
#[macro_export]
macro_rules! export_middleware {
    ($ty:ty) => {
        static __SLUICE_MIDDLEWARE: ::std::sync::OnceLock<$ty> = ::std::sync::OnceLock::new();

        fn __sluice_middleware() -> &'static $ty {
            __SLUICE_MIDDLEWARE.get().expect("sluice calls `init` before any phase")
        }

        struct __SluiceExport;

        impl $crate::bindings::Guest for __SluiceExport {
            fn init(config: String) -> Result<$crate::Registration, String> {
                let (middleware, registration) = <$ty as $crate::Middleware>::init(&config)?;
                __SLUICE_MIDDLEWARE.set(middleware).map_err(|_| "`init` was called twice".to_string())?;
                Ok(registration)
            }
            fn on_request_headers(req: Vec<u8>) -> $crate::RequestDecision {
                $crate::Middleware::on_request_headers(__sluice_middleware(), $crate::head::request(&req))
            }
            fn on_request_body(req: Vec<u8>, body: Vec<u8>) -> $crate::BodyDecision {
                $crate::Middleware::on_request_body(__sluice_middleware(), $crate::head::request(&req), body)
            }
            fn on_response_headers(req: Vec<u8>, response: Vec<u8>) -> $crate::ResponseDecision {
                let (status, headers) = $crate::head::response(&response);
                $crate::Middleware::on_response_headers(__sluice_middleware(), $crate::head::request(&req), status, headers)
            }
            fn on_response_body(req: Vec<u8>, response: Vec<u8>, body: Vec<u8>) -> $crate::BodyDecision {
                let (status, headers) = $crate::head::response(&response);
                let req = $crate::head::request(&req);
                $crate::Middleware::on_response_body(__sluice_middleware(), req, status, headers, body)
            }
        }

        $crate::bindings::__export_world!(__SluiceExport with_types_in $crate::bindings);
    };
}
