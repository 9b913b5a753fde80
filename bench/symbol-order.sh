#!/usr/bin/env bash
# The order release builds link functions in (link/symbol-order.txt, read by build.rs): every
# function a proxy runs from start-up through the first requests, hottest first, so that what an
# idle proxy has touched sits in a few megabytes of the binary's text instead of being spread
# over all of it (the kernel maps cached pages around each page a process faults in, so scattered
# start-up code made most of the text resident). See bench/README.md.
#
#   bench/symbol-order.sh /tmp/ward-bench.XXXXXX            # profile target/release/ward, rewrite the file
#   bench/symbol-order.sh /tmp/ward-bench.XXXXXX other/ward # profile another build
#   bench/symbol-order.sh --check [WARD_BINARY]             # how much of the file a binary still has
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORDER="$ROOT/link/symbol-order.txt"

die() { echo "bench/symbol-order.sh: $*" >&2; exit 1; }

# Function symbols in the binary's text, mangled: what lld matches the file's lines against.
text_symbols() {
    nm --defined-only "$1" | awk '$2 == "t" || $2 == "T" { print $3 }' | sort -u
}

if [[ "${1:-}" == --check ]]; then
    WARD="${2:-$ROOT/target/release/ward}"
    [[ -x "$WARD" ]] || die "no ward binary at $WARD"
    [[ -f "$ORDER" ]] || die "$ORDER is missing"
    total="$(grep -c . "$ORDER")"
    found="$(comm -12 <(sort -u "$ORDER") <(text_symbols "$WARD") | wc -l)"
    echo "$found of $total symbols in link/symbol-order.txt are in $WARD"
    # Below nine in ten, regenerating is worth it (a toolchain or dependency upgrade renames most).
    ((found * 10 >= total * 9)) || echo "regenerate it: bench/symbol-order.sh WORK_DIR" >&2
    exit 0
fi

WORK="${1:?usage: bench/symbol-order.sh WORK_DIR [WARD_BINARY] | --check [WARD_BINARY]}"
WARD="${2:-$ROOT/target/release/ward}"
OUT="$ROOT/target/bench/symbol-order-$(date -u +%Y%m%dT%H%M%SZ)"
# shellcheck source=bench/kept.sh
source "$ROOT/bench/kept.sh"
kept_check valgrind nm python3

# Each proxy in turn under callgrind for its whole life: start-up, the request kept_start sends,
# 2,000 more, and SIGTERM. Names stay mangled, as the linker knows them.
for proxy in b a; do
    kept_start "$proxy" valgrind --tool=callgrind --demangle=no --compress-strings=no \
        --compress-pos=no --callgrind-out-file="$OUT/callgrind-$proxy.%p"
    kept_load 2000 "$proxy"
    kept_stop
    trap - EXIT
done

python3 - "$(realpath "$WARD")" "$OUT" "$ORDER.new" <(text_symbols "$WARD") <<'EOF'
import glob, re, sys

binary, out, order, symbols = sys.argv[1:]
known = set(line.strip() for line in open(symbols))
cost = {}
for path in glob.glob(f"{out}/callgrind-*"):
    ours = fn = None
    skip = False
    for line in open(path, errors="replace"):
        if skip:  # the cost line after `calls=` is the callee's, inclusive
            skip = False
            continue
        if line.startswith("ob="):
            ours = line[3:].strip() == binary
        elif line.startswith("fn="):
            # `'2` marks a recursion level of the same function
            fn = re.sub(r"'\d+$", "", line[3:].strip()) if ours else None
            if fn is not None:
                cost.setdefault(fn, 0)
        elif line.startswith("calls="):
            skip = True
        elif fn is not None and line[:1].isdigit():
            fields = line.split()
            if len(fields) > 1:
                cost[fn] += int(fields[1])
ordered = sorted((n for n in cost if n in known), key=lambda n: (-cost[n], n))
if len(ordered) < 1000:
    sys.exit(f"only {len(ordered)} functions of {binary} were seen running: is it the binary profiled?")
with open(order, "w") as f:
    f.writelines(n + "\n" for n in ordered)
print(f"{len(ordered)} functions, {sum(cost[n] for n in ordered):,} instructions")
EOF
mv "$ORDER.new" "$ORDER"
echo "wrote $ORDER (callgrind dumps in $OUT); rebuild with cargo build --release"
