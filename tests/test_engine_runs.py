"""The engine's per-run fast paths against the reference engine: batches
spread over many SAs (encap reserves sequence numbers once per SA per batch,
finding each SA's reservation through a small hash table), mobile nodes
interleaved and in runs, algorithms mixed in one batch; and the benchmark
hooks (Engine.bench_loop, EspSA.bare_open, Batch hugepages) give
the same bytes as the plain API."""
import random

import pytest

from bench.topo import (CN, HA, SPI_IN, SPI_OUT, build_table, inner_packet, load_batch,
                        ref_engine, sa_keys)
from fastpath.algorithms import get
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.core.esp import EspSA, ipsecmb_available
from fastpath.ref.ipv6 import ipv6_header
from fastpath.verdicts import Verdict

BACKENDS = ["openssl"] + (["ipsecmb"] if ipsecmb_available() else [])
ALGS = ["aes128gcm16", "aes256-sha256", "aes128-sha1", "null-sha256"]
N_MNS = 12          # mobile nodes interleaved in one batch


def _orders(n, rnd):
    """Interleaved, in runs, and shuffled visits of n mobile nodes."""
    inter = [m for _ in range(3) for m in range(n)]
    runs = [m for m in range(n) for _ in range(3)]
    mixed = inter[:]
    rnd.shuffle(mixed)
    return [inter, runs, mixed, [0, 1, 0, 1, 2, 2, 0] * 4]


def _encap_both(table, eng, ref, mns, rnd):
    iv_len = get(table.alg).iv_len
    pkts = [inner_packet(CN, table.hoa(m), 48 + rnd.randrange(0, 300), fill=k)
            for k, m in enumerate(mns)]
    ivs = [bytes(rnd.randrange(256) for _ in range(16)) for _ in pkts] if iv_len == 16 else None
    b = load_batch(pkts, 2048)
    eng.fixed_ivs = ivs is not None
    if ivs is not None:
        for i, iv in enumerate(ivs):
            b.set_iv(i, iv)
    eng.encap(b)
    got = b.results()
    want = [(int(v), int(r), p) for v, r, p in ref.encap(pkts, ivs)]
    return got, want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ALGS)
def test_encap_many_sas_match_reference(alg, backend):
    table = build_table(alg, N_MNS, "random", ipsecmb=backend == "ipsecmb")
    eng = Engine(table.sad, backend=backend, max_batch=64)
    ref = ref_engine(table, range(N_MNS))
    rnd = random.Random(3)
    for mns in _orders(N_MNS, rnd):
        got, want = _encap_both(table, eng, ref, mns, rnd)
        for k, (g, w) in enumerate(zip(got, want)):
            assert g == w, f"packet {k} (mobile node {mns[k]})"
        assert {v for v, _, _ in got} == {int(Verdict.TO_WIRE)}
    # counters per SA and sequence numbers: as many as packets sent, no gap
    sent = {}
    for mns in _orders(N_MNS, random.Random(3)):
        for m in mns:
            sent[m] = sent.get(m, 0) + 1
    for sa in table.sad.sas():
        if sa["direction"] == "out":
            m = sa["spi"] - SPI_OUT
            assert sa["packets_out"] == sent.get(m, 0)
            assert table.sad.sequence(sa["spi"], "out") == sent.get(m, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encap_batches_over_hundreds_of_sas(backend):
    """Batches to up to 300 mobile nodes, one after another: every SA gets
    one reservation per batch, also when SAs share a slot of the SA -> run
    table (64 of the 300 outbound SAs in a batch, over its 128 slots on an
    engine sized for 64), also in a batch of 400 (the engine grows its work
    arrays), and the table is empty again for the next batch. A packet given another SA's run would
    carry that SA's sequence numbers: its bytes would differ from the
    reference's."""
    n = 300
    table = build_table("aes128gcm16", n, "random", ipsecmb=backend == "ipsecmb")
    eng = Engine(table.sad, backend=backend, max_batch=64)
    ref = ref_engine(table, range(n))
    rnd = random.Random(11)
    sent = {}
    for size in (64, 64, 400, 64):
        mns = [rnd.randrange(n) for _ in range(size)]
        got, want = _encap_both(table, eng, ref, mns, rnd)
        for k, (g, w) in enumerate(zip(got, want)):
            assert g == w, f"batch of {size}, packet {k} (mobile node {mns[k]})"
        for m in mns:
            sent[m] = sent.get(m, 0) + 1
    for m in range(n):
        assert table.sad.sequence(SPI_OUT + m, "out") == sent.get(m, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1"])
def test_decap_counters_over_hundreds_of_sas(alg, backend):
    """Decap batches to up to 300 mobile nodes, in runs and interleaved, a
    forged packet among them now and then: each SA's packet and byte
    counters add up to what it accepted (the engine adds them once per run
    of one SA)."""
    n = 300
    table = build_table(alg, n, "random", ipsecmb=backend == "ipsecmb")
    eng = Engine(table.sad, backend=backend, max_batch=64)
    rnd = random.Random(13)
    seq, want, forged = {}, {}, {}
    iv = bytes(16) if get(alg).iv_len == 16 else None
    for size in (64, 400, 64):
        mns = [rnd.randrange(n) for _ in range(size // 2)]
        mns = [m for m in mns for _ in range(rnd.choice((1, 1, 3)))][:size]
        pkts = []
        for k, m in enumerate(mns):
            seq[m] = seq.get(m, 0) + 1
            inner = inner_packet(table.hoa(m), CN, 48 + k % 200, fill=k)
            esp = table.mn_sa(m, "in").seal(seq[m], inner, 41, iv)
            if k % 7 == 6:                       # forged: dropped, not counted
                esp = esp[:-1] + bytes([esp[-1] ^ 1])
                forged[m] = forged.get(m, 0) + 1
            else:
                pk, by = want.get(m, (0, 0))
                want[m] = (pk + 1, by + len(inner))
            pkts.append(ipv6_header(table.coa(m), HA, 50, len(esp)) + esp)
        b = load_batch(pkts, 2048)
        eng.decap(b)
    got = {sa["spi"] - SPI_IN: (sa["packets_in"], sa["bytes_in"], sa["drops"])
           for sa in table.sad.sas() if sa["direction"] == "in"}
    assert got == {m: want.get(m, (0, 0)) + ({"icv": forged[m]} if m in forged else {},)
                   for m in range(n)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ALGS)
def test_decap_many_sas_match_reference(alg, backend):
    table = build_table(alg, N_MNS, "random", ipsecmb=backend == "ipsecmb")
    eng = Engine(table.sad, backend=backend, max_batch=64)
    ref = ref_engine(table, range(N_MNS))
    rnd = random.Random(5)
    seq = {}
    for mns in _orders(N_MNS, rnd):
        pkts = []
        for k, m in enumerate(mns):
            seq[m] = seq.get(m, 0) + 1
            esp = table.mn_sa(m, "in").seal(seq[m], inner_packet(table.hoa(m), CN, 48 + k, fill=k),
                                            41, bytes(16) if get(alg).iv_len == 16 else None)
            if k % 5 == 4:                       # a flipped bit: icv, mid-run
                esp = esp[:-1] + bytes([esp[-1] ^ 1])
            pkts.append(ipv6_header(table.coa(m), HA, 50, len(esp)) + esp)
        b = load_batch(pkts, 2048)
        eng.decap(b)
        want = [(int(v), int(r), p) for v, r, p in ref.decap(pkts)]
        for k, (g, w) in enumerate(zip(b.results(), want)):
            assert g == w, f"packet {k} (mobile node {mns[k]})"


@pytest.mark.skipif(not ipsecmb_available(), reason="needs intel-ipsec-mb")
def test_encap_mixed_algorithms_in_one_batch():
    """GCM and CBC-HMAC mobile nodes in one ipsec-mb batch: each packet opens
    under its own SA."""
    from fastpath.core.sad import SADatabase
    sad = SADatabase(HA, 1500, sa_capacity=8, mn_capacity=8, ipsecmb=True)
    algs = ["aes128gcm16", "aes128-sha1", "aes256gcm16", "aes256-sha256"]
    hoas = [bytes.fromhex("20010db8000100000000000000000010") [:15] + bytes([0x10 + i])
            for i in range(4)]
    for i, (alg, h) in enumerate(zip(algs, hoas)):
        sad.add_mobile_node(h, bytes.fromhex("20010db8000200000000000000000010")[:15] + bytes([i]))
        sad.add_sa(h, "payload", "out", SPI_OUT + i, alg, *sa_keys(alg, i, "out"))
    eng = Engine(sad, backend="ipsecmb", max_batch=64)
    pkts, opens = [], []
    for k in range(40):
        i = (k // 3 + k) % 4                     # runs and switches
        opens.append(EspSA(algs[i], SPI_OUT + i, *sa_keys(algs[i], i, "out")))
        pkts.append(inner_packet(CN, hoas[i], 60 + k, fill=k))
    b = load_batch(pkts, 2048)
    eng.encap(b)
    for k, (v, r, out) in enumerate(b.results()):
        assert (v, r) == (int(Verdict.TO_WIRE), 0), k
        payload, nh = opens[k].open(out[40:])
        assert (payload, nh) == (pkts[k], 41), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_decap_mixed_algorithms_in_one_batch(backend):
    """GCM and CBC-HMAC mobile nodes in one decap batch, in runs and
    switches, some packets with a flipped ICV bit: each opens under its own
    SA. On ipsec-mb the CBC jobs go through the library's lanes in pass 2 and
    the GCM packets are opened one by one (opens_alone) in their runs
    (_decap_gcm_run): every packet is opened exactly once, by one of the
    two, and a forged one never passes."""
    from fastpath.core.sad import SADatabase
    from fastpath.verdicts import Reason
    sad = SADatabase(HA, 1500, sa_capacity=8, mn_capacity=8, ipsecmb=backend == "ipsecmb")
    algs = ["aes128gcm16", "aes128-sha1", "aes256gcm16", "aes256-sha256"]
    hoas = [bytes.fromhex("20010db8000100000000000000000010")[:15] + bytes([0x10 + i])
            for i in range(4)]
    coas = [bytes.fromhex("20010db8000200000000000000000010")[:15] + bytes([i])
            for i in range(4)]
    for i, (alg, h) in enumerate(zip(algs, hoas)):
        sad.add_mobile_node(h, coas[i])
        sad.add_sa(h, "payload", "in", SPI_IN + i, alg, *sa_keys(alg, i, "in"),
                   replay_window=64)
    eng = Engine(sad, backend=backend, max_batch=64)
    seals = [EspSA(a, SPI_IN + i, *sa_keys(a, i, "in")) for i, a in enumerate(algs)]
    seqs = [0] * 4
    # (all GCM first: a batch whose first jobs open alone and whose later ones do not)
    order = [0, 2, 0, 2, 2] + [(k // 3 + k) % 4 for k in range(40)] + [1, 3, 3, 0]
    pkts, inners, forged = [], [], set()
    for k, i in enumerate(order):
        seqs[i] += 1
        pl = inner_packet(hoas[i], CN, 60 + 3 * k, fill=k)
        esp = bytearray(seals[i].seal(seqs[i], pl, 41))
        if k % 7 == 3:
            esp[-1] ^= 0x01                      # the ICV's last byte
            forged.add(k)
        pkts.append(ipv6_header(coas[i], HA, 50, len(esp)) + bytes(esp))
        inners.append(pl)
    ok, drop, replay = int(Verdict.TO_HOME), int(Verdict.DROP), int(Reason.REPLAY)
    first = load_batch(pkts[:5], 2048)            # GCM only: nothing for pass 2
    eng.decap(first)
    assert [(v, r) for v, r, _ in first.results()] == \
        [(drop, int(Reason.ICV)) if k in forged else (ok, 0) for k in range(5)]
    b = load_batch(pkts, 2048)                    # the mix; its first five again
    eng.decap(b)
    for k, (v, r, out) in enumerate(b.results()):
        if k in forged:                           # (never committed: not a replay)
            assert (v, r) == (drop, int(Reason.ICV)), k
        elif k < 5:
            assert (v, r) == (drop, replay), k
        else:
            assert (v, r, out) == (ok, 0, inners[k]), k
    assert eng.counters()["drops"]["icv"] == len([k for k in forged if k < 5]) + len(forged)
    alt = []                                      # CBC packets only between GCM ones:
    for i in (1, 0, 3, 2, 1, 0, 3):               # every CBC job is the first of its run
        seqs[i] += 1
        pl = inner_packet(hoas[i], CN, 100, fill=i)
        esp = seals[i].seal(seqs[i], pl, 41)
        alt.append((ipv6_header(coas[i], HA, 50, len(esp)) + esp, pl))
    b = load_batch([p for p, _ in alt], 2048)
    eng.decap(b)
    assert b.results() == [(ok, 0, pl) for _, pl in alt]


def _one_sa_decap(alg, backend, window=64, esn=False):
    from fastpath.core.sad import SADatabase
    from fastpath.ref.esp import RefSA, frame
    sad = SADatabase(HA, 1500, sa_capacity=4, mn_capacity=4, ipsecmb=backend == "ipsecmb")
    hoa = bytes.fromhex("20010db8000100000000000000000010")
    coa = bytes.fromhex("20010db8000200000000000000000010")
    sad.add_mobile_node(hoa, coa)
    sad.add_sa(hoa, "payload", "in", SPI_IN, alg, *sa_keys(alg, 0, "in"), replay_window=window,
               esn=esn)
    seal = RefSA(SPI_IN, alg, *sa_keys(alg, 0, "in"), esn=esn)
    iv_len = get(alg).iv_len

    def packet(seq, size=80, forge=False, bad_pad=False):
        """(the ESP packet of inner packet `size` bytes, that inner packet);
        forge: a flipped ICV bit; bad_pad: a wrong pad byte under a valid ICV."""
        pl = inner_packet(hoa, CN, size, fill=seq)
        plain = bytearray(frame(pl, 41, get(alg).align))
        if bad_pad:                            # the last pad byte is not its number
            if plain[-2] == 0:
                plain[-2] = 1                      # (no padding: claim one byte)
            plain[-3] = 0xEE
        iv = seq.to_bytes(8, "big") if iv_len == 8 else bytes([seq & 0xFF]) * iv_len
        esp = bytearray(seal.seal_framed(seq, bytes(plain), iv))
        if forge:
            esp[-1] ^= 0x80
        return ipv6_header(coa, HA, 50, len(esp)) + bytes(esp), pl
    return sad, packet


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1", "null-sha256"])
def test_decap_run_after_a_dropped_first_packet(alg, backend):
    """A replayed packet, then a run of its SA: the first is dropped in pass
    1 before it becomes a job, so the run has no first job (_classify_esp_run
    frames all its jobs, or _decap_gcm_run starts without one); each must
    still be opened (pass 2 counts them)."""
    from fastpath.verdicts import Reason
    sad, packet = _one_sa_decap(alg, backend)
    eng = Engine(sad, backend=backend, max_batch=8)
    first = [packet(1)]
    b = load_batch([p for p, _ in first], 2048)
    eng.decap(b)
    assert b.results() == [(int(Verdict.TO_HOME), 0, first[0][1])]
    run = [packet(1)] + [packet(q) for q in (2, 3, 4)]
    b = load_batch([p for p, _ in run], 2048)
    eng.decap(b)
    assert b.results() == [(int(Verdict.DROP), int(Reason.REPLAY), b"")] + \
        [(int(Verdict.TO_HOME), 0, pl) for _, pl in run[1:]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("esn", [False, True])
def test_decap_one_sa_run_longer_than_a_lock_hold(backend, esn):
    """150 packets of one AES-GCM SA in one batch: the SA's lock is let go
    every 64 packets (LOCK_HOLD_MAX) and taken again - by _decap_gcm_run
    (ipsec-mb, no ESN: it ends its run, the next starts with a job made by
    _classify_in_one) or by _finish_in (ESN; OpenSSL) - the packets opened
    ahead stay opened once; forged ones at and around the hold's edges are
    ICV drops; the SA counts every accepted packet and byte once."""
    from fastpath.verdicts import Reason
    sad, packet = _one_sa_decap("aes128gcm16", backend, window=256, esn=esn)
    eng = Engine(sad, backend=backend, max_batch=150)
    forged = {0, 62, 63, 65, 127, 129, 149}     # (64 and 128: the first after a re-lock)
    pkts = [packet(q + 1, 60 + q, q in forged) for q in range(150)]
    b = load_batch([p for p, _ in pkts], 2048)
    eng.decap(b)
    for k, (v, r, out) in enumerate(b.results()):
        if k in forged:
            assert (v, r) == (int(Verdict.DROP), int(Reason.ICV)), k
        else:
            assert (v, r, out) == (int(Verdict.TO_HOME), 0, pkts[k][1]), k
    [view] = [x for x in sad.sas() if x["spi"] == SPI_IN]
    good = [pl for k, (_, pl) in enumerate(pkts) if k not in forged]
    assert view["packets_in"] == len(good)
    assert view["bytes_in"] == sum(len(pl) for pl in good)
    assert view["drops"] == {"icv": len(forged)}
    assert view["sequence"] == 149                     # 150 was forged


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1"])
def test_decap_copies_in_one_batch_are_replays_in_packet_order(alg, backend):
    """Copies of a sequence number in one batch, forged or badly padded or
    not, near each other and far apart: the packets of an SA are finished in
    packet order, the first good copy takes the number, and any copy after
    it is a replay whatever else is wrong with it (RFC 4303 §3.4.3: the
    window before the ICV); a forgery or bad padding before the good copy is
    dropped as such and takes nothing.
    AES-GCM on ipsec-mb takes the run loop (_decap_gcm_run: a copy one or
    two packets behind is still being opened when the next is framed), the
    others passes 1 to 3."""
    from fastpath.verdicts import Reason
    sad, packet = _one_sa_decap(alg, backend)
    eng = Engine(sad, backend=backend, max_batch=32)
    ok, rp, icv = (int(Verdict.TO_HOME), 0), (int(Verdict.DROP), int(Reason.REPLAY)), \
        (int(Verdict.DROP), int(Reason.ICV))
    pad = (int(Verdict.DROP), int(Reason.BAD_PADDING))
    # (sequence number, forged ICV / bad padding, verdict)
    spec = [(1, "", ok), (2, "", ok), (1, "", rp), (2, "icv", rp), (3, "", ok),
            (3, "", rp), (5, "icv", icv), (5, "", ok), (4, "", ok), (6, "", ok),
            (4, "icv", rp), (7, "", ok), (1, "", rp), (8, "", ok), (8, "pad", rp),
            (10, "pad", pad), (9, "", ok), (10, "", ok)]
    pkts = [packet(q, 60 + k, bad == "icv", bad == "pad") for k, (q, bad, _) in enumerate(spec)]
    b = load_batch([p for p, _ in pkts], 2048)
    eng.decap(b)
    for k, ((v, r, out), (_, _, want)) in enumerate(zip(b.results(), spec)):
        assert (v, r) == want, k
        assert out == (pkts[k][1] if want == ok else b""), k
    [view] = [x for x in sad.sas() if x["spi"] == SPI_IN]
    assert view["packets_in"] == 10
    assert view["drops"] == {"replay": 6, "icv": 1, "bad_padding": 1}
    assert view["sequence"] == 10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1"])
def test_decap_inner_checks_within_a_run(alg, backend):
    """Inner packets that must not go home, each between good packets of one
    run of one SA: a source other than the HoA (RFC 4301 selector), a dummy
    packet (next header 59), a payload that is not IPv6, a CE-marked outer
    header over a Not-ECT inner packet (RFC 6040). Each is dropped with its
    reason and still takes its sequence number; the run goes on around it."""
    from fastpath.verdicts import Reason
    sad, packet = _one_sa_decap(alg, backend)
    eng = Engine(sad, backend=backend, max_batch=32)
    seal = EspSA(alg, SPI_IN, *sa_keys(alg, 0, "in"))
    hoa = bytes.fromhex("20010db8000100000000000000000010")
    coa = bytes.fromhex("20010db8000200000000000000000010")

    def raw(seq, payload, nh, tc=0):
        esp = seal.seal(seq, payload, nh)
        return ipv6_header(coa, HA, 50, len(esp), tc=tc) + esp

    bad = {
        1: (raw(2, inner_packet(CN, CN, 90), 41), Reason.POLICY),
        3: (raw(4, bytes(70), 59), Reason.DUMMY),
        5: (raw(6, b"\x45" + bytes(79), 41), Reason.MALFORMED),
        7: (raw(8, inner_packet(hoa, CN, 90), 41, tc=0x03), Reason.CONGESTION),
    }
    pkts, want = [], []
    for k in range(9):
        if k in bad:
            pkts.append(bad[k][0])
            want.append((int(Verdict.DROP), int(bad[k][1]), b""))
        else:
            p, pl = packet(k + 1, 70 + k)
            pkts.append(p)
            want.append((int(Verdict.TO_HOME), 0, pl))
    b = load_batch(pkts, 2048)
    eng.decap(b)
    assert b.results() == want
    [view] = [x for x in sad.sas() if x["spi"] == SPI_IN]
    assert view["packets_in"] == 5
    assert view["drops"] == {"policy": 1, "dummy": 1, "malformed": 1, "congestion": 1}
    assert view["sequence"] == 9
    # every number was taken: the same batch again is all replays
    b = load_batch(pkts, 2048)
    eng.decap(b)
    assert {(v, r) for v, r, _ in b.results()} == {(int(Verdict.DROP), int(Reason.REPLAY))}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ["aes128gcm16", "aes128-sha1"])
@pytest.mark.parametrize("direction", ["encap", "decap"])
def test_bench_loop_equals_the_api(alg, backend, direction):
    """Engine.bench_loop (the benchmark's worker-style loop) processes the
    same input to the same output as Engine.encap/decap."""
    from bench.engine import Workload
    table = build_table(alg, 4, "random", ipsecmb=backend == "ipsecmb")
    wl = Workload(table, 100, 16, 2, direction == "decap")
    srcs = [wl.encap_src] if direction == "encap" else wl.pool
    e1 = Engine(table.sad, backend=backend, max_batch=16)
    w = Batch(16, wl.max_packet, hugepages=True)
    w.copy_from(srcs[0])
    if wl.rot is not None:
        w.data[:, w.headroom + 32:w.headroom + 40] = wl.rot[0]
    getattr(e1, direction)(w)
    api = w.results()
    # the same packets once more: fresh sequence numbers / a fresh table
    table2 = build_table(alg, 4, "random", ipsecmb=backend == "ipsecmb")
    e2 = Engine(table2.sad, backend=backend, max_batch=16)
    w2 = Batch(16, wl.max_packet)
    e2.bench_loop(w2, srcs, 1, True, direction == "decap", wl.rot, 32)
    got = w2.results()
    want = Verdict.TO_WIRE if direction == "encap" else Verdict.TO_HOME
    assert {v for v, _, _ in got} == {int(want)}
    if direction == "decap" or get(alg).iv_len != 16:    # CBC IVs are random
        assert got == api
    e2.bench_loop(w2, srcs, 3, False, direction == "decap", wl.rot, 32)
    assert {int(v) for v in w2.verdicts[:w2.count]} == {0}   # restored, not processed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alg", ALGS)
def test_bare_open(alg, backend):
    a = get(alg)
    table = build_table(alg, 1, "random", ipsecmb=backend == "ipsecmb")
    sa = table.mn_sa(0, "in")
    pkts = []
    for k in range(10):
        esp = sa.seal(k + 1, inner_packet(table.hoa(0), CN, 64 + 7 * k), 41,
                      bytes(16) if a.iv_len == 16 else None)
        pkts.append(ipv6_header(table.coa(0), HA, 50, len(esp)) + esp)
    bare = EspSA(alg, SPI_IN, *sa_keys(alg, 0, "in"), backend=backend)
    b, pristine = Batch(10, 2048, hugepages=True), Batch(10, 2048)
    bare.prepare_bare_open(pkts, b, pristine)
    bare.bare_open(5)                       # restored each time: opens every time
    bare.bare_open(2, True)
    assert b.results() == pristine.results()
    wrong = EspSA(alg, SPI_IN, *sa_keys(alg, 1, "in"), backend=backend)
    with pytest.raises(ValueError):
        wrong.prepare_bare_open(pkts, Batch(10, 2048), Batch(10, 2048))
    with pytest.raises(ValueError):
        wrong.prepare_bare_open(pkts, Batch(10, 2048), Batch(11, 2048))


def test_hugepage_batch_is_a_batch():
    b = Batch(64, 2048, hugepages=True)
    assert b.hugepages and not Batch(4).hugepages
    assert b.data.shape == Batch(64, 2048).data.shape
    assert not b.data.any()
    pkts = [inner_packet(CN, CN, 48 + k) for k in range(64)]
    b.load(pkts)
    c = Batch(64, 2048)
    c.copy_from(b)
    assert [p for _, _, p in c.results()] == pkts == [p for _, _, p in b.results()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gcm_keys_with_a_short_icv_are_refused(backend):
    """Both backends compute and compare 16-byte AES-GCM tags (mb_gcm_open
    compares 16 bytes): keys for another ICV length are refused, not built."""
    import dataclasses

    from fastpath.core.sad import SADatabase
    gcm8 = dataclasses.replace(get("aes128gcm16"), name="aes128gcm8", icv_len=8)
    keys = sa_keys("aes128gcm16", 0, "in")
    with pytest.raises(ValueError, match="ICVs 16 bytes"):
        EspSA(gcm8, SPI_IN, *keys, backend=backend)
    sad = SADatabase(HA, 1500, sa_capacity=2, mn_capacity=2, ipsecmb=backend == "ipsecmb")
    hoa = bytes.fromhex("20010db8000100000000000000000010")
    sad.add_mobile_node(hoa, None)
    with pytest.raises(ValueError, match="ICVs 16 bytes"):
        sad.add_sa(hoa, "payload", "in", SPI_IN, gcm8, *keys)
    assert sad.n_sas == 0


@pytest.mark.parametrize("kwargs", [{"backend": "bogus"}, {"max_batch": 0},
                                    {"max_batch": 1 << 21}])
def test_an_engine_that_fails_to_start_takes_no_worker_slot(kwargs):
    """A refused Engine leaves the workers' grace-period slots as they were:
    the next engine does not get the slot of one still running (two engines
    on one slot would let an endpoint record be freed under one of them)."""
    table = build_table("aes128gcm16", 2, "random", ipsecmb=False)
    running = Engine(table.sad, backend="openssl", max_batch=8)
    with pytest.raises((ValueError, RuntimeError)):
        Engine(table.sad, **kwargs)
    assert Engine(table.sad, backend="openssl", max_batch=8).worker != running.worker


def test_bindings_survive_an_engine_growing_its_arrays():
    """A Binding Update decapsulated but not yet taken is still there after
    a larger batch made the engine grow its work arrays."""
    from test_binding_swap import NEW, bu_msg, build_bu, check
    from topo import make_topo
    topo = make_topo("aes128gcm16", False, "openssl")
    check(topo, "decap", [build_bu(topo, NEW, bu_msg(seq=7))])
    big = Batch(1024, 2048)
    big.count = 1000
    topo.engine.encap(big)
    taken = topo.engine.take_bindings()
    assert len(taken) == 1
    assert taken[0][1].purpose == "binding" and len(taken[0][1].packet) == 80
