//! The host side of a middleware instance: what one `Store` holds, and the interfaces it imports.
//!
//! One file per WIT interface (`state.rs`, `log.rs`), each an `impl Host for HostState`, and
//! `http.rs` for `wasi:http`'s outbound requests, put together by [`add_to_linker`] with WASI
//! (deny-by-default, see [`HostState::new`]).

mod http;
mod log;
mod state;

pub use http::{NextFuture, NextHop, Outbound};

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::runtime::bindings;
use crate::runtime::budget::Meter;
use crate::state::State;

/// The data of one middleware instance's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    pub(crate) outbound: http::OutboundHooks,
    /// Memory and instance limits, enforced by the store's limiter.
    pub limits: Limits,
    /// The middleware's name, for logs and state namespacing.
    pub middleware: Arc<str>,
    state: Arc<State>,
    /// The running budget of the call being polled ([`crate::runtime::budget`]).
    pub meter: Arc<Meter>,
    /// When `init` or an instantiation must end (wall-clock; calls use `meter`).
    pub deadline: Instant,
    /// Set when a call was stopped for exceeding its deadline.
    pub timed_out: bool,
    /// What the guest asked of the host since [`HostState::take_calls`] last read it.
    calls: HostCalls,
}

/// What a middleware asked of the host during one call, by interface: how chatty the boundary
/// is. Outbound HTTP counts requests sent (allowed or denied), not the body stream's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCalls {
    /// `sluice:middleware/state` operations.
    pub state: u32,
    /// `sluice:middleware/log` lines.
    pub log: u32,
    /// `wasi:http` outbound requests.
    pub http: u32,
}

impl HostState {
    /// A fresh instance's state: WASI with clocks and random only (no preopened directories, no
    /// environment, no arguments, no sockets, empty stdin, discarded stdout and stderr), and
    /// outbound HTTP to what `outbound` allows (`None`: nothing).
    pub fn new(middleware: Arc<str>, state: Arc<State>, memory_limit: usize, outbound: Option<Arc<Outbound>>) -> Self {
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: http::OutboundHooks {
                policy: outbound,
                next: None,
                next_forced: false,
                sent: 0,
            },
            limits: Limits {
                inner: StoreLimitsBuilder::new()
                    .memory_size(memory_limit)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_high_water: 0,
                refused: false,
                refused_size: 0,
            },
            middleware,
            state,
            meter: Arc::default(),
            deadline: Instant::now(),
            timed_out: false,
            calls: HostCalls::default(),
        }
    }

    /// Sets what outbound HTTP may reach (`None`: nothing), and says what it was.
    pub fn set_outbound(&mut self, policy: Option<Arc<Outbound>>) -> Option<Arc<Outbound>> {
        std::mem::replace(&mut self.outbound.policy, policy)
    }

    /// Where the `wasi:http` link this store runs sends requests to its own request's
    /// authority (WASI 0.2) or through its imported `handler` (WASI 0.3): the rest of the chain,
    /// for one request; `None` once that request is done, so that an idle instance holds nothing
    /// of it (its span, its chain, its context).
    pub fn set_next_hop(&mut self, next: Option<NextHop>) {
        self.outbound.next = next;
    }

    /// The host calls made since the last time this was called (so: during the call just made).
    pub fn take_calls(&mut self) -> HostCalls {
        let http = std::mem::take(&mut self.outbound.sent);
        HostCalls {
            http,
            ..std::mem::take(&mut self.calls)
        }
    }

    /// `key` in this middleware's namespace (names have no `:`).
    fn namespaced(&self, key: &str) -> String {
        format!("{}:{key}", self.middleware)
    }
}

/// wasmtime's [`StoreLimits`], also recording how large a linear memory has grown (a reused
/// instance is retired past its `max-memory`).
pub struct Limits {
    inner: StoreLimits,
    /// The largest linear memory size granted so far (initial sizes included), in bytes.
    pub memory_high_water: usize,
    /// Set when a growth past `memory-limit` was refused: the call's trap is the memory limit's.
    pub refused: bool,
    /// The size the last refused growth asked for, in bytes.
    pub refused_size: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let granted = self.inner.memory_growing(current, desired, maximum);
        match granted {
            Ok(true) => self.memory_high_water = self.memory_high_water.max(desired),
            Ok(false) | Err(_) => {
                self.refused = true;
                self.refused_size = desired;
            }
        }
        granted
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl bindings::types::Host for HostState {}

/// Adds WASI 0.2 and 0.3, `wasi:http` 0.3's `types` and `client`, and its `handler` import bound
/// to the next hop, to `linker` (the WASI 0.3 engine's): what a `wasi:http/middleware` component
/// imports.
pub fn add_p3_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::component::{Accessor, Resource};
    use wasmtime_wasi_http::WasiHttp;
    use wasmtime_wasi_http::p3::bindings::http::client::HostWithStore;
    use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
    use wasmtime_wasi_http::p3::{Request, Response};

    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)?;
    wasmtime_wasi_http::p3::add_to_linker(linker)?;
    // The next hop: a request through the imported `handler` goes on through the rest of the
    // chain, whatever its authority (sent as `wasi:http/client` sends, with the hooks told so).
    linker.instance("wasi:http/handler@0.3.0")?.func_wrap_concurrent(
        "handle",
        |accessor: &Accessor<HostState>, (request,): (Resource<Request>,)| {
            Box::pin(async move {
                accessor.with(|mut store| store.get().outbound.next_forced = true);
                let http = accessor.with_getter::<WasiHttp>(<HostState as WasiHttpView>::http);
                let sent = <WasiHttp as HostWithStore<HostState>>::send(&http, request).await;
                accessor.with(|mut store| store.get().outbound.next_forced = false);
                let answer: Result<Resource<Response>, ErrorCode> = match sent {
                    Ok(response) => Ok(response),
                    Err(e) => Err(e.downcast()?),
                };
                Ok((answer,))
            })
        },
    )?;
    Ok(())
}

/// Adds WASI, `wasi:http` and sluice's interfaces to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::types::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    bindings::state::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    bindings::log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}
