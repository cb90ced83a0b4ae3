//! sluice: a programmable HTTP reverse proxy.
//!
//! pingora accepts each request; the router picks a route from the live [`chain::Snapshot`]
//! (one atomic load per request, held to the end, so a reload never changes a request mid-flight);
//! the route's middleware chain runs one call per phase; the request goes to one of the route
//! upstream's targets; the response phases run in reverse chain order; the client gets the answer.
//!
//! | phase            | pingora hook (`proxy::Sluice`)        | chain call                       |
//! | ---------------- | ------------------------------------- | -------------------------------- |
//! | route            | `request_filter`                      | —                                |
//! | request headers  | `request_filter`                      | `ChainRun::on_request_headers`  |
//! | request body     | `request_filter` → `proxy::buffered`  | `ChainRun::on_request_body`      |
//! | pick a target    | `upstream_peer`, `fail_to_connect`    | — (target health, retries)       |
//! | upstream request | `upstream_request_filter`             | — (forwarding headers)           |
//! | response headers | `response_filter`                     | `ChainRun::on_response_headers` |
//! | response body    | `request_filter` → `proxy::buffered`  | `ChainRun::on_response_body`     |
//! | errors           | `fail_to_proxy`                       | — (problem+json 502/503/504)     |
//!
//! A route whose chain declares a body phase is proxied by sluice itself from `request_filter`
//! (`proxy::buffered`): the whole request body is decided before anything goes upstream.
//!
//! Everything that can be done at load (parsing config, building the route table, resolving
//! targets) happens in [`chain::Snapshot::build`], off the request path.

#![deny(missing_docs)]

pub mod artifacts {
    //! Where the build put the middleware components it compiled from `middleware/`.
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}
pub mod admin;
pub mod chain;
pub mod config;
pub mod echo;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
