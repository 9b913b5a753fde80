#!/usr/bin/env bash
# Where proxy B's time goes at native speed: `perf record` (cpu-clock samples, so it works in a
# VM without hardware counters) on proxy B while h2load saturates the kept `ward` setup, then
# the share of each thread and library and the worker's hottest functions. Complements
# bench/callgrind.sh (instructions, repeatable, but no kernel time and no SHA or AES
# instructions) and bench/threads.sh (CPU per request, no functions). Uses the work directory
# `bench/proxy.sh --keep` left behind; see bench/README.md.
#
#   bench/perf.sh /tmp/ward-bench.XXXXXX                 # target/release/ward, 5 s of samples
#   bench/perf.sh /tmp/ward-bench.XXXXXX other/ward 10   # another build, 10 s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:?usage: bench/perf.sh WORK_DIR [WARD_BINARY] [SECONDS]}"
WARD="${2:-$ROOT/target/release/ward}"
SECONDS_="${3:-5}"
OUT="$ROOT/target/bench/perf-$(date -u +%Y%m%dT%H%M%SZ)"

die() { echo "bench/perf.sh: $*" >&2; exit 1; }
[[ "$SECONDS_" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number"
if ! command -v perf >/dev/null; then
    [[ "$(id -u)" == 0 ]] || die "perf is missing: install Debian's linux-perf"
    apt-get install -y linux-perf >/dev/null || die "apt-get install linux-perf failed"
fi
# shellcheck source=bench/kept.sh
source "$ROOT/bench/kept.sh"
kept_check taskset
# As in bench/proxy.sh: B and its helper threads on core 1, A on core 0.
kept_start b taskset -c 1
taskset -cp 0 "$A" >/dev/null
kept_load 2000 warmup
h2load --h1 -D $((SECONDS_ + 3)) -c 50 -H ':authority: checkout-api' "$URL" >"$OUT/h2load.txt" 2>&1 &
load=$!
sleep 1
# DWARF call graphs: the release build keeps line tables but no frame pointers.
perf record -q -F 2000 -e cpu-clock --call-graph dwarf,16384 -p "$B" -o "$OUT/perf.data" \
    -- sleep "$SECONDS_" >"$OUT/perf-record.txt" 2>&1 || die "perf record failed: $OUT/perf-record.txt"
wait "$load" || die "h2load failed: $OUT/h2load.txt"
grep -q '0 failed' "$OUT/h2load.txt" || die "some requests failed: $OUT/h2load.txt"

echo "ward: $("$WARD" --version 2>/dev/null || echo "$WARD"), ${SECONDS_} s of samples, files in $OUT"
echo
echo "Share of proxy B's samples by thread and library:"
perf report -i "$OUT/perf.data" --no-children -g none --sort comm,dso -q 2>/dev/null |
    awk 'NF { printf "  %8s  %-18s %s\n", $1, $2, $3 }' | head -15
echo
# `--comm` with `--sort sym` does not keep other threads' samples out: sort by both and filter.
hottest() {
    perf report -i "$OUT/perf.data" --no-children -g none --sort comm,sym -q 2>/dev/null |
        awk -v keep="$1" 'NF && ((keep == "worker") == ($2 == "tokio-rt-worker"))' | head -"$2" | cut -c1-150
}
echo "The worker's hottest functions (share of all of B's samples):"
hottest worker 25
echo
echo "The other threads' (the audit writer and SQLite's):"
hottest others 15
echo
echo "Callers: perf report -i $OUT/perf.data --no-children --comm tokio-rt-worker --symbols SYMBOL -g caller"
