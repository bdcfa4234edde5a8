"""Fragmented tunnel packets, end to end inside one process: built by the
reference path (fastpath/ref/), fragmented by scapy, reassembled by
fastpath.reassembly and decapsulated by the Cython engine, directly and
through the control plane's slow path (ControlPlane._punt), which writes
the inner packet to the home TUN (here a pipe) as a worker would."""
from __future__ import annotations

import ipaddress
import os
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw, raw

from fastpath import metrics
from fastpath.control import MAX_REASSEMBLED, ControlPlane
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.reassembly import Reassembler
from fastpath.ref.ipv6 import ntop
from fastpath.tun import VNET_HDR_LEN
from fastpath.verdicts import Reason, Verdict

from test_binding_swap import build_bu
from topo import BACKENDS, CN, COA1, COA2, HA, MN1, MN2, inner, make_topo, outer

IV = b"\x42" * 16


def fragment(pkt: bytes, mtu: int = 1280, ident: int = 77) -> list[bytes]:
    """scapy's fragments of an outer packet: a Fragment header goes after
    the headers of its unfragmentable part (a Destination Options header
    with a HAO, if it has one)."""
    src, dst, nh = ntop(pkt[8:24]), ntop(pkt[24:40]), pkt[6]
    p = IPv6(src=src, dst=dst)
    off = 40
    if nh == 60:                          # keep the HAO before the Fragment header
        hl = (pkt[41] + 1) * 8
        d = IPv6ExtHdrDestOpt(pkt[40:40 + hl])
        nh = d.nh
        d.nh = 44
        d.remove_payload()
        p = p / d
        off += hl
    p = p / IPv6ExtHdrFragment(id=ident, nh=nh) / Raw(pkt[off:])
    return [raw(f) for f in fragment6(p, mtu)]


def esp_tunnel(topo, size=1260, seq=1, hoa=MN1, coa=COA1) -> tuple[bytes, bytes]:
    """(inner packet, outer ESP tunnel packet as the MN sends it)."""
    i = inner(hoa, CN, size)
    esp = topo.mn_sa(hoa, "payload").seal(seq, i, 41, IV if topo.mn_sa(hoa, "payload").alg.iv_len == 16 else None)
    return i, outer(coa, HA, 50, esp)


def decap_one(engine: Engine, pkt: bytes):
    b = Batch(1, MAX_REASSEMBLED)
    b.load([pkt])
    engine.decap(b)
    [(v, r, out)] = b.results()
    return Verdict(v), Reason(r), out


def reassemble(frags) -> bytes:
    r = Reassembler()
    got = [o for f in frags if (o := r.add(f, 0.0)) is not None]
    assert len(got) == 1 and r.counters()["reassembled"] == 1
    return got[0]


backends = pytest.mark.parametrize("backend", BACKENDS)
algs = pytest.mark.parametrize("alg", ["aes128-sha1", "aes256-sha256", "aes128gcm16"])


@backends
@algs
def test_fragmented_esp_tunnel_packet_decapsulates(alg, backend):
    topo = make_topo(alg, backend=backend)
    want, pkt = esp_tunnel(topo)
    assert len(pkt) > 1280
    frags = fragment(pkt)
    assert len(frags) == 2 and all(len(f) <= 1280 for f in frags)
    # each fragment alone is a punt: the worker cannot handle it
    for f in frags:
        assert decap_one(topo.engine, f)[0] == Verdict.PUNT
    whole = reassemble(frags[::-1])
    assert whole == pkt
    assert decap_one(topo.engine, whole) == (Verdict.TO_HOME, Reason.NONE, want)


@backends
@algs
def test_fragmented_forgery_is_an_icv_drop(alg, backend):
    topo = make_topo(alg, backend=backend)
    _, pkt = esp_tunnel(topo)
    frags = [bytearray(f) for f in fragment(pkt)]
    frags[0][-10] ^= 0x04                      # one bit of the ciphertext, in the first fragment
    before = topo.engine.counters()["drops"]["icv"]
    whole = reassemble(map(bytes, frags))
    assert decap_one(topo.engine, whole) == (Verdict.DROP, Reason.ICV, b"")
    assert topo.engine.counters()["drops"]["icv"] == before + 1


def test_fragmented_plain_tunnel_packet():
    topo = make_topo()
    i = inner(MN2, CN, 1270)
    pkt = outer(COA2, HA, 41, i)
    assert decap_one(topo.engine, reassemble(fragment(pkt))) == (Verdict.TO_HOME, Reason.NONE, i)


def test_fragmented_binding_update_keeps_its_home_address_option():
    topo = make_topo()
    bu = build_bu(topo, COA1)
    assert bu[6] == 60                          # IPv6 . DestOpt(HAO) . ESP . MH
    frags = fragment(bu, mtu=120)
    assert len(frags) >= 2 and all(f[6] == 60 and f[40] == 44 for f in frags)
    whole = reassemble(frags)
    assert whole == bu
    v, r, _ = decap_one(topo.engine, whole)
    assert (v, r) == (Verdict.BINDING, Reason.NONE)
    [(_, vb)] = topo.engine.take_bindings()
    assert vb.home_address == MN1


# -- the control plane's slow path -----------------------------------------------------
def control_plane(topo, vnet: bool):
    """A ControlPlane on a stand-in forwarder: the topology's SA table, a
    control engine of its own, and a pipe for the home TUN."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    eng = Engine(topo.sad, "openssl")
    eng.lock_sleeps = True
    wire_r, wire_w = os.pipe()                 # the wire TUN: Binding Errors (not read)
    os.set_blocking(wire_w, False)
    cfg = SimpleNamespace(home_agent=SimpleNamespace(address=ipaddress.IPv6Address(HA)))
    fwd = SimpleNamespace(sad=topo.sad, control_engine=eng, home_fd=w, home_vnet=vnet,
                          engines=[], workers=[], control=None, cfg=cfg, wire_fd=wire_w,
                          wire_read_end=wire_r)
    cp = object.__new__(ControlPlane)
    cp.fwd = fwd
    cp.events = Counter()
    cp._be_buckets = {}
    cp.bindings = None
    cp.registration = None
    cp.reassembler = Reassembler()
    cp._slow_batch = None
    fwd.control = cp
    return cp, r


def read_all(fd) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(os.read(fd, 1 << 17))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet", "plain"])
def test_control_plane_reassembles_and_writes_home(vnet):
    topo = make_topo()
    cp, home = control_plane(topo, vnet)
    want, pkt = esp_tunnel(topo, seq=5)
    forged = [bytearray(f) for f in fragment(esp_tunnel(topo, seq=6)[1], ident=78)]
    forged[0][-1] ^= 1
    decisions = []
    for f in fragment(pkt) + [bytes(x) for x in forged]:
        cp._punt(f, decisions)
    got = read_all(home)
    assert got == [(bytes(VNET_HDR_LEN) if vnet else b"") + want]
    assert cp.events["reassembled.to_home"] == 1 and decisions == []
    snap = metrics.collect(cp.fwd)
    # the drop is counted with the engine's normal verdict counters
    assert snap["totals"]["drops"]["icv"] == 1
    assert snap["totals"]["verdicts"]["to_home"] == 1
    assert snap["control"]["reassembly"]["fragments"] == 4
    assert snap["control"]["reassembly"]["reassembled"] == 2
    text = metrics.prometheus(snap)
    assert "fastpath_reassembly_reassembled_total 2" in text
    assert "# HELP fastpath_reassembly_overlap_total Datagrams discarded: overlapping" in text
    assert 'fastpath_drops_total{reason="icv"} 1' in text
    assert 'fastpath_control_total{event="reassembly.' not in text      # not twice


def test_control_plane_sends_a_reassembled_bu_to_the_binding_path():
    topo = make_topo()
    cp, home = control_plane(topo, True)
    seen = []
    cp._binding_update = lambda vb: seen.append(vb) or "decision"
    decisions = []
    for f in fragment(build_bu(topo, COA1), mtu=120):
        cp._punt(f, decisions)
    assert decisions == ["decision"] and seen[0].home_address == MN1
    assert cp.events["reassembled.binding"] == 1 and read_all(home) == []


def test_control_plane_other_punts_are_unchanged():
    topo = make_topo()
    cp, home = control_plane(topo, True)
    icmp = outer(COA1, HA, 58, bytes(16))
    cp._punt(icmp, [])
    assert cp.events["punt.next_header_58"] == 1
    assert cp.reassembler.counters()["fragments"] == 0
    # a reassembled packet that holds another Fragment header goes no further
    nested = fragment(outer(COA1, HA, 44, bytes([50, 0, 0, 1, 0, 0, 0, 9]) + bytes(1400)))
    for f in nested:
        cp._punt(f, [])
    assert cp.events["reassembled.nested_fragment"] == 1


# -- the control engine and a worker's on one SA --------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_control_and_worker_engines_share_an_sa_replay_window(backend):
    """Both threads open every packet of one SA, batch by batch at the same
    time, the GIL released inside decap(): each sequence number must be accepted by
    exactly one of them (the per-SA replay lock; the control engine's
    lock_sleeps variant included), the other copy being a replay. On
    ipsec-mb the packets take _decap_gcm_run: pre-checked without the lock,
    committed under it."""
    import threading
    topo = make_topo("aes128gcm16", window=1024, backend=backend)
    n, size = 16000, 64
    pkts = [esp_tunnel(topo, size=100, seq=s)[1] for s in range(1, n + 1)]
    worker = Engine(topo.sad, backend, max_batch=size)
    control = Engine(topo.sad, backend, max_batch=size)
    control.lock_sleeps = True
    got = {}
    together = threading.Barrier(2)      # both on the same batch at once: contention

    def run(eng, name):
        b = Batch(size)
        res = Counter()
        for k in range(0, n, size):
            b.load(pkts[k:k + size])
            together.wait(10)
            eng.decap(b)
            for v, r, _ in b.results():
                res[(Verdict(v).name, Reason(r).name)] += 1
        got[name] = res

    threads = [threading.Thread(target=run, args=(e, name))
               for e, name in ((worker, "worker"), (control, "control"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    accepted = got["worker"][("TO_HOME", "NONE")] + got["control"][("TO_HOME", "NONE")]
    replays = got["worker"][("DROP", "REPLAY")] + got["control"][("DROP", "REPLAY")]
    assert (accepted, replays) == (n, n), got


def test_control_plane_does_not_walk_the_options_of_a_punted_packet(monkeypatch):
    """What a worker punts had its options checked by the engine already; the
    control thread looks only at header lengths. A Destination Options header
    of 1400 Pad1s cost the Python option walk ~180 us, twice per punted
    fragment: ~3000 such packets a second kept the control thread (SCHED_FIFO
    above the workers) busy."""
    import fastpath.ref.ipv6 as ipv6
    topo = make_topo()
    cp, home = control_plane(topo, True)
    from fastpath.binding import BindingCache
    # the real BindingCache.unprotected (a packet that is no BU touches no state)
    cp.bindings = SimpleNamespace(unprotected=lambda pkt, now: BindingCache.unprotected(
        None, pkt, now))
    calls = []
    real = ipv6.find_hao
    monkeypatch.setattr(ipv6, "find_hao", lambda o: calls.append(len(o)) or real(o))
    pads = 1400 // 8 * 8
    frag = bytes([50, 0, 0, 9, 0, 0, 0, 1]) + bytes(64)             # offset 8, M=1
    other = bytes([58, 0]) + bytes(14)
    for nh, rest in ((44, frag), (58, other)):
        dst = bytes([nh, pads // 8 - 1]) + bytes(pads - 2)          # Pad1s only
        cp._punt(outer(COA1, HA, 60, dst + rest), [])
    assert calls == []
    assert cp.reassembler.counters()["fragments"] == 1 and len(cp.reassembler) == 1
    assert cp.events["punt.next_header_60"] == 1


def test_drain_answers_bindings_first_and_bounds_punt_cpu(monkeypatch):
    """Authenticated BUs drained with a burst of unauthenticated punts are
    handled first; punts get at most PUNT_CPU_SHARE of each second of the
    control thread, the rest are shed and counted."""
    import fastpath.control as control
    topo = make_topo()
    cp, _home = control_plane(topo, False)
    cp._punt_window, cp._punt_spent = 0.0, 0.0
    order = []
    cp._binding_update = lambda vb: order.append(("binding", vb))
    cp._finish_decisions = lambda decisions: None

    def slow_punt(pkt, decisions):
        order.append(("punt", pkt))
        time.sleep(0.01)                      # an expensive packet
    cp._punt = slow_punt
    items = [("punt", b"p%d" % k) for k in range(20)]
    items.insert(7, ("binding", "bu1"))
    items.append(("binding", "bu2"))
    worker = SimpleNamespace(punts=SimpleNamespace(drain=lambda sad: items))
    monkeypatch.setattr(control, "PUNT_CPU_SHARE", 0.035)
    cp._drain(worker)
    assert order[:2] == [("binding", "bu1"), ("binding", "bu2")]
    done = [x for k, x in order if k == "punt"]
    assert done == [b"p%d" % k for k in range(len(done))]     # in arrival order
    assert 3 <= len(done) <= 5 and cp.events["punt.shed"] == 20 - len(done)


def test_unbound_home_address_options_get_binding_errors_from_every_path(monkeypatch):
    """RFC 6275 §9.3.1 through the control thread: a packet whose Home
    Address option names no binding - handed over by a worker as
    "unbound_hao", or found so once its fragments are reassembled - is
    answered with a Binding Error (status 1, scapy dissects it) on the wire
    TUN. These answers have their own bucket, and while it is empty the
    option is not even looked for again (no walk of its bytes)."""
    from scapy.layers.inet6 import HAO, ICMPv6EchoRequest, MIP6MH_BE

    import fastpath.control as control
    from fastpath.ref.ipv6 import hao_destopt
    monkeypatch.setattr(control, "time", SimpleNamespace(monotonic=lambda: 100.0,
                                                         perf_counter=time.perf_counter))
    topo = make_topo()
    cp, _home = control_plane(topo, False)
    cp._punt_window, cp._punt_spent = 0.0, 0.0
    cp._finish_decisions = lambda decisions: None
    wire = cp.fwd.wire_read_end
    os.set_blocking(wire, False)
    echo = bytes(IPv6(src=ntop(COA2), dst=ntop(HA))
                 / IPv6ExtHdrDestOpt(options=[HAO(hoa=ntop(MN1))]) / ICMPv6EchoRequest())
    worker = SimpleNamespace(punts=SimpleNamespace(drain=lambda sad: [("unbound_hao", echo)]))
    cp._drain(worker)
    big = outer(COA2, HA, 60, hao_destopt(MN1, 58) + bytes([128, 0, 0, 0]) + bytes(1500))
    for f in fragment(big):                # the HAO stays before the Fragment header
        cp._punt(f, [])
    data = os.read(wire, 4096)             # a pipe: the two packets come as one read
    assert len(data) == 2 * (40 + 24)
    sent = [data[:64], data[64:]]
    assert cp.events["hao.unknown_binding"] == 2 and cp.events["binding.error_sent"] == 2
    for raw_be in sent:
        p = IPv6(raw_be)
        assert (p.src, p.dst, p[MIP6MH_BE].status, p[MIP6MH_BE].ha) == (
            ntop(HA), ntop(COA2), 1, ntop(MN1))
    # the unauthenticated bucket empty: counted, the option not looked for
    walks = []
    real = control.unknown_binding_error
    monkeypatch.setattr(control, "unknown_binding_error", lambda pkt: walks.append(1) or real(pkt))
    for _ in range(int(control.BINDING_ERRORS_PER_S) + 5):
        cp._unbound_hao(echo)
    assert len(walks) == int(control.BINDING_ERRORS_PER_S) - 2
    assert cp.events["binding.error_rate_limited"] == 7
    # ... while the authenticated one still has its tokens
    assert cp._binding_error_token(COA1, control.BE_AUTHENTICATED)
