"""fastpath.reassembly against scapy's fragment6 / IPv6ExtHdrFragment (an
independent implementation of RFC 8200 §4.5): orders, duplicates, overlaps,
lengths, limits, timeouts, atomic fragments, headers before the Fragment
header. The expected packet is always built by scapy without a Fragment
header, never by undoing ours."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (HAO, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, fragment6)
from scapy.packet import Raw, raw

from fastpath.reassembly import COUNTERS, MAX_PAYLOAD, Reassembler, fragment_header_offset

SRC, DST, HOA = "2001:db8:2::10", "2001:db8:ffff::1", "2001:db8:1::10"
ESP = 50


def body(n: int, seed: int = 0) -> bytes:
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def fragmented(payload: bytes, mtu: int = 1280, ident: int = 0x1234, ext=(), nh: int = ESP,
               src: str = SRC) -> list[bytes]:
    """scapy's fragments of IPv6 / ext... / Fragment / payload."""
    p = IPv6(src=src, dst=DST)
    for e in ext:
        p = p / e.copy()
    p = p / IPv6ExtHdrFragment(id=ident, nh=nh) / Raw(payload)
    return [raw(f) for f in fragment6(p, mtu)]


def whole(payload: bytes, ext=(), nh: int = ESP, src: str = SRC) -> bytes:
    """The same packet as scapy builds it with no Fragment header."""
    layers = [IPv6(src=src, dst=DST)] + [e.copy() for e in ext]
    for a, b in zip(layers, layers[1:]):
        a.nh = {IPv6ExtHdrDestOpt: 60, IPv6ExtHdrHopByHop: 0}[type(b)]
    layers[-1].nh = nh
    p = layers[0]
    for layer in layers[1:]:
        p = p / layer
    return raw(p / Raw(payload))


def feed(r: Reassembler, frags, now: float = 0.0) -> list[bytes]:
    return [out for f in frags if (out := r.add(f, now)) is not None]


def counts(r: Reassembler, **want) -> None:
    got = {k: v for k, v in r.counters().items() if v and k in COUNTERS}
    assert got == want


# -- orders ---------------------------------------------------------------------
@pytest.mark.parametrize("order", ["in-order", "reverse", "shuffled"])
def test_orders(order):
    data = body(4000)
    frags = fragmented(data)
    assert len(frags) == 4
    if order == "reverse":
        frags = frags[::-1]
    elif order == "shuffled":
        random.Random(7).shuffle(frags)
    r = Reassembler()
    assert feed(r, frags) == [whole(data)]
    counts(r, fragments=4, reassembled=1)
    assert len(r) == 0 and r.buffered_bytes == 0


def test_only_the_last_fragment_completes():
    frags = fragmented(body(3000))
    r = Reassembler()
    assert [r.add(f, 0) for f in frags[:-1]] == [None] * (len(frags) - 1)
    assert len(r) == 1 and r.buffered_bytes == sum(map(len, frags[:-1]))
    assert r.add(frags[-1], 0) == whole(body(3000))


def test_duplicates_are_dropped_alone():
    data = body(3000)
    frags = fragmented(data)
    r = Reassembler()
    got = feed(r, [frags[0], frags[0], frags[1], frags[1], frags[2]])
    assert got == [whole(data)]
    counts(r, fragments=5, duplicate=2, reassembled=1)


def test_two_datagrams_interleaved_and_keyed_by_id_and_source():
    a, b, c = body(3000, 1), body(3000, 2), body(3000, 3)
    fa = fragmented(a, ident=1)
    fb = fragmented(b, ident=2)
    fc = fragmented(c, ident=1, src="2001:db8:3::20")     # same id, other source
    r = Reassembler()
    got = feed(r, [x for trio in zip(fa, fb, fc) for x in trio])
    assert got == [whole(a), whole(b), whole(c, src="2001:db8:3::20")]


# -- discards ---------------------------------------------------------------------
def test_overlap_discards_the_datagram_and_its_later_fragments():
    data = body(3000)
    frags = fragmented(data)
    # a fragment at offset 8 overlapping the first one (RFC 5722)
    evil = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=0x1234, nh=ESP, offset=1, m=1)
               / Raw(b"\0" * 64))
    r = Reassembler()
    assert feed(r, [frags[0], evil] + frags[1:]) == []
    counts(r, fragments=len(frags) + 1, overlap=1, after_discard=len(frags) - 1)
    assert r.buffered_bytes == 0


def test_same_offset_other_bytes_is_an_overlap():
    frags = fragmented(body(3000))
    forged = bytearray(frags[1])
    forged[-1] ^= 1
    r = Reassembler()
    assert feed(r, [frags[1], bytes(forged)] + frags) == []
    assert r.counters()["overlap"] == 1


def test_not_multiple_of_8_and_zero_length_and_truncated():
    r = Reassembler()
    odd = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=9, nh=ESP, offset=0, m=1)
              / Raw(b"x" * 13))
    empty = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=9, nh=ESP, offset=2, m=1))
    cut = raw(IPv6(src=SRC, dst=DST, nh=44) / Raw(b"\x32\0\0"))   # Fragment header cut short
    lying = bytearray(fragmented(body(3000))[0])
    lying[5] += 1                                                 # Payload Length != length
    assert feed(r, [odd, empty, cut, bytes(lying)]) == []
    counts(r, fragments=4, not_multiple_of_8=1, malformed=3)
    assert len(r) == 0


def test_inconsistent_last_fragments():
    data = body(3000)
    frags = fragmented(data)
    short_last = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=0x1234, nh=ESP,
                                                                offset=1000 // 8, m=0)
                     / Raw(b"y" * 8))
    r = Reassembler()
    # the real last fragment ends at 3000; another one says 1008
    assert feed(r, [frags[-1], short_last] + frags[:-1]) == []
    assert r.counters()["inconsistent_length"] == 1
    # a last fragment ending before data already held
    r = Reassembler()
    assert feed(r, [frags[1], short_last]) == []
    assert r.counters()["inconsistent_length"] == 1


def test_fragment_beyond_the_end():
    frags = fragmented(body(3000))
    past = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=0x1234, nh=ESP,
                                                          offset=4000 // 8, m=1)
               / Raw(b"z" * 16))
    r = Reassembler()
    assert feed(r, [frags[-1], past] + frags[:-1]) == []
    counts(r, fragments=len(frags) + 1, beyond_end=1, after_discard=len(frags) - 1)


def test_reassembled_payload_above_65535():
    r = Reassembler()
    # offset 65528 + 16 bytes: the Payload Length would be 65552
    big = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=3, nh=ESP, offset=65528 // 8, m=0)
              / Raw(b"q" * 16))
    assert r.add(big, 0) is None
    counts(r, fragments=1, too_big=1)
    # the largest packet scapy can fragment (Payload Length 65535 with the
    # Fragment header) goes through
    ext = [IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])]
    data = body(MAX_PAYLOAD - 24 - 8)
    frags = fragmented(data, mtu=9000, ext=ext)
    r = Reassembler()
    [out] = feed(r, frags)
    assert out == whole(data, ext=ext)
    assert len(out) == 40 + MAX_PAYLOAD - 8


# -- atomic fragments -------------------------------------------------------------------
def test_atomic_fragment_is_a_whole_packet_and_leaves_reassembly_alone():
    data = body(3000)
    frags = fragmented(data, ident=0x1234)
    atomic = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=0x1234, nh=ESP, offset=0, m=0)
                 / Raw(b"a" * 100))
    r = Reassembler()
    assert r.add(frags[0], 0) is None
    assert r.add(atomic, 0) == whole(b"a" * 100)          # RFC 6946 §4
    assert feed(r, frags[1:]) == [whole(data)]
    counts(r, fragments=len(frags) + 1, atomic=1, reassembled=1)


# -- headers before the Fragment header --------------------------------------------------
def test_destination_options_with_a_home_address_are_kept():
    ext = [IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])]
    data = body(2500)
    frags = fragmented(data, ext=ext)
    assert fragment_header_offset(frags[0]) == 40 + 24
    r = Reassembler()
    [out] = feed(r, frags[::-1])
    assert out == whole(data, ext=ext)
    assert out[6] == 60 and out[40] == ESP          # the header before names ESP now


def test_hop_by_hop_and_destination_options():
    ext = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])]
    data = body(2000)
    r = Reassembler()
    [out] = feed(r, fragmented(data, ext=ext))
    assert out == whole(data, ext=ext)


def test_next_header_is_the_first_fragments():
    data = body(3000)
    frags = [bytearray(f) for f in fragmented(data, nh=41)]
    frags[1][40] = 17                   # RFC 8200: only offset 0's Next Header counts
    r = Reassembler()
    [out] = feed(r, map(bytes, frags))
    assert out == whole(data, nh=41)


def test_not_a_fragment():
    assert fragment_header_offset(whole(b"x" * 64)) is None
    assert fragment_header_offset(b"\x60" + bytes(10)) is None


# -- time and limits -------------------------------------------------------------------
def test_timeout():
    clock = [100.0]
    r = Reassembler(timeout=60, clock=lambda: clock[0])
    frags = fragmented(body(3000))
    assert r.add(frags[0]) is None
    clock[0] += 59.9
    assert r.expire() == 0 and len(r) == 1
    clock[0] += 0.2
    assert r.expire() == 1 and len(r) == 0 and r.buffered_bytes == 0
    # what comes after starts a new datagram, which cannot complete without the first
    assert feed(r, frags[1:], clock[0]) == []
    assert r.counters()["timeout"] == 1 and len(r) == 1


def test_timeout_is_from_the_first_fragment_and_checked_on_add():
    r = Reassembler(timeout=10)
    frags = fragmented(body(3000))
    r.add(frags[0], 0.0)
    r.add(frags[1], 9.0)
    assert r.add(frags[2], 10.5) is None         # too late: the datagram went at 10
    assert r.counters()["timeout"] == 1


def test_tombstones_expire_too():
    r = Reassembler(timeout=10)
    frags = fragmented(body(3000))
    r.add(frags[0], 0.0)
    r.add(frags[0][:-1] + bytes([frags[0][-1] ^ 1]), 0.0)     # overlap
    assert len(r) == 1
    r.expire(11.0)
    assert len(r) == 0 and r.counters()["timeout"] == 0
    assert feed(r, frags, 12.0) == [whole(body(3000))]


def test_datagram_limit_evicts_the_oldest():
    r = Reassembler(max_datagrams=3)
    firsts = {i: fragmented(body(3000, i), ident=i) for i in range(5)}
    for i in range(5):
        r.add(firsts[i][0], float(i))
    assert len(r) == 3
    counts(r, fragments=5, evicted=2)
    # 2..4 complete; 0 and 1 are gone (their other fragments start anew)
    got = feed(r, [f for i in (2, 3, 4) for f in firsts[i][1:]], 5.0)
    assert got == [whole(body(3000, i)) for i in (2, 3, 4)]
    assert feed(r, firsts[0][1:] + firsts[1][1:], 5.0) == []


def test_byte_limit_evicts_the_oldest_first():
    one = len(fragmented(body(3000))[0])
    r = Reassembler(max_bytes=3 * one)
    fa, fb = fragmented(body(3000, 1), ident=1), fragmented(body(3000, 2), ident=2)
    r.add(fa[0], 0)
    r.add(fa[1], 0)
    r.add(fb[0], 1)
    assert r.buffered_bytes == 3 * one and r.counters()["evicted"] == 0
    r.add(fb[1], 1)                   # over: the oldest (a) goes
    assert r.counters()["evicted"] == 1 and r.buffered_bytes == 2 * one
    assert feed(r, fb[2:], 1) == [whole(body(3000, 2))]
    assert r.buffered_bytes == 0


def test_a_datagram_larger_than_the_byte_limit_goes_itself():
    r = Reassembler(max_bytes=2000)
    frags = fragmented(body(3000))
    assert feed(r, frags) == []
    assert r.counters()["evicted"] == 1 and r.buffered_bytes <= 2000


def test_counters_name_every_counter():
    c = Reassembler().counters()
    assert set(COUNTERS) <= set(c) and c["datagrams_in_progress"] == 0
    assert all(COUNTERS[k].endswith(".") for k in COUNTERS)


# -- property: any order, any size, any MTU -------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 9000), mtu=st.integers(1280, 4000), seed=st.integers(0, 2**32 - 1),
       hao=st.booleans(), dup=st.integers(0, 3))
def test_any_order_reproduces_the_packet(size, mtu, seed, hao, dup):
    ext = [IPv6ExtHdrDestOpt(options=[HAO(hoa=HOA)])] if hao else []
    data = body(size, seed)
    frags = fragmented(data, mtu=mtu, ext=ext, ident=seed)
    rnd = random.Random(seed)
    frags += [rnd.choice(frags) for _ in range(dup)]            # exact duplicates too
    rnd.shuffle(frags)
    r = Reassembler()
    out = feed(r, frags)
    want = whole(data, ext=ext)
    # Every packet out is the original. Without duplicates there is exactly
    # one; duplicates arriving after completion may make another (as in any
    # stack: ESP's replay window drops it later), and an atomic fragment
    # (scapy sends a packet that fits as offset 0, M=0) comes out each time.
    assert out and all(o == want for o in out)
    if dup == 0:
        assert len(out) == 1
    # a duplicate that came after the datagram was complete starts a new
    # one, which only the timeout removes
    assert len(r) <= dup
    r.expire(61.0)
    assert len(r) == 0 and r.buffered_bytes == 0


def test_a_completing_fragment_evicts_nothing():
    """The fragment that completes a datagram frees its bytes at once: it must
    not first evict other datagrams to make room for itself."""
    fa, fb = fragmented(body(3000, 1), ident=1), fragmented(body(1500, 2), ident=2)
    assert len(fb) == 2
    r = Reassembler(max_bytes=len(fa[0]) + len(fb[0]) + len(fb[1]) - 1)
    r.add(fa[0], 0)
    r.add(fb[0], 1)
    assert r.add(fb[1], 1) == whole(body(1500, 2))
    counts(r, fragments=3, reassembled=1)
    assert len(r) == 1 and r.buffered_bytes == len(fa[0])
    assert feed(r, fa[1:], 2) == [whole(body(3000, 1))]


def test_making_room_is_not_a_walk_over_every_datagram():
    """At the byte limit each new fragment evicts the oldest datagram: that
    must cost O(1), not a copy of every key held (a flood at the limit made
    each fragment ~5x dearer with 1000 datagrams held)."""
    from collections import OrderedDict

    class Counting(OrderedDict):
        seen = 0

        def __iter__(self):
            for k in super().__iter__():
                Counting.seen += 1
                yield k

    first = fragmented(body(1500, 1))[0]
    frags = [first[:44] + i.to_bytes(4, "big") + first[48:] for i in range(600)]
    r = Reassembler(max_bytes=200 * len(frags[0]), max_datagrams=1000)
    r._datagrams = Counting()
    for f in frags:
        r.add(f, 0.0)
    assert r.counters()["evicted"] == 400 and len(r) == 200
    assert Counting.seen < 10 * len(frags)


@pytest.mark.parametrize("pkt", [
    b"", b"\x60" * 39, bytes(40),
    bytes([0x45]) + bytes(59),                                              # IPv4
    raw(IPv6(src=SRC, dst=DST, nh=0) / Raw(bytes([44, 1]) + bytes(6))),     # HbH cut short
    raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop(nh=44) / Raw(b"\x32\0")),  # Fragment cut
], ids=["empty", "39-bytes", "version-0", "ipv4", "hbh-cut", "fragment-cut"])
def test_garbage_is_counted_not_raised(pkt):
    r = Reassembler()
    assert r.add(pkt, 0.0) is None
    counts(r, fragments=1, malformed=1)
    assert len(r) == 0 and r.buffered_bytes == 0


def test_eight_thousand_tiny_fragments_of_one_datagram():
    """The most pieces a datagram can have (8-byte pieces up to offset
    65528): linear in their number, each charged its whole packet, and the
    datagram comes out whole; 2000 more copies are duplicates."""
    data = body(8191 * 8)
    head = raw(IPv6(src=SRC, dst=DST, plen=16, nh=44))
    frags = [head + bytes([ESP, 0]) + (k << 3 | (k < 8190)).to_bytes(2, "big")
             + (5).to_bytes(4, "big") + data[8 * k:8 * k + 8] for k in range(8191)]
    order = list(range(8190))
    random.Random(3).shuffle(order)
    r = Reassembler()
    assert feed(r, [frags[k] for k in order] + [frags[k] for k in order[:2000]]) == []
    assert r.buffered_bytes == 8190 * len(frags[0]) <= r.max_bytes
    assert r.add(frags[8190], 0.0) == whole(data)
    counts(r, fragments=8191 + 2000, duplicate=2000, reassembled=1)
    assert r.buffered_bytes == 0
