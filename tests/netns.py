"""Throw-away network namespaces for tests (a helper, not a test file).

Everything here shells out to ``ip`` (iproute2): it is test code, and the
commands read like the set-up a person would type.  Namespaces are named
``fpt-<pid>-<n>[-<tag>]`` so that a crashed test run's leftovers are
recognisable (:func:`cleanup_stale` removes those of dead pids).

    with topology() as t:                    # CN -- HA -- router -- MN
        t.cn.run(["ip", "-6", "route"])
        assert t.cn.ping(t.HA_CN)
        atk = t.add_attacker()               # 2001:db8:666::/64 behind the router

Addresses (SPEC §1, the engine tests' topo.py uses the same ones)::

    CN  cn0    2001:db8:99::1/64  <->  HA  ha-cn    2001:db8:99::2/64
    HA  ha-wire 2001:db8:ff::1/64 <->  R   r-ha     2001:db8:ff::2/64
    R   r-mn   2001:db8:2::1/64   <->  MN  mn0      2001:db8:2::10/64   (CoA 1)
    R   r-mn2  2001:db8:3::1/64   <->  MN  mn1      2001:db8:3::10/64   (CoA 2)
    R   r-atk  2001:db8:666::1/64 <->  ATK atk0     2001:db8:666::10/64 (add_attacker)

    CN default via HA; HA default via R; MN default via R (and, from CoA 2,
    via r-mn2: a source-specific default); R routes 2001:db8:ffff::/48 (the
    HA address), 2001:db8:1::/64 (home prefix) and 2001:db8:99::/64 (CN) to
    the HA.  The HA address 2001:db8:ffff::1 is on no interface: fastpath
    routes it into its wire TUN.  Forwarding is on in HA and R; DAD is off
    everywhere; loopback is up everywhere.

``topology(coa_on_mn=False)`` leaves the CoAs off mn0/mn1 (only their on-link
/64 routes) for fastpath's mobile-node role, which must own the CoA itself
(it routes it into its wire TUN and answers for it by proxy NDP).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

PREFIX = "fpt"
_counter = itertools.count()


def skip_reason(need_tun: bool = False) -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, routes)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    if not os.path.isdir("/run/netns") and not os.access("/run", os.W_OK):
        return "cannot create /run/netns"
    if need_tun and not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TUN support: modprobe tun, or pass the device in)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def cleanup_stale() -> list[str]:
    """Delete fpt-<pid>-* namespaces whose pid is dead (a killed test run)."""
    out = _ip("netns", "list", check=False).stdout
    gone = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\d+(?:-.*)?", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _kill_pids_in(name)
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def _kill_pids_in(name: str) -> None:
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for p in pids:
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Netns:
    """One network namespace; ``close()`` (or ``with``) deletes it.

    ``run`` / ``popen`` execute inside it via ``ip netns exec``; processes
    started with ``popen`` are killed on close, and so is anything else
    still running inside the namespace (all of it was started by the test).
    """

    def __init__(self, tag: str = ""):
        n = next(_counter)
        self.name = f"{PREFIX}-{os.getpid()}-{n}" + (f"-{tag}" if tag else "")
        self.tag = tag or self.name
        self.procs: list[subprocess.Popen] = []
        self._closed = False
        _ip("netns", "add", self.name)
        try:
            # before any interface exists: new interfaces inherit "default"
            self.sysctl("net.ipv6.conf.default.accept_dad", 0)
            self.sysctl("net.ipv6.conf.all.accept_dad", 0)
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running things inside -----------------------------------------------------
    @staticmethod
    def _argv(cmd: str | Sequence[str]) -> list[str]:
        return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]

    def run(self, cmd: str | Sequence[str], *, check: bool = True, capture_output: bool = True,
            text: bool = True, **kw) -> subprocess.CompletedProcess:
        """subprocess.run inside the namespace (captures output, checks by default)."""
        return subprocess.run(["ip", "netns", "exec", self.name, *self._argv(cmd)],
                              check=check, capture_output=capture_output, text=text, **kw)

    def popen(self, cmd: str | Sequence[str], **kw) -> subprocess.Popen:
        """subprocess.Popen inside the namespace; killed on close()."""
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *self._argv(cmd)], **kw)
        self.procs.append(p)
        return p

    def python(self, code: str, *, check: bool = True, timeout: float = 30,
               **kw) -> subprocess.CompletedProcess:
        """Run a Python snippet inside the namespace (this interpreter, repo on the path)."""
        env = dict(os.environ, PYTHONPATH=_repo_path())
        return self.run([sys.executable, "-c", textwrap.dedent(code)], check=check,
                        timeout=timeout, env=env, **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAME ARGS...``"""
        return _ip("-n", self.name, *[str(a) for a in args], check=check)

    def sysctl(self, key: str, value) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def sysctl_get(self, key: str) -> str:
        return self.run(["sysctl", "-n", key]).stdout.strip()

    # -- addresses and routes ------------------------------------------------------
    def addr(self, ifname: str, cidr: str) -> None:
        """Add an address without DAD (usable at once)."""
        fam = "-6" if ":" in cidr else "-4"
        self.ip(fam, "addr", "add", cidr, "dev", ifname, *(["nodad"] if fam == "-6" else []))

    def route(self, dst: str, *, via: str | None = None, dev: str | None = None,
              src: str | None = None) -> None:
        """``ip -6 route replace DST [from SRC] [via VIA] [dev DEV]``."""
        args = ["-6", "route", "replace", dst]
        if src:
            args += ["from", src]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(*args)

    def up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def forwarding(self, on: bool = True) -> None:
        self.sysctl("net.ipv6.conf.all.forwarding", int(on))

    def links(self) -> list[str]:
        return [l.split(":")[1].strip().split("@")[0]
                for l in self.ip("-o", "link", "show").stdout.splitlines()]

    def ping(self, dst: str, *, src: str | None = None, count: int = 1,
             timeout: float = 2.0, size: int = 56) -> bool:
        """ICMPv6 echo to ``dst`` from inside the namespace; True if answered.

        Uses iputils ping when installed, else a raw-socket echo in Python
        (Debian's slim images have no ping).
        """
        if shutil.which("ping"):
            cmd = ["ping", "-6", "-n", "-c", str(count), "-W", str(max(1, int(timeout))),
                   "-s", str(size)]
            if src:
                cmd += ["-I", src]
            return self.run(cmd + [dst], check=False).returncode == 0
        r = self.python(_PING_CODE, check=False, timeout=timeout * count + 10,
                        input=f"{dst} {src or '-'} {count} {timeout} {size}")
        return r.returncode == 0

    # -- teardown --------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _kill_pids_in(self.name)
        _ip("netns", "del", self.name, check=False)


_PING_CODE = r"""
import os, select, socket, struct, sys, time
dst, src, count, timeout, size = sys.stdin.read().split()
count, timeout, size = int(count), float(timeout), int(size)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
if src != "-":
    s.bind((src, 0))
ident = os.getpid() & 0xFFFF
ok = 0
for seq in range(1, count + 1):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload, (dst, 0))
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        data, addr = s.recvfrom(65535)
        if len(data) >= 8 and data[0] == 129 and struct.unpack("!HH", data[4:8]) == (ident, seq):
            ok += 1
            break
sys.exit(0 if ok == count else 1)
"""


def _repo_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    extra = os.environ.get("PYTHONPATH")
    return repo + (os.pathsep + extra if extra else "")


def veth(ns_a: Netns, if_a: str, ns_b: Netns, if_b: str, *, up: bool = True) -> None:
    """A veth pair: ``if_a`` in ``ns_a``, ``if_b`` in ``ns_b`` (created in
    place: the host's namespace is never touched)."""
    ns_a.ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b.name)
    if up:
        ns_a.up(if_a)
        ns_b.up(if_b)


# --------------------------------------------------------------------------
# the CN -- HA -- router -- MN topology


@dataclass
class Topology:
    cn: Netns
    ha: Netns
    router: Netns
    mn: Netns
    stack: contextlib.ExitStack = field(repr=False)
    attacker: Netns | None = None

    # addresses
    CN = "2001:db8:99::1"
    HA_CN = "2001:db8:99::2"          # HA on the CN link
    HA_WIRE = "2001:db8:ff::1"        # HA towards the router
    R_HA = "2001:db8:ff::2"
    R_MN = "2001:db8:2::1"
    R_MN2 = "2001:db8:3::1"
    COA1 = "2001:db8:2::10"
    COA2 = "2001:db8:3::10"
    HA_ADDRESS = "2001:db8:ffff::1"   # on no interface
    HOME_PREFIX = "2001:db8:1::/64"
    HOA1 = "2001:db8:1::10"
    HOA2 = "2001:db8:1::20"
    R_ATK = "2001:db8:666::1"
    ATK = "2001:db8:666::10"

    @property
    def namespaces(self) -> list[Netns]:
        return [n for n in (self.cn, self.ha, self.router, self.mn, self.attacker) if n]

    def add_attacker(self) -> Netns:
        """A third host behind the router: atk0 2001:db8:666::10/64, default
        via the router (r-atk 2001:db8:666::1).  Deleted with the topology."""
        if self.attacker is None:
            atk = self.stack.enter_context(Netns("atk"))
            veth(self.router, "r-atk", atk, "atk0")
            self.router.addr("r-atk", f"{self.R_ATK}/64")
            atk.addr("atk0", f"{self.ATK}/64")
            atk.route("default", via=self.R_ATK, dev="atk0")
            self.attacker = atk
        return self.attacker


@contextlib.contextmanager
def topology(*, coa_on_mn: bool = True) -> Iterator[Topology]:
    """Build CN -- HA -- router -- MN; everything is removed on exit."""
    T = Topology
    with contextlib.ExitStack() as stack:
        cn = stack.enter_context(Netns("cn"))
        ha = stack.enter_context(Netns("ha"))
        r = stack.enter_context(Netns("r"))
        mn = stack.enter_context(Netns("mn"))
        t = Topology(cn, ha, r, mn, stack)

        veth(cn, "cn0", ha, "ha-cn")
        veth(ha, "ha-wire", r, "r-ha")
        veth(r, "r-mn", mn, "mn0")
        veth(r, "r-mn2", mn, "mn1")

        cn.addr("cn0", f"{T.CN}/64")
        ha.addr("ha-cn", f"{T.HA_CN}/64")
        ha.addr("ha-wire", f"{T.HA_WIRE}/64")
        r.addr("r-ha", f"{T.R_HA}/64")
        r.addr("r-mn", f"{T.R_MN}/64")
        r.addr("r-mn2", f"{T.R_MN2}/64")
        if coa_on_mn:
            mn.addr("mn0", f"{T.COA1}/64")
            mn.addr("mn1", f"{T.COA2}/64")
        else:
            mn.route("2001:db8:2::/64", dev="mn0")
            mn.route("2001:db8:3::/64", dev="mn1")

        ha.forwarding(True)
        r.forwarding(True)

        cn.route("default", via=T.HA_CN, dev="cn0")
        ha.route("default", via=T.R_HA, dev="ha-wire")
        mn.route("default", via=T.R_MN, dev="mn0")
        mn.route("default", via=T.R_MN2, dev="mn1", src="2001:db8:3::/64")
        for prefix in ("2001:db8:ffff::/48", T.HOME_PREFIX, "2001:db8:99::/64"):
            r.route(prefix, via=T.HA_WIRE, dev="r-ha")
        yield t


def stop(procs, timeout: float = 10.0) -> None:
    """SIGTERM every process still running, then wait for each (kill after
    `timeout` s): how the tests end the forwarders they started."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_for(pred, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
