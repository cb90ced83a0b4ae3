//! What `middleware/test/stamp` does with `phases = ["request-headers", "response-headers"]`, as
//! an Envoy proxy-wasm filter: request headers get `x-stamp-request: NAME` appended and
//! `x-stamp-saw-NAME: PATH` set, where PATH is the `stamp.path` the filters before it left
//! (`a>b`), extended with NAME and passed on; response headers get `x-stamp-response: NAME`
//! appended. The plugin configuration is NAME.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(StampRoot { name: String::new() }) });
}}

struct StampRoot {
    name: String,
}

impl Context for StampRoot {}

impl RootContext for StampRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.name = self
            .get_plugin_configuration()
            .map(|config| String::from_utf8_lossy(&config).into_owned())
            .unwrap_or_default();
        !self.name.is_empty()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stamp { name: self.name.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stamp {
    name: String,
}

impl Context for Stamp {}

impl HttpContext for Stamp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // The filter state of the request: what the chain context is to a sluice middleware.
        let path = match self.get_property(vec!["stamp.path"]) {
            Some(before) => format!("{}>{}", String::from_utf8_lossy(&before), self.name),
            None => self.name.clone(),
        };
        self.add_http_request_header("x-stamp-request", &self.name);
        self.set_http_request_header(&format!("x-stamp-saw-{}", self.name), Some(&path));
        self.set_property(vec!["stamp.path"], Some(path.as_bytes()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-stamp-response", &self.name);
        Action::Continue
    }
}
