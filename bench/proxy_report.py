#!/usr/bin/env python3
"""Turns the raw files bench/proxy.sh writes into the comparison table (or JSON).

Inputs in --work:
  results.tsv  setup, point, target rps, achieved rps, p50 µs, p99 µs, p99.9 µs, non-200/errors,
               seconds, CPU ticks per proxy before ("name=ticks …"), after, round
  setups.tsv   setup, hops, VmRSS per proxy after start ("name=kB …"), VmHWM per proxy at the end,
               round
  latency/SETUP-rate-RATE-ROUND.log  h2load's log of every request of a fixed-rate point

With several rounds (`--rounds`) each point is pooled: percentiles of every request of every
round at the fixed rates (the median of the rounds' at saturation, where wrk keeps no log), rps
and CPU over all rounds' seconds, the largest RSS. Each round's own figures stay under "rounds".

`--latency FILE` prints "requests non-200 p50 p99 p99.9" of one h2load log instead.
"""

import argparse
import json
import math
import os
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def kv(text):
    return {k: int(v) for k, v in (p.split("=", 1) for p in text.split())} if text else {}


def latency_stats(paths):
    """(requests, non-200, p50, p99, p99.9) in µs over h2load logs ("start status elapsed")."""
    times, errors = [], 0
    for path in paths:
        with open(path) as f:
            for line in f:
                _, status, elapsed = line.split()
                errors += status != "200"
                times.append(int(elapsed))
    times.sort()
    # nearest rank
    pct = lambda p: times[max(0, math.ceil(p / 100 * len(times)) - 1)] if times else 0
    return len(times), errors, pct(50), pct(99), pct(99.9)


def cpu_of(rounds, rps):
    """Per proxy: cores used over all the rounds' seconds, and % of one core per 1k rps."""
    seconds = sum(r["seconds"] for r in rounds)
    ticks = {}
    for r in rounds:
        for proc, t in r["after"].items():
            ticks[proc] = ticks.get(proc, 0) + t - r["before"].get(proc, 0)
    cpu = {}
    for proc, t in ticks.items():
        busy = t / CLK_TCK / seconds  # cores
        cores = round(busy, 3)
        cpu[proc] = {
            "cores": cores,
            # % of one core per 1,000 requests/s (= µs of CPU per request / 10)
            "pct_core_per_1k_rps": round(busy * 100 / (rps / 1000), 2) if rps else None,
            # requests/s this process would carry on one fully busy core
            "rps_per_core": round(rps / cores) if cores else None,
        }
    return cpu


def pool(work, name, point, rounds):
    seconds = sum(r["seconds"] for r in rounds)
    rps = round(sum(r["rps"] * r["seconds"] for r in rounds) / seconds, 1)
    logs = [os.path.join(work, "latency", f"{name}-{point}-{r['round']}.log") for r in rounds]
    if len(rounds) > 1 and point != "saturation" and all(os.path.exists(p) for p in logs):
        _, _, p50, p99, p999 = latency_stats(logs)
    else:
        p50 = round(statistics.median(r["p50_us"] for r in rounds))
        p99 = round(statistics.median(r["p99_us"] for r in rounds))
        p999s = [r["p999_us"] for r in rounds if r["p999_us"] is not None]
        p999 = round(statistics.median(p999s)) if p999s else None
    out = {
        "target_rps": rounds[0]["target_rps"],
        "rps": rps,
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": p999,
        "errors": sum(r["errors"] for r in rounds),
        "seconds": seconds,
        "cpu": cpu_of(rounds, rps),
    }
    if len(rounds) > 1:
        out["rounds"] = [
            {k: r[k] for k in ("round", "rps", "p50_us", "p99_us", "p999_us", "errors")}
            | {"cpu": cpu_of([r], r["rps"])}
            for r in rounds
        ]
    return out


def load(work):
    setups = {}
    with open(os.path.join(work, "setups.tsv")) as f:
        for line in f:
            name, hops, idle, peak = (line.rstrip("\n").split("\t") + ["", ""])[:4]
            s = setups.setdefault(name, {"hops": int(hops), "rss_idle_kb": {}, "rss_peak_kb": {}, "points": {}})
            # the largest of the rounds
            for key, text in (("rss_idle_kb", idle), ("rss_peak_kb", peak)):
                for proc, kb in kv(text).items():
                    s[key][proc] = max(kb, s[key].get(proc, 0))
    raw = {}
    with open(os.path.join(work, "results.tsv")) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            raw.setdefault((c[0], c[1]), []).append({
                "round": int(c[11]) if len(c) > 11 and c[11] else 1,
                "target_rps": int(c[2]) if c[2] else None,
                "rps": float(c[3]),
                "p50_us": int(c[4]),
                "p99_us": int(c[5]),
                "p999_us": int(c[6]) if c[6] else None,
                "errors": int(c[7]),
                "seconds": float(c[8]),
                "before": kv(c[9]),
                "after": kv(c[10]),
            })
    for (name, point), rounds in raw.items():
        setups[name]["points"][point] = pool(work, name, point, rounds)
    return setups


def derive(setups):
    direct = setups["direct"]["points"]
    for s in setups.values():
        for point, p in s["points"].items():
            d = direct.get(point)
            if s["hops"] and d and point != "saturation":
                p["added_per_hop_p50_us"] = round((p["p50_us"] - d["p50_us"]) / s["hops"], 1)
                p["added_per_hop_p99_us"] = round((p["p99_us"] - d["p99_us"]) / s["hops"], 1)
        sat = s["points"].get("saturation")
        for p in [sat] + (sat.get("rounds", []) if sat else []):
            if p and p["cpu"]:
                # the busiest proxy's: the fewest requests per busy core
                per_core = [v["rps_per_core"] for v in p["cpu"].values() if v["rps_per_core"]]
                p["rps_per_busiest_core"] = min(per_core) if per_core else None


def per_round(a, b, key):
    """The ratio a / b of `key` in each round both points ran, when there were several."""
    rb = {r["round"]: r for r in b.get("rounds", [])}
    pairs = [(r[key], rb[r["round"]][key]) for r in a.get("rounds", []) if r["round"] in rb]
    return [ratio(x, y) for x, y in pairs] or None


def exact_ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratio(a, b):
    r = exact_ratio(a, b)
    return None if r is None else round(r, 3)


# Goals are checked on the unrounded ratio: a rounded one can pass a goal it misses.
def at_most(a, b, limit):
    r = exact_ratio(a, b)
    return r is not None and r <= limit


def at_least(a, b, limit):
    r = exact_ratio(a, b)
    return r is not None and r >= limit


def goals(setups):
    w, e = setups.get("ward"), setups.get("envoy")
    if not w:
        return []
    return (envoy_goals(w, e, setups.get("haproxy")) if e else []) + audit_goals(w, setups)


def envoy_goals(w, e, h):
    out = []
    for point in w["points"]:
        if point == "saturation" or point not in e["points"]:
            continue
        for q in ("p50", "p99"):
            wa = w["points"][point].get(f"added_per_hop_{q}_us")
            ea = e["points"][point].get(f"added_per_hop_{q}_us")
            r = ratio(wa, ea)
            out.append({
                "goal": f"added {q} per hop at {point} ≤ 0.5× Envoy",
                "ward": wa, "envoy": ea, "ratio": r,
                "met": at_most(wa, ea, 0.5),
            })
    ws, es = w["points"].get("saturation"), e["points"].get("saturation")
    if ws and es:
        r = ratio(ws["rps"], es["rps"])
        out.append({"goal": "max rps (two hops, wrk saturation) ≥ 2× Envoy", "ward": ws["rps"],
                    "envoy": es["rps"], "ratio": r, "met": at_least(ws["rps"], es["rps"], 2)})
        w_core, e_core = ws.get("rps_per_busiest_core"), es.get("rps_per_busiest_core")
        out.append({"goal": "max rps per worker core ≥ 2× Envoy", "ward": w_core, "envoy": e_core,
                    "per_round": per_round(ws, es, "rps_per_busiest_core"),
                    "ratio": ratio(w_core, e_core), "met": at_least(w_core, e_core, 2)})
        hs = h and h["points"].get("saturation")
        if hs:
            h_core = hs.get("rps_per_busiest_core")
            out.append({"goal": "max rps per worker core ≥ 0.8× HAProxy (plain HTTP)",
                        "ward": w_core, "haproxy": h_core,
                        "per_round": per_round(ws, hs, "rps_per_busiest_core"),
                        "ratio": ratio(w_core, h_core), "met": at_least(w_core, h_core, 0.8)})
    w_peak = max(w["rss_peak_kb"].values(), default=None)
    e_peak = max(e["rss_peak_kb"].values(), default=None)
    r = ratio(w_peak, e_peak)
    out.append({"goal": "RSS under load ≤ 0.5× Envoy (largest proxy, VmHWM)", "ward_kb": w_peak,
                "envoy_kb": e_peak, "ratio": r, "met": at_most(w_peak, e_peak, 0.5)})
    w_idle = max(w["rss_idle_kb"].values(), default=None)
    e_idle = max(e["rss_idle_kb"].values(), default=None)
    r = ratio(w_idle, e_idle)
    out.append({"goal": "RSS idle ≤ 0.5× Envoy and < 20 MB", "ward_kb": w_idle, "envoy_kb": e_idle,
                "ratio": r, "met": at_most(w_idle, e_idle, 0.5) and w_idle < 20 * 1024})
    return out


def audit_goals(w, setups):
    out = []
    for other, goal, limit in (("ward-no-audit", "audit on vs off: end-to-end p99 at {} ≤ 1.1×", 1.1),
                               ("ward-jsonl-audit", "audit in SQLite on disk vs JSONL on tmpfs: end-to-end p99 at {} (information)", None)):
        n = setups.get(other)
        if not n:
            continue
        for point in w["points"]:
            if point not in n["points"]:
                continue
            on, off = w["points"][point]["p99_us"], n["points"][point]["p99_us"]
            r = ratio(on, off)
            out.append({"goal": goal.format(point), "ward": on, other: off,
                        "per_round": per_round(w["points"][point], n["points"][point], "p99_us"), "ratio": r,
                        "met": None if limit is None else at_most(on, off, limit)})
    return out


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, float):
        return f"{v:,.1f}{unit}"
    return f"{v:,}{unit}"


def table(rows, header):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def render(setups, meta, goal_rows):
    e = setups.get("envoy")
    out = []
    out.append("Run: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    out.append("")
    rows = []
    for name, s in setups.items():
        for point, p in s["points"].items():
            ep = e["points"].get(point) if e else None
            r50 = ratio(p.get("added_per_hop_p50_us"), ep.get("added_per_hop_p50_us")) if ep and name != "envoy" else None
            r99 = ratio(p.get("added_per_hop_p99_us"), ep.get("added_per_hop_p99_us")) if ep and name != "envoy" else None
            rr = ratio(p["rps"], ep["rps"]) if ep and name != "envoy" and point == "saturation" else None
            rows.append([
                name, s["hops"], point, fmt(p["rps"]), fmt(p["p50_us"]), fmt(p["p99_us"]),
                fmt(p.get("added_per_hop_p50_us")), fmt(p.get("added_per_hop_p99_us")),
                fmt(r50), fmt(r99), fmt(rr), fmt(p.get("rps_per_busiest_core")), p["errors"],
            ])
    out.append("Latency and throughput (µs; added per hop = (setup − direct) / hops at the same point; "
               "ratios = this setup ÷ Envoy)")
    out.append(table(rows, ["setup", "hops", "point", "rps", "p50", "p99", "added/hop p50", "added/hop p99",
                            "×Envoy p50", "×Envoy p99", "×Envoy rps", "rps/busy core", "errors"]))
    out.append("")
    rows = []
    for name, s in setups.items():
        for proc in s["rss_idle_kb"]:
            cells = [name, proc]
            for point in s["points"]:
                c = s["points"][point]["cpu"].get(proc)
                cells.append(fmt(c["pct_core_per_1k_rps"]) if c else "–")
            sat = s["points"].get("saturation", {"cpu": {}})["cpu"].get(proc)
            cells.append(fmt(sat["rps_per_core"]) if sat else "–")
            cells += [fmt(round(s["rss_idle_kb"][proc] / 1024, 1)), fmt(round(s["rss_peak_kb"].get(proc, 0) / 1024, 1))]
            rows.append(cells)
    points = list(next(iter(setups.values()))["points"])
    out.append("Per proxy process: CPU as % of one core per 1,000 rps at each point; rps per busy core of "
               "this process at saturation; RSS in MiB (idle = after start, peak = VmHWM at the end)")
    out.append(table(rows, ["setup", "process"] + [f"CPU %/1k rps @ {p}" for p in points]
                     + ["rps/core @ saturation", "RSS idle", "RSS peak"]))
    out.append("")
    if goal_rows:
        rows = []
        for g in goal_rows:
            vals = ", ".join(f"{k}={' / '.join(f'{x:.2f}' for x in v) if k == 'per_round' else fmt(v)}"
                             for k, v in g.items() if k not in ("goal", "met", "ratio") and v is not None)
            rows.append([g["goal"], vals, "–" if g["ratio"] is None else f"{g['ratio']:.3f}", "–" if g["met"] is None else ("met" if g["met"] else "NOT met")])
        out.append("Goals (issue 6), `ward` setup against `envoy` (and `haproxy`, `ward-no-audit`)")
        out.append(table(rows, ["goal", "values", "ratio", "result"]))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work")
    ap.add_argument("--latency", help="print requests, non-200, p50, p99, p99.9 of one h2load log")
    ap.add_argument("--format", choices=["table", "json"], default="table")
    ap.add_argument("--meta", nargs="*", default=[])
    args = ap.parse_args()
    if args.latency:
        print(*latency_stats([args.latency]))
        return
    if not args.work:
        ap.error("--work or --latency is required")
    meta = dict(m.split("=", 1) for m in args.meta)
    setups = load(args.work)
    derive(setups)
    goal_rows = goals(setups)
    if args.format == "json":
        json.dump({"meta": meta, "setups": setups, "goals": goal_rows}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(setups, meta, goal_rows))


if __name__ == "__main__":
    main()
