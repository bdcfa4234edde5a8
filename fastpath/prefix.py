"""Mobile Prefix Discovery at the home agent (RFC 6275 §6.7, §6.8, §10.6.2,
§10.6.3; RFC 3776 §3.3, §5.2.3), sans-IO.

A mobile node asks for its home prefix with a Mobile Prefix Solicitation
(ICMPv6 type 146) sealed in ESP transport mode on its prefix-discovery SA,
with a Home Address option. The engine checks all of that - and that the
option names a binding whose care-of address is the packet's source (RFC
6275 §9.3.1; otherwise it punts the packet for a Binding Error) - and hands the
packet, ESP removed, to the control plane as a ``VerifiedBinding`` whose
``purpose`` is ``"prefix-discovery"`` (it cannot move a binding). Here it is
answered with a Mobile Prefix Advertisement (type 147) carrying the home
prefix, sealed on the node's prefix-discovery out SA and sent like a Binding
Ack: IPv6(HA -> the solicitation's source) . RH2(HoA) . ESP . ICMPv6.

Decisions where the RFCs leave room:

* One Prefix Information option: ``[home_agent] home_prefix``, flags L and
  A (the node forms its home address from it), the RFC 4861 §6.2.1 default
  lifetimes (valid 30 days, preferred 7 days): fastpath does not follow the
  home link's router advertisements, so it has no remaining lifetimes to
  report (§10.6.1). M and O are clear.
* Only solicited advertisements: no unsolicited MPA when the prefix changes
  (it comes from the config and does not change while running).
* A solicitation that is shorter than 8 bytes, has a code other than 0 or a
  bad checksum is not answered (``PrefixError``), as RFC 4443 §2.4 asks of
  malformed ICMPv6 messages; nor is one whose source is not a unicast
  address other than the home agent's (``BadSource``): the outer header is
  not covered by the ICV, and the answer goes there.
"""
from __future__ import annotations

import ipaddress
import struct

from fastpath.mh import pseudo_header_addresses
from fastpath.ref.ipv6 import NH_ICMPV6, checksum, ntop, reply_problem

__all__ = ["PrefixError", "BadSource", "solicitation_id", "advertisement", "answer",
           "MPS", "MPA", "VALID_LIFETIME", "PREFERRED_LIFETIME"]

MPS = 146                     # Mobile Prefix Solicitation
MPA = 147                     # Mobile Prefix Advertisement
_PIO = 3                      # Prefix Information option (RFC 4861 §4.6.2)
_PIO_L, _PIO_A = 0x80, 0x40
VALID_LIFETIME = 2592000      # RFC 4861 §6.2.1 AdvValidLifetime default, seconds
PREFERRED_LIFETIME = 604800   # AdvPreferredLifetime default


class PrefixError(ValueError):
    """A Mobile Prefix Solicitation that is not to be answered."""


class BadSource(PrefixError):
    """... because its source is not an address to answer."""


def solicitation_id(packet: bytes, offset: int) -> int:
    """The Identifier of the Mobile Prefix Solicitation at `offset` of the
    decrypted packet (IPv6 header chain + ICMPv6), checked as RFC 6275 §6.7
    and RFC 4443 §2.3 ask. Raises PrefixError."""
    msg = bytes(packet[offset:])
    if len(msg) < 8:
        raise PrefixError(f"{len(msg)} bytes: shorter than a Mobile Prefix Solicitation")
    if msg[0] != MPS:
        raise PrefixError(f"ICMPv6 type {msg[0]}, not a Mobile Prefix Solicitation")
    if msg[1] != 0:
        raise PrefixError(f"code {msg[1]}, not 0")
    # the HAO's address is the pseudo-header's source (RFC 6275 §6.3), as
    # for a Mobility Header
    src, dst = pseudo_header_addresses(packet, offset)
    if checksum(src, dst, NH_ICMPV6, msg) != 0:     # the field summed in: all ones
        raise PrefixError("bad checksum")
    return struct.unpack_from("!H", msg, 4)[0]


def advertisement(identifier: int, prefix: ipaddress.IPv6Network, ha: bytes,
                  hoa: bytes) -> bytes:
    """The ICMPv6 Mobile Prefix Advertisement answering `identifier`, from
    the home agent `ha` to the home address `hoa` (the final destination
    behind the Type 2 Routing Header: the checksum's pseudo-header)."""
    pio = struct.pack("!BBBBIII16s", _PIO, 4, prefix.prefixlen, _PIO_L | _PIO_A,
                      VALID_LIFETIME, PREFERRED_LIFETIME, 0, prefix.network_address.packed)
    msg = struct.pack("!BBHHH", MPA, 0, 0, identifier, 0) + pio
    return msg[:2] + checksum(ha, hoa, NH_ICMPV6, msg).to_bytes(2, "big") + msg[4:]


def answer(engine, vb, prefix: ipaddress.IPv6Network, ha: bytes) -> bytes | None:
    """The sealed Mobile Prefix Advertisement for the engine-verified
    solicitation `vb`, ready for the wire side; None when the node's
    prefix-discovery out SA has run out of sequence numbers. Raises
    PrefixError for a solicitation not to be answered, KeyError when the
    node has no prefix-discovery out SA."""
    if vb.purpose != "prefix-discovery":
        raise PrefixError("not from a prefix-discovery SA")
    problem = reply_problem(vb.source, ha)
    if problem is not None:
        raise BadSource(f"source {ntop(vb.source)} is {problem}")
    ident = solicitation_id(vb.packet, vb.mh_offset)
    body = advertisement(ident, prefix, ha, vb.home_address)
    return engine.seal_mobility(vb.home_address, body, vb.source, prefix_discovery=True)
