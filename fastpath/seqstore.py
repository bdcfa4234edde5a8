"""Crash-safe outbound ESP sequence numbers (SPEC §4).

A restart must never send a (key, sequence number) pair twice: for GCM that
would reuse a nonce. So the workers may only use numbers up to a *limit*
that was first written to `state_dir` and fsync'd; the control thread moves
the limit forward, a block at a time, well before the workers reach it. On
start, each outbound SA resumes after the last recorded limit, whatever
happened before (kill -9 included): at most one block per restart is skipped.

The file holds one JSON object: {"<spi hex>:<key fingerprint>": limit}. The
fingerprint ties a reservation to the key it was made under, so a rekeyed SA
starts again from 1. Entries for SAs this configuration does not have are kept
as they are: a later configuration that brings such an SA back (same SPI, same
key) must still start after its old limit.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fastpath.seqstore")

FILE = "sequence-reservations.json"
MIN_BLOCK = 1 << 20     # ~0.5 s at 2 Mpps before the first check: the rate is not known yet
MAX_BLOCK = 1 << 26
AHEAD_S = 1.0           # a block covers this much traffic at the SA's recent rate
# How soon plan() wants to run again: often enough that an SA going from idle
# to a burst moves its limit before the 2^19 numbers left at that point run
# out (0.1 s: safe up to ~5 Mpps on one SA), rarely enough that an idle
# forwarder sleeps.
CHECK_MIN_S = 0.02
CHECK_MAX_S = 0.1


def fingerprint(sa_cfg) -> str:
    h = hashlib.sha256(sa_cfg.enc_key + sa_cfg.salt + sa_cfg.auth_key).hexdigest()
    return h[:16]


@dataclass
class _Reservation:
    spi: int
    key: str
    limit: int            # workers may use numbers <= limit
    block: int
    max_seq: int          # 2^32-1, or 2^64-1 with ESN
    seen: int = 0         # sequence number at the previous check
    seen_at: float = 0.0  # ... and when (monotonic)
    rate: float = 0.0     # numbers per second, smoothed


def describe(state_dir) -> str:
    """What `fastpath check` says about the state directory; RuntimeError
    when `fastpath run` would refuse to start on it."""
    d = Path(state_dir)
    if not d.exists():
        return "(not there yet: created at the first run)"
    if not d.is_dir():
        raise RuntimeError(f"[home_agent] state_dir {d}: exists and is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise RuntimeError(f"[home_agent] state_dir {d}: not writable by this user")
    path = d / FILE
    if not path.exists():
        return "(no sequence reservations yet)"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{path}: unreadable sequence reservations ({e}); "
                           "fastpath run would refuse to start") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise RuntimeError(f"{path}: malformed sequence reservations; "
                           "fastpath run would refuse to start")
    return f"({len(data)} sequence reservation{'s' if len(data) != 1 else ''})"


class SequenceStore:
    """Owns the reservations of every outbound SA of one SA table."""

    def __init__(self, state_dir, sad, sas):
        """`sas`: the outbound SAConfig objects of the table (config.SAConfig)."""
        self.dir = Path(state_dir)
        self.path = self.dir / FILE
        self.sad = sad
        self._res: dict[int, _Reservation] = {}
        self.next_check_s = CHECK_MIN_S      # when plan() wants to run again
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self._load()
        mine = {f"{sa.spi:08x}:{fingerprint(sa)}" for sa in sas}
        # Not ours to forget: dropping them would let a later run reuse numbers.
        self._others = {k: v for k, v in saved.items() if k not in mine}
        for sa in sas:
            key = f"{sa.spi:08x}:{fingerprint(sa)}"
            max_seq = (1 << 64) - 1 if sa.esn else (1 << 32) - 1
            last = saved.get(key, 0)
            if last:
                # Everything up to the old limit may have been sent: start after it.
                sad.resume_sequence(sa.spi, min(last, max_seq))
                log.info("SA 0x%08x resumes after sequence number %d", sa.spi, last)
            self._res[sa.spi] = _Reservation(sa.spi, key, last, MIN_BLOCK, max_seq)
        for r in self._res.values():
            r.limit = min(max(r.limit, sad.sequence(r.spi)) + r.block, r.max_seq)
        self._save()            # durable before any worker may use a number
        for r in self._res.values():
            sad.set_sequence_limit(r.spi, r.limit)

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{self.path}: unreadable sequence reservations ({e}); "
                               "refusing to start: numbers could repeat") from None
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise RuntimeError(f"{self.path}: malformed sequence reservations; refusing to start")
        return data

    def _save(self, moved: dict[int, int] | None = None) -> None:
        """Write, fsync, rename, fsync the directory: the limits (with `moved`,
        {spi: new limit}, applied) survive a crash."""
        moved = moved or {}
        tmp = self.path.with_suffix(".tmp")
        entries = dict(self._others)
        entries.update((r.key, moved.get(r.spi, r.limit)) for r in self._res.values())
        body = json.dumps(entries, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def extend(self, now: float | None = None) -> int:
        """plan() then commit(): returns how many limits moved."""
        moves = self.plan(now)
        return self.commit(moves) if moves else 0

    def plan(self, now: float | None = None) -> dict[int, int]:
        """Which limits must move now: {spi: new limit}. Cheap (no I/O), so
        the control loop calls it often and hands the rare non-empty answer
        to commit() off the loop.

        A limit moves when the SA would reach it within half a block or
        AHEAD_S / 2 at its recent rate. The block is sized to cover AHEAD_S
        of traffic at that rate (a power of two between MIN_BLOCK and
        MAX_BLOCK): a fast SA must not run dry while the control thread is
        late (a busy machine, a slow fsync); a slow one skips little on a
        restart. Also sets next_check_s: half the time the busiest SA needs
        to reach its threshold, within [CHECK_MIN_S, CHECK_MAX_S]."""
        now = time.monotonic() if now is None else now
        moves = {}
        soonest = CHECK_MAX_S * 2
        for r in self._res.values():
            used = self.sad.sequence(r.spi)
            if r.seen_at:
                dt = now - r.seen_at
                if dt > 0:
                    inst = (used - r.seen) / dt
                    r.rate = inst if inst > r.rate else 0.8 * r.rate + 0.2 * inst
            r.seen, r.seen_at = used, now
            want = 1 << max(int(r.rate * AHEAD_S), 1).bit_length()
            r.block = max(MIN_BLOCK, min(want, MAX_BLOCK))
            if r.limit >= r.max_seq:
                continue
            spare = r.limit - used - max(r.block // 2, r.rate * AHEAD_S / 2)
            if spare > 0:
                if r.rate > 0:
                    soonest = min(soonest, spare / r.rate)
                continue
            moves[r.spi] = min(used + r.block, r.max_seq)
        self.next_check_s = min(max(soonest / 2, CHECK_MIN_S), CHECK_MAX_S)
        return moves

    def commit(self, moves: dict[int, int]) -> int:
        """Make plan()'s moves durable (fsync: milliseconds), then let the
        workers use them. Nothing changes in memory unless the write
        succeeded, so a failed one is planned again. Returns how many moved."""
        self._save(moves)
        for spi, limit in moves.items():
            self._res[spi].limit = limit
            self.sad.set_sequence_limit(spi, limit)
        return len(moves)

    def limits(self) -> dict[int, int]:
        return {spi: r.limit for spi, r in self._res.items()}
