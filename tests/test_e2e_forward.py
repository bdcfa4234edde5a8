"""End to end through real TUNs between network namespaces (SPEC §1):

    CN ── HA (fastpath run) ── router ── MN (fastpath run --role mobile-node)

ping6 both ways, UDP and TCP (with a 1500-byte MTU at the CN, so the tunnel's
Packet Too Big must reach it), counters equal to the traffic, a forged packet
from a third namespace dropped and counted, and SIGTERM leaving nothing behind.
Needs root, /dev/net/tun and `ip`; skipped with the reason otherwise."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from netns import Topology, skip_reason, stop, topology, wait_for

pytestmark = pytest.mark.skipif(skip_reason(need_tun=True) is not None,
                                reason=skip_reason(need_tun=True) or "")

T = Topology
KEYS = {  # algorithm -> SA key fields (test keys)
    "aes128-sha1": 'enc_key = "{e16}"\n  auth_key = "{a20}"',
    "aes256-sha256": 'enc_key = "{e32}"\n  auth_key = "{a32}"',
    "aes128gcm16": 'key = "{e16}{s4}"',
}


def config(tmp_path, alg: str | None) -> str:
    """A config for the topology: MN1 at COA1 with binding SAs and, unless alg
    is None (plain IPv6-in-IPv6), payload SAs of `alg`."""
    def sa(purpose, direction, spi, a):
        b = spi & 0xF0
        fields = KEYS[a].format(e16=f"{b:02x}" * 16, e32=f"{b:02x}" * 32,
                                a20=f"{b + 1:02x}" * 20, a32=f"{b + 1:02x}" * 32,
                                s4=f"{b + 2:02x}" * 4)
        return textwrap.dedent(f"""
          [[mobile_node.sa]]
          purpose = "{purpose}"
          direction = "{direction}"
          spi = {spi:#x}
          algorithm = "{a}"
          """) + "  " + fields + "\n"
    text = textwrap.dedent(f"""
        [home_agent]
        address = "{T.HA_ADDRESS}"
        home_prefix = "{T.HOME_PREFIX}"
        mtu = 1500
        state_dir = "{tmp_path}/state"
        allow_manual_aead = true

        [[mobile_node]]
        home_address = "{T.HOA1}"
        care_of_address = "{T.COA1}"
        """)
    text += sa("binding", "in", 0x1010, "aes128-sha1") + sa("binding", "out", 0x1020, "aes128-sha1")
    if alg is not None:
        text += sa("payload", "in", 0x1030, alg) + sa("payload", "out", 0x1040, alg)
    path = tmp_path / "fp.toml"
    path.write_text(text)
    return str(path)


def start(ns, cfg, sock, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    log = open(sock + ".log", "w")
    p = ns.popen([sys.executable, "-m", "fastpath", "run", "-c", cfg, "--control-socket", sock,
                  "--log-level", "info", *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
    if not wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 20):
        pytest.fail("forwarder did not start: " + open(sock + ".log").read())
    if p.poll() is not None:
        pytest.fail("forwarder exited: " + open(sock + ".log").read())
    return p


def ctl(ns, sock, what):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    r = ns.run([sys.executable, "-m", "fastpath", "ctl", "--socket", sock, "--json", what], env=env)
    return json.loads(r.stdout)


UDP_SINK = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("{hoa}", 9000)); s.settimeout(3)
got = 0
try:
    while True:
        s.recv(4096); got += 1
except socket.timeout:
    pass
print(got)
"""

TCP_SINK = r"""
import hashlib, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{hoa}", 9001)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(30)
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""

TCP_SOURCE = r"""
import hashlib, socket, os
data = bytes(range(256)) * 4096          # 1 MiB
c = socket.create_connection(("{hoa}", 9001), timeout=30)
c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


@pytest.fixture
def net():
    with topology(coa_on_mn=False) as t:
        yield t


@pytest.mark.parametrize("alg,workers,offload", [
    ("aes128-sha1", 1, True), ("aes256-sha256", 1, True), ("aes128gcm16", 1, True),
    (None, 1, True), ("aes128gcm16", 2, True), ("aes128gcm16", 1, False)],
    ids=["aes128-sha1", "aes256-sha256", "aes128gcm16", "plain", "aes128gcm16-2-workers",
         "aes128gcm16-no-offload"])
def test_forwarding_between_namespaces(net, tmp_path, alg, workers, offload):
    cfg = config(tmp_path, alg)
    ha_sock, mn_sock = str(tmp_path / "ha.sock"), str(tmp_path / "mn.sock")
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    flag = "--offload" if offload else "--no-offload"
    ha = start(net.ha, cfg, ha_sock, "--workers", str(workers), "--cpu", cpus, flag)
    mn = start(net.mn, cfg, mn_sock, "--role", "mobile-node", "--enable-forwarding", flag)
    try:
        # ping6 both ways (the MN's HoA lives on its home TUN)
        assert wait_for(lambda: net.cn.ping(T.HOA1, timeout=1), 10), "CN -> HoA ping failed"
        assert net.mn.ping(T.CN, src=T.HOA1), "HoA -> CN ping failed"

        # UDP: every datagram arrives, and the HA's counters saw each one
        before = ctl(net.ha, ha_sock, "counters")["totals"]["verdicts"]
        sink = net.mn.popen([sys.executable, "-c", UDP_SINK.format(hoa=T.HOA1)],
                            stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        n = 200
        net.cn.python(f"""
            import socket, time
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            for i in range({n}):
                s.sendto(b"x" * 500, ("{T.HOA1}", 9000))
                if i % 50 == 0: time.sleep(0.01)
            """)
        out, _ = sink.communicate(timeout=20)
        assert int(out.strip()) == n
        after = ctl(net.ha, ha_sock, "counters")["totals"]["verdicts"]
        assert after.get("to_wire", 0) - before.get("to_wire", 0) == n

        # TCP 1 MiB CN -> MN through a 1500-byte CN MTU: needs the PTB to get through
        tsink = net.mn.popen([sys.executable, "-c", TCP_SINK.format(hoa=T.HOA1)],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        src = net.cn.run([sys.executable, "-c", TCP_SOURCE.format(hoa=T.HOA1)], timeout=60)
        got, _ = tsink.communicate(timeout=60)
        assert got.split() == src.stdout.split()
        c = ctl(net.ha, ha_sock, "counters")
        assert c["totals"]["drops"]["too_big"] >= 1      # the CN learnt the tunnel MTU
        # the 1 MiB went through TSO splitting at the HA and GRO merging at the
        # MN (the hash above proves not a byte changed), or neither when off
        ha_io, mn_io = c["io"], ctl(net.mn, mn_sock, "counters")["io"]
        if offload:
            assert ha_io["gso_segments"] > ha_io["gso_packets"] > 0
            assert mn_io["gro_segments"] > mn_io["gro_packets"] > 0
        else:
            assert ha_io["gso_packets"] == mn_io["gro_packets"] == 0
        assert ha_io["offload_errors"] == mn_io["offload_errors"] == 0

        # iperf3 TCP CN -> MN when installed (scripts/bootstrap installs it)
        if shutil.which("iperf3"):
            srv = net.mn.popen(["iperf3", "-s", "-1", "-B", T.HOA1, "-p", "5201"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = net.cn.run(["iperf3", "-c", T.HOA1, "-p", "5201", "-t", "2", "-J"], timeout=30,
                           check=False)
            srv.wait(10)
            assert r.returncode == 0, r.stdout[-500:] + r.stderr[-500:]
            gbps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            print(f"iperf3 TCP CN -> MN through {alg or 'plain'}: {gbps:.2f} Gbit/s")
            assert gbps > 0.01
            c = ctl(net.ha, ha_sock, "counters")

        # a forged ESP packet and a spoofed plain tunnel from a third namespace
        atk = net.add_attacker()
        before = c["totals"]["drops"]
        # well-framed (IV, whole cipher blocks, ICV) so that only the ICV can fail
        forged_len = 88 if alg == "aes128gcm16" else 16 + 64 + (16 if alg == "aes256-sha256" else 12)
        atk.python(f"""
            import socket, struct
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 50)
            s.sendto(struct.pack("!II", 0x1030, 4000000000) + bytes({forged_len}), ("{T.HA_ADDRESS}", 0))
            t = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 41)
            inner = bytes([0x60,0,0,0, 0,8, 17, 64]) + socket.inet_pton(socket.AF_INET6, "{T.HOA1}") \
                + socket.inet_pton(socket.AF_INET6, "{T.CN}") + bytes(8)
            t.sendto(inner, ("{T.HA_ADDRESS}", 0))
            """)
        want = "icv" if alg else "unknown_spi"
        assert wait_for(lambda: ctl(net.ha, ha_sock, "counters")["totals"]["drops"][want]
                        > before[want], 5)
        assert wait_for(lambda: ctl(net.ha, ha_sock, "counters")["totals"]["drops"]["policy"]
                        > before["policy"], 5)
    finally:
        stop((mn, ha))
    assert ha.returncode == 0, open(ha_sock + ".log").read()
    # SIGTERM left no link, route or proxy entry behind
    assert not {"fp-home", "fp-wire"} & set(net.ha.links())
    assert "proto 250" not in net.ha.ip("-6", "route", "show", "table", "all").stdout
    assert net.ha.ip("-6", "neigh", "show", "proxy").stdout.strip() == ""


def test_control_socket_and_metrics(net, tmp_path):
    """The read-only control socket (mode 0600, no way to move a binding) and
    the Prometheus endpoint of a running home agent."""
    cfg = config(tmp_path, "aes128gcm16")
    sock = str(tmp_path / "ha.sock")
    ha = start(net.ha, cfg, sock, "--metrics", "127.0.0.1:9109")
    try:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        status = ctl(net.ha, sock, "status")
        assert status["role"] == "home-agent" and status["sas"] == 4
        # a home agent's threads run at low real-time priorities (fastpath.sched)
        assert status["scheduling"] == {"control": "fifo 2", "workers": ["fifo 1"]}
        assert {sa["spi"] for sa in ctl(net.ha, sock, "sas")} == {0x1010, 0x1020, 0x1030, 0x1040}
        [b] = ctl(net.ha, sock, "bindings")
        assert b["home_address"] == T.HOA1 and b["care_of_address"] == T.COA1
        # nothing but the binding-update path moves an SA: 'move' is refused here
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
        r = net.ha.run([sys.executable, "-m", "fastpath", "ctl", "--socket", sock, "move",
                        "--coa", T.COA2], env=env, check=False)
        assert r.returncode == 2 and "only on an authenticated Binding Update" in r.stderr
        assert ctl(net.ha, sock, "bindings")[0]["care_of_address"] == T.COA1
        # Prometheus text format
        text = net.ha.python("""
            import urllib.request
            print(urllib.request.urlopen("http://127.0.0.1:9109/metrics", timeout=5).read().decode())
            """).stdout
        assert "# TYPE fastpath_drops_total counter" in text
        assert "fastpath_bindings 1" in text and "fastpath_mobile_nodes 1" in text
        [started] = [float(ln.split()[1]) for ln in text.splitlines()
                     if ln.startswith("fastpath_start_time_seconds ")]
        assert 0 < time.time() - started < 120
        assert 'fastpath_drops_total{reason="icv"} 0' in text
        assert 'fastpath_sa_packets_total{spi="0x00001040",direction="out"' in text
        assert "fastpath_gso_segments_total 0" in text and "fastpath_offload_errors_total 0" in text
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                float(value)              # every sample line ends in a number
    finally:
        ha.send_signal(signal.SIGTERM)
        ha.wait(10)


def test_a_second_run_is_refused_and_sighup_cleans_up(net, tmp_path):
    """A second `fastpath run` on the same state directory, control socket or
    metrics port exits 2 with the reason before touching anything: the first
    keeps its routes, its control socket and its sequence reservations. A
    SIGHUP (the terminal went away) stops the first as cleanly as SIGTERM."""
    cfg = config(tmp_path, "aes128gcm16")
    sock = str(tmp_path / "ha.sock")
    ha = start(net.ha, cfg, sock, "--metrics", "127.0.0.1:9110")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))

    def second(*extra):
        r = net.ha.run([sys.executable, "-m", "fastpath", "run", "-c", cfg, *extra], env=env,
                       check=False, timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    try:
        def ours():
            return [r for r in net.ha.ip("-6", "route", "show", "table", "all").stdout
                    .splitlines() if "proto 250" in r]
        routes = ours()
        assert routes
        assert "another fastpath run is serving it" in second("--control-socket", sock)
        assert "--metrics 127.0.0.1:9110" in second("--control-socket", str(tmp_path / "b.sock"),
                                                    "--metrics", "127.0.0.1:9110")
        err = second("--control-socket", str(tmp_path / "c.sock"))
        assert f"pid {ha.pid}" in err and "state_dir" in err
        assert second("--control-socket", str(tmp_path / "d.sock"), "--metrics", "banana:1")
        # the first run did not notice
        assert ours() == routes
        assert ctl(net.ha, sock, "status")["role"] == "home-agent"
        assert not any(os.path.exists(tmp_path / f"{x}.sock") for x in "bcd")
        ha.send_signal(signal.SIGHUP)
        ha.wait(10)
    finally:
        stop([ha])
    assert ha.returncode == 0, open(sock + ".log").read()
    assert "SIGHUP: stopping" in open(sock + ".log").read()
    assert not {"fp-home", "fp-wire"} & set(net.ha.links())
    assert "proto 250" not in net.ha.ip("-6", "route", "show", "table", "all").stdout
    assert not os.path.exists(sock)


def test_a_refused_start_leaves_no_reservation(tmp_path):
    """`run` in a namespace where IPv6 forwarding is off is refused (exit 2,
    the reason on stderr) after the TUNs opened but before any sequence
    number was reserved: nothing to skip on the next start, nothing left."""
    from netns import Netns
    from fastpath.seqstore import FILE
    cfg = config(tmp_path, "aes128gcm16")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    with Netns("refused") as ns:
        ns.sysctl("net.ipv6.conf.all.forwarding", 0)
        r = ns.run([sys.executable, "-m", "fastpath", "run", "-c", cfg, "--control-socket",
                    str(tmp_path / "x.sock")], env=env, check=False, timeout=60)
        assert r.returncode == 2 and "forwarding" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "state" / FILE).exists()
        assert not {"fp-home", "fp-wire"} & set(ns.links())
        assert not (tmp_path / "x.sock").exists()
