//! The one host-side `bindgen!` for the `sluice:middleware` world, with a curated export.

#[allow(missing_docs)] // generated code; the WIT in `wit/` documents every item
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "sluice:middleware/middleware",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use generated::sluice::middleware::{log, state, types};
pub use generated::{Middleware, MiddlewarePre};
