//! The TOML config: schema, parsing and validation.
//!
//! The structs here mirror the file (`deny_unknown_fields`, kebab-case keys). Loading is two steps:
//! [`parse`] deserializes each section on its own, so one bad section does not hide the errors in
//! the next, then validation checks what serde cannot (references between sections, duplicates,
//! empty lists). Every problem becomes a [`ConfigError`] with file, line, column and key, and all of
//! them are reported together.
//!
//! ```toml
//! [server]
//! listen = ["127.0.0.1:8080"]
//!
//! [upstreams.users]
//! targets = ["127.0.0.1:3000", "127.0.0.1:3001"]
//!
//! [[route]]
//! name = "users"
//! path-prefix = "/users"
//! upstream = "users"
//! ```

mod diagnostic;
mod parse;
pub mod redact;
mod schema;
pub mod units;
mod validate;

use diagnostic::Locator;
pub use diagnostic::{ConfigError, ConfigErrors};
pub use parse::{load, parse};
pub use schema::*;
pub use units::{
    AnyDuration, ByteSize, ComponentRef, Duration, HostPattern, ListenAddr, Method, PathPrefix, Percent, Target,
};
