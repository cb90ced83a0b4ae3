#!/usr/bin/env bash
# Whole-proxy throughput, in one run on one machine: wrk against
#   1. the upstream directly (nginx serving a fixed 60-byte body)        — the ceiling
#   2. nginx `proxy_pass` in front of that upstream (keep-alive pool)     — the baseline
#   3. sluice (empty middleware chain) in front of the same upstream      — the subject
#   4. sluice with a chain of 4 trivial Wasm middleware (header phases)   — the chain's cost
#      (default instances: reused, each retired after `max-requests` = 10000)
#   5. the same chain with `reuse = { max-requests = 1000 }` (the old default) — what more replacements cost
# and, with `POST /orders` (an HS256 bearer token, a 1 KiB JSON order; the upstream answers an
# 842-byte JSON page of customer records full of PII; benches/data/):
#   6. nginx proxy_pass                                                   — the baseline
#   7. sluice, empty chain                                                — the subject
#   8. sluice with the four built-ins: auth-jwt (HS256), rate-limit (never limiting: its state
#      round trip is what counts), schema-validate (the order), redact (the customers)
#   9. the same four with `reuse = { max-requests = 1000 }` (the old default)
# and, terminating TLS (an ECDSA P-256 certificate made here with openssl; keep-alive connections,
# so the handshakes are amortized):
#  10. HTTPS (HTTP/1.1 over TLS 1.3), wrk: nginx proxy_pass vs sluice, empty chain
#  11. HTTP/2 over TLS (ALPN h2), h2load with H2_STREAMS concurrent streams per connection:
#      nginx proxy_pass vs sluice, empty chain
# and prints req/s, latency, the sluice / nginx ratios and the chain / empty-chain ratios.
#
#   make bench                    # installs nginx and wrk if missing, builds release, runs
#   DURATION=30s CONNS=64 benches/load.sh
#   SLUICE=/path/to/sluice benches/load.sh   # that binary instead of building a release one
#
# Both proxies get the same number of workers (PROXY_WORKERS, default 2). Everything shares the
# machine's cores with wrk, so run-to-run noise is ±10%: the targets are measured in ROUNDS
# alternating rounds (default 3) and the medians are compared. Compare figures from one run only.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_WORKERS=${PROXY_WORKERS:-2}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
SLUICE_PORT=${SLUICE_PORT:-18083}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18084}
SLUICE_TLS_PORT=${SLUICE_TLS_PORT:-18085}
H2_STREAMS=${H2_STREAMS:-4}

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"
need wrk h2load openssl nginx

if [[ -z ${SLUICE:-} ]]; then
  echo "building sluice (release)..." >&2
  (cd "$root" && cargo build --release --quiet --bin sluice)
  SLUICE=$root/target/release/sluice
fi
# The stamp component of the newest build, whatever its profile (build.rs puts the middleware
# components under OUT_DIR); the built-ins are inside the binary.
stamp=$(ls -t "$root"/target/*/build/sluice-*/out/middleware-target/wasm32-wasip2/release/stamp.wasm | head -1)

# One certificate for both proxies' TLS listeners.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

data="$root/benches/data"
customers=$(tr -d '\n' <"$data/customers.json")
nginx_conf upstream 1 "server { listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type text/plain; return 200 'sixty bytes of fixed response body for the load benchmark!!\n'; }
    location /orders { default_type application/json; return 200 '$customers'; } }"
nginx_conf proxy "$PROXY_WORKERS" "upstream up { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
  server { listen 127.0.0.1:$NGINX_TLS_PORT ssl http2; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

cat > "$work/sluice.toml" <<CONF
[server]
listen = ["127.0.0.1:$SLUICE_PORT"]
tls = [{ addr = "127.0.0.1:$SLUICE_TLS_PORT", cert = "$work/cert.pem", key = "$work/key.pem" }]
threads = $PROXY_WORKERS

[upstreams.up]
targets = ["127.0.0.1:$UPSTREAM_PORT"]

[[route]]
name = "empty-chain"
upstream = "up"
CONF
# The four built-ins, once with the default instances (reused, `max-requests` 10000; the route is
# still called `fresh`) and once with `max-requests` 1000, the default before 2026-12-07.
secret="a 32-byte secret for HS256 tokens"
for mode in fresh reused; do
  reuse=""
  [[ $mode == reused ]] && reuse="reuse = { max-requests = 1000 }"
  orders_chain "-$mode" "/orders/$mode" "$reuse" >> "$work/sluice.toml"
done
for i in 1 2 3 4; do
  cat >> "$work/sluice.toml" <<CONF

[middleware.m$i]
component = "$stamp"
config = { name = "m$i", phases = ["request-headers", "response-headers"] }

[middleware.r$i]
component = "$stamp"
config = { name = "m$i", phases = ["request-headers", "response-headers"] }
reuse = { max-requests = 1000 }
CONF
done
cat >> "$work/sluice.toml" <<CONF

[[route]]
name = "chain-of-4"
path-prefix = "/chain"
upstream = "up"
middleware = ["m1", "m2", "m3", "m4"]

[[route]]
name = "chain-of-4-reused"
path-prefix = "/reused"
upstream = "up"
middleware = ["r1", "r2", "r3", "r4"]
CONF
RUST_LOG=warn "$SLUICE" run --config "$work/sluice.toml" 2>"$work/sluice.log" &
pids+=($!)

# sluice compiles every component on its first start (no artifact cache yet): allow a minute.
for port in $UPSTREAM_PORT $NGINX_PORT $SLUICE_PORT $NGINX_TLS_PORT $SLUICE_TLS_PORT; do wait_port "$port" 600; done

# Same body through every path, or the comparison means nothing.
for url in "$UPSTREAM_PORT/" "$NGINX_PORT/" "$SLUICE_PORT/" "$SLUICE_PORT/chain/" "$SLUICE_PORT/reused/"; do
  body=$(curl -fsS "http://127.0.0.1:$url")
  [[ ${#body} -eq 59 ]] || { echo "load.sh: unexpected body from $url: $body" >&2; exit 1; }
done

# Over TLS too, and over HTTP/2 when the client offers it.
for port in $NGINX_TLS_PORT $SLUICE_TLS_PORT; do
  for version in --http1.1 --http2; do
    out=$(curl -fsS -k "$version" -w ' %{http_version}' "https://127.0.0.1:$port/")
    [[ $out == *"load benchmark!!"*" ${version#--http}" ]] || { echo "load.sh: unexpected answer over $version from $port: $out" >&2; exit 1; }
  done
done

# POST /orders: an HS256 token signed here (python's hmac, not sluice's JWT library), the order.
token=$(hs256_token "$secret")
orders_wrk_script "$token"
post() { curl -fsS -H 'content-type: application/json' -H "authorization: Bearer $token" --data-binary "@$data/order.json" "http://127.0.0.1:$1"; }
for url in "$NGINX_PORT/orders" "$SLUICE_PORT/orders/empty"; do
  [[ $(post "$url") == "$customers" ]] || { echo "load.sh: $url did not answer the customers page" >&2; exit 1; }
done
for mode in fresh reused; do
  redacted=$(post "$SLUICE_PORT/orders/$mode")
  if grep -q "grace.hopper@example.org\|hunter2\|4111 1111" <<<"$redacted" || ! python3 -c 'import json,sys; json.loads(sys.argv[1])' "$redacted"; then
    echo "load.sh: /orders/$mode is not redacted JSON: $redacted" >&2; exit 1
  fi
done
# The chain must be doing its work: without the token, auth-jwt answers 401.
status=$(curl -s -o /dev/null -w '%{http_code}' --data-binary "@$data/order.json" -H 'content-type: application/json' "http://127.0.0.1:$SLUICE_PORT/orders/fresh")
[[ $status == 401 ]] || { echo "load.sh: /orders/fresh without a token answered $status, not 401" >&2; exit 1; }

measure() { # [h2:|https:]port/path [wrk script] -> "req/s p50 p99" (h2load: "req/s mean -")
  if [[ $1 == h2:* ]]; then
    local url="https://127.0.0.1:${1#h2:}" out
    h2load -c"$CONNS" -m"$H2_STREAMS" -t"$WRK_THREADS" -D"${WARMUP%s}" "$url" >/dev/null
    out=$(h2load -c"$CONNS" -m"$H2_STREAMS" -t"$WRK_THREADS" -D"${DURATION%s}" "$url")
    grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" <<<"$out" && grep -q " 0 failed, 0 errored" <<<"$out" \
      || { echo "load.sh: $url failed requests over h2:" >&2; echo "$out" >&2; exit 1; }
    grep -q "Application protocol: h2" <<<"$out" || { echo "load.sh: $url did not speak h2" >&2; exit 1; }
    awk '/^finished in/ {r=$4} /^time for request:/ {m=$6} END {print r, m, "-"}' <<<"$out"
    return
  fi
  local scheme=http port=$1
  [[ $1 == https:* ]] && scheme=https port=${1#https:}
  local script=()
  [[ -n ${2:-} ]] && script=(-s "$2")
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"$WARMUP" "${script[@]}" "$scheme://127.0.0.1:$port" >/dev/null
  local out
  out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "${script[@]}" "$scheme://127.0.0.1:$port")
  if grep -q "Non-2xx" <<<"$out"; then echo "load.sh: $1 answered non-2xx:" >&2; echo "$out" >&2; exit 1; fi
  awk '/^Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2} END {print r, p50, p99}' <<<"$out"
}

median_row() { # rows of "req/s p50 p99" on stdin -> the row with the median req/s
  sort -n -k1,1 | awk '{rows[NR]=$0} END {print rows[int((NR + 1) / 2)]}'
}

declare -A results
labels=("upstream (direct)" "nginx proxy_pass" "sluice (empty chain)" "sluice (4 Wasm middleware)" "sluice (4, max-requests 1000)"
  "POST: nginx proxy_pass" "POST: sluice (empty chain)" "POST: sluice (4 built-ins)" "POST: sluice (4 built-ins, max-requests 1000)"
  "HTTPS: nginx proxy_pass" "HTTPS: sluice (empty chain)" "h2 (TLS): nginx proxy_pass" "h2 (TLS): sluice (empty chain)")
ports=("$UPSTREAM_PORT/" "$NGINX_PORT/" "$SLUICE_PORT/" "$SLUICE_PORT/chain/" "$SLUICE_PORT/reused/"
  "$NGINX_PORT/orders" "$SLUICE_PORT/orders/empty" "$SLUICE_PORT/orders/fresh" "$SLUICE_PORT/orders/reused"
  "https:$NGINX_TLS_PORT/" "https:$SLUICE_TLS_PORT/" "h2:$NGINX_TLS_PORT/" "h2:$SLUICE_TLS_PORT/")
scripts=("" "" "" "" "" "$work/orders.lua" "$work/orders.lua" "$work/orders.lua" "$work/orders.lua" "" "" "" "")
for round in $(seq "$ROUNDS"); do
  for i in "${!labels[@]}"; do
    row=$(measure "${ports[$i]}" "${scripts[$i]}")
    echo "round $round: ${labels[$i]}: $row" >&2
    results[$i]+="$row"$'\n'
  done
done

echo
echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION (h2: h2load -c$CONNS -m$H2_STREAMS, latency = mean), median of $ROUNDS rounds, proxies with $PROXY_WORKERS workers, $(nproc) cores"
printf '%-48s %12s %10s %10s\n' "target" "req/s" "p50" "p99"
for i in "${!labels[@]}"; do
  read -r rps p50 p99 < <(printf '%s' "${results[$i]}" | median_row)
  printf '%-48s %12s %10s %10s\n' "${labels[$i]}" "$rps" "$p50" "$p99"
  medians[$i]=$rps
done
echo
awk -v s="${medians[2]}" -v n="${medians[1]}" 'BEGIN { printf "sluice / nginx proxy_pass = %.2fx (medians)\n", s / n }'
awk -v c="${medians[3]}" -v e="${medians[2]}" 'BEGIN { printf "4-middleware chain / empty chain = %.2fx (medians)\n", c / e }'
awk -v c="${medians[4]}" -v e="${medians[2]}" 'BEGIN { printf "4-middleware chain, max-requests 1000 / empty chain = %.2fx (medians)\n", c / e }'
awk -v s="${medians[6]}" -v n="${medians[5]}" 'BEGIN { printf "POST: sluice / nginx proxy_pass = %.2fx (medians)\n", s / n }'
awk -v c="${medians[7]}" -v e="${medians[6]}" 'BEGIN { printf "POST: 4 built-ins / empty chain = %.2fx (medians)\n", c / e }'
awk -v c="${medians[8]}" -v e="${medians[6]}" 'BEGIN { printf "POST: 4 built-ins, max-requests 1000 / empty chain = %.2fx (medians)\n", c / e }'
awk -v s="${medians[10]}" -v n="${medians[9]}" 'BEGIN { printf "HTTPS: sluice / nginx proxy_pass = %.2fx (medians)\n", s / n }'
awk -v s="${medians[12]}" -v n="${medians[11]}" 'BEGIN { printf "h2: sluice / nginx proxy_pass = %.2fx (medians)\n", s / n }'
