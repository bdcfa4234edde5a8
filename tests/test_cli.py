"""fastpath.cli: check, keys (incl. a tshark decryption round trip), error handling."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fastpath import cli
from fastpath.config import load
from fastpath.pcap import PcapWriter

ROOT = Path(__file__).resolve().parent.parent
HA = ROOT / "examples" / "ha.toml"
HA_GCM = ROOT / "examples" / "ha-gcm.toml"


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def records(out: str) -> list[list[str]]:
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    return list(csv.reader(io.StringIO("\n".join(lines)), quotechar='"', escapechar="\\"))


# ---------------------------------------------------------------- check


@pytest.mark.parametrize("path", [HA, HA_GCM])
def test_check_examples(capsys, path):
    rc, out, err = run(capsys, "check", "-c", path)
    assert rc == 0
    cfg = load(path)
    for mn, sa in cfg.sas():
        row = next(ln for ln in out.splitlines() if f"0x{sa.spi:08x}" in ln)
        cols = row.split()
        assert cols == [str(mn.home_address), str(mn.care_of_address), sa.purpose,
                        sa.direction, f"0x{sa.spi:08x}", sa.mode, sa.algorithm.name,
                        "yes" if sa.esn else "no",
                        str(sa.replay_window) if sa.direction == "in" else "-"]
        # keys never printed
        for secret in (sa.enc_key, sa.auth_key, sa.salt):
            if secret:
                assert secret.hex() not in out
                assert secret.hex()[:8] not in out
    assert "OK: 2 mobile nodes, 8 SAs" in out
    header = next(ln for ln in out.splitlines() if ln.startswith("HoA"))
    assert header.split() == ["HoA", "CoA", "purpose", "dir", "SPI", "mode", "algorithm", "ESN", "replay"]
    assert "2001:db8:ffff::1" in out and "2001:db8:1::/64" in out


def test_check_gcm_logs_warning_on_stderr(capsys):
    rc, out, err = run(capsys, "check", "-c", HA_GCM)
    assert rc == 0
    assert "RFC 4106 §8.1" in err and "WARNING" in err
    rc, out, err = run(capsys, "--log-level", "error", "check", "-c", HA_GCM)
    assert rc == 0 and "RFC 4106" not in err


def test_check_bad_file_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(HA.read_text().replace("spi = 0x2001", "spi = 0x1000")
                   .replace("mtu = 1500", "mtu = 100"))
    rc, out, err = run(capsys, "check", "-c", bad)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert all(ln.startswith("fastpath: ") for ln in lines)
    assert any(f"{bad}:" in ln and "[home_agent]: mtu: 100 is out of range" in ln for ln in lines)
    assert any("mobile_node[1].sa[1] (HoA 2001:db8:1::20, SPI 0x00001000): spi: duplicate SPI" in ln
               for ln in lines)
    assert "Traceback" not in err
    assert lines[-1] == "fastpath: 2 problems; nothing was started"


def test_check_missing_file_and_syntax_error(capsys, tmp_path):
    rc, out, err = run(capsys, "check", "-c", tmp_path / "missing.toml")
    assert rc == 2 and err.startswith("fastpath: ") and "cannot read" in err
    bad = tmp_path / "syntax.toml"
    bad.write_text("[home_agent\naddress = 1\n")
    rc, out, err = run(capsys, "check", "-c", bad)
    assert rc == 2 and f"fastpath: {bad}:1: TOML syntax error" in err
    assert "Traceback" not in err


def test_usage_errors_and_help(capsys):
    rc, out, err = run(capsys, "check")
    assert rc == 2 and "-c/--config" in err
    rc, out, err = run(capsys, "frobnicate")
    assert rc == 2
    rc, out, err = run(capsys)
    assert rc == 2
    for cmd in ("check", "keys", "replay", "run", "ctl", "demo"):
        rc, out, err = run(capsys, cmd, "--help")
        assert rc == 0 and f"usage: fastpath {cmd}" in out
    rc, out, err = run(capsys, "--help")
    assert rc == 0 and "Mobile IPv6 home agent" in out
    rc, out, err = run(capsys, "keys", "--help")
    assert "secret keys" in out and "salt" in out
    rc, out, err = run(capsys, "run", "--help")
    for flag in ("--workers", "--batch", "--home-if", "--wire-if", "--cpu",
                 "--control-socket", "--metrics", "--log-level"):
        assert flag in out


# ---------------------------------------------------------------- keys


def expected_record(cfg, mn, sa, any_coa=False):
    ha = str(cfg.home_agent.address)
    if sa.mode == "transport":
        peer = str(mn.home_address)
    else:
        peer = str(mn.care_of_address) if mn.care_of_address and not any_coa else "*"
    src, dst = (peer, ha) if sa.direction == "in" else (ha, peer)
    enc = sa.enc_key + sa.salt
    return ["IPv6", src, dst, f"0x{sa.spi:08x}", sa.algorithm.wireshark_enc,
            "0x" + enc.hex() if enc else "", sa.algorithm.wireshark_auth,
            "0x" + sa.auth_key.hex() if sa.auth_key else ""]


@pytest.mark.parametrize("path", [HA, HA_GCM])
def test_keys_lines_match_config(capsys, path):
    rc, out, err = run(capsys, "keys", "-c", path, "--wireshark")
    assert rc == 0
    cfg = load(path)
    recs = records(out)
    expected = [expected_record(cfg, mn, sa) for mn, sa in cfg.sas()]
    assert recs == expected
    # every record line is exactly the quoted, comma-separated form
    for ln in (ln for ln in out.splitlines() if not ln.startswith("#")):
        assert ln.startswith('"IPv6","') and ln.endswith('"') and ln.count('","') == 7


def test_keys_gcm_key_includes_salt(capsys):
    rc, out, _ = run(capsys, "keys", "-c", HA_GCM, "--no-header")
    rec = next(r for r in records(out) if r[3] == "0x00001002")
    assert rec[4] == "AES-GCM with 16 octet ICV [RFC4106]"
    assert rec[5] == "0x" + "3a" * 16 + "3c" * 4
    assert rec[6:] == ["NULL", ""]
    assert not any(ln.startswith("#") for ln in out.splitlines())


def test_keys_binding_sas_use_home_address(capsys):
    rc, out, _ = run(capsys, "keys", "-c", HA)
    recs = {r[3]: r for r in records(out)}
    assert recs["0x00001000"][1:3] == ["2001:db8:1::10", "2001:db8:ffff::1"]   # BU
    assert recs["0x00001001"][1:3] == ["2001:db8:ffff::1", "2001:db8:1::10"]   # BA
    assert recs["0x00001002"][1:3] == ["2001:db8:2::10", "2001:db8:ffff::1"]   # payload in
    assert recs["0x00001003"][1:3] == ["2001:db8:ffff::1", "2001:db8:2::10"]   # payload out


def test_keys_any_coa_and_unknown_coa(capsys, tmp_path):
    rc, out, _ = run(capsys, "keys", "-c", HA, "--any-coa")
    cfg = load(HA)
    assert records(out) == [expected_record(cfg, mn, sa, any_coa=True) for mn, sa in cfg.sas()]
    assert records(out)[2][1] == "*"
    nocoa = tmp_path / "nocoa.toml"
    nocoa.write_text(HA.read_text().replace('care_of_address = "2001:db8:2::10" # static binding until its first Binding Update\n', ""))
    rc, out, _ = run(capsys, "keys", "-c", nocoa)
    recs = {r[3]: r for r in records(out)}
    assert recs["0x00001004"][1:3] == ["*", "2001:db8:ffff::1"]
    assert recs["0x00001005"][1:3] == ["2001:db8:ffff::1", "*"]
    assert recs["0x00001000"][1:3] == ["2001:db8:1::10", "2001:db8:ffff::1"]


def test_keys_columns(capsys, tmp_path):
    rc, out, _ = run(capsys, "keys", "-c", HA, "--columns", "10")
    assert all(r[8:] == ["32-bit", "0"] for r in records(out))
    assert '#"Protocol","Src IP","Dest IP","SPI","Encryption","Encryption Key","Authentication","Authentication Key","SN","ESN High Bits"' in out
    esn = tmp_path / "esn.toml"
    esn.write_text(HA.read_text().replace("  # esn = true", "  esn = true"))
    rc, out, _ = run(capsys, "keys", "-c", esn)     # auto: an ESN SA -> 10 columns
    recs = {r[3]: r for r in records(out)}
    assert recs["0x00001002"][8:] == ["64-bit", "0"]
    assert recs["0x00001003"][8:] == ["32-bit", "0"]
    rc, out, _ = run(capsys, "keys", "-c", esn, "--columns", "8")
    assert all(len(r) == 8 for r in records(out))


def test_keys_bad_config_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(HA.read_text().replace('algorithm = "aes128-sha1"', 'algorithm = "des-sha1"', 1))
    rc, out, err = run(capsys, "keys", "-c", bad, "--wireshark")
    assert rc == 2 and out == ""
    assert "fastpath: " in err and "'des-sha1' is refused: DES is MUST NOT" in err


def test_null_sha256_record():
    from fastpath.config import parse
    text = HA.read_text().replace('algorithm = "aes256-sha256"', 'algorithm = "null-sha256"')
    text = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("enc_key = \"0x5a")
                     and not ln.strip().startswith("enc_key = \"0x6a"))
    cfg = parse(text)
    rec = next(r for r in cli.esp_sa_records(cfg) if r[3] == "0x00001004")
    assert rec[4:7] == ("NULL", "", "HMAC-SHA-256-128 [RFC4868]")


# ---------------------------------------------------------------- replay, stubs


def test_replay_dispatches_to_replay_main(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_main(args):
        seen["args"] = args
        return 0

    mod = types.ModuleType("fastpath.replay")
    mod.main = fake_main
    monkeypatch.setitem(sys.modules, "fastpath.replay", mod)
    import fastpath
    monkeypatch.setattr(fastpath, "replay", mod, raising=False)
    rc, out, err = run(capsys, "replay", "-c", HA, "--in", tmp_path / "in.pcap",
                       "--out", tmp_path / "out.pcap", "--crypto", "openssl", "--batch", "64")
    assert rc == 0
    a = seen["args"]
    assert (a.config, a.input, a.output, a.crypto, a.batch) == (
        str(HA), str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"), "openssl", 64)
    assert a.command == "replay" and a.log_level == "warning"
    # without --batch the attribute is absent, so the engine's default applies
    run(capsys, "replay", "-c", HA, "--in", "a.pcap", "--out", "b.pcap")
    assert not hasattr(seen["args"], "batch") and seen["args"].crypto == "auto"


def test_replay_errors_from_engine_are_clean(capsys, monkeypatch, tmp_path):
    from fastpath.config import load as real_load
    from fastpath.pcap import read_packets

    def fake_main(args):
        real_load(args.config)
        list(read_packets(args.input))
        return 0

    mod = types.ModuleType("fastpath.replay")
    mod.main = fake_main
    monkeypatch.setitem(sys.modules, "fastpath.replay", mod)
    import fastpath
    monkeypatch.setattr(fastpath, "replay", mod, raising=False)
    (tmp_path / "in.pcap").write_bytes(b"garbage garbage garbage!")
    rc, out, err = run(capsys, "replay", "-c", HA, "--in", tmp_path / "in.pcap",
                       "--out", tmp_path / "out.pcap")
    assert rc == 2 and err.startswith("fastpath: ") and "not a pcap file" in err
    assert "Traceback" not in err


def test_replay_flag_validation(capsys):
    rc, out, err = run(capsys, "replay", "-c", HA, "--in", "a", "--out", "b", "--crypto", "rot13")
    assert rc == 2
    rc, out, err = run(capsys, "replay", "-c", HA, "--in", "a", "--out", "b", "--batch", "0")
    assert rc == 2 and "at least 1" in err


def test_demo_help_names_its_flags(capsys):
    rc, out, err = run(capsys, "demo", "--help")
    assert rc == 0
    assert "--seconds" in out and "--rate" in out and "namespaces" in out


@pytest.mark.parametrize("argv", [
    ["ctl", "--socket", "/nonexistent/fp.sock", "status"],
    ["ctl", "--socket", "/nonexistent/fp.sock", "--json", "counters"],
])
def test_ctl_without_a_forwarder(capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert "fastpath ctl: /nonexistent/fp.sock: no forwarder answers here" in err
    assert "Traceback" not in err and "Errno" not in err


def test_run_refuses_bad_cpu_list(capsys):
    rc, out, err = run(capsys, "run", "-c", HA, "--cpu", "9999")
    assert rc == 2 and "--cpu" in err


def test_log_level_at_both_positions(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["--log-level", "debug", "check", "-c", "x"]).log_level == "debug"
    assert parser.parse_args(["check", "-c", "x", "--log-level", "info"]).log_level == "info"
    assert parser.parse_args(["check", "-c", "x"]).log_level is None   # main() picks per command


def test_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "fastpath", "check", "-c", str(HA)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "OK: 2 mobile nodes" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastpath", "check", "-c", str(tmp_path / "x.toml")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("fastpath: ") and "Traceback" not in r.stderr


# ---------------------------------------------------------------- tshark


def _esp_packets(cfg):
    """One ESP packet per SA, built with scapy from the config's keys."""
    from scapy.all import IPv6, UDP, Raw
    from scapy.layers.inet6 import HAO, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, MIP6MH_BA, MIP6MH_BU
    from scapy.layers.ipsec import ESP, SecurityAssociation
    from fastpath import algorithms as A
    crypt = {A.KIND_GCM: "AES-GCM", A.KIND_CBC_HMAC: "AES-CBC", A.KIND_NULL_HMAC: "NULL"}
    auth = {A.HASH_SHA1: "HMAC-SHA1-96", A.HASH_SHA256: "SHA2-256-128"}
    ha = str(cfg.home_agent.address)
    out = []
    for mn, sa in cfg.sas():
        alg = sa.algorithm
        kw = dict(spi=sa.spi, crypt_algo=crypt[alg.kind], crypt_key=sa.enc_key + sa.salt or None)
        if alg.kind != A.KIND_GCM:
            kw.update(auth_algo=auth[alg.hash], auth_key=sa.auth_key)
        coa, hoa, cn = str(mn.care_of_address), str(mn.home_address), "2001:db8:99::1"
        if sa.mode == "tunnel":
            outer = IPv6(src=coa, dst=ha) if sa.direction == "in" else IPv6(src=ha, dst=coa)
            inner = IPv6(src=hoa, dst=cn) if sa.direction == "in" else IPv6(src=cn, dst=hoa)
            p = SecurityAssociation(ESP, tunnel_header=outer, **kw).encrypt(
                inner / UDP(sport=1234, dport=5678) / Raw(b"hello"))
        elif sa.direction == "in":
            p = SecurityAssociation(ESP, **kw).encrypt(
                IPv6(src=coa, dst=ha) / IPv6ExtHdrDestOpt(options=[HAO(hoa=hoa)])
                / MIP6MH_BU(seq=7, flags=0x30, mhtime=900))
        else:
            p = SecurityAssociation(ESP, **kw).encrypt(
                IPv6(src=ha, dst=coa) / IPv6ExtHdrRouting(type=2, addresses=[hoa], segleft=1)
                / MIP6MH_BA(seq=7, mhtime=900))
        out.append((sa, bytes(p)))
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("path", [HA, HA_GCM, "null"])
def test_tshark_decrypts_with_keys_output(capsys, tmp_path, path):
    pytest.importorskip("scapy.layers.ipsec")
    pytest.importorskip("cryptography")
    if path == "null":
        text = HA.read_text().replace('algorithm = "aes256-sha256"', 'algorithm = "null-sha256"')
        text = "\n".join(ln for ln in text.splitlines()
                         if not ln.strip().startswith(('enc_key = "0x5a', 'enc_key = "0x6a')))
        path = tmp_path / "null.toml"
        path.write_text(text)
    cfg = load(path)
    pkts = _esp_packets(cfg)
    cap = tmp_path / "esp.pcap"
    with PcapWriter(cap) as w:
        for k, (_, data) in enumerate(pkts):
            w.write(data, ts=1 + k)
    conf = tmp_path / "wsconf"
    conf.mkdir()
    rc, out, _ = run(capsys, "keys", "-c", path, "--wireshark")
    assert rc == 0
    (conf / "esp_sa").write_text(out)
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(conf))
    r = subprocess.run(
        ["tshark", "-r", str(cap), "-o", "esp.enable_encryption_decode:TRUE",
         "-o", "esp.enable_authentication_check:TRUE", "-T", "fields",
         "-e", "esp.spi", "-e", "esp.icv_good", "-e", "udp.dstport", "-e", "mip6.mhtype"],
        capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "UAT" not in r.stderr, r.stderr
    rows = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert len(rows) == len(pkts)
    for (sa, _), row in zip(pkts, rows):
        assert int(row[0], 16) == sa.spi
        if sa.algorithm.kind != 1:          # HMAC ICV checked (GCM's is checked by decrypting)
            assert row[1] == "1", (sa.entry, row)
        if sa.mode == "tunnel":
            assert row[2] == "5678", (sa.entry, row)    # inner UDP decrypted
        else:
            assert row[3] == ("5" if sa.direction == "in" else "6"), (sa.entry, row)


@pytest.mark.parametrize("argv,says", [
    (("run", "-c", HA, "--batch", "100000"), "out of range 1..4096"),
    (("run", "-c", HA, "--workers", "64"), "out of range 1..63"),
    (("run", "-c", HA, "--home-address", "banana"), "'banana' is not an IPv6 address"),
    (("replay", "-c", HA, "--in", "a", "--out", "b", "--batch", "5000"), "out of range"),
])
def test_run_flags_out_of_range_are_usage_errors(capsys, argv, says):
    """Before: --batch 100000 died in a MemoryError traceback after set-up,
    --workers 300 / --home-address banana with raw exception texts."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and says in err and "Traceback" not in err


def test_run_logs_at_info_unless_told(capsys, monkeypatch):
    """`run` says what it set up and why it stopped without --log-level; the
    other commands stay quiet at warning; an explicit level wins."""
    seen = []
    monkeypatch.setattr(cli, "cmd_run", lambda a: seen.append(a.log_level) or 0)
    monkeypatch.setattr(cli, "cmd_check", lambda a: seen.append(a.log_level) or 0)
    for argv in (("run", "-c", HA), ("run", "-c", HA, "--log-level", "error"),
                 ("--log-level", "debug", "run", "-c", HA), ("check", "-c", HA)):
        cli.main([str(a) for a in argv])
    assert seen == ["info", "error", "debug", "warning"]


def test_ctl_text_views_read_as_text():
    """No Python reprs in the text views: dicts as k=v, None as -, an empty
    set of drops or verdicts as 'none' (the drops line used to stay empty)."""
    status = cli._ctl_text("status", {"role": "home-agent", "scheduling":
                                      {"control": "fifo 2", "workers": ["fifo 1", "fifo 1"]},
                                      "home_if": None})
    assert "scheduling     control=fifo 2, workers=fifo 1, fifo 1" in status
    assert "home_if        -" in status and "{" not in status and "None" not in status
    counters = cli._ctl_text("counters", {"totals": {"verdicts": {"drop": 0}, "drops":
                                                     {"icv": 0}},
                                          "io": {"reads": {"home": 3, "wire": 4}},
                                          "control": {"reassembly": {"timeout": 0}}})
    assert "packets by verdict: none" in counters and "drops by reason:    none" in counters
    assert "home=3, wire=4" in counters and "'" not in counters
    rows = cli._ctl_text("bindings", [{"home_address": "2001:db8::1", "care_of_address": None}])
    assert "None" not in rows and rows.splitlines()[1].split() == ["2001:db8::1", "-"]


def test_check_looks_at_the_state_dir(capsys, tmp_path):
    """check says what run would find in state_dir, and fails (exit 2, the
    file named) where run would refuse to start."""
    from fastpath.seqstore import FILE
    state = tmp_path / "state"
    cfg = tmp_path / "ha.toml"
    text = HA.read_text()
    assert 'state_dir = "/tmp/fastpath-example-state"' in text
    cfg.write_text(text.replace('"/tmp/fastpath-example-state"', f'"{state}"'))
    rc, out, err = run(capsys, "check", "-c", cfg)
    assert rc == 0 and f"state dir     {state}   (not there yet" in out
    state.mkdir()
    (state / FILE).write_text('{"00001001:abcd": 1048576}')
    rc, out, err = run(capsys, "check", "-c", cfg)
    assert rc == 0 and "(1 sequence reservation)" in out
    (state / FILE).write_text("{broken")
    rc, out, err = run(capsys, "check", "-c", cfg)
    assert rc == 2 and str(state / FILE) in err and "would refuse to start" in err
