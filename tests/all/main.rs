//! The end-to-end suite, one test binary (compiled and linked once, as wasmtime's tests/all):
//! each module drives real `sluice` processes over real TCP in front of real upstreams.
//! `cargo test --test all MODULE::` runs one module; `cargo test --test all NAME` one test.

mod common;

mod auth_jwt;
mod authoring;
mod bodies;
mod config_ui;
mod demo;
mod fleet;
mod foreign_upstream;
mod health;
mod hot_swap;
mod isolation;
mod lifecycle;
mod middleware;
mod observability;
mod otlp;
mod outbound;
mod polyglot;
mod rate_limit;
mod redact;
mod redis_state;
mod routing;
mod runtime_load;
mod schema_validate;
mod slow_peers;
mod startup;
mod tls;
mod upstreams;
mod wasi_http;
