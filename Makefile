# sluice: the two front-door commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: bench-swap all setup build demo test lint bench check-configs clean

all: build

## Install what a fresh machine lacks (cmake, the wasm32-wasip2 target, python3, the JS and Python
## middleware toolchains).
setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build

## Run sluice in front of the embedded echo upstream and print what to try: the four built-ins, a
## chain of Rust, JavaScript and Python middleware, a hot swap through the admin API.
demo: build
	scripts/build-polyglot.sh
	./target/debug/sluice demo

## The whole suite: unit and end-to-end tests, then `sluice check` on every example config.
test: setup
	$(CARGO) build --bins
	scripts/build-polyglot.sh
	$(CARGO) test -- --skip isolation::
	@# isolation:: compares a route's latency with and without a storm on another route: alone.
	$(CARGO) test --test all isolation::
	$(MAKE) --no-print-directory check-configs

check-configs:
	./target/debug/sluice check --config config/*.toml

## Formatting and clippy, as CI runs them: the host, then the wasm32-wasip2 guests, then the JS and
## Python sources.
lint: setup
	python3 scripts/check-layers.py src
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd middleware && $(CARGO) fmt --all -- --check
	cd middleware && $(CARGO) clippy --release --target wasm32-wasip2 --workspace -- -D warnings
	@# The JavaScript and Python SDKs, examples and probes parse.
	for f in middleware/sdk-js/sluice.js middleware/sdk-js/example/app.js middleware/probe/probe.js; do node --check $$f || exit 1; done
	python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' \
	  middleware/sdk-python/sluice.py middleware/sdk-python/example/app.py middleware/probe/probe.py

## Whole-proxy load test against nginx, then the chain's cost against Envoy's filters (release
## build); see benches/load.sh and benches/peers.sh.
bench:
	@scripts/setup.sh bench
	benches/load.sh
	benches/peers.sh

## Hot swap: trigger-to-serving times and latency during swaps (release build); see benches/swap.sh.
bench-swap:
	@scripts/setup.sh bench
	benches/swap.sh

clean:
	$(CARGO) clean
