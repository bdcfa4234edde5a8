"""fastpath.sched: a home agent's control thread and workers run at low
SCHED_FIFO priorities, the control thread above the workers. Threads they
create do not inherit the policy. Nothing changes for a mobile node or with
[home_agent] realtime = false."""
from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest

from fastpath import sched
from fastpath.control import ControlPlane


def _can_realtime() -> bool:
    out = {}

    def probe():
        out["why"] = sched.set_realtime(0, sched.WORKER_PRIORITY)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return out["why"] is None


needs_rt = pytest.mark.skipif(not _can_realtime(),
                              reason="SCHED_FIFO not permitted (CAP_SYS_NICE / RLIMIT_RTPRIO)")


def _in_thread(fn):
    """Run fn in a fresh thread, so that pytest's own thread keeps its policy."""
    box = {}

    def body():
        try:
            box["value"] = fn()
        except BaseException as e:        # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_control_above_workers_lowest_priorities():
    assert sched.CONTROL_PRIORITY > sched.WORKER_PRIORITY >= os.sched_get_priority_min(os.SCHED_FIFO)
    assert sched.CONTROL_PRIORITY < 50           # below threaded IRQs and kernel threads


@needs_rt
def test_prioritise_control_and_workers():
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        def control():
            applied = sched.prioritise(workers)
            # a thread the control thread creates later (the fsync executor)
            child = {}
            t = threading.Thread(target=lambda: child.setdefault("policy", sched.policy(0)))
            t.start()
            t.join()
            return applied, sched.policy(0), child["policy"]
        applied, mine, child = _in_thread(control)
        assert applied == {"control": None, "workers": [None, None]}
        assert mine == ("fifo", sched.CONTROL_PRIORITY)
        assert [sched.policy(w.native_id) for w in workers] == [("fifo", sched.WORKER_PRIORITY)] * 2
        assert child == ("other", 0)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert sched.policy(0) == ("other", 0)       # the test's own thread is untouched


def test_prioritise_reports_a_refusal(monkeypatch, caplog):
    def refuse(tid, policy, param):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    with caplog.at_level("WARNING", logger="fastpath.sched"):
        applied = sched.prioritise([done])
    assert applied == {"control": "Operation not permitted", "workers": ["not running"]}
    assert "real-time scheduling not applied" in caplog.text


def _plane(role: str, realtime: bool, threads=(), flag=None):
    cfg = SimpleNamespace(home_agent=SimpleNamespace(realtime=realtime))
    fwd = SimpleNamespace(opts=SimpleNamespace(role=role, realtime=flag), cfg=cfg,
                          threads=list(threads))
    return SimpleNamespace(fwd=fwd)


def test_only_a_home_agent_with_realtime_on(monkeypatch):
    calls = []
    monkeypatch.setattr(sched, "prioritise", lambda threads: calls.append(threads) or {})
    assert ControlPlane._scheduling(_plane("mobile-node", True)) is None
    assert ControlPlane._scheduling(_plane("home-agent", False)) is None
    assert calls == []
    ControlPlane._scheduling(_plane("home-agent", True, ["w0"]))
    assert calls == [["w0"]]
    # fastpath run --realtime / --no-realtime overrides the config
    assert ControlPlane._scheduling(_plane("home-agent", True, ["w0"], flag=False)) is None
    ControlPlane._scheduling(_plane("home-agent", False, ["w1"], flag=True))
    assert calls == [["w0"], ["w1"]]
    assert ControlPlane._scheduling(_plane("mobile-node", True, flag=True)) is None


def test_startup_heap_frozen():
    """The control loop freezes what start-up allocated: full collections
    during Binding Updates skip it."""
    from fastpath.control import freeze_startup_heap
    import gc
    try:
        keep = [object() for _ in range(1000)]
        n = freeze_startup_heap()
        assert n >= len(keep) and gc.get_freeze_count() == n
    finally:
        gc.unfreeze()
