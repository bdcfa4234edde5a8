"""The reference path against scapy's IPsec, and RefEngine against the
semantics doc (docs/engine-semantics.md), one rule at a time.

How scapy's SecurityAssociation maps to ours:
- GCM: scapy splits ``crypt_key`` into key ‖ 4-byte salt (RFC 4106 keymat)
  and draws a random explicit IV unless ``iv=`` is given; we pass the
  sequence number as the IV, so both sides produce identical bytes.
- ESN: scapy's ``esn_en`` is our ``esn`` flag and its ``esn`` is the high
  half of the sequence number; ``seq_num`` is the low half. Its per-call
  ``seq_num``/``esn`` fall back to the SA's when 0 (``x or self.x``), so the
  tests set them on the SA instead.
- scapy does not check received padding bytes and compares ICVs with ``!=``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import UDP, Raw, raw
from scapy.layers.inet6 import (HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, MIP6MH_BA,
                                MIP6MH_BRR, MIP6MH_BU, MIP6MH_HoT)
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation

from fastpath import algorithms as algs
from fastpath.ref import ipv6
from fastpath.ref.engine import (PURPOSES, TRANSPORT, TUNNEL, RefEngine,
                                 build_ba_packet, build_bu_packet)
from fastpath.ref.esp import EspDrop, RefSA, ReplayWindow, pad_length
from fastpath.ref.ipv6 import addr, hao_destopt, ipv6_header, rh2, walk_chain
from fastpath.verdicts import Reason, Verdict

HA = addr("2001:db8:ffff::1")
HOA = addr("2001:db8:1::10")
COA = addr("2001:db8:2::10")
COA2 = addr("2001:db8:3::10")
OTHER_HOA = addr("2001:db8:1::20")
OTHER_COA = addr("2001:db8:2::20")
CN = addr("2001:db8:9::1")
S = ipv6.ntop     # scapy wants text addresses

SPI_IN, SPI_OUT = 0x1000, 0x1001
SPI_BIND_IN, SPI_BIND_OUT = 0x2000, 0x2001
SPI_RR_IN, SPI_RR_OUT = 0x3000, 0x3001
M32 = 0xFFFFFFFF

SCAPY_CRYPT = {algs.KIND_GCM: "AES-GCM", algs.KIND_CBC_HMAC: "AES-CBC",
               algs.KIND_NULL_HMAC: "NULL"}
SCAPY_AUTH = {algs.HASH_NONE: None, algs.HASH_SHA1: "HMAC-SHA1-96",
              algs.HASH_SHA256: "SHA2-256-128"}
ALGS = list(algs.ALGORITHMS.values())
ALG_NAMES = list(algs.ALGORITHMS)


# --- helpers -------------------------------------------------------------------

@dataclass
class Keys:
    enc: bytes
    auth: bytes
    salt: bytes


def keys_for(alg: algs.Algorithm, seed: int) -> Keys:
    def block(n, k):
        return bytes((seed * 31 + k * 17 + i * 7) & 0xFF for i in range(n))
    return Keys(block(alg.enc_key_len, 1), block(alg.auth_key_len, 2), block(alg.salt_len, 3))


def iv_for(alg: algs.Algorithm, seq: int) -> bytes:
    if alg.is_aead:
        return struct.pack("!Q", seq)
    return os.urandom(alg.iv_len)


def scapy_sa(alg, spi, k: Keys, seq, esn, tunnel_header=None) -> SecurityAssociation:
    return SecurityAssociation(
        ESP, spi=spi, seq_num=seq & M32,
        crypt_algo=SCAPY_CRYPT[alg.kind], crypt_key=(k.enc + k.salt) or None,
        auth_algo=SCAPY_AUTH[alg.hash], auth_key=k.auth or None,
        tunnel_header=tunnel_header, esn_en=esn, esn=seq >> 32)


def add(eng, purpose, direction, spi, alg, esn=False, seed=0, hoa=HOA, window=1024) -> Keys:
    k = keys_for(alg, seed or spi)
    eng.add_sa(purpose, direction, spi, alg.name, k.enc, k.auth, k.salt, esn, window, hoa)
    return k


def engine(alg_name="aes128-sha1", esn=False, window=1024, mtu=1500, payload=True):
    """HA with one MN (HOA at COA) holding binding SAs and, if asked, payload SAs."""
    alg = algs.get(alg_name)
    eng = RefEngine(HA, mtu)
    eng.add_mobile_node(HOA, COA)
    add(eng, "binding", "in", SPI_BIND_IN, alg, esn, window=window)
    add(eng, "binding", "out", SPI_BIND_OUT, alg, esn)
    if payload:
        add(eng, "payload", "in", SPI_IN, alg, esn, window=window)
        add(eng, "payload", "out", SPI_OUT, alg, esn)
    return eng


def inner_down(n=20, hlim=63) -> bytes:
    """CN → HoA, as read from fp-home."""
    return raw(IPv6(src=S(CN), dst=S(HOA), hlim=hlim) / UDP(sport=7, dport=9) / Raw(b"d" * n))


def inner_up(n=20, src=HOA) -> bytes:
    """HoA → CN, as the MN tunnels it."""
    return raw(IPv6(src=S(src), dst=S(CN)) / UDP(sport=9, dport=7) / Raw(b"u" * n))


def from_mn(eng, inner, seq=None, spi=SPI_IN, nh=41, outer_src=COA, iv=None) -> bytes:
    """Tunnel-mode ESP from the MN: IPv6(outer_src → HA) · ESP(inner)."""
    return eng.seal_transport(spi, outer_src, HA, b"", 50, inner, nh, iv, seq=seq, direction="in")


def mh_bytes(mh, src=COA, dst=HA) -> bytes:
    """A Mobility Header as scapy serialises it inside a packet (checksum set)."""
    return raw(IPv6(src=S(src), dst=S(dst)) / mh)[40:]


def clear_bu(mh: bytes, hoa=HOA, coa=COA) -> bytes:
    ext = hao_destopt(hoa, 135)
    return ipv6_header(coa, HA, 60, len(ext) + len(mh)) + ext + mh


def clear_ba(mh: bytes, hoa=HOA, coa=COA) -> bytes:
    ext = rh2(hoa, 135)
    return ipv6_header(HA, coa, 43, len(ext) + len(mh)) + ext + mh


def one(results):
    assert len(results) == 1
    return results[0]


def verdicts(results):
    return [(v, r) for v, r, _ in results]


# --- IPv6 helpers agree with scapy -------------------------------------------

def test_hao_destopt_layout_matches_scapy():
    ours = hao_destopt(HOA, 50)
    assert len(ours) == 24 and ours[1] == 2
    assert ours.index(bytes([201, 16])) % 8 == 6       # 8n+6 alignment
    assert ours == raw(IPv6ExtHdrDestOpt(nh=50, options=[HAO(hoa=S(HOA))]))


def test_rh2_layout_matches_scapy():
    ours = rh2(HOA, 50)
    assert len(ours) == 24 and ours[:4] == bytes([50, 2, 2, 1])
    assert ours == raw(IPv6ExtHdrRouting(nh=50, type=2, addresses=[S(HOA)]))


def test_ipv6_header_matches_scapy():
    assert ipv6_header(COA, HA, 50, 1234, hlim=17) == \
        raw(IPv6(src=S(COA), dst=S(HA), nh=50, plen=1234, hlim=17))
    assert addr("2001:db8::1") == addr(addr("2001:db8::1"))
    with pytest.raises(ValueError):
        addr(b"\x00" * 4)


def test_walk_chain_finds_hao_and_upper_layer():
    pkt = raw(IPv6(src=S(COA), dst=S(HA)) / IPv6ExtHdrHopByHop()
              / IPv6ExtHdrDestOpt(options=[HAO(hoa=S(HOA))]) / MIP6MH_BU())
    chain = walk_chain(pkt)
    assert chain.next_header == 135
    assert chain.offset == 40 + 8 + 24
    assert chain.hoa == HOA
    assert chain.nh_field == 48          # the destination options header's first byte
    # Two HAOs (in two headers, or in one): the last one counts.
    two = raw(IPv6(src=S(COA), dst=S(HA)) / IPv6ExtHdrDestOpt(options=[HAO(hoa=S(OTHER_HOA))])
              / IPv6ExtHdrDestOpt(options=[HAO(hoa=S(HOA))]) / MIP6MH_BU())
    assert walk_chain(two).hoa == HOA
    options = hao_destopt(OTHER_HOA, 135)[2:] + hao_destopt(HOA, 135)[2:]
    assert ipv6.find_hao(options) == HOA
    # A type-201 option of another length is not a HAO.
    assert ipv6.find_hao(bytes([201, 4, 0, 0, 0, 0])) is None


# --- scapy interop, both ways, every algorithm, every pad length --------------

PAD_CASES = [pytest.param(a.name, p, id=f"{a.name}-pad{p}")
             for a in ALGS for p in range(a.align)]


def seq_for(esn: bool) -> int:
    # With ESN, a sequence number whose high half is non-zero (only the ICV sees it).
    return (3 << 32) + 0x10 if esn else 0x1234


def check_scapy_trailer(sa: SecurityAssociation, esp_pkt: bytes, esn, seq, pad):
    """scapy's own reading of our trailer: pad length and pad bytes 1,2,3.."""
    esp = IPv6(esp_pkt)[ESP]
    icv = sa.crypt_algo.icv_size or sa.auth_algo.icv_size
    plain = sa.crypt_algo.decrypt(sa, esp, sa.crypt_key, icv, esn_en=esn, esn=seq >> 32)
    assert plain.padlen == pad
    assert plain.padding == bytes(range(1, pad + 1))


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name,pad", PAD_CASES)
def test_scapy_tunnel_mode(name, pad, esn):
    alg = algs.get(name)
    eng = engine(name, esn)
    seq = seq_for(esn)
    k_out, k_in = keys_for(alg, SPI_OUT), keys_for(alg, SPI_IN)

    # HA → MN: our encap equals scapy's encryption with the same IV, and scapy opens it.
    down = inner_down(n=(-pad - 2 - 48) % alg.align)
    assert pad_length(len(down), alg.align) == pad
    eng.sa("out", SPI_OUT).seq = seq - 1
    iv = iv_for(alg, seq)
    v, r, ours = one(eng.encap([down], ivs=[iv]))
    assert (v, r) == (Verdict.TO_WIRE, Reason.NONE)
    assert len(ours) == 40 + 8 + alg.iv_len + len(down) + pad + 2 + alg.icv_len
    sa = scapy_sa(alg, SPI_OUT, k_out, seq, esn, tunnel_header=IPv6(src=S(HA), dst=S(COA)))
    assert raw(sa.encrypt(IPv6(down), iv=iv)) == ours
    assert raw(sa.decrypt(IPv6(ours))) == down
    check_scapy_trailer(sa, ours, esn, seq, pad)

    # MN → HA: scapy encrypts, our decap opens it, and our sealing is byte-identical.
    up = inner_up(n=(-pad - 2 - 48) % alg.align)
    eng.sa("in", SPI_IN).replay.commit(seq - 1)
    iv = iv_for(alg, seq)
    sa = scapy_sa(alg, SPI_IN, k_in, seq, esn, tunnel_header=IPv6(src=S(COA), dst=S(HA)))
    theirs = raw(sa.encrypt(IPv6(up), iv=iv))
    assert theirs == from_mn(eng, up, seq=seq, iv=iv)
    assert one(eng.decap([theirs])) == (Verdict.TO_HOME, Reason.NONE, up)


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name,pad", PAD_CASES)
def test_scapy_transport_mode(name, pad, esn):
    alg = algs.get(name)
    eng = engine(name, esn)
    seq = seq_for(esn)
    # Real MH messages are 8n bytes; a tail of k bytes reaches every pad length
    # (the ESP layer does not parse its payload).
    bu = mh_bytes(MIP6MH_BU(seq=9, mhtime=60))
    bu += b"t" * ((-pad - 2 - len(bu)) % alg.align)
    assert pad_length(len(bu), alg.align) == pad

    # BU, MN → HA: IPv6(CoA→HA) · DestOpt(HAO) · ESP · MH
    clear = clear_bu(bu)
    iv = iv_for(alg, seq)
    sa = scapy_sa(alg, SPI_BIND_IN, keys_for(alg, SPI_BIND_IN), seq, esn)
    theirs = raw(sa.encrypt(IPv6(clear), iv=iv))
    assert theirs == build_bu_packet(eng, SPI_BIND_IN, HOA, COA, bu, iv=iv, seq=seq)
    eng.sa("in", SPI_BIND_IN).replay.commit(seq - 1)
    # BINDING: the packet with ESP removed is the clear BU again.
    assert one(eng.decap([theirs])) == (Verdict.BINDING, Reason.NONE, clear)

    # BA, HA → MN: IPv6(HA→CoA) · RH2(HoA) · ESP · MH
    ba = mh_bytes(MIP6MH_BA(seq=9, mhtime=60), src=HA, dst=COA)
    ba += b"t" * ((-pad - 2 - len(ba)) % alg.align)
    clear = clear_ba(ba)
    iv = iv_for(alg, seq)
    ours = build_ba_packet(eng, SPI_BIND_OUT, HOA, COA, ba, iv=iv, seq=seq)
    sa = scapy_sa(alg, SPI_BIND_OUT, keys_for(alg, SPI_BIND_OUT), seq, esn)
    assert raw(sa.encrypt(IPv6(clear), iv=iv)) == ours
    assert raw(sa.decrypt(IPv6(ours))) == clear
    check_scapy_trailer(sa, ours, esn, seq, pad)


@pytest.mark.parametrize("name", ALG_NAMES)
def test_scapy_rejects_our_tampered_packet_and_we_reject_its(name):
    alg = algs.get(name)
    eng = engine(name)
    down = inner_down()
    _, _, ours = one(eng.encap([down]))
    bad = bytearray(ours)
    bad[-1] ^= 0x80
    sa = scapy_sa(alg, SPI_OUT, keys_for(alg, SPI_OUT), 1, False, tunnel_header=IPv6())
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(IPv6(bytes(bad)))
    sa = scapy_sa(alg, SPI_IN, keys_for(alg, SPI_IN), 1, False,
                  tunnel_header=IPv6(src=S(COA), dst=S(HA)))
    theirs = bytearray(raw(sa.encrypt(IPv6(inner_up()), iv=iv_for(alg, 1))))
    theirs[60] ^= 0x01
    assert verdicts(eng.decap([bytes(theirs)])) == [(Verdict.DROP, Reason.ICV)]


# --- RefSA ---------------------------------------------------------------------

def test_gcm_iv_is_the_sequence_number():
    alg = algs.get("aes128gcm16")
    k = keys_for(alg, 1)
    sa = RefSA(7, alg, k.enc, salt=k.salt, esn=True)
    assert sa.seal(0x0102030405, b"x", 41)[8:16] == struct.pack("!Q", 0x0102030405)
    with pytest.raises(ValueError):
        sa.seal(5, b"x", 41, iv=struct.pack("!Q", 6))
    assert sa.seal(5, b"x", 41, iv=struct.pack("!Q", 5)) == sa.seal(5, b"x", 41)


def test_cbc_iv_is_random_unless_given():
    alg = algs.get("aes128-sha1")
    k = keys_for(alg, 1)
    sa = RefSA(7, alg, k.enc, k.auth)
    a, b = sa.seal(1, b"x", 41), sa.seal(1, b"x", 41)
    assert a[8:24] != b[8:24]
    assert sa.seal(1, b"x", 41, iv=b"\x01" * 16)[8:24] == b"\x01" * 16


def test_refsa_refuses_wrong_key_sizes_and_seq_range():
    with pytest.raises(ValueError):
        RefSA(1, "aes128-sha1", bytes(15), bytes(20))
    with pytest.raises(ValueError):
        RefSA(1, "aes128gcm16", bytes(16), salt=b"")
    sa = RefSA(1, "null-sha256", auth_key=bytes(32))
    with pytest.raises(ValueError):
        sa.seal(1 << 32, b"", 41)          # no ESN: 32-bit sequence numbers only
    with pytest.raises(ValueError):
        sa.seal(1, b"", 41, iv=b"\x00")    # NULL has no IV


# --- ReplayWindow ----------------------------------------------------------------

class WindowModel:
    """The doc's words, literally: T highest accepted, W bits; and 0, never
    sent, is never accepted."""

    def __init__(self, w, esn):
        self.w, self.esn, self.top, self.seen = w, esn, 0, set()

    def check(self, s):
        if s == 0:
            return False
        if self.w == 0:
            return True
        if s > self.top:
            return True
        if s + self.w <= self.top:
            return False
        return s not in self.seen

    def commit(self, s):
        self.seen.add(s)
        self.top = max(self.top, s)


@settings(max_examples=300, deadline=None)
@given(w=st.sampled_from([0, 1, 2, 5, 32, 64, 1024]), esn=st.booleans(),
       seqs=st.lists(st.integers(0, 200), max_size=60))
def test_replay_window_matches_model(w, esn, seqs):
    win, model = ReplayWindow(w, esn), WindowModel(w, esn)
    for s in seqs:
        ok = win.check(s)
        assert ok == model.check(s), (s, win.top)
        if ok:
            win.commit(s)
            model.commit(s)


def test_replay_window_edges():
    win = ReplayWindow(1024, esn=False)
    assert not win.check(0)                       # non-ESN seq 0 is a replay
    win.commit(2000)
    assert win.check(2000 - 1024 + 1)             # the window's last slot
    assert not win.check(2000 - 1024)             # just too old
    win.commit(976 + 1)
    assert not win.check(977)                     # now a duplicate
    assert not win.check(2000)
    assert win.check(2001)
    off = ReplayWindow(0, esn=False)
    off.commit(5)
    assert off.check(5) and off.check(4)          # window 0: no replay check...
    assert not off.check(0)                       # ...but 0 is never a valid number
    assert not ReplayWindow(64, esn=True).check(0)


@settings(max_examples=300, deadline=None)
@given(w=st.sampled_from([0, 1, 64, 1024, 1 << 20]), top=st.integers(0, (1 << 63)),
       offset=st.integers(0, M32))
def test_esn_inference_recovers_every_seq_of_its_span(w, top, offset):
    """RFC 4303 A2.1: the inferred number is the one candidate in
    [T - W + 1, T - W + 1 + 2^32) (W = 2^31 with the window off); a candidate
    below 0 (before the SA's first packet) comes back as 0, never accepted."""
    win = ReplayWindow(w, esn=True)
    win.top = top
    seq = top - (w or 1 << 31) + 1 + offset
    assert win.infer(seq % (1 << 32)) == max(seq, 0)


def test_esn_inference_examples():
    win = ReplayWindow(1024, esn=True)
    win.top = (5 << 32) + 100                     # window straddles 5:0
    assert win.infer(M32 - 10) == (4 << 32) + M32 - 10
    assert win.infer(50) == (5 << 32) + 50
    assert win.infer(200) == (5 << 32) + 200
    win.top = (5 << 32) + 5000                    # window inside subspace 5
    assert win.infer(4000) == (5 << 32) + 4000
    assert win.infer(3000) == (6 << 32) + 3000    # below the window: next subspace
    assert ReplayWindow(64, esn=False).infer(M32) == M32
    fresh = ReplayWindow(1024, esn=True)          # T = 0: the window hangs below 0
    assert fresh.infer(M32 - 5) == 0 and fresh.infer(5) == 5


# --- RefEngine: outbound -------------------------------------------------------

def test_encap_decap_round_trip_every_algorithm():
    for name in ALG_NAMES:
        alg = algs.get(name)
        eng = engine(name)
        downs = [inner_down(n) for n in range(0, 40, 3)]
        res = eng.encap(downs)
        twin = RefSA(SPI_OUT, alg, *vars(keys_for(alg, SPI_OUT)).values())
        for i, ((v, r, out), down) in enumerate(zip(res, downs), start=1):
            assert (v, r) == (Verdict.TO_WIRE, Reason.NONE)
            hdr = ipv6.parse_ipv6_header(out)
            assert (hdr.version, hdr.traffic_class, hdr.flow_label) == (6, 0, 0)
            assert (hdr.next_header, hdr.hop_limit, hdr.src, hdr.dst) == (50, 64, HA, COA)
            assert hdr.payload_length == len(out) - 40
            assert twin.open(out[40:]) == (i, down, 41)   # gap-free from 1, inner unchanged
        ups = [inner_up(n) for n in range(0, 40, 3)]
        res = eng.decap([from_mn(eng, u) for u in ups])
        assert res == [(Verdict.TO_HOME, Reason.NONE, u) for u in ups]
        c = eng.counters()
        assert c["sa"][SPI_OUT]["packets_out"] == len(downs)
        assert c["sa"][SPI_OUT]["bytes_out"] == sum(map(len, downs))
        assert c["sa"][SPI_IN]["packets_in"] == len(ups)
        assert c["sa"][SPI_IN]["bytes_in"] == sum(map(len, ups))
        assert c["verdicts"] == {"drop": 0, "to_wire": len(downs), "to_home": len(ups),
                                 "punt": 0, "binding": 0}


def test_encap_malformed_and_no_binding():
    eng = engine()
    good = inner_down()
    v4 = bytes([0x45]) + good[1:]
    wrong_plen = good[:4] + struct.pack("!H", len(good) - 39) + good[6:]
    stranger = raw(IPv6(src=S(CN), dst="2001:db8:1::99") / UDP())
    eng.add_mobile_node(OTHER_HOA)                 # registered, no CoA yet
    unbound = raw(IPv6(src=S(CN), dst=S(OTHER_HOA)) / UDP())
    res = eng.encap([good[:39], v4, wrong_plen, good + b"x", stranger, unbound])
    assert verdicts(res) == [(Verdict.DROP, Reason.MALFORMED)] * 4 + \
        [(Verdict.DROP, Reason.NO_BINDING)] * 2
    assert all(out == b"" for _, _, out in res)
    assert eng.sa("out", SPI_OUT).seq == 0


def test_encap_plain_tunnel_without_payload_sa():
    eng = engine(payload=False)
    down = inner_down(hlim=5)
    v, r, out = one(eng.encap([down]))
    assert (v, r) == (Verdict.TO_WIRE, Reason.NONE)
    assert out == ipv6_header(HA, COA, 41, len(down), 64) + down   # inner hop limit kept


def test_encap_too_big_at_the_mtu_boundary():
    down = inner_down(1300)         # > 1280: smaller packets are fragmented, never refused
    eng = engine()
    size = 40 + eng.sa("out", SPI_OUT).esp.sealed_len(len(down))
    eng.mtu = size - 1
    assert verdicts(eng.encap([down])) == [(Verdict.TO_HOME, Reason.TOO_BIG)]   # a PTB
    assert eng.sa("out", SPI_OUT).seq == 0          # no sequence number spent
    assert eng.counters()["sa"][SPI_OUT]["drops"]["too_big"] == 1
    eng.mtu = size
    v, r, out = one(eng.encap([down]))
    assert (v, len(out)) == (Verdict.TO_WIRE, size)
    plain = engine(payload=False)
    plain.mtu = 40 + len(down) - 1
    assert verdicts(plain.encap([down])) == [(Verdict.TO_HOME, Reason.TOO_BIG)]
    plain.mtu += 1
    assert verdicts(plain.encap([down])) == [(Verdict.TO_WIRE, Reason.NONE)]


def test_encap_home_test_goes_on_the_rr_sa():
    alg = algs.get("aes128-sha1")
    eng = engine()
    add(eng, "return-routability", "out", SPI_RR_OUT, alg)
    hot = raw(IPv6(src=S(CN), dst=S(HOA)) / MIP6MH_HoT())
    hot_behind_destopt = raw(IPv6(src=S(CN), dst=S(HOA)) / IPv6ExtHdrDestOpt() / MIP6MH_HoT())
    brr = raw(IPv6(src=S(CN), dst=S(HOA)) / MIP6MH_BRR())
    res = eng.encap([hot, hot_behind_destopt, brr, inner_down()])
    spis = [struct.unpack("!I", out[40:44])[0] for _, _, out in res]
    assert spis == [SPI_RR_OUT, SPI_RR_OUT, SPI_OUT, SPI_OUT]
    rr = RefSA(SPI_RR_OUT, alg, *vars(keys_for(alg, SPI_RR_OUT)).values())
    assert rr.open(res[1][2][40:]) == (2, hot_behind_destopt, 41)    # tunnel mode


def test_encap_rr_sa_without_payload_sa_sends_the_rest_plain():
    eng = engine(payload=False)
    add(eng, "return-routability", "out", SPI_RR_OUT, algs.get("aes128-sha1"))
    res = eng.encap([raw(IPv6(src=S(CN), dst=S(HOA)) / MIP6MH_HoT()), inner_down()])
    assert [out[6] for _, _, out in res] == [50, 41]


def test_encap_sequence_exhaustion_without_esn():
    eng = engine()
    eng.sa("out", SPI_OUT).seq = M32 - 1
    res = eng.encap([inner_down()] * 3)
    assert verdicts(res) == [(Verdict.TO_WIRE, Reason.NONE)] + \
        [(Verdict.DROP, Reason.SEQ_EXHAUSTED)] * 2
    assert res[0][2][44:48] == b"\xff\xff\xff\xff"
    assert eng.sa("out", SPI_OUT).seq == M32
    assert eng.counters()["sa"][SPI_OUT]["drops"]["seq_exhausted"] == 2
    with pytest.raises(EspDrop) as e:              # the BA path hits the same wall
        eng.sa("out", SPI_BIND_OUT).seq = M32
        build_ba_packet(eng, SPI_BIND_OUT, HOA, COA, b"\0" * 8)
    assert e.value.reason == Reason.SEQ_EXHAUSTED


def test_encap_esn_crosses_2_32():
    alg = algs.get("aes128gcm16")
    eng = engine(alg.name, esn=True)
    eng.sa("out", SPI_OUT).seq = M32
    v, r, out = one(eng.encap([inner_down()]))
    assert v == Verdict.TO_WIRE and out[44:48] == b"\0\0\0\0"
    assert out[48:56] == struct.pack("!Q", 1 << 32)           # GCM IV = 64-bit seq
    twin = RefSA(SPI_OUT, alg, *vars(keys_for(alg, SPI_OUT)).values(), esn=True)
    assert twin.open(out[40:], seq_hi=1)[1] == inner_down()
    with pytest.raises(EspDrop):
        twin.open(out[40:], seq_hi=0)


def test_set_coa_moves_traffic_and_keeps_the_sequence():
    eng = engine()
    eng.encap([inner_down()])
    eng.set_coa(HOA, COA2)
    _, _, out = one(eng.encap([inner_down()]))
    assert out[24:40] == COA2 and out[44:48] == struct.pack("!I", 2)
    eng.set_coa(HOA, None)
    assert verdicts(eng.encap([inner_down()])) == [(Verdict.DROP, Reason.NO_BINDING)]


# --- RefEngine: inbound ----------------------------------------------------------

def test_decap_unknown_spi_and_short_esp():
    eng = engine()
    pkt = from_mn(eng, inner_up())
    unknown = pkt[:40] + struct.pack("!I", 0xDEAD) + pkt[44:]
    short = ipv6_header(COA, HA, 50, 7) + pkt[40:47]
    odd = ipv6_header(COA, HA, 50, 9) + struct.pack("!I", 0xDEAD) + bytes(5)
    assert verdicts(eng.decap([unknown, short, odd])) == [
        (Verdict.DROP, Reason.UNKNOWN_SPI), (Verdict.DROP, Reason.MALFORMED),
        (Verdict.DROP, Reason.UNKNOWN_SPI)]       # SPI lookup comes before framing
    assert eng.counters()["reasons"]["unknown_spi"] == 2


def test_decap_replay_duplicate_too_old_and_order_before_icv():
    eng = engine()
    first = from_mn(eng, inner_up(), seq=5)
    assert verdicts(eng.decap([first, first])) == [
        (Verdict.TO_HOME, Reason.NONE), (Verdict.DROP, Reason.REPLAY)]
    # A replayed sequence number is refused before its ICV is even looked at.
    forged = bytearray(first)
    forged[-1] ^= 1
    assert verdicts(eng.decap([bytes(forged)])) == [(Verdict.DROP, Reason.REPLAY)]
    # A forged fresh number fails the ICV and is not committed.
    fresh = bytearray(from_mn(eng, inner_up(), seq=6))
    fresh[-1] ^= 1
    assert verdicts(eng.decap([bytes(fresh)])) == [(Verdict.DROP, Reason.ICV)]
    assert eng.sa("in", SPI_IN).replay.top == 5
    assert verdicts(eng.decap([from_mn(eng, inner_up(), seq=6)])) == [
        (Verdict.TO_HOME, Reason.NONE)]
    # Window edges: T = 3000, W = 1024.
    eng.decap([from_mn(eng, inner_up(), seq=3000)])
    res = eng.decap([from_mn(eng, inner_up(), seq=s) for s in (1976, 1977, 1977, 2999, 3001)])
    assert verdicts(res) == [(Verdict.DROP, Reason.REPLAY), (Verdict.TO_HOME, Reason.NONE),
                             (Verdict.DROP, Reason.REPLAY), (Verdict.TO_HOME, Reason.NONE),
                             (Verdict.TO_HOME, Reason.NONE)]
    assert eng.counters()["sa"][SPI_IN]["drops"]["replay"] == 4


@pytest.mark.parametrize("esn,window", [(False, 1024), (False, 0), (True, 1024)])
def test_decap_seq_zero_is_a_replay(esn, window):
    eng = engine(esn=esn, window=window)
    assert verdicts(eng.decap([from_mn(eng, inner_up(), seq=0)])) == [
        (Verdict.DROP, Reason.REPLAY)]


def test_decap_window_zero_accepts_duplicates():
    eng = engine(window=0)
    pkt = from_mn(eng, inner_up(), seq=5)
    assert verdicts(eng.decap([pkt, pkt])) == [(Verdict.TO_HOME, Reason.NONE)] * 2


@pytest.mark.parametrize("name", ["aes128-sha1", "aes128gcm16", "null-sha256"])
def test_decap_esn_across_2_32(name):
    eng = engine(name, esn=True)
    # Before T reaches W - 1 the window hangs below 0: a low half that would
    # belong there is refused as a replay.
    assert verdicts(eng.decap([from_mn(eng, inner_up(), seq=M32 - 2)])) == [
        (Verdict.DROP, Reason.REPLAY)]
    send = [2000, M32 - 2, (1 << 32) + 1, M32 - 4, M32 - 2, (1 << 32) + 1, (1 << 32) + 2]
    # one batch per packet: each is judged against the window the previous left
    res = [r for s in send for r in eng.decap([from_mn(eng, inner_up(), seq=s)])]
    assert verdicts(res) == [(Verdict.TO_HOME, Reason.NONE)] * 4 + \
        [(Verdict.DROP, Reason.REPLAY)] * 2 + [(Verdict.TO_HOME, Reason.NONE)]
    assert eng.sa("in", SPI_IN).replay.top == (1 << 32) + 2
    # Far below the window a low half is read as the next subspace (A2.1):
    # the sender used the old one, so the ICV fails.
    old = from_mn(eng, inner_up(), seq=M32 - 5000)
    assert verdicts(eng.decap([old])) == [(Verdict.DROP, Reason.ICV)]


@pytest.mark.parametrize("name", ALG_NAMES)
def test_decap_flipped_bit_is_icv(name):
    eng = engine(name)
    pkt = from_mn(eng, inner_up(), seq=1)
    for pos in range(44, len(pkt)):             # every byte after the SPI
        bad = bytearray(pkt)
        bad[pos] ^= 0x10
        v, r, out = one(eng.decap([bytes(bad)]))
        assert (v, r, out) == (Verdict.DROP, Reason.ICV, b""), pos
    assert verdicts(eng.decap([pkt])) == [(Verdict.TO_HOME, Reason.NONE)]


@pytest.mark.parametrize("name", ALG_NAMES)
def test_decap_bad_padding_with_a_valid_icv(name):
    eng = engine(name)
    sa = eng.sa("in", SPI_IN).esp
    align = sa.alg.align
    up = inner_up(n=(-3 - 2 - 48) % align)      # sized for 3 pad bytes
    n = pad_length(len(up), align)
    assert n == 3
    cases = {
        "wrong byte": up + b"\x01\x02\x09" + bytes([n, 41]),
        "overrun": up + b"\x01\x02\x03" + bytes([len(up) + n + 1, 41]),
    }
    for label, plaintext in cases.items():
        assert len(plaintext) % align == 0
        seq = eng.sa("in", SPI_IN).replay.top + 1
        esp = sa.seal_framed(seq, plaintext, iv_for(sa.alg, seq))
        pkt = ipv6_header(COA, HA, 50, len(esp)) + esp
        assert verdicts(eng.decap([pkt])) == [(Verdict.DROP, Reason.BAD_PADDING)], label
    assert eng.counters()["sa"][SPI_IN]["drops"]["bad_padding"] == 2


def test_decap_tunnel_policy_and_malformed_inner():
    eng = engine()
    eng.add_mobile_node(OTHER_HOA, OTHER_COA)
    res = eng.decap([
        from_mn(eng, inner_up(src=OTHER_HOA)),          # inner src is another MN's HoA
        from_mn(eng, inner_up(), outer_src=OTHER_COA),  # outer source is free (RFC 3776 §3.2)
        from_mn(eng, inner_up()[:-1]),                  # inner payload length wrong
        from_mn(eng, mh_bytes(MIP6MH_BU()), nh=135),    # tunnel SA, transport content
    ])
    assert verdicts(res) == [(Verdict.DROP, Reason.POLICY), (Verdict.TO_HOME, Reason.NONE),
                             (Verdict.DROP, Reason.MALFORMED), (Verdict.DROP, Reason.MALFORMED)]
    assert eng.counters()["sa"][SPI_IN]["drops"]["policy"] == 1


def test_decap_dummy_is_dropped_after_the_icv_and_commits():
    eng = engine()
    dummy = from_mn(eng, b"", nh=59, seq=8)
    assert verdicts(eng.decap([dummy])) == [(Verdict.DROP, Reason.DUMMY)]
    assert eng.sa("in", SPI_IN).replay.top == 8
    forged = bytearray(from_mn(eng, b"", nh=59, seq=9))
    forged[-1] ^= 1
    assert verdicts(eng.decap([bytes(forged), dummy])) == [
        (Verdict.DROP, Reason.ICV), (Verdict.DROP, Reason.REPLAY)]
    assert eng.counters()["sa"][SPI_IN]["drops"]["dummy"] == 1


def test_decap_binding_update_and_its_policy():
    alg = algs.get("aes128-sha1")
    eng = engine()
    eng.add_mobile_node(OTHER_HOA, OTHER_COA)
    add(eng, "binding", "in", 0x2100, alg, hoa=OTHER_HOA)
    bu = mh_bytes(MIP6MH_BU(seq=1))
    good = build_bu_packet(eng, SPI_BIND_IN, HOA, COA, bu)
    other = build_bu_packet(eng, SPI_BIND_IN, OTHER_HOA, COA, bu)   # another MN's HoA
    no_hao = eng.seal_transport(SPI_BIND_IN, COA, HA, b"", 50, bu, direction="in")
    not_mh = eng.seal_transport(SPI_BIND_IN, COA, HA, hao_destopt(HOA, 50), 60,
                                inner_up(), 58, direction="in")
    its_own = build_bu_packet(eng, 0x2100, OTHER_HOA, OTHER_COA, bu)
    res = eng.decap([good, other, no_hao, not_mh, its_own])
    assert res[0] == (Verdict.BINDING, Reason.NONE, clear_bu(bu))
    assert verdicts(res[1:4]) == [(Verdict.DROP, Reason.POLICY)] * 2 + \
        [(Verdict.DROP, Reason.MALFORMED)]
    assert res[4] == (Verdict.BINDING, Reason.NONE, clear_bu(bu, OTHER_HOA, OTHER_COA))
    c = eng.counters()["sa"][SPI_BIND_IN]
    assert (c["packets_in"], c["bytes_in"]) == (1, len(clear_bu(bu)))
    assert c["drops"]["policy"] == 2 and c["drops"]["malformed"] == 1


def test_decap_plain_ipv6_in_ipv6():
    eng = engine(payload=False)
    eng.add_mobile_node(OTHER_HOA)                     # no CoA
    up = inner_up()

    def plain(inner, src=COA):
        return ipv6_header(src, HA, 41, len(inner)) + inner

    res = eng.decap([plain(up), plain(up, src=COA2), plain(inner_up(src=CN)),
                     plain(inner_up(src=OTHER_HOA)), plain(up[:-1])])
    assert res[0] == (Verdict.TO_HOME, Reason.NONE, up)
    assert verdicts(res[1:]) == [(Verdict.DROP, Reason.POLICY), (Verdict.DROP, Reason.NO_BINDING),
                                 (Verdict.DROP, Reason.NO_BINDING), (Verdict.DROP, Reason.MALFORMED)]
    protected = engine()                               # has a payload in SA
    assert verdicts(protected.decap([plain(up)])) == [(Verdict.DROP, Reason.POLICY)]


def test_decap_punts_everything_else_unchanged():
    eng = engine()
    bu_clear = clear_bu(mh_bytes(MIP6MH_BU()))
    icmp = raw(IPv6(src=S(COA), dst=S(HA), nh=58) / Raw(b"\x80\0\0\0\0\0\0\0"))
    frag = raw(IPv6(src=S(COA), dst=S(HA)) / IPv6ExtHdrDestOpt()
               / IPv6ExtHdrFragment(nh=50) / Raw(bytes(40)))
    res = eng.decap([bu_clear, icmp, frag])
    assert res == [(Verdict.PUNT, Reason.NONE, p) for p in (bu_clear, icmp, frag)]
    assert eng.counters()["verdicts"]["punt"] == 3


def test_decap_extension_chain_limits():
    eng = engine()
    pkt = from_mn(eng, inner_up(), seq=1)

    def chained(n):
        # n destination-options headers of 8 bytes (PadN) in front of the ESP.
        hdrs = b"".join(bytes([60 if i < n - 1 else 50, 0, 1, 4, 0, 0, 0, 0]) for i in range(n))
        body = hdrs + pkt[40:]
        return ipv6_header(COA, HA, 60, len(body)) + body

    assert verdicts(eng.decap([chained(8)])) == [(Verdict.TO_HOME, Reason.NONE)]
    assert verdicts(eng.decap([chained(9)])) == [(Verdict.DROP, Reason.MALFORMED)]
    past_end = bytes([59, 4]) + bytes(6)               # claims 40 bytes, has 8
    short = ipv6_header(COA, HA, 60, len(past_end)) + past_end
    no_length = ipv6_header(COA, HA, 0, 1) + b"\x3b"     # hop-by-hop of a single byte
    bad_option = bytes([59, 0, 1, 5, 0, 0, 0, 0])          # PadN claims 5 bytes, has 4
    bad_option = ipv6_header(COA, HA, 60, 8) + bad_option
    assert verdicts(eng.decap([short, no_length, bad_option])) == \
        [(Verdict.DROP, Reason.MALFORMED)] * 3


@pytest.mark.parametrize("name", ALG_NAMES)
def test_decap_truncation_at_every_length(name):
    """No truncation raises; each is malformed or fails the ICV, and none
    touches the replay state (the intact packets are accepted afterwards)."""
    eng = engine(name)
    tunnel = from_mn(eng, inner_up(), seq=1)
    bu = build_bu_packet(eng, SPI_BIND_IN, HOA, COA, mh_bytes(MIP6MH_BU()), seq=1)
    for pkt in (tunnel, bu):
        for n in range(len(pkt)):
            cut = pkt[:n]
            v, r, out = one(eng.decap([cut]))
            assert (v, r, out) == (Verdict.DROP, Reason.MALFORMED, b""), n
            if n >= 40:     # the same bytes with a consistent payload length
                fixed = cut[:4] + struct.pack("!H", n - 40) + cut[6:]
                v, r, out = one(eng.decap([fixed]))
                assert v == Verdict.DROP and r in (Reason.MALFORMED, Reason.ICV), (n, r)
    assert eng.sa("in", SPI_IN).replay.top == 0
    assert verdicts(eng.decap([tunnel, bu])) == [(Verdict.TO_HOME, Reason.NONE),
                                                 (Verdict.BINDING, Reason.NONE)]


def test_counters_shape_and_totals():
    eng = engine()
    eng.encap([inner_down(), b"junk"])
    eng.decap([from_mn(eng, inner_up(), seq=1), from_mn(eng, inner_up(), seq=1)])
    c = eng.counters()
    assert set(c) == {"reasons", "verdicts", "sa"}
    assert c["reasons"] == {"unknown_spi": 0, "replay": 1, "icv": 0, "bad_padding": 0,
                            "policy": 0, "malformed": 1, "no_binding": 0, "too_big": 0,
                            "seq_exhausted": 0, "dummy": 0, "congestion": 0,
                            "encap_limit": 0}
    assert c["verdicts"] == {"drop": 2, "to_wire": 1, "to_home": 1, "punt": 0, "binding": 0}
    assert set(c["sa"]) == {SPI_IN, SPI_OUT, SPI_BIND_IN, SPI_BIND_OUT}
    assert c["sa"][SPI_IN]["drops"]["replay"] == 1
    assert c["sa"][SPI_OUT]["packets_out"] == 1
    c["sa"][SPI_IN]["drops"]["replay"] = 99           # a copy, not the live state
    assert eng.counters()["sa"][SPI_IN]["drops"]["replay"] == 1


def test_sa_table_rules():
    eng = engine()
    assert PURPOSES == {
        "binding": TRANSPORT, "return-routability": TUNNEL,
        "payload": TUNNEL, "prefix-discovery": TRANSPORT}
    alg = algs.get("aes128-sha1")
    with pytest.raises(ValueError):
        add(eng, "payload", "in", 0x9999, alg)                 # one per purpose/direction
    with pytest.raises(ValueError):
        add(eng, "prefix-discovery", "in", SPI_IN, alg)        # SPI taken
    with pytest.raises(ValueError):
        add(eng, "payload", "in", 0x9999, alg, hoa=OTHER_HOA)  # no such MN
    with pytest.raises(ValueError):
        add(eng, "bogus", "in", 0x9999, alg)
    assert eng.sa("in", SPI_BIND_IN).mode == TRANSPORT
    assert eng.sa("out", SPI_OUT).mode == TUNNEL


def test_encap_small_packet_is_tunnelled_even_past_the_mtu():
    """RFC 2473 §7.1: a packet of at most 1280 bytes is not refused; its outer
    packet exceeds the MTU and is fragmented on output (ipv6.fragment)."""
    from fastpath.ref.ipv6 import fragment
    eng = engine()
    down = inner_down(1280 - 48)
    assert len(down) == 1280
    eng.mtu = 1280
    v, r, out = one(eng.encap([down]))
    assert (v, r) == (Verdict.TO_WIRE, Reason.NONE) and len(out) > 1280
    frags = fragment(out, 1280, 99)
    assert all(len(f) <= 1280 for f in frags) and len(frags) == 2
    assert b"".join(f[48:] for f in frags) == out[40:]
    # scapy reassembles them into the same packet
    from scapy.layers.inet6 import defragment6
    whole = defragment6([IPv6(f) for f in frags])
    assert raw(whole)[40:] == out[40:]
