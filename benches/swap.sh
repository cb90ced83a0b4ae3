#!/usr/bin/env bash
# Hot swap, measured on a release sluice in front of an nginx upstream:
#   1. time from a trigger to the first new request served by the new version, for
#      - an upload of a component already in the artifact cache (cached),
#      - an upload after the artifact cache was emptied (uncached: compiled and initialized),
#      - a component file replaced by rename (cached; includes the watcher's 100 ms debounce),
#      - a config edit reloaded with POST /admin/reload (cached);
#   2. in-flight latency: wrk's p50/p99 without swaps, then while a swap runs every 100 ms.
#
#   make bench-swap               # installs nginx and wrk if missing, builds release, runs
#   SWAPS=50 DURATION=10s benches/swap.sh
set -euo pipefail

SWAPS=${SWAPS:-40}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
UPSTREAM_PORT=${UPSTREAM_PORT:-18091}
SLUICE_PORT=${SLUICE_PORT:-18093}
ADMIN_PORT=${ADMIN_PORT:-18094}

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"
need wrk nginx

echo "building sluice (release)..." >&2
(cd "$root" && cargo build --release --quiet --bin sluice)
components=$(dirname "$(ls -t "$root"/target/release/build/sluice-*/out/middleware-target/wasm32-wasip2/release/version_one.wasm | head -1)")
cp "$components/version_one.wasm" "$work/one.wasm"
cp "$components/version_two.wasm" "$work/two.wasm"
cp "$work/one.wasm" "$work/v.wasm"

nginx_conf upstream 1 "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { default_type text/plain; return 200 'ok\n'; } }"

cat > "$work/sluice.toml" <<CONF
[server]
listen = ["127.0.0.1:$SLUICE_PORT"]
threads = 2
admin = "127.0.0.1:$ADMIN_PORT"
admin-token-env = "SLUICE_ADMIN_TOKEN"
cache-dir = "cache"

[upstreams.up]
targets = ["127.0.0.1:$UPSTREAM_PORT"]

[middleware.ver]
component = "v.wasm"
version = "a"

[[route]]
name = "all"
upstream = "up"
middleware = ["ver"]
CONF
export SLUICE_ADMIN_TOKEN=bench-token
RUST_LOG=warn "$root/target/release/sluice" run --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
wait_port "$SLUICE_PORT"

echo "trigger -> serving, $SWAPS swaps each" >&2
WORK=$work SWAPS=$SWAPS SLUICE_PORT=$SLUICE_PORT ADMIN_PORT=$ADMIN_PORT python3 - <<'PY'
import http.client, os, shutil, statistics, time

work, swaps = os.environ["WORK"], int(os.environ["SWAPS"])
proxy = http.client.HTTPConnection("127.0.0.1", int(os.environ["SLUICE_PORT"]))
admin = http.client.HTTPConnection("127.0.0.1", int(os.environ["ADMIN_PORT"]))
auth = {"Authorization": "Bearer " + os.environ["SLUICE_ADMIN_TOKEN"]}
wasm = {v: open(f"{work}/{v}.wasm", "rb").read() for v in ("one", "two")}

def version():
    proxy.request("GET", "/")
    resp = proxy.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    return resp.getheader("x-version")

def until(expected, started):
    while version() != expected:
        if time.perf_counter() - started > 30:
            raise SystemExit(f"swap.sh: `{expected}` not serving after 30 s")
    return (time.perf_counter() - started) * 1e3

def upload(v):
    admin.request("PUT", "/admin/middleware/ver/component", body=wasm[v], headers=auth)
    resp = admin.getresponse()
    body = resp.read()
    assert resp.status == 200, body

def admin_reload():
    admin.request("POST", "/admin/reload", headers=auth)
    resp = admin.getresponse()
    body = resp.read()
    assert resp.status == 200, body

def run(name, trigger):
    times = []
    for i in range(swaps):
        v = "two" if version() == "one" else "one"
        started = time.perf_counter()
        trigger(v)
        times.append(until(v, started))
    times.sort()
    print(f"{name:<44} median {statistics.median(times):8.1f} ms   p90 {times[int(len(times) * 0.9) - 1]:8.1f} ms   max {times[-1]:8.1f} ms")

def emptied_cache_upload(v):
    shutil.rmtree(f"{work}/cache", ignore_errors=True)
    os.makedirs(f"{work}/cache")
    upload(v)

def replace_file(v):
    shutil.copy(f"{work}/{v}.wasm", f"{work}/v.tmp")
    os.rename(f"{work}/v.tmp", f"{work}/v.wasm")

config = open(f"{work}/sluice.toml").read()
def edit_config(v):
    # The config names one.wasm or two.wasm; the watcher sees the edit too, the admin call is first.
    with open(f"{work}/sluice.toml.tmp", "w") as f:
        f.write(config.replace('"v.wasm"', f'"{v}.wasm"'))
    os.rename(f"{work}/sluice.toml.tmp", f"{work}/sluice.toml")
    admin_reload()

upload("two"); upload("one")  # both compiled into the cache once
run("upload, cached", upload)
run("upload, uncached (cache emptied)", emptied_cache_upload)
# Put both back in the cache, and hand the middleware back to the file: `one` is uploaded last, so
# seeing `two` means the file's reload dropped the upload (an upload lasts while the file holds
# what it replaced, and a replace within the same debounce could otherwise undo this one).
for v in ("two", "one"):
    upload(v)
replace_file("two"); until("two", time.perf_counter())
run("component file replaced (watcher, cached)", replace_file)
run("config edit + POST /admin/reload (cached)", edit_config)
PY

echo >&2
echo "in-flight latency (wrk -t1 -c$CONNS -d$DURATION, median of $ROUNDS rounds)" >&2
measure() {
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$SLUICE_PORT/")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "swap.sh: errors under load:" >&2; echo "$out" >&2; exit 1; fi
  awk '/^Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' <<<"$out"
}
swapping() { # uploads alternate versions every 100 ms until killed
  local v=one
  while true; do
    v=$([[ $v == one ]] && echo two || echo one)
    curl -fsS -o /dev/null -X PUT --data-binary "@$work/$v.wasm" -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN" \
      "http://127.0.0.1:$ADMIN_PORT/admin/middleware/ver/component"
    sleep 0.1
  done
}
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$SLUICE_PORT/" >/dev/null
quiet=() busy=()
for round in $(seq "$ROUNDS"); do
  quiet+=("$(measure)")
  swapping & swapper=$!
  busy+=("$(measure)")
  kill "$swapper"; wait "$swapper" 2>/dev/null || true
  echo "round $round: without swaps ${quiet[-1]} | swapping every 100 ms ${busy[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{rows[NR]=$0} END {print rows[int((NR + 1) / 2)]}'; }
printf '%-32s %12s %10s %10s\n' "" "req/s" "p50" "p99"
read -r r p50 p99 <<<"$(median "${quiet[@]}")"; printf '%-32s %12s %10s %10s\n' "without swaps" "$r" "$p50" "$p99"
read -r r p50 p99 <<<"$(median "${busy[@]}")"; printf '%-32s %12s %10s %10s\n' "a swap every 100 ms" "$r" "$p50" "$p99"
swaps=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^sluice_reloads_total\{trigger="upload",result="ok"\}/ {print $2}')
echo "uploads swapped in during the run: $swaps"
