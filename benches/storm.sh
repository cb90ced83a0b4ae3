#!/usr/bin/env bash
# Isolation under a hostile middleware, measured on a release sluice in front of an nginx upstream:
# a plain route's latency (wrk, CONNS connections) quiet, then while STORM connections send requests
# to another route whose middleware misbehaves on every call:
#   - hog:  a memory bomb (1 MiB at a time until `memory-limit = "16MiB"` stops it)
#   - spin: an endless loop (cut at `timeout = "20ms"`)
#   - trap: a panic
# then while the same connections, split four ways, send requests to a faulty upstream
# (benches/faulty_upstream.py: connections reset, bodies cut short, heads dripped a byte every
# 100 ms, silence), and while all seven faults run at once. A control row sends the four faults
# straight to the faulty upstream, not through sluice: what the storm's clients and the Python
# upstream take of the two cores by themselves.
# Prints req/s, p50 and p99 of the plain route per scenario (medians of ROUNDS rounds), the ratio
# of each p99 to the quiet one (the hardening issue's target: within 2x), and to the quiet run
# measured just before it in the same round (median over the rounds, then each), for the fault rows also
# to the control row's (what sluice's handling of the faults adds to what the storm costs the
# machine by itself), and the storm's own rate (requests a second its clients completed, summed
# over its paths: what sluice was answering; 0 for the control, whose faults never complete).
#
# The storm's clients and the Python upstream run at `nice` STORM_NICE (default 19): in production
# they are on other machines, and on two cores at normal priority they take the CPU the measured
# route's client and sluice need (STORM_NICE=0 gives the earlier figures). sluice, nginx and the
# plain route's wrk run at normal priority; the storm rate column shows what the storm still sent.
#
#   SLUICE=target/release/sluice benches/storm.sh      # a given build (e.g. an older one)
#   ROUNDS=3 DURATION=5s STORM=16 benches/storm.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-4}
STORM=${STORM:-16}
STORM_NICE=${STORM_NICE:-19}
UPSTREAM_PORT=${UPSTREAM_PORT:-18191}
SLUICE_PORT=${SLUICE_PORT:-18193}
FAULTY_PORT=${FAULTY_PORT:-18195}

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"
need wrk nginx

if [[ -z "${SLUICE:-}" ]]; then
  echo "building sluice (release)..." >&2
  (cd "$root" && cargo build --release --quiet --bin sluice)
  SLUICE="$root/target/release/sluice"
fi
components=$(dirname "$(ls -t "$root"/target/*/build/sluice-*/out/middleware-target/wasm32-wasip2/release/hog.wasm | head -1)")

nice -n "$STORM_NICE" python3 "$root/benches/faulty_upstream.py" "$FAULTY_PORT" &
pids+=($!)
nginx_conf upstream 1 "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { default_type text/plain; return 200 'ok\n'; } }"

cat > "$work/sluice.toml" <<CONF
[server]
listen = ["127.0.0.1:$SLUICE_PORT"]
threads = 2
cache-dir = "cache"

[upstreams.up]
targets = ["127.0.0.1:$UPSTREAM_PORT"]

[upstreams.faulty]
targets = ["127.0.0.1:$FAULTY_PORT"]
read-timeout = "500ms"
response-head-timeout = "1s"

[middleware.hog]
component = "$components/hog.wasm"
memory-limit = "16MiB"

[middleware.spin]
component = "$components/spin.wasm"
timeout = "20ms"

[middleware.trap]
component = "$components/trap.wasm"

[[route]]
name = "hog"
path-prefix = "/hog"
upstream = "up"
middleware = ["hog"]

[[route]]
name = "spin"
path-prefix = "/spin"
upstream = "up"
middleware = ["spin"]

[[route]]
name = "trap"
path-prefix = "/trap"
upstream = "up"
middleware = ["trap"]

[[route]]
name = "faulty"
path-prefix = "/faulty"
upstream = "faulty"

[[route]]
name = "plain"
upstream = "up"
CONF
RUST_LOG=error "$SLUICE" run --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)
wait_port "$SLUICE_PORT"

measure() {
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$SLUICE_PORT/")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "storm.sh: errors on the plain route:" >&2; echo "$out" >&2; exit 1; fi
  awk '/^Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' <<<"$out"
}
ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) print v/1000; else if (v ~ /ms$/) print v+0; else print v*1000 }'; }
over() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; } # a / b, two decimals
median() { # lines "req/s p50 p99 storm-req/s": the middle line by p99
  local row p99
  for row in "$@"; do p99=$(awk '{print $3}' <<<"$row"); echo "$(ms "$p99") $row"; done \
    | sort -n | awk '{ a[NR]=$2" "$3" "$4" "$5 } END { print a[int((NR+1)/2)] }'
}

# Starts a storm of `connections` on each of the paths given, for a measurement's length, through
# sluice (or at PORT when set).
storm() {
  local connections=$1 path i=0
  shift
  storms=()
  rm -f "$work"/storm.*.out
  for path in "$@"; do
    i=$((i + 1))
    nice -n "$STORM_NICE" wrk -t1 -c"$connections" -d"$(( ${DURATION%s} + 2 ))s" \
      "http://127.0.0.1:${PORT:-$SLUICE_PORT}$path" >"$work/storm.$i.out" 2>&1 &
    storms+=($!)
  done
  sleep 1
}
# Waits for the storm to end; sets `rate` to the requests a second its clients completed, summed.
calm() {
  wait "${storms[@]}" 2>/dev/null || true
  rate=$(cat "$work"/storm.*.out | awk '/^Requests\/sec/ { sum += $2 } END { printf "%d", sum }')
}

faults=(/faulty/reset /faulty/short /faulty/drip /faulty/silence)
scenarios=(hog spin trap faults control all)
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$SLUICE_PORT/" >/dev/null
declare -A result paired
# One scenario: the plain route quiet, then under the storm `start` starts. Each storm's p99 is
# also compared with the quiet run just before it (`paired`): the machine's speed moves between
# runs (a quiet p99 of 0.49 to 1.31 ms across one evening's runs), and a pair shares its moment.
scenario() {
  local name=$1 quiet row
  shift
  quiet=$(measure)
  result[quiet]+="$quiet 0;"
  "$@"
  row=$(measure)
  calm
  result[$name]+="$row $rate;"
  paired[$name]+="$(over "$(ms "$(awk '{print $3}' <<<"$row")")" "$(ms "$(awk '{print $3}' <<<"$quiet")")") "
}
for round in $(seq "$ROUNDS"); do
  for bad in hog spin trap; do
    scenario "$bad" storm "$STORM" "/$bad"
  done
  scenario faults storm $(( STORM / 4 )) "${faults[@]}"
  PORT=$FAULTY_PORT scenario control storm $(( STORM / 4 )) "${faults[@]}"
  scenario all storm $(( STORM / 7 + 1 )) /hog /spin /trap "${faults[@]}"
  echo "round $round done" >&2
done

printf '%-34s %10s %10s %10s %10s %12s %12s %22s\n' "plain route (wrk -c$CONNS)" "req/s" "p50" "p99" "p99/quiet" "p99/control" "storm req/s" "p99/quiet just before"
IFS=';' read -r -a rows <<<"${result[quiet]}"
read -r r p50 p99 _ <<<"$(median "${rows[@]}")"
quiet99=$(ms "$p99")
printf '%-34s %10s %10s %10s %10s %12s %12s %22s\n' "quiet" "$r" "$p50" "$p99" "1.00" "-" "-" "-"
IFS=';' read -r -a rows <<<"${result[control]}"
read -r _ _ control99 _ <<<"$(median "${rows[@]}")"
control99=$(ms "$control99")
for bad in "${scenarios[@]}"; do
  IFS=';' read -r -a rows <<<"${result[$bad]}"
  read -r r p50 p99 rate <<<"$(median "${rows[@]}")"
  ratio=$(over "$(ms "$p99")" "$quiet99")
  # The fault storms load the machine by themselves (their clients, the Python upstream, the
  # kernel's work for every reset connection); the control row is that load without sluice in
  # the storm's path, so this ratio is what sluice's handling of the faults adds.
  against_control=-
  [[ $bad == faults || $bad == all ]] \
    && against_control=$(over "$(ms "$p99")" "$control99")
  case $bad in
    faults) label="$(( STORM / 4 * 4 )) connections on 4 faults" ;;
    control) label="the same, straight to the upstream" ;;
    all) label="$(( (STORM / 7 + 1) * 7 )) connections on all 7" ;;
    *) label="$STORM connections on /$bad" ;;
  esac
  # The median of the paired ratios, then all of them, lowest first.
  pairs=$(tr ' ' '\n' <<<"${paired[$bad]}" | grep . | sort -n | tr '\n' ' ')
  pair_median=$(awk '{ print $(int((NF + 1) / 2)) }' <<<"$pairs")
  printf '%-34s %10s %10s %10s %10s %12s %12s %22s\n' "$label" "$r" "$p50" "$p99" "$ratio" "$against_control" "$rate" "$pair_median ($(sed 's/ $//' <<<"$pairs"))"
done
