#!/usr/bin/env python3
"""Turns the raw files bench/proxy.sh writes into the comparison table (or JSON).

Inputs in --work:
  results.tsv  setup, point, target rps, achieved rps, p50 µs, p99 µs, p99.9 µs, non-200/errors,
               seconds, CPU ticks per proxy before ("name=ticks …"), after
  setups.tsv   setup, hops, VmRSS per proxy after start ("name=kB …"), VmHWM per proxy at the end
"""

import argparse
import json
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def kv(text):
    return {k: int(v) for k, v in (p.split("=", 1) for p in text.split())} if text else {}


def load(work):
    setups = {}
    with open(os.path.join(work, "setups.tsv")) as f:
        for line in f:
            name, hops, idle, peak = (line.rstrip("\n").split("\t") + ["", ""])[:4]
            setups[name] = {"hops": int(hops), "rss_idle_kb": kv(idle), "rss_peak_kb": kv(peak), "points": {}}
    with open(os.path.join(work, "results.tsv")) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            name, point = c[0], c[1]
            seconds = float(c[8])
            rps = float(c[3])
            before, after = kv(c[9]), kv(c[10])
            cpu = {}
            for proc in after:
                busy = (after[proc] - before.get(proc, 0)) / CLK_TCK / seconds  # cores
                cpu[proc] = {
                    "cores": round(busy, 3),
                    # % of one core per 1,000 requests/s (= µs of CPU per request / 10)
                    "pct_core_per_1k_rps": round(busy * 100 / (rps / 1000), 2) if rps else None,
                }
            setups[name]["points"][point] = {
                "target_rps": int(c[2]) if c[2] else None,
                "rps": rps,
                "p50_us": int(c[4]),
                "p99_us": int(c[5]),
                "p999_us": int(c[6]) if c[6] else None,
                "errors": int(c[7]),
                "seconds": seconds,
                "cpu": cpu,
            }
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
        if sat and sat["cpu"]:
            busiest = max(v["cores"] for v in sat["cpu"].values())
            # requests/s one fully busy core of the busiest proxy would carry
            sat["rps_per_busiest_core"] = round(sat["rps"] / busiest) if busiest else None


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
    out = []
    w, e, h = setups.get("ward"), setups.get("envoy"), setups.get("haproxy")
    if not (w and e):
        return out
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
                    "ratio": ratio(w_core, e_core), "met": at_least(w_core, e_core, 2)})
        hs = h and h["points"].get("saturation")
        if hs:
            h_core = hs.get("rps_per_busiest_core")
            out.append({"goal": "max rps per worker core ≥ 0.8× HAProxy (plain HTTP)",
                        "ward": w_core, "haproxy": h_core,
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
            out.append({"goal": goal.format(point), "ward": on, other: off, "ratio": r,
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
            cells += [fmt(round(s["rss_idle_kb"][proc] / 1024, 1)), fmt(round(s["rss_peak_kb"].get(proc, 0) / 1024, 1))]
            rows.append(cells)
    points = list(next(iter(setups.values()))["points"])
    out.append("Per proxy process: CPU as % of one core per 1,000 rps at each point; RSS in MiB "
               "(idle = after start, peak = VmHWM at the end)")
    out.append(table(rows, ["setup", "process"] + [f"CPU %/1k rps @ {p}" for p in points] + ["RSS idle", "RSS peak"]))
    out.append("")
    if goal_rows:
        rows = []
        for g in goal_rows:
            vals = ", ".join(f"{k}={fmt(v)}" for k, v in g.items() if k not in ("goal", "met", "ratio"))
            rows.append([g["goal"], vals, "–" if g["ratio"] is None else f"{g['ratio']:.3f}", "–" if g["met"] is None else ("met" if g["met"] else "NOT met")])
        out.append("Goals (issue 6), `ward` setup against `envoy` (and `haproxy`)")
        out.append(table(rows, ["goal", "values", "ratio", "result"]))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--format", choices=["table", "json"], default="table")
    ap.add_argument("--meta", nargs="*", default=[])
    args = ap.parse_args()
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
