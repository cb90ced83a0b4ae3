//! One `on-response-headers` call of a `compact-middleware` component with empty heads, through
//! an async fiber (`call_async`, as sluice calls every middleware) and without one (`call`, which
//! wasmtime allows only when every import the component is linked with is sync). Both stores
//! check an epoch deadline every 1 ms tick, as sluice's do. Prints nanoseconds per call.

use std::time::{Duration, Instant};

use fiber::Host;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

mod with_fiber {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sluice:middleware/compact-middleware",
        imports: { default: async },
        exports: { default: async },
    });
}

mod without_fiber {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "sluice:middleware/compact-middleware",
    });
}

fn store(engine: &Engine, yields: bool) -> Store<Host> {
    let mut store = Store::new(engine, Host::new());
    store.epoch_deadline_callback(move |_| {
        Ok(match yields {
            true => UpdateDeadline::Yield(1),
            false => UpdateDeadline::Continue(1),
        })
    });
    store.set_epoch_deadline(1);
    store
}

fn main() -> wasmtime::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../../middleware/target/wasm32-wasip2/release/stamp.wasm".into());
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(PoolingAllocationConfig::new()));
    let engine = Engine::new(&config)?;
    let ticker = engine.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(1));
            ticker.increment_epoch();
        }
    });
    let component = Component::from_file(&engine, &path)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;

    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let pre = with_fiber::CompactMiddlewarePre::new(linker.instantiate_pre(&component)?)?;
    let mut fiber_store = store(&engine, true);
    let fibered = rt.block_on(pre.instantiate_async(&mut fiber_store))?;
    let init = rt.block_on(fibered.call_init(&mut fiber_store, r#"{"name":"bench"}"#))?;
    init.map_err(wasmtime::Error::msg)?;

    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let pre = without_fiber::CompactMiddlewarePre::new(linker.instantiate_pre(&component)?)?;
    let mut plain_store = store(&engine, false);
    let plain = pre.instantiate(&mut plain_store)?;
    plain
        .call_init(&mut plain_store, r#"{"name":"bench"}"#)?
        .map_err(wasmtime::Error::msg)?;

    // Empty heads, encoded as `runtime::head` does: six empty strings, no headers, no context;
    // status 200, no headers.
    let request = [0u8; 32];
    let response = [200, 0, 0, 0, 0, 0];
    let calls = 200_000;
    for round in 1..=3 {
        let started = Instant::now();
        for _ in 0..calls {
            rt.block_on(fibered.call_on_response_headers(&mut fiber_store, &request, &response))?;
        }
        let with = started.elapsed().as_nanos() as f64 / calls as f64;
        let started = Instant::now();
        for _ in 0..calls {
            rt.block_on(async { plain.call_on_response_headers(&mut plain_store, &request, &response) })?;
        }
        let without = started.elapsed().as_nanos() as f64 / calls as f64;
        println!("round {round}: with a fiber {with:.0} ns a call, without {without:.0} ns");
    }
    Ok(())
}
