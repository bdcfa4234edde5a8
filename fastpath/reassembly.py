"""Reassembly of IPv6 fragments (RFC 8200 §4.5) for the control thread.

The home agent's address and a mobile node's care-of address are routed into
the wire TUN, not local, so the kernel never reassembles the fragmented ESP /
IPv6-in-IPv6 packets our peer sends when its outer packet exceeds the path
MTU (RFC 2473 §7.1: the peer's worker fragments them). The engine punts any
packet with a Fragment header; the control thread feeds it to a Reassembler
and runs what comes out through the ordinary decapsulation.

Terms follow RFC 8200 §4.5: a *fragment* is an IPv6 packet whose header
chain holds a Fragment header; everything before that header is the
*unfragmentable part* (the IPv6 header and any Hop-by-Hop, Routing or
Destination Options headers: a Mobile IPv6 Home Address option sits here,
RFC 6275 §6.3); what follows it is a piece of the *fragmentable part*.
Fragments belong together when source, destination and Identification match.

Rules (each discard has its own counter, see COUNTERS):

- An *atomic fragment* (offset 0, M = 0, RFC 6946) is a whole packet: its
  Fragment header is removed at once, whatever else is in progress under
  the same Identification.
- A fragment with M = 1 whose length is not a multiple of 8 is discarded
  (`not_multiple_of_8`), as is one that would make the reassembled Payload
  Length exceed 65535 (`too_big`), and one that carries no data or whose
  headers do not parse (`malformed`).
- Overlapping fragments discard the whole datagram, and the fragments of it
  still to come (RFC 5722, RFC 8200 §4.5). An exact duplicate (same offset,
  length and bytes) is only dropped itself (`duplicate`; RFC 8200 allows it).
- A second last fragment with another end, a last fragment ending before data
  already received (`inconsistent_length`), or a fragment reaching past the
  end the last fragment set (`beyond_end`) also discard the whole datagram.
  A discarded datagram stays as a tombstone until its timeout, so that its
  later fragments are dropped at once (`after_discard`) rather than starting
  a new datagram that could only time out.
- The unfragmentable part and the next header come from the fragment with
  offset 0 (RFC 8200: the Next Header values of other fragments may differ
  and are ignored). The reassembled packet has no Fragment header: the header
  before it names the fragmentable part's first header, and the Payload
  Length is fixed up.
- A datagram not complete `timeout` seconds (60 per RFC 8200) after its first
  fragment arrived is discarded (`timeout`). No ICMPv6 Time Exceeded (code 1)
  is sent, although RFC 8200 says one SHOULD be when the first fragment came:
  the fragments are tunnel packets from our peer (the MN's care-of address
  or the HA), whose sender is a fastpath that would only count an ICMPv6 error
  it received; and an answer to unauthenticated fragments would let anyone
  make the home agent send packets to an address of their choosing.
- At most `max_datagrams` datagrams (tombstones included) and `max_bytes`
  bytes of fragments are held; to make room the oldest datagram goes
  (`evicted`). This bounds what a flood of fragments costs; it cannot keep
  one from evicting real datagrams (counted, so it shows).
- The first fragment need not hold the whole header chain (RFC 7112): no
  decision is taken on a fragment here, only on the reassembled packet, whose
  chain the engine walks as for any other packet.

Pure Python, no I/O, a few objects per fragment: it runs on the slow path
only (the workers never call it).
"""
from __future__ import annotations

import bisect
import time
from collections import Counter, OrderedDict

from fastpath.ref.ipv6 import HEADER_LEN, NH_FRAGMENT, ChainError, walk_chain

FRAGMENT_HEADER_LEN = 8
MAX_PAYLOAD = 65535                 # the Payload Length field (no jumbograms, RFC 2675)
REASSEMBLY_TIMEOUT = 60.0           # RFC 8200 §4.5
DEFAULT_MAX_DATAGRAMS = 1024
DEFAULT_MAX_BYTES = 4 << 20         # Linux's ip6frag_high_thresh

# Counter name -> help text: `fastpath ctl counters` and Prometheus (fastpath.metrics).
COUNTERS = {
    "fragments": "IPv6 fragments (packets with a Fragment header) taken for reassembly.",
    "atomic": "Atomic fragments (offset 0, M=0, RFC 6946) passed on without reassembly.",
    "reassembled": "Datagrams reassembled from several fragments.",
    "malformed": "Fragments dropped: bad IPv6 header, Payload Length, header chain or "
                 "Fragment header.",
    "not_multiple_of_8": "Fragments dropped: M=1 and a length not a multiple of 8 octets.",
    "too_big": "Fragments or datagrams dropped: reassembled Payload Length above 65535.",
    "duplicate": "Fragments dropped: exact duplicate of one already held.",
    "overlap": "Datagrams discarded: overlapping fragments (RFC 5722).",
    "inconsistent_length": "Datagrams discarded: last fragments disagree on the length, or "
                           "data beyond the last fragment's end.",
    "beyond_end": "Datagrams discarded: a fragment past the end the last fragment set.",
    "after_discard": "Fragments dropped: their datagram was discarded before.",
    "timeout": "Datagrams discarded incomplete at the reassembly timeout (RFC 8200: 60 s).",
    "evicted": "Datagrams discarded incomplete to stay within the datagram or byte limit.",
}

class _Datagram:
    """The fragments of one datagram received so far."""
    __slots__ = ("deadline", "starts", "pieces", "end", "have", "first", "nbytes", "dead")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.starts: list[int] = []        # offsets of the pieces, sorted
        self.pieces: dict[int, bytes] = {} # offset -> fragment data
        self.end: int | None = None        # fragmentable length, once the last fragment came
        self.have = 0                      # bytes of fragment data held (pieces never overlap)
        self.first: tuple[bytes, int, int] | None = None  # (unfragmentable part, its nh byte, next header)
        self.nbytes = 0                    # what counts against max_bytes
        self.dead = False                  # tombstone: discarded, its fragments are dropped


def fragment_header_offset(pkt: bytes) -> int | None:
    """Where the Fragment header of a wire-side packet starts, after the
    headers the engine skips (Hop-by-Hop, Routing, Destination Options); None
    when its chain reaches none (or cannot be walked)."""
    where = _locate(pkt)
    return None if where is None else where[0]


class Reassembler:
    """Reassembly buffer keyed by (source, destination, Identification).

    add() takes one fragment and returns the reassembled packet when that
    fragment completed one (or was atomic), else None. expire() drops the
    datagrams whose time is up; call it from a timer (the control loop does,
    once a second). `clock` is time.monotonic unless a test passes its own.
    """

    def __init__(self, *, timeout: float = REASSEMBLY_TIMEOUT,
                 max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock=time.monotonic):
        if timeout <= 0 or max_datagrams < 1 or max_bytes < 1:
            raise ValueError("timeout, max_datagrams and max_bytes must be positive")
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.clock = clock
        self.events: Counter = Counter()
        # insertion order = arrival order of first fragments = deadline order
        # (one timeout for all): the oldest is first, for eviction and expiry.
        self._datagrams: OrderedDict[tuple[bytes, bytes, bytes], _Datagram] = OrderedDict()
        self._bytes = 0

    # -- views -------------------------------------------------------------------
    def counters(self) -> dict:
        """Every counter of COUNTERS (zeros included), plus two gauges:
        datagrams in progress (tombstones included) and bytes held."""
        out = {name: self.events[name] for name in COUNTERS}
        out["datagrams_in_progress"] = len(self._datagrams)
        out["buffered_bytes"] = self._bytes
        return out

    def __len__(self) -> int:
        return len(self._datagrams)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    # -- input -------------------------------------------------------------------
    def add(self, pkt: bytes, now: float | None = None) -> bytes | None:
        """One fragment in; the whole packet out when it is complete."""
        if now is None:
            now = self.clock()
        self.events["fragments"] += 1
        where = _locate(pkt)
        if (where is None or HEADER_LEN + int.from_bytes(pkt[4:6], "big") != len(pkt)
                or where[0] + FRAGMENT_HEADER_LEN > len(pkt)):
            self.events["malformed"] += 1
            return None
        fh, nh_field = where
        nxt = pkt[fh]
        word = int.from_bytes(pkt[fh + 2:fh + 4], "big")
        offset, more = word & 0xFFF8, word & 1
        data = pkt[fh + FRAGMENT_HEADER_LEN:]
        if offset == 0 and not more:
            # RFC 6946: an atomic fragment is a whole packet; it takes no part
            # in (and does not disturb) reassembly under its Identification.
            self.events["atomic"] += 1
            return _join(pkt[:fh], nh_field, nxt, data)
        if not data:
            # an empty piece of a datagram carries nothing and could only
            # confuse the bookkeeping below
            self.events["malformed"] += 1
            return None
        if more and len(data) % 8:
            self.events["not_multiple_of_8"] += 1
            return None
        if fh - HEADER_LEN + offset + len(data) > MAX_PAYLOAD:
            self.events["too_big"] += 1
            return None
        self.expire(now)
        key = (pkt[8:24], pkt[24:40], pkt[fh + 4:fh + 8])
        d = self._datagrams.get(key)
        if d is None:
            d = self._new(key, now)
        if d.dead:
            self.events["after_discard"] += 1
            return None
        start, stop = offset, offset + len(data)
        # Pieces held never overlap one another, so only the neighbours of
        # `start` in offset order can overlap this one.
        i = bisect.bisect_left(d.starts, start)
        if i < len(d.starts) and d.starts[i] == start and d.pieces[start] == data:
            self.events["duplicate"] += 1
            return None
        # Against the end the last fragment set (RFC 8200: a fragment past it,
        # or two last fragments that disagree, mean the datagram is not sound).
        if not more:
            if (d.end is not None and d.end != stop) or (d.starts and self._top(d) > stop):
                return self._kill(d, "inconsistent_length")
        elif d.end is not None and stop > d.end:
            return self._kill(d, "beyond_end")
        if i > 0 and d.starts[i - 1] + len(d.pieces[d.starts[i - 1]]) > start:
            return self._kill(d, "overlap")
        if i < len(d.starts) and d.starts[i] < stop:
            return self._kill(d, "overlap")
        d.starts.insert(i, start)
        d.pieces[start] = data
        d.have += len(data)
        if not more:
            d.end = stop
        if offset == 0:
            d.first = (pkt[:fh], nh_field, nxt)
        cost = len(pkt)       # the headers count too: tiny fragments are not free
        d.nbytes += cost
        self._bytes += cost
        if d.first is None or d.end is None or d.have != d.end:
            # held: make room for it (a completing fragment is released below
            # at once, and must not evict other datagrams on its way out)
            if self._bytes > self.max_bytes:
                self._make_room(key)
            return None
        # Complete: every byte of 0..end is held exactly once.
        unfrag, first_nh_field, first_nxt = d.first
        if len(unfrag) - HEADER_LEN + d.end > MAX_PAYLOAD:
            # the first fragment's unfragmentable part is longer than those
            # the other fragments were checked with
            return self._kill(d, "too_big")
        self._forget(key, d)
        self.events["reassembled"] += 1
        return _join(unfrag, first_nh_field, first_nxt, b"".join(d.pieces[s] for s in d.starts))

    def expire(self, now: float | None = None) -> int:
        """Drop the datagrams (and tombstones) whose timeout has passed; count
        the incomplete ones as `timeout`. Returns how many datagrams timed out."""
        if now is None:
            now = self.clock()
        n = 0
        while self._datagrams:
            key, d = next(iter(self._datagrams.items()))
            if d.deadline > now:
                break
            self._forget(key, d)
            if not d.dead:
                n += 1
        self.events["timeout"] += n
        return n

    # -- bookkeeping ---------------------------------------------------------------
    def _new(self, key, now: float) -> _Datagram:
        while len(self._datagrams) >= self.max_datagrams:
            old = next(iter(self._datagrams))
            self._evict(old)
        d = self._datagrams[key] = _Datagram(now + self.timeout)
        return d

    @staticmethod
    def _top(d: _Datagram) -> int:
        last = d.starts[-1]
        return last + len(d.pieces[last])

    def _evict(self, key) -> None:
        d = self._datagrams[key]
        self._forget(key, d)
        if not d.dead:             # a tombstone held no packet: nothing is lost
            self.events["evicted"] += 1

    def _make_room(self, keep) -> None:
        """Over max_bytes: evict the oldest datagrams, the one just added to
        (`keep`) last of all. Each eviction looks at the oldest one or two
        keys only (not a copy of them all: this runs for every fragment of a
        flood at the limit)."""
        while self._bytes > self.max_bytes:
            victim = keep
            for key in self._datagrams:      # oldest first
                if key != keep:
                    victim = key
                    break
            self._evict(victim)
            if victim == keep:
                return

    def _forget(self, key, d: _Datagram) -> None:
        del self._datagrams[key]
        self._bytes -= d.nbytes

    def _kill(self, d: _Datagram, why: str) -> None:
        """Discard a datagram: its data goes, its key stays (in its place in
        age order) until its deadline, so the rest of its fragments are dropped."""
        self.events[why] += 1
        self._bytes -= d.nbytes
        d.nbytes = d.have = 0
        d.starts, d.pieces, d.first, d.end = [], {}, None, None
        d.dead = True
        return None


def _locate(pkt: bytes) -> tuple[int, int] | None:
    """(offset of the Fragment header, offset of the byte that names it)
    when the chain of the IPv6 packet `pkt` reaches a Fragment header past
    the headers the engine skips; None otherwise. The Fragment header itself
    may still be cut short: add() checks."""
    if len(pkt) < HEADER_LEN or pkt[0] >> 4 != 6:
        return None
    try:
        chain = walk_chain(pkt, options=False)     # the header lengths are enough
    except (ChainError, IndexError):
        return None
    if chain.next_header != NH_FRAGMENT:
        return None
    return chain.offset, chain.nh_field


def _join(unfrag: bytes, nh_field: int, nxt: int, body: bytes) -> bytes:
    """Unfragmentable part + fragmentable part, without the Fragment header:
    the header before it now names `nxt`, and the Payload Length is the new
    one (RFC 8200 §4.5, reassembly)."""
    head = bytearray(unfrag)
    head[nh_field] = nxt
    head[4:6] = (len(unfrag) - HEADER_LEN + len(body)).to_bytes(2, "big")
    return bytes(head) + body
