"""Scenario `swap`: care-of address swaps under load (SPEC §8; issue 4, item 12).

    CN ── HA (fastpath run) ── router ── MN (fastpath run --role mobile-node)
                                    └──── second access link (the other CoA)

Everything runs in network namespaces fpswap-<pid>-{cn,ha,r,mn}, removed at
the end (also on Ctrl-C / SIGTERM, and leftovers of dead runs at start).
Two mobile nodes are configured: A (2001:db8:1::10) is run by a fastpath
mobile node and receives the traffic; B (2001:db8:1::20) is only a set of
binding SAs whose Binding Updates this benchmark builds itself.

Phases (the C helpers in swap_tools.c are compiled at run time):

  0. in-process: the home agent's Binding Update path without I/O - engine
     decap of an ESP-protected BU, VerifiedBinding, BindingCache.process
     (move + grace period), Binding Ack sealed - timed per BU.
  1. capacity probe (unless --rate): the CN sends numbered UDP as fast as
     it can for --probe seconds; the HA's to_wire counter gives the pps the
     HA forwards. The load is then --load (80 %) of that.
  2. steady state: the CN streams at the load rate (and keeps on to the end).
  3. moves: A moves --moves times between 2001:db8:2::10 and
     2001:db8:3::10 with the control socket's `move` (what `fastpath ctl
     move --coa` sends), each after the previous one's Binding Ack was seen
     on the wire, --interval apart. A sniffer on the router's link to the HA
     (r-ha, TPACKET ring, kernel timestamps) sees each BU go to the HA and
     its BA come back: BU->BA latency; it checks online, in wire order, that
     no packet goes to the CoA being left after the BA of the move away from
     it (stale), and that the payload-out SA's ESP sequence numbers go up by
     exactly one from packet to packet.
  4. BU rate ramp (B, while A's traffic goes on): Binding Updates built
     with fastpath.ref - valid ESP on B's binding-in SA, increasing ESP and
     MH sequence numbers, each moving B to its other CoA (--bu-kind move:
     a grace period and a BA each) or refreshing it (refresh) - sent from
     B's CoAs in the MN namespace with a raw socket at each rate of
     --bu-rates for --bu-step seconds, --bu-gap apart. The sniffer counts
     B's Binding Acks in 10 ms bins: accepted BUs/s per step, and the rate
     the HA reaches when it is saturated (the median 10 ms bin of a step it
     could not keep up with). Sustained = the highest step whose BUs were
     all acknowledged; the HA's punt-ring overflow counter says where the
     others went.
  5. throughput: the sink's datagrams per --bin-ms bin, steady state vs the
     bins of the move phase and of the flood.

Targets (reported, never asserted): >= 5,000 BU/s with full validation
while forwarding; BU->BA p99 <= 2 ms at 80 % load; 0 stale packets (over
10,000 moves: --moves 10000).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import common
from bench.common import Column

PREFIX = "fpswap"
CN, HA_CN, HA_WIRE, R_HA = "2001:db8:99::1", "2001:db8:99::2", "2001:db8:ff::1", "2001:db8:ff::2"
R_MN, R_MN2 = "2001:db8:2::1", "2001:db8:3::1"
HA_ADDRESS, HOME_PREFIX = "2001:db8:ffff::1", "2001:db8:1::/64"
HOA_A, COA_A = "2001:db8:1::10", ("2001:db8:2::10", "2001:db8:3::10")
HOA_B, COA_B = "2001:db8:1::20", ("2001:db8:2::20", "2001:db8:3::20")
SPI_A_PAYLOAD_OUT = 0x1003
SPI_B_BINDING_IN, SPI_B_BINDING_OUT = 0x2000, 0x2001
B_KEYS = {"enc": bytes([0x50]) * 16, "auth": bytes([0x51]) * 20}
PORT = 9000
LOAD_FROM = 1 << 26           # the load phase's datagram numbers (the probe's start at 0)

TARGET_BU_RATE = 5000.0
TARGET_P99_MS = 2.0

CONFIG = """\
[home_agent]
address = "{ha}"
home_prefix = "{prefix}"
mtu = 1500
state_dir = "{state}"
allow_manual_aead = true            # benchmark keys: manual AES-GCM is a lab opt-in

[[mobile_node]]                     # A: a fastpath mobile node, receives the stream
home_address = "{hoa_a}"
care_of_address = "{coa_a}"
binding_lifetime_max = 3600

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "in"
  spi = 0x1000
  algorithm = "aes128-sha1"
  enc_key = "{k1}"
  auth_key = "{a1}"

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "out"
  spi = 0x1001
  algorithm = "aes128-sha1"
  enc_key = "{k2}"
  auth_key = "{a2}"

  [[mobile_node.sa]]
  purpose = "payload"
  direction = "in"
  spi = 0x1002
  algorithm = "aes128gcm16"
  key = "{k3}"

  [[mobile_node.sa]]
  purpose = "payload"
  direction = "out"
  spi = {spi_a_out:#x}
  algorithm = "aes128gcm16"
  key = "{k4}"

[[mobile_node]]                     # B: binding SAs only; this benchmark sends its BUs
home_address = "{hoa_b}"
care_of_address = "{coa_b}"
binding_lifetime_max = 3600

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "in"
  spi = {spi_b_in:#x}
  algorithm = "aes128-sha1"
  enc_key = "{kb_enc}"
  auth_key = "{kb_auth}"

  [[mobile_node.sa]]
  purpose = "binding"
  direction = "out"
  spi = {spi_b_out:#x}
  algorithm = "aes128-sha1"
  enc_key = "{kb2}"
  auth_key = "{ab2}"
"""

# B's Binding Updates, sent from the MN namespace: a raw socket (IPV6_HDRINCL)
# so that the outer source is B's care-of address. Input: 4-byte big-endian
# length + packet, repeated. argv: packets file, HA address, steps as JSON
# [[rate, count], ...], gap seconds between steps. Paced by sleeping between
# small chunks (a busy loop would take a core from the HA). Prints one JSON
# line: per step {rate, sent, errors, t0, t1} (t: realtime seconds).
BU_SENDER = r"""
import json, socket, struct, sys, time
path, dst, steps, gap = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
data = open(path, "rb").read()
pkts, off = [], 0
while off < len(data):
    n = struct.unpack_from("!I", data, off)[0]
    pkts.append(data[off + 4:off + 4 + n]); off += 4 + n
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
addr = (dst, 0)
out, k = [], 0
for rate, count in steps:
    errors = sent = 0
    t0 = time.time(); m0 = time.monotonic()
    while sent + errors < count:
        due = min(count, int((time.monotonic() - m0) * rate) + 1)
        while sent + errors < due:
            try:
                s.sendto(pkts[k], addr); sent += 1
            except OSError:
                errors += 1
            k += 1
        time.sleep(0.0005)
    out.append({"rate": rate, "sent": sent, "errors": errors, "t0": t0, "t1": time.time()})
    time.sleep(gap)
print(json.dumps(out))
"""


class BenchFailed(RuntimeError):
    """The set-up failed: no figure can be measured."""


# --- arguments -----------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moves", type=int, default=None,
                   help="CoA swaps of mobile node A (default 1000; --quick 100; the target "
                        "is stated over 10000)")
    p.add_argument("--rate", type=float, default=None, metavar="PPS",
                   help="CN datagrams/s during the moves and the flood (default: --load of the "
                        "forwarding capacity measured first)")
    p.add_argument("--load", type=float, default=0.8,
                   help="share of the measured capacity to load the HA with (default 0.8)")
    p.add_argument("--size", type=int, default=128,
                   help="UDP payload bytes of the CN's datagrams (default 128)")
    p.add_argument("--probe", type=float, default=None,
                   help="seconds of the saturating capacity probe (default 3; --quick 1.5)")
    p.add_argument("--steady", type=float, default=None,
                   help="seconds of steady state before the moves (default 3; --quick 1.5)")
    p.add_argument("--interval", type=float, default=0.01,
                   help="seconds between a move's Binding Ack and the next move (default 0.01)")
    p.add_argument("--bu-rates", default=None, metavar="LIST",
                   help="offered Binding Updates/s of the ramp, comma-separated (default "
                        "1000,2500,5000,7500,10000,15000; --quick 2500,5000,10000)")
    p.add_argument("--bu-step", type=float, default=None,
                   help="seconds at each rate of the ramp (default 1.5; --quick 0.7)")
    p.add_argument("--bu-gap", type=float, default=0.4,
                   help="seconds between ramp steps, for the HA to drain (default 0.4)")
    p.add_argument("--bu-kind", choices=["move", "refresh"], default="move",
                   help="each BU of the ramp moves B to its other CoA (default: a grace period "
                        "and a BA each), or refreshes the CoA B is at (no grace period)")
    p.add_argument("--bin-ms", type=float, default=100.0,
                   help="throughput bins in milliseconds (default 100)")
    p.add_argument("--workers", type=int, default=1, help="HA worker threads (default 1)")
    p.add_argument("--ha-cpu", default=None, metavar="LIST",
                   help="pin the HA's workers (fastpath run --cpu LIST; default: not pinned)")
    p.add_argument("--crypto", default="auto", choices=["auto", "ipsecmb", "openssl"],
                   help="crypto backend of both forwarders (default auto)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="result file (default bench/results/swap-<commit>-<time>.json)")
    p.add_argument("--no-png", action="store_true", help="do not write the PNG chart")
    p.add_argument("--keep", action="store_true", help="keep the logs' temporary directory")
    p.add_argument("--quick", action="store_true", help="a short run (CI)")


def _resolve(args) -> None:
    q = args.quick
    args.moves = args.moves if args.moves is not None else (100 if q else 1000)
    args.probe = args.probe if args.probe is not None else (1.5 if q else 3.0)
    args.steady = args.steady if args.steady is not None else (1.5 if q else 3.0)
    rates = args.bu_rates or ("2500,5000,10000" if q else "1000,2500,5000,7500,10000,15000")
    try:
        args.bu_rates = [float(x) for x in str(rates).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"swap: --bu-rates: not a list of numbers: {rates!r}") from None
    args.bu_step = args.bu_step if args.bu_step is not None else (0.7 if q else 1.5)
    if args.moves < 1 or not 0 < args.load <= 1 or args.size < 8 or \
            any(r <= 0 for r in args.bu_rates) or args.bu_step <= 0:
        raise SystemExit("swap: --moves >= 1, 0 < --load <= 1, --size >= 8, --bu-rates > 0, "
                         "--bu-step > 0")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, routes)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (TUN support)"
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "needs gcc (the generator, sink and sniffer are compiled at run time)"
    return None


# --- the lab -------------------------------------------------------------------

def proc_cpu() -> dict[int, tuple[str, int, int]]:
    """{pid: (comm, ppid, utime + stime ticks)} of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        out[int(d)] = (comm, int(rest[1]), int(rest[11]) + int(rest[12]))
    return out


def other_load(before: dict, after: dict, mine: set[int], seconds: float) -> dict:
    """CPUs kept busy during the run by user processes that are not this
    benchmark's (another benchmark or build on the machine skews every
    figure), and by kernel threads (ksoftirqd, kworkers: partly ours)."""
    hz = os.sysconf("SC_CLK_TCK")
    other, kernel, who = 0, 0, {}
    for pid, (comm, ppid, ticks) in after.items():
        d = ticks - before.get(pid, (comm, ppid, 0))[2]
        if d <= 0 or pid in mine:
            continue
        if ppid == 2 or pid == 2:
            kernel += d
        else:
            other += d
            who[f"{comm}[{pid}]"] = round(d / hz, 2)
    top = dict(sorted(who.items(), key=lambda kv: -kv[1])[:8])
    return {"other_cpus": other / hz / seconds, "kernel_thread_cpus": kernel / hz / seconds,
            "other_top_cpu_s": top}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def cleanup_stale() -> list[str]:
    """Remove fpswap-<pid>-* namespaces of runs that are gone (killed -9)."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class Lab:
    """The namespaces, links and addresses; close() removes them."""

    def __init__(self):
        self.prefix = f"{PREFIX}-{os.getpid()}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, PYTHONPATH=str(common.REPO))

    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def run(self, short: str, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns(short), *argv], check=True,
                       capture_output=True)

    def popen(self, short: str, *argv: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(short), *argv], env=self.env, **kw)
        self.procs.append(p)
        return p

    def build(self) -> None:
        for short in ("cn", "ha", "r", "mn"):
            _ip("netns", "add", self.ns(short))
            self.names.append(self.ns(short))
            self.run(short, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            self.run(short, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            _ip("-n", self.ns(short), "link", "set", "lo", "up")
        for a, ia, b, ib in (("cn", "cn0", "ha", "ha-cn"), ("ha", "ha-wire", "r", "r-ha"),
                             ("r", "r-mn", "mn", "mn0"), ("r", "r-mn2", "mn", "mn1")):
            _ip("-n", self.ns(a), "link", "add", ia, "type", "veth", "peer", "name", ib,
                "netns", self.ns(b))
            _ip("-n", self.ns(a), "link", "set", ia, "up")
            _ip("-n", self.ns(b), "link", "set", ib, "up")
        for short, dev, addr in (("cn", "cn0", CN), ("ha", "ha-cn", HA_CN), ("ha", "ha-wire", HA_WIRE),
                                 ("r", "r-ha", R_HA), ("r", "r-mn", R_MN), ("r", "r-mn2", R_MN2)):
            _ip("-n", self.ns(short), "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        for short in ("ha", "r"):
            self.run(short, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        _ip("-n", self.ns("cn"), "-6", "route", "add", "default", "via", HA_CN)
        _ip("-n", self.ns("ha"), "-6", "route", "add", "default", "via", R_HA)
        _ip("-n", self.ns("mn"), "-6", "route", "add", "2001:db8:2::/64", "dev", "mn0")
        _ip("-n", self.ns("mn"), "-6", "route", "add", "2001:db8:3::/64", "dev", "mn1")
        _ip("-n", self.ns("mn"), "-6", "route", "add", "default", "via", R_MN, "dev", "mn0")
        _ip("-n", self.ns("mn"), "-6", "route", "add", "default", "from", "2001:db8:3::/64",
            "via", R_MN2, "dev", "mn1")
        for prefix in ("2001:db8:ffff::/48", HOME_PREFIX, "2001:db8:99::/64"):
            _ip("-n", self.ns("r"), "-6", "route", "add", prefix, "via", HA_WIRE)
        # B's Binding Acks end at the router, silently, once the sniffer has seen them
        for coa in COA_B:
            _ip("-n", self.ns("r"), "-6", "route", "add", "blackhole", f"{coa}/128")

    def pids(self) -> set[int]:
        """Every process in this lab's namespaces now."""
        out = set()
        for name in self.names:
            out.update(int(p) for p in _ip("netns", "pids", name, check=False).stdout.split())
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in self.names:
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
        self.names = []


def compile_tools(tmp: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    exe = tmp / "swap_tools"
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(common.REPO / "bench" / "swap_tools.c")],
                       capture_output=True, text=True)
    if r.returncode:
        raise BenchFailed("compiling bench/swap_tools.c failed:\n" + r.stderr)
    return exe


def ctl(sock: str, what: str, timeout: float = 5.0):
    from fastpath.control import ctl_request
    return ctl_request(sock, what, timeout)


def _wait(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except (RuntimeError, ValueError, OSError, KeyError):
            pass
        time.sleep(interval)
    return False


class Sniffer:
    """The swap_tools sniffer on r-ha: its BU/BA lines on a queue, its final
    counters in .end."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.events: queue.Queue = queue.Queue()
        self.end: dict | None = None
        first = proc.stdout.readline()
        if not first.startswith("ready"):
            raise BenchFailed(f"sniffer did not start: {first!r} {proc.stderr.read()}")
        self.t0 = float(first.split()[1])
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("END "):
                self.end = json.loads(line[4:])
            else:
                kind, t, idx = line.split()
                self.events.put((kind, int(t), int(idx)))

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.thread.join(10)
        if self.end is None:
            raise BenchFailed("the sniffer ended without its counters: " + self.proc.stderr.read())
        return self.end


# --- phase 0: the BU path in-process ---------------------------------------------

def bu_packets(n: int, first_seq: int = 1, kind: str = "move") -> list[bytes]:
    """n Binding Updates of mobile node B, each moving it to its other CoA
    (kind "move") or naming the CoA it is at (kind "refresh": no move, so no
    grace period), in the Alternate Care-of Address option (outer source =
    that CoA); ESP and MH sequence numbers first_seq, first_seq+1, ..."""
    from fastpath import mh
    from fastpath.ref.engine import RefEngine, build_bu_packet
    ha, hoa = _packed(HA_ADDRESS), _packed(HOA_B)
    coas = [_packed(c) for c in COA_B]
    eng = RefEngine(ha, 1500)
    eng.add_mobile_node(hoa, coas[0])
    eng.add_sa("binding", "in", SPI_B_BINDING_IN, "aes128-sha1", B_KEYS["enc"], B_KEYS["auth"],
               hoa=hoa)
    out = []
    for k in range(first_seq, first_seq + n):
        coa = coas[k % 2] if kind == "move" else coas[0]   # B starts at the first
        body = mh.build(mh.BindingUpdate(sequence=k & 0xFFFF, lifetime=900, ack=True, home=True,
                                         options=(mh.AlternateCareOfAddress(coa),)), hoa, ha)
        out.append(build_bu_packet(eng, SPI_B_BINDING_IN, hoa, coa, body, seq=k))
    return out


def _packed(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


def bu_path_in_process(cfg_path: Path, n: int, crypto: str, kind: str = "move") -> dict:
    """Time the HA's BU path without I/O or workers: decap (ICV, replay,
    HAO) -> VerifiedBinding -> BindingCache.process (move, grace) -> BA sealed."""
    from fastpath.binding import BindingCache, build_ba_packet
    from fastpath.config import load
    from fastpath.core.batch import Batch
    from fastpath.core.engine import Engine
    from fastpath.tables import resolve_backend, sad_from_config
    cfg = load(cfg_path)
    backend = resolve_backend(crypto)
    sad = sad_from_config(cfg, backend)
    eng = Engine(sad, backend)
    cache = BindingCache(sad, cfg)
    pkts = bu_packets(n, kind=kind)
    batch = Batch(1)
    t = {"decap": 0.0, "process": 0.0, "ba": 0.0}
    clock = time.perf_counter
    accepted = 0
    t_all = clock()
    for i, p in enumerate(pkts):
        a = clock()
        batch.load([p])
        eng.decap(batch)
        [(_, vb)] = eng.take_bindings()
        b = clock()
        d = cache.process(vb, float(i))
        c = clock()
        if d.ba is not None and build_ba_packet(eng, d) is not None:
            accepted += 1
        e = clock()
        t["decap"] += b - a
        t["process"] += c - b
        t["ba"] += e - c
    total = clock() - t_all
    return {"kind": kind, "bus": n, "accepted": accepted, "backend": backend,
            "us_per_bu": 1e6 * total / n,
            "us_decap": 1e6 * t["decap"] / n, "us_process": 1e6 * t["process"] / n,
            "us_ba": 1e6 * t["ba"] / n, "bu_per_s": n / total}


# --- the scenario ----------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def _bins_in(bins: list[int], t0: float, bin_s: float, a: float, b: float) -> list[int]:
    """The bins that lie wholly inside [a, b] (realtime seconds)."""
    lo = int((a - t0) / bin_s) + 1
    hi = int((b - t0) / bin_s) - 1
    return bins[max(lo, 0):max(hi, 0)] if hi > lo else []


def run(args) -> int:
    _resolve(args)
    why = skip_reason()
    if why:
        print(f"swap: skipped: {why}", file=sys.stderr)
        return 2
    doc = common.header("swap", args)
    doc["pinned_cpu"] = args.ha_cpu
    print(common.describe_machine(doc), flush=True)
    a = common.cpu_times()
    time.sleep(1.0)
    before = common.host_load(a, common.cpu_times())
    busy = before.get("busy_pct", 0) / 100 * (os.cpu_count() or 1)
    doc["host_busy_cpus_before"] = busy
    if busy > 0.2:
        print(f"WARNING: {busy:.2f} CPUs were busy before the run started: another workload "
              "shares this machine and its figures", flush=True)
    gone = cleanup_stale()
    if gone:
        print(f"removed leftovers of killed runs: {', '.join(gone)}")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="fpswap-"))
    lab = Lab()
    try:
        res = _run(args, lab, tmp, doc)
    except KeyboardInterrupt:
        print("\nswap: interrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchFailed, subprocess.CalledProcessError) as e:
        print(f"\nswap: {e}", file=sys.stderr)
        print(f"logs in {tmp}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        lab.close()
        signal.signal(signal.SIGTERM, old_term)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


def _run(args, lab: Lab, tmp: Path, doc: dict) -> int:
    tools = compile_tools(tmp)
    keys = {k: os.urandom(n).hex() for k, n in
            (("k1", 16), ("a1", 20), ("k2", 16), ("a2", 20), ("k3", 20), ("k4", 20),
             ("kb2", 16), ("ab2", 20))}
    cfg = tmp / "swap.toml"
    cfg.write_text(CONFIG.format(ha=HA_ADDRESS, prefix=HOME_PREFIX, state=tmp / "state",
                                 hoa_a=HOA_A, coa_a=COA_A[0], hoa_b=HOA_B, coa_b=COA_B[0],
                                 spi_a_out=SPI_A_PAYLOAD_OUT, spi_b_in=SPI_B_BINDING_IN,
                                 spi_b_out=SPI_B_BINDING_OUT, kb_enc=B_KEYS["enc"].hex(),
                                 kb_auth=B_KEYS["auth"].hex(), **keys))
    cpu0 = common.cpu_times()
    t_start = time.monotonic()
    mine = {os.getpid()}

    # -- 0: the BU path in-process, both kinds
    n_in = 2000 if args.quick else 5000
    inproc = {kind: bu_path_in_process(cfg, n_in, args.crypto, kind) for kind in ("move", "refresh")}
    for kind, ip in inproc.items():
        print(f"[0] BU path in-process, {kind} BUs ({ip['backend']}): {ip['us_per_bu']:.1f} us/BU = "
              f"decap {ip['us_decap']:.1f} + BindingCache.process {ip['us_process']:.1f} + "
              f"BA {ip['us_ba']:.1f}  ->  {ip['bu_per_s']:,.0f} BU/s on one core", flush=True)
    steps = [[r, max(1, int(r * args.bu_step))] for r in args.bu_rates]
    pkts = bu_packets(sum(c for _, c in steps), kind=args.bu_kind)
    bu_file = tmp / "bus.bin"
    with open(bu_file, "wb") as f:
        for p in pkts:
            f.write(struct.pack("!I", len(p)) + p)
    del pkts

    # -- the lab, the home agent and mobile node A
    print(f"building CN - HA - router - MN in namespaces {lab.prefix}-*", flush=True)
    lab.build()
    ha_sock, mn_sock = str(tmp / "ha.sock"), str(tmp / "mn.sock")
    common_argv = [sys.executable, "-m", "fastpath", "run", "-c", str(cfg), "--log-level", "info",
                   "--crypto", args.crypto]
    ha_argv = common_argv + ["--control-socket", ha_sock, "--workers", str(args.workers)]
    if args.ha_cpu:
        ha_argv += ["--cpu", args.ha_cpu]
    ha = lab.popen("ha", *ha_argv, stdout=open(tmp / "ha.log", "w"), stderr=subprocess.STDOUT)
    if not _wait(lambda: os.path.exists(ha_sock) or ha.poll() is not None, 20) or ha.poll() is not None:
        raise BenchFailed("the home agent did not start:\n" + (tmp / "ha.log").read_text())
    mn = lab.popen("mn", *common_argv, "--control-socket", mn_sock, "--role", "mobile-node",
                   "--home-address", HOA_A, "--enable-forwarding",
                   stdout=open(tmp / "mn.log", "w"), stderr=subprocess.STDOUT)
    if not _wait(lambda: os.path.exists(mn_sock) or mn.poll() is not None, 20) or mn.poll() is not None:
        raise BenchFailed("the mobile node did not start:\n" + (tmp / "mn.log").read_text())
    if not _wait(lambda: ctl(mn_sock, "counters")["control"].get("registration.ba_status_0", 0) >= 1,
                 10):
        raise BenchFailed("mobile node A did not register:\n" + (tmp / "mn.log").read_text())
    status = ctl(ha_sock, "status")
    doc["ha_scheduling"] = status.get("scheduling")
    sched = status.get("scheduling") or {}
    print(f"home agent: {status['workers']} worker(s), crypto {status['crypto']}, scheduling: "
          f"control {sched.get('control', '?')}, workers {', '.join(map(str, sched.get('workers', [])))}; "
          f"A at {COA_A[0]}, B at {COA_B[0]}", flush=True)

    sniff = Sniffer(lab.popen("r", str(tools), "sniff", "r-ha", HA_ADDRESS, *COA_A, *COA_B,
                              str(SPI_A_PAYLOAD_OUT), str(args.bin_ms), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True))
    sink = lab.popen("mn", str(tools), "sink", HOA_A, str(PORT), str(args.bin_ms),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sink.stdout.readline().strip() != "ready":
        raise BenchFailed("the sink did not start: " + sink.stderr.read())

    def gen(rate: float, start: int) -> subprocess.Popen:
        return lab.popen("cn", str(tools), "gen", HOA_A, str(PORT), str(args.size), str(rate),
                         str(start), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def to_wire() -> int:
        return ctl(ha_sock, "counters")["totals"]["verdicts"].get("to_wire", 0)

    phases: dict[str, tuple[float, float]] = {}      # name -> realtime (start, end)
    procs0, tp0 = proc_cpu(), time.monotonic()

    # -- 1: capacity probe
    probe = None
    if args.rate is None:
        g = gen(0, 0)
        time.sleep(0.5)
        a, ta = to_wire(), time.time()
        time.sleep(args.probe)
        b, tb = to_wire(), time.time()
        phases["probe"] = (ta, tb)
        g.send_signal(signal.SIGTERM)
        gout = json.loads(g.communicate(timeout=10)[0])
        capacity = (b - a) / (tb - ta)
        rate = args.load * capacity
        probe = {"ha_to_wire_pps": capacity, "cn_sent": gout["sent"],
                 "cn_pps": gout["sent"] / gout["elapsed"], "cn_errors": gout["errors"]}
        print(f"[1] capacity probe: the HA forwarded {capacity:,.0f} pps (the CN offered "
              f"{probe['cn_pps']:,.0f} pps of {args.size}-byte UDP payload); load "
              f"{args.load:.0%} = {rate:,.0f} pps", flush=True)
        time.sleep(0.5)
    else:
        rate = args.rate
        print(f"[1] load {rate:,.0f} pps (--rate)", flush=True)

    # -- 2: steady state
    drops0 = {short: drop_counters(lab.ns(short)) for short in ("cn", "ha", "r", "mn")}
    load_gen = gen(rate, LOAD_FROM)
    time.sleep(0.5)
    ts = time.time()
    wire0 = to_wire()
    time.sleep(args.steady)
    phases["steady"] = (ts, time.time())
    ha_pps = (to_wire() - wire0) / (phases["steady"][1] - ts)
    print(f"[2] steady state: the HA forwards {ha_pps:,.0f} pps", flush=True)

    # -- 3: moves of A
    while not sniff.events.empty():
        sniff.events.get_nowait()
    last_bu: dict[int, int] = {}
    lat_ms, e2e_ms, no_ba, extra_bus = [], [], 0, 0
    where = 0
    tm = time.time()
    t_report = time.monotonic()
    for i in range(args.moves):
        to = 1 - where
        t_req = time.time_ns()
        ctl(mn_sock, f"move {COA_A[to]}")
        deadline = time.monotonic() + 3.0
        got = None
        while got is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                kind, t, idx = sniff.events.get(timeout=left)
            except queue.Empty:
                break
            if kind == "BU":
                if idx in last_bu:
                    extra_bus += 1               # a retransmission
                last_bu[idx] = t
            elif kind == "BA" and idx == to:
                got = t
        if got is None:
            no_ba += 1
        else:
            if to in last_bu:
                lat_ms.append((got - last_bu.pop(to)) / 1e6)
            e2e_ms.append((got - t_req) / 1e6)
        where = to
        if time.monotonic() - t_report > 2:
            t_report = time.monotonic()
            print(f"\r    moves {i + 1}/{args.moves}, BU->BA p50 {_pct(lat_ms, 50) or 0:.2f} ms "
                  f"p99 {_pct(lat_ms, 99) or 0:.2f} ms", end="", flush=True)
        if args.interval > 0:
            time.sleep(args.interval)
    phases["moves"] = (tm, time.time())
    print(f"\r[3] {args.moves} moves in {phases['moves'][1] - tm:.1f} s: BU->BA p50 "
          f"{_pct(lat_ms, 50) or 0:.3f} ms, p99 {_pct(lat_ms, 99) or 0:.3f} ms, "
          f"max {max(lat_ms) if lat_ms else 0:.3f} ms; no BA: {no_ba}", flush=True)
    time.sleep(1.0)

    # -- 4: B's BU ramp, A's traffic going on
    before = ctl(ha_sock, "counters")
    print(f"[4] BU ramp ({args.bu_kind} BUs of B): "
          + ", ".join(f"{r:,.0f}/s" for r, _ in steps), flush=True)
    p = lab.popen("mn", sys.executable, "-c", BU_SENDER, str(bu_file), HA_ADDRESS,
                  json.dumps(steps), str(args.bu_gap), stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60 + 2 * len(steps) * (args.bu_step + args.bu_gap))
    if p.returncode:
        raise BenchFailed("BU sender failed: " + err)
    sent_steps = json.loads(out)
    phases["bus"] = (sent_steps[0]["t0"], sent_steps[-1]["t1"])
    time.sleep(0.5)
    bu_ha = _bu_delta(before, ctl(ha_sock, "counters"))

    # -- the end: stop the CN, let the last packets drain, collect
    load_gen.send_signal(signal.SIGTERM)
    gout = json.loads(load_gen.communicate(timeout=10)[0])
    time.sleep(0.5)
    ha_counters = ctl(ha_sock, "counters")
    mn_counters = ctl(mn_sock, "counters")
    mine |= lab.pids() | {p.pid for p in lab.procs}
    others = other_load(procs0, proc_cpu(), mine, time.monotonic() - tp0)
    kernel_drops = {}         # during the load phase
    for short in ("cn", "ha", "r", "mn"):
        d = {k: v - drops0[short].get(k, 0) for k, v in drop_counters(lab.ns(short)).items()}
        kernel_drops[short] = {k: v for k, v in d.items() if v}
    sink.send_signal(signal.SIGTERM)
    sink_out = json.loads(sink.communicate(timeout=10)[0])
    wire = sniff.stop()
    for proc in (mn, ha):
        proc.send_signal(signal.SIGTERM)
    for proc in (mn, ha):
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    doc["host_load"] = common.host_load(cpu0, common.cpu_times())
    doc["wall_s"] = time.monotonic() - t_start

    # -- figures
    bin_s = args.bin_ms / 1000.0
    bins = sink_out["bins"]
    t0 = sink_out["t0"]

    def pps(a: float, b: float) -> dict:
        x = _bins_in(bins, t0, bin_s, a, b)
        return {"bins": len(x), "median": statistics.median(x) / bin_s if x else None,
                "mean": statistics.fmean(x) / bin_s if x else None,
                "min": min(x) / bin_s if x else None}
    through = {k: pps(*phases[k]) for k in ("steady", "moves", "bus")}
    steady = through["steady"]["median"]

    def dip(t: dict) -> dict | None:
        if not t["bins"] or not steady:
            return None
        return {"mean_pct": 100 * (1 - t["mean"] / steady),
                "worst_bin_pct": 100 * (1 - t["min"] / steady)}
    ramp = _ramp(wire, sent_steps, args.bu_gap)
    for st in ramp:
        st["sink_pps"] = pps(st["t0"], st["t1"])
        st["sink_mean"] = st["sink_pps"]["mean"]
    lost = gout["sent"] - sink_out["received_from"]
    results = {
        "in_process": inproc,
        "probe": probe,
        "load_pps": rate,
        "ha_pps_steady": ha_pps,
        "moves": {"requested": args.moves, "no_ba": no_ba, "retransmitted_bus": extra_bus,
                  "latency_ms": {"n": len(lat_ms), "p50": _pct(lat_ms, 50), "p90": _pct(lat_ms, 90),
                                 "p99": _pct(lat_ms, 99), "max": max(lat_ms) if lat_ms else None,
                                 "mean": statistics.fmean(lat_ms) if lat_ms else None},
                  "request_to_ba_ms": {"p50": _pct(e2e_ms, 50), "p99": _pct(e2e_ms, 99)},
                  "seconds": phases["moves"][1] - phases["moves"][0]},
        "wire": wire,
        "stale": wire["stale"],
        "esp_breaks": wire["esp"]["breaks"],
        "bu_ramp": {"kind": args.bu_kind, "steps": ramp, "ha": bu_ha,
                    # the highest rate asked for that was sent (97 %) and all acknowledged
                    "sustained_per_s": max([s["rate"] for s in ramp if s["all_acked"]
                                            and s["offered_per_s"] >= 0.97 * s["rate"]],
                                           default=None),
                    "peak_per_s": max([s["ba_per_s"] for s in ramp], default=None),
                    "saturated_median_per_s": max([s["saturated_bin_per_s"] for s in ramp
                                                   if s["saturated_bin_per_s"]], default=None)},
        "throughput_pps": through,
        "dip": {k: dip(through[k]) for k in ("moves", "bus")},
        "load_phase": {"sent": gout["sent"], "send_errors": gout["errors"],
                       "received": sink_out["received_from"], "lost": lost,
                       "loss_pct": 100 * lost / max(gout["sent"], 1), "dups": sink_out["dups"]},
        "kernel_drops": kernel_drops,
        "ha_counters": ha_counters,
        "mn_counters": {k: mn_counters[k] for k in ("totals", "io", "control") if k in mn_counters},
        "phases": phases,
        "latencies_ms": lat_ms,
        "sink_bins": {"t0": t0, "bin_ms": args.bin_ms, "bins": bins},
    }
    results["other_load"] = others
    doc["results"] = results
    rows = table_rows(results, args)
    print()
    print(common.render_table(COLUMNS, rows))
    print()
    print(common.render_table(RAMP_COLUMNS, ramp))
    notes = _notes(results)
    for n in notes:
        print("note: " + n)
    doc["table"] = rows
    doc["notes"] = notes
    path = common.write_json(args.json, doc)
    print(f"\nJSON: {path}")
    if not args.no_png:
        png = _plot(path.with_suffix(".png"), results, doc)
        if png:
            print(f"PNG:  {png}")
    print(f"done in {doc['wall_s']:.0f} s")
    return 0


def drop_counters(ns: str) -> dict:
    """Kernel drop counters of every interface of a namespace (a TUN whose
    reader fell behind counts tx drops; a veth into a full backlog too), and
    the UDP receive-buffer errors: the losses fastpath cannot count."""
    out = {}
    r = _ip("-n", ns, "-j", "-s", "link", "show", check=False)
    try:
        links = json.loads(r.stdout or "[]")
    except ValueError:
        links = []
    for link in links:
        st = link.get("stats64") or link.get("stats") or {}
        n = sum(st.get(d, {}).get("dropped", 0) + st.get(d, {}).get("errors", 0)
                for d in ("rx", "tx"))
        if n:
            out[link["ifname"]] = n
    snmp = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp6"],
                          capture_output=True, text=True).stdout.split()
    fields = dict(zip(snmp[::2], snmp[1::2]))
    for k in ("Udp6RcvbufErrors", "Udp6InErrors"):
        if int(fields.get(k, 0)):
            out[k] = int(fields[k])
    return out


def _bu_delta(a: dict, b: dict) -> dict:
    ca, cb = a["control"]["bindings"], b["control"]["bindings"]
    keys = ("bu_received", "bu_accepted", "bu_rejected", "moves", "refreshes", "ba_released",
            "grace_timeouts", "stale")
    out = {k: cb.get(k, 0) - ca.get(k, 0) for k in keys}
    out["ba_sent"] = b["control"].get("binding.ba_sent", 0) - a["control"].get("binding.ba_sent", 0)
    out["punt_overflow"] = b["io"].get("punt_overflow", 0) - a["io"].get("punt_overflow", 0)
    for r in ("replay", "icv", "policy"):
        out[f"drop_{r}"] = b["totals"]["drops"].get(r, 0) - a["totals"]["drops"].get(r, 0)
    return out


def _ramp(wire: dict, steps: list[dict], gap: float) -> list[dict]:
    """Per ramp step, from B's Binding Acks on the wire (10 ms bins): how
    many came back (from the step's start until the next one's, so the HA's
    backlog counts for its step), per second of the step, and - when the HA
    could not keep up - the median 10 ms bin: the rate it reaches saturated."""
    bins = wire.get("ba_b_bins", [])
    w = float(wire.get("ba_b_bin_ms", 10)) / 1000.0
    out = []
    edges = [max(0, int((s["t0"] - wire["t0"]) / w)) for s in steps]
    edges.append(max(edges[-1], int((steps[-1]["t1"] + gap - wire["t0"]) / w) + 1))
    for k, s in enumerate(steps):
        lo, hi = edges[k], edges[k + 1]
        bas = sum(bins[lo:hi])
        dur = max(s["t1"] - s["t0"], 1e-9)
        acked = bas >= 0.99 * s["sent"]
        inner = bins[lo + 2:int((s["t1"] - wire["t0"]) / w) - 1]      # inside the step
        out.append({"offered_per_s": s["sent"] / dur, "rate": s["rate"], "sent": s["sent"],
                    "send_errors": s["errors"], "bas": bas, "ba_per_s": bas / dur,
                    "acked_pct": 100.0 * bas / max(s["sent"], 1), "all_acked": acked,
                    "saturated_bin_per_s": (statistics.median(inner) / w
                                            if inner and not acked else None),
                    "t0": s["t0"], "t1": s["t1"]})
    return out


COLUMNS = [
    Column("what", "what", align="<"),
    Column("value", "measured", align="<"),
    Column("target", "target", align="<"),
    Column("check", "check", align="<"),
]

RAMP_COLUMNS = [
    Column("rate", "BU/s asked", "{:,.0f}"),
    Column("offered_per_s", "sent/s", "{:,.0f}"),
    Column("sent", "sent"),
    Column("bas", "BAs"),
    Column("acked_pct", "acked %", "{:.1f}"),
    Column("ba_per_s", "BA/s", "{:,.0f}"),
    Column("saturated_bin_per_s", "BA/s saturated", "{:,.0f}"),
    Column("sink_mean", "sink pps", "{:,.0f}"),
]


def _ms(x):
    return "-" if x is None else f"{x:.3f}"


def table_rows(r: dict, args) -> list[dict]:
    rows = []
    for kind, ip in r["in_process"].items():
        rows.append({"what": f"BU path in-process, {kind} BUs, no I/O",
                     "value": f"{ip['us_per_bu']:.1f} us/BU (decap {ip['us_decap']:.1f}, process "
                              f"{ip['us_process']:.1f}, BA {ip['us_ba']:.1f}) = "
                              f"{ip['bu_per_s']:,.0f} BU/s"})
    if r["probe"]:
        rows.append({"what": "forwarding capacity (HA to_wire, CN saturating)",
                     "value": f"{r['probe']['ha_to_wire_pps']:,.0f} pps "
                              f"(CN offered {r['probe']['cn_pps']:,.0f})"})
    rows.append({"what": "load during the moves and the BU ramp",
                 "value": f"{r['load_pps']:,.0f} pps offered, HA {r['ha_pps_steady']:,.0f} pps"
                          + (f" ({args.load:.0%} of capacity)" if r["probe"] else " (--rate)")})
    m = r["moves"]
    lat = m["latency_ms"]
    p99 = lat["p99"]
    rows.append({"what": f"BU->BA on the wire (r-ha), {lat['n']} moves",
                 "value": f"p50 {_ms(lat['p50'])} / p90 {_ms(lat['p90'])} / p99 {_ms(p99)} / "
                          f"max {_ms(lat['max'])} ms",
                 "target": f"p99 <= {TARGET_P99_MS:g} ms",
                 "check": common.verdict(None if p99 is None else p99 <= TARGET_P99_MS)})
    rows.append({"what": "ctl move request -> BA on the wire",
                 "value": f"p50 {_ms(m['request_to_ba_ms']['p50'])} / p99 "
                          f"{_ms(m['request_to_ba_ms']['p99'])} ms"
                          + (f"; {m['no_ba']} moves without a BA in 3 s" if m["no_ba"] else "")})
    w = r["wire"]
    complete = w["ring_drops"] == 0
    rows.append({"what": f"stale packets after BA ({m['requested']} moves, {w['ba_a']} BAs)",
                 "value": f"{w['stale']} (in {w['moves_with_stale']} moves)"
                          + ("" if complete else f"; the sniffer dropped {w['ring_drops']}"),
                 "target": "0", "check": common.verdict(w["stale"] == 0 if complete else None)})
    e = w["esp"]
    rows.append({"what": "payload-out ESP sequence on the wire",
                 "value": f"{e['packets']:,} packets {e['first']}..{e['last']}: breaks {e['breaks']}, "
                          f"regressions {e['regressions']}",
                 "target": "breaks 0", "check": common.verdict(e["breaks"] == 0 if complete else None)})
    b = r["bu_ramp"]
    sus = b["sustained_per_s"]
    sat = b["saturated_median_per_s"]
    rows.append({"what": f"BU/s with full validation ({b['kind']} BUs), all acknowledged",
                 "value": (f"{sus:,.0f} BU/s" if sus else "none of the steps")
                          + (f"; saturated: {sat:,.0f} BA/s" if sat else "")
                          + f"; punt-ring overflow {b['ha']['punt_overflow']}",
                 "target": f">= {TARGET_BU_RATE:,.0f} BU/s",
                 "check": common.verdict(sus is not None and sus >= TARGET_BU_RATE)})
    t = r["throughput_pps"]
    st = t["steady"]

    def fmt(x):
        return "-" if not x or not x["bins"] else f"mean {x['mean']:,.0f}, worst bin {x['min']:,.0f}"
    rows.append({"what": f"sink pps ({args.bin_ms:g} ms bins), steady",
                 "value": f"median {st['median']:,.0f}" if st["bins"] else "-"})
    for k, label in (("moves", "during the moves"), ("bus", "during the BU ramp")):
        d = r["dip"].get(k)
        rows.append({"what": f"sink pps {label}",
                     "value": fmt(t[k]) + (f" (dip {d['mean_pct']:.1f} % mean, "
                                           f"{d['worst_bin_pct']:.1f} % worst bin)" if d else "")})
    o = r["other_load"]
    rows.append({"what": "CPUs used by other processes during the run",
                 "value": f"{o['other_cpus']:.2f} (kernel threads {o['kernel_thread_cpus']:.2f})",
                 "target": "< 0.15", "check": common.verdict(o["other_cpus"] < 0.15)})
    lp = r["load_phase"]
    kd = {f"{ns}/{k}": v for ns, d in r["kernel_drops"].items() for k, v in d.items()}
    rows.append({"what": "loss at the sink over the load phase (after the probe)",
                 "value": f"{lp['lost']:,} of {lp['sent']:,} ({lp['loss_pct']:.3f} %); "
                          f"kernel drops {kd or 'none'}"})
    return rows


def _notes(r: dict) -> list[str]:
    notes = []
    o = r["other_load"]
    if o["other_cpus"] > 0.15:
        notes.append(f"OTHER LOAD: processes that are not this benchmark's kept {o['other_cpus']:.2f} "
                     f"CPUs busy during the run ({o['other_top_cpu_s']}): every figure above is "
                     "skewed by them")
    w = r["wire"]
    if w["ring_drops"]:
        notes.append(f"the sniffer's ring dropped {w['ring_drops']} frames: the stale and "
                     "sequence checks cover only what it saw")
    if w["stale"]:
        notes.append(f"stale examples [BA number, CoA index, ESP seq]: {w['stale_examples']}")
    if w["esp"]["breaks"]:
        notes.append(f"ESP sequence breaks [previous, next]: {w['esp']['break_examples']}")
    if r["moves"]["no_ba"]:
        notes.append(f"{r['moves']['no_ba']} moves saw no Binding Ack within 3 s")
    h = r["bu_ramp"]["ha"]
    if h["punt_overflow"]:
        notes.append(f"BU ramp: {h['punt_overflow']} packets were dropped because a worker's punt "
                     "ring (1024 slots) was full: the control loop could not keep up")
    return notes


def _plot(path: Path, r: dict, doc: dict) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: matplotlib is not installed; pip install '.[bench]')")
        return None
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.8))
    sb = r["sink_bins"]
    bin_s = sb["bin_ms"] / 1000
    ax = axes[0]
    ax.plot([i * bin_s for i in range(len(sb["bins"]))], [v / bin_s for v in sb["bins"]], lw=0.8,
            label="sink")
    w = r["wire"]
    off = w["t0"] - sb["t0"]
    ax.plot([off + i * bin_s for i in range(len(w["ha_to_a_bins"]))],
            [v / bin_s for v in w["ha_to_a_bins"]], lw=0.8, alpha=0.7, label="HA -> MN (wire)")
    colours = {"probe": "grey", "steady": "green", "moves": "orange", "bus": "red"}
    for name, (a, b) in r["phases"].items():
        ax.axvspan(a - sb["t0"], b - sb["t0"], color=colours.get(name, "grey"), alpha=0.12,
                   label=name)
    ax.set_title(f"throughput ({sb['bin_ms']:g} ms bins)")
    ax.set_xlabel("s")
    ax.set_ylabel("packets/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    lat = sorted(r["latencies_ms"])
    if lat:
        ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))])
        ax.axvline(TARGET_P99_MS, color="red", ls="--", label=f"target p99 {TARGET_P99_MS:g} ms")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.set_title(f"BU->BA on the wire, {len(lat)} moves (CDF)")
    ax.set_xlabel("ms")
    ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    ramp = r["bu_ramp"]["steps"]
    xs = [s["offered_per_s"] for s in ramp]
    ax.plot(xs, [s["ba_per_s"] for s in ramp], marker="o", label="BAs/s")
    ax.plot(xs, xs, ls=":", color="grey", label="offered")
    ax.axhline(TARGET_BU_RATE, color="red", ls="--", label=f"target {TARGET_BU_RATE:,.0f}/s")
    ax.set_title(f"Binding Updates of B ({r['bu_ramp']['kind']}) acknowledged")
    ax.set_xlabel("BUs/s offered")
    ax.set_ylabel("BAs/s")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(common.chart_title(doc).replace("pinned 1 core", "namespaces"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
