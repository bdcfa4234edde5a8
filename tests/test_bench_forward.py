"""bench forward: the tcp mode, --offload, --peers (bench/forward.py, bench/peers.py).

Unit tests of the pieces that need no root (aggregation, targets, offload
flag detection, peer configuration), and one short end-to-end run in network
namespaces (root, gcc, iperf3; the peers when installed) that checks the rows
and that nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench import forward as F
from bench import peers as P

ROOT = Path(__file__).resolve().parent.parent


def args_for(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    F.add_arguments(p)
    a = p.parse_args(list(argv))
    F._resolve(a)
    return a


def test_defaults_include_tcp_and_both_offload_settings():
    a = args_for()
    assert a.mode == ["fixed", "sat", "tcp"]
    assert a.offload == "both" and a.tcp_seconds == 3 and a.tcp_warmup == 1
    q = args_for("--quick")
    assert q.tcp_seconds == 2 and q.mode == ["fixed", "sat", "tcp"]
    with pytest.raises(SystemExit):
        args_for("--tcp-seconds", "0")


def test_offload_settings_and_flags():
    assert F.offload_settings("both", True) == ["on", "off"]
    assert F.offload_settings("off", True) == ["off"]
    assert F.offload_settings("both", False) == [F.OFFLOAD_NA]
    assert F.offload_flags("on") == ["--offload"]
    assert F.offload_flags("off") == ["--no-offload"]
    assert F.offload_flags(F.OFFLOAD_NA) == []


@pytest.mark.parametrize("help_text, found", [
    ("  --batch N   packets per batch\n", False),
    ("  --offload, --no-offload   IFF_VNET_HDR ...\n", True),
    ("  --no-offload   only the negative form\n", False),
    ("  --offload-foo  another flag\n", False),
])
def test_offload_detection_reads_run_help(monkeypatch, help_text, found):
    def fake_run(argv, **kw):
        assert argv[-3:] == ["fastpath", "run", "--help"]
        return types.SimpleNamespace(stdout=help_text, stderr="", returncode=0)
    monkeypatch.setattr(F.subprocess, "run", fake_run)
    assert F.offload_supported() is found


def test_offload_detection_on_this_tree():
    """Whatever this tree's `fastpath run` says, the answer is a bool and
    matches its --help."""
    r = subprocess.run([sys.executable, "-m", "fastpath", "run", "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert F.offload_supported() is ("--offload" in r.stdout.replace("--no-offload", ""))


def cell(alg, offload, size, mode, rnd, **kw):
    base = {"alg": alg, "offload": offload, "size": size, "mode": mode, "round": rnd,
            "other_load_cpus": 0.0, "ha_cpu_share": 0.5}
    base.update(kw)
    return base


def test_aggregate_tcp_target_and_null_per_offload():
    cells = []
    for rnd in range(2):
        for off, null_gbps, gcm_gbps in (("on", 10.0, 4.0), ("off", 1.0, 0.9)):
            cells.append(cell("null", off, None, "tcp", rnd, gbps=null_gbps, cpu_us_per_pkt=1.0))
            cells.append(cell("aes128gcm16", off, None, "tcp", rnd, gbps=gcm_gbps,
                              cpu_us_per_pkt=2.0))
            cells.append(cell("aes128-sha1", off, None, "tcp", rnd, gbps=gcm_gbps / 2,
                              cpu_us_per_pkt=3.0))
            cells.append(cell("null", off, 64, "fixed", rnd, cpu_us_per_pkt=4.0))
            cells.append(cell("aes128gcm16", off, 64, "fixed", rnd, cpu_us_per_pkt=5.0))
    rows = {(r["alg"], r["offload"], r["size"], r["mode"]): r for r in F.aggregate(cells, 0.15)}
    on = rows[("aes128gcm16", "on", None, "tcp")]
    assert on["gbps"] == 4.0 and on["ratio"] == pytest.approx(0.4)      # / null with offload on
    assert on["target"] == "PASS*" and on["target_text"] == ">= 3 Gbit/s"
    off = rows[("aes128gcm16", "off", None, "tcp")]
    assert off["ratio"] == pytest.approx(0.9) and off["target"] == "FAIL*"
    sha = rows[("aes128-sha1", "on", None, "tcp")]
    assert sha["target"] is None and sha["ratio"] == pytest.approx(0.2)  # no tcp target for it
    assert rows[("null", "on", None, "tcp")]["target"] is None
    fixed = rows[("aes128gcm16", "on", 64, "fixed")]
    assert fixed["ratio"] == pytest.approx(1.25) and fixed["target"] == "PASS*"
    table = F.common.render_table(F.COLUMNS, list(rows.values()))
    assert ">= 3 Gbit/s" in table and "offload" in table.splitlines()[0]


def test_chart_has_a_tcp_panel_with_the_target():
    cells = [cell("null", "n/a", None, "tcp", 0, gbps=1.0, cpu_us_per_pkt=1.0),
             cell("aes128gcm16", "n/a", None, "tcp", 0, gbps=0.9, cpu_us_per_pkt=1.2),
             cell("null", "n/a", 64, "fixed", 0, cpu_us_per_pkt=3.0, both_cpu_us_per_pkt=6.0),
             cell("aes128gcm16", "n/a", 64, "fixed", 0, cpu_us_per_pkt=3.5,
                  both_cpu_us_per_pkt=7.0)]
    rows = F.aggregate(cells, 0.15)
    peer_rows = [{"peer": "wireguard-go", "size": 64, "mode": "fixed", "both_cpu_us_per_pkt": 29.0},
                 {"peer": "wireguard-go", "size": None, "mode": "tcp", "gbps": 0.3}]
    panels = F.chart(rows, peer_rows)
    titles = [p["title"] for p in panels]
    assert any("TCP" in t for t in titles) and any("peers" in t for t in titles)
    tcp = next(p for p in panels if "TCP" in p["title"])
    assert tcp["series"]["wireguard-go"][1] == [0.3]
    assert any(k.startswith("target") for k in tcp["series"])


def test_compare_with_peers():
    rows = F.aggregate([
        cell("null", "on", 64, "fixed", 0, cpu_us_per_pkt=3.0, both_cpu_us_per_pkt=6.0),
        cell("aes128gcm16", "on", 64, "fixed", 0, cpu_us_per_pkt=3.5, both_cpu_us_per_pkt=5.0),
        cell("aes128gcm16", "on", None, "tcp", 0, gbps=3.3),
    ], 0.15)
    peer_rows = P.aggregate([
        {"peer": "strongswan", "size": 64, "mode": "fixed", "round": 0,
         "both_cpu_us_per_pkt": 25.0, "ha_cpu_share": 0.3, "mn_cpu_share": 0.2},
        {"peer": "strongswan", "size": None, "mode": "tcp", "round": 0, "gbps": 0.3,
         "ha_cpu_share": 0.3, "mn_cpu_share": 0.2},
    ])
    cmp = P.compare(rows, peer_rows)
    fixed = next(c for c in cmp if c["mode"] == "fixed")
    assert fixed["ratio"] == pytest.approx(0.2) and fixed["target"] == "PASS*"
    tcp = next(c for c in cmp if c["mode"] == "tcp")
    assert tcp["ratio"] == pytest.approx(11.0) and tcp["target"] == "PASS"
    assert all(c["alg"] != "null" for c in cmp)
    out = []
    P.print_tables({"rows": peer_rows, "compare": cmp, "skipped": {"wireguard-go": "x"}},
                   out.append)
    assert any("<= 0.2" in line for line in out) and any("skipped" in line for line in out)


def test_missing_peers_name_the_packages(monkeypatch):
    monkeypatch.setattr(P.shutil, "which", lambda name: None)
    monkeypatch.setattr(P.os, "access", lambda path, mode: False)
    assert "wireguard-go" in P.missing("wireguard-go")
    why = P.missing("strongswan")
    assert "charon" in why and "libcharon-extra-plugins" in why


def test_strongswan_configuration(tmp_path):
    ctx = types.SimpleNamespace(tmp=tmp_path, lab=None)
    s = P.StrongSwan(ctx)
    s.psk = "ab" * 32
    for side, local, lts in (("ha", F.HA_ADDRESS, F.CN_PREFIX), ("mn", F.COA, f"{F.HOA}/128")):
        d = s.conf(side)
        conf = (d / "swanctl.conf").read_text()
        assert f"local_addrs = {local}" in conf and f"local_ts = {lts}" in conf
        assert "esp_proposals = aes128gcm16" in conf and "mode = tunnel" in conf
        assert f"secret = 0x{'ab' * 32}" in conf
        assert oct((d / "swanctl.conf").stat().st_mode & 0o777) == "0o600"
        ss = (d / "strongswan.conf").read_text()
        assert "kernel-libipsec" in ss and f"unix://{d / 'vici'}" in ss


# --- end to end ----------------------------------------------------------------------

def _e2e_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    for tool in ("ip", "gcc", "iperf3"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.mark.skipif(_e2e_skip() is not None, reason=_e2e_skip() or "")
def test_bench_forward_tcp_and_peers_end_to_end(tmp_path):
    """A short run: fixed and tcp through plain IPv6-in-IPv6 and null (and the
    peers that are installed); rows in the JSON, nothing left behind."""
    out = tmp_path / "fwd.json"
    argv = [sys.executable, "-m", "bench", "forward", "--alg", "plain", "--size", "64",
            "--mode", "fixed", "tcp", "--rounds", "1", "--seconds", "0.3", "--warmup", "0.1",
            "--tcp-seconds", "1", "--tcp-warmup", "0", "--offload", "on", "--retries", "0",
            "--peers", "--no-png", "--json", str(out)]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {(x["alg"], x["mode"]): x for x in doc["rows"]}
    for alg in ("null", "plain"):
        assert rows[(alg, "tcp")]["gbps"] > 0.01
        assert rows[(alg, "tcp")]["syscalls_per_pkt"] > 0
        assert rows[(alg, "fixed")]["cpu_us_per_pkt"] > 0
    assert doc["offload"]["settings"] in (["on"], [F.OFFLOAD_NA])
    peers = doc["peers"]
    for name in P.PEERS:
        if P.missing(name):
            assert name in peers["skipped"]
        else:
            assert name not in peers["failed"], peers["failed"].get(name)
            got = {x["mode"]: x for x in peers["rows"] if x["peer"] == name}
            assert got["fixed"]["both_cpu_us_per_pkt"] > 0
            if name == P.REFERENCE:               # the C null forwarder: fixed rate only
                assert "tcp" not in got
            else:
                assert got["tcp"]["gbps"] > 0.01
    assert P.REFERENCE not in peers["skipped"]                # gcc is here: always measured
    ref = [c for c in peers["compare"] if c["peer"] == P.REFERENCE]
    assert {c["alg"] for c in ref} == {"null", "plain"}      # fastpath's null is compared too
    assert all(c["target"] == "-" and c["ratio"] > 0 for c in ref)
    assert not [c for c in peers["compare"] if c["alg"] == "null" and c["peer"] != P.REFERENCE]
    prefix = doc["namespaces"].split("{")[0]                 # fpbench-<pid>-
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in left
    pid = prefix.split("-")[1]
    assert not list(P.WG_RUN.glob(f"wg[hm]{pid}.sock"))
    assert not list(Path("/tmp").glob(f"{prefix}*"))          # its temporary directory


def test_a_late_snapshot_does_not_swallow_the_totals():
    """The generator finishing just as a snapshot is asked for: the snapshot
    finds nothing, the closing totals are still there for json_line."""
    p = subprocess.Popen([sys.executable, "-c", 'print(\'{"t": 1.0, "sent": 5}\'); '
                          'print(\'{"sent": 9, "elapsed": 1.5}\')'], stdout=subprocess.PIPE)
    try:
        lines = F.Lines(p)
        p.wait(10)
        assert lines.json_line(0.5, "max_seq") is None        # reads both, keeps both
        assert lines.snapshot() is None                         # finished: no SIGUSR1
        assert lines.json_line(0.5, "elapsed") == {"sent": 9, "elapsed": 1.5}
        assert lines.json_line(0.1, "t") is None                # older lines are dropped
    finally:
        p.stdout.close()
