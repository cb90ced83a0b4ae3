# Shared by the load scripts (load.sh, peers.sh, ab.sh, swap.sh): a scratch directory removed on exit with
# every process started, tool checks, nginx instances and waiting for a port. Source it after
# `set -euo pipefail`; it sets `work`, `nginx_bin` and `pids`.

work=$(mktemp -d "/tmp/sluice-$(basename "$0" .sh).XXXXXX")
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done # nginx's masters too
  rm -rf "$work"
}
trap cleanup EXIT

need() { # tool... : exits with a hint when one is missing (nginx may live in /usr/sbin)
  for tool in "$@"; do
    if [[ $tool == nginx ]]; then [[ -x "$nginx_bin" ]] && continue
    else command -v "$tool" >/dev/null && continue
    fi
    echo "$(basename "$0"): $tool is missing; run 'scripts/setup.sh bench'" >&2
    exit 1
  done
}

nginx_conf() { # name workers http-block-lines : writes $work/NAME.conf and starts that nginx
  # In the foreground, as a job of this script: a daemon calls setsid(), and with the kernel's
  # autogroup scheduling (on by default) a new session is a scheduling group of its own, weighed
  # against this script's group (sluice, the clients) as a whole. storm.sh saw that starve the
  # nginx upstream for up to 0.8 s at a time while the script's group was busy (perf sched_switch:
  # nginx woken, runnable, not run), which it reported as sluice's latency.
  cat > "$work/$1.conf" <<CONF
worker_processes $2;
daemon off;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fastcgi;
  uwsgi_temp_path $work/$1-uwsgi;
  scgi_temp_path $work/$1-scgi;
  keepalive_requests 1000000;
  $3
}
CONF
  "$nginx_bin" -p "$work" -c "$work/$1.conf" &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$work/$1.pid" ]] && return 0; sleep 0.1; done
  echo "$(basename "$0"): nginx $1 did not start" >&2
  cat "$work/$1.error.log" >&2 || true
  exit 1
}

wait_port() { # port [tenths of a second, default 300] : returns once something accepts on it,
  # else prints the logs under $work and exits
  for _ in $(seq "${2:-300}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listens on port $1" >&2
  cat "$work"/*.log >&2 || true
  exit 1
}

hs256_token() { # secret : prints an HS256 JWT for the benches' auth-jwt config (sub bench, iss
  # https://id.example.com, aud orders, a day valid), signed with python's hmac, not sluice's library
  SECRET="$1" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
claims = {"sub": "bench", "iss": "https://id.example.com", "aud": "orders", "exp": int(time.time()) + 86400}
signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
print(signing + "." + b64(hmac.new(os.environ["SECRET"].encode(), signing.encode(), hashlib.sha256).digest()))
PY
}

orders_wrk_script() { # token : writes $work/orders.lua, wrk's POST /orders: the 1 KiB order of
  # benches/data with `token` as its bearer token
  cat > "$work/orders.lua" <<LUA
wrk.method = "POST"
wrk.body = io.open("$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data/order.json"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $1"
LUA
}

orders_chain() { # suffix path [line] : prints the four built-ins as load.sh's and ab.sh's POST /orders
  # routes run them (names jwt$suffix ... redact$suffix, each with `line` added, e.g. a `reuse`), and
  # the route at `path` through them; the JWT secret is $secret
  local data extra=${3:-}
  data="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data"
  cat <<CONF

[middleware.jwt$1]
component = "builtin:auth-jwt"
config = { algorithms = ["HS256"], secret = "$secret", issuer = "https://id.example.com", audience = "orders", forward-claims = { sub = "x-user-id" } }
$extra

[middleware.limit$1]
component = "builtin:rate-limit"
config = { key = "client-ip", rate = 1000000000, per = "1s", burst = 1000000000 }
$extra

[middleware.schema$1]
component = "builtin:schema-validate"
config = { schema-file = "$data/order.schema.json" }
$extra

[middleware.redact$1]
component = "builtin:redact"
config = { patterns = ["email", "credit-card", "phone", "ipv4", "ipv6"], json-fields = ["password"] }
$extra

[[route]]
name = "orders$1"
path-prefix = "$2"
upstream = "up"
middleware = ["jwt$1", "limit$1", "schema$1", "redact$1"]
CONF
}
