"""Binding Updates and the CoA swap.

(a) The only path that moves a binding: a BU built as the mobile node sends
it decapsulates to a BINDING verdict, the engine issues a VerifiedBinding,
and SADatabase.move() applies it (once, to the CoA the BU names).
(b) Concurrency: two worker threads encapsulate on the same mobile node's
payload SA while the control thread moves its CoA 100,000 times, each move
through a freshly built and decapsulated BU followed by wait_grace().
"""
from __future__ import annotations

import copy
import pickle
import struct
import sys
import threading
import time

import numpy as np
import pytest

from fastpath import mh
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.core.sad import SADatabase, VerifiedBinding
from fastpath.ref.engine import RefEngine, build_bu_packet
from fastpath.ref.ipv6 import addr, hao_destopt, ipv6_header
from fastpath.verdicts import Reason, Verdict

from topo import (BACKENDS, CN, COA1, COA2, EVIL, HA, MN1, MN2, MN3, SPI, inner, make_topo,
                  outer)

DROP, TO_WIRE, TO_HOME, PUNT, BINDING = (int(v) for v in Verdict)
IV = b"\x24" * 16
NEW = addr("2001:db8:4::40")
ALT = addr("2001:db8:5::50")

backends = pytest.mark.parametrize("backend", BACKENDS)
algs3 = pytest.mark.parametrize("alg", ["aes128-sha1", "aes128gcm16", "null-sha256"])


def bu_msg(seq=1, lifetime=100, **kw):
    """The Mobility Header as the MN builds it: checksummed for HoA -> HA."""
    return mh.build(mh.BindingUpdate(seq, lifetime, ack=True, home=True, **kw), MN1, HA)


def build_bu(topo, coa, msg=None, hoa=MN1, seq=None):
    """build_bu_packet with the binding-in SA of ``hoa`` (ESP sequence numbers
    from the reference engine's copy of that SA unless ``seq`` is given)."""
    iv = IV if topo.mn_sa(hoa, "binding").alg.iv_len == 16 else None
    return build_bu_packet(topo.ref, SPI[(hoa, "binding", "in")], hoa, coa, msg or bu_msg(),
                           iv=iv, seq=seq)


def check(topo, direction, packets, ivs=None):
    got, want = topo.run(direction, packets, ivs)
    assert got == want
    return got


def vr(results):
    return [(v, r) for v, r, _ in results]


def encap_dsts(topo, n=2, dst=MN1):
    got = check(topo, "encap", [inner(CN, dst, 100)] * n, [IV] * n)
    assert [v for v, _, _ in got] == [TO_WIRE] * n
    return [(p[24:40], struct.unpack("!I", p[44:48])[0]) for _, _, p in got]


# --- (a) the Binding Update path ---------------------------------------------------

@backends
@algs3
@pytest.mark.parametrize("esn", [False, True], ids=["noesn", "esn"])
def test_bu_moves_the_binding(alg, esn, backend):
    topo = make_topo(alg, esn, backend)
    assert encap_dsts(topo) == [(COA1, 1), (COA1, 2)]
    msg = bu_msg(seq=7)
    pkt = build_bu(topo, NEW, msg)
    got = check(topo, "decap", [pkt])
    assert vr(got) == [(BINDING, 0)]
    (slot, vb), = topo.engine.take_bindings()
    assert slot == 0 and isinstance(vb, VerifiedBinding)
    assert topo.engine.take_bindings() == []          # each is issued once
    assert vb.home_address == MN1 and vb.source == NEW
    assert (vb.spi, vb.esp_seq) == (SPI[(MN1, "binding", "in")], 1)
    assert vb.packet == got[0][2] and vb.mobility_header == msg
    assert vb.packet[:40] == ipv6_header(NEW, HA, 60, len(vb.packet) - 40)
    assert vb.packet[40:64] == hao_destopt(MN1, 135)
    parsed = mh.parse(vb.mobility_header, vb.home_address, HA)
    assert isinstance(parsed, mh.BindingUpdate) and parsed.sequence == 7
    # nothing moved yet: only move() does that
    assert topo.sad.care_of_address(MN1) == COA1
    topo.sad.move(vb, NEW)
    topo.ref.set_coa(MN1, NEW)
    assert topo.sad.care_of_address(MN1) == NEW
    assert topo.sad.wait_grace(2.0)
    # the next encapsulations go to the new CoA; sequence numbers continue
    assert encap_dsts(topo) == [(NEW, 3), (NEW, 4)]
    # the RR SA (Home Test) moved with it: every tunnel SA shares the endpoint
    hot_mh = bytes([59, 1, 3, 0]) + bytes(12)
    got = check(topo, "encap", [ipv6_header(CN, MN1, 135, 16) + hot_mh], [IV])
    assert got[0][2][24:40] == NEW
    assert topo.engine.counters()["verdicts"]["binding"] == 1
    with pytest.raises(ValueError):
        topo.sad.move(vb, NEW)                          # single use
    with pytest.raises(ValueError):
        topo.sad.deregister(vb)
    assert topo.sad.care_of_address(MN1) == NEW


@backends
def test_alternate_care_of_address(backend):
    topo = make_topo("aes128-sha1", False, backend)
    msg = bu_msg(options=(mh.AlternateCareOfAddress(ALT),))
    check(topo, "decap", [build_bu(topo, NEW, msg)])
    (_, vb), = topo.engine.take_bindings()
    assert vb.source == NEW
    for wrong in (NEW, COA1, EVIL):
        with pytest.raises(ValueError):
            topo.sad.move(vb, wrong)                    # the option names the CoA
    assert topo.sad.care_of_address(MN1) == COA1
    topo.sad.move(vb, ALT)                              # refusals did not use it up
    assert topo.sad.care_of_address(MN1) == ALT
    topo.ref.set_coa(MN1, ALT)
    assert encap_dsts(topo, 1) == [(ALT, 1)]
    # without the option, only the outer source will do
    check(topo, "decap", [build_bu(topo, NEW)])
    (_, vb2), = topo.engine.take_bindings()
    with pytest.raises(ValueError):
        topo.sad.move(vb2, ALT)
    topo.sad.move(vb2, "2001:db8:4::40")               # text form is fine too
    assert topo.sad.care_of_address(MN1) == NEW


@backends
def test_move_refuses_a_bad_mh_checksum(backend):
    """The data plane authenticates ESP, not the Mobility Header: a BU with a
    wrong MH checksum is still a BINDING verdict, but move() must not act on
    it (and the binding stays unused)."""
    topo = make_topo("aes128-sha1", False, backend)
    bad_sum = bytearray(bu_msg())
    bad_sum[4] ^= 0xFF
    check(topo, "decap", [build_bu(topo, NEW, bytes(bad_sum))])
    (_, vb), = topo.engine.take_bindings()
    with pytest.raises(ValueError):
        topo.sad.move(vb, NEW)
    assert topo.sad.care_of_address(MN1) == COA1


@backends
@pytest.mark.parametrize("msg", [
    mh.BindingAck(0, 1, 100),
    mh.BindingError(2, MN1),
    mh.RawMessage(1, bytes(10)),           # a Home Test Init
], ids=["binding-ack", "binding-error", "hoti"])
def test_move_refuses_what_is_not_a_bu(msg, backend):
    topo = make_topo("aes128-sha1", False, backend)
    check(topo, "decap", [build_bu(topo, NEW, mh.build(msg, MN1, HA))])
    (_, vb), = topo.engine.take_bindings()
    try:
        topo.sad.move(vb, NEW)
    except ValueError:
        pass
    assert topo.sad.care_of_address(MN1) == COA1


@backends
def test_verified_binding_cannot_be_forged(backend):
    with pytest.raises(TypeError):
        VerifiedBinding()
    with pytest.raises(TypeError):
        VerifiedBinding(None)
    with pytest.raises(TypeError):
        VerifiedBinding.__new__(VerifiedBinding, object())

    class Sub(VerifiedBinding):
        pass

    with pytest.raises(TypeError):
        Sub(object())
    topo = make_topo("aes128-sha1", False, backend)
    check(topo, "decap", [build_bu(topo, NEW)])
    (_, vb), = topo.engine.take_bindings()
    for dup in (copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))):
        with pytest.raises(TypeError):
            dup(vb)
    with pytest.raises(AttributeError):
        vb.home_address = MN2
    with pytest.raises(AttributeError):
        vb.used = False
    with pytest.raises(AttributeError):
        vb.source = EVIL

    class Fake:
        home_address, source, packet, mh_offset = MN1, NEW, vb.packet, vb.mh_offset

    with pytest.raises(TypeError):
        topo.sad.move(Fake(), NEW)
    with pytest.raises(TypeError):
        topo.sad.move(None, NEW)
    with pytest.raises(TypeError):
        topo.sad.deregister(Fake())
    assert topo.sad.care_of_address(MN1) == COA1
    topo.sad.move(vb, NEW)
    with pytest.raises(ValueError):
        topo.sad.move(vb, NEW)
    # the control plane cannot move a home agent's binding any other way
    assert not hasattr(topo.sad, "set_coa")
    with pytest.raises(PermissionError):
        topo.sad.relocate(MN1, COA2)
    assert topo.sad.care_of_address(MN1) == NEW


@backends
@algs3
def test_bad_bus_issue_nothing(alg, backend):
    topo = make_topo(alg, False, backend)
    good = build_bu(topo, NEW)
    flipped = bytearray(build_bu(topo, NEW))
    flipped[-1] ^= 0x01
    mn2_sa = topo.mn_sa(MN2, "binding")
    body = hao_destopt(MN1, 50) + mn2_sa.seal(1, bu_msg(), 135,
                                               IV if mn2_sa.alg.iv_len == 16 else None)
    mn2_sa_hao_mn1 = ipv6_header(NEW, HA, 60, len(body)) + body
    sa = topo.mn_sa(MN1, "binding")
    iv = IV if sa.alg.iv_len == 16 else None
    mh_clear = bu_msg()
    cases = [
        (bytes(flipped), (DROP, Reason.ICV)),                              # bad ICV
        (build_bu_packet(topo.ref, SPI[(MN1, "binding", "in")], MN2, NEW, bu_msg(),
                         iv=iv, seq=4), (DROP, Reason.POLICY)),            # HAO names MN2
        (mn2_sa_hao_mn1, (DROP, Reason.POLICY)),                           # MN2's SA, HAO MN1
        (outer(NEW, HA, 50, sa.seal(5, bu_msg(), 135, iv)), (DROP, Reason.POLICY)),  # no HAO
        (outer(NEW, HA, 60, hao_destopt(MN1, 135) + mh_clear), (PUNT, 0)),  # in the clear
        (outer(NEW, HA, 135, mh_clear), (PUNT, 0)),
        # on the payload SA (tunnel mode: next header must be 41), from the
        # registered CoA; from elsewhere its HAO names no binding (RFC 6275
        # §9.3.1): not opened, punted for a Binding Error
        (outer(COA1, HA, 60, hao_destopt(MN1, 50)
               + topo.mn_sa(MN1, "payload").seal(1, bu_msg(), 135, iv)), (DROP, Reason.MALFORMED)),
        (outer(NEW, HA, 60, hao_destopt(MN1, 50)
               + topo.mn_sa(MN1, "payload").seal(2, bu_msg(), 135, iv)),
         (PUNT, Reason.NO_BINDING)),
        # binding SA, HAO right, but no Mobility Header inside
        (outer(NEW, HA, 60, hao_destopt(MN1, 50) + sa.seal(6, inner(MN1, CN, 60), 41, iv)),
         (DROP, Reason.MALFORMED)),
    ]
    for pkt, expect in cases:
        got = check(topo, "decap", [pkt])
        assert vr(got) == [expect]
        assert topo.engine.take_bindings() == []
    # the good one works, once; its replay issues nothing
    assert vr(check(topo, "decap", [good])) == [(BINDING, 0)]
    assert len(topo.engine.take_bindings()) == 1
    for _ in range(2):
        assert vr(check(topo, "decap", [good])) == [(DROP, Reason.REPLAY)]
        assert topo.engine.take_bindings() == []
    # an old one (policy drops consumed 4, 5, 6: those numbers are gone too)
    assert vr(check(topo, "decap", [build_bu(topo, NEW, seq=5)])) == [(DROP, Reason.REPLAY)]
    assert topo.engine.take_bindings() == []
    assert topo.sad.care_of_address(MN1) == COA1
    assert topo.engine.counters()["verdicts"]["binding"] == 1


@backends
def test_take_bindings_is_per_decap(backend):
    topo = make_topo("aes128-sha1", False, backend)
    batch = [inner(MN1, CN, 60), build_bu(topo, NEW),
             build_bu_packet(topo.ref, SPI[(MN2, "binding", "in")], MN2, ALT,
                             mh.build(mh.BindingUpdate(1, 9, home=True), MN2, HA), iv=IV),
             outer(COA2, HA, 41, inner(MN2, CN, 70))]
    batch[0] = outer(COA1, HA, 50, topo.mn_sa(MN1, "payload").seal(1, batch[0], 41, IV))
    got = check(topo, "decap", batch)
    assert [v for v, _, _ in got] == [TO_HOME, BINDING, BINDING, TO_HOME]
    check(topo, "decap", [inner(MN1, CN, 60)])      # another decap: the last ones are gone
    assert topo.engine.take_bindings() == []
    check(topo, "decap", batch[1:3])                 # replays now
    assert topo.engine.take_bindings() == []
    topo2 = make_topo("aes128-sha1", False, backend)
    check(topo2, "decap", batch)
    bs = topo2.engine.take_bindings()
    assert [(s, vb.home_address, vb.source) for s, vb in bs] == [(1, MN1, NEW), (2, MN2, ALT)]
    # MN2 has no payload SA: its plain tunnel follows the move
    topo2.sad.move(bs[1][1], ALT)
    topo2.ref.set_coa(MN2, ALT)
    got = check(topo2, "decap", [outer(COA2, HA, 41, inner(MN2, CN, 70)),
                                 outer(ALT, HA, 41, inner(MN2, CN, 70))])
    assert vr(got) == [(DROP, Reason.POLICY), (TO_HOME, 0)]


@backends
def test_deregister(backend):
    topo = make_topo("aes128-sha1", False, backend)
    check(topo, "decap", [build_bu(topo, COA1, bu_msg(lifetime=0))])
    (_, vb), = topo.engine.take_bindings()
    topo.sad.deregister(vb)
    topo.ref.set_coa(MN1, None)
    assert topo.sad.care_of_address(MN1) is None
    assert topo.sad.wait_grace(2.0)
    got = check(topo, "encap", [inner(CN, MN1, 100)] * 2, [IV] * 2)
    assert vr(got) == [(DROP, Reason.NO_BINDING)] * 2
    with pytest.raises(ValueError):
        topo.sad.move(vb, COA1)
    # its BUs still authenticate (the SA stays); a new one binds it again
    check(topo, "decap", [build_bu(topo, NEW)])
    (_, vb), = topo.engine.take_bindings()
    topo.sad.move(vb, NEW)
    topo.ref.set_coa(MN1, NEW)
    assert encap_dsts(topo, 1) == [(NEW, 1)]     # no number was used while unbound
    # expire(): the control plane's lifetime timer, no BU needed to remove
    topo.sad.expire(MN1)
    topo.ref.set_coa(MN1, None)
    assert vr(check(topo, "encap", [inner(CN, MN1, 100)], [IV])) == [(DROP, Reason.NO_BINDING)]


def test_binding_is_tied_to_its_table():
    a = make_topo("aes128-sha1", False, "openssl")
    check(a, "decap", [build_bu(a, NEW)])
    (_, vb), = a.engine.take_bindings()
    other = SADatabase(HA, 1500, sa_capacity=4, mn_capacity=4, ipsecmb=False)
    other.add_mobile_node(MN3, COA2)        # index 0 there, like MN1 here
    other.add_mobile_node(MN1, COA1)
    try:
        other.move(vb, NEW)
    except (ValueError, KeyError):
        pass
    assert other.care_of_address(MN3) == COA2


# --- (b) concurrent swaps ------------------------------------------------------------

N_MOVES = 100_000
BATCH = 32
BU_CHUNK = 64


def _coas():
    """Four CoAs that differ in every one of their 16 bytes (a torn copy of
    one over another cannot look like any of them)."""
    return [bytes([0x20 + k]) + bytes(((k + 1) * 37 + i * 11) & 0xFF for i in range(1, 16))
            for k in range(4)]


class Shared:
    started = 0      # index of the move being published (set before move())
    graced = 0       # index of the last move whose wait_grace() returned
    stop = False


def _worker(sad, backend, payload, coas, shared, out, errors):
    try:
        eng = Engine(sad, backend)
        eng.icmp_error_rate = eng.icmp_error_burst = 0.0
        src = Batch(BATCH)
        src.load([payload] * BATCH)
        b = Batch(BATCH)
        rows = np.arange(BATCH)[:, None]
        dst_cols = np.arange(24, 40)[None, :]
        seq_cols = np.arange(44, 48)[None, :]
        coa_arr = np.frombuffer(b"".join(coas), np.uint8).reshape(4, 16)
        seqs, restricted, n = [], 0, 0
        while not shared.stop:
            b.copy_from(src)
            g = shared.graced                 # this batch starts after wait_grace(g) returned
            eng.encap(b)
            u = shared.started                # ... and ends before move u+1 is published
            assert (b.verdicts[:BATCH] == TO_WIRE).all(), b.reasons[:BATCH]
            off = b.offsets[:BATCH].astype(np.int64)[:, None]
            dst = b.data[rows, off + dst_cols]
            assert (b.data[rows, off + np.arange(8, 24)[None, :]]
                    == np.frombuffer(HA, np.uint8)).all()
            match = (dst[:, None, :] == coa_arr[None, :, :]).all(axis=2)     # [32, 4]
            assert (match.sum(axis=1) == 1).all(), "a torn or unknown outer destination"
            idx = match.argmax(axis=1)
            allowed = {j % 4 for j in range(g, min(u, g + 3) + 1)}
            if u - g < 3:
                restricted += 1
            bad = set(idx.tolist()) - allowed
            assert not bad, f"batch after grace {g} (moves <= {u}) went to CoA #{bad}"
            s = b.data[rows, off + seq_cols].astype(np.uint64)
            seqs.append((s[:, 0] << 24) | (s[:, 1] << 16) | (s[:, 2] << 8) | s[:, 3])
            n += 1
        out.append((np.concatenate(seqs) if seqs else np.zeros(0, np.uint64), restricted, n))
    except BaseException as e:      # noqa: BLE001 - reported by the main thread
        errors.append(e)
        shared.stop = True


def _prebuild(coas, auth):
    """N_MOVES Binding Updates, as MN1 would send them from coas[k % 4]."""
    ref = RefEngine(HA, 1500)
    ref.add_mobile_node(MN1, coas[0])
    ref.add_sa("binding", "in", 0x2003, "null-sha256", b"", auth, b"", False, 1024, hoa=MN1)
    out = []
    for k in range(1, N_MOVES + 1):
        msg = mh.build(mh.BindingUpdate(k & 0xFFFF, 100, ack=True, home=True), MN1, HA)
        out.append(build_bu_packet(ref, 0x2003, MN1, coas[k % 4], msg, seq=k))
    return out


@backends
def test_concurrent_coa_swaps(backend):
    """What the design lets us assert (sad.pyx move/wait_grace, engine.pyx encap):

    * a worker loads the endpoint index once per packet with an acquire load and
      endpoint records are immutable while reachable, so every outer header is
      exactly one published record: the destination is one of the CoAs, all 16
      bytes, never a mix (records are recycled after wait_grace(): a broken grace
      period would show up as a torn or stale header);
    * ``graced`` is read before encap(): move g was published before that batch
      started, so none of its packets may use a CoA older than move g — in
      particular not the one wait_grace(g) retired;
    * ``started`` is read after encap(): no packet can use a CoA published later;
    * the counter is one atomic add per packet: sequence numbers over both
      workers are exactly 1..N.
    Nothing about timing is asserted.
    """
    t0 = time.monotonic()
    coas = _coas()
    auth = bytes(range(32))
    sad = SADatabase(HA, 1500, sa_capacity=4, mn_capacity=2, ipsecmb=(backend == "ipsecmb"))
    sad.add_mobile_node(MN1, coas[0])
    sad.add_sa(MN1, "payload", "out", 0x1001, "aes128gcm16", bytes(16), b"", b"salt", False, 0)
    sad.add_sa(MN1, "binding", "in", 0x2003, "null-sha256", b"", auth, b"", False, 1024)
    bus = _prebuild(coas, auth)
    t_build = time.monotonic() - t0

    shared, out, errors = Shared(), [], []
    payload = inner(CN, MN1, 120)
    ctl = Engine(sad, backend)
    bb = Batch(BU_CHUNK)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    threads = [threading.Thread(target=_worker, args=(sad, backend, payload, coas, shared, out,
                                                      errors)) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        k = 0
        for c in range(0, N_MOVES, BU_CHUNK):
            chunk = bus[c:c + BU_CHUNK]
            bb.load(chunk)
            ctl.decap(bb)
            assert (bb.verdicts[:len(chunk)] == BINDING).all(), bb.reasons[:len(chunk)]
            vbs = ctl.take_bindings()
            assert [s for s, _ in vbs] == list(range(len(chunk)))
            for _, vb in vbs:
                k += 1
                assert vb.esp_seq == k and vb.source == coas[k % 4]
                shared.started = k
                sad.move(vb, coas[k % 4])
                assert sad.wait_grace(10.0), "a worker stayed inside one batch for 10 s"
                shared.graced = k
            if errors:
                break
    finally:
        shared.stop = True
        for t in threads:
            t.join()
        sys.setswitchinterval(old_switch)
    if errors:
        raise errors[0]
    assert k == N_MOVES and sad.care_of_address(MN1) == coas[N_MOVES % 4]
    seqs = np.sort(np.concatenate([s for s, _, _ in out]))
    last = sad.sequence(0x1001, "out")
    assert len(seqs) == last == sum(n for _, _, n in out) * BATCH
    assert (seqs == np.arange(1, last + 1, dtype=np.uint64)).all(), "sequence numbers not 1..N"
    batches = sum(n for _, _, n in out)
    restricted = sum(r for _, r, _ in out)
    # The checks had teeth: many batches ran while moves were happening and
    # were held to a window of at most three consecutive moves.
    assert batches >= 200 and restricted >= batches // 4, (batches, restricted)
    print(f"\n{N_MOVES} moves, {batches} batches ({restricted} checked against <= 3 moves), "
          f"build {t_build:.1f}s, total {time.monotonic() - t0:.1f}s")
