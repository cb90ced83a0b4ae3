#!/usr/bin/env bash
# Start time and footprint of a config with many middleware: N `builtin:schema-validate`
# middleware, each with a distinct schema from the JSON-Schema-Test-Suite (schemas sluice's authors
# did not write), plus `auth-jwt`, `rate-limit` and `redact`, one route each.
#
#   benches/startup.sh                     # N=50, release build
#   N=200 benches/startup.sh
#   SLUICE=target/debug/sluice benches/startup.sh
#   CHECK=0 ...                            # skip timing `sluice check`
#
# Prints, for that config:
#   cold    seconds from exec to listening, empty artifact cache
#   warm    seconds from exec to listening, the cache the cold start wrote
#   reload  seconds from writing a config with one more schema middleware to that route serving
#   rss     the process's resident memory after the cold start, and after the reload (MiB)
#   check   seconds `sluice check` takes for the same config (empty cache)
#   per-mw  what each schema middleware adds to RSS: (rss(N) - rss(N/2)) / (N - N/2), both warm,
#           when started, and after one request to each route (each then has an idle instance)
#   where   the warm RSS broken down by what holds it (benches/rss.py), started and served
# and what the log says each load took (took_ms, cold).
# INSTANCES=fresh gives every middleware `instances = "fresh"` (a snapshot per config).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"

N=${N:-50}
SLUICE=${SLUICE:-$root/target/release/sluice}
PORT=${PORT:-18740}
INSTANCES=${INSTANCES:-reused}
suite="$root/target/json-schema-test-suite/tests/draft2020-12"
[[ -x $SLUICE ]] || { echo "startup.sh: no $SLUICE; cargo build --release (or set SLUICE)" >&2; exit 1; }
[[ -d $suite ]] || { echo "startup.sh: no JSON-Schema-Test-Suite; run scripts/setup.sh" >&2; exit 1; }
need python3 curl

# config N [extra] : writes $work/sluice.toml with N schema middleware (N+1 with extra)
config() {
  python3 - "$suite" "$1" "$PORT" "$work" "$INSTANCES" "${2:-}" > "$work/sluice.toml" <<'PY'
import json, os, sys
suite, n, port, work, instances, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
schemas = []
for name in sorted(os.listdir(suite)):
    if not name.endswith(".json"):
        continue
    for group in json.load(open(os.path.join(suite, name))):
        schema = group["schema"]
        if not isinstance(schema, dict):
            continue
        text = json.dumps({k: v for k, v in schema.items() if k != "$schema"})
        if "http" in text or "urn:" in text:  # remote references: a component has no network
            continue
        schemas.append(schema)
# Distinct schemas; more than the suite holds get a distinct title each.
if n + 1 > len(schemas):
    schemas = [dict(s, title=f"copy {i}") for i, s in enumerate(schemas * (n // len(schemas) + 2))]
count = n + (1 if extra else 0)
print(f'''[server]
listen = ["127.0.0.1:{port}"]
threads = 2
cache-dir = "{work}/cache"

[upstreams.up]
targets = ["127.0.0.1:1"]

[middleware.jwt]
component = "builtin:auth-jwt"
config = {{ algorithms = ["HS256"], secret = "a 32-byte secret for HS256 tokens" }}
instances = "{instances}"

[middleware.limit]
component = "builtin:rate-limit"
config = {{ key = "client-ip", rate = 100, per = "1s" }}
instances = "{instances}"

[middleware.redact]
component = "builtin:redact"
config = {{ patterns = ["email", "credit-card"] }}
instances = "{instances}"

[[route]]
name = "guarded"
path-prefix = "/guarded"
upstream = "up"
middleware = ["jwt", "limit", "redact"]''')
for i in range(count):
    print(f'''
[middleware.schema-{i}]
component = "builtin:schema-validate"
config = {{ schema = {json.dumps(json.dumps(schemas[i]))} }}
instances = "{instances}"

[[route]]
name = "s{i}"
path-prefix = "/s{i}/"
upstream = "up"
middleware = ["schema-{i}"]''')
PY
}

not_json() { # route index : the status a body that is not JSON gets (400: its schema middleware ran)
  curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' --data-binary 'not json' "http://127.0.0.1:$PORT/s$1/"
}
serve_all() { # n : one request to each of the first n schema routes
  for i in $(seq 0 $(($1 - 1))); do [[ $(not_json "$i") == 400 ]] || { echo "startup.sh: /s$i did not answer 400" >&2; exit 1; }; done
}

rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

since() { echo "$(date +%s.%N) - $1" | bc; }

start() { # log : starts sluice on $work/sluice.toml and waits until it listens; sets pid and took
  local t0
  t0=$(date +%s.%N)
  "$SLUICE" run --config "$work/sluice.toml" 2>"$work/$1" &
  pid=$!
  pids+=("$pid")
  wait_port "$PORT" 6000
  took=$(since "$t0")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

config "$N"
check=skipped
if [[ ${CHECK:-1} == 1 ]]; then
  rm -rf "$work/cache"
  t0=$(date +%s.%N)
  "$SLUICE" check --config "$work/sluice.toml" >/dev/null 2>"$work/check.log"
  check=$(printf %.2f "$(since "$t0")")
fi

rm -rf "$work/cache"
start cold.log
cold=$took
rss_cold=$(rss_mib "$pid")
loads() { # log : the took_ms the log's "middleware loaded" lines give
  grep -o '"took_ms":[0-9.]*\|took_ms=[0-9.]*' "$work/$1" | grep -o '[0-9.]*$' | sort -n \
    | awk '{ a[NR] = $1 } END { printf "loads: median %.1f ms, max %.0f ms, %d of them", a[int((NR + 1) / 2)], a[NR], NR }'
}

# One more schema middleware, by a config write and SIGHUP; timed until its route answers 400 for
# a body that is not JSON (the schema middleware's own answer: it is serving).
config "$N" extra
t0=$(date +%s.%N)
kill -HUP "$pid"
until [[ $(not_json "$N") == 400 ]]; do
  sleep 0.02
done
reload=$(since "$t0")
rss_reload=$(rss_mib "$pid")
stop

config "$N"
start warm.log
warm=$took
rss_warm=$(rss_mib "$pid")
breakdown_warm=$(python3 "$root/benches/rss.py" "$pid")
serve_all "$N"
rss_warm_served=$(rss_mib "$pid")
breakdown_served=$(python3 "$root/benches/rss.py" "$pid")
stop

half=$((N / 2))
config "$half"
start half.log
rss_half=$(rss_mib "$pid")
serve_all "$half"
rss_half_served=$(rss_mib "$pid")
stop
per_mw=$(echo "scale=2; ($rss_warm - $rss_half) / ($N - $half)" | bc)
per_mw_served=$(echo "scale=2; ($rss_warm_served - $rss_half_served) / ($N - $half)" | bc)

echo "startup.sh: $N schema-validate + auth-jwt + rate-limit + redact, instances = \"$INSTANCES\", $(nproc) cores, $($SLUICE --version 2>/dev/null || echo sluice)"
printf '  %-7s %6.2f s   (%s)\n' cold "$cold" "$(loads cold.log)" warm "$warm" "$(loads warm.log)"
printf '  %-7s %6.2f s\n' reload "$reload"
printf '  %-7s %6s s\n' check "$check"
printf '  %-7s %6s MiB after the cold start, %s after the reload, %s warm, %s warm after one request per route\n' rss "$rss_cold" "$rss_reload" "$rss_warm" "$rss_warm_served"
printf '  %-7s %6s MiB per schema middleware started, %s MiB once it served (warm, %d vs %d of them)\n' per-mw "$per_mw" "$per_mw_served" "$N" "$half"
echo "  where the warm RSS goes (benches/rss.py), started:"
echo "$breakdown_warm" | sed 's/^/    /'
echo "  and after one request per route:"
echo "$breakdown_served" | sed 's/^/    /'
