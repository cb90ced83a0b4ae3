//! A route's middleware chain, and the [`Snapshot`] of everything live.
//!
//! The proxy calls a route's [`Chain`] at each phase. Chains are empty until the Wasm runtime
//! lands; [`Snapshot::build`] refuses a config whose routes name middleware rather than skip it.

mod snapshot;

pub use snapshot::{Route, Snapshot};

/// The ordered middleware of one route.
#[derive(Debug, Default)]
pub struct Chain {
    _links: (),
}

impl Chain {
    /// A chain with no middleware: every phase continues unchanged.
    pub fn empty() -> Self {
        Chain::default()
    }

    /// True when no middleware runs; the proxy then streams bodies without looking at them.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Whether any middleware in the chain reads the request body (so the proxy must buffer it).
    pub fn needs_request_body(&self) -> bool {
        false
    }

    /// Whether any middleware in the chain reads the response body (so the proxy must buffer it).
    pub fn needs_response_body(&self) -> bool {
        false
    }
}
