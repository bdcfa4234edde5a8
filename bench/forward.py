"""python -m bench forward: the home agent through real TUNs between network
namespaces (SPEC §1, §8; issue 3 item 7).

    CN ── HA (fastpath run) ── router ── MN (fastpath run --role mobile-node)
    fwd_gen                                   fwd_sink, bound to the HoA

A C generator (bench/fwd_gen.c: sendmmsg, batches of 64) in the CN namespace
sends UDP to the mobile node's home address; the home agent tunnels it (ESP
or IPv6-in-IPv6) to the care-of address, the mobile node decapsulates it and
a C sink (bench/fwd_sink.c: recvmmsg, batches of 64) counts it. Both are
compiled with gcc at run time. Per algorithm x inner packet size:

  fixed  generator paced at --rate (20k pps): the HA process's CPU time (all
         threads, /proc/PID/task/*/schedstat) per packet it wrote to fp-wire
         (its worker counters, from the control socket);
  sat    generator as fast as the CPU the MN and the sink leave it allows
         (it runs at the lowest priority: lowest_priority()): packets/s the
         HA wrote to fp-wire
         and the sink received.
  tcp    one iperf3 stream from the CN to an iperf3 server in the MN
         namespace bound to the HoA: Gbit/s (iperf3's receiver), the HA's CPU
         share, and its CPU time and read+write syscalls per packet it
         forwarded (both directions: data to fp-wire, ACKs to fp-home).

--offload on|off|both starts both fastpath processes (HA and MN, null runs
too) with --offload / --no-offload (IFF_VNET_HDR: GSO on home-side reads, GRO
coalescing on home-side writes) when `fastpath run` has that flag; without it
every run is the forwarder's only way ("n/a").

The null forwarder runs the same way: HA *and* MN started with
--null-forwarder (the same worker loop, no transform), so every packet still
crosses both fastpath processes and four TUN queues, CN -> HA -> router ->
MN -> sink; policy routes give the unchanged packets (still addressed to the
HoA) the tunnel's path. Ratios are taken against the null run of the same
round; rounds alternate the order of the configurations and the table shows
medians. Targets (issue 3): CPU/pkt <= 1.3 x null, saturated pps >= 0.85 x
null, for aes128gcm16 and aes128-sha1 at 64 and 1400 B; single-stream TCP
>= 3 Gbit/s through aes128gcm16.

--peers: wireguard-go and strongSwan (charon with kernel-libipsec) in the same
topology (bench/peers.py), fixed rate and tcp measured the same way, both
ends' CPU per packet compared with fastpath's (target <= 1/5).

The namespaces (fpbench-<pid>-*) are removed at the end, on Ctrl-C, SIGTERM
and errors; a later run removes those of a bench that was killed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import common

REPO = common.REPO
HERE = Path(__file__).resolve().parent

ALGS = ("aes128gcm16", "aes128-sha1", "plain")
SIZES = (64, 512, 1400)
UDP_OVERHEAD = 48              # inner IPv6 header + UDP header
PORT = 9000
NULL = "null"                  # the null forwarder's rows
CPU_TARGET = 1.3               # CPU/pkt <= 1.3 x null
PPS_TARGET = 0.85              # saturated pps >= 0.85 x null
TCP_TARGET = 3.0               # single-stream TCP Gbit/s through aes128gcm16
TCP_OFFICIAL = {"aes128gcm16"}
TCP_PORT = 5201
MODES = ("fixed", "sat", "tcp")
OFFLOAD_NA = "n/a"             # fastpath run has no --offload flag
OFFICIAL = ({"aes128gcm16", "aes128-sha1"}, {64, 1400})   # what issue 3's targets name

# addresses (the topology of tests/netns.py and fastpath/demo.py)
CN, HA_CN, HA_WIRE, R_HA, R_MN = ("2001:db8:99::1", "2001:db8:99::2", "2001:db8:ff::1",
                                  "2001:db8:ff::2", "2001:db8:2::1")
HA_ADDRESS, HOME_PREFIX, HOA, COA = ("2001:db8:ffff::1", "2001:db8:1::/64", "2001:db8:1::10",
                                     "2001:db8:2::10")
NULL_TABLE = "100"             # policy-routing tables of the null run
NULL_BACK_TABLE = "101"
CN_PREFIX = "2001:db8:99::/64"
NS_PREFIX = "fpbench"


class BenchFailed(RuntimeError):
    pass


# --- arguments ----------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alg", action="extend", nargs="+", metavar="A",
                   help=f"algorithms: ESP transforms of fastpath or 'plain' (IPv6-in-IPv6) "
                        f"(default: {' '.join(ALGS)}; --quick: aes128gcm16 aes128-sha1)")
    p.add_argument("--size", action="extend", nargs="+", metavar="N", type=int,
                   help="inner IPv6 packet sizes in bytes, UDP payload = N - 48 "
                        "(default 64 512 1400; --quick: 64 1400)")
    p.add_argument("--seconds", type=float, default=None,
                   help="measured seconds per run, after the warm-up (default 1.5; --quick 0.7)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of traffic before the measurement starts (default 0.4; "
                        "--quick 0.25)")
    p.add_argument("--rate", type=int, default=20000,
                   help="offered packets/s of the fixed-rate runs (default 20000)")
    p.add_argument("--mode", action="extend", nargs="+", choices=MODES,
                   help="fixed (CPU per packet at --rate), sat (saturated pps), tcp (one iperf3 "
                        "stream CN -> MN); default all three")
    p.add_argument("--tcp-seconds", type=int, default=None,
                   help="measured seconds of each iperf3 run, after --tcp-warmup (whole "
                        "seconds: iperf3 rounds down; default 3; --quick 2)")
    p.add_argument("--tcp-warmup", type=int, default=1,
                   help="seconds iperf3 omits at the start of a stream (slow start, PMTU "
                        "discovery; default 1)")
    p.add_argument("--offload", choices=("on", "off", "both"), default="both",
                   help="start the HA and MN (null runs too) with --offload, --no-offload, or "
                        "each configuration both ways (default both); ignored, with a note, "
                        "when `fastpath run` has no --offload flag")
    p.add_argument("--batch", type=int, default=64,
                   help="--batch of the HA and MN forwarders (default 64)")
    p.add_argument("--crypto", choices=("auto", "ipsecmb", "openssl"), default="auto",
                   help="--crypto of the HA and MN forwarders (default auto)")
    p.add_argument("--gen-batch", type=int, default=64,
                   help="datagrams per sendmmsg / recvmmsg of the generator and sink (default 64)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds over all configurations, null and algorithms alternating; "
                        "the table shows medians (default 3; --quick 2)")
    p.add_argument("--max-other-load", type=float, default=0.15,
                   help="a run during which other processes of the machine kept more than "
                        "this many CPUs busy is run again, once (default 0.15)")
    p.add_argument("--retries", type=int, default=None,
                   help="at most this many such repeats in all (default 8; --quick 3)")
    p.add_argument("--ha-cpu", type=int, default=None,
                   help="the CPU the HA gets to itself (default: the first allowed one)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin: by default the HA gets one CPU to itself and everything "
                        "else (generator, sink, MN, this script) the others")
    p.add_argument("--peers", action="store_true",
                   help="also wireguard-go and strongSwan's userspace ESP (charon + "
                        "kernel-libipsec), when installed: fixed-rate CPU per packet (both ends) "
                        "and tcp, in the same topology; and a C null forwarder (bench/fwd_null.c) "
                        "at both ends, fixed rate: the TUN round trip's cost on this host")
    p.add_argument("--quick", action="store_true",
                   help="short run (~1.3 min per offload setting)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (configs, logs, binaries)")
    p.add_argument("--json", metavar="FILE", help="result file (default bench/results/forward-*.json)")
    p.add_argument("--no-png", action="store_true",
                   help="no chart (by default a PNG beside the JSON, if matplotlib is installed)")


def _resolve(args) -> None:
    q = args.quick
    args.alg = list(dict.fromkeys(args.alg or (["aes128gcm16", "aes128-sha1"] if q else ALGS)))
    from fastpath.algorithms import ALGORITHMS
    for a in args.alg:
        if a != "plain" and a not in ALGORITHMS:
            raise SystemExit(f"bench forward: unknown algorithm {a!r} "
                             f"(plain or one of {', '.join(ALGORITHMS)})")
    args.size = list(dict.fromkeys(args.size or ([64, 1400] if q else SIZES)))
    for s in args.size:
        if not 64 <= s <= 1400:
            raise SystemExit(f"bench forward: size {s}: 64 <= N <= 1400 (the tunnel MTU is 1500)")
    args.mode = list(dict.fromkeys(args.mode or MODES))
    if args.tcp_seconds is None:
        args.tcp_seconds = 2 if q else 3
    if args.tcp_seconds < 1 or args.tcp_warmup < 0:
        raise SystemExit("bench forward: --tcp-seconds >= 1, --tcp-warmup >= 0 (whole seconds)")
    if args.seconds is None:
        args.seconds = 0.7 if q else 1.5
    if args.warmup is None:
        args.warmup = 0.25 if q else 0.4
    if args.rounds is None:
        args.rounds = 2 if q else 3
    if args.retries is None:
        args.retries = 3 if q else 8
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.rate <= 0:
        raise SystemExit("bench forward: --rounds >= 1, --seconds > 0, --warmup >= 0, --rate > 0")


# --- namespaces -------------------------------------------------------------------

def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and r.returncode:
        raise BenchFailed(f"ip {' '.join(argv)}: {r.stderr.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Namespaces fpbench-<pid>-* (and temporary directories) of a bench
    that died without cleaning up."""
    gone = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == NS_PREFIX and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            gone.append(name)
    for pid in {name.split("-")[1] for name in gone}:   # a killed run: its temporary files
        for d in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}-{pid}-*"):
            shutil.rmtree(d, ignore_errors=True)
        for sock in Path("/var/run/wireguard").glob(f"wg[hm]{pid}.sock"):   # --peers
            with contextlib.suppress(OSError):
                sock.unlink()
    return gone


class Lab:
    """CN ─ HA ─ router ─ MN, the addressing of tests/netns.py with the CoA on
    no interface (fastpath's mobile-node role routes it into its TUN)."""

    def __init__(self):
        self.prefix = f"{NS_PREFIX}-{os.getpid()}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def nip(self, short: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _ip("-n", self.ns(short), *argv, check=check)

    def build(self) -> None:
        for short in ("cn", "ha", "r", "mn"):
            _ip("netns", "add", self.ns(short))
            self.names.append(self.ns(short))
            self.nip(short, "link", "set", "lo", "up")
            for key in ("all.accept_dad", "default.accept_dad"):
                subprocess.run(["ip", "netns", "exec", self.ns(short), "sysctl", "-qw",
                                f"net.ipv6.conf.{key}=0"], capture_output=True)
        for a, ia, b, ib in (("cn", "cn0", "ha", "ha-cn"), ("ha", "ha-wire", "r", "r-ha"),
                             ("r", "r-mn", "mn", "mn0")):
            self.nip(a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", self.ns(b))
            self.nip(a, "link", "set", ia, "up")
            self.nip(b, "link", "set", ib, "up")
        for short, dev, addr in (("cn", "cn0", CN), ("ha", "ha-cn", HA_CN), ("ha", "ha-wire", HA_WIRE),
                                 ("r", "r-ha", R_HA), ("r", "r-mn", R_MN)):
            self.nip(short, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        for short in ("ha", "r"):
            subprocess.run(["ip", "netns", "exec", self.ns(short), "sysctl", "-qw",
                            "net.ipv6.conf.all.forwarding=1"], check=True, capture_output=True)
        # The null run routes the CN's packets (still to the HoA, a local
        # address of the MN) from mn0 into the MN's fp-wire: TCP's early demux
        # would attach the connection's socket to them on mn0, and the kernel
        # drops a packet to forward that has a socket (ip6_forward). Off in the
        # MN for every run, so that all of them deliver the same way.
        subprocess.run(["ip", "netns", "exec", self.ns("mn"), "sysctl", "-qw",
                        "net.ipv4.tcp_early_demux=0"], check=True, capture_output=True)
        self.nip("cn", "-6", "route", "add", "default", "via", HA_CN, "dev", "cn0")
        self.nip("ha", "-6", "route", "add", "default", "via", R_HA, "dev", "ha-wire")
        self.nip("mn", "-6", "route", "add", "2001:db8:2::/64", "dev", "mn0")
        self.nip("mn", "-6", "route", "add", "default", "via", R_MN, "dev", "mn0")
        for prefix in ("2001:db8:ffff::/48", HOME_PREFIX, "2001:db8:99::/64"):
            self.nip("r", "-6", "route", "add", prefix, "via", HA_WIRE, "dev", "r-ha")
        self.policy_routes()

    def policy_routes(self) -> None:
        """The null forwarders copy packets unchanged, so the CN's packets (to
        the HoA) leave the HA's fp-wire and the MN's fp-home still addressed
        to the HoA. Policy routes (table 100) give them the path of the tunnel:
        HA fp-wire -> router -> MN (next hop: the CoA, which the MN's forwarder
        proxies on mn0) -> MN fp-wire -> MN's null forwarder -> MN fp-home ->
        the HoA, a local address there. They are installed for every run, so
        that the kernel evaluates the same rules (and leaves its no-rules fast
        path) for the tunnelled packets as for the null-forwarded ones; they
        route tunnelled packets exactly as the main tables do.

        The way back (TCP's ACKs, HoA -> CN) likewise: the MN routes what
        its null forwarder writes to its fp-wire (table 100: default via the
        router) rather than by its source-specific default into fp-home (a
        loop), and the HA hands what arrives on ha-wire for the CN's prefix
        to its fp-wire (table 101), so that the ACKs cross both null
        forwarders as they cross both ESP ends."""
        self.nip("ha", "-6", "rule", "add", "iif", "fp-wire", "lookup", NULL_TABLE, "pref", "100")
        self.nip("ha", "-6", "route", "add", "default", "via", R_HA, "dev", "ha-wire",
                 "table", NULL_TABLE)
        self.nip("r", "-6", "rule", "add", "iif", "r-ha", "to", HOME_PREFIX, "lookup", NULL_TABLE,
                 "pref", "100")
        self.nip("r", "-6", "route", "add", HOME_PREFIX, "via", COA, "dev", "r-mn",
                 "table", NULL_TABLE)
        # the MN: packets from mn0 to the HoA must be routed (into fp-wire), not
        # delivered: the rule that looks up the local table moves behind ours
        self.nip("mn", "-6", "rule", "add", "pref", "1000", "lookup", "local")
        self.nip("mn", "-6", "rule", "del", "pref", "0", "lookup", "local")
        self.nip("mn", "-6", "rule", "add", "iif", "mn0", "to", f"{HOA}/128", "lookup",
                 NULL_TABLE, "pref", "100")
        self.nip("mn", "-6", "rule", "add", "iif", "fp-wire", "lookup", NULL_TABLE, "pref", "101")
        self.nip("mn", "-6", "route", "add", "default", "via", R_MN, "dev", "mn0",
                 "table", NULL_TABLE)
        self.nip("ha", "-6", "rule", "add", "iif", "ha-wire", "to", CN_PREFIX, "lookup",
                 NULL_BACK_TABLE, "pref", "101")

    def policy_route_tuns(self) -> None:
        """Once the forwarders have made their fp-wire: in the MN the HoA via
        fp-wire, in the HA the CN's prefix via fp-wire (both gone with the
        TUNs when the forwarders stop)."""
        self.nip("mn", "-6", "route", "replace", f"{HOA}/128", "dev", "fp-wire",
                 "table", NULL_TABLE)
        self.nip("ha", "-6", "route", "replace", CN_PREFIX, "dev", "fp-wire",
                 "table", NULL_BACK_TABLE)

    def popen(self, short: str, argv: list[str], cpus: list[int] | None, **kw) -> subprocess.Popen:
        """argv in namespace `short` (ip netns exec and taskset exec: the pid is argv's)."""
        pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                                       if os.environ.get("PYTHONPATH") else ""))
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(short), *pin, *argv], env=env,
                             start_new_session=True, **kw)   # Ctrl-C reaches the bench only
        self.procs.append(p)
        return p

    def tun_stats(self, short: str, dev: str) -> dict | None:
        """A TUN's packet counters: tx = the kernel handed them to the
        forwarder (its reads), rx = the forwarder wrote them, tx_dropped =
        dropped at the TUN's queue."""
        r = self.nip(short, "-j", "-s", "link", "show", "dev", dev, check=False)
        try:
            st = json.loads(r.stdout)[0]["stats64"]
            return {"tx": int(st["tx"]["packets"]), "rx": int(st["rx"]["packets"]),
                    "tx_dropped": int(st["tx"]["dropped"])}
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def tun_drops(self, short: str, dev: str) -> int | None:
        """Packets the kernel dropped at a TUN's queue (its tx_dropped)."""
        st = self.tun_stats(short, dev)
        return None if st is None else st["tx_dropped"]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for name in self.names:
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
        self.names.clear()


# --- the fastpath processes --------------------------------------------------------

def config_text(alg: str | None, state: Path) -> str:
    """One mobile node at the CoA, binding SAs aes128-sha1 and, unless alg is
    None (plain IPv6-in-IPv6), payload SAs of `alg`. Fresh random keys."""
    from fastpath.algorithms import get as get_alg

    def sa(purpose, direction, spi, name):
        a = get_alg(name)
        if a.kind == 1:                                     # GCM: key = AES key || salt
            keys = f'key = "{os.urandom(a.enc_key_len + 4).hex()}"'
        else:
            keys = "\n".join(([f'enc_key = "{os.urandom(a.enc_key_len).hex()}"']
                              if a.enc_key_len else []) +
                             [f'auth_key = "{os.urandom(a.auth_key_len).hex()}"'])
        return textwrap.dedent(f"""
            [[mobile_node.sa]]
            purpose = "{purpose}"
            direction = "{direction}"
            spi = {spi:#x}
            algorithm = "{name}"
            """) + keys + "\n"
    text = textwrap.dedent(f"""\
        [home_agent]
        address = "{HA_ADDRESS}"
        home_prefix = "{HOME_PREFIX}"
        mtu = 1500
        state_dir = "{state}"
        allow_manual_aead = true      # bench keys: manual AES-GCM keys are a lab opt-in

        [[mobile_node]]
        home_address = "{HOA}"
        care_of_address = "{COA}"
        """)
    text += sa("binding", "in", 0x1010, "aes128-sha1") + sa("binding", "out", 0x1020, "aes128-sha1")
    if alg is not None:
        text += sa("payload", "in", 0x1030, alg) + sa("payload", "out", 0x1040, alg)
    return text


def ctl(sock: str, what: str, timeout: float = 5.0):
    """One request on a forwarder's control socket (what `fastpath ctl` does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(what.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if "ok" not in reply:
        raise BenchFailed(f"ctl {what}: {reply.get('error')}")
    return reply["ok"]


@dataclass
class Forwarder:
    """A forwarding process: fastpath (sock = its control socket) or a peer
    (wireguard-go, charon: sock None, home_dev = its TUN)."""
    name: str
    proc: subprocess.Popen
    sock: str | None
    log: Path
    home_dev: str = "fp-home"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_forwarder(lab: Lab, short: str, name: str, tmp: Path, cfg: Path, cpus, extra: list[str],
                    timeout: float = 30.0) -> Forwarder:
    sock = str(tmp / f"{name}.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    log = tmp / f"{name}.log"
    with open(log, "w") as f:
        p = lab.popen(short, [sys.executable, "-m", "fastpath", "run", "-c", str(cfg),
                              "--control-socket", sock, "--log-level", "info", *extra], cpus,
                      stdout=f, stderr=subprocess.STDOUT)
    fw = Forwarder(name, p, sock, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not fw.alive():
            raise BenchFailed(f"{name} exited with {p.returncode}:\n{fw.log_tail()}")
        if os.path.exists(sock):
            with contextlib.suppress(OSError, ValueError, BenchFailed):
                ctl(sock, "status", 2)
                return fw
        time.sleep(0.05)
    raise BenchFailed(f"{name} did not start in {timeout:.0f} s:\n{fw.log_tail()}")


# --- process figures -------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def lowest_priority(pid: int) -> None:
    """The generator takes only the CPU that the MN and the sink leave, as
    traffic from another machine would. Each process the bench starts is a
    session of its own, so with autogroup scheduling (Linux's default) CFS
    shares the CPU *between sessions*: a saturating generator got as much of
    the shared CPU as the MN, which then dropped 17-26 % of an ESP stream at
    its fp-wire queue while the HA still had CPU to spare. SCHED_IDLE and an
    autogroup nice of 19 put it last. Best effort: without autogroup, the
    policy alone does it."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write("19")


def proc_figures(pid: int) -> dict:
    """CPU time of every thread of pid (schedstat: ns; stat: utime+stime in
    ticks) and its read/write syscall counts (/proc/PID/io)."""
    out: dict = {"sched_ns": 0}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["utime"], out["stime"] = int(fields[11]), int(fields[12])
        out["stat_ticks"] = out["utime"] + out["stime"]
    except (OSError, IndexError, ValueError):
        out["stat_ticks"] = None
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    out["threads"] = {}
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            out["sched_ns"] += ns
            out["threads"][tid] = ns
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("syscr", "syscw"):
                    out[k] = int(v)
    except OSError:
        pass
    return out


class Lines:
    """Line reader over a child's stdout pipe, with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.pending: list[dict] = []       # JSON lines read while looking for another key

    def readline(self, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def json_line(self, timeout: float, key: str) -> dict | None:
        """The next JSON line that has `key`. Lines without it are kept for a
        later call: a snapshot asked for just as the child finished must not
        swallow its closing totals (late snapshots are skipped)."""
        for i, d in enumerate(self.pending):
            if key in d:
                del self.pending[:i + 1]
                return d
        end = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, end - time.monotonic()))
            if line is None:
                return None
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if isinstance(d, dict):
                    if key in d:
                        return d
                    self.pending.append(d)

    def snapshot(self, timeout: float = 2.0) -> dict | None:
        """SIGUSR1 -> {"t": ..., counters}; only after the child said "ready"
        (before its handler is in place SIGUSR1 would kill it). None when it
        has finished (its totals stay for json_line)."""
        if self.proc.poll() is not None or any("t" not in d for d in self.pending):
            return None
        self.proc.send_signal(signal.SIGUSR1)
        return self.json_line(timeout, "t")


# --- one measurement ---------------------------------------------------------------

def softirq_threads() -> list[int]:
    """ksoftirqd/N: under load they carry part of this bench's packets."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(d))
    return out


@dataclass
class Ctx:
    lab: Lab
    tmp: Path
    gen_bin: Path
    sink_bin: Path
    ha_cpus: list[int] | None
    other_cpus: list[int] | None
    args: argparse.Namespace
    notes: list = field(default_factory=list)
    retries: int = 0                 # repeats left for runs disturbed by other load
    iperf3: str | None = None        # tcp mode: the iperf3 binary
    softirqd: list = field(default_factory=softirq_threads)


def _cpu_ns(pids) -> int:
    return sum(proc_figures(pid)["sched_ns"] for pid in pids if pid)


def _snap(ctx: Ctx, ha: Forwarder, mn: Forwarder, sink: Lines | None, gen: Lines | None,
          extra_pids=()) -> dict:
    """The HA's and MN's CPU and syscalls, the HA's worker counters (fastpath)
    and TUN counters, the sink's and generator's counts, the host's busy time."""
    s: dict = {"host": common.cpu_times()}
    s["proc0"] = proc_figures(ha.proc.pid)
    s["t"] = time.monotonic()
    s["ctl"] = ctl(ha.sock, "counters") if ha.sock else None
    s["proc"] = proc_figures(ha.proc.pid)
    s["mn_proc"] = proc_figures(mn.proc.pid)
    s["sink"] = sink.snapshot() if sink else None
    s["gen"] = gen.snapshot() if gen else None
    # every CPU nanosecond this bench accounts for: the rest of the host's busy
    # time belongs to other workloads sharing the machine
    s["ours_ns"] = _cpu_ns([mn.proc.pid, *(x.proc.pid for x in (sink, gen) if x), *extra_pids,
                            os.getpid(), *ctx.softirqd])
    s["tun"] = ctx.lab.tun_stats("ha", ha.home_dev)
    s["home_drops"] = None if s["tun"] is None else s["tun"]["tx_dropped"]
    s["host_end"] = common.cpu_times()
    return s


def _d(b: dict, a: dict, *path):
    for k in path:
        a, b = (a or {}).get(k), (b or {}).get(k)
    if a is None or b is None:
        return None
    return b - a


def run_traffic(ctx: Ctx, ha: Forwarder, mn: Forwarder, size: int, rate: int, warm: float,
                seconds: float, probe: bool = False) -> dict:
    """Sink in the MN namespace, generator in the CN namespace; snapshots of
    the HA, the sink and the generator after the warm-up and `seconds` later."""
    payload = size - UDP_OVERHEAD
    bat = str(ctx.args.gen_batch)
    sinkp = ctx.lab.popen("mn", [str(ctx.sink_bin), HOA, str(PORT), "600", bat], ctx.other_cpus,
                          stdout=subprocess.PIPE)
    sink = Lines(sinkp)
    genp = None
    try:
        if sink.readline(5) != "ready":
            raise BenchFailed("the sink did not start")
        total = warm + seconds + 0.25       # still sending at the second snapshot
        genp = ctx.lab.popen("cn", [str(ctx.gen_bin), HOA, str(PORT), str(payload), str(rate),
                                    f"{total:.3f}", bat], ctx.other_cpus, stdout=subprocess.PIPE)
        lowest_priority(genp.pid)
        gen = Lines(genp)
        if gen.readline(5) != "ready":
            raise BenchFailed("the generator did not start")
        a = b = None
        if not probe:
            time.sleep(warm)
            a = _snap(ctx, ha, mn, sink, gen)
            time.sleep(seconds)
            b = _snap(ctx, ha, mn, sink, gen)
        gfin = gen.json_line(total + 10, "elapsed")
        if gfin is None or "sent" not in gfin:
            raise BenchFailed("the generator reported nothing")
        time.sleep(0.2)                       # let the queues drain into the sink
        sinkp.send_signal(signal.SIGTERM)
        sfin = sink.json_line(5, "max_seq")
        if sfin is None or "packets" not in sfin:
            raise BenchFailed("the sink reported nothing")
    finally:
        for p in (genp, sinkp):
            if p is None:
                continue
            if p.poll() is None:
                p.kill()
            p.wait(5)
            p.stdout.close()
    return {"before": a, "after": b, "gen": gfin, "sink": sfin}


def _listening(lab: Lab, short: str, port: int) -> bool:
    r = subprocess.run(["ip", "netns", "exec", lab.ns(short), "ss", "-Hltn", f"sport = :{port}"],
                       capture_output=True, text=True)
    return bool(r.stdout.strip())


def run_tcp(ctx: Ctx, ha: Forwarder, mn: Forwarder, warm: int, seconds: int) -> dict:
    """One iperf3 stream: server in the MN namespace bound to the HoA, client
    in the CN namespace, `warm` s omitted then `seconds` s measured; the
    snapshots bracket the measured seconds (less 0.15 s at each end). Both
    iperf3 processes are gone when this returns, whatever happens."""
    lab, cpus = ctx.lab, ctx.other_cpus
    iperf = ctx.iperf3
    srv = cli = None
    try:
        srv = lab.popen("mn", [iperf, "-s", "-B", HOA, "-p", str(TCP_PORT), "-1"], cpus,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 5
        while not _listening(lab, "mn", TCP_PORT):
            if srv.poll() is not None or time.monotonic() > end:
                raise BenchFailed(f"iperf3 -s did not start: {srv.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        cli = lab.popen("cn", [iperf, "-c", HOA, "-p", str(TCP_PORT), "-t", str(seconds),
                               "-O", str(warm), "-J", "--connect-timeout", "3000"], cpus,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        extra = (srv.pid, cli.pid)
        time.sleep(warm + 0.15)
        a = _snap(ctx, ha, mn, None, None, extra)
        time.sleep(max(0.2, seconds - 0.3))
        b = _snap(ctx, ha, mn, None, None, extra)
        try:
            out, err = cli.communicate(timeout=warm + seconds + 20)
        except subprocess.TimeoutExpired:
            raise BenchFailed("iperf3 -c did not finish") from None
        try:
            doc = json.loads(out)
        except ValueError:
            raise BenchFailed(f"iperf3 -c: no JSON (exit {cli.returncode}): "
                              f"{err.decode()[-500:]}") from None
        if doc.get("error") or cli.returncode:
            raise BenchFailed(f"iperf3 -c: {doc.get('error') or err.decode()[-500:]}")
    finally:
        for p in (cli, srv):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
                for f in (p.stdout, p.stderr):
                    if f:
                        f.close()
    e = doc.get("end", {})
    return {"before": a, "after": b, "iperf": {
        "received_bps": e.get("sum_received", {}).get("bits_per_second"),
        "sent_bps": e.get("sum_sent", {}).get("bits_per_second"),
        "retransmits": e.get("sum_sent", {}).get("retransmits"),
        "seconds": e.get("sum_received", {}).get("seconds"),
        "mss": doc.get("start", {}).get("tcp_mss_default"),
        "cpu": e.get("cpu_utilization_percent")}}


def _busy_s(before: list[int], after: list[int]) -> float | None:
    """Busy CPU seconds of the whole host between two /proc/stat 'cpu' lines."""
    if not before or not after:
        return None
    d = [y - x for x, y in zip(before, after)]
    return (sum(d[:8]) - d[3] - d[4]) / CLK_TCK


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out


def _base(a: dict, b: dict, pk: int | None) -> dict:
    """CPU, syscalls and load figures of a window, per packet where pk > 0."""
    dt = b["t"] - a["t"]
    # the HA's CPU time: schedstat (ns) of all its threads, the mean of the
    # readings just before and just after each counters request
    cpu_ns = (b["proc"]["sched_ns"] - a["proc"]["sched_ns"] +
              b["proc0"]["sched_ns"] - a["proc0"]["sched_ns"]) / 2
    mn_ns = b["mn_proc"]["sched_ns"] - a["mn_proc"]["sched_ns"]
    ticks = (None if b["proc"]["stat_ticks"] is None or a["proc"]["stat_ticks"] is None
             else b["proc"]["stat_ticks"] - a["proc"]["stat_ticks"])
    rw = reads = writes = None
    if all(k in a["proc"] and k in b["proc"] for k in ("syscr", "syscw")):
        reads = b["proc"]["syscr"] - a["proc"]["syscr"]      # read, readv, ...
        writes = b["proc"]["syscw"] - a["proc"]["syscw"]     # write, writev, ...
        rw = reads + writes
    polls = (_d(b["ctl"], a["ctl"], "io", "polls") or 0) if a["ctl"] else 0
    # per thread: the busiest one is the worker, the rest is the control thread & co.
    th = sorted((ns - a["proc"]["threads"].get(tid, 0) for tid, ns in b["proc"]["threads"].items()),
                reverse=True)
    host_busy = _busy_s(a["host"], b["host_end"])
    ours = (cpu_ns + b["ours_ns"] - a["ours_ns"]) / 1e9
    return {
        "window_s": dt,
        "cpu_us_per_pkt": cpu_ns / 1e3 / pk if pk else None,
        "cpu_us_per_pkt_stat": ticks / CLK_TCK * 1e6 / pk if pk and ticks is not None else None,
        "mn_cpu_us_per_pkt": mn_ns / 1e3 / pk if pk else None,
        "both_cpu_us_per_pkt": (cpu_ns + mn_ns) / 1e3 / pk if pk else None,
        "ha_cpu_share": cpu_ns / 1e9 / dt,
        "mn_cpu_share": mn_ns / 1e9 / dt,
        "ha_kernel_share": (_d(b["proc"], a["proc"], "stime") / ticks) if ticks else None,
        "worker_us_per_pkt": th[0] / 1e3 / pk if pk and th else None,
        "other_threads_us_per_pkt": sum(th[1:]) / 1e3 / pk if pk and th else None,
        "bench_cpus": ours / dt,
        "host_busy_cpus": host_busy / dt if host_busy is not None else None,
        "other_load_cpus": max(0.0, (host_busy - ours) / dt) if host_busy is not None else None,
        "rw_syscalls": rw,
        "syscalls_per_pkt": (rw + polls) / pk if pk and rw is not None else None,
        "reads_per_pkt": reads / pk if pk and reads is not None else None,
        "writes_per_pkt": writes / pk if pk and writes is not None else None,
        "polls_per_pkt": polls / pk if pk and a["ctl"] else None,
        "home_tun_drops": (b["home_drops"] - a["home_drops"]
                           if b["home_drops"] is not None and a["home_drops"] is not None else None),
        "tun": {k: _d(b["tun"], a["tun"], k) for k in ("tx", "rx", "tx_dropped")},
    }


def figures(raw: dict, size: int) -> dict:
    """What the table and the JSON show, from the snapshots. Packets: those
    the HA wrote to fp-wire (its worker counters) for fastpath; for a peer
    (no counters) those the sink received in the window."""
    a, b = raw["before"], raw["after"]
    dt = b["t"] - a["t"]
    sink_dt = (b["sink"]["t"] - a["sink"]["t"]) if a["sink"] and b["sink"] else None
    gen_dt = (b["gen"]["t"] - a["gen"]["t"]) if a["gen"] and b["gen"] else None
    sink_pk = (b["sink"]["packets"] - a["sink"]["packets"]) if sink_dt else None
    sent, got = raw["gen"]["sent"], raw["sink"]["packets"]
    out = {
        "offered_pps": (b["gen"]["sent"] - a["gen"]["sent"]) / gen_dt if gen_dt else None,
        "sink_pps": sink_pk / sink_dt if sink_dt else None,
        "gen_sent": sent,
        "gen_errors": raw["gen"].get("errors"),
        "sink_received": got,
        "loss_pct": 100.0 * (sent - got) / sent if sent else None,
    }
    if a["ctl"] is not None:
        io_a, io_b = a["ctl"]["io"], b["ctl"]["io"]
        pk = _d(io_b, io_a, "tx", "wire") or 0
        rx_home = _d(io_b, io_a, "rx", "home") or 0
        batches = _d(io_b, io_a, "batches", "home") or 0
        verd_a, verd_b = a["ctl"]["totals"]["verdicts"], b["ctl"]["totals"]["verdicts"]
        out.update({
            "ha_rx_home": rx_home,
            "pkts_per_batch": rx_home / batches if batches else None,
            "verdicts": {k: v - verd_a.get(k, 0) for k, v in verd_b.items()
                         if v - verd_a.get(k, 0)},
            "drops": {k: v - a["ctl"]["totals"]["drops"].get(k, 0)
                      for k, v in b["ctl"]["totals"]["drops"].items()
                      if v - a["ctl"]["totals"]["drops"].get(k, 0)},
            "io_errors": {k: _d(io_b, io_a, k, "wire") for k in ("tx_errors", "rx_errors")},
        })
    else:
        pk = sink_pk or 0
        out.update({"pkts_per_batch": None, "verdicts": {}, "drops": {}})
    out.update(ha_packets=pk, ha_pps=pk / dt, ha_gbps=pk / dt * size * 8 / 1e9)
    out["gbps"] = out["ha_gbps"]
    out.update(_base(a, b, pk))
    return out


def tcp_figures(raw: dict) -> dict:
    """Gbit/s from iperf3 (its receiver, over the measured seconds); per
    packet the HA forwarded in the window, both directions (fastpath: its
    worker counters tx.wire + tx.home; a peer: its TUN's counters)."""
    a, b = raw["before"], raw["after"]
    ip = raw["iperf"]
    dt = b["t"] - a["t"]
    if a["ctl"] is not None:
        io_a, io_b = a["ctl"]["io"], b["ctl"]["io"]
        data = _d(io_b, io_a, "tx", "wire") or 0
        acks = _d(io_b, io_a, "tx", "home") or 0
        rx = (_d(io_b, io_a, "rx", "home") or 0) + (_d(io_b, io_a, "rx", "wire") or 0)
        batches = (_d(io_b, io_a, "batches", "home") or 0) + (_d(io_b, io_a, "batches", "wire") or 0)
        fa, fb = _flat(io_a), _flat(io_b)
        io = {k: fb[k] - fa.get(k, 0) for k in fb if fb[k] - fa.get(k, 0)}
        drops = {k: v - a["ctl"]["totals"]["drops"].get(k, 0)
                 for k, v in b["ctl"]["totals"]["drops"].items()
                 if v - a["ctl"]["totals"]["drops"].get(k, 0)}
    else:
        # the peer's TUN: tx = handed to the daemon (data), rx = written by it (ACKs)
        data = _d(b["tun"], a["tun"], "tx") or 0
        acks = _d(b["tun"], a["tun"], "rx") or 0
        rx = batches = 0
        io, drops = {}, {}
    pk = data + acks
    out = {
        "gbps": ip["received_bps"] / 1e9 if ip["received_bps"] else None,
        "sent_gbps": ip["sent_bps"] / 1e9 if ip["sent_bps"] else None,
        "retransmits": ip["retransmits"],
        "mss": ip["mss"],
        "iperf_cpu": ip["cpu"],
        "ha_packets": pk,
        "ha_pkts_data": data,
        "ha_pkts_ack": acks,
        "ha_pps": pk / dt,
        "pkts_per_batch": rx / batches if batches else None,
        "io": io,
        "drops": drops,
        "verdicts": {},
    }
    out.update(_base(a, b, pk))
    return out


# --- the run -------------------------------------------------------------------------

def compile_tools(tmp: Path) -> tuple[Path, Path]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BenchFailed("gcc not found: the generator and the sink are compiled at run time")
    out = []
    for name in ("fwd_gen", "fwd_sink"):
        binary = tmp / name
        r = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(HERE / f"{name}.c")],
                           capture_output=True, text=True)
        if r.returncode:
            raise BenchFailed(f"{cc} {name}.c failed:\n{r.stderr}")
        out.append(binary)
    return out[0], out[1]


def cpu_layout(no_pin: bool, ha_cpu: int | None) -> tuple[list[int] | None, list[int] | None]:
    """The HA's CPU (default: the first one; `bench engine` and `scale` pin
    themselves to the last) and the others' CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    ha = cpus[0] if ha_cpu is None else ha_cpu
    if ha not in cpus:
        raise SystemExit(f"bench forward: --ha-cpu {ha} is not available (have {cpus})")
    return [ha], [c for c in cpus if c != ha]


def probe(ctx: Ctx, ha: Forwarder, mn: Forwarder, what: str) -> None:
    """A few hundred packets must reach the sink (neighbour discovery, routes)."""
    for _ in range(3):
        raw = run_traffic(ctx, ha, mn, 128, 2000, 0, 0.3, probe=True)
        if raw["sink"]["packets"] > 0:
            return
    raise BenchFailed(f"{what}: no packet reached the sink (sent {raw['gen']['sent']}):\n"
                      f"{ha.log_tail()}\n{mn.log_tail()}")


def offload_supported() -> bool:
    """Whether this tree's `fastpath run` has --offload/--no-offload."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else ""))
    try:
        r = subprocess.run([sys.executable, "-m", "fastpath", "run", "--help"], capture_output=True,
                           text=True, env=env, cwd=REPO, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(r"(?<![\w-])--offload(?![\w-])", r.stdout) is not None


def offload_settings(choice: str, supported: bool) -> list[str]:
    if not supported:
        return [OFFLOAD_NA]
    return {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[choice]


def offload_flags(setting: str) -> list[str]:
    return {"on": ["--offload"], "off": ["--no-offload"]}.get(setting, [])


def measure(ctx: Ctx, fn, say) -> dict:
    """fn() -> figures, run again once (while ctx.retries last) when other
    processes of the machine kept more than --max-other-load CPUs busy; the
    quieter of the two."""
    best = None
    for attempt in range(1 + (1 if ctx.retries > 0 else 0)):
        f = fn()
        f["attempt"] = attempt
        if best is None or (f["other_load_cpus"] or 0) < (best["other_load_cpus"] or 0):
            best = f
        if (f["other_load_cpus"] or 0) <= ctx.args.max_other_load:
            break
        if attempt == 0 and ctx.retries > 0:
            ctx.retries -= 1
            say(f"  (other load {f['other_load_cpus']:.2f} CPUs: again)")
    return best


def say_udp(say, label: str, size: int, mode: str, f: dict) -> None:
    say(f"  {label} {size:5d} B {mode:5s}: HA {f['ha_pps']:8.0f} pps, "
        f"sink {f['sink_pps'] or 0:8.0f} pps, loss {f['loss_pct'] or 0:5.1f} %, "
        f"{f['cpu_us_per_pkt'] or 0:6.2f} us/pkt (both ends {f['both_cpu_us_per_pkt'] or 0:6.2f}), "
        f"HA CPU {100 * f['ha_cpu_share']:3.0f} %, {f['syscalls_per_pkt'] or 0:.2f} "
        f"syscalls/pkt, {f['pkts_per_batch'] or 0:.1f} pkts/batch, other load "
        f"{f['other_load_cpus'] or 0:.2f} CPUs")


def say_tcp(say, label: str, f: dict) -> None:
    say(f"  {label}   tcp      : {f['gbps'] or 0:6.2f} Gbit/s, {f['retransmits'] or 0} retr, "
        f"HA {f['ha_pps']:8.0f} pkt/s ({f['ha_pkts_data']} data, {f['ha_pkts_ack']} ack), "
        f"{f['cpu_us_per_pkt'] or 0:6.2f} us/pkt, HA CPU {100 * f['ha_cpu_share']:3.0f} %, "
        f"MN CPU {100 * f['mn_cpu_share']:3.0f} %, {f['syscalls_per_pkt'] or 0:.2f} syscalls/pkt "
        f"(reads {f['reads_per_pkt'] or 0:.2f}, writes {f['writes_per_pkt'] or 0:.2f}), "
        f"other load {f['other_load_cpus'] or 0:.2f} CPUs")


def measure_config(ctx: Ctx, alg: str, offload: str, rnd: int, cells: list, configs: list,
                   say) -> None:
    """Start the HA and the MN for one algorithm (both null forwarders for
    NULL) and offload setting, then run every size x UDP mode, and tcp."""
    args, lab, tmp = ctx.args, ctx.lab, ctx.tmp
    null = alg == NULL
    name = f"{alg}-{offload.replace('/', '')}-r{rnd}"
    label = f"r{rnd} {alg:12s} {offload:3s}"
    cfg = tmp / f"{name}.toml"
    cfg.write_text(config_text(None if alg in (NULL, "plain") else alg, tmp / f"state-{name}"))
    flags = ["--batch", str(args.batch), "--crypto", args.crypto] + offload_flags(offload) + \
        (["--null-forwarder"] if null else [])
    ha = mn = None
    try:
        ha = start_forwarder(lab, "ha", f"ha-{name}", tmp, cfg, ctx.ha_cpus, flags)
        mn = start_forwarder(lab, "mn", f"mn-{name}", tmp, cfg, ctx.other_cpus,
                             flags + ["--role", "mobile-node", "--enable-forwarding"])
        lab.policy_route_tuns()
        status = ctl(ha.sock, "status")
        probe(ctx, ha, mn, alg)
        common_keys = {"alg": alg, "offload": offload, "round": rnd, "crypto": status.get("crypto")}

        def check_alive(what):
            if not ha.alive() or not mn.alive():
                raise BenchFailed(f"a forwarder died during {alg} {offload} {what}:\n"
                                  f"{ha.log_tail()}\n{mn.log_tail()}")

        for size in args.size:
            for mode in (m for m in args.mode if m != "tcp"):
                rate = args.rate if mode == "fixed" else 0

                def one():
                    f = figures(run_traffic(ctx, ha, mn, size, rate, args.warmup, args.seconds),
                                size)
                    check_alive(f"{size} {mode}")
                    return f
                f = measure(ctx, one, say)
                if f["drops"]:
                    ctx.notes.append(f"{alg} {offload} {size} B {mode} r{rnd}: the HA dropped "
                                     f"{f['drops']}")
                if mode == "fixed" and (f["ha_pps"] < 0.95 * (f["offered_pps"] or rate)
                                        or (f["loss_pct"] or 0) > 5):
                    ctx.notes.append(f"{alg} {offload} {size} B fixed r{rnd}: the path did not "
                                     f"keep up with {rate} pps (HA {f['ha_pps']:.0f} pps, loss "
                                     f"{f['loss_pct'] or 0:.1f} %)")
                cells.append({**common_keys, "size": size, "mode": mode, "rate": rate or None, **f})
                say_udp(say, label, size, mode, f)
        if "tcp" in args.mode and ctx.iperf3:
            def one_tcp():
                f = tcp_figures(run_tcp(ctx, ha, mn, args.tcp_warmup, args.tcp_seconds))
                check_alive("tcp")
                return f
            f = measure(ctx, one_tcp, say)
            if f["drops"]:
                ctx.notes.append(f"{alg} {offload} tcp r{rnd}: the HA dropped {f['drops']}")
            cells.append({**common_keys, "size": None, "mode": "tcp", "rate": None, **f})
            say_tcp(say, label, f)
        hc, mc = ctl(ha.sock, "counters"), ctl(mn.sock, "counters")
        configs.append({"alg": alg, "offload": offload, "round": rnd, "ha_status": status,
                        "ha_verdicts": hc["totals"]["verdicts"],
                        "ha_drops": {k: v for k, v in hc["totals"]["drops"].items() if v},
                        "ha_io": hc["io"], "mn_verdicts": mc["totals"]["verdicts"],
                        "mn_drops": {k: v for k, v in mc["totals"]["drops"].items() if v},
                        "mn_io": mc["io"]})
    finally:
        for fw in (mn, ha):
            if fw is not None:
                rc = fw.stop()
                if rc not in (0, None):
                    ctx.notes.append(f"{fw.name} exited with {rc}")


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


MEDIAN_KEYS = ("offered_pps", "ha_pps", "ha_gbps", "gbps", "sink_pps", "loss_pct",
               "cpu_us_per_pkt", "worker_us_per_pkt", "other_threads_us_per_pkt",
               "ha_kernel_share", "cpu_us_per_pkt_stat", "ha_cpu_share", "mn_cpu_share",
               "mn_cpu_us_per_pkt", "both_cpu_us_per_pkt", "syscalls_per_pkt", "pkts_per_batch",
               "polls_per_pkt", "other_load_cpus", "host_busy_cpus", "home_tun_drops",
               "retransmits", "sent_gbps", "ha_pkts_data", "ha_pkts_ack", "reads_per_pkt",
               "writes_per_pkt")


def aggregate(cells: list, max_other: float) -> list:
    """One row per alg x offload x size x mode: medians over the rounds; each
    ratio is taken against the null forwarder of the same round and offload
    setting, then the median."""
    null = {(c["offload"], c["size"], c["mode"], c["round"]): c for c in cells if c["alg"] == NULL}
    rows = []
    for key in dict.fromkeys((c["alg"], c["offload"], c["size"], c["mode"]) for c in cells):
        alg, offload, size, mode = key
        mine = [c for c in cells if (c["alg"], c["offload"], c["size"], c["mode"]) == key]
        official = (alg in TCP_OFFICIAL) if mode == "tcp" else \
            (alg in OFFICIAL[0] and size in OFFICIAL[1])
        r = {"alg": alg, "offload": offload, "size": size, "mode": mode, "rounds": len(mine),
             "official": official}
        for k in MEDIAN_KEYS:
            r[k] = _median([c.get(k) for c in mine])
        nulls = [null.get((offload, size, mode, c["round"])) for c in mine]
        r["null_cpu_us_per_pkt"] = _median([n.get("cpu_us_per_pkt") for n in nulls if n])
        r["null_sink_pps"] = _median([n.get("sink_pps") for n in nulls if n])
        r["null_ha_pps"] = _median([n.get("ha_pps") for n in nulls if n])
        r["null_gbps"] = _median([n.get("gbps") for n in nulls if n])
        r["ratio"] = r["target"] = r["target_text"] = None

        def ratios(k):
            return [c[k] / n[k] for c, n in zip(mine, nulls) if n and c.get(k) and n.get(k)]
        ok = None
        if mode == "tcp":
            # the target is absolute (Gbit/s); the ratio to null is shown for every row
            rs = ratios("gbps") if alg != NULL else []
            r["ratio"] = _median(rs)
            r["cpu_ratio"] = _median(ratios("cpu_us_per_pkt")) if alg != NULL else None
            if official:
                ok = None if r["gbps"] is None else r["gbps"] >= TCP_TARGET
                r["target_text"] = f">= {TCP_TARGET:g} Gbit/s"
        elif alg != NULL:
            if mode == "fixed":
                rs = ratios("cpu_us_per_pkt")
                r["ratio"] = _median(rs)
                ok = None if r["ratio"] is None else r["ratio"] <= CPU_TARGET
                r["target_text"] = f"<= {CPU_TARGET}"
            else:
                rs = ratios("sink_pps")
                r["ratio"] = _median(rs)
                r["ha_pps_ratio"] = _median(ratios("ha_pps"))
                # what the HA alone could do with its whole CPU: null CPU/pkt over ours
                r["capacity_ratio"] = _median([1 / x for x in ratios("cpu_us_per_pkt")])
                ok = None if r["ratio"] is None else r["ratio"] >= PPS_TARGET
                r["target_text"] = f">= {PPS_TARGET}"
        else:
            rs = []
        r["ratio_per_round"] = rs
        if r["target_text"]:
            pool = mine + ([n for n in nulls if n] if mode != "tcp" else [])
            other = max((c.get("other_load_cpus") or 0 for c in pool), default=0)
            r["noisy"] = other > max_other
            r["target"] = (common.verdict(ok) + ("?" if r["noisy"] and ok is not None else "")
                           + ("*" if r["official"] else ""))
        r["ha_cpu_pct"] = None if r["ha_cpu_share"] is None else 100 * r["ha_cpu_share"]
        rows.append(r)
    return rows


COLUMNS = [
    common.Column("alg", "alg", align="<"),
    common.Column("offload", "offload", align="<"),
    common.Column("size", "size"),
    common.Column("mode", "mode", align="<"),
    common.Column("offered_pps", "offered pps", "{:.0f}"),
    common.Column("ha_pps", "HA pps", "{:.0f}"),
    common.Column("sink_pps", "sink pps", "{:.0f}"),
    common.Column("loss_pct", "loss %", "{:.1f}"),
    common.Column("gbps", "Gbit/s", "{:.2f}"),
    common.Column("cpu_us_per_pkt", "CPU us/pkt", "{:.2f}"),
    common.Column("null_cpu_us_per_pkt", "null us/pkt", "{:.2f}"),
    common.Column("ratio", "ratio", "{:.2f}"),
    common.Column("target_text", "target", align="<"),
    common.Column("target", "PASS/FAIL", align="<"),
    common.Column("syscalls_per_pkt", "syscalls/pkt", "{:.2f}"),
    common.Column("pkts_per_batch", "pkts/batch", "{:.1f}"),
    common.Column("ha_cpu_pct", "HA CPU %", "{:.0f}"),
    common.Column("other_load_cpus", "other load", "{:.2f}"),
]


def chart(rows: list, peer_rows: list | None = None) -> list[dict]:
    offloads = list(dict.fromkeys(r["offload"] for r in rows))

    def label(r):
        return r["alg"] if len(offloads) < 2 else f"{r['alg']} (offload {r['offload']})"

    def series(mode, key):
        out = {}
        for lab in dict.fromkeys(label(r) for r in rows):
            pts = sorted((r["size"], r[key]) for r in rows
                         if label(r) == lab and r["mode"] == mode and r.get(key) is not None)
            if pts:
                out[lab] = ([p[0] for p in pts], [p[1] for p in pts])
        return out
    panels = []
    if any(r["mode"] == "fixed" for r in rows):
        panels.append({"title": "HA CPU per forwarded packet at a fixed offered rate",
                       "xlabel": "inner IPv6 packet (bytes)", "ylabel": "µs of CPU / packet",
                       "series": series("fixed", "cpu_us_per_pkt")})
        if peer_rows:
            s = series("fixed", "both_cpu_us_per_pkt")
            for peer in dict.fromkeys(r["peer"] for r in peer_rows):
                pts = sorted((r["size"], r["both_cpu_us_per_pkt"]) for r in peer_rows
                             if r["peer"] == peer and r["mode"] == "fixed"
                             and r.get("both_cpu_us_per_pkt") is not None)
                if pts:
                    s[peer] = ([p[0] for p in pts], [p[1] for p in pts])
            panels.append({"title": "CPU per packet, both ends (HA + MN), fastpath vs peers",
                           "xlabel": "inner IPv6 packet (bytes)", "ylabel": "µs of CPU / packet",
                           "logy": True, "series": s})
    if any(r["mode"] == "sat" for r in rows):
        panels.append({"title": "generator at its maximum: UDP packets/s at the sink",
                       "xlabel": "inner IPv6 packet (bytes)", "ylabel": "packets/s",
                       "series": series("sat", "sink_pps")})
    tcp = [r for r in rows if r["mode"] == "tcp" and r.get("gbps") is not None]
    if tcp:
        xs = [f"offload {o}" for o in offloads]
        s = {}
        for alg in dict.fromkeys(r["alg"] for r in tcp):
            by = {r["offload"]: r["gbps"] for r in tcp if r["alg"] == alg}
            pts = [(f"offload {o}", by[o]) for o in offloads if o in by]
            s[alg] = ([p[0] for p in pts], [p[1] for p in pts])
        for r in peer_rows or []:
            if r["mode"] == "tcp" and r.get("gbps") is not None:
                s[r["peer"]] = (xs, [r["gbps"]] * len(xs))
        s[f"target aes128gcm16 >= {TCP_TARGET:g}"] = (xs, [TCP_TARGET] * len(xs))
        panels.append({"title": "single TCP stream CN -> MN (iperf3)", "xlabel": "",
                       "ylabel": "Gbit/s", "series": s})
    return panels


def run(args) -> int:
    _resolve(args)
    if os.geteuid() != 0:
        print("bench forward: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if not shutil.which("ip") or not os.path.exists("/dev/net/tun"):
        print("bench forward: needs the ip command (iproute2) and /dev/net/tun", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(msg, flush=True)

    for name in cleanup_stale():
        say(f"removed namespace {name}, left by a bench run that died")
    ha_cpus, other_cpus = cpu_layout(args.no_pin, args.ha_cpu)
    if other_cpus:
        os.sched_setaffinity(0, set(other_cpus))
    doc = common.header("forward", args)
    doc["pinned_cpu"] = (f"HA {ha_cpus[0]}, the rest {','.join(map(str, other_cpus))}"
                         if ha_cpus else "none")
    doc["layout"] = {"ha_cpus": ha_cpus, "other_cpus": other_cpus}
    say(common.describe_machine(doc))
    early_notes = []
    supported = offload_supported()
    settings = offload_settings(args.offload, supported)
    doc["offload"] = {"supported": supported, "asked": args.offload, "settings": settings}
    if not supported:
        early_notes.append(f"`fastpath run` has no --offload flag in this tree: every run is "
                           f"without it (offload n/a), --offload {args.offload} ignored")
    iperf3 = shutil.which("iperf3")
    if "tcp" in args.mode and not iperf3:
        early_notes.append("tcp: iperf3 is not installed (Debian: iperf3): tcp runs skipped")
    for n in early_notes:
        say("note: " + n)
    tmp = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-{os.getpid()}-"))
    lab = Lab()
    doc["namespaces"] = f"{lab.prefix}-{{cn,ha,r,mn}}"
    cells: list = []
    configs: list = []
    ctx = None
    t_start = time.monotonic()
    failed = False
    peer_doc = None

    def on_term(signum, frame):                 # SIGTERM/SIGHUP: clean up like Ctrl-C
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if ignored
    try:
        gen_bin, sink_bin = compile_tools(tmp)
        lab.build()
        ctx = Ctx(lab, tmp, gen_bin, sink_bin, ha_cpus, other_cpus, args)
        ctx.retries = args.retries
        ctx.iperf3 = iperf3
        ctx.notes.extend(early_notes)
        say(f"namespaces {lab.prefix}-{{cn,ha,r,mn}}; {args.rounds} round(s) of null + "
            f"{', '.join(args.alg)} x offload {', '.join(settings)} x "
            f"{', '.join(map(str, args.size))} B x {', '.join(args.mode)}; "
            f"{args.seconds:g} s per UDP run after {args.warmup:g} s warm-up; fixed rate "
            f"{args.rate} pps; tcp {args.tcp_seconds} s after {args.tcp_warmup} s")
        for rnd in range(args.rounds):
            order = [(alg, off) for off in settings for alg in [NULL] + args.alg]
            for alg, off in (order if rnd % 2 == 0 else order[::-1]):   # alternate: drift cancels
                measure_config(ctx, alg, off, rnd, cells, configs, say)
        if args.peers:
            from bench import peers
            peer_doc = peers.run_peers(ctx, say)
    except KeyboardInterrupt:
        failed = True
        print("\nbench forward: interrupted; cleaning up", file=sys.stderr)
    except BenchFailed as e:
        failed = True
        print(f"\nbench forward: {e}", file=sys.stderr)
    finally:
        lab.close()
        if args.peers:
            from bench import peers
            peers.cleanup_sockets(os.getpid())
        for s, h in old.items():
            signal.signal(s, h)
        if args.keep or failed:
            print(f"(configs and logs in {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not cells:
        return 1
    rows = aggregate(cells, args.max_other_load)
    notes = ctx.notes if ctx else list(early_notes)
    sat = [r for r in rows if r["mode"] == "sat" and r["ha_cpu_share"] is not None]
    if sat and max(r["ha_cpu_share"] for r in sat) < 0.9:
        notes.append(f"sat: the HA used {min(r['ha_cpu_pct'] for r in sat):.0f}-"
                     f"{max(r['ha_cpu_pct'] for r in sat):.0f} % of its CPU: the other CPU "
                     f"(generator, MN, sink) is the bottleneck, so the sat ratio compares the "
                     f"whole path (HA and MN both fastpath vs both null forwarders)")
    tcp = [r for r in rows if r["mode"] == "tcp" and r["ha_cpu_share"] is not None]
    if tcp and max(r["ha_cpu_share"] for r in tcp) < 0.9:
        notes.append(f"tcp: the HA used {min(r['ha_cpu_pct'] for r in tcp):.0f}-"
                     f"{max(r['ha_cpu_pct'] for r in tcp):.0f} % of its CPU: the stream is "
                     f"bound elsewhere (the other CPU runs iperf3's client and server and the MN)")
    worst = max((c["other_load_cpus"] or 0 for c in cells), default=0)
    if worst > args.max_other_load:
        notes.append(f"other workloads on this machine kept up to {worst:.2f} CPUs busy during "
                     f"the runs ('other load', median per row); '?' marks verdicts from rounds "
                     f"with more than {args.max_other_load} CPUs of it: noisy")
    caps = [f"{r['alg']} {r['offload']} {r['size']}: {r['capacity_ratio']:.2f}" for r in rows
            if r.get("capacity_ratio") is not None]
    if caps:
        notes.append("sat, CPU per packet of the null forwarder / of the HA (the pps ratio the HA "
                     "alone would reach with its CPU to itself): " + ", ".join(caps))
    if peer_doc is not None:
        from bench import peers
        peer_doc["compare"] = peers.compare(rows, peer_doc.get("rows", []))
    doc.update(rows=rows, cells=cells, configs=configs, notes=notes, peers=peer_doc,
               elapsed_s=time.monotonic() - t_start, complete=not failed)
    print()
    print(common.render_table(COLUMNS, rows))
    print(f"\nMedians of {args.rounds} round(s). fixed: generator paced at {args.rate} pps; CPU = "
          f"the HA process's CPU time (all threads) / packet it wrote to fp-wire; ratio = / "
          f"null.\nsat: generator at its maximum; ratio = sink pps / null sink pps. null = HA "
          f"and MN started with --null-forwarder (same loop, no transform).\ntcp: one iperf3 "
          f"stream CN -> MN for {args.tcp_seconds} s after {args.tcp_warmup} s; Gbit/s = iperf3's "
          f"receiver; CPU and syscalls per packet the HA forwarded (data to fp-wire + ACKs to "
          f"fp-home); ratio = Gbit/s / null's; the target is absolute.\noffload: --offload / "
          f"--no-offload given to the HA and the MN (null runs too); n/a = fastpath run has no "
          f"such flag.\n* = the targets issue 3 names (aes128gcm16, aes128-sha1 at 64 and 1400 "
          f"B; tcp through aes128gcm16); ? = noisy (other load). syscalls/pkt = (read + write "
          f"syscalls of the HA process + polls) / packet. other load = CPUs busy with processes "
          f"not of this bench.")
    if peer_doc is not None:
        from bench import peers
        peers.print_tables(peer_doc, say)
    for n in notes:
        print("note: " + n)
    path = common.write_json(args.json, doc)
    print(f"\nJSON: {path}   ({doc['elapsed_s']:.0f} s)")
    if not args.no_png:
        png = common.plot(path.with_suffix(".png"),
                          chart(rows, (peer_doc or {}).get("rows")), common.chart_title(doc))
        if png:
            print(f"PNG:  {png}")
    return 1 if failed else 0
