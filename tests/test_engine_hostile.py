"""The Cython engine under hostile input, both backends, several algorithms.

Wherever the reference engine can express a case, the Cython engine is run
on the same packets (same IVs) and must give the same verdict, reason and
bytes, and the same counters; the expected outcome is also asserted directly
from docs/engine-semantics.md. Cases that could crash the interpreter (memory
safety of Batch/Engine against corrupted arrays) run in a subprocess.
"""
from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastpath import mh
from fastpath.algorithms import get
from fastpath.ref.esp import frame
from fastpath.ref.ipv6 import hao_destopt, ipv6_header
from fastpath.verdicts import Reason, Verdict

from topo import (BACKENDS, CN, COA1, COA2, EVIL, HA, MN1, MN2, MN3, SPI, Batch, inner,
                  make_topo, outer, random_bytes)

SOME_ALGS = ["aes128gcm16", "aes128-sha1", "aes256-sha256", "null-sha256"]
IV = b"\x42" * 16
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

backends = pytest.mark.parametrize("backend", BACKENDS)
some_algs = pytest.mark.parametrize("alg", SOME_ALGS)
esns = pytest.mark.parametrize("esn", [False, True], ids=["noesn", "esn"])

DROP, TO_WIRE, TO_HOME, PUNT, BINDING = (int(v) for v in Verdict)
R = Reason


# --- helpers -------------------------------------------------------------------------

def mn_esp(topo, hoa, purpose, payload, seq, nh=41, src=COA1, ext=b"", first_nh=50):
    """An ESP packet as the mobile node sends it on one of our inbound SAs."""
    sa = topo.mn_sa(hoa, purpose)
    body = ext + sa.seal(seq, payload, nh, IV if sa.alg.iv_len == 16 else None)
    return ipv6_header(src, HA, first_nh, len(body)) + body


def mn_esp_framed(topo, hoa, purpose, plaintext, seq, src=COA1):
    """ESP from an already framed plaintext (any padding), with a valid ICV."""
    sa = topo.mn_sa(hoa, purpose)
    iv = {16: IV, 8: struct.pack("!Q", seq), 0: b""}[sa.alg.iv_len]
    body = sa.seal_framed(seq, plaintext, iv)
    return ipv6_header(src, HA, 50, len(body)) + body


def bu_mh(seq=1, **kw):
    return mh.build(mh.BindingUpdate(seq, 100, ack=True, home=True, **kw), MN1, HA)


def bu_packet(topo, seq, hoa=MN1, hao=None, coa=COA1, msg=None):
    """A BU on ``hoa``'s binding-in SA with ESP sequence number ``seq``."""
    sa = topo.mn_sa(hoa, "binding")
    body = (hao_destopt(hao or hoa, 50)
            + sa.seal(seq, msg or bu_mh(), 135, IV if sa.alg.iv_len == 16 else None))
    return ipv6_header(coa, HA, 60, len(body)) + body


def check(topo, direction, packets, ivs=None):
    """Both engines over one batch; they must agree. Returns the results."""
    got, want = topo.run(direction, packets, ivs)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"packet {k}: cython {g[:2]} ref {w[:2]}\n{bytes(packets[k]).hex()}"
    return got


def vr(results):
    return [(v, r) for v, r, _ in results]


def same_counters(topo):
    ref = topo.ref.counters()
    eng = topo.engine.counters()
    assert eng["drops"] == ref["reasons"]
    assert eng["verdicts"] == ref["verdicts"]
    for sa in topo.sad.sas():
        rc = ref["sa"][sa["spi"]]
        d = sa["direction"]
        assert (sa["packets_" + d], sa["bytes_" + d]) == (rc["packets_" + d], rc["bytes_" + d])
        assert sa["drops"] == {k: v for k, v in rc["drops"].items() if v}, sa["spi"]


def run_isolated(body: str, timeout=10, imports="from topo import *"):
    """Run ``body`` in a fresh interpreter (for cases that may crash it, or
    hang it: heap corruption can deadlock malloc). A hang counts as a crash."""
    code = ("import sys\nsys.path[:0] = [%r, %r]\n%s\n" % (str(REPO), str(TESTS), imports)
            + textwrap.dedent(body))
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], "hung", "", f"no exit after {timeout}s")


# --- bit flips ---------------------------------------------------------------------------

@backends
@esns
@some_algs
def test_bit_flip_at_every_position(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    good = mn_esp(topo, MN1, "payload", inner(MN1, CN, 72), seq=1)
    flips, where = [], []
    # One batch, the flips inside ESP first: no copy of sequence number 1 is
    # accepted before them, so every one reaches the ICV check. Then the
    # outer-header flips: whatever the reference says (a flipped hop limit
    # or address is still a valid packet; the first one accepted takes the
    # number, and the copies after it are replays).
    for pos in list(range(40, len(good))) + list(range(40)):
        for bit in range(8):
            p = bytearray(good)
            p[pos] ^= 1 << bit
            flips.append(bytes(p))
            where.append((pos, bit))
    got = check(topo, "decap", flips)
    accepted = 0
    for (pos, bit), (v, r, out) in zip(where, got):
        if pos >= 40:                    # ESP header, IV, ciphertext, ICV
            allowed = {R.ICV}
            if pos < 44:
                allowed.add(R.UNKNOWN_SPI)   # or another SA's SPI: its ICV fails
            elif pos < 48:
                allowed.add(R.REPLAY)        # sequence number 0 / before the first subspace
            assert v == DROP and Reason(r) in allowed, (pos, v, r)
        elif pos in (4, 5) or (pos == 0 and bit >= 4):
            assert (v, r) == (DROP, R.MALFORMED)     # payload length, version
        if v == TO_HOME:
            accepted += 1
            assert out == inner(MN1, CN, 72)
    assert accepted <= 1                     # the others were replays of seq 1
    same_counters(topo)


# --- padding --------------------------------------------------------------------------

@backends
@esns
@some_algs
def test_bad_padding_with_valid_icv(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    align = get(alg).align
    pkt = inner(MN1, CN, 64)
    good = frame(pkt, 41, align)
    n = good[-2]
    assert n >= 2
    wrong_byte = good[:len(pkt) + n - 1] + bytes([0xEE]) + good[-2:]
    zero_pad = pkt + bytes(n) + good[-2:]
    overrun = good[:-2] + bytes([len(good) - 1, 41])       # pad length past the start
    huge = good[:-2] + bytes([255, 41])
    extra = 2 * align                                       # longer, valid padding (TFC)
    long_ok = pkt + bytes(range(1, n + extra + 1)) + bytes([n + extra, 41])
    cases = [(wrong_byte, R.BAD_PADDING), (zero_pad, R.BAD_PADDING),
             (overrun, R.BAD_PADDING), (huge, R.BAD_PADDING), (long_ok, None)]
    for k, (plaintext, reason) in enumerate(cases, 1):
        assert len(plaintext) % align == 0
        got = check(topo, "decap", [mn_esp_framed(topo, MN1, "payload", plaintext, seq=k)])
        if reason is None:
            assert got == [(TO_HOME, 0, pkt)]
        else:
            assert vr(got) == [(DROP, reason)]
            # A bad-padding drop consumes no sequence number: the same number
            # with good padding is still accepted.
            got = check(topo, "decap", [mn_esp_framed(topo, MN1, "payload", good, seq=k)])
            assert got == [(TO_HOME, 0, pkt)]
    same_counters(topo)


# --- SPIs ---------------------------------------------------------------------------------

@backends
@some_algs
def test_unknown_spi(alg, backend):
    topo = make_topo(alg, False, backend)
    real = mn_esp(topo, MN1, "payload", inner(MN1, CN, 64), seq=1)
    pkts = []
    for spi in (0xDEADBEEF, 0x1001, 0x1003, 0x2004, 1, 255, 256, 0xFFFFFFFF):
        # an outbound SPI is not an inbound SA; neither are reserved or unused ones
        pkts.append(real[:40] + struct.pack("!I", spi) + real[44:])
    got = check(topo, "decap", pkts)
    assert vr(got) == [(DROP, R.UNKNOWN_SPI)] * len(pkts)
    assert topo.engine.counters()["drops"]["unknown_spi"] == len(pkts)
    assert all(not sa["drops"] for sa in topo.sad.sas())
    same_counters(topo)


@backends
def test_spi_zero_is_unknown(backend):
    topo = make_topo("aes128-sha1", False, backend)
    real = mn_esp(topo, MN1, "payload", inner(MN1, CN, 64), seq=1)
    pkt = real[:40] + bytes(4) + real[44:]
    got = check(topo, "decap", [pkt])
    assert vr(got) == [(DROP, R.UNKNOWN_SPI)]
    same_counters(topo)


# --- replay window ------------------------------------------------------------------

@backends
@pytest.mark.parametrize("window", [32, 64, 100, 1024])
@pytest.mark.parametrize("alg", ["aes128gcm16", "null-sha256"])
@esns
def test_window_edges(alg, window, esn, backend):
    topo = make_topo(alg, esn, backend, window=window)
    payload = inner(MN1, CN, 60)
    pk = lambda s: mn_esp(topo, MN1, "payload", payload, seq=s)  # noqa: E731
    T = window + 10
    # Too old: a replay; with ESN a low half below the window is inferred in
    # the next subspace (RFC 4303 A2.1), so the ICV fails instead.
    too_old = (DROP, R.ICV if esn else R.REPLAY)

    def one(seq, expect):
        got = check(topo, "decap", [pk(seq)])
        assert vr(got) == [expect], (seq, got[0][:2])

    one(T, (TO_HOME, 0))
    one(T, (DROP, R.REPLAY))                   # replayed
    one(T - window, too_old)                   # seq + W <= T: too old
    one(T - window + 1, (TO_HOME, 0))          # the oldest number the window holds
    one(T - window + 1, (DROP, R.REPLAY))
    one(T - 1, (TO_HOME, 0))
    one(T + window, (TO_HOME, 0))              # T moves by exactly W
    one(T, too_old)                            # now exactly W behind: too old
    one(T + 1, (TO_HOME, 0))                   # W - 1 behind, unseen: accepted
    one(T + window - 1, (TO_HOME, 0))
    # two copies in one batch: the second is a replay at commit time
    got = check(topo, "decap", [pk(T + 3 * window), pk(T + 3 * window)])
    assert vr(got) == [(TO_HOME, 0), (DROP, R.REPLAY)]
    # a number made stale by a later one of the same batch: judged on the
    # batch-start window (whatever that means with ESN: the reference says)
    check(topo, "decap", [pk(T + 10 * window), pk(T + 4 * window), pk(T + 3 * window + 1)])
    one(0, (DROP, R.REPLAY)) if not esn else None
    same_counters(topo)


@backends
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1"])
def test_esn_across_2_32(alg, backend):
    topo = make_topo(alg, True, backend, window=64)
    payload = inner(MN1, CN, 60)
    pk = lambda s: mn_esp(topo, MN1, "payload", payload, seq=s)  # noqa: E731
    B = 1 << 32
    steps = [
        ([B - 2], [(DROP, R.REPLAY)]),         # before the first subspace while T = 0
        ([64], [(TO_HOME, 0)]),
        ([0x80000000], [(TO_HOME, 0)]),
        ([B - 2], [(TO_HOME, 0)]),
        ([B + 1], [(TO_HOME, 0)]),             # low half 1: the next subspace
        ([B - 1], [(TO_HOME, 0)]),             # low half 0xffffffff: the previous one
        ([B], [(TO_HOME, 0)]),
        ([B - 1, B + 1, B - 2], [(DROP, R.REPLAY)] * 3),
        ([B - 62], [(TO_HOME, 0)]),            # T - W + 1 (T = 2^32 + 1): oldest in window
        ([B - 63], [(DROP, R.ICV)]),           # too old: inferred in the next subspace
        ([B + 60, B + 2], [(TO_HOME, 0), (TO_HOME, 0)]),   # 58 behind, same batch
        ([B + 70, B + 3], [(TO_HOME, 0), (DROP, R.REPLAY)]),  # too old at commit time
        ([2 * B + 100], [(DROP, R.ICV)]),      # a whole subspace ahead: not inferable
        ([B + 5 + (1 << 31)], [(TO_HOME, 0)]),
    ]
    for seqs, expect in steps:
        got = check(topo, "decap", [pk(s) for s in seqs])
        assert vr(got) == expect, (seqs, vr(got))
    assert topo.sad.sequence(SPI[(MN1, "payload", "in")], "in") == B + 5 + (1 << 31)
    same_counters(topo)


@backends
def test_no_esn_top_of_space(backend):
    topo = make_topo("aes128-sha1", False, backend, window=64)
    payload = inner(MN1, CN, 60)
    pk = lambda s: mn_esp(topo, MN1, "payload", payload, seq=s)  # noqa: E731
    M = 0xFFFFFFFF
    for seqs, expect in [([M - 1], [TO_HOME]), ([M], [TO_HOME]), ([M, M - 1, 1], [DROP] * 3),
                         ([M - 5], [TO_HOME])]:
        assert [v for v, _, _ in check(topo, "decap", [pk(s) for s in seqs])] == expect
    same_counters(topo)


@backends
@pytest.mark.parametrize("window", [0, 32, 64, 100, 1024])
@pytest.mark.parametrize("alg", ["null-sha256", "aes128gcm16"])
@esns
def test_window_random_model(alg, window, esn, backend):
    """Random streams of sequence numbers (jumps, duplicates, stale ones, and
    for ESN walks across 2^32 boundaries) in random batches: the reference's
    window is the model."""
    rnd = random.Random(f"{alg}{window}{esn}{backend}")
    topo = make_topo(alg, esn, backend, window=window)
    payload = inner(MN1, CN, 48)
    sa = topo.mn_sa(MN1, "payload")
    top = 0
    sent = []
    for _ in range(40):
        batch = []
        for _ in range(rnd.randrange(1, 12)):
            c = rnd.random()
            if c < 0.45 or not sent:
                s = top + rnd.randrange(1, max(2, window // 2 + 3))
            elif c < 0.6:
                s = rnd.choice(sent)
            elif c < 0.8:
                s = max(1, top - rnd.randrange(0, window + 5))
            elif c < 0.9:
                s = top + rnd.randrange(window, 4 * window + 40)
            else:
                s = (top | 0xFFFFFFFF) - rnd.randrange(0, 3) if esn else top + 1
            if not esn:
                s = min(s, 0xFFFFFFFF)
            top = max(top, s)
            sent.append(s)
            iv = IV if sa.alg.iv_len == 16 else None
            body = sa.seal(s, payload, 41, iv)
            batch.append(ipv6_header(COA1, HA, 50, len(body)) + body)
        check(topo, "decap", batch)
    same_counters(topo)


# --- selectors --------------------------------------------------------------------

@backends
@some_algs
def test_inner_source_policy(alg, backend):
    topo = make_topo(alg, False, backend)
    got = check(topo, "decap", [
        mn_esp(topo, MN1, "payload", inner(EVIL, CN, 64), seq=1),
        mn_esp(topo, MN1, "return-routability", inner(MN2, CN, 64), seq=1),
        mn_esp(topo, MN3, "payload", inner(MN1, CN, 64), seq=1),
        mn_esp(topo, MN1, "payload", inner(MN1, CN, 64), seq=2, src=EVIL),  # outer src free
        mn_esp(topo, MN1, "payload", bu_mh(), seq=3, nh=135),       # tunnel SA needs 41
        mn_esp(topo, MN1, "payload", inner(MN1, CN, 64)[:-1], seq=4),  # inner malformed
    ])
    assert vr(got) == [(DROP, R.POLICY)] * 3 + [(TO_HOME, 0)] + [(DROP, R.MALFORMED)] * 2
    # a policy drop came after the ICV: its number is consumed
    got = check(topo, "decap", [mn_esp(topo, MN1, "payload", inner(MN1, CN, 64), seq=1)])
    assert vr(got) == [(DROP, R.REPLAY)]
    same_counters(topo)


@backends
def test_plain_tunnel(backend):
    topo = make_topo("aes128-sha1", False, backend)
    ok = outer(COA2, HA, 41, inner(MN2, CN, 80))
    got = check(topo, "decap", [
        ok,
        outer(EVIL, HA, 41, inner(MN2, CN, 80)),           # outer source is not the CoA
        outer(COA1, HA, 41, inner(MN2, CN, 80)),           # another MN's CoA
        outer(COA1, HA, 41, inner(MN1, CN, 80)),           # MN1 has a payload SA
        outer(COA2, HA, 41, inner(MN3, CN, 80)),           # MN3 has no CoA
        outer(COA2, HA, 41, inner(EVIL, CN, 80)),          # unknown home address
        outer(COA2, HA, 41, inner(MN2, CN, 80)[:-3]),      # inner malformed
        outer(COA2, HA, 60, hao_destopt(MN2, 41) + inner(MN2, CN, 80)),  # behind dest-opts
        # RFC 6275 §9.3.1: a HAO must name a binding to the packet's source
        outer(COA2, HA, 60, hao_destopt(MN1, 41) + inner(MN2, CN, 80)),  # MN1 is at COA1
    ])
    assert vr(got) == ([(TO_HOME, 0)] + [(DROP, R.POLICY)] * 3 + [(DROP, R.NO_BINDING)] * 2
                       + [(DROP, R.MALFORMED), (TO_HOME, 0), (PUNT, R.NO_BINDING)])
    assert got[0][2] == inner(MN2, CN, 80)
    same_counters(topo)


# --- truncation ---------------------------------------------------------------------

def _truncations(pkt):
    out = []
    for n in range(len(pkt)):
        out.append(pkt[:n])                         # payload length now wrong
        if n >= 40:                                 # ... and fixed up
            out.append(pkt[:4] + struct.pack("!H", n - 40) + pkt[6:n])
    return out


@backends
@esns
@some_algs
def test_truncation_at_every_length(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    esp = mn_esp(topo, MN1, "payload", inner(MN1, CN, 70), seq=1)
    bu = bu_packet(topo, 1)
    for pkt, esp_start in ((esp, 40), (bu, 64)):
        cut = _truncations(pkt)
        got = check(topo, "decap", cut)
        for c, (v, r, _) in zip(cut, got):
            assert v == DROP, len(c)
            if len(c) >= esp_start + 8:
                assert Reason(r) in (R.MALFORMED, R.ICV), (len(c), r)
            else:
                assert Reason(r) == R.MALFORMED, (len(c), r)
        # the whole packets still go through afterwards
        assert vr(check(topo, "decap", [pkt])) == [(TO_HOME if pkt is esp else BINDING, 0)]
    same_counters(topo)


# --- garbage ---------------------------------------------------------------------

def _garbage(rnd, topo, n):
    out = []
    spis = [s for (_, _, d), s in SPI.items() if d == "in"]
    for _ in range(n):
        kind = rnd.random()
        size = rnd.choice([rnd.randrange(0, 80), rnd.randrange(0, 2001)])
        if kind < 0.4:
            out.append(random_bytes(rnd, size))
            continue
        body = bytearray(random_bytes(rnd, max(0, size - 40)))
        nh = rnd.choice([0, 43, 60, 50, 41, 44, 135, 58, 59, rnd.randrange(256)])
        if nh == 50 and len(body) >= 8 and rnd.random() < 0.7:
            body[0:4] = struct.pack("!I", rnd.choice(spis))
        if nh == 41 and len(body) >= 40 and rnd.random() < 0.5:
            body[0:40] = ipv6_header(rnd.choice([MN1, MN2, MN3]), CN, 17, len(body) - 40)
        if nh in (0, 43, 60) and len(body) >= 2 and rnd.random() < 0.5:
            body[1] = rnd.randrange(4)
        src, dst = rnd.choice([COA1, COA2, EVIL, CN]), rnd.choice([HA, MN1, MN2, MN3, EVIL])
        out.append(ipv6_header(src, dst, nh, len(body)) + bytes(body))
    return out


@backends
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_garbage_batches(alg, backend):
    rnd = random.Random(f"garbage-{alg}-{backend}")
    topo = make_topo(alg, rnd.random() < 0.5, backend)
    for direction in ("decap", "encap"):
        for _ in range(3):
            packets = _garbage(rnd, topo, 1000)
            b = Batch(len(packets), max_packet=1024)
            kept = []
            for p in packets:
                if len(p) > 1024:
                    with pytest.raises(ValueError):
                        b.set(len(kept), p)
                    assert b.count == len(kept)
                    continue
                b.set(len(kept), p)
                kept.append(p)
            ivs = [random_bytes(rnd, 16) for _ in kept]
            if direction == "encap" and get(alg).iv_len == 16:
                topo.engine.fixed_ivs = True
                for i, iv in enumerate(ivs):
                    b.set_iv(i, iv)
            getattr(topo.engine, direction)(b)
            got = b.results()
            want = (topo.ref.decap(kept) if direction == "decap"
                    else topo.ref.encap(kept, ivs if get(alg).iv_len == 16 else None))
            assert got == [(int(v), int(r), p) for v, r, p in want]
    same_counters(topo)


@backends
def test_batch_load_too_big_packet(backend):
    topo = make_topo("aes128-sha1", False, backend)
    b = Batch(4, max_packet=256)
    good = inner(CN, MN1, 100)
    with pytest.raises(ValueError):
        b.load([good, bytes(257), good])
    assert b.count == 1                    # what was loaded before the refusal
    topo.engine.encap(b)
    assert b.results()[0][:2] == (TO_WIRE, 0)
    with pytest.raises(ValueError):
        b.set(0, bytes(2000))
    with pytest.raises(IndexError):
        b.set(4, good)
    with pytest.raises(ValueError):
        Batch(4, max_packet=63)


# --- corrupted batch arrays -------------------------------------------------------

@backends
@pytest.mark.parametrize("direction", ["encap", "decap"])
def test_corrupted_offsets_and_lengths(direction, backend):
    topo = make_topo("aes128-sha1", False, backend)
    pkt = inner(CN, MN1, 100) if direction == "encap" else outer(COA2, HA, 41, inner(MN2, CN, 60))
    b = Batch(12)
    b.load([pkt] * 12)
    head, slot = b.headroom, b.slot_size
    corrupt = {
        0: (-1, None), 1: (-(2 ** 31), None), 2: (None, -1), 3: (None, -(2 ** 31)),
        4: (slot, None), 5: (None, slot), 6: (slot - 10, 100), 7: (head - 1, None),
        8: (0, None), 9: (None, slot - head - 127),   # ends inside the tailroom
    }
    for i, (off, n) in corrupt.items():
        if off is not None:
            b.offsets[i] = off
        if n is not None:
            b.lengths[i] = n
    # slot 10: the packet moved within its slot, still in bounds: processed
    b.data[10, head + 64:head + 64 + len(pkt)] = np.frombuffer(pkt, np.uint8)
    b.offsets[10] = head + 64
    getattr(topo.engine, direction)(b)
    res = b.results()
    for i in corrupt:
        assert res[i][:2] == (DROP, R.MALFORMED), i
    expect = TO_WIRE if direction == "encap" else TO_HOME
    assert res[10][:2] == (expect, 0) and res[11][:2] == (expect, 0)
    assert res[10][2] == res[11][2] or direction == "encap"
    assert topo.engine.counters()["drops"]["malformed"] == len(corrupt)


CRASHERS = {
    "offset_plus_length_overflows_int32": """
        tp = make_topo('aes128-sha1')
        b = Batch(2); b.load([inner(CN, MN1, 100)] * 2)
        b.offsets[1] = 2**31 - 50; b.lengths[1] = 100
        tp.engine.{direction}(b)
        b.offsets[0] = 128; b.lengths[0] = 2**31 - 1
        tp.engine.{direction}(b)
        print(list(b.reasons))
    """,
    "count_beyond_capacity": """
        tp = make_topo('aes128-sha1')
        b = Batch(2); b.load([inner(CN, MN1, 100)] * 2)
        b.count = 1 << 20
        try:
            tp.engine.{direction}(b)
        except (ValueError, IndexError):
            pass
        print('survived')
    """,
}


@pytest.mark.parametrize("direction", ["encap", "decap"])
@pytest.mark.parametrize("case", sorted(CRASHERS))
def test_corrupted_batch_does_not_crash(case, direction):
    r = run_isolated(CRASHERS[case].replace("{direction}", direction))
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])


BATCH_CRASHERS = {
    "set_iv_out_of_range": """
        b = Batch(2)
        for i in (2, 10**6, -10**6):
            try:
                b.set_iv(i, bytes(16))
            except (IndexError, ValueError):
                pass
        print('survived')
    """,
    "get_with_corrupted_offset": """
        b = Batch(2); b.load([b'x' * 64] * 2)
        b.offsets[0] = 10**9
        try:
            b.get(0)
        except (IndexError, ValueError):
            pass
        print('survived')
    """,
    "copy_from_whole_slot": """
        src = Batch(2); src.load([b'x' * 64] * 2)
        src.offsets[1] = 0; src.lengths[1] = src.slot_size
        dst = Batch(2)
        try:
            dst.copy_from(src)
        except ValueError:
            pass
        del dst, src
        import gc; gc.collect()
        print('survived')
    """,
    "copy_from_offset_overflow": """
        src = Batch(2); src.load([b'x' * 64] * 2)
        src.offsets[1] = 2**31 - 10; src.lengths[1] = 100
        dst = Batch(2)
        try:
            dst.copy_from(src)
        except ValueError:
            pass
        print('survived')
    """,
}


@pytest.mark.parametrize("case", sorted(BATCH_CRASHERS))
def test_batch_methods_do_not_crash(case):
    r = run_isolated(BATCH_CRASHERS[case], imports="from fastpath.core.batch import Batch")
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-500:])


# --- every drop reason, counters exact ----------------------------------------------

@backends
def test_every_reason_and_exact_counters(backend):
    topo = make_topo("aes128-sha1", False, backend, window=64, mtu=1500)
    sad = topo.sad
    p_out, rr_out = SPI[(MN1, "payload", "out")], SPI[(MN1, "return-routability", "out")]
    p_in, rr_in, b_in = (SPI[(MN1, "payload", "in")], SPI[(MN1, "return-routability", "in")],
                         SPI[(MN1, "binding", "in")])
    hot_mh = bytes([59, 1, 3, 0]) + bytes(12)
    hot = ipv6_header(CN, MN1, 135, len(hot_mh)) + hot_mh
    big = inner(CN, MN1, 1500)
    # out of another tunnel, with its Tunnel Encapsulation Limit at 0 (MN2: plain)
    tel0 = bytes([41, 0, 4, 1, 0, 1, 1, 0]) + inner(CN, MN2, 60)
    tel0 = ipv6_header(CN, MN2, 60, len(tel0)) + tel0
    home = [inner(CN, MN1, 100), inner(CN, MN1, 200), hot, inner(CN, MN2, 300),
            inner(CN, MN3, 100), inner(CN, EVIL, 100), inner(CN, MN1, 100)[:-1],
            big, inner(CN, MN2, 1461, nh=58, fill=b"\x01"), tel0]
    got = check(topo, "encap", home, [IV] * len(home))
    # too big: > 1280 bytes -> a Packet Too Big to the source (TO_HOME, too_big);
    # about an ICMPv6 error (type 1 < 128) -> dropped (both counted too_big)
    assert vr(got) == [(TO_WIRE, 0)] * 4 + [(DROP, R.NO_BINDING)] * 2 + [
        (DROP, R.MALFORMED), (TO_HOME, R.TOO_BIG), (DROP, R.TOO_BIG), (TO_HOME, R.ENCAP_LIMIT)]
    # RR counter at its end: one HoT goes, the next is seq_exhausted
    sad.resume_sequence(rr_out, 2 ** 32 - 2)
    topo.ref.sa("out", rr_out).seq = 2 ** 32 - 2
    got = check(topo, "encap", [hot, hot], [IV, IV])
    assert vr(got) == [(TO_WIRE, 0), (DROP, R.SEQ_EXHAUSTED)]

    good = inner(MN1, CN, 120)
    hoti_mh = bytes([59, 1, 1, 0]) + bytes(12)         # Home Test Init: all the RR SA takes
    hoti = ipv6_header(MN1, CN, 135, len(hoti_mh)) + hoti_mh
    bad_pad = frame(good, 41, 16)
    bad_pad = bad_pad[:-3] + b"\xee" + bad_pad[-2:]
    e1 = mn_esp(topo, MN1, "payload", good, seq=1)
    flipped = bytearray(mn_esp(topo, MN1, "payload", good, seq=2))
    flipped[-1] ^= 1
    ce = bytearray(outer(COA2, HA, 41, inner(MN2, CN, 70)))
    ce[1] |= 0x30                       # outer ECN CE; the inner packet is Not-ECT
    ce_over_not_ect = bytes(ce)
    wire = [
        e1,                                                               # TO_HOME
        bytes(flipped),                                                   # icv
        mn_esp_framed(topo, MN1, "payload", bad_pad, seq=3),              # bad_padding
        mn_esp(topo, MN1, "payload", inner(EVIL, CN, 64), seq=4),         # policy (SA)
        mn_esp(topo, MN1, "payload", b"", seq=5, nh=59),                  # dummy
        mn_esp(topo, MN1, "return-routability", hoti, seq=1),             # TO_HOME (rr)
        outer(COA1, HA, 50, struct.pack("!II", 0xBAD, 1) + bytes(40)),    # unknown_spi
        outer(COA1, HA, 50, bytes(4)),                                    # malformed (< 8)
        e1[:-4] + e1[-3:],  # wrong length, known SPI: malformed on the SA
        e1[:10],                                                          # malformed
        outer(COA2, HA, 41, inner(MN2, CN, 70)),                          # TO_HOME (plain)
        outer(EVIL, HA, 41, inner(MN2, CN, 70)),                          # policy
        outer(COA2, HA, 41, inner(MN3, CN, 70)),                          # no_binding
        outer(COA1, HA, 135, bu_mh()),                                    # PUNT
        bu_packet(topo, 1),                                               # BINDING
        ce_over_not_ect,                                                  # congestion
    ]
    fix = bytearray(wire[8])
    fix[4:6] = struct.pack("!H", len(fix) - 40)
    wire[8] = bytes(fix)
    got = check(topo, "decap", wire)
    assert vr(got) == [
        (TO_HOME, 0), (DROP, R.ICV), (DROP, R.BAD_PADDING), (DROP, R.POLICY), (DROP, R.DUMMY),
        (TO_HOME, 0), (DROP, R.UNKNOWN_SPI), (DROP, R.MALFORMED), (DROP, R.MALFORMED),
        (DROP, R.MALFORMED), (TO_HOME, 0), (DROP, R.POLICY), (DROP, R.NO_BINDING),
        (PUNT, 0), (BINDING, 0), (DROP, R.CONGESTION)]
    got = check(topo, "decap", [e1])
    assert vr(got) == [(DROP, R.REPLAY)]
    # Totals, computed by hand from the two scripts above.
    expect_drops = {"unknown_spi": 1, "replay": 1, "icv": 1, "bad_padding": 1, "policy": 2,
                    "malformed": 4, "no_binding": 3, "too_big": 2, "seq_exhausted": 1,
                    "dummy": 1, "congestion": 1, "encap_limit": 1}
    c = topo.engine.counters()
    assert c["drops"] == expect_drops
    assert set(expect_drops) == {r.name.lower() for r in Reason if r}
    assert c["verdicts"] == {"drop": 17, "to_wire": 5, "to_home": 5, "punt": 1, "binding": 1}
    per_sa = {(s["spi"], s["direction"]): s for s in sad.sas()}
    n_out = lambda s: (s["packets_out"], s["bytes_out"])  # noqa: E731
    n_in = lambda s: (s["packets_in"], s["bytes_in"])  # noqa: E731
    assert n_out(per_sa[(p_out, "out")]) == (2, 300)
    assert per_sa[(p_out, "out")]["drops"] == {"too_big": 1}
    assert n_out(per_sa[(rr_out, "out")]) == (2, 2 * len(hot))
    assert per_sa[(rr_out, "out")]["drops"] == {"seq_exhausted": 1}
    assert n_in(per_sa[(p_in, "in")]) == (1, len(good))
    assert per_sa[(p_in, "in")]["drops"] == {"icv": 1, "bad_padding": 1, "policy": 1,
                                             "dummy": 1, "malformed": 1, "replay": 1}
    assert n_in(per_sa[(rr_in, "in")]) == (1, len(hoti))
    assert per_sa[(rr_in, "in")]["drops"] == {}
    assert per_sa[(b_in, "in")]["packets_in"] == 1
    assert per_sa[(b_in, "in")]["bytes_in"] == 64 + len(bu_mh())
    others = [s for k, s in per_sa.items() if k not in
              {(p_out, "out"), (rr_out, "out"), (p_in, "in"), (rr_in, "in"), (b_in, "in")}]
    assert all(s.get("packets_in", 0) == 0 and s.get("packets_out", 0) == 0 and not s["drops"]
               for s in others)
    assert sad.sequence(p_out, "out") == 2
    assert sad.sequence(p_in, "in") == 5      # 1 accepted, 4 and 5 consumed after the ICV
    same_counters(topo)


# --- sequence number exhaustion ----------------------------------------------------

def _seq_of(out):
    return struct.unpack("!I", out[44:48])[0]


@backends
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_seq_exhausted_without_esn(alg, backend):
    spi = SPI[(MN1, "payload", "out")]
    pkts = [inner(CN, MN1, 100)] * 3
    # last used 2^32-3: two numbers are left; last used 2^32-2: only one.
    for last, n_ok in ((2 ** 32 - 3, 2), (2 ** 32 - 2, 1)):
        topo = make_topo(alg, False, backend)
        topo.sad.resume_sequence(spi, last)
        topo.ref.sa("out", spi).seq = last
        got = check(topo, "encap", pkts, [IV] * 3)
        assert vr(got) == [(TO_WIRE, 0)] * n_ok + [(DROP, R.SEQ_EXHAUSTED)] * (3 - n_ok)
        assert [_seq_of(o) for _, _, o in got[:n_ok]] == list(range(last + 1, 2 ** 32))
        got = check(topo, "encap", pkts, [IV] * 3)
        assert vr(got) == [(DROP, R.SEQ_EXHAUSTED)] * 3
        # resume_sequence only moves forward
        topo.sad.resume_sequence(spi, 5)
        assert vr(check(topo, "encap", pkts[:1], [IV])) == [(DROP, R.SEQ_EXHAUSTED)]
        assert topo.engine.counters()["drops"]["seq_exhausted"] == 7 - n_ok
        same_counters(topo)


@backends
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16"])
def test_seq_exhausted_with_limit(alg, backend):
    # (GCM without injected IVs: the run loop of _frame_gcm_run, which must
    # stop where the reservation ends)
    topo = make_topo(alg, False, backend)
    spi = SPI[(MN1, "payload", "out")]
    topo.sad.set_sequence_limit(spi, 5)
    b = Batch(8)
    b.load([inner(CN, MN1, 100)] * 8)
    topo.engine.encap(b)
    res = b.results()
    assert vr(res) == [(TO_WIRE, 0)] * 5 + [(DROP, R.SEQ_EXHAUSTED)] * 3
    assert [_seq_of(o) for _, _, o in res[:5]] == [1, 2, 3, 4, 5]
    assert topo.engine.counters()["drops"]["seq_exhausted"] == 3
    sa = [s for s in topo.sad.sas() if s["spi"] == spi]
    assert [s["drops"] for s in sa] == [{"seq_exhausted": 3}]
    assert [(s["packets_out"], s["bytes_out"]) for s in sa] == [(5, 5 * len(inner(CN, MN1, 100)))]


@backends
def test_gcm_run_after_a_dropped_packet(backend):
    """A packet dropped while framing (its SA's numbers ran out) leaves a gap
    the next jobs are moved into; the AES-GCM run after it (another node,
    no injected IVs) is framed in its own slots, numbered 1.., byte for byte
    as the reference frames it alone."""
    topo = make_topo("aes128gcm16", False, backend, mn3_coa=COA2)
    topo.sad.set_sequence_limit(SPI[(MN1, "payload", "out")], 0)
    pkts = [inner(CN, MN1, 100)] * 2 + [inner(CN, MN3, 100 + k) for k in range(4)]
    b = Batch(len(pkts))
    b.load(pkts)
    topo.engine.fixed_ivs = False
    topo.engine.encap(b)
    res = b.results()
    assert vr(res) == [(DROP, R.SEQ_EXHAUSTED)] * 2 + [(TO_WIRE, 0)] * 4
    assert [_seq_of(o) for _, _, o in res[2:]] == [1, 2, 3, 4]
    assert [o for _, _, o in res[2:]] == [p for _, _, p in topo.ref.encap(pkts[2:])]


@backends
def test_exhausted_counter_stays_at_limit(backend):
    topo = make_topo("aes128-sha1", False, backend)
    spi = SPI[(MN1, "payload", "out")]
    topo.sad.set_sequence_limit(spi, 5)
    b = Batch(8)
    b.load([inner(CN, MN1, 100)] * 8)
    topo.engine.encap(b)
    assert topo.sad.sequence(spi, "out") == 5
    topo.sad.set_sequence_limit(spi, 10)
    b.load([inner(CN, MN1, 100)])
    topo.engine.encap(b)
    assert _seq_of(b.get(0)) == 6


@backends
def test_seq_exhausted_with_esn(backend):
    topo = make_topo("aes128gcm16", True, backend)
    spi = SPI[(MN1, "payload", "out")]
    topo.sad.resume_sequence(spi, 2 ** 64 - 3)
    topo.ref.sa("out", spi).seq = 2 ** 64 - 3
    got = check(topo, "encap", [inner(CN, MN1, 100)] * 3)
    assert vr(got) == [(TO_WIRE, 0), (TO_WIRE, 0), (DROP, R.SEQ_EXHAUSTED)]


# --- too big ------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16", "null-sha256"])
def test_too_big_edges(alg, backend):
    mtu = 1500                               # edges above 1280: those get a PTB
    topo = make_topo(alg, False, backend, mtu=mtu)
    sa = topo.mn_sa(MN1, "payload")          # same algorithm as the out SA
    fits = max(n for n in range(40, mtu) if 40 + sa.sealed_len(n) <= mtu)
    pkts = [inner(CN, MN1, fits), inner(CN, MN1, fits + 1), inner(CN, MN1, fits),
            inner(CN, MN2, mtu - 40), inner(CN, MN2, mtu - 39)]
    got = check(topo, "encap", pkts, [IV] * len(pkts))
    assert vr(got) == [(TO_WIRE, 0), (TO_HOME, R.TOO_BIG), (TO_WIRE, 0), (TO_WIRE, 0),
                       (TO_HOME, R.TOO_BIG)]
    assert len(got[0][2]) <= mtu and len(got[3][2]) == mtu
    assert [_seq_of(got[0][2]), _seq_of(got[2][2])] == [1, 2]   # too_big took no number
    same_counters(topo)


def _icmp_sum_ok(pkt):
    """The ICMPv6 checksum of a whole IPv6 packet verifies (sums to 0xffff)."""
    data = pkt[8:40] + struct.pack("!I3xB", len(pkt) - 40, 58) + pkt[40:]
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@backends
@pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16", "null-sha256"])
def test_packet_too_big(alg, backend):
    mtu = 1500
    topo = make_topo(alg, False, backend, mtu=mtu)
    sa = topo.mn_sa(MN1, "payload")
    fits = max(n for n in range(40, mtu) if 40 + sa.sealed_len(n) <= mtu)
    echo = inner(CN, MN1, 1500, nh=58, fill=b"\x80")       # echo request: not an error
    error = inner(CN, MN1, 1500, nh=58, fill=b"\x01")      # destination unreachable
    pkts = [inner(CN, MN1, fits + 1), inner(CN, MN2, mtu - 39), echo, error,
            inner(CN, MN1, fits)]
    got = check(topo, "encap", pkts, [IV] * len(pkts))
    assert vr(got) == [(TO_HOME, R.TOO_BIG)] * 3 + [(DROP, R.TOO_BIG), (TO_WIRE, 0)]
    for (_, _, ptb), orig, want_mtu in zip(got, pkts, (fits, mtu - 40, fits)):
        assert ptb[:8] == struct.pack("!IHBB", 6 << 28, len(ptb) - 40, 58, 64)
        assert ptb[8:24] == HA and ptb[24:40] == orig[8:24] == CN
        assert ptb[40:42] == b"\x02\x00" and struct.unpack("!I", ptb[44:48])[0] == want_mtu
        assert len(ptb) == 1280 and ptb[48:] == orig[:1280 - 48]
        assert _icmp_sum_ok(ptb)
    assert _seq_of(got[4][2]) == 1                 # no sequence number was consumed
    c = topo.engine.counters()
    assert c["drops"]["too_big"] == 4 and c["verdicts"]["to_home"] == 3
    same_counters(topo)


@backends
def test_packet_too_big_floor_and_small(backend):
    """PTB never about a packet of <= 1280 bytes, and never announces < 1280."""
    topo = make_topo("aes128-sha1", False, backend, mtu=1300)
    pkts = [inner(CN, MN1, 1280), inner(CN, MN1, 1281), inner(CN, MN2, 1281)]
    got = check(topo, "encap", pkts, [IV] * 3)
    # 1280 bytes never get a PTB: tunnelled, the outer packet goes out in
    # fragments (RFC 2473 §7.1) that the output stage makes
    assert vr(got) == [(TO_WIRE, R.NONE), (TO_HOME, R.TOO_BIG), (TO_HOME, R.TOO_BIG)]
    assert [struct.unpack("!I", p[44:48])[0] for _, _, p in got[1:]] == [1280, 1280]
    outer_pkt = got[0][2]
    assert len(outer_pkt) > 1300
    from fastpath.ref.ipv6 import fragment
    frags = fragment(outer_pkt, 1300, 7)
    assert len(frags) == 2 and all(len(f) <= 1300 for f in frags)
    assert b"".join(f[48:] for f in frags) == outer_pkt[40:]      # they reassemble
    assert frags[0][6] == 44 and frags[0][40] == outer_pkt[6] and frags[0][43] & 1 == 1
    same_counters(topo)


@backends
def test_packet_too_big_rate_limit(backend):
    topo = make_topo("aes128-sha1", False, backend)
    topo.engine.icmp_error_rate = 0.0
    topo.engine.icmp_error_burst = 3.0
    b = Batch(6)
    b.load([inner(CN, MN1, 1500)] * 6)
    topo.engine.encap(b)
    assert vr(b.results()) == [(TO_HOME, R.TOO_BIG)] * 3 + [(DROP, R.TOO_BIG)] * 3
    c = topo.engine.counters()
    assert c["drops"]["too_big"] == 6
    assert c["verdicts"] == {"drop": 3, "to_wire": 0, "to_home": 3, "punt": 0, "binding": 0}
    b.load([inner(CN, MN1, 1500)])
    topo.engine.encap(b)
    assert vr(b.results()) == [(DROP, R.TOO_BIG)]     # no tokens come back at rate 0


# --- transport mode: size of a decapsulated BU ----------------------------------

@backends
def test_large_binding_update(backend):
    topo = make_topo("aes128-sha1", False, backend)
    opts = (mh.BindingAuthorizationData(b"a" * 200),) * 6
    msg = mh.build(mh.BindingUpdate(1, 10, ack=True, home=True, options=opts), MN1, HA)
    pkt = bu_packet(topo, 1, msg=msg)
    assert len(pkt) - 40 - 8 - 16 - 12 > 1280     # ESP header, IV and ICV removed
    got = check(topo, "decap", [pkt])
    assert vr(got) == [(BINDING, 0)]
