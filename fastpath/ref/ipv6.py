"""IPv6 header and extension-chain helpers of the reference path.

Addresses are 16-byte ``bytes`` everywhere; ``addr()`` converts from text.
The chain walk is the one of docs/engine-semantics.md (Inbound, step 2).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from fastpath.verdicts import Reason

HEADER_LEN = 40

# Next-header values (IANA "Assigned Internet Protocol Numbers").
NH_HOPOPTS = 0
NH_IPV6 = 41
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ESP = 50
NH_ICMPV6 = 58
NH_NONE = 59
NH_DSTOPTS = 60
NH_MH = 135

# Headers the walk skips by their length; anything else ends the chain.
# The fragment header (44) is deliberately absent: it ends the walk, and the
# caller punts it like any other next header it does not handle.
SKIPPED = (NH_HOPOPTS, NH_ROUTING, NH_DSTOPTS)
NH_AH = 51
# Headers that may stand before a Tunnel Encapsulation Limit (find_tel).
TEL_CHAIN = (NH_HOPOPTS, NH_ROUTING, NH_FRAGMENT, NH_AH, NH_DSTOPTS)
MAX_EXT_HEADERS = 8

OPT_PAD1 = 0
OPT_PADN = 1
OPT_TEL = 4         # Tunnel Encapsulation Limit option, RFC 2473 §4.1.1
OPT_HAO = 201       # Home Address option, RFC 6275 §6.3
HAO_LEN = 16


def addr(a: str | bytes | ipaddress.IPv6Address) -> bytes:
    """A 16-byte address from text, an IPv6Address or 16 bytes."""
    if isinstance(a, (bytes, bytearray)):
        if len(a) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, got {len(a)}")
        return bytes(a)
    return ipaddress.IPv6Address(a).packed


def ntop(a: bytes) -> str:
    """Text form of a 16-byte address (for messages and tests)."""
    return str(ipaddress.IPv6Address(bytes(a)))


def reply_problem(dst: bytes, own: bytes) -> str | None:
    """Why a message answering a packet must not go to that packet's source
    `dst`, or None. Only a unicast address other than our own (`own`) names a
    node to answer (RFC 6275 §9.3.3 for Binding Errors; RFC 4291 §2.5.2: the
    unspecified address is never a destination); a forged source must not
    turn an answer into a multicast, a loop through ourselves or a packet to
    nowhere."""
    a = ipaddress.IPv6Address(bytes(dst))
    if a.is_unspecified:
        return "unspecified"
    if a.is_multicast:
        return "multicast"
    if a.is_loopback:
        return "loopback"
    if a.ipv4_mapped is not None:
        return "IPv4-mapped"
    if bytes(dst) == bytes(own):
        return "our own address"
    return None


def ipv6_header(src: bytes, dst: bytes, nh: int, plen: int, hlim: int = 64,
                tc: int = 0) -> bytes:
    """Fixed header, version 6, traffic class `tc`, flow label 0."""
    return struct.pack("!IHBB", 6 << 28 | tc << 20, plen, nh, hlim) + addr(src) + addr(dst)


def traffic_class(pkt: bytes) -> int:
    return (pkt[0] & 0x0F) << 4 | pkt[1] >> 4


ECN_CE = 3


def ecn_decap(outer: bytes, inner: bytes) -> bytes | None:
    """RFC 6040 §4.2 (normal mode) at decapsulation: the inner packet as it
    leaves the tunnel - unchanged unless the outer header says congestion
    (CE): then an ECN-capable inner packet is marked CE and a not-ECN-capable
    one is dropped (None)."""
    if traffic_class(outer) & 3 != ECN_CE:
        return inner
    if traffic_class(inner) & 3 == 0:
        return None
    return inner[:1] + bytes([inner[1] | 0x30]) + inner[2:]


class IPv6Header(NamedTuple):
    version: int
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes


def parse_ipv6_header(pkt: bytes) -> IPv6Header:
    """Fields of the fixed header; the packet must be at least 40 bytes."""
    if len(pkt) < HEADER_LEN:
        raise ValueError("shorter than an IPv6 header")
    word, plen, nh, hlim = struct.unpack_from("!IHBB", pkt)
    return IPv6Header(word >> 28, (word >> 20) & 0xFF, word & 0xFFFFF,
                      plen, nh, hlim, bytes(pkt[8:24]), bytes(pkt[24:40]))


def well_formed(pkt: bytes) -> bool:
    """Outbound step 1: at least a header, version 6, and a payload length
    that accounts for exactly the rest of the packet."""
    return (len(pkt) >= HEADER_LEN
            and pkt[0] >> 4 == 6
            and HEADER_LEN + struct.unpack_from("!H", pkt, 4)[0] == len(pkt))


class ChainError(Exception):
    """The extension chain cannot be walked; ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(detail or reason.name.lower())
        self.reason = reason


class Chain(NamedTuple):
    next_header: int    # first header the walk did not skip
    offset: int         # where that header (the upper layer) starts
    hoa: bytes | None   # from a Home Address option, if one was seen
    nh_field: int       # offset of the byte holding next_header (6 or an ext header's first byte)


def walk_chain(pkt: bytes, start: int = 0, *, options: bool = True,
               strict: bool = False) -> Chain:
    """Skip hop-by-hop, routing and destination-options headers of the IPv6
    packet at ``pkt[start:]``.

    Raises ChainError(MALFORMED) when a header (or an option inside a
    destination-options header) runs past its end, or when more than
    MAX_EXT_HEADERS headers would be skipped. When several Home Address
    options appear, the last one counts. ``pkt[start:]`` must hold at least a
    fixed header; the rest of its well-formedness is the caller's business.

    options=False walks by the headers' lengths alone: no option is looked
    at (hoa is None, a bad option raises nothing). For the control thread's
    look at what a worker punted (the engine has checked the options): the
    option walk is a Python loop per option byte, ~180 us for one packet of
    Pad1s, which anyone could make the control thread pay per packet.

    strict=True (a home agent's wire side) skips only what RFC 8200 §4 lets
    a node skip: a hop-by-hop header that is not first, a routing header with
    segments left (this node would have to act on it) or an option whose
    action bits are not 00 and that the node does not know (Pad1, PadN, and
    the HAO in destination options are all it knows) raise
    ChainError(MALFORMED).
    """
    nh_field = start + 6
    nh = pkt[nh_field]
    off = start + HEADER_LEN
    hoa = None
    count = 0
    while nh in SKIPPED:
        if count == MAX_EXT_HEADERS:
            raise ChainError(Reason.MALFORMED, "too many extension headers")
        if off + 2 > len(pkt):
            raise ChainError(Reason.MALFORMED, "extension header past the end")
        size = (pkt[off + 1] + 1) * 8
        if off + size > len(pkt):
            raise ChainError(Reason.MALFORMED, "extension header past the end")
        if strict:
            _check_strict(pkt, off, size, nh, count)
        if nh == NH_DSTOPTS and options:
            hoa = find_hao(pkt[off + 2:off + size]) or hoa
        count += 1
        nh_field = off
        nh = pkt[off]
        off += size
    return Chain(nh, off, hoa, nh_field)


def _check_strict(pkt: bytes, off: int, size: int, nh: int, count: int) -> None:
    """walk_chain(strict=True) for the header at pkt[off:off + size]."""
    if nh == NH_HOPOPTS and count:
        raise ChainError(Reason.MALFORMED, "hop-by-hop options header not first")
    if nh == NH_ROUTING:
        if pkt[off + 3]:
            raise ChainError(Reason.MALFORMED, "routing header with segments left")
        return
    i, end = off + 2, off + size
    while i < end:
        kind = pkt[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + pkt[i + 1] > end:
            raise ChainError(Reason.MALFORMED, "option past the end of its header")
        known = kind == OPT_PADN or (nh == NH_DSTOPTS and kind == OPT_HAO
                                      and pkt[i + 1] == HAO_LEN)
        if not known and kind & 0xC0:
            raise ChainError(Reason.MALFORMED, f"option {kind} must not be skipped")
        i += 2 + pkt[i + 1]


def find_hao(options: bytes) -> bytes | None:
    """The address of the last Home Address option (type 201, length 16)
    among the TLV options of one destination-options header, or None.

    An option of type 201 with another length is not a HAO and is skipped;
    an option running past its header raises ChainError(MALFORMED).
    """
    hoa = None
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 2 > len(options) or i + 2 + options[i + 1] > len(options):
            raise ChainError(Reason.MALFORMED, "option past the end of its header")
        length = options[i + 1]
        if kind == OPT_HAO and length == HAO_LEN:
            hoa = bytes(options[i + 2:i + 2 + HAO_LEN])
        i += 2 + length
    return hoa


def hao_destopt(hoa: bytes, nh: int) -> bytes:
    """Destination options header carrying only a HAO (24 bytes).

    The HAO wants 8n+6 alignment (RFC 6275 §6.3): after the 2-byte header a
    4-byte PadN puts it at offset 6, and its 18 bytes end the 24-byte header.
    """
    return (bytes([nh, 2])
            + bytes([OPT_PADN, 2, 0, 0])
            + bytes([OPT_HAO, HAO_LEN]) + addr(hoa))


def rh2(hoa: bytes, nh: int) -> bytes:
    """Type 2 Routing Header (RFC 6275 §6.4): one address, segments left 1."""
    return bytes([nh, 2, 2, 1]) + b"\0\0\0\0" + addr(hoa)


def mh_type(pkt: bytes, start: int = 0) -> int | None:
    """The Mobility Header type of the IPv6 packet at ``pkt[start:]``, or None
    when its chain does not end in a Mobility Header (or cannot be walked)."""
    try:
        chain = walk_chain(pkt, start)
    except ChainError:
        return None
    if chain.next_header != NH_MH or chain.offset + 3 > len(pkt):
        return None
    # MH: payload proto(1), header length(1), MH type(1), ...
    return pkt[chain.offset + 2]


MIN_MTU = 1280          # RFC 8200 §5


def checksum(src: bytes, dst: bytes, nh: int, upper: bytes) -> int:
    """Internet checksum over the IPv6 pseudo-header (RFC 8200 §8.1) and `upper`."""
    data = src + dst + len(upper).to_bytes(4, "big") + bytes(3) + bytes([nh]) + upper
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_error(src: bytes, original: bytes, kind: int, code: int, word: int) -> bytes:
    """An ICMPv6 error message (RFC 4443 §2.1) from `src` to the original's
    source: type, code, the 4-byte field after the checksum, and as much of
    the original as fits in 1280 bytes."""
    body = original[: MIN_MTU - HEADER_LEN - 8]
    icmp = bytes([kind, code, 0, 0]) + word.to_bytes(4, "big") + body
    dst = original[8:24]
    csum = checksum(src, dst, NH_ICMPV6, icmp)
    icmp = icmp[:2] + csum.to_bytes(2, "big") + icmp[4:]
    return ipv6_header(src, dst, NH_ICMPV6, len(icmp)) + icmp


def packet_too_big(src: bytes, original: bytes, mtu: int) -> bytes:
    """ICMPv6 Packet Too Big (RFC 4443 §3.2)."""
    return icmp_error(src, original, 2, 0, mtu)


def parameter_problem(src: bytes, original: bytes, pointer: int) -> bytes:
    """ICMPv6 Parameter Problem, code 0 (erroneous header field, RFC 4443 §3.4):
    `pointer` is the offset of the offending byte in the original."""
    return icmp_error(src, original, 4, 0, pointer)


def find_tel(pkt: bytes) -> int | None:
    """Where the value of the Tunnel Encapsulation Limit option (type 4,
    length 1; RFC 2473 §4.1.1) of the IPv6 packet `pkt` sits: the first one
    in a destination-options header, the extension headers examined left to
    right - hop-by-hop, routing, destination options, AH, and a fragment
    header of offset 0 (a later fragment's chain is not in it). An option
    running past its header ends that header's options, not the search
    (Linux's ip6_tnl does the same). None when there is none, or when the
    chain runs past its end (a packet this node only forwards: not for it to
    judge)."""
    nh, off, count = pkt[6], HEADER_LEN, 0
    while nh in TEL_CHAIN and count < MAX_EXT_HEADERS:
        if off + 8 > len(pkt):                  # none of these is shorter
            return None
        if nh == NH_FRAGMENT:
            if int.from_bytes(pkt[off + 2:off + 4], "big") & 0xFFF8:
                return None
            end = off + 8
        elif nh == NH_AH:
            end = off + (pkt[off + 1] + 2) * 4
        else:
            end = off + (pkt[off + 1] + 1) * 8
        if end > len(pkt):
            return None
        i = off + 2
        while nh == NH_DSTOPTS and i < end:
            if pkt[i] == OPT_PAD1:
                i += 1
                continue
            if i + 2 > end or i + 2 + pkt[i + 1] > end:
                break
            if pkt[i] == OPT_TEL and pkt[i + 1] == 1:
                return i + 2
            i += 2 + pkt[i + 1]
        nh, off, count = pkt[off], end, count + 1
    return None


def tel_destopt(limit: int, nh: int) -> bytes:
    """A destination-options header carrying only a Tunnel Encapsulation
    Limit option (8 bytes: a PadN option with 1 zero byte of data fills
    it), for a tunnel header."""
    return bytes([nh, 0, OPT_TEL, 1, limit, OPT_PADN, 1, 0])


NH_FRAGMENT_HDR = 44


def fragment(pkt: bytes, mtu: int, ident: int) -> list[bytes]:
    """Split an IPv6 packet into fragments of at most `mtu` bytes (RFC 8200
    §4.5), everything after its fixed header being the fragmentable part (a
    tunnel header's destination options too): how a tunnel entry point sends
    an outer packet that the tunnel's MTU cannot carry (RFC 2473 §7.1)."""
    if len(pkt) <= mtu:
        return [pkt]
    hdr, body = pkt[:HEADER_LEN], pkt[HEADER_LEN:]
    room = (mtu - HEADER_LEN - 8) & ~7
    out = []
    for off in range(0, len(body), room):
        part = body[off:off + room]
        more = off + room < len(body)
        frag = bytes([hdr[6], 0]) + ((off & ~7) | int(more)).to_bytes(2, "big") + \
            (ident & 0xFFFFFFFF).to_bytes(4, "big")
        h = bytearray(hdr)
        h[4:6] = (8 + len(part)).to_bytes(2, "big")
        h[6] = NH_FRAGMENT_HDR
        out.append(bytes(h) + frag + part)
    return out
