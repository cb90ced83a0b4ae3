//! Typed errors for loading and running sluice.
//!
//! Errors on the request path are pingora errors; [`crate::proxy`] turns them into problem+json
//! responses with the right status.

use std::net::SocketAddr;

use crate::config::ConfigErrors;

/// Why a config could not be loaded or sluice could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is malformed or inconsistent, or something it names cannot be loaded
    /// (a target that does not resolve); every problem is listed with where it is.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The WebAssembly runtime could not start (e.g. the cache directory is unusable).
    #[error("{0}")]
    Runtime(String),
    /// A reload found the config file empty: most likely a save still being written. The
    /// running config keeps serving; the next change reloads again.
    #[error("`{}` is empty (a save still being written?); the running config keeps serving", .0.display())]
    EmptyConfig(std::path::PathBuf),
    /// `sluice run --upgrade` found no running sluice to take over from.
    #[error("cannot upgrade: {0}")]
    Upgrade(String),
    /// A listen address cannot be bound.
    #[error("cannot listen on `{addr}`: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}
