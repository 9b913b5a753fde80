#!/usr/bin/env bash
# Instructions per request of proxy B (or A), counted by callgrind: repeatable whatever else the
# machine is doing, unlike time. Uses the work directory `bench/proxy.sh --keep` left behind
# (its certificates, nginx and the `ward` setup's two proxy configs); see bench/README.md.
#
#   bench/callgrind.sh /tmp/ward-bench.XXXXXX                  # target/release/ward
#   bench/callgrind.sh /tmp/ward-bench.XXXXXX other/ward 8000  # another build, 8,000 requests
#   PATHS=distinct bench/callgrind.sh /tmp/ward-bench.XXXXXX   # every request its own path
#   PROXY=a bench/callgrind.sh /tmp/ward-bench.XXXXXX          # proxy A (outbound) instead of B
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:?usage: bench/callgrind.sh WORK_DIR [WARD_BINARY] [REQUESTS]}"
WARD="${2:-$ROOT/target/release/ward}"
REQUESTS="${3:-4000}"
# `same`: every request asks for `/`; `distinct`: each asks for its own `/items/N`, so no two
# agree on `context.path` and no decision can be remembered (the demo policies read the path).
PATHS="${PATHS:-same}"
# `b`: the inbound proxy (mTLS in, decision, audit, HTTP/1.1 to nginx); `a`: the outbound one.
PROXY="${PROXY:-b}"
OUT="$ROOT/target/bench/callgrind-$(date -u +%Y%m%dT%H%M%SZ)"

die() { echo "bench/callgrind.sh: $*" >&2; exit 1; }
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || die "REQUESTS must be a positive whole number"
[[ "$PATHS" == same || "$PATHS" == distinct ]] || die "PATHS must be same or distinct"
[[ "$PROXY" == a || "$PROXY" == b ]] || die "PROXY must be a or b"
[[ "$PATHS" == same ]] || ((REQUESTS % 10 == 0)) || die "PATHS=distinct needs REQUESTS in tens"
# shellcheck source=bench/kept.sh
source "$ROOT/bench/kept.sh"
kept_check valgrind callgrind_control
kept_start "$PROXY" valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind.%p"

load() {
    if [[ "$PATHS" == same ]]; then
        kept_load "$1" "$2"
        return
    fi
    # h2load gives each client the whole URI list from its start, so ten clients of one h2load
    # would repeat every path ten times: ten one-client h2loads with their own paths instead.
    local per=$(($1 / 10)) pids=() c
    for c in $(seq 0 9); do
        seq "$(($3 + c * per))" "$(($3 + (c + 1) * per - 1))" | sed "s|^|${URL}items/|" \
            >"$OUT/uris-$2-$c.txt"
        h2load --h1 -n "$per" -c 1 -H ':authority: checkout-api' -i "$OUT/uris-$2-$c.txt" \
            >"$OUT/h2load-$2-$c.txt" 2>&1 &
        pids+=("$!")
    done
    wait "${pids[@]}"
    for c in $(seq 0 9); do
        grep -q "$per succeeded" "$OUT/h2load-$2-$c.txt" ||
            die "not every request succeeded: $OUT/h2load-$2-$c.txt"
    done
}
load 500 warmup 0
PROFILED="$B"
[[ "$PROXY" == b ]] || PROFILED="$A"
callgrind_control -i on "$PROFILED" >/dev/null 2>&1
load "$REQUESTS" measured 100000
callgrind_control -i off "$PROFILED" >/dev/null 2>&1
ADMIN="$(sed -n 's/.*admin: "\([0-9.:]*\)".*/\1/p' "$WORK/ward-b/proxy.yaml")"
decisions="$(curl -s "http://$ADMIN/metrics" | grep -E '^ward_proxy_authz_decisions(_remembered)?_total' || true)"
callgrind_control -d "$PROFILED" >/dev/null 2>&1
sleep 1

# One dump file per thread; the thread's name is not in it, so name them by what they run.
echo "ward: $("$WARD" --version 2>/dev/null || echo "$WARD"), proxy $PROXY, $REQUESTS requests, paths $PATHS, dumps in $OUT"
echo "proxy B's decisions (warm-up included):"
echo "${decisions:-  (none read from http://$ADMIN/metrics)}" | sed 's/^/  /'
printf '%-34s %16s %14s\n' "thread (dump file)" "instructions" "per request"
for f in "$OUT"/callgrind.*.1-*; do
    total="$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$f" | head -n 1)"
    [[ -n "$total" && "$total" != 0 ]] || continue
    if grep -q "ward_proxy::inbound\|ward_proxy::outbound" "$f"; then what="worker"
    elif grep -q "ward_audit::writer" "$f"; then what="audit writer"
    elif grep -q "sqlite3VdbeExec" "$f"; then what="SQLite"
    else what="other"; fi
    printf '%-34s %16s %14s\n' "$what ($(basename "$f"))" "$total" "$((total / REQUESTS))"
done
