"""Per-packet verdicts and drop reasons: one numbering for the Cython engine,
the pure-Python reference path, counters and metrics (SPEC §7)."""
from __future__ import annotations

import enum


class Verdict(enum.IntEnum):
    DROP = 0      # counted under a Reason
    TO_WIRE = 1   # emit on the wire side (fp-wire): an encapsulated packet
    TO_HOME = 2   # emit on the home side (fp-home): a decapsulated inner packet
    PUNT = 3      # hand the packet, unchanged, to the control plane
    BINDING = 4   # verified transport-mode control message (a Mobility Header from a
                  # binding SA, a Mobile Prefix Solicitation from a prefix-discovery
                  # SA): the slot holds the packet with ESP removed


class Reason(enum.IntEnum):
    NONE = 0
    UNKNOWN_SPI = 1
    REPLAY = 2
    ICV = 3
    BAD_PADDING = 4
    POLICY = 5         # inner source != HoA, outer source != CoA, HAO != SA's HoA
    MALFORMED = 6
    NO_BINDING = 7
    TOO_BIG = 8
    SEQ_EXHAUSTED = 9
    DUMMY = 10         # ESP next header 59: RFC 4303 §2.6 dummy packet
    CONGESTION = 11    # outer ECN CE over a not-ECN-capable inner packet (RFC 6040 §4.2)
    ENCAP_LIMIT = 12   # its Tunnel Encapsulation Limit is 0 (RFC 2473 §5.1)
    # Not a drop: with TO_WIRE, "over a path MTU a Packet Too Big lowered, and
    # tunnelled all the same (<= 1280 bytes): fragment the outer packet at 1280".
    FRAGMENT = 8       # (an alias of TOO_BIG: no counter of its own)


REASON_NAMES = [r.name.lower() for r in Reason]
N_REASONS = len(Reason)
