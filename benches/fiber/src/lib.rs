//! What the two programs share: a store's host state, WASI and nothing else.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A store's data: an empty WASI context.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl Host {
    pub fn new() -> Self {
        Host {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
