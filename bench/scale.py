"""Scenario `scale`: 1 -> 10^6 mobile nodes (SPEC §4: "cost must stay flat").

For each algorithm and table size N, a fresh Python process (so that RSS
differences are clean) pins itself, builds an SA table of N mobile nodes
(each a static binding and one payload SA out and in, all with their own
keys) from Python, one add_sa call per SA, and records:

  build    seconds, and microseconds per mobile node
  memory   VmRSS after - before building, per SA (2 SAs per mobile node);
           again after the timed run (OpenSSL creates its cipher contexts
           per SA lazily, on first use)
  encap    Mpps of inner packets of --size bytes, batches of --batch
           (the input copy, and the destination rewrite below, are timed
           alone and subtracted, as in `engine`), for two kinds of traffic
           over the same table, against a table of 1 mobile node, all three
           measured in the same process in interleaved chunks (so a
           drifting shared host moves them together):
  ratio    traffic to 1 of the N mobile nodes / the 1-node table: the
           target as worded (>= 0.9 at 10^6, reported, not asserted). All
           packets go to that one node, so the engine looks it up once per
           batch: this shows that a big table does not slow a node's traffic,
           not what a lookup per packet costs (spread includes that).
  spread   traffic visiting all N (or --active K) mobile nodes round robin
           in a shuffled order, every packet to another one (the destination
           HoAs are rewritten between batches), after one warm-up pass:
           Mpps and its ratio to the 1-node table. Every packet then works
           on another SA's keys and state, from memory once they outgrow the
           caches: shown, not a target.

A build that exceeds --build-budget seconds is cut off and reported. With
--probe-sequential K, one more point builds K mobile nodes with sequential
HoA IIDs (::1, ::2, ...), to show whether the HoA hash spreads them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import common
from bench.common import Column
from bench.topo import LAYOUTS, BenchError

BACKENDS = ["openssl", "ipsecmb"]
TARGET_RATIO = 0.9
TARGET_AT = 1_000_000

COLUMNS = [
    Column("alg", "alg", align="<"),
    Column("backend", "backend", align="<"),
    Column("layout", "HoAs", align="<"),
    Column("mobile_nodes", "MNs"),
    Column("sas", "SAs"),
    Column("build_s", "build s", "{:.1f}"),
    Column("build_us_per_mn", "us/MN", "{:.1f}"),
    Column("table_bytes_per_sa", "B/SA table", "{:.0f}"),
    Column("run_bytes_per_sa", "B/SA +run", "{:.0f}"),
    Column("one_mn_mpps", "1-MN Mpps", "{:.3f}"),
    Column("mpps", "1 of N Mpps", "{:.3f}"),
    Column("ratio", "ratio", "{:.2f}"),
    Column("check", "check", align="<"),
    Column("spread_mpps", "spread Mpps", "{:.3f}"),
    Column("spread_ratio", "spread", "{:.2f}"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sas", default=None,
                   help="comma-separated mobile node counts (default 1,1000,100000,1000000; "
                        "--quick 1,1000,10000)")
    p.add_argument("--alg", action="extend", nargs="+", metavar="A",
                   help="algorithms (default aes128gcm16 aes128-sha1)")
    p.add_argument("--backend", action="extend", nargs="+", choices=BACKENDS,
                   help="crypto backends (default: openssl, and ipsecmb when available)")
    p.add_argument("--size", type=int, default=64, help="inner packet size (default 64)")
    p.add_argument("--batch", type=int, default=64, help="packets per batch (default 64)")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds of each table (N and 1 mobile node) per point and "
                        "backend (default 0.5; --quick 0.1)")
    p.add_argument("--chunks", type=int, default=10,
                   help="chunks per measurement, N and 1 mobile node interleaved")
    p.add_argument("--hoa-layout", choices=LAYOUTS, default="random",
                   help="home address IIDs for the sweep (default random; see bench/topo.py)")
    p.add_argument("--probe-sequential", type=int, default=None, metavar="K",
                   help="one more point of K mobile nodes with sequential IIDs "
                        "(default 20000; --quick 5000; 0: none)")
    p.add_argument("--build-budget", type=float, default=120.0,
                   help="seconds a table build may take before it is cut off (default 120)")
    p.add_argument("--active", type=int, default=None, metavar="K",
                   help="spread traffic to only K mobile nodes spread over the table; "
                        "default: all N")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed)")
    p.add_argument("--quick", action="store_true", help="short run for CI")
    p.add_argument("--json", metavar="FILE", help="result file (default bench/results/scale-*.json)")
    p.add_argument("--no-png", action="store_true",
                   help="no chart (by default a PNG beside the JSON, if matplotlib is installed)")


def _resolve(args) -> None:
    from bench.engine import _list
    q = args.quick
    args.sas = [int(x) for x in (args.sas or ("1,1000,10000" if q else
                                              "1,1000,100000,1000000")).split(",") if x]
    if 1 not in args.sas:
        args.sas.insert(0, 1)                  # shows the noise floor of the ratio
    args.alg = _list(args.alg) or ["aes128gcm16", "aes128-sha1"]
    args.backend = _list(args.backend) or BACKENDS
    if args.seconds is None:
        args.seconds = 0.1 if q else 0.5
    if args.probe_sequential is None:
        args.probe_sequential = 5000 if q else 20000


# --- one point, in its own process ------------------------------------------

def point(spec: dict) -> dict:
    """Build one table and measure it (runs in a child process)."""
    from fastpath.core.engine import Engine

    from bench.engine import EngineLoop, Workload
    from bench.topo import build_table, iid_bytes, iids

    common.pin_cpu(spec["cpu"])
    common.set_clock(spec["clock"])
    n, alg, B, size = spec["n"], spec["alg"], spec["batch"], spec["size"]
    mb = "ipsecmb" in spec["backends"]
    out: dict = {"alg": alg, "mobile_nodes": n, "layout": spec["layout"], "backends": {}}
    blob = iid_bytes(iids(n, spec["layout"])).tobytes()
    common.settle_memory()
    rss0 = common.rss_bytes()
    table = build_table(alg, n, spec["layout"], ipsecmb=mb, budget_s=spec["budget"], blob=blob)
    common.settle_memory()
    rss1 = common.rss_bytes()
    nsas = table.sad.n_sas
    out.update(build_s=table.build_s, built=table.built, aborted=table.aborted, sas=nsas,
               build_us_per_mn=table.build_s / table.built * 1e6,
               rss_before=rss0, rss_after_build=rss1,
               table_bytes_per_sa=(rss1 - rss0) / nsas,
               table_bytes_per_mn=(rss1 - rss0) / table.built,
               sad_ipsecmb_keys=table.sad.ipsecmb_keys)
    if table.aborted:
        return out
    # The baseline: a table of one mobile node, measured in chunks interleaved
    # with this one's, so that the ratio does not depend on when each ran.
    one = build_table(alg, 1, spec["layout"], ipsecmb=mb)
    wl = Workload(table, size, B, 1, need_decap=False, active=spec.get("active"))
    wl_of_n = Workload(table, size, B, 1, need_decap=False, active=1)
    wl1 = Workload(one, size, B, 1, need_decap=False)
    for be in spec["backends"]:
        w0 = time.perf_counter()
        loop = EngineLoop(Engine(table.sad, backend=be, max_batch=B), wl, "encap")
        warm = time.perf_counter() - w0               # validation + one pass over every MN
        loop_of_n = EngineLoop(Engine(table.sad, backend=be, max_batch=B), wl_of_n, "encap")
        loop1 = EngineLoop(Engine(one.sad, backend=be, max_batch=B), wl1, "encap")
        got = common.measure_interleaved(
            [("spread", loop.step, loop.copy, 1.0), ("of_n", loop_of_n.step, loop_of_n.copy, 1.0),
             ("one", loop1.step, loop1.copy, 1.0)],
            spec["seconds"], spec["chunks"])
        for lp in (loop, loop_of_n, loop1):
            lp.final_check()
        mpps = {k: B / (total.per_iter - copy.per_iter) / 1e6 for k, (total, copy) in got.items()}
        total, copy = got["spread"]
        common.settle_memory()
        rss2 = common.rss_bytes()
        out["backends"][be] = {
            "mpps": mpps["of_n"], "gbps": mpps["of_n"] * size * 8 / 1e3,
            "one_mn_mpps": mpps["one"], "ratio": mpps["of_n"] / mpps["one"],
            "spread_mpps": mpps["spread"], "spread_ratio": mpps["spread"] / mpps["one"],
            "warmup_s": warm,
            "copy_us_per_batch": copy.per_iter * 1e6, "cpu_share": total.cpu_share,
            "timings": {k: {"total": t.as_dict(), "copy": c.as_dict()}
                        for k, (t, c) in got.items()},
            "rss_after_run": rss2, "run_bytes_per_sa": (rss2 - rss0) / nsas,
        }
        del loop, loop_of_n, loop1
        common.settle_memory()
    return out


def _point_main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        res = point(spec)
    except BenchError as e:
        res = {"error": str(e)}
    print("RESULT " + json.dumps(res), flush=True)
    return 0 if "error" not in res else 3


def run_point(spec: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-m", "bench.scale", json.dumps(spec)],
                       capture_output=True, text=True, env=env, cwd=common.REPO)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise BenchError(f"scale point {spec['alg']} N={spec['n']} failed (exit {p.returncode}):\n"
                     f"{p.stderr[-3000:]}")


# --- the scenario ------------------------------------------------------------

def run(args) -> int:
    from fastpath.core.esp import ipsecmb_available
    _resolve(args)
    t_start = time.perf_counter()
    cpu = common.pin_cpu(args.cpu)
    doc = common.header("scale", args)
    doc["pinned_cpu"] = cpu
    cpu0 = common.cpu_times()
    backends = [b for b in args.backend if b != "ipsecmb" or ipsecmb_available()]
    print(common.describe_machine(doc), flush=True)
    print(f"encap, {args.size}-byte inner packets, batch {args.batch}, "
          f"{args.seconds:g} s per point and backend", flush=True)
    points = [(n, args.hoa_layout) for n in args.sas]
    if args.probe_sequential and args.hoa_layout != "sequential":
        points.append((args.probe_sequential, "sequential"))
    raw = []
    rows = []
    for alg in args.alg:
        for n, layout in points:
            spec = {"alg": alg, "n": n, "layout": layout, "backends": backends,
                    "size": args.size, "batch": args.batch, "seconds": args.seconds,
                    "chunks": args.chunks, "budget": args.build_budget, "cpu": cpu,
                    "clock": args.clock, "active": args.active}
            t0 = time.perf_counter()
            res = run_point(spec)
            res["wall_s"] = time.perf_counter() - t0
            raw.append(res)
            if "error" in res:
                raise BenchError(res["error"])
            for be in backends:
                b = res["backends"].get(be)
                row = {"alg": alg, "backend": be, "layout": layout, "mobile_nodes": n,
                       "sas": res["sas"], "build_s": res["build_s"],
                       "build_us_per_mn": res["build_us_per_mn"],
                       "table_bytes_per_sa": res["table_bytes_per_sa"],
                       "table_bytes_per_mn": res["table_bytes_per_mn"],
                       "aborted": res["aborted"], "built": res["built"]}
                if b:
                    row.update(mpps=b["mpps"], gbps=b["gbps"], ratio=b["ratio"],
                               one_mn_mpps=b["one_mn_mpps"], spread_mpps=b["spread_mpps"],
                               spread_ratio=b["spread_ratio"], cpu_share=b["cpu_share"],
                               run_bytes_per_sa=b["run_bytes_per_sa"], warmup_s=b["warmup_s"],
                               copy_us_per_batch=b["copy_us_per_batch"])
                if res["aborted"]:
                    row["check"] = (f"build cut off after {res['built']} MNs "
                                    f"({res['build_s']:.0f} s)")
                elif n == TARGET_AT and "ratio" in row:
                    row["check"] = common.verdict(row["ratio"] >= TARGET_RATIO) + \
                        f" >={TARGET_RATIO}"
                rows.append(row)
                print(f"  {alg:<12} {be:<8} {layout:<10} N={n:<8} build {res['build_s']:6.1f} s  "
                      + (f"{row['mpps']:.3f} Mpps (1 of N), {row['spread_mpps']:.3f} spread"
                         if b else "-"), flush=True)
    doc["points"] = raw
    doc["rows"] = rows
    doc["duration_s"] = time.perf_counter() - t_start
    doc["host_load"] = common.host_load(cpu0, common.cpu_times())
    print()
    print(common.render_table(COLUMNS, rows))
    print(f"\nB/SA: VmRSS growth / SAs (2 per mobile node), after building the table and "
          f"after the timed run. ratio: traffic to 1 of the N mobile nodes / a table of 1; "
          f"target at {TARGET_AT:,} mobile nodes >= {TARGET_RATIO} (reported, not asserted). "
          f"spread: traffic to all N (--active K: K of them), every packet to another node, "
          f"/ a table of 1: the cost of working on SAs out of the caches (shown, no target).")
    hl = doc["host_load"]
    if hl:
        print(f"host during the run: {hl['busy_pct']:.0f}% of all CPUs busy (this run alone "
              f"is ~{100 / (doc['machine']['cores'] or 1):.0f}%), steal {hl['steal_pct']:.1f}%")
    path = common.write_json(args.json, doc)
    if not args.no_png:
        png = common.plot(path.with_suffix(".png"), chart(rows, args.hoa_layout),
                          common.chart_title(doc))
        if png:
            print(f"chart: {png}")
    print(f"{len(raw)} points in {doc['duration_s']:.0f} s; JSON: {path}")
    return 0


def chart(rows, layout: str) -> list[dict]:
    """Encap Mpps and bytes per SA against the number of mobile nodes."""
    mpps: dict = {}
    mem: dict = {}
    for r in rows:
        if r["layout"] != layout or r.get("mpps") is None:
            continue
        for key, label in (("mpps", "1 of N"), ("spread_mpps", "spread")):
            xs, ys = mpps.setdefault(f"{r['alg']} {r['backend']} {label}", ([], []))
            xs.append(r["mobile_nodes"])
            ys.append(r[key])
        if r["mobile_nodes"] >= 1000 and r.get("run_bytes_per_sa") is not None:
            xs, ys = mem.setdefault(f"{r['alg']} {r['backend']}", ([], []))
            xs.append(r["mobile_nodes"])
            ys.append(r["run_bytes_per_sa"])
    return [{"title": "encap throughput", "xlabel": "mobile nodes (2 SAs each)",
             "ylabel": "Mpps (one core)", "logx": True, "series": mpps},
            {"title": "memory per SA (VmRSS growth, after the run)",
             "xlabel": "mobile nodes", "ylabel": "bytes / SA", "logx": True, "series": mem}]


if __name__ == "__main__":
    sys.exit(_point_main())
