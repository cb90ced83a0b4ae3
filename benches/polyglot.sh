#!/usr/bin/env bash
# What a middleware costs in each language: the same middleware (the SDKs' example, `hello`) in
# Rust, JavaScript and Python, one at a time in front of nginx.
#
#   benches/polyglot.sh                    # release build; DURATION=5 seconds of wrk per figure
#   SLUICE=target/debug/sluice benches/polyglot.sh
#
# Prints, per language and instance strategy (`reused`, the default, and `fresh`):
#   size     the component file (KiB)
#   cold     seconds from exec to listening with an empty artifact cache, and the load's took_ms
#            (compile; for `fresh`, also init under wizer and compiling the snapshot)
#   cached   the same with the cache the cold start wrote
#   rss      sluice's resident memory (MiB) once listening (cached start), and after the load
#   p50/p99  request latency through the middleware, one connection (wrk -c1), next to the same
#            sluice's route without middleware in the same run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"

SLUICE=${SLUICE:-$root/target/release/sluice}
DURATION=${DURATION:-5}
PORT=${PORT:-18760}
UP=${UP:-18761}
[[ -x $SLUICE ]] || { echo "polyglot.sh: no $SLUICE; cargo build --release (or set SLUICE)" >&2; exit 1; }
need nginx wrk python3 curl
"$root/scripts/build-polyglot.sh"
profile_dir=$(dirname "$SLUICE")
rust_wasm=$(ls -t "$profile_dir"/build/sluice-*/out/middleware-target/wasm32-wasip2/release/hello.wasm 2>/dev/null | head -1)
[[ -f $rust_wasm ]] || { echo "polyglot.sh: no hello.wasm next to $SLUICE; rebuild it" >&2; exit 1; }

nginx_conf up 1 "server { listen 127.0.0.1:$UP; location / { return 200 'ok'; } }"
wait_port "$UP"

config() { # wasm instances cache : writes $work/sluice.toml
  cat > "$work/sluice.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
threads = 1
cache-dir = "$3"
watch = false

[upstreams.up]
targets = ["127.0.0.1:$UP"]

[middleware.hello]
component = "$1"
instances = "$2"

[[route]]
name = "none"
path-prefix = "/none"
upstream = "up"

[[route]]
name = "mw"
upstream = "up"
middleware = ["hello"]
TOML
}

start() { # log : starts sluice, waits until it listens; sets pid and took (seconds to listening)
  local t0=$EPOCHREALTIME
  "$SLUICE" run --config "$work/sluice.toml" 2> "$work/$1" &
  pid=$!
  pids+=("$pid")
  wait_port "$PORT" 3000
  took=$(echo "$EPOCHREALTIME - $t0" | bc)
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

load_ms() { grep -o 'took_ms=[0-9.]*' "$work/$1" | head -1 | grep -o '[0-9.]*$' | xargs printf '%.0f'; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

latency() { # path : "p50 p99" in microseconds over DURATION seconds, one connection
  curl -sf "http://127.0.0.1:$PORT$1" -H 'x-name: bench' > /dev/null
  wrk -t1 -c1 -d"${DURATION}s" --latency -H 'x-name: bench' "http://127.0.0.1:$PORT$1" \
    | awk '
      function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1e6 }
      $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) }
      END { printf "%.0f %.0f", p50, p99 }'
}

printf '%-8s %-7s %9s %16s %16s %14s %20s %20s\n' lang inst size-KiB cold-s/load-ms cached-s/load-ms rss-MiB p50/p99-none-us p50/p99-mw-us
for lang in rust js python; do
  case $lang in
    rust) wasm=$rust_wasm ;;
    js) wasm=$root/target/polyglot/hello_js.wasm ;;
    python) wasm=$root/target/polyglot/hello_py.wasm ;;
  esac
  size=$(($(stat -c %s "$wasm") / 1024))
  for instances in reused fresh; do
    cache="$work/cache-$lang-$instances"
    config "$wasm" "$instances" "$cache"
    start "cold-$lang-$instances.log"
    cold="$(printf '%.1f' "$took")/$(load_ms "cold-$lang-$instances.log")"
    stop
    sync # the artifacts the cold start wrote (tens of MB) are on disk before anything is timed
    start "cached-$lang-$instances.log"
    cached="$(printf '%.2f' "$took")/$(load_ms "cached-$lang-$instances.log")"
    rss_start=$(rss_mib "$pid")
    # Right after a cold compile's process exits, the machine stalls requests for a few seconds
    # (tens of ms, a few times; seen on routes without middleware too): let it settle.
    sleep 3
    none=$(latency /none)
    mw=$(latency /x)
    rss_after=$(rss_mib "$pid")
    stop
    printf '%-8s %-7s %9s %16s %16s %14s %20s %20s\n' "$lang" "$instances" "$size" "$cold" "$cached" \
      "$rss_start/$rss_after" "${none/ //}" "${mw/ //}"
  done
done
