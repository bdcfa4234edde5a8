"""Binding cache and Binding Update processing (fastpath.binding).

BUs are built with scapy's MIPv6 layers (the MH checksummed with the home
address as source because of the Home Address option) and sealed in ESP
transport mode with scapy's own SecurityAssociation; they go through a real
Engine (every backend), its VerifiedBindings through the BindingCache, and
each Binding Ack the cache releases is sealed by the engine and then opened
and dissected by scapy."""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections import defaultdict

import pytest
from scapy.layers.inet6 import (HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, MIP6MH_BA,
                                MIP6MH_BRR, MIP6MH_BU, MIP6OptAltCoA)
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from fastpath import mh
from fastpath.algorithms import KIND_GCM, KIND_NULL_HMAC
from fastpath.binding import HOLD_SECONDS, BindingCache, build_ba_packet
from fastpath.config import load
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.tables import sad_from_config
from fastpath.verdicts import Reason, Verdict

from topo import BACKENDS, CN, REPO_EXAMPLES, inner

CFG = REPO_EXAMPLES / "ha.toml"
NEW = "2001:db8:4::40"
NEW2 = "2001:db8:5::50"
SCAPY_AUTH = {1: "HMAC-SHA1-96", 2: "SHA2-256-128"}


def ip(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def ntop(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


def scapy_sa(sa) -> SecurityAssociation:
    """scapy's end of one of the config's SAs (transport mode: no tunnel header)."""
    a = sa.algorithm
    if a.kind == KIND_GCM:
        kw = dict(crypt_algo="AES-GCM", crypt_key=sa.enc_key + sa.salt)
    elif a.kind == KIND_NULL_HMAC:
        kw = dict(crypt_algo="NULL", auth_algo=SCAPY_AUTH[a.hash], auth_key=sa.auth_key)
    else:
        kw = dict(crypt_algo="AES-CBC", crypt_key=sa.enc_key,
                  auth_algo=SCAPY_AUTH[a.hash], auth_key=sa.auth_key)
    return SecurityAssociation(ESP, spi=sa.spi, **kw)


class Home:
    """A home agent from examples/ha.toml (optionally edited): SA table,
    engine, binding cache, and the mobile nodes' scapy SAs."""

    def __init__(self, backend, cfg=None, cache_cfg=None, sad=None, **cache_kw):
        self.backend = backend
        self.cfg = cfg or load(CFG)
        self.sad = sad_from_config(self.cfg, backend)
        self.engine = Engine(self.sad, backend)
        self.calls = []
        self.cache = BindingCache(sad or self.sad, cache_cfg or self.cfg,
                                  on_bind=lambda h: self.calls.append(("bind", h)),
                                  on_unbind=lambda h: self.calls.append(("unbind", h)),
                                  **cache_kw)
        self.ha = self.cfg.home_agent.address.packed
        self.esp_seq = defaultdict(int)

    def mn(self, i):
        return self.cfg.mobile_nodes[i]

    def hoa(self, i) -> bytes:
        return self.mn(i).home_address.packed

    def coa(self, i):
        return self.sad.care_of_address(self.hoa(i))

    # -- the mobile node's side, with scapy
    def bu(self, i, seq, *, flags="AH", lifetime=100, src=NEW, alt=None, hao=None,
           sa_of=None, esp_seq=None, clear=False, mh_layer=None) -> bytes:
        """IPv6(src -> HA) . DestOpt(HAO) . ESP(MN i's binding-in SA) . MH BU."""
        hao = hao or str(self.mn(i).home_address)
        opts = [MIP6OptAltCoA(acoa=alt)] if alt else []
        if mh_layer is None:
            mh_layer = MIP6MH_BU(seq=seq, flags=flags, mhtime=lifetime, options=opts)
        pkt = IPv6(bytes(IPv6(src=src, dst=str(self.cfg.home_agent.address))
                         / IPv6ExtHdrDestOpt(options=[HAO(hoa=hao)]) / mh_layer))
        if clear:
            return bytes(pkt)
        sa = self.mn(i if sa_of is None else sa_of).sa("binding", "in")
        if esp_seq is None:
            self.esp_seq[sa.spi] += 1
            esp_seq = self.esp_seq[sa.spi]
        return bytes(scapy_sa(sa).encrypt(pkt, seq_num=esp_seq))

    # -- the home agent's side
    def decap(self, pkts):
        b = Batch(max(len(pkts), 1))
        b.load(pkts)
        self.engine.decap(b)
        return b.results()

    def verify(self, pkt):
        res = self.decap([pkt])
        assert res[0][:2] == (Verdict.BINDING, Reason.NONE), res[0][:2]
        [(slot, vb)] = self.engine.take_bindings()
        return vb

    def send(self, pkt, now=0.0):
        return self.cache.process(self.verify(pkt), now)

    def encap_to(self, i):
        """Where a packet from a correspondent to MN i goes now."""
        b = Batch(1)
        b.load([inner(CN, self.hoa(i), 80)])
        self.engine.encap(b)
        v, r, p = b.results()[0]
        return p[24:40] if v == Verdict.TO_WIRE else r

    def ba(self, d, i=0):
        """The Binding Ack of decision `d` as on the wire, opened and dissected
        by scapy: (outer IPv6, MIP6MH_BA)."""
        wire = build_ba_packet(self.engine, d)
        outer = IPv6(wire)
        assert (outer.src, outer.dst, outer.nh) == (ntop(self.ha), ntop(d.destination), 43)
        rh = outer[IPv6ExtHdrRouting]
        assert (rh.type, rh.segleft, rh.addresses, rh.nh) == (2, 1, [ntop(self.hoa(i))], 50)
        assert outer[ESP].spi == self.mn(i).sa("binding", "out").spi
        plain = IPv6(bytes(scapy_sa(self.mn(i).sa("binding", "out")).decrypt(outer)))
        ba = plain[MIP6MH_BA]
        # the checksum covers HA -> HoA (the RH2's address is the final destination)
        again = IPv6(bytes(plain))
        del again[MIP6MH_BA].cksum
        assert IPv6(bytes(again))[MIP6MH_BA].cksum == ba.cksum
        assert mh.parse(bytes(ba), self.ha, self.hoa(i)) == d.ba
        assert (ba.status, ba.seq, ba.mhtime) == (d.ba.status, d.ba.sequence, d.ba.lifetime)
        assert not ba.flags.K
        return outer, ba


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def edited(**mn_changes):
    """examples/ha.toml with changes applied to every mobile node."""
    cfg = load(CFG)
    return dataclasses.replace(cfg, mobile_nodes=tuple(
        dataclasses.replace(mn, **mn_changes) for mn in cfg.mobile_nodes))


# ---------------------------------------------------------------- accepted

def test_bu_accepted_moves_and_ba_after_grace(backend):
    h = Home(backend)
    hoa = h.hoa(0)
    static = h.coa(0)
    assert h.calls == [("bind", h.hoa(0)), ("bind", h.hoa(1))]   # static bindings
    assert h.encap_to(0) == static
    d = h.send(h.bu(0, 7, lifetime=100), now=50.0)
    assert (d.status, d.action, d.moved, d.sequence, d.lifetime) == (0, "moved", True, 7, 100)
    assert h.coa(0) == ip(NEW) == d.care_of_address == d.destination
    assert h.encap_to(0) == ip(NEW)
    outer, ba = h.ba(d)
    assert (ba.status, ba.seq, ba.mhtime) == (0, 7, 100)
    e = h.cache.entry(hoa)
    assert (e.state, e.last_sequence, e.lifetime, e.expires_at) == ("registered", 7, 400, 450.0)
    [row] = [r for r in h.cache.entries(60.0) if r["home_address"] == ntop(hoa)]
    assert row == {"home_address": ntop(hoa), "care_of_address": NEW, "state": "registered",
                   "lifetime": 400, "lifetime_left": 390.0, "last_sequence": 7,
                   "flags": "AH--", "path_mtu": 1500}
    # a refresh to the same CoA moves nothing; a newer BU with an Alternate
    # CoA moves to the option's address, not the packet's source
    d = h.send(h.bu(0, 8, flags="AHK", lifetime=50), now=60.0)
    assert (d.status, d.action, d.moved) == (0, "refreshed", False)
    h.ba(d)                                   # K is never set: manual keys
    d = h.send(h.bu(0, 9, src=NEW, alt=NEW2), now=61.0)
    assert (d.status, d.action, h.coa(0), d.destination) == (0, "moved", ip(NEW2), ip(NEW2))
    h.ba(d)
    assert h.calls == [("bind", h.hoa(0)), ("bind", h.hoa(1))]    # no new interception
    c = h.cache.counters()
    assert (c["bu_accepted"], c["moves"], c["refreshes"], c["ba_released"]) == (3, 2, 1, 3)
    assert c["by_status"] == {0: 3}


def test_first_registration_calls_on_bind(backend):
    h = Home(backend, cfg=edited(care_of_address=None))
    assert h.calls == [] and h.cache.entries(0) == []
    assert h.encap_to(0) == Reason.NO_BINDING
    d = h.send(h.bu(0, 40000), now=1.0)        # no entry: any sequence number
    assert (d.status, d.action) == (0, "registered")
    assert h.calls == [("bind", h.hoa(0))]
    assert h.encap_to(0) == ip(NEW)
    h.ba(d)


def test_a_flag_clear_accepted_sends_no_ba(backend):
    h = Home(backend)
    d = h.send(h.bu(0, 3, flags="H"))
    assert (d.status, d.ba, h.coa(0)) == (0, None, ip(NEW))
    with pytest.raises(ValueError):
        build_ba_packet(h.engine, d)
    assert h.cache.counters()["ba_suppressed"] == 1
    # ... but a rejection is always answered (RFC 6275 §9.5.4)
    d = h.send(h.bu(0, 3, flags="H", src=NEW2))
    assert d.status == 135 and h.ba(d)[1].seq == 3
    assert h.coa(0) == ip(NEW)


def test_lifetime_capped(backend):
    h = Home(backend)
    d = h.send(h.bu(0, 1, lifetime=65535))            # MN1: binding_lifetime_max 3600
    assert d.lifetime == 900 and h.ba(d)[1].mhtime == 900
    d = h.send(h.bu(1, 1, lifetime=65535))            # MN2: binding_lifetime_max 600
    assert d.lifetime == 150 and h.ba(d, 1)[1].mhtime == 150
    d = h.send(h.bu(1, 2, lifetime=10))               # below the cap: as asked
    assert d.lifetime == 10 and h.ba(d, 1)[1].mhtime == 10


# ---------------------------------------------------------------- sequence numbers

def test_sequence_window_and_wraparound(backend):
    h = Home(backend)
    steps = [  # (BU sequence, accepted?, last accepted afterwards)
        (65535, True, 65535),
        (65535, False, 65535),        # equal: not newer
        (0, True, 0),                 # wraps around 2**16
        (32768, False, 0),            # 32768 ahead is "behind"
        (32767, True, 32767),
        (0, False, 32767),            # 32769 ahead
        (65534, True, 65534),         # 32767 ahead
        (1, True, 1),                 # wraps again
        (65000, False, 1),
    ]
    for k, (seq, ok, last) in enumerate(steps):
        where = NEW if k % 2 else NEW2
        before = h.coa(0)
        d = h.send(h.bu(0, seq, src=where))
        _, ba = h.ba(d)
        if ok:
            assert (d.status, ba.seq, h.coa(0)) == (0, seq, ip(where)), k
        else:
            # 135 carries the last accepted sequence number; nothing moved
            assert (d.status, ba.seq, ba.mhtime, h.coa(0)) == (135, last, 0, before), k
            assert d.destination == ip(where)
        assert h.cache.entry(h.hoa(0)).last_sequence == last
    assert h.cache.counters()["stale"] == 4


# ---------------------------------------------------------------- every status

def test_status_129_and_174_care_of_address(backend):
    h = Home(backend)
    static = h.coa(0)
    cases = [("2001:db8:1::99", 129),          # inside the home prefix
             (str(h.cfg.home_agent.address), 129),   # the HA itself
             ("fe80::1", 174), ("ff02::1", 174), ("::1", 174), ("::", 174),
             ("::ffff:192.0.2.1", 174), ("fec0::1", 174)]
    for seq, (alt, status) in enumerate(cases, 1):
        d = h.send(h.bu(0, seq, alt=alt))
        assert d.status == status, alt
        outer, ba = h.ba(d)
        assert outer.dst == NEW                  # rejections go to the BU's source
        assert h.coa(0) == static
    assert h.cache.counters()["by_status"] == {129: 2, 174: 6}


def test_status_132_not_home_subnet(backend):
    h = Home(backend)
    cfg = dataclasses.replace(h.cfg, home_agent=dataclasses.replace(
        h.cfg.home_agent, home_prefix=ipaddress.IPv6Network("2001:db8:1:1::/64")))
    cache = BindingCache(h.sad, cfg)
    d = cache.process(h.verify(h.bu(0, 5)), 0.0)
    assert d.status == 132 and h.ba(d)[1].status == 132
    assert h.coa(0) == h.mn(0).care_of_address.packed


def test_status_133_deregistration_without_entry(backend):
    h = Home(backend, cfg=edited(care_of_address=None))
    d = h.send(h.bu(0, 5, lifetime=0))
    assert (d.status, d.deregistered) == (133, False)
    assert h.ba(d)[1].status == 133
    assert h.calls == []


def test_status_139_and_discard_without_h(backend):
    h = Home(backend)
    d = h.send(h.bu(0, 5, flags="A"))                 # MN1 has a (static) home registration
    assert d.status == 139 and h.ba(d)[1].status == 139
    assert h.cache.entry(h.hoa(0)).flags["H"]
    assert h.coa(0) == h.mn(0).care_of_address.packed
    h2 = Home(backend, cfg=edited(care_of_address=None))
    d = h2.send(h2.bu(0, 5, flags="A"))                # no entry: a correspondent BU
    assert (d.status, d.ba, d.action) == (None, None, "discarded")
    c = h2.cache.counters()
    assert (c["not_home_registration"], c["bu_rejected"]) == (1, 1)
    assert h2.coa(0) is None and h2.cache.entries(0) == []


def test_status_131_not_a_home_agent(backend):
    """A node that is not a home agent (here: the mobile node's own table)
    answers a home registration with 131 (RFC 6275 §10.3.1)."""
    h = Home(backend)
    mn = h.mn(0)
    msad = sad_from_config(h.cfg, backend, role="mobile-node",
                           home_address=str(mn.home_address))
    meng = Engine(msad, backend)
    bu = mh.build(mh.BindingUpdate(9, 100, ack=True, home=True), h.ha, h.hoa(0))
    b = Batch(1)
    b.load([h.engine.seal_mobility(h.hoa(0), bu, mn.care_of_address.packed)])
    meng.decap(b)
    assert b.results()[0][0] == Verdict.BINDING
    [(_, vb)] = meng.take_bindings()
    d = BindingCache(msad, h.cfg).process(vb, 0.0)
    assert (d.status, d.ba.status, d.ba.sequence) == (131, 131, 9)
    assert msad.care_of_address(h.hoa(0)) == mn.care_of_address.packed


class FaultySad:
    """The real SA table with injected failures, logging calls in order."""

    def __init__(self, sad, owner=None, move_error=None, grace=True):
        self.sad, self.owner, self.move_error, self.grace = sad, owner, move_error, grace
        self.log = []

    def __getattr__(self, name):
        return getattr(self.sad, name)

    def move(self, vb, coa):
        self.log.append(("move", coa))
        if self.move_error:
            raise self.move_error
        self.sad.move(vb, coa)

    def deregister(self, vb):
        self.log.append(("deregister",))
        self.sad.deregister(vb)

    def wait_grace(self, timeout=1.0):
        ok = self.sad.wait_grace(timeout) and self.grace
        self.log.append(("grace", ok, self.sad.care_of_address(self.owner)))
        return ok


@pytest.mark.parametrize("error, status", [(RuntimeError("injected"), 128),
                                           (MemoryError(), 130)])
def test_status_128_and_130_when_applying_fails(backend, error, status):
    h = Home(backend)
    faulty = FaultySad(h.sad, owner=h.hoa(0), move_error=error)
    cache = BindingCache(faulty, h.cfg)
    d = cache.process(h.verify(h.bu(0, 5)), 0.0)
    assert (d.status, d.moved) == (status, False)
    assert h.ba(d)[1].status == status
    assert h.coa(0) == h.mn(0).care_of_address.packed
    assert cache.entry(h.hoa(0)).last_sequence is None      # not recorded


# ---------------------------------------------------------------- grace period

def test_ba_only_after_grace(backend):
    h = Home(backend)
    faulty = FaultySad(h.sad, owner=h.hoa(0))
    cache = BindingCache(faulty, h.cfg)
    d = cache.process(h.verify(h.bu(0, 5)), 0.0)
    # the move was published, then the grace period passed, then the BA
    assert faulty.log == [("move", ip(NEW)), ("grace", True, ip(NEW))]
    assert d.ba is not None and h.ba(d)[1].status == 0
    # a grace period that times out withholds the BA; the binding stands
    faulty.grace = False
    d = cache.process(h.verify(h.bu(0, 6, src=NEW2)), 0.0)
    assert (d.action, d.ba, d.status, h.coa(0)) == ("grace_timeout", None, 0, ip(NEW2))
    assert cache.counters()["grace_timeouts"] == 1
    # deregistration waits for the grace period too
    faulty.grace = True
    faulty.log.clear()
    d = cache.process(h.verify(h.bu(0, 7, lifetime=0)), 0.0)
    assert faulty.log == [("deregister",), ("grace", True, None)] and d.ba.status == 0


def test_no_packet_to_old_coa_after_ba_with_live_worker(backend):
    """A second engine encapsulates to MN1 in a thread while BUs move it to a
    new CoA 30 times: a batch that starts after the BA of move k was
    released never goes to the CoA of a move before k."""
    h = Home(backend)
    worker = Engine(h.sad, backend)
    batch = [inner(CN, h.hoa(0), 100)] * 32
    coas = [ip(f"2001:db8:4::{k + 1:x}") for k in range(30)]
    stop = threading.Event()
    seen = []               # (batch number, outer destinations)
    started = [0]

    def run():
        b = Batch(len(batch))
        while not stop.is_set():
            n = started[0] = started[0] + 1
            b.load(batch)
            worker.encap(b)
            seen.append((n, {p[24:40] for v, _, p in b.results() if v == Verdict.TO_WIRE}))

    t = threading.Thread(target=run)
    t.start()
    try:
        released = []       # batch counter when the BA of move k was released
        for k, coa in enumerate(coas):
            target = started[0] + 2             # let the worker run between moves
            while started[0] < target and t.is_alive():
                time.sleep(0.0001)
            d = h.send(h.bu(0, k + 1, src=ntop(coa)))
            assert d.ba is not None and d.ba.status == 0
            released.append(started[0])
    finally:
        stop.set()
        t.join()
    assert len(seen) >= 60
    index = {coa: k for k, coa in enumerate(coas)}
    for n, dests in seen:
        acked = [k for k, m in enumerate(released) if n > m]
        if acked:
            assert all(index[c] >= acked[-1] for c in dests), (n, acked[-1], dests)


# ---------------------------------------------------------------- deregistration, expiry

@pytest.mark.parametrize("how", ["lifetime0", "coa_is_hoa"])
def test_deregistration_stops_encap(backend, how):
    h = Home(backend)
    hoa = h.hoa(0)
    h.send(h.bu(0, 10), now=0.0)
    if how == "lifetime0":
        pkt = h.bu(0, 11, lifetime=0, src=NEW2)
    else:
        pkt = h.bu(0, 11, lifetime=100, src=NEW2, alt=ntop(hoa))
    d = h.send(pkt, now=5.0)
    assert (d.status, d.action, d.deregistered, d.lifetime) == (0, "deregistered", True, 0)
    assert h.coa(0) is None
    assert h.encap_to(0) == Reason.NO_BINDING
    assert h.calls[-1] == ("unbind", hoa)
    outer, ba = h.ba(d)
    assert outer.dst == NEW2 and (ba.status, ba.seq, ba.mhtime) == (0, 11, 0)
    e = h.cache.entry(hoa)
    assert (e.state, e.last_sequence, e.purge_at) == ("deregistered", 11, 5.0 + HOLD_SECONDS)
    # held invalid: a late BU is sequence checked, a repeated deregistration answered 0
    d = h.send(h.bu(0, 10), now=6.0)
    assert d.status == 135 and h.ba(d)[1].seq == 11 and h.coa(0) is None
    d = h.send(h.bu(0, 12, lifetime=0), now=7.0)
    assert (d.status, d.deregistered) == (0, False) and h.ba(d)[1].status == 0
    assert h.cache.next_expiry() == 5.0 + HOLD_SECONDS
    assert h.cache.expire_due(5.0 + HOLD_SECONDS) == []       # purged, not expired
    assert h.cache.entry(hoa) is None
    d = h.send(h.bu(0, 13, lifetime=0), now=20.0)
    assert d.status == 133
    # and a new registration starts interception again
    d = h.send(h.bu(0, 3), now=21.0)                  # no entry: any sequence number
    assert (d.status, d.action) == (0, "registered") and h.calls[-1] == ("bind", hoa)
    c = h.cache.counters()
    assert (c["deregistrations"], c["by_status"]) == (1, {0: 4, 133: 1, 135: 1})


def test_deregistration_from_the_home_link(backend):
    """RFC 6275 §11.5.4: back on its home link, the mobile node sends its
    deregistration from the home address itself, without a Home Address
    option (RFC 3776 §4.1: the binding SA's selector is the home address
    either way). The BU is built and sealed by scapy; the binding goes, and
    the Binding Ack goes straight to the home address, without a Type 2
    Routing Header (RFC 6275 §9.5.4), sealed on the binding-out SA and
    opened by scapy. The same BU from any other source is a policy drop."""
    h = Home(backend)
    hoa, ha = h.hoa(0), ntop(h.ha)
    h.send(h.bu(0, 10), now=0.0)
    assert h.coa(0) == ip(NEW)
    sa = h.mn(0).sa("binding", "in")

    def home_bu(src, seq, esp_seq):
        pkt = IPv6(bytes(IPv6(src=src, dst=ha) / MIP6MH_BU(seq=seq, flags="AH", mhtime=0)))
        return bytes(scapy_sa(sa).encrypt(pkt, seq_num=esp_seq))

    res = h.decap([home_bu(NEW2, 11, 20)])          # no HAO, not from the HoA
    assert res[0][:2] == (Verdict.DROP, Reason.POLICY) and h.engine.take_bindings() == []
    d = h.send(home_bu(ntop(hoa), 11, 21), now=5.0)
    assert (d.status, d.deregistered, d.destination) == (0, True, hoa)
    assert h.coa(0) is None and h.calls[-1] == ("unbind", hoa)
    wire = build_ba_packet(h.engine, d)
    outer = IPv6(wire)
    assert (outer.src, outer.dst, outer.nh) == (ha, ntop(hoa), 50)
    assert IPv6ExtHdrRouting not in outer
    plain = IPv6(bytes(scapy_sa(h.mn(0).sa("binding", "out")).decrypt(outer)))
    ba = plain[MIP6MH_BA]
    assert (ba.status, ba.seq, ba.mhtime) == (0, 11, 0)
    assert mh.parse(bytes(ba), h.ha, hoa) == d.ba                 # checksum HA -> HoA


def test_expiry_with_injected_clock(backend):
    h = Home(backend)
    hoa, hoa2 = h.hoa(0), h.hoa(1)
    h.send(h.bu(0, 1, lifetime=2), now=1000.0)        # 8 s
    h.send(h.bu(1, 1, lifetime=5), now=1001.0)        # 20 s
    assert h.cache.next_expiry() == 1008.0
    assert h.cache.expire_due(1007.9) == []
    assert h.coa(0) == ip(NEW)
    # a refresh before expiry pushes the lifetime out
    h.send(h.bu(0, 2, lifetime=3), now=1007.0)        # until 1019
    assert h.cache.expire_due(1008.0) == [] and h.cache.next_expiry() == 1019.0
    assert h.cache.expire_due(1021.0) == [hoa, hoa2]          # in deadline order
    assert h.coa(0) is None and h.coa(1) is None
    assert h.encap_to(0) == Reason.NO_BINDING and h.encap_to(1) == Reason.NO_BINDING
    assert [c for c in h.calls if c[0] == "unbind"] == [("unbind", hoa), ("unbind", hoa2)]
    rows = {r["home_address"]: r for r in h.cache.entries(1022.0)}
    assert rows[ntop(hoa)]["state"] == "expired" and rows[ntop(hoa)]["care_of_address"] is None
    d = h.send(h.bu(0, 2), now=1022.0)                 # held: still sequence checked
    assert d.status == 135
    assert h.cache.counters()["expiries"] == 2
    h.cache.expire_due(1040.0)
    assert h.cache.entries(1040.0) == [] and h.cache.next_expiry() is None


def test_expiry_due_before_timer_runs(backend):
    """A BU arriving after the lifetime ran out but before the timer fired
    finds the binding expired (on_unbind, then on_bind again)."""
    h = Home(backend)
    hoa = h.hoa(0)
    h.send(h.bu(0, 1, lifetime=1), now=0.0)
    d = h.send(h.bu(0, 2), now=5.0)
    assert (d.status, d.action) == (0, "registered")
    assert h.calls[-2:] == [("unbind", hoa), ("bind", hoa)]
    assert h.cache.expire_due(10.0) == []


# ---------------------------------------------------------------- never reaches the cache

def test_hostile_bus_never_reach_the_cache(backend):
    h = Home(backend)
    static = h.coa(0)
    ok = h.bu(0, 5, src=NEW)
    # in the clear: PUNT; the cache counts it as a rejected BU
    clear = h.bu(0, 6, src=NEW2, clear=True)
    bad_icv = bytearray(h.bu(0, 7, src=NEW2))
    bad_icv[-1] ^= 1
    other_hao = h.bu(0, 8, src=NEW2, hao=str(h.mn(1).home_address))   # MN1's SA, MN2's HoA
    res = h.decap([clear, bytes(bad_icv), other_hao])
    assert [r[:2] for r in res] == [(Verdict.PUNT, Reason.NONE), (Verdict.DROP, Reason.ICV),
                                    (Verdict.DROP, Reason.POLICY)]
    assert h.engine.take_bindings() == []
    assert h.coa(0) == static and h.coa(1) == h.mn(1).care_of_address.packed
    d = h.cache.unprotected(res[0][2], now=0.0)
    assert (d.action, d.ba, d.home_address) == ("discarded", None, h.hoa(0))
    assert h.cache.unprotected(inner(CN, h.ha, 60)) is None          # not a BU
    assert h.cache.unprotected(h.bu(0, 9, clear=True, mh_layer=MIP6MH_BRR())) is None
    # replayed: the same ESP sequence number again is dropped by the engine
    d = h.send(ok)
    assert d.status == 0 and h.coa(0) == ip(NEW)
    h.send(h.bu(0, 6, src=NEW2))
    assert h.coa(0) == ip(NEW2)
    assert h.decap([ok])[0][:2] == (Verdict.DROP, Reason.REPLAY)
    assert h.engine.take_bindings() == [] and h.coa(0) == ip(NEW2)
    c = h.cache.counters()
    assert (c["unprotected"], c["bu_rejected"], c["bu_accepted"]) == (1, 1, 2)


# ---------------------------------------------------------------- malformed and other MH

def raw_mh(h, i, body: bytes, src=None) -> bytes:
    """A Mobility Header from raw bytes, checksummed HoA -> HA, sealed as a BU,
    from `src` (default: the node's registered care-of address)."""
    cks = mh.checksum(body, h.hoa(i), h.ha)
    body = body[:4] + cks.to_bytes(2, "big") + body[6:]
    src = src or ntop(h.coa(i))
    pkt = IPv6(bytes(IPv6(src=src, dst=ntop(h.ha))
                     / IPv6ExtHdrDestOpt(nh=135, options=[HAO(hoa=ntop(h.hoa(i)))])
                     / Raw(body)))
    sa = h.mn(i).sa("binding", "in")
    h.esp_seq[sa.spi] += 1
    return bytes(scapy_sa(sa).encrypt(pkt, seq_num=h.esp_seq[sa.spi]))


def test_malformed_and_other_mobility_headers(backend):
    h = Home(backend)
    static = h.coa(0)
    good = mh.build(mh.BindingUpdate(5, 100, ack=True, home=True), h.hoa(0), h.ha)
    # bad checksum: build the BU checksummed for the wrong source
    wrong = mh.build(mh.BindingUpdate(5, 100, ack=True, home=True), h.hoa(1), h.ha)
    pkt = IPv6(bytes(IPv6(src=NEW, dst=ntop(h.ha))
                     / IPv6ExtHdrDestOpt(nh=135, options=[HAO(hoa=ntop(h.hoa(0)))])
                     / Raw(wrong)))
    sa = h.mn(0).sa("binding", "in")
    d = h.send(bytes(scapy_sa(sa).encrypt(pkt, seq_num=50)))
    assert (d.action, d.error, d.ba) == ("malformed", None, None)
    # Payload Proto not 59: Parameter Problem pointing at it
    pp = bytes([6]) + good[1:]
    vb = h.verify(raw_mh(h, 0, pp))
    d = h.cache.process(vb, 0.0)
    assert (d.action, d.ba, d.error.kind, d.error.code) == ("malformed", None, "param_problem", 0)
    assert d.error.pointer == vb.mh_offset and vb.packet[d.error.pointer] == 6
    assert d.error.destination == h.coa(0)
    # unknown MH type: Binding Error status 2 naming the home address
    unk = good[:2] + bytes([200]) + good[3:]
    d = h.send(raw_mh(h, 0, unk))
    assert (d.error.kind, d.error.status, d.error.home_address) == \
        ("binding_error", 2, h.hoa(0))
    # ... but status 1 from a care-of address the home address is not bound
    # to (RFC 6275 §9.3.1: only a BU is exempt; destination options first)
    d = h.send(raw_mh(h, 0, unk, src=NEW))
    assert (d.action, d.error.kind, d.error.status, d.error.home_address,
            d.error.destination) == ("ignored", "binding_error", 1, h.hoa(0), ip(NEW))
    # a Mobility Header that is not a BU (here a Binding Refresh Request) is
    # ignored; from elsewhere than the registered CoA it gets status 1 too
    d = h.send(h.bu(0, 0, src=ntop(static), mh_layer=MIP6MH_BRR()))
    assert (d.action, d.ba, d.error) == ("ignored", None, None)
    d = h.send(h.bu(0, 0, mh_layer=MIP6MH_BRR()))
    assert (d.action, d.ba, d.error.status) == ("ignored", None, 1)
    assert h.coa(0) == static
    c = h.cache.counters()
    assert c["malformed"] == 3 and c["not_binding_update"] == 1 and c["unknown_binding"] == 2
    assert c["malformed_by_action"] == {"discard": 1, "param_problem": 1, "binding_error": 1}


def _control_plane(h, wire_fd, monkeypatch):
    """The control thread's Binding Error path over `h`, writing to
    `wire_fd`, on a clock the test moves (returned: a one-element list)."""
    from collections import Counter
    from types import MethodType, SimpleNamespace

    from fastpath import control
    clock = [100.0]
    monkeypatch.setattr(control, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    fwd = SimpleNamespace(cfg=h.cfg, wire_fd=wire_fd)
    cp = SimpleNamespace(fwd=fwd, events=Counter(), bindings=h.cache, _be_buckets={})
    for name in ("_write", "_send_error", "_binding_error_token", "_write_binding_error",
                 "_unbound_hao", "_finish_decisions"):
        setattr(cp, name, MethodType(getattr(control.ControlPlane, name), cp))
    return cp, clock


def _received(sock, n):
    sock.setblocking(False)
    got = [sock.recv(4096) for _ in range(n)]
    try:
        extra = sock.recv(4096)
    except BlockingIOError:
        return got
    raise AssertionError(f"more than {n} packets written: {extra!r}")


def test_binding_errors_to_unanswerable_sources_spend_no_token(backend, monkeypatch):
    """RFC 6275 §9.3.3: a source that is not a unicast address gets no
    Binding Error, and costs no token. On a clock that does not move, a
    bucket's worth of refusals in each bucket (authenticated messages,
    unauthenticated packets) leaves both buckets full."""
    import socket

    from scapy.layers.inet6 import ICMPv6EchoRequest, MIP6MH_BE

    from fastpath import control
    h = Home(backend)
    good = mh.build(mh.BindingUpdate(5, 100, ack=True, home=True), h.hoa(0), h.ha)
    unk = good[:2] + bytes([200]) + good[3:]
    n = int(control.BINDING_ERRORS_PER_S)

    def echo(src):                        # an unbound Home Address option
        return bytes(IPv6(src=src, dst=ntop(h.ha))
                     / IPv6ExtHdrDestOpt(options=[HAO(hoa=ntop(h.hoa(1)))]) / ICMPv6EchoRequest())

    us, them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        cp, clock = _control_plane(h, us.fileno(), monkeypatch)
        for src in ("ff02::1", "::", ntop(h.ha)) * n:
            cp._finish_decisions([h.send(raw_mh(h, 0, unk, src=src))])
            cp._unbound_hao(echo(src))
        _received(them, 0)
        assert cp.events["binding.error_bad_source"] == 6 * n
        assert cp.events["binding.error_rate_limited"] == 0
        for _ in range(n):
            cp._finish_decisions([h.send(raw_mh(h, 0, unk))])
            cp._unbound_hao(echo(NEW))
        sent = [IPv6(p) for p in _received(them, 2 * n)]
        assert sorted(p[MIP6MH_BE].status for p in sent) == [1] * n + [2] * n
        assert cp.events["binding.error_rate_limited"] == 0
        with pytest.raises(ValueError):
            cp._binding_error_token(h.coa(0), "authenticated ")   # no third bucket
    finally:
        us.close()
        them.close()


def test_binding_error_bucket_refills_by_time_elapsed(monkeypatch):
    """A refused token request still moves the bucket's clock: refills add
    up to the time elapsed, never more (a refusal that kept the old time
    would refill the same interval twice)."""
    from fastpath import control
    h = Home("openssl")
    cp, clock = _control_plane(h, -1, monkeypatch)
    rate = control.BINDING_ERRORS_PER_S
    take = lambda: cp._binding_error_token(h.coa(0), control.BE_AUTHENTICATED)   # noqa: E731
    assert [take() for _ in range(int(rate) + 1)] == [True] * int(rate) + [False]
    clock[0] += 0.6 / rate               # 0.6 of a token
    assert not take()
    clock[0] += 0.3 / rate               # 0.9
    assert not take()
    clock[0] += 0.3 / rate               # 1.2
    assert take() and not take()
    assert cp.events["binding.error_rate_limited"] == 4


def test_empty_binding_error_bucket_is_looked_at_first(monkeypatch):
    """While a bucket is empty nothing else is done: not even the source
    address is examined (counted as rate-limited, not as a bad source)."""
    from fastpath import control
    h = Home("openssl")
    cp, _clock = _control_plane(h, -1, monkeypatch)
    for _ in range(int(control.BINDING_ERRORS_PER_S)):
        assert cp._binding_error_token(h.coa(0), control.BE_AUTHENTICATED)
    looked = []
    real = control.reply_problem
    monkeypatch.setattr(control, "reply_problem", lambda *a: looked.append(a) or real(*a))
    assert not cp._binding_error_token(ipaddress.IPv6Address("ff02::1").packed,
                                       control.BE_AUTHENTICATED)
    assert looked == []
    assert (cp.events["binding.error_rate_limited"], cp.events["binding.error_bad_source"]) == (1, 0)


def test_binding_errors_go_out_rate_limited_and_parameter_problems_do_not(backend, monkeypatch):
    """RFC 6275 §9.2, §9.3.3 through the control thread: an authenticated
    Mobility Header of an unknown type is answered with a Binding Error
    (status 2) in the clear, from the HA to the packet's source, naming the
    home address of its HAO, checksummed as scapy computes it; at most
    BINDING_ERRORS_PER_S of them at once, then one per 1/BINDING_ERRORS_PER_S
    s; the Parameter Problem for a bad Payload Proto is not sent (it would
    carry the decrypted message); nor is a Binding Error to a source that is
    not a unicast address (from there the message gets status 1 first - its
    HAO names no binding to that source - and that is not sent either)."""
    import socket

    from scapy.layers.inet6 import MIP6MH_BE

    from fastpath import control
    h = Home(backend)
    good = mh.build(mh.BindingUpdate(5, 100, ack=True, home=True), h.hoa(0), h.ha)
    unk = good[:2] + bytes([200]) + good[3:]
    pp = bytes([6]) + good[1:]
    us, them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)   # a TUN: packets
    try:
        cp, clock = _control_plane(h, us.fileno(), monkeypatch)
        n = int(control.BINDING_ERRORS_PER_S)
        cp._finish_decisions([h.send(raw_mh(h, 0, unk)) for _ in range(n + 3)]
                             + [h.send(raw_mh(h, 0, pp))])
        sent = _received(them, n)
        assert (cp.events["binding.error_sent"], cp.events["binding.error_rate_limited"],
                cp.events["binding.param_problem_not_sent"]) == (n, 3, 1)
        clock[0] += 1.5 / control.BINDING_ERRORS_PER_S       # one token and a half back
        cp._finish_decisions([h.send(raw_mh(h, 0, unk)), h.send(raw_mh(h, 0, unk))])
        sent += _received(them, 1)
        assert cp.events["binding.error_rate_limited"] == 4
        clock[0] += 10.0
        for src in ("ff02::1", "::", ntop(h.ha)):             # nobody to answer
            cp._finish_decisions([h.send(raw_mh(h, 0, unk, src=src))])
        _received(them, 0)
        assert cp.events["binding.error_bad_source"] == 3
    finally:
        us.close()
        them.close()
    for raw in sent:
        p = IPv6(raw)
        assert (p.src, p.dst, p.nh, p.plen) == (ntop(h.ha), ntop(h.coa(0)), 135, 24)
        be = p[MIP6MH_BE]
        assert (be.nh, be.len, be.mhtype, be.status, be.ha) == (59, 2, 7, 2, ntop(h.hoa(0)))
        again = IPv6(raw)
        del again[MIP6MH_BE].cksum
        assert IPv6(bytes(again))[MIP6MH_BE].cksum == be.cksum


def test_a_home_address_option_without_its_binding_gets_a_binding_error(backend, monkeypatch):
    """RFC 6275 §9.3.1: a packet with a Home Address option whose home
    address is not bound to the packet's source - here an echo request to
    the HA, and a payload packet in ESP tunnel mode, which should carry no
    HAO at all - is not processed: both engines punt it noted NO_BINDING,
    and the control thread answers with a Binding Error, status 1, naming
    that home address (scapy dissects it). From the registered care-of
    address the option passes; on a Binding Update it is not checked (the
    BU is what makes the binding)."""
    import socket

    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrFragment, MIP6MH_BE

    from fastpath.ref.engine import RefEngine
    h = Home(backend)
    hoa, coa = str(h.mn(0).home_address), str(h.mn(0).care_of_address)
    echo = {src: bytes(IPv6(src=src, dst=ntop(h.ha))
                       / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)]) / ICMPv6EchoRequest(id=src == coa))
            for src in (NEW, coa)}
    payload = h.mn(0).sa("payload", "in")
    inner = IPv6(src=hoa, dst="2001:db8:99::1") / ICMPv6EchoRequest()
    tunnel = bytes(IPv6(src=NEW, dst=ntop(h.ha)) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
                   / scapy_sa(payload).encrypt(inner, seq_num=1)[ESP])
    # a BU's fragment from a new CoA, the HAO before the Fragment header:
    # checked once reassembled, like the BU itself
    frag = bytes(IPv6(src=NEW2, dst=ntop(h.ha)) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
                 / IPv6ExtHdrFragment(id=1, m=1, nh=50) / Raw(bytes(64)))
    pkts = [echo[NEW], echo[coa], tunnel, h.bu(0, 9, src=NEW2), frag]
    got = [r[:2] for r in h.decap(pkts)]
    assert got == [(Verdict.PUNT, Reason.NO_BINDING), (Verdict.PUNT, Reason.NONE),
                   (Verdict.PUNT, Reason.NO_BINDING), (Verdict.BINDING, Reason.NONE),
                   (Verdict.PUNT, Reason.NONE)]
    h.engine.take_bindings()
    ref = RefEngine(h.ha, 1500)
    ref.add_mobile_node(h.hoa(0), ip(coa))
    for purpose in ("binding", "payload"):
        sa = h.mn(0).sa(purpose, "in")
        ref.add_sa(purpose, "in", sa.spi, sa.algorithm, sa.enc_key, sa.auth_key, sa.salt,
                   esn=sa.esn, replay_window=sa.replay_window, hoa=h.hoa(0))
    assert [r[:2] for r in ref.decap(pkts)] == got
    us, them = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        cp, clock = _control_plane(h, us.fileno(), monkeypatch)
        cp._unbound_hao(echo[NEW])
        cp._unbound_hao(tunnel)
        [a, b] = _received(them, 2)
    finally:
        us.close()
        them.close()
    assert cp.events["hao.unknown_binding"] == 2
    for raw in (a, b):
        p = IPv6(raw)
        assert (p.src, p.dst, p.nh) == (ntop(h.ha), NEW, 135)
        be = p[MIP6MH_BE]
        assert (be.mhtype, be.status, be.ha) == (7, 1, hoa)


def test_replay_writes_binding_errors_in_place(backend, tmp_path):
    """fastpath replay: a Binding Error takes the place of an authenticated
    Mobility Header of an unknown type (status 2) and of a packet whose Home
    Address option names no binding (status 1); none goes to a multicast
    source; the report counts all three."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, MIP6MH_BE

    from fastpath import pcap
    from fastpath.replay import format_report, replay
    h = Home(backend)
    good = mh.build(mh.BindingUpdate(5, 100, ack=True, home=True), h.hoa(0), h.ha)
    unk = good[:2] + bytes([200]) + good[3:]
    hoa = str(h.mn(0).home_address)
    echo = bytes(IPv6(src=NEW2, dst=ntop(h.ha)) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
                 / ICMPv6EchoRequest())
    inp, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with pcap.PcapWriter(inp) as w:
        w.write(raw_mh(h, 0, unk), 1.0)
        w.write(echo, 2.0)
        w.write(raw_mh(h, 0, unk, src="ff02::1"), 3.0)
    res, sad = replay(h.cfg, inp, out, backend)
    got = [(ts, IPv6(pkt)) for ts, pkt in pcap.read_packets(out)]
    assert [(ts, p.src, p.dst, p[MIP6MH_BE].status, p[MIP6MH_BE].ha) for ts, p in got] == [
        (1.0, ntop(h.ha), ntop(h.coa(0)), 2, hoa), (2.0, ntop(h.ha), NEW2, 1, hoa)]
    assert (res.binding_errors, res.binding_errors_not_sent,
            res.unbound_home_address_options) == (2, 1, 1)
    assert ("binding errors written: 2 (malformed Mobility Headers, Home Address options "
            "without a binding: 1); not written, the source not a unicast address: 1"
            in format_report(res, sad))


def test_callback_errors_do_not_undo_bindings(backend):
    def boom(hoa):
        raise OSError("netlink says no")
    cfg = edited(care_of_address=None)
    h = Home(backend, cfg=cfg)
    h.cache.on_bind = boom
    d = h.send(h.bu(0, 1))
    assert d.status == 0 and h.coa(0) == ip(NEW)
    assert h.cache.counters()["callback_errors"] == 1


def test_deferred_grace_waits_once_for_a_burst():
    """defer_grace (the control loop's mode): BAs are prepared, then one
    wait_grace() releases them all - or withholds them all on a timeout."""
    from fastpath.binding import BindingCache

    class CountingSAD:
        def __init__(self, sad, ok):
            self._sad, self.ok, self.waits = sad, ok, 0

        def wait_grace(self, timeout):
            self.waits += 1
            return self.ok

        def __getattr__(self, name):
            return getattr(self._sad, name)

    cfg = load(REPO_EXAMPLES / "ha.toml")
    for ok in (True, False):
        sad = sad_from_config(cfg, "openssl")
        counting = CountingSAD(sad, ok)
        cache = BindingCache(counting, cfg)
        cache.defer_grace = True
        engine = Engine(sad, "openssl")
        mn = cfg.mobile_nodes[0]
        hoa, ha = mn.home_address.packed, cfg.home_agent.address.packed
        bsa = mn.sa("binding", "in")
        from fastpath.ref.esp import RefSA
        from fastpath.ref.ipv6 import hao_destopt, ipv6_header
        ref = RefSA(bsa.spi, bsa.algorithm, bsa.enc_key, bsa.auth_key, bsa.salt, bsa.esn, 0)
        decisions = []
        for k, last in enumerate((0x41, 0x42, 0x43)):
            coa = bytes.fromhex("20010db800050000000000000000") + bytes([0, last])
            body = mh.build(mh.BindingUpdate(sequence=k + 1, lifetime=10, ack=True, home=True), hoa, ha)
            esp = hao_destopt(hoa, 50) + ref.seal(k + 1, body, 135, bytes(16))
            b = Batch(1)
            b.load([ipv6_header(coa, ha, 60, len(esp)) + esp])
            engine.decap(b)
            [(slot, vb)] = engine.take_bindings()
            decisions.append(cache.process(vb, 1.0))
        assert counting.waits == 0 and all(d.grace_pending for d in decisions)
        assert cache.finish_grace(decisions) is ok and counting.waits == 1
        assert all((d.ba is not None) == ok for d in decisions)
        assert cache.counters()["grace_timeouts"] == (0 if ok else 3)
