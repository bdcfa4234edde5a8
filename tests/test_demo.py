"""`fastpath demo` end to end: a move under load, no packet to the old CoA
after the Binding Ack, nothing left behind."""
import subprocess
import sys
from pathlib import Path

import pytest

from netns import skip_reason

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(skip_reason(need_tun=True) is not None, reason=skip_reason(need_tun=True) or "")
def test_demo_moves_without_stale_packets():
    r = subprocess.run([sys.executable, "-m", "fastpath", "demo", "--seconds", "4", "--rate", "2000"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "packets sent to the old CoA after the Binding Ack: 0" in r.stdout
    assert "Binding Ack sent after the grace period" in r.stdout
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fpdemo-" not in left
