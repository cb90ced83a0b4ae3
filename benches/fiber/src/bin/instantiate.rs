//! What a fresh instance costs by the component's shape: the same middleware built for
//! `wasm32-wasip2` (Rust's std links WASI, and the component carries the adapter's core
//! instances and the WASI imports) and for `wasm32-unknown-unknown` made a component with no
//! WASI at all. A core module given here is made a component first (`wit-component`). Times
//! `instantiate_async` and the drop of the store (the memory reset), then the same with `init`
//! and one `on-response-headers` call, on an engine configured as sluice's. Prints µs each.
//!
//!   cargo run --release --bin instantiate -- A.wasm B.wasm

use std::time::{Duration, Instant};

use fiber::Host;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "sluice:middleware/compact-middleware",
    imports: { default: async },
    exports: { default: async },
});

fn store(engine: &Engine) -> Store<Host> {
    let mut store = Store::new(engine, Host::new());
    store.set_epoch_deadline(1_000_000);
    store
}

fn component(engine: &Engine, path: &str) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path)?;
    let bytes = if wasmparser::Parser::is_core_wasm(&bytes) {
        wit_component::ComponentEncoder::default()
            .module(&bytes)
            .and_then(|encoder| encoder.validate(true).encode())
            .map_err(|e| wasmtime::Error::msg(format!("{e:#}")))?
    } else {
        bytes
    };
    Component::new(engine, &bytes)
}

fn main() -> wasmtime::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(100)
        .total_core_instances(1000)
        .total_memories(200)
        .total_tables(1000)
        .total_stacks(100)
        .max_memory_size(1 << 30)
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .table_keep_resident(64 << 10);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_reservation(4 << 30)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let pres = paths
        .iter()
        .map(|path| {
            let component = component(&engine, path)?;
            let names: Vec<String> = component
                .component_type()
                .imports(&engine)
                .map(|(name, _)| name.to_owned())
                .collect();
            let imports = format!("{} ({})", names.len(), names.join(", "));
            println!(
                "{path}: {imports} imports, {} bytes compiled",
                component.serialize()?.len()
            );
            CompactMiddlewarePre::new(linker.instantiate_pre(&component)?)
        })
        .collect::<wasmtime::Result<Vec<_>>>()?;
    let request = [0u8; 32];
    let response = [200, 0, 0, 0, 0, 0];
    let n = 20_000;
    for round in 1..=3 {
        for (path, pre) in paths.iter().zip(&pres) {
            let mut alone = Duration::ZERO;
            let mut with_call = Duration::ZERO;
            for _ in 0..n {
                let started = Instant::now();
                let mut s = store(&engine);
                rt.block_on(pre.instantiate_async(&mut s))?;
                drop(s);
                alone += started.elapsed();
                let started = Instant::now();
                let mut s = store(&engine);
                let instance = rt.block_on(pre.instantiate_async(&mut s))?;
                rt.block_on(instance.call_init(&mut s, r#"{"name":"bench"}"#))?
                    .map_err(wasmtime::Error::msg)?;
                rt.block_on(instance.call_on_response_headers(&mut s, &request, &response))?;
                drop(s);
                with_call += started.elapsed();
            }
            let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            println!(
                "round {round}: {path}: instantiate + drop {:.1} µs; + init + one call {:.1} µs",
                us(alone),
                us(with_call)
            );
        }
    }
    Ok(())
}
