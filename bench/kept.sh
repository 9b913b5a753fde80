# Sourced by bench/callgrind.sh, bench/threads.sh, bench/perf.sh and bench/symbol-order.sh:
# runs nginx and the `ward` setup's two proxies from a work directory `bench/proxy.sh --keep`
# left behind. Set WORK, WARD and OUT and define die() first.

# Checks the tools the kept setup needs, and those the caller names; checks the work directory
# and sets URL to proxy A's outbound listener.
kept_check() {
    local f cmd
    for cmd in h2load nginx curl; do
        command -v "$cmd" >/dev/null || die "$cmd is missing (bench/proxy.sh installs it)"
    done
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null || die "$cmd is missing"
    done
    [[ -x "$WARD" ]] || die "no ward binary at $WARD"
    for f in nginx/nginx.conf ward-a/proxy.yaml ward-b/proxy.yaml; do
        [[ -f "$WORK/$f" ]] || die "$WORK/$f is missing: run bench/proxy.sh --keep --configs ward first"
    done
    # From the kept config: `outbound: "127.0.0.1:PORT"`.
    URL="http://$(sed -n 's/.*outbound: "\([0-9.:]*\)".*/\1/p' "$WORK/ward-a/proxy.yaml")/"
    [[ "$URL" != "http:///" ]] || die "no outbound address in $WORK/ward-a/proxy.yaml"
}

# Starts nginx and proxies B and A (B first, so A finds it), one worker thread each, with fresh
# audit stores, and waits for a 200 through both.
# Arguments: `a` or `b`, the proxy whose command gets the rest of the arguments as a prefix
# (e.g. valgrind); sets B and A to the proxies' process ids.
kept_start() {
    local which="$1" wrap_a=() wrap_b=()
    shift
    if [[ "$which" == a ]]; then wrap_a=("$@"); else wrap_b=("$@"); fi
    PIDS=()
    trap kept_stop EXIT
    mkdir -p "$OUT"
    rm -rf "$WORK"/ward-a/audit.db* "$WORK"/ward-b/audit.db* "$WORK"/ward-a/spool "$WORK"/ward-b/spool
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$OUT/nginx.log" 2>&1 &
    PIDS+=("$!")
    TOKIO_WORKER_THREADS=1 "${wrap_b[@]}" "$WARD" --log-level warn proxy --config "$WORK/ward-b/proxy.yaml" \
        >"$OUT/proxy-b.log" 2>&1 &
    B=$!
    PIDS+=("$B")
    TOKIO_WORKER_THREADS=1 "${wrap_a[@]}" "$WARD" --log-level warn proxy --config "$WORK/ward-a/proxy.yaml" \
        >"$OUT/proxy-a.log" 2>&1 &
    A=$!
    PIDS+=("$A")
    local code="" _
    for _ in $(seq 120); do
        code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: checkout-api' "$URL" || true)"
        [[ "$code" == "200" ]] && return 0
        sleep 0.5
    done
    die "no 200 through the proxies (logs in $OUT)"
}

kept_stop() {
    if ((${#PIDS[@]} > 0)); then kill "${PIDS[@]}" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}

# Sends $1 requests for `/` through proxy A (`h2load --h1`, ten connections), h2load's output
# in $OUT/h2load-$2.txt; dies unless every one succeeded.
kept_load() {
    h2load --h1 -n "$1" -c 10 -H ':authority: checkout-api' "$URL" >"$OUT/h2load-$2.txt" 2>&1
    grep -q "$1 succeeded" "$OUT/h2load-$2.txt" ||
        die "not every request succeeded: $OUT/h2load-$2.txt"
}
