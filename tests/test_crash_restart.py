"""Crash safety of outbound sequence numbers (SPEC §4): a forwarding process
is killed with SIGKILL under load 20 times; across all its lives no (SPI,
sequence number) pair - and so no GCM nonce - is ever sent twice.

The child is the real data path: SequenceStore reserving blocks in the state
directory, the engine encapsulating batches, and the control-side timer that
moves reservations forward, as in `fastpath run`; it prints every sent SPI and
sequence number as it goes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from topo import REPO_EXAMPLES

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys, threading, time
from fastpath.config import load
from fastpath.core.batch import Batch
from fastpath.core.engine import Engine
from fastpath.seqstore import SequenceStore
from fastpath.tables import sad_from_config
cfg = load(sys.argv[1])
sad = sad_from_config(cfg, "auto")
outs = [sa for mn in cfg.mobile_nodes for sa in mn.sas if sa.direction == "out"]
store = SequenceStore(sys.argv[2], sad, outs)
def reserve():                      # the control thread's timer
    while True:
        store.extend()
        time.sleep(0.002)
threading.Thread(target=reserve, daemon=True).start()
eng = Engine(sad)
hoa = cfg.mobile_nodes[0].home_address.packed
pkt = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(16) + hoa + bytes(8)
b = Batch(32)
out = os.fdopen(1, "w", buffering=1 << 16)
while True:
    b.load([pkt] * 32)
    eng.encap(b)
    for v, r, p in b.results():
        if v == 1:
            out.write(f"{int.from_bytes(p[40:44], 'big'):x} {int.from_bytes(p[44:48], 'big')}\n")
    out.flush()
"""


def test_no_sequence_number_twice_across_20_kills(tmp_path):
    seen: set[tuple[str, int]] = set()
    total = 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for life in range(20):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO_EXAMPLES / "ha.toml"),
                              str(tmp_path / "state")], stdout=subprocess.PIPE, env=env)
        # once it is sending (start-up takes longer on a loaded machine), let it
        # run under load and kill it at varying points
        first = p.stdout.readline()
        time.sleep(0.1 + 0.05 * (life % 5))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        out = first + out
        lines = out.decode().splitlines()
        if lines and not lines[-1].endswith(tuple("0123456789")):
            lines = lines[:-1]                          # a line cut by the kill
        pairs = {(spi, int(seq)) for spi, seq in (l.split() for l in lines if " " in l)}
        assert len(pairs) == len(lines), f"life {life}: a number sent twice in one life"
        assert not pairs & seen, f"life {life}: reused {sorted(pairs & seen)[:5]}"
        assert pairs, f"life {life}: nothing was sent"
        seen |= pairs
        total += len(pairs)
    assert total > 20 * 100
