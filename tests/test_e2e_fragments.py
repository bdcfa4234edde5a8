"""End to end through a path whose MTU makes the tunnel endpoints fragment
(RFC 2473 §7.1) and reassemble (fastpath.reassembly, the control thread):

    CN ── HA (fastpath run, mtu 1280) ── router ══ MN (fastpath run --role mobile-node, mtu 1280)
                                              1280-byte link

Inner packets of up to 1280 bytes are tunnelled whatever the tunnel MTU, so
1248-byte pings and 1200-byte UDP datagrams leave both ends as two outer
fragments each; the other end must put them back together. Needs root,
/dev/net/tun and `ip`; skipped with the reason otherwise."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from netns import Topology, skip_reason, stop, topology, wait_for
from test_e2e_forward import config, ctl, start

pytestmark = pytest.mark.skipif(skip_reason(need_tun=True) is not None,
                                reason=skip_reason(need_tun=True) or "")

T = Topology
MTU = 1280
PING_SIZE = 1200          # ICMPv6 data: a 1248-byte inner packet, > 1280 once tunnelled

UDP_SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("{addr}", 9000)); s.settimeout(4)
got = set()
try:
    while True:
        d = s.recv(4096)
        if len(d) == {size} and d[4:] == bytes([d[3]]) * ({size} - 4):
            got.add(int.from_bytes(d[:4], "big"))
except socket.timeout:
    pass
print(len(got))
"""

UDP_SOURCE = """
import socket, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
{bind}
for i in range({n}):
    try:
        s.sendto(i.to_bytes(4, "big") + bytes([i & 255]) * ({size} - 4), ("{dst}", 9000))
    except OSError:
        pass        # EMSGSIZE right after a Packet Too Big: the kernel fragments the next
    time.sleep({gap})
"""


@pytest.fixture
def net():
    with topology(coa_on_mn=False) as t:
        # the router <-> MN link carries no outer packet above 1280 bytes
        for ns, ifname in ((t.router, "r-mn"), (t.mn, "mn0")):
            ns.ip("link", "set", ifname, "mtu", str(MTU))
        yield t


def udp(net, src_ns, dst_ns, dst, n, bind="", size=1200, gap=0.0005):
    """n datagrams of `size` bytes from src_ns to dst; how many arrived whole."""
    sink = dst_ns.popen([sys.executable, "-c", UDP_SINK.format(addr=dst, size=size)],
                        stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    src_ns.python(UDP_SOURCE.format(n=n, dst=dst, bind=bind, size=size, gap=gap))
    out, _ = sink.communicate(timeout=20)
    return int(out.strip())


@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16", None],
                         ids=["aes128-sha1", "aes128gcm16", "plain"])
def test_fragmented_tunnel_both_ways(net, tmp_path, alg):
    path = config(tmp_path, alg)
    with open(path) as f:
        text = f.read()
    assert "mtu = 1500" in text
    with open(path, "w") as f:
        f.write(text.replace("mtu = 1500", f"mtu = {MTU}"))
    ha_sock, mn_sock = str(tmp_path / "ha.sock"), str(tmp_path / "mn.sock")
    ha = start(net.ha, path, ha_sock)
    mn = start(net.mn, path, mn_sock, "--role", "mobile-node", "--enable-forwarding")
    try:
        # a small ping first: the tunnel works at all
        assert wait_for(lambda: net.cn.ping(T.HOA1, timeout=1), 10), "CN -> HoA ping failed"
        # 1248-byte packets: both directions go as outer fragments
        assert net.cn.ping(T.HOA1, size=PING_SIZE, count=3), "CN -> HoA 1248-byte ping failed"
        assert net.mn.ping(T.CN, src=T.HOA1, size=PING_SIZE, count=3), \
            "HoA -> CN 1248-byte ping failed"
        n = 100
        assert udp(net, net.cn, net.mn, T.HOA1, n) == n
        assert udp(net, net.mn, net.cn, T.CN, n, bind=f's.bind(("{T.HOA1}", 0))') == n

        for sock, ns in ((ha_sock, net.ha), (mn_sock, net.mn)):
            c = ctl(ns, sock, "counters")
            r = c["control"]["reassembly"]
            # each side reassembled what the other fragmented: 3 pings (and
            # 3 replies) + n datagrams one way
            assert r["reassembled"] >= n + 3, (sock, r)
            assert r["fragments"] >= 2 * r["reassembled"], (sock, r)
            assert c["io"]["fragmented"] >= n + 3, (sock, c["io"])
            assert c["control"]["reassembled.to_home"] == r["reassembled"], (sock, c["control"])
            discards = {k: v for k, v in r.items()
                        if k not in ("fragments", "reassembled", "atomic", "datagrams_in_progress",
                                     "buffered_bytes") and v}
            assert discards == {}, (sock, discards)
            assert "punt.next_header_44" not in c["control"]
    finally:
        stop((mn, ha))
    assert ha.returncode == 0, open(ha_sock + ".log").read()
    assert mn.returncode == 0, open(mn_sock + ".log").read()


def test_packet_too_big_from_the_path_lowers_the_tunnel_mtu(net, tmp_path):
    """The router's link to the MN narrows to 1300 bytes, below the HA's
    configured 1500: the router answers a full-size tunnel packet with a
    Packet Too Big to the HA address; the HA lowers its path MTU toward
    COA1 (ctl bindings shows it) and answers the CN's next large datagram
    with a Packet Too Big of its own (1280); the CN then fragments, the HA
    tunnels the 1280-byte fragments with the outer packets cut at 1280, and
    the datagrams arrive - where before all were lost on the narrow link.
    The other way the mobile node's own link is the narrow one: its kernel
    answers the MN's tunnel packet with a Packet Too Big to the care-of
    address (routed into the MN's wire TUN), the mobile-node role lowers
    the path MTU from that care-of address, and the HoA's datagrams arrive
    too."""
    path = config(tmp_path, "aes128gcm16")
    for ns, ifname in ((net.router, "r-mn"), (net.mn, "mn0")):
        ns.ip("link", "set", ifname, "mtu", "1300")
    ha_sock, mn_sock = str(tmp_path / "ha.sock"), str(tmp_path / "mn.sock")
    ha = start(net.ha, path, ha_sock)
    mn = start(net.mn, path, mn_sock, "--role", "mobile-node", "--enable-forwarding")
    try:
        assert wait_for(lambda: net.cn.ping(T.HOA1, timeout=1), 10), "CN -> HoA ping failed"
        n = 60
        got = udp(net, net.cn, net.mn, T.HOA1, n, size=1352, gap=0.05)
        assert got >= n - 5, (got, ctl(net.ha, ha_sock, "counters")["control"])
        [b] = ctl(net.ha, ha_sock, "bindings")
        assert b["path_mtu"] == 1300, b
        c = ctl(net.ha, ha_sock, "counters")
        assert c["control"]["path_mtu.lowered"] == 1 and c["io"]["fragmented"] >= got, c["io"]
        got = udp(net, net.mn, net.cn, T.CN, n, bind=f's.bind(("{T.HOA1}", 0))', size=1352, gap=0.05)
        assert got >= n - 5, (got, ctl(net.mn, mn_sock, "counters")["control"])
        [b] = ctl(net.mn, mn_sock, "bindings")
        assert b["path_mtu"] == 1300, b
        assert ctl(net.mn, mn_sock, "counters")["control"]["path_mtu.lowered"] == 1
    finally:
        stop((mn, ha))
    log = open(ha_sock + ".log").read()
    assert ha.returncode == 0, log
    assert f"path MTU toward care-of address {T.COA1} is now 1300" in log
    log = open(mn_sock + ".log").read()
    assert mn.returncode == 0, log
    assert f"path MTU from care-of address {T.COA1} to the home agent is now 1300" in log
