//! sluice: a programmable HTTP reverse proxy.
//!
//! pingora accepts each request; the router picks a route from the live [`live::Snapshot`]
//! (one atomic load per request, held to the end, so a reload never changes a request mid-flight);
//! the route's middleware chain runs one call per phase; the request goes to one of the route
//! upstream's targets; the response phases run in reverse chain order; the client gets the answer.
//!
//! | phase            | pingora hook (`proxy::Sluice`)       | chain call                                   |
//! | ---------------- | ------------------------------------ | -------------------------------------------- |
//! | route            | `request_filter`                     | —                                            |
//! | request headers  | `request_filter`                     | `ChainRun::run` (`Message::RequestHeaders`)  |
//! | request body     | `request_filter` → `proxy::buffered` | `ChainRun::run` (`Message::RequestBody`)     |
//! | pick a target    | `upstream_peer`, `fail_to_connect`   | — (target health, retries)                   |
//! | upstream request | `upstream_request_filter`            | — (forwarding headers)                       |
//! | response headers | `response_filter`                    | `ChainRun::run` (`Message::ResponseHeaders`) |
//! | response body    | `request_filter` → `proxy::buffered` | `ChainRun::run` (`Message::ResponseBody`)    |
//! | errors           | `fail_to_proxy`                      | — (problem+json 502/503/504)                 |
//!
//! A route whose chain declares a body phase is proxied by sluice itself from `request_filter`
//! (`proxy::buffered`): the whole request body is decided before anything goes upstream.
//!
//! Everything that can be done at load (parsing config, building the route table, resolving
//! targets) happens in [`live::Snapshot::build`], off the request path.
//!
//! Layers, top to bottom; a module names only modules below it (`scripts/check-layers.py`, run
//! by `make lint`, fails on a cycle):
//!
//! | layer | modules |
//! | --- | --- |
//! | process | `server` (listeners, control thread, shutdown, upgrade), `admin` |
//! | control | `reload` (watcher, `SIGHUP`, uploads, rollback: the only writer of the live snapshot) |
//! | request path | `proxy` (pingora's `ProxyHttp`: reads one snapshot per request) |
//! | what is live | `live` (the `Snapshot` and its building) |
//! | its parts | `chain` (middleware versions, a route's chain, one request's run), `router`, `upstream` (targets, balancing, health), `tls` |
//! | foundations | `runtime` (wasmtime), `state`, `metrics`, `telemetry`, `config`, `oci` (registries, signatures), `files`, `error` |
//! | tools beside the proxy | `scaffold` (`sluice new`), `echo` (the demo's upstream) |

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
pub mod files;
pub mod live;
pub mod metrics;
pub mod oci;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
