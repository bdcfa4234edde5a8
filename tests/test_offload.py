"""TSO splitting and GRO merging for the home TUN with IFF_VNET_HDR
(fastpath/core/offload.pyx), checked against scapy's IPv6/TCP/UDP layers:
every segment we cut must be what scapy builds for the same fields, with a
checksum scapy computes the same; merged writes must carry the kernel's
virtio_net_hdr semantics (NEEDS_CSUM with the pseudo-header sum, TCPV6,
gso_size) and split back into exactly the segments that went in."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from fastpath.core import offload

SRC, DST = "2001:db8:99::1", "2001:db8:1::10"
F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 0, 1, 4, 5, 0x80
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def unvnet(b: bytes) -> tuple[dict, bytes]:
    f = struct.unpack("=BBHHHH", b[:10])
    keys = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
    return dict(zip(keys, f)), b[10:]


def pseudo_sum(pkt: bytes, l4_len: int, nh: int) -> int:
    """The folded, uncomplemented IPv6 pseudo-header sum: what the kernel
    leaves in the checksum field of a CHECKSUM_PARTIAL packet."""
    s = sum(struct.unpack("!16H", pkt[8:40])) + l4_len + nh
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def super_packet(payload: bytes, mss: int, seq=1000, flags="PA", options=TS, ecn=False) -> bytes:
    """A TCP/IPv6 super-packet as the kernel hands it to a TUN with TSO6."""
    p = bytearray(bytes(IPv6(src=SRC, dst=DST) / TCP(sport=40000, dport=5201, seq=seq, ack=99,
                                                  flags=flags, window=512, options=options)
                        / Raw(payload)))
    p[56:58] = struct.pack("!H", pseudo_sum(bytes(p), len(p) - 40, 6))
    gso = GSO_TCPV6 | (GSO_ECN if ecn else 0)
    # hdr_len as the kernel reports it (its linear length), not the header length
    return vnet(F_NEEDS_CSUM, gso, 200, mss, 40, 16) + bytes(p)


def scapy_checksum_ok(seg: bytes) -> bool:
    p = IPv6(seg)
    l4 = p.payload
    got = l4.chksum
    del l4.chksum
    return IPv6(bytes(p)).payload.chksum == got


# --- TSO: one read, many segments -------------------------------------------------

@pytest.mark.parametrize("size,mss", [(1, 1388), (1388, 1388), (1389, 1388), (10000, 1388),
                                      (65000, 1388), (3000, 536), (60000, 8948)])
def test_split_matches_scapy(size, mss):
    payload = os.urandom(size)
    kind, segs = offload.split(super_packet(payload, mss, seq=2**32 - 5000), 9100)
    assert kind == "split"
    assert len(segs) == -(-size // mss)
    seq = 2**32 - 5000
    got = b""
    for i, s in enumerate(segs):
        p = IPv6(s)
        assert p.plen == len(s) - 40 and p.nh == 6
        assert p.src == SRC and p.dst == DST
        t = p[TCP]
        assert t.seq == seq % 2**32 and t.ack == 99 and t.window == 512
        assert t.options == IPv6(super_packet(b"x", mss)[10:])[TCP].options
        last = i == len(segs) - 1
        assert bool(t.flags.P) == last and t.flags.A
        assert len(t.payload) == (size - mss * i if last else mss)
        assert scapy_checksum_ok(s), f"segment {i}"
        seq += len(t.payload)
        got += bytes(t.payload)
    assert got == payload


def test_split_fin_only_on_last_and_cwr_only_on_first():
    kind, segs = offload.split(super_packet(os.urandom(5000), 1000, flags="FPAC", ecn=True), 2048)
    assert kind == "split" and len(segs) == 5
    flags = [IPv6(s)[TCP].flags for s in segs]
    assert flags[0].C and not any(f.C for f in flags[1:])
    assert flags[-1].F and flags[-1].P and not any(f.F or f.P for f in flags[:-1])
    assert all(scapy_checksum_ok(s) for s in segs)


def test_split_without_ecn_keeps_cwr():
    kind, segs = offload.split(super_packet(os.urandom(3000), 1000, flags="AC"), 2048)
    assert all(IPv6(s)[TCP].flags.C for s in segs)


@pytest.mark.parametrize("l4", [
    lambda: TCP(sport=1, dport=2, flags="S", options=TS),
    lambda: UDP(sport=1, dport=2) / Raw(os.urandom(333)),
    lambda: UDP(sport=1, dport=2) / Raw(os.urandom(1000)),
    lambda: ICMPv6EchoRequest(id=7, seq=1, data=os.urandom(57)),
], ids=["tcp-syn", "udp-odd", "udp", "icmpv6"])
def test_plain_packet_checksum_completed(l4):
    """NEEDS_CSUM without GSO: the field holds the pseudo-header sum and we
    complete it; the result is what scapy computes."""
    layer = l4()
    pkt = bytearray(bytes(IPv6(src=SRC, dst=DST) / layer))
    want = bytes(pkt)
    nh = pkt[6]
    off = {6: 16, 17: 6, 58: 2}[nh]
    pkt[40 + off:42 + off] = struct.pack("!H", pseudo_sum(bytes(pkt), len(pkt) - 40, nh))
    kind, out = offload.split(vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, 40, off) + bytes(pkt))
    assert kind == "plain" and out == [want]


def test_plain_packet_untouched_without_needs_csum():
    pkt = bytes(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(b"abc"))
    assert offload.split(vnet() + pkt) == ("plain", [pkt])


def test_header_only_super_packet_is_one_segment():
    kind, out = offload.split(super_packet(b"", 1000, flags="A"), 2048)
    assert kind == "plain" and len(out) == 1 and scapy_checksum_ok(out[0])


@pytest.mark.parametrize("mutate", [
    lambda b: b[:5],                                                  # shorter than the header
    lambda b: b[:10] + b[10:50],                                      # truncated TCP header
    lambda b: vnet(F_NEEDS_CSUM, GSO_TCPV4, 0, 1000, 40, 16) + b[10:],   # IPv4 TSO
    lambda b: vnet(F_NEEDS_CSUM, GSO_UDP_L4, 0, 1000, 40, 6) + b[10:],   # UDP GSO (not enabled)
    lambda b: vnet(0, GSO_TCPV6, 0, 1000, 40, 16) + b[10:],          # GSO without NEEDS_CSUM
    lambda b: vnet(F_NEEDS_CSUM, GSO_TCPV6, 0, 0, 40, 16) + b[10:],  # MSS 0
    lambda b: vnet(F_NEEDS_CSUM, GSO_TCPV6, 0, 5000, 40, 16) + b[10:],   # segment > slot
    lambda b: vnet(F_NEEDS_CSUM, GSO_TCPV6, 0, 1000, 48, 16) + b[10:],   # csum_start not L4
    lambda b: vnet(F_NEEDS_CSUM, GSO_TCPV6, 0, 1000, 40, 6) + b[10:],    # not TCP's checksum
    lambda b: b[:-1],                                                 # payload length mismatch
    lambda b: b[:10] + b"\x45" + b[11:],                              # IPv4 header
    lambda b: vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, 40, 9000) + b[10:],  # csum field past the end
    lambda b: vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, 8, 0) + b[10:],      # csum inside the IPv6 header
], ids=["short", "truncated", "tcpv4", "udp-l4", "no-csum", "mss0", "mss-too-big", "csum-start",
        "csum-offset", "plen", "ipv4", "csum-past-end", "csum-in-ip6"])
def test_malformed_offload_requests_are_refused(mutate):
    assert offload.split(mutate(super_packet(os.urandom(3000), 1000)), 2048) == ("bad", [])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=300), st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_split_never_crashes(body, flags, gso, mss, start, off):
    kind, segs = offload.split(vnet(flags, gso, 0, mss, start, off) + body, 2048)
    assert kind in ("plain", "split", "bad")
    assert all(len(s) <= 2048 for s in segs)


# --- GRO: many segments, one write -----------------------------------------------

def segments(n=10, mss=1000, last=None, seq=5000, **kw):
    payload = os.urandom(mss * (n - 1) + (mss if last is None else last))
    kind, segs = offload.split(super_packet(payload, mss, seq=seq, **kw), 9100)
    assert kind == "split"
    return segs


def test_coalesce_round_trip():
    segs = segments(10, 1000, last=321)
    out = offload.coalesce(segs)
    assert len(out) == 1
    h, pkt = unvnet(out[0])
    assert h == {"flags": F_NEEDS_CSUM, "gso_type": GSO_TCPV6, "hdr_len": 40 + 32,
                 "gso_size": 1000, "csum_start": 40, "csum_offset": 16}
    assert IPv6(pkt).plen == len(pkt) - 40 == 32 + 9321
    assert struct.unpack("!H", pkt[56:58])[0] == pseudo_sum(pkt, len(pkt) - 40, 6)
    assert IPv6(pkt)[TCP].flags.P                 # the last segment's PSH is kept
    # what the kernel would segment it into: exactly what came in
    assert offload.split(out[0], 2048) == ("split", segs)


def test_single_segment_written_with_a_plain_header():
    segs = segments(1)
    out = offload.coalesce(segs)
    assert out == [vnet() + segs[0]]


def test_merge_limits():
    segs = segments(70, 900)
    out = offload.coalesce(segs)
    assert [unvnet(o)[0]["gso_type"] for o in out] == [GSO_TCPV6, GSO_TCPV6]
    assert [(len(o) - 10 - 72) // 900 for o in out] == [64, 6]
    big = segments(40, 1388, flags="A") + segments(20, 1388, seq=5000 + 40 * 1388)
    out = offload.coalesce(big)
    assert len(out) == 2 and all(len(o) - 10 <= 65535 for o in out)   # 60 x 1388 > 65495
    assert b"".join(s for o in out for s in offload.split(o, 2048)[1]) == b"".join(big)


def _edit(seg: bytes, **fields) -> bytes:
    p = IPv6(seg)
    for k, v in fields.items():
        setattr(p[TCP], k, v)
    del p[TCP].chksum
    return bytes(p)


def _hlim(seg: bytes, hlim: int) -> bytes:
    p = IPv6(seg)
    p.hlim = hlim
    return bytes(p)


@pytest.mark.parametrize("change", [
    lambda s: _edit(s, seq=IPv6(s)[TCP].seq + 1),           # a gap
    lambda s: _edit(s, ack=IPv6(s)[TCP].ack + 1),
    lambda s: _edit(s, window=IPv6(s)[TCP].window + 1),
    lambda s: _edit(s, sport=1),
    lambda s: _edit(s, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]),
    lambda s: _edit(s, flags="FA"),
    lambda s: _edit(s, flags="UA", urgptr=3),
    lambda s: _hlim(s, 3),                                  # another hop limit
    lambda s: s[:-1] + bytes([s[-1] ^ 1]),                  # a corrupt segment is never merged
], ids=["seq-gap", "ack", "window", "port", "options", "fin", "urg", "hlim", "bad-csum"])
def test_coalesce_stops_where_the_kernel_would(change):
    segs = segments(6, 1000)
    segs[3] = change(segs[3])
    out = offload.coalesce(segs)
    assert len(out) >= 2
    assert unvnet(out[0])[0]["gso_type"] == GSO_TCPV6
    assert offload.split(out[0], 2048)[1] == segs[:3]
    # nothing lost, nothing reordered: the writes carry the same segments
    back = [s for o in out for s in (offload.split(o, 2048)[1] if unvnet(o)[0]["gso_type"]
                                     else [o[10:]])]
    assert back == segs


def test_psh_or_short_segment_ends_the_run():
    segs = segments(6, 1000)
    short = segments(2, 1000, last=10, seq=5000)      # 5000..6010: a 10-byte second segment
    out = offload.coalesce(short + segs[:0])
    assert len(out) == 1 and unvnet(out[0])[0]["gso_size"] == 1000
    # a segment after a PSH starts a new run
    p = segments(3, 1000, seq=5000)                    # last has PSH
    nxt = segments(3, 1000, seq=8000)
    out = offload.coalesce(p + nxt)
    assert len(out) == 2


def test_non_tcp_and_pure_acks_pass_through():
    udp = bytes(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    ack = bytes(IPv6(src=SRC, dst=DST) / TCP(sport=1, dport=2, flags="A"))
    segs = segments(3, 1000, seq=5000)
    out = offload.coalesce([udp, ack] + segs + [udp])
    assert out[0] == vnet() + udp and out[1] == vnet() + ack and out[3] == vnet() + udp
    assert offload.split(out[2], 2048)[1] == segs


def test_two_flows_interleaved_are_written_in_order():
    a = segments(4, 1000, seq=1)
    b = [_edit(s, sport=2) for s in segments(4, 1000, seq=1)]
    inter = [a[0], a[1], b[0], b[1], a[2], a[3]]
    out = offload.coalesce(inter)
    back = [s for o in out for s in offload.split(o, 2048)[1]]
    assert back == inter
