"""The Cython engine equals the pure-Python reference engine packet for
packet (verdict, reason, bytes) and counter for counter, on random batches
of good, hostile and garbage packets, with the same IVs injected."""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath.ref.ipv6 import hao_destopt, ipv6_header

from topo import (ALGS, BACKENDS, CN, COA1, COA2, EVIL, HA, MN1, MN2, MN3, inner,
                  make_topo, outer, random_bytes)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HOME_KINDS = ["mn1", "mn2", "mn3", "unknown", "hot", "garbage", "truncated", "jumbo", "tel"]
WIRE_KINDS = ["esp", "esp_old", "esp_dup", "esp_flip", "esp_trunc", "esp_badsrc", "esp_dummy",
              "rr", "bu", "bu_wrong_hao", "plain_ok", "plain_badsrc", "plain_mn1", "garbage",
              "unknown_spi", "mh_clear", "frag", "hao_payload", "hao_icmp"]


def tel_packet(size, rnd):
    """A packet inside another tunnel: a Tunnel Encapsulation Limit (0, 1 or
    5) behind nothing, a first fragment's header or an AH, for a node with a
    payload SA or one without (RFC 2473 §4.1.1)."""
    dst = rnd.choice([MN1, MN2])
    carried = inner(CN, dst, size)
    nh, ext = 60, bytes([41, 0, 4, 1, rnd.choice([0, 1, 5]), 1, 1, 0])
    before = rnd.choice(["", "frag", "ah"])
    if before == "frag":
        nh, ext = 44, bytes([60, 0, 0, 0, 0, 0, 0, 9]) + ext
    elif before == "ah":
        nh, ext = 51, bytes([60, 4, 0, 0]) + bytes(range(20)) + ext
    return ipv6_header(CN, dst, nh, len(ext) + len(carried)) + ext + carried


def home_packet(kind, size, rnd):
    if kind == "mn1":
        return inner(CN, MN1, size)
    if kind == "mn2":
        return inner(CN, MN2, size)
    if kind == "mn3":
        return inner(CN, MN3, size)
    if kind == "unknown":
        return inner(CN, EVIL, size)
    if kind == "hot":   # Home Test: MH type 3 travels on the RR SA
        mh = bytes([59, 1, 3, 0]) + bytes(12)
        return ipv6_header(CN, MN1, 135, len(mh)) + mh
    if kind == "garbage":
        return random_bytes(rnd, size % 200)
    if kind == "truncated":
        p = inner(CN, MN1, size)
        return p[: rnd.randrange(len(p))]
    if kind == "tel":
        return tel_packet(size, rnd)
    return inner(CN, MN1, 1500)   # too big once tunnelled


class WireGen:
    """Builds wire-side packets as the mobile nodes (and attackers) would."""

    def __init__(self, topo):
        self.topo = topo
        self.seq = {}
        self.sent = []

    def esp(self, hoa, purpose, payload, nh=41, seq=None, src=COA1, ext=b"", first_nh=50):
        sa = self.topo.mn_sa(hoa, purpose)
        if seq is None:
            seq = self.seq.get(sa.spi, 0) + 1
            self.seq[sa.spi] = seq
        body = ext + sa.seal(seq, payload, nh, b"\x42" * 16 if sa.alg.iv_len == 16 else None)
        pkt = ipv6_header(src, HA, first_nh, len(body)) + body
        self.sent.append(pkt)
        return pkt

    def packet(self, kind, size, rnd):
        if kind == "esp":
            return self.esp(MN1, "payload", inner(MN1, CN, size))
        if kind == "esp_old" and self.seq:
            return self.esp(MN1, "payload", inner(MN1, CN, size), seq=rnd.randrange(1, 200))
        if kind == "esp_dup" and self.sent:
            return rnd.choice(self.sent)
        if kind == "esp_flip":
            p = bytearray(self.esp(MN1, "payload", inner(MN1, CN, size)))
            i = rnd.randrange(len(p))
            p[i] ^= 1 << rnd.randrange(8)
            return bytes(p)
        if kind == "esp_trunc":
            p = self.esp(MN1, "payload", inner(MN1, CN, size))
            return p[: rnd.randrange(len(p))]
        if kind == "esp_badsrc":   # inner source is not the SA's home address
            return self.esp(MN1, "payload", inner(EVIL, CN, size))
        if kind == "esp_dummy":
            return self.esp(MN1, "payload", b"\0" * (size % 50), nh=59)
        if kind == "rr":
            return self.esp(MN1, "return-routability", inner(MN1, CN, size), src=EVIL)
        if kind in ("bu", "bu_wrong_hao"):
            hoa = MN1 if kind == "bu" else MN2
            mh = bytes([59, 1, 5, 0, 0, 0, 0, 1, 0x80, 0, 0, 10]) + bytes(4)
            return self.esp(MN1, "binding", mh, nh=135, ext=hao_destopt(hoa, 50), first_nh=60)
        if kind == "plain_ok":
            return outer(COA2, HA, 41, inner(MN2, CN, size))
        if kind == "plain_badsrc":
            return outer(EVIL, HA, 41, inner(MN2, CN, size))
        if kind == "plain_mn1":   # MN1 has a payload SA: plain is refused
            return outer(COA1, HA, 41, inner(MN1, CN, size))
        if kind == "unknown_spi":
            return outer(COA1, HA, 50, bytes.fromhex("0000beef00000001") + bytes(size % 80))
        if kind == "mh_clear":
            return outer(COA1, HA, 135, bytes([59, 1, 5, 0]) + bytes(12))
        if kind == "frag":
            return outer(COA1, HA, 44, bytes(8) + bytes(size % 40))
        if kind == "hao_payload":  # RFC 6275 §9.3.1: from MN1's CoA or not
            return self.esp(MN1, "payload", inner(MN1, CN, size), src=rnd.choice([COA1, EVIL]),
                            ext=hao_destopt(MN1, 50), first_nh=60)
        if kind == "hao_icmp":
            return outer(rnd.choice([COA1, EVIL]), HA, 60,
                         hao_destopt(MN1, 58) + bytes([128, 0, 0, 0, 0, 0, 0, 1]))
        return random_bytes(rnd, size % 120)


def compare(topo, direction, packets, ivs=None):
    got, want = topo.run(direction, packets, ivs)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"packet {k}: cython {g[:2]} ref {w[:2]}\n{packets[k].hex()}"


def compare_counters(topo):
    ref = topo.ref.counters()
    eng = topo.engine.counters()
    for reason, n in ref["reasons"].items():
        assert eng["drops"][reason] == n, reason
    for verdict, n in ref["verdicts"].items():
        assert eng["verdicts"][verdict] == n, verdict
    for sa in topo.sad.sas():
        rc = ref["sa"][sa["spi"]]
        d = sa["direction"]
        assert sa["packets_" + d] == rc["packets_" + d]
        assert sa["bytes_" + d] == rc["bytes_" + d]
        assert sa["drops"] == {k: v for k, v in rc["drops"].items() if v}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ALGS)
@SETTINGS
@given(data=st.data())
def test_random_batches_match_reference(alg, backend, data):
    esn = data.draw(st.booleans(), "esn")
    window = data.draw(st.sampled_from([0, 32, 64, 1024]), "window")
    topo = make_topo(alg, esn, backend, window=window, seed=data.draw(st.integers(0, 99)))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    gen = WireGen(topo)
    for _ in range(data.draw(st.integers(1, 4), "batches")):
        n = data.draw(st.integers(1, 24))
        if data.draw(st.booleans()):
            kinds = data.draw(st.lists(st.sampled_from(HOME_KINDS), min_size=n, max_size=n))
            pkts = [home_packet(k, rnd.randrange(40, 1400), rnd) for k in kinds]
            ivs = [random_bytes(rnd, 16) for _ in pkts]
            compare(topo, "encap", pkts, ivs)
        else:
            kinds = data.draw(st.lists(st.sampled_from(WIRE_KINDS), min_size=n, max_size=n))
            compare(topo, "decap", [gen.packet(k, rnd.randrange(40, 1400), rnd) for k in kinds])
    compare_counters(topo)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ALGS)
def test_batches_mixing_sas_match_reference(alg, backend):
    """Payload and return-routability SAs (different keys) interleaved in one
    batch, both directions: a backend must not let one packet's key schedule
    leak into another's (ipsec-mb bursts did)."""
    topo = make_topo(alg, False, backend, window=0)
    rnd = random.Random(7)
    home = [home_packet(k, 40 + 37 * i, rnd) for i, k in enumerate(["mn1", "hot"] * 20)]
    compare(topo, "encap", home, [random_bytes(rnd, 16) for _ in home])
    gen = WireGen(topo)
    compare(topo, "decap", [gen.packet(k, 60 + 31 * i, rnd)
                            for i, k in enumerate(["esp", "rr", "bu"] * 13)])
    # short runs per SA (below a burst): ipsec-mb's job manager path
    short = [home_packet(k, 100 + i, rnd) for i, k in enumerate(["mn1", "hot", "mn1", "hot", "mn1"])]
    compare(topo, "encap", short, [random_bytes(rnd, 16) for _ in short])
    compare(topo, "decap", [gen.packet(k, 90 + i, rnd) for i, k in enumerate(["esp", "rr", "bu", "rr"])])
    compare_counters(topo)
