#!/usr/bin/env bash
# Before/after on the request path: two sluice binaries, the same config, the same nginx upstream
# (a fixed 60-byte body), wrk against each in alternating rounds; prints both medians and the ratio,
# of req/s and of the proxy's CPU per request (utime + stime from /proc/PID/stat over each run:
# steadier than req/s on a shared machine).
#
#   git worktree add /tmp/before <commit>
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release --bin sluice)
#   cargo build --release --bin sluice
#   benches/ab.sh /tmp/before-target/release/sluice target/release/sluice
#
# ROUNDS (default 5), DURATION (10s), CONNS (32), PROXY_WORKERS (2) as in load.sh. The config is
# the plainest route (no middleware), so what differs is the proxy's own per-request work; with
# STAMP=path/to/stamp.wasm a second route, /chain, runs four `stamp` middleware (header phases,
# reused instances) and is measured too: what differs there is the chain's per-request work. With
# BUILTINS=1 a route /orders runs the four built-ins as load.sh's `POST /orders` rows do (default
# instances, an HS256 token, the 1 KiB order, the upstream's 842-byte page of customers redacted).
#
# The same binary on both sides compares two builds of the guests or two settings instead:
# BEFORE_GUESTS / AFTER_GUESTS (a directory of `auth_jwt.wasm`, `rate_limit.wasm`,
# `schema_validate.wasm`, `redact.wasm` and optionally `stamp.wasm`, e.g. a middleware/ target
# directory) replace that side's built-ins (and STAMP), and BEFORE_LINE / AFTER_LINE add a line to
# each of that side's middleware, e.g.
#   BUILTINS=1 AFTER_LINE='reuse = { max-requests = 1000 }' benches/ab.sh target/release/sluice target/release/sluice
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: benches/ab.sh BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$1 after=$2
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
PROXY_WORKERS=${PROXY_WORKERS:-2}
UPSTREAM_PORT=${UPSTREAM_PORT:-18091}
BEFORE_PORT=${BEFORE_PORT:-18092}
AFTER_PORT=${AFTER_PORT:-18093}

source "$(dirname "$0")/lib.sh"
need wrk nginx curl

data="$(cd "$(dirname "$0")" && pwd)/data"
customers=$(tr -d '\n' <"$data/customers.json")
secret="a 32-byte secret for HS256 tokens"
nginx_conf upstream 1 "server { listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type text/plain; return 200 'sixty bytes of fixed response body for the load benchmark!!\n'; }
    location /orders { default_type application/json; return 200 '$customers'; } }"

for side in before after; do
  port=$BEFORE_PORT bin=$before guests=${BEFORE_GUESTS:-} line=${BEFORE_LINE:-}
  [[ $side == after ]] && port=$AFTER_PORT bin=$after guests=${AFTER_GUESTS:-} line=${AFTER_LINE:-}
  stamp=${STAMP:-}
  [[ -n $stamp && -n $guests && -f $guests/stamp.wasm ]] && stamp=$guests/stamp.wasm
  mkdir -p "$work/$side"
  cat > "$work/$side/sluice.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
threads = $PROXY_WORKERS
watch = false

[upstreams.up]
targets = ["127.0.0.1:$UPSTREAM_PORT"]

[[route]]
name = "plain"
upstream = "up"
CONF
  if [[ -n ${STAMP:-} ]]; then
    for i in 1 2 3 4; do
      printf '\n[middleware.m%s]\ncomponent = "%s"\nconfig = { name = "m%s", phases = ["request-headers", "response-headers"] }\n%s\n' \
        "$i" "$stamp" "$i" "$line" >> "$work/$side/sluice.toml"
    done
    printf '\n[[route]]\nname = "chain"\npath-prefix = "/chain"\nupstream = "up"\nmiddleware = ["m1", "m2", "m3", "m4"]\n' >> "$work/$side/sluice.toml"
  fi
  if [[ -n ${BUILTINS:-} ]]; then
    orders_chain "" /orders "$line" >> "$work/$side/sluice.toml"
    if [[ -n $guests ]]; then
      for m in auth-jwt rate-limit schema-validate redact; do
        sed -i "s|\"builtin:$m\"|\"$guests/${m//-/_}.wasm\"|" "$work/$side/sluice.toml"
      done
    fi
  fi
  RUST_LOG=warn "$bin" run --config "$work/$side/sluice.toml" 2>"$work/$side.log" &
  pids+=($!)
  declare "pid_$side=$!"
done
for port in $UPSTREAM_PORT $BEFORE_PORT $AFTER_PORT; do
  wait_port "$port"
  body=$(curl -fsS "http://127.0.0.1:$port/") && [[ ${#body} -eq 59 ]] || { echo "ab.sh: port $port does not serve" >&2; cat "$work"/*.log >&2; exit 1; }
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in clock ticks
tick_us=$(( 1000000 / $(getconf CLK_TCK) ))
measure() { # port pid [path [wrk script]] -> "req/s p50 p99 cpu-µs/request"
  local before_ticks out
  wrk -t1 -c"$CONNS" -d"$WARMUP" ${4:+-s "$4"} "http://127.0.0.1:$1${3:-/}" >/dev/null
  before_ticks=$(cpu "$2")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency ${4:+-s "$4"} "http://127.0.0.1:$1${3:-/}")
  awk -v ticks=$(( $(cpu "$2") - before_ticks )) -v tick_us="$tick_us" '
    /requests in/ {n=$1} /^Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2}
    END {printf "%s %s %s %.1f\n", r, p50, p99, ticks * tick_us / n}' <<<"$out"
}
median() { sort -n -k1,1 | awk '{rows[NR]=$0} END {print rows[int((NR + 1) / 2)]}'; }
median_cpu() { awk '{print $4}' | sort -n | awk '{rows[NR]=$0} END {print rows[int((NR + 1) / 2)]}'; }

compare() { # path label [wrk script]
  local b="" a="" row brps bp50 bp99 arps ap50 ap99 bcpu acpu
  for round in $(seq "$ROUNDS"); do
    row=$(measure $BEFORE_PORT "$pid_before" "$1" "${3:-}"); echo "$2 round $round: before: $row" >&2; b+="$row"$'\n'
    row=$(measure $AFTER_PORT "$pid_after" "$1" "${3:-}"); echo "$2 round $round: after: $row" >&2; a+="$row"$'\n'
  done
  read -r brps bp50 bp99 _ < <(printf '%s' "$b" | median)
  read -r arps ap50 ap99 _ < <(printf '%s' "$a" | median)
  bcpu=$(printf '%s' "$b" | median_cpu) acpu=$(printf '%s' "$a" | median_cpu)
  echo
  echo "$2 ($1): wrk -t1 -c$CONNS -d$DURATION, median of $ROUNDS alternating rounds, $PROXY_WORKERS workers, $(nproc) cores"
  printf '%-8s %12s %10s %10s %14s\n' "" "req/s" "p50" "p99" "CPU µs/req" \
    before "$brps" "$bp50" "$bp99" "$bcpu" after "$arps" "$ap50" "$ap99" "$acpu"
  awk -v a="$arps" -v b="$brps" -v ac="$acpu" -v bc="$bcpu" \
    'BEGIN { printf "after / before = %.3fx req/s, %.3fx CPU per request (medians)\n", a / b, ac / bc }'
}

compare / plain
if [[ -n ${STAMP:-} ]]; then
  for port in $BEFORE_PORT $AFTER_PORT; do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/chain" || { echo "ab.sh: port $port does not serve /chain" >&2; cat "$work"/*.log >&2; exit 1; }
  done
  compare /chain "chain of 4 stamp (reused)"
fi
if [[ -n ${BUILTINS:-} ]]; then
  token=$(hs256_token "$secret")
  orders_wrk_script "$token"
  for port in $BEFORE_PORT $AFTER_PORT; do
    redacted=$(curl -fsS -H 'content-type: application/json' -H "authorization: Bearer $token" \
      --data-binary "@$data/order.json" "http://127.0.0.1:$port/orders") \
      && ! grep -q "grace.hopper@example.org\|hunter2\|4111 1111" <<<"$redacted" \
      || { echo "ab.sh: port $port does not answer /orders redacted" >&2; cat "$work"/*.log >&2; exit 1; }
  done
  compare /orders "four built-ins (POST /orders)" "$work/orders.lua"
fi
