//! The one host-side `bindgen!` for the `sluice:middleware` world, with a curated export.

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

pub use generated::sluice::middleware::{log, state, types};
pub use generated::{Middleware, MiddlewarePre};
