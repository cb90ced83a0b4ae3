//! `sluice new middleware NAME --lang rust|js|python`: a buildable middleware project.
//!
//! Each language's project is its SDK's example (`middleware/examples/hello`,
//! `middleware/sdk-js/example`, `middleware/sdk-python/example`) with the SDK and the WIT
//! contract vendored beside it, a `Makefile` whose `make` builds `NAME.wasm`, and a README that
//! says how to run and hot-swap it. Everything is embedded in the binary: the project builds with
//! the language's own toolchain, without this repository.

use std::fmt;
use std::path::{Path, PathBuf};

/// The languages a middleware project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with the `sluice-sdk` crate (vendored) and `cargo`.
    Rust,
    /// JavaScript, with `sluice.js` and componentize-js (npm).
    Js,
    /// Python, with `sluice.py` and componentize-py (PyPI).
    Python,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rust" | "rs" => Ok(Lang::Rust),
            "js" | "javascript" => Ok(Lang::Js),
            "python" | "py" => Ok(Lang::Python),
            other => Err(format!("unknown language `{other}`: one of rust, js, python")),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
        })
    }
}

const WIT: &str = include_str!("../wit/middleware.wit");
const RUST_TOOLCHAIN: &str = include_str!("../rust-toolchain.toml");

const RUST_APP: &str = include_str!("../middleware/examples/hello/src/lib.rs");
const RUST_SDK_LIB: &str = include_str!("../middleware/sdk/src/lib.rs");
const RUST_SDK_HTTP: &str = include_str!("../middleware/sdk/src/http.rs");
const RUST_SDK_HEAD: &str = include_str!("../middleware/sdk/src/head.rs");
const JS_APP: &str = include_str!("../middleware/sdk-js/example/app.js");
const JS_SDK: &str = include_str!("../middleware/sdk-js/sluice.js");
const JS_PACKAGE: &str = include_str!("../middleware/sdk-js/package.json");
const PY_APP: &str = include_str!("../middleware/sdk-python/example/app.py");
const PY_SDK: &str = include_str!("../middleware/sdk-python/sluice.py");
const PY_REQUIREMENTS: &str = include_str!("../middleware/sdk-python/requirements.txt");

/// The files of a new `lang` project for middleware `name`, as (relative path, content).
pub fn files(name: &str, lang: Lang) -> Vec<(PathBuf, String)> {
    let mut files = vec![
        (PathBuf::from("wit/middleware.wit"), WIT.to_owned()),
        (PathBuf::from("README.md"), readme(name, lang)),
        (PathBuf::from("Makefile"), makefile(name, lang)),
        (PathBuf::from(".gitignore"), gitignore(lang).to_owned()),
    ];
    match lang {
        Lang::Rust => {
            files.push((PathBuf::from("Cargo.toml"), rust_manifest(name)));
            // The toolchain sluice's own guests build with, the wasm32-wasip2 target included.
            files.push((PathBuf::from("rust-toolchain.toml"), RUST_TOOLCHAIN.to_owned()));
            files.push((PathBuf::from("src/lib.rs"), RUST_APP.to_owned()));
            files.push((PathBuf::from("sdk/Cargo.toml"), RUST_SDK_MANIFEST.to_owned()));
            // The SDK finds the WIT contract beside it, not two levels up as in sluice's tree.
            let lib = RUST_SDK_LIB.replace("path: \"../../wit\"", "path: \"../wit\"");
            files.push((PathBuf::from("sdk/src/lib.rs"), lib));
            files.push((PathBuf::from("sdk/src/http.rs"), RUST_SDK_HTTP.to_owned()));
            files.push((PathBuf::from("sdk/src/head.rs"), RUST_SDK_HEAD.to_owned()));
        }
        Lang::Js => {
            files.push((PathBuf::from("app.js"), JS_APP.to_owned()));
            files.push((PathBuf::from("sluice.js"), JS_SDK.to_owned()));
            let package = JS_PACKAGE
                .replace("\"sluice-middleware-sdk\"", &format!("{name:?}"))
                .replace(
                    "Write sluice middleware in JavaScript: sluice.js, and the pinned componentize-js that builds it into a component",
                    &format!("The sluice middleware `{name}`"),
                );
            files.push((PathBuf::from("package.json"), package));
        }
        Lang::Python => {
            files.push((PathBuf::from("app.py"), PY_APP.to_owned()));
            files.push((PathBuf::from("sluice.py"), PY_SDK.to_owned()));
            files.push((PathBuf::from("requirements.txt"), PY_REQUIREMENTS.to_owned()));
        }
    }
    files
}

/// Writes a new `lang` project for middleware `name` into `dir`, which must not exist yet.
pub fn create(dir: &Path, name: &str, lang: Lang) -> Result<(), String> {
    check_name(name)?;
    if dir.exists() {
        return Err(format!("`{}` already exists: choose another directory", dir.display()));
    }
    for (path, content) in files(name, lang) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    Ok(())
}

/// A middleware name is what a config names it by and its file is called: `[a-z][a-z0-9-]*`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let good = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 64;
    if good {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a middleware name: a lowercase letter, then lowercase letters, digits and `-`"
        ))
    }
}

const RUST_SDK_MANIFEST: &str = r#"[package]
name = "sluice-sdk"
description = "Write sluice middleware: the WIT bindings, a trait with a default for every phase, one export macro"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
wit-bindgen = "0.57"
serde_json = "1"
wasip2 = "1"
"#;

fn rust_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = {{ path = "sdk" }}
serde_json = "1"

# A project of its own, even inside another cargo workspace.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
"#
    )
}

fn makefile(name: &str, lang: Lang) -> String {
    let body = match lang {
        Lang::Rust => format!(
            r#"# `make` builds the component {name}.wasm (needs the wasm32-wasip2 target:
# `rustup target add wasm32-wasip2`).
CARGO ?= cargo
TARGET_DIR ?= target

{name}.wasm: Cargo.toml $(wildcard src/*.rs sdk/src/*.rs) wit/middleware.wit
	CARGO_TARGET_DIR=$(TARGET_DIR) $(CARGO) build --release --target wasm32-wasip2
	cp $(TARGET_DIR)/wasm32-wasip2/release/{crate}.wasm $@.tmp && mv $@.tmp $@
"#,
            crate = name.replace('-', "_")
        ),
        Lang::Js => format!(
            r#"# `make` builds the component {name}.wasm (installs the pinned componentize-js first).
COMPONENTIZE_JS ?= node_modules/.bin/componentize-js

{name}.wasm: app.js sluice.js wit/middleware.wit $(COMPONENTIZE_JS)
	$(COMPONENTIZE_JS) app.js --wit wit --world-name middleware -o $@.tmp && mv $@.tmp $@

node_modules/.bin/componentize-js: package.json
	npm install --no-audit --no-fund
	touch $@
"#
        ),
        Lang::Python => format!(
            r#"# `make` builds the component {name}.wasm (with componentize-py: `pip install -r requirements.txt`).
COMPONENTIZE_PY ?= componentize-py

{name}.wasm: app.py sluice.py wit/middleware.wit
	$(COMPONENTIZE_PY) -d wit -w middleware componentize app -o $@.tmp && mv $@.tmp $@
"#
        ),
    };
    // The component is replaced by a rename: a sluice watching it never reads half a file.
    format!("{body}\n.PHONY: clean\nclean:\n\trm -f {name}.wasm\n")
}

fn gitignore(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "/target\n*.wasm\n",
        Lang::Js => "/node_modules\n*.wasm\n",
        Lang::Python => "__pycache__/\n*.wasm\n",
    }
}

fn readme(name: &str, lang: Lang) -> String {
    let (source, toolchain) = match lang {
        Lang::Rust => (
            "src/lib.rs",
            "cargo and the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`)",
        ),
        Lang::Js => (
            "app.js",
            "Node.js 20+ and npm (`make` installs the pinned componentize-js)",
        ),
        Lang::Python => ("app.py", "componentize-py (`pip install -r requirements.txt`)"),
    };
    format!(
        r#"# {name}

A sluice middleware in {lang}, written by `sluice new middleware {name} --lang {lang}`.
It greets the client by the name in `x-name`: the upstream gets `x-hello: hello, NAME`, the
client gets `x-hello-lang: {lang}` back. Change `{source}` to make it yours.

## Build

Needs {toolchain}.

    make            # builds {name}.wasm

## Run it in sluice

Name the component in sluice's config and put it on a route:

```toml
[middleware.{name}]
component = "{name}/{name}.wasm"     # relative to the config file
config = {{ greeting = "hello" }}

[[route]]
name = "api"
path-prefix = "/"
upstream = "api"
middleware = ["{name}"]
```

## Change it while sluice runs

Edit `{source}` and run `make` again: sluice watches the component file and swaps the new
version in without dropping a request (`make` replaces the file by a rename, so sluice never
reads half of it). Or upload it through the admin API:

    curl -X PUT --data-binary @{name}.wasm -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN" \
      http://127.0.0.1:9090/admin/middleware/{name}/component

The contract is `wit/middleware.wit`; the SDK beside `{source}` has every phase defaulted, so
a middleware implements only the phases it needs.
"#
    )
}
