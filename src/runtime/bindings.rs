//! The host-side `bindgen!`s for the two `sluice:middleware` worlds, with a curated export:
//! `middleware` (heads as typed values) and `compact-middleware` (heads as encoded bytes). Both
//! import the same `state` and `log` and share the `types` interface, so one set of host
//! implementations serves both and their decisions are one Rust type.

#[allow(missing_docs)] // generated code; the WIT in `wit/` documents every item
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "sluice:middleware/middleware",
        imports: { default: async },
        exports: { default: async },
        // A phase's arguments borrow from the host's own request and response heads: nothing
        // is copied into an owned view before it is lowered into the guest.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

#[allow(missing_docs)] // generated code; the WIT in `wit/` documents every item
mod compact {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "sluice:middleware/compact-middleware",
        imports: { default: async },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "sluice:middleware/types": super::generated::sluice::middleware::types,
            "sluice:middleware/state": super::generated::sluice::middleware::state,
            "sluice:middleware/log": super::generated::sluice::middleware::log,
        },
    });
}

pub use compact::{CompactMiddleware, CompactMiddlewarePre};
pub use generated::sluice::middleware::{log, state, types};
pub use generated::{Middleware, MiddlewarePre};

use wasmtime::Store;

use super::head;
use super::host::HostState;
use types::{BodyDecision, Request, RequestDecision, ResponseDecision};

/// A `sluice:middleware` component pre-linked as the world its exports take.
#[derive(Clone)]
pub enum SluicePre {
    /// `middleware`: heads as typed values.
    Typed(MiddlewarePre<HostState>),
    /// `compact-middleware`: heads as encoded bytes.
    Compact(CompactMiddlewarePre<HostState>),
}

impl SluicePre {
    /// A new instance in `store`.
    pub async fn instantiate_async(&self, store: &mut Store<HostState>) -> wasmtime::Result<Exports> {
        Ok(match self {
            SluicePre::Typed(pre) => Exports::Typed(pre.instantiate_async(store).await?),
            SluicePre::Compact(pre) => Exports::Compact(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports: one call per phase, with the request (and response) head as the host
/// holds it, passed as the component's world takes it.
pub enum Exports {
    /// `middleware`: heads as typed values.
    Typed(Middleware),
    /// `compact-middleware`: heads as encoded bytes ([`head`]).
    Compact(CompactMiddleware),
}

/// A header section as the host passes it: borrowed name/value pairs.
pub type Fields<'a> = [(&'a str, &'a [u8])];

impl Exports {
    /// `init(config)`.
    pub async fn call_init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<types::Registration, String>> {
        match self {
            Exports::Typed(exports) => exports.call_init(store, config).await,
            Exports::Compact(exports) => exports.call_init(store, config).await,
        }
    }

    /// `on-request-headers(req)`.
    pub async fn on_request_headers(
        &self,
        store: &mut Store<HostState>,
        req: Request<'_>,
    ) -> wasmtime::Result<RequestDecision> {
        match self {
            Exports::Typed(exports) => exports.call_on_request_headers(store, req).await,
            Exports::Compact(exports) => exports.call_on_request_headers(store, &head::request(&req)).await,
        }
    }

    /// `on-request-body(req, body)`.
    pub async fn on_request_body(
        &self,
        store: &mut Store<HostState>,
        req: Request<'_>,
        body: &[u8],
    ) -> wasmtime::Result<BodyDecision> {
        match self {
            Exports::Typed(exports) => exports.call_on_request_body(store, req, body).await,
            Exports::Compact(exports) => exports.call_on_request_body(store, &head::request(&req), body).await,
        }
    }

    /// `on-response-headers(req, status, headers)`.
    pub async fn on_response_headers(
        &self,
        store: &mut Store<HostState>,
        req: Request<'_>,
        status: u16,
        headers: &Fields<'_>,
    ) -> wasmtime::Result<ResponseDecision> {
        match self {
            Exports::Typed(exports) => exports.call_on_response_headers(store, req, status, headers).await,
            Exports::Compact(exports) => {
                let response = head::response(status, headers);
                exports
                    .call_on_response_headers(store, &head::request(&req), &response)
                    .await
            }
        }
    }

    /// `on-response-body(req, status, headers, body)`.
    pub async fn on_response_body(
        &self,
        store: &mut Store<HostState>,
        req: Request<'_>,
        status: u16,
        headers: &Fields<'_>,
        body: &[u8],
    ) -> wasmtime::Result<BodyDecision> {
        match self {
            Exports::Typed(exports) => exports.call_on_response_body(store, req, status, headers, body).await,
            Exports::Compact(exports) => {
                let response = head::response(status, headers);
                exports
                    .call_on_response_body(store, &head::request(&req), &response, body)
                    .await
            }
        }
    }
}
