#!/usr/bin/env bash
# Builds the JavaScript and Python middleware in this repository into components, in
# target/polyglot/: the probes the tests run (middleware/probe/) and each SDK's example.
#
#   scripts/build-polyglot.sh            # what is out of date (the tests run this themselves)
#
# Needs the pinned toolchains scripts/setup.sh installs: componentize-py (PyPI, pinned in
# middleware/sdk-python/requirements.txt) and componentize-js (npm, pinned in
# middleware/sdk-js/package.json, installed into middleware/sdk-js/node_modules).
#
# Neither toolchain builds reproducibly (the same source gives different bytes), and a component
# with new bytes is a new component to sluice (compiled again, ~20 s for an interpreter). So a
# component is rebuilt only when its inputs changed: their digest is kept next to it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/polyglot"
mkdir -p "$out"
# One build at a time (the tests and `make test` may both ask).
exec 9>"$out/.lock"
flock 9

say() { printf 'build-polyglot: %s\n' "$*" >&2; }

# componentize-py from PATH, or from python3's packages when its script is not on PATH (a
# `pip install --user`, or pyenv before a rehash).
if command -v componentize-py >/dev/null; then
  componentize_py=(componentize-py)
elif python3 -c 'import componentize_py' 2>/dev/null; then
  componentize_py=(python3 -c 'import sys, componentize_py; sys.argv[0] = "componentize-py"; sys.exit(componentize_py.script())')
else
  componentize_py=()
fi
componentize_js="$root/middleware/sdk-js/node_modules/.bin/componentize-js"

# build NAME LANG APP_FILE: the component NAME.wasm from APP_FILE and its language's SDK.
build() {
  local name=$1 lang=$2 app=$3
  local sdk inputs digest
  case $lang in
    python) sdk="$root/middleware/sdk-python/sluice.py" ;;
    js) sdk="$root/middleware/sdk-js/sluice.js" ;;
  esac
  inputs=("$root/$app" "$sdk" "$root/wit/middleware.wit")
  digest=$( (cat "${inputs[@]}"; echo "$lang"; cat "$root/middleware/sdk-python/requirements.txt" \
    "$root/middleware/sdk-js/package.json") | sha256sum | cut -d' ' -f1)
  if [[ -f "$out/$name.wasm" && "$(cat "$out/$name.digest" 2>/dev/null)" == "$digest" ]]; then
    return
  fi
  local stage="$out/stage/$name"
  rm -rf "$stage" && mkdir -p "$stage"
  cp "$root/$app" "$sdk" "$stage/"
  local started=$SECONDS
  case $lang in
    python)
      ((${#componentize_py[@]})) || { say "componentize-py is missing: run scripts/setup.sh"; exit 1; }
      (cd "$stage" && "${componentize_py[@]}" -d "$root/wit" -w middleware componentize \
        "$(basename "$app" .py)" -o "$out/$name.wasm.tmp" >/dev/null)
      ;;
    js)
      [[ -x "$componentize_js" ]] || { say "componentize-js is missing: run scripts/setup.sh"; exit 1; }
      (cd "$stage" && "$componentize_js" "$(basename "$app")" --wit "$root/wit" \
        --world-name middleware -o "$out/$name.wasm.tmp" >/dev/null)
      ;;
  esac
  mv "$out/$name.wasm.tmp" "$out/$name.wasm"
  echo "$digest" >"$out/$name.digest"
  say "$name.wasm ($lang, $(($(stat -c %s "$out/$name.wasm") / 1024)) KiB) in $((SECONDS - started)) s"
}

build probe_py python middleware/probe/probe.py
build probe_js js middleware/probe/probe.js
build hello_py python middleware/sdk-python/example/app.py
build hello_js js middleware/sdk-js/example/app.js
