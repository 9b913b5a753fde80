#!/usr/bin/env bash
# CPU time per request of each of proxy B's threads (user and system, read from /proc), native
# speed. Alternate two builds with it: one run's absolute numbers move with the machine, but
# CPU time per request moves less than requests per second. Uses the work directory
# `bench/proxy.sh --keep` left behind, as bench/callgrind.sh does; see bench/README.md.
#
#   bench/threads.sh /tmp/ward-bench.XXXXXX                         # target/release/ward, saturation, 10 s
#   bench/threads.sh /tmp/ward-bench.XXXXXX other/ward 5000 10      # another build at 5,000 rps
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:?usage: bench/threads.sh WORK_DIR [WARD_BINARY] [RATE|max] [SECONDS]}"
WARD="${2:-$ROOT/target/release/ward}"
RATE="${3:-max}"
SECONDS_="${4:-10}"
OUT="$ROOT/target/bench/threads-$(date -u +%Y%m%dT%H%M%SZ)"

die() { echo "bench/threads.sh: $*" >&2; exit 1; }
[[ "$RATE" == max || "$RATE" =~ ^[1-9][0-9]*0$ ]] || die "RATE must be max or a multiple of 10"
[[ "$SECONDS_" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number"
# shellcheck source=bench/kept.sh
source "$ROOT/bench/kept.sh"
kept_check
kept_start b
kept_load 2000 warmup

# One line per thread: tid, name, utime and stime in clock ticks (fields 14 and 15 of stat;
# thread names have no spaces or parentheses here, so the fields are where they seem).
snapshot() {
    local t
    for t in /proc/"$B"/task/*; do
        echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(awk '{print $14, $15}' "$t/stat")"
    done | sort
}
snapshot >"$OUT/before.txt"
if [[ "$RATE" == max ]]; then
    h2load --h1 -D "$SECONDS_" -c 50 -H ':authority: checkout-api' "$URL" >"$OUT/h2load.txt" 2>&1
else
    # h2load's --rps is per client: ten clients at a tenth each.
    h2load --h1 --rps $((RATE / 10)) -D "$SECONDS_" -c 10 -H ':authority: checkout-api' "$URL" \
        >"$OUT/h2load.txt" 2>&1
fi
snapshot >"$OUT/after.txt"
requests="$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' "$OUT/h2load.txt")"
ok="$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$OUT/h2load.txt")"
[[ -n "$requests" && "$requests" != 0 && "$requests" == "$ok" ]] ||
    die "not every request succeeded: $OUT/h2load.txt"

echo "ward: $("$WARD" --version 2>/dev/null || echo "$WARD"), rate $RATE for ${SECONDS_} s, $requests requests, files in $OUT"
printf '%-18s %12s %12s %14s %14s %14s\n' thread "user ms" "system ms" "user µs/req" "system µs/req" "total µs/req"
join "$OUT/before.txt" "$OUT/after.txt" | awk -v req="$requests" -v hz="$(getconf CLK_TCK)" '
    { u = ($6 - $3) * 1000 / hz; s = ($7 - $4) * 1000 / hz
      if (u + s == 0) next
      tu += u; ts += s
      printf "%-18s %12.0f %12.0f %14.2f %14.2f %14.2f\n", $2, u, s, u * 1000 / req, s * 1000 / req, (u + s) * 1000 / req }
    END { printf "%-18s %12.0f %12.0f %14.2f %14.2f %14.2f\n", "all", tu, ts, tu * 1000 / req, ts * 1000 / req, (tu + ts) * 1000 / req }'
