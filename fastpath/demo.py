"""`fastpath demo`: a home agent and a mobile node, both fastpath, between
network namespaces; a correspondent streams to the mobile node, which moves
to a new care-of address mid-stream.

    CN ── HA (fastpath run) ── router ── MN (fastpath run --role mobile-node)
                                    └──── second access link (the new CoA)

It prints a live progress line, the Binding Update / Binding Ack of the move,
throughput, counters, and the number of packets the HA sent to the old CoA
after its Binding Ack left (must be 0: the grace period). Everything it
creates lives in namespaces named fpdemo-<pid>-* and is removed at the end.
Namespace plumbing uses the `ip` command; fastpath itself uses pyroute2.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CN, HA_CN, HA_WIRE, R_HA = "2001:db8:99::1", "2001:db8:99::2", "2001:db8:ff::1", "2001:db8:ff::2"
R_MN, R_MN2 = "2001:db8:2::1", "2001:db8:3::1"
COA1, COA2 = "2001:db8:2::10", "2001:db8:3::10"
HA_ADDRESS, HOA = "2001:db8:ffff::1", "2001:db8:1::10"

CONFIG = """\
[home_agent]
address = "{ha}"
home_prefix = "2001:db8:1::/64"
mtu = 1500
state_dir = "{state}"
allow_manual_aead = true            # demo keys: AES-GCM with manual keys is a lab opt-in

[[mobile_node]]
home_address = "{hoa}"
care_of_address = "{coa}"
binding_lifetime_max = 600

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
  spi = 0x1003
  algorithm = "aes128gcm16"
  key = "{k4}"
"""

SNIFFER = r"""
import json, signal, socket, sys
ha, old, new = (socket.inet_pton(socket.AF_INET6, a) for a in sys.argv[1:4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind((sys.argv[4], 0x86DD)); s.settimeout(0.2)
st = {"to_old": 0, "to_new": 0, "ba_seen": False, "to_old_after_ba": 0}
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
while not done:
    try:
        f = s.recv(4096)
    except socket.timeout:
        continue
    ip = f[14:]
    if len(ip) < 40 or ip[8:24] != ha:
        continue
    if ip[24:40] == new and ip[6] == 43:     # RH2: the Binding Ack for the move
        st["ba_seen"] = True
    if ip[24:40] == old:
        st["to_old"] += 1
        if st["ba_seen"]:
            st["to_old_after_ba"] += 1
    elif ip[24:40] == new:
        st["to_new"] += 1
print(json.dumps(st))
"""

SINK = r"""
import json, signal, socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], 9000)); s.settimeout(0.2)
seen = set(); bytes_ = 0; done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
while not done:
    try:
        b = s.recv(2048)
    except socket.timeout:
        continue
    seen.add(struct.unpack("!I", b[:4])[0]); bytes_ += len(b)
print(json.dumps({"received": len(seen), "bytes": bytes_}))
"""

PING = r"""
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident = os.getpid() & 0xFFFF
s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"fastpath", (sys.argv[1], 0))
end = time.monotonic() + 1
while end > time.monotonic() and select.select([s], [], [], end - time.monotonic())[0]:
    b = s.recv(2048)
    if b[0] == 129 and struct.unpack("!H", b[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""

SOURCE = r"""
import socket, struct, sys, time
dst, rate, secs, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
pad = b"\x00" * (size - 4); n = 0; t0 = time.monotonic()
while True:
    now = time.monotonic() - t0
    if now >= secs: break
    while n < now * rate:
        s.sendto(struct.pack("!I", n) + pad, (dst, 9000)); n += 1
    time.sleep(0.001)
print(n)
"""


class Lab:
    """The namespaces, links and addresses of the demo; close() removes them."""

    def __init__(self):
        self.prefix = f"fpdemo-{os.getpid()}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def exec(self, short: str, *argv: str, **kw) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(short), *argv], env=env, **kw)
        self.procs.append(p)
        return p

    def build(self) -> None:
        for short in ("cn", "ha", "r", "mn"):
            self.ip("netns", "add", self.ns(short))
            self.names.append(self.ns(short))
            self.ip("-n", self.ns(short), "link", "set", "lo", "up")
        for a, ia, b, ib in (("cn", "cn0", "ha", "ha-cn"), ("ha", "ha-wire", "r", "r-ha"),
                             ("r", "r-mn", "mn", "mn0"), ("r", "r-mn2", "mn", "mn1")):
            self.ip("link", "add", "fpd-tmp-a", "type", "veth", "peer", "name", "fpd-tmp-b")
            self.ip("link", "set", "fpd-tmp-a", "netns", self.ns(a), "name", ia)
            self.ip("link", "set", "fpd-tmp-b", "netns", self.ns(b), "name", ib)
            self.ip("-n", self.ns(a), "link", "set", ia, "up")
            self.ip("-n", self.ns(b), "link", "set", ib, "up")
        for short, dev, addr in (("cn", "cn0", CN), ("ha", "ha-cn", HA_CN), ("ha", "ha-wire", HA_WIRE),
                                 ("r", "r-ha", R_HA), ("r", "r-mn", R_MN), ("r", "r-mn2", R_MN2)):
            self.ip("-n", self.ns(short), "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        for short in ("ha", "r"):
            self.ip("netns", "exec", self.ns(short), "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.ip("-n", self.ns("cn"), "-6", "route", "add", "default", "via", HA_CN)
        self.ip("-n", self.ns("ha"), "-6", "route", "add", "default", "via", R_HA)
        self.ip("-n", self.ns("mn"), "-6", "route", "add", "2001:db8:2::/64", "dev", "mn0")
        self.ip("-n", self.ns("mn"), "-6", "route", "add", "2001:db8:3::/64", "dev", "mn1")
        self.ip("-n", self.ns("mn"), "-6", "route", "add", "default", "via", R_MN, "dev", "mn0")
        self.ip("-n", self.ns("mn"), "-6", "route", "add", "default", "from", "2001:db8:3::/64",
                "via", R_MN2, "dev", "mn1")
        for prefix in ("2001:db8:ffff::/48", "2001:db8:1::/64", "2001:db8:99::/64"):
            self.ip("-n", self.ns("r"), "-6", "route", "add", prefix, "via", HA_WIRE)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ctl(lab: Lab, short: str, sock: str, *words: str):
    r = subprocess.run(["ip", "netns", "exec", lab.ns(short), sys.executable, "-m", "fastpath",
                        "ctl", "--socket", sock, "--json", *words], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    if r.returncode:
        raise RuntimeError(r.stderr.strip())
    return json.loads(r.stdout)


def _ping(lab: Lab, short: str, addr: str) -> bool:
    """One ICMPv6 echo from namespace `short` (a raw socket: slim Debian
    images have no ping binary); True when answered within a second."""
    p = lab.exec(short, sys.executable, "-c", PING, addr,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return p.wait(5) == 0
    except subprocess.TimeoutExpired:
        p.kill()
        return False


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except (RuntimeError, ValueError, OSError):
            pass
        time.sleep(0.1)
    return False


def main(seconds: float = 10.0, rate: int = 4000, size: int = 1000) -> int:
    if os.geteuid() != 0:
        print("fastpath demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if not shutil.which("ip") or not os.path.exists("/dev/net/tun"):
        print("fastpath demo: needs the `ip` command (iproute2) and /dev/net/tun", file=sys.stderr)
        return 2
    lab = Lab()
    tmp = Path(tempfile.mkdtemp(prefix="fpdemo-"))
    keys = {k: os.urandom(n).hex() for k, n in
            (("k1", 16), ("a1", 20), ("k2", 16), ("a2", 20), ("k3", 20), ("k4", 20))}
    cfg = tmp / "demo.toml"
    cfg.write_text(CONFIG.format(ha=HA_ADDRESS, hoa=HOA, coa=COA1, state=tmp / "state", **keys))
    ha_sock, mn_sock = str(tmp / "ha.sock"), str(tmp / "mn.sock")
    t_start = time.monotonic()
    try:
        print(f"building CN - HA - router - MN in namespaces {lab.prefix}-*")
        lab.build()
        common = [sys.executable, "-m", "fastpath", "run", "-c", str(cfg), "--log-level", "info"]
        ha_log, mn_log = open(tmp / "ha.log", "w"), open(tmp / "mn.log", "w")
        ha = lab.exec("ha", *common, "--control-socket", ha_sock, stdout=ha_log, stderr=subprocess.STDOUT)
        if not _wait(lambda: os.path.exists(ha_sock), 20):
            raise RuntimeError("the home agent did not start:\n" + (tmp / "ha.log").read_text())
        mn = lab.exec("mn", *common, "--control-socket", mn_sock, "--role", "mobile-node",
                      "--enable-forwarding", stdout=mn_log, stderr=subprocess.STDOUT)
        if not _wait(lambda: os.path.exists(mn_sock), 20):
            raise RuntimeError("the mobile node did not start:\n" + (tmp / "mn.log").read_text())
        status = _ctl(lab, "ha", ha_sock, "status")
        print(f"home agent {HA_ADDRESS}: {status['workers']} worker, crypto {status['crypto']}; "
              f"mobile node {HOA} at care-of address {COA1}")
        if not _wait(lambda: any(b.get("state") in ("registered", "static")
                                 for b in _ctl(lab, "ha", ha_sock, "bindings")), 10):
            raise RuntimeError("no binding at the home agent")
        # the whole path answers (tunnel both ways, the router's neighbour entry
        # for the CoA) before the stream starts: its loss is then the move's alone
        if not _wait(lambda: _ping(lab, "cn", HOA), 15):
            raise RuntimeError("the mobile node's home address does not answer ping from the CN")
        sniff = lab.exec("r", sys.executable, "-c", SNIFFER, HA_ADDRESS, COA1, COA2, "r-ha",
                         stdout=subprocess.PIPE, text=True)
        sink = lab.exec("mn", sys.executable, "-c", SINK, HOA, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        print(f"CN {CN} streams {rate} UDP datagrams/s of {size} bytes to {HOA} for {seconds:.0f} s")
        src = lab.exec("cn", sys.executable, "-c", SOURCE, HOA, str(rate), str(seconds), str(size),
                       stdout=subprocess.PIPE, text=True)
        t0, moved = time.monotonic(), False
        while src.poll() is None:
            el = time.monotonic() - t0
            c = _ctl(lab, "ha", ha_sock, "counters")["totals"]["verdicts"]
            print(f"\r  t={el:4.1f}s  HA tunnelled {c.get('to_wire', 0):7d}  "
                  f"decapsulated {c.get('to_home', 0):5d}  binding {COA2 if moved else COA1}   ",
                  end="", flush=True)
            if not moved and el >= seconds / 2:
                print(f"\n  MN moves to {COA2}: fastpath ctl move --coa {COA2} (Binding Update)")
                _ctl(lab, "mn", mn_sock, "move", "--coa", COA2)
                t_bu = time.monotonic()
                ok = _wait(lambda: any(b.get("care_of_address") == COA2
                                       for b in _ctl(lab, "ha", ha_sock, "bindings")), 5)
                print(f"  HA: binding {HOA} -> {COA2}, Binding Ack sent after the grace period "
                      f"({(time.monotonic() - t_bu) * 1000:.0f} ms incl. polling)" if ok
                      else "  HA: no binding change seen!")
                moved = True
            time.sleep(0.5)
        print()
        sent = int(src.stdout.read().strip() or 0)
        time.sleep(0.5)
        for p in (sink, sniff):
            p.send_signal(signal.SIGTERM)
        got = json.loads(sink.communicate(timeout=10)[0])
        seen = json.loads(sniff.communicate(timeout=10)[0])
        counters = _ctl(lab, "ha", ha_sock, "counters")
        mn_counters = _ctl(lab, "mn", mn_sock, "counters")
        for p in (mn, ha):
            p.send_signal(signal.SIGTERM)
        for p in (mn, ha):
            p.wait(10)
        lost = sent - got["received"]
        print(f"sent {sent}, received {got['received']} ({lost} lost, {100 * lost / max(sent, 1):.2f} %), "
              f"{got['bytes'] * 8 / seconds / 1e6:.1f} Mbit/s of UDP payload")
        print(f"HA -> old CoA {seen['to_old']} packets, -> new CoA {seen['to_new']} packets")
        print(f"packets sent to the old CoA after the Binding Ack: {seen['to_old_after_ba']}"
              + ("" if seen["ba_seen"] else " (no Binding Ack seen on the wire!)"))
        drops = {k: v for k, v in counters["totals"]["drops"].items() if v}
        print(f"HA counters: {counters['totals']['verdicts']}; drops {drops or 'none'}")
        print(f"HA Binding Ack statuses: {counters.get('control', {}).get('bindings', {}).get('by_status', {})}")
        mdrops = {k: v for k, v in mn_counters["totals"]["drops"].items() if v}
        print(f"MN counters: {mn_counters['totals']['verdicts']}; drops {mdrops or 'none'}; "
              f"TUN rx {mn_counters['io'].get('rx')}, tx {mn_counters['io'].get('tx')}, "
              f"tx errors {mn_counters['io'].get('tx_errors')}")
        print(f"done in {time.monotonic() - t_start:.0f} s; logs in {tmp}")
        return 0 if seen["ba_seen"] and seen["to_old_after_ba"] == 0 else 1
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"\nfastpath demo: {e}", file=sys.stderr)
        return 1
    finally:
        lab.close()
