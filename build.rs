//! Builds the middleware components in `middleware/` (their own cargo workspace) for
//! `wasm32-wasip2`, so plain `cargo build` and `cargo test` work from a fresh clone.
//!
//! The nested cargo uses its own target directory under `OUT_DIR`, so it never waits on the outer
//! cargo's lock; it reruns only when the WIT or a guest source changes. The directory holding the
//! built `.wasm` files is exported as `sluice::artifacts::COMPONENT_DIR`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in [
        "wit",
        "middleware/Cargo.toml",
        "middleware/Cargo.lock",
        "middleware/sdk",
        "middleware/builtin",
        "middleware/test",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }

    let target_dir = out.join("middleware-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .current_dir(root.join("middleware"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        // What the outer cargo set for compiling sluice must not leak into the guests' build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{cargo}` to build the middleware components: {e}"));
    if !status.success() {
        panic!(
            "building the middleware components failed (see the output above); \
             `rustup target add wasm32-wasip2` if the target is missing"
        );
    }

    let components = target_dir.join("wasm32-wasip2").join("release");
    let mut code = format!(
        "/// The directory holding the middleware components this build compiled (`NAME.wasm`, with `-`\n\
         /// in crate names as `_`).\n\
         pub const COMPONENT_DIR: &str = {:?};\n",
        components.display().to_string()
    );

    // Every crate in middleware/builtin/ is embedded in the binary as `builtin:<crate name>`.
    let mut builtin: Vec<String> = std::fs::read_dir(root.join("middleware").join("builtin"))
        .expect("read middleware/builtin")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    builtin.sort();
    code.push_str("\n/// The names of the built-in middleware (`builtin:NAME`).\n");
    code.push_str(&format!("pub const BUILTIN_NAMES: &[&str] = &{builtin:?};\n"));
    code.push_str("\n/// The built-in middleware components embedded in this binary, by name.\n");
    code.push_str("pub const BUILTIN: &[(&str, &[u8])] = &[\n");
    for name in &builtin {
        let wasm = components.join(format!("{}.wasm", name.replace('-', "_")));
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("artifacts.rs"), code).expect("write OUT_DIR/artifacts.rs");
}
