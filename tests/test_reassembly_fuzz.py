"""Property-based fuzzing of fastpath.reassembly and of the control thread's
slow path (ControlPlane._punt): random fragment streams - random offsets,
lengths, flags, identifications and sources, headers before the Fragment
header, garbage bytes, truncations, lying Payload Lengths, time jumps - with
small limits so that eviction and expiry happen too.

Invariants checked after every call:
- nothing raises;
- every fragment is accounted exactly once: dropped alone under a fragment
  counter, part of a datagram that left (reassembled, or discarded as a whole
  under a datagram counter), or still held;
- the bytes gauge is the sum of what the live datagrams hold, tombstones hold
  nothing, the limits hold, and all returns to 0 after expire(far future);
- every packet that comes out is IPv6 with a consistent Payload Length and
  no Fragment header (unless the input itself named one after the Fragment
  header: a nested one, which the control thread refuses).
A few seconds in all (CI)."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastpath.reassembly import FRAGMENT_HEADER_LEN, Reassembler, _locate
from fastpath.ref.ipv6 import HEADER_LEN, NH_FRAGMENT

SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
FRAGMENT_DROPS = ("atomic", "malformed", "not_multiple_of_8", "duplicate", "after_discard")
DATAGRAM_ENDS = ("reassembled", "overlap", "inconsistent_length", "beyond_end", "timeout",
                 "evicted")
SOURCES = [bytes([0x20, 0x01, 0x0d, 0xb8, 0, 2] + [0] * 9 + [n]) for n in (0x10, 0x20)]
DST = bytes([0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff] + [0] * 9 + [1])
NEXT_HEADERS = (50, 41, 58, 59)       # what the generator puts after the Fragment header


class Audited(Reassembler):
    """A Reassembler that tells how many fragments left with each datagram
    (white box: the hooks are where a datagram's fragments go)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ended_fragments = 0     # fragments of datagrams that left or were discarded
        self.ended_datagrams = 0
        self.too_big_datagrams = 0   # `too_big` also counts single fragments

    def _forget(self, key, d):
        if not d.dead:
            self.ended_fragments += len(d.starts)
            self.ended_datagrams += 1
        super()._forget(key, d)

    def _kill(self, d, why):
        # every discard but too_big comes before the fragment is inserted
        self.ended_fragments += len(d.starts) + (0 if why == "too_big" else 1)
        self.ended_datagrams += 1
        self.too_big_datagrams += why == "too_big"
        return super()._kill(d, why)


def check(r: Audited) -> None:
    c = r.counters()
    live = [d for d in r._datagrams.values() if not d.dead]
    pending = sum(len(d.starts) for d in live)
    dropped_alone = sum(c[k] for k in FRAGMENT_DROPS) + c["too_big"] - r.too_big_datagrams
    assert c["fragments"] == dropped_alone + r.ended_fragments + pending, c
    assert r.ended_datagrams == sum(c[k] for k in DATAGRAM_ENDS) + r.too_big_datagrams, c
    assert c["buffered_bytes"] == sum(d.nbytes for d in r._datagrams.values())
    assert 0 <= c["buffered_bytes"] <= r.max_bytes
    assert c["datagrams_in_progress"] == len(r) <= r.max_datagrams
    for d in r._datagrams.values():
        if d.dead:
            assert d.nbytes == d.have == 0 and not d.starts and not d.pieces
        else:
            assert d.starts == sorted(d.pieces) and d.have == sum(map(len, d.pieces.values()))
            # each fragment costs at least its IPv6 and Fragment headers
            assert d.nbytes >= d.have + len(d.starts) * (HEADER_LEN + FRAGMENT_HEADER_LEN)
            for a, b in zip(d.starts, d.starts[1:]):
                assert a + len(d.pieces[a]) <= b          # no overlap


def check_output(out: bytes, nested_possible: bool) -> None:
    assert len(out) >= HEADER_LEN and out[0] >> 4 == 6
    assert HEADER_LEN + int.from_bytes(out[4:6], "big") == len(out)
    if not nested_possible:
        assert _locate(out) is None


# -- a fragment, well-formed or not ------------------------------------------------------
def ext_header(nh: int, kind: str) -> bytes:
    if kind == "hbh":                                   # PadN
        return bytes([nh, 0, 1, 4, 0, 0, 0, 0])
    # Destination Options: PadN, then a Home Address option (RFC 6275 §6.3)
    return bytes([nh, 2, 1, 2, 0, 0, 201, 16]) + bytes(range(16))


def build(src: bytes, ident: int, exts, offset: int, more: bool, nh: int, data: bytes,
          reserved: int = 0) -> bytes:
    frag = bytes([nh, 0]) + struct.pack("!HI", offset | more | reserved << 1, ident)
    chain, nxt = b"", NH_FRAGMENT
    for kind in reversed(exts):
        chain = ext_header(nxt, kind) + chain
        nxt = {"hbh": 0, "dst": 60}[kind]
    body = chain + frag + data
    return struct.pack("!IHBB", 6 << 28, len(body) & 0xFFFF, nxt, 64) + src + DST + body


@st.composite
def mutated(draw, pkt: bytes) -> bytes:
    mutation = draw(st.sampled_from(["none"] * 30 + ["truncate", "byte", "plen", "garbage",
                                                      "version"]))
    if mutation == "truncate":
        pkt = pkt[:draw(st.integers(0, len(pkt)))]
    elif mutation == "byte" and pkt:
        i = draw(st.integers(0, min(len(pkt), 120) - 1))
        pkt = pkt[:i] + bytes([draw(st.integers(0, 255))]) + pkt[i + 1:]
    elif mutation == "plen":
        pkt = pkt[:4] + struct.pack("!H", draw(st.integers(0, 65535))) + pkt[6:]
    elif mutation == "garbage":
        pkt = draw(st.binary(max_size=120))
    elif mutation == "version":
        pkt = bytes([0x45]) + pkt[1:]
    return pkt


@st.composite
def fragments(draw):
    """One fragment with random fields (it rarely meets others of its datagram)."""
    unit = draw(st.sampled_from([8, 64, 1232]))
    offset = draw(st.one_of(st.integers(0, 12).map(lambda k: k * unit),
                            st.integers(0, 8191).map(lambda k: k * 8)))
    length = draw(st.one_of(st.integers(0, 4).map(lambda k: k * unit),
                            st.integers(0, 80), st.sampled_from([65535 - 48, 1232])))
    data = (draw(st.binary(min_size=1, max_size=16)) * (length // 16 + 1))[:length]
    pkt = build(draw(st.sampled_from(SOURCES)), draw(st.integers(0, 2)),
                draw(st.lists(st.sampled_from(["hbh", "dst"]), max_size=2)),
                offset, draw(st.booleans()), draw(st.sampled_from(NEXT_HEADERS)), data,
                draw(st.integers(0, 3)))
    return draw(mutated(pkt))


@st.composite
def datagram(draw):
    """The fragments of one datagram, cut at random multiples of 8, some
    lost, duplicated, overlapped, forged or mutated, in random order."""
    src, ident = draw(st.sampled_from(SOURCES)), draw(st.integers(0, 2))
    exts = draw(st.lists(st.sampled_from(["hbh", "dst"]), max_size=2))
    nh = draw(st.sampled_from(NEXT_HEADERS))
    size = draw(st.one_of(st.integers(1, 200), st.sampled_from([1500, 65535 - 80])))
    payload = bytes(draw(st.integers(0, 255)) for _ in range(4)) * (size // 4 + 1)
    payload = payload[:size]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, (size - 1) // 8)), max_size=8))))
    bounds = [0] + [c * 8 for c in cuts if c * 8 < size] + [size]
    pieces = [(a, b) for a, b in zip(bounds, bounds[1:])]
    out = []
    for a, b in pieces:
        if draw(st.integers(0, 9)) == 0:
            continue                                     # lost
        out.append(build(src, ident, exts, a, b < size, nh, payload[a:b]))
        if draw(st.integers(0, 9)) == 0:
            out.append(out[-1])                          # duplicated
    for _ in range(draw(st.integers(0, 2))):             # extra: overlap, beyond, forged
        a = draw(st.integers(0, size // 8 + 2)) * 8
        n = draw(st.integers(1, 64))
        out.append(build(src, ident, exts, a, draw(st.booleans()), nh,
                         bytes(draw(st.integers(0, 255)) for _ in range(n))))
    out = [draw(mutated(p)) for p in out]
    return draw(st.permutations(out))


@st.composite
def streams(draw):
    """Several datagrams interleaved, with single random fragments among them."""
    parts = draw(st.lists(st.one_of(datagram(), st.lists(fragments(), max_size=3)),
                          min_size=1, max_size=4))
    queues = [list(p) for p in parts if p]
    out = []
    while queues:
        q = queues[draw(st.integers(0, len(queues) - 1))]
        out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def nests(pkt: bytes) -> bool:
    """Whether the Fragment header of `pkt` (if any) names another one or an
    extension header that could lead to one."""
    where = _locate(pkt)
    return where is not None and where[0] < len(pkt) and pkt[where[0]] not in NEXT_HEADERS


@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
@given(streams(), st.data(), st.integers(1, 6),
       st.sampled_from([120, 600, 3000, 1 << 20, 4 << 20]))
def test_random_fragment_streams_are_accounted(stream, data, max_datagrams, max_bytes):
    r = Audited(max_datagrams=max_datagrams, max_bytes=max_bytes)
    now, nested = 1000.0, False
    for pkt in stream:
        now += data.draw(st.sampled_from([0.0] * 12 + [0.5, 20.0, 61.0]))
        expire_first = data.draw(st.integers(0, 7)) == 0
        nested |= nests(pkt)
        if expire_first:
            r.expire(now)
            check(r)
        out = r.add(pkt, now)
        if out is not None:
            check_output(out, nested)
        check(r)
    for k, n in r.counters().items():
        if n and k != "fragments":
            event(k)
    r.expire(now + 1e9)
    check(r)
    c = r.counters()
    assert len(r) == 0 and c["buffered_bytes"] == 0 and c["datagrams_in_progress"] == 0
    assert c["fragments"] == len(stream)


# -- the control thread's slow path --------------------------------------------------------
from pathlib import Path  # noqa: E402

from scapy.layers.inet6 import HAO, MIP6MH_BU, IPv6, IPv6ExtHdrDestOpt  # noqa: E402
from test_reassembly_engine import control_plane, esp_tunnel, fragment, read_all  # noqa: E402
from topo import CN, COA2, HA, MN1, MN2, inner, make_topo, outer  # noqa: E402

from fastpath.binding import BindingCache  # noqa: E402
from fastpath.config import load  # noqa: E402
from fastpath.ref.ipv6 import ntop  # noqa: E402

_TOPO = make_topo()
_CP = control_plane(_TOPO, vnet=False)     # one engine: each registers a worker slot
# a binding cache, for the punts that are not fragments (BindingCache.unprotected)
_CP[0].bindings = BindingCache(_TOPO.sad, load(Path(__file__).parent.parent / "examples" / "ha.toml"))
_CLEAR_BU = bytes(IPv6(src="2001:db8:4::40", dst=ntop(HA)) / IPv6ExtHdrDestOpt(
    options=[HAO(hoa=ntop(MN1))]) / MIP6MH_BU(seq=1, flags="AH", mhtime=100))
# whole datagrams' fragments (ESP tunnel, plain tunnel, BU in the clear)
_GROUPS = [fragment(esp_tunnel(_TOPO, seq=s)[1], ident=s) for s in (7, 8)]
_GROUPS += [fragment(outer(COA2, HA, 41, inner(MN2, CN, 1300)), ident=10),
            fragment(_CLEAR_BU, mtu=72, ident=9)]
_REAL = [_CLEAR_BU] + [f for g in _GROUPS for f in g]


@st.composite
def punts(draw):
    kind = draw(st.sampled_from(["random", "fragment", "real", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "fragment":
        return draw(fragments())
    pkt = draw(st.sampled_from(_REAL))
    if kind == "mutated":
        i = draw(st.integers(0, len(pkt) - 1))
        pkt = pkt[:i] + bytes([draw(st.integers(0, 255))]) + pkt[i + 1:]
    return pkt


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_OK)
@given(st.lists(st.one_of(punts().map(lambda p: [p]),
                         st.sampled_from(_GROUPS).flatmap(st.permutations)), max_size=20)
       .map(lambda groups: [p for g in groups for p in g]))
def test_control_plane_slow_path_never_raises(pkts):
    cp, home = _CP
    cp.reassembler = Reassembler()
    cp.events.clear()
    decisions = []
    for p in pkts:
        cp._punt(p, decisions)
    cp._expire_fragments()
    cp.reassembler.expire(float("inf"))
    assert cp.reassembler.buffered_bytes == 0 and len(cp.reassembler) == 0
    read_all(home)
    for k in cp.events:
        event(k.split("next_header_")[0])

