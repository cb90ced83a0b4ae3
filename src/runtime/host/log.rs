//! `sluice:middleware/log`: guest log lines go to `tracing`, with the middleware's name.

use super::HostState;
use crate::runtime::bindings::log::{Host, Level};

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        self.calls.log += 1;
        let middleware = &*self.middleware;
        match level {
            Level::Trace => tracing::trace!(target: "sluice::middleware", middleware, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::middleware", middleware, "{message}"),
            Level::Info => tracing::info!(target: "sluice::middleware", middleware, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::middleware", middleware, "{message}"),
            Level::Error => tracing::error!(target: "sluice::middleware", middleware, "{message}"),
        }
    }
}
