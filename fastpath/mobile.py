"""The mobile node's half of home registration (RFC 6275 §11.7.1, §11.8):
its Binding Update List entry for the home agent, sans-IO and clock-injected.

The control loop of a `--role mobile-node` forwarder asks `due(now)` what to
send, seals it with Engine.seal_mobility() and writes it; it hands every
Binding Ack it authenticated to `on_ack()`.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastpath import mh

# RFC 6275 §12: InitialBindackTimeoutFirstReg 1.5 s, MAX_BINDACK_TIMEOUT 32 s.
INITIAL_TIMEOUT_FIRST_REG = 1.5
INITIAL_TIMEOUT = 1.0
MAX_BINDACK_TIMEOUT = 32.0
REFRESH_FRACTION = 0.75          # refresh the binding when 3/4 of its lifetime has gone


@dataclass
class Sent:
    mh: bytes                    # the Mobility Header to seal
    coa: bytes                   # the care-of address to send it from
    sequence: int


class HomeRegistration:
    """One mobile node's registration with its home agent."""

    def __init__(self, hoa: bytes, ha: bytes, lifetime_s: int = 3600):
        self.hoa = hoa
        self.ha = ha
        self.lifetime_units = max(1, min(lifetime_s // 4, 0xFFFF))
        self.sequence = 0
        self.coa: bytes | None = None
        self.pending: Sent | None = None       # sent, not yet acknowledged
        self.timeout = INITIAL_TIMEOUT_FIRST_REG
        self.next_send = 0.0
        self.registered_until = 0.0
        self.registered = False
        self.acks: list[mh.BindingAck] = []
        self.retransmissions = 0

    def move(self, coa: bytes, now: float) -> Sent:
        """A new care-of address (or the first): a fresh BU, sent at once."""
        self.coa = coa
        self.timeout = INITIAL_TIMEOUT if self.registered else INITIAL_TIMEOUT_FIRST_REG
        return self._send(now, new=True)

    def deregister(self, now: float) -> Sent:
        """Returning home / shutting down: lifetime 0 (RFC 6275 §11.5.4)."""
        self.timeout = INITIAL_TIMEOUT
        return self._send(now, new=True, lifetime=0)

    def _send(self, now: float, *, new: bool, lifetime: int | None = None) -> Sent:
        if new:
            self.sequence = (self.sequence + 1) & 0xFFFF
        units = self.lifetime_units if lifetime is None else lifetime
        bu = mh.BindingUpdate(sequence=self.sequence, lifetime=units, ack=True, home=True,
                              options=(mh.AlternateCareOfAddress(self.coa),))
        self.pending = Sent(mh.build(bu, self.hoa, self.ha), self.coa, self.sequence)
        self.next_send = now + self.timeout
        return self.pending

    def due(self, now: float) -> Sent | None:
        """What to send now, if anything: a retransmission with exponential
        back-off (§11.8), or a refresh before the binding expires."""
        if self.coa is None:
            return None
        if self.pending is not None:
            if now < self.next_send:
                return None
            self.timeout = min(self.timeout * 2, MAX_BINDACK_TIMEOUT)
            self.retransmissions += 1
            return self._send(now, new=True)   # a retransmitted BU carries a new sequence (§11.8)
        if self.registered and now >= self.registered_until:
            self.timeout = INITIAL_TIMEOUT
            return self._send(now, new=True)
        return None

    def on_ack(self, ba: mh.BindingAck, now: float) -> bool:
        """Apply an authenticated Binding Ack. True when it completes the
        pending registration."""
        self.acks.append(ba)
        if ba.status == mh.BAStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW:
            # §11.7.3: the HA tells us its last accepted number: go on from it.
            self.sequence = ba.sequence
            if self.pending is not None:
                self.next_send = now
            return False
        if self.pending is None or ba.sequence != self.pending.sequence:
            return False                 # a late answer to an older BU
        if ba.status >= 128:
            return False                 # rejected: keep retrying with back-off
        self.pending = None
        self.registered = ba.lifetime > 0
        life = min(ba.lifetime, self.lifetime_units) * 4
        self.registered_until = now + life * REFRESH_FRACTION
        return True
