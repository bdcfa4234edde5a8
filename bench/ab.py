"""Alternating A/B of two builds of the engine (e.g. two worktrees, or copies
of one before and after a change), for changes smaller than the host's drift.

    python3 -m bench.ab OLD_DIR NEW_DIR [--pairs 8] [--seconds 0.6]
                        aes128gcm16:64:decap aes128gcm16:64:encap ...

Each cell (alg:size:direction, ipsecmb backend, one mobile node, batch 64) is
measured in one process per build, the builds alternating (ABBA order), each
process under flock /tmp/fp-bench.lock: engine (total minus the input copy)
and the bare crypto of bench.engine, interleaved in 20 chunks. Prints per
pair eng/bare, then medians and how many pairs the new build won. A one-run
comparison is meaningless on a shared host (the same bench moves +-30 %
between runs); compare eng/bare within pairs, and many pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys
from bench import common
from bench.engine import Workload, EngineLoop, bare_step, bare_open_steps
from bench.topo import build_table
from fastpath.core.engine import Engine
common.pin_cpu(None)
common.set_clock("cpu")
secs = float(sys.argv[1])
out, tables = [], {}
for cell in sys.argv[2:]:
    alg, size, d = cell.split(":")
    size = int(size)
    t = tables.get(alg) or tables.setdefault(
        alg, build_table(alg, 1, "random", mtu=max(1500, size + 128), ipsecmb=True))
    eng = Engine(t.sad, backend="ipsecmb", max_batch=64)
    wl = Workload(t, size, 64, 64 if d == "decap" else 1, d == "decap")
    loop = EngineLoop(eng, wl, d)
    items = [("engine", loop.step, loop.copy, 1.0)]
    if d == "decap":
        items.append(("bare", *bare_open_steps(alg, "ipsecmb", wl), 0.5))
    else:
        items.append(("bare", bare_step(alg, "ipsecmb", wl), None, 0.5))
    got = common.measure_interleaved(items, secs, 20)
    loop.final_check()
    tot, cp = got["engine"]
    bt, br = got["bare"]
    e = (tot.per_iter - cp.per_iter) / 64 * 1e9
    b = (bt.per_iter - (br.per_iter if br else 0)) / 64 * 1e9
    out.append((cell, e, b))
print(json.dumps(out))
'''


def run_one(root: str, seconds: float, cells: list[str]) -> list:
    env = {**os.environ, "PYTHONPATH": root}
    o = subprocess.run(["flock", "/tmp/fp-bench.lock", sys.executable, "-c", CHILD, str(seconds),
                        *cells], cwd=root, env=env, capture_output=True, text=True)
    if o.returncode:
        raise SystemExit(f"{root}: {o.stderr.strip()[-2000:]}")
    return json.loads(o.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("cells", nargs="+", help="alg:size:direction")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.6)
    a = p.parse_args(argv)
    res = {"old": [], "new": []}
    for k in range(a.pairs):
        for v in (("old", "new") if k % 2 == 0 else ("new", "old")):
            r = run_one(getattr(a, v), a.seconds, a.cells)
            res[v].append(r)
            print(f"{v:>3} " + "  ".join(f"{c}: eng {e:.1f} ns bare {b:.1f} ns e/b {b / e:.3f}"
                                         for c, e, b in r), flush=True)
    for i, c in enumerate(a.cells):
        eb = {v: [x[i][2] / x[i][1] for x in res[v]] for v in res}
        eng = {v: statistics.median(x[i][1] for x in res[v]) for v in res}
        won = sum(n > o for o, n in zip(eb["old"], eb["new"]))
        print(f"{c}: eng/bare old {statistics.median(eb['old']):.3f} new "
              f"{statistics.median(eb['new']):.3f} (new better in {won}/{a.pairs} pairs); "
              f"engine ns/pkt old {eng['old']:.1f} new {eng['new']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
