"""`fastpath replay` end to end on the shipped example capture, checked with
scapy: ESP to the static CoA, a Binding Update moves MN1, its Binding Ack is
in the output in the BU's place, and the next packets go to the new CoA."""
import os
import subprocess
import sys

import pytest
import scapy.all  # noqa: F401  (every layer binding: the MH after a routing header)
from scapy.layers.inet6 import IPv6, MIP6MH_BA
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.utils import rdpcap

from fastpath import cli
from fastpath.config import load

from topo import BACKENDS, REPO_EXAMPLES

NEW_COA = "2001:db8:4::10"


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "in.pcap"
    env = dict(os.environ, PYTHONPATH=str(REPO_EXAMPLES.parent))
    subprocess.run([sys.executable, str(REPO_EXAMPLES / "make_capture.py"), str(path)],
                   check=True, capture_output=True, env=env)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_moves_the_binding_and_answers(capture, tmp_path, capsys, backend):
    out = tmp_path / "out.pcap"
    rc = cli.main(["replay", "-c", str(REPO_EXAMPLES / "ha.toml"), "--in", str(capture),
                   "--out", str(out), "--crypto", backend])
    report = capsys.readouterr().out
    assert rc == 0
    assert "drops: icv=1, policy=1, replay=1, unknown_spi=1" in report
    assert "binding updates: status 0=1; binding acks written: 1" in report
    cfg = load(REPO_EXAMPLES / "ha.toml")
    mn1 = cfg.mobile_nodes[0]
    pkts = [IPv6(bytes(p)) for p in rdpcap(str(out))]
    assert len(pkts) == 15
    # the Binding Ack: IPv6(HA -> new CoA) . RH2(HoA) . ESP(binding out) . MH BA
    ba_pkt = pkts[-3]
    assert (ba_pkt.src, ba_pkt.dst, ba_pkt.nh) == (str(cfg.home_agent.address), NEW_COA, 43)
    bout = mn1.sa("binding", "out")
    sa = SecurityAssociation(ESP, spi=bout.spi, crypt_algo="AES-CBC", crypt_key=bout.enc_key,
                             auth_algo="HMAC-SHA1-96", auth_key=bout.auth_key)
    ba = IPv6(bytes(sa.decrypt(ba_pkt)))[MIP6MH_BA]   # re-dissect: scapy keeps the RH2 layering otherwise
    assert (ba.status, ba.seq) == (0, 1) and ba.mhtime > 0
    # payload after the move goes to the new CoA, sequence numbers continuing
    pout = mn1.sa("payload", "out")
    psa = SecurityAssociation(ESP, spi=pout.spi, crypt_algo="AES-CBC", crypt_key=pout.enc_key,
                              auth_algo="HMAC-SHA1-96", auth_key=pout.auth_key,
                              tunnel_header=IPv6(src=str(cfg.home_agent.address), dst=NEW_COA))
    seqs = []
    for p in pkts:
        if p.nh == 50 and p[ESP].spi == pout.spi:
            seqs.append(p[ESP].seq)
    assert seqs == list(range(1, 7))
    for p in pkts[-2:]:
        assert p.dst == NEW_COA
        inner = psa.decrypt(p)
        assert inner.dst == str(mn1.home_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_reassembles_fragmented_tunnel_packets(tmp_path, capsys, backend):
    """Fragmented ESP from the MN (its tunnel MTU was small) is reassembled
    before decapsulation, as the forwarder does: a 1200-byte and a 3000-byte
    inner packet (bigger than a batch slot) come out whole; a set of
    overlapping fragments is discarded and counted (RFC 5722)."""
    from scapy.layers.inet6 import UDP, IPv6ExtHdrFragment, fragment6
    from scapy.utils import wrpcap
    cfg = load(REPO_EXAMPLES / "ha.toml")
    mn1 = cfg.mobile_nodes[0]
    ha, hoa, coa = str(cfg.home_agent.address), str(mn1.home_address), str(mn1.care_of_address)
    pin = mn1.sa("payload", "in")
    sa = SecurityAssociation(ESP, spi=pin.spi, crypt_algo="AES-CBC", crypt_key=pin.enc_key,
                             auth_algo="HMAC-SHA1-96", auth_key=pin.auth_key,
                             tunnel_header=IPv6(src=coa, dst=ha))
    inners = [IPv6(src=hoa, dst="2001:db8:99::1") / UDP(sport=7, dport=9) / (bytes([k]) * n)
              for k, n in ((1, 1152), (2, 2952))]
    frames = []
    for k, p in enumerate(inners):
        enc = sa.encrypt(p, seq_num=k + 1)
        whole = IPv6(bytes(enc))
        frames += fragment6(IPv6(src=whole.src, dst=whole.dst, nh=44) /
                            IPv6ExtHdrFragment(id=100 + k, nh=50) / whole.payload, 1280)
    # two fragments of one datagram that overlap
    enc = IPv6(bytes(sa.encrypt(inners[0], seq_num=3)))
    body = bytes(enc.payload)
    frames.append(IPv6(src=coa, dst=ha, nh=44) / IPv6ExtHdrFragment(id=200, nh=50, m=1, offset=0)
                  / body[:800])
    frames.append(IPv6(src=coa, dst=ha, nh=44) / IPv6ExtHdrFragment(id=200, nh=50, m=0, offset=50)
                  / body[400:])
    src = tmp_path / "frags.pcap"
    wrpcap(str(src), [IPv6(bytes(f)) for f in frames], linktype=229)
    out = tmp_path / "out.pcap"
    rc = cli.main(["replay", "-c", str(REPO_EXAMPLES / "ha.toml"), "--in", str(src),
                   "--out", str(out), "--crypto", backend])
    report = capsys.readouterr().out
    assert rc == 0, report
    got = [bytes(p) for p in rdpcap(str(out))]
    assert got == [bytes(p) for p in inners]
    assert "fragments:" in report and "reassembled=2" in report and "overlap=1" in report


def _replay(inp, out, capsys):
    rc = cli.main(["replay", "-c", str(REPO_EXAMPLES / "ha.toml"), "--in", str(inp),
                   "--out", str(out), "--crypto", "openssl"])
    o, e = capsys.readouterr()
    assert "Traceback" not in e
    return rc, o, e


def test_replay_never_destroys_its_input_or_a_good_output(capture, tmp_path, capsys):
    """--out naming the input is refused before anything is written; an input
    that is not a capture leaves an existing --out as it was; a failed write
    (/dev/full) is a clean error, and no temporary file is left behind."""
    inp = tmp_path / "in.pcap"
    inp.write_bytes(capture.read_bytes())
    rc, _, err = _replay(inp, inp, capsys)
    assert rc == 2 and "this is the input capture" in err
    assert inp.read_bytes() == capture.read_bytes()
    out = tmp_path / "out.pcap"
    out.write_bytes(b"precious")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all, sorry")
    rc, _, err = _replay(bad, out, capsys)
    assert rc == 2 and "not a pcap file" in err and out.read_bytes() == b"precious"
    rc, _, err = _replay(inp, "/dev/full", capsys)
    assert rc == 2 and "/dev/full: cannot write" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap", "in.pcap", "out.pcap"]


def test_replay_of_a_capture_cut_mid_record_keeps_what_came_before(capture, tmp_path, capsys):
    """A capture whose writer was killed ends in half a record: the packets
    before it are processed and written, the report says where the input
    ended, and the exit status is 1 (not 0: the input was damaged)."""
    whole = tmp_path / "whole.pcap"
    rc, full_report, _ = _replay(capture, whole, capsys)
    assert rc == 0
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:-7])
    out = tmp_path / "out.pcap"
    rc, report, _ = _replay(cut, out, capsys)
    assert rc == 1 and "input ends early" in report and "truncated packet data" in report
    n_in = int(full_report.split()[2])
    assert f"packets read: {n_in - 1}" in report
    assert 0 < len(rdpcap(str(out))) <= len(rdpcap(str(whole)))


def test_replay_reports_records_cut_by_the_snapshot_length(capture, tmp_path, capsys):
    """Records captured with a small snaplen are shorter than the packet was:
    processed as they are (their ICV fails) and counted in the report."""
    from fastpath.pcap import read_packets
    cut = tmp_path / "snap.pcap"
    with open(cut, "wb") as f:
        import struct
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 101))
        for ts, pkt in read_packets(capture):
            data = pkt[:96]
            f.write(struct.pack("<IIII", int(ts), 0, len(data), len(pkt)))
            f.write(data)
    rc, report, _ = _replay(cut, tmp_path / "out.pcap", capsys)
    assert rc == 0
    n_cut = sum(1 for _, p in read_packets(capture) if len(p) > 96)
    assert n_cut and f"records cut by the capture's snapshot length: {n_cut}" in report
