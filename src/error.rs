//! Typed errors for loading and running sluice.
//!
//! Errors on the request path are pingora errors; [`crate::proxy`] turns them into problem+json
//! responses with the right status.

use std::net::SocketAddr;

use crate::config::ConfigErrors;

/// Why a config could not be loaded or sluice could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is malformed or inconsistent; every problem is listed.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// An upstream target's host name did not resolve.
    #[error("upstream `{upstream}`: cannot resolve target `{target}`: {reason}")]
    Resolve {
        /// The upstream's name.
        upstream: String,
        /// The target as written.
        target: String,
        /// What the resolver said.
        reason: String,
    },
    /// A route names middleware, but this build cannot run Wasm components yet.
    #[error(
        "route `{route}` uses middleware `{middleware}`, but this build of sluice cannot run Wasm middleware yet; remove the route's `middleware` list"
    )]
    MiddlewareUnsupported {
        /// The route's name.
        route: String,
        /// The first middleware it names.
        middleware: String,
    },
    /// A listen address cannot be bound.
    #[error("cannot listen on `{addr}`: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}
