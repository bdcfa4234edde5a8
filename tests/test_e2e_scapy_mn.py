"""The home agent (`fastpath run`) against a mobile node written with scapy
(tests/scapy_mn.py), between network namespaces (SPEC §1-§2):

    CN ── HA (fastpath run) ── router ── MN (scapy: mn0 = CoA 1, mn1 = CoA 2)

so that the HA is tested against an implementation that is not its own:

1. reverse tunnel: the MN seals IPv6/UDP from its HoA to the CN in ESP tunnel
   mode (payload-in SA) and sends it from CoA 1; the CN's UDP socket gets
   every datagram intact and the HA's counters saw each one;
2. forward tunnel: the CN sends UDP to the HoA; the MN captures the HA's ESP
   on mn0 and opens it: outer HA -> CoA 1, ESP sequence numbers 1, 2, 3, ...,
   padding 1, 2, 3, ..., next header 41, inner packet = what the CN sent with
   its hop limit decremented once;
3. a Binding Update from CoA 2 (HAO = HoA, Alternate CoA = CoA 2, ESP
   transport on the binding-in SA): the Binding Ack comes to CoA 2 on mn1
   (RH2 = HoA, binding-out SA, status 0, the BU's sequence number, granted
   lifetime, valid checksum), `ctl bindings` shows CoA 2, and CN -> HoA
   traffic now arrives at CoA 2 with the ESP sequence continuing;
4. a BU in the clear and a BU with a corrupted ICV move nothing (bindings
   unchanged, no Binding Ack, counters show both), and then a valid BU
   reusing the corrupted one's ESP sequence number and the clear one's MH
   sequence number is accepted (back to CoA 1): neither left state behind;
   a BU replaying an ESP sequence number is dropped (counted, no BA) and one
   with a stale MH sequence number is answered 135; neither moves anything.

Run once with every SA (binding and payload) aes128-sha1 and once with every
SA aes128gcm16 (with allow_manual_aead = true).  Needs root, /dev/net/tun,
`ip` and scapy; skipped with the reason otherwise."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from netns import Topology, skip_reason, topology, wait_for

pytest.importorskip("scapy.layers.ipsec", reason="the mobile node is written with scapy")
pytestmark = pytest.mark.skipif(skip_reason(need_tun=True) is not None,
                                reason=skip_reason(need_tun=True) or "")

T = Topology
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + HERE)

SPI = {"binding_in": 0x2010, "binding_out": 0x2020, "payload_in": 0x2030, "payload_out": 0x2040}
LIFETIME_MAX = 3600      # seconds (config)
N = 40                   # packets per burst


def sa_keys(name: str, alg: str) -> dict:
    """Test keys of one SA, distinct per SA: {"spi", "algorithm", key fields (hex)}."""
    b = SPI[name] & 0xFF
    sa = {"spi": SPI[name], "algorithm": alg}
    if "gcm" in alg:
        sa["key"] = bytes((b + i) & 0xFF for i in range(16 + 4)).hex()     # key || salt
    else:
        size = 32 if alg.startswith("aes256") else 16
        sa["enc_key"] = bytes((b + i) & 0xFF for i in range(size)).hex()
        sa["auth_key"] = bytes((b + 0x80 + i) & 0xFF
                               for i in range(32 if "sha256" in alg else 20)).hex()
    return sa


def make_sas(alg: str) -> dict:
    """The four SAs of the mobile node, all of `alg`."""
    return {name: sa_keys(name, alg) for name in SPI}


def write_config(tmp_path, sas: dict) -> str:
    aead = any("gcm" in sa["algorithm"] for sa in sas.values())
    text = textwrap.dedent(f"""
        [home_agent]
        address = "{T.HA_ADDRESS}"
        home_prefix = "{T.HOME_PREFIX}"
        mtu = 1500
        state_dir = "{tmp_path}/state"
        """) + ("allow_manual_aead = true\n" if aead else "") + textwrap.dedent(f"""
        [[mobile_node]]
        home_address = "{T.HOA1}"
        care_of_address = "{T.COA1}"
        binding_lifetime_max = {LIFETIME_MAX}
        """)
    for name, sa in sas.items():
        purpose, direction = name.split("_")
        text += textwrap.dedent(f"""
            [[mobile_node.sa]]
            purpose = "{purpose}"
            direction = "{direction}"
            spi = {sa['spi']:#x}
            algorithm = "{sa['algorithm']}"
            """)
        for k in ("key", "enc_key", "auth_key"):
            if k in sa:
                text += f'{k} = "{sa[k]}"\n'
    path = tmp_path / "ha.toml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- processes

def start_ha(ns, cfg: str, sock: str) -> subprocess.Popen:
    log = open(sock + ".log", "w")
    p = ns.popen([sys.executable, "-m", "fastpath", "run", "-c", cfg, "--control-socket", sock,
                  "--log-level", "info"], env=ENV, stdout=log, stderr=subprocess.STDOUT)
    if not wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 20):
        pytest.fail("home agent did not start: " + open(sock + ".log").read())
    if p.poll() is not None:
        pytest.fail("home agent exited: " + open(sock + ".log").read())
    return p


def ctl(ns, sock: str, what: str):
    r = ns.run([sys.executable, "-m", "fastpath", "ctl", "--socket", sock, "--json", what],
               env=ENV)
    return json.loads(r.stdout)


class ScapyMN:
    """tests/scapy_mn.py running in the MN namespace, driven line by line."""

    def __init__(self, ns, params: dict):
        self.p = ns.popen([sys.executable, os.path.join(HERE, "scapy_mn.py"), json.dumps(params)],
                          env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self._reply(30) == {"ready": True}

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        if not line:
            self.p.kill()
            pytest.fail("scapy MN did not answer: " + self.p.stderr.read())
        reply = json.loads(line)
        if "exception" in reply:
            pytest.fail("scapy MN failed: " + reply["traceback"])
        return reply

    def __call__(self, op: str, **kw) -> dict:
        self.p.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
        self.p.stdin.flush()
        return self._reply(kw.get("timeout", 0) + 30)

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.write('{"op": "quit"}\n')
                self.p.stdin.flush()
                self.p.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()


UDP_SINK = r"""
import json, socket, sys
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("{cn}", 9000)); s.settimeout(5)
print("ready", flush=True)
got = []
try:
    while len(got) < n:
        data, addr = s.recvfrom(4096)
        got.append([addr[0], addr[1], data.hex()])
    s.settimeout(0.3)          # anything beyond n is a duplicate: catch it
    while True:
        data, addr = s.recvfrom(4096)
        got.append([addr[0], addr[1], data.hex()])
except socket.timeout:
    pass
print(json.dumps(got))
"""

RAW_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
for line in sys.stdin:
    pkt = bytes.fromhex(line.strip())
    s.sendto(pkt, (socket.inet_ntop(socket.AF_INET6, pkt[24:40]), 0))
    time.sleep(0.001)
"""


def udp(src: str, dst: str, sport: int, payload: bytes, hlim: int = 64) -> bytes:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw
    return bytes(IPv6(src=src, dst=dst, hlim=hlim) / UDP(sport=sport, dport=9000) / Raw(payload))


def payloads(tag: str, n: int) -> list[bytes]:
    return [f"{tag} {i:04d} ".encode() + bytes((i + k) & 0xFF for k in range(100 + 7 * i))
            for i in range(n)]


def reverse_tunnel(net, mn, coa: str, tag: str, n: int) -> list[int]:
    """MN -> CN through the HA, from `coa`: every datagram arrives, intact."""
    sent = payloads(tag, n)
    sink = net.cn.popen([sys.executable, "-c", UDP_SINK.format(cn=T.CN), str(n)],
                        stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    seqs = mn("send_tunnel", coa=coa,
              packets=[udp(T.HOA1, T.CN, 5000 + i, p).hex() for i, p in enumerate(sent)])["seqs"]
    out, _ = sink.communicate(timeout=20)
    got = json.loads(out)
    assert len(got) == n, f"CN received {len(got)} of {n} datagrams"
    assert sorted((a, port, bytes.fromhex(h)) for a, port, h in got) == \
        sorted((T.HOA1, 5000 + i, p) for i, p in enumerate(sent))
    return seqs


def forward_tunnel(net, mn, iface: str, coa: str, tag: str, n: int, first_seq: int, alg: str):
    """CN -> HoA: the MN opens each ESP packet arriving at `coa` on `iface`."""
    sent = [udp(T.CN, T.HOA1, 6000 + i, p) for i, p in enumerate(payloads(tag, n))]
    net.cn.run([sys.executable, "-c", RAW_SENDER], input="\n".join(s.hex() for s in sent) + "\n",
               timeout=20)
    got = mn("take", iface=iface, sa="payload_out", n=n, timeout=5)["packets"]
    assert len(got) == n, f"{len(got)} of {n} ESP packets reached {coa}"
    for g in got:
        assert "error" not in g, g
    assert [g["seq"] for g in got] == list(range(first_seq, first_seq + n))
    assert {(g["src"], g["dst"], g["spi"]) for g in got} == \
        {(T.HA_ADDRESS, coa, SPI["payload_out"])}
    assert all(g["padding_ok"] and g["next_header"] == 41 for g in got)
    # the inner packet is what the CN sent, its hop limit decremented once by
    # the HA's kernel forwarding it into fp-home (SPEC §2)
    want = [s[:7] + bytes([s[7] - 1]) + s[8:] for s in sent]
    assert [bytes.fromhex(g["inner"]) for g in got] == want
    # ESP framing: GCM has an 8-byte IV and 16-byte ICV; CBC a 16-byte IV,
    # whole blocks and a 12-byte ICV
    for g, s in zip(got, sent):
        body = g["len"] - 40 - 8
        if "gcm" in alg:
            assert body - 8 - 16 - len(s) - 2 in range(0, 4)
        else:
            assert (body - 16 - 12) % 16 == 0 and body - 16 - 12 - len(s) - 2 in range(0, 16)


def binding_view(rows):
    """`ctl bindings` without the clock."""
    return [{k: v for k, v in r.items() if k != "lifetime_left"} for r in rows]


def sa_row(sas, name):
    [row] = [s for s in sas if s["spi"] == SPI[name]]
    return row


# ---------------------------------------------------------------- the test

@pytest.fixture
def net():
    with topology(coa_on_mn=True) as t:
        yield t


@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_home_agent_with_scapy_mobile_node(net, tmp_path, alg):
    sas = make_sas(alg)
    cfg = write_config(tmp_path, sas)
    sock = str(tmp_path / "ha.sock")
    ha = start_ha(net.ha, cfg, sock)
    mn = None
    try:
        mn = ScapyMN(net.mn, {"hoa": T.HOA1, "ha": T.HA_ADDRESS, "ifaces": ["mn0", "mn1"],
                              "sas": sas})
        bindings = ctl(net.ha, sock, "bindings")
        assert [(b["home_address"], b["care_of_address"], b["state"]) for b in bindings] == \
            [(T.HOA1, T.COA1, "static")]

        # (1) reverse tunnel from CoA 1
        c0 = ctl(net.ha, sock, "counters")
        assert reverse_tunnel(net, mn, T.COA1, "up", N) == list(range(1, N + 1))
        c1 = ctl(net.ha, sock, "counters")
        assert c1["totals"]["verdicts"].get("to_home", 0) \
            - c0["totals"]["verdicts"].get("to_home", 0) == N
        pin = sa_row(c1["sas"], "payload_in")
        assert (pin["packets_in"], pin["sequence"], pin["drops"]) == (N, N, {})

        # (2) forward tunnel to CoA 1: ESP sequence numbers 1, 2, 3, ...
        forward_tunnel(net, mn, "mn0", T.COA1, "down", N, 1, alg)
        c2 = ctl(net.ha, sock, "counters")
        assert c2["totals"]["verdicts"].get("to_wire", 0) \
            - c1["totals"]["verdicts"].get("to_wire", 0) == N
        assert sa_row(c2["sas"], "payload_out")["packets_out"] == N

        # (3) Binding Update from CoA 2 (Alternate CoA = CoA 2); the Ack comes to CoA 2
        mn("send_bu", coa=T.COA2, alt=T.COA2, seq=10, lifetime=100, flags="AH")
        [ba] = mn("take", iface="mn1", sa="binding_out", n=1, timeout=5)["packets"]
        assert "error" not in ba, ba
        assert (ba["src"], ba["dst"], ba["seq"]) == (T.HA_ADDRESS, T.COA2, 1)
        assert ba["rh"] == {"type": 2, "segleft": 1, "addresses": [T.HOA1]}
        assert ba["padding_ok"] and ba["next_header"] == 135
        assert ba.get("ba") == {"status": 0, "seq": 10, "mhtime": 100, "flags": "",
                            "cksum_ok": True}, json.dumps(ba)
        moved = binding_view(ctl(net.ha, sock, "bindings"))
        assert moved == [{"home_address": T.HOA1, "care_of_address": T.COA2,
                          "state": "registered", "lifetime": 400, "last_sequence": 10,
                          "flags": "AH--", "path_mtu": 1500}]
        forward_tunnel(net, mn, "mn1", T.COA2, "moved", N, N + 1, alg)
        assert mn("count", iface="mn0")["esp"] == {}       # nothing left for the old CoA
        # the reverse tunnel from the new CoA (an ESP tunnel's outer source is not checked)
        assert reverse_tunnel(net, mn, T.COA2, "up2", 10) == list(range(N + 1, N + 11))

        # (4) a BU in the clear and a BU with a corrupted ICV move nothing
        c3 = ctl(net.ha, sock, "counters")
        mn("send_bu", coa=T.COA1, alt=T.COA1, seq=11, lifetime=100, flags="AH", protect="clear")
        assert wait_for(lambda: ctl(net.ha, sock, "counters")["control"]["bindings"]
                        ["unprotected"] == 1, 5), ctl(net.ha, sock, "counters")["control"]
        bad = mn("send_bu", coa=T.COA1, alt=T.COA1, seq=12, lifetime=100, flags="AH",
                 protect="bad_icv")
        assert bad["esp_seq"] == 2
        assert wait_for(lambda: ctl(net.ha, sock, "counters")["totals"]["drops"]["icv"]
                        == c3["totals"]["drops"]["icv"] + 1, 5)
        time.sleep(0.3)
        c4 = ctl(net.ha, sock, "counters")
        assert binding_view(ctl(net.ha, sock, "bindings")) == moved
        assert c4["control"]["punt.binding_update_in_clear"] == 1
        b3, b4 = c3["control"]["bindings"], c4["control"]["bindings"]
        assert b4["bu_received"] == b3["bu_received"] + 1      # the clear one only
        assert b4["bu_rejected"] == b3["bu_rejected"] + 1
        assert (b4["bu_accepted"], b4["moves"], b4["by_status"]) == \
            (b3["bu_accepted"], b3["moves"], b3["by_status"])
        bin_ = sa_row(c4["sas"], "binding_in")
        assert (bin_["packets_in"], bin_["sequence"], bin_["drops"]) == (1, 1, {"icv": 1})
        assert mn("count", iface="mn0")["esp"] == {}            # no Binding Ack
        assert mn("count", iface="mn1")["esp"] == {}
        forward_tunnel(net, mn, "mn1", T.COA2, "still", 5, 2 * N + 1, alg)

        # ... and left no state: the corrupted BU's ESP sequence number and the
        # clear BU's MH sequence number are still good for a valid BU
        mn("send_bu", coa=T.COA1, alt=T.COA1, seq=11, lifetime=100, flags="AH", esp_seq=2)
        [ba] = mn("take", iface="mn0", sa="binding_out", n=1, timeout=5)["packets"]
        assert "error" not in ba, ba
        assert (ba["dst"], ba["seq"], ba["ba"]["status"], ba["ba"]["seq"]) == \
            (T.COA1, 2, 0, 11)
        assert [(b["care_of_address"], b["last_sequence"])
                for b in ctl(net.ha, sock, "bindings")] == [(T.COA1, 11)]
        forward_tunnel(net, mn, "mn0", T.COA1, "back", 5, 2 * N + 6, alg)
        home = binding_view(ctl(net.ha, sock, "bindings"))

        # a replayed ESP sequence number (with a fresh MH sequence number) is
        # dropped before the binding cache sees it: no Binding Ack, no move
        mn("send_bu", coa=T.COA2, alt=T.COA2, seq=12, lifetime=100, flags="AH", esp_seq=2)
        assert wait_for(lambda: ctl(net.ha, sock, "counters")["totals"]["drops"]["replay"]
                        == c0["totals"]["drops"]["replay"] + 1, 5)
        # a stale MH sequence number (fresh ESP) is answered 135 with the last
        # accepted number, at the BU's source, and moves nothing
        mn("send_bu", coa=T.COA2, alt=T.COA2, seq=11, lifetime=100, flags="AH", esp_seq=3)
        [ba] = mn("take", iface="mn1", sa="binding_out", n=1, timeout=5)["packets"]
        assert "error" not in ba, ba
        assert (ba["dst"], ba["seq"], ba["ba"]["status"], ba["ba"]["seq"], ba["ba"]["mhtime"]) \
            == (T.COA2, 3, 135, 11, 0)
        time.sleep(0.3)
        assert binding_view(ctl(net.ha, sock, "bindings")) == home
        assert mn("count", iface="mn0")["esp"] == {} and mn("count", iface="mn1")["esp"] == {}

        c5 = ctl(net.ha, sock, "counters")
        b5 = c5["control"]["bindings"]
        assert (b5["bu_accepted"], b5["moves"], b5["by_status"], b5["unprotected"],
                b5["stale"]) == (2, 2, {"0": 2, "135": 1}, 1, 1)
        bin_ = sa_row(c5["sas"], "binding_in")
        assert (bin_["packets_in"], bin_["sequence"], bin_["drops"]) == \
            (3, 3, {"icv": 1, "replay": 1})
        assert sa_row(c5["sas"], "binding_out")["packets_out"] == 3
        # the only drops of the whole exchange: the corrupted ICV and the ESP
        # replay.  no_binding is left out: it also counts the MLD reports the
        # HA's kernel writes into fp-home (to ff02::16) whenever it likes
        drops = {r: n - c0["totals"]["drops"][r] for r, n in c5["totals"]["drops"].items()
                 if r != "no_binding"}
        assert {r: n for r, n in drops.items() if n} == {"icv": 1, "replay": 1}, drops
    finally:
        if mn is not None:
            mn.close()
        ha.send_signal(signal.SIGTERM)
        try:
            ha.wait(10)
        except subprocess.TimeoutExpired:
            ha.kill()
    assert ha.returncode == 0, open(sock + ".log").read()
