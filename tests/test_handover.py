"""A handover under load in network namespaces (issue 4, item 11):

    CN ── HA (fastpath run) ── router ── MN (fastpath run --role mobile-node)
                                    └──── second access link (the other CoA)

The CN streams numbered UDP to the home address while the mobile node moves
100 times between its two care-of addresses (2001:db8:2::10 and
2001:db8:3::10) with `fastpath ctl move --coa ...`; each move waits for the
home agent to have acknowledged it before the next. A sniffer on the router's
link to the HA (r-ha) records, in wire order, every packet the HA sends to a
care-of address (outer destination, next header; for ESP the SPI and sequence
number) and every Binding Update the MN sends to the HA. Checked:

* for every move, no packet to the care-of address being left appears after
  that move's Binding Ack (the packet from the HA with a type 2 routing
  header, next header 43) - up to the next Binding Update that moves the
  node back there;
* the ESP sequence numbers of the payload-out SA go up by exactly one from
  packet to packet in wire order, across all moves (no gap, no reuse);
* the sink lost less than 2 %, and every lost datagram was dropped by a queue
  that counts it (kernel or fastpath counters): none vanished in a move.

The scenario runs once (a module fixture, about 20 s); each check is its own
test. The CN sends 10,000 datagrams/s, plus a burst of 400 back to back as
each move starts, so that the HA's worker is busy with a batch when the
Binding Update is processed: the moment a grace period must cover. The
first move uses the `fastpath ctl move` command, the others send the same
request to the mobile node's control socket directly (no interpreter
start-up between moves).

Needs root, /dev/net/tun and `ip`; skipped with the reason otherwise."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from fastpath.control import ctl_request
from netns import Topology, skip_reason, stop, topology, wait_for

pytestmark = pytest.mark.skipif(skip_reason(need_tun=True) is not None,
                                reason=skip_reason(need_tun=True) or "")

T = Topology
MOVES = 100
RATE = 10000                # datagrams/s from the CN, steady
BURST = 400                 # and this many more, back to back, as each move starts (a TUN
                            # queues 500: more would overflow it rather than load the HA)
SIZE = 200                  # UDP payload bytes
DWELL = 0.1                 # s at each care-of address after its Binding Ack
SPI_PAYLOAD_OUT = 0x1040    # HA -> MN payload SA (the one whose numbers must run on)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)

# sniffer record kinds
DATA, BA, BU, OTHER = 0, 1, 2, 3
REC = struct.Struct("<BBBxII")      # kind, CoA index (0/1, 2 = other), next header, SPI, seq


def config(tmp_path) -> str:
    def sa(purpose, direction, spi, alg, fields):
        return textwrap.dedent(f"""
              [[mobile_node.sa]]
              purpose = "{purpose}"
              direction = "{direction}"
              spi = {spi:#x}
              algorithm = "{alg}"
              """) + "".join(f'  {k} = "{v}"\n' for k, v in fields.items())
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
        binding_lifetime_max = 600
        """)
    text += sa("binding", "in", 0x1010, "aes128-sha1", {"enc_key": "10" * 16, "auth_key": "11" * 20})
    text += sa("binding", "out", 0x1020, "aes128-sha1", {"enc_key": "20" * 16, "auth_key": "21" * 20})
    text += sa("payload", "in", 0x1030, "aes128gcm16", {"key": "30" * 16 + "32" * 4})
    text += sa("payload", "out", SPI_PAYLOAD_OUT, "aes128gcm16", {"key": "40" * 16 + "42" * 4})
    path = tmp_path / "handover.toml"
    path.write_text(text)
    return str(path)


def start(ns, cfg, sock, *extra):
    log = open(sock + ".log", "w")
    p = ns.popen([sys.executable, "-m", "fastpath", "run", "-c", cfg, "--control-socket", sock,
                  "--log-level", "info", *extra], env=ENV, stdout=log, stderr=subprocess.STDOUT)
    if not wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 20):
        pytest.fail("forwarder did not start: " + open(sock + ".log").read())
    if p.poll() is not None:
        pytest.fail("forwarder exited: " + open(sock + ".log").read())
    return p


# Runs in the router's namespace. ETH_P_ALL: a protocol-specific packet socket
# would not see the frames r-ha sends (the Binding Updates on their way to the HA).
SNIFFER = r"""
import os, signal, socket, struct, sys, time
ha, coa1, coa2 = (socket.inet_pton(socket.AF_INET6, a) for a in sys.argv[1:4])
ifname, out = sys.argv[4], sys.argv[5]
coas = {coa1: 0, coa2: 1}
rec = struct.Struct("<BBBxII")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 26)          # SO_RCVBUFFORCE
s.bind((ifname, 0)); s.settimeout(0.2)
buf = bytearray(); done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
print("ready", flush=True)
while not done:
    try:
        f = s.recv(256)
    except socket.timeout:
        continue
    except InterruptedError:
        continue
    if f[12:14] != b"\x86\xdd" or len(f) < 54:
        continue
    ip = f[14:]
    src, dst, nh = ip[8:24], ip[24:40], ip[6]
    if src == ha:
        idx = coas.get(dst, 2)
        if nh == 50 and len(ip) >= 48:
            spi, seq = struct.unpack_from("!II", ip, 40)
            buf += rec.pack(0, idx, nh, spi, seq)
        elif nh == 43:
            buf += rec.pack(1, idx, nh, 0, 0)
        else:
            buf += rec.pack(3, idx, nh, 0, 0)
    elif dst == ha and src in coas and nh == 60:
        buf += rec.pack(2, coas[src], nh, 0, 0)
packets, drops = struct.unpack("II", s.getsockopt(263, 6, 8))   # PACKET_STATISTICS
with open(out, "wb") as fh:
    fh.write(buf)
print(drops, flush=True)
"""

SINK = r"""
import json, signal, socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)          # SO_RCVBUFFORCE
s.bind((sys.argv[1], 9000)); s.settimeout(0.2)
seen = set(); dups = 0; done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
print("ready", flush=True)
while not done:
    try:
        b = s.recv(2048)
    except (socket.timeout, InterruptedError):
        continue
    n = struct.unpack_from("!I", b)[0]
    dups += n in seen
    seen.add(n)
print(json.dumps({"received": len(seen), "dups": dups}))
"""

SOURCE = r"""
import signal, socket, struct, sys, time
dst, rate, size, burst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
pad = b"\x00" * (size - 4); n = 0; errors = 0; extra = 0; done = []; bursts = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
signal.signal(signal.SIGUSR1, lambda *a: bursts.append(1))    # `burst` more, back to back
t0 = time.monotonic()
while not done:
    if bursts:
        extra += burst * len(bursts); bursts.clear()
    due = (time.monotonic() - t0) * rate + extra
    while n < due:
        try:
            s.sendto(struct.pack("!I", n) + pad, (dst, 9000))
        except OSError:
            errors += 1
        n += 1
    time.sleep(0.001)
print(n, errors)
"""


def drop_counters(ns) -> dict:
    """Where packets can be lost without fastpath counting them: every
    interface's kernel drop counters (a TUN whose reader fell behind counts
    tx_dropped, a full backlog a veth's) and the UDP receive buffer."""
    out = {}
    for link in json.loads(ns.ip("-j", "-s", "link", "show").stdout):
        st = link.get("stats64") or link.get("stats") or {}
        n = sum(st.get(d, {}).get("dropped", 0) + st.get(d, {}).get("errors", 0)
                for d in ("rx", "tx"))
        if n:
            out[link["ifname"]] = n
    snmp = ns.run(["cat", "/proc/net/snmp6"]).stdout.split()
    fields = dict(zip(snmp[::2], snmp[1::2]))
    for k in ("Udp6RcvbufErrors", "Udp6InErrors"):
        if int(fields.get(k, 0)):
            out[k] = int(fields[k])
    return out


def check_wire(records):
    """(stale, ba_order, seq_problems) from the sniffer's records in wire order."""
    # Every Binding Ack to CoA X: from there until the MN's next Binding
    # Update from the other CoA Y (the move back), the binding is X and
    # nothing may go to Y.
    stale = []              # (move number, record position, record)
    bas = []                # CoA index of each BA, in order
    binding, ba_no = None, 0
    for pos, r in enumerate(records):
        kind, idx = r[0], r[1]
        if kind == BA and idx in (0, 1):
            binding, ba_no = idx, ba_no + 1
            bas.append(idx)
        elif kind == BU and binding is not None and idx != binding:
            binding = None          # moving back: the HA may switch any time from here
        elif kind in (DATA, OTHER) and binding is not None and idx != binding:
            stale.append((ba_no, pos, r))
    seqs = [r[4] for r in records if r[0] == DATA and r[3] == SPI_PAYLOAD_OUT]
    problems = [(i, a, b) for i, (a, b) in enumerate(zip(seqs, seqs[1:])) if b != a + 1]
    return stale, bas, seqs, problems


@pytest.fixture(scope="module")
def handover(tmp_path_factory):
    """Run the scenario once; the tests below check what it recorded."""
    tmp_path = tmp_path_factory.mktemp("handover")
    with topology(coa_on_mn=False) as net:
        cfg = config(tmp_path)
        ha_sock, mn_sock = str(tmp_path / "ha.sock"), str(tmp_path / "mn.sock")
        ha = start(net.ha, cfg, ha_sock)
        mn = start(net.mn, cfg, mn_sock, "--role", "mobile-node", "--enable-forwarding")
        procs = [mn, ha]
        try:
            # the MN's own registration (BU at start) has been acknowledged
            assert wait_for(lambda: ctl_request(mn_sock, "counters")["control"]
                            .get("registration.ba_status_0", 0) >= 1, 10), \
                "the mobile node did not register: " + open(mn_sock + ".log").read()
            wire = tmp_path / "wire.bin"
            sniff = net.router.popen([sys.executable, "-c", SNIFFER, T.HA_ADDRESS, T.COA1, T.COA2,
                                      "r-ha", str(wire)], env=ENV, stdout=subprocess.PIPE, text=True)
            sink = net.mn.popen([sys.executable, "-c", SINK, T.HOA1], env=ENV,
                                stdout=subprocess.PIPE, text=True)
            procs[:0] = [sniff, sink]
            assert sniff.stdout.readline().strip() == "ready"
            assert sink.stdout.readline().strip() == "ready"
            src = net.cn.popen([sys.executable, "-c", SOURCE, T.HOA1, str(RATE), str(SIZE),
                                str(BURST)],
                               env=ENV, stdout=subprocess.PIPE, text=True)
            procs[:0] = [src]
            time.sleep(1.0)

            where = T.COA1
            for i in range(MOVES):
                to = T.COA2 if where == T.COA1 else T.COA1
                # a burst from the CN, so that the HA's worker is busy with it when the
                # Binding Update arrives: the moment a grace period must cover
                src.send_signal(signal.SIGUSR1)
                if i == 0:
                    net.mn.run([sys.executable, "-m", "fastpath", "ctl", "--socket", mn_sock,
                                "move", "--coa", to], env=ENV)
                else:       # what `fastpath ctl move --coa` sends, without its start-up time
                    assert ctl_request(mn_sock, f"move {to}") == {"moved_to": to}
                # the HA's binding cache shows the new CoA once the BU has been
                # processed, which includes writing its Binding Ack
                ok = wait_for(lambda: any(b["care_of_address"] == to
                                          for b in ctl_request(ha_sock, "bindings")),
                              5, interval=0.002)
                assert ok, f"move {i + 1} to {to}: the HA did not take the binding"
                where = to
                time.sleep(DWELL)
            time.sleep(0.5)

            src.send_signal(signal.SIGTERM)
            sent, send_errors = map(int, src.communicate(timeout=10)[0].split())
            time.sleep(0.5)                     # the last packets drain to the sink
            ha_counters = ctl_request(ha_sock, "counters")
            mn_counters = ctl_request(mn_sock, "counters")
            kernel_drops = {name: drop_counters(n) for name, n in
                            (("cn", net.cn), ("ha", net.ha), ("router", net.router), ("mn", net.mn))}
            for p in (sink, sniff):
                p.send_signal(signal.SIGTERM)
            got = json.loads(sink.communicate(timeout=20)[0])
            sniff_drops = int(sniff.communicate(timeout=20)[0].split()[-1])
            records = list(REC.iter_unpack(wire.read_bytes()))
        finally:
            stop(procs)
        assert ha.returncode == 0, open(ha_sock + ".log").read()

    assert sniff_drops == 0, f"the sniffer lost {sniff_drops} frames: the wire record is incomplete"
    stale, bas, seqs, seq_problems = check_wire(records)
    return dict(sent=sent, send_errors=send_errors, got=got, records=records, stale=stale,
                bas=bas, seqs=seqs, seq_problems=seq_problems, ha_counters=ha_counters,
                mn_counters=mn_counters, kernel_drops=kernel_drops)


def test_every_move_acknowledged(handover):
    """Each of the 100 moves has its Binding Ack on the wire, to the new CoA."""
    bas = handover["bas"]
    assert len(bas) >= MOVES and bas[-MOVES:] == [(i + 1) % 2 for i in range(MOVES)], \
        f"Binding Acks on the wire (CoA index): {bas}"
    bindings = handover["ha_counters"]["control"]["bindings"]
    assert bindings["rebinds"] >= MOVES and bindings["grace_timeouts"] == 0, bindings


def test_no_packet_to_old_coa_after_ba(handover):
    """For every move, nothing goes to the CoA being left after that move's BA."""
    stale = handover["stale"]
    moves = sorted({ba for ba, _, _ in stale})
    assert not stale, (f"{len(stale)} packets to the old care-of address after the Binding Ack, "
                       f"in {len(moves)} of {MOVES} moves (BA numbers {moves[:20]}); first: wire "
                       f"position {stale[0][1]}, record (kind, CoA, nh, SPI, seq) {stale[0][2]}")


def test_esp_sequence_continuous(handover):
    """The payload-out SA's sequence numbers go up by one from packet to packet
    in wire order, across all 100 moves: no gap, no reuse."""
    seqs, problems = handover["seqs"], handover["seq_problems"]
    assert len(seqs) > 0.9 * handover["sent"]
    assert not problems, (f"{len(problems)} breaks in the ESP sequence on the wire, "
                          f"first (index, previous, next): {problems[:5]}")
    assert len(set(seqs)) == len(seqs)


def test_loss_only_in_flight(handover):
    """The sink lost less than 2 %, and every lost datagram was dropped by a
    queue that counts it (a TUN whose reader fell behind, a full socket
    buffer...): none vanished in a move."""
    h = handover
    sent, got, seqs = h["sent"], h["got"], h["seqs"]
    lost = sent - got["received"]
    ha_drops = sum(h["ha_counters"]["totals"]["drops"].values())
    mn_drops = (sum(h["mn_counters"]["totals"]["drops"].values())
                + h["mn_counters"]["io"]["tx_errors"]["home"])
    tunnelled = len(seqs)                   # what the HA put on the wire for the MN
    before_ha = sent - tunnelled            # the CN's kernel, the HA's kernel and TUN, the HA
    after_ha = tunnelled - got["received"]  # the router, the MN's kernel and TUN, the MN, the sink
    k = {ns: sum(d.values()) for ns, d in h["kernel_drops"].items()}
    report = (f"sent {sent} (send errors {h['send_errors']}), HA tunnelled {tunnelled}, sink got "
              f"{got['received']} (dups {got['dups']}): lost {lost} = {before_ha} before the HA's "
              f"wire + {after_ha} after it; fastpath drops HA {ha_drops}, MN {mn_drops}; kernel "
              f"drops {h['kernel_drops']}")
    print(report)
    assert got["dups"] == 0, report
    assert lost <= 0.02 * sent, report
    assert before_ha <= h["send_errors"] + ha_drops + k["cn"] + k["ha"], report
    assert after_ha <= k["router"] + k["mn"] + mn_drops, report
