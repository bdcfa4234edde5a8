"""The control thread logs binding changes and refusals at INFO, rate-limited:
a burst of Binding Updates is summed up instead of written line by line."""
import logging
from types import SimpleNamespace

from fastpath import control

HOA = bytes.fromhex("20010db8000100000000000000000010")
COA = bytes.fromhex("20010db8000300000000000000000010")


def decision(**kw):
    base = dict(home_address=HOA, care_of_address=COA, moved=True, deregistered=False,
                status=0, sequence=7, lifetime=150, ba=object(), action="accepted", reason="")
    base.update(kw)
    return SimpleNamespace(**base)


def test_moves_and_refusals_logged_and_rate_limited(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(control.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(control, "_log_window", [0.0, 0, 0])
    with caplog.at_level(logging.INFO, logger="fastpath.control"):
        control._log_decision(decision())
        control._log_decision(decision(moved=False, status=133, reason="sequence out of window"))
        control._log_decision(decision(moved=False, status=0))          # a refresh: not at INFO
        for _ in range(100):
            control._log_decision(decision())
        now[0] += 1.5
        control._log_decision(decision(deregistered=True, moved=False))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("binding 2001:db8:1::10 moved to 2001:db8:3::10 (BU sequence 7, "
                        "lifetime 600 s, Binding Ack sent)")
    assert lines[1] == "Binding Update for 2001:db8:1::10 refused: status 133 (sequence out of window)"
    assert len(lines) == control._LOG_PER_S + 2
    assert lines[-2].startswith("82 more binding changes or refusals")
    assert "deregistered" in lines[-1]
