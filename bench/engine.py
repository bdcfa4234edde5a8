"""Scenario `engine`: in-memory batches through the Cython engine (SPEC §8).

For each algorithm x inner packet size x direction x crypto backend, on one
pinned core:

  engine   the engine over a batch as a worker runs it: epoch enter,
           run_encap/run_decap, epoch leave, in a loop without the GIL
           (Engine.bench_loop), the input restored before each batch as
           Batch.copy_from does (the engine works in place). The restoring
           (and, with --sas > 1, the rewrite of the destination HoAs) is
           timed alone in alternating chunks and subtracted: engine = total
           - copy. The targets are judged on this figure.
  py-API   the same through the Python API, one Engine.encap/decap call per
           batch (each releases and retakes the GIL: ~0.1 us per call, 1-2
           ns per packet at 64 per batch), minus the same loop's copies.
  bare     the library alone, through the same backend code, on packets in
           a Batch of the engine's geometry: no framing, lookups, sequence
           numbers, replay window or verdicts. Encap rows: EspSA.bare_seal
           (cipher + ICV) over the same inner packets. Decap rows:
           EspSA.bare_open (ICV check + decryption) over the same received
           packets, restored from a pristine copy before each pass; the
           restore is timed alone and subtracted, as the engine's input copy
           is. (Decap rows also record the bare seal, bare_seal_mpps.)
           Timed in chunks interleaved with the engine's so that all see
           the same machine.
  ref      the pure-Python reference engine (fastpath.ref) on the same
           packets (a short run: it is slow). Independent of the backend.
  openssl  `openssl speed` of the same primitives at the inner packet size,
           run in this process's run on the same core (CBC suites: cipher and
           HMAC times added).

Mpps counts packets; Gbit/s counts inner packet bytes. Figures are medians
of --chunks chunks. Targets are reported (PASS/FAIL), never asserted: the
exit status is 0 unless the benchmark itself broke (a packet was dropped).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fastpath.algorithms import ALGORITHMS
from fastpath.core.engine import Engine
from fastpath.core.esp import EspSA, ipsecmb_available
from fastpath.verdicts import Reason, Verdict

from bench import common
from bench.common import Column
from bench.topo import (CN, HA, IID_OFFSET, LAYOUTS, SPI_IN, SPI_OUT, BenchError, build_table,
                        inner_packet, load_batch, ref_engine, sa_keys, traffic_order)
from fastpath.ref.ipv6 import ipv6_header

DEFAULT_SIZES = [64, 512, 1400]
DIRECTIONS = ["encap", "decap"]
BACKENDS = ["openssl", "ipsecmb"]

# Targets (reported, not asserted).
MIN_ENGINE_OVER_BARE = 0.7
MIN_ENGINE_OVER_REF = 3.0
# (backend, algorithm, direction, inner size) -> minimum engine Mpps
ABSOLUTE_TARGETS = {
    ("ipsecmb", "aes128gcm16", "encap", 1400): 4.0,
    ("ipsecmb", "aes128gcm16", "encap", 64): 8.0,
    ("ipsecmb", "aes128-sha1", "encap", 1400): 1.7,
    ("ipsecmb", "aes128-sha1", "encap", 64): 5.0,
    ("openssl", "aes128gcm16", "encap", 1400): 1.4,
    ("openssl", "aes128-sha1", "encap", 1400): 0.4,
}

COLUMNS = [
    Column("alg", "alg", align="<"),
    Column("size", "size"),
    Column("direction", "dir", align="<"),
    Column("backend", "backend", align="<"),
    Column("engine_mpps", "engine Mpps", "{:.3f}"),
    Column("engine_gbps", "Gbit/s", "{:.2f}"),
    Column("bare_mpps", "bare Mpps", "{:.3f}"),
    Column("engine_over_bare", "eng/bare", "{:.2f}"),
    Column("engine_api_mpps", "py-API Mpps", "{:.3f}"),
    Column("ref_mpps", "ref Mpps", "{:.4f}"),
    Column("engine_over_ref", "eng/ref", "{:.0f}"),
    Column("openssl_speed_mpps", "ossl-speed Mpps", "{:.3f}"),
    Column("check", "check", align="<"),
]


def _list(values, cast=str):
    """--flag a b --flag c,d -> [a, b, c, d]"""
    out = []
    for v in values or []:
        out.extend(cast(x) for x in str(v).split(",") if x)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alg", action="extend", nargs="+", metavar="A",
                   help=f"algorithms (default: all of {', '.join(ALGORITHMS)}; "
                        "--quick: aes128gcm16 aes128-sha1)")
    p.add_argument("--size", action="extend", nargs="+", metavar="N",
                   help="inner IPv6 packet sizes in bytes (default 64 512 1400; --quick: 64 1400)")
    p.add_argument("--direction", action="extend", nargs="+", choices=DIRECTIONS,
                   help="encap and/or decap (default both)")
    p.add_argument("--backend", action="extend", nargs="+", choices=BACKENDS,
                   help="crypto backends (default: openssl, and ipsecmb when available)")
    p.add_argument("--batch", type=int, default=64, help="packets per batch (default 64)")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds of engine per cell (default 0.4; --quick 0.1); the "
                        "bare crypto, interleaved with it, and the reference run take half of it")
    p.add_argument("--chunks", type=int, default=10,
                   help="chunks per measurement, engine and bare interleaved; the median counts")
    p.add_argument("--sas", type=int, default=1,
                   help="mobile nodes in the table (each one payload SA out and in); traffic "
                        "visits them round robin in a shuffled order (default 1)")
    p.add_argument("--hoa-layout", choices=LAYOUTS, default="random",
                   help="home address IIDs of the mobile nodes (see bench/topo.py)")
    p.add_argument("--pool", type=int, default=None,
                   help="distinct decap input batches, each packet with its own sequence "
                        "number (default 64; --quick 8)")
    p.add_argument("--openssl-seconds", type=int, default=1,
                   help="-seconds of each openssl speed run (0: skip openssl speed)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="time with this thread's CPU time (default: preemption by other "
                        "processes does not count, as in openssl speed) or wall time")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed)")
    p.add_argument("--quick", action="store_true", help="short run for CI")
    p.add_argument("--json", metavar="FILE", help="result file (default bench/results/engine-*.json)")
    p.add_argument("--no-png", action="store_true",
                   help="no chart (by default a PNG beside the JSON, if matplotlib is installed)")


def _resolve(args) -> None:
    q = args.quick
    args.alg = _list(args.alg) or (["aes128gcm16", "aes128-sha1"] if q else list(ALGORITHMS))
    for a in args.alg:
        if a not in ALGORITHMS:
            raise SystemExit(f"unknown algorithm {a!r} (have: {', '.join(ALGORITHMS)})")
    args.size = _list(args.size, int) or ([64, 1400] if q else DEFAULT_SIZES)
    args.direction = _list(args.direction) or DIRECTIONS
    args.backend = _list(args.backend) or BACKENDS
    if args.seconds is None:
        args.seconds = 0.1 if q else 0.4
    if args.pool is None:
        args.pool = 8 if q else 64
    if args.batch < 1 or args.sas < 1 or args.pool < 1:
        raise SystemExit("--batch, --sas and --pool must be positive")


class Workload:
    """The packets of one (table, size): encap input with a rotation of
    destination HoAs, decap input pool, and the bytes the ref engine gets."""

    def __init__(self, table, size: int, batch: int, pool: int, need_decap: bool,
                 active: int | None = None):
        self.table, self.size, self.B = table, size, batch
        self.max_packet = max(2048, size + 256)
        # active: traffic to only that many mobile nodes (spread over the
        # table), the rest idle in it: the lookup cost alone, not the cache
        # misses of touching every SA's keys
        n = table.built if not active else min(active, table.built)
        order = traffic_order(table.built)
        if n < table.built:
            order = order[np.linspace(0, table.built - 1, n).astype(np.int64)]
        self.order = order
        # Encap: one pristine batch; with several mobile nodes the destination
        # IIDs of each batch are rewritten from `rot` (R batches cover them all).
        reps = -(-n // batch)
        tiled = order[np.arange(reps * batch) % n]
        self.first_mns = [int(x) for x in tiled[:batch]]
        pkts = [inner_packet(CN, table.hoa(m), size, fill=k) for k, m in enumerate(self.first_mns)]
        self.encap_packets = pkts
        self.encap_src = load_batch(pkts, self.max_packet)
        self.rot = None
        if n > 1:
            iid = np.frombuffer(table.blob, dtype=np.uint8).reshape(-1, 8)
            self.rot = np.ascontiguousarray(iid[tiled].reshape(reps, batch, 8))
        self.pool_lists: list[list[bytes]] = []
        self.pool: list = []
        self.decap_inner: list[bytes] = []
        if need_decap:
            self._build_pool(pool)

    def _build_pool(self, pool: int) -> None:
        t = self.table
        n, B = t.built, self.B
        coverage = min(n, pool * B)
        # spread the covered mobile nodes over the whole table
        mns = [int(self.order[(k * n) // coverage]) for k in range(coverage)]
        sas = {}
        seqs = {}
        for j in range(pool):
            lst = []
            for i in range(B):
                m = mns[(j * B + i) % coverage]
                sa = sas.get(m) or sas.setdefault(m, t.mn_sa(m, "in"))
                seq = seqs.get(m, 0) + 1
                seqs[m] = seq
                inner = inner_packet(t.hoa(m), CN, self.size, fill=j * B + i)
                if j == 0:
                    self.decap_inner.append(inner)
                esp = sa.seal(seq, inner, 41)
                lst.append(ipv6_header(t.coa(m), HA, 50, len(esp)) + esp)
            self.pool_lists.append(lst)
            self.pool.append(load_batch(lst, self.max_packet))
        self.decap_coverage = coverage


def _check_verdicts(batch, want: Verdict, what: str) -> None:
    v = batch.verdicts[:batch.count]
    if not (v == int(want)).all():
        res = batch.results()
        bad = [(k, Verdict(r[0]).name, Reason(r[1]).name) for k, r in enumerate(res)
               if r[0] != int(want)][:5]
        raise BenchError(f"{what}: {len(bad)}+ packets not {want.name} "
                         f"(slot, verdict, reason): {bad}")


def _validate_encap(wl: Workload, out_batch) -> None:
    """The engine's output opens at the mobile node into the input packet."""
    res = out_batch.results()
    for k in (0, len(res) - 1):
        m = wl.first_mns[k]
        pkt = res[k][2]
        if pkt[24:40] != wl.table.coa(m) or pkt[6] != 50:
            raise BenchError(f"encap slot {k}: not ESP to the CoA of mobile node {m}")
        _, payload, nh = wl.table.mn_sa(m, "out").open(pkt[40:])
        if payload != wl.encap_packets[k] or nh != 41:
            raise BenchError(f"encap slot {k}: the mobile node decrypts something else")


class EngineLoop:
    """Timed loops of one engine over one workload: `step` restores the
    input (Batch.copy_from, plus the HoA rewrite with several mobile nodes)
    and runs the engine as a worker does (epoch enter, run_encap/run_decap,
    epoch leave: Engine.bench_loop, no Python call or GIL hand-off per
    batch); `copy` does only the restoring, in the same loop. `api_step` /
    `api_copy` do the same through the Python API, one Engine.encap/decap
    call (which releases the GIL) per batch. Validates the engine's output
    before anything is timed."""

    def __init__(self, eng, wl: Workload, direction: str):
        from fastpath.core.batch import Batch
        self.eng, self.wl, self.direction = eng, wl, direction
        self.w = w = Batch(wl.B, wl.max_packet, hugepages=True)   # as a worker's batches
        self.k = 0
        if direction == "encap":
            self.run = eng.encap
            self.want = Verdict.TO_WIRE
            self.inputs = [wl.encap_src]
            self.rot = wl.rot
        else:
            self.run = eng.decap
            self.want = Verdict.TO_HOME
            self.inputs = wl.pool
            self.rot = None
        self.lo = w.headroom + IID_OFFSET
        if direction == "encap":
            self._load(0)
            self.run(w)
            self.check(f"{eng.backend} encap")
            _validate_encap(wl, w)
            self.step(len(self.rot) if self.rot is not None else 1)   # warm: every MN once
        else:
            for j in range(len(self.inputs)):            # every input packet opens
                self._load(j)
                self.run(w)
                self.check(f"{eng.backend} decap pool batch {j}")
                if j == 0 and [r[2] for r in w.results()] != wl.decap_inner:
                    raise BenchError(f"{eng.backend} decap: output is not the inner packets")

    def _load(self, j: int) -> None:
        self.w.copy_from(self.inputs[j % len(self.inputs)])
        if self.rot is not None:
            self.w.data[:, self.lo:self.lo + 8] = self.rot[j % len(self.rot)]

    def check(self, what: str) -> None:
        _check_verdicts(self.w, self.want, what)

    def _loop(self, n: int, with_engine: bool) -> float:
        w, copy_from, run, inputs, rot = self.w, self.w.copy_from, self.run, self.inputs, self.rot
        P = len(inputs)
        k = self.k
        t0 = common.clock()
        if rot is not None:                              # encap over many mobile nodes
            data, lo, hi, src, R = w.data, self.lo, self.lo + 8, inputs[0], len(rot)
            for j in range(k, k + n):
                copy_from(src)
                data[:, lo:hi] = rot[j % R]
                if with_engine:
                    run(w)
        elif P == 1:
            src = inputs[0]
            for _ in range(n):
                copy_from(src)
                if with_engine:
                    run(w)
        else:
            for j in range(k, k + n):
                copy_from(inputs[j % P])
                if with_engine:
                    run(w)
        t = common.clock() - t0
        self.k = k + n
        return t

    def _cloop(self, n: int, with_engine: bool) -> float:
        t0 = common.clock()
        self.eng.bench_loop(self.w, self.inputs, n, with_engine, self.direction == "decap",
                            self.rot, IID_OFFSET)
        return common.clock() - t0

    def step(self, n: int) -> float:
        return self._cloop(n, True)

    def copy(self, n: int) -> float:
        return self._cloop(n, False)

    def api_step(self, n: int) -> float:
        return self._loop(n, True)

    def api_copy(self, n: int) -> float:
        return self._loop(n, False)

    def final_check(self) -> None:
        """The timed loop may end on a copy: run one batch each way and check it."""
        self._loop(1, True)
        self.check(f"{self.eng.backend} {self.direction} after the timed run")
        self._cloop(1, True)
        self.check(f"{self.eng.backend} {self.direction} (worker loop) after the timed run")


def bare_step(alg: str, backend: str, wl: Workload):
    """The bare seal: B inner packets framed once in a Batch of the engine's
    geometry, then only sealed (cipher + ICV), in place, again and again."""
    from fastpath.core.batch import Batch
    m = wl.first_mns[0]
    esp = EspSA(alg, SPI_OUT + m, *sa_keys(alg, m, "out"), esn=False, backend=backend)
    esp.prepare_bare(list(wl.encap_packets), Batch(wl.B, wl.max_packet, hugepages=True))

    def step(n: int) -> float:
        t0 = common.clock()
        esp.bare_seal(n)
        return common.clock() - t0
    return step


def bare_open_steps(alg: str, backend: str, wl: Workload):
    """The bare open: B received packets of one SA (the decap pool's inner
    packets, sealed by one mobile node) in a Batch of the engine's geometry;
    each pass restores them from a pristine copy and opens them (ICV check +
    decryption). Returns (restore + open, restore alone)."""
    from fastpath.core.batch import Batch
    m = wl.first_mns[0]
    sa = wl.table.mn_sa(m, "in")
    pkts = []
    for k, inner in enumerate(wl.decap_inner):
        esp = sa.seal(k + 1, inner, 41)
        pkts.append(ipv6_header(wl.table.coa(m), HA, 50, len(esp)) + esp)
    bare = EspSA(alg, SPI_IN + m, *sa_keys(alg, m, "in"), esn=False, backend=backend)
    bare.prepare_bare_open(pkts, Batch(wl.B, wl.max_packet, hugepages=True),
                           Batch(wl.B, wl.max_packet))

    def step(n: int) -> float:
        t0 = common.clock()
        bare.bare_open(n)
        return common.clock() - t0

    def restore(n: int) -> float:
        t0 = common.clock()
        bare.bare_open(n, True)
        return common.clock() - t0
    return step, restore


def measure_cell(eng, alg: str, wl: Workload, direction: str, seconds: float,
                 chunks: int) -> dict:
    """Engine (total and copy) and bare crypto in interleaved chunks."""
    loop = EngineLoop(eng, wl, direction)
    seal = bare_step(alg, eng.backend, wl)
    items = [("engine", loop.step, loop.copy, 1.0), ("api", loop.api_step, loop.api_copy, 0.5),
             ("seal", seal, None, 0.5)]
    if direction == "decap":
        items.append(("open", *bare_open_steps(alg, eng.backend, wl), 0.5))
    got = common.measure_interleaved(items, seconds, chunks)
    loop.final_check()
    total, copy = got["engine"]
    B = wl.B
    engine_s = total.per_iter - copy.per_iter
    if engine_s <= 0:
        raise BenchError(f"{eng.backend} {direction}: engine time not above the copy time")
    mpps = B / engine_s / 1e6
    api_total, api_copy = got["api"]
    api_s = api_total.per_iter - api_copy.per_iter
    seal_t = got["seal"][0]
    extra = {}
    if direction == "decap":
        open_t, restore_t = got["open"]
        bare_s = open_t.per_iter - restore_t.per_iter
        if bare_s <= 0:
            raise BenchError(f"{eng.backend} bare open: time not above the restore time")
        bare_t = open_t
        bare_best_s = open_t.best - restore_t.per_iter
        paired = common.paired_ratio(open_t, restore_t, total, copy)
        extra = {"bare_seal_mpps": B / seal_t.per_iter / 1e6,
                 "bare_restore_us_per_batch": restore_t.per_iter * 1e6,
                 "bare_seal_timing": seal_t.as_dict(),
                 "bare_restore_timing": restore_t.as_dict()}
    else:
        bare_t = seal_t
        bare_s = seal_t.per_iter
        bare_best_s = seal_t.best
        paired = common.paired_ratio(seal_t, None, total, copy)
    extra.update({
        "engine_api_mpps": B / api_s / 1e6 if api_s > 0 else None,
        "engine_api_over_bare": (bare_s / api_s) if api_s > 0 else None,
        "api_total_timing": api_total.as_dict(), "api_copy_timing": api_copy.as_dict()})
    return {**extra,
        "engine_mpps": mpps,
        "engine_gbps": mpps * wl.size * 8 / 1e3,
        "engine_us_per_batch": engine_s * 1e6,
        "engine_best_mpps": B / (total.best - copy.per_iter) / 1e6,
        "loop_mpps": B / total.per_iter / 1e6,
        "copy_us_per_batch": copy.per_iter * 1e6,
        "bare_mpps": B / bare_s / 1e6,
        "engine_over_bare_paired": paired,
        "bare_best_mpps": B / bare_best_s / 1e6 if bare_best_s > 0 else None,
        "cpu_share": total.cpu_share,
        "total_timing": total.as_dict(),
        "copy_timing": copy.as_dict(),
        "bare_timing": bare_t.as_dict(),
    }


def measure_ref(wl: Workload, direction: str, seconds: float) -> dict:
    if direction == "encap":
        lists = [wl.encap_packets]
        mns = wl.first_mns
        want = Verdict.TO_WIRE
    else:
        lists = wl.pool_lists
        mns = _pool_mns(wl)
        want = Verdict.TO_HOME
    ref = ref_engine(wl.table, mns)
    run = getattr(ref, direction)
    res = run(lists[0])
    bad = [(k, Verdict(v).name, Reason(r).name) for k, (v, r, _) in enumerate(res)
           if v != want][:5]
    if bad:
        raise BenchError(f"reference {direction}: packets not {want.name}: {bad}")
    state = [0]
    L = len(lists)

    def step(n: int) -> float:
        k = state[0]
        t0 = common.clock()
        for j in range(k, k + n):
            run(lists[j % L])
        state[0] = k + n
        return common.clock() - t0
    t = common.measure(step, seconds, chunks=3)
    return {"ref_mpps": wl.B / t.per_iter / 1e6, "ref_timing": t.as_dict()}


def _pool_mns(wl: Workload):
    n, cov = wl.table.built, wl.decap_coverage
    return sorted({int(wl.order[(k * n) // cov]) for k in range(cov)})


def _checks(row: dict) -> None:
    fails = []
    # engine/bare: chunk by chunk (common.paired_ratio), the ratio of the
    # medians beside it in the JSON
    row["engine_over_bare_of_medians"] = (row["engine_mpps"] / row["bare_mpps"]
                                          if row.get("bare_mpps") else None)
    row["engine_over_bare"] = row.get("engine_over_bare_paired",
                                      row["engine_over_bare_of_medians"])
    row["engine_over_ref"] = (row["engine_mpps"] / row["ref_mpps"]
                              if row.get("ref_mpps") else None)
    ok_bare = (row["engine_over_bare"] >= MIN_ENGINE_OVER_BARE
               if row["engine_over_bare"] is not None else None)
    ok_ref = (row["engine_over_ref"] >= MIN_ENGINE_OVER_REF
              if row["engine_over_ref"] is not None else None)
    target = ABSOLUTE_TARGETS.get((row["backend"], row["alg"], row["direction"], row["size"]))
    ok_abs = row["engine_mpps"] >= target if target is not None else None
    row["targets"] = {
        "engine_over_bare": {"min": MIN_ENGINE_OVER_BARE, "result": common.verdict(ok_bare)},
        "engine_over_ref": {"min": MIN_ENGINE_OVER_REF, "result": common.verdict(ok_ref)},
        "engine_mpps": {"min": target, "result": common.verdict(ok_abs)},
    }
    if ok_bare is False:
        fails.append(f"e/b<{MIN_ENGINE_OVER_BARE}")
    if ok_ref is False:
        fails.append(f"e/r<{MIN_ENGINE_OVER_REF:g}")
    if ok_abs is False:
        fails.append(f"<{target:g}Mpps")
    row["check"] = "FAIL " + ",".join(fails) if fails else (
        "PASS" + (f" >={target:g}Mpps" if target is not None else ""))


def run(args) -> int:
    _resolve(args)
    t_start = time.perf_counter()
    cpu = common.pin_cpu(args.cpu)
    common.set_clock(args.clock)
    doc = common.header("engine", args)
    doc["pinned_cpu"] = cpu
    cpu0 = common.cpu_times()
    mb = ipsecmb_available()
    backends = [b for b in args.backend if b != "ipsecmb" or mb]
    doc["notes"] = []
    if len(backends) < len(args.backend):
        doc["notes"].append("ipsecmb backend unavailable: skipped")
    print(common.describe_machine(doc), flush=True)
    print(f"batch {args.batch}, {args.sas} mobile node(s) ({args.hoa_layout} HoAs), "
          f"{args.seconds:g} s per engine cell, median of {args.chunks} chunks", flush=True)

    # openssl speed first, on the same core, for every (alg, size) in the run
    speed = {}
    if args.openssl_seconds > 0:
        t0 = time.perf_counter()
        for alg in args.alg:
            for size in args.size:
                speed[(alg, size)] = common.openssl_speed(alg, size, args.openssl_seconds)
        doc["openssl_speed_s"] = time.perf_counter() - t0

    rows = []
    tables = []
    for alg in args.alg:
        t0 = time.perf_counter()
        table = build_table(alg, args.sas, args.hoa_layout, mtu=max(1500, max(args.size) + 128),
                            ipsecmb=mb)
        tables.append({"alg": alg, "mobile_nodes": args.sas, "sas": table.sad.n_sas,
                       "build_s": table.build_s})
        engines = {be: Engine(table.sad, backend=be, max_batch=args.batch) for be in backends}
        for size in args.size:
            wl = Workload(table, size, args.batch, args.pool, "decap" in args.direction)
            for direction in args.direction:
                ref = measure_ref(wl, direction, min(args.seconds / 2, 0.5))
                for be in backends:
                    row = {"alg": alg, "size": size, "direction": direction, "backend": be,
                           "batch": args.batch, "mobile_nodes": table.built}
                    row.update(measure_cell(engines[be], alg, wl, direction, args.seconds,
                                            args.chunks))
                    row["bare_note"] = "bare seal" if direction == "encap" else \
                        "bare open (restore subtracted); bare seal in bare_seal_mpps"
                    row.update(ref)
                    sp = speed.get((alg, size))
                    row["openssl_speed_mpps"] = sp["mpps"] if sp else None
                    row["openssl_speed"] = sp
                    if direction == "decap":
                        row["decap_pool"] = {"batches": len(wl.pool),
                                             "mobile_nodes": wl.decap_coverage}
                    _checks(row)
                    rows.append(row)
                    print(f"  {alg:<14} {size:>5} {direction:<5} {be:<8} "
                          f"{row['engine_mpps']:7.3f} Mpps  {row['check']}", flush=True)
        del engines, table
        common.settle_memory()

    order = {a: i for i, a in enumerate(args.alg)}
    rows.sort(key=lambda r: (order[r["alg"]], r["size"], DIRECTIONS.index(r["direction"]),
                             BACKENDS.index(r["backend"])))
    doc["tables"] = tables
    doc["rows"] = rows
    doc["duration_s"] = time.perf_counter() - t_start
    doc["host_load"] = common.host_load(cpu0, common.cpu_times())
    print()
    print(common.render_table(COLUMNS, rows))
    print()
    print(summary(rows))
    busy = [r for r in rows if r.get("cpu_share") is not None and r["cpu_share"] < 0.8]
    if busy:
        print(f"note: {len(busy)} cells got < 80% of their CPU (other processes ran on it); "
              f"with --clock cpu their figures still count only this thread's time")
    hl = doc["host_load"]
    if hl:
        print(f"host during the run: {hl['busy_pct']:.0f}% of all CPUs busy (this run alone "
              f"is ~{100 / (doc['machine']['cores'] or 1):.0f}%), steal {hl['steal_pct']:.1f}%")
    path = common.write_json(args.json, doc)
    if not args.no_png:
        png = common.plot(path.with_suffix(".png"), chart(rows), common.chart_title(doc))
        if png:
            print(f"chart: {png}")
    print(f"\n{len(rows)} cells in {doc['duration_s']:.0f} s; JSON: {path}")
    return 0


def summary(rows) -> str:
    lines = [f"Targets (reported, not asserted): engine/bare >= {MIN_ENGINE_OVER_BARE}, "
             f"engine/ref >= {MIN_ENGINE_OVER_REF:g}, and absolute engine Mpps:"]
    by_key = {(r["backend"], r["alg"], r["direction"], r["size"]): r for r in rows}
    for key, target in ABSOLUTE_TARGETS.items():
        r = by_key.get(key)
        be, alg, d, size = key
        got = f"{r['engine_mpps']:.3f}" if r else "not run"
        res = common.verdict(r["engine_mpps"] >= target) if r else "-"
        lines.append(f"  {be:<8} {alg:<12} {d} @{size:<5} >= {target:<4g} Mpps: {got:>8}  {res}")
    for name, key in (("engine/bare", "engine_over_bare"), ("engine/ref", "engine_over_ref")):
        vals = [r["targets"][key]["result"] for r in rows]
        lines.append(f"  {name}: {vals.count('PASS')} PASS, {vals.count('FAIL')} FAIL "
                     f"of {len(vals)} rows")
    return "\n".join(lines)


def chart(rows) -> list[dict]:
    """Engine Mpps against packet size, one panel per direction."""
    panels = []
    for d in DIRECTIONS:
        series: dict = {}
        for r in rows:
            if r["direction"] == d:
                xs, ys = series.setdefault(f"{r['alg']} {r['backend']}", ([], []))
                xs.append(r["size"])
                ys.append(r["engine_mpps"])
        if series:
            panels.append({"title": f"engine {d}", "xlabel": "inner packet bytes",
                           "ylabel": "Mpps (one core)", "logy": True, "series": series})
    return panels
