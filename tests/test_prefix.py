"""Mobile Prefix Discovery (fastpath.prefix; RFC 6275 §6.7-§6.8, §10.6.2,
RFC 3776 §3.3): a Mobile Prefix Solicitation built by scapy and sealed by
scapy's ESP in transport mode on the node's prefix-discovery SA goes through
the engine (every backend) and is answered with a Mobile Prefix
Advertisement that scapy opens, checksums and dissects. The reference path
agrees on every verdict."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet6 import (HAO, ICMPv6EchoRequest, ICMPv6MPAdv, ICMPv6MPSol,
                                ICMPv6NDOptPrefixInfo, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrRouting, MIP6MH_BU)
from scapy.layers.ipsec import ESP

from fastpath import prefix
from fastpath.config import parse
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.tables import sad_from_config
from fastpath.verdicts import Reason, Verdict

from test_binding import CFG, NEW, ntop, scapy_sa
from topo import BACKENDS

COA = "2001:db8:2::10"      # the first mobile node's care_of_address in examples/ha.toml

PD_SAS = '''
  [[mobile_node.sa]]
  purpose = "prefix-discovery"
  direction = "in"
  spi = 0x1010
  algorithm = "aes128gcm16"
  key = "0x7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a"

  [[mobile_node.sa]]
  purpose = "prefix-discovery"
  direction = "out"
  spi = 0x1011
  algorithm = "aes128-sha256"
  enc_key = "0x8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a"
  auth_key = "0x8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b"
'''


def config():
    """examples/ha.toml with prefix-discovery SAs for its first mobile node."""
    text = CFG.read_text()
    anchor = '  auth_key = "0x2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b"\n'
    assert text.count(anchor) == 1
    text = text.replace(anchor, anchor + PD_SAS).replace(
        "[home_agent]\n", "[home_agent]\nallow_manual_aead = true\n")
    return parse(text, "ha+pd.toml")


class Home:
    def __init__(self, backend):
        self.cfg = config()
        self.sad = sad_from_config(self.cfg, backend)
        self.engine = Engine(self.sad, backend)
        self.mn = self.cfg.mobile_nodes[0]
        self.hoa = self.mn.home_address.packed
        self.ha = self.cfg.home_agent.address
        self.seq = 0

    def sealed(self, upper, *, purpose="prefix-discovery", hao=True, src=COA):
        """IPv6(src -> HA) . DestOpt(HAO) . ESP(transport, the node's `purpose` in SA) . upper"""
        ext = IPv6ExtHdrDestOpt(options=[HAO(hoa=str(self.mn.home_address))]) if hao else None
        pkt = IPv6(src=src, dst=str(self.ha))
        pkt = IPv6(bytes(pkt / ext / upper if ext is not None else pkt / upper))
        self.seq += 1
        return bytes(scapy_sa(self.mn.sa(purpose, "in")).encrypt(pkt, seq_num=self.seq))

    def decap(self, pkts):
        b = Batch(len(pkts))
        b.load(pkts)
        self.engine.decap(b)
        return [r[:2] for r in b.results()], self.engine.take_bindings()


@pytest.mark.parametrize("backend", BACKENDS)
def test_solicitation_answered_with_the_home_prefix(backend):
    h = Home(backend)
    got, vbs = h.decap([h.sealed(ICMPv6MPSol(id=0x4242))])
    assert got == [(Verdict.BINDING, Reason.NONE)]
    [(_, vb)] = vbs
    assert vb.purpose == "prefix-discovery" and vb.home_address == h.hoa
    with pytest.raises(ValueError, match="only a Binding Update"):
        h.sad.move(vb, ipaddress.IPv6Address(NEW).packed)
    wire = prefix.answer(h.engine, vb, h.cfg.home_agent.home_prefix, h.ha.packed)
    outer = IPv6(wire)
    assert (outer.src, outer.dst, outer.nh) == (str(h.ha), COA, 43)
    rh = outer[IPv6ExtHdrRouting]
    assert (rh.type, rh.segleft, rh.addresses, rh.nh) == (2, 1, [ntop(h.hoa)], 50)
    assert outer[ESP].spi == 0x1011
    plain = IPv6(bytes(scapy_sa(h.mn.sa("prefix-discovery", "out")).decrypt(outer)))
    mpa = plain[ICMPv6MPAdv]
    again = IPv6(bytes(plain))
    del again[ICMPv6MPAdv].cksum          # scapy recomputes it: HA -> HoA (the RH2's)
    assert IPv6(bytes(again))[ICMPv6MPAdv].cksum == mpa.cksum
    assert (mpa.code, mpa.id, mpa.flags) == (0, 0x4242, 0)
    pio = mpa[ICMPv6NDOptPrefixInfo]
    assert (pio.prefix, pio.prefixlen, pio.L, pio.A) == ("2001:db8:1::", 64, 1, 1)
    assert (pio.validlifetime, pio.preferredlifetime) == (prefix.VALID_LIFETIME,
                                                          prefix.PREFERRED_LIFETIME)
    assert h.sad.care_of_address(h.hoa) == ipaddress.IPv6Address("2001:db8:2::10").packed


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_prefix_discovery_sa_carries_solicitations_only(backend):
    """RFC 3776 §3.3: a BU or an echo request on the prefix-discovery SA is
    a policy drop (the BU moves nothing); a solicitation on the binding SA
    is malformed there (not a Mobility Header); a malformed solicitation
    that the engine passes is not answered. Without a HAO only the home
    address itself may send (the home link: the answer has no RH2)."""
    h = Home(backend)
    bu = MIP6MH_BU(seq=1, flags="AH", mhtime=100)
    got, vbs = h.decap([h.sealed(bu), h.sealed(ICMPv6EchoRequest()),
                        h.sealed(ICMPv6MPSol(), purpose="binding"),
                        h.sealed(ICMPv6MPSol(), hao=False)])
    assert got == [(Verdict.DROP, Reason.POLICY), (Verdict.DROP, Reason.POLICY),
                   (Verdict.DROP, Reason.MALFORMED), (Verdict.DROP, Reason.POLICY)]
    assert vbs == []
    bad = IPv6(bytes(IPv6(src=COA, dst=str(h.ha))
                     / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(h.mn.home_address))])
                     / ICMPv6MPSol()))
    bad[ICMPv6MPSol].cksum ^= 1
    h.seq += 1
    wire = bytes(scapy_sa(h.mn.sa("prefix-discovery", "in")).encrypt(bad, seq_num=h.seq))
    home = h.sealed(ICMPv6MPSol(id=7), hao=False, src=str(h.mn.home_address))
    got, vbs = h.decap([wire, home])
    assert got == [(Verdict.BINDING, Reason.NONE)] * 2
    with pytest.raises(prefix.PrefixError, match="checksum"):
        prefix.answer(h.engine, vbs[0][1], h.cfg.home_agent.home_prefix, h.ha.packed)
    outer = IPv6(prefix.answer(h.engine, vbs[1][1], h.cfg.home_agent.home_prefix,
                               h.ha.packed))
    assert (outer.dst, outer.nh) == (str(h.mn.home_address), 50)
    plain = IPv6(bytes(scapy_sa(h.mn.sa("prefix-discovery", "out")).decrypt(outer)))
    assert plain[ICMPv6MPAdv].id == 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_solicitations_that_are_not_answered(backend):
    """A solicitation shorter than 8 bytes is not answered. One from a
    care-of address the home address is not bound to - a multicast one
    included, which no binding can have - never reaches prefix.answer: its
    Home Address option names no binding (RFC 6275 §9.3.1), so the engine
    punts it for a Binding Error. prefix.answer refuses a source that is not
    a unicast address other than the home agent's all the same (BadSource)."""
    from types import SimpleNamespace
    h = Home(backend)
    mps = bytes(IPv6(src=COA, dst=str(h.ha))
                / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(h.mn.home_address))])
                / ICMPv6MPSol())
    short = IPv6(mps[:-4])                       # 4 bytes of ICMPv6
    short.plen = len(mps) - 44
    h.seq += 1
    short = bytes(scapy_sa(h.mn.sa("prefix-discovery", "in")).encrypt(short, seq_num=h.seq))
    multicast = bytearray(h.sealed(ICMPv6MPSol(id=4)))
    multicast[8:24] = ipaddress.IPv6Address("ff02::1").packed   # not covered by the ICV
    got, vbs = h.decap([short, h.sealed(ICMPv6MPSol(id=3), src="2001:db8:4::40"),
                        bytes(multicast), h.sealed(ICMPv6MPSol(id=5))])
    assert got == [(Verdict.BINDING, Reason.NONE), (Verdict.PUNT, Reason.NO_BINDING),
                   (Verdict.PUNT, Reason.NO_BINDING), (Verdict.BINDING, Reason.NONE)]
    with pytest.raises(prefix.PrefixError, match="shorter"):
        prefix.answer(h.engine, vbs[0][1], h.cfg.home_agent.home_prefix, h.ha.packed)
    vb = vbs[1][1]
    for src, why in (("ff02::1", "multicast"), ("::", "unspecified"),
                     (str(h.ha), "our own address")):
        fake = SimpleNamespace(purpose=vb.purpose, packet=vb.packet, mh_offset=vb.mh_offset,
                               home_address=vb.home_address,
                               source=ipaddress.IPv6Address(src).packed)
        with pytest.raises(prefix.BadSource, match=why):
            prefix.answer(h.engine, fake, h.cfg.home_agent.home_prefix, h.ha.packed)


def test_reference_engine_agrees():
    """The pure-Python engine gives the same verdicts for the same packets."""
    from fastpath.ref.engine import RefEngine
    h = Home("openssl")
    ref = RefEngine(h.ha.packed, 1500)
    ref.add_mobile_node(h.hoa, ipaddress.IPv6Address("2001:db8:2::10").packed)
    for purpose in ("binding", "prefix-discovery"):
        sa = h.mn.sa(purpose, "in")
        ref.add_sa(purpose, "in", sa.spi, sa.algorithm, sa.enc_key, sa.auth_key, sa.salt,
                   esn=False, replay_window=64, hoa=h.hoa)
    pkts = [h.sealed(ICMPv6MPSol(id=1)), h.sealed(MIP6MH_BU(seq=1, flags="AH", mhtime=9)),
            h.sealed(ICMPv6EchoRequest()), h.sealed(ICMPv6MPSol(), purpose="binding")]
    got, _ = h.decap(pkts)
    assert [r[:2] for r in ref.decap(pkts)] == got == [
        (Verdict.BINDING, Reason.NONE), (Verdict.DROP, Reason.POLICY),
        (Verdict.DROP, Reason.POLICY), (Verdict.DROP, Reason.MALFORMED)]


def test_the_control_thread_writes_the_advertisement_to_the_wire():
    """ControlPlane routes a prefix-discovery VerifiedBinding away from the
    binding cache: the advertisement is written to the wire TUN (a pipe
    here) and counted; a node without a prefix-discovery out SA is counted,
    not answered."""
    import dataclasses
    import os
    from collections import Counter
    from types import MethodType, SimpleNamespace

    from fastpath import control
    h = Home("openssl")
    r, w = os.pipe()
    try:
        fwd = SimpleNamespace(cfg=h.cfg, control_engine=h.engine, wire_fd=w)
        cp = SimpleNamespace(fwd=fwd, events=Counter(), registration=None, bindings=None)
        for name in ("_write", "_prefix_solicitation"):
            setattr(cp, name, MethodType(getattr(control.ControlPlane, name), cp))
        _, [(_, vb)] = h.decap([h.sealed(ICMPv6MPSol(id=9))])
        assert control.ControlPlane._binding_update(cp, vb) is None
        outer = IPv6(os.read(r, 4096))
        plain = IPv6(bytes(scapy_sa(h.mn.sa("prefix-discovery", "out")).decrypt(outer)))
        assert plain[ICMPv6MPAdv].id == 9
        assert cp.events == Counter({"prefix.solicitations": 1,
                                     "prefix.advertisements_sent": 1})
        # the same node, its out SA gone from the table the engine seals with
        cfg = h.cfg
        mn = dataclasses.replace(h.mn, sas=tuple(s for s in h.mn.sas
                                                 if (s.purpose, s.direction)
                                                 != ("prefix-discovery", "out")))
        h2 = Home("openssl")
        h2.cfg = dataclasses.replace(cfg, mobile_nodes=(mn,) + cfg.mobile_nodes[1:])
        h2.sad = sad_from_config(h2.cfg, "openssl")
        h2.engine = Engine(h2.sad, "openssl")
        fwd.control_engine = h2.engine
        _, [(_, vb)] = h2.decap([h2.sealed(ICMPv6MPSol(id=10))])
        control.ControlPlane._binding_update(cp, vb)
        assert cp.events["prefix.no_out_sa"] == 1
    finally:
        os.close(r)
        os.close(w)


def test_replay_answers_a_solicitation_in_its_place(tmp_path):
    """fastpath replay: the advertisement takes the solicitation's place in
    the output, and the report counts it; a malformed one is counted as not
    answered."""
    from fastpath import pcap
    from fastpath.replay import format_report, replay
    h = Home("openssl")
    bad = IPv6(bytes(IPv6(src=COA, dst=str(h.ha))
                     / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(h.mn.home_address))])
                     / ICMPv6MPSol(code=1)))
    h.seq += 1
    bad = bytes(scapy_sa(h.mn.sa("prefix-discovery", "in")).encrypt(bad, seq_num=h.seq))
    inp, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with pcap.PcapWriter(inp) as w:
        w.write(h.sealed(ICMPv6MPSol(id=0x77)), 1.0)
        w.write(bad, 2.0)
    res, sad = replay(h.cfg, inp, out, "openssl")
    [(ts, pkt)] = list(pcap.read_packets(out))
    plain = IPv6(bytes(scapy_sa(h.mn.sa("prefix-discovery", "out")).decrypt(IPv6(pkt))))
    assert ts == 1.0 and plain[ICMPv6MPAdv].id == 0x77
    assert (res.prefix_advertisements, res.prefix_unanswered) == (1, 1)
    assert "mobile prefix solicitations answered: 1, not answered: 1" in format_report(res, sad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mobile_node_role_does_not_take_advertisements(backend):
    """The mobile-node role does no prefix discovery: the home agent's
    advertisement, authentic and on the node's prefix-discovery SA, is a
    policy drop there, and nothing reaches its control plane."""
    h = Home(backend)
    _, [(_, vb)] = h.decap([h.sealed(ICMPv6MPSol(id=11))])
    wire = prefix.answer(h.engine, vb, h.cfg.home_agent.home_prefix, h.ha.packed)
    mn_sad = sad_from_config(h.cfg, backend, role="mobile-node",
                             home_address=str(h.mn.home_address))
    mn = Engine(mn_sad, backend)
    b = Batch(1)
    b.load([wire])
    mn.decap(b)
    assert [r[:2] for r in b.results()] == [(Verdict.DROP, Reason.POLICY)]
    assert mn.take_bindings() == []
