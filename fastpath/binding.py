"""The home agent's binding cache and Binding Update processing (RFC 6275
§9.5, §10.3; RFC 3776 §6), sans-IO.

Nothing here reads a socket, starts a thread or looks at a clock: the control
thread hands in each :class:`~fastpath.core.sad.VerifiedBinding` the engine
issued, with ``now`` (a monotonic time in seconds), and gets back a
:class:`Decision` saying what happened and which Binding Acknowledgement, if
any, to put on the wire (:func:`build_ba_packet` seals it).  Lifetimes run on
the same injected clock: :meth:`BindingCache.next_expiry` says when to call
:meth:`BindingCache.expire_due` next.  One thread owns a cache; it is not
thread-safe.

What reaches :meth:`BindingCache.process` was already checked by the engine
(RFC 3776 §6.2-§6.3): the Mobility Header came in ESP transport mode on the
mobile node's binding-in SA, with a valid ICV, a fresh ESP sequence number and
a Home Address option equal to that SA's home address.  A BU in the clear, with
a bad ICV, replayed at the ESP layer, or whose HAO names another mobile node
never gets here; the engine issues VerifiedBindings only for SAs of configured
mobile nodes, so an unknown home address cannot get here either (should the
config and the SA table disagree, such a BU is answered 133).  A Mobility
Header in the clear comes out of the engine as PUNT: hand it to
:meth:`BindingCache.unprotected`, which counts a BU among the rejected ones
and moves nothing.

Decisions taken where the RFCs leave room (section numbers are RFC 6275's
unless marked otherwise):

* Order of checks: MH parse (§9.2) -> not a BU: ignored -> §9.5.1 (H clear
  without an entry: silently discarded; sequence number not newer than the
  last accepted one: 135 carrying the last accepted number; H clear with an
  entry: 139) -> lifetime 0 or CoA == HoA: deregistration, §10.3.2 (no entry:
  133) -> §10.3.1 (not a home agent: 131; HoA outside home_prefix: 132;
  care-of address refused: 174 / 129; applying it failed: 128, 130 when out
  of endpoint records) -> accepted (0).
* H clear (§9.5.1): a BU without the Home Registration bit is a correspondent
  registration, which must carry Nonce Indices and Binding Authorization Data
  that satisfy §5.2.6.  This node runs no return routability, so no such BU
  can be valid: it is silently discarded (counted ``not_home_registration``).
  When the home address already has an entry (every entry here is a home
  registration, static ones included), the IPsec-protected BU is answered
  139 "Registration type change disallowed" instead and the entry keeps its
  home-registration flag (§9.5.1).  131 "Home registration not supported" is
  what a node that is *not* a home agent answers (§10.3.1, first test): a
  cache built over a mobile-node-role SA table answers it to every BU with H.
* Sequence numbers (§9.5.1): compared modulo 2**16 (``mh.seq_newer``: newer
  means 1..32767 ahead).  With no entry, or with a static entry from the
  config (never registered by a BU), any number is accepted.
* Care-of address: the Alternate Care-of Address option when present, else
  the outer source (§6.2.5, RFC 3776 §4.3).  Not unicast routable
  (unspecified, loopback, multicast, link-local, site-local, IPv4-mapped):
  174 "Invalid Care-of Address".  Unicast but refused by policy - inside the
  home prefix (tunnelling there would loop through our own interception) or
  the HA's own address: 129 "Administratively prohibited".
* Lifetime: granted = min(requested, binding_lifetime_max); the BA carries it
  in 4-second units.  Home-prefix lifetimes (§10.3.1) are not modelled.
* K flag: always 0 in the BA; keys are manual, so no IKE SA can follow the
  mobile node (§10.3.1, RFC 3776 §4).  The L flag is recorded in the entry;
  defending the link-local address is not done (on_bind only gets the HoA).
* Duplicate Address Detection (134) is not run for the home address.
* When a BA goes (§9.5.4): always after a rejection (status >= 128); after an
  acceptance only when the A bit asked for one.  Silently discarded and
  malformed BUs get none.
* Where it goes: an accepted registration's BA goes to the care-of address
  just registered (SPEC §2: IPv6(HA->CoA) . RH2(HoA)); every other BA
  (rejections, deregistrations) goes to the BU's outer source, the only
  address the packet is known to have come from - a refused care-of address
  may be multicast or worse.  A BU sent from the home link (source = the
  home address, no HAO, §11.5.4) is answered at the home address without a
  Type 2 Routing Header (§9.5.4; Engine.seal_mobility).
* The grace period (SPEC §4): after a move or a deregistration, the BA is
  built only once ``sad.wait_grace()`` returned True.  On a timeout the
  binding stands, no BA leaves (the mobile node retransmits) and
  ``grace_timeouts`` counts it.  A refresh to the CoA already in use moves
  nothing and needs no grace period.
* Deregistration (§10.3.2) and expiry: the SAs' endpoint is removed, on_unbind
  runs, and the entry stays, invalid, for ``HOLD_SECONDS`` (10 s) with its
  last sequence number, so a late or retransmitted BU is still sequence
  checked (135) and a repeated deregistration is answered 0 rather than 133.
  A newer registration during the hold registers again (on_bind again).
* Static bindings (``care_of_address`` in the config) are entries without a
  lifetime or sequence number; on_bind is called for each of them when the
  cache is built.  A BU may refresh, move or deregister them.
* on_bind / on_unbind raising: logged and counted (``callback_errors``); the
  binding decision stands (the SA table already changed).
* Malformed Mobility Headers (§9.2): ``Decision.error`` describes the ICMPv6
  Parameter Problem (code, pointer counted from the start of the decrypted
  packet in ``VerifiedBinding.packet``) or the Binding Error (status, home
  address) the caller should send to the BU's source, rate-limited.
"""
from __future__ import annotations

import heapq
import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field

from fastpath import mh
from fastpath.mh import BAStatus
from fastpath.ref.ipv6 import ChainError, ipv6_header, reply_problem, walk_chain

log = logging.getLogger("fastpath.binding")

__all__ = ["BindingCache", "Decision", "ErrorReply", "Entry", "build_ba_packet",
           "build_binding_error_packet", "unknown_binding_error", "HOLD_SECONDS"]

HOLD_SECONDS = 10.0      # an ended binding's entry stays this long, invalid

# Entry states
STATIC = "static"              # from the config's care_of_address; no lifetime
REGISTERED = "registered"      # from an accepted BU; expires
DEREGISTERED = "deregistered"  # invalid, held HOLD_SECONDS after a deregistration
EXPIRED = "expired"            # invalid, held HOLD_SECONDS after its lifetime ran out
_VALID = (STATIC, REGISTERED)

# Decision actions
REGISTERED_NEW = "registered"  # a binding where there was none (on_bind ran)
MOVED = "moved"                # a binding moved to a new care-of address
REFRESHED = "refreshed"        # same care-of address, new lifetime
DEREGISTER = "deregistered"
REJECTED = "rejected"          # a BA with status >= 128
DISCARDED = "discarded"        # dropped silently (no BA)
MALFORMED = "malformed"        # mh.parse refused it (Decision.error says what to send)
IGNORED = "ignored"            # a Mobility Header that is not a BU
GRACE_TIMEOUT = "grace_timeout"  # applied, but the BA is withheld

_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")


@dataclass(frozen=True)
class ErrorReply:
    """What to answer a malformed Mobility Header with (RFC 6275 §9.2); the
    caller builds and rate-limits it.

    kind 'param_problem': ICMPv6 Parameter Problem, ``code`` and ``pointer``
    (offset in ``VerifiedBinding.packet``, the packet with ESP removed).
    kind 'binding_error': a Binding Error with ``status`` and
    ``home_address``: the offending packet's Home Address option, or None
    when it had none (the field goes out unspecified, RFC 6275 §6.1.9).
    Both go to ``destination`` (the BU's outer source)."""
    kind: str
    destination: bytes
    home_address: bytes | None
    code: int | None = None
    pointer: int | None = None
    status: int | None = None
    problem: str = ""


@dataclass
class Decision:
    """The outcome of one Binding Update.

    ``ba`` is the Binding Acknowledgement to send (an ``mh.BindingAck``) or
    None; it is set only once the grace period after a move has passed.
    ``destination`` is the BA's outer destination (the RH2 carries the home
    address), ``ha_address`` its source.  ``status`` is the status decided
    even when no BA goes (A bit clear, grace timeout); None when the message
    was discarded, malformed or not a BU."""
    action: str
    home_address: bytes
    status: int | None = None
    sequence: int | None = None
    lifetime: int = 0                  # granted, 4-second units
    key_mgmt: bool = False
    ba: mh.BindingAck | None = None
    destination: bytes | None = None
    ha_address: bytes | None = None
    care_of_address: bytes | None = None   # the binding's CoA afterwards
    moved: bool = False
    deregistered: bool = False
    grace_pending: bool = False        # BA prepared; finish_grace() decides whether it goes
    error: ErrorReply | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is not None and self.status < 128

    @property
    def send_ba(self) -> bool:
        return self.ba is not None


@dataclass
class Entry:
    """One binding cache entry (every one is a home registration)."""
    home_address: bytes
    care_of_address: bytes | None
    state: str
    last_sequence: int | None = None
    lifetime: int = 0                  # granted, seconds (0 for static)
    expires_at: float | None = None    # valid entries; None = static, never
    purge_at: float | None = None      # invalid entries
    flags: dict = field(default_factory=lambda: {"A": False, "H": True, "L": False, "K": False})

    @property
    def valid(self) -> bool:
        return self.state in _VALID


def _ntop(a: bytes | None) -> str | None:
    return None if a is None else str(ipaddress.IPv6Address(a))


def _coa_problem(coa: bytes) -> str | None:
    """Why `coa` is not a unicast routable address, or None (-> 174)."""
    a = ipaddress.IPv6Address(coa)
    if a.is_unspecified:
        return "unspecified"
    if a.is_loopback:
        return "loopback"
    if a.is_multicast:
        return "multicast"
    if a in _LINK_LOCAL:
        return "link-local"
    if a in _SITE_LOCAL:
        return "site-local"
    if a.ipv4_mapped is not None:
        return "IPv4-mapped"
    return None


def _checksum_addresses(vb) -> tuple[bytes, bytes]:
    """(source, final destination) of the Mobility Header's pseudo-header."""
    return mh.pseudo_header_addresses(vb.packet, vb.mh_offset)


class BindingCache:
    """Binding cache of a home agent over an SA table (``sad``) and a loaded
    config (``cfg``).  ``on_bind(hoa)`` / ``on_unbind(hoa)`` are called when
    interception of a home address (route into fp-home, proxy NDP) must start
    / stop.  ``grace_timeout`` bounds each ``sad.wait_grace()``."""

    def __init__(self, sad, cfg, *, on_bind=None, on_unbind=None,
                 grace_timeout: float = 1.0, hold: float = HOLD_SECONDS):
        self.sad = sad
        self.cfg = cfg
        self.on_bind = on_bind
        self.on_unbind = on_unbind
        self.grace_timeout = grace_timeout
        self.defer_grace = False
        self.hold = hold
        self.ha_address = cfg.home_agent.address.packed
        self.home_prefix = cfg.home_agent.home_prefix
        self.is_home_agent = getattr(sad, "role", "home-agent") == "home-agent"
        self._mns = {mn.home_address.packed: mn for mn in cfg.mobile_nodes}
        self._entries: dict[bytes, Entry] = {}
        self._timers: list[tuple[float, int, bytes]] = []   # (deadline, tiebreak, hoa)
        self._tick = 0
        self._counters = Counter()
        self._by_status: Counter = Counter()
        self._malformed: Counter = Counter()
        if self.is_home_agent:
            for hoa in self._mns:
                try:
                    coa = sad.care_of_address(hoa)
                except KeyError:
                    continue
                if coa is not None:
                    self._entries[hoa] = Entry(hoa, coa, STATIC)
                    self._callback(self.on_bind, hoa)

    # ------------------------------------------------------------ helpers

    def _callback(self, fn, hoa: bytes) -> None:
        if fn is None:
            return
        try:
            fn(hoa)
        except Exception:       # noqa: BLE001 - a side effect must not undo a binding
            self._counters["callback_errors"] += 1
            log.exception("binding callback %s(%s) failed", getattr(fn, "__name__", fn),
                          _ntop(hoa))

    def _schedule(self, deadline: float, hoa: bytes) -> None:
        self._tick += 1
        heapq.heappush(self._timers, (deadline, self._tick, hoa))

    def _end(self, entry: Entry, state: str, ended_at: float) -> None:
        """Make `entry` invalid and hold it."""
        entry.state = state
        entry.care_of_address = None
        entry.expires_at = None
        entry.purge_at = ended_at + self.hold
        self._schedule(entry.purge_at, entry.home_address)

    def _expire(self, entry: Entry) -> None:
        hoa = entry.home_address
        try:
            self.sad.expire(hoa)
        except KeyError:
            pass
        self._end(entry, EXPIRED, entry.expires_at)
        self._counters["expiries"] += 1
        self._callback(self.on_unbind, hoa)

    def _due(self, entry: Entry, now: float) -> bool:
        """Run `entry`'s own timers if they are due (the timer thread may be
        late); True when the entry was purged."""
        if entry.valid and entry.expires_at is not None and entry.expires_at <= now:
            self._expire(entry)
        if not entry.valid and entry.purge_at is not None and entry.purge_at <= now:
            del self._entries[entry.home_address]
            return True
        return False

    def _status(self, d: Decision, status: int, ack_requested: bool, reason: str) -> Decision:
        """Record a decided status; a rejection always gets a BA."""
        d.status = int(status)
        d.reason = reason
        self._by_status[int(status)] += 1
        if status >= 128:
            self._counters["bu_rejected"] += 1
            if status == BAStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW:
                self._counters["stale"] += 1
            d.action = REJECTED
            d.lifetime = 0
            self._release(d)
        else:
            self._counters["bu_accepted"] += 1
            if ack_requested:
                self._release(d)
            else:
                self._counters["ba_suppressed"] += 1
        return d

    def _release(self, d: Decision) -> None:
        d.ba = mh.BindingAck(status=d.status, sequence=d.sequence, lifetime=d.lifetime,
                             key_mgmt=False)
        self._counters["ba_released"] += 1

    # ------------------------------------------------------------ public

    def process(self, vb, now: float) -> Decision:
        """Process one engine-verified Binding Update (``VerifiedBinding``)."""
        hoa = bytes(vb.home_address)
        source = bytes(vb.source)
        d = Decision(action=DISCARDED, home_address=hoa, destination=source,
                     ha_address=self.ha_address)

        # RFC 6275 §9.3.1, before §9.2 (destination options come first): only
        # a Binding Update is exempt from the Home Address option check (the
        # engine checks every other SA's packets itself)
        if len(vb.packet) < vb.mh_offset + 3 or \
                vb.packet[vb.mh_offset + 2] != mh.MHType.BINDING_UPDATE:
            option = _hao(vb.packet)
            if option is not None and self.sad.care_of_address(option) != source:
                self._counters["unknown_binding"] += 1
                d.action = IGNORED
                d.error = _unknown_binding(source, option)
                d.reason = d.error.problem
                return d

        # RFC 6275 §9.2: a Mobility Header we cannot process
        try:
            msg = vb.message()          # parsed once, shared with SADatabase.move
        except mh.MHError as e:
            self._counters["malformed"] += 1
            self._malformed[e.action] += 1
            d.action = MALFORMED
            d.reason = e.problem
            if e.action == mh.MHError.PARAM_PROBLEM:
                d.error = ErrorReply("param_problem", source, hoa, code=e.code,
                                     pointer=vb.mh_offset + (e.pointer or 0), problem=e.problem)
            elif e.action == mh.MHError.BINDING_ERROR:
                d.error = ErrorReply("binding_error", source, _hao(vb.packet), status=e.status,
                                     problem=e.problem)
            return d
        if not isinstance(msg, mh.BindingUpdate):
            self._counters["not_binding_update"] += 1
            d.action = IGNORED
            d.reason = f"MH type {msg.mh_type} is not a Binding Update"
            return d

        self._counters["bu_received"] += 1
        d.sequence = msg.sequence
        alt = mh.alternate_coa(msg)
        coa = alt if alt is not None else source
        entry = self._entries.get(hoa)
        if entry is not None and self._due(entry, now):
            entry = None

        # §9.5.1: validity, sequence number, registration type
        if not msg.home:
            if entry is None:
                self._counters["bu_rejected"] += 1
                self._counters["not_home_registration"] += 1
                d.reason = ("H bit clear: a correspondent registration without verifiable "
                            "Binding Authorization Data (RFC 6275 §9.5.1), discarded")
                return d
        if entry is not None and entry.last_sequence is not None \
                and not mh.seq_newer(msg.sequence, entry.last_sequence):
            d.sequence = entry.last_sequence
            return self._status(d, BAStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, msg.ack,
                                f"sequence {msg.sequence} not newer than {entry.last_sequence}")
        if not msg.home:
            return self._status(d, BAStatus.REGISTRATION_TYPE_CHANGE_DISALLOWED, msg.ack,
                                "H bit clear for a home registration")

        if msg.lifetime == 0 or coa == hoa:
            return self._deregister(vb, msg, entry, d, now)
        return self._register(vb, msg, entry, coa, d, now)

    def _deregister(self, vb, msg, entry, d: Decision, now: float) -> Decision:
        """RFC 6275 §10.3.2."""
        hoa = d.home_address
        if entry is None or hoa not in self._mns:
            return self._status(d, BAStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE, msg.ack,
                                "deregistration without a home registration entry")
        d.lifetime = 0
        if entry.valid:
            try:
                self.sad.deregister(vb)
            except (ValueError, KeyError) as e:
                return self._status(d, BAStatus.REASON_UNSPECIFIED, msg.ack,
                                    f"deregistration failed: {e}")
            d.deregistered = True
            self._end(entry, DEREGISTERED, now)
            self._counters["deregistrations"] += 1
            self._callback(self.on_unbind, hoa)
        entry.last_sequence = msg.sequence
        entry.flags = {"A": msg.ack, "H": True, "L": msg.link_local, "K": msg.key_mgmt}
        d.action = DEREGISTER
        d.care_of_address = None
        if d.deregistered and not self._grace(d):
            return self._grace_timeout(d)
        return self._status(d, BAStatus.BINDING_UPDATE_ACCEPTED, msg.ack, "deregistered")

    def _register(self, vb, msg, entry, coa: bytes, d: Decision, now: float) -> Decision:
        """RFC 6275 §10.3.1."""
        hoa = d.home_address
        if not self.is_home_agent:
            return self._status(d, BAStatus.HOME_REGISTRATION_NOT_SUPPORTED, msg.ack,
                                "this node is not a home agent")
        mn = self._mns.get(hoa)
        if ipaddress.IPv6Address(hoa) not in self.home_prefix:
            return self._status(d, BAStatus.NOT_HOME_SUBNET, msg.ack,
                                f"{_ntop(hoa)} is outside {self.home_prefix}")
        if mn is None:
            return self._status(d, BAStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE, msg.ack,
                                f"{_ntop(hoa)} is not a configured mobile node")
        problem = _coa_problem(coa)
        if problem is not None:
            return self._status(d, BAStatus.INVALID_CARE_OF_ADDRESS, msg.ack,
                                f"care-of address {_ntop(coa)} is {problem}")
        if ipaddress.IPv6Address(coa) in self.home_prefix or coa == self.ha_address:
            return self._status(d, BAStatus.ADMINISTRATIVELY_PROHIBITED, msg.ack,
                                f"care-of address {_ntop(coa)} is inside the home prefix "
                                "or the home agent's own")

        granted = min(4 * msg.lifetime, mn.binding_lifetime_max) // 4
        was_bound = entry is not None and entry.valid
        current = self.sad.care_of_address(hoa)
        if current != coa:
            try:
                self.sad.move(vb, coa)
            except MemoryError:
                return self._status(d, BAStatus.INSUFFICIENT_RESOURCES, msg.ack,
                                    "no endpoint record free")
            except Exception as e:      # noqa: BLE001 - nothing moved: answer 128
                return self._status(d, BAStatus.REASON_UNSPECIFIED, msg.ack,
                                    f"applying the binding failed: {e}")
            d.moved = True
            self._counters["moves"] += 1
        if entry is None:
            entry = self._entries[hoa] = Entry(hoa, coa, REGISTERED)
        entry.state = REGISTERED
        entry.care_of_address = coa
        entry.last_sequence = msg.sequence
        entry.lifetime = 4 * granted
        entry.expires_at = now + 4 * granted
        entry.purge_at = None
        entry.flags = {"A": msg.ack, "H": True, "L": msg.link_local, "K": msg.key_mgmt}
        self._schedule(entry.expires_at, hoa)
        d.lifetime = granted
        d.care_of_address = coa
        d.destination = coa
        if not was_bound:
            d.action = REGISTERED_NEW
            self._counters["registrations"] += 1
            self._callback(self.on_bind, hoa)
        else:
            d.action = MOVED if d.moved else REFRESHED
            self._counters["refreshes" if not d.moved else "rebinds"] += 1
        if d.moved and not self._grace(d):
            return self._grace_timeout(d)
        return self._status(d, BAStatus.BINDING_UPDATE_ACCEPTED, msg.ack,
                            f"bound to {_ntop(coa)} for {4 * granted} s")

    def _grace(self, d: Decision) -> bool:
        """The grace period after a move, now or (defer_grace) for a whole
        burst of BUs at once in finish_grace(): one wait covers every move
        made before it, so a control loop draining N BUs waits once, not N
        times."""
        if self.defer_grace:
            d.grace_pending = True
            return True
        return self.sad.wait_grace(self.grace_timeout)

    def finish_grace(self, decisions) -> bool:
        """With defer_grace: wait once for every pending decision; on a
        timeout their Binding Acks are withheld (the bindings stand)."""
        pending = [d for d in decisions if d is not None and d.grace_pending]
        if not pending:
            return True
        ok = self.sad.wait_grace(self.grace_timeout)
        for d in pending:
            d.grace_pending = False
            if not ok:
                if d.ba is not None:
                    d.ba = None
                    self._counters["ba_released"] -= 1
                d.action = GRACE_TIMEOUT
                d.reason = "grace period timed out: Binding Ack withheld"
                self._counters["grace_timeouts"] += 1
        return ok

    def _grace_timeout(self, d: Decision) -> Decision:
        d.status = int(BAStatus.BINDING_UPDATE_ACCEPTED)
        d.action = GRACE_TIMEOUT
        d.reason = "grace period timed out: Binding Ack withheld"
        self._by_status[d.status] += 1
        self._counters["bu_accepted"] += 1
        self._counters["grace_timeouts"] += 1
        return d

    def unprotected(self, packet: bytes, now: float | None = None) -> Decision | None:
        """A packet the engine punted (PUNT): when it is a Mobility Header
        Binding Update in the clear, count it as rejected - RFC 3776 §4 and
        §6.2 require ESP on every BU to a home agent - and answer nothing.
        Returns None for anything else (not a BU: not this cache's)."""
        from fastpath.ref.ipv6 import NH_MH, ChainError, walk_chain
        packet = bytes(packet)
        if len(packet) < 40 or packet[0] >> 4 != 6:
            return None
        try:
            # options (the HAO) only for a BU: see walk_chain(options=False)
            chain = walk_chain(packet, options=False)
            if (chain.next_header != NH_MH or chain.offset + 3 > len(packet)
                    or packet[chain.offset + 2] != mh.MHType.BINDING_UPDATE):
                return None
            chain = walk_chain(packet)
        except ChainError:
            return None
        self._counters["bu_received"] += 1
        self._counters["bu_rejected"] += 1
        self._counters["unprotected"] += 1
        return Decision(action=DISCARDED, home_address=chain.hoa or packet[8:24],
                        destination=packet[8:24], ha_address=packet[24:40],
                        reason="Binding Update not protected by ESP (RFC 3776 §4, §6.2)")

    def expire_due(self, now: float) -> list[bytes]:
        """End every binding whose lifetime ran out by `now` (sad.expire,
        on_unbind) and forget invalid entries whose hold is over. Returns the
        home addresses whose binding expired."""
        expired = []
        while self._timers and self._timers[0][0] <= now:
            _, _, hoa = heapq.heappop(self._timers)
            entry = self._entries.get(hoa)
            if entry is None:
                continue
            if entry.valid and entry.expires_at is not None and entry.expires_at <= now:
                self._expire(entry)
                expired.append(hoa)
            elif not entry.valid and entry.purge_at is not None and entry.purge_at <= now:
                del self._entries[hoa]
        return expired

    def next_expiry(self) -> float | None:
        """When expire_due() next has work (a lifetime or a hold ends), or None."""
        while self._timers:
            deadline, _, hoa = self._timers[0]
            entry = self._entries.get(hoa)
            if entry is not None and deadline in (entry.expires_at, entry.purge_at):
                return deadline
            heapq.heappop(self._timers)     # superseded by a later BU or purge
        return None

    def entry(self, hoa) -> Entry | None:
        """The entry of a home address (16 bytes or text), or None."""
        if not isinstance(hoa, (bytes, bytearray)):
            hoa = ipaddress.IPv6Address(hoa).packed
        return self._entries.get(bytes(hoa))

    def entries(self, now: float) -> list[dict]:
        """The cache for `fastpath ctl bindings`: one dict per entry."""
        out = []
        for hoa in sorted(self._entries):
            e = self._entries[hoa]
            if e.expires_at is not None:
                left = max(0.0, e.expires_at - now)
            elif e.purge_at is not None:
                left = 0.0
            else:
                left = None
            out.append({
                "home_address": _ntop(hoa),
                "care_of_address": _ntop(e.care_of_address),
                "state": e.state,
                "lifetime": e.lifetime,
                "lifetime_left": left,
                "last_sequence": e.last_sequence,
                "flags": "".join(k if e.flags.get(k) else "-" for k in "AHLK"),
                "path_mtu": self.sad.path_mtu(hoa),     # lowered by Packet Too Big, aged out
            })
        return out

    def counters(self) -> dict:
        """Totals since start:

        bu_received / bu_accepted / bu_rejected (rejected: BA status >= 128,
        silently discarded, or in the clear), by_status {status: n} for every
        decided status, stale (135), registrations, rebinds (moves of a bound
        node), refreshes, moves (SA endpoint changes), deregistrations,
        expiries, malformed and malformed_by_action, not_home_registration,
        unprotected, not_binding_update, unknown_binding (a message other
        than a BU whose Home Address option names no binding to its source,
        RFC 6275 §9.3.1), ba_released, ba_suppressed (accepted, A clear),
        grace_timeouts, callback_errors."""
        keys = ("bu_received", "bu_accepted", "bu_rejected", "stale", "registrations",
                "rebinds", "refreshes", "moves", "deregistrations", "expiries", "malformed",
                "not_home_registration", "unprotected", "not_binding_update", "unknown_binding",
                "ba_released",
                "ba_suppressed", "grace_timeouts", "callback_errors")
        out = {k: self._counters[k] for k in keys}
        out["by_status"] = dict(sorted(self._by_status.items()))
        out["malformed_by_action"] = dict(self._malformed)
        return out


def build_ba_packet(engine, decision: Decision) -> bytes | None:
    """The Binding Ack of `decision` as it goes on the wire (RFC 3776 §3.1):
    IPv6(HA -> destination) . RH2(HoA) . ESP(binding-out SA) . MH (no RH2
    when the destination is the home address itself), checksummed
    from the HA address to the home address (the RH2 makes the home address
    the final destination, RFC 6275 §6.1.1).  Home-agent engines only.
    None when the binding-out SA has run out of sequence numbers."""
    if decision.ba is None:
        raise ValueError("this decision has no Binding Ack to send")
    hoa = decision.home_address
    body = mh.build(decision.ba, decision.ha_address, hoa)
    return engine.seal_mobility(hoa, body, decision.destination)


def build_binding_error_packet(ha: bytes, error: ErrorReply) -> bytes | None:
    """The Binding Error of `error` (kind 'binding_error') as it goes on the
    wire (RFC 6275 §6.1.9, §9.3.3): IPv6(HA -> the offending packet's
    source) . MH, in the clear - no SA's selectors cover Binding Errors
    (RFC 3776 §4) - with the Home Address field copied from the offending
    packet's Home Address option, unspecified when it had none. None when
    that source is not a unicast address to answer (§9.3.3: then it MUST NOT
    be sent; see fastpath.ref.ipv6.reply_problem)."""
    if error.kind != "binding_error":
        raise ValueError(f"not a Binding Error: {error.kind}")
    if reply_problem(error.destination, ha) is not None:
        return None
    hoa = error.home_address if error.home_address is not None else bytes(16)
    body = mh.build(mh.BindingError(status=error.status, home_address=hoa), ha,
                    error.destination)
    return ipv6_header(ha, error.destination, mh.IPPROTO_MH, len(body)) + body


def unknown_binding_error(packet: bytes) -> ErrorReply | None:
    """RFC 6275 §9.3.1: the Binding Error (status 1, unknown binding for Home
    Address destination option) for a wire-side packet whose Home Address
    option names no binding with the packet's source as care-of address -
    what the engine punts with the note NO_BINDING. None when the option
    cannot be found again (the engine found it: nothing sends that)."""
    hoa = _hao(packet)
    return None if hoa is None else _unknown_binding(bytes(packet[8:24]), hoa)


def _unknown_binding(source: bytes, hoa: bytes) -> ErrorReply:
    return ErrorReply("binding_error", source, hoa,
                      status=mh.BEStatus.UNKNOWN_BINDING_FOR_HOME_ADDRESS_DESTINATION_OPTION,
                      problem="Home Address option without a binding (RFC 6275 §9.3.1)")


def _hao(packet: bytes) -> bytes | None:
    """The Home Address option's address in `packet`'s header chain, or None.
    Walks every option in Python: only for packets already rate-limited by
    the caller, or authenticated messages on a binding SA that are not
    Binding Updates (rare: the engine found the option equal to the SA's
    home address, but not whether it was there at all)."""
    try:
        return walk_chain(bytes(packet)).hoa
    except (ChainError, IndexError):
        return None
