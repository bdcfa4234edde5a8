"""Sequence-number reservations: a restart never reuses a number."""
import json

from fastpath.config import load
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.seqstore import FILE, MIN_BLOCK, SequenceStore
from fastpath.tables import sad_from_config
from fastpath.verdicts import Reason, Verdict

from topo import CN, REPO_EXAMPLES, inner


def start(tmp_path):
    cfg = load(REPO_EXAMPLES / "ha.toml")
    sad = sad_from_config(cfg, "openssl")
    outs = [sa for mn in cfg.mobile_nodes for sa in mn.sas if sa.direction == "out"]
    store = SequenceStore(tmp_path, sad, outs)
    return cfg, sad, store, Engine(sad, "openssl")


def send(engine, hoa, n):
    b = Batch(n)
    b.load([inner(CN, hoa, 100)] * n)
    engine.encap(b)
    return b.results()


def seqs(results):
    return [int.from_bytes(p[44:48], "big") for v, _, p in results if v == Verdict.TO_WIRE]


def test_restart_resumes_past_the_reservation(tmp_path):
    cfg, sad, store, eng = start(tmp_path)
    hoa = cfg.mobile_nodes[0].home_address.packed
    first = seqs(send(eng, hoa, 10))
    assert first == list(range(1, 11))
    saved = json.loads((tmp_path / FILE).read_text())
    assert MIN_BLOCK in saved.values()          # on disk before any number was used
    # "crash": a new process state from the same directory
    cfg, sad, store, eng = start(tmp_path)
    again = seqs(send(eng, hoa, 10))
    assert again[0] == MIN_BLOCK + 1 and not set(again) & set(first)


def test_workers_stop_at_the_limit_until_extended(tmp_path):
    cfg, sad, store, eng = start(tmp_path)
    hoa = cfg.mobile_nodes[0].home_address.packed
    spi = cfg.mobile_nodes[0].sa("payload", "out").spi
    sad.resume_sequence(spi, MIN_BLOCK - 2)
    res = send(eng, hoa, 4)
    assert [r for _, r, _ in res] == [Reason.NONE] * 2 + [Reason.SEQ_EXHAUSTED] * 2
    assert store.extend() >= 1
    assert store.limits()[spi] > MIN_BLOCK
    assert send(eng, hoa, 1)[0][0] == Verdict.TO_WIRE


def test_corrupt_state_refuses_to_start(tmp_path):
    (tmp_path / FILE).write_text("{not json")
    try:
        start(tmp_path)
    except RuntimeError as e:
        assert "refusing to start" in str(e)
    else:
        raise AssertionError("started on a corrupt reservation file")


def test_block_follows_the_rate_so_a_late_check_does_not_run_dry(tmp_path):
    """A fast SA gets a block worth AHEAD_S of its traffic, so the workers do
    not hit the limit while the control thread is late; a slow SA keeps the
    minimum (little skipped on restart)."""
    from fastpath.seqstore import AHEAD_S, MAX_BLOCK
    cfg, sad, store, eng = start(tmp_path)
    spi = cfg.mobile_nodes[0].sa("payload", "out").spi
    assert store.extend(now=100.0) == 0                   # first look: nothing used
    used = MIN_BLOCK - 1000                               # 3 Mpps for ~0.35 s
    sad.resume_sequence(spi, used)
    assert store.extend(now=100.0 + used / 3e6) == 1
    ahead = store.limits()[spi] - used
    assert ahead >= 3e6 * AHEAD_S and ahead <= MAX_BLOCK and ahead & (ahead - 1) == 0
    # the same SA going slowly afterwards: the block shrinks back, no early extension
    before = store.limits()[spi]
    for i in range(1, 40):
        sad.resume_sequence(spi, used + 10 * i)
        store.extend(now=101.0 + i)
    assert store.limits()[spi] == before
    sad.resume_sequence(spi, before - 10)
    assert store.extend(now=200.0) == 1
    assert store.limits()[spi] - (before - 10) == MIN_BLOCK


def test_plan_is_free_and_a_failed_commit_moves_nothing(tmp_path, monkeypatch):
    """The control loop calls plan() every few ms: it writes nothing and,
    with no SA near its limit, returns nothing. A commit whose write fails
    leaves the limit where it was (in memory, on disk, in the SA table), so
    the same move is planned again."""
    cfg, sad, store, eng = start(tmp_path)
    spi = cfg.mobile_nodes[0].sa("payload", "out").spi
    on_disk = (tmp_path / FILE).read_text()
    assert store.plan(now=10.0) == {}
    sad.resume_sequence(spi, MIN_BLOCK - 5)
    moves = store.plan(now=11.0)
    assert set(moves) == {spi} and moves[spi] > MIN_BLOCK
    assert (tmp_path / FILE).read_text() == on_disk        # planning wrote nothing

    def broken(fd):
        raise OSError(5, "I/O error")
    monkeypatch.setattr("fastpath.seqstore.os.fsync", broken)
    try:
        store.commit(moves)
        raise AssertionError("commit() hid a failed fsync")
    except OSError:
        pass
    assert store.limits()[spi] == MIN_BLOCK
    assert json.loads((tmp_path / FILE).read_text()) == json.loads(on_disk)
    hoa = cfg.mobile_nodes[0].home_address.packed
    res = send(eng, hoa, 6)
    assert [r for _, r, _ in res][-1] == Reason.SEQ_EXHAUSTED   # the workers still stop
    monkeypatch.undo()
    assert store.commit(store.plan(now=12.0)) == 1
    assert send(eng, hoa, 1)[0][0] == Verdict.TO_WIRE


def test_next_check_follows_the_busiest_sa(tmp_path):
    """Idle: the slowest check (an idle forwarder sleeps); an SA that will
    reach its threshold soon: checks come sooner, never below the floor."""
    from fastpath.seqstore import CHECK_MAX_S, CHECK_MIN_S
    cfg, sad, store, eng = start(tmp_path)
    spi = cfg.mobile_nodes[0].sa("payload", "out").spi
    store.plan(now=50.0)
    store.plan(now=51.0)
    assert store.next_check_s == CHECK_MAX_S
    sad.resume_sequence(spi, 100_000)             # 1 Mpps: 0.42 s to the threshold
    assert store.plan(now=51.1) == {}
    assert store.next_check_s == CHECK_MAX_S
    sad.resume_sequence(spi, 400_000)             # still 1 Mpps: 0.12 s to go
    assert store.plan(now=51.4) == {}
    assert CHECK_MIN_S < store.next_check_s < CHECK_MAX_S
    sad.resume_sequence(spi, 500_000)             # 0.02 s to go: the floor
    assert store.plan(now=51.5) == {}
    assert store.next_check_s == CHECK_MIN_S
    sad.resume_sequence(spi, 600_000)             # past the threshold: the limit moves
    assert spi in store.plan(now=51.6)


def test_a_smaller_configuration_keeps_the_other_reservations(tmp_path):
    """A run with fewer SAs (a test config, a node removed for a while) must
    not erase the reservations of the SAs it lacks: when the full config comes
    back, those SAs still start after their old limits (same key: a reused
    number would be a reused GCM nonce)."""
    cfg, sad, store, eng = start(tmp_path)
    hoa = cfg.mobile_nodes[0].home_address.packed
    assert seqs(send(eng, hoa, 3)) == [1, 2, 3]
    full = json.loads((tmp_path / FILE).read_text())
    assert len(full) >= 2
    outs = [sa for mn in cfg.mobile_nodes for sa in mn.sas if sa.direction == "out"]
    SequenceStore(tmp_path, sad_from_config(cfg, "openssl"), outs[1:])   # the smaller run
    after = json.loads((tmp_path / FILE).read_text())
    assert set(after) == set(full)
    cfg, sad, store, eng = start(tmp_path)                               # the full one again
    assert seqs(send(eng, hoa, 1))[0] > MIN_BLOCK
